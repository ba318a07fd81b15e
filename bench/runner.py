"""Run a list of entries (label, registered model, config overrides) into a run folder and summarise them.

``bench run`` is one list of entries (one per model); an ablation or a sweep is just another list
(``Entry("w/o KD", "leader_s", {"alpha": 0})``) through the same :func:`run_entries`, so every table of
a paper comes from the same splits, the same bootstrap draws and the same files.

Per entry: config = ``Model.config_class.preset(preset, **overrides)``; fit on train with early stopping
on val (skipped when the run folder already holds this entry's weights); predict the test samples the
model can serve; per-sample metrics once; bootstrap rounds by group; then across entries t-tests and
teacher retention. Resuming is by files (see :mod:`bench.results`): a finished entry is never refit.
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

from bench import registry
from bench.contract import MedRecModel, ModelConfig
from bench.evaluate import against_reference, bootstrap_draws, bootstrap_model, retention, significance, summarise
from bench.metrics import multi_hot, per_sample_metrics
from bench.results import RunFolder, entry_key, environment_info, file_stem, read_json, write_json
from data_prep.dataset import PROTOCOLS, PreparedDataset, Sample

PROPOSED_MODELS = ("leader_t", "leader_s")
TEACHER_MODEL = "leader_t"
STUDENT_MODEL = "leader_s"


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
    key: str


def _plan(dataset: PreparedDataset, entries: Sequence[Entry], seed: int, preset: str, protocol: str) -> list[_Planned]:
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
        key = entry_key(entry.model, config.to_dict(), seed, dataset.fingerprint, protocol)
        planned.append(_Planned(entry, model_class, config, key))
    return planned


def _check_resume(folder: RunFolder, run_config: dict) -> None:
    """A folder made by other data, seed or protocol cannot be resumed: its files would mix two runs."""
    if not folder.config_path.exists():
        return
    previous = read_json(folder.config_path)
    for key in ("dataset_fingerprint", "seed", "protocol"):
        if previous.get(key) != run_config[key]:
            raise ValueError(
                f"{folder.root} holds a run with {key}={previous.get(key)!r}, not {run_config[key]!r}; "
                "choose another --run-id or results directory"
            )


def _train_or_load(plan: _Planned, folder: RunFolder, dataset: PreparedDataset, train: list[Sample], val: list[Sample], seed: int, device: str, progress: Progress | None) -> MedRecModel:
    """The entry's fitted model: its saved weights when an earlier run trained it, else trained now."""
    config_dict = plan.config.to_dict()
    weights = folder.trained_model(plan.entry.label, plan.entry.model, config_dict, seed)
    if weights is not None:
        return plan.model_class.load(weights, dataset, device=device)
    model = plan.model_class(dataset, plan.config, seed=seed, device=device)
    task = None
    if progress is not None:
        # models without an epoch loop (no on_epoch hook) show one step
        epochs = plan.config.epochs if hasattr(model, "on_epoch") else 1
        task = progress.add_task(plan.entry.label, total=epochs, status="")

        def on_epoch(epoch: int, epochs: int, loss: float, val_prauc: float) -> None:
            progress.update(task, completed=epoch, total=epochs, status=f"loss {loss:.4f}  val PRAUC {val_prauc:.4f}")

        model.on_epoch = on_epoch
    started = time.perf_counter()
    model.fit(train, val)
    model.fit_report.setdefault("train_seconds", time.perf_counter() - started)
    if task is not None:
        progress.update(task, completed=progress.tasks[task].total)
    model.save(folder.model_path(plan.entry.label))
    return model


def _predict(model: MedRecModel, test: list[Sample]) -> dict[str, np.ndarray]:
    """Probabilities and sets for every test sample the model can serve (rows of the others stay 0)."""
    n_meds = model.dataset.n_medications
    served = np.array([bool(s.history) or not model.capabilities.needs_history_medications for s in test])
    chosen = [s for s, ok in zip(test, served) if ok]
    proba = np.zeros((len(test), n_meds), dtype=np.float32)
    predicted = np.zeros((len(test), n_meds), dtype=np.uint8)
    if chosen:
        chosen_proba = np.asarray(model.predict_proba(chosen), dtype=np.float32)
        if chosen_proba.shape != (len(chosen), n_meds):
            raise ValueError(f"{model.name}.predict_proba returned shape {chosen_proba.shape}, expected {(len(chosen), n_meds)}")
        proba[served] = chosen_proba
        predicted[served] = multi_hot(model.predict_sets(chosen, chosen_proba), n_meds)
    return {"proba": proba, "predicted": predicted, "served": served}


def run_entries(
    dataset: PreparedDataset,
    entries: Sequence[Entry],
    run_dir: str | Path,
    *,
    seed: int = 0,
    rounds: int = 10,
    preset: str = "paper",
    protocol: str = "last-visit",
    paired: bool = True,
    proposed: Sequence[str] | None = None,
    teacher: str | None = None,
    full_model: str | None = None,
    bootstrap_fraction: float = 0.8,
    device: str = "cpu",
    arguments: dict | None = None,
    console: Console | None = None,
) -> dict:
    """Train (or reuse), predict, evaluate every entry; write the run folder; return the summary.

    ``proposed``: labels tested against the best baseline (default: entries of leader_t / leader_s);
    ``teacher``: the label retention is measured against (default: the leader_t entry, if any).
    ``full_model``: in an ablation, the label every other student entry is compared with (``versus_full``).
    ``arguments``: the command line's own arguments, recorded in config.json. ``console``: where the
    progress bars go (None: silent).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    plans = _plan(dataset, entries, seed, preset, protocol)
    labels = [p.entry.label for p in plans]
    proposed = [p.entry.label for p in plans if p.entry.model in PROPOSED_MODELS] if proposed is None else list(proposed)
    unknown = sorted(set(proposed) - set(labels))
    if unknown:
        raise ValueError(f"proposed label(s) {unknown} are not entries of this run; entries: {labels}")
    if teacher is None:
        teacher = next((p.entry.label for p in plans if p.entry.model == TEACHER_MODEL), None)
    elif teacher not in labels:
        raise ValueError(f"teacher label {teacher!r} is not an entry of this run; entries: {labels}")
    if full_model is not None and full_model not in labels:
        raise ValueError(f"full-model label {full_model!r} is not an entry of this run; entries: {labels}")

    folder = RunFolder(run_dir)
    run_config = {
        "arguments": arguments or {},
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "seed": seed,
        "preset": preset,
        "protocol": protocol,
        "rounds": rounds,
        "bootstrap_fraction": bootstrap_fraction,
        "paired": paired,
        "proposed": proposed,
        "teacher": teacher,
        "entries": [
            {"label": p.entry.label, "model": p.entry.model, "overrides": p.entry.overrides, "config": p.config.to_dict()} for p in plans
        ],
    }
    _check_resume(folder, run_config)
    write_json(folder.config_path, run_config)
    write_json(folder.environment_path, environment_info(dataset.fingerprint, device))

    train, val, test = (dataset.samples(part, protocol) for part in ("train", "val", "test"))
    if not test:
        raise ValueError(f"dataset {dataset.name!r} has no test sample")
    groups = [s.group for s in test]
    sample_ids = [s.sample_id for s in test]
    draws = bootstrap_draws(groups, rounds, seed, bootstrap_fraction)

    progress = _progress(console) if console is not None else None
    rounds_by_label, fit_reports = {}, {}
    with progress if progress is not None else nullcontext():
        for plan in plans:
            label = plan.entry.label
            stored = folder.finished_predictions(label, plan.key)
            if stored is None:
                model = _train_or_load(plan, folder, dataset, train, val, seed, device, progress)
                stored = _predict(model, test)
                folder.write_predictions(label, plan.key, sample_ids=sample_ids, **stored)
                fit_reports[label] = model.fit_report
            else:
                if list(stored["sample_ids"]) != sample_ids:
                    raise ValueError(f"{folder.predictions_path(label)} lists other test samples than this dataset's")
                fit_reports[label] = _stored_fit_report(folder, label)
                if progress is not None:
                    progress.add_task(label, total=1, completed=1, status="reused from the run folder")
            per_sample = per_sample_metrics(stored["proba"], [np.flatnonzero(r) for r in stored["predicted"]], [s.target for s in test], dataset.ddi_adj)
            rounds_by_label[label] = bootstrap_model(per_sample, stored["served"], groups, draws)
            write_json(
                folder.metrics_path(label),
                {"label": label, "model": plan.entry.model, "rounds": rounds_by_label[label], "fit_report": fit_reports[label]},
            )

    models = summarise(rounds_by_label)
    # every student entry (an ablation's variants too) and every other proposed label
    students = [label for label in dict.fromkeys([*(p.entry.label for p in plans if p.entry.model == STUDENT_MODEL), *proposed]) if label != teacher]
    summary = {
        "run": str(folder.root),
        "dataset": dataset.name,
        "protocol": protocol,
        "seed": seed,
        "rounds": rounds,
        "paired": paired,
        "entries": [{"label": p.entry.label, "model": p.entry.model, "proposed": p.entry.label in proposed} for p in plans],
        "test_samples": {g: int(sum(1 for x in groups if x == g)) for g in ("multi", "single")},
        "models": models,
        "significance": significance(models, proposed, paired=paired),
        "teacher": teacher,
        "retention": retention(models, teacher, students) if teacher else {},
        "versus_full": against_reference(models, full_model, [s for s in students if s != full_model], paired=paired) if full_model else {},
        "train_seconds": {label: report.get("train_seconds") for label, report in fit_reports.items()},
    }
    write_json(folder.summary_path, summary)
    return summary


def _stored_fit_report(folder: RunFolder, label: str) -> dict:
    path = folder.metrics_path(label)
    return read_json(path).get("fit_report", {}) if path.exists() else {}


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
    )

