"""Elec2: the electricity-market concept-drift stream (45,312 rows, binary UP/DOWN).

Read from ``elec2/elec.csv`` under the data directory, in its original time order (never
shuffled). No held-out set: score it prequentially. It is cut into ``n_segments``
chronological segments only so curves and logs can be read per period; ``max_per_segment``
keeps the first rows of each period (a quick slice across the whole time span). No class
order and no held-out set, so ``order`` and ``max_test_per_segment`` are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from streamkd.data import find_data, reading, require_file
from streamkd.registry import STREAMS
from streamkd.streams.split import (
    SegmentedStream,
    batch_starts,
    chronological_stream,
    period_bounds,
)
from streamkd.types import Field, Inputs, Schema

FEATURES = ("period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer")


def load_elec2(data_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The six features (float32) and labels (1 = UP) of every row, in time order."""
    file = require_file(find_data("elec2", data_dir) / "elec.csv")
    with reading(file):
        table = np.genfromtxt(file, delimiter=",", names=True, dtype=None, encoding="utf-8")
        x = np.stack([table[f].astype(np.float32) for f in FEATURES], axis=1)
        raw = table["class"]
        y = (raw == "UP") if raw.dtype.kind in "US" else raw.astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64))


def _factory(name: str, inputs: Callable[..., tuple[Inputs, Schema | None]], doc: str):
    """The factory of one Elec2 stream; ``inputs(x, y, bounds, batch_size)`` shapes its
    inputs (the rows' features, or fields) and returns them with their schema."""

    def factory(
        seed: int = 0,
        batch_size: int = 10,
        data_dir: str | Path | None = None,
        max_per_segment: int | None = None,
        n_segments: int = 4,
    ) -> SegmentedStream:
        x, y = load_elec2(data_dir)
        bounds = period_bounds(len(y), n_segments)
        features, schema = inputs(x, y, bounds, batch_size)
        return chronological_stream(
            name,
            features,
            y,
            n_segments=n_segments,
            seed=seed,
            batch_size=batch_size,
            n_classes=2,
            max_per_segment=max_per_segment,
            schema=schema,
        )

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = doc
    return factory


elec2 = _factory(
    "elec2", lambda x, y, bounds, batch_size: (x, None), "The Elec2 rows in time order."
)
STREAMS.register(
    "elec2", elec2, help="Elec2 electricity market, binary, concept drift (prequential)"
)

HISTORY = 8  # labels before the row's batch in the "recent" field
FIELDS = {
    "period": Field((), torch.int64, num_ids=48),
    "market": Field((len(FEATURES) - 1,), torch.float32),
    "recent": Field((HISTORY,), torch.int64, num_ids=3),
}


def _fields(x: Tensor, y: Tensor, bounds: list[int], batch_size: int):
    period = torch.round(x[:, 0] * 47).long()
    batch_start = torch.from_numpy(batch_starts(bounds, batch_size))
    padded = torch.cat([torch.full((HISTORY,), 2, dtype=torch.long), y])
    recent = padded.unfold(0, HISTORY, 1)[batch_start].contiguous()  # y[start - 8 : start]
    return {"period": period, "market": x[:, 1:].contiguous(), "recent": recent}, FIELDS


elec2_fields = _factory(
    "elec2-fields",
    _fields,
    """Elec2 as multi-field batches (``FIELDS``): the half-hour ``period`` as an id (0-47),
    the five ``market`` features, and ``recent``: the last eight labels before the row's
    batch (ids 0/1; 2 before the stream starts). Every row of a batch shares them, so no
    row sees a label of its own batch, which test-then-train has not revealed yet.""",
)
STREAMS.register(
    "elec2-fields",
    elec2_fields,
    help="Elec2 as multi-field batches: period id, market features, last 8 labels",
)
