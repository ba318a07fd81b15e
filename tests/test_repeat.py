"""``repeat``: the previous visit's medication set, and a recency ranking of the history for PRAUC."""

from __future__ import annotations

import numpy as np
import pytest

from baselines.repeat import RepeatPrevious
from bench.contract import CapabilityError


@pytest.fixture(scope="module")
def fitted(tiny_dataset):
    return RepeatPrevious(tiny_dataset).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))


def test_repeat_recommends_exactly_the_previous_visits_set(fitted, tiny_dataset):
    samples = [s for s in tiny_dataset.samples("test") + tiny_dataset.samples("train") if s.history]
    for sample, chosen in zip(samples, fitted.predict_sets(samples)):
        assert chosen.tolist() == sorted(set(sample.history[-1].medications))


def test_repeat_ranks_the_previous_visit_first_then_earlier_visits_by_recency(fitted, tiny_dataset):
    sample = next(s for s in tiny_dataset.samples("train") if len(s.history) >= 2)
    proba = fitted.predict_proba([sample])[0]
    last, before = set(sample.history[-1].medications), set(sample.history[-2].medications) - set(sample.history[-1].medications)
    assert (proba[list(last)] == 1.0).all() and (proba[list(before)] == 0.5).all()
    older = set().union(*(v.medications for v in sample.history))
    assert (proba[[m for m in range(tiny_dataset.n_medications) if m not in older]] == 0).all()


def test_repeat_refuses_samples_without_history(fitted, tiny_dataset):
    single = [s for s in tiny_dataset.samples("train") if not s.history]
    with pytest.raises(CapabilityError):
        fitted.predict_sets(single)
    assert np.array_equal(fitted.predict_proba([]), np.zeros((0, tiny_dataset.n_medications)))
