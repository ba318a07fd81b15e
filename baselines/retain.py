"""RETAIN: reverse-time attention over the visit sequence (Choi et al., NeurIPS 2016).

Paper: E. Choi, M. T. Bahadori, J. Sun, J. Kulas, A. Schuetz, W. Stewart, "RETAIN: An Interpretable
Predictive Model for Healthcare using Reverse Time Attention Mechanism", NeurIPS 2016. Reference
code as the medication-recommendation papers run it: github.com/ycq091044/SafeDrug
(``Retain`` in ``src/models.py``, training in ``src/Retain.py``).

A visit embedding is the sum of its diagnosis, procedure and medication code embeddings (dropout
0.5 on each code embedding). The visits run in reverse time order through two GRUs: the alpha GRU
gives one score per visit, softmax-normalised over the visits (visit-level attention); the beta GRU
gives tanh gates per embedding dimension (code-level attention). The context
``sum_t alpha_t * beta_t * v_t`` goes through a linear layer to the medication logits. Loss: binary
cross-entropy (the reference's only loss). ``--preset paper`` is the published configuration: Adam at
lr 5e-4, one sample per step, all 50 epochs with the epoch of best validation Jaccard kept, embedding
size 64, decision threshold 0.4 (the reference's evaluation threshold); ``--preset harness`` trains in
mini-batches and stops by validation patience 10 on PRAUC (below); ``--preset quick`` is the harness
preset at lr 5e-3 with patience 5 and a 60-epoch cap.

Inputs, as the LEADER paper uses RETAIN: the earlier visits with their diagnoses, procedures and
medications, then the current visit with its diagnoses and procedures only. The current visit's
medications are the target and are never an input, so single-visit patients are served (their
sequence is the current visit alone).

Deliberate differences from the published code:

- Visit-level attention is a softmax over the visits. The reference applies the softmax to the
  ``[visits, 1]`` scores along the last axis (size 1), so every visit weight is exactly 1 and the
  alpha GRU and its linear layer receive no gradient. No option keeps it: it silently removes
  half of the model, which no comparison should want.
- Reverse time order, as in the paper; the reference feeds the visits in forward order.
- The current visit's diagnoses and procedures are inputs (LEADER's protocol). The reference
  predicts visit t from visits 1..t-1 only (all their codes, medications included), so it never
  sees the current diagnoses and cannot serve first visits. It has no label leak: the current
  visit's medications are not fed there either.
- Training samples are the protocol's: under ``last-visit`` one per patient, its last visit; the
  reference sums the losses of visits 2..T of a patient into one step (``--protocol all-visits``
  trains on every visit, one sample per step at the paper preset).
- ``--preset harness``/``quick``: mini-batches of patients (padded visits, masked attention).
- ``--preset harness``/``quick``: learning rate for mini-batches (the policy of every baseline here): 2e-3, chosen for batches of
  32, instead of the reference's 5e-4 with one Adam step per patient. Batches take about 30 times
  fewer steps; 2e-3 is the rate that SafeDrug (the same reference rate and optimiser) needs to
  stop underfitting on the synthetic cohort. ``--preset paper`` keeps the reference's rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import nn

from bench.contract import Capabilities, ModelConfig, Publication
from bench.training import TorchModel, target_tensor
from baselines.layers import CodeSetEmbedding, masked_softmax, pad_visits
from data_prep.dataset import PreparedDataset, Sample

CODE_KINDS = ("diagnoses", "procedures", "medications")


class RETAINNetwork(nn.Module):
    def __init__(self, dataset: PreparedDataset, config: "RETAIN.Config"):
        super().__init__()
        dim = config.dim
        sizes = {"diagnoses": dataset.n_diagnoses, "procedures": dataset.n_procedures, "medications": dataset.n_medications}
        # N(0, 1) initialisation, as the reference's plain nn.Embedding
        self.codes = nn.ModuleDict({kind: CodeSetEmbedding(sizes[kind], dim, config.dropout, init_range=None) for kind in CODE_KINDS})
        self.alpha_gru = nn.GRU(dim, dim, batch_first=True)
        self.beta_gru = nn.GRU(dim, dim, batch_first=True)
        self.alpha_score = nn.Linear(dim, 1)
        self.beta_gate = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dataset.n_medications)

    def attention(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Visit embeddings, visit weights alpha [B, T] and gates beta [B, T, dim], in reverse time order."""
        visits = sum(self.codes[kind](batch[kind], batch[f"{kind}_mask"]) for kind in CODE_KINDS)
        lengths = batch["lengths"]
        steps = torch.arange(visits.shape[1], device=visits.device)
        real = steps.unsqueeze(0) < lengths.unsqueeze(1)
        # reversed[b, t] = visits[b, lengths[b] - 1 - t]; padding stays at the end, so the GRUs
        # (causal) give the same outputs at real steps as over the unpadded sequence
        source = (lengths.unsqueeze(1) - 1 - steps.unsqueeze(0)).clamp(min=0)
        reversed_visits = visits.gather(1, source.unsqueeze(-1).expand_as(visits))
        alpha = masked_softmax(self.alpha_score(self.alpha_gru(reversed_visits)[0]).squeeze(-1), real)
        beta = torch.tanh(self.beta_gate(self.beta_gru(reversed_visits)[0]))
        return reversed_visits, alpha, beta

    def forward(self, batch: dict) -> torch.Tensor:
        visits, alpha, beta = self.attention(batch)
        context = (alpha.unsqueeze(-1) * beta * visits).sum(1)
        return self.output(context)


class RETAIN(TorchModel):
    name = "retain"
    typical_seconds = 44  # quick, default cohort, one thread: the main job's 3-seed mean (README)
    publication = Publication("Choi et al., NeurIPS 2016", "2016-12")
    capabilities = Capabilities()

    @dataclass
    class Config(ModelConfig):
        epochs: int = 50
        batch_size: int = 1  # the reference: one Adam step per patient
        lr: float = 5e-4
        dim: int = 64
        dropout: float = 0.5
        threshold: float = 0.4
        patience: int | None = None  # every epoch runs; the best validation Jaccard is kept
        selection: str = "jaccard"

        HARNESS: ClassVar[dict] = {"batch_size": 32, "lr": 2e-3}  # mini-batches (module docstring)
        # 2,000 synthetic patients: best validation epoch 17 of 22 at 5e-3 (42 of 47 at the harness's 2e-3, same PRAUC)
        QUICK: ClassVar[dict] = {"epochs": 60, "patience": 5, "lr": 5e-3}

    config_class = Config

    def build_network(self) -> nn.Module:
        return RETAINNetwork(self.dataset, self.config)

    def collate(self, samples: Sequence[Sample]) -> dict:
        """Earlier visits with all their codes, then the current visit without medications."""
        sequences = {
            "diagnoses": [[v.diagnoses for v in s.history] + [s.diagnoses] for s in samples],
            "procedures": [[v.procedures for v in s.history] + [s.procedures] for s in samples],
            "medications": [[v.medications for v in s.history] + [()] for s in samples],
        }
        batch = {}
        for kind in CODE_KINDS:
            batch[kind], batch[f"{kind}_mask"], batch["lengths"] = pad_visits(sequences[kind])
        batch["target"] = target_tensor(samples, self.dataset.n_medications)
        return {k: v.to(self.device) for k, v in batch.items()}

    def logits(self, batch: dict) -> torch.Tensor:
        return self.network(batch)
