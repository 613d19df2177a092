"""Trajectory metrics for pedestrian prediction and social navigation (ETH/UCY).

Positions are metres, shaped ``(n, steps, 2)`` (one trajectory per sample) or
``(n, k, steps, 2)`` (``k`` candidates per sample). Every metric returns one value per
sample; average them for a table.

* :func:`ade` / :func:`fde` -- average / final displacement error (L2 distance);
* :func:`mse` -- mean over steps of the squared L2 distance;
* :func:`min_over_k` -- best-of-K ADE and FDE (Social-GAN's protocol: each minimum taken on
  its own);
* :func:`hausdorff` -- the symmetric Hausdorff distance between two paths as point sets;
* :func:`personal_space_violation` -- seconds the path spends within ``radius`` of another
  pedestrian's actual position at the same step (OLiVia-Nav's personal-space metric; 0.5 m).
"""

from __future__ import annotations

import torch
from torch import Tensor

STEP_SECONDS = 0.4  # ETH/UCY at 2.5 Hz


def _check(pred: Tensor, truth: Tensor) -> None:
    if pred.shape[-1] != 2 or truth.shape[-1] != 2 or pred.dim() < 2:
        raise ValueError(f"expected (..., steps, 2) positions, got {tuple(pred.shape)}")
    if pred.shape[-2:] != truth.shape[-2:]:
        raise ValueError(
            f"prediction and ground truth differ in steps: {tuple(pred.shape)} vs "
            f"{tuple(truth.shape)}"
        )


def ade(pred: Tensor, truth: Tensor) -> Tensor:
    """Mean L2 distance over the steps, per sample: (n, steps, 2) -> (n,)."""
    _check(pred, truth)
    return (pred - truth).norm(dim=-1).mean(-1)


def fde(pred: Tensor, truth: Tensor) -> Tensor:
    """L2 distance at the last step, per sample."""
    _check(pred, truth)
    return (pred[..., -1, :] - truth[..., -1, :]).norm(dim=-1)


def mse(pred: Tensor, truth: Tensor) -> Tensor:
    """Mean squared L2 distance over the steps, per sample (square metres)."""
    _check(pred, truth)
    return (pred - truth).pow(2).sum(-1).mean(-1)


def min_over_k(candidates: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
    """Best-of-K ``(minADE, minFDE)`` per sample: candidates (n, k, steps, 2), truth (n,
    steps, 2); each minimum over the K candidates is taken on its own."""
    if candidates.dim() != 4:
        raise ValueError(f"expected (n, k, steps, 2) candidates, got {tuple(candidates.shape)}")
    target = truth[:, None]
    return ade(candidates, target).min(1).values, fde(candidates, target).min(1).values


def hausdorff(pred: Tensor, truth: Tensor) -> Tensor:
    """Symmetric Hausdorff distance between the two paths' point sets, per sample."""
    _check(pred, truth)
    d = torch.cdist(pred, truth)  # (n, steps, steps)
    return torch.maximum(d.min(-1).values.amax(-1), d.min(-2).values.amax(-1))


def personal_space_violation(
    path: Tensor,
    others: Tensor,
    present: Tensor,
    radius: float = 0.5,
    step_seconds: float = STEP_SECONDS,
) -> Tensor:
    """Seconds within ``radius`` of another pedestrian, per sample.

    ``path`` (n, steps, 2) is the ego's path; ``others`` (n, m, steps, 2) the actual
    positions of up to ``m`` other pedestrians at the same steps; ``present`` (n, m, steps)
    says where they are known (padding and absent steps count as far away). A step counts once
    however many pedestrians are too close.
    """
    if others.dim() != 4 or others.shape[0] != path.shape[0] or others.shape[2:] != path.shape[1:]:
        raise ValueError(
            f"others must be (n, m, steps, 2) for a path of {tuple(path.shape)}, got "
            f"{tuple(others.shape)}"
        )
    if present.shape != others.shape[:3]:
        raise ValueError(f"present must be {tuple(others.shape[:3])}, got {tuple(present.shape)}")
    close = ((others - path[:, None]).norm(dim=-1) < radius) & present.bool()
    return close.any(1).sum(-1).to(path.dtype) * step_seconds
