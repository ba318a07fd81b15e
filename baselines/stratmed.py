"""StratMed: relevance-stratified per-visit graphs for long-tail codes (Li et al., KBS 2024).

Paper: X. Li, S. Liang, Y. Hou, T. Ma, "StratMed: Relevance stratification between biomedical entities
for sparsity on medication recommendation", Knowledge-Based Systems 284 (2024) 111239 (arXiv
2308.16781). Reference code: github.com/lixiang-222/StratMed at 3ff2cda (``src/main.py``,
``src/models.py``, ``src/util.py``); line numbers below are of that commit.

Two stages, both trained on the protocol's training samples with the same supervised loss.

1. Basic model (the reference's "pre-training", ``BasicModel``, ``models.py`` 13-91): the sums of the
   current visit's diagnosis and procedure embeddings and of the previous visit's medication embeddings
   (zeros at a first visit; dropout 0.5 on every code embedding), concatenated, ReLU, one linear layer to
   the medications. No GRU runs (the reference builds three and never calls them). A strong simple floor:
   ``stage="basic"`` (``--set stratmed.stage=basic``) stops here and reports it.
2. Graph model (``AdvancedModel``/``GraphNet``, ``models.py`` 164-451). Relevance stratification
   (``main.py`` 253-337): on the training records, co-occurrence counts of medication-medication,
   medication-diagnosis and medication-procedure pairs within a visit are cut into "pyramid" levels:
   level 0 below the first count of 5, then thresholds at the ``a * k**i``-th largest count (a = 60
   for medication pairs, 150 for diagnosis and procedure pairs, k = 2). Per visit, the nodes are its
   diagnoses, its procedures and the previous visit's medications, each embedded by a table
   initialised from the basic model's. (a) A complete graph over the medications: messages weighted by
   a learned scalar per level (initialised level / levels) minus a learned 0.1 times the DDI adjacency,
   plus a bias, divided by the number of medications, ReLU (``GCN_SW``); diagnosis and procedure nodes
   receive only the bias (and ``ReLU(Linear(x))`` at a first visit, which has no medication). (b)
   Medication -> diagnosis and medication -> procedure graphs over the output of (a): messages
   multiplied by a learned vector per level (initialised 0.8 * level / levels), plus a bias, divided by
   the number of medications, ReLU (``GCN_MF``); absent when a side is empty. The three outputs are
   summed per node (dropout 0.5); per node type, the sum over the visit's nodes of the node output plus
   the basic model's embedding (frozen, a residual) gives three visit vectors. Three GRUs over the
   visits, concatenated, ReLU, one linear layer at the last visit.

Loss, both stages (``main.py`` 454-476): SafeDrug's ``beta * (0.95 BCE + 0.05 margin) + (1 - beta) * DDI``
with ``DDI = 0.0005 * sum_ij p_i p_j A_ij`` and beta steering the DDI rate of the thresholded prediction to
a target (kp 0.05). ``--preset paper`` is ``main.py``'s configuration: Adam lr 5e-4 (line 31), one
optimizer step per visit (lines 183-226, 439-482: ``batch_size=1``), dim 64 (35), target DDI 0.06 (33),
kp 0.05 (34), 20 basic-model epochs (177) and 15 graph-model epochs (431), bucket growth 2 and tops
60/150/150 (38-41), threshold 0.5 (98); early stopping by validation PRAUC (patience 10, the harness's
policy; the script runs every epoch and saves the last, below). ``--preset harness``/``quick``: batches
of 32 at lr 2e-3 with SafeDrug's batched DDI-loss scale (``baselines.safedrug``, the same policy and
reasons); ``quick`` sizes the budget for 2 CPU cores: batches of 64 at lr 3e-3 (the rate scaled by about
the square root of the batch), at most 40 epochs of each model, patience 3, and a validation gain below
0.001 counts as none (``min_delta``, both stages: the graph model's curve creeps by a few ten-thousandths
before it stops). Default cohort, seed 0, one thread of a shared machine: the basic model stops at 14
epochs (best 11, 5 s), the graph model at 14 (best 11, validation PRAUC 0.705, test 0.708) in 59 s in all;
without ``min_delta`` the graph model ran to 16 (best 13, validation 0.706, test 0.708) in 67 s.

Deliberate differences from the published code:

- Test set: the harness's. ``--Test`` of the reference bootstraps ``data_eval`` (``main.py`` 397), the
  split it selects on (367), so its test figures are selection-set figures. Not portable, not kept.
- Model selection: the epoch of best validation PRAUC is kept, in both stages. The reference keeps a
  reference to the live model (``best_model = pretrained_model``, 245; ``best['model'] = model``, 516), so
  what it saves is the last epoch. Not kept as an option (the harness never reports an unselected epoch).
- beta follows the paper's rule ``max(0, 1 - (rate - target) / kp)`` (``baselines.safedrug``); the
  reference's ``min(0, 1 + (target - rate) / kp)`` (216, 472) is negative above the target and then
  ascends the accuracy loss. Not kept (see SafeDrug).
- Target DDI rate: the published 0.06 in every preset, as GAMENet and SafeDrug here; ``target_ddi=None``
  steers to 0.75 times the training data's own rate (``baselines.layers.ddi_target``), for DDI sources on
  which 0.06 means nothing.
- Stratification: the first threshold is the first count of at least 5; the reference looks up a count
  of exactly 5 (``np.where(sorted == 5)[0][0]``, 287) and crashes when none occurs. Fewer than ``a``
  counts of 5 or more give one level above 0 instead of a math domain error. Counts come from the
  training records only (as the reference's ``relevance_mining(data_train)``, 375), every visit of each
  training patient once whatever the protocol, as sparse integer products (exact, well under a second).
- The weight regulariser (``Regularization(model, 0.005, p=0)``, 32, 420) is left out: with ``p=0``
  ``torch.norm`` counts non-zero weights, which has no gradient, so it never changed a weight.
  ``--med_max_weight``/``--diag_max_weight``/``--proc_max_weight`` (42-44) are parsed and never used.
- Batched: every visit of a batch's records is a graph in one padded tensor (per-level weights gathered
  from the bucket matrices); the reference rebuilds every edge in Python for every visit of every prefix,
  one backward pass per visit (``retain_graph=True``). A vector weight per level is applied as a batched
  product over the one-hot levels of the edges (``LevelConv``), never as a [visits, targets, sources, dim]
  tensor of per-edge weights: the same sums, regrouped (quick preset, default cohort, seed 0, one thread:
  the graph stage ~5 s an epoch on a shared machine where per-edge weights took 7 s, 139 s in all where
  they took 209 s, test PRAUC 0.708 where they gave 0.707).
  Dead modules (``lin2``, ``residual_weight_*``, the
  basic model's GRUs, ``ddi_mask_H``) are not built.
- ``--preset harness``/``quick``: lr 2e-3 for batches of 32 and the DDI-loss scale ``10 * 0.0005 * 131 /
  |M|`` (SafeDrug's, for the same reasons: per-sample DDI terms averaged into a batch, BCE a mean over
  |M| medications). The rate was chosen on validation data (synthetic cohort, 2,000 patients, quick,
  seed 0; best validation PRAUC of the basic / graph model): 5e-4 0.641 / 0.627, 1e-3 0.659 / 0.644,
  2e-3 0.660 / 0.643 (best epochs 29 / 18, stopped by patience 5 at 34 / 23).

On that cohort the graph model does not beat its own basic model on validation data (0.643 against
0.660 above); ``stage="basic"`` reports that floor.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from scipy import sparse
from torch import nn
from torch.nn import functional as F

from bench.contract import Capabilities, ModelConfig, Publication, seed_everything
from bench.training import TorchModel, staged_report, target_tensor, train_network
from baselines.layers import CodeSetEmbedding, ddi_target, last_step, pad_visits, visit_sequences
from baselines.safedrug import BATCHED_DDI_GAIN, REFERENCE_DDI_LOSS_SCALE, REFERENCE_MEDICATIONS, SafeDrug
from data_prep.code_sets import multi_hot
from data_prep.dataset import PreparedDataset, Sample
from data_prep.protocol import record_visits

STAGES = ("full", "basic")
FIRST_COUNT = 5  # pairs seen fewer times than this share level 0 (main.py 287)


# ---------------------------------------------------------------------------------------------
# Relevance stratification
# ---------------------------------------------------------------------------------------------
def stratify(counts: np.ndarray, top: int, growth: int) -> tuple[np.ndarray, int]:
    """Pyramid levels of co-occurrence ``counts`` (``main.py`` 280-298): level 0 below the first count of at
    least 5, then a new level at the ``top * growth**i``-th largest count. Returns the levels (same shape)
    and how many there are."""
    values = np.sort(counts.ravel())
    first = int(np.searchsorted(values, FIRST_COUNT))
    if first == values.size:  # no pair reaches the first threshold: one level
        return np.zeros(counts.shape, dtype=np.int64), 1
    ratio = ((values.size - first - 1) / top - 1) / (growth - 1)
    layers = max(0, math.floor(math.log(ratio, growth))) if ratio >= 1 else 0
    positions = sorted([first, *(values.size - top * growth**i for i in range(layers))])
    thresholds = values[positions]
    return np.digitize(counts, thresholds).astype(np.int64), len(thresholds) + 1


@dataclass(frozen=True)
class Relevance:
    """The level of every medication-medication, medication-diagnosis and medication-procedure pair."""

    medication: np.ndarray  # [M, M]
    diagnosis: np.ndarray  # [M, D]
    procedure: np.ndarray  # [M, P]
    levels: tuple[int, int, int]  # number of levels of each, in that order

    @classmethod
    def of_records(cls, samples: Sequence[Sample], dataset: PreparedDataset, config: "StratMed.Config") -> "Relevance":
        """Counted on every visit of the samples' records (the training records), each once."""
        visits = record_visits(samples)
        # sparse integer products: exact counts; a dense int64 matmul has no BLAS kernel (~20 s on the default cohort)
        meds, diagnoses, procedures = (sparse.csr_matrix(multi_hot(codes, n), dtype=np.int64) for codes, n in (
            ([v.medications for v in visits], dataset.n_medications), ([v.diagnoses for v in visits], dataset.n_diagnoses),
            ([v.procedures for v in visits], dataset.n_procedures)))
        pairs = (meds.T @ meds).toarray()
        np.fill_diagonal(pairs, 0)
        strata = [stratify(counts, top, config.bucket_growth) for counts, top in (
            (pairs, config.medication_top), ((meds.T @ diagnoses).toarray(), config.diagnosis_top),
            ((meds.T @ procedures).toarray(), config.procedure_top))]
        return cls(*(s[0] for s in strata), levels=tuple(s[1] for s in strata))

    @classmethod
    def placeholder(cls, dataset: PreparedDataset, levels: Sequence[int]) -> "Relevance":
        """Right shapes, no counts: a network built to receive saved weights (the levels are buffers)."""
        m = dataset.n_medications
        return cls(np.zeros((m, m), np.int64), np.zeros((m, dataset.n_diagnoses), np.int64), np.zeros((m, dataset.n_procedures), np.int64), tuple(levels))


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
class BasicNetwork(nn.Module):
    """Current diagnoses, current procedures, previous medications: summed embeddings -> ReLU -> linear."""

    def __init__(self, dataset: PreparedDataset, config: "StratMed.Config"):
        super().__init__()
        sizes = (dataset.n_diagnoses, dataset.n_procedures, dataset.n_medications)
        self.embeddings = nn.ModuleList(CodeSetEmbedding(n, config.dim, config.dropout) for n in sizes)
        self.output = nn.Sequential(nn.ReLU(), nn.Linear(3 * config.dim, dataset.n_medications))

    def forward(self, batch: dict) -> torch.Tensor:
        rows, last = torch.arange(len(batch["lengths"]), device=batch["lengths"].device), batch["lengths"] - 1
        parts = [embed(batch[key][rows, last], batch[f"{key}_mask"][rows, last])
                 for embed, key in zip(self.embeddings, ("diagnoses", "procedures", "previous_medications"))]
        return self.output(torch.cat(parts, dim=-1))


class LevelConv(nn.Module):
    """A graph convolution whose edge weights are learned per relevance level: ``relu((sum_j w[level(i, j)]
    * W x_j + b) / n_medications)`` (``GCN_SW`` with a scalar per level, ``GCN_MF`` with a vector)."""

    def __init__(self, dim: int, levels: int, width: int, initial_top: float):
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.linear.weight)  # torch_geometric's glorot
        self.bias = nn.Parameter(torch.zeros(dim))
        self.level_weight = nn.Parameter(initial_top * torch.arange(levels, dtype=torch.float32).unsqueeze(1).expand(levels, width) / levels)

    def forward(self, sources: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sources`` [V, S, d] and ``weights`` (0 where no edge) -> the N targets' outputs [V, N, d] and what any
        other node receives (the bias) [V, d]; ``scale`` [V, 1] is 1 / n_medications. ``weights`` is either the
        scalar weight of every edge j -> i [V, N, S], or the level of every edge one-hot [V, N, S, levels] for
        vector weights: ``sum_j w[level(i, j)] * y_j`` is then ``sum_l w[l] * (sum_j [level(i, j) = l] y_j)``,
        a batched product over the few levels instead of a [V, N, S, d] tensor of weights."""
        projected = self.linear(sources)
        if weights.dim() == 3:
            messages = weights @ projected
        else:
            v, n, s, levels = weights.shape
            per_level = (weights.transpose(2, 3).reshape(v, n * levels, s) @ projected).view(v, n, levels, -1)
            messages = (per_level * self.level_weight).sum(2)
        return F.relu((messages + self.bias) * scale.unsqueeze(1)), F.relu(self.bias * scale)


class StratMedNetwork(nn.Module):
    """Per-visit stratified graphs (``GraphNet``), three GRUs over the visits, a linear output."""

    def __init__(self, dataset: PreparedDataset, config: "StratMed.Config", relevance: Relevance, pretrained: Sequence[torch.Tensor]):
        super().__init__()
        dim = config.dim
        self.items = nn.ModuleList(nn.Embedding.from_pretrained(weight.clone(), freeze=False) for weight in pretrained)
        for kind, weight in zip(("diagnosis", "procedure", "medication"), pretrained):  # the frozen residual
            self.register_buffer(f"pretrained_{kind}", weight.clone())
        for kind in ("medication", "diagnosis", "procedure"):
            self.register_buffer(f"{kind}_levels", torch.as_tensor(getattr(relevance, kind)))
        self.register_buffer("ddi", torch.as_tensor(dataset.ddi_adj, dtype=torch.float32))
        med_levels, diagnosis_levels, procedure_levels = relevance.levels
        self.medication_conv = LevelConv(dim, med_levels, 1, 1.0)
        self.ddi_weight = nn.Parameter(torch.tensor(0.1))
        self.diagnosis_conv = LevelConv(dim, diagnosis_levels, dim, 0.8)
        self.procedure_conv = LevelConv(dim, procedure_levels, dim, 0.8)
        self.first_visit = nn.Linear(dim, dim)  # the reference's GraphNet.lin: nodes of a visit without medications
        self.dropout = nn.Dropout(config.dropout)
        self.grus = nn.ModuleList(nn.GRU(dim, dim, batch_first=True) for _ in range(3))
        self.output = nn.Sequential(nn.ReLU(), nn.Linear(3 * dim, dataset.n_medications))

    def visit_vectors(self, dx: torch.Tensor, dx_mask: torch.Tensor, px: torch.Tensor, px_mask: torch.Tensor,
                      med: torch.Tensor, med_mask: torch.Tensor) -> torch.Tensor:
        """[V, 3, d]: the diagnosis, procedure and medication vectors of V visits (codes [V, L], masks [V, L];
        ``med`` the previous visit's medications)."""
        n_meds = med_mask.sum(1, keepdim=True).to(torch.float32)
        has_meds = n_meds > 0
        scale = 1.0 / n_meds.clamp(min=1.0)
        x_dx, x_px, x_med = (table(codes) for table, codes in zip(self.items, (dx, px, med)))

        # (a) the complete medication graph, weights per level minus the learned DDI weight
        pairs = med_mask.unsqueeze(2) & med_mask.unsqueeze(1) & ~torch.eye(med.shape[1], dtype=torch.bool, device=med.device)
        source, target = med.unsqueeze(1), med.unsqueeze(2)  # [V, 1, S], [V, N, 1]: weight of edge j -> i
        weights = self.medication_conv.level_weight[self.medication_levels[target, source]].squeeze(-1) - self.ddi_weight * self.ddi[target, source]
        h1_med, h1_other = self.medication_conv(x_med, weights * pairs, scale)
        first = has_meds.unsqueeze(1)
        h1_dx = torch.where(first, h1_other.unsqueeze(1), F.relu(self.first_visit(x_dx)))
        h1_px = torch.where(first, h1_other.unsqueeze(1), F.relu(self.first_visit(x_px)))

        # (b) medication -> diagnosis and medication -> procedure, over (a)'s medication outputs
        def bipartite(conv: LevelConv, levels: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            edge_levels = F.one_hot(levels[source, codes.unsqueeze(2)], conv.level_weight.shape[0])  # [V, N, S, levels]
            targets, other = conv(h1_med, edge_levels.to(h1_med.dtype) * med_mask.view(med.shape[0], 1, -1, 1), scale)
            edges = (has_meds & mask.any(1, keepdim=True)).to(targets.dtype)  # no edge: nothing, not even the bias
            return targets * edges.unsqueeze(1), other * edges

        h2_dx, h2_other = bipartite(self.diagnosis_conv, self.diagnosis_levels, dx, dx_mask)
        h3_px, h3_other = bipartite(self.procedure_conv, self.procedure_levels, px, px_mask)
        out_dx = self.dropout(h1_dx + h2_dx + h3_other.unsqueeze(1))
        out_px = self.dropout(h1_px + h2_other.unsqueeze(1) + h3_px)
        out_med = self.dropout(h1_med + h2_other.unsqueeze(1) + h3_other.unsqueeze(1))

        def pooled(out: torch.Tensor, frozen: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return ((out + frozen[codes]) * mask.unsqueeze(-1)).sum(1)

        return torch.stack([pooled(out_dx, self.pretrained_diagnosis, dx, dx_mask), pooled(out_px, self.pretrained_procedure, px, px_mask),
                            pooled(out_med, self.pretrained_medication, med, med_mask)], dim=1)

    def forward(self, batch: dict) -> torch.Tensor:
        lengths = batch["lengths"]
        present = torch.arange(batch["diagnoses"].shape[1], device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
        keys = ("diagnoses", "diagnoses_mask", "procedures", "procedures_mask", "previous_medications", "previous_medications_mask")
        vectors = self.items[0].weight.new_zeros(*present.shape, 3, self.items[0].embedding_dim)
        vectors[present] = self.visit_vectors(*(batch[k][present] for k in keys))
        states = [last_step(gru(vectors[:, :, k])[0], lengths) for k, gru in enumerate(self.grus)]
        return self.output(torch.cat(states, dim=-1))


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
class StratMed(TorchModel):
    name = "stratmed"
    typical_seconds = 72  # quick, default cohort, one thread: the main job's 3-seed mean (README)
    publication = Publication("Li et al., Knowledge-Based Systems 284, 2024", "2024-01")
    capabilities = Capabilities()  # a first visit reads no medication (zeros), so single-visit patients are served

    @dataclass
    class Config(ModelConfig):
        epochs: int = 15  # graph-model epochs (main.py 431)
        pretrain_epochs: int = 20  # basic-model epochs (main.py 177)
        batch_size: int = 1  # one optimizer step per visit
        lr: float = 5e-4
        patience: int = 10
        dim: int = 64
        dropout: float = 0.5
        target_ddi: float | None = 0.06  # None: 0.75 x the training ground truth (baselines.layers.ddi_target)
        kp: float = 0.05
        ddi_loss_scale: float | None = REFERENCE_DDI_LOSS_SCALE  # None: 10 * 0.0005 * 131 / |M| (baselines.safedrug)
        bucket_growth: int = 2
        medication_top: int = 60
        diagnosis_top: int = 150
        procedure_top: int = 150
        stage: str = "full"  # "basic": the basic model alone (the reference's pre-training model)
        min_delta: float = 0.0  # smallest validation gain that counts as better, both stages (bench.training.Schedule)

        HARNESS: ClassVar[dict] = {"batch_size": 32, "lr": 2e-3, "ddi_loss_scale": None}
        QUICK: ClassVar[dict] = {"epochs": 40, "pretrain_epochs": 40, "patience": 3, "batch_size": 64, "lr": 3e-3, "min_delta": 0.001}  # module docstring

        def __post_init__(self) -> None:
            if self.stage not in STAGES:
                raise ValueError(f"stratmed stage must be one of {STAGES}, got {self.stage!r}")
            if self.bucket_growth < 2:
                raise ValueError(f"stratmed bucket_growth must be at least 2, got {self.bucket_growth}")

    config_class = Config
    loss = SafeDrug.loss  # the same DDI-controlled loss (main.py 454-476, beta fixed as in SafeDrug)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ddi_adj = torch.as_tensor(self.dataset.ddi_adj, dtype=torch.float32, device=self.device)
        self.ddi_loss_scale = self.config.ddi_loss_scale
        if self.ddi_loss_scale is None:
            self.ddi_loss_scale = BATCHED_DDI_GAIN * REFERENCE_DDI_LOSS_SCALE * REFERENCE_MEDICATIONS / self.dataset.n_medications
        self.target_ddi = self.config.target_ddi  # resolved against the training data by fit
        self.relevance: Relevance | None = None
        self.basic: BasicNetwork | None = None

    def build_network(self) -> nn.Module:
        if self.config.stage == "basic" or self.relevance is None:
            return BasicNetwork(self.dataset, self.config)
        pretrained = [embed.embedding.weight.detach() for embed in self.basic.embeddings]
        return StratMedNetwork(self.dataset, self.config, self.relevance, pretrained)

    def collate(self, samples: Sequence[Sample]) -> dict:
        """Every visit's codes [B, T, L] and, in slot t, the medications of visit t - 1 (never the target)."""
        batch = visit_sequences(samples)
        batch["diagnoses_mask"], batch["procedures_mask"] = batch.pop("diagnosis_mask"), batch.pop("procedure_mask")
        batch["previous_medications"], batch["previous_medications_mask"], _ = pad_visits([[(), *(v.medications for v in s.history)] for s in samples])
        batch["target"] = target_tensor(samples, self.dataset.n_medications)
        return {k: v.to(self.device) for k, v in batch.items()}

    def logits(self, batch: dict) -> torch.Tensor:
        return self.network(batch)

    def fit(self, train: Sequence[Sample], val: Sequence[Sample]) -> "StratMed":
        seed_everything(self.seed)
        started = time.perf_counter()
        self.target_ddi = ddi_target(self.config.target_ddi, train, self.dataset.ddi_adj)
        self.relevance = None
        self.network = self.basic = BasicNetwork(self.dataset, self.config).to(self.device)
        config = self.config
        self.config = dataclasses.replace(config, epochs=config.pretrain_epochs)
        try:
            stages = {"basic": train_network(self, train, val)}
        finally:
            self.config = config
        if config.stage == "full":
            self.relevance = Relevance.of_records(train, self.dataset, config)
            self.network = self.build_network().to(self.device)
            stages["full"] = train_network(self, train, val)
        self.fit_report = {
            **staged_report(list(stages.values()), stages[config.stage]),
            "train_seconds": time.perf_counter() - started,
            "target_ddi": self.target_ddi,
            "stages": stages,
        }
        if self.relevance is not None:
            self.fit_report["relevance_levels"] = list(self.relevance.levels)
        return self

    def get_state(self) -> dict:
        levels = list(self.relevance.levels) if self.relevance is not None else []
        return {**super().get_state(), "levels": torch.tensor(levels, dtype=torch.long)}

    def set_state(self, state: dict) -> None:
        levels = state["levels"].tolist()
        if levels:
            self.relevance = Relevance.placeholder(self.dataset, levels)
            self.basic = BasicNetwork(self.dataset, self.config)  # shapes only: the saved weights replace them
        super().set_state(state)
