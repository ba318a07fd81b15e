"""Run a list of entries (label, registered model, config overrides) over training seeds into a run folder.

``bench run`` is one list of entries (one per model); an ablation or a sweep is just another list
(``Entry("w/o KD", "<student>", {"kd": "none"})``) through the same :func:`run_entries`, so every
table of a paper comes from the same splits, the same resamples and the same files.

Per entry and training seed (one resumable unit): config = ``Model.config_class.preset(preset,
**overrides)``; fit on train with early stopping on validation (skipped when the run folder holds
this unit's weights); predict the validation and test samples the model serves (the protocol says
which); the decision rule turns probabilities into sets (the model's own, or one threshold tuned on
validation); per-sample metrics once. Then, across units: resamples of the test patients shared by
every unit, cell statistics over patients and seeds, tests against the best baseline, retention.
Resuming is by files (see :mod:`bench.results`): a finished unit is never refit.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import determinism, registry
from bench.contract import MedRecModel, ModelConfig
from bench.decisions import DECISIONS, tune_threshold
from bench.executors import ExecutorConfig, ProgressReport, no_progress, run_tasks
from bench.evaluate import STATS, against_reference, cell_values, collect, draw_resamples, retention, significance, summarise
from bench.metrics import aggregate, multi_hot, per_sample_metrics
from bench.results import RunFolder, TimingHistory, entry_key, environment_info, file_stem, read_json, weights_key, write_json
from data_prep.dataset import PreparedDataset, Sample
from data_prep.protocol import get_protocol, group_members, patient_strata, served

DEFAULT_RESAMPLES = {"bootstrap": 1000, "paper": 10}


@dataclass(frozen=True)
class Entry:
    """One row of a results table: ``label`` names it, ``model`` is a registry name."""

    label: str
    model: str
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Planned:
    entry: Entry
    model_class: type[MedRecModel]
    config: ModelConfig


class ModelOutputError(ValueError):
    """A model returned probabilities the metrics cannot score (wrong shape, NaN, infinite)."""


def _plan(entries: Sequence[Entry], preset: str) -> list[_Planned]:
    """Resolve every model and config before anything trains, so a typo fails in a second, not an hour in."""
    if not entries:
        raise ValueError("no entry to run")
    labels = [e.label for e in entries]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"duplicate entry labels: {duplicates}")
    stems: dict[str, str] = {}
    for label in labels:
        stem = file_stem(label)
        if stem in stems:
            raise ValueError(f"labels {stems[stem]!r} and {label!r} map to the same file name {stem!r}")
        stems[stem] = label
    planned = []
    for entry in entries:
        model_class = registry.get(entry.model)
        try:
            config = model_class.config_class.preset(preset, **entry.overrides)
        except (TypeError, ValueError) as error:
            raise ValueError(f"entry {entry.label!r}: {error}") from None
        planned.append(_Planned(entry, model_class, config))
    return planned


def _check_resume(folder: RunFolder, run_config: dict) -> None:
    """A folder made by other data or another protocol cannot be resumed: its files would mix two runs."""
    if not folder.config_path.exists():
        return
    previous = read_json(folder.config_path)
    for key in ("dataset_fingerprint", "protocol"):
        if previous.get(key) != run_config[key]:
            raise ValueError(
                f"{folder.root} holds a run with {key}={previous.get(key)!r}, not {run_config[key]!r}; "
                "choose another --run-id or results directory"
            )


class _Display:
    """Progress of each unit: a rich bar on a terminal, otherwise a log line per tenth of the work."""

    def __init__(self, console: Console | None):
        self.console = console
        self.progress = None
        self.tasks: dict[str, int] = {}
        self.logged: dict[str, int] = {}  # the last tenth of each unit's work logged (output not a terminal)
        if console is not None:
            self.progress = Progress(
                TextColumn("[bold]{task.description:<22}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                console=console,
                disable=not console.is_terminal,
            )

    def __enter__(self):
        return self.progress.__enter__() if self.progress is not None else nullcontext()

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def report(self, name: str, done: int, total: int, status: str) -> None:
        """A unit's progress (its training loop's ``(done, total, status)``), from this process or a worker."""
        if self.progress is None:
            return
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total, status="")
            self.logged[name] = -1
        self.progress.update(self.tasks[name], completed=done, total=total, status=status)
        tenth = 10 * done // max(total, 1)
        if not self.console.is_terminal and (tenth > self.logged[name] or done == total):
            self.logged[name] = tenth
            self.console.log(f"{name}: {done}/{total} {status}")

    def plan(self, units: list["Unit"], pending: list["Unit"], fingerprint: str) -> None:
        """Before anything trains: each unit, whether it trains or is reused, its budget and its last time here."""
        if self.console is None:
            return
        history = TimingHistory()
        table = Table(title=f"plan: {len(pending)} of {len(units)} units to train", title_justify="left")
        for column in ("entry", "seed", "action", "budget", "last time on this machine"):
            table.add_column(column)
        estimate, unknown = 0.0, 0
        for unit in units:
            if unit not in pending:
                table.add_row(unit.label, str(unit.seed), "reuse (run folder)", "", "")
                continue
            config = unit.config
            seconds = history.get(TimingHistory.key(unit.model, config.to_dict(), fingerprint, unit.protocol))
            estimate += seconds or 0.0
            unknown += seconds is None
            table.add_row(unit.label, str(unit.seed), "train", config.budget(), "not measured yet" if seconds is None else f"{seconds:.0f} s")
        self.console.print(table)
        if pending:
            self.console.print(f"estimated training time: {estimate:.0f} s for the units trained here before" + (f", plus {unknown} unit(s) never trained here" if unknown else ""))

    def note(self, name: str, status: str) -> None:
        self.report(name, 1, 1, status)


def _train_or_load(unit: "Unit", model_class: type[MedRecModel], folder: RunFolder, dataset: PreparedDataset, train: list[Sample], val: list[Sample], progress: ProgressReport) -> MedRecModel:
    """The unit's fitted model: its saved weights when an earlier run trained them alike, else trained now."""
    weights = folder.trained_model(unit.label, unit.seed, unit.weights_key)
    if weights is not None:
        return model_class.load(weights, dataset, device=unit.device)
    model = model_class(dataset, unit.config, seed=unit.seed, device=unit.device)
    name = f"{unit.label} (seed {unit.seed})"
    progress(name, 0, 1, "training")  # models without a training loop (no on_progress hook) show one step
    if hasattr(model, "on_progress"):
        model.on_progress = lambda done, total, status: progress(name, done, total, status)
    started = time.perf_counter()
    model.fit(train, val)
    model.fit_report.setdefault("train_seconds", time.perf_counter() - started)
    TimingHistory().record(TimingHistory.key(unit.model, unit.config.to_dict(), dataset.fingerprint, unit.protocol), model.fit_report["train_seconds"])
    progress(name, 1, 1, "trained")
    model.save(folder.model_path(unit.label, unit.seed))
    folder.mark_trained(unit.label, unit.seed, unit.weights_key)
    return model


def _probabilities(model: MedRecModel, label: str, samples: list[Sample], mask: np.ndarray) -> np.ndarray:
    """Probabilities for the served samples (rows of the others stay 0); unscorable output fails the entry."""
    proba = np.zeros((len(samples), model.dataset.n_medications), dtype=np.float32)
    if mask.any():
        chosen = np.asarray(model.predict_proba([s for s, ok in zip(samples, mask) if ok]), dtype=np.float32)
        if chosen.shape != (int(mask.sum()), model.dataset.n_medications):
            raise ModelOutputError(f"{label}: predict_proba returned shape {chosen.shape}, expected {(int(mask.sum()), model.dataset.n_medications)}")
        if not np.isfinite(chosen).all():
            raise ModelOutputError(f"{label}: predict_proba returned {int((~np.isfinite(chosen)).sum())} NaN or infinite values; the entry is not scored")
        proba[mask] = chosen
    return proba


def _predict(model: MedRecModel, label: str, val: list[Sample], test: list[Sample], decision: str) -> dict:
    """Validation and test probabilities and sets under the run's decision rule, and the rule used."""
    needs_history = model.capabilities.needs_history_medications
    out: dict = {}
    for part, samples in (("val", val), ("test", test)):
        mask = served(samples, needs_history)
        out[f"{part}_served"] = mask
        out[f"{part}_proba"] = _probabilities(model, label, samples, mask)
    if decision != "paper" and model.decides_by_threshold:
        metric = decision.removeprefix("tuned-")
        mask = out["val_served"]
        threshold = tune_threshold(out["val_proba"][mask], [s.target for s, ok in zip(val, mask) if ok], metric)
        rule = {"rule": f"threshold tuned on validation {metric}", "threshold": threshold}
        sets = {part: [np.flatnonzero(row >= threshold) for row in out[f"{part}_proba"]] for part in ("val", "test")}
    else:
        rule = {"rule": model.decision_rule(), "threshold": None}
        sets = {}
        for part, samples in (("val", val), ("test", test)):
            mask = out[f"{part}_served"]
            chosen = model.predict_sets([s for s, ok in zip(samples, mask) if ok], out[f"{part}_proba"][mask]) if mask.any() else []
            rows = iter(chosen)
            sets[part] = [next(rows) if ok else np.array([], dtype=np.int64) for ok in mask]
    n_meds = model.dataset.n_medications
    for part in ("val", "test"):
        out[f"{part}_predicted"] = multi_hot(sets[part], n_meds)
    out["decision"] = rule
    return out


@dataclass(frozen=True)
class Unit:
    """One entry at one training seed: everything a worker needs to train, predict and write its files."""

    label: str
    model: str
    config: ModelConfig
    seed: int
    run_dir: str
    weights_key: str
    key: str
    protocol: str
    decision: str
    device: str
    deterministic: bool = False
    threads: int = 1  # torch threads: part of what the numbers depend on, the same whatever the executor


class IncompleteRunError(RuntimeError):
    """Some units failed; the others are finished and kept, and rerunning the command retries the failed ones."""


def execute_unit(dataset: PreparedDataset, unit: Unit, progress: ProgressReport = no_progress) -> str:
    """Train (or load) one unit, predict validation and test, write its files; runs in any worker (which
    gives it ``unit.threads`` threads)."""
    folder = RunFolder(unit.run_dir)
    if unit.deterministic:
        determinism.enable()  # the models' fit reports then say which operations cost or lack a deterministic kernel
    task = get_protocol(unit.protocol)
    train, val, test = (task.samples(dataset, part) for part in ("train", "val", "test"))
    model = _train_or_load(unit, registry.get(unit.model), folder, dataset, train, val, progress)
    progress(f"{unit.label} (seed {unit.seed})", 1, 1, "predicting")
    stored = _predict(model, unit.label, val, test, unit.decision)
    record = {"label": unit.label, "model": unit.model, "seed": unit.seed, "fit_report": model.fit_report, "decision": stored.pop("decision"),
              "environment": {**environment_info(dataset.fingerprint, unit.device), "threads": unit.threads}}
    write_json(folder.metrics_path(unit.label, unit.seed), record)
    folder.write_predictions(unit.label, unit.seed, unit.key, **stored)  # last: marks the unit done
    return unit.label


def _execute(units: list[Unit], dataset: PreparedDataset, folder: RunFolder, executor: ExecutorConfig, teacher_of: dict[str, str], display: "_Display") -> None:
    """Run the units not finished yet: teachers first, then their students (each after its teacher's
    units, so a free worker never waits on a fine-tuning; students also wait on the teacher's cache lock
    where the executor does not order them), then the rest in the entries' order."""
    pending = [unit for unit in units if not folder.is_finished(unit.label, unit.seed, unit.key)]
    display.plan(units, pending, dataset.fingerprint)
    teachers = set(teacher_of.values())
    pending.sort(key=lambda unit: 0 if unit.model in teachers else 1 if unit.model in teacher_of else 2)  # stable
    after = [[j for j, other in enumerate(pending) if other.model == teacher_of.get(unit.model)] for unit in pending]
    threads = units[0].threads if units else 1

    def done(index: int, outcome) -> None:
        unit = pending[index]
        display.note(f"{unit.label} (seed {unit.seed})", "finished" if outcome.ok else f"failed: {outcome.error}")

    outcomes = run_tasks(executor, execute_unit, dataset, pending, done, display.report, threads, after)
    failures = [(unit, outcome.error) for unit, outcome in zip(pending, outcomes) if not outcome.ok]
    if failures:
        lines = "\n".join(f"  {unit.label} (seed {unit.seed}): {error}" for unit, error in failures)
        raise IncompleteRunError(
            f"{len(failures)} of {len(units)} units failed; the finished ones are kept in {folder.root}, "
            f"and rerunning the same command retries only these:\n{lines}"
        )


def _validation_scores(stored: dict, val: list[Sample], dataset: PreparedDataset) -> dict:
    """Point estimates on the validation samples the model served, per group (for choosing, never test)."""
    per_sample = per_sample_metrics(stored["val_proba"], [np.flatnonzero(r) for r in stored["val_predicted"]], [s.target for s in val], dataset.ddi_adj)
    mask = stored["val_served"]
    out = {}
    for group, members in group_members(val).items():
        chosen = np.flatnonzero(members & mask)
        out[group] = aggregate(per_sample, chosen) if members.any() and mask[members].all() else None
    return out


def run_entries(
    dataset: PreparedDataset,
    entries: Sequence[Entry],
    run_dir: str | Path,
    *,
    seeds: Sequence[int] = (0,),
    preset: str = "paper",
    protocol: str = "last-visit",
    stats: str = "bootstrap",
    resamples: int | None = None,
    resample_seed: int = 0,
    paired: bool = True,
    holm: bool = False,
    decision: str = "paper",
    proposed: Sequence[str] | None = None,
    teacher: str | None = None,
    full_model: str | None = None,
    device: str = "cpu",
    deterministic: bool = False,
    threads: int = 1,
    arguments: dict | None = None,
    console: Console | None = None,
    executor: ExecutorConfig | None = None,
) -> dict:
    """Train (or reuse), predict, evaluate every entry at every seed; write the run folder; return the summary.

    ``stats``: "bootstrap" (valid, default) or "paper" (the LEADER paper's rounds, for reproduction);
    ``resamples``: bootstrap resamples or paper rounds [1000 / 10]; ``paired``: the paper procedure's
    t-test; ``holm``: tables correct stars across their columns. ``decision``: "paper" (each model's
    rule), "tuned-jaccard" or "tuned-f1" (one threshold per unit chosen on validation).
    ``proposed``: labels tested against the best baseline (default: entries of the models that registered
    families declare, e.g. LEADER's student and teacher); ``teacher``: the label retention is measured
    against (default: the entry of the teacher a student entry's family names, if any).
    ``full_model``: in an ablation, the label every other student entry is compared with (``versus_full``).
    ``arguments``: the command line's own arguments, recorded in config.json. ``console``: where the
    progress goes (None: silent). ``deterministic``: torch's deterministic algorithms (:func:`bench.determinism.enable`);
    part of each unit's key. ``threads``: torch threads per unit (a model's numbers depend on them, so
    they are part of its key; every executor gives each unit this many). ``executor``: where the units run (:mod:`bench.executors`; in process
    by default); every unit is trained before any is evaluated, and units that fail are reported
    together (:class:`IncompleteRunError`) after the others have finished and been kept.
    """
    task = get_protocol(protocol)
    if stats not in STATS:
        raise ValueError(f"unknown statistics procedure {stats!r}; expected one of {STATS}")
    if decision not in DECISIONS:
        raise ValueError(f"unknown decision rule {decision!r}; expected one of {DECISIONS}")
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ValueError("give at least one training seed")
    resamples = DEFAULT_RESAMPLES[stats] if resamples is None else resamples
    plans = _plan(entries, preset)
    labels = [p.entry.label for p in plans]
    families = registry.families()
    teacher_of = {f.model: f.teacher for f in families if f.teacher}
    family_models = {f.model for f in families} | set(teacher_of.values())
    proposed = [p.entry.label for p in plans if p.entry.model in family_models] if proposed is None else list(proposed)
    unknown = sorted(set(proposed) - set(labels))
    if unknown:
        raise ValueError(f"proposed label(s) {unknown} are not entries of this run; entries: {labels}")
    if teacher is None:
        teachers = {teacher_of[p.entry.model] for p in plans if p.entry.model in teacher_of}
        teacher = next((p.entry.label for p in plans if p.entry.model in teachers), None)
    elif teacher not in labels:
        raise ValueError(f"teacher label {teacher!r} is not an entry of this run; entries: {labels}")
    if full_model is not None and full_model not in labels:
        raise ValueError(f"full-model label {full_model!r} is not an entry of this run; entries: {labels}")

    folder = RunFolder(run_dir)
    if dataset.name != "synth":  # credentialed data: predictions and weights stay readable by their owner only
        folder.root.mkdir(parents=True, exist_ok=True)
        folder.root.chmod(0o700)
    run_config = {
        "arguments": arguments or {},
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "seeds": seeds,
        "preset": preset,
        "protocol": task.name,
        "stats": stats,
        "resamples": resamples,
        "decision": decision,
        "deterministic": deterministic,
        "threads": threads,
        "proposed": proposed,
        "teacher": teacher,
        "entries": [
            {"label": p.entry.label, "model": p.entry.model, "overrides": p.entry.overrides, "config": p.config.to_dict()} for p in plans
        ],
    }
    _check_resume(folder, run_config)
    write_json(folder.config_path, run_config)

    train, val, test = (task.samples(dataset, part) for part in ("train", "val", "test"))
    if not test:
        raise ValueError(f"dataset {dataset.name!r} has no test sample")
    members = group_members(test)
    patient_of, stratum = patient_strata(test)
    draws = draw_resamples(patient_of, stratum, stats, resamples, resample_seed)

    units = [
        Unit(p.entry.label, p.entry.model, p.config, seed, str(folder.root), trained, entry_key(trained, decision), task.name, decision, device, deterministic, threads)
        for p in plans
        for seed in seeds
        for trained in [weights_key(p.model_class, p.config.to_dict(), seed, dataset.fingerprint, task.name, deterministic, threads)]
    ]
    display = _Display(console)
    with display:
        _execute(units, dataset, folder, executor or ExecutorConfig(), teacher_of, display)

    cells, validation, fits, decisions = {}, {}, {}, {}
    for plan in plans:
        label = plan.entry.label
        values_by_seed, val_by_seed = [], []
        fits[label], decisions[label] = {}, {}
        for unit in (u for u in units if u.label == label):
            stored = folder.finished_predictions(label, unit.seed, unit.key)
            record = read_json(folder.metrics_path(label, unit.seed))
            fits[label][unit.seed], decisions[label][unit.seed] = record["fit_report"], record["decision"]
            per_sample = per_sample_metrics(stored["test_proba"], [np.flatnonzero(r) for r in stored["test_predicted"]], [s.target for s in test], dataset.ddi_adj)
            values_by_seed.append(cell_values(per_sample, stored["test_served"], members, draws))
            val_by_seed.append(_validation_scores(stored, val, dataset))
        cells[label] = collect(values_by_seed)
        validation[label] = _mean_over_seeds(val_by_seed)

    n_patients = draws.n_patients
    models = summarise(cells, stats, n_patients)
    # every student entry (an ablation's variants too) and every other proposed label
    students = [label for label in dict.fromkeys([*(p.entry.label for p in plans if p.entry.model in teacher_of), *proposed]) if label != teacher]
    summary = {
        "run": str(folder.root),
        "dataset": dataset.name,
        "protocol": task.name,
        "preset": preset,
        "seeds": seeds,
        "stats": {"procedure": stats, "resamples": resamples, "resample_seed": resample_seed, "paired": paired, "holm": holm},
        "decision": decision,
        "entries": [_entry_summary(p, proposed, seeds, decisions, fits) for p in plans],
        "test_samples": {g: int(m.sum()) for g, m in members.items()},
        "test_patients": n_patients,
        "models": models,
        "validation": validation,
        "significance": significance(cells, proposed, stats, n_patients, paired),
        "teacher": teacher,
        "retention": retention(models, teacher, students) if teacher else {},
        "versus_full": against_reference(cells, full_model, [x for x in labels if x not in (full_model, teacher)], stats, n_patients, paired) if full_model else {},
        "train_seconds": {label: {seed: fit.get("train_seconds") for seed, fit in by_seed.items()} for label, by_seed in fits.items()},
    }
    write_json(folder.summary_path, summary)
    return summary


def _mean_over_seeds(by_seed: list[dict]) -> dict:
    """group -> metric -> mean over seeds of the validation point estimates (None: not served)."""
    out = {}
    for group, first in by_seed[0].items():
        out[group] = None if first is None or any(v[group] is None for v in by_seed) else {
            metric: float(np.mean([v[group][metric] for v in by_seed])) for metric in first
        }
    return out


def _entry_summary(plan: _Planned, proposed: Sequence[str], seeds: Sequence[int], decisions: dict, fits: dict) -> dict:
    label = plan.entry.label
    out = {
        "label": label,
        "model": plan.entry.model,
        "proposed": label in proposed,
        "decision": {seed: decisions[label][seed] for seed in seeds},
        "converged": {seed: fits[label][seed].get("converged") for seed in seeds},
    }
    note = getattr(plan.model_class, "table_note", "")
    if note:
        out["note"] = note
    teachers = {seed: fits[label][seed]["teacher"] for seed in seeds if fits[label][seed].get("teacher")}
    if teachers:  # a distilled student: the seed and cache key of the teacher it learnt from
        out["teacher"] = teachers
    return out
