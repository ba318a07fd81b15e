"""Building blocks shared by the baselines, batched over patients (the reference code runs one at a time).

- :func:`pad_visits` pads each patient's visit sequence of code sets into ``[B, T, L]`` tensors (through
  :func:`bench.training.pad_sequences`, the one padding of code sets).
- :func:`visit_sequences`: the diagnosis and procedure sequences (earlier visits, then the current one)
  that GAMENet and SafeDrug read, padded.
- :class:`CodeSetEmbedding` embeds a padded code set (one visit, or ``[B, T, L]`` visits) as the sum
  (SafeDrug, MICRON, RETAIN) or mean (GAMENet) of its codes' embeddings, dropout on each code
  embedding as the references do.
- :func:`normalized_adjacency` and :class:`GraphConvolutionNetwork`: the two-layer GCN over one-hot
  medication nodes of GAMENet's graph memory (reference: ``GCN`` in SafeDrug's ``src/models.py``).
- :func:`masked_softmax`, :func:`last_step`: attention and sequence helpers for padded batches.
- :class:`CategoricalFeatures`: a fixed matrix of categorical features (the atom or bond features of
  :func:`torch_geometric.utils.from_smiles`) embedded as the sum of one embedding per column.
- :class:`EvalCache`: computes a patient-independent part (a drug-side encoder) once per batch in training
  and once for all batches at evaluation.
- Losses on predicted probabilities: :func:`margin_loss` (``F.multilabel_margin_loss`` on the
  sigmoid, from a multi-hot target), :func:`ddi_loss` (``sum_ij p_i p_j A_ij`` per sample).
- :func:`ddi_rates` / :func:`ddi_rate_of_predictions`: DDI rate of thresholded predictions (per
  sample / pooled, the reference's ``ddi_rate_score``), which drives the DDI-loss schedules.
- :func:`ddi_target`: the DDI rate those schedules steer to (the papers' absolute rate, or relative to
  the data); :class:`DDITargetMixin` resolves it on the training data for GAMENet, SafeDrug and MICRON.
- Pair counting is :func:`data_prep.code_sets.ddi_pair_counts`, the benchmark's own, so no model
  imports evaluation code.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.training import pad_sequences
from data_prep.code_sets import ddi_pair_counts, ddi_rate_of_sets, pooled_ddi_rate
from data_prep.dataset import Sample

Reduction = Literal["mean", "none"]
Normalisation = Literal["row", "symmetric"]


def pad_visits(patients: Sequence[Sequence[Sequence[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes ``[B, T, L]`` (0-padded), code mask ``[B, T, L]`` and the number of visits ``[B]``.

    ``patients[b][t]`` is the code set of patient b's visit t. T and L are at least 1, so a batch of
    empty code sets still has a shape; an empty code set has an all-False mask row.
    """
    if not patients or any(len(visits) == 0 for visits in patients):
        raise ValueError("pad_visits needs at least one patient, each with at least one visit")
    lengths = torch.tensor([len(visits) for visits in patients], dtype=torch.long)
    flat_codes, flat_mask = pad_sequences([codes for visits in patients for codes in visits])
    real = torch.arange(int(lengths.max())).unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]: visit t exists
    codes = torch.zeros((*real.shape, flat_codes.shape[1]), dtype=torch.long)
    mask = torch.zeros(codes.shape, dtype=torch.bool)
    codes[real], mask[real] = flat_codes, flat_mask
    return codes, mask, lengths


class CodeSetEmbedding(nn.Module):
    """Sum (or mean) of the embeddings of a padded code set; dropout applies to each code embedding.

    ``init_range``: the references initialise code embeddings uniform in [-0.1, 0.1]; ``None``
    keeps PyTorch's N(0, 1) (the RETAIN reference).
    """

    def __init__(self, n_codes: int, dim: int, dropout: float = 0.0, reduce: Literal["sum", "mean"] = "sum", init_range: float | None = 0.1):
        super().__init__()
        if reduce not in ("sum", "mean"):
            raise ValueError(f"CodeSetEmbedding reduce must be 'sum' or 'mean', got {reduce!r}")
        self.embedding = nn.Embedding(n_codes, dim)
        if init_range is not None:
            nn.init.uniform_(self.embedding.weight, -init_range, init_range)
        self.dropout = nn.Dropout(dropout)
        self.reduce = reduce

    def forward(self, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``codes``/``mask`` ``[..., L]`` -> ``[..., dim]``; an empty set embeds to zeros.

        Only the real codes are embedded (and dropped out), then summed into their sets: padded batches of
        visits are mostly padding (short visits beside the longest, absent visits beside the longest record).
        """
        sets, length = mask.shape[:-1], mask.shape[-1]
        flat_mask = mask.reshape(-1, length)
        rows, columns = flat_mask.nonzero(as_tuple=True)
        vectors = self.dropout(self.embedding(codes.reshape(-1, length)[rows, columns]))
        total = vectors.new_zeros(flat_mask.shape[0], vectors.shape[-1]).index_add_(0, rows, vectors)
        if self.reduce == "mean":
            total = total / flat_mask.sum(-1, keepdim=True).clamp(min=1).to(total.dtype)
        return total.view(*sets, -1)


def normalized_adjacency(adj: np.ndarray, mode: Normalisation = "row") -> np.ndarray:
    """``A + I`` normalised: ``row`` = D^-1 (A + I) (the GAMENet reference), ``symmetric`` =
    D^-1/2 (A + I) D^-1/2 (Kipf and Welling). D is the degree of ``A + I``, so never zero."""
    adj = np.asarray(adj, dtype=np.float64)
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adjacency must be square, got shape {adj.shape}")
    with_loops = adj + np.eye(adj.shape[0])
    degree = with_loops.sum(1)
    if mode == "row":
        normalised = with_loops / degree[:, None]
    elif mode == "symmetric":
        scale = 1.0 / np.sqrt(degree)
        normalised = scale[:, None] * with_loops * scale[None, :]
    else:
        raise ValueError(f"unknown GCN normalisation {mode!r}; expected 'row' or 'symmetric'")
    return normalised.astype(np.float32)


class GraphConvolutionNetwork(nn.Module):
    """Two graph convolutions over one-hot node features: ``Â relu(Â W1 + b1) W2 + b2`` -> ``[N, dim]``.

    With identity features the first layer's ``X W1`` is ``W1`` itself, so it is not multiplied out.
    Parameters are initialised as the reference's ``GraphConvolution`` (uniform, 1/sqrt(out)).
    """

    def __init__(self, normalised_adj: np.ndarray, dim: int, dropout: float = 0.3):
        super().__init__()
        n_nodes = normalised_adj.shape[0]
        self.register_buffer("adj", torch.as_tensor(normalised_adj, dtype=torch.float32))
        bound = 1.0 / np.sqrt(dim)
        self.weight1 = nn.Parameter(torch.empty(n_nodes, dim).uniform_(-bound, bound))
        self.bias1 = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.weight2 = nn.Parameter(torch.empty(dim, dim).uniform_(-bound, bound))
        self.bias2 = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.dropout = nn.Dropout(dropout)

    def forward(self) -> torch.Tensor:
        hidden = self.dropout(F.relu(self.adj @ self.weight1 + self.bias1))
        return self.adj @ (hidden @ self.weight2) + self.bias2


class CategoricalFeatures(nn.Module):
    """A fixed ``[N, F]`` matrix of categorical features (column f in ``range(sizes[f])``) -> ``[N, dim]``: the
    sum of one embedding per column, as OGB's ``AtomEncoder``/``BondEncoder`` embed theirs (each column's
    block initialised Xavier-uniform, as theirs). The matrix is fixed (a dataset's molecules), so each
    distinct row is embedded once and gathered: far fewer lookups, and a cheaper backward."""

    def __init__(self, features: torch.Tensor, sizes: Sequence[int], dim: int):
        super().__init__()
        sizes = torch.as_tensor(list(sizes), dtype=torch.long)
        offsets = torch.cumsum(sizes, 0) - sizes
        rows, row_of_item = torch.unique(features.reshape(-1, len(sizes)), dim=0, return_inverse=True)
        self.register_buffer("rows", rows + offsets, persistent=False)  # one table for all columns
        self.register_buffer("row_of_item", row_of_item, persistent=False)
        self.table = nn.EmbeddingBag(int(sizes.sum()), dim, mode="sum")
        for start, size in zip(offsets.tolist(), sizes.tolist()):
            nn.init.xavier_uniform_(self.table.weight.data[start : start + size])

    def forward(self) -> torch.Tensor:
        return self.table(self.rows)[self.row_of_item]


class EvalCache(nn.Module):
    """Memo for a computation that is the same for every patient, such as a drug-side encoder.

    ``cache(compute)`` runs ``compute()`` on every call while the owner trains or gradients are on (once per
    batch: the drugs are encoded once and shared by the batch's patients); in eval mode under ``no_grad`` it
    runs once and returns the same result until the owner trains again or its weights are loaded.
    """

    def __init__(self):
        super().__init__()
        self._value = None
        self.register_load_state_dict_post_hook(EvalCache._loaded)

    @staticmethod
    def _loaded(module: "EvalCache", incompatible_keys) -> None:
        module.clear()

    def clear(self) -> None:
        self._value = None

    def train(self, mode: bool = True) -> "EvalCache":
        self.clear()
        return super().train(mode)

    def forward(self, compute):
        if self.training or torch.is_grad_enabled():
            self.clear()
            return compute()
        if self._value is None:
            self._value = compute()
        return self._value


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the True entries of ``mask``; a row with no True entry gets all-zero weights."""
    filled = scores.masked_fill(~mask, float("-inf"))
    any_valid = mask.any(dim=dim, keepdim=True)
    weights = torch.softmax(filled.masked_fill(~any_valid, 0.0), dim=dim)
    return weights.masked_fill(~mask, 0.0)


def last_step(sequence: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``sequence[b, lengths[b] - 1]`` for a right-padded ``[B, T, D]`` batch -> ``[B, D]``."""
    index = (lengths - 1).to(sequence.device).view(-1, 1, 1).expand(-1, 1, sequence.shape[-1])
    return sequence.gather(1, index).squeeze(1)


def margin_loss(proba: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """``F.multilabel_margin_loss(proba, indices)`` from a multi-hot ``target`` ``[B, M]``.

    The references pass the sigmoid probabilities and the target's indices padded with -1; a
    sample with an empty target contributes 0.
    """
    order = torch.argsort(target, dim=1, descending=True, stable=True)
    indices = torch.where(torch.gather(target, 1, order) > 0, order, torch.full_like(order, -1))
    return F.multilabel_margin_loss(proba, indices, reduction=reduction)


def ddi_loss(proba: torch.Tensor, ddi_adj: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """``sum_ij p_i p_j A_ij`` per sample (ordered pairs, as the references' ``p^T p * A``)."""
    per_sample = torch.einsum("bi,ij,bj->b", proba, ddi_adj, proba)
    return per_sample.mean() if reduction == "mean" else per_sample


def ddi_rates(predicted: torch.Tensor, ddi_adj: torch.Tensor) -> torch.Tensor:
    """Per-sample DDI rate of boolean predictions ``[B, M]``: interacting pairs / all pairs (0 if none)."""
    interacting, pairs = ddi_pair_counts(predicted.to(ddi_adj.dtype), ddi_adj)
    return torch.where(pairs > 0, interacting / pairs.clamp(min=1.0), torch.zeros_like(pairs))


def ddi_rate_of_predictions(predicted: torch.Tensor, ddi_adj: torch.Tensor) -> float:
    """DDI rate pooled over the batch (as the benchmark pools it over a test group)."""
    return pooled_ddi_rate(predicted.to(ddi_adj.dtype), ddi_adj)


# GAMENet and SafeDrug target a DDI rate of 0.06 on MIMIC-III, whose ground-truth rate is about 0.08.
DDI_TARGET_FRACTION = 0.06 / 0.08


def ddi_target(configured: float | None, train: Sequence[Sample], ddi_adj: np.ndarray) -> float:
    """The DDI rate a DDI-controlled loss steers to: ``configured`` when given (an absolute rate, the
    papers' 0.06 by default), else (``None``, an option) :data:`DDI_TARGET_FRACTION` of the training
    targets' ground-truth rate, the papers' relation to MIMIC-III's data. On a cohort with fewer
    interactions (synthetic: 0.02) the absolute 0.06 never switches the DDI loss on, while the relative
    target keeps GAMENet and SafeDrug on the most-frequent plateau for their first ~15 epochs."""
    if configured is not None:
        return float(configured)
    return DDI_TARGET_FRACTION * ddi_rate_of_sets([s.target for s in train], ddi_adj)


class DDITargetMixin:
    """For a :class:`bench.training.TorchModel` whose DDI-controlled loss steers to ``config.target_ddi``:
    ``fit`` resolves the target on the training data (:func:`ddi_target`) into ``self.target_ddi`` before
    training and records it in the fit report. List it before ``TorchModel`` among the bases."""

    def fit(self, train: Sequence[Sample], val: Sequence[Sample]):
        self.target_ddi = ddi_target(self.config.target_ddi, train, self.dataset.ddi_adj)
        super().fit(train, val)
        self.fit_report["target_ddi"] = self.target_ddi
        return self


def visit_sequences(samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
    """Diagnoses and procedures of each sample's visits (earlier ones, then the current one), padded with
    :func:`pad_visits`: ``diagnoses``, ``diagnosis_mask``, ``procedures``, ``procedure_mask``, ``lengths``."""
    diagnoses, diagnosis_mask, lengths = pad_visits([[*(v.diagnoses for v in s.history), s.diagnoses] for s in samples])
    procedures, procedure_mask, _ = pad_visits([[*(v.procedures for v in s.history), s.procedures] for s in samples])
    return {"diagnoses": diagnoses, "diagnosis_mask": diagnosis_mask, "procedures": procedures, "procedure_mask": procedure_mask, "lengths": lengths}
