"""Summarising a run from its folder alone: cells, intervals, tests, retention (``summary.json``).

Per unit, the stored test predictions give per-sample metrics once (:mod:`bench.metrics`); resamples of
the test patients, drawn once and shared by every unit, give each cell's values (:mod:`bench.evaluate`);
seeds are pooled per label, then summarised, tested against the best baseline, against each column's
best (``versus_best``), against the full model of an ablation, and as a student's retention of its
teacher (with 95% intervals against every teacher entry, ``retention_intervals``). Validation point
estimates (for choosing, never test) come from the stored validation predictions.
"""

from __future__ import annotations

import numpy as np

from bench import registry
from bench.evaluate import RESAMPLE_SEED, against_best, against_reference, cell_values, collect, draw_resamples, retention, retention_intervals, significance, summarise
from bench.metrics import aggregate, per_sample_metrics
from bench.plan import Plan, Resolved
from bench.results import RunFolder, read_json
from data_prep.dataset import PreparedDataset, Sample
from data_prep.protocol import get_protocol, group_members, patient_strata


def summarise_run(plan: Plan, dataset: PreparedDataset, folder: RunFolder) -> dict:
    """The run's summary, from the finished units' files."""
    spec, statistics = plan.spec, plan.spec.statistics
    task = get_protocol(spec.protocol)
    val, test = task.samples(dataset, "val"), task.samples(dataset, "test")
    members = group_members(test)
    patient_of, stratum = patient_strata(test)
    draws = draw_resamples(patient_of, stratum, statistics.procedure, statistics.resamples, RESAMPLE_SEED)

    cells, validation, fits, decisions = {}, {}, {}, {}
    for label in spec.labels:
        values_by_seed, val_by_seed = [], []
        fits[label], decisions[label] = {}, {}
        for unit in plan.units_of(label):
            stored = folder.finished_predictions(label, unit.seed, unit.key)
            record = read_json(folder.metrics_path(label, unit.seed))
            fits[label][unit.seed], decisions[label][unit.seed] = record["fit_report"], record["decision"]
            values_by_seed.append(cell_values(_per_sample(stored, "test", test, dataset), stored["test_served"], members, draws))
            val_by_seed.append(_validation_scores(stored, val, dataset))
        cells[label] = collect(values_by_seed)
        validation[label] = _mean_over_seeds(val_by_seed)

    n_patients, paired = draws.n_patients, statistics.paired
    models = summarise(cells, statistics.procedure, n_patients)
    full = spec.full_model
    return {
        "run": str(folder.root),
        "dataset": dataset.name,
        "protocol": task.name,
        "preset": spec.preset,
        "seeds": list(spec.seeds),
        "stats": {"procedure": statistics.procedure, "resamples": statistics.resamples, "resample_seed": RESAMPLE_SEED, "paired": paired, "holm": statistics.holm},
        "decision": spec.decision,
        "entries": [_entry_summary(r, plan, decisions, fits) for r in plan.entries],
        "test_samples": {g: int(m.sum()) for g, m in members.items()},
        "test_patients": n_patients,
        "models": models,
        "validation": validation,
        "significance": significance(cells, plan.proposed, statistics.procedure, n_patients, paired),
        "teacher": plan.teacher,
        "retention": retention(models, plan.teacher, plan.students) if plan.teacher else {},
        # every teacher entry: each student's metrics as a percentage of it, with 95% intervals
        "retention_intervals": {
            label: retention_intervals(cells, label, [s for s in plan.students if s not in plan.teachers], statistics.procedure, n_patients)
            for label in plan.teachers
        },
        # every label against each column's best (the table marks those the test does not separate from it)
        "versus_best": against_best(cells, statistics.procedure, n_patients, paired),
        "versus_full": against_reference(cells, full, [x for x in spec.labels if x not in (full, plan.teacher, *plan.teachers)], statistics.procedure, n_patients, paired) if full else {},
        "train_seconds": {label: {seed: fit.get("train_seconds") for seed, fit in by_seed.items()} for label, by_seed in fits.items()},
    }


def _per_sample(stored: dict, part: str, samples: list[Sample], dataset: PreparedDataset):
    predicted = [np.flatnonzero(row) for row in stored[f"{part}_predicted"]]
    return per_sample_metrics(stored[f"{part}_proba"], predicted, [s.target for s in samples], dataset.ddi_adj)


def _validation_scores(stored: dict, val: list[Sample], dataset: PreparedDataset) -> dict:
    """Point estimates on the validation samples the model served, per group (for choosing, never test)."""
    per_sample = _per_sample(stored, "val", val, dataset)
    mask = stored["val_served"]
    out = {}
    for group, members in group_members(val).items():
        chosen = np.flatnonzero(members & mask)
        out[group] = aggregate(per_sample, chosen) if members.any() and mask[members].all() else None
    return out


def _mean_over_seeds(by_seed: list[dict]) -> dict:
    """group -> metric -> mean over seeds of the validation point estimates (None: not served)."""
    out = {}
    for group, first in by_seed[0].items():
        out[group] = None if first is None or any(v[group] is None for v in by_seed) else {
            metric: float(np.mean([v[group][metric] for v in by_seed])) for metric in first
        }
    return out


def _entry_summary(resolved: Resolved, plan: Plan, decisions: dict, fits: dict) -> dict:
    label, seeds = resolved.entry.label, plan.spec.seeds
    model_class = resolved.model_class
    out = {
        "label": label,
        "model": resolved.entry.model,
        "proposed": label in plan.proposed,
        "section": registry.section(resolved.entry.model),  # the table block it sits in (bench.registry.SECTIONS)
        "decision": {seed: decisions[label][seed] for seed in seeds},
        "converged": {seed: fits[label][seed].get("converged") for seed in seeds},
    }
    if model_class.publication is not None:
        out["publication"] = model_class.publication.cite
    if model_class.table_note:
        out["note"] = model_class.table_note
    teachers = {seed: fits[label][seed]["teacher"] for seed in seeds if fits[label][seed].get("teacher")}
    if teachers:  # a distilled student: the seed and cache key of the teacher it learnt from
        out["teacher"] = teachers
    return out
