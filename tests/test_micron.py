import dataclasses

import numpy as np
import pytest

from baselines.micron import MICRON, AdaptiveLossWeights, select_thresholds, update_medication_sets
from bench.contract import CapabilityError
from bench.metrics import ddi_rate_of_sets
from data_prep.dataset import Visit

FAST = dict(epochs=2, dim=16, batch_size=8)


@pytest.fixture(scope="module")
def fitted(tiny_dataset):
    model = MICRON(tiny_dataset, MICRON.Config(**FAST), seed=0)
    return model.fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))


def multi_visit(samples):
    return [s for s in samples if s.history]


def test_fit_predict_shape_range_and_thresholds(fitted, tiny_dataset):
    test = multi_visit(tiny_dataset.samples("test"))
    proba = fitted.predict_proba(test)
    assert proba.shape == (len(test), tiny_dataset.n_medications)
    assert np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all()
    assert fitted.add_threshold in MICRON.Config.add_grid and fitted.remove_threshold in MICRON.Config.remove_grid
    assert fitted.fit_report["thresholds"]["add"] == fitted.add_threshold
    assert fitted.target_ddi == fitted.fit_report["target_ddi"] == 0.08  # the reference's
    paper, harness = MICRON.Config.preset("paper"), MICRON.Config.preset("harness")
    assert (paper.lr, paper.batch_size, paper.weight_decay, harness.lr, harness.batch_size) == (2e-4, 1, 1e-5, 1e-3, 32)
    relative = MICRON(tiny_dataset, MICRON.Config(**{**FAST, "epochs": 1}, target_ddi=None), seed=0)
    relative.fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    truth = ddi_rate_of_sets([s.target for s in tiny_dataset.samples("train")], tiny_dataset.ddi_adj)
    assert relative.target_ddi == relative.fit_report["target_ddi"] == pytest.approx(0.75 * truth)


def test_single_visit_samples_are_refused(fitted, tiny_dataset):
    single = [s for s in tiny_dataset.samples("test") if not s.history]
    with pytest.raises(CapabilityError, match="needs earlier medications"):
        fitted.predict_proba(single[:1])
    assert all(s.history for s in fitted.train_samples(tiny_dataset.samples("train")))


def test_update_rule_adds_and_removes_on_a_hand_made_case():
    previous = np.array([[1, 1, 1, 0, 0, 0]], dtype=bool)
    proba = np.array([[0.95, 0.05, 0.40, 0.85, 0.40, 0.05]])
    #                 kept  removed kept added  not added
    expected = np.array([[1, 0, 1, 1, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(update_medication_sets(previous, proba, add_threshold=0.8, remove_threshold=0.1), expected)


def test_threshold_grid_picks_the_best_pair():
    previous = np.array([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=bool)
    proba = np.array([[0.9, 0.15, 0.65, 0.2], [0.3, 0.25, 0.9, 0.55]])
    targets = np.array([[1, 0, 1, 0], [0, 0, 1, 1]], dtype=bool)
    # add at 0.5 brings in 0.65 and 0.55; remove at 0.3 drops 0.15 and 0.25: both sets exact
    add, remove, jaccard = select_thresholds(previous, proba, targets, (0.5, 0.7, 0.9), (0.1, 0.2, 0.3))
    assert (add, remove, jaccard) == (0.5, 0.3, 1.0)


def test_thresholds_are_saved_and_reloaded(fitted, tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(fitted, "add_threshold", 0.7)  # a pair no fresh model holds: a reload must read it
    monkeypatch.setattr(fitted, "remove_threshold", 0.2)
    path = fitted.save(tmp_path / "micron.pt")
    loaded = MICRON.load(path, tiny_dataset)
    assert (loaded.add_threshold, loaded.remove_threshold) == (0.7, 0.2)
    test = multi_visit(tiny_dataset.samples("test"))
    np.testing.assert_array_equal(loaded.predict_proba(test), fitted.predict_proba(test))
    for a, b in zip(loaded.predict_sets(test), fitted.predict_sets(test)):
        np.testing.assert_array_equal(a, b)


def test_mixed_history_lengths_batch_like_one_by_one(fitted, tiny_dataset):
    samples = multi_visit(tiny_dataset.samples("train"))
    by_length = {}
    for s in samples:
        by_length.setdefault(len(s.history), s)
    assert len(by_length) >= 3
    batch = list(by_length.values())
    together = fitted.predict_proba(batch)
    alone = np.concatenate([fitted.predict_proba([s]) for s in batch])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_each_sample_gets_its_own_set(fitted, tiny_dataset, monkeypatch):
    base = multi_visit(tiny_dataset.samples("test"))[0]
    previous = base.history[-1]
    mine, other = (
        dataclasses.replace(base, history=(*base.history[:-1], Visit(previous.diagnoses, previous.procedures, meds)))
        for meds in ((0, 2), (5, 7))
    )
    monkeypatch.setattr(fitted, "add_threshold", 0.999)  # so wide that the update keeps each previous set
    monkeypatch.setattr(fitted, "remove_threshold", 0.001)
    proba = fitted.predict_proba([mine, other])
    assert ((proba > 0.001) & (proba < 0.999)).all()
    first, second = fitted.predict_sets([mine, other], proba)
    assert first.tolist() == [0, 2] and second.tolist() == [5, 7]


def test_adaptive_loss_weights_follow_the_rising_loss():
    schedule = AdaptiveLossWeights(4)
    np.testing.assert_allclose(schedule.step(np.array([1.0, 1.0, 1.0, 1.0])), 0.25)  # first batch: no mean yet
    weights = schedule.step(np.array([2.0, 1.0, 1.0, 1.0]))  # loss 0 doubled against its running mean
    assert weights.sum() == pytest.approx(1.0)
    assert weights[0] > 0.25 and np.allclose(weights[1:], weights[1])
    schedule.start_epoch()
    np.testing.assert_allclose(schedule.step(np.array([5.0, 1.0, 1.0, 1.0])), weights)  # new epoch keeps the weights


def test_fixed_loss_weights_reproduce_the_published_run(tiny_dataset):
    with pytest.raises(ValueError, match="loss_weights"):
        MICRON.Config(loss_weights="dynamic")
    model = MICRON(tiny_dataset, MICRON.Config(**FAST, loss_weights="fixed"), seed=0)
    model.fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    np.testing.assert_allclose(model.loss_schedule.weights, 0.25)  # never stepped
