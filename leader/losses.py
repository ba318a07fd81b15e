"""Loss terms of LEADER(S) (Liu et al., "Large Language Model Distilled Medication Recommendation
Model", arXiv 2402.02803, section III-C) and the distillation variants it is compared against.

Pure functions of tensors, so each term is tested against hand-computed values. The total is eq. 13,
``L = L_bce + alpha * L_KD + beta * L_align``, assembled by :class:`leader.student.LeaderStudent`;
``L_bce`` (eq. 8) is ``torch.nn.functional.binary_cross_entropy_with_logits`` with mean reduction
(eq. 8 writes a sum; the mean keeps alpha and beta independent of the vocabulary size and batch
size, and is what the published code does).

Reductions, chosen once for every term: a mean over the batch, and over feature dimensions or
medications inside a sample. Eq. 9 writes the squared L2 norm (a sum over the d_h dimensions of the
teacher's hidden state); the mean over dimensions used here (and in the published code) differs by
the constant factor d_h, which alpha absorbs, and makes alpha comparable across teachers of
different width (384 for MiniLM, 4096 for LLaMA-7B).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import torch
import torch.nn.functional as F


def feature_kd_loss(projected_student: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Eq. 9: mean squared error between the projected student representation and the teacher's h.

    ``projected_student`` is ``W_proj (W1 [D~||P~||M~] + b1)`` (eq. 9) or, for the DistilLLM-Med
    variant, the output of its MLP projector; both are [B, d_h] like ``teacher_hidden``.
    """
    if projected_student.shape != teacher_hidden.shape:
        raise ValueError(f"student projection {tuple(projected_student.shape)} and teacher hidden states {tuple(teacher_hidden.shape)} differ in shape")
    return F.mse_loss(projected_student, teacher_hidden)


def bernoulli_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Output-level KD for multi-label sigmoid outputs: KL(teacher || student) per medication.

    Each medication is an independent Bernoulli variable, so the softmax KL of Hinton et al. becomes
    ``p_t log(p_t / p_s) + (1 - p_t) log((1 - p_t) / (1 - p_s))`` with ``p = sigmoid(logit / T)``,
    averaged over medications and samples and multiplied by ``T**2`` (Hinton's scaling, so the
    gradient size does not shrink as T grows). T = 1 is LEADER's "w/o feature-KD" ablation; a
    decaying T is DistilLLM-Med's temperature-scaled KD. Computed from logits with ``logsigmoid``
    for numerical stability. ``weight`` [n_medications] scales each medication's term (specialty weighting).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    t_scaled, s_scaled = teacher_logits / temperature, student_logits / temperature
    p_teacher = torch.sigmoid(t_scaled)
    # log p = logsigmoid(z), log (1 - p) = logsigmoid(-z)
    kl = p_teacher * (F.logsigmoid(t_scaled) - F.logsigmoid(s_scaled)) + (1 - p_teacher) * (
        F.logsigmoid(-t_scaled) - F.logsigmoid(-s_scaled)
    )
    if weight is not None:
        kl = kl * weight
    return kl.mean() * temperature**2


ATC_MAIN_GROUP = re.compile(r"^([ABCDGHJLMNPRSV])\d\d")  # the 14 anatomical main groups


def atc_main_groups(codes: Sequence[str]) -> list[str]:
    """ATC level 1, the anatomical main group (the first letter: C = cardiovascular system, ...), of each
    medication code; DistilLLM-Med's "specialty" for a medication vocabulary of ATC classes."""
    groups = [ATC_MAIN_GROUP.match(code) for code in codes]
    unmatched = [code for code, group in zip(codes, groups) if group is None]
    if unmatched:
        raise ValueError(
            f"specialty weighting needs ATC medication codes (as MIMIC and the synthetic cohort have); "
            f"{len(unmatched)} code(s) are not, e.g. {unmatched[0]!r}"
        )
    return [group.group(1) for group in groups]


def specialty_weights(targets: torch.Tensor, groups: Sequence[str], power: float = 0.5) -> torch.Tensor:
    """Per-medication loss weights [n_medications] from its group's frequency: rarer groups weigh more.

    A group's weight is ``(mean group count / its count) ** power`` over the training prescriptions
    (``targets``, multi-hot [n, n_medications]); ``power`` 1 is the inverse frequency, 0 no weighting. The
    weights are scaled so that a training prescription weighs 1 on average (the loss keeps its scale);
    a group never prescribed in training gets the largest weight of the others.
    """
    if power < 0:
        raise ValueError(f"specialty power must be non-negative, got {power}")
    if targets.shape[1] != len(groups):
        raise ValueError(f"{targets.shape[1]} medications but {len(groups)} group labels")
    counts = targets.sum(dim=0).double()
    names = sorted(set(groups))
    index = torch.tensor([names.index(g) for g in groups])
    group_counts = torch.zeros(len(names), dtype=torch.float64).index_add_(0, index, counts)
    seen = group_counts > 0
    if not seen.any():
        raise ValueError("specialty weighting: no training prescription")
    weights = torch.zeros(len(names), dtype=torch.float64)
    weights[seen] = (group_counts[seen].mean() / group_counts[seen]) ** power
    weights[~seen] = weights[seen].max()
    per_medication = weights[index]
    per_medication = per_medication * counts.sum() / (per_medication * counts).sum()
    return per_medication.float()


def probability_logits(proba: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Logits of a teacher's probabilities (clipped away from 0 and 1, so they stay finite)."""
    return torch.logit(proba.clamp(eps, 1 - eps))


def decayed_temperature(epoch: int, epochs: int, initial: float, final: float) -> float:
    """DistilLLM-Med's schedule tau(t) = tau_0 * exp(-gamma t), gamma set so it ends at ``final``.

    The seed paper decays tau from 8 to 1 over its training steps; here t counts epochs (0-based)
    and the last epoch of the budget uses ``final``. Early stopping may end training sooner.
    """
    if initial <= 0 or final <= 0:
        raise ValueError(f"temperatures must be positive, got {initial} and {final}")
    if epochs <= 1:
        return float(final)
    gamma = math.log(initial / final) / (epochs - 1)
    return float(initial * math.exp(-gamma * min(epoch, epochs - 1)))


def profile_alignment_loss(
    z_profile: torch.Tensor, z_medication: torch.Tensor, tau: float = 1.0, include_positive: bool = False
) -> torch.Tensor:
    """Eqs. 11-12: symmetric InfoNCE between profile and target-medication projections.

    Sample i's profile and medication set are the positive pair; the other samples of the batch are
    the negatives. Similarity is the cosine, divided by ``tau``. The result is L_PM + L_MP, each the
    mean over the batch (eq. 11's 1/B).

    Denominator: by default it excludes the positive, as eq. 11's indicator I[i != j] says (and as
    the published code computes). ``include_positive=True`` gives the standard CLIP / InfoNCE
    denominator over all j. With one sample there is no negative: the excluded-positive loss is
    undefined there and the CLIP loss is exactly 0, so both return 0 (no alignment signal).
    """
    if z_profile.shape != z_medication.shape or z_profile.dim() != 2:
        raise ValueError(f"profile {tuple(z_profile.shape)} and medication {tuple(z_medication.shape)} projections must both be [B, d]")
    batch = z_profile.shape[0]
    if batch < 2:
        return z_profile.sum() * 0.0  # keeps the graph (and the device) for a uniform backward
    logits = F.normalize(z_profile, dim=1) @ F.normalize(z_medication, dim=1).T / tau
    positives = logits.diagonal()
    denominator = logits
    if not include_positive:
        eye = torch.eye(batch, dtype=torch.bool, device=logits.device)
        denominator = logits.masked_fill(eye, float("-inf"))
    profile_to_medication = (torch.logsumexp(denominator, dim=1) - positives).mean()
    medication_to_profile = (torch.logsumexp(denominator, dim=0) - positives).mean()
    return profile_to_medication + medication_to_profile
