"""The small contract every model meets (scikit-learn style), so one harness can run them all.

A model declares what it needs (:class:`Capabilities`), keeps its paper defaults in one config
dataclass (:class:`ModelConfig` subclass), and implements ``fit(train, val)`` and
``predict_proba(samples)``; ``predict_sets`` turns probabilities into medication sets with the
model's decision rule (a threshold unless the model decodes otherwise). ``save``/``load`` let a
resumed run reuse a finished model. Models import this module and :mod:`bench.training`, never the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch

from data_prep.dataset import PreparedDataset, Sample

# paper: each model's published configuration; harness: what this harness changes for mini-batch training;
# quick: the harness preset sized for a 2-core CPU (every model still stops by validation patience)
PRESETS = ("quick", "harness", "paper")


@dataclass(frozen=True)
class Capabilities:
    """What a model needs as input; the harness and the contract test hold models to it."""

    needs_history_medications: bool = False  # cannot predict single-visit samples -> "-" cells
    uses_ddi: bool = False
    uses_molecules: bool = False
    uses_profile: bool = False
    uses_teacher: bool = False


@dataclass
class ModelConfig:
    """The published configuration is each model's dataclass defaults (``--preset paper``). ``HARNESS``
    overrides them with what this harness changes to train the model in mini-batches (``--preset harness``,
    each change documented in the model's docstring); ``QUICK`` overrides the harness preset to fit a 2-core
    CPU (``--preset quick``: larger learning rates, smaller budgets, validation every few steps)."""

    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10  # epochs without validation-PRAUC improvement before stopping
    threshold: float = 0.5

    HARNESS: ClassVar[dict] = {}
    QUICK: ClassVar[dict] = {"epochs": 5}

    @classmethod
    def preset(cls, name: str = "paper", **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")
        values = {"paper": {}, "harness": dict(cls.HARNESS), "quick": {**cls.HARNESS, **cls.QUICK}}[name]
        values.update(overrides)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.__qualname__} has no option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class CapabilityError(ValueError):
    """A sample the model declared it cannot serve (e.g. no medication history)."""


class MedRecModel(ABC):
    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, dataset: PreparedDataset, config: ModelConfig | None = None, seed: int = 0, device: str = "cpu"):
        self.dataset = dataset
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"{self.name} expects a {self.config_class.__qualname__}, got {type(self.config).__qualname__}")
        self.seed = seed
        self.device = torch.device(device)
        self.fit_report: dict = {}

    # ----- to implement ------------------------------------------------------------------------
    @abstractmethod
    def fit(self, train: Sequence[Sample], val: Sequence[Sample]) -> "MedRecModel":
        """Train on ``train``, select (early stopping) on ``val``; fills ``self.fit_report``."""

    @abstractmethod
    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        """Probabilities, float array [len(samples), n_medications]."""

    @abstractmethod
    def get_state(self) -> dict:
        """Everything a trained model needs besides its config: tensors and plain JSON-able values."""

    @abstractmethod
    def set_state(self, state: dict) -> None: ...

    # ----- shared behaviour --------------------------------------------------------------------
    def predict_sets(self, samples: Sequence[Sample], proba: np.ndarray | None = None) -> list[np.ndarray]:
        """The decision rule: medications whose probability reaches the threshold."""
        proba = self.predict_proba(samples) if proba is None else proba
        return [np.flatnonzero(row >= self.config.threshold) for row in proba]

    def check_samples(self, samples: Sequence[Sample]) -> None:
        if self.capabilities.needs_history_medications:
            missing = [s.sample_id for s in samples if not s.history]
            if missing:
                raise CapabilityError(
                    f"{self.name} needs earlier medications; {len(missing)} sample(s) have none (first: {missing[0]})"
                )

    def save(self, path: str | Path) -> Path:
        """Weights with ``torch.save`` (loaded back with ``weights_only=True``), config as JSON beside them."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"state": self.get_state(), "fit_report": self.fit_report}, tmp)
        tmp.replace(path)
        path.with_suffix(".config.json").write_text(json.dumps({"model": self.name, "seed": self.seed, "config": self.config.to_dict()}, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, dataset: PreparedDataset, device: str = "cpu") -> "MedRecModel":
        path = Path(path)
        meta = json.loads(path.with_suffix(".config.json").read_text())
        if meta["model"] != cls.name:
            raise ValueError(f"{path} holds a {meta['model']!r} model, not {cls.name!r}")
        model = cls(dataset, cls.config_class(**meta["config"]), seed=meta["seed"], device=device)
        model.restore(path)
        return model

    def restore(self, path: str | Path) -> None:
        """Weights and fit report written by :meth:`save`, into this model (its config is taken as is)."""
        payload = torch.load(path, map_location=self.device, weights_only=True)
        self.set_state(payload["state"])
        self.fit_report = payload["fit_report"]
