"""``freq``: the most frequently prescribed medications, whatever the patient (the floor of every table).

The probability of a medication is the share of training samples whose target contains it, identical for
every test sample. Its decision rule recommends the ``top_k`` most frequent medications, ``top_k`` being
by default the mean size of a training target (rounded): a fixed 0.5 threshold would recommend nothing
on most vocabularies. Setting ``top_k`` to 0 falls back to the shared threshold rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch

from bench.contract import Capabilities, MedRecModel, ModelConfig, training_record
from data_prep.code_sets import multi_hot
from data_prep.dataset import Sample


@dataclass
class FrequencyConfig(ModelConfig):
    top_k: int | None = None  # None: mean training-target size; 0: use ``threshold`` instead

    QUICK: ClassVar[dict] = {}


class MostFrequent(MedRecModel):
    name = "freq"
    floor = 0  # the population floor: first in every table
    config_class = FrequencyConfig
    capabilities = Capabilities()

    frequency: np.ndarray | None = None
    top_k: int = 0

    def fit(self, train: Sequence[Sample], val: Sequence[Sample]) -> "MostFrequent":
        if not train:
            raise ValueError(f"{self.name}: no training sample")
        started = time.perf_counter()
        targets = multi_hot([s.target for s in train], self.dataset.n_medications)
        self.frequency = targets.mean(0, dtype=np.float64).astype(np.float32)
        self.top_k = int(round(targets.sum(1).mean())) if self.config.top_k is None else self.config.top_k
        self.fit_report = {"train_seconds": time.perf_counter() - started, "top_k": self.top_k, "training_samples": training_record(train)}
        return self

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        if self.frequency is None:
            raise RuntimeError(f"{self.name} is not fitted")
        return np.tile(self.frequency, (len(samples), 1))

    def decision_rule(self) -> str:
        return f"top {self.top_k} most frequent" if self.top_k else super().decision_rule()

    def predict_sets(self, samples: Sequence[Sample], proba: np.ndarray | None = None) -> list[np.ndarray]:
        if not self.top_k:
            return super().predict_sets(samples, proba)
        proba = self.predict_proba(samples) if proba is None else proba
        # stable sort: ties go to the lower medication index, so the rule is deterministic
        top = np.sort(np.argsort(-proba, axis=1, kind="stable")[:, : self.top_k], axis=1)
        return list(top)

    def get_state(self) -> dict:
        return {"frequency": torch.from_numpy(self.frequency), "top_k": self.top_k}

    def set_state(self, state: dict) -> None:
        self.frequency = state["frequency"].numpy()
        self.top_k = int(state["top_k"])
