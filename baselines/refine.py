"""REFINE: transformer streams over visit trends and a GATv2 drug memory (Bhoi, Lee, Hsu, Tan, NeurIPS 2023).

Paper: S. Bhoi, M. L. Lee, W. Hsu, N. C. Tan, "REFINE: A Fine-Grained Medication Recommendation
System Using Deep Learning and Personalized Drug Interaction Modeling", NeurIPS 2023. Reference
code: github.com/sumanbhoi/REFINE_codes (``Code/models.py``, ``Code/train_REFINE.py``, the graphs in
``Data/Co-occurrence and interaction graph creation.py``). Run as the LEADER paper adapted it to
MIMIC-III ("diagnosis rather than lab test responses"), on multi-visit samples only.

A sample is the prefix of visits 1..t (t = the current visit). Three streams, each the reference's
sinusoidal positional encoding, input dropout, and two post-LN transformer encoder layers (d 64, 2
heads, FFN 256, dropout 0.1 on the residual branches, no causal mask: the input is the prefix):

- diagnoses: per visit the mean of its diagnosis embeddings (dropout 0.4 on each embedding);
- diagnosis trend (the adaptation's stand-in for the lab-test stream): per visit and diagnosis its
  presence x, and over visits 1..tau the least-squares slope of x against time and the population
  variance of x (:func:`cumulative_trends`), projected 3 |D| -> 64 with dropout 0.4;
- medication trend (earlier visits only): the same features of medication presence (the
  adaptation's stand-in for doses), projected 3 |M| -> 64 with dropout 0.4.

The query is the sum of the three encoders' outputs at their last real position. Drug memory
``Z = GATv2(EHR) - beta GATv2(DDI)`` over identity node features (4 heads x 16, one weight matrix for
source and target, attention dropout 0.4, then ELU and dropout 0.4), beta learned. Readout
``logits = W (q + softmax(q Z^T) Z)``. Loss: ``0.75 BCE + 0.07 multi-label margin + 0.18 balanced``,
the balanced term ``mean_ij p_i p_j (0.65 DDI_ij - 0.35 C_ij)`` in training (C: co-prescription counts
of the training patients' visits, min-max normalised): it penalises predicting interacting pairs and
rewards the pairs prescribed together, so sets are not overly conservative. Threshold 0.5.

Batching. Each sample is its own prefix, right-padded to the batch's longest with key-padding masks;
the encoders are bidirectional within a prefix, so one causal pass per patient would not be the same
model. Trend features are computed per batch in float64 with matrix products (no per-item
regression), and the drug memory once per batch instead of once per sample. The trend features are
built over each sample's own codes only (:func:`trend_inputs`; every other code's features are zero) and
projected by gathering those columns of the projection (:func:`project_trends`): the same sum as the
dense 3 |D|-wide input (1,902 diagnoses on the synthetic cohort; a sample holds a few dozen). A step's
fixed cost is the two drug memories (one GATv2 pass each over the 12,654 EHR and 744 DDI edges plus
self-loops, forward and backward ~9 ms on one thread): larger batches amortise it (``--preset quick``).

Deliberate differences from the published code:

- The adaptation (LEADER's, reconstructed: LEADER published no REFINE code): diagnoses replace lab
  tests in the trend stream, binary medication presence replaces min-max normalised doses (for which
  the smallest dose read as absent), the DDI graph is the dataset's binary one instead of DDInter
  severities (0.33 / 0.66 / 1), labels are the dataset's medications (ATC level 3 on MIMIC), and
  procedures are not read (the reference reads diagnoses, labs and medications only).
- Self-loops in both GATs. Without them a medication with no edge (17 of 50 in the synthetic DDI
  graph) gets a softmax over nothing but -inf: a NaN row that spreads through Z to every output.
- GATv2 from ``torch_geometric`` (``GATv2Conv``, Brody et al.'s definition): one attention vector
  per head. The reference's layer shares one attention vector across its 4 heads. As in the
  reference, one GAT layer runs (it declares two, but its loop stops one short and the output layer
  is commented out), with no bias.
- Co-occurrence from training patients only (the reference counts every patient's visits, test
  included); also the GAT's EHR graph is the dataset's, built from training patients.
- Time for the trends: the visit index (the reference: days since the first prescription date).
  A sample carries no admission time for its current visit, whose diagnoses the trend includes.
  Slope 0 where it is undefined (one visit), as the reference's ``nan -> 0``.
- ``--preset paper`` is the released script's schedule: one Adam step per visit prefix at lr 2e-4
  (without its ``retain_graph=True``), all 10 epochs, the epoch of best validation Jaccard kept.
  ``--preset harness``: mini-batches of 32 prefixes, every loss a batch mean, lr 1e-3 (the policy of
  every baseline here), at most 200 epochs, stopped by validation patience 10 on PRAUC (``quick``: 5).
  In batches of 32 on the synthetic cohort, 1e-3 and 2e-4 reach the same validation PRAUC (0.627), 1e-3
  at epoch 20 and 2e-4 at epoch 80.
- ``--preset quick``: batches of 64 prefixes at lr 1.4e-3 (the rate scaled by the square root of the
  batch), patience 5, and the output bias started at the training samples' log-odds (``base_rate_bias``,
  :func:`bench.training.base_rate_logits`; off in ``paper``/``harness``): each step's drug memories
  serve twice the samples, and the first epochs start from the frequency predictor. Default
  cohort, one thread: seed 0 best 23 of 28 epochs, validation PRAUC 0.708, multi-visit test PRAUC 0.708,
  90 s; seed 1 best 17 of 22, validation 0.704, test 0.700, 74 s. At lr 2e-3 the validation plateau is
  reached earlier but is noisier (seed 0 stopped at epoch 16 with best 11: test 0.695); in batches of 32
  the base-rate bias alone saves 4 epochs (seed 0 best 18 of 23, validation 0.705).
- Training: the protocol's samples (under the default last-visit protocol one prefix per patient,
  its last visit; ``--protocol all-visits`` trains on every prefix as the reference does, less the
  first visits, which have no medication history). Samples without an earlier visit are dropped
  (the reference also trains on first visits, with the medication stream left out).
- The released script trains and evaluates on its first 10 patients only (``data_no_trend[0:10]``)
  and cannot evaluate (``wddi_rate_score`` is undefined); the paper preset applies its settings to
  every patient of the split.
- Standard parts: ``nn.MultiheadAttention`` (Xavier-initialised projections) in place of the
  reference's hand-written attention; the positional encoding is computed for the batch's length
  instead of a 1,000-row table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch_geometric.nn import GATv2Conv

from bench.contract import Capabilities, ModelConfig, Publication
from bench.training import TorchModel, target_tensor
from baselines.layers import CodeSetEmbedding, last_step, margin_loss, pad_visits
from data_prep.code_sets import multi_hot
from data_prep.dataset import PreparedDataset, Sample
from data_prep.protocol import record_visits

TREND_FEATURES = 3  # presence, cumulative slope, cumulative variance


def cumulative_trends(values: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Per visit tau and item i over visits 1..tau: ``[x_tau,i, slope, variance]`` -> ``[B, T, D, 3]``.

    ``values`` [B, T, D], ``times`` [B, T] (right padding is never read by a real position). The
    slope is the least-squares slope of x against time, 0 where it is undefined (one visit, or all
    at one time); the variance is the population variance. Computed in the input's dtype (use float64).
    """
    steps = values.shape[1]
    prefix = torch.ones(steps, steps, dtype=values.dtype, device=values.device).tril()  # [tau, s]: s <= tau
    count = prefix.sum(1)
    mean_time = times @ prefix.T / count  # [B, T]
    deviation = (times.unsqueeze(1) - mean_time.unsqueeze(2)) * prefix  # [B, tau, s]
    spread = deviation.pow(2).sum(-1)  # sum of squared time deviations per prefix
    scale = (times.pow(2).unsqueeze(1) * prefix).sum(-1)
    defined = spread > 1e-12 * scale.clamp(min=1.0)
    slope = (deviation @ values) / torch.where(defined, spread, torch.ones_like(spread)).unsqueeze(-1)
    slope = slope * defined.unsqueeze(-1)
    mean = prefix @ values / count.unsqueeze(-1)
    variance = (prefix @ values.pow(2) / count.unsqueeze(-1) - mean.pow(2)).clamp(min=0.0)
    return torch.stack([values, slope, variance], dim=-1)


def trend_inputs(patients: Sequence[Sequence[Sequence[int]]], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Trend features of each patient's own codes: ``[B, steps, U, 3]`` (float32, computed in float64) and
    the codes ``[B, U]`` they belong to (``patients[b][t]``: the code set of visit t; padding: code 0, all-zero features).

    U is the most distinct codes any patient's visits hold: every other code has presence, slope and
    variance 0 at every visit, so :func:`project_trends` reads these columns only (the same sum as the
    dense ``[B, steps, |codes|, 3]`` features, at a fraction of the width).
    """
    own_codes = [np.unique(np.fromiter((c for visit in visits for c in visit), dtype=np.int64)) for visits in patients]
    width = max([1, *(len(own) for own in own_codes)])
    values = np.zeros((len(patients), steps, width))
    codes = np.zeros((len(patients), width), dtype=np.int64)
    for b, (visits, own) in enumerate(zip(patients, own_codes)):
        codes[b, : len(own)] = own
        for t, visit in enumerate(visits):
            values[b, t, np.searchsorted(own, np.fromiter(visit, dtype=np.int64))] = 1.0
    times = torch.arange(steps, dtype=torch.float64).expand(len(patients), steps)
    return cumulative_trends(torch.from_numpy(values), times).float(), torch.from_numpy(codes)


def project_trends(projection: nn.Linear, features: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``projection`` (over the dense features flattened code-major, ``[|codes| * 3]``) of the features of
    ``codes`` only: ``features`` [B, T, U, 3], ``codes`` [B, U] -> [B, T, out]."""
    weight = projection.weight.t().reshape(-1, TREND_FEATURES, projection.out_features)[codes]  # [B, U, 3, out]
    return torch.einsum("btuk,buko->bto", features, weight) + projection.bias


def cooccurrence_weights(train: Sequence[Sample], n_medications: int) -> np.ndarray:
    """Co-prescription counts over every visit of the training patients, min-max normalised, zero diagonal.

    Each patient counts once: its sample with the most visits (under ``all-visits`` the others are
    its prefixes) gives its earlier visits and the current visit's medications.
    """
    incidence = multi_hot([v.medications for v in record_visits(train)], n_medications).astype(np.float64)
    counts = incidence.T @ incidence
    np.fill_diagonal(counts, 0.0)
    low, high = counts.min(), counts.max()
    return ((counts - low) / (high - low) if high > low else np.zeros_like(counts)).astype(np.float32)


def balanced_loss(proba: torch.Tensor, balance: torch.Tensor) -> torch.Tensor:
    """``mean_ij p_i p_j B_ij`` per sample, averaged over the batch (B = beta DDI - (1 - beta) C)."""
    return torch.einsum("bi,ij,bj->b", proba, balance, proba).mean() / balance.numel()


def sinusoidal_positions(steps: int, dim: int, device: torch.device) -> torch.Tensor:
    """The transformer's fixed positional encoding for positions 0..steps-1 -> ``[steps, dim]``."""
    position = torch.arange(steps, dtype=torch.float32, device=device).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    encoding = torch.zeros(steps, dim, device=device)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency)
    return encoding


class PostNormEncoderLayer(nn.Module):
    """Self-attention and feed-forward blocks, each ``LayerNorm(x + Dropout(block(x)))`` (the reference's layer)."""

    def __init__(self, dim: int, heads: int, feedforward: int, dropout: float):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.feedforward = nn.Sequential(nn.Linear(dim, feedforward), nn.ReLU(), nn.Linear(feedforward, dim))
        self.attention_norm = nn.LayerNorm(dim)
        self.feedforward_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(x, x, x, key_padding_mask=padding, need_weights=False)
        x = self.attention_norm(x + self.dropout(attended))
        return self.feedforward_norm(x + self.dropout(self.feedforward(x)))


class VisitStream(nn.Module):
    """Positional encoding, input dropout, encoder layers; returns the last real position ``[B, dim]``."""

    def __init__(self, config: "REFINE.Config"):
        super().__init__()
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.layers = nn.ModuleList(
            PostNormEncoderLayer(config.dim, config.heads, config.feedforward, config.encoder_dropout) for _ in range(config.layers)
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        steps = x.shape[1]
        x = self.input_dropout(x + sinusoidal_positions(steps, x.shape[-1], x.device))
        padding = torch.arange(steps, device=x.device).unsqueeze(0) >= lengths.unsqueeze(1)
        for layer in self.layers:
            x = layer(x, padding)
        return last_step(x, lengths)


class GraphAttentionMemory(nn.Module):
    """One GATv2 layer over identity node features of one medication graph (self-loops added) -> ``[M, dim]``."""

    def __init__(self, adjacency: np.ndarray, config: "REFINE.Config"):
        super().__init__()
        n_nodes = adjacency.shape[0]
        if config.dim % config.gat_heads:
            raise ValueError(f"REFINE dim ({config.dim}) must be a multiple of gat_heads ({config.gat_heads})")
        self.register_buffer("nodes", torch.eye(n_nodes), persistent=False)
        edges = np.stack(np.nonzero(np.asarray(adjacency) > 0)).astype(np.int64)  # [2, E] source, target
        self.register_buffer("edges", torch.from_numpy(edges), persistent=False)
        self.attention = GATv2Conv(
            n_nodes, config.dim // config.gat_heads, heads=config.gat_heads, dropout=config.gat_dropout,
            add_self_loops=True, bias=False, share_weights=True,
        )
        self.dropout = nn.Dropout(config.gat_dropout)

    def forward(self) -> torch.Tensor:
        return self.dropout(F.elu(self.attention(self.nodes, self.edges)))


class REFINENetwork(nn.Module):
    def __init__(self, dataset: PreparedDataset, config: "REFINE.Config"):
        super().__init__()
        dim = config.dim
        self.diagnoses = CodeSetEmbedding(dataset.n_diagnoses, dim, config.input_dropout, reduce="mean", init_range=None)
        self.diagnosis_trend = nn.Linear(TREND_FEATURES * dataset.n_diagnoses, dim)
        self.medication_trend = nn.Linear(TREND_FEATURES * dataset.n_medications, dim)
        for projection in (self.diagnosis_trend, self.medication_trend):
            nn.init.uniform_(projection.weight, -0.1, 0.1)  # the reference's init_weights (biases keep the default)
        self.trend_dropout = nn.Dropout(config.input_dropout)
        self.diagnosis_stream = VisitStream(config)
        self.diagnosis_trend_stream = VisitStream(config)
        self.medication_stream = VisitStream(config)
        self.ehr_memory = GraphAttentionMemory(dataset.ehr_adj, config)
        self.ddi_memory = GraphAttentionMemory(dataset.ddi_adj, config)
        self.ddi_weight = nn.Parameter(torch.empty(1).uniform_(-0.1, 0.1))
        self.output = nn.Linear(dim, dataset.n_medications)

    def drug_memory(self) -> torch.Tensor:
        """``[M, dim]``: co-prescription knowledge minus the learned share of interaction knowledge."""
        return self.ehr_memory() - self.ddi_memory() * self.ddi_weight

    def forward(self, batch: dict) -> torch.Tensor:
        lengths = batch["lengths"]
        query = (
            self.diagnosis_stream(self.diagnoses(batch["diagnoses"], batch["diagnosis_mask"]), lengths)
            + self.diagnosis_trend_stream(self.trend_dropout(project_trends(self.diagnosis_trend, batch["diagnosis_trends"], batch["diagnosis_trend_codes"])), lengths)
            + self.medication_stream(self.trend_dropout(project_trends(self.medication_trend, batch["medication_trends"], batch["medication_trend_codes"])), lengths - 1)
        )
        memory = self.drug_memory()
        read = torch.softmax(query @ memory.T, dim=-1) @ memory
        return self.output(query + read)


class REFINE(TorchModel):
    name = "refine"
    typical_seconds = 86  # quick, default cohort, one thread: the main job's 3-seed mean (README)
    publication = Publication("Bhoi et al., NeurIPS 2023", "2023-12")
    capabilities = Capabilities(needs_history_medications=True)

    @dataclass
    class Config(ModelConfig):
        epochs: int = 10
        batch_size: int = 1  # the reference: one Adam step per visit prefix
        lr: float = 2e-4
        patience: int | None = None  # every epoch runs; the best validation Jaccard is kept
        selection: str = "jaccard"
        dim: int = 64
        heads: int = 2
        layers: int = 2
        feedforward: int = 256
        encoder_dropout: float = 0.1
        input_dropout: float = 0.4
        gat_heads: int = 4
        gat_dropout: float = 0.4
        bce_weight: float = 0.75
        margin_weight: float = 0.07
        balanced_weight: float = 0.18
        interaction_share: float = 0.65  # beta of the balanced loss: DDI penalty vs co-prescription reward
        base_rate_bias: bool = False  # True: the output bias starts at the training log-odds (module docstring)

        HARNESS: ClassVar[dict] = {"batch_size": 32, "lr": 1e-3, "epochs": 200}  # mini-batches (module docstring)
        QUICK: ClassVar[dict] = {"patience": 5, "batch_size": 64, "lr": 1.4e-3, "base_rate_bias": True}  # module docstring

        def __post_init__(self) -> None:
            if not 0.0 <= self.interaction_share <= 1.0:
                raise ValueError(f"REFINE interaction_share must be in [0, 1], got {self.interaction_share}")

    config_class = Config

    # ----- training ----------------------------------------------------------------------------
    def build_network(self) -> nn.Module:
        return REFINENetwork(self.dataset, self.config)

    def output_bias(self) -> torch.Tensor:
        return self.network.output.bias

    def train_samples(self, train: Sequence[Sample]) -> list[Sample]:
        return [s for s in train if s.history]

    def fit(self, train: Sequence[Sample], val: Sequence[Sample]) -> "REFINE":
        share = self.config.interaction_share
        cooccurrence = cooccurrence_weights(train, self.dataset.n_medications)
        balance = share * self.dataset.ddi_adj.astype(np.float32) - (1.0 - share) * cooccurrence
        self.balance = torch.as_tensor(balance, device=self.device)  # read by the training loss only
        return super().fit(train, val)

    def loss(self, batch: dict, epoch: int) -> torch.Tensor:
        logits = self.network(batch)
        proba = torch.sigmoid(logits)
        target = batch["target"]
        config = self.config
        return (
            config.bce_weight * F.binary_cross_entropy_with_logits(logits, target)
            + config.margin_weight * margin_loss(proba, target)
            + config.balanced_weight * balanced_loss(proba, self.balance)
        )

    # ----- batches -----------------------------------------------------------------------------
    def collate(self, samples: Sequence[Sample]) -> dict:
        """Padded prefixes: diagnosis codes and trends over visits 1..t, medication trends over 1..t-1."""
        self.check_samples(samples)
        diagnoses, diagnosis_mask, lengths = pad_visits([[v.diagnoses for v in s.history] + [s.diagnoses] for s in samples])
        steps = diagnoses.shape[1]
        diagnosis_trends, diagnosis_codes = trend_inputs([[v.diagnoses for v in s.history] + [s.diagnoses] for s in samples], steps)
        medication_trends, medication_codes = trend_inputs([[v.medications for v in s.history] for s in samples], steps - 1)
        batch = {
            "diagnoses": diagnoses,
            "diagnosis_mask": diagnosis_mask,
            "lengths": lengths,
            "diagnosis_trends": diagnosis_trends,
            "diagnosis_trend_codes": diagnosis_codes,
            "medication_trends": medication_trends,
            "medication_trend_codes": medication_codes,
            "target": target_tensor(samples, self.dataset.n_medications),
        }
        return {key: value.to(self.device) for key, value in batch.items()}

    def logits(self, batch: dict) -> torch.Tensor:
        return self.network(batch)
