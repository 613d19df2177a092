"""Elec2: the electricity-market concept-drift stream (45,312 rows, binary UP/DOWN).

Read from ``elec2/elec.csv`` under the data directory, in its original time order (never
shuffled). No held-out set: score it prequentially. It is cut into ``n_segments``
chronological segments only so curves and logs can be read per period.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from streamkd.data import find_data
from streamkd.streams.split import SegmentData, SegmentedStream

FEATURES = ("period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer")


def load_elec2(data_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    file = find_data("elec2", data_dir) / "elec.csv"
    if not file.exists():
        raise FileNotFoundError(f"expected {file}")
    table = np.genfromtxt(file, delimiter=",", names=True, dtype=None, encoding="utf-8")
    x = np.stack([table[f].astype(np.float32) for f in FEATURES], axis=1)
    raw = table["class"]
    y = (raw == "UP") if raw.dtype.kind in "US" else raw.astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64))


def elec2(seed: int = 0, batch_size: int = 10, data_dir=None, n_segments: int = 4, **_):
    x, y = load_elec2(data_dir)
    bounds = np.linspace(0, len(y), n_segments + 1).astype(int)
    segments = [
        SegmentData(f"rows {a}-{b - 1}", x[a:b], y[a:b])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return SegmentedStream(
        "elec2",
        segments,
        batch_size=batch_size,
        seed=seed,
        shuffle=False,
        n_classes=2,
        default_arch="mlp",
    )
