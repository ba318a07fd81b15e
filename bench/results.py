"""The run folder (README, "Results"): layout, atomic writes, environment capture, resume bookkeeping.

```
results/<run-id>/
  config.json                       the run's spec (bench.spec.RunSpec), the data's fingerprint, every entry's config
  models/<label>.seed<k>.pt         weights (MedRecModel.save) + .config.json + .key.json (what trained them)
  predictions/<label>.seed<k>.npz   validation and test probabilities, predicted sets (multi-hot), served
                                    masks (rows in the protocol's sample order; no patient id), the unit's key
  metrics/<label>.seed<k>.json      fit report, decision rule and threshold, environment (versions, git
                                    commit, device) of the process that trained it
  summary.json                      per model, group, metric: mean, interval, seed values; tests; retention
```
Every file is written atomically (:func:`data_prep.atomic.write_atomic`), so a killed run leaves
either the old file or the new one. A unit is one entry at one training seed. Its key covers
the model, config, seed, dataset, protocol, decision rule, a digest of the model's code (its module
and every project module it imports) and the torch / transformers / peft versions; predictions are
written last and carry it, so a unit is complete exactly when its predictions exist with a matching
key, and changed code or libraries retrain instead of reusing. Only JSON and ``.npz`` without pickles
are read back, plus model weights through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.cache import source_digest, stable_hash
from data_prep.atomic import write_atomic

SUMMARY = "summary.json"


def write_json(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=_json_default)))


def write_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    return write_atomic(path, write)


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple, set)):
        return list(value.tolist() if isinstance(value, np.ndarray) else value)
    return str(value)


def file_stem(label: str) -> str:
    """A label ("w/o KD") as a file name ("w_o_KD"); the runner refuses labels that collide."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._")
    if not stem:
        raise ValueError(f"label {label!r} gives no usable file name")
    return stem


class RunFolder:
    """Paths and completion bookkeeping of one ``results/<run-id>/`` folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def summary_path(self) -> Path:
        return self.root / SUMMARY

    def model_path(self, label: str, seed: int) -> Path:
        return self.root / "models" / f"{file_stem(label)}.seed{seed}.pt"

    def predictions_path(self, label: str, seed: int) -> Path:
        return self.root / "predictions" / f"{file_stem(label)}.seed{seed}.npz"

    def metrics_path(self, label: str, seed: int) -> Path:
        return self.root / "metrics" / f"{file_stem(label)}.seed{seed}.json"

    # ----- resume --------------------------------------------------------------------------------
    def trained_model(self, label: str, seed: int, key: str) -> Path | None:
        """The saved weights of this unit when a previous run trained them with the same key."""
        weights = self.model_path(label, seed)
        stamp = weights.with_suffix(".key.json")
        if not (weights.exists() and stamp.exists()):
            return None
        return weights if read_json(stamp).get("key") == key else None

    def mark_trained(self, label: str, seed: int, key: str) -> None:
        write_json(self.model_path(label, seed).with_suffix(".key.json"), {"key": key})

    def write_predictions(self, label: str, seed: int, key: str, **arrays: np.ndarray) -> Path:
        """Rows in the protocol's sample order, which the key's dataset fingerprint fixes: no patient id is stored."""
        return write_npz(self.predictions_path(label, seed), entry_key=np.asarray(key), **arrays)

    def is_finished(self, label: str, seed: int, key: str) -> bool:
        """Whether this unit's predictions are stored with this key (reads the key alone, not the arrays)."""
        path = self.predictions_path(label, seed)
        if not path.is_file():
            return False
        with np.load(path, allow_pickle=False) as stored:
            return str(stored["entry_key"]) == key

    def finished_predictions(self, label: str, seed: int, key: str) -> dict[str, np.ndarray] | None:
        """The stored predictions when they were made by this exact unit, else ``None``."""
        path = self.predictions_path(label, seed)
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["entry_key"]) != key:
                return None
            return {name: stored[name] for name in stored.files if name != "entry_key"}

    SHAREABLE = ("config.json", SUMMARY, "metrics/*.json")

    def share(self, out: str | Path) -> int:
        """Copy the aggregates (``SHAREABLE``) to a new folder ``out``, atomically; the count of files copied.

        Weights and predictions (per-patient probabilities) stay behind: what a run shares is its numbers.
        """
        self.require()
        files = [path for pattern in self.SHAREABLE for path in sorted(self.root.glob(pattern))]

        def copy(staging: Path) -> None:
            for path in files:
                target = staging / path.relative_to(self.root)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())

        write_atomic(out, copy, folder=True, existing="refuse")
        return len(files)

    def require(self) -> "RunFolder":
        """For commands that only read a run: one clear error when it is not there."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"run directory {self.root} does not exist")
        if not self.summary_path.exists():
            raise FileNotFoundError(f"{self.root} has no {SUMMARY}: the run has not finished (rerun the same `bench run` to complete it)")
        return self


class TimingHistory:
    """Seconds each model took to train on this machine (model, config, data, protocol, host), in the cache,
    so a run can say before it starts what its plan will cost. Written atomically; last writer wins."""

    def __init__(self, path: str | Path | None = None):
        from data_prep.cache import cache_root

        self.path = Path(path) if path is not None else cache_root() / "timings.json"

    @staticmethod
    def key(model: str, config: dict, dataset_fingerprint: str, protocol: str) -> str:
        return stable_hash(model, _jsonable(config), dataset_fingerprint, protocol, platform.node())

    def _read(self) -> dict:
        try:
            return read_json(self.path) if self.path.is_file() else {}
        except ValueError:
            return {}

    def get(self, key: str) -> float | None:
        return self._read().get(key)

    def estimate(self, key: str, model: str) -> float | None:
        """The seconds recorded under ``key``, else the latest of ``model`` on this machine under any config or
        data: an order of magnitude, enough to start long units first (:mod:`bench.plan`)."""
        history = self._read()
        return history.get(key, history.get(self._latest(model)))

    @staticmethod
    def _latest(model: str) -> str:
        return f"latest:{model}@{platform.node()}"

    def record(self, key: str, seconds: float, model: str | None = None) -> None:
        write_json(self.path, {**self._read(), key: seconds, **({self._latest(model): seconds} if model else {})})


FRAMEWORKS = ("torch", "transformers", "peft")


def weights_key(model_class: type, config: dict, seed: int, dataset_fingerprint: str, protocol: str, deterministic: bool = False, threads: int = 1) -> str:
    """What determines a unit's trained weights: model, config, seed, data, protocol, kernels, threads, code and frameworks."""
    code = source_digest(model_class.__module__)
    return stable_hash(model_class.name, _jsonable(config), seed, dataset_fingerprint, protocol, deterministic, threads, code, {f: _version(f) for f in FRAMEWORKS})


def entry_key(weights: str, decision: str) -> str:
    """What determines a unit's predictions: its weights and the run's decision rule."""
    return stable_hash(weights, decision)


def _jsonable(obj: Any) -> Any:
    """What ``obj`` reads back as after a JSON round trip (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj, default=_json_default))


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment_info(dataset_fingerprint: str, device: str) -> dict:
    import torch

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "git_commit": _git_commit(),
        "dataset_fingerprint": dataset_fingerprint,
        "versions": {name: _version(name) for name in ("medrec-bench", "torch", "transformers", "peft", "torch-geometric", "numpy", "scipy", "scikit-learn", "rdkit")},
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda_version"] = torch.version.cuda
    return info
