"""LEADER(S): the student of Liu et al., "Large Language Model Distilled Medication Recommendation
Model" (arXiv 2402.02803), section III-C, distilled from LEADER(T) (:mod:`leader.teacher`).

Architecture (section III-C-1): one embedding table per code kind (d = 64); a set encoder per kind,
transformer layer(s) (eqs. 3-4) then a mean over the set's real elements (eq. 5); a visit encoder,
transformer layer(s) then a mean over the patient's real visits (eq. 6), SHARED by the diagnosis,
procedure and medication streams (``shared_visit_encoder=False`` splits it for Table VI); the
profile (each field embedded, concatenated, projected to d) as the pseudo medication record at the
end of the medication sequence [M_1 .. M_{T-1}, P]; the output of eq. 7, W2 (W1 [D~||P~||M~] + b1) + b2.
Loss: eq. 13, L_bce + alpha L_KD + beta L_align (terms in :mod:`leader.losses`).

Distillation (``kd``): "feature" (eq. 9, default), "none" (Table VI "w/o KD"; no teacher is trained
or loaded), "output" (Table VI "w/o feature-KD": per-medication Bernoulli KL between the teacher's
and the student's probabilities), and two strategies of DistilLLM-Med (the second seed):
"temperature" (the same KL on temperature-scaled sigmoids, tau decaying exponentially from
``kd_temperature_initial`` to ``kd_temperature_final`` over the epoch budget, times tau**2) and
"projector" (MSE between the teacher's h and the student representation mapped by DistilLLM-Med's
MLP projector W_b ReLU(W_a x + b_a) + b_b; eq. 9 maps it with one bias-free linear W_proj, so the
projector variant differs from eq. 9 only in that nonlinear projector). Teacher targets (hidden
states or probabilities) are computed once per fit for the training samples, through the teacher's
disk cache, and looked up by sample id for each batch; the teacher is not needed at inference.

The other DistilLLM-Med techniques (options, off by default; ``bench ablate leader --compare`` runs each):
- ``teachers``: several fine-tuned teachers at once (e.g. ``["minilm", "smollm2"]``; an item is a
  teacher name or folder, or a dict of teacher options laid over ``teacher_overrides``), each obtained
  through the teacher cache. The KD term is the weighted sum of one term per teacher, each with its own
  projector (the teachers' widths differ); the seed's ensemble loss ``sum_i w_i L_KD(teacher_i)``. Weights
  (``teacher_weighting``): ``validation`` (default) makes them proportional to 1 / each teacher's validation
  BCE, ``fixed`` takes ``teacher_weights`` (default equal), both normalised to sum 1. The fit report lists
  each teacher with its seed, cache key, validation loss and weight.
- ``curriculum`` (:class:`bench.training.CurriculumOptions`): samples admitted from easy to hard; the
  difficulty is the teachers' per-sample BCE on the training sample (weighted as above), or the record's
  length when the student distils from no teacher.
- ``layer_kd``: multi-granularity transfer. Beside eq. 9 (the teacher's last layer -> the student's
  W1 [D~||P~||M~] + b1), two intermediate teacher layers (``layer_kd_teacher_layers``, default L/3 and 2L/3
  of the teacher's L layers, DistilLLM-Med's uniform layer mapping) are mapped to the student's set level
  ([D_T||P_T], the current visit's set encodings) and visit level ([D~||P~||M~]), each through its own
  linear projector, MSE as eq. 9, added with weight ``alpha * layer_kd_weight`` (their mean).
- ``specialty_weighting``: DistilLLM-Med's specialty-weighted loss with the medication's ATC main group
  (level 1) as the specialty: each medication's BCE (and output-level KD) term is weighted by
  ``(mean group count / its group's count) ** specialty_power`` over the training prescriptions, scaled so
  that a prescription weighs 1 on average (:func:`leader.losses.specialty_weights`).

Deliberate differences from the published code (liuqidong07/LEADER-pytorch):
- The most recent ``max_visits`` visits are kept (the current one always); the published code keeps
  the first 10, which drops the current visit of longer records.
- The profile is appended as the LAST medication record, as section III-C-1 writes; the published
  code prepends it and truncates the last record.
- The profile encoder is its own module feeding the medication stream; the published code's
  encoder returns its diagnosis head in place of the medication head.
- The alignment (eq. 10) encodes the target medication set with the medication-set encoder using
  medication indices as they are; the published code looks them up in a joint vocabulary without
  the offset of its special tokens, i.e. it encodes the wrong medications.
- Padded batches with masks throughout and no bare ``squeeze``, so batch size 1 works.
- Eq. 7 is implemented as written (two linear layers, no nonlinearity); the published code uses
  ReLU, Linear(3d, 2d), ReLU, Linear(2d, |M|).
- Each code kind has its own embedding table (the published code shares one joint table).
- The transformer layer is post-norm (eqs. 3-4: LayerNorm(x + MultiHead(x)), LayerNorm(m + FNN(m)))
  via ``torch.nn.TransformerEncoderLayer``; its FNN is Linear-GELU-Linear (width 4d) as in the
  published code's block and the standard transformer, where the paper describes "one trainable
  linear layer". Like the published code there is no positional embedding (the paper names none),
  so the visit encoder sees the visits as a set; the profile is marked only by its content.
- Losses are means (see :mod:`leader.losses`): BCE over medications, KD over the teacher's d_h.
Paper hyper-parameters (section IV-A-3) and the published MIMIC-III script
(``experiment/mimic3/offline_distill.bash``, ``main_distill.py``) are the defaults: d = 64, 1 layer, Adam
lr 5e-4, tau = 1, batch size 4 (the paper uses 16 for MIMIC-IV), at most 100 epochs stopped by validation
PRAUC with patience 10, decision threshold 0.3, alpha = 0.4 and beta = 5e-3 (the paper's best on
MIMIC-III; MIMIC-IV's are alpha = 0.8, beta = 1e-2). The paper does not give the number of attention
heads (4 here), dropout (0.1) or the visit cap (10, the published code's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from bench.contract import Capabilities, ModelConfig, Publication, seed_everything
from bench.training import CurriculumOptions, TorchModel, pad_sequences, target_tensor, train_network
from data_prep.cache import stable_hash
from data_prep.dataset import PreparedDataset, Sample
from leader.losses import (
    atc_main_groups,
    bernoulli_kd_loss,
    decayed_temperature,
    feature_kd_loss,
    probability_logits,
    profile_alignment_loss,
    specialty_weights,
)

KD_MODES = ("feature", "none", "output", "temperature", "projector")
HIDDEN_STATE_MODES = ("feature", "projector")  # distil from the teacher's hidden state h
TEACHER_WEIGHTINGS = ("validation", "fixed")


@dataclass
class StudentConfig(ModelConfig, CurriculumOptions):
    epochs: int = 100
    batch_size: int = 4
    lr: float = 5e-4
    patience: int | None = 10
    min_delta: float = 0.0  # validation-PRAUC gain an epoch needs to count as better (bench.training.Schedule)
    threshold: float = 0.3
    embedding_dim: int = 64
    n_layers: int = 1
    n_heads: int = 4
    dropout: float = 0.1
    max_visits: int = 10  # most recent visits kept, the current one included
    shared_visit_encoder: bool = True
    kd: str = "feature"
    alpha: float = 0.4
    kd_temperature_initial: float = 8.0  # kd="temperature" only (DistilLLM-Med: 8 -> 1)
    kd_temperature_final: float = 1.0
    align: bool = True
    beta: float = 5e-3
    tau: float = 1.0
    align_include_positive: bool = False  # False: eq. 11's denominator (j != i); True: CLIP's
    teacher_preset: str = "paper"  # the teacher is obtained with the student's own preset
    teacher_seed: int | None = None  # None: the student's seed; fixed: students of several seeds share one teacher
    teacher_overrides: dict = field(default_factory=dict)
    teachers: tuple = ()  # several teachers: names ("minilm", "smollm2"), folders or option dicts; () = teacher_overrides' one
    teacher_weighting: str = "validation"  # validation: w_i proportional to 1 / val BCE_i; fixed: teacher_weights
    teacher_weights: tuple = ()  # fixed weights, one per teacher; () = equal
    layer_kd: bool = False  # intermediate teacher layers -> the student's set and visit levels, beside eq. 9
    layer_kd_weight: float = 1.0  # their weight relative to alpha
    layer_kd_teacher_layers: tuple = ()  # the two teacher layers (0 = embeddings); () = L/3 and 2L/3
    specialty_weighting: bool = False  # BCE weighted by the medication's ATC main group, rarer groups more
    specialty_power: float = 0.5  # 1 = inverse group frequency, 0 = no weighting

    # batches of 64 (16x fewer steps per epoch than the paper's 4) at 4x its lr; the epoch cap is far enough for
    # patience to stop it. Batches of 16 at lr 5e-4 took 276 s on the default cohort (best epoch 15 of 20).
    # Patience 3 with min_delta 0.002: on the main job's three seeds (default cohort) the curve plateaus after
    # epoch 9-11; this stops 2-3 epochs sooner than patience 5 at a kept validation PRAUC within 0.0003
    QUICK: ClassVar[dict] = {"epochs": 60, "batch_size": 64, "lr": 2e-3, "patience": 3, "min_delta": 0.002}

    @classmethod
    def preset(cls, name: str = "paper", **overrides) -> "StudentConfig":
        overrides.setdefault("teacher_preset", overrides.get("preset", name))
        return super().preset(name, **overrides)

    def __post_init__(self) -> None:
        if self.kd not in KD_MODES:
            raise ValueError(f"leader_s option kd={self.kd!r} is unknown; expected one of {KD_MODES}")
        if self.max_visits < 1:
            raise ValueError(f"leader_s option max_visits must be at least 1, got {self.max_visits}")
        if self.embedding_dim % self.n_heads:
            raise ValueError(f"leader_s: embedding_dim {self.embedding_dim} is not divisible by n_heads {self.n_heads}")
        # JSON gives lists back; the config compares equal after a save and load
        self.teachers = tuple(dict(t) if isinstance(t, dict) else t for t in self.teachers)
        self.teacher_weights = tuple(float(w) for w in self.teacher_weights)
        self.layer_kd_teacher_layers = tuple(int(layer) for layer in self.layer_kd_teacher_layers)
        if not all(isinstance(t, (str, dict)) and t for t in self.teachers):
            raise ValueError(f"leader_s teachers must be teacher names, folders or dicts of teacher options, got {list(self.teachers)}")
        if self.teacher_weighting not in TEACHER_WEIGHTINGS:
            raise ValueError(f"leader_s teacher_weighting={self.teacher_weighting!r}; expected one of {TEACHER_WEIGHTINGS}")
        n_teachers = max(1, len(self.teachers))
        if self.teacher_weights and (len(self.teacher_weights) != n_teachers or min(self.teacher_weights) < 0 or sum(self.teacher_weights) <= 0):
            raise ValueError(f"leader_s teacher_weights {list(self.teacher_weights)}: give {n_teachers} non-negative weight(s), not all zero")
        if self.layer_kd and self.kd not in HIDDEN_STATE_MODES:
            raise ValueError(f"leader_s layer_kd distils hidden states beside eq. 9: it needs kd in {HIDDEN_STATE_MODES}, not {self.kd!r}")
        if self.layer_kd_teacher_layers and len(self.layer_kd_teacher_layers) != 2:
            raise ValueError(f"leader_s layer_kd_teacher_layers: two teacher layers (set level, visit level), got {list(self.layer_kd_teacher_layers)}")

    def teacher_specs(self) -> list[tuple[str, dict]]:
        """(name, teacher options) of each teacher the student distils from; none without KD."""
        if self.kd == "none":
            return []
        if not self.teachers:
            return [("", dict(self.teacher_overrides))]
        specs = []
        for item in self.teachers:
            options = {"teacher_path": item} if isinstance(item, str) else dict(item)
            name = item if isinstance(item, str) else str(item.get("teacher_path") or stable_hash(item)[:8])
            specs.append((name, {**self.teacher_overrides, **options}))
        return specs


@dataclass
class TeacherTargets:
    """What one teacher gives the student for the training samples (rows in training order)."""

    weight: float
    final: torch.Tensor  # h [n, d_h] (hidden-state modes) or logits [n, |M|] (output modes)
    layers: torch.Tensor | None  # [n, 2, d_h]: the layers mapped to the set and visit levels (layer_kd)
    record: dict  # name, seed, cache key, validation loss, weight: for the run's records


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of the real elements ([N, L, d], [N, L] -> [N, d]); zero where none is real."""
    weights = mask.unsqueeze(-1).to(values.dtype)
    return (values * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def transformer(config: StudentConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        config.embedding_dim,
        config.n_heads,
        dim_feedforward=4 * config.embedding_dim,
        dropout=config.dropout,
        activation="gelu",
        batch_first=True,
        norm_first=False,
    )
    return nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)


LENGTH_GROUPS = 4  # rows encoded in this many groups of similar length, each padded only to its own longest


def encode_pooled(encoder: nn.TransformerEncoder, values: torch.Tensor, mask: torch.Tensor, groups: int | None = None) -> torch.Tensor:
    """Transformer over padded rows, then the masked mean (eqs. 3-6).

    Rows are independent (attention stays within a row, padding is masked), so they are sorted by length
    and encoded in ``groups`` groups, each cut to its longest row: the same result with less padding
    (about half of a batch's set slots were padding).
    A row without any real element (an empty code set) lets attention see its first padding slot,
    so softmax never meets only -inf; the masked mean then returns zero for that row.
    """
    groups = LENGTH_GROUPS if groups is None else groups
    lengths = mask.sum(1)
    if groups <= 1 or values.shape[0] < 2 * groups:
        return _encode_rows(encoder, values, mask)
    order = torch.argsort(lengths, stable=True)
    parts = []
    for rows in order.tensor_split(groups):
        width = max(int(lengths[rows[-1]]), 1)
        parts.append(_encode_rows(encoder, values[rows, :width], mask[rows, :width]))
    return torch.cat(parts)[torch.argsort(order)]


def _encode_rows(encoder: nn.TransformerEncoder, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    key_padding = ~mask
    key_padding[:, 0] &= mask.any(1)
    return masked_mean(encoder(values, src_key_padding_mask=key_padding), mask)


class SetEncoder(nn.Module):
    """E_Diag / E_Proc / E_Med: embedding table, transformer, mean over the set (eqs. 3-5)."""

    def __init__(self, vocabulary_size: int, config: StudentConfig):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, config.embedding_dim)
        self.transformer = transformer(config)

    def forward(self, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if codes.shape[0] == 0:
            return self.embedding.weight.new_zeros((0, self.embedding.embedding_dim))
        return encode_pooled(self.transformer, self.embedding(codes), mask)


class ProfileEncoder(nn.Module):
    """P: each profile field embedded, concatenated and projected to d (section III-C-1)."""

    def __init__(self, cardinalities: Sequence[int], dim: int):
        super().__init__()
        self.fields = nn.ModuleList(nn.Embedding(n, dim) for n in cardinalities)
        self.projection = nn.Linear(len(cardinalities) * dim, dim)

    def forward(self, profile: torch.Tensor) -> torch.Tensor:
        return self.projection(torch.cat([emb(profile[:, i]) for i, emb in enumerate(self.fields)], dim=-1))


class StudentOutput(NamedTuple):
    logits: torch.Tensor  # [B, |M|]
    representation: torch.Tensor  # W1 [D~||P~||M~] + b1, [B, d]: what eq. 9 projects
    profile: torch.Tensor  # P, [B, d]: what eq. 10 aligns
    set_level: torch.Tensor  # [D_T || P_T], [B, 2d]: the current visit's set encodings (layer KD)
    visit_level: torch.Tensor  # [D~ || P~ || M~], [B, 3d]: the visit encoder's output (layer KD)


class StudentNetwork(nn.Module):
    def __init__(self, dataset: PreparedDataset, config: StudentConfig):
        super().__init__()
        d = config.embedding_dim
        self.diagnosis_encoder = SetEncoder(dataset.n_diagnoses, config)
        self.procedure_encoder = SetEncoder(dataset.n_procedures, config)
        self.medication_encoder = SetEncoder(dataset.n_medications, config)
        self.profile_encoder = ProfileEncoder(dataset.profile_cardinalities(), d)
        self.visit_encoders = nn.ModuleList(transformer(config) for _ in range(1 if config.shared_visit_encoder else 3))
        self.hidden = nn.Linear(3 * d, d)  # W1, b1
        self.output = nn.Linear(d, dataset.n_medications)  # W2, b2

    def forward(self, batch: dict) -> StudentOutput:
        visit_mask = batch["visit_mask"]
        n_slots = visit_mask.numel()
        dim = self.hidden.out_features

        def place(values: torch.Tensor, slots: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
            base = values.new_zeros((n_slots, dim)) if base is None else base
            return base.index_copy(0, slots, values)

        diagnoses = place(self.diagnosis_encoder(batch["diagnoses"], batch["diagnoses_mask"]), batch["visit_slots"])
        procedures = place(self.procedure_encoder(batch["procedures"], batch["procedures_mask"]), batch["visit_slots"])
        profile = self.profile_encoder(batch["profile"])
        history_medications = place(self.medication_encoder(batch["medications"], batch["medications_mask"]), batch["history_slots"])
        medications = place(profile, batch["last_slots"], history_medications)  # [M_1 .. M_{T-1}, P]

        streams = [s.view(*visit_mask.shape, dim) for s in (diagnoses, procedures, medications)]
        if len(self.visit_encoders) == 1:
            pooled = encode_pooled(self.visit_encoders[0], torch.cat(streams), visit_mask.repeat(3, 1)).chunk(3)
        else:
            pooled = [encode_pooled(enc, s, visit_mask) for enc, s in zip(self.visit_encoders, streams)]
        visit_level = torch.cat(pooled, dim=-1)
        representation = self.hidden(visit_level)
        current = batch["last_slots"]  # the current visit's slot of each sample
        set_level = torch.cat([diagnoses[current], procedures[current]], dim=-1)
        return StudentOutput(self.output(representation), representation, profile, set_level, visit_level)

    def encode_medication_sets(self, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """M_T of eq. 10: the target medication set through E_Med."""
        return self.medication_encoder(codes, mask)


class LeaderStudent(TorchModel):
    name = "leader_s"
    typical_seconds = 100  # quick, default cohort, one thread: the main job's 3-seed mean (README)
    publication = Publication("Liu et al., arXiv 2402.02803, 2024", "2024-02")
    config_class = StudentConfig
    capabilities = Capabilities(uses_profile=True)

    def __init__(self, dataset: PreparedDataset, config: StudentConfig | None = None, seed: int = 0, device: str = "cpu"):
        super().__init__(dataset, config, seed, device)
        if not dataset.profile_fields:
            raise ValueError(f"leader_s needs profile fields (the pseudo medication record); dataset {dataset.name!r} has none")
        self.training_heads: nn.ModuleDict | None = None
        self._teachers: list[TeacherTargets] = []
        self._teacher_rows: dict[str, int] = {}
        self._teacher_difficulty: np.ndarray | None = None  # the teachers' per-sample training BCE (curriculum)
        self._medication_weights: torch.Tensor | None = None  # specialty weighting

    # ----- network and batches -----------------------------------------------------------------
    def build_network(self) -> nn.Module:
        return StudentNetwork(self.dataset, self.config)

    def collate(self, samples: Sequence[Sample]) -> dict:
        """Right-padded visits (the most recent ``max_visits``) with every code set flattened.

        Sets of all real visits are stacked into one [N_sets, L] tensor per code kind and encoded
        at once; ``*_slots`` say where each set lands in the flattened [B * V] visit grid.
        """
        cap = self.config.max_visits
        histories = [s.history[max(0, len(s.history) - cap + 1) :] for s in samples]
        n_visits = [len(h) + 1 for h in histories]
        width = max(n_visits)
        visit_mask = torch.arange(width).unsqueeze(0) < torch.tensor(n_visits).unsqueeze(1)
        diagnoses, procedures, medications, visit_slots, history_slots, last_slots = [], [], [], [], [], []
        for b, (sample, history) in enumerate(zip(samples, histories)):
            for t, visit in enumerate(history):
                diagnoses.append(visit.diagnoses)
                procedures.append(visit.procedures)
                medications.append(visit.medications)
                history_slots.append(b * width + t)
            diagnoses.append(sample.diagnoses)
            procedures.append(sample.procedures)
            visit_slots.extend(range(b * width, b * width + len(history) + 1))
            last_slots.append(b * width + len(history))
        batch = {"sample_ids": [s.sample_id for s in samples], "visit_mask": visit_mask}
        for key, sets, size in (
            ("diagnoses", diagnoses, self.dataset.n_diagnoses),
            ("procedures", procedures, self.dataset.n_procedures),
            ("medications", medications, self.dataset.n_medications),
            ("target_codes", [s.target for s in samples], self.dataset.n_medications),
        ):
            codes, mask = pad_sequences(sets)
            if codes.numel() and (codes.max() >= size or codes.min() < 0):
                raise ValueError(f"leader_s: a {key} code index lies outside the vocabulary of {size} codes (samples {batch['sample_ids'][:3]}...)")
            batch[key], batch[f"{key}_mask"] = codes, mask
        profile = torch.tensor([s.profile for s in samples], dtype=torch.long).view(len(samples), -1)
        cardinalities = torch.tensor(self.dataset.profile_cardinalities())
        if profile.shape[1] != len(cardinalities) or (profile >= cardinalities).any() or (profile < 0).any():
            raise ValueError(f"leader_s: profile values do not match the dataset's fields {self.dataset.profile_fields} with {cardinalities.tolist()} values")
        batch["profile"] = profile
        batch["visit_slots"] = torch.tensor(visit_slots, dtype=torch.long)
        batch["history_slots"] = torch.tensor(history_slots, dtype=torch.long)
        batch["last_slots"] = torch.tensor(last_slots, dtype=torch.long)
        batch["target"] = target_tensor(samples, self.dataset.n_medications)
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def logits(self, batch: dict) -> torch.Tensor:
        return self.network(batch).logits

    # ----- training ----------------------------------------------------------------------------
    def _bce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, target, weight=self._medication_weights)

    def loss(self, batch: dict, epoch: int) -> torch.Tensor:
        """Eq. 13: L_bce + alpha * L_KD + beta * L_align (L_KD summed over the teachers with their weights,
        plus the layer-KD terms when asked)."""
        config = self.config
        out = self.network(batch)
        total = self._bce(out.logits, batch["target"])
        if self._teachers:
            rows = torch.tensor([self._teacher_rows[sid] for sid in batch["sample_ids"]], device=self.device)
            kd = 0.0
            for i, teacher in enumerate(self._teachers):
                target = teacher.final[rows]
                if config.kd in HIDDEN_STATE_MODES:
                    term = feature_kd_loss(self.training_heads["kd_projectors"][i](out.representation), target)
                else:
                    temperature = 1.0
                    if config.kd == "temperature":
                        temperature = decayed_temperature(epoch, config.epochs, config.kd_temperature_initial, config.kd_temperature_final)
                    term = bernoulli_kd_loss(out.logits, target, temperature, self._medication_weights)
                if teacher.layers is not None:
                    layers = teacher.layers[rows]
                    projected = (self.training_heads["set_projectors"][i](out.set_level), self.training_heads["visit_projectors"][i](out.visit_level))
                    term = term + config.layer_kd_weight * (feature_kd_loss(projected[0], layers[:, 0]) + feature_kd_loss(projected[1], layers[:, 1])) / 2
                kd = kd + teacher.weight * term
            total = total + config.alpha * kd
        if config.align:
            target_sets = self.network.encode_medication_sets(batch["target_codes"], batch["target_codes_mask"])
            align = profile_alignment_loss(
                self.training_heads["profile_projection"](out.profile),
                self.training_heads["medication_projection"](target_sets),
                tau=config.tau,
                include_positive=config.align_include_positive,
            )
            total = total + config.beta * align
        return total

    def make_optimizer(self) -> torch.optim.Optimizer:
        parameters = [*self.network.parameters(), *self.training_heads.parameters()]
        return torch.optim.Adam(parameters, lr=self.config.lr, weight_decay=self.config.weight_decay, fused=True)

    def build_training_heads(self, teacher_widths: Sequence[int] = ()) -> nn.ModuleDict:
        """Modules used only by the loss (W_proj of eq. 9 per teacher, the layer-KD projectors, W_P and W_M
        of eq. 10), not saved."""
        d, heads = self.config.embedding_dim, nn.ModuleDict()
        if self.config.kd == "feature":
            heads["kd_projectors"] = nn.ModuleList(nn.Linear(d, width, bias=False) for width in teacher_widths)
        elif self.config.kd == "projector":
            heads["kd_projectors"] = nn.ModuleList(
                nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width)) for width in teacher_widths
            )
        if self.config.layer_kd:
            heads["set_projectors"] = nn.ModuleList(nn.Linear(2 * d, width, bias=False) for width in teacher_widths)
            heads["visit_projectors"] = nn.ModuleList(nn.Linear(3 * d, width, bias=False) for width in teacher_widths)
        if self.config.align:
            heads["profile_projection"] = nn.Linear(d, d, bias=False)
            heads["medication_projection"] = nn.Linear(d, d, bias=False)
        return heads

    @property
    def teacher_seed(self) -> int:
        return self.teacher_training_seed(self.config, self.seed)

    @classmethod
    def teacher_training_seed(cls, config: StudentConfig, seed: int) -> int:
        return seed if config.teacher_seed is None else config.teacher_seed

    @classmethod
    def teacher_entries(cls, config: StudentConfig) -> dict[str, dict]:
        """name -> teacher options of each teacher a student with ``config`` distils from, its preset
        included (``bench ablate --with-teacher`` adds one teacher entry per distinct teacher; a run plans
        each one's fine-tuning as a unit before the students)."""
        return {name: {"preset": config.teacher_preset, **options} for name, options in config.teacher_specs()}

    def _teacher_weights(self, val_losses: Sequence[float | None]) -> list[float]:
        config = self.config
        if config.teacher_weighting == "fixed" or any(loss is None for loss in val_losses):
            raw = list(config.teacher_weights) or [1.0] * len(val_losses)
        else:
            raw = [1.0 / max(loss, 1e-12) for loss in val_losses]
        return [w / sum(raw) for w in raw]

    def load_teacher_targets(self, train: Sequence[Sample], val: Sequence[Sample]) -> list[TeacherTargets]:
        """Each teacher's hidden states (or logits) for the training samples, once per fit, its per-sample
        training BCE (for a curriculum) and its weight; which teachers they were goes to the fit report."""
        from leader.teacher import TeacherConfig, obtain_teacher

        config = self.config
        targets_multi_hot = target_tensor(train, self.dataset.n_medications)
        obtained, losses = [], []
        for name, options in config.teacher_specs():
            teacher_config = TeacherConfig.preset(config.teacher_preset, **options)
            teacher = obtain_teacher(self.dataset, train, val, teacher_config, self.teacher_seed, device=str(self.device))
            states = np.asarray(teacher.hidden_states(train), dtype=np.float32)
            if states.shape != (len(train), teacher.hidden_size):
                raise ValueError(f"leader_s: teacher {name or 'default'} returned states of shape {states.shape}, expected {(len(train), teacher.hidden_size)}")
            logits = torch.from_numpy(np.asarray(teacher.logits_from_states(states), dtype=np.float32))
            final = torch.from_numpy(states) if config.kd in HIDDEN_STATE_MODES else probability_logits(torch.sigmoid(logits))
            layers = None
            if config.layer_kd:
                depth = teacher.n_layers
                chosen = config.layer_kd_teacher_layers or (round(depth / 3), round(2 * depth / 3))
                layers = torch.from_numpy(np.asarray(teacher.hidden_states(train, layers=chosen), dtype=np.float32))
            per_sample = nn.functional.binary_cross_entropy_with_logits(logits, targets_multi_hot, reduction="none").mean(dim=1)
            losses.append(per_sample.numpy())
            report = getattr(teacher, "fit_report", {}) or {}
            record = {"name": name or "default", "seed": self.teacher_seed, "cache_key": teacher.cache_key(train, val), "val_loss": report.get("val_loss")}
            if config.layer_kd:
                record["layers"] = list(chosen)
            obtained.append((final, layers, record))
        weights = self._teacher_weights([record["val_loss"] for _, _, record in obtained])
        self._teacher_difficulty = np.average(np.stack(losses), axis=0, weights=weights) if losses else None
        out = []
        for weight, (final, layers, record) in zip(weights, obtained):
            record["weight"] = weight
            out.append(TeacherTargets(weight, final.to(self.device), None if layers is None else layers.to(self.device), record))
        return out

    def sample_difficulty(self, train: Sequence[Sample]) -> tuple[np.ndarray, str]:
        """The teachers' per-sample BCE on the training samples; the record's length without a teacher."""
        if self._teacher_difficulty is not None:
            return self._teacher_difficulty, "teacher per-sample BCE"
        return super().sample_difficulty(train)

    def fit(self, train: Sequence[Sample], val: Sequence[Sample]) -> "LeaderStudent":
        train = list(train)
        records: Any = None
        try:
            if self.config.kd != "none":
                self._teacher_rows = {s.sample_id: i for i, s in enumerate(train)}
                if len(self._teacher_rows) != len(train):
                    raise ValueError("leader_s: training sample ids are not unique, so teacher targets cannot be looked up")
                self._teachers = self.load_teacher_targets(train, val)
                records = [t.record for t in self._teachers]
                records = records[0] if len(records) == 1 else records
            if self.config.specialty_weighting:
                groups = atc_main_groups(self.dataset.medications.codes)
                weights = specialty_weights(target_tensor(train, self.dataset.n_medications), groups, self.config.specialty_power)
                self._medication_weights = weights.to(self.device)
            seed_everything(self.seed)  # after the teachers, so a cached and a fresh teacher give the same student
            self.network = self.build_network().to(self.device)
            widths = [int(t.final.shape[1]) for t in self._teachers] if self.config.kd in HIDDEN_STATE_MODES else []
            self.training_heads = self.build_training_heads(widths).to(self.device)
            self.fit_report = train_network(self, train, list(val))
        finally:
            self._teachers, self._teacher_rows, self.training_heads = [], {}, None
            self._teacher_difficulty, self._medication_weights = None, None
        hidden = self.config.kd in HIDDEN_STATE_MODES and records is not None
        self.fit_report.update(kd=self.config.kd, teacher=records, teacher_hidden_size=widths[0] if hidden and len(widths) == 1 else (widths if hidden else None))
        return self
