import dataclasses

import numpy as np
import pytest
import torch

from baselines.refine import REFINE, balanced_loss, cooccurrence_weights, cumulative_trends, project_trends, trend_inputs
from bench.metrics import prauc_per_sample
from bench import training
from bench.training import base_rate_logits
from data_prep.code_sets import multi_hot

FAST = dict(epochs=2, batch_size=8, patience=2)


def multi_visit(samples):
    return [s for s in samples if s.history]


def untrained(dataset, seed=0):
    """A REFINE network with its initial weights, in eval mode (no dropout)."""
    model = REFINE(dataset, REFINE.Config(**FAST), seed=seed)
    torch.manual_seed(seed)
    model.network = model.build_network().eval()
    return model


def test_batched_prefixes_equal_each_prefix_run_alone(tiny_dataset):
    model = untrained(tiny_dataset)
    # every prefix of every multi-visit patient: lengths 2..4 visits, several prefixes of one patient
    prefixes = multi_visit(tiny_dataset.samples("train", protocol="all-visits"))
    assert len({len(s.history) for s in prefixes}) >= 3
    with torch.no_grad():
        batched = model.logits(model.collate(prefixes))
        alone = torch.cat([model.logits(model.collate([s])) for s in prefixes])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_prediction_reads_the_whole_prefix_not_only_the_current_visit(tiny_dataset):
    model = untrained(tiny_dataset)
    sample = max(multi_visit(tiny_dataset.samples("train")), key=lambda s: len(s.history))
    first = sample.history[0]
    other_first = dataclasses.replace(first, diagnoses=tuple(sorted(set(range(tiny_dataset.n_diagnoses)) - set(first.diagnoses))))
    changed = dataclasses.replace(sample, history=(other_first, *sample.history[1:]))
    with torch.no_grad():
        assert not torch.allclose(model.logits(model.collate([sample])), model.logits(model.collate([changed])))


def test_trend_features_equal_a_direct_least_squares_fit():
    rng = np.random.default_rng(0)
    values = rng.random((3, 6, 4))
    times = np.cumsum(rng.uniform(0.5, 30.0, (3, 6)), axis=1)
    times[2] = [0.0, 0.0, 0.0, 5.0, 5.0, 9.0]  # repeated times: the first three prefixes have no slope
    trends = cumulative_trends(torch.from_numpy(values), torch.from_numpy(times)).numpy()
    assert trends.shape == (3, 6, 4, 3)
    for b in range(3):
        for tau in range(6):
            x, t = values[b, : tau + 1], times[b, : tau + 1]
            np.testing.assert_allclose(trends[b, tau, :, 0], values[b, tau])
            np.testing.assert_allclose(trends[b, tau, :, 2], x.var(axis=0), rtol=1e-9, atol=1e-12)
            expected = np.zeros(4) if np.ptp(t) == 0 else np.polyfit(t, x, 1)[0]
            np.testing.assert_allclose(trends[b, tau, :, 1], expected, rtol=1e-9, atol=1e-12)


def test_collated_trends_are_least_squares_over_visit_presence(tiny_dataset):
    """Diagnosis trends run over all visits (the current one included), medication trends over earlier ones."""
    model = untrained(tiny_dataset)
    samples = multi_visit(tiny_dataset.samples("test"))
    batch = model.collate(samples)
    for b, sample in enumerate(samples):
        diagnoses = multi_hot([v.diagnoses for v in sample.history] + [sample.diagnoses], tiny_dataset.n_diagnoses)
        medications = multi_hot([v.medications for v in sample.history], tiny_dataset.n_medications)
        for kind, presence in (("diagnosis", diagnoses), ("medication", medications)):
            last = np.zeros((presence.shape[1], 3))  # the dense features: codes absent from the patient are all zero
            np.add.at(last, batch[f"{kind}_trend_codes"][b].numpy(), batch[f"{kind}_trends"][b, len(presence) - 1].double().numpy())
            np.testing.assert_allclose(last[:, 0], presence[-1])
            steps = np.arange(len(presence), dtype=float)
            slope = np.polyfit(steps, presence, 1)[0] if len(presence) > 1 else np.zeros(presence.shape[1])
            np.testing.assert_allclose(last[:, 1], slope, atol=1e-6)
            np.testing.assert_allclose(last[:, 2], presence.var(axis=0), atol=1e-6)


def test_projecting_own_codes_equals_the_dense_projection():
    """trend_inputs + project_trends compute the Linear over the dense [B, T, |codes| * 3] trend features."""
    rng = np.random.default_rng(2)
    n_codes, steps = 12, 4
    patients = [[tuple(sorted(rng.choice(n_codes, rng.integers(0, 4), replace=False).tolist())) for _ in range(n)] for n in (1, 3, 4, 2)]
    values = np.zeros((len(patients), steps, n_codes))
    for b, visits in enumerate(patients):
        values[b, : len(visits)] = multi_hot(visits, n_codes)
    times = torch.arange(steps, dtype=torch.float64).expand(len(patients), steps)
    dense = cumulative_trends(torch.from_numpy(values), times).flatten(2).float()
    projection = torch.nn.Linear(3 * n_codes, 5)
    features, codes = trend_inputs(patients, steps)
    assert features.shape[2] == max(len({c for v in visits for c in v}) for visits in patients)
    torch.testing.assert_close(project_trends(projection, features, codes), projection(dense))


def test_no_nan_when_a_medication_has_no_interaction_partner(tiny_dataset):
    isolated = np.flatnonzero(tiny_dataset.ddi_adj.sum(1) == 0)
    assert len(isolated) > 0, "tiny_dataset must hold medications without a DDI partner"
    model = untrained(tiny_dataset)
    with torch.no_grad():
        ddi_memory = model.network.ddi_memory()
        assert torch.isfinite(ddi_memory).all()
        # self-loops: an isolated medication attends to itself, its memory row is not empty
        assert (ddi_memory[isolated].abs().sum(1) > 0).all()
    no_edges = dataclasses.replace(tiny_dataset, ddi_adj=np.zeros_like(tiny_dataset.ddi_adj), ehr_adj=np.zeros_like(tiny_dataset.ehr_adj))
    fitted = REFINE(no_edges, REFINE.Config(**FAST), seed=0).fit(no_edges.samples("train"), no_edges.samples("val"))
    assert all(np.isfinite(entry["loss"]) for entry in fitted.fit_report["history"])
    assert np.isfinite(fitted.predict_proba(multi_visit(no_edges.samples("test")))).all()


def test_cooccurrence_counts_training_visits_once_per_patient(tiny_dataset):
    n = tiny_dataset.n_medications
    weights = cooccurrence_weights(tiny_dataset.samples("train"), n)
    counts = np.zeros((n, n))
    for patient in tiny_dataset.patients_in("train"):
        for visit in patient.visits:
            for i in visit.medications:
                for j in visit.medications:
                    counts[i, j] += i != j
    np.testing.assert_allclose(weights, counts / counts.max(), rtol=1e-6)
    np.testing.assert_array_equal(weights > 0, tiny_dataset.ehr_adj > 0)  # the dataset's graph: training patients only
    # every prefix of a patient is a sample under all-visits: each visit still counts once
    np.testing.assert_allclose(cooccurrence_weights(tiny_dataset.samples("train", protocol="all-visits"), n), weights)


def test_balanced_loss_is_the_reference_formula():
    rng = np.random.default_rng(1)
    proba = rng.random((3, 5))
    ddi = np.triu(rng.random((5, 5)) < 0.3, 1).astype(float)
    cooccurrence = rng.random((5, 5))
    balance = 0.65 * (ddi + ddi.T) - 0.35 * (cooccurrence + cooccurrence.T) / 2
    expected = np.mean([(np.outer(p, p) * balance).mean() for p in proba])
    assert balanced_loss(torch.from_numpy(proba), torch.from_numpy(balance)).item() == pytest.approx(expected)


def test_trains_on_multi_visit_samples_and_beats_the_frequency_on_them(tiny_dataset):
    train = tiny_dataset.samples("train")
    model = REFINE(tiny_dataset, REFINE.Config.preset("harness", epochs=8, batch_size=8, patience=8), seed=0).fit(train, [])
    multi = model.train_samples(train)
    assert multi == multi_visit(train)
    targets = multi_hot([s.target for s in multi], tiny_dataset.n_medications)
    frequency = np.tile(targets.mean(0), (len(multi), 1))
    assert prauc_per_sample(targets, model.predict_proba(multi)).mean() > prauc_per_sample(targets, frequency).mean() + 0.1


def test_base_rate_bias_starts_the_output_at_the_training_log_odds(tiny_dataset, monkeypatch):
    captured = {}
    real = training.train_network

    def train_network(model, train, val):  # the bias as the first step sees it
        captured["bias"] = model.network.output.bias.detach().clone()
        return real(model, train, val)

    monkeypatch.setattr(training, "train_network", train_network)
    train = tiny_dataset.samples("train")
    REFINE(tiny_dataset, REFINE.Config(**{**FAST, "epochs": 1, "base_rate_bias": True}), seed=0).fit(train, [])
    multi = multi_visit(train)
    expected = base_rate_logits(torch.from_numpy(multi_hot([s.target for s in multi], tiny_dataset.n_medications)).float())
    torch.testing.assert_close(captured["bias"], expected)
