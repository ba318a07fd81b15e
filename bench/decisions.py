"""Decision rules as a harness option: each model's own (paper) rule, or one threshold tuned on validation.

Set metrics (Jaccard, F1, DDI rate, #medications) compare decision rules as much as models: the papers
use top-k, 0.4, 0.5, thresholds validated per model, or 0.3. ``tuned-jaccard`` / ``tuned-f1`` give every
model whose rule is a probability threshold the one global threshold that maximises its validation
Jaccard / F1, then apply it to test; models that decode their own sets (MICRON's add/remove rule,
COGNet's beam search) keep them. Nothing is chosen on test.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bench.metrics import multi_hot

DECISIONS = ("paper", "tuned-jaccard", "tuned-f1")
THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)


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
