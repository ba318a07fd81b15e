import dataclasses

import numpy as np
import pytest
import torch

from baselines.stratmed import BasicNetwork, LevelConv, Relevance, StratMed, StratMedNetwork, stratify
from data_prep.dataset import Visit

SMALL = dict(dim=16, batch_size=8, lr=2e-3, epochs=2, pretrain_epochs=2, patience=2, medication_top=2, diagnosis_top=2, procedure_top=2)


def test_stratify_cuts_a_pyramid_above_the_first_count_of_five():
    counts = np.arange(200).reshape(20, 10)  # 195 cells of at least 5
    levels, n_levels = stratify(counts, top=10, growth=2)
    # first threshold at count 5, then the 10, 20, 40, 80 largest counts (log2(194 / 10 - 1) = 4.2 -> 4 layers)
    assert n_levels == 6
    assert levels.flat[4] == 0 and levels.flat[5] == 1
    assert [int((levels == k).sum()) for k in range(6)] == [5, 195 - 80, 40, 20, 10, 10]


def test_stratify_needs_no_count_of_exactly_five():
    counts = np.array([[0, 1, 7, 9], [12, 30, 2, 0]])  # the reference looks up a 5 and crashes
    levels, n_levels = stratify(counts, top=60, growth=2)
    assert n_levels == 2  # too few counts for the pyramid: level 0 and level 1
    np.testing.assert_array_equal(levels, counts >= 7)


def test_stratify_without_any_frequent_pair_has_one_level():
    levels, n_levels = stratify(np.ones((3, 3), dtype=int), top=60, growth=2)
    assert n_levels == 1 and not levels.any()


def test_level_conv_by_one_hot_levels_equals_a_weight_per_edge():
    torch.manual_seed(0)
    conv = LevelConv(dim=8, levels=4, width=8, initial_top=0.8)
    with torch.no_grad():
        conv.level_weight.copy_(torch.randn(4, 8))
        conv.bias.copy_(torch.randn(8))
    sources, scale = torch.randn(3, 5, 8), torch.rand(3, 1)
    levels, mask = torch.randint(0, 4, (3, 6, 5)), (torch.rand(3, 1, 5, 1) > 0.3).float()
    explicit = (conv.level_weight[levels] * mask * conv.linear(sources).unsqueeze(1)).sum(2)  # [V, N, S, d] summed over S
    expected = torch.relu((explicit + conv.bias) * scale.unsqueeze(1))
    got, other = conv(sources, torch.nn.functional.one_hot(levels, 4).float() * mask, scale)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(other, torch.relu(conv.bias * scale))


def test_relevance_counts_every_visit_of_the_training_records_once(tiny_dataset):
    config = StratMed.Config(**SMALL)
    train = tiny_dataset.samples("train")
    expected = np.zeros((tiny_dataset.n_medications, tiny_dataset.n_diagnoses), dtype=int)
    for patient in tiny_dataset.patients_in("train"):
        for visit in patient.visits:
            for m in visit.medications:
                expected[m, list(visit.diagnoses)] += 1
    every_visit = [s for p in tiny_dataset.patients_in("train") for s in _all_visit_samples(p, train)]
    for samples in (train, every_visit):  # last-visit and all-visits samples of the same records
        levels = Relevance.of_records(samples, tiny_dataset, config)
        reference, _ = stratify(expected, config.diagnosis_top, config.bucket_growth)
        np.testing.assert_array_equal(levels.diagnosis, reference)


def _all_visit_samples(patient, train):
    last = next(s for s in train if s.patient_id == patient.patient_id)
    visits = [*last.history, Visit(last.diagnoses, last.procedures, last.target)]
    return [dataclasses.replace(last, history=tuple(visits[:t]), diagnoses=v.diagnoses, procedures=v.procedures, target=v.medications, visit_number=t + 1)
            for t, v in enumerate(visits)]


def test_graphs_come_from_the_training_records_only(tiny_dataset):
    config = StratMed.Config(**SMALL)
    train = tiny_dataset.samples("train")
    fitted = [StratMed(tiny_dataset, config, seed=0).fit(train, tiny_dataset.samples(part)) for part in ("val", "test")]
    reference = Relevance.of_records(train, tiny_dataset, config)
    for model in fitted:
        for kind in ("medication", "diagnosis", "procedure"):
            np.testing.assert_array_equal(getattr(model.relevance, kind), getattr(reference, kind))
            np.testing.assert_array_equal(getattr(model.network, f"{kind}_levels").numpy(), getattr(reference, kind))
    everything = Relevance.of_records([*train, *tiny_dataset.samples("test")], tiny_dataset, config)
    assert any((getattr(everything, k) != getattr(reference, k)).any() for k in ("medication", "diagnosis", "procedure"))


def test_basic_stage_reports_the_basic_model(tiny_dataset):
    model = StratMed(tiny_dataset, StratMed.Config(**SMALL, stage="basic"), seed=0).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    assert isinstance(model.network, BasicNetwork) and set(model.fit_report["stages"]) == {"basic"}
    full = StratMed(tiny_dataset, StratMed.Config(**SMALL), seed=0).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    assert isinstance(full.network, StratMedNetwork) and set(full.fit_report["stages"]) == {"basic", "full"}
    # the graph model starts from the basic model's embeddings and keeps them as a frozen residual
    for k, kind in enumerate(("diagnosis", "procedure", "medication")):
        np.testing.assert_array_equal(getattr(full.network, f"pretrained_{kind}").numpy(), full.basic.embeddings[k].embedding.weight.detach().numpy())


def test_batched_graphs_equal_one_visit_at_a_time(tiny_dataset):
    model = StratMed(tiny_dataset, StratMed.Config(**SMALL), seed=0)
    train = tiny_dataset.samples("train")
    model.relevance = Relevance.of_records(train, tiny_dataset, model.config)
    torch.manual_seed(0)
    model.basic = BasicNetwork(tiny_dataset, model.config)
    model.network = model.build_network().eval()
    samples = tiny_dataset.samples("test")
    together = model.predict_proba(samples)
    alone = np.concatenate([model.predict_proba([s]) for s in samples])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert len({len(s.history) for s in samples}) > 2  # first visits, one and several earlier visits


def test_the_previous_visit_medications_are_read(tiny_dataset):
    model = StratMed(tiny_dataset, StratMed.Config(**SMALL), seed=0).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    samples = [s for s in tiny_dataset.samples("test") if s.history]
    other = [dataclasses.replace(s, history=(*s.history[:-1], dataclasses.replace(s.history[-1], medications=(0, 1, 2, 3)))) for s in samples]
    assert not np.allclose(model.predict_proba(samples), model.predict_proba(other))
