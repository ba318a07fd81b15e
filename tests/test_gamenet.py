"""GAMENet: fit/predict, GCN normalisation, memory reads, similar-patient retrieval, DDI annealing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from baselines.gamenet import GAMENet, SimilarPatients
from baselines.layers import ddi_loss, margin_loss
from bench.metrics import ddi_rate_of_sets

FAST = dict(epochs=2, dim=16, batch_size=8)


@pytest.fixture(scope="module")
def fitted(tiny_dataset):
    model = GAMENet(tiny_dataset, GAMENet.Config(**FAST), seed=0)
    return model.fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))


def test_fit_predict_shape_range_and_both_groups(fitted, tiny_dataset):
    test = tiny_dataset.samples("test")
    assert {s.group for s in test} == {"single", "multi"}
    proba = fitted.predict_proba(test)
    assert proba.shape == (len(test), tiny_dataset.n_medications)
    assert np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all()
    assert fitted.temperature == pytest.approx(2.0 * 0.85**2)  # annealed once per epoch
    assert fitted.target_ddi == fitted.fit_report["target_ddi"] == 0.06  # the papers'


def test_presets_paper_is_published_and_harness_batches(tiny_dataset):
    paper, harness = GAMENet.Config.preset("paper"), GAMENet.Config.preset("harness")
    assert (paper.lr, paper.batch_size, paper.target_ddi, paper.temperature_decay) == (1e-4, 1, 0.06, 0.85)
    assert (harness.lr, harness.batch_size, harness.target_ddi) == (1e-3, 32, 0.06)
    relative = GAMENet(tiny_dataset, GAMENet.Config(**{**FAST, "epochs": 1}, target_ddi=None), seed=0)
    relative.fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    truth = ddi_rate_of_sets([s.target for s in tiny_dataset.samples("train")], tiny_dataset.ddi_adj)
    assert relative.target_ddi == relative.fit_report["target_ddi"] == pytest.approx(0.75 * truth)


def test_same_seed_same_probabilities_and_save_load_keeps_the_bank(fitted, tiny_dataset, tmp_path):
    test = tiny_dataset.samples("test")
    again = GAMENet(tiny_dataset, GAMENet.Config(**FAST), seed=0).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    np.testing.assert_array_equal(fitted.predict_proba(test), again.predict_proba(test))
    loaded = GAMENet.load(fitted.save(tmp_path / "gamenet.pt"), tiny_dataset)
    torch.testing.assert_close(loaded.similar.keys, fitted.similar.keys)
    np.testing.assert_array_equal(fitted.predict_proba(test), loaded.predict_proba(test))


def test_gcn_adjacency_is_the_row_normalised_graph_with_self_loops(fitted, tiny_dataset):
    # tiny DDI graph: 0-3 and 1-4; every other medication only has its self-loop
    expected = np.eye(tiny_dataset.n_medications, dtype=np.float32)
    for a, b in ((0, 3), (1, 4)):
        expected[a, a] = expected[a, b] = expected[b, b] = expected[b, a] = 0.5
    np.testing.assert_allclose(fitted.network.ddi_gcn.adj.numpy(), expected)
    ehr = tiny_dataset.ehr_adj.astype(np.float32) + np.eye(tiny_dataset.n_medications, dtype=np.float32)
    np.testing.assert_allclose(fitted.network.ehr_gcn.adj.numpy(), ehr / ehr.sum(1, keepdims=True), rtol=1e-6)


def test_dynamic_memory_reads_earlier_medications_and_ignores_padding(fitted, tiny_dataset):
    samples = [s for s in tiny_dataset.samples("train") if s.history]
    original = fitted.predict_proba(samples)
    emptied = [dataclasses.replace(s, history=tuple(dataclasses.replace(v, medications=()) for v in s.history)) for s in samples]
    assert not np.allclose(original, fitted.predict_proba(emptied))
    alone = np.concatenate([fitted.predict_proba([s]) for s in samples])
    np.testing.assert_allclose(original, alone, rtol=1e-5, atol=1e-6)


def test_target_is_never_an_input(fitted, tiny_dataset):
    samples = tiny_dataset.samples("test")
    altered = [dataclasses.replace(s, target=tuple(range(tiny_dataset.n_medications))) for s in samples]
    np.testing.assert_array_equal(fitted.predict_proba(samples), fitted.predict_proba(altered))


def test_similar_patient_bank_holds_every_training_visit_and_serves_single_visits(fitted, tiny_dataset):
    train = tiny_dataset.samples("train")
    assert fitted.similar.keys.shape == (sum(len(s.history) + 1 for s in train), fitted.config.dim)
    assert fitted.similar.medications.sum().item() == sum(len(s.target) + sum(len(v.medications) for v in s.history) for s in train)
    single = [s for s in tiny_dataset.samples("test") if not s.history]
    multi = [s for s in tiny_dataset.samples("test") if s.history]
    with_bank = fitted.predict_proba(single + multi)
    bank, fitted.similar = fitted.similar, None  # the reference's fact2 = fact1
    try:
        without_bank = fitted.predict_proba(single + multi)
    finally:
        fitted.similar = bank
    assert not np.allclose(with_bank[: len(single)], without_bank[: len(single)])
    np.testing.assert_allclose(with_bank[len(single) :], without_bank[len(single) :], rtol=1e-6)


def test_similar_patients_read_is_a_softmax_over_the_top_k():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    medications = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    read = SimilarPatients(keys, medications).read(torch.tensor([[1.0, 0.5]]), k=2)
    weights = torch.softmax(torch.tensor([2.0, 1.0]), 0)  # keys 2 and 0; key 1 (score 0.5) is dropped
    torch.testing.assert_close(read, torch.tensor([[weights[1], 0.0, weights[0]]]))


def _all_medications_predicted(tiny_dataset, **config):
    model = GAMENet(tiny_dataset, GAMENet.Config(**FAST, **config), seed=0)
    torch.manual_seed(0)  # the same weights for every configuration
    model.network = model.build_network().eval()  # no dropout: the same logits on every call
    with torch.no_grad():
        model.network.output[-1].bias.fill_(10.0)  # every medication predicted: DDI rate > 0
    return model, model.collate(tiny_dataset.samples("train")[:8])


def test_loss_takes_the_ddi_step_only_above_the_target_ddi(tiny_dataset):
    model, batch = _all_medications_predicted(tiny_dataset, target_ddi=0.0, initial_temperature=1e9)
    logits = model.network(batch)
    proba = torch.sigmoid(logits)
    expected_ddi = ddi_loss(proba, model.ddi_adj) / tiny_dataset.n_medications**2
    torch.testing.assert_close(model.loss(batch, epoch=0), expected_ddi)
    expected_accuracy = 0.9 * F.binary_cross_entropy_with_logits(logits, batch["target"]) + 0.1 * margin_loss(proba, batch["target"])
    model, batch = _all_medications_predicted(tiny_dataset, target_ddi=1.0, initial_temperature=1e9)
    torch.testing.assert_close(model.loss(batch, epoch=0), expected_accuracy)
    # above the target but cold: exp((target - rate) / T) ~ 0, so the accuracy loss is kept
    model, batch = _all_medications_predicted(tiny_dataset, target_ddi=0.0, initial_temperature=1e-9)
    torch.testing.assert_close(model.loss(batch, epoch=0), expected_accuracy)


def test_ddi_step_probability_is_the_mean_per_sample_acceptance(tiny_dataset):
    model = GAMENet(tiny_dataset, GAMENet.Config(**FAST, target_ddi=0.5), seed=0)
    model.network = model.build_network()
    proba = torch.zeros(2, tiny_dataset.n_medications)
    proba[0, [0, 3]] = 0.9  # the interacting pair 0-3: rate 1, above the target
    proba[1, [0, 1]] = 0.9  # no interacting pair: rate 0, never a DDI step
    model.temperature = 1e9
    assert model.ddi_step_probability(proba) == pytest.approx(0.5)
    model.temperature = 0.25
    assert model.ddi_step_probability(proba) == pytest.approx(np.exp(-0.5 / 0.25) / 2)


def test_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="gcn_normalisation"):
        GAMENet.Config(gcn_normalisation="column")
    with pytest.raises(ValueError, match="single_visit_memory"):
        GAMENet.Config(single_visit_memory="nearest")


def test_under_all_visits_the_bank_holds_each_training_visit_once(tiny_dataset):
    """A patient's all-visits samples are prefixes of one record: its visits enter the bank once, not once per sample."""
    train = tiny_dataset.samples("train", "all-visits")
    model = GAMENet(tiny_dataset, GAMENet.Config(**FAST), seed=0).fit(train, tiny_dataset.samples("val", "all-visits"))
    visits = sum(len(p.visits) for p in tiny_dataset.patients_in("train"))
    assert model.similar.keys.shape[0] == visits < len(train) + sum(len(s.history) for s in train)


def test_queries_over_packed_visits_equal_the_padded_gru_at_every_real_visit(fitted, tiny_dataset):
    """The GRUs run over real visits only; each real visit's query is the one of the GRU over the padded batch."""
    network = fitted.network.eval()
    samples = sorted(tiny_dataset.samples("train"), key=lambda s: len(s.history))[::3][:12]
    batch = fitted.collate(samples)
    assert len(set(batch["lengths"].tolist())) >= 3  # patients with one and with several visits side by side
    with torch.no_grad():
        diagnoses, _ = network.diagnosis_gru(network.diagnoses(batch["diagnoses"], batch["diagnosis_mask"]))
        procedures, _ = network.procedure_gru(network.procedures(batch["procedures"], batch["procedure_mask"]))
        padded = network.query(torch.cat([diagnoses, procedures], dim=-1))
        packed = network.queries(batch)
    real = torch.arange(packed.shape[1]).unsqueeze(0) < batch["lengths"].unsqueeze(1)
    torch.testing.assert_close(packed[real], padded[real], rtol=1e-5, atol=1e-6)
    assert not packed[~real].any()
