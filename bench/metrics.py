"""The metric table: every metric the harness reports, in one place (the LEADER paper's definitions).

Each :class:`Metric` says how to compute it per sample, whether it is a mean over samples or a pooled
ratio, which way is better, its column title and format, and which tables show it. Evaluation,
statistics, tables and LaTeX all read :data:`METRICS`; adding a metric is one entry.

Per sample: PRAUC (average precision of the probabilities against the true set, over the medication
vocabulary; scikit-learn's definition, vectorised over samples), Jaccard, precision, recall and F1 of
the predicted set, and the number of predicted medications. Pooled over the samples of a group: DDI
rate = interacting predicted pairs / all predicted pairs. Values are computed once per sample
(:func:`per_sample_metrics`), so a bootstrap resample only re-weights sums.

Edge cases, defined rather than crashing (the reference code's conventions): an empty true set has
PRAUC 0; an empty union has Jaccard 0; precision of an empty prediction and recall of an empty
target are 0; F1 is 0 when precision + recall is 0; DDI rate is 0 when no pair was predicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Mapping, Sequence

import numpy as np

from data_prep.code_sets import ddi_pair_counts, ddi_rate_of_sets, multi_hot

__all__ = ["METRICS", "Metric", "PerSample", "aggregate", "ddi_rate_of_sets", "metric", "multi_hot", "per_sample_metrics", "prauc_per_sample"]


def prauc_per_sample(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Average precision of each row, vectorised over rows; equal to scikit-learn's
    ``average_precision_score`` row by row, ties included (tested against it).

    Sorting each row by descending score, AP = sum over positives of the precision reached at the
    end of the positive's group of tied scores, divided by the number of positives.
    """
    y_true = np.asarray(y_true).astype(bool)
    proba = np.asarray(proba, dtype=np.float64)
    n_rows, n_cols = proba.shape
    if n_rows == 0:
        return np.zeros(0)
    order = np.argsort(-proba, axis=1, kind="stable")
    scores = np.take_along_axis(proba, order, axis=1)
    hits = np.take_along_axis(y_true, order, axis=1)
    true_positives = np.cumsum(hits, axis=1)
    # the last position of each run of tied scores: precision is only defined at distinct thresholds
    group_end = np.ones_like(hits)
    group_end[:, :-1] = scores[:, 1:] != scores[:, :-1]
    positions = np.broadcast_to(np.arange(n_cols), (n_rows, n_cols))
    end_index = np.where(group_end, positions, n_cols)
    end_index = np.minimum.accumulate(end_index[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(true_positives, end_index, axis=1) / (end_index + 1)
    n_pos = hits.sum(axis=1)
    total = (precision_at_end * hits).sum(axis=1)
    return np.divide(total, n_pos, out=np.zeros(n_rows), where=n_pos > 0)


class Scored:
    """What per-sample metrics are computed from: probabilities, true and predicted sets as boolean
    multi-hot rows, and the DDI graph; the counts they share are computed once."""

    def __init__(self, proba: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, ddi_adj: np.ndarray):
        self.proba, self.y_true, self.y_pred, self.ddi_adj = proba, y_true, y_pred, ddi_adj

    @cached_property
    def intersection(self) -> np.ndarray:
        return (self.y_true & self.y_pred).sum(1).astype(np.float64)

    @cached_property
    def n_pred(self) -> np.ndarray:
        return self.y_pred.sum(1).astype(np.float64)

    @cached_property
    def precision(self) -> np.ndarray:
        return np.divide(self.intersection, self.n_pred, out=np.zeros_like(self.intersection), where=self.n_pred > 0)

    @cached_property
    def recall(self) -> np.ndarray:
        n_true = self.y_true.sum(1).astype(np.float64)
        return np.divide(self.intersection, n_true, out=np.zeros_like(self.intersection), where=n_true > 0)

    @property
    def jaccard(self) -> np.ndarray:
        union = (self.y_true | self.y_pred).sum(1).astype(np.float64)
        return np.divide(self.intersection, union, out=np.zeros_like(self.intersection), where=union > 0)

    @property
    def f1(self) -> np.ndarray:
        denominator = self.precision + self.recall
        return np.divide(2 * self.precision * self.recall, denominator, out=np.zeros_like(self.intersection), where=denominator > 0)

    @cached_property
    def ddi_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(interacting pairs, all pairs) among each sample's predicted medications."""
        return ddi_pair_counts(self.y_pred.astype(np.float64), self.ddi_adj.astype(np.float64))


@dataclass(frozen=True)
class Metric:
    """One reported metric. ``value`` gives one number per sample; a mean metric averages it over the
    samples of a cell, a pooled one (``pooled_by`` set) divides its sum by the sum of ``pooled_by``.
    ``direction``: +1 higher is better, -1 lower is better, 0 neither (never ranked, starred or tested).
    ``tables``: the table layouts (:data:`bench.tables.TABLES`) that show it, in column order."""

    name: str
    title: str
    direction: int
    value: Callable[[Scored], np.ndarray]
    pooled_by: Callable[[Scored], np.ndarray] | None = None
    tables: tuple[str, ...] = ()
    fmt: str = ".4f"

    @property
    def tested(self) -> bool:
        return self.direction != 0

    def improves(self, delta: float) -> bool:
        """Whether a difference ``delta`` (a - b) means a is better than b."""
        return self.direction * delta > 0


METRICS: tuple[Metric, ...] = (
    Metric("prauc", "PRAUC", +1, lambda s: prauc_per_sample(s.y_true, s.proba), tables=("main", "ablation", "retention")),
    Metric("jaccard", "Jaccard", +1, lambda s: s.jaccard, tables=("main", "retention")),
    Metric("f1", "F1", +1, lambda s: s.f1, tables=("main", "retention")),
    Metric("precision", "Precision", +1, lambda s: s.precision),
    Metric("recall", "Recall", +1, lambda s: s.recall),
    Metric("ddi_rate", "DDI", -1, lambda s: s.ddi_pairs[0], pooled_by=lambda s: s.ddi_pairs[1], tables=("safety",)),
    Metric("avg_meds", "#Med", 0, lambda s: s.n_pred, tables=("safety",)),
)
BY_NAME = {m.name: m for m in METRICS}


def metric(name: str) -> Metric:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(BY_NAME)}") from None


@dataclass(frozen=True)
class PerSample:
    """Every metric's per-sample numerator (``values``) and, for pooled metrics, denominator (``pooled``):
    a cell's value over any weighting of the samples is sum(w * numerator) / sum(w * denominator)."""

    values: Mapping[str, np.ndarray]
    pooled: Mapping[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    def __len__(self) -> int:
        return len(next(iter(self.values.values())))

    def denominator(self, name: str) -> np.ndarray:
        """Per sample, what a cell's sum of ``name`` is divided by (1 for a mean metric)."""
        return self.pooled[name] if name in self.pooled else np.ones(len(self))


def per_sample_metrics(
    proba: np.ndarray,
    predicted: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    ddi_adj: np.ndarray,
) -> PerSample:
    """Every metric of :data:`METRICS`, one value per sample."""
    n_meds = ddi_adj.shape[0]
    if proba.shape != (len(targets), n_meds):
        raise ValueError(f"probabilities have shape {proba.shape}, expected {(len(targets), n_meds)}")
    scored = Scored(proba, multi_hot(targets, n_meds).astype(bool), multi_hot(predicted, n_meds).astype(bool), ddi_adj)
    return PerSample(
        {m.name: m.value(scored) for m in METRICS},
        {m.name: m.pooled_by(scored) for m in METRICS if m.pooled_by is not None},
    )


def aggregate(per_sample: PerSample, index: np.ndarray | None = None) -> dict[str, float]:
    """Each metric over the chosen samples (all by default): means, and pooled ratios for pooled metrics."""
    pick = (lambda a: a) if index is None else (lambda a: a[index])
    out = {}
    for m in METRICS:
        numerator, denominator = pick(per_sample[m.name]).sum(), pick(per_sample.denominator(m.name)).sum()
        out[m.name] = float(numerator / denominator) if denominator > 0 else 0.0
    return out
