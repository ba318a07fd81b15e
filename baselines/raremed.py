"""RAREMed: a pre-trained single-visit encoder for rare-disease patients (Zhao et al., SIGIR 2024).

Paper: Z. Zhao, Y. Jing, F. Feng, J. Wu, C. Gao, X. He, "Leave No Patient Behind: Enhancing Medication
Recommendation for Rare Disease Patients", SIGIR 2024 (doi 10.1145/3626772.3657785, arXiv 2403.17745).
Reference code: github.com/zzhUSTC2016/RAREMed at 4694592 (``src/models/RAREMed.py``,
``src/main_RAREMed.py``); line numbers below are of that commit.

Only the current visit is read, so every patient is served, single-visit ones included. Tokens
``[CLS] dx_1..dx_n [SEP] px_1..px_m``: code embeddings (separate diagnosis and procedure tables, one table
for [CLS]/[SEP]), plus a segment embedding (0 up to and including [SEP], 1 for procedures), plus a learned
"relevance" embedding of the token's position within its half (one table per half). A post-LN transformer
encoder (``nn.TransformerEncoder``: ReLU, dropout 0.3); the [CLS] output is the visit vector. Heads: the
medications (fine-tuning), the visit's own diagnoses and procedures ("self reconstruction", SR) and
whether the two halves come from the same visit ("sequence matching", SMP).

Pre-training (declared: ``Capabilities.pretrains_on_training_visits``; fit report ``pretraining``) on every
visit of the training records (unlabelled: diagnoses and procedures only), first SMP then SR, each for a
fixed number of epochs, keeping the last weights (as the reference: it logs validation
figures but saves the final model, ``main.py`` 501, 531). SMP pairs each visit with a negative that swaps
one half (either, with probability 1/2) with that of another training visit whose procedures differ. SR is
BCE against the visit's codes; the reference's default ``--mask_prob 0`` (line 36) masks nothing. No
validation or test record is read before fine-tuning; the pre-training reports' scores are minus the
training loss. Fine-tuning: ``0.995 BCE + 0.005 margin + 0.1 * DDI`` with ``DDI = 0.0005 * sum_ij p_i p_j
A_ij`` (``main.py`` 411, ``RAREMed.py`` 205). One AdamW optimiser for all stages, its moments carried over
(``main.py`` 375).

``--preset paper`` is ``main.py``'s configuration for ``python main_RAREMed.py -nsp -mask`` (the README's
command): dim 512 (line 38), 3 layers (39), 4 heads (40), feed-forward 2048 (PyTorch's default, 68-71),
dropout 0.3 (45), AdamW lr 1e-5 (44) and weight decay 0.1 (46), one visit per optimizer step (41), 20
epochs of each pre-training task (35), at most 60 fine-tuning epochs (397), stopped after 11 epochs
without a better validation score (``epoch - best_epoch > 10`` with ``--early_stop 10``, 26 and 442),
margin weight 0.005 (48), DDI weight 0.1 (49), threshold 0.5 (109). ``--preset harness``: batches of 32
and lr 5e-4 (below), fine-tuning stopped by the harness's validation patience 10 on PRAUC. ``--preset
quick``: dim 128, 2 layers, feed-forward 512, 5 pre-training epochs of each task, patience 5, batches of 64
visits at AdamW lr 7e-4 (below).

Deliberate differences from the published code:

- Relevance embedding: indexed by the token's position within its half, as the paper describes and
  DREAM fixed it. The reference indexes ``x.size(1)`` of its ``(L, 1, d)`` input, the batch axis of size 1
  (``RAREMed.py`` 21), so every token gets position 0: a learned constant per half.
  ``relevance="published"`` restores that. The harness's code sets are in vocabulary order, not in the
  order of MIMIC's ``SEQ_NUM`` (which the reference's tables keep), so here a position is a code's rank
  within its visit's sorted set, not its clinical priority.
- SMP loss: binary cross-entropy of each pair. The reference applies ``F.cross_entropy`` to the 1-d
  vector of sigmoid outputs (``main.py`` 518), a softmax across the batch's pairs.
  ``matching_loss="published"`` restores it.
- SMP negatives come from the training visits only. The reference draws them from the training and
  validation visits (``data_pretrain``, lines 337, 341, 380), so validation inputs enter pre-training.
- Test set: the harness's. The first releases (``20a5008``, v1.0 ``78b70aa``) set ``data_test = data[:10000]``
  (line 339 there), which includes the training patients; removed in ``710a3e4``. Not portable, not kept.
- Margin loss per sample, averaged: the reference's ``loss_multi.sum()`` keeps the last visit of a batch
  only (``main.py`` 559; the same at its batch size 1). Its reconstruction head has two outputs more (the
  ``[MASK]`` tokens, never a target); they are not built.
- Fine-tuning stops by validation PRAUC as every model here; the reference stops on validation Jaccard.
  Training batches are shuffled every epoch; the reference walks its visits in file order.
- ``--preset harness``/``quick``: batches of 32 visits at AdamW lr 5e-4 (the policy of every baseline
  here: the reference's 1e-5 is for one visit per step, and batches take 32 times fewer steps); not tuned
  further. On the synthetic cohort (2,000 patients, quick, seed 0) fine-tuning peaks at validation PRAUC
  0.652 at epoch 30 of 35 (stopped by patience) after 5 + 5 pre-training epochs (SMP loss 0.70 -> 0.60,
  SR loss -> 0.15). Padded batches with key-padding masks; the reference encodes one visit at a time. The
  weight decay stays 0.1. ``quick`` on the default cohort (12,000 training visits): batches of 64 at lr 7e-4
  (the rate scaled by the square root of the batch); seed 0 fine-tuned to validation PRAUC 0.651 at epoch 23
  of 28 (stopped by patience) after 5 + 5 pre-training epochs (SMP loss 0.70 -> 0.54, SR 0.10 -> 0.02),
  669 s on one thread (SMP 252 s, SR 120 s, fine-tuning 295 s).
- Dead code is not built (the unused ``patient_seperate`` encoder, adapters, ``PositionalEncoding``).
- Encoding: each visit's tokens are packed to the left; only the batch's real tokens go through the
  projections, feed-forward blocks and norms (one packed matrix), attention alone reads them padded per
  row; the last layer is computed for the [CLS] query only. The same [CLS] vectors and gradients as the
  padded ``nn.TransformerEncoder`` (tested), at 0.091 s a pre-training (SMP) step and 0.050 s a fine-tuning
  step (default cohort, batches of 64, one thread; chunks of 16 padded rows cost 0.103 s and 0.058 s).
- ``--preset quick`` pre-training stops by validation patience (``pretrain_patience`` 1, at most 20 epochs),
  keeping the best weights: the score is minus the log of the task's mean loss on every visit of the
  validation patients (fixed SMP negatives drawn among them), a gain counting only above 0.05
  (``pretrain_min_delta``, a 5% relative loss drop; at 0.03 seed 1 runs SMP to 5/6 epochs, 84 s, and
  fine-tunes to validation 0.644, below 0.647 at 0.05; seeds 0 and 2 stop at the same epochs with
  either). Validation visits are read for this selection only, never as training input; test never.
  ``paper``/``harness`` keep the fixed epochs and the last weights. Quick's pre-training lr is 1e-3 (2e-3
  is worse on validation, 0.632); fixed-epoch pre-training gives the same PRAUC at about 2.4 times the time.
- ``--preset quick`` fine-tuning: AdamW lr 2e-3 (``finetune_lr``; the moments carried over from
  pre-training), patience 4 and ``min_delta`` 0.002 (Keras semantics: a validation PRAUC counts as better
  only above the best plus 0.002), as validation creeps by less than that near its peak (``paper``/
  ``harness``: one rate for every stage, no min_delta). At the pre-training rate (1e-3) validation PRAUC
  creeps up from 0.573 for ~10 epochs and peaks at epochs 21-24; at 2e-3 it peaks in
  13-15 epochs at the same validation PRAUC. The base-rate output bias (``base_rate_bias``, off) does not
  shorten that start (seed 0: best 21 of 25 epochs at 1e-3, validation 0.647). Default cohort, one thread:
  seed 0 SMP best 3/4, SR 1/2, fine-tuning best 15 of 19, validation PRAUC 0.647, test 0.644, 131 s (SMP
  55 s, SR 16 s, fine-tuning 61 s); seed 1 SMP 3/4, SR 1/2, fine-tuning 13 of 17, validation 0.647, test
  0.644, 134 s (SMP 58 s, SR 18 s, fine-tuning 57 s).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.contract import Capabilities, ModelConfig, Publication, seed_everything, visits_record
from bench.training import Schedule, TorchModel, run_training, staged_report, start_at_base_rates, target_tensor, train_network, use_uniform_dropout
from baselines.layers import ddi_loss, margin_loss
from data_prep.code_sets import multi_hot
from data_prep.dataset import Sample, Visit
from data_prep.protocol import record_visits

REFERENCE_DDI_LOSS_SCALE = 0.0005  # RAREMed.py 205
MAX_POSITIONS = 1000  # the reference's LearnablePositionalEncoding max_len
RELEVANCE = ("position", "published")
MATCHING_LOSSES = ("bce", "published")
CLS, SEP = 0, 1
ATTENTION_ROWS = 32  # rows per padded attention call (RAREMedNetwork.forward)


class RAREMedNetwork(nn.Module):
    def __init__(self, n_diagnoses: int, n_procedures: int, n_medications: int, config: "RAREMed.Config"):
        super().__init__()
        dim = config.dim
        self.diagnoses = nn.Embedding(n_diagnoses, dim)
        self.procedures = nn.Embedding(n_procedures, dim)
        self.special = nn.Embedding(2, dim)  # [CLS], [SEP]
        self.segment = nn.Embedding(2, dim)
        self.diagnosis_relevance = nn.Embedding(MAX_POSITIONS, dim)
        self.procedure_relevance = nn.Embedding(MAX_POSITIONS, dim)
        for table in (self.diagnoses, self.procedures, self.special, self.segment, self.diagnosis_relevance, self.procedure_relevance):
            nn.init.uniform_(table.weight, -0.1, 0.1)
        layer = nn.TransformerEncoderLayer(dim, config.heads, config.ffn_dim, config.dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.medications = nn.Linear(dim, n_medications)
        self.reconstruction = nn.Linear(dim, n_diagnoses + n_procedures)
        self.matching = nn.Linear(dim, 1)

    def forward(self, batch: dict) -> torch.Tensor:
        """[B, d]: the [CLS] output of each visit.

        Each row is ``[CLS] dx.. [SEP] px..`` packed to the left (:func:`visit_tokens`), so a row's padding is
        all at its end. The rows are sorted by length and only their real tokens go through the projections,
        the feed-forward blocks and the norms, as one packed ``[tokens, d]`` matrix (:meth:`encode`); attention
        alone reads them padded, in groups of ``ATTENTION_ROWS`` rows of similar length, each cut to its longest
        row. The same outputs as ``self.encoder`` over the padded batch (padded keys are masked and attention
        does not read positions) without the padding's work, the synthetic cohort's visits being ~16 tokens
        against ~45 for the widest."""
        tables = torch.cat([self.special.weight, self.diagnoses.weight, self.procedures.weight])
        relevance = torch.cat([self.diagnosis_relevance.weight, self.procedure_relevance.weight])
        order = torch.argsort(batch["mask"].sum(1), stable=True)
        real = batch["mask"][order]
        tokens = real.reshape(-1).nonzero().squeeze(1)  # row-major: each row's tokens, [CLS] first
        codes, relevance_ids, segments = (batch[key][order].reshape(-1)[tokens] for key in ("tokens", "relevance", "segments"))
        x = F.embedding(codes, tables) + F.embedding(relevance_ids, relevance) + self.segment(segments)
        return self.encode(x, real)[torch.argsort(order)]

    def encode(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Packed tokens ``[N, d]`` of the rows whose real tokens ``real`` ``[B, L]`` marks (rows sorted by length)
        -> ``[B, d]``: ``self.encoder``'s output at [CLS], layer by layer as ``nn.TransformerEncoderLayer``
        (post-LN: ``norm1(x + dropout1(attention))``, then ``norm2(x + feed-forward)``) with its own weights.
        The last layer is computed for the [CLS] query only (its attention reads every token's keys and
        values): the other rows are never read."""
        lengths = real.sum(1)
        cls = torch.cumsum(lengths, 0) - lengths  # packed index of each row's [CLS]
        groups = []  # per group of rows: its rows, its tokens (a packed range), their places in its grid, its key mask
        for start in range(0, len(lengths), ATTENTION_ROWS):
            rows = slice(start, min(start + ATTENTION_ROWS, len(lengths)))
            grid = real[rows, : int(lengths[rows.stop - 1])]
            groups.append((rows, slice(int(cls[start]), int(cls[rows.stop - 1] + lengths[rows.stop - 1])), grid.reshape(-1).nonzero().squeeze(1), grid))
        *layers, last = self.encoder.layers
        for layer in layers:
            attended = torch.cat([packed_attention(layer.self_attn, x[tokens], x[tokens], at, at, grid) for _, tokens, at, grid in groups])
            x = layer.norm1(x + layer.dropout1(attended))
            x = layer.norm2(x + layer._ff_block(x))
        cls_x = x[cls]
        attended = torch.cat([packed_attention(last.self_attn, cls_x[rows], x[tokens], torch.arange(len(grid), device=x.device), at, grid, query_width=1)
                              for rows, tokens, at, grid in groups])
        cls_x = last.norm1(cls_x + last.dropout1(attended))
        return last.norm2(cls_x + last._ff_block(cls_x))


def packed_attention(attention: nn.MultiheadAttention, queries: torch.Tensor, keys: torch.Tensor, query_at: torch.Tensor,
                     key_at: torch.Tensor, key_mask: torch.Tensor, query_width: int | None = None) -> torch.Tensor:
    """``attention(q, k, v)[0]`` (self-attention of ``nn.MultiheadAttention``, batch first, key padding masked,
    its dropout on the weights) for packed query and key tokens ``[Nq, d]``/``[Nk, d]``: the projections run on
    the real tokens only, which are scattered into the grid of rows that ``key_mask`` ``[rows, width]`` marks
    (query rows ``query_width`` wide, ``width`` by default) for the scaled dot product and gathered back. Query
    token i sits at flat position ``query_at[i]`` of its grid, key token j at ``key_at[j]``."""
    d, heads = attention.embed_dim, attention.num_heads
    rows, width = key_mask.shape
    query_width = width if query_width is None else query_width
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    q = F.linear(queries, weight[:d], bias[:d])
    kv = F.linear(keys, weight[d:], bias[d:])
    q = q.new_zeros(rows * query_width, d).index_copy(0, query_at, q).view(rows, query_width, heads, -1).transpose(1, 2)
    kv = kv.new_zeros(rows * width, 2 * d).index_copy(0, key_at, kv).view(rows, width, 2, heads, -1)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    dropout = attention.dropout if attention.training else 0.0
    mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=dropout)  # [rows, heads, query_width, d / heads]
    mixed = mixed.transpose(1, 2).reshape(rows * query_width, d)[query_at]
    return attention.out_proj(mixed)


def visit_tokens(diagnoses: Sequence[Sequence[int]], procedures: Sequence[Sequence[int]], n_diagnoses: int, positions: bool) -> dict:
    """The token rows of :meth:`RAREMedNetwork.forward`, left-packed, as numpy arrays: ids into
    ``[CLS, SEP, diagnoses.., procedures..]``, relevance ids into ``[diagnosis table.., procedure table..]``
    (a token's position within its half, the special token at 0; all 0 when not ``positions``), segments
    (1 for procedures only) and the mask of real tokens."""
    lengths = np.array([2 + len(d) + len(p) for d, p in zip(diagnoses, procedures)], dtype=np.int64)
    n, width = len(lengths), int(lengths.max())
    tokens = np.zeros((n, width), dtype=np.int64)
    relevance = np.zeros((n, width), dtype=np.int64)
    segments = np.zeros((n, width), dtype=np.int64)
    for i, (d, p) in enumerate(zip(diagnoses, procedures)):
        nd, npx = len(d), len(p)
        tokens[i, 0], tokens[i, 1 + nd] = CLS, SEP
        tokens[i, 1 : 1 + nd] = np.asarray(d, dtype=np.int64) + 2
        tokens[i, 2 + nd : 2 + nd + npx] = np.asarray(p, dtype=np.int64) + 2 + n_diagnoses
        if positions:
            relevance[i, 1 : 1 + nd] = np.arange(1, 1 + nd)
            relevance[i, 2 + nd : 2 + nd + npx] = np.arange(1, 1 + npx)
        relevance[i, 1 + nd : 2 + nd + npx] += MAX_POSITIONS
        segments[i, 2 + nd : 2 + nd + npx] = 1
    mask = np.arange(width)[None, :] < lengths[:, None]
    return {"tokens": tokens, "relevance": relevance, "segments": segments, "mask": mask}


class RAREMed(TorchModel):
    name = "raremed"
    typical_seconds = 132  # quick, default cohort, one thread: the main job's 3-seed mean (README)
    publication = Publication("Zhao et al., SIGIR 2024", "2024-07")
    # the current visit only; pre-training (SMP, SR) on every visit of the training patients, declared per config
    capabilities = Capabilities(pretrains_on_training_visits=True)

    @dataclass
    class Config(ModelConfig):
        epochs: int = 60
        patience: int = 11  # epoch - best_epoch > 10 stops the reference
        min_delta: float = 0.0  # fine-tuning: a better validation PRAUC must beat the best by more
        batch_size: int = 1
        lr: float = 1e-5
        finetune_lr: float | None = None  # the fine-tuning stage's rate; None: lr (every stage at one rate, the reference)
        weight_decay: float = 0.1
        pretrain_epochs: int = 20  # of each task, SMP then SR (at most, with pretrain_patience); 0: no pre-training
        pretrain_patience: int | None = None  # None: every pre-training epoch, the last weights kept (the reference)
        pretrain_min_delta: float = 0.0  # a better pre-training validation score must beat the best by more
        dim: int = 512
        layers: int = 3
        heads: int = 4
        ffn_dim: int = 2048
        dropout: float = 0.3
        margin_weight: float = 0.005
        ddi_weight: float = 0.1  # on 0.0005 * sum_ij p_i p_j A_ij
        relevance: str = "position"  # "published": every token at position 0 (module docstring)
        matching_loss: str = "bce"  # "published": cross-entropy across the batch's pairs
        base_rate_bias: bool = False  # True: the medication head's bias starts at the training log-odds (module docstring)

        HARNESS: ClassVar[dict] = {"batch_size": 32, "lr": 5e-4}
        QUICK: ClassVar[dict] = {"dim": 128, "layers": 2, "ffn_dim": 512, "pretrain_epochs": 20, "pretrain_patience": 1, "pretrain_min_delta": 0.05,
                                 "patience": 4, "min_delta": 0.002, "batch_size": 64, "lr": 1e-3,
                                 "finetune_lr": 2e-3}

        def __post_init__(self) -> None:
            if self.relevance not in RELEVANCE:
                raise ValueError(f"raremed relevance must be one of {RELEVANCE}, got {self.relevance!r}")
            if self.matching_loss not in MATCHING_LOSSES:
                raise ValueError(f"raremed matching_loss must be one of {MATCHING_LOSSES}, got {self.matching_loss!r}")
            if self.dim % self.heads:
                raise ValueError(f"raremed dim {self.dim} is not a multiple of its {self.heads} heads")

    config_class = Config

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.capabilities = Capabilities(pretrains_on_training_visits=self.config.pretrain_epochs > 0)
        self.optimizer: torch.optim.Optimizer | None = None
        self.ddi_adj = torch.as_tensor(self.dataset.ddi_adj, dtype=torch.float32, device=self.device)

    def build_network(self) -> nn.Module:
        return RAREMedNetwork(self.dataset.n_diagnoses, self.dataset.n_procedures, self.dataset.n_medications, self.config)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The one AdamW of every stage (created by ``fit``)."""
        return self.optimizer

    # ----- batches -----------------------------------------------------------------------------
    def visit_batch(self, diagnoses: Sequence[Sequence[int]], procedures: Sequence[Sequence[int]]) -> dict:
        rows = visit_tokens(diagnoses, procedures, self.dataset.n_diagnoses, self.config.relevance == "position")
        return {k: torch.from_numpy(v).to(self.device) for k, v in rows.items()}

    def collate(self, samples: Sequence[Sample]) -> dict:
        batch = self.visit_batch([s.diagnoses for s in samples], [s.procedures for s in samples])
        batch["target"] = target_tensor(samples, self.dataset.n_medications).to(self.device)
        return batch

    def logits(self, batch: dict) -> torch.Tensor:
        return self.network.medications(self.network(batch))

    def loss(self, batch: dict, epoch: int) -> torch.Tensor:
        logits = self.logits(batch)
        proba, target = torch.sigmoid(logits), batch["target"]
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
        margin = margin_loss(proba, target, reduction="none")
        ddi = REFERENCE_DDI_LOSS_SCALE * ddi_loss(proba, self.ddi_adj, reduction="none")
        weight = self.config.margin_weight
        return ((1 - weight) * bce + weight * margin + self.config.ddi_weight * ddi).mean()

    # ----- pre-training ------------------------------------------------------------------------
    def matching_loss(self, visits: Sequence[Visit], index: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """SMP: each visit (label 1) and a copy with one half swapped with another visit's (label 0)."""
        partner = rng.integers(len(visits), size=len(index))
        for _ in range(100):  # redraw partners with the same procedures (the reference loops until they differ)
            same = np.array([visits[p].procedures == visits[i].procedures for i, p in zip(index, partner)])
            if not same.any():
                break
            partner[same] = rng.integers(len(visits), size=int(same.sum()))
        swap_procedures = rng.random(len(index)) < 0.5
        diagnoses = [visits[i].diagnoses for i in index] + [visits[i if s else p].diagnoses for i, p, s in zip(index, partner, swap_procedures)]
        procedures = [visits[i].procedures for i in index] + [visits[p if s else i].procedures for i, p, s in zip(index, partner, swap_procedures)]
        scores = self.network.matching(self.network(self.visit_batch(diagnoses, procedures))).squeeze(1)
        labels = torch.cat([torch.ones(len(index)), torch.zeros(len(index))]).to(self.device)
        if self.config.matching_loss == "published":
            return F.cross_entropy(torch.sigmoid(scores), labels)
        return F.binary_cross_entropy_with_logits(scores, labels)

    def reconstruction_loss(self, visits: Sequence[Visit], index: np.ndarray) -> torch.Tensor:
        """SR: the visit's own diagnoses and procedures from its vector."""
        chosen = [visits[i] for i in index]
        batch = self.visit_batch([v.diagnoses for v in chosen], [v.procedures for v in chosen])
        n_dx = self.dataset.n_diagnoses
        labels = multi_hot([(*v.diagnoses, *(n_dx + p for p in v.procedures)) for v in chosen], n_dx + self.dataset.n_procedures)
        return F.binary_cross_entropy_with_logits(self.network.reconstruction(self.network(batch)), torch.from_numpy(labels).float().to(self.device))

    def task_loss(self, task: str, visits: Sequence[Visit], index: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        return self.matching_loss(visits, index, rng) if task == "matching" else self.reconstruction_loss(visits, index)

    def held_out_score(self, task: str, held_out: Sequence[Visit]) -> float:
        """Minus the log of the task's mean loss on the held-out visits in evaluation mode, the same SMP
        negatives (drawn among the held-out visits) at every evaluation. On the log scale ``pretrain_min_delta``
        is a relative gain, one rule for SMP (loss ~0.5) and SR (~0.02)."""
        rng = np.random.default_rng(self.seed)
        self.network.eval()
        with torch.no_grad():
            losses = [(len(chunk), float(self.task_loss(task, held_out, chunk, rng)))
                      for chunk in np.array_split(np.arange(len(held_out)), max(1, -(-len(held_out) // 512)))]
        return -float(np.log(sum(n * loss for n, loss in losses) / len(held_out)))

    def pretrain(self, task: str, visits: Sequence[Visit], held_out: Sequence[Visit]) -> dict:
        """One pre-training task through the shared loop: every epoch and the last weights (the reference), or,
        with ``pretrain_patience``, stopped by the score on the held-out visits and its best weights kept."""
        rng = np.random.default_rng(self.seed)
        stopped = self.config.pretrain_patience is not None and bool(held_out)

        def train_step(index: np.ndarray, epoch: int) -> float:
            self.network.train()
            loss = self.task_loss(task, visits, index, rng)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            return float(loss.detach())

        def restore(state: dict | None) -> None:
            if state is not None:
                self.network.load_state_dict(state)

        schedule = Schedule(batch_size=self.config.batch_size, epochs=self.config.pretrain_epochs,
                            patience=self.config.pretrain_patience if stopped else None, min_delta=self.config.pretrain_min_delta if stopped else 0.0)
        return run_training(schedule, len(visits), self.seed, train_step,
                            evaluate=(lambda: self.held_out_score(task, held_out)) if stopped else None,
                            snapshot=(lambda: copy.deepcopy(self.network.state_dict())) if stopped else (lambda: None),
                            restore=restore, on_progress=self.on_progress)

    def fit(self, train: Sequence[Sample], val: Sequence[Sample]) -> "RAREMed":
        seed_everything(self.seed)
        started = time.perf_counter()
        self.network = use_uniform_dropout(self.build_network().to(self.device))  # the one loop's dropout, pre-training too
        if self.config.base_rate_bias:  # pre-training never reads the medication head
            start_at_base_rates(self.network.medications.bias, train, self.dataset.n_medications)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay, fused=True)
        visits = record_visits(train)  # every visit of the training records, once; never a validation or test record
        held_out = record_visits(val) if self.config.pretrain_patience is not None else []  # selection only
        stages = {task: self.pretrain(task, visits, held_out) for task in ("matching", "reconstruction") if self.config.pretrain_epochs > 0}
        if self.config.finetune_lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.finetune_lr
        stages["finetune"] = train_network(self, train, val)
        self.optimizer = None
        self.fit_report = {
            **staged_report(list(stages.values()), stages["finetune"]),
            **({"pretraining": visits_record(train)} if self.capabilities.pretrains_on_training_visits else {}),
            "train_seconds": time.perf_counter() - started,
            "stages": stages,
        }
        return self
