"""ETH/UCY pedestrian scenes: windows, an egocentric raster, and a domain-incremental stream
that visits the scenes one after another (OLiVia-Nav's lifelong setting).

The five scenes of the common protocol (:data:`SCENES`; univ = students001 + students003, as
Social-GAN's test split), 2.5 Hz: a frame every 10 ids, 0.4 s. A window is one pedestrian
(the ego) present at 8 + 12 consecutive frames: 8 observed (3.2 s, the inputs) and 12 to
predict (4.8 s). With it come the other pedestrians seen during those 20 frames, nearest
first (by their closest approach to the ego while observed), up to ``max_neighbours``: their
observed positions are inputs; their future positions are kept apart, for metrics such as
personal-space violation, and never reach the inputs.

:func:`eth_ucy_stream` turns the windows into multi-field batches (the input fields
:data:`~streamkd.trajectory.INPUTS`; targets in ``batch.targets``, the social-context
description in ``batch.meta["context"]``), scene after scene, each scene's last
``test_fraction`` of time held out; :func:`leave_one_scene_out` is the standard protocol
(train on the other scenes, test on every window of the held-out one). Training batches carry
the stream's clock (``meta["observed_until"]``, ``meta["known_at"]``): windows overlap in time,
so evaluate prequentially with delayed labels (:mod:`streamkd.delayed`, see
:class:`TrajectoryStream`). The window format (steps, raster geometry, input fields and their
schema) is defined in :mod:`streamkd.trajectory`, where networks read it too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from streamkd.data import find_data, reading
from streamkd.delayed import KNOWN as KNOWN_AT
from streamkd.delayed import OBSERVED as OBSERVED_UNTIL
from streamkd.social import Describer, RuleDescriber
from streamkd.streams.split import BatchCursor
from streamkd.trajectory import (
    OBSERVED,
    PREDICTED,
    RASTER_CELL,
    RASTER_CELLS,
    RASTER_CHANNELS,
    STEP_SECONDS,
    heading,
    schema,
    to_ego,
)
from streamkd.types import Batch, Schema, Segment, take

SCENES: dict[str, tuple[str, ...]] = {
    "eth": ("biwi_eth",),
    "hotel": ("biwi_hotel",),
    "univ": ("students001", "students003"),
    "zara1": ("crowds_zara01",),
    "zara2": ("crowds_zara02",),
}
TRAINING_ONLY: dict[str, tuple[str, ...]] = {
    "zara3": ("crowds_zara03",),
    "uni_examples": ("uni_examples",),
}
"""Recordings that belong to no test scene; :func:`leave_one_scene_out` trains on them."""
FRAME_STEP = 10  # frame ids between two samples (0.4 s)


@dataclass
class Windows:
    """Windows of one recording; ``n`` windows, ``m`` neighbour slots."""

    past: np.ndarray  # (n, 8, 2) the ego's observed positions, metres
    future: np.ndarray  # (n, 12, 2) the ego's positions to predict
    neighbours_past: np.ndarray  # (n, m, 8, 2), 0 where absent
    neighbours_future: np.ndarray  # (n, m, 12, 2), 0 where absent (never an input)
    present: np.ndarray  # (n, m, 20) bool: the neighbour is seen at that frame
    ego: np.ndarray  # (n,) pedestrian id
    start: np.ndarray  # (n,) frame id of the first observed step
    goal: np.ndarray  # (n, 2) where the ego's track ends in the recording: its destination
    full_others: np.ndarray  # (n,) other pedestrians present at all 20 frames (any distance)
    time: np.ndarray  # (n,) the scene's clock at the first observed step (see scene_windows)


def load_tracks(path: str | Path) -> np.ndarray:
    """``frame, pedestrian, x, y`` rows of one recording, sorted by frame then pedestrian."""
    with reading(Path(path)):
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if rows.shape[1] != 4:
        raise ValueError(
            f"{path}: expected 4 columns (frame, pedestrian, x, y), got {rows.shape[1]}"
        )
    return rows[np.lexsort((rows[:, 1], rows[:, 0]))]


def scene_files(scene: str, data_dir: str | Path | None = None) -> list[Path]:
    """The recordings of ``scene`` (a key of :data:`SCENES` or :data:`TRAINING_ONLY`) under
    ``eth_ucy/``."""
    recordings = {**SCENES, **TRAINING_ONLY}
    if scene not in recordings:
        raise ValueError(
            f"unknown ETH/UCY scene {scene!r}; expected one of {', '.join(recordings)}"
        )
    folder = find_data("eth_ucy", data_dir, markers=("biwi_eth.txt",))
    return [folder / f"{name}.txt" for name in recordings[scene]]


def windows(
    rows: np.ndarray,
    observed: int = OBSERVED,
    predicted: int = PREDICTED,
    max_neighbours: int = 16,
    stride: int = 1,
    collapse_gaps: bool = False,
) -> Windows:
    """Every window of ``observed + predicted`` consecutive frames (a frame every
    :data:`FRAME_STEP` ids) in which the ego is present throughout, starting every ``stride``
    frames. ``collapse_gaps`` treats the recording's distinct frame ids as consecutive steps,
    as Social-GAN's loader does (eth has gaps of up to 600 ids that it reads as one step; its
    ``start`` ids are then the relabelled ones): only for comparing with numbers published
    under that protocol."""
    length = observed + predicted
    frames = rows[:, 0]
    if collapse_gaps:
        ids, slot = np.unique(frames, return_inverse=True)
        frames = ids[0] + slot * FRAME_STEP  # relabelled consecutively
    elif np.any((frames - frames.min()) % FRAME_STEP):
        raise ValueError(f"frame ids must step by {FRAME_STEP}")
    slot = ((frames - frames.min()) // FRAME_STEP).astype(np.int64)
    peds, who = np.unique(rows[:, 1], return_inverse=True)
    grid = np.full((len(peds), int(slot.max()) + 1, 2), np.nan)
    grid[who, slot] = rows[:, 2:4]
    seen = ~np.isnan(grid[..., 0])  # (peds, frames)
    last_seen = seen.shape[1] - 1 - np.argmax(seen[:, ::-1], axis=1)
    destination = grid[np.arange(len(peds)), last_seen]  # (peds, 2)
    # windows: the ego seen at all `length` frames from t
    if seen.shape[1] >= length:
        runs = np.lib.stride_tricks.sliding_window_view(seen, length, axis=1).all(-1)
        runs[:, np.arange(runs.shape[1]) % stride != 0] = False
        ego, start = np.nonzero(runs)
    else:
        ego = start = np.zeros(0, dtype=np.int64)
    parts = [
        _neighbours(grid, ego[i : i + 512], start[i : i + 512], length, observed, max_neighbours)
        for i in range(0, len(ego), 512)
    ]
    if parts:
        track, picked, present, full = (np.concatenate(p) for p in zip(*parts, strict=True))
    else:
        track = np.zeros((0, length, 2))
        picked = np.zeros((0, max_neighbours, length, 2))
        present = np.zeros((0, max_neighbours, length), dtype=bool)
        full = np.zeros(0, dtype=np.int64)
    return Windows(
        past=track[:, :observed].astype(np.float32),
        future=track[:, observed:].astype(np.float32),
        neighbours_past=picked[:, :, :observed].astype(np.float32),
        neighbours_future=picked[:, :, observed:].astype(np.float32),
        present=present,
        ego=peds[ego].astype(np.int64),
        start=(frames.min() + start * FRAME_STEP).astype(np.int64),
        goal=destination[ego].astype(np.float32),
        full_others=full.astype(np.int64),
        time=(frames.min() + start * FRAME_STEP).astype(np.int64),
    )


def _neighbours(grid, ego, start, length, observed, max_neighbours):
    """For windows (ego, start): the ego's track, the nearest other pedestrians' positions
    (0 where absent) and presence, padded to ``max_neighbours`` slots, and how many others
    are present throughout."""
    n = len(ego)
    steps = start[:, None] + np.arange(length)  # (n, length)
    track = grid[ego[:, None], steps]  # (n, length, 2)
    others = grid[:, steps].transpose(1, 0, 2, 3)  # (n, peds, length, 2)
    there = ~np.isnan(others[..., 0])
    there[np.arange(n), ego] = False
    gap = np.linalg.norm(others[:, :, :observed] - track[:, None, :observed], axis=-1)
    closest = np.where(there[:, :, :observed], gap, np.inf).min(-1)
    closest = np.where(there.any(-1), closest, np.nan)  # never seen in the window: dropped
    order = np.argsort(np.where(np.isnan(closest), np.inf, closest), axis=1, kind="stable")
    order = order[:, :max_neighbours]
    keep = np.take_along_axis(~np.isnan(closest), order, 1)  # (n, m)
    picked = np.take_along_axis(others, order[:, :, None, None], 1)
    present = np.take_along_axis(there, order[:, :, None], 1) & keep[:, :, None]
    picked = np.where(present[..., None], picked, 0.0)
    pad = max_neighbours - picked.shape[1]
    if pad > 0:
        picked = np.pad(picked, ((0, 0), (0, pad), (0, 0), (0, 0)))
        present = np.pad(present, ((0, 0), (0, pad), (0, 0)))
    return track, picked, present, there.all(-1).sum(1)


# -- the egocentric raster: the lightweight model's "image" ------------------------------------
# (its geometry, RASTER_CELLS, RASTER_CELL and RASTER_CHANNELS, is in streamkd.trajectory)


def rasterize(
    past: Tensor,
    neighbours: Tensor,
    seen: Tensor,
    cells: int = RASTER_CELLS,
    cell: float = RASTER_CELL,
) -> Tensor:
    """A bird's-eye raster per sample, in the ego frame (the ego at the centre, walking
    toward +x, columns along x, rows along y), from observed positions only:

    * ``occupancy`` -- people at the last observed step (a count per cell);
    * ``velocity_x`` / ``velocity_y`` -- their velocity there, m/s, in the ego frame (summed);
    * ``trails`` -- everyone's observed positions, weighted ``(t + 1) / steps`` (recent ones
      heavier);
    * ``ego_path`` -- the ego's own observed path, weighted the same way.

    ``past`` (n, steps, 2), ``neighbours`` (n, m, steps, 2), ``seen`` (n, m, steps) bool.
    Returns (n, 5, cells, cells) float32.
    """
    n, steps = past.shape[:2]
    past, neighbours = past.double(), neighbours.double()
    origin, direction = past[:, -1], heading(past)
    nb = to_ego(neighbours, origin, direction)
    own = to_ego(past, origin, direction)
    out = torch.zeros(n * len(RASTER_CHANNELS) * cells * cells, dtype=torch.float64)
    weight = (torch.arange(steps, dtype=torch.float64) + 1) / steps

    def splat(points: Tensor, keep: Tensor, channel: int, value: Tensor) -> None:
        col = torch.floor(points[..., 0] / cell + cells / 2).long()
        row = torch.floor(points[..., 1] / cell + cells / 2).long()
        keep = keep & (col >= 0) & (col < cells) & (row >= 0) & (row < cells)
        sample = torch.arange(n).reshape((n,) + (1,) * (points.dim() - 2)).expand_as(col)
        flat = ((sample * len(RASTER_CHANNELS) + channel) * cells + row) * cells + col
        out.index_put_((flat[keep],), value.expand_as(col)[keep].double(), accumulate=True)

    now, now_seen = nb[:, :, -1], seen[:, :, -1]
    moved = now_seen & seen[:, :, -2]
    velocity = torch.where(moved[..., None], (nb[:, :, -1] - nb[:, :, -2]) / STEP_SECONDS, 0.0)
    splat(now, now_seen, 0, torch.ones(()))
    splat(now, moved, 1, velocity[..., 0])
    splat(now, moved, 2, velocity[..., 1])
    splat(nb, seen, 3, weight)
    splat(own, torch.ones(own.shape[:2], dtype=torch.bool), 4, weight)
    return out.reshape(n, len(RASTER_CHANNELS), cells, cells).float()


# -- multi-field batches, scene after scene ----------------------------------------------------
# (the input fields, INPUTS, and their declaration, schema(), are in streamkd.trajectory)
GOALS = ("none", "destination")
TARGETS = ("future", "neighbours_future", "neighbours_future_seen")
"""What is predicted or scored against, in ``batch.targets``; never an input."""


@dataclass
class SceneSamples:
    """One scene's windows as tensors: inputs, targets and descriptions, in time order."""

    name: str
    x: dict[str, Tensor]
    targets: dict[str, Tensor]
    context: list[str]
    ego: Tensor  # (n,) pedestrian ids
    start: Tensor  # (n,) frame id of each window's first observed step
    time: Tensor | None = None  # (n,) the scene's clock there (scene_windows); None: start

    def __len__(self) -> int:
        return len(self.context)

    def batch(self, index: slice | Tensor, segment: int | None = None) -> Batch:
        """Rows ``index`` as a batch; ``meta`` carries ``context``, ``scene``, ``ego`` and
        ``start`` (which window of the recording each row is)."""
        rows = range(len(self))[index] if isinstance(index, slice) else index.tolist()
        return Batch(
            x=take(self.x, index),
            segment=segment,
            targets=take(self.targets, index),
            meta={
                "context": [self.context[i] for i in rows],
                "scene": self.name,
                "ego": self.ego[index],
                "start": self.start[index],
            },
        )


def scene_samples(
    name: str,
    w: Windows,
    describer: Describer,
    observed: int = OBSERVED,
    goal: str = "none",
) -> SceneSamples:
    """Tensors of windows ``w`` (see :data:`~streamkd.trajectory.INPUTS`, :data:`TARGETS`),
    described; ``goal`` as in :func:`eth_ucy_stream`."""
    if goal not in GOALS:
        raise ValueError(f"unknown goal {goal!r}; expected one of {GOALS}")
    past = torch.from_numpy(w.past)
    neighbours = torch.from_numpy(w.neighbours_past)
    seen = torch.from_numpy(w.present[:, :, :observed])
    destination = torch.from_numpy(w.goal) if goal == "destination" else None
    x = {
        "past": past,
        "neighbours": neighbours,
        "neighbours_seen": seen,
        "raster": rasterize(past, neighbours, seen),
    }
    if destination is not None:
        x["goal"] = destination
    targets = {
        "future": torch.from_numpy(w.future),
        "neighbours_future": torch.from_numpy(w.neighbours_future),
        "neighbours_future_seen": torch.from_numpy(w.present[:, :, observed:]),
    }
    context = describer.describe(past, neighbours, seen, destination) if len(past) else []
    ego, start = torch.from_numpy(w.ego), torch.from_numpy(w.start)
    return SceneSamples(name, x, targets, list(context), ego, start, torch.from_numpy(w.time))


def _join(parts: list[Windows]) -> Windows:
    return Windows(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in Windows.__annotations__)
    )


def _select(w: Windows, keep: np.ndarray) -> Windows:
    return Windows(*(getattr(w, f)[keep] for f in Windows.__annotations__))


def scene_windows(
    scene: str,
    data_dir: str | Path | None = None,
    *,
    max_neighbours: int = 16,
    stride: int = 1,
    test_fraction: float = 0.0,
    social_gan: bool = False,
) -> tuple[Windows, Windows]:
    """``(train, test)`` windows of one scene, each in time order (recording by recording).
    Each recording's last ``test_fraction`` of frames is held out: train windows end before
    the cut, test windows start at or after it, so no frame is in both. ``social_gan``
    windows the recordings as Social-GAN's loader does, to compare with published numbers:
    frame gaps collapsed (see :func:`windows`), and only windows in which another pedestrian
    is also present for all 20 frames (it holds out whole scenes: no ``test_fraction``).

    ``time`` is the scene's clock, in frame ids: the recordings laid end to end in the order
    of :data:`SCENES` (univ's students003 begins a frame after students001 ends), so that
    windows of different recordings never overlap in time; for one recording it is
    ``start``."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    if social_gan and test_fraction:
        raise ValueError("social_gan windows hold out whole scenes: test_fraction must be 0")
    train, test = [], []
    ended = None  # the clock at the previous recording's last frame
    for path in scene_files(scene, data_dir):
        rows = load_tracks(path)
        w = windows(rows, max_neighbours=max_neighbours, stride=stride, collapse_gaps=social_gan)
        frames = np.unique(rows[:, 0])  # relabelled consecutively with social_gan
        first, last = int(frames[0]), int(frames[0] + (len(frames) - 1) * FRAME_STEP)
        if not social_gan:
            last = int(frames[-1])
        shift = 0 if ended is None else ended + FRAME_STEP - first
        w.time = w.time + shift
        ended = last + shift
        if social_gan:
            w = _select(w, w.full_others > 0)
        w = _select(w, np.lexsort((w.ego, w.start)))  # time order, then pedestrian
        first, last = rows[0, 0], rows[-1, 0]
        cut = first + (1.0 - test_fraction) * (last - first) if test_fraction else np.inf
        end = w.start + (OBSERVED + PREDICTED - 1) * FRAME_STEP
        train.append(_select(w, end < cut))
        test.append(_select(w, w.start >= cut))
    return _join(train), _join(test)


class TrajectoryStream(BatchCursor):
    """A single pass over scenes, one segment each, with ``position()`` / ``seek()`` (the
    :class:`~streamkd.types.Stream` protocol). Batches carry
    :data:`~streamkd.trajectory.INPUTS` as fields, :data:`TARGETS` in ``batch.targets`` and
    the description in ``meta["context"]``; :meth:`held_out` gives a scene's test windows as
    one batch.

    **The stream's clock.** The scenes are laid end to end on one clock (frame ids: each
    scene's recordings end to end, see :func:`scene_windows`, and each scene begins a frame
    after the previous one's last window ends). Each batch's ``meta`` carries, per window,
    ``observed_until`` (the clock at its last observed step) and ``known_at`` (at its last
    step to predict: when its future has happened). Windows start every 0.4 s and overlap,
    so learning a window as soon as it is scored teaches the model the next windows' futures.
    Evaluate prequentially with delayed labels instead
    (:func:`streamkd.delayed.delayed_prequential`): a window is scored at its
    ``observed_until`` by a model that has learned only windows whose ``known_at`` came
    before."""

    n_classes = 0  # regression targets, not classes

    def __init__(
        self,
        name: str,
        train: Sequence[SceneSamples],
        test: Sequence[SceneSamples],
        *,
        batch_size: int,
        max_neighbours: int,
        goal: str = "none",
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if goal not in GOALS:
            raise ValueError(f"unknown goal {goal!r}; expected one of {GOALS}")
        self.name, self.batch_size, self.goal = name, batch_size, goal
        self._train, self._test = list(train), list(test)
        self.schema = schema(max_neighbours, goal=goal == "destination")
        self.segments = [Segment(s.name, len(s)) for s in self._train]
        self._cut([len(s) for s in self._train], batch_size)
        self._clock = self._lay_end_to_end()

    def _lay_end_to_end(self) -> list[Tensor]:
        """Each segment's windows' first observed step on the stream's clock."""
        clock, ended, span = [], None, (OBSERVED + PREDICTED - 1) * FRAME_STEP
        for train, test in zip(self._train, self._test, strict=True):
            time = [s.start if s.time is None else s.time for s in (train, test)]
            every = torch.cat(time)
            shift = 0 if ended is None or not len(every) else ended + FRAME_STEP - int(every.min())
            clock.append(time[0] + shift)
            if len(every):
                ended = int(every.max()) + span + shift
        return clock

    @property
    def input_spec(self) -> Schema:
        return self.schema

    def __iter__(self) -> Iterator[Batch]:
        for i, a, b in self._batches():
            batch = self._train[i].batch(slice(a, b), segment=i)
            first = self._clock[i][a:b]
            batch.meta[OBSERVED_UNTIL] = first + (OBSERVED - 1) * FRAME_STEP
            batch.meta[KNOWN_AT] = first + (OBSERVED + PREDICTED - 1) * FRAME_STEP
            yield batch

    def scene(self, segment: int) -> SceneSamples:
        """All training windows of one segment (offline training: the joint upper bound)."""
        return self._train[segment]

    def held_out(self, segment: int) -> Batch:
        """The held-out windows of one segment as one batch."""
        return self._test[segment].batch(slice(None), segment=segment)

    def test_set(self, segment: int) -> None:
        """Trajectory segments have no class labels: use :meth:`held_out`."""
        return None

    def describe(self) -> dict:
        return {
            "stream": self.name,
            "segments": [s.name for s in self.segments],
            "samples": sum(s.n_train for s in self.segments),
            "held_out": [len(t) for t in self._test],
            "batch_size": self.batch_size,
            "fields": {k: f.describe() for k, f in self.schema.items()},
        }


def eth_ucy_stream(
    scenes: Sequence[str] = tuple(SCENES),
    *,
    data_dir: str | Path | None = None,
    batch_size: int = 16,
    stride: int = 1,
    test_fraction: float = 0.2,
    max_per_segment: int | None = None,
    max_test_per_segment: int | None = None,
    max_neighbours: int = 16,
    describer: Describer | None = None,
    goal: str = "none",
    seed: int = 0,
) -> TrajectoryStream:
    """ETH/UCY as a domain-incremental stream: ``scenes`` in the order given, each in time
    order; the last ``test_fraction`` of each recording held out (:meth:`held_out`).
    ``stride`` takes every stride-th window start; ``max_per_segment`` keeps a scene's first
    windows; ``max_test_per_segment`` a seeded random subset of its held-out ones.
    ``describer`` writes ``meta["context"]`` (default :class:`RuleDescriber`).

    ``goal="destination"`` adds a ``goal`` input: where the ego's recorded track ends, the
    robot-navigation reading of a pedestrian (a robot knows where it is going). It is future
    information -- for 6% of zara1's windows it is the last position to predict -- so
    results with it do not compare with predictors that have no goal (constant velocity,
    Social-GAN). The default, ``"none"``, gives the inputs nothing after the last observed
    step."""
    if not scenes:
        raise ValueError("eth_ucy_stream needs at least one scene")
    if goal not in GOALS:
        raise ValueError(f"unknown goal {goal!r}; expected one of {GOALS}")
    for option, value in (
        ("max_per_segment", max_per_segment), ("max_test_per_segment", max_test_per_segment),
    ):  # fmt: skip
        if value is not None and value <= 0:
            raise ValueError(f"{option} must be positive, got {value}")
    describer = describer or RuleDescriber()
    rng = np.random.default_rng(seed)
    train, test = [], []
    for scene in scenes:
        fit, held = scene_windows(
            scene, data_dir, max_neighbours=max_neighbours, stride=stride,
            test_fraction=test_fraction,
        )  # fmt: skip
        if max_per_segment is not None:
            fit = _select(fit, np.arange(min(max_per_segment, len(fit.ego))))
        if max_test_per_segment is not None and len(held.ego) > max_test_per_segment:
            held = _select(held, np.sort(rng.permutation(len(held.ego))[:max_test_per_segment]))
        train.append(scene_samples(scene, fit, describer, goal=goal))
        test.append(scene_samples(scene, held, describer, goal=goal))
    return TrajectoryStream(
        "eth-ucy", train, test, batch_size=batch_size, max_neighbours=max_neighbours, goal=goal
    )


def leave_one_scene_out(
    test_scene: str,
    *,
    data_dir: str | Path | None = None,
    batch_size: int = 16,
    stride: int = 1,
    max_neighbours: int = 16,
    describer: Describer | None = None,
) -> tuple[TrajectoryStream, Batch]:
    """The standard ETH/UCY protocol (Social-GAN, Trajectron++, CVM): test on every window of
    ``test_scene``, windowed as Social-GAN's loader does (``social_gan`` in
    :func:`scene_windows`); train on the other four scenes and on the two recordings that
    belong to no test scene (:data:`TRAINING_ONLY`: zara3, uni_examples), a segment each,
    windowed at their true frame spacing (no gaps collapsed). No goal input."""
    if test_scene not in SCENES:
        raise ValueError(
            f"unknown ETH/UCY scene {test_scene!r}; expected one of {', '.join(SCENES)}"
        )
    describer = describer or RuleDescriber()
    others = [s for s in SCENES if s != test_scene] + list(TRAINING_ONLY)
    stream = eth_ucy_stream(
        others, data_dir=data_dir, batch_size=batch_size, stride=stride, test_fraction=0.0,
        max_neighbours=max_neighbours, describer=describer,
    )  # fmt: skip
    held, _ = scene_windows(test_scene, data_dir, max_neighbours=max_neighbours, social_gan=True)
    return stream, scene_samples(test_scene, held, describer).batch(slice(None))
