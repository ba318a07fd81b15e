"""Decision rules, the one place where a unit's probabilities become medication sets.

Set metrics (Jaccard, F1, DDI rate, #medications) compare decision rules as much as models: the papers
use top-k, 0.4, 0.5, thresholds validated per model, or 0.3. A run's ``decision`` (``DECISIONS``):
``paper`` applies each model's own rule (:meth:`bench.contract.MedRecModel.predict_sets`);
``tuned-jaccard`` / ``tuned-f1`` give every model whose rule is a probability threshold the one global
threshold that maximises its validation Jaccard / F1, then apply it to test; models that decode their
own sets (MICRON's add/remove rule, COGNet's beam search) keep them. Nothing is chosen on test.
:func:`choose` makes that choice for one fitted model; :meth:`Decision.sets` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bench.contract import MedRecModel, threshold_sets
from bench.metrics import multi_hot
from data_prep.dataset import Sample

DECISIONS = ("paper", "tuned-jaccard", "tuned-f1")
THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)


@dataclass(frozen=True)
class Decision:
    """How one unit's probabilities become sets: ``rule`` in words, ``threshold`` when the harness tuned
    one (``None``: the model's own rule)."""

    rule: str
    threshold: float | None = None

    def sets(self, model: MedRecModel, samples: Sequence[Sample], proba: np.ndarray) -> list[np.ndarray]:
        """One set per sample (rows of ``proba``)."""
        if self.threshold is not None:
            return threshold_sets(proba, self.threshold)
        return model.predict_sets(samples, proba) if len(samples) else []

    def to_json(self) -> dict:
        return {"rule": self.rule, "threshold": self.threshold}


def choose(decision: str, model: MedRecModel, val: Sequence[Sample], val_proba: np.ndarray) -> Decision:
    """The rule a run's ``decision`` gives ``model``; a tuned threshold is chosen on its validation samples."""
    if decision not in DECISIONS:
        raise ValueError(f"unknown decision rule {decision!r}; expected one of {DECISIONS}")
    if decision == "paper" or not model.decides_by_threshold:
        return Decision(model.decision_rule())
    metric = decision.removeprefix("tuned-")
    return Decision(f"threshold tuned on validation {metric}", tune_threshold(val_proba, [s.target for s in val], metric))


def tune_threshold(proba: np.ndarray, targets: Sequence[Sequence[int]], metric: str, grid: np.ndarray = THRESHOLDS) -> float:
    """The grid threshold with the best mean per-sample ``metric`` ("jaccard" or "f1"); the lowest on ties."""
    if metric not in ("jaccard", "f1"):
        raise ValueError(f"a threshold can be tuned on jaccard or f1, not {metric!r}")
    if len(targets) == 0:
        raise ValueError("no validation sample to tune a threshold on")
    truth = multi_hot(targets, proba.shape[1]).astype(bool)
    n_true = truth.sum(1)
    scores = np.empty(len(grid))
    for i, threshold in enumerate(grid):
        predicted = proba >= threshold
        inter = (predicted & truth).sum(1)
        if metric == "jaccard":
            union = (predicted | truth).sum(1)
            per_sample = np.divide(inter, union, out=np.zeros(len(inter)), where=union > 0)
        else:  # F1 = 2 |A n B| / (|A| + |B|), the harmonic mean of precision and recall
            size = predicted.sum(1) + n_true
            per_sample = np.divide(2 * inter, size, out=np.zeros(len(inter)), where=(predicted.sum(1) > 0) & (n_true > 0))
        scores[i] = per_sample.mean()
    return float(grid[int(np.argmax(scores))])
