"""COGNet: conditional generation of the medication set with copy-or-generate (Wu et al., WWW 2022).

Paper: R. Wu, Z. Qiu, J. Jiang, G. Qi, X. Wu, "Conditional Generation Net for Medication
Recommendation", WWW 2022 (arXiv 2202.06588). Reference code: github.com/BarryRun/COGNet
(``src/COGNet_model.py``, ``src/COGNet.py``, ``src/recommend.py``, ``src/beam.py``).

The medication set of a visit is generated as a sequence, rarest medication first (frequency
counted on the training patients' visits), then END. Encoder: the diagnoses and the procedures of
every visit each go through one transformer encoder layer (2 heads, feed-forward 2048, dropout 0.2,
no positional encoding); attention pooling (a 32-unit tanh layer) gives one diagnosis and one
procedure vector per visit. Visit-level copy scores: visit t attends (softmax, scaled dot product of
both vectors) over slots 0..t, where slot j holds visit j-1 and slot 0 a zero key. The medication
sets of the earlier visits go through a third encoder layer (the copy memory). Drug memory: GCN over
the EHR co-occurrence graph minus a learned scalar beta times GCN over the DDI graph (first layer
shared by both graphs, as the reference). Decoder (one layer, post-LN): causal self-attention over
the medication tokens (embedding plus drug memory), two cross-attentions (current visit's diagnosis
and procedure encodings) summed, feed-forward 2 * dim. Generate: softmax over the medications, SOS
and END. Copy: attention over every medication of every earlier visit, weighted by its visit's copy
score and renormalised, summed per medication. A sigmoid gate mixes the two; a visit without earlier
medications uses generation alone. Loss: token-level NLL with teacher forcing (the log-probabilities
of the target tokens gathered and averaged, which has a deterministic CUDA kernel where ``nll_loss``
has none). Adam, lr 1e-3, batch 16, dim 64. Decoding: beam search (beam 4, at most 45 steps, a hypothesis never repeats a token,
finished hypotheses keep their score and compete with the live ones, the best raw summed
log-probability wins, no length normalisation), batched over all samples at once. Each step computes
the decoder at the last position of every beam's prefix only (the causal mask lets it see the whole
prefix; every later block is per position) and reads each sample's context once for its k beams: the
same beams as re-running the whole prefix, without its quadratic cost (on the default cohort, quick,
one thread: COGNet's evaluation takes 10.8 s where re-running the prefix took 14.5 s, VITA's 24 s where
it took 32 s, with the same validation histories); the best hypothesis's step probabilities are traced back
through the beams' back-pointers at the end, not copied along every step. ``predict_proba`` and ``predict_sets`` share one search per
sample set: the last four results are kept with a copy of the weights, the config and the beam, and reused
only where all are equal (the harness asks for the probabilities and then the sets of the validation and
test samples: two searches instead of four). The set encoders embed, drop out, project and normalise the
attended tokens only (padding embeds to zero and nothing reads it; only the attention core sees the padded
sets): the same function, no dropout masks drawn for padding, so a seed's numbers differ from a padded
computation's in the dropout draws only.

PRAUC. The model has no per-medication score; its probabilities come from the decoding steps, as
the reference computes them: for each medication the highest probability it had at any step that
produced a medication of the best hypothesis, and for a generated medication its probability at the
step that generated it (the reference takes the same maximum over log-probabilities; the ranking,
hence the PRAUC, is the same). These are pseudo-probabilities, not comparable in kind with the
sigmoid scores of the other models (``COGNet.table_note``). The decision rule is the beam search
itself (``predict_sets``), not a threshold.

Multi-visit only by default, as LEADER's Table I marks it (Capabilities
``needs_history_medications=True``); training then uses multi-visit samples only, as the reference
trains on patients with at least two visits. ``score_single_visit=True`` trains on every sample and
scores single-visit patients by generation alone.

Deliberate differences from the published code:

- beta (the DDI-memory weight) starts uniform in [-0.1, 0.1], as GAMENet's; the reference creates it
  from uninitialised memory (``nn.Parameter(torch.FloatTensor(1))``), any value at all.
- The rare-first order and the EHR graph come from the training patients only; the reference counts
  frequencies over every patient, test included.
- Copy sources are exactly the real medications of earlier visits. The reference pads the history
  with drug 0 and clamps every copy weight to at least 1e-9 before renormalising, so padding (drug 0)
  and the current and later visits' medications receive a little mass. A row with no earlier
  medication uses generation alone (the reference: only the first visit; an empty history would
  copy uniformly onto the padding). Medications, diagnoses and procedures have a real PAD token; an
  empty code set is one PAD token (the reference's all-padding row attends to its padding alike).
- Model selection. ``--preset paper`` runs all 200 epochs and keeps the epoch of best validation
  Jaccard, as the reference, but of the beam search's sets: the reference selects under greedy
  decoding while its test decodes with beam search (``validation_beam_size=1`` selects under greedy
  decoding, as the reference). ``--preset harness``/``quick``: best validation PRAUC (of the decoding
  probabilities above), stopped by patience 10 (quick: 3, at most 60 epochs). ``--preset quick`` decodes
  the validation set greedily (``validation_beam_size=1``, the reference's selection decoding; about a
  quarter of the beam search's work); its predictions, validation and test, use the beam of 4.
- ``--preset quick``: batches of 32 at lr 1.5e-3 (the rate scaled by about the square root of the batch)
  instead of the reference's 16 at 1e-3. On the default cohort (4,400 multi-visit training samples, seed 0)
  it stopped by patience at epoch 15 (best 10) in 155 s on one thread, against epoch 21 (best 16) and 241 s
  in batches of 16 at 1e-3 with beam-4 validation. Quick patience 3 instead of 5: the same run (same
  history, best epoch 10, multi-visit test PRAUC 0.742) stops at epoch 13 instead of 15, training 131 s; its
  longest stall before the best epoch is 2 epochs. On the default cohort (one thread, a second job on the
  other core), seed 0: best 17 of 20, 172 s training with its greedy validation passes, best validation
  PRAUC 0.7462, multi-visit test PRAUC 0.747; seed 1: best 18 of 21, 170 s, 0.7461, test 0.746. (Tried and not taken: encoder feed-forward 128 with
  patience 3 trained 31 epochs, 258 s, test PRAUC 0.752; lr 2e-3 multiplied by 0.9 after every epoch stopped
  seed 0 at the same epoch as the constant rate, 19 (best 16), at 0.7428 greedy validation PRAUC against 0.7449.)
- Training visits: the protocol's samples decide, as for every model here; the loss is on each
  sample's target visit, the earlier visits are input. The reference's teacher forcing on every
  visit of every training patient (tested on the last visits here) is ``--protocol train-all-test-last``.
- Beam search decodes the target visit of every sample in one batch; the reference decodes every
  visit of one test patient at a time (Python loops per token). Ties are broken by a stable sort;
  where fewer valid extensions than beams remain (tiny vocabularies), the surplus beams die (the
  reference would read past its sorted candidates). The step cap is ``min(max_decode_length, |M| + 1)``.
- PRAUC scores when the best hypothesis is empty (END first): the END step's probabilities. The
  reference crashes there (maximum over no step) and hard-codes MIMIC-III's 131 medications.
- Encoder layers compute ``nn.TransformerEncoderLayer``'s function (post-LN, ReLU, PyTorch's default
  width 2048 as the reference) with the attention's projections and the feed-forward on real tokens only
  (``PackedEncoderLayer``); ``--preset quick`` narrows it to 512 (8 * dim, the reference's own
  commented-out setting).
- Dead modules are not built (``dec_gru``, ``diag_attn``/``proc_attn``, ``W_*attn``, ``Ws``,
  ``W_dec``/``W_stay``/..., ``weight``, the SafeDrug substructure modules), nor the unused
  dec/stay inputs; embedding tables have one PAD row (the reference: two more unused rows).
- Metrics are per sample (the harness's rule); the reference averages over each patient's visits
  first.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.contract import Capabilities, ModelConfig, Publication
from bench.training import TorchModel
from baselines.layers import GraphConvolutionNetwork, masked_softmax, normalized_adjacency, pad_visits, visit_sequences
from data_prep.dataset import PreparedDataset, Sample
from data_prep.protocol import record_visits

IGNORE = -100  # target positions without a token
DECODED_KEPT = 4  # beam-search results kept for reuse (COGNet.decode): the validation and test sets, with room


def rare_first_rank(train: Sequence[Sample], n_medications: int) -> np.ndarray:
    """Rank of each medication when sorted by training frequency, rarest first (ties: lower index).

    Every visit of the training samples' records counts once, whatever the protocol (a visit that is
    the history of several samples is not counted again).
    """
    counts = np.zeros(n_medications, dtype=np.int64)
    for visit in record_visits(train):
        counts[list(visit.medications)] += 1
    rank = np.empty(n_medications, dtype=np.int64)
    rank[np.argsort(counts, kind="stable")] = np.arange(n_medications)
    return rank


def with_pad(codes: torch.Tensor, mask: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded positions get the PAD id; an empty code set becomes one PAD token (attendable), so no
    attention row is empty. Returns the codes and the attention mask (True = attend)."""
    codes = torch.where(mask, codes, torch.full_like(codes, pad))
    empty = ~mask.any(-1, keepdim=True)
    first = torch.zeros_like(mask)
    first[..., 0] = True
    return codes, mask | (empty & first)


@dataclass
class VisitContext:
    """What the decoder reads to prescribe one visit per row (R rows)."""

    diagnoses: torch.Tensor  # [R, Ld, d] encoded diagnoses of the visit
    diagnosis_mask: torch.Tensor  # [R, Ld] True = attend
    procedures: torch.Tensor  # [R, Lp, d]
    procedure_mask: torch.Tensor  # [R, Lp]
    copy_memory: torch.Tensor  # [R, C, d] encoded medications of the earlier visits
    copy_tokens: torch.Tensor  # [R, C] their medication ids (0 where not a source)
    copy_log_weight: torch.Tensor  # [R, C] log visit-level copy score; -inf where not a source
    has_copy: torch.Tensor  # [R] at least one earlier medication
    drug_memory: torch.Tensor  # [|M| + 3, d], shared by all rows
    projected: tuple[torch.Tensor, ...] = ()  # the decoder's cross-attention keys and values, once per decoding (``project``)

    def select(self, rows: torch.Tensor) -> "VisitContext":
        """The context of rows ``rows`` (repeats allowed, e.g. one per beam)."""
        return select_rows(self, rows)


def select_rows(context, rows: torch.Tensor):
    """A decoder context (a dataclass of per-row tensors, a tuple of them in ``projected``, and the shared
    ``drug_memory``) restricted to rows ``rows``."""
    fields = {name: getattr(context, name) for name in context.__dataclass_fields__}
    picked = {name: tuple(t[rows] for t in value) if name == "projected" else value[rows] for name, value in fields.items() if name != "drug_memory"}
    return type(context)(**picked, drug_memory=context.drug_memory)


def project_keys_values(attention: nn.MultiheadAttention, memory: torch.Tensor) -> torch.Tensor:
    """[R, 2, h, L, d / h]: ``attention``'s key and value projections of ``memory`` [R, L, d]."""
    dim, heads = attention.embed_dim, attention.num_heads
    keys_values = F.linear(memory, attention.in_proj_weight[dim:], attention.in_proj_bias[dim:])
    return keys_values.view(*memory.shape[:2], 2, heads, dim // heads).permute(0, 2, 3, 1, 4)


def attend_projected(attention: nn.MultiheadAttention, x: torch.Tensor, keys_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``attention(x, memory, memory, key_padding_mask=~mask)[0]`` without dropout, for ``x`` [R, S, d] and
    ``keys_values = project_keys_values(attention, memory)``: a decoding step reads a fixed context without
    projecting it again."""
    dim, heads = attention.embed_dim, attention.num_heads
    q = F.linear(x, attention.in_proj_weight[:dim], attention.in_proj_bias[:dim]).view(*x.shape[:2], heads, dim // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, keys_values[:, 0], keys_values[:, 1], attn_mask=mask[:, None, None, :])
    return attention.out_proj(out.transpose(1, 2).flatten(2))


class PackedEncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer``'s computation (post-LN, ReLU) with every per-position map run on real
    tokens only: code sets are padded to about twice their mean length, and the attention's input and output
    projections and the 2048-wide feed-forward dominate the cost. Only the attention core (scores, softmax,
    dropout, weighted sum) sees the padded [N, L] layout, as ``nn.MultiheadAttention`` computes it (the same
    ``scaled_dot_product_attention`` call on the same shapes, so its dropout draws are the same). Padded
    positions come out as zeros (nothing reads them)."""

    def __init__(self, dim: int, heads: int, feedforward: int, dropout: float):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.feedforward = nn.Sequential(nn.Linear(dim, feedforward), nn.ReLU(), nn.Dropout(dropout), nn.Linear(feedforward, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2))
        self.dropouts = nn.ModuleList(nn.Dropout(dropout) for _ in range(2))

    def self_attention(self, real: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """``self.attention(x, x, x, key_padding_mask=~attend)[0][attend]`` for ``x`` [N, L, d] holding ``real``
        [n, d] at ``attend`` [N, L] (zeros elsewhere): projections of the real tokens only."""
        attention, (n_sets, width), dim = self.attention, attend.shape, real.shape[-1]
        heads = attention.num_heads
        qkv = real.new_zeros(n_sets, width, 3 * dim)  # padded queries/keys/values: masked keys, discarded queries
        qkv[attend] = F.linear(real, attention.in_proj_weight, attention.in_proj_bias)
        q, k, v = qkv.view(n_sets, width, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)  # each [N, h, L, d / h]
        mask = torch.zeros(attend.shape, dtype=real.dtype, device=real.device).masked_fill_(~attend, float("-inf"))
        dropout = attention.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, mask.view(n_sets, 1, 1, width).expand(-1, heads, -1, -1), dropout)
        return attention.out_proj(out.transpose(1, 2)[attend].flatten(1))

    def forward(self, real: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """``real`` [n, d]: the inputs at the attended positions of ``attend`` [N, L] -> [N, L, d]."""
        real = self.norms[0](real + self.dropouts[0](self.self_attention(real, attend)))
        out = real.new_zeros(*attend.shape, real.shape[-1])
        out[attend] = self.norms[1](real + self.dropouts[1](self.feedforward(real)))
        return out


class CodeSetEncoder(nn.Module):
    """Embedding (dropout) and one transformer encoder layer over a padded code set, no positions."""

    def __init__(self, n_rows: int, pad: int, config: "COGNet.Config"):
        super().__init__()
        self.pad = pad
        self.embedding = nn.Embedding(n_rows, config.dim, padding_idx=pad)
        self.dropout = nn.Dropout(config.embedding_dropout)
        self.layer = PackedEncoderLayer(config.dim, config.heads, config.encoder_feedforward, config.transformer_dropout)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.embedding(codes))

    def forward(self, codes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``codes``/``mask`` [N, L] -> encodings [N, L, d] and the attention mask [N, L]. Padding embeds to
        zero, so only the attended tokens are embedded and dropped out (no masks drawn for padding)."""
        codes, attend = with_pad(codes, mask, self.pad)
        return self.layer(self.embed(codes[attend]), attend), attend


class AttentionPooling(nn.Module):
    """``softmax_i(w2 tanh(W1 h_i + b1) + b2)``-weighted sum of a set's encodings (the reference's SelfAttend)."""

    def __init__(self, dim: int, hidden: int = 32):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, encodings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = masked_softmax(self.score(encodings).squeeze(-1), mask)
        return torch.einsum("nl,nld->nd", weights, encodings)


class MedicationDecoderLayer(nn.Module):
    """Post-LN decoder layer: causal self-attention, diagnosis and procedure cross-attentions summed, FFN."""

    def __init__(self, config: "COGNet.Config"):
        super().__init__()
        dim, heads, dropout = config.dim, config.heads, config.transformer_dropout
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.diagnosis_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.procedure_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.feedforward = nn.Sequential(nn.Linear(dim, config.decoder_feedforward), nn.ReLU(), nn.Dropout(dropout), nn.Linear(config.decoder_feedforward, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.dropouts = nn.ModuleList(nn.Dropout(dropout) for _ in range(4))

    def forward(self, x: torch.Tensor, context: VisitContext) -> torch.Tensor:
        causal = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device), diagonal=1)
        attended = self.self_attention(x, x, x, attn_mask=causal, need_weights=False)[0]
        return self.read_context(self.norms[0](x + self.dropouts[0](attended)), context)

    def last_position(self, x: torch.Tensor, context: VisitContext) -> torch.Tensor:
        """``forward``'s output at the last position only: ``x`` [N * k, S, d] holds k prefixes per context
        row (row n's are n * k .. n * k + k - 1) -> [N, k, d]. The causal mask lets the last position see
        the whole prefix, and the later blocks act per position: the beam search's step without recomputing
        the prefix or copying the context per beam."""
        last = x[:, -1:]
        attended = self.self_attention(last, x, x, need_weights=False)[0]
        last = self.norms[0](last + self.dropouts[0](attended))
        return self.read_context(last.view(len(context.has_copy), -1, x.shape[-1]), context)

    def project(self, context: VisitContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-attentions' keys and values of the context (``VisitContext.projected``)."""
        return project_keys_values(self.diagnosis_attention, context.diagnoses), project_keys_values(self.procedure_attention, context.procedures)

    def read_context(self, x: torch.Tensor, context: VisitContext) -> torch.Tensor:
        """Cross-attentions and feed-forward on [R, S, d], each position independently."""
        if context.projected:  # decoding (no dropout): the keys and values projected once
            diagnoses = attend_projected(self.diagnosis_attention, x, context.projected[0], context.diagnosis_mask)
            procedures = attend_projected(self.procedure_attention, x, context.projected[1], context.procedure_mask)
        else:
            diagnoses = self.diagnosis_attention(x, context.diagnoses, context.diagnoses, key_padding_mask=~context.diagnosis_mask, need_weights=False)[0]
            procedures = self.procedure_attention(x, context.procedures, context.procedures, key_padding_mask=~context.procedure_mask, need_weights=False)[0]
        x = self.norms[1](x + self.dropouts[1](diagnoses) + self.dropouts[2](procedures))
        return self.norms[2](x + self.dropouts[3](self.feedforward(x)))


class COGNetNetwork(nn.Module):
    def __init__(self, dataset: PreparedDataset, config: "COGNet.Config"):
        super().__init__()
        n_meds, dim = dataset.n_medications, config.dim
        self.n_medications, self.dim = n_meds, dim
        self.sos, self.end, self.pad = n_meds, n_meds + 1, n_meds + 2
        self.diagnosis_encoder = CodeSetEncoder(dataset.n_diagnoses + 1, dataset.n_diagnoses, config)
        self.procedure_encoder = CodeSetEncoder(dataset.n_procedures + 1, dataset.n_procedures, config)
        self.medication_encoder = CodeSetEncoder(n_meds + 3, self.pad, config)  # rows: medications, SOS, END, PAD
        self.diagnosis_pooling = AttentionPooling(dim)
        self.procedure_pooling = AttentionPooling(dim)
        self.ehr_gcn = GraphConvolutionNetwork(normalized_adjacency(dataset.ehr_adj), dim, config.gcn_dropout)
        self.ddi_gcn = GraphConvolutionNetwork(normalized_adjacency(dataset.ddi_adj), dim, config.gcn_dropout)
        self.ddi_gcn.weight1, self.ddi_gcn.bias1 = self.ehr_gcn.weight1, self.ehr_gcn.bias1  # first layer shared
        self.ddi_weight = nn.Parameter(torch.empty(1).uniform_(-0.1, 0.1))  # beta
        self.decoder = MedicationDecoderLayer(config)
        self.generate = nn.Linear(dim, n_meds + 2)
        self.copy_query = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, 1)

    def drug_memory(self) -> torch.Tensor:
        """[|M| + 3, d]: GCN(EHR) - beta GCN(DDI), zero rows for SOS, END and PAD."""
        memory = self.ehr_gcn() - self.ddi_weight * self.ddi_gcn()
        return torch.cat([memory, memory.new_zeros(3, self.dim)])

    @staticmethod
    def encode_sets(encoder: CodeSetEncoder, codes: torch.Tensor, mask: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the sets at ``present`` [B, T] only (no work on padded visits) -> [B, T, L, d], [B, T, L]."""
        out = encoder.embedding.weight.new_zeros(*codes.shape, encoder.embedding.embedding_dim)
        full_attend = torch.zeros_like(mask)
        if present.any():
            out[present], full_attend[present] = encoder(codes[present], mask[present])
        return out, full_attend

    def context(self, batch: dict, rows: torch.Tensor, visits: torch.Tensor) -> VisitContext:
        """Encode the batch's patients and gather the decoder's input for visit ``visits[r]`` of patient ``rows[r]``."""
        lengths = batch["lengths"]
        n_steps = batch["diagnoses"].shape[1]
        steps = torch.arange(n_steps, device=lengths.device)
        present = steps.unsqueeze(0) < lengths.unsqueeze(1)  # [B, T] real visits
        diagnoses, diagnosis_mask = self.encode_sets(self.diagnosis_encoder, batch["diagnoses"], batch["diagnosis_mask"], present)
        procedures, procedure_mask = self.encode_sets(self.procedure_encoder, batch["procedures"], batch["procedure_mask"], present)
        diagnosis_vectors = self.diagnosis_pooling(diagnoses.flatten(0, 1), diagnosis_mask.flatten(0, 1)).view(*present.shape, self.dim)
        procedure_vectors = self.procedure_pooling(procedures.flatten(0, 1), procedure_mask.flatten(0, 1)).view(*present.shape, self.dim)

        # visit-level copy scores: slot j holds visit j-1 (slot 0 a zero key); visit t sees slots 0..t
        keys_d, keys_p = (torch.cat([v.new_zeros(v.shape[0], 1, self.dim), v[:, :-1]], dim=1) for v in (diagnosis_vectors, procedure_vectors))
        scores = (diagnosis_vectors @ keys_d.transpose(1, 2) + procedure_vectors @ keys_p.transpose(1, 2)) / math.sqrt(self.dim)
        causal = steps.unsqueeze(1) >= steps.unsqueeze(0)  # [t, j]: j <= t
        visit_log_scores = torch.log_softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)  # [B, T, T]

        # copy memory: slot j holds the medications of visit j-1 (batch["history_medications"] is shifted already)
        history, history_mask = batch["history_medications"], batch["history_medication_mask"]
        has_set = history_mask.any(-1)  # [B, T]
        memory, _ = self.encode_sets(self.medication_encoder, history, history_mask, has_set)
        n_codes = history.shape[-1]
        source = history_mask[rows] & (steps.view(1, -1, 1) <= visits.view(-1, 1, 1))  # [R, T, Lm]: earlier visits' medications
        log_weight = visit_log_scores[rows, visits].unsqueeze(-1).expand(-1, -1, n_codes)
        has_copy = source.flatten(1).any(1)
        copy_log_weight = log_weight.masked_fill(~source, float("-inf")).flatten(1)
        # rows without a source get a finite dummy (never used: the gate is bypassed), so nothing is NaN
        copy_log_weight = torch.where(has_copy.unsqueeze(1), copy_log_weight, torch.zeros_like(copy_log_weight))
        return VisitContext(
            diagnoses=diagnoses[rows, visits],
            diagnosis_mask=diagnosis_mask[rows, visits],
            procedures=procedures[rows, visits],
            procedure_mask=procedure_mask[rows, visits],
            copy_memory=memory[rows].flatten(1, 2),
            copy_tokens=torch.where(source, history[rows], torch.zeros_like(history[rows])).flatten(1),
            copy_log_weight=copy_log_weight,
            has_copy=has_copy,
            drug_memory=self.drug_memory(),
        )

    def copy_distribution(self, hidden: torch.Tensor, context: VisitContext) -> torch.Tensor:
        """[R, S, |M| + 2]: attention over the earlier medications times their visit's score, renormalised, summed per medication."""
        scores = torch.einsum("rsd,rcd->rsc", self.copy_query(hidden), context.copy_memory) / math.sqrt(self.dim)
        weights = torch.softmax(scores + context.copy_log_weight.unsqueeze(1), dim=-1)
        out = hidden.new_zeros(*hidden.shape[:2], self.n_medications + 2)
        return out.scatter_add_(-1, context.copy_tokens.unsqueeze(1).expand_as(weights), weights)

    def forward(self, tokens: torch.Tensor, context: VisitContext) -> torch.Tensor:
        """Log-probabilities [R, S, |M| + 2] of the next token after each prefix of ``tokens`` [R, S]."""
        return self.output(self.decoder(self.embed_tokens(tokens, context), context), context)

    def next_token(self, tokens: torch.Tensor, context: VisitContext) -> torch.Tensor:
        """``forward(tokens, context.select(arange(N * k) // k))[:, -1]`` for k prefixes ``tokens`` [N * k, S]
        per context row: log-probabilities [N * k, |M| + 2] of the next token, the last position computed only."""
        hidden = self.decoder.last_position(self.embed_tokens(tokens, context), context)  # [N, k, d]
        return self.output(hidden, context).flatten(0, 1)

    def embed_tokens(self, tokens: torch.Tensor, context: VisitContext) -> torch.Tensor:
        return self.medication_encoder.embed(tokens) + context.drug_memory[tokens]  # one medication table, as the reference

    def output(self, hidden: torch.Tensor, context: VisitContext) -> torch.Tensor:
        """Log-probabilities [R, S, |M| + 2] from the decoder's states [R, S, d]: generate, copy and gate."""
        generated = torch.softmax(self.generate(hidden), dim=-1)
        gate = torch.sigmoid(self.gate(hidden))
        mixed = gate * generated + (1 - gate) * self.copy_distribution(hidden, context)
        proba = torch.where(context.has_copy.view(-1, 1, 1), mixed, generated)
        return torch.log(proba.clamp_min(torch.finfo(proba.dtype).tiny))


def same_key(a: tuple, b: tuple) -> bool:
    """``COGNet.decode_key`` equality: equal config and beam, equal weights (value by value)."""
    return a[0] == b[0] and a[1] == b[1] and len(a[2]) == len(b[2]) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a[2], b[2]))


@dataclass
class BeamResult:
    tokens: torch.Tensor  # [N, S] best hypothesis per row, SOS first
    step_log_proba: torch.Tensor  # [N, S - 1, V] log-probabilities of the step that emitted tokens[:, 1:]


@torch.no_grad()
def beam_search(step, n_rows: int, beam_size: int, max_steps: int, vocabulary: int, sos: int, end: int, device: torch.device) -> BeamResult:
    """The reference's beam search, batched over ``n_rows`` independent searches.

    ``step(tokens [n, S], rows [n])`` returns the next-token log-probabilities [n, V] for the prefixes
    of beams ``rows`` (indices into ``n_rows * beam_size``, row-major). Step 0 extends the first beam
    only; a hypothesis never repeats a token (SOS counts as used); END finishes it, and a finished
    hypothesis keeps its summed log-probability and competes with the live extensions for the
    ``beam_size`` places; the best raw sum wins (no length normalisation).
    """
    k = beam_size
    tokens = torch.full((n_rows, k, 1), sos, dtype=torch.long, device=device)
    scores = torch.full((n_rows, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    finished = torch.zeros(n_rows, k, dtype=torch.bool, device=device)
    used = F.one_hot(torch.full((n_rows, k), sos, device=device), vocabulary).bool()
    step_log_proba, sources = [], []  # per step: [N, k, V] of the beams before it, [N, k] each new beam's source
    for _ in range(max_steps):
        live = ~finished.all(1)
        if not live.any():
            break
        live_rows = live.repeat_interleave(k).nonzero().squeeze(1)
        log_proba = torch.full((n_rows * k, vocabulary), float("-inf"), device=device)
        log_proba[live_rows] = step(tokens.flatten(0, 1)[live_rows], live_rows)
        log_proba = log_proba.view(n_rows, k, vocabulary)
        candidates = (scores.unsqueeze(-1) + log_proba).masked_fill(used, float("-inf"))
        stay = torch.full_like(candidates, float("-inf"))
        stay[..., end] = scores  # a finished hypothesis continues with END at no cost
        candidates = torch.where(finished.unsqueeze(-1), stay, candidates)
        best, index = torch.sort(candidates.flatten(1), dim=1, descending=True, stable=True)
        scores, index = best[:, :k], index[:, :k]
        source, word = index // vocabulary, index % vocabulary

        def pick(t: torch.Tensor) -> torch.Tensor:  # reorder [N, k, ...] by each new beam's source beam
            return t.gather(1, source.view(n_rows, k, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))

        tokens = torch.cat([pick(tokens), word.unsqueeze(-1)], dim=2)
        step_log_proba.append(log_proba)
        sources.append(source)
        used = pick(used) | F.one_hot(word, vocabulary).bool()
        finished = pick(finished) | (word == end) | torch.isinf(scores)
    rows, best = torch.arange(n_rows, device=device), scores.argmax(1)
    beam, history = best, []  # the best hypothesis's step log-probabilities, traced back through the sources (no copy per step)
    for log_proba, source in zip(reversed(step_log_proba), reversed(sources)):
        beam = source[rows, beam]
        history.append(log_proba[rows, beam])
    history = torch.stack(history[::-1], dim=1) if history else torch.zeros(n_rows, 0, vocabulary, device=device)
    return BeamResult(tokens[rows, best], history)


class COGNet(TorchModel):
    name = "cognet"
    typical_seconds = 222  # quick, default cohort, one thread: the main job's 3-seed mean (README)
    publication = Publication("Wu et al., WWW 2022", "2022-04")
    capabilities = Capabilities(needs_history_medications=True)
    decides_by_threshold = False
    table_note: ClassVar[str] = "PRAUC from the beam search's step probabilities (pseudo-probabilities, not per-medication scores)"

    @dataclass
    class Config(ModelConfig):
        epochs: int = 200
        patience: int | None = None  # every epoch runs; the best validation Jaccard is kept
        selection: str = "jaccard"
        batch_size: int = 16
        lr: float = 1e-3
        dim: int = 64
        heads: int = 2
        encoder_feedforward: int = 2048  # PyTorch's default, which the reference uses
        decoder_feedforward: int = 128  # 2 * dim in the reference
        embedding_dropout: float = 0.3
        transformer_dropout: float = 0.2
        gcn_dropout: float = 0.3
        beam_size: int = 4
        max_decode_length: int = 45
        score_single_visit: bool = False  # True: also serve single-visit samples (generation alone)
        validation_beam_size: int | None = None  # the decoding that selects the epoch; None: beam_size (1: greedy, the script's)

        # for 2 CPU cores: the reference's own commented-out encoder width (8 * dim), patience 3, greedy validation decoding
        # batches of 32 at lr 1.5e-3 (module docstring)
        QUICK: ClassVar[dict] = {"epochs": 60, "patience": 3, "encoder_feedforward": 512, "validation_beam_size": 1, "batch_size": 32, "lr": 1.5e-3}

        def __post_init__(self) -> None:
            if self.beam_size < 1 or self.max_decode_length < 1:
                raise ValueError(f"COGNet beam_size and max_decode_length must be at least 1, got {self.beam_size}, {self.max_decode_length}")
            if self.validation_beam_size is not None and self.validation_beam_size < 1:
                raise ValueError(f"COGNet validation_beam_size must be at least 1 or None, got {self.validation_beam_size}")

    config_class = Config

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.capabilities = Capabilities(needs_history_medications=not self.config.score_single_visit)
        self.rank = np.arange(self.dataset.n_medications)  # the rare-first order, set from the training data by fit
        self.selecting = False  # True while fit scores validation epochs (decoded with validation_beam_size)

    # ----- training ----------------------------------------------------------------------------
    def build_network(self) -> nn.Module:
        return COGNetNetwork(self.dataset, self.config)

    def train_samples(self, train: Sequence[Sample]) -> list[Sample]:
        return [s for s in train if s.history or self.config.score_single_visit]

    def fit(self, train: Sequence[Sample], val: Sequence[Sample]) -> "COGNet":
        self.rank = rare_first_rank(self.train_samples(train), self.dataset.n_medications)
        self.selecting = True
        try:
            super().fit(train, val)
        finally:
            self.selecting = False
        self.fit_report["validation_beam_size"] = self.beam_size(selecting=True)
        return self

    def beam_size(self, selecting: bool) -> int:
        """The beam of the validation decoding that selects the epoch (``selecting``), or of every prediction."""
        return (self.config.validation_beam_size if selecting else None) or self.config.beam_size

    def inputs(self, samples: Sequence[Sample]) -> dict:
        """Every visit's codes [B, T, L] and, in slot j, the medications of visit j-1 (never the target)."""
        batch = visit_sequences(samples)
        batch["history_medications"], batch["history_medication_mask"], _ = pad_visits([[(), *(v.medications for v in s.history)] for s in samples])
        return {k: v.to(self.device) for k, v in batch.items()}

    def collate(self, samples: Sequence[Sample]) -> dict:
        """Inputs plus teacher forcing: SOS and the target rare-first in, the target rare-first and END out."""
        batch = self.inputs(samples)
        net = self.network
        sizes = np.array([len(s.target) for s in samples])
        rows = np.repeat(np.arange(len(samples)), sizes)
        codes = np.fromiter((m for s in samples for m in s.target), dtype=np.int64, count=int(sizes.sum()))
        order = np.lexsort((self.rank[codes], rows))  # by sample, then rare-first (ranks are distinct)
        position = np.arange(len(codes)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        tokens = np.full((len(samples), sizes.max() + 1), net.pad, dtype=np.int64)
        targets = np.full(tokens.shape, IGNORE, dtype=np.int64)
        tokens[:, 0], tokens[rows, position + 1] = net.sos, codes[order]
        targets[rows, position], targets[np.arange(len(samples)), sizes] = codes[order], net.end
        batch.update(tokens=torch.from_numpy(tokens).to(self.device), targets=torch.from_numpy(targets).to(self.device))
        return batch

    def target_context(self, batch: dict) -> VisitContext:
        """The decoder's input for each sample's current (last) visit."""
        return self.network.context(batch, torch.arange(len(batch["lengths"]), device=self.device), batch["lengths"] - 1)

    def loss(self, batch: dict, epoch: int) -> torch.Tensor:
        log_proba = self.network(batch["tokens"], self.target_context(batch))
        targets = batch["targets"]
        real = (targets != IGNORE).to(log_proba.dtype)
        target_log_proba = log_proba.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return -(target_log_proba * real).sum() / real.sum()

    def logits(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError("COGNet has no per-medication logits: it decodes (predict_proba, predict_sets)")

    # ----- decoding ----------------------------------------------------------------------------
    def decode_key(self, k: int) -> tuple:
        """What the search's result depends on besides the samples: the config, the beam and the weights (a
        copy of every parameter and buffer, compared by value: version counters miss fused optimizer steps)."""
        return self.config, k, [t.detach().clone() for t in (*self.network.parameters(), *self.network.buffers())]

    def decode(self, samples: Sequence[Sample], beam_size: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        """Beam search on each sample's target visit -> (medication sets, step probabilities [N, |M|]).

        ``predict_proba`` and ``predict_sets`` both need the search: the last ``DECODED_KEPT`` results are kept
        and reused for equal samples under the same weights, config and beam, so the harness's calls
        (probabilities of validation and test, then their sets) decode each sample set once. Copies are returned, so a caller cannot alter the kept result."""
        self.check_samples(samples)
        if self.network is None:
            raise RuntimeError(f"{self.name} is not fitted")
        k = beam_size or self.beam_size(self.selecting)
        key, samples = self.decode_key(k), list(samples)
        kept = [entry for entry in getattr(self, "decoded", []) if same_key(entry[0], key)]  # results of other weights go
        found = next((entry for entry in kept if entry[1] == samples), None)
        if found is None:
            found = key, samples, self.beam_decode(samples, k)
            kept = [*kept[-(DECODED_KEPT - 1) :], found]
        self.decoded = kept
        sets, proba = found[2]
        return [s.copy() for s in sets], proba.copy()

    @torch.no_grad()
    def beam_decode(self, samples: Sequence[Sample], k: int) -> tuple[list[np.ndarray], np.ndarray]:
        """The batched beam search of beam ``k`` behind ``decode`` (no cache)."""
        self.network.eval()
        net, n_meds = self.network, self.dataset.n_medications
        sets: list[np.ndarray] = []
        proba = np.zeros((len(samples), n_meds), dtype=np.float32)
        chunk_size = 256
        for start in range(0, len(samples), chunk_size):
            chunk = samples[start : start + chunk_size]
            context = self.target_context(self.inputs(chunk))
            context = dataclasses.replace(context, projected=net.decoder.project(context))  # fixed for the whole search
            live = {"rows": torch.arange(len(chunk), device=self.device), "context": context}

            def step(tokens: torch.Tensor, beams: torch.Tensor) -> torch.Tensor:
                rows = beams[::k] // k  # the search extends every beam of its live rows
                if not torch.equal(rows, live["rows"]):  # a row finished: narrow the context once
                    live.update(rows=rows, context=context.select(rows))
                return net.next_token(tokens, live["context"])

            result = beam_search(step, len(chunk), k, min(self.config.max_decode_length, n_meds + 1), n_meds + 2, net.sos, net.end, self.device)
            for i, (tokens, history) in enumerate(zip(result.tokens.tolist(), result.step_log_proba.cpu().numpy())):
                generated = []
                for token in tokens[1:]:
                    if token >= n_meds:  # END (SOS is never emitted)
                        break
                    generated.append(token)
                steps = history[: max(len(generated), 1), :n_meds]  # the END step when nothing was generated
                scores = steps.max(0)
                scores[generated] = steps[np.arange(len(generated)), generated]
                proba[start + i] = np.exp(scores)
                sets.append(np.array(sorted(generated), dtype=np.int64))
        return sets, proba

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        """Step probabilities of the beam search (module docstring, "PRAUC")."""
        return self.decode(samples)[1]

    def predict_sets(self, samples: Sequence[Sample], proba: np.ndarray | None = None) -> list[np.ndarray]:
        """The beam search's best hypothesis (``proba`` is not used: COGNet has no threshold)."""
        return self.decode(samples)[0]

    def decision_rule(self) -> str:
        return f"beam search (beam {self.config.beam_size}, at most {self.config.max_decode_length} medications)"

    def get_state(self) -> dict:
        return {**super().get_state(), "rank": torch.from_numpy(self.rank)}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self.rank = state["rank"].numpy()
