"""Efficiency (README, "Benchmarks"): parameters, training time, inference latency, peak memory.

Every measurement of a model runs in a fresh process (multiprocessing "spawn"), so one model's
allocations, caches and thread pools never inflate another's figures. Training, when the weights do
not come from a run folder, happens in a process of its own too, so the inference process starts
from loaded weights and its memory peak is that of inference alone:

- parameters: trainable and total element counts of the model's ``torch.nn.Module`` attributes (a
  model without a network, such as ``freq``, counts the tensors of its state as non-trainable);
- latency per patient: the whole served test set in one ``predict_proba`` call, divided by its size
  (median of repeats after a warm-up), and batch size 1 (median over single-sample calls after a
  warm-up);
- memory, two figures measured the same way on every device, so CPU and GPU rows compare: the
  model's weights (bytes of the parameters, buffers and packed int8 weights of its networks: what the
  LEADER paper's teacher/student comparison is about) and the inference peak above what the loaded
  model holds: on CPU the peak resident set size during one whole-test-set inference above the
  resident size just before it (the kernel's high-water mark, reset through ``/proc/self/clear_refs``),
  on CUDA ``torch.cuda.max_memory_allocated`` over the same call above ``memory_allocated`` before it.

``reference`` names a row (e.g. the LLM teacher) that the others are divided by: the student-vs-teacher
efficiency claim is one ratio column.
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from rich.table import Table

from bench import registry
from bench.contract import MedRecModel
from bench.results import RunFolder, TimingHistory, read_json
from bench.spec import Entry
from data_prep.dataset import PreparedDataset, Sample
from data_prep.protocol import served


def _in_fresh_process(function, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def count_parameters(model: MedRecModel) -> tuple[int, int]:
    """(trainable, total) parameter counts over the model's networks."""
    modules = [value for value in vars(model).values() if isinstance(value, torch.nn.Module)]
    if not modules:
        tensors = [value for value in model.get_state().values() if isinstance(value, torch.Tensor)]
        return 0, sum(t.numel() for t in tensors)
    parameters = {id(p): p for module in modules for p in module.parameters()}.values()
    return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)


def weight_bytes(model: MedRecModel) -> int:
    """Bytes of the model's weights: the tensors of its networks' state dicts (parameters, buffers and the
    packed weights of quantised layers, shared tensors once); a model without a network, its state's arrays."""
    modules = [value for value in vars(model).values() if isinstance(value, torch.nn.Module)]
    values = [v for module in modules for v in module.state_dict().values()] if modules else list(model.get_state().values())
    seen, total = set(), 0
    for value in values:
        for tensor in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(tensor, torch.Tensor):
                key = (tensor.data_ptr(), tensor.numel(), str(tensor.dtype))
                if key not in seen:
                    seen.add(key)
                    total += tensor.numel() * tensor.element_size()
            elif isinstance(tensor, np.ndarray):
                total += tensor.nbytes
    return total


def _rss_kib(field: str) -> int:
    """VmRSS (current) or VmHWM (peak) of this process, in KiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class ProfileSettings:
    """What ``bench profile`` measures and how: the preset and seed the models train with (when no run
    folder gives their weights), the protocol whose test samples are timed, the device, the batch-size-1
    calls timed per model, which measurements, and the row the others are divided by."""

    preset: str = "paper"
    seed: int = 0
    protocol: str = "last-visit"
    device: str = "cpu"
    repeats: int = 30
    latency: bool = True
    memory: bool = True
    reference: str | None = None


def _train_in_child(dataset: PreparedDataset, entry: Entry, settings: ProfileSettings, threads: int, weights: str) -> float:
    torch.set_num_threads(threads)
    model_class = registry.get(entry.model)
    config = model_class.config_class.preset(settings.preset, **entry.overrides)
    model = model_class(dataset, config, seed=settings.seed, device=settings.device)
    started = time.perf_counter()
    model.fit(dataset.samples("train", settings.protocol), dataset.samples("val", settings.protocol))
    seconds = float(model.fit_report.get("train_seconds", time.perf_counter() - started))
    if "loaded_from" not in model.fit_report:  # the next profile's estimate
        TimingHistory().record(TimingHistory.key(entry.model, config.to_dict(), dataset.fingerprint, settings.protocol), seconds)
    model.save(weights)
    return seconds


def measure_model(dataset: PreparedDataset, entry: Entry, weights: str, settings: ProfileSettings, threads: int) -> dict:
    torch.set_num_threads(threads)
    model_class = registry.get(entry.model)
    model = model_class.load(weights, dataset, device=settings.device)
    samples = dataset.samples("test", settings.protocol)
    test = [s for s, ok in zip(samples, served(samples, model_class.capabilities.needs_history_medications)) if ok]
    if not test:
        raise ValueError(f"{entry.label}: no test sample it can serve")
    trainable, total = count_parameters(model)
    row = {"label": entry.label, "model": entry.model, "params_trainable": trainable, "params_total": total, "test_samples": len(test),
           "weights_mb": weight_bytes(model) / 2**20}

    on_cuda = model.device.type == "cuda"
    if settings.memory:
        row.update(_inference_memory(model, test, on_cuda))
    if settings.latency:
        row.update(_inference_latency(model, test, on_cuda, settings.repeats))
    return row


def _inference_memory(model: MedRecModel, test: Sequence[Sample], on_cuda: bool) -> dict:
    """Peak memory of one whole-test-set inference above what the loaded model already holds (its
    weights, measured apart): the same quantity on CPU (resident set) and CUDA (allocated)."""
    if on_cuda:
        torch.cuda.synchronize(model.device)
        torch.cuda.reset_peak_memory_stats(model.device)
        held = torch.cuda.memory_allocated(model.device)
    clean_peak = _reset_peak_rss()  # the high-water mark restarts from the current size
    baseline_kib = _rss_kib("VmRSS")
    model.predict_proba(test)
    if on_cuda:
        torch.cuda.synchronize(model.device)
        peak = max(0, torch.cuda.max_memory_allocated(model.device) - held) / 2**20
        return {"inference_peak_mb": peak, "memory_kind": "cuda allocated above the loaded model", "baseline_rss_mb": baseline_kib / 1024}
    # without clear_refs the high-water mark includes loading the model: an upper bound, said so
    kind = "rss above the loaded model" if clean_peak else "process rss peak above the loaded model (upper bound)"
    return {"inference_peak_mb": max(0, _rss_kib("VmHWM") - baseline_kib) / 1024, "memory_kind": kind, "baseline_rss_mb": baseline_kib / 1024}


def _inference_latency(model: MedRecModel, test: Sequence[Sample], on_cuda: bool, repeats: int) -> dict:
    """Milliseconds per patient for the whole set in one call and at batch size 1 (medians after warm-up)."""

    def timed(samples: Sequence[Sample]) -> float:
        started = time.perf_counter()
        model.predict_proba(samples)
        if on_cuda:
            torch.cuda.synchronize(model.device)
        return time.perf_counter() - started

    timed(test)
    whole = [timed(test) for _ in range(max(3, repeats // 10))]
    for sample in test[:3]:
        timed([sample])
    single = [timed([test[i % len(test)]]) for i in range(repeats)]
    return {"latency_ms_per_patient": 1000 * statistics.median(whole) / len(test), "latency_ms_batch1": 1000 * statistics.median(single)}


def profile_entries(dataset: PreparedDataset, entries: Sequence[Entry], settings: ProfileSettings = ProfileSettings(), run_dir: str | Path | None = None) -> dict:
    """One row per entry; weights come from ``run_dir`` when given (no training; its unit at the settings'
    seed), else are trained here."""
    labels = [e.label for e in entries]
    seed, reference = settings.seed, settings.reference
    if reference is not None and reference not in labels:
        raise ValueError(f"reference {reference!r} is not among the profiled models {labels}")
    for entry in entries:
        registry.get(entry.model)
    threads = torch.get_num_threads()
    folder = RunFolder(run_dir) if run_dir is not None else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="medrec-profile-") as scratch:
        for entry in entries:
            if folder is not None:
                weights = folder.model_path(entry.label, seed)
                if not weights.exists():
                    raise FileNotFoundError(f"{folder.root} holds no trained {entry.label!r} at seed {seed} ({weights} is missing)")
                metrics_path = folder.metrics_path(entry.label, seed)
                train_seconds = read_json(metrics_path).get("fit_report", {}).get("train_seconds") if metrics_path.exists() else None
            else:
                weights = Path(scratch) / f"{entry.label}.pt"
                train_seconds = _in_fresh_process(_train_in_child, dataset, entry, settings, threads, str(weights))
            row = _in_fresh_process(measure_model, dataset, entry, str(weights), settings, threads)
            row["train_seconds"] = train_seconds
            rows.append(row)
    if reference is not None:
        add_ratios(rows, reference)
    return {"dataset": dataset.name, "device": settings.device, "threads": threads, "protocol": settings.protocol, "reference": reference, "rows": rows}


def add_ratios(rows: list[dict], reference: str) -> None:
    """Latency, memory and size of every row divided by the reference row's (None where that is 0)."""
    ref = next(row for row in rows if row["label"] == reference)
    ratios = {"latency_ratio": "latency_ms_per_patient", "batch1_ratio": "latency_ms_batch1", "weights_ratio": "weights_mb",
              "peak_ratio": "inference_peak_mb", "params_ratio": "params_total"}
    for row in rows:
        for ratio, field in ratios.items():
            if field in row:
                row[ratio] = row[field] / ref[field] if ref[field] > 0 else None


def rich_profile(profile: dict) -> Table:
    reference = profile.get("reference")
    columns = {
        "Params (trainable / total)": lambda r: f"{r['params_trainable']:,} / {r['params_total']:,}",
        "Train s": lambda r: _number(r.get("train_seconds"), ".1f"),
        "ms / patient": lambda r: _number(r.get("latency_ms_per_patient"), ".3f"),
        "ms @ batch 1": lambda r: _number(r.get("latency_ms_batch1"), ".3f"),
        "Weights MB": lambda r: _number(r.get("weights_mb"), ".1f"),
        "Inference peak MB": lambda r: _number(r.get("inference_peak_mb"), ".1f"),
    }
    if reference:
        columns[f"latency ÷ {reference}"] = lambda r: _number(r.get("latency_ratio"), ".3f")
        columns[f"weights ÷ {reference}"] = lambda r: _number(r.get("weights_ratio"), ".3f")
        columns[f"peak ÷ {reference}"] = lambda r: _number(r.get("peak_ratio"), ".3f")
        columns[f"params ÷ {reference}"] = lambda r: _number(r.get("params_ratio"), ".3f")
    kinds = sorted({row["memory_kind"] for row in profile["rows"] if row.get("memory_kind")})
    caption = ("Weights: parameters, buffers and packed weights of the model's networks. Inference peak: one whole-test-set "
               f"inference above what the loaded model holds ({', '.join(kinds)}).") if kinds else None
    table = Table(title=f"Efficiency — {profile['dataset']} on {profile['device']} ({profile['threads']} thread(s))", caption=caption, caption_justify="left")
    table.add_column("Model")
    for name in columns:
        table.add_column(name, justify="right")
    for row in profile["rows"]:
        table.add_row(row["label"], *(render(row) for render in columns.values()))
    return table


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
