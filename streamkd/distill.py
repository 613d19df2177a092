"""Distillation losses, in one place: strategies pick from here and keep no copies.

* :func:`forward_kl` -- ``KL(p_t || p_s)`` (Hinton et al. 2015): the student covers every mode
  of the teacher (mean-seeking).
* :func:`reverse_kl` -- ``KL(p_s || p_t)``: the student concentrates where the teacher is
  confident (mode-seeking).
* :func:`bd_kd` / :func:`binary_bd_kd` -- BD-KD (Amara et al., "BD-KD: Balancing the
  Divergences for Online Knowledge Distillation"): per sample, a mix of forward and reverse
  KL weighted by the teacher-student entropy gap (below), for classes and for clicks.
* :func:`binary_kd` -- CTR distillation: ``T^2 * BCE(sigmoid(z_t / T), sigmoid(z_s / T))`` with
  the teacher's probability as the soft target (LightSUAN's online distillation term).
* :func:`symmetric_info_nce` -- CLIP's contrastive alignment of two embedding batches whose
  rows pair up (a student's embeddings to a frozen teacher's).
* :func:`feature_distance` -- feature matching (cosine or squared L2) to a teacher's features
  (a previous copy of the student, in lifelong learning).

The KL terms and :func:`binary_kd` take logits, soften both sides by the temperature ``T``
and scale by ``T**2`` so their gradients keep the size of the hard-label loss's (Hinton et
al.). Nothing is detached here: pass ``teacher.detach()`` where the teacher must not learn
from the term. Every loss returns per-sample values with ``reduction="none"``, else their
mean.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("mean", "none")


def forward_kl(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, reduction="mean"
) -> Tensor:
    """``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`` per sample (rows are samples).

    Examples:
        >>> import torch
        >>> student = torch.tensor([[2.0, 0.0, -1.0]])
        >>> teacher = torch.tensor([[1.0, 1.0, -1.0]])
        >>> round(forward_kl(student, teacher).item(), 4)
        0.4112
        >>> round(forward_kl(student, teacher, temperature=2.0).item(), 4)  # scaled by T^2
        0.4095
        >>> forward_kl(teacher, teacher).item()  # nothing to learn from an equal teacher
        0.0
    """
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature)
    return _reduce(_kl(log_t, log_s) * temperature**2, reduction)


def reverse_kl(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, reduction="mean"
) -> Tensor:
    """``T^2 * KL(softmax(z_s/T) || softmax(z_t/T))`` per sample.

    Examples:
        >>> import torch
        >>> student = torch.tensor([[2.0, 0.0, -1.0]])
        >>> teacher = torch.tensor([[1.0, 1.0, -1.0]])
        >>> round(reverse_kl(student, teacher).item(), 4)  # KL is not symmetric
        0.3184
    """
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature)
    return _reduce(_kl(log_s, log_t) * temperature**2, reduction)


def bd_kd(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, reduction="mean"
) -> Tensor:
    """BD-KD's student loss: ``w_f * KL(p_t||p_s) + w_r * KL(p_s||p_t)`` per sample.

    The paper's text was not reachable here (only its abstract and summaries: "sample-wise
    weighting of forward and reverse KL", driven by the teacher-student entropy gap), so this
    is its documented intent, not its exact equation: with entropies normalised by
    ``log(classes)``, ``w_r = (1 + H_s - H_t) / 2`` and ``w_f = 1 - w_r`` (weights carry no
    gradient). An under-confident student (``H_s > H_t``) leans on the mode-seeking reverse KL,
    which sharpens it; an over-confident one on the mode-covering forward KL, which softens
    it; equal entropies weigh both by one half.

    Examples:
        A mix of the two KL terms, so it lies between them:

        >>> import torch
        >>> student = torch.tensor([[2.0, 0.0, -1.0]])
        >>> teacher = torch.tensor([[1.0, 1.0, -1.0]])
        >>> values = [f(student, teacher).item() for f in (reverse_kl, bd_kd, forward_kl)]
        >>> [round(v, 4) for v in values], values == sorted(values)
        ([0.3184, 0.3801, 0.4112], True)
    """
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature)
    norm = math.log(student_logits.shape[1]) if student_logits.shape[1] > 1 else 1.0
    gap = (_entropy(log_s) - _entropy(log_t)).detach() / norm
    w_reverse = (1 + gap.clamp(-1, 1)) / 2
    mixed = (1 - w_reverse) * _kl(log_t, log_s) + w_reverse * _kl(log_s, log_t)
    per_sample = mixed * temperature**2
    return _reduce(per_sample, reduction)


def binary_bd_kd(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, reduction="mean"
) -> Tensor:
    """BD-KD for clicks: :func:`bd_kd` over the two-class distributions ``(1 - q, q)`` of
    the softened click probabilities (logits of shape ``(n,)``)."""
    _check(student_logits, teacher_logits, temperature)
    two = lambda z: torch.stack([torch.zeros_like(z), z], dim=1)  # noqa: E731 - (1-q, q) logits
    return bd_kd(two(student_logits), two(teacher_logits), temperature, reduction)


def binary_kd(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, reduction="mean"
) -> Tensor:
    """Binary cross-entropy of the student's softened click probability against the
    teacher's, scaled by the temperature's square: ``T^2 * BCE(sigmoid(z_t/T), sigmoid(z_s/T))``
    per sample (logits of shape ``(n,)``), LightSUAN's distillation term with its ``lambda *
    t^2`` weight.

    It equals ``T^2 * [H(q_t) + KL(q_t || q_s)]``: on the student, the KL's gradient. Where
    the teacher's side is not detached (``teacher_learns="joint"``), its gradient on the
    teacher's logit is ``-z_s * q_t * (1 - q_t)`` per sample: it pushes the teacher the way
    the student leans (sharpening it where they agree), not toward the student's probability.

    Examples:
        >>> import torch
        >>> student, teacher = torch.tensor([0.0, 3.0]), torch.tensor([0.0, 3.0])
        >>> [round(v, 4) for v in binary_kd(student, teacher, reduction="none").tolist()]
        [0.6931, 0.1909]

        A teacher at 0.5 gives ``log 2`` for a student at 0.5: the entropy of the soft target
        remains even when the student matches it.
    """
    _check(student_logits, teacher_logits, temperature)
    target = torch.sigmoid(teacher_logits / temperature)
    per_sample = F.binary_cross_entropy_with_logits(
        student_logits / temperature, target, reduction="none"
    )
    return _reduce(per_sample * temperature**2, reduction)


def symmetric_info_nce(
    a: Tensor,
    b: Tensor,
    temperature: float | Tensor = 0.07,
    reduction="mean",
    positives: Tensor | None = None,
):
    """CLIP's loss: rows ``a[i]`` and ``b[i]`` are a positive pair, every other row of the
    batch a negative; cross-entropy over cosine similarities / ``temperature``, both ways,
    averaged. ``temperature`` may be a learnable 0-d tensor (CLIP learns its logit scale).
    ``positives`` (n, n) bool marks further pairs that are positive too (rows whose teacher
    targets are identical, e.g. two samples with the same caption): the target then spreads
    evenly over a row's positives instead of punishing a true match as a negative.

    Examples:
        >>> import torch
        >>> a = torch.eye(3)
        >>> round(symmetric_info_nce(a, a, temperature=0.1).item(), 4)  # rows paired right
        0.0001
        >>> round(symmetric_info_nce(a, a.roll(1, 0), temperature=0.1).item(), 4)  # wrong
        10.0001
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"expected two (n, d) batches of one shape, got {a.shape} and {b.shape}")
    if not isinstance(temperature, Tensor) and not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / temperature
    if positives is None:
        target = torch.arange(len(a), device=a.device)
        rows, cols = target, target
    else:
        if positives.shape != (len(a), len(a)):
            raise ValueError(
                f"positives must be ({len(a)}, {len(a)}), got {tuple(positives.shape)}"
            )
        match = positives.float() + torch.eye(len(a), device=a.device)
        match = match.clamp_max(1.0)
        rows, cols = match / match.sum(1, keepdim=True), match.T / match.T.sum(1, keepdim=True)
    per_sample = 0.5 * (
        F.cross_entropy(logits, rows, reduction="none")
        + F.cross_entropy(logits.T, cols, reduction="none")
    )
    return _reduce(per_sample, reduction)


def feature_distance(student: Tensor, teacher: Tensor, kind: str = "cosine", reduction="mean"):
    """Feature matching: ``1 - cos(student, teacher)`` (``"cosine"``) or the squared L2
    distance (``"mse"``) per row, over every dimension after the first.

    Examples:
        >>> import torch
        >>> x = torch.ones(2, 3)
        >>> round(feature_distance(x, x).item(), 4), feature_distance(x, -x, reduction="none")
        (0.0, tensor([2., 2.]))
        >>> feature_distance(x, 2 * x, kind="mse").item()
        3.0
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher features differ in shape: {tuple(student.shape)} vs "
            f"{tuple(teacher.shape)}"
        )
    if kind == "cosine":
        per_sample = 1 - F.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=1)
    elif kind == "mse":
        per_sample = (student - teacher).pow(2).flatten(1).sum(1)
    else:
        raise ValueError(f"unknown feature distance {kind!r}; expected 'cosine' or 'mse'")
    return _reduce(per_sample, reduction)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p || q)`` per row, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(1)


def _entropy(log_p: Tensor) -> Tensor:
    return -(log_p.exp() * log_p).sum(1)


def _log_probs(student: Tensor, teacher: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    _check(student, teacher, temperature)
    if student.dim() != 2:
        raise ValueError(f"expected (n, classes) logits, got shape {tuple(student.shape)}")
    return (
        F.log_softmax(student / temperature, dim=1),
        F.log_softmax(teacher / temperature, dim=1),
    )


def _check(student: Tensor, teacher: Tensor, temperature: float) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student.shape)} vs "
            f"{tuple(teacher.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return per_sample.mean() if reduction == "mean" else per_sample
