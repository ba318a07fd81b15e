"""Bootstrap evaluation by patient group, significance tests and teacher retention (README, "Protocol and metrics").

Per-sample metrics are computed once per model (:func:`bench.metrics.per_sample_metrics`); a bootstrap
round then only picks rows and averages (:func:`bench.metrics.aggregate`), so ten rounds cost nothing.

Draws are stratified by group: each round takes 80% of the multi-visit and 80% of the single-visit
test samples, without replacement, and "overall" is their union. Every group therefore keeps the same
size in every round (a tiny group never vanishes from a round) and overall is still 80% of the test
set in its true group proportions. The draws come from one generator seeded by the run seed and are
shared by every model, so rounds are paired across models. Spread is ``np.std`` (ddof 0), as in the
reference repositories' bootstrap code.

A model cell exists only when the model served every sample of that group: a model that needs earlier
medications has no overall or single-visit cell (``None``, printed "-").
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

from bench.metrics import REPORTED, aggregate

GROUPS = ("overall", "multi", "single")
HIGHER_IS_BETTER = ("prauc", "jaccard", "f1", "precision", "recall")


def bootstrap_draws(sample_groups: Sequence[str], rounds: int, seed: int, fraction: float = 0.8) -> list[dict[str, np.ndarray]]:
    """Per round, sorted test-sample indices per group ("overall" = union of the groups)."""
    if rounds < 1:
        raise ValueError(f"bootstrap needs at least one round, got {rounds}")
    if not 0 < fraction <= 1:
        raise ValueError(f"bootstrap fraction must be in (0, 1], got {fraction}")
    sample_groups = np.asarray(sample_groups)
    members = {g: np.flatnonzero(sample_groups == g) for g in GROUPS[1:]}
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(rounds):
        picked = {}
        for group, idx in members.items():
            size = max(1, int(round(fraction * len(idx)))) if len(idx) else 0
            picked[group] = np.sort(rng.choice(idx, size=size, replace=False)) if size else idx
        picked["overall"] = np.sort(np.concatenate([picked[g] for g in GROUPS[1:]]))
        draws.append(picked)
    return draws


def bootstrap_model(
    per_sample: Mapping[str, np.ndarray],
    served: np.ndarray,
    sample_groups: Sequence[str],
    draws: Sequence[Mapping[str, np.ndarray]],
) -> dict[str, dict[str, list[float]] | None]:
    """Per group, per reported metric, the value of each round; ``None`` for a group the model cannot serve."""
    sample_groups = np.asarray(sample_groups)
    served = np.asarray(served, dtype=bool)
    out: dict[str, dict[str, list[float]] | None] = {}
    for group in GROUPS:
        in_group = np.ones(len(sample_groups), bool) if group == "overall" else sample_groups == group
        if not in_group.any() or not served[in_group].all():
            out[group] = None
            continue
        rounds = [aggregate(per_sample, draw[group]) for draw in draws]
        out[group] = {metric: [r[metric] for r in rounds] for metric in REPORTED}
    return out


def describe(values: Sequence[float]) -> dict:
    """mean, std and the per-round values of one cell."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std()), "values": [float(v) for v in array]}


def summarise(rounds_by_label: Mapping[str, Mapping[str, Mapping[str, list[float]] | None]]) -> dict:
    """label -> group -> metric -> {mean, std, values}; ``None`` groups stay ``None``."""
    return {
        label: {
            group: None if cells is None else {metric: describe(values) for metric, values in cells.items()}
            for group, cells in groups.items()
        }
        for label, groups in rounds_by_label.items()
    }


def t_test(a: Sequence[float], b: Sequence[float], paired: bool = True) -> float | None:
    """Two-sided p-value (scipy); ``None`` when it is undefined (e.g. identical rounds)."""
    result = stats.ttest_rel(a, b) if paired else stats.ttest_ind(a, b)
    p = float(result.pvalue)
    return None if np.isnan(p) else p


def significance(
    summary: Mapping[str, Mapping[str, Mapping[str, dict] | None]],
    proposed: Sequence[str],
    paired: bool = True,
    metrics: Sequence[str] = HIGHER_IS_BETTER,
) -> dict:
    """Each proposed model against the best baseline (highest mean) of each group x metric column.

    Returns label -> group -> metric -> {"against": baseline label, "p": p-value or None, "improves":
    whether the proposed mean is higher}; a table stars only significant improvements.
    Baselines are every label not in ``proposed``.
    """
    baselines = [label for label in summary if label not in proposed]
    out: dict = {}
    for label in proposed:
        out[label] = {}
        for group in GROUPS:
            mine = summary[label].get(group)
            candidates = [b for b in baselines if summary[b].get(group) is not None]
            if mine is None or not candidates:
                continue
            out[label][group] = {}
            for metric in metrics:
                best = max(candidates, key=lambda b: summary[b][group][metric]["mean"])
                theirs = summary[best][group][metric]
                out[label][group][metric] = {
                    "against": best,
                    "p": t_test(mine[metric]["values"], theirs["values"], paired=paired),
                    "improves": mine[metric]["mean"] > theirs["mean"],
                }
    return out


def _against_one(
    summary: Mapping[str, Mapping[str, Mapping[str, dict] | None]],
    reference: str,
    labels: Sequence[str],
    cell: Callable[[Mapping[str, dict], Mapping[str, dict]], dict],
) -> dict:
    """label -> group -> ``cell(its group cells, the reference's)``, for the groups both serve."""
    out: dict = {}
    for label in labels:
        out[label] = {}
        for group in GROUPS:
            mine, theirs = summary[label].get(group), summary[reference].get(group)
            if mine is not None and theirs is not None:
                out[label][group] = cell(mine, theirs)
    return out


def against_reference(
    summary: Mapping[str, Mapping[str, Mapping[str, dict] | None]],
    reference: str,
    others: Sequence[str],
    paired: bool = True,
    metrics: Sequence[str] = HIGHER_IS_BETTER,
) -> dict:
    """Each of ``others`` against one ``reference`` label (an ablation against its full model):
    label -> group -> metric -> {"delta": reference mean - its mean, "p": t-test p-value or None}."""

    def cell(mine, theirs):
        return {
            metric: {
                "delta": theirs[metric]["mean"] - mine[metric]["mean"],
                "p": t_test(theirs[metric]["values"], mine[metric]["values"], paired=paired),
            }
            for metric in metrics
        }

    return _against_one(summary, reference, others, cell)


def retention(
    summary: Mapping[str, Mapping[str, Mapping[str, dict] | None]],
    teacher: str,
    students: Sequence[str],
    metrics: Sequence[str] = HIGHER_IS_BETTER,
) -> dict:
    """Each student's mean as a percentage of the teacher's, per group and metric (the paper's efficiency claim)."""

    def cell(mine, theirs):
        return {metric: 100.0 * mine[metric]["mean"] / theirs[metric]["mean"] for metric in metrics if theirs[metric]["mean"] > 0}

    return _against_one(summary, teacher, students, cell)
