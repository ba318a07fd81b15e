"""RETAIN: fit/predict, the visit-level softmax (the reference's bug), reverse time, no label leak."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from baselines.retain import RETAIN

FAST = dict(epochs=2, dim=16, batch_size=8)


@pytest.fixture(scope="module")
def fitted(tiny_dataset):
    model = RETAIN(tiny_dataset, RETAIN.Config(**FAST), seed=0)
    return model.fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))


def test_fit_predict_shape_range_and_both_groups(fitted, tiny_dataset):
    test = tiny_dataset.samples("test")
    assert {s.group for s in test} == {"single", "multi"}
    proba = fitted.predict_proba(test)
    assert proba.shape == (len(test), tiny_dataset.n_medications)
    assert np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all()
    assert fitted.fit_report["epochs_run"] == 2


def test_same_seed_same_probabilities_and_save_load(fitted, tiny_dataset, tmp_path):
    test = tiny_dataset.samples("test")
    again = RETAIN(tiny_dataset, RETAIN.Config(**FAST), seed=0).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    np.testing.assert_array_equal(fitted.predict_proba(test), again.predict_proba(test))
    loaded = RETAIN.load(fitted.save(tmp_path / "retain.pt"), tiny_dataset)
    np.testing.assert_array_equal(fitted.predict_proba(test), loaded.predict_proba(test))


def test_visit_weights_are_a_softmax_over_visits_and_alpha_trains(fitted, tiny_dataset):
    samples = tiny_dataset.samples("train")
    batch = fitted.collate(samples)
    _, alpha, _ = fitted.network.attention(batch)
    lengths = batch["lengths"]
    real = torch.arange(alpha.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    torch.testing.assert_close(alpha.sum(1), torch.ones(len(samples)))
    assert (alpha[~real] == 0).all()
    multi = lengths > 1
    assert multi.any() and (alpha[multi].max(1).values < 1).all()  # the reference bug makes every weight 1
    fitted.network.train()
    fitted.loss(batch, epoch=0).backward()
    assert fitted.network.alpha_score.weight.grad.abs().sum() > 0
    fitted.network.zero_grad(set_to_none=True)
    fitted.network.eval()


def test_reverse_time_puts_the_current_visit_first_without_medications(fitted, tiny_dataset):
    sample = next(s for s in tiny_dataset.samples("train") if len(s.history) >= 2)
    batch = fitted.collate([sample])
    visits, _, _ = fitted.network.attention(batch)
    codes = fitted.network.codes
    current = codes["diagnoses"].embedding.weight[list(sample.diagnoses)].sum(0) + codes["procedures"].embedding.weight[list(sample.procedures)].sum(0)
    torch.testing.assert_close(visits[0, 0], current)
    first = sample.history[0]
    oldest = sum(codes[kind].embedding.weight[list(getattr(first, kind))].sum(0) for kind in ("diagnoses", "procedures", "medications"))
    torch.testing.assert_close(visits[0, -1], oldest)


def test_target_is_never_an_input(fitted, tiny_dataset):
    samples = tiny_dataset.samples("test")
    altered = [dataclasses.replace(s, target=tuple(range(tiny_dataset.n_medications))) for s in samples]
    np.testing.assert_array_equal(fitted.predict_proba(samples), fitted.predict_proba(altered))


def test_prediction_does_not_depend_on_batch_padding(fitted, tiny_dataset):
    samples = tiny_dataset.samples("test")
    together = fitted.predict_proba(samples)
    alone = np.concatenate([fitted.predict_proba([s]) for s in samples])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
