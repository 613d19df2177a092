"""Distillation losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from streamkd.distill import (
    bd_kd,
    binary_bd_kd,
    binary_kd,
    feature_distance,
    forward_kl,
    reverse_kl,
    symmetric_info_nce,
)

TEACHER = torch.tensor([[0.0, 0.0]])  # p_t = (0.5, 0.5)
STUDENT = torch.tensor([[math.log(0.8), math.log(0.2)]])  # p_s = (0.8, 0.2)


def test_forward_kl_is_kl_of_teacher_to_student():
    expected = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)  # 0.2231
    assert float(forward_kl(STUDENT, TEACHER)) == pytest.approx(expected, abs=1e-6)


def test_reverse_kl_is_kl_of_student_to_teacher():
    expected = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)  # 0.1927
    assert float(reverse_kl(STUDENT, TEACHER)) == pytest.approx(expected, abs=1e-6)


def test_temperature_softens_both_sides_and_scales_by_its_square():
    t = 2.0
    p_s = torch.softmax(STUDENT / t, 1)[0].tolist()
    expected = t**2 * sum(0.5 * math.log(0.5 / q) for q in p_s)
    assert float(forward_kl(STUDENT, TEACHER, temperature=t)) == pytest.approx(expected, abs=1e-6)
    same = torch.tensor([[1.0, -2.0, 0.5]])
    assert float(forward_kl(same, same)) == pytest.approx(0.0, abs=1e-7)
    assert float(reverse_kl(same, same)) == pytest.approx(0.0, abs=1e-7)


def test_bd_kd_weighs_the_two_divergences_by_the_entropy_gap():
    h_s = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) / math.log(2)  # 0.7219
    w_reverse = (1 + h_s - 1.0) / 2  # the teacher is uniform: H_t = 1
    fkl = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    rkl = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    expected = (1 - w_reverse) * fkl + w_reverse * rkl  # 0.2121
    assert float(bd_kd(STUDENT, TEACHER)) == pytest.approx(expected, abs=1e-6)


def test_bd_kd_leans_reverse_for_an_underconfident_student_and_forward_for_an_overconfident():
    teacher = torch.tensor([[3.0, 0.0, 0.0]])
    flat, sharp = torch.tensor([[0.5, 0.0, 0.0]]), torch.tensor([[9.0, 0.0, 0.0]])
    for student, leans in ((flat, reverse_kl), (sharp, forward_kl)):
        other = forward_kl if leans is reverse_kl else reverse_kl
        mix = float(bd_kd(student, teacher))
        lean, rest = float(leans(student, teacher)), float(other(student, teacher))
        # the mix lies nearer the divergence it leans on
        assert abs(mix - lean) < abs(mix - rest)
    t = torch.tensor([[1.0, 0.2, -1.0]])
    s = t[:, [1, 2, 0]]  # the same entropy, another distribution: one half each
    half = 0.5 * (forward_kl(s, t) + reverse_kl(s, t))
    assert float(half) > 0.1
    assert float(bd_kd(s, t)) == pytest.approx(float(half), abs=1e-6)


def test_binary_bd_kd_is_bd_kd_over_click_and_no_click():
    z_s, z_t = torch.tensor([math.log(4.0)]), torch.tensor([0.0])  # 0.8 against 0.5
    two = torch.tensor([[0.0, math.log(4.0)]]), torch.tensor([[0.0, 0.0]])
    assert float(binary_bd_kd(z_s, z_t)) == pytest.approx(float(bd_kd(*two)), abs=1e-6)
    assert float(binary_bd_kd(z_s, z_t)) == pytest.approx(0.2121, abs=1e-4)


def test_binary_kd_is_bce_against_the_teachers_probability():
    z_s, z_t = torch.tensor([math.log(4.0)]), torch.tensor([0.0])  # 0.8 against 0.5
    expected = -(0.5 * math.log(0.8) + 0.5 * math.log(0.2))  # 0.9163
    assert float(binary_kd(z_s, z_t)) == pytest.approx(expected, abs=1e-6)
    per = binary_kd(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 2.0]), reduction="none")
    assert per.shape == (2,)


def test_binary_kd_scales_by_t_squared_and_moves_an_attached_teacher_the_way_the_student_leans():
    z_s = torch.tensor([1.5, -0.5, 2.0])
    z_t = torch.tensor([0.3, 0.8, -1.0], requires_grad=True)
    t = 2.0
    plain = F.binary_cross_entropy_with_logits(z_s / t, torch.sigmoid(z_t.detach() / t))
    assert float(binary_kd(z_s, z_t.detach(), t)) == pytest.approx(t**2 * float(plain))
    binary_kd(z_s, z_t, t).backward()  # the joint form: the teacher is not detached
    q_t = torch.sigmoid(z_t.detach() / t)
    assert torch.allclose(z_t.grad, -z_s * q_t * (1 - q_t) / len(z_s), atol=1e-6)


def test_symmetric_info_nce_on_matched_unit_pairs():
    eye = torch.eye(2)
    expected = math.log(1 + math.exp(-1))  # each row: -log(e / (e + 1))
    assert float(symmetric_info_nce(eye, eye, temperature=1.0)) == pytest.approx(expected, 1e-6)
    swapped = eye.flip(0)  # every pair is the other row's: the loss grows
    assert float(symmetric_info_nce(eye, swapped, temperature=1.0)) > expected


def test_identical_teacher_rows_count_as_positives_when_marked():
    # two students, one caption twice: the teacher rows are equal
    a = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    soft = math.log(1 + math.exp(0.8))  # log-sum-exp of the column logits (0, 0.8)
    plain = symmetric_info_nce(a, b, 1.0, reduction="none")
    # rows: uniform logits (0, 0) and (0.8, 0.8) -> log 2 each; columns: (0, 0.8) against
    # target 0 (row 0) or 1 (row 1)
    assert torch.allclose(plain, 0.5 * torch.tensor([math.log(2) + soft, math.log(2) + soft - 0.8]))
    same = torch.ones(2, 2, dtype=torch.bool)
    marked = symmetric_info_nce(a, b, 1.0, reduction="none", positives=same)
    assert torch.allclose(marked, torch.full((2,), 0.5 * (math.log(2) + soft - 0.4)))
    learnable = torch.tensor(1.0, requires_grad=True)  # CLIP's learned temperature
    symmetric_info_nce(a, b, learnable).backward()
    assert learnable.grad is not None


def test_feature_distance():
    s, t = torch.tensor([[1.0, 0.0], [1.0, 2.0]]), torch.tensor([[0.0, 3.0], [2.0, 4.0]])
    cosine = feature_distance(s, t, reduction="none")
    assert torch.allclose(cosine, torch.tensor([1.0, 0.0]), atol=1e-6)
    assert torch.allclose(feature_distance(s, t, "mse", "none"), torch.tensor([10.0, 5.0]))


def test_the_gradient_reaches_the_student_and_the_teacher_only_when_not_detached():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    forward_kl(s, t.detach()).backward()
    assert s.grad is not None and t.grad is None
    reverse_kl(s, t).backward()
    assert t.grad is not None


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: forward_kl(torch.zeros(2, 3), torch.zeros(2, 4)), "differ in shape"),
        (lambda: reverse_kl(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0), "positive"),
        (lambda: forward_kl(torch.zeros(3), torch.zeros(3)), "(n, classes)"),
        (lambda: binary_kd(torch.zeros(2), torch.zeros(2), reduction="sum"), "reduction"),
        (lambda: symmetric_info_nce(torch.zeros(2, 3), torch.zeros(3, 3)), "one shape"),
        (
            lambda: symmetric_info_nce(torch.eye(2), torch.eye(2), positives=torch.ones(3, 3)),
            "positives must be",
        ),
        (lambda: feature_distance(torch.zeros(2, 3), torch.zeros(2, 4)), "differ in shape"),
        (lambda: feature_distance(torch.zeros(2), torch.zeros(2), "l1"), "unknown feature"),
    ],
)
def test_bad_arguments_get_clear_errors(call, words):
    with pytest.raises(ValueError, match=words):
        call()
