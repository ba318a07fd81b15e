"""Uncertainty, significance and retention by patient group, from per-sample metrics (README, "Statistics").

Per-sample metrics are computed once per model and seed (:func:`bench.metrics.per_sample_metrics`).
A resample is a vector of weights over test *patients*; a cell's value under it is the weighted mean
of its per-sample metric (DDI rate: weighted pooled ratio), so thousands of resamples cost a handful
of matrix products. Every model and seed is evaluated under the same resamples, which pairs them.

Two procedures (``STATS``):

``bootstrap`` (default, valid). Resamples draw patients *with replacement*, stratified by patient
group (single- / multi-visit), all of a patient's samples together. Per cell: the mean over training
seeds; ``se`` combines the patient-level standard error of the seed-averaged metric (bootstrap) with
the between-seed variance divided by the number of seeds, ``se^2 = se_patients^2 + sd_seeds^2 / S``
(the two sources of variance a rerun on new patients with new seeds would show); ``ci`` is the 95%
t interval with Welch-Satterthwaite degrees of freedom, so few seeds give honestly wide intervals.
A comparison tests the difference of two labels the same way: the patient part from the paired
bootstrap of the difference, the seed part from each label's between-seed variance; two-sided p from
the t distribution. With one seed the seed part is unknown and left out (the summary says so).
Why not a bootstrap over seeds: with 3-5 seeds it underestimates their variance badly; the
variance-components t test is the standard small-sample answer and is checked under the null by
``tests/test_evaluate.py`` (type-I error at or below the nominal rate).

``paper`` (reproduction only). The LEADER paper's procedure: 10 rounds of 80% of the test patients
drawn without replacement, mean +/- std over the rounds, t-test over the rounds (paired, or unpaired
as published). Its rounds share most of their patients, so its std understates the standard error
and its t-test rejects a true null most of the time; use it only to reproduce published tables.

A cell exists only when the model served every sample of the group: a model that needs earlier
medications has no overall or single-visit cell (``None``, printed "-").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from bench.metrics import METRICS, PerSample
from data_prep.protocol import GROUPS

STATS = ("bootstrap", "paper")
DEFAULT_RESAMPLES = {"bootstrap": 1000, "paper": 10}
RESAMPLE_SEED = 0  # every run draws its resamples with this seed, so runs on the same test set share them
TESTED = tuple(m for m in METRICS if m.tested)


@dataclass(frozen=True)
class Resamples:
    """Weights over test patients, one row per resample, shared by every model so they are paired."""

    procedure: str
    patient_of: np.ndarray  # [n_samples] patient index of each sample
    weights: np.ndarray  # [R, n_patients]
    seed: int

    @property
    def n_patients(self) -> int:
        return self.weights.shape[1]


def draw_resamples(patient_of: np.ndarray, stratum: np.ndarray, procedure: str, count: int, seed: int, fraction: float = 0.8) -> Resamples:
    """``count`` resamples of the test patients, stratified by ``stratum`` (patient group).

    bootstrap: each stratum's patients drawn with replacement, as many as it has (multinomial counts).
    paper: each stratum's patients, ``fraction`` of them, drawn without replacement (0/1 weights).
    """
    if procedure not in STATS:
        raise ValueError(f"unknown statistics procedure {procedure!r}; expected one of {STATS}")
    if count < 2:
        raise ValueError(f"need at least 2 resamples, got {count}")
    if not 0 < fraction <= 1:
        raise ValueError(f"resample fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    weights = np.zeros((count, len(stratum)), dtype=np.float64)
    for value in np.unique(stratum):
        members = np.flatnonzero(stratum == value)
        if procedure == "bootstrap":
            weights[:, members] = rng.multinomial(len(members), np.full(len(members), 1.0 / len(members)), size=count)
        else:
            size = max(1, int(round(fraction * len(members))))
            for r in range(count):
                weights[r, rng.choice(members, size=size, replace=False)] = 1.0
    return Resamples(procedure, np.asarray(patient_of), weights, seed)


def cell_values(per_sample: PerSample, served: np.ndarray, members: Mapping[str, np.ndarray], resamples: Resamples) -> dict:
    """group -> metric -> (point estimate on all patients, value under each resample); None: not served.

    Per patient, the sums of each metric over its samples in the group; a resample's value is then a
    weighted ratio of sums, exactly the mean (or pooled DDI rate) over the resampled samples.
    """
    served = np.asarray(served, dtype=bool)
    n_patients = resamples.n_patients
    out: dict = {}
    for group, mask in members.items():
        if not mask.any() or not served[mask].all():
            out[group] = None
            continue
        patients = resamples.patient_of[mask]

        def per_patient(values: np.ndarray) -> np.ndarray:
            return np.bincount(patients, weights=np.asarray(values, dtype=np.float64)[mask], minlength=n_patients)

        def ratio(numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, np.ndarray]:
            point = numerator.sum() / denominator.sum() if denominator.sum() > 0 else 0.0
            num, den = resamples.weights @ numerator, resamples.weights @ denominator
            return float(point), np.divide(num, den, out=np.zeros_like(num), where=den > 0)

        counts = per_patient(np.ones(len(mask)))
        out[group] = {
            m.name: ratio(per_patient(per_sample[m.name]), counts if m.pooled_by is None else per_patient(per_sample.denominator(m.name)))
            for m in METRICS
        }
    return out


@dataclass(frozen=True)
class CellData:
    """One label's cell across seeds: point estimates [S] and resample values [S, R]."""

    points: np.ndarray
    replicates: np.ndarray

    @property
    def seeds(self) -> int:
        return len(self.points)

    @property
    def mean(self) -> float:
        return float(self.points.mean())

    def seed_variance_of_mean(self) -> float:
        return float(self.points.var(ddof=1)) / self.seeds if self.seeds > 1 else 0.0


def collect(values_by_seed: Sequence[Mapping]) -> dict:
    """Per-seed :func:`cell_values` of one label -> group -> metric -> :class:`CellData` (None: not served)."""
    out: dict = {}
    for group in GROUPS:
        if any(v[group] is None for v in values_by_seed):
            out[group] = None
            continue
        out[group] = {
            metric: CellData(
                np.array([v[group][metric][0] for v in values_by_seed]),
                np.stack([v[group][metric][1] for v in values_by_seed]),
            )
            for metric in (m.name for m in METRICS)
        }
    return out


def _welch_df(se_patients: float, n_patients: int, seed_parts: Sequence[tuple[float, int]]) -> float:
    """Welch-Satterthwaite degrees of freedom of ``se_patients^2 + sum(seed variance parts)``."""
    total = se_patients**2 + sum(part for part, _ in seed_parts)
    denominator = se_patients**4 / max(n_patients - 1, 1) + sum(part**2 / (s - 1) for part, s in seed_parts if s > 1 and part > 0)
    return float(total**2 / denominator) if denominator > 0 else float("inf")


def describe(cell: CellData, procedure: str, n_patients: int) -> dict:
    """The summary of one cell (JSON-able)."""
    mean = cell.mean
    seed_values = [float(v) for v in cell.points]
    if procedure == "paper":
        rounds = cell.replicates.ravel()  # every seed's rounds pooled, as the paper pools its rounds
        return {"mean": mean, "std": float(rounds.std()), "pm": float(rounds.std()), "seeds": seed_values}
    averaged = cell.replicates.mean(axis=0)
    se_patients = float(averaged.std(ddof=1))
    seed_part = cell.seed_variance_of_mean()
    se = float(np.sqrt(se_patients**2 + seed_part))
    df = _welch_df(se_patients, n_patients, [(seed_part, cell.seeds)])
    half = float(stats.t.ppf(0.975, df)) * se if se > 0 else 0.0
    return {
        "mean": mean,
        "se": se,
        "se_patients": se_patients,
        "seed_sd": float(cell.points.std(ddof=1)) if cell.seeds > 1 else None,
        "ci": [mean - half, mean + half],
        "patient_ci": [float(v) for v in np.percentile(averaged, [2.5, 97.5])],
        "pm": half,
        "seeds": seed_values,
    }


def compare(a: CellData, b: CellData, procedure: str, n_patients: int, paired: bool = True) -> dict:
    """a - b: the difference, its standard error (bootstrap) and a two-sided p-value."""
    delta = a.mean - b.mean
    if procedure == "paper":
        ra, rb = a.replicates.ravel(), b.replicates.ravel()
        result = stats.ttest_rel(ra, rb) if paired else stats.ttest_ind(ra, rb)
        p = float(result.pvalue)
        return {"delta": delta, "p": None if np.isnan(p) else p}
    difference = a.replicates.mean(axis=0) - b.replicates.mean(axis=0)
    se_patients = float(difference.std(ddof=1))
    seed_parts = [(a.seed_variance_of_mean(), a.seeds), (b.seed_variance_of_mean(), b.seeds)]
    se = float(np.sqrt(se_patients**2 + sum(part for part, _ in seed_parts)))
    if se == 0:
        return {"delta": delta, "se": 0.0, "p": None if delta == 0 else 0.0, "df": None}
    df = _welch_df(se_patients, n_patients, seed_parts)
    p = float(2 * stats.t.sf(abs(delta) / se, df))
    return {"delta": delta, "se": se, "p": p, "df": df}


def summarise(data: Mapping[str, Mapping], procedure: str, n_patients: int) -> dict:
    """label -> group -> metric -> :func:`describe`; ``None`` groups stay ``None``."""
    return {
        label: {group: None if cells is None else {m: describe(c, procedure, n_patients) for m, c in cells.items()} for group, cells in groups.items()}
        for label, groups in data.items()
    }


def significance(data: Mapping[str, Mapping], proposed: Sequence[str], procedure: str, n_patients: int, paired: bool = True) -> dict:
    """Each proposed label against the best baseline (best mean) of each group x metric column.

    label -> group -> metric -> {"against", "delta", "p", "improves", ...}. Baselines are every label
    not in ``proposed``. Stars (tables) mark a significant improvement; Holm's correction across a
    table's columns is applied where the table is made (:func:`holm`).
    """
    baselines = [label for label in data if label not in proposed]
    out: dict = {}
    for label in proposed:
        out[label] = {}
        for group in GROUPS:
            mine = data[label].get(group)
            candidates = [b for b in baselines if data[b].get(group) is not None]
            if mine is None or not candidates:
                continue
            out[label][group] = {}
            for metric in TESTED:
                best = max(candidates, key=lambda b: metric.direction * data[b][group][metric.name].mean)
                test = compare(mine[metric.name], data[best][group][metric.name], procedure, n_patients, paired)
                out[label][group][metric.name] = {"against": best, **test, "improves": metric.improves(test["delta"])}
    return out


def against_best(data: Mapping[str, Mapping], procedure: str, n_patients: int, paired: bool = True) -> dict:
    """Every label against the best mean of each group x metric column (itself excluded): label -> group ->
    metric -> {"against", "delta": label - best, "p", ...}. Tables mark the cells whose difference from the
    best the test does not separate (p >= 0.05; Holm-corrected down the column when asked)."""
    out: dict = {label: {} for label in data}
    for group in GROUPS:
        served = [label for label in data if data[label].get(group) is not None]
        for metric in TESTED:
            if len(served) < 2:
                continue
            best = max(served, key=lambda label: metric.direction * data[label][group][metric.name].mean)
            for label in served:
                if label != best:
                    test = compare(data[label][group][metric.name], data[best][group][metric.name], procedure, n_patients, paired)
                    out[label].setdefault(group, {})[metric.name] = {"against": best, **test}
    return out


def _against_one(data: Mapping[str, Mapping], reference: str, labels: Sequence[str], cell) -> dict:
    """label -> group -> ``cell(its group cells, the reference's)``, for the groups both serve."""
    out: dict = {}
    for label in labels:
        out[label] = {}
        for group in GROUPS:
            mine, theirs = data[label].get(group), data[reference].get(group)
            if mine is not None and theirs is not None:
                out[label][group] = cell(mine, theirs)
    return out


def against_reference(data: Mapping[str, Mapping], reference: str, others: Sequence[str], procedure: str, n_patients: int, paired: bool = True) -> dict:
    """Each of ``others`` against one ``reference`` (an ablation against its full model):
    label -> group -> metric -> {"delta": reference - label, "p", ...}."""
    return _against_one(data, reference, others, lambda mine, theirs: {m.name: compare(theirs[m.name], mine[m.name], procedure, n_patients, paired) for m in TESTED})


def retention(summary: Mapping[str, Mapping], teacher: str, students: Sequence[str]) -> dict:
    """Each student's mean as a percentage of the teacher's, per group and metric (the paper's efficiency claim)."""
    return _against_one(
        summary, teacher, students,
        lambda mine, theirs: {m.name: 100.0 * mine[m.name]["mean"] / theirs[m.name]["mean"] for m in TESTED if m.direction > 0 and theirs[m.name]["mean"] > 0},
    )


def ratio_interval(student: CellData, teacher: CellData, procedure: str, n_patients: int) -> dict:
    """The student's mean as a percentage of the teacher's, with its 95% interval (percentage points).

    Patients: the paired resamples' ratio of the seed-averaged means (each resample holds both labels), its
    standard deviation the patient part; seeds: the delta method on each label's between-seed variance,
    ``var(S/T) ~ var(S)/T^2 + (S/T)^2 var(T)/T^2``; Welch-Satterthwaite degrees of freedom, as :func:`compare`.
    With ``--stats paper``: the std of the ratio over the rounds (no interval)."""
    ratio = student.mean / teacher.mean
    rounds_s, rounds_t = student.replicates.mean(axis=0), teacher.replicates.mean(axis=0)
    ratios = np.divide(rounds_s, rounds_t, out=np.full(len(rounds_t), np.nan), where=rounds_t > 0)
    ratios = ratios[np.isfinite(ratios)]
    if procedure == "paper":
        spread = float(ratios.std()) if len(ratios) else 0.0
        return {"percent": 100 * ratio, "pm": 100 * spread, "ci": None}
    se_patients = float(ratios.std(ddof=1)) if len(ratios) > 1 else 0.0
    seed_parts = [
        (student.seed_variance_of_mean() / teacher.mean**2, student.seeds),
        (ratio**2 * teacher.seed_variance_of_mean() / teacher.mean**2, teacher.seeds),
    ]
    se = float(np.sqrt(se_patients**2 + sum(part for part, _ in seed_parts)))
    half = float(stats.t.ppf(0.975, _welch_df(se_patients, n_patients, seed_parts))) * se if se > 0 else 0.0
    return {"percent": 100 * ratio, "pm": 100 * half, "ci": [100 * (ratio - half), 100 * (ratio + half)], "se": 100 * se}


def retention_intervals(data: Mapping[str, Mapping], teacher: str, students: Sequence[str], procedure: str, n_patients: int) -> dict:
    """DistilLLM-Med's retention with intervals: student -> group -> metric -> :func:`ratio_interval`, for
    the metrics where higher is better."""
    return _against_one(
        data, teacher, students,
        lambda mine, theirs: {m.name: ratio_interval(mine[m.name], theirs[m.name], procedure, n_patients) for m in TESTED if m.direction > 0 and theirs[m.name].mean > 0},
    )


def holm(pvalues: Mapping[object, float | None]) -> dict[object, float | None]:
    """Holm-Bonferroni adjusted p-values (family-wise error across the given tests); ``None`` stays ``None``."""
    present = sorted(((p, key) for key, p in pvalues.items() if p is not None), key=lambda item: item[0])
    adjusted: dict[object, float | None] = {key: None for key, p in pvalues.items() if p is None}
    running = 0.0
    for rank, (p, key) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[key] = running
    return adjusted
