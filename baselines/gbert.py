"""G-Bert: graph-augmented transformers pre-trained on single visits (Shang et al., IJCAI 2019).

Paper: J. Shang, T. Ma, C. Xiao, J. Sun, "Pre-training of Graph Augmented Transformers for
Medication Recommendation", IJCAI 2019 (arXiv 1906.00346). Reference code:
github.com/jshang123/G-Bert (``code/build_tree.py``, ``graph_models.py``, ``bert_models.py``,
``predictive_models.py``, ``run_pretraining.py``, ``run_gbert.py``, ``run_alternative.sh``).

Ontology embedding. Every diagnosis code is the leaf of an ICD-9 chain
``code -> category -> section -> root`` and every medication code the leaf of an ATC chain
``code -> ... -> level 1 -> root`` (:func:`icd9_chain`, :func:`atc_chain`); the ICD-9-CM chapters
and sections are the curated table ``data_prep/resources/icd9_sections.csv``. Node embeddings
(Glorot) pass twice through one GAT layer (4 heads of ``dim / 4``, concatenated, no
non-linearity, as the code): first each node attends to its direct children, then each leaf to
all its ancestors; a code's embedding is its leaf's output.

Visit encoder ("BERT"): ``[CLS] + codes`` of one modality, no position embedding, code embeddings
from the ontology plus a token-type embedding (diagnoses 0, medications 1; everything 0 in
pre-training); 2 pre-LN transformer blocks (hidden 300, 4 heads, feed-forward 300, tanh-GELU,
dropout 0.4, attention dropout 0.1, bias-free Q/K/V); keys are the code tokens only, so [CLS]
pools the codes. The visit vector is the [CLS] output.

Pre-training (declared: ``Capabilities.pretrains_on_training_visits``; fit report ``pretraining``) on
every visit of the training patients, single-visit patients included, each visit on its own: 15% of
the code tokens are masked (80% [MASK], 10% a random code, 10% kept) and four 2-layer heads predict
the visit's diagnosis and medication sets from its diagnosis and medication vectors (dx->dx, rx->dx,
dx->rx, rx->rx), the sum of four BCE losses; the epoch of best validation rx->rx PRAUC is kept.
Fine-tuning on the protocol's training samples that have history (the fit report's
``training_samples``): each visit's diagnosis and medication vectors pass through their mapping heads
(Linear + ReLU); the current visit is predicted from ``[mean_{tau<t} u_d ; mean_{tau<t} u_m ; u_d^t]``
by a 2-layer MLP (900 -> 600 -> |M|), BCE against its medications; the epoch of best validation
PRAUC is kept. Procedures are not used (as published). Adam, decision threshold 0.3.

Presets. ``--preset paper`` is the reference's schedule (``run_alternative.sh``): 16 rounds of 5
pre-training epochs (64 visits per step) and 5 fine-tuning epochs (one sample per step), every epoch
run, lr 5e-4, each stage starting from the best checkpoint of the one before, only the encoder carried
over (the heads re-initialised each round). ``--preset harness``: one round, each stage for at most
80 epochs with validation patience 10, fine-tuning in batches of 32 samples, lr 2e-3 for both stages.
``--preset quick``: the harness preset with hidden and feed-forward size 128, pre-training at lr 4e-3
(``pretrain_lr``) for at most 20 epochs (patience 2) kept by validation dx->rx PRAUC with gains under 0.005
counted as none (``pretrain_selection``, ``pretrain_min_delta``), fine-tuning for at most 40 (patience 3).
``pretrain_epochs=0`` fine-tunes without pre-training.

Deliberate differences from the published code:

- Which visits are fine-tuning targets is the protocol's decision: under ``last-visit`` (the default)
  each training patient's last visit, under ``all-visits`` and ``train-all-test-last`` every visit
  with history, each its own sample. The reference's loss covers every visit t >= 2 of a patient in
  one step; ``--protocol all-visits`` trains on the same visits, one sample per step at the paper preset.
- Pre-training reads the training patients' visits only; the reference pre-trains on every
  single-visit patient of the dataset (``data-single-visit.pkl``, test patients' included) plus the
  visits of the multi-visit training patients. Its published numbers therefore come from more
  pre-training data than a run here, whose pre-training sees nothing of validation or test.
- Fine-tuning inputs, by modality. The reference stacks each patient's sequences interleaved
  (``dx1, rx1, dx2, rx2, ...``) and splits the pooled outputs with ``view(2, T, H)``, which takes
  the first half of the rows as "diagnoses" and the second half as "medications": the history
  means mix modalities and visits, and for patients with 3 or more visits they include the target
  visit's own medications and later visits. Here the means run over the earlier visits of each
  modality only. No option restores the reference: it would feed the target to ``predict_proba``.
- Random replacements in pre-training masking come from the token's own modality; the reference
  draws diagnosis replacements from the medication vocabulary and the reverse. Validation visits
  are encoded unmasked (the reference masks them at random too), and they are every visit of the
  validation patients (the reference: those of multi-visit validation patients).
- Ontology trees: a prefix equal to the code is skipped, so an ATC level-3 code (4 characters, the
  harness's medication level) hangs from its level-2 prefix instead of from itself (the reference
  builds ``code[:4]`` and would add a self-edge), and a 3-character ICD-9 code hangs from its
  section. Categories outside every section fall back to their chapter, and codes that are not
  ICD-9 (ICD-10 codes of MIMIC-IV, test vocabularies) to a prefix chain, where the reference
  raises a KeyError. ICD-9-CM 2015 sections the reference lacks are in the table (E979
  terrorism, 610-612); Kaposi's sarcoma (176) is its own section, as in the reference.
- One medication vocabulary (the dataset's) for pre-training, fine-tuning labels and prediction;
  the reference pre-trains on a finer ATC level than its fine-tuning labels.
- ``--preset harness``/``quick``: one step per 32 samples at lr 2e-3 for both stages, one round with
  early stopping instead of 16 fixed rounds. The synthetic cohort's ~4,200 training visits make 65
  pre-training steps per epoch where the reference's (some 30,000 single-visit patients plus the
  multi-visit training visits) make several hundred: at 5e-4 the validation rx->rx PRAUC crept
  from 0.49 to 0.61 in 16 epochs, at 2e-3 it reached 0.85 in 20 (hidden 128; chosen on validation).
- ``pretrain_selection="dx2rx"`` (``--preset quick``): pre-training keeps the epoch of best validation dx->rx
  PRAUC (medications from the visit's diagnoses, the task fine-tuning serves) instead of the reference's
  rx->rx. Validation visits are encoded unmasked, so rx->rx scores reconstructing a set the encoder reads
  whole: on the default cohort it still rose 0.008 per epoch at epoch 20 (0.90), a stage that never converges
  on a CPU budget.
- Sequences are padded to the longest in the batch, not to 55 tokens, and never truncated. A visit
  with no code lets [CLS] attend to itself (the reference gives uniform weights over the padding).
- Dropout masks are drawn as ``rand >= p`` (:func:`bench.training.uniform_dropout`): the distribution of ``nn.Dropout``,
  other draws, about 3x cheaper on CPU than its ``bernoulli_`` mask (~17% of a step); attention dropout
  therefore runs through an explicit softmax (:func:`attention`).
- ``--preset quick`` pre-trains at lr 4e-3 (``pretrain_lr``; fine-tuning stays at 2e-3) and stops each stage
  sooner: pre-training patience 2 with gains under 0.005 counted as none, fine-tuning patience 3. Per epoch
  the higher rate gives about the same validation dx->rx PRAUC but an encoder that fine-tunes better, which
  pays for the shorter stages. Default cohort, one thread, shared machine (2 slots busy): seed 0 278 s,
  pre-training 12/14 epochs (178 s), fine-tuning 9/12 (100 s), validation PRAUC 0.712, multi-visit test
  PRAUC 0.708; seed 1 260 s, pre-training 10/12 (143 s), fine-tuning 11/14 (117 s), validation 0.708, test
  0.701; seed 2 258 s, pre-training 8/10 (119 s), fine-tuning 14/17 (139 s), validation 0.701 (main job 0.706),
  test 0.693 (0.705): the early pre-training stop costs quality at this seed. Both stages stop by patience
  after their best epoch.

Measured on the default cohort (seed 0) and rejected: pre-training stopped sooner (lr 2e-3,
``pretrain_min_delta=0.01, pretrain_patience=2``: best 8 of 10, validation PRAUC 0.683, 220 s; lr 4e-3 kept
at epoch 5: 0.680): fine-tuning's quality rests on pre-training's length. Pre-training in steps of 128
visits (lr 4e-3: the same dx->rx PRAUC per epoch, ~15% less time per epoch): validation PRAUC 0.699, test
0.694; at lr 8e-3 dx->rx PRAUC rose more slowly per epoch. Fine-tuning at lr 4e-3 too: 258 s, best 7 of 10,
validation PRAUC 0.695. Every output layer's bias started at its labels' training log-odds, the four
pre-training heads' included: pre-training's dx->rx PRAUC starts higher (0.598 at epoch 1) but rises more
slowly (0.645 at epoch 8) and stops 4 epochs sooner, and fine-tuning from that encoder reaches validation
PRAUC 0.699 / 0.701 (seeds 0 / 1; test 0.692 / 0.695) in 259 / 217 s. The fine-tuning classifier's bias
alone at the log-odds: fine-tuning starts higher (0.658 at epoch 1) and ends lower, validation PRAUC 0.702 /
0.694 (test 0.697 / 0.693), best 10 of 13 / 13 of 16, 291 / 288 s. Hidden and feed-forward size 64: 138 / 197 s
(seeds 0 / 1) but validation PRAUC 0.677 / 0.683 (test 0.669 / 0.675). bf16 autocast of the training steps
(this CPU multiplies bf16 natively): pre-training 13.2 s an epoch against 11.9 s, validation PRAUC 0.703 (test
0.699) against 0.712 (0.708). ``torch.compile`` of the loss: the packed-token indexing breaks the graph, 17 s an
epoch against 12 s.

Where a step's time goes (pre-training, 64 visits = 128 sequences of ~1,600 tokens in all, one thread): about
1 G multiply-adds, three quarters of the step in matrix products; the ontology GAT over the 2,537-node
diagnosis tree takes ~15 ms of a ~60 ms step, ~11 ms of it its two Linear passes, which every node needs
(stage one reads all children, stage two all ancestors).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import ClassVar, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch_geometric.nn import GATConv

from bench.contract import Capabilities, ModelConfig, Publication, seed_everything, stopping_rule, training_record
from bench.training import TorchModel, UniformDropout, pad_sequences, staged_report, target_tensor, train_network, uniform_dropout
from data_prep.code_sets import multi_hot
from data_prep.dataset import Sample, Visit
from data_prep.protocol import longest_records

PAD, CLS, MASK = 0, 1, 2
PRETRAIN_SELECTIONS = ("rx2rx", "dx2rx")  # the pre-training heads that predict medications
N_SPECIAL = 3
ICD9_ROOT, ATC_ROOT = "icd9_root", "atc_root"
SECTIONS_FILE = "icd9_sections.csv"

# ---------------------------------------------------------------------------------------------
# Ontology trees from the code strings
# ---------------------------------------------------------------------------------------------
_ICD9_DIAGNOSIS = re.compile(r"^(\d{3}\d{0,2}|V\d{2}\d{0,2}|E\d{3}\d?)$")


def _expand_range(first: str, last: str) -> list[str]:
    """``"V01", "V09"`` -> ``["V01", ..., "V09"]``: categories of one letter and digit width."""
    prefix, width = first.rstrip("0123456789"), len(first.lstrip("VE"))
    if prefix != last.rstrip("0123456789") or width != len(last.lstrip("VE")) or int(first[len(prefix):]) > int(last[len(prefix):]):
        raise ValueError(f"bad range {first}-{last}")
    return [f"{prefix}{n:0{width}d}" for n in range(int(first[len(prefix):]), int(last[len(prefix):]) + 1)]


@lru_cache(maxsize=1)
def icd9_sections() -> dict[str, dict[str, str]]:
    """``{"section": {category: "first-last"}, "chapter": {...}}`` from the curated resource table."""
    text = resources.files("data_prep").joinpath("resources", SECTIONS_FILE).read_text(encoding="utf-8")
    table: dict[str, dict[str, str]] = {"section": {}, "chapter": {}}
    for line, row in enumerate(csv.DictReader(text.splitlines()), start=2):
        try:
            categories = _expand_range(row["first"], row["last"])
            level = table[row["level"]]
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(f"data_prep/resources/{SECTIONS_FILE} line {line}: {error}; expected level chapter|section and a range first,last") from None
        for category in categories:
            if category in level:
                raise ValueError(f"data_prep/resources/{SECTIONS_FILE} line {line}: category {category} is already in {level[category]}")
            level[category] = f"{row['first']}-{row['last']}"
    return table


def _prefix_chain(code: str, lengths: Sequence[int], root: str) -> list[str]:
    """The code, its prefixes of ``lengths`` strictly shorter than it, then the root."""
    return [code, *(code[:n] for n in lengths if n < len(code)), root]


def icd9_chain(code: str) -> list[str]:
    """Leaf-to-root chain of a diagnosis code: code, category, ICD-9-CM section (or chapter), root.

    Codes carry no dot (``25000``, ``V5861``, ``E8788``); a MIMIC-IV ``ICD9:`` prefix is read past.
    Categories are 3 characters (``250``, ``V58``), 4 for E codes (``E878``). Codes that are not
    ICD-9 diagnoses (ICD-10, test vocabularies) get a prefix chain (3 characters, 1) to the root.
    """
    scheme, _, body = code.rpartition(":")
    if scheme in ("", "ICD9") and _ICD9_DIAGNOSIS.match(body):
        category = body[:4] if body.startswith("E") else body[:3]
        table = icd9_sections()
        group = table["section"].get(category) or table["chapter"].get(category)
        if group is not None:
            return [code, *([category] if category != body else []), group, ICD9_ROOT]
    return [code, *(f"{scheme}:{body[:n]}" if scheme else body[:n] for n in (3, 1) if n < len(body)), ICD9_ROOT]


def atc_chain(code: str) -> list[str]:
    """Leaf-to-root chain of an ATC code by its levels' prefixes (5, 4, 3, 1 characters).

    ``N02BE01 -> N02BE -> N02B -> N02 -> N -> root``; a level-3 code ``N02B`` starts at ``N02``.
    """
    return _prefix_chain(code, (5, 4, 3, 1), ATC_ROOT)


@dataclass(frozen=True)
class OntologyTree:
    """Nodes (names, leaves first in vocabulary order) and the two GAT stages' edges.

    Edges are ``[2, E]`` source -> target (torch_geometric's convention): ``stage_one`` brings each
    node its direct children, ``stage_two`` brings each leaf all its ancestors.
    """

    nodes: tuple[str, ...]
    leaves: tuple[int, ...]  # node index of each vocabulary code
    stage_one: np.ndarray
    stage_two: np.ndarray


def build_tree(chains: Sequence[Sequence[str]]) -> OntologyTree:
    """Merge leaf-to-root chains (one per vocabulary code, in vocabulary order) into one tree."""
    index: dict[str, int] = {}
    for chain in chains:
        index.setdefault(chain[0], len(index))
    for chain in chains:
        for name in chain[1:]:
            index.setdefault(name, len(index))
    child_edges, ancestor_edges = set(), set()
    for chain in chains:
        ids = [index[name] for name in chain]
        child_edges.update(zip(ids[:-1], ids[1:]))
        ancestor_edges.update((ancestor, ids[0]) for ancestor in ids[1:])

    def as_array(edges: set[tuple[int, int]]) -> np.ndarray:
        return np.array(sorted(edges), dtype=np.int64).reshape(-1, 2).T

    return OntologyTree(tuple(index), tuple(index[c[0]] for c in chains), as_array(child_edges), as_array(ancestor_edges))


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------
class OntologyEmbedding(nn.Module):
    """Code embeddings: learnt node embeddings through one GAT, children then ancestors."""

    def __init__(self, tree: OntologyTree, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"gbert: dim {dim} is not a multiple of the {heads} GAT heads")
        self.nodes = nn.Parameter(torch.empty(len(tree.nodes), dim))
        nn.init.xavier_uniform_(self.nodes)
        self.gat = GATConv(dim, dim // heads, heads=heads)
        self.register_buffer("stage_one", torch.as_tensor(tree.stage_one), persistent=False)
        self.register_buffer("stage_two", torch.as_tensor(tree.stage_two), persistent=False)
        self.register_buffer("leaves", torch.as_tensor(tree.leaves, dtype=torch.long), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.gat(self.gat(self.nodes, self.stage_one), self.stage_two)[self.leaves]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: torch.Tensor, dropout: float) -> torch.Tensor:
    """Scaled dot-product attention of ``[N, H, L, d]`` heads over the ``keys`` [N, L] each row attends.

    With attention dropout (training) the weights are computed here, dropped by :func:`uniform_dropout`;
    otherwise ``F.scaled_dot_product_attention`` (the same function, fused)."""
    mask = keys[:, None, None, :]
    if dropout == 0.0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5).masked_fill_(~mask, float("-inf"))
    return uniform_dropout(scores.softmax(-1), dropout, True) @ v


class TransformerBlock(nn.Module):
    """Pre-LN block as the reference's: attention and feed-forward sublayers, then dropout.

    Runs on packed tokens ``[n_tokens, dim]`` (the real tokens of every sequence, row-major):
    only attention needs the padded ``[N, L]`` layout. With ``cls_only`` (the last block) only the
    [CLS] rows are computed past the key/value projection, the only output the model reads.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.heads = heads
        self.attention_norm, self.ffn_norm = nn.LayerNorm(dim, eps=1e-12), nn.LayerNorm(dim, eps=1e-12)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), UniformDropout(dropout), nn.Linear(ffn_dim, dim))
        self.dropout = UniformDropout(dropout)
        self.attention_dropout = attention_dropout

    def split_heads(self, padded: torch.Tensor) -> torch.Tensor:
        n, length, dim = padded.shape
        return padded.view(n, length, self.heads, dim // self.heads).transpose(1, 2)

    def attend(self, h: torch.Tensor, layout: "TokenLayout", cls_only: bool) -> torch.Tensor:
        dim = h.shape[1]
        w_q, w_kv = self.qkv.weight[:dim], self.qkv.weight[dim:]
        k, v = layout.pad(F.linear(h, w_kv)).chunk(2, dim=-1)
        q = F.linear(h[layout.cls], w_q)[:, None, :] if cls_only else layout.pad(F.linear(h, w_q))
        p = self.attention_dropout if self.training else 0.0
        context = attention(self.split_heads(q), self.split_heads(k), self.split_heads(v), layout.keys, p)
        context = context.transpose(1, 2).reshape(q.shape)
        return self.out(context[:, 0] if cls_only else context[layout.real])

    def forward(self, x: torch.Tensor, layout: "TokenLayout", cls_only: bool = False) -> torch.Tensor:
        attended = self.attend(self.attention_norm(x), layout, cls_only)
        x = (x[layout.cls] if cls_only else x) + self.dropout(attended)
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return self.dropout(x)


@dataclass(frozen=True)
class TokenLayout:
    """Where the packed tokens of a padded ``[N, L]`` batch sit, and which keys each sequence attends."""

    real: torch.Tensor  # [N, L] bool: a token (not padding)
    keys: torch.Tensor  # [N, L] bool: attended keys (the codes; [CLS] only for a visit without codes)
    cls: torch.Tensor  # [N] packed index of each sequence's [CLS]

    @classmethod
    def of(cls, tokens: torch.Tensor) -> "TokenLayout":
        real = tokens != PAD
        keys = tokens > CLS
        keys[:, 0] |= ~keys.any(1)  # a visit without codes: [CLS] attends to itself
        lengths = real.sum(1)
        return cls(real, keys, lengths.cumsum(0) - lengths)

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        out = packed.new_zeros(*self.real.shape, packed.shape[-1])
        out[self.real] = packed
        return out


def mlp_head(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out))


class GBertNetwork(nn.Module):
    """Encoder (ontology embedding + transformer), pre-training heads and fine-tuning heads.

    Token ids: 0 [PAD], 1 [CLS], 2 [MASK], then the diagnoses, then the medications.
    """

    PRETRAIN_HEADS = ("dx2dx", "rx2dx", "dx2rx", "rx2rx")

    def __init__(self, dx_tree: OntologyTree, rx_tree: OntologyTree, n_diagnoses: int, n_medications: int, config: "GBert.Config"):
        super().__init__()
        dim = config.dim
        self.n_diagnoses, self.n_medications = n_diagnoses, n_medications
        self.special = nn.Parameter(torch.empty(N_SPECIAL, dim))
        self.dx_ontology = OntologyEmbedding(dx_tree, dim, config.graph_heads)
        self.rx_ontology = OntologyEmbedding(rx_tree, dim, config.graph_heads)
        self.token_type = nn.Embedding(2, dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, config.heads, config.ffn_dim, config.dropout, config.attention_dropout) for _ in range(config.layers)
        )
        self.pretrain_heads = nn.ModuleDict(
            {name: mlp_head(dim, dim, n_diagnoses if name.endswith("dx") else n_medications) for name in self.PRETRAIN_HEADS}
        )
        self.map_dx = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.map_rx = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.classifier = mlp_head(3 * dim, 2 * dim, n_medications)
        nn.init.xavier_uniform_(self.special)
        self.apply(bert_init)

    def reset_heads(self, stage: str) -> None:
        """Fresh heads for a stage (the reference carries only the encoder between stages)."""
        heads = [self.pretrain_heads] if stage == "pretrain" else [self.map_dx, self.map_rx, self.classifier]
        for head in heads:
            head.apply(bert_init)

    def encode(self, tokens: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """[CLS] output of each sequence: ``tokens`` [N, L], ``types`` [N] -> [N, dim]."""
        table = torch.cat([self.special, self.dx_ontology(), self.rx_ontology()])
        layout = TokenLayout.of(tokens)
        x = table[tokens[layout.real]] + self.token_type(types.repeat_interleave(layout.real.sum(1)))
        for i, block in enumerate(self.blocks):
            x = block(x, layout, cls_only=i == len(self.blocks) - 1)
        return x

    def pretrain_logits(self, batch: dict) -> dict[str, torch.Tensor]:
        n = batch["n_visits"]
        pooled = self.encode(batch["tokens"], batch["types"])
        dx, rx = pooled[:n], pooled[n:]
        return {name: self.pretrain_heads[name](dx if name.startswith("dx") else rx) for name in self.PRETRAIN_HEADS}

    def sample_logits(self, batch: dict) -> torch.Tensor:
        """Medication logits of each sample's current visit: [B, M].

        From the mean of the mapped diagnosis and medication vectors of its earlier visits and the mapped
        diagnosis vector of its current visit; the current visit's medications are never part of it.
        """
        n_samples, n_steps = batch["shape"]
        pooled = self.encode(batch["tokens"], batch["types"])
        n_dx = batch["dx_slot"].numel()
        dim = pooled.shape[1]
        u_d = pooled.new_zeros(n_samples * n_steps, dim).index_copy(0, batch["dx_slot"], self.map_dx(pooled[:n_dx])).view(n_samples, n_steps, dim)
        u_m = pooled.new_zeros(n_samples * n_steps, dim).index_copy(0, batch["rx_slot"], self.map_rx(pooled[n_dx:])).view(n_samples, n_steps, dim)
        earlier = batch["history"]  # [B] earlier visits, each at least one; the current visit sits at that slot
        is_earlier = (torch.arange(n_steps, device=pooled.device).unsqueeze(0) < earlier.unsqueeze(1)).unsqueeze(-1)
        count = earlier.to(pooled.dtype).unsqueeze(1)
        past_d = (u_d * is_earlier).sum(1) / count
        past_m = u_m.sum(1) / count  # only earlier visits have a medication vector
        current_d = u_d[torch.arange(n_samples, device=pooled.device), earlier]
        return self.classifier(torch.cat([past_d, past_m, current_d], dim=-1))


def bert_init(module: nn.Module) -> None:
    """BERT initialisation of the reference: N(0, 0.02) linear and embedding weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def pretraining_visits(samples: Sequence[Sample]) -> list[Sample]:
    """Every visit of the samples' patients (history and current), once each, as a history-free sample.

    Pre-training reads a visit's diagnoses and medications (``target``) as its input and labels.
    """
    out = []
    for s in longest_records(samples):  # a patient's other samples are prefixes of its longest
        current = Visit(s.diagnoses, s.procedures, s.target, conditions=s.conditions)
        for position, visit in enumerate([*s.history, current], start=1):
            out.append(
                dataclasses.replace(
                    s, history=(), diagnoses=visit.diagnoses, procedures=visit.procedures, target=visit.medications, visit_number=position, conditions=visit.conditions
                )
            )
    return out


class GBert(TorchModel):
    name = "gbert"
    typical_seconds = 292  # quick, default cohort, one thread: the main job's 3-seed mean (README)
    publication = Publication("Shang et al., IJCAI 2019", "2019-08")
    capabilities = Capabilities(needs_history_medications=True, pretrains_on_training_visits=True)

    @dataclass
    class Config(ModelConfig):
        epochs: int = 5  # fine-tuning epochs per round (run_alternative.sh)
        batch_size: int = 1  # samples per fine-tuning step
        lr: float = 5e-4  # both stages
        patience: int | None = None  # the reference runs every epoch and keeps the best validation PRAUC
        threshold: float = 0.3
        pretrain_epochs: int | None = None  # None: as ``epochs``; 0 skips pre-training
        pretrain_patience: int | None = None  # None: as ``patience``
        pretrain_batch_size: int = 64
        pretrain_lr: float | None = None  # None: as ``lr``
        min_delta: float = 0.0  # validation-PRAUC gain that counts as an improvement (fine-tuning)
        pretrain_min_delta: float = 0.0  # the same for pre-training's selection score
        pretrain_selection: str = "rx2rx"  # the pre-training head whose validation PRAUC keeps the epoch: rx2rx (the reference) or dx2rx
        rounds: int = 16  # pre-train/fine-tune rounds (run_alternative.sh: 16 x (5 + 5) epochs)
        dim: int = 300
        graph_heads: int = 4
        heads: int = 4
        layers: int = 2
        ffn_dim: int = 300
        dropout: float = 0.4
        attention_dropout: float = 0.1
        mask_probability: float = 0.15

        HARNESS: ClassVar[dict] = {"batch_size": 32, "lr": 2e-3, "rounds": 1, "epochs": 80}  # module docstring
        QUICK: ClassVar[dict] = {"dim": 128, "ffn_dim": 128, "epochs": 40, "patience": 3, "pretrain_epochs": 20, "pretrain_patience": 2,
                               "pretrain_lr": 4e-3, "pretrain_selection": "dx2rx", "pretrain_min_delta": 0.005}

        def __post_init__(self) -> None:
            if self.rounds < 1:
                raise ValueError(f"gbert rounds must be at least 1, got {self.rounds}")
            if self.pretrain_selection not in PRETRAIN_SELECTIONS:
                raise ValueError(f"gbert pretrain_selection {self.pretrain_selection!r}; expected one of {PRETRAIN_SELECTIONS}")

        @property
        def pretraining_epochs(self) -> int:
            return self.epochs if self.pretrain_epochs is None else self.pretrain_epochs

        @property
        def pretraining_patience(self) -> int | None:
            return self.patience if self.pretrain_patience is None else self.pretrain_patience

    config_class = Config

    @classmethod
    def training_budget(cls, config: Config) -> str:
        """Both stages of every round, e.g. the paper preset's 16 x (5 + 5) epochs."""
        finetuning = f"fine-tuning {super().training_budget(config)}"
        if config.pretraining_epochs == 0:
            return f"{config.rounds} x ({finetuning})"
        pretraining = f"pre-training {config.pretraining_epochs} epochs ({stopping_rule(config.pretraining_patience)}), {config.pretrain_batch_size} visits per step"
        return f"{config.rounds} x ({pretraining}; {finetuning})"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.capabilities = Capabilities(needs_history_medications=True, pretrains_on_training_visits=self.config.pretraining_epochs > 0)
        self.stage = "finetune"
        self.masking = torch.Generator().manual_seed(self.seed)

    # ----- network -----------------------------------------------------------------------------
    def build_network(self) -> nn.Module:
        dx_tree = build_tree([icd9_chain(c) for c in self.dataset.diagnoses.codes])
        rx_tree = build_tree([atc_chain(c) for c in self.dataset.medications.codes])
        return GBertNetwork(dx_tree, rx_tree, self.dataset.n_diagnoses, self.dataset.n_medications, self.config)

    def dx_tokens(self, codes: Sequence[int]) -> list[int]:
        return [CLS, *(N_SPECIAL + c for c in codes)]

    def rx_tokens(self, codes: Sequence[int]) -> list[int]:
        return [CLS, *(N_SPECIAL + self.dataset.n_diagnoses + c for c in codes)]

    def mask_codes(self, tokens: torch.Tensor, low: int, high: int) -> torch.Tensor:
        """BERT masking of code tokens in [low, high): [MASK], a random code of the same kind, or kept."""
        draw = torch.rand(tokens.shape, generator=self.masking)
        chosen = (tokens >= low) & (tokens < high) & (draw < self.config.mask_probability)
        scaled = draw / self.config.mask_probability
        replacement = torch.randint(low, high, tokens.shape, generator=self.masking)
        masked = torch.where(chosen & (scaled < 0.8), torch.full_like(tokens, MASK), tokens)
        return torch.where(chosen & (scaled >= 0.8) & (scaled < 0.9), replacement, masked)

    def collate(self, samples: Sequence[Sample]) -> dict:
        return self.collate_visits(samples) if self.stage == "pretrain" else self.collate_records(samples)

    def collate_visits(self, samples: Sequence[Sample]) -> dict:
        """Pre-training batch: each visit's diagnosis sequences, then its medication sequences (type 0)."""
        n_dx = self.dataset.n_diagnoses
        dx, _ = pad_sequences([self.dx_tokens(s.diagnoses) for s in samples])
        rx, _ = pad_sequences([self.rx_tokens(s.target) for s in samples])
        if self.network.training:
            dx = self.mask_codes(dx, N_SPECIAL, N_SPECIAL + n_dx)
            rx = self.mask_codes(rx, N_SPECIAL + n_dx, N_SPECIAL + n_dx + self.dataset.n_medications)
        length = max(dx.shape[1], rx.shape[1])
        batch = {
            "tokens": torch.cat([F.pad(dx, (0, length - dx.shape[1]), value=PAD), F.pad(rx, (0, length - rx.shape[1]), value=PAD)]),
            "types": torch.zeros(2 * len(samples), dtype=torch.long),
            "dx_labels": torch.from_numpy(multi_hot([s.diagnoses for s in samples], n_dx)).float(),
            "rx_labels": torch.from_numpy(multi_hot([s.target for s in samples], self.dataset.n_medications)).float(),
        }
        return {**{k: v.to(self.device) for k, v in batch.items()}, "n_visits": len(samples)}

    def collate_records(self, samples: Sequence[Sample]) -> dict:
        """Fine-tuning batch: each sample's earlier visits (diagnosis and medication sequences) and its current
        diagnoses, each sequence with its slot ``sample * T + visit``; the target is the current visit's
        medications, never an input."""
        n_steps = max(len(s.history) for s in samples) + 1
        dx_seqs, dx_slot, rx_seqs, rx_slot = [], [], [], []
        for b, s in enumerate(samples):
            for t, visit in enumerate(s.history):
                dx_seqs.append(self.dx_tokens(visit.diagnoses))
                rx_seqs.append(self.rx_tokens(visit.medications))
                dx_slot.append(b * n_steps + t)
                rx_slot.append(b * n_steps + t)
            dx_seqs.append(self.dx_tokens(s.diagnoses))
            dx_slot.append(b * n_steps + len(s.history))
        tokens, _ = pad_sequences(dx_seqs + rx_seqs)
        batch = {
            "tokens": tokens,
            "types": torch.tensor([0] * len(dx_seqs) + [1] * len(rx_seqs), dtype=torch.long),
            "dx_slot": torch.tensor(dx_slot, dtype=torch.long),
            "rx_slot": torch.tensor(rx_slot, dtype=torch.long),
            "history": torch.tensor([len(s.history) for s in samples], dtype=torch.long),
            "target": target_tensor(samples, self.dataset.n_medications),
        }
        return {**{k: v.to(self.device) for k, v in batch.items()}, "shape": (len(samples), n_steps)}

    def logits(self, batch: dict) -> torch.Tensor:
        """Fine-tuning: the current visit's medication logits. Pre-training: the ``pretrain_selection`` head's
        (rx->rx or dx->rx), which validation scores."""
        if self.stage == "pretrain":
            return self.network.pretrain_logits(batch)[self.config.pretrain_selection]
        return self.network.sample_logits(batch)

    def loss(self, batch: dict, epoch: int) -> torch.Tensor:
        if self.stage == "pretrain":
            logits = self.network.pretrain_logits(batch)
            return sum(
                F.binary_cross_entropy_with_logits(logits[name], batch["dx_labels" if name.endswith("dx") else "rx_labels"])
                for name in GBertNetwork.PRETRAIN_HEADS
            )
        return super().loss(batch, epoch)

    def train_samples(self, train: Sequence[Sample]) -> list[Sample]:
        return [s for s in train if s.history]

    def check_samples(self, samples: Sequence[Sample]) -> None:
        if self.stage != "pretrain":  # pre-training validation scores history-free visits
            super().check_samples(samples)

    # ----- schedule ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def in_stage(self, stage: str) -> Iterator[None]:
        """Run the shared loop on one stage: its batches, loss and budget (``config`` swapped in)."""
        config = self.config
        if stage == "pretrain":
            self.config = dataclasses.replace(
                config, epochs=config.pretraining_epochs, patience=config.pretraining_patience, batch_size=config.pretrain_batch_size,
                min_delta=config.pretrain_min_delta, lr=config.lr if config.pretrain_lr is None else config.pretrain_lr,
            )
        self.stage = stage
        try:
            yield
        finally:
            self.config, self.stage = config, "finetune"

    def fit(self, train: Sequence[Sample], val: Sequence[Sample]) -> "GBert":
        seed_everything(self.seed)
        self.masking = torch.Generator().manual_seed(self.seed)
        self.network = self.build_network().to(self.device)
        started = time.perf_counter()
        pretrain_train, pretrain_val = pretraining_visits(train), pretraining_visits(val)
        finetune_train, finetune_val = self.train_samples(train), self.train_samples(val)
        rounds = []
        for round_index in range(self.config.rounds):
            stages = {}
            for stage, stage_train, stage_val in (("pretrain", pretrain_train, pretrain_val), ("finetune", finetune_train, finetune_val)):
                if stage == "pretrain" and self.config.pretraining_epochs == 0:
                    continue
                with self.in_stage(stage):
                    if round_index > 0:
                        self.network.reset_heads(stage)
                    stages[stage] = train_network(self, stage_train, stage_val)
            rounds.append(stages)
        self.fit_report = {
            # the model kept is the last fine-tuning's: selection, convergence, history and training samples are its
            **staged_report([stage for r in rounds for stage in r.values()], rounds[-1]["finetune"]),
            **({"pretraining": training_record(pretrain_train)} if self.capabilities.pretrains_on_training_visits else {}),
            "train_seconds": time.perf_counter() - started,
            "rounds": rounds,
        }
        return self
