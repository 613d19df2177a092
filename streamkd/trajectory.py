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
  pedestrian's actual position at the same step (OLiVia-Nav's personal-space metric; 0.5 m;
  1.2 m is the edge of Hall's personal zone), optionally not counting some of them;
* :func:`companions` -- the neighbours walking with the ego, told from the observed steps
  only (so that personal space can leave them out: people walking together are close by
  choice).

The ETH/UCY sample format lives here too, so that networks and streams share it without
importing each other: a window of :data:`OBSERVED` + :data:`PREDICTED` steps
:data:`STEP_SECONDS` apart, the egocentric raster's geometry (:data:`RASTER_CELLS`,
:data:`RASTER_CELL`, :data:`RASTER_CHANNELS`) and the input fields (:data:`INPUTS`,
declared by :func:`schema`). :mod:`streamkd.streams.eth_ucy` makes them from the recordings.
"""

from __future__ import annotations

import torch
from torch import Tensor

from streamkd.types import Field, Schema

STEP_SECONDS = 0.4  # ETH/UCY at 2.5 Hz
OBSERVED, PREDICTED = 8, 12

# -- the egocentric raster: the lightweight model's "image" ------------------------------------
RASTER_CELLS = 25  # cells per side, odd: the ego sits in the middle of the centre cell
RASTER_CELL = 0.5  # metres per cell: 12.5 m x 12.5 m around the ego
RASTER_CHANNELS = ("occupancy", "velocity_x", "velocity_y", "trails", "ego_path")

# -- the input fields of a window --------------------------------------------------------------
INPUTS = ("past", "neighbours", "neighbours_seen", "raster")
"""The input fields: the ego's observed path, its neighbours' observed paths and where they
are known, and the raster (world metres). With ``goal="destination"`` a ``goal`` field joins
them (see :func:`streamkd.streams.eth_ucy.eth_ucy_stream`)."""


def schema(max_neighbours: int = 16, observed: int = OBSERVED, goal: bool = False) -> Schema:
    """The declaration of :data:`INPUTS` (and ``goal`` if asked) for ``max_neighbours``
    neighbour slots."""
    m, cells = max_neighbours, RASTER_CELLS
    fields = {
        "past": Field((observed, 2), torch.float32),
        "neighbours": Field((m, observed, 2), torch.float32),
        "neighbours_seen": Field((m, observed), torch.bool),
        "raster": Field((len(RASTER_CHANNELS), cells, cells), torch.float32),
    }
    if goal:
        fields["goal"] = Field((2,), torch.float32)
    return fields


def _check(pred: Tensor, truth: Tensor) -> None:
    if pred.shape[-1] != 2 or truth.shape[-1] != 2 or pred.dim() < 2:
        raise ValueError(f"expected (..., steps, 2) positions, got {tuple(pred.shape)}")
    if pred.shape[-2:] != truth.shape[-2:]:
        raise ValueError(
            f"prediction and ground truth differ in steps: {tuple(pred.shape)} vs "
            f"{tuple(truth.shape)}"
        )


def ade(pred: Tensor, truth: Tensor) -> Tensor:
    """Mean L2 distance over the steps, per sample: (n, steps, 2) -> (n,).

    Examples:
        >>> import torch
        >>> truth = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]])
        >>> pred = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]])
        >>> ade(pred, truth).tolist(), fde(pred, truth).tolist(), hausdorff(pred, truth).tolist()
        ([1.0], [2.0], [2.0])
        >>> [round(v, 4) for v in mse(pred, truth).tolist()]
        [1.6667]
    """
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
    steps, 2); each minimum over the K candidates is taken on its own.

    Examples:
        >>> import torch
        >>> truth = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
        >>> candidates = torch.stack([truth[0] + 1.0, truth[0]])[None]  # (1, 2, 2, 2)
        >>> [v.tolist() for v in min_over_k(candidates, truth)]  # the second one is exact
        [[0.0], [0.0]]
    """
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
    exclude: Tensor | None = None,
) -> Tensor:
    """Seconds within ``radius`` of another pedestrian, per sample.

    ``path`` (n, steps, 2) is the ego's path; ``others`` (n, m, steps, 2) the actual
    positions of up to ``m`` other pedestrians at the same steps; ``present`` (n, m, steps)
    says where they are known (padding and absent steps count as far away). A step counts once
    however many pedestrians are too close. ``exclude`` (n, m) bool names pedestrians not to
    count at all (e.g. :func:`companions`).

    Scored on recorded data this is open loop: the others' recorded paths reacted to the real
    pedestrian, not to the path scored, so it measures how close a path comes to where people
    actually were, not how a crowd would have answered it.

    Examples:
        A pedestrian standing 0.3 m beside the path's last step (2.5 Hz: 0.4 s a step):

        >>> import torch
        >>> path = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]])
        >>> others = torch.tensor([[2.0, 0.3]]).expand(3, 2)[None, None]  # (1, 1, 3, 2)
        >>> seconds = personal_space_violation(path, others, present=torch.ones(1, 1, 3))
        >>> [round(v, 4) for v in seconds.tolist()]
        [0.4]
    """
    if others.dim() != 4 or others.shape[0] != path.shape[0] or others.shape[2:] != path.shape[1:]:
        raise ValueError(
            f"others must be (n, m, steps, 2) for a path of {tuple(path.shape)}, got "
            f"{tuple(others.shape)}"
        )
    if present.shape != others.shape[:3]:
        raise ValueError(f"present must be {tuple(others.shape[:3])}, got {tuple(present.shape)}")
    present = present.bool()
    if exclude is not None:
        if exclude.shape != others.shape[:2]:
            raise ValueError(
                f"exclude must be {tuple(others.shape[:2])}, got {tuple(exclude.shape)}"
            )
        present = present & ~exclude.bool()[..., None]
    close = ((others - path[:, None]).norm(dim=-1) < radius) & present
    return close.any(1).sum(-1).to(path.dtype) * step_seconds


def companions(
    past: Tensor,
    neighbours: Tensor,
    seen: Tensor,
    distance: float = 1.5,
    speed: float = 0.5,
    min_steps: int = 4,
    step_seconds: float = STEP_SECONDS,
) -> Tensor:
    """Which neighbours walk with the ego, from the observed steps only: (n, m) bool.

    A neighbour is a companion when it is seen at ``min_steps`` or more of the observed steps,
    the last one included; it is within ``distance`` metres of the ego at every observed step
    it is seen; and its mean velocity from its first seen step to the last observed step
    differs from the ego's over the same steps by less than ``speed`` m/s: close together
    and moving alike for a while, as in group detection (Moussaïd et al. 2010, "The walking
    behaviour of pedestrian social groups"). Two people standing together count too.

    ``past`` (n, steps, 2) is the ego's observed path, ``neighbours`` (n, m, steps, 2) and
    ``seen`` (n, m, steps) its neighbours' observed positions and where they are known:
    nothing after the last observed step enters.

    Examples:
        One walks 0.6 m beside the ego at its pace, one passes 0.6 m away the other way:

        >>> import torch
        >>> t = torch.arange(8.0)[:, None] * 0.4
        >>> past = torch.cat([t, torch.zeros_like(t)], 1)[None]  # 1 m/s along x
        >>> beside = past[0] + torch.tensor([0.0, 0.6])
        >>> passing = torch.cat([2.8 - t, torch.full_like(t, 0.6)], 1)
        >>> seen = torch.ones(1, 2, 8, dtype=torch.bool)
        >>> companions(past, torch.stack([beside, passing])[None], seen).tolist()
        [[True, False]]
    """
    if past.dim() != 3 or neighbours.dim() != 4 or neighbours.shape[2:] != past.shape[1:]:
        raise ValueError(
            f"expected past (n, steps, 2) and neighbours (n, m, steps, 2), got "
            f"{tuple(past.shape)} and {tuple(neighbours.shape)}"
        )
    seen = seen.bool()
    steps = past.shape[1]
    gap = (neighbours - past[:, None]).norm(dim=-1)  # (n, m, steps)
    close = torch.where(seen, gap < distance, True).all(-1)
    enough = (seen.sum(-1) >= min_steps) & seen[:, :, -1]
    first = seen.float().argmax(-1)  # (n, m) the first seen step
    span = ((steps - 1 - first) * step_seconds).clamp_min(step_seconds)
    index = first[..., None, None].expand(-1, -1, 1, 2)
    start = neighbours.gather(2, index)[:, :, 0]
    mine = past[:, None].expand_as(neighbours).gather(2, index)[:, :, 0]
    theirs = (neighbours[:, :, -1] - start) / span[..., None]
    ego = (past[:, None, -1] - mine) / span[..., None]
    alike = (theirs - ego).norm(dim=-1) < speed
    return close & enough & alike


# -- the ego frame and the constant-velocity baseline ------------------------------------------
def heading(past: Tensor, min_step: float = 0.05) -> Tensor:
    """Unit walking direction per sample from the observed path (n, steps, 2): the last
    displacement, else the whole observed displacement when the last one is shorter than
    ``min_step`` metres (standing still), else +x."""
    last = past[:, -1] - past[:, -2]
    whole = past[:, -1] - past[:, 0]
    east = torch.zeros_like(last)
    east[:, 0] = 1.0
    step = last.norm(dim=-1, keepdim=True)
    span = whole.norm(dim=-1, keepdim=True)
    direction = torch.where(step >= min_step, last, torch.where(span >= min_step, whole, east))
    return direction / direction.norm(dim=-1, keepdim=True)


def to_ego(points: Tensor, origin: Tensor, direction: Tensor) -> Tensor:
    """World positions ``(n, ..., 2)`` in each sample's ego frame: origin at ``origin`` (n, 2),
    +x along ``direction`` (n, 2, unit), +y to its left."""
    shape = (len(points),) + (1,) * (points.dim() - 2) + (2,)
    c, s = direction[:, 0].reshape(shape[:-1]), direction[:, 1].reshape(shape[:-1])
    d = points - origin.reshape(shape)
    return torch.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)


def from_ego(points: Tensor, origin: Tensor, direction: Tensor) -> Tensor:
    """The inverse of :func:`to_ego`: ego-frame positions back to world positions."""
    shape = (len(points),) + (1,) * (points.dim() - 2) + (2,)
    c, s = direction[:, 0].reshape(shape[:-1]), direction[:, 1].reshape(shape[:-1])
    x, y = points[..., 0], points[..., 1]
    return torch.stack([c * x - s * y, s * x + c * y], -1) + origin.reshape(shape)


def constant_velocity(past: Tensor, steps: int = 12) -> Tensor:
    """The constant-velocity model (Schöller et al. 2020, "What the constant velocity model
    can teach us about pedestrian motion prediction"): the last observed displacement repeated
    for ``steps`` steps, from the last observed position. ``past`` (..., observed, 2).

    Examples:
        >>> import torch
        >>> past = torch.tensor([[[0.0, 0.0], [0.5, 0.25]]])
        >>> constant_velocity(past, steps=3).tolist()
        [[[1.0, 0.5], [1.5, 0.75], [2.0, 1.0]]]
    """
    if past.shape[-1] != 2 or past.dim() < 2 or past.shape[-2] < 2:
        raise ValueError(f"expected (..., observed >= 2, 2) positions, got {tuple(past.shape)}")
    velocity = past[..., -1, :] - past[..., -2, :]
    ahead = torch.arange(1, steps + 1, dtype=past.dtype, device=past.device)
    return past[..., -1:, :] + ahead[:, None] * velocity[..., None, :]


def forgetting(errors: Tensor, over: str = "end") -> Tensor:
    """How much the error on each earlier scene grew once later scenes were learned.

    ``errors[i, j]`` is the error on scene ``j`` after learning scenes ``0..i`` (lower is
    better; a T x T matrix). ``over="end"``: ``errors[T-1, j] - errors[j, j]`` for ``j < T-1``
    (the increase by the end of the stream; minus GEM's backward transfer). ``over="all"``:
    the mean of ``errors[i, j] - errors[j, j]`` over every later ``i > j`` (also counts an
    increase that a later scene undid). Positive: forgotten; negative: later scenes helped.

    Examples:
        >>> import torch
        >>> errors = torch.tensor([[0.5, 0.9, 0.9], [0.7, 0.4, 0.8], [0.6, 0.5, 0.3]])
        >>> [round(v, 4) for v in forgetting(errors).tolist()]
        [0.1, 0.1]
        >>> [round(v, 4) for v in forgetting(errors, over="all").tolist()]  # 0.2 then 0.1
        [0.15, 0.1]
    """
    if errors.dim() != 2 or errors.shape[0] != errors.shape[1]:
        raise ValueError(f"expected a square (scenes x scenes) matrix, got {tuple(errors.shape)}")
    last = len(errors) - 1
    learned = errors.diagonal()[:last]
    if over == "end":
        return errors[last, :last] - learned
    if over == "all":
        later = torch.ones_like(errors, dtype=torch.bool).tril(-1)[:, :last]  # i > j
        grown = (errors[:, :last] - learned) * later
        return grown.sum(0) / later.sum(0)
    raise ValueError(f"over must be 'end' or 'all', got {over!r}")
