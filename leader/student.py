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
from typing import ClassVar, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from bench.contract import Capabilities, ModelConfig, seed_everything
from bench.training import TorchModel, pad_sequences, target_tensor, train_network
from data_prep.dataset import PreparedDataset, Sample
from leader.losses import (
    bernoulli_kd_loss,
    decayed_temperature,
    feature_kd_loss,
    probability_logits,
    profile_alignment_loss,
)

KD_MODES = ("feature", "none", "output", "temperature", "projector")
HIDDEN_STATE_MODES = ("feature", "projector")  # distil from the teacher's hidden state h


@dataclass
class StudentConfig(ModelConfig):
    epochs: int = 100
    batch_size: int = 4
    lr: float = 5e-4
    patience: int | None = 10
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

    # batches of 16 (4x the paper's steps fewer per epoch); the epoch cap is far enough for patience to stop it
    QUICK: ClassVar[dict] = {"epochs": 60, "batch_size": 16, "patience": 5}

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


def encode_pooled(encoder: nn.TransformerEncoder, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Transformer over padded rows, then the masked mean (eqs. 3-6).

    A row without any real element (an empty code set) lets attention see its first padding slot,
    so softmax never meets only -inf; the masked mean then returns zero for that row.
    """
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
        representation = self.hidden(torch.cat(pooled, dim=-1))
        return StudentOutput(self.output(representation), representation, profile)

    def encode_medication_sets(self, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """M_T of eq. 10: the target medication set through E_Med."""
        return self.medication_encoder(codes, mask)


class LeaderStudent(TorchModel):
    name = "leader_s"
    config_class = StudentConfig
    capabilities = Capabilities(uses_profile=True)

    def __init__(self, dataset: PreparedDataset, config: StudentConfig | None = None, seed: int = 0, device: str = "cpu"):
        super().__init__(dataset, config, seed, device)
        if not dataset.profile_fields:
            raise ValueError(f"leader_s needs profile fields (the pseudo medication record); dataset {dataset.name!r} has none")
        self.training_heads: nn.ModuleDict | None = None
        self._teacher_targets: torch.Tensor | None = None
        self._teacher_rows: dict[str, int] = {}

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
    def loss(self, batch: dict, epoch: int) -> torch.Tensor:
        """Eq. 13: L_bce + alpha * L_KD + beta * L_align."""
        config = self.config
        out = self.network(batch)
        total = nn.functional.binary_cross_entropy_with_logits(out.logits, batch["target"])
        if config.kd != "none":
            rows = torch.tensor([self._teacher_rows[sid] for sid in batch["sample_ids"]], device=self.device)
            teacher = self._teacher_targets[rows]
            if config.kd in HIDDEN_STATE_MODES:
                kd = feature_kd_loss(self.training_heads["kd_projector"](out.representation), teacher)
            else:
                temperature = 1.0
                if config.kd == "temperature":
                    temperature = decayed_temperature(epoch, config.epochs, config.kd_temperature_initial, config.kd_temperature_final)
                kd = bernoulli_kd_loss(out.logits, teacher, temperature)
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
        return torch.optim.Adam(parameters, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def build_training_heads(self, teacher_width: int | None) -> nn.ModuleDict:
        """Modules used only by the loss (W_proj of eq. 9, W_P and W_M of eq. 10), not saved."""
        d, heads = self.config.embedding_dim, nn.ModuleDict()
        if self.config.kd == "feature":
            heads["kd_projector"] = nn.Linear(d, teacher_width, bias=False)
        elif self.config.kd == "projector":
            heads["kd_projector"] = nn.Sequential(nn.Linear(d, teacher_width), nn.ReLU(), nn.Linear(teacher_width, teacher_width))
        if self.config.align:
            heads["profile_projection"] = nn.Linear(d, d, bias=False)
            heads["medication_projection"] = nn.Linear(d, d, bias=False)
        return heads

    @property
    def teacher_seed(self) -> int:
        return self.seed if self.config.teacher_seed is None else self.config.teacher_seed

    def load_teacher_targets(self, train: Sequence[Sample], val: Sequence[Sample]) -> tuple[np.ndarray, dict]:
        """The teacher's hidden states or probabilities for the training samples, once per fit, and which
        teacher gave them (its seed and cache key, for the run's records)."""
        from leader.teacher import TeacherConfig, obtain_teacher

        teacher_config = TeacherConfig.preset(self.config.teacher_preset, **self.config.teacher_overrides)
        teacher = obtain_teacher(self.dataset, train, val, teacher_config, self.teacher_seed, device=str(self.device))
        if self.config.kd in HIDDEN_STATE_MODES:
            targets = np.asarray(teacher.hidden_states(train), dtype=np.float32)
            expected = (len(train), teacher.hidden_size)
        else:
            targets = probability_logits(torch.as_tensor(np.asarray(teacher.predict_proba(train), dtype=np.float32))).numpy()
            expected = (len(train), self.dataset.n_medications)
        if targets.shape != expected:
            raise ValueError(f"leader_s: the teacher returned targets of shape {targets.shape}, expected {expected}")
        return targets, {"seed": self.teacher_seed, "cache_key": teacher.cache_key(train, val)}

    def fit(self, train: Sequence[Sample], val: Sequence[Sample]) -> "LeaderStudent":
        train = list(train)
        teacher_width, teacher = None, None
        if self.config.kd != "none":
            self._teacher_rows = {s.sample_id: i for i, s in enumerate(train)}
            if len(self._teacher_rows) != len(train):
                raise ValueError("leader_s: training sample ids are not unique, so teacher targets cannot be looked up")
            targets, teacher = self.load_teacher_targets(train, val)
            teacher_width = targets.shape[1]
            self._teacher_targets = torch.from_numpy(targets).to(self.device)
        seed_everything(self.seed)  # after the teacher, so a cached and a fresh teacher give the same student
        self.network = self.build_network().to(self.device)
        self.training_heads = self.build_training_heads(teacher_width).to(self.device)
        try:
            self.fit_report = train_network(self, train, list(val))
        finally:
            self._teacher_targets, self._teacher_rows, self.training_heads = None, {}, None
        self.fit_report.update(kd=self.config.kd, teacher=teacher, teacher_hidden_size=teacher_width if self.config.kd in HIDDEN_STATE_MODES else None)
        return self
