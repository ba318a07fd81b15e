"""Executing a run's units: train (or load) each one, predict, decide, write its files.

:func:`execute_unit` is the whole life of one unit and runs in any worker (:mod:`bench.executors`):
fit on the protocol's training samples with early stopping on validation (skipped when the run folder
holds this unit's weights; a prerequisite unit, a teacher no entry trains, ends there: its model's own
cache keeps it for the students), predict the validation and test samples the model serves, turn
probabilities into sets by the run's decision rule (:mod:`bench.decisions`) and write the unit's
record and predictions, predictions last (they mark the unit done). :func:`execute` runs a plan's
pending units on the spec's executor and reports the ones that failed together, after the others have
finished and been kept.
"""

from __future__ import annotations

import time

import numpy as np

from bench import determinism, registry
from bench.contract import MedRecModel
from bench.decisions import choose
from bench.executors import ProgressReport, no_progress, run_tasks
from bench.metrics import multi_hot
from bench.plan import Plan, Unit
from bench.progress import Display
from bench.results import RunFolder, TimingHistory, environment_info, write_json
from data_prep.dataset import PreparedDataset, Sample
from data_prep.protocol import get_protocol, served


class ModelOutputError(ValueError):
    """A model returned probabilities the metrics cannot score (wrong shape, NaN, infinite)."""


class IncompleteRunError(RuntimeError):
    """Some units failed; the others are finished and kept, and rerunning the command retries the failed ones."""


def execute(plan: Plan, dataset: PreparedDataset, folder: RunFolder, display: Display) -> None:
    """Run the plan's pending units on its executor; :class:`IncompleteRunError` lists the failed ones."""
    pending = plan.pending

    def done(index: int, outcome) -> None:
        display.note(pending[index].name, "finished" if outcome.ok else f"failed: {outcome.error}")

    outcomes = run_tasks(plan.spec.executor, execute_unit, dataset, pending, done, display.report, plan.spec.threads, plan.after)
    failures = [(unit, outcome.error) for unit, outcome in zip(pending, outcomes) if not outcome.ok]
    if failures:
        lines = "\n".join(f"  {unit.name}: {error}" for unit, error in failures)
        raise IncompleteRunError(
            f"{len(failures)} of {len(plan.units)} units failed; the finished ones are kept in {folder.root}, "
            f"and rerunning the same command retries only these:\n{lines}"
        )


def execute_unit(dataset: PreparedDataset, unit: Unit, progress: ProgressReport = no_progress) -> str:
    """Train (or load) one unit, predict validation and test, write its files; runs in any worker (which
    gives it the spec's threads)."""
    spec = unit.spec
    folder = RunFolder(unit.run_dir)
    if spec.deterministic:
        determinism.enable()  # the models' fit reports then say which operations cost or lack a deterministic kernel
    task = get_protocol(spec.protocol)
    train, val, test = (task.samples(dataset, part) for part in ("train", "val", "test"))
    if unit.prerequisite:
        _fit(unit, dataset, train, val, progress)
        return unit.label
    model = _train_or_load(unit, folder, dataset, train, val, progress)
    progress(unit.name, 1, 1, "predicting")
    needs_history = model.capabilities.needs_history_medications
    served_val, served_test = served(val, needs_history), served(test, needs_history)
    val_proba = _probabilities(model, unit.label, val, served_val)
    test_proba = _probabilities(model, unit.label, test, served_test)
    decision = choose(spec.decision, model, _subset(val, served_val), val_proba[served_val])
    record = {"label": unit.label, "model": unit.model, "seed": unit.seed, "fit_report": model.fit_report, "decision": decision.to_json(),
              "environment": {**environment_info(dataset.fingerprint, spec.device), "threads": spec.threads}}
    write_json(folder.metrics_path(unit.label, unit.seed), record)
    folder.write_predictions(  # last: marks the unit done
        unit.label, unit.seed, unit.key,
        val_served=served_val, val_proba=val_proba, test_served=served_test, test_proba=test_proba,
        val_predicted=_predicted(model, decision, val, served_val, val_proba),
        test_predicted=_predicted(model, decision, test, served_test, test_proba),
    )
    return unit.label


def _train_or_load(unit: Unit, folder: RunFolder, dataset: PreparedDataset, train: list[Sample], val: list[Sample], progress: ProgressReport) -> MedRecModel:
    """The unit's fitted model: its saved weights when an earlier run trained them alike, else trained now."""
    weights = folder.trained_model(unit.label, unit.seed, unit.weights_key)
    if weights is not None:
        return registry.get(unit.model).load(weights, dataset, device=unit.spec.device)
    model = _fit(unit, dataset, train, val, progress)
    model.save(folder.model_path(unit.label, unit.seed))
    folder.mark_trained(unit.label, unit.seed, unit.weights_key)
    return model


def _fit(unit: Unit, dataset: PreparedDataset, train: list[Sample], val: list[Sample], progress: ProgressReport) -> MedRecModel:
    """The unit's model fitted now (or by its own cache: ``fit_report["loaded_from"]``), its progress
    reported and its training time recorded for later plans."""
    model = registry.get(unit.model)(dataset, unit.config, seed=unit.seed, device=unit.spec.device)
    progress(unit.name, 0, 1, "training")  # a model without a training loop never calls on_progress: one step
    model.on_progress = lambda done, total, status: progress(unit.name, done, total, status)
    started = time.perf_counter()
    model.fit(train, val)
    model.fit_report.setdefault("train_seconds", time.perf_counter() - started)
    loaded = "loaded_from" in model.fit_report
    if not loaded:  # a load from the model's cache says nothing about how long training takes
        TimingHistory().record(TimingHistory.key(unit.model, unit.config.to_dict(), dataset.fingerprint, unit.spec.protocol), model.fit_report["train_seconds"], unit.model)
    progress(unit.name, 1, 1, "loaded from its cache" if loaded else "trained")
    return model


def _subset(samples: list[Sample], mask: np.ndarray) -> list[Sample]:
    return [s for s, ok in zip(samples, mask) if ok]


def _probabilities(model: MedRecModel, label: str, samples: list[Sample], mask: np.ndarray) -> np.ndarray:
    """Probabilities for the served samples (rows of the others stay 0); unscorable output fails the entry."""
    proba = np.zeros((len(samples), model.dataset.n_medications), dtype=np.float32)
    if mask.any():
        chosen = np.asarray(model.predict_proba(_subset(samples, mask)), dtype=np.float32)
        if chosen.shape != (int(mask.sum()), model.dataset.n_medications):
            raise ModelOutputError(f"{label}: predict_proba returned shape {chosen.shape}, expected {(int(mask.sum()), model.dataset.n_medications)}")
        if not np.isfinite(chosen).all():
            raise ModelOutputError(f"{label}: predict_proba returned {int((~np.isfinite(chosen)).sum())} NaN or infinite values; the entry is not scored")
        proba[mask] = chosen
    return proba


def _predicted(model: MedRecModel, decision, samples: list[Sample], mask: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Multi-hot sets of every sample under the decision; samples the model does not serve get none."""
    rows = iter(decision.sets(model, _subset(samples, mask), proba[mask]))
    return multi_hot([next(rows) if ok else () for ok in mask], model.dataset.n_medications)
