"""Prediction protocols: which visits are samples, which group a sample is in, which samples a model serves.

One :class:`Protocol` object answers these three questions for the dataset (``samples``), the runner,
the profiler and the tests, so no two places can disagree about them.

- ``last-visit`` (LEADER's protocol, the default): one sample per patient, its last visit, for
  training and evaluation alike.
- ``all-visits`` (the SafeDrug lineage): every visit of every patient is a sample.
- ``train-all-test-last``: training on every visit of the training patients, validation and test on
  each patient's last visit (the split most later papers use).

Groups keep the LEADER paper's meaning under every protocol. ``single``: the visit of a single-visit
patient. ``multi``: a visit of a multi-visit patient that has earlier visits, so a medication history.
``first``: the first visit of a multi-visit patient, which exists only where every visit is
evaluated; it has no history yet is not a single-visit patient, so it counts in "overall" only.

The unit of resampling is the patient (all of its samples together) and patients are stratified by
their group (:func:`patient_strata`), so an all-visits evaluation is not treated as if its visits
were independent patients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from data_prep.dataset import PreparedDataset, Sample, Visit

VisitChoice = Literal["last", "all"]
GROUPS = ("overall", "multi", "single")  # the reported cells; "first" samples count in overall only


@dataclass(frozen=True)
class Protocol:
    name: str
    train_visits: VisitChoice
    eval_visits: VisitChoice  # validation and test
    description: str

    def visits_of(self, part: str) -> VisitChoice:
        return self.train_visits if part == "train" else self.eval_visits

    def samples(self, dataset: "PreparedDataset", part: str) -> list["Sample"]:
        """Samples of one split in patient order (stable, so predictions line up across models)."""
        from data_prep.dataset import Sample

        every_visit = self.visits_of(part) == "all"
        out: list[Sample] = []
        for patient in dataset.patients_in(part):
            n = len(patient.visits)
            for t in range(n) if every_visit else (n - 1,):
                current = patient.visits[t]
                out.append(
                    Sample(
                        patient_id=patient.patient_id,
                        history=patient.visits[:t],
                        diagnoses=current.diagnoses,
                        procedures=current.procedures,
                        target=current.medications,
                        profile=current.profile or patient.profile,
                        visit_number=t + 1,
                        patient_visits=n,
                        conditions=current.conditions,
                    )
                )
        return out


def longest_records(samples: Sequence["Sample"]) -> list["Sample"]:
    """Per patient, its sample with the most visits, in patient order. Under ``all-visits`` a patient's
    other samples are prefixes of it, so whatever reads every visit of the records (a memory bank,
    co-occurrence counts, frequencies, pre-training) reads each visit once through these."""
    longest: dict[str, "Sample"] = {}
    for s in samples:
        if s.patient_id not in longest or s.visit_number > longest[s.patient_id].visit_number:
            longest[s.patient_id] = s
    return list(longest.values())


def record_visits(samples: Sequence["Sample"]) -> list["Visit"]:
    """Every visit of the samples' records once, earlier visits and current ones (the current visit's
    medications are the sample's target)."""
    from data_prep.dataset import Visit

    return [
        visit
        for s in longest_records(samples)
        for visit in (*s.history, Visit(s.diagnoses, s.procedures, s.target, conditions=s.conditions, profile=s.profile))
    ]


def served(samples: Sequence["Sample"], needs_history_medications: bool) -> np.ndarray:
    """Which samples a model can predict: all, or only those with earlier visits."""
    return np.array([bool(s.history) or not needs_history_medications for s in samples], dtype=bool)


def group_members(samples: Sequence["Sample"]) -> dict[str, np.ndarray]:
    """Boolean mask of each reported group (``GROUPS``) over ``samples``."""
    groups = np.array([s.group for s in samples])
    return {"overall": np.ones(len(samples), dtype=bool), "multi": groups == "multi", "single": groups == "single"}


def patient_strata(samples: Sequence["Sample"]) -> tuple[np.ndarray, np.ndarray]:
    """(patient index of each sample, stratum of each patient: 0 single-visit, 1 multi-visit)."""
    order: dict[str, int] = {}
    patient_of = np.array([order.setdefault(s.patient_id, len(order)) for s in samples], dtype=np.int64)
    stratum = np.zeros(len(order), dtype=np.int64)
    for s, p in zip(samples, patient_of):
        stratum[p] = int(s.patient_visits > 1)
    return patient_of, stratum


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("last-visit", "last", "last", "one sample per patient, its last visit (LEADER)"),
        Protocol("all-visits", "all", "all", "every visit is a sample, in training and evaluation (SafeDrug lineage)"),
        Protocol("train-all-test-last", "all", "last", "train on every visit, validate and test on each patient's last visit"),
    )
}


def get_protocol(protocol: "str | Protocol") -> Protocol:
    if isinstance(protocol, Protocol):
        return protocol
    try:
        return PROTOCOLS[protocol]
    except KeyError:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {tuple(PROTOCOLS)}") from None
