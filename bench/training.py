"""One mini-batch training loop for every model whose training is plain gradient descent.

A :class:`TorchModel` says how to build its network, collate samples into a padded batch, compute
its loss and its logits; this module does the rest: seeded shuffling, Adam, early stopping on
validation PRAUC with the best weights restored, batched inference, and state for save/load.
The reference repositories train one patient at a time; here every step is a padded mini-batch.
"""

from __future__ import annotations

import copy
import time
from abc import abstractmethod
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from bench.contract import MedRecModel, seed_everything
from bench.metrics import multi_hot, prauc_per_sample
from data_prep.dataset import Sample

EpochCallback = Callable[..., None]


def pad_sequences(seqs: Sequence[Sequence[int]], pad: int = 0, min_len: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded LongTensor [B, L] and a bool mask [B, L] (True = real element)."""
    length = max([min_len, *(len(s) for s in seqs)])
    out = torch.full((len(seqs), length), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, : len(s)] = True
    return out, mask


def target_tensor(samples: Sequence[Sample], n_medications: int) -> torch.Tensor:
    return torch.from_numpy(multi_hot([s.target for s in samples], n_medications)).float()


def validation_prauc(proba: np.ndarray, samples: Sequence[Sample], n_medications: int) -> float:
    return float(prauc_per_sample(multi_hot([s.target for s in samples], n_medications), proba).mean())


class TorchModel(MedRecModel):
    """A model trained by :func:`train_network`. Subclasses implement the four abstract methods."""

    network: nn.Module | None = None
    on_epoch: EpochCallback | None = None  # set by the harness to drive a progress bar

    @abstractmethod
    def build_network(self) -> nn.Module: ...

    @abstractmethod
    def collate(self, samples: Sequence[Sample]) -> Any:
        """A batch ready for :meth:`loss` / :meth:`logits`, tensors on ``self.device``."""

    @abstractmethod
    def logits(self, batch: Any) -> torch.Tensor:
        """[B, n_medications] pre-sigmoid scores."""

    def loss(self, batch: Any, epoch: int) -> torch.Tensor:
        """Default: binary cross-entropy against the target multi-hot (``batch['target']``)."""
        return nn.functional.binary_cross_entropy_with_logits(self.logits(batch), batch["target"])

    def end_of_epoch(self, epoch: int) -> None:
        """Hook for per-epoch schedules (e.g. a DDI-loss weight)."""

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.network.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)

    def train_samples(self, train: Sequence[Sample]) -> list[Sample]:
        """Samples the loop trains on (a model may drop those it cannot use, e.g. without history)."""
        return list(train)

    # ----- contract ----------------------------------------------------------------------------
    def fit(self, train: Sequence[Sample], val: Sequence[Sample]) -> "TorchModel":
        seed_everything(self.seed)
        self.network = self.build_network().to(self.device)
        self.fit_report = train_network(self, self.train_samples(train), self.train_samples(val))
        return self

    @torch.no_grad()
    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        self.check_samples(samples)
        if self.network is None:
            raise RuntimeError(f"{self.name} is not fitted")
        self.network.eval()
        out = np.zeros((len(samples), self.dataset.n_medications), dtype=np.float32)
        step = max(self.config.batch_size, 256)
        for start in range(0, len(samples), step):
            chunk = samples[start : start + step]
            out[start : start + len(chunk)] = torch.sigmoid(self.logits(self.collate(chunk))).float().cpu().numpy()
        return out

    def get_state(self) -> dict:
        return {"network": self.network.state_dict()}

    def set_state(self, state: dict) -> None:
        self.network = self.build_network().to(self.device)
        self.network.load_state_dict(state["network"])
        self.network.eval()


def train_network(model: TorchModel, train: Sequence[Sample], val: Sequence[Sample]) -> dict:
    """Adam over shuffled mini-batches; keep the weights of the best validation PRAUC."""
    config = model.config
    if not train:
        raise ValueError(f"{model.name}: no training sample")
    optimizer = model.make_optimizer()
    rng = np.random.default_rng(model.seed)
    best_score, best_state, best_epoch, stale = -np.inf, None, -1, 0
    history = []
    started = time.perf_counter()
    for epoch in range(config.epochs):
        model.network.train()
        order = rng.permutation(len(train))
        losses = []
        for start in range(0, len(order), config.batch_size):
            batch_samples = [train[i] for i in order[start : start + config.batch_size]]
            loss = model.loss(model.collate(batch_samples), epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        model.end_of_epoch(epoch)
        score = validation_prauc(model.predict_proba(val), val, model.dataset.n_medications) if val else -float(np.mean(losses))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_prauc": score})
        if score > best_score:
            best_score, best_epoch, stale = score, epoch + 1, 0
            best_state = copy.deepcopy(model.network.state_dict())
        else:
            stale += 1
        if model.on_epoch is not None:
            model.on_epoch(epoch=epoch + 1, epochs=config.epochs, loss=history[-1]["loss"], val_prauc=score)
        if stale >= config.patience:
            break
    model.network.load_state_dict(best_state)
    model.network.eval()
    return {
        "best_epoch": best_epoch,
        "best_val_prauc": float(best_score),
        "epochs_run": len(history),
        "train_seconds": time.perf_counter() - started,
        "history": history,
    }
