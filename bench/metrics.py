"""Metrics as the LEADER paper defines them, computed once per sample so bootstrap rounds only average.

Per sample: PRAUC (average precision of the probabilities against the true set, over the medication
vocabulary; scikit-learn's definition, vectorised over samples), Jaccard, precision, recall and
F1 of the predicted set. Pooled: DDI rate = interacting predicted pairs / all predicted pairs,
over all samples of a group.

Edge cases, defined rather than crashing (the reference code's conventions): an empty true set has
PRAUC 0; an empty union has Jaccard 0; precision of an empty prediction and recall of an empty
target are 0; F1 is 0 when precision + recall is 0; DDI rate is 0 when no pair was predicted.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from data_prep.code_sets import ddi_pair_counts, ddi_rate_of_sets, multi_hot

__all__ = ["PER_SAMPLE", "REPORTED", "aggregate", "ddi_rate_of_sets", "multi_hot", "per_sample_metrics", "prauc_per_sample"]

PER_SAMPLE = ("prauc", "jaccard", "precision", "recall", "f1", "n_pred", "ddi_pairs", "all_pairs")
REPORTED = ("prauc", "jaccard", "f1", "precision", "recall", "ddi_rate", "avg_meds")


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


def per_sample_metrics(
    proba: np.ndarray,
    predicted: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    ddi_adj: np.ndarray,
) -> dict[str, np.ndarray]:
    """One value per sample for every entry of ``PER_SAMPLE``."""
    n_meds = ddi_adj.shape[0]
    if proba.shape != (len(targets), n_meds):
        raise ValueError(f"probabilities have shape {proba.shape}, expected {(len(targets), n_meds)}")
    y_true = multi_hot(targets, n_meds).astype(bool)
    y_pred = multi_hot(predicted, n_meds).astype(bool)
    inter = (y_true & y_pred).sum(1).astype(np.float64)
    union = (y_true | y_pred).sum(1).astype(np.float64)
    n_pred = y_pred.sum(1).astype(np.float64)
    n_true = y_true.sum(1).astype(np.float64)
    jaccard = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    precision = np.divide(inter, n_pred, out=np.zeros_like(inter), where=n_pred > 0)
    recall = np.divide(inter, n_true, out=np.zeros_like(inter), where=n_true > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(inter), where=denom > 0)
    ddi_pairs, all_pairs = ddi_pair_counts(y_pred.astype(np.float64), ddi_adj.astype(np.float64))
    return {
        "prauc": prauc_per_sample(y_true, proba),
        "jaccard": jaccard,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "n_pred": n_pred,
        "ddi_pairs": ddi_pairs,
        "all_pairs": all_pairs,
    }


def aggregate(per_sample: dict[str, np.ndarray], index: np.ndarray | None = None) -> dict[str, float]:
    """Means over the chosen samples, DDI rate pooled over them."""
    pick = (lambda a: a) if index is None else (lambda a: a[index])
    all_pairs = pick(per_sample["all_pairs"]).sum()
    return {
        "prauc": float(pick(per_sample["prauc"]).mean()),
        "jaccard": float(pick(per_sample["jaccard"]).mean()),
        "f1": float(pick(per_sample["f1"]).mean()),
        "precision": float(pick(per_sample["precision"]).mean()),
        "recall": float(pick(per_sample["recall"]).mean()),
        "ddi_rate": float(pick(per_sample["ddi_pairs"]).sum() / all_pairs) if all_pairs > 0 else 0.0,
        "avg_meds": float(pick(per_sample["n_pred"]).mean()),
    }

