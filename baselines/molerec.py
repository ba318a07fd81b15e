"""MoleRec: substructure-aware molecular representation learning (Yang et al., WWW 2023).

Paper: N. Yang, K. Zeng, Q. Wu, J. Yan, "MoleRec: Combinatorial Drug Recommendation with
Substructure-Aware Molecular Representation Learning", WWW 2023, 4075-4085, doi:10.1145/3543507.3583872.
Reference code: github.com/yangnianzu0515/MoleRec (read at d330fed: ``src/modules/MoleRec.py``,
``src/modules/SetTransformer.py``, ``src/modules/gnn/GNNConv.py``, ``src/training.py``, ``src/main.py``,
``data/ddi_mask_H.py``).

Patient side: per visit the sum of the diagnosis (and of the procedure) code embeddings, dropout on each
code embedding; a diagnosis GRU and a procedure GRU; the query is ``Linear(ReLU([h_dx, h_px, o_dx, o_px]))``
(final states and last outputs, which a one-layer GRU makes two copies of the same vectors), and the
fragment relevance ``w = sigmoid(Linear(query))``, one weight per BRICS fragment. Drug side, the same for
every patient: a 4-layer GIN (OGB style: bond embeddings in every layer, BatchNorm, mean pooling) over
every molecule, averaged per medication (G); a second GIN over the fragment graphs (or an embedding table,
``substructures="embedding"``) followed by a two-head set-attention block (S). Each medication attends over
its own fragments only, ``A = softmax((G W_q)(S W_k)^T / sqrt(dim))`` masked to the fragments its molecules
contain, and reads the patient-weighted fragments ``R = A diag(w) S``; ``MLP(R)`` is its logit. The loss is
``0.95 BCE + 0.05 margin`` while the sample's predicted DDI rate is at or below the target; above it,
``beta * accuracy + (1 - beta) * DDI`` with ``beta = exp(coef * (1 - rate / target))`` and DDI
``scale * sum_ij p_i p_j A_ij``.

``--preset paper`` is the official script (``src/main.py`` defaults, ``src/training.py``): Adam at lr 5e-4
(main.py ``--lr``), one visit per optimizer step (training.py loops over visits), 50 epochs (``--epochs``)
with no early stopping and the epoch of best validation Jaccard kept (training.py ``best_ja``), dim 64
(``--dim``), dropout 0.7 (``--dp``, also inside both GINs), 4 GIN layers with mean pooling (main.py
``molecule_para``/``substruct_para``), fragments encoded by the GIN (``--embedding`` off), target DDI rate
0.06 (``--target_ddi``), coefficient 2.5 (``--coef``), DDI-loss scale 0.0005 (hard-coded in MoleRec.py's
``forward``), threshold 0.5 (training.py ``eval_one_epoch``). ``--preset harness`` trains in mini-batches
and stops early on validation PRAUC (the harness's policy for every model); ``--preset quick`` fits a
2-core CPU (below).

Deliberate differences from the published code:

- Batches: the drug side (both GINs, the set attention and the attention weights) is encoded once per
  mini-batch and shared by its patients; the reference encodes it again for every visit (the same
  computation at batch size 1). At evaluation it is encoded once for all batches. The DDI gate is computed
  per sample from the sample's own thresholded prediction, as the reference computes it per visit, and the
  batch loss is the mean of the per-sample mixes. ``A diag(w_b) S`` is summed over each medication's own
  fragments only (A is zero elsewhere; at most 17 of the 399 on the default cohort), as one batched product
  over padded per-medication slots: the dense product's values and gradients (tested); a [batch, pairs, dim]
  gather cost 15% more a training step and the dense product 8% more (``fragmentless="uniform"``, dense
  rows, keeps the dense product).
- ``--preset harness``/``quick``: batches of 32 at lr 2e-3 (the policy of every baseline here) and the
  DDI-loss scale ``10 * 0.0005 * 131 / |M|`` (``ddi_loss_scale=None``) that SafeDrug's module docstring
  derives for batched per-sample DDI terms on another vocabulary size; early stopping on validation PRAUC
  (patience 10; ``quick``: patience 4 and a 60-epoch cap). ``quick`` trains in batches of 64 at lr 3e-3: on
  the default cohort (5,080 training samples, 80 batches an epoch) the drug side, encoded once per batch,
  dominates a step, so an epoch costs about what 32 per step cost. ``quick`` also counts a validation
  gain below 0.002 as none (``min_delta``): the curve creeps up by a few thousandths from epoch 15 on;
  patience 4 stops one epoch sooner than 5 with the same best epoch in all four histories read (main job
  seeds 0-2 and a seed-0 run). On the default cohort (seed 0, one thread of a loaded 2-core machine): best
  epoch 21 of 25, validation PRAUC 0.648, test 0.647, 325 s (13 s an epoch). A training step of 64 takes
  about 0.12 s on one thread, nearly all of it the two GINs over 5,166 molecule and 4,225 fragment atoms:
  their matrix products (about 40%), BatchNorm, ReLU and dropout masks over [atoms, 64-128] tensors and the
  per-edge messages. Rejected on that cohort (validation PRAUC decides): batches of 96 at lr 3.7e-3 (6.7 s
  an epoch; seed 1 lost 0.010 validation PRAUC, 0.641; at lr 4.5e-3 training stalled, 0.48 at epoch 12); a
  per-medication output bias starting at the training log-odds (seed 0 opened at 0.564 instead of 0.451,
  the curves met by epoch 6, and it stopped at 11 of 15 with validation 0.639, test 0.636); the learning
  rate times 0.9 after every epoch (seed 0: best 22 of 26, validation 0.647, test 0.642). Batches of 128 at
  lr 3e-3 halve an epoch (5.6 s) and reach about the same number of epochs (seed 0: 23 of 27, 151 s,
  validation 0.6465, test 0.6425), but seed 1 lost 0.006 on both (20 of 24, 136 s, validation 0.639, test
  0.637 against 0.645 and 0.643 at 64), just past the quality margin: not adopted.
- Fragment order: the data layer's sorted BRICS vocabulary (``data_prep.molecules``). The reference
  builds it with ``list(set(...))`` (``data/ddi_mask_H.py``), whose order depends on Python's hash seed, so
  the mask's columns, the fragment-relevance layer and a saved checkpoint change meaning from one
  regeneration of the mask to the next.
- A medication without a fragment (no SMILES that RDKit parses) gets no attention weight at all and a
  learned per-medication bias as its logit offset (``fragmentless="bias"``). The reference's masked
  softmax (fill -2^32) gives such a row uniform attention over every fragment of every drug, i.e. the
  representation of an average drug (``fragmentless="uniform"`` keeps that; its own data never has such a
  medication, because ``buildPrjSmiles`` divides by zero first).
- Atom and bond inputs: the categorical features of ``torch_geometric.utils.from_smiles`` (9 atom and 3
  bond columns), each column embedded and the embeddings summed, instead of OGB's ``smiles2graph``
  categories (also 9 and 3 columns, different vocabularies); no ``ogb`` dependency.
- Model selection at ``--preset paper``: the kept epoch is the best validation Jaccard over all 50 epochs,
  the first included (training.py never keeps epoch 0), without saving every epoch's checkpoint.
- Samples: the reference trains and evaluates on every visit of multi-visit patients; here the protocol
  decides (``--protocol all-visits`` is the reference's, ``train-all-test-last`` trains on every visit).
  Its test bootstrap (80% of the test patients drawn with replacement, 10 rounds) is replaced by the
  harness's evaluation.
- Target DDI rate: the published 0.06 in every preset; ``target_ddi=None`` steers to 0.75 times the training
  targets' own rate (``baselines.layers.ddi_target``), the convention of GAMENet and SafeDrug here. An
  absolute 0.06 means nothing on a cohort or DDI source with another ground-truth rate (the synthetic
  cohort's is about 0.02: the gate then rarely opens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.contract import Capabilities, ModelConfig, Publication
from bench.training import TorchModel, target_tensor
from baselines.layers import (
    CategoricalFeatures,
    CodeSetEmbedding,
    DDITargetMixin,
    EvalCache,
    ddi_loss,
    ddi_rates,
    last_step,
    margin_loss,
    masked_softmax,
    visit_sequences,
)
from baselines.safedrug import BATCHED_DDI_GAIN, REFERENCE_DDI_LOSS_SCALE, REFERENCE_MEDICATIONS
from data_prep.dataset import PreparedDataset, Sample

SUBSTRUCTURE_ENCODERS = ("gnn", "embedding")
FRAGMENTLESS = ("bias", "uniform")


def ddi_loss_weight(rates: torch.Tensor, target: float, coef: float) -> torch.Tensor:
    """Weight of the DDI loss per sample, ``1 - beta``: 0 at or below the target, else
    ``1 - exp(coef * (1 - rate / target))``, rising towards 1 as the rate grows (MoleRec's annealing)."""
    rates = torch.as_tensor(rates, dtype=torch.float32)
    if target <= 0:  # the limit of the rule: any interaction is above a zero target
        return (rates > 0).float()
    return 1.0 - torch.exp((coef * (1.0 - rates / target)).clamp(max=0.0))


class GINEncoder(nn.Module):
    """MoleRec's ``GNNGraph`` (gin, JK last, no virtual node) over a fixed list of molecule graphs, batched once.

    Per layer: ``h <- BatchNorm(MLP((1 + eps) h + sum_j relu(h_j + bond_ij)))`` with its own bond embeddings,
    ReLU after every layer but the last, dropout after every layer; a graph is the mean of its atoms. The
    parameters are PyG ``GINEConv``'s (its initialisation and state-dict names); its message passing is done
    here as one ``index_select`` of the source atoms and one ``index_add_`` onto the targets, the same sums
    without ``propagate``'s per-call inspection and broadcast ``scatter_add_`` (tested against ``GINEConv``).
    """

    def __init__(self, graphs: list, dim: int, layers: int, dropout: float):
        from torch_geometric.data import Batch
        from torch_geometric.nn import GINEConv
        from torch_geometric.utils.smiles import e_map, x_map

        super().__init__()
        if layers < 2:
            raise ValueError(f"MoleRec's GIN needs at least 2 layers, got {layers}")
        batch = Batch.from_data_list(graphs)
        self.n_graphs = len(graphs)
        source, target = batch.edge_index
        self.register_buffer("source", source, persistent=False)
        self.register_buffer("target", target, persistent=False)
        self.register_buffer("atom_graph", batch.batch, persistent=False)
        self.atoms = CategoricalFeatures(batch.x, [len(values) for values in x_map.values()], dim)
        self.bonds = nn.ModuleList(CategoricalFeatures(batch.edge_attr, [len(values) for values in e_map.values()], dim) for _ in range(layers))
        self.convs = nn.ModuleList(
            GINEConv(nn.Sequential(nn.Linear(dim, 2 * dim), nn.BatchNorm1d(2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim)), train_eps=True)
            for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(dim) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self) -> torch.Tensor:
        """[n_graphs, dim]"""
        from torch_geometric.nn import global_mean_pool

        h = self.atoms()
        last = len(self.convs) - 1
        for layer, (conv, bonds, norm) in enumerate(zip(self.convs, self.bonds, self.norms)):
            messages = F.relu(h.index_select(0, self.source) + bonds())  # GINEConv.message, one row per edge
            summed = torch.zeros_like(h).index_add_(0, self.target, messages)
            h = norm(conv.nn(summed + (1 + conv.eps) * h))  # GINEConv.forward
            h = self.dropout(h if layer == last else F.relu(h))
        return global_mean_pool(h, self.atom_graph, size=self.n_graphs)


class SetAttentionBlock(nn.Module):
    """The reference's SAB (``SetTransformer.py``, ``use_ln=True``): multi-head self-attention whose residual
    is the projected query, LayerNorm, a linear layer, LayerNorm; no feed-forward residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MoleRec: dim {dim} is not divisible by {heads} attention heads")
        self.heads = heads
        self.query, self.key, self.value, self.output = (nn.Linear(dim, dim) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[S, dim] -> [S, dim]"""
        n, dim = x.shape
        q, k, v = (layer(x).view(n, self.heads, -1).transpose(0, 1) for layer in (self.query, self.key, self.value))
        attention = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dim // self.heads), dim=-1)
        mixed = (q + attention @ v).transpose(0, 1).reshape(n, dim)
        return self.norm2(self.output(self.norm1(mixed)))


def fragment_graphs(fragments: Sequence[str]) -> list:
    """One ``from_smiles`` graph per BRICS fragment, in the vocabulary's (sorted) order: column j of the
    fragment mask is graph j."""
    from torch_geometric.utils import from_smiles

    return [from_smiles(smiles) for smiles in fragments]


def fragment_slots(mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Each medication's fragments (the True columns of its row of ``mask`` [M, S]) in K slots, K the most any
    medication has: the fragment indices [M, K] (0 on padding) and 1.0 where a slot holds a fragment."""
    counts = mask.sum(axis=1)
    filled = np.arange(max(1, int(counts.max(initial=0))))[None, :] < counts[:, None]
    slots = np.zeros(filled.shape, dtype=np.int64)
    slots[filled] = np.nonzero(mask)[1]  # row-major: each row's fragments in column order
    return torch.from_numpy(slots), torch.from_numpy(filled).float()


class MoleRecNetwork(nn.Module):
    def __init__(self, dataset: PreparedDataset, config: "MoleRec.Config"):
        super().__init__()
        molecules = dataset.molecules
        if not molecules.graphs or molecules.fragment_mask.shape[1] == 0:
            raise ValueError(f"MoleRec needs molecules: no SMILES of dataset {dataset.name!r} could be parsed")
        dim, mask = config.dim, molecules.fragment_mask.astype(bool)
        self.dim, self.fragmentless = dim, config.fragmentless
        self.diagnoses = CodeSetEmbedding(dataset.n_diagnoses, dim, config.dropout)
        self.procedures = CodeSetEmbedding(dataset.n_procedures, dim, config.dropout)
        self.diagnosis_gru = nn.GRU(dim, dim, batch_first=True)
        self.procedure_gru = nn.GRU(dim, dim, batch_first=True)
        self.query = nn.Sequential(nn.ReLU(), nn.Linear(4 * dim, dim))
        self.fragment_relevance = nn.Linear(dim, mask.shape[1])
        self.molecule_encoder = GINEncoder(molecules.graphs, dim, config.gnn_layers, config.dropout)
        self.register_buffer("projection", torch.from_numpy(molecules.average_projection), persistent=False)
        if config.substructures == "gnn":
            self.fragment_encoder = GINEncoder(fragment_graphs(molecules.fragments), dim, config.gnn_layers, config.dropout)
        else:
            self.fragment_table = nn.Parameter(nn.init.xavier_uniform_(torch.empty(mask.shape[1], dim)))
        self.fragment_attention = SetAttentionBlock(dim, config.attention_heads)
        self.attention_query = nn.Linear(dim, dim)
        self.attention_key = nn.Linear(dim, dim)
        self.score = nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(), nn.Linear(dim // 2, 1))
        self.register_buffer("fragment_mask", torch.from_numpy(mask), persistent=False)
        slots, filled = fragment_slots(mask)
        self.register_buffer("fragment_slots", slots, persistent=False)  # [M, K]: each medication's fragments, padded
        self.register_buffer("slot_filled", filled, persistent=False)  # [M, K]: 1 on a real fragment, 0 on padding
        self.register_buffer("no_fragment", torch.from_numpy(~mask.any(axis=1)).float(), persistent=False)
        self.fragmentless_bias = nn.Parameter(torch.zeros(mask.shape[0]))
        self.drugs = EvalCache()

    def encode_drugs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Patient-independent: attention of each medication over its fragments [M, S], fragment vectors [S, dim]."""
        medications = self.projection @ self.molecule_encoder()
        fragments = self.fragment_encoder() if hasattr(self, "fragment_encoder") else self.fragment_table
        fragments = self.fragment_attention(fragments)
        scores = self.attention_query(medications) @ self.attention_key(fragments).T / math.sqrt(self.dim)
        if self.fragmentless == "uniform":  # the reference: a row without fragments is uniform over all
            return torch.softmax(scores.masked_fill(~self.fragment_mask, -float(1 << 32)), dim=-1), fragments
        return masked_softmax(scores, self.fragment_mask), fragments

    def read_fragments(self, attention: torch.Tensor, relevance: torch.Tensor, fragments: torch.Tensor) -> torch.Tensor:
        """``A diag(w_b) S`` for every patient b: ``[B, M, dim]`` from attention ``[M, S]``, relevance ``[B, S]``
        and fragments ``[S, dim]``. With ``fragmentless="bias"`` A is zero outside the fragment mask, so each
        medication sums only its own K fragment slots (padding weighted 0): ``R[b, m] = sum_k w[b, s_mk] (A[m, s_mk]
        S[s_mk])``, one batched product ``[M, B, K] @ [M, K, dim]`` whose patient-independent right side is built
        once per step; the reference's ``"uniform"`` rows are dense."""
        if self.fragmentless == "uniform":
            return attention @ (relevance.unsqueeze(-1) * fragments)
        slots = self.fragment_slots
        weighted = (attention.gather(1, slots) * self.slot_filled).unsqueeze(-1) * fragments[slots]  # [M, K, dim]
        return (relevance[:, slots].transpose(0, 1) @ weighted).transpose(0, 1)  # [M, B, K] @ [M, K, dim] -> [B, M, dim]

    def forward(self, batch: dict) -> torch.Tensor:
        lengths = batch["lengths"]
        diagnoses, _ = self.diagnosis_gru(self.diagnoses(batch["diagnoses"], batch["diagnosis_mask"]))
        procedures, _ = self.procedure_gru(self.procedures(batch["procedures"], batch["procedure_mask"]))
        diagnoses, procedures = last_step(diagnoses, lengths), last_step(procedures, lengths)
        query = self.query(torch.cat([diagnoses, procedures, diagnoses, procedures], dim=-1))
        relevance = torch.sigmoid(self.fragment_relevance(query))  # [B, S]
        attention, fragments = self.drugs(self.encode_drugs)
        medications = self.read_fragments(attention, relevance, fragments)
        logits = self.score(medications).squeeze(-1)
        if self.fragmentless == "bias":
            logits = logits + self.fragmentless_bias * self.no_fragment
        return logits


class MoleRec(DDITargetMixin, TorchModel):
    name = "molerec"
    typical_seconds = 202  # quick, default cohort, one thread: the main job's 3-seed mean (README)
    publication = Publication("Yang et al., WWW 2023", "2023-04")
    capabilities = Capabilities()

    @dataclass
    class Config(ModelConfig):
        epochs: int = 50  # main.py --epochs
        batch_size: int = 1  # training.py: one Adam step per visit
        lr: float = 5e-4  # main.py --lr
        patience: int = 50  # training.py runs every epoch (no early stopping)
        selection: str = "jaccard"  # training.py keeps the best validation Jaccard
        dim: int = 64  # main.py --dim
        dropout: float = 0.7  # main.py --dp: code embeddings and both GINs
        gnn_layers: int = 4  # main.py molecule_para / substruct_para num_layer
        substructures: str = "gnn"  # "embedding": main.py --embedding
        attention_heads: int = 2  # MoleRec.py: SAB(..., 2, use_ln=True)
        target_ddi: float | None = 0.06  # main.py --target_ddi; None: 0.75 x the training ground truth
        coef: float = 2.5  # main.py --coef (DDI-loss weight annealing)
        ddi_loss_scale: float | None = REFERENCE_DDI_LOSS_SCALE  # MoleRec.py forward; None: 10 * 0.0005 * 131 / |M|
        fragmentless: str = "bias"  # medications without fragments; "uniform": the reference (module docstring)
        min_delta: float = 0.0  # smallest validation gain that counts as better (bench.training.Schedule)

        HARNESS: ClassVar[dict] = {"batch_size": 32, "lr": 2e-3, "ddi_loss_scale": None}  # mini-batches (module docstring)
        # 2,000 synthetic patients, last-visit protocol (50 batches of 32 an epoch, ~4.5 s each on one thread):
        # validation PRAUC peaked between epochs 20 and 26 and wandered within 0.01 after; batches of 64 at lr 3e-3
        # were still rising at epoch 40 there (test PRAUC 0.608 against 0.615). The default cohort (5,080 training
        # samples) gives 80 batches of 64 an epoch, more steps than 50 of 32: best epoch 22 of 27 (module docstring).
        QUICK: ClassVar[dict] = {"epochs": 60, "patience": 4, "batch_size": 64, "lr": 3e-3, "min_delta": 0.002}

        def __post_init__(self) -> None:
            if self.substructures not in SUBSTRUCTURE_ENCODERS:
                raise ValueError(f"MoleRec substructures must be one of {SUBSTRUCTURE_ENCODERS}, got {self.substructures!r}")
            if self.fragmentless not in FRAGMENTLESS:
                raise ValueError(f"MoleRec fragmentless must be one of {FRAGMENTLESS}, got {self.fragmentless!r}")

    config_class = Config

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.target_ddi = self.config.target_ddi  # resolved against the training data by fit
        self.ddi_loss_scale = self.config.ddi_loss_scale
        if self.ddi_loss_scale is None:
            self.ddi_loss_scale = BATCHED_DDI_GAIN * REFERENCE_DDI_LOSS_SCALE * REFERENCE_MEDICATIONS / self.dataset.n_medications

    def build_network(self) -> nn.Module:
        self.ddi_adj = torch.as_tensor(self.dataset.ddi_adj, dtype=torch.float32, device=self.device)
        return MoleRecNetwork(self.dataset, self.config)

    def collate(self, samples: Sequence[Sample]) -> dict:
        batch = visit_sequences(samples)
        batch["target"] = target_tensor(samples, self.dataset.n_medications)
        return {k: v.to(self.device) for k, v in batch.items()}

    def logits(self, batch: dict) -> torch.Tensor:
        return self.network(batch)

    def loss(self, batch: dict, epoch: int) -> torch.Tensor:
        logits = self.logits(batch)
        proba = torch.sigmoid(logits)
        target = batch["target"]
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1)
        accuracy = 0.95 * bce + 0.05 * margin_loss(proba, target, reduction="none")
        rates = ddi_rates(proba.detach() >= self.config.threshold, self.ddi_adj)
        weight = ddi_loss_weight(rates, self.target_ddi, self.config.coef).to(logits.device)
        ddi = self.ddi_loss_scale * ddi_loss(proba, self.ddi_adj, reduction="none")
        return ((1.0 - weight) * accuracy + weight * ddi).mean()
