"""LEADER(S) loss terms against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from leader.losses import (
    bernoulli_kd_loss,
    decayed_temperature,
    feature_kd_loss,
    probability_logits,
    profile_alignment_loss,
)

R = 1 / math.sqrt(2)


def test_feature_kd_is_the_mean_squared_error_over_dimensions_and_samples():
    student = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    # squared errors 0, 4, 9, 0 -> mean 13 / 4
    assert feature_kd_loss(student, teacher).item() == pytest.approx(3.25)


def test_feature_kd_rejects_a_width_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        feature_kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_bernoulli_kd_at_temperature_one():
    # teacher p = 0.5, student p = 0.75: 0.5 log(0.5/0.75) + 0.5 log(0.5/0.25) = 0.5 log(4/3)
    loss = bernoulli_kd_loss(torch.tensor([[math.log(3.0)]]), torch.tensor([[0.0]]))
    assert loss.item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)


def test_bernoulli_kd_softens_both_sides_and_scales_by_temperature_squared():
    student_p = 1 / (1 + math.exp(-math.log(3.0) / 2))  # sigmoid(log 3 / 2) = sqrt 3 / (1 + sqrt 3)
    teacher_p = 1 / (1 + math.exp(-1.0))  # sigmoid(2 / 2)
    expected = teacher_p * math.log(teacher_p / student_p) + (1 - teacher_p) * math.log((1 - teacher_p) / (1 - student_p))
    loss = bernoulli_kd_loss(torch.tensor([[math.log(3.0)]]), torch.tensor([[2.0]]), temperature=2.0)
    assert loss.item() == pytest.approx(4 * expected, rel=1e-6)


def test_bernoulli_kd_is_zero_for_equal_outputs_and_averages_over_medications():
    logits = torch.tensor([[0.3, -2.0, 5.0]])
    assert bernoulli_kd_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-7)
    pair = bernoulli_kd_loss(torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([[0.0, 0.0]]))
    assert pair.item() == pytest.approx(0.25 * math.log(4 / 3), rel=1e-6)


def test_probability_logits_invert_the_sigmoid_and_stay_finite():
    logits = probability_logits(torch.tensor([0.5, 0.75, 0.0, 1.0]))
    assert logits[:2].tolist() == pytest.approx([0.0, math.log(3.0)], rel=1e-5)
    assert torch.isfinite(logits).all()


def test_temperature_decays_exponentially_from_initial_to_final():
    assert decayed_temperature(0, 5, 8.0, 1.0) == pytest.approx(8.0)
    assert decayed_temperature(2, 5, 8.0, 1.0) == pytest.approx(8.0 / math.sqrt(8.0))
    assert decayed_temperature(4, 5, 8.0, 1.0) == pytest.approx(1.0)
    assert decayed_temperature(9, 5, 8.0, 1.0) == pytest.approx(1.0)
    assert decayed_temperature(0, 1, 8.0, 1.0) == 1.0


# z_P = [[1, 0], [0, 1]], z_M = [[1, 0], [1, 1]]: cosine sim = [[1, 1/sqrt2], [0, 1/sqrt2]]
Z_PROFILE = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
Z_MEDICATION = torch.tensor([[1.0, 0.0], [1.0, 1.0]])


def test_alignment_excluding_the_positive_follows_eq_11():
    # L_PM rows: -1 + 1/sqrt2 and -1/sqrt2 + 0; L_MP columns: -1 + 0 and -1/sqrt2 + 1/sqrt2
    expected = ((-1 + R) + (-R)) / 2 + ((-1 + 0) + (-R + R)) / 2
    loss = profile_alignment_loss(Z_PROFILE, Z_MEDICATION)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(-1.0)


def test_alignment_including_the_positive_is_the_clip_loss():
    e = math.exp
    pm = (-1 + math.log(e(1) + e(R))) + (-R + math.log(e(0) + e(R)))
    mp = (-1 + math.log(e(1) + e(0))) + (-R + math.log(e(R) + e(R)))
    loss = profile_alignment_loss(Z_PROFILE, Z_MEDICATION, include_positive=True)
    assert loss.item() == pytest.approx(pm / 2 + mp / 2, rel=1e-6)
    labels = torch.arange(2)
    logits = torch.tensor([[1.0, R], [0.0, R]])
    clip = torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)
    assert loss.item() == pytest.approx(clip.item(), rel=1e-6)


def test_alignment_divides_similarities_by_tau_and_ignores_vector_length():
    expected = ((-2 + 2 * R) + (-2 * R)) / 2 + ((-2 + 0) + 0) / 2
    assert profile_alignment_loss(3 * Z_PROFILE, 0.5 * Z_MEDICATION, tau=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_alignment_of_a_single_sample_is_zero_and_still_backpropagates():
    z = torch.ones(1, 4, requires_grad=True)
    for include_positive in (False, True):
        loss = profile_alignment_loss(z, torch.ones(1, 4), include_positive=include_positive)
        assert loss.item() == 0.0
        loss.backward()


def test_alignment_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="must both be"):
        profile_alignment_loss(torch.zeros(2, 3), torch.zeros(3, 3))


def test_specialty_weights_favour_rare_atc_groups_and_keep_the_loss_scale():
    from leader.losses import atc_main_groups, specialty_weights

    groups = atc_main_groups(["C01A", "C03C", "N02B", "A02B"])
    assert groups == ["C", "C", "N", "A"]
    targets = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0]], dtype=torch.float32)  # C: 7, N: 2, A: 0
    weights = specialty_weights(targets, groups, power=1.0)
    assert weights[0] == weights[1] and weights[2] / weights[0] == pytest.approx(3.5)  # inverse frequency 7 : 2
    assert weights[3] == weights[2]  # a group never prescribed weighs as the rarest
    assert float((weights * targets.sum(0)).sum() / targets.sum()) == pytest.approx(1.0)  # a prescription weighs 1 on average
    assert torch.allclose(specialty_weights(targets, groups, power=0.0), torch.ones(4))
    with pytest.raises(ValueError, match="ATC"):
        atc_main_groups(["C01A", "Z99", "drug 7"])


def test_output_kd_takes_per_medication_weights():
    student, teacher = torch.randn(3, 4), torch.randn(3, 4)
    weight = torch.tensor([1.0, 0.0, 2.0, 1.0])
    per_term = bernoulli_kd_loss(student[:, [0]], teacher[:, [0]])  # one medication: its mean over samples
    assert bernoulli_kd_loss(student, teacher, weight=torch.ones(4)) == pytest.approx(float(bernoulli_kd_loss(student, teacher)))
    assert bernoulli_kd_loss(student, teacher, weight=weight) != pytest.approx(float(bernoulli_kd_loss(student, teacher)))
    assert per_term >= 0
