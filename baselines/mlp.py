"""``mlp``: logistic regression or a one-hidden-layer MLP over the current visit's codes.

Input: the multi-hot of the current visit's diagnoses and procedures (no history, no profile), so it
serves single- and multi-visit patients alike and shows how much the sequence models gain from history.
``hidden_dim = 0`` makes it plain multi-label logistic regression. Trained by the shared loop
(binary cross-entropy, early stopping on validation PRAUC).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from bench.contract import Capabilities, ModelConfig
from bench.training import TorchModel, target_tensor
from data_prep.code_sets import multi_hot
from data_prep.dataset import Sample


@dataclass
class MLPConfig(ModelConfig):
    hidden_dim: int = 256  # 0: logistic regression
    dropout: float = 0.3
    batch_size: int = 64
    weight_decay: float = 1e-5

    QUICK: ClassVar[dict] = {"epochs": 60, "patience": 5}


class CurrentVisitMLP(TorchModel):
    name = "mlp"
    typical_seconds = 7  # quick, default cohort, one thread: the main job's 3-seed mean (README)
    floor = 2  # the current-visit floor
    config_class = MLPConfig
    capabilities = Capabilities()

    def build_network(self) -> nn.Module:
        n_in = self.dataset.n_diagnoses + self.dataset.n_procedures
        n_out = self.dataset.n_medications
        if self.config.hidden_dim == 0:
            return nn.Linear(n_in, n_out)
        return nn.Sequential(
            nn.Linear(n_in, self.config.hidden_dim),
            nn.ReLU(),
            nn.Dropout(self.config.dropout),
            nn.Linear(self.config.hidden_dim, n_out),
        )

    def collate(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        codes = np.concatenate(
            [multi_hot([s.diagnoses for s in samples], self.dataset.n_diagnoses), multi_hot([s.procedures for s in samples], self.dataset.n_procedures)],
            axis=1,
        )
        return {
            "codes": torch.from_numpy(codes).float().to(self.device),
            "target": target_tensor(samples, self.dataset.n_medications).to(self.device),
        }

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.network(batch["codes"])
