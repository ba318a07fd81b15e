"""data_prep.protocol: which visits are samples, the groups they fall in, what a model serves, resampling units."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data_prep.protocol import PROTOCOLS, get_protocol, group_members, longest_records, patient_strata, record_visits, served


def test_train_all_test_last_trains_on_every_visit_and_evaluates_the_last(tiny_dataset):
    task = get_protocol("train-all-test-last")
    train, test = task.samples(tiny_dataset, "train"), task.samples(tiny_dataset, "test")
    assert len(train) == sum(len(p.visits) for p in tiny_dataset.patients_in("train"))
    assert test == tiny_dataset.samples("test", "last-visit")
    assert tiny_dataset.samples("val", task) == tiny_dataset.samples("val")


def test_groups_keep_the_papers_meaning_under_every_protocol(tiny_dataset):
    for name in PROTOCOLS:
        samples = tiny_dataset.samples("test", name)
        by_patient = {p.patient_id: p for p in tiny_dataset.patients_in("test")}
        for s in samples:
            patient_group = by_patient[s.patient_id].group
            assert s.group == ("single" if patient_group == "single" else "multi" if s.history else "first")
        members = group_members(samples)
        assert not (members["multi"] & members["single"]).any() and members["overall"].all()
    every = tiny_dataset.samples("test", "all-visits")
    assert any(s.group == "first" for s in every)  # counted in overall only


def test_a_model_that_needs_history_serves_only_samples_with_history(tiny_dataset):
    samples = tiny_dataset.samples("test", "all-visits")
    mask = served(samples, needs_history_medications=True)
    assert mask.tolist() == [bool(s.history) for s in samples] and served(samples, False).all()


def test_all_visits_resampling_units_are_patients_stratified_by_patient_group(tiny_dataset):
    samples = tiny_dataset.samples("test", "all-visits")
    patient_of, stratum = patient_strata(samples)
    assert len(stratum) == len(tiny_dataset.patients_in("test")) and len(samples) > len(stratum)
    for s, p in zip(samples, patient_of):
        assert stratum[p] == int(s.patient_visits > 1)
    assert len({(s.patient_id, p) for s, p in zip(samples, patient_of)}) == len(stratum)


def test_a_visit_profile_keeps_later_admissions_out_of_earlier_samples(tiny_dataset):
    patient = next(p for p in tiny_dataset.patients_in("train") if len(p.visits) >= 2)
    first = dataclasses.replace(patient.visits[0], profile=tuple((v + 1) % 2 for v in patient.profile))
    edited = dataclasses.replace(patient, visits=(first, *patient.visits[1:]))
    dataset = dataclasses.replace(tiny_dataset, patients=[edited if p is patient else p for p in tiny_dataset.patients])
    samples = [s for s in dataset.samples("train", "all-visits") if s.patient_id == patient.patient_id]
    assert samples[0].profile == first.profile and samples[-1].profile == patient.profile
    assert dataset.fingerprint != tiny_dataset.fingerprint


def test_unknown_protocol_names_the_known_ones():
    with pytest.raises(ValueError, match="train-all-test-last"):
        get_protocol("every-visit")


def test_records_give_every_visit_of_the_samples_once(tiny_dataset):
    every = tiny_dataset.samples("train", "all-visits")
    assert longest_records(every) == tiny_dataset.samples("train")  # the last-visit samples
    visits = record_visits(every)
    assert len(visits) == sum(len(p.visits) for p in tiny_dataset.patients_in("train"))
    assert [v.medications for v in visits] == [v.medications for p in tiny_dataset.patients_in("train") for v in p.visits]
