"""VITA: relevant-visit selection and target-aware attention on COGNet's decoder (Kim et al., AAAI 2024).

Paper: T. Kim, J. Heo, H. Kim, K. Shin, S.-W. Kim, "VITA: 'Carefully Chosen and Weighted Less' Is Better
in Medication Recommendation", AAAI 2024, 38(8):8600-8607 (arXiv 2312.12100). Reference code:
github.com/jhheo0123/VITA at 0644cd3 (``codes/VITA_model.py``, ``codes/VITA_main.py``,
``codes/recommend_gumbel.py``, ``codes/data_loader_new.py``); line numbers below are of that commit.

VITA generates the medication set rarest first, as COGNet (``baselines.cognet``: the copy-or-generate
mixture, the EHR-minus-DDI drug memory, the encoder of earlier medications, teacher forcing, batched beam
search and its step probabilities as PRAUC scores are reused from there). What differs is the query:

1. Each visit is a token matrix: its diagnoses, then its procedures (one embedding table, dropout 0.3),
   each half padded to a fixed width (``make_query``, ``VITA_model.py`` 102-137).
2. Relevant-visit selection: each visit is reduced to a scalar (a linear map of every token to a scalar,
   then a linear map over the token positions); with the target visit's scalar a linear layer and a sigmoid
   give the probability p that an earlier visit is relevant, and a hard Gumbel-softmax over ``[p, 1 - p]``
   (temperature 0.6, straight-through) keeps or drops it. The target visit is always kept.
3. Target-aware attention: each kept visit is a vector (a linear map over its token positions); the target
   visit's vector, through a linear layer, scores every visit by a scaled dot product; dropped visits are
   masked and a softmax at temperature 20 weights them. The query is the weighted sum of the visits' token
   matrices (``calc_cross_visit_scores``, 266-281).
4. One post-LN decoder layer (feed-forward 2 * dim, dropout 0.2) whose cross-attention reads the query's
   tokens at the target visit's real positions (``MedTransformerDecoder``: ``nn.TransformerDecoderLayer``'s
   computation). Copy weights per earlier visit come from the same scores without the selection mask
   (``scores_encoder``, 280; ``medication_level``, 283-304).

Loss: token-level NLL of the rare-first target plus END on the target visit (``util.py`` 465-493). Samples
need an earlier visit (``needs_history_medications``: no single-visit cell), as the reference keeps patients
with two or more visits (``VITA_main.py`` 71) and never targets a first visit (200-202).

``--preset paper`` is ``VITA_main.py``'s configuration: Adam lr 1e-3 (line 51), one optimizer step per
target visit (a DataLoader per prefix, 203-207, so its ``--batch_size 16`` never groups anything), at most
100 epochs (186), dim 64 (53), 2 heads (``VITA_model.py`` 21), beam 4 (55) of at most 45 medications (54),
Gumbel temperature 0.6 and attention temperature 20 (90-91; the annealing is commented out, 247-248),
dropout 0.3 on embeddings and 0.2 in the transformer layers (33, 47, 51, 61), the medication encoder's
feed-forward PyTorch's 2048 (51); early stopping by validation PRAUC with patience 10, the harness's policy
(the reference saves every epoch and its test loads one chosen by hand, line 33). ``--preset harness``:
batches of 16 target visits (the script's own ``--batch_size``, COGNet's batch here). ``--preset quick``:
COGNet's quick settings with patience 5 (COGNet's quick has 3): at most 60 epochs, encoder feed-forward
512, batches of 32 at lr 1.5e-3, greedy decoding of the validation set that selects the epoch
(``validation_beam_size=1``). VITA's validation PRAUC creeps for 20 to 35 epochs, and where patience stops it
is sensitive to differences as small as float rounding (default cohort, one thread, a second job on the other
core; seed 0: best 20 of 25, 125 s, best validation PRAUC 0.7418 under greedy decoding, 0.7338 under the beam of
4, multi-visit test PRAUC 0.736; seed 1: best 33 of 38, 180 s, 0.7453 greedy, 0.7411 beam, test 0.738; seed 0
of the same function with other rounding crept to best 32 of 37, 0.7452 greedy, test 0.742). Batches of 64 at lr 2.1e-3 (the rate scaled by the square root of the batch)
trained seed 0 in 146 s (best 28 of 33, 0.7448 greedy, 0.7416 beam) but stopped seed 1 at epoch 15 (best 10,
74 s) at 0.7337 greedy and 0.7285 beam, 0.006-0.007 under the main job's batch-32 run (0.7400, 0.7355), so
they are not taken. lr 3e-3 stopped at 12 (83 s) but at 0.731. Every shorter stop on the batch-32 history
loses at least 0.006 of validation PRAUC (patience 4: epoch 24; patience 3: 19; ``min_delta`` 0.001 or 0.002 with patience 5: 21),
so none is taken. Nor a decaying rate: lr 2.5e-3 multiplied by 0.88 after every epoch stopped seed 0 at epoch 32
(best 27) at 0.7387 greedy validation PRAUC (multi-visit test 0.739), 0.0065 under the constant rate.

Deliberate differences from the published code:

- Selection at prediction is deterministic: an earlier visit is kept when p >= 1/2 (the noise-free
  Gumbel argmax). The reference draws Gumbel noise at test time too (``F.gumbel_softmax`` knows no eval
  mode, 119), so its selected visits and predictions change from run to run. ``test_selection="gumbel"``
  restores the noise, drawn from a generator seeded with the model's seed at every prediction call, so a
  seed still gives the same predictions.
- Copy weights: each earlier visit's medications are weighted by that visit's own attention score. The
  reference weights copy slot j, which holds the medications of visit j - 1, by the score of visit j
  (its keys are the visits themselves, COGNet's are shifted by one), so the most recent visit's
  medications get the target visit's own score. ``copy_alignment="published"`` restores it.
- The EHR graph (``dataset.ehr_adj``) and the rare-first order come from the training patients only; the
  reference builds both from every record, test included (``VITA_main.py`` 83-93, ``ehr_adj_final.pkl``).
- Token widths: each half is padded to the training records' largest diagnosis and procedure sets (a code
  set larger than that at prediction keeps its first codes in vocabulary order). The reference hard-codes
  MIMIC-III's 39, 32 and 56, the procedure offset 1958 and 71 and 64 as literals (149, 170-172, 102-123),
  so any other vocabulary collides silently. Padding has a zero embedding: the reference's
  ``padding_idx`` (``DIAG_PAD + PROC_PAD``, line 32) is neither of its two pad tokens, so its pads carry
  learned vectors into the position-wise linear maps. A visit without codes lets the decoder attend to its
  first position (the reference's all-masked row attends uniformly).
- Test set, protocol and metrics: the harness's. The reference tests the first half of its held-out third
  and selects on the second (96-100); its DDI rate is averaged per visit, its "±" is the standard deviation
  over visits, and visits that raise a ``ValueError`` are skipped (``VITA_main.py`` 139-156).
- As in the harness's COGNet: beta (the DDI-memory weight, ``self.inter``, 58) starts uniform in [-0.1,
  0.1] instead of uninitialised memory; copy sources are exactly the earlier visits' medications (no
  1e-9 floor on padding, 300); beam search decodes at validation too (the reference validates greedily);
  training and prediction are batched over samples and over the visits of each record (the reference runs
  a DataLoader per prefix and Python loops over visits: ``make_query`` per visit, 159-165).
- Batched over the real codes: the padded token matrix [B, T, W, d] is never built. The position-wise maps
  (``MLP_layer3``/``MLP_layer2``, ``mlp_layer``) and the query's weighted sum are computed over the real
  codes, padding adding its biases only (the same function; a test checks it against the padded matrix),
  and embedding dropout draws masks for real codes only (the reference's dropout over padding multiplies
  zeros), so a seed's numbers differ from the padded computation in the dropout draws only.
- Dead modules are not built (``diagnoses_encoder``, ``dec_gru``, ``diag_attn``/``proc_attn``,
  ``W_*attn``, ``Ws``, ``W_dec``/``W_stay``, ``weight``, ``gumbel_layer*``, the bipartite/``MaskLinear``
  layers, ``m2p_multihead_attn``), nor the unused dec/stay inputs.
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
from baselines.cognet import COGNet, COGNetNetwork, CodeSetEncoder, attend_projected, project_keys_values, select_rows
from baselines.layers import GraphConvolutionNetwork, normalized_adjacency, pad_visits
from data_prep.dataset import PreparedDataset, Sample
from data_prep.protocol import record_visits

TEST_SELECTIONS = ("threshold", "gumbel")
COPY_ALIGNMENTS = ("own", "published")


@dataclass
class QueryContext:
    """What the decoder reads to prescribe one visit per row (R rows); the copy fields mean what they mean
    in ``baselines.cognet.VisitContext``."""

    query: torch.Tensor  # [R, W, d] the target-aware query's tokens
    query_mask: torch.Tensor  # [R, W] True = attend (the target visit's codes)
    copy_memory: torch.Tensor  # [R, C, d]
    copy_tokens: torch.Tensor  # [R, C]
    copy_log_weight: torch.Tensor  # [R, C]
    has_copy: torch.Tensor  # [R]
    drug_memory: torch.Tensor  # [|M| + 3, d], shared by all rows
    projected: tuple[torch.Tensor, ...] = ()  # the cross-attention's keys and values of the query, once per decoding

    def select(self, rows: torch.Tensor) -> "QueryContext":
        return select_rows(self, rows)


@dataclass
class RealTokens:
    """The real codes of a batch's token matrices [B, T, W] and their visit-level reductions."""

    x: torch.Tensor  # [N, d] embeddings (after dropout) of the real codes
    b: torch.Tensor  # [N] patient of each code (ascending)
    t: torch.Tensor  # [N] visit
    w: torch.Tensor  # [N] token position
    scalars: torch.Tensor  # [B, T] each visit's scalar (MLP_layer3, then MLP_layer2 over positions)
    vectors: torch.Tensor  # [B, T, d] each visit's vector before selection (mlp_layer over positions, no bias)


class QueryDecoder(nn.Module):
    """One post-LN decoder layer: causal self-attention over the medication tokens, cross-attention to the query."""

    def __init__(self, config: "VITA.Config"):
        super().__init__()
        self.layer = nn.TransformerDecoderLayer(config.dim, config.heads, config.decoder_feedforward, config.transformer_dropout, batch_first=True)

    def forward(self, x: torch.Tensor, context: QueryContext) -> torch.Tensor:
        causal = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device), diagonal=1)
        return self.layer(x, context.query, tgt_mask=causal, memory_key_padding_mask=~context.query_mask)

    def project(self, context: QueryContext) -> tuple[torch.Tensor]:
        """The cross-attention's keys and values of the query (``QueryContext.projected``)."""
        return (project_keys_values(self.layer.multihead_attn, context.query),)

    def last_position(self, x: torch.Tensor, context: QueryContext) -> torch.Tensor:
        """``forward``'s output at the last position only, for k prefixes ``x`` [N * k, S, d] per context row
        -> [N, k, d] (``baselines.cognet.MedicationDecoderLayer.last_position``): the layer's own blocks, post-LN."""
        layer = self.layer
        last = x[:, -1:]
        last = layer.norm1(last + layer.dropout1(layer.self_attn(last, x, x, need_weights=False)[0]))
        last = last.view(len(context.has_copy), -1, x.shape[-1])
        projected = context.projected[0] if context.projected else project_keys_values(layer.multihead_attn, context.query)
        attended = attend_projected(layer.multihead_attn, last, projected, context.query_mask)
        last = layer.norm2(last + layer.dropout2(attended))
        return layer.norm3(last + layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(last))))))


class VITANetwork(nn.Module):
    # COGNet's pieces, the same computation: drug memory, set encoding, copy distribution, the gated mixture
    drug_memory = COGNetNetwork.drug_memory
    encode_sets = staticmethod(COGNetNetwork.encode_sets)
    copy_distribution = COGNetNetwork.copy_distribution
    forward = COGNetNetwork.forward
    next_token = COGNetNetwork.next_token
    embed_tokens = COGNetNetwork.embed_tokens
    output = COGNetNetwork.output

    def __init__(self, dataset: PreparedDataset, config: "VITA.Config", widths: tuple[int, int]):
        super().__init__()
        n_meds, dim = dataset.n_medications, config.dim
        self.n_medications, self.dim, self.config = n_meds, dim, config
        self.sos, self.end, self.pad = n_meds, n_meds + 1, n_meds + 2
        width = sum(widths)
        self.code_pad = dataset.n_diagnoses + dataset.n_procedures
        self.codes = nn.Embedding(self.code_pad + 1, dim, padding_idx=self.code_pad)  # diagnoses, procedures, PAD
        self.code_dropout = nn.Dropout(config.embedding_dropout)
        self.medication_encoder = CodeSetEncoder(n_meds + 3, self.pad, config)  # rows: medications, SOS, END, PAD
        self.token_scalar = nn.Linear(dim, 1)  # MLP_layer3
        self.visit_scalar = nn.Linear(width, 1)  # MLP_layer2
        self.relevance = nn.Linear(2, 1)  # MLP_layer4
        self.visit_vector = nn.Linear(width, 1)  # mlp_layer
        self.attention_query = nn.Linear(dim, dim)  # linear_layer
        self.ehr_gcn = GraphConvolutionNetwork(normalized_adjacency(dataset.ehr_adj), dim, config.gcn_dropout)
        self.ddi_gcn = GraphConvolutionNetwork(normalized_adjacency(dataset.ddi_adj), dim, config.gcn_dropout)
        self.ddi_gcn.weight1, self.ddi_gcn.bias1 = self.ehr_gcn.weight1, self.ehr_gcn.bias1  # first layer shared
        self.ddi_weight = nn.Parameter(torch.empty(1).uniform_(-0.1, 0.1))  # beta
        self.decoder = QueryDecoder(config)
        self.generate = nn.Linear(dim, n_meds + 2)
        self.copy_query = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, 1)
        self.test_noise_seed = 0  # the model's seed: test_selection="gumbel" draws from it

    def real_tokens(self, codes: torch.Tensor, code_mask: torch.Tensor) -> "RealTokens":
        """The embeddings (dropout) of the real codes only and what the position-wise maps make of them.

        The padded token matrix [B, T, W, d] is never built: padding embeds to zero, so the reference's linear
        maps over token positions (``MLP_layer3`` then ``MLP_layer2`` to a visit scalar, ``mlp_layer`` to a
        visit vector) are sums over the real codes plus what the zero rows contribute (biases only), and
        dropout draws masks for real codes alone (about a third of the padded matrix on the default cohort)."""
        batch, steps = code_mask.shape[:2]
        b, t, w = code_mask.nonzero(as_tuple=True)  # row-major: grouped by patient
        x = self.code_dropout(self.codes(codes[b, t, w]))  # [N, d]
        visit = b * steps + t
        token_scalars = F.linear(x, self.token_scalar.weight).squeeze(-1) * self.visit_scalar.weight[0, w]
        scalars = x.new_zeros(batch * steps).index_add_(0, visit, token_scalars).view(batch, steps)
        scalars = scalars + self.token_scalar.bias * self.visit_scalar.weight.sum() + self.visit_scalar.bias
        vectors = x.new_zeros(batch * steps, self.dim).index_add_(0, visit, x * self.visit_vector.weight[0, w].unsqueeze(1))
        return RealTokens(x, b, t, w, scalars, vectors.view(batch, steps, self.dim))

    def selection(self, scalars: torch.Tensor, rows: torch.Tensor, visits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """[R, T]: 1 for the visits kept to prescribe visit ``visits[r]`` of patient ``rows[r]`` (always that
        visit, never a later one), 0 otherwise; straight-through Gumbel gradients while training. ``scalars``
        [B, T]: each visit reduced to a scalar (``RealTokens.scalars``)."""
        steps = torch.arange(present.shape[1], device=present.device)
        scalars = scalars[rows]  # [R, T]
        current = scalars.gather(1, visits.unsqueeze(1)).expand_as(scalars)
        p = torch.sigmoid(self.relevance(torch.stack([scalars, current], dim=-1))).squeeze(-1)
        logits = torch.stack([p, 1 - p], dim=-1)  # the reference feeds the probabilities as logits
        if self.training:
            keep = F.gumbel_softmax(logits, tau=self.config.gumbel_temperature, hard=True)[..., 0]
        elif self.config.test_selection == "gumbel":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.test_noise_seed)
                keep = F.gumbel_softmax(logits, tau=self.config.gumbel_temperature, hard=True)[..., 0]
        else:
            keep = (p >= 0.5).to(p.dtype)
        earlier = steps.unsqueeze(0) < visits.unsqueeze(1)
        return torch.where(steps.unsqueeze(0) == visits.unsqueeze(1), torch.ones_like(keep), keep * earlier)

    def context(self, batch: dict, rows: torch.Tensor, visits: torch.Tensor) -> QueryContext:
        """The decoder's input for visit ``visits[r]`` of patient ``rows[r]``."""
        codes, code_mask, lengths = batch["codes"], batch["code_mask"], batch["lengths"]
        n_steps, width = codes.shape[1], codes.shape[2]
        steps = torch.arange(n_steps, device=lengths.device)
        present = steps.unsqueeze(0) < lengths.unsqueeze(1)
        tokens = self.real_tokens(codes, code_mask)
        keep = self.selection(tokens.scalars, rows, visits, present)

        # target-aware attention over the kept visits; the unmasked scores weight the copy sources
        vectors = keep.unsqueeze(-1) * tokens.vectors[rows] + self.visit_vector.bias  # [R, T, d]: mlp_layer over the kept token matrices
        target = vectors.gather(1, visits.view(-1, 1, 1).expand(-1, 1, self.dim)).squeeze(1)
        scores = torch.einsum("rtd,rd->rt", vectors, self.attention_query(target)) / math.sqrt(self.dim)
        up_to_target = steps.unsqueeze(0) <= visits.unsqueeze(1)
        temperature = self.config.attention_temperature
        weights = torch.softmax(scores.masked_fill(keep == 0, float("-inf")) / temperature, dim=-1)
        visit_log_scores = torch.log_softmax(scores.masked_fill(~up_to_target, float("-inf")) / temperature, dim=-1)
        # the query [R, W, d]: the weighted sum of the visits' token matrices, over each row's patient's real codes
        per_patient = torch.bincount(tokens.b, minlength=len(lengths))
        first = torch.cumsum(per_patient, 0) - per_patient
        counts = per_patient[rows]
        row = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts)
        token = first[rows][row] + torch.arange(len(row), device=rows.device) - (torch.cumsum(counts, 0) - counts)[row]
        contributions = weights[row, tokens.t[token]].unsqueeze(1) * tokens.x[token]
        query = tokens.x.new_zeros(len(rows) * width, self.dim).index_add_(0, row * width + tokens.w[token], contributions).view(len(rows), width, self.dim)
        query_mask = code_mask[rows, visits]
        query_mask[:, 0] |= ~query_mask.any(1)  # a visit without codes attends to its first position

        # copy memory: slot j holds the medications of visit j - 1
        history, history_mask = batch["history_medications"], batch["history_medication_mask"]
        memory, _ = self.encode_sets(self.medication_encoder, history, history_mask, history_mask.any(-1))
        n_codes = history.shape[-1]
        source = history_mask[rows] & (steps.view(1, -1, 1) <= visits.view(-1, 1, 1))
        if self.config.copy_alignment == "own":  # slot j gets the score of visit j - 1
            visit_log_scores = torch.cat([visit_log_scores.new_full((len(rows), 1), float("-inf")), visit_log_scores[:, :-1]], dim=1)
        has_copy = source.flatten(1).any(1)
        copy_log_weight = visit_log_scores.unsqueeze(-1).expand(-1, -1, n_codes).masked_fill(~source, float("-inf")).flatten(1)
        copy_log_weight = torch.where(has_copy.unsqueeze(1), copy_log_weight, torch.zeros_like(copy_log_weight))
        return QueryContext(
            query=query,
            query_mask=query_mask,
            copy_memory=memory[rows].flatten(1, 2),
            copy_tokens=torch.where(source, history[rows], torch.zeros_like(history[rows])).flatten(1),
            copy_log_weight=copy_log_weight,
            has_copy=has_copy,
            drug_memory=self.drug_memory(),
        )


class VITA(COGNet):
    name = "vita"
    typical_seconds = 170  # quick, default cohort, one thread: the main job's 3-seed mean (README)
    publication = Publication("Kim et al., AAAI 2024", "2024-02")
    capabilities = Capabilities(needs_history_medications=True)

    @dataclass
    class Config(ModelConfig):
        epochs: int = 100
        patience: int = 10
        batch_size: int = 1  # one step per target visit (module docstring)
        lr: float = 1e-3
        dim: int = 64
        heads: int = 2
        encoder_feedforward: int = 2048  # the medication encoder: PyTorch's default, as the reference
        decoder_feedforward: int = 128  # 2 * dim
        embedding_dropout: float = 0.3
        transformer_dropout: float = 0.2
        gcn_dropout: float = 0.3
        beam_size: int = 4
        max_decode_length: int = 45
        validation_beam_size: int | None = None  # the decoding that selects the epoch; None: beam_size (COGNet's option)
        gumbel_temperature: float = 0.6
        attention_temperature: float = 20.0
        test_selection: str = "threshold"  # "gumbel": the reference's noisy selection at prediction (seeded)
        copy_alignment: str = "own"  # "published": copy slot j weighted by the score of visit j (module docstring)
        score_single_visit: ClassVar[bool] = False  # read by COGNet's code: VITA serves samples with history only

        HARNESS: ClassVar[dict] = {"batch_size": 16}
        QUICK: ClassVar[dict] = {"epochs": 60, "patience": 5, "encoder_feedforward": 512, "validation_beam_size": 1, "batch_size": 32, "lr": 1.5e-3}

        def __post_init__(self) -> None:
            if self.beam_size < 1 or self.max_decode_length < 1:
                raise ValueError(f"vita beam_size and max_decode_length must be at least 1, got {self.beam_size}, {self.max_decode_length}")
            if self.validation_beam_size is not None and self.validation_beam_size < 1:
                raise ValueError(f"vita validation_beam_size must be at least 1 or None, got {self.validation_beam_size}")
            if self.test_selection not in TEST_SELECTIONS:
                raise ValueError(f"vita test_selection must be one of {TEST_SELECTIONS}, got {self.test_selection!r}")
            if self.copy_alignment not in COPY_ALIGNMENTS:
                raise ValueError(f"vita copy_alignment must be one of {COPY_ALIGNMENTS}, got {self.copy_alignment!r}")

    config_class = Config

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.widths = (1, 1)  # token widths of the diagnosis and procedure halves, set from the training data by fit

    def build_network(self) -> nn.Module:
        network = VITANetwork(self.dataset, self.config, self.widths)
        network.test_noise_seed = self.seed
        return network

    def fit(self, train: Sequence[Sample], val: Sequence[Sample]) -> "VITA":
        visits = record_visits(self.train_samples(train))
        self.widths = (max([1, *(len(v.diagnoses) for v in visits)]), max([1, *(len(v.procedures) for v in visits)]))
        super().fit(train, val)
        self.fit_report["token_widths"] = list(self.widths)
        return self

    def inputs(self, samples: Sequence[Sample]) -> dict:
        """Every visit's token row [B, T, W] (diagnoses, then procedures offset by |D|, each half padded to its
        width) and, in slot j, the medications of visit j - 1 (never the target)."""
        n_dx, (dx_width, px_width) = self.dataset.n_diagnoses, self.widths
        pad = n_dx + self.dataset.n_procedures
        n_steps = max(len(s.history) for s in samples) + 1
        codes = np.full((len(samples), n_steps, dx_width + px_width), pad, dtype=np.int64)
        lengths = np.zeros(len(samples), dtype=np.int64)
        for b, s in enumerate(samples):
            visits = [(v.diagnoses, v.procedures) for v in s.history] + [(s.diagnoses, s.procedures)]
            lengths[b] = len(visits)
            for t, (diagnoses, procedures) in enumerate(visits):
                diagnoses, procedures = diagnoses[:dx_width], procedures[:px_width]
                codes[b, t, : len(diagnoses)] = diagnoses
                codes[b, t, dx_width : dx_width + len(procedures)] = [n_dx + p for p in procedures]
        batch = {"codes": torch.from_numpy(codes), "code_mask": torch.from_numpy(codes != pad), "lengths": torch.from_numpy(lengths)}
        batch["history_medications"], batch["history_medication_mask"], _ = pad_visits([[(), *(v.medications for v in s.history)] for s in samples])
        return {k: v.to(self.device) for k, v in batch.items()}

    def get_state(self) -> dict:
        return {**super().get_state(), "widths": torch.tensor(self.widths, dtype=torch.long)}

    def set_state(self, state: dict) -> None:
        self.widths = tuple(state["widths"].tolist())
        super().set_state(state)
