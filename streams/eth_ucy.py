"""ETH/UCY pedestrian scenes as fixed-length windows (issue 14 groundwork: the windows, not
yet the domain-incremental stream or the raster).

The five scenes of the common protocol (:data:`SCENES`; univ = students001 + students003, as
Social-GAN's test split), 2.5 Hz: a frame every 10 ids, 0.4 s. A window is one pedestrian
(the ego) present at 8 + 12 consecutive frames: 8 observed (3.2 s, the inputs) and 12 to
predict (4.8 s). With it come the other pedestrians seen during those 20 frames, nearest
first (by their closest approach to the ego while observed), up to ``max_neighbours``: their
observed positions are inputs; their future positions are kept apart, for metrics such as
personal-space violation, and never reach the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamkd.data import find_data, reading

SCENES: dict[str, tuple[str, ...]] = {
    "eth": ("biwi_eth",),
    "hotel": ("biwi_hotel",),
    "univ": ("students001", "students003"),
    "zara1": ("crowds_zara01",),
    "zara2": ("crowds_zara02",),
}
OBSERVED, PREDICTED = 8, 12
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
    """The recordings of ``scene`` (a key of :data:`SCENES`) under ``eth_ucy/``."""
    if scene not in SCENES:
        raise ValueError(f"unknown ETH/UCY scene {scene!r}; expected one of {', '.join(SCENES)}")
    folder = find_data("eth_ucy", data_dir, markers=("biwi_eth.txt",))
    return [folder / f"{name}.txt" for name in SCENES[scene]]


def windows(
    rows: np.ndarray,
    observed: int = OBSERVED,
    predicted: int = PREDICTED,
    max_neighbours: int = 16,
    stride: int = 1,
) -> Windows:
    """Every window of ``observed + predicted`` consecutive frames (a frame every
    :data:`FRAME_STEP` ids) in which the ego is present throughout, starting every ``stride``
    frames."""
    length = observed + predicted
    frames = rows[:, 0]
    if np.any((frames - frames.min()) % FRAME_STEP):
        raise ValueError(f"frame ids must step by {FRAME_STEP}")
    slot = ((frames - frames.min()) // FRAME_STEP).astype(np.int64)
    peds, who = np.unique(rows[:, 1], return_inverse=True)
    grid = np.full((len(peds), int(slot.max()) + 1, 2), np.nan)
    grid[who, slot] = rows[:, 2:4]
    seen = ~np.isnan(grid[..., 0])  # (peds, frames)
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
        track, picked, present = (np.concatenate(p) for p in zip(*parts, strict=True))
    else:
        track = np.zeros((0, length, 2))
        picked = np.zeros((0, max_neighbours, length, 2))
        present = np.zeros((0, max_neighbours, length), dtype=bool)
    return Windows(
        past=track[:, :observed].astype(np.float32),
        future=track[:, observed:].astype(np.float32),
        neighbours_past=picked[:, :, :observed].astype(np.float32),
        neighbours_future=picked[:, :, observed:].astype(np.float32),
        present=present,
        ego=peds[ego].astype(np.int64),
        start=(frames.min() + start * FRAME_STEP).astype(np.int64),
    )


def _neighbours(grid, ego, start, length, observed, max_neighbours):
    """For windows (ego, start): the ego's track and the nearest other pedestrians' positions
    (0 where absent) and presence, padded to ``max_neighbours`` slots."""
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
    return track, picked, present
