"""ETH/UCY windows: 8 + 12 consecutive frames 0.4 s apart, taken from the real recordings;
neighbours nearest first; nothing of the future in the inputs (issue 14 groundwork)."""

from __future__ import annotations

import numpy as np
import pytest

from streamkd.data import DataNotFoundError
from streamkd.streams.eth_ucy import FRAME_STEP, load_tracks, scene_files, windows

try:
    ZARA1 = load_tracks(scene_files("zara1")[0])
except DataNotFoundError as err:
    pytest.skip(f"ETH/UCY not available: {err}", allow_module_level=True)


def test_a_two_walker_table_by_hand():
    frames = np.arange(0, 25 * FRAME_STEP, FRAME_STEP)  # 25 frames
    a = np.stack([frames, np.ones(25), frames / 10.0, np.zeros(25)], 1)  # 1 m a frame along x
    b = np.stack([frames[:10], np.full(10, 2.0), frames[:10] / 10.0, np.ones(10)], 1)  # 1 m away
    w = windows(np.concatenate([b, a]), max_neighbours=3)
    assert list(w.ego) == [1] * 6  # 25 - 20 + 1 windows, walker 2 is too short
    assert list(w.start) == list(frames[:6])
    assert w.past.shape == (6, 8, 2) and w.future.shape == (6, 12, 2)
    assert np.allclose(w.past[0, :, 0], np.arange(8)) and np.allclose(
        w.future[0, :, 0], np.arange(8, 20)
    )
    # walker 2 beside the ego for its 10 frames: window 0 sees it at steps 0-9, window 5 at 0-4
    assert w.present[0, 0].tolist() == [True] * 10 + [False] * 10
    assert w.present[5, 0].tolist() == [True] * 5 + [False] * 15
    assert np.allclose(w.neighbours_past[0, 0, :, 1], 1.0)
    assert not w.present[:, 1:].any() and np.all(w.neighbours_future[0, 0, 2:] == 0)


def test_windows_follow_the_recording_frame_by_frame():
    w = windows(ZARA1)
    assert len(w.ego) > 1000 and w.past.shape[1:] == (8, 2) and w.future.shape[1:] == (12, 2)
    table = {(int(f), int(p)): (x, y) for f, p, x, y in ZARA1}
    for i in [0, 17, len(w.ego) // 2, len(w.ego) - 1]:
        steps = w.start[i] + FRAME_STEP * np.arange(20)  # 0.4 s apart
        truth = np.array([table[(int(f), int(w.ego[i]))] for f in steps])
        assert np.allclose(np.concatenate([w.past[i], w.future[i]]), truth, atol=1e-5)


def test_neighbours_come_nearest_first_and_only_where_seen():
    w = windows(ZARA1, max_neighbours=8)
    seen = w.present[:, :, :8]
    gap = np.linalg.norm(w.neighbours_past - w.past[:, None], axis=-1)
    closest = np.where(seen, gap, np.inf).min(-1)  # (n, m)
    observed = seen.any(-1)
    for row in range(0, len(closest), 97):
        c = closest[row][observed[row]]
        assert np.all(np.diff(c) >= 0), c
    assert np.all(w.neighbours_past[~w.present[:, :, :8]] == 0)


def test_no_future_leaks_into_the_inputs():
    """Moving everyone after each window's observed frames leaves every input unchanged."""
    w = windows(ZARA1)
    i = len(w.ego) // 3
    last_observed = w.start[i] + 7 * FRAME_STEP
    moved = ZARA1.copy()
    later = moved[:, 0] > last_observed
    moved[later, 2:] += 3.0
    v = windows(moved)
    j = int(np.flatnonzero((v.ego == w.ego[i]) & (v.start == w.start[i]))[0])
    assert np.array_equal(v.past[j], w.past[i])
    assert np.array_equal(v.neighbours_past[j], w.neighbours_past[i])
    assert np.array_equal(v.present[j], w.present[i])
    assert not np.array_equal(v.future[j], w.future[i])


def test_unknown_scene_and_bad_frames_are_refused():
    with pytest.raises(ValueError, match="unknown ETH/UCY scene 'mall'"):
        scene_files("mall")
    bad = ZARA1[:50].copy()
    bad[0, 0] += 3
    with pytest.raises(ValueError, match="step by 10"):
        windows(bad)
