"""Segmented streams over in-memory tensors, and the shapes every dataset file shares.

Every benchmark stream here is a :class:`SegmentedStream`: an ordered list of segments
(tasks, for evaluation only), each with its training samples, shuffled once under the
seed, and an optional held-out set. Batches never straddle two segments.
:func:`class_split_stream` makes the factory of a class-incremental split from a dataset
loader (:func:`cached_loader`); :func:`chronological_stream` cuts time-ordered samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from streamkd.data import find_data
from streamkd.types import Batch, Inputs, Schema, Segment, take, validate_batch

Arrays = tuple[Tensor, Tensor, Tensor, Tensor]
"""Train inputs, train labels, test inputs, test labels."""
Loader = Callable[[str | Path | None], Arrays]


@dataclass
class SegmentData:
    """One segment's samples. ``transform`` (if any) is applied to each batch and test set."""

    name: str
    x: Inputs
    y: Tensor
    x_test: Inputs | None = None
    y_test: Tensor | None = None
    transform: Callable[[Inputs], Inputs] | None = None


class BatchCursor:
    """Where a single pass over segments cut into batches stands: each batch's ``(segment,
    start, end)`` rows, ``position()`` (batches yielded so far) and ``seek()``. Streams that
    cut segments this way (:class:`SegmentedStream`, the ETH/UCY stream) share it."""

    def _cut(self, lengths: Sequence[int], batch_size: int) -> None:
        self._bounds: list[tuple[int, int, int]] = [
            (i, start, min(start + batch_size, n))
            for i, n in enumerate(lengths)
            for start in range(0, n, batch_size)
        ]
        self._pos = 0

    def __len__(self) -> int:
        """Number of batches in one pass."""
        return len(self._bounds)

    def position(self) -> int:
        return self._pos

    def seek(self, position: int) -> None:
        if not 0 <= position <= len(self._bounds):
            raise ValueError(f"position {position} is outside the stream (0..{len(self._bounds)})")
        self._pos = int(position)

    def _batches(self) -> Iterator[tuple[int, int, int]]:
        """The ``(segment, start, end)`` of each batch from the current position on."""
        while self._pos < len(self._bounds):
            bounds = self._bounds[self._pos]
            self._pos += 1
            yield bounds


class SegmentedStream(BatchCursor):
    """A single-pass stream over segments of tensors, with ``position()`` / ``seek()``.

    Attributes describe the inputs so models can be built for them: ``input_shape`` (per
    sample; for multi-field inputs, a dict of tensors, ``schema`` declares each field and
    ``input_shape`` is ``None``), ``n_classes``, ``mean`` / ``std`` (normalisation),
    ``default_arch``.
    ``max_per_segment`` keeps that many training samples of each segment (held-out sets stay
    whole unless ``max_test_per_segment`` also cuts them, to a seeded random subset): a
    faithful small slice of a long benchmark.
    """

    def __init__(
        self,
        name: str,
        segments: Sequence[SegmentData],
        *,
        batch_size: int = 10,
        seed: int = 0,
        shuffle: bool = True,
        n_classes: int | None = None,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        default_arch: str = "mlp",
        max_per_segment: int | None = None,
        max_test_per_segment: int | None = None,
        schema: Schema | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not segments:
            raise ValueError("a stream needs at least one segment")
        self.name = name
        self.batch_size = batch_size
        self.seed = seed
        self._data = list(segments)
        if shuffle:
            rng = np.random.default_rng(seed)
            for seg in self._data:
                perm = torch.from_numpy(rng.permutation(len(seg.y)))
                seg.x, seg.y = take(seg.x, perm), seg.y[perm]
        if max_test_per_segment is not None and max_test_per_segment <= 0:
            raise ValueError(f"max_test_per_segment must be positive, got {max_test_per_segment}")
        if max_per_segment is not None:
            if max_per_segment <= 0:
                raise ValueError(f"max_per_segment must be positive, got {max_per_segment}")
            for seg in self._data:  # a seeded random subset when shuffled, else the first ones
                seg.x, seg.y = take(seg.x, slice(max_per_segment)), seg.y[:max_per_segment]
        self.segments = [
            Segment(s.name, len(s.y), tuple(sorted(set(s.y.tolist())))) for s in self._data
        ]
        labels = torch.cat([s.y for s in self._data])
        self.n_classes = int(n_classes if n_classes is not None else int(labels.max()) + 1)
        first = self._first_input()
        if isinstance(first, dict) != (schema is not None):
            raise ValueError(
                f"stream {name!r}: multi-field inputs need a schema, tensor inputs take none"
            )
        self.schema = dict(schema) if schema is not None else None
        self.input_shape = None if schema is not None else tuple(first.shape[1:])
        for seg in self._data:  # a declared schema is checked against the data once, here
            for part in (seg.x, seg.x_test):
                if schema is not None and part is not None:
                    # a transformed segment is checked on its first row as batches get it
                    whole = seg.transform is None
                    validate_batch(
                        Batch(part if whole else seg.transform(take(part, slice(1)))), self.schema
                    )
        self.mean, self.std, self.default_arch = tuple(mean), tuple(std), default_arch
        self._cut([len(seg.y) for seg in self._data], batch_size)
        self.max_test_per_segment = max_test_per_segment
        self._test_cache: dict[int, tuple[Tensor, Tensor] | None] = {}

    @property
    def input_spec(self) -> tuple[int, ...] | Schema | None:
        return self.schema if self.schema is not None else self.input_shape

    def _first_input(self) -> Inputs:
        seg = self._data[0]
        x = take(seg.x, slice(1))
        return seg.transform(x) if seg.transform else x

    @property
    def n_samples(self) -> int:
        return sum(s.n_train for s in self.segments)

    def __iter__(self) -> Iterator[Batch]:
        for seg_id, start, end in self._batches():
            seg = self._data[seg_id]
            x = take(seg.x, slice(start, end))
            if seg.transform is not None:
                x = seg.transform(x)
            yield Batch(x=x, y=seg.y[start:end], segment=seg_id)

    def test_set(self, segment: int) -> tuple[Tensor, Tensor] | None:
        """The held-out inputs and labels of one segment (``None`` if it has none)."""
        if segment not in self._test_cache:
            seg = self._data[segment]
            if seg.x_test is None or seg.y_test is None:
                self._test_cache[segment] = None
            else:
                x, y = seg.x_test, seg.y_test
                if self.max_test_per_segment is not None and len(y) > self.max_test_per_segment:
                    rng = np.random.default_rng(self.seed + 1000 + segment)
                    keep = torch.from_numpy(rng.permutation(len(y))[: self.max_test_per_segment])
                    x, y = take(x, keep), y[keep]
                x = seg.transform(x) if seg.transform else x
                self._test_cache[segment] = (x, y)
        return self._test_cache[segment]

    def describe(self) -> dict:
        return {
            "stream": self.name,
            "segments": len(self.segments),
            "samples": self.n_samples,
            "batch_size": self.batch_size,
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
            **(
                {"fields": {k: f.describe() for k, f in self.schema.items()}}
                if self.schema is not None
                else {}
            ),
            "n_classes": self.n_classes,
        }


def class_order(n_classes: int, order: str | Sequence[int], seed: int) -> list[int]:
    """``"seeded"``: a permutation drawn from ``seed``; ``"fixed"``: 0..n-1; or an explicit list."""
    if isinstance(order, str):
        if order == "fixed":
            return list(range(n_classes))
        if order == "seeded":
            return np.random.default_rng(seed).permutation(n_classes).tolist()
        raise ValueError(f"unknown class order {order!r}; expected 'seeded', 'fixed' or a list")
    order = [int(c) for c in order]
    if sorted(order) != list(range(n_classes)):
        raise ValueError(f"class order {order} is not a permutation of 0..{n_classes - 1}")
    return order


def cached_loader(
    subdir: str, read: Callable[[Path], Arrays], markers: tuple[str, ...] = ()
) -> Loader:
    """``load(data_dir=None)``: ``read`` the folder :func:`find_data` resolves for ``subdir``
    (or one of its ``markers`` layouts), once per folder and process."""
    cached = lru_cache(maxsize=2)(read)

    def load(data_dir: str | Path | None = None) -> Arrays:
        return cached(find_data(subdir, data_dir, markers=markers))

    load.__name__ = load.__qualname__ = f"load_{subdir}"
    load.__doc__ = read.__doc__
    return load


def class_split_stream(
    name: str,
    load: Loader,
    *,
    segments: int = 5,
    default_arch: str = "mlp",
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
) -> Callable[..., SegmentedStream]:
    """The factory of the class-incremental stream ``name`` over ``load(data_dir)``: the
    classes, in ``order``, are dealt into ``n_segments`` equal groups; each segment holds the
    train and test samples of its classes. The other arguments are the stream's defaults."""

    def factory(
        seed: int = 0,
        batch_size: int = 10,
        data_dir: str | Path | None = None,
        n_segments: int = segments,
        order: str | Sequence[int] = "seeded",
        max_per_segment: int | None = None,
        max_test_per_segment: int | None = None,
    ) -> SegmentedStream:
        x, y, x_test, y_test = load(data_dir)
        n_classes = int(y.max()) + 1
        if n_segments <= 0 or n_classes % n_segments:
            raise ValueError(
                f"{n_classes} classes cannot be split into {n_segments} equal segments"
            )
        classes = class_order(n_classes, order, seed)
        per = n_classes // n_segments
        parts = []
        for i in range(n_segments):
            group = torch.tensor(classes[i * per : (i + 1) * per])
            tr, te = torch.isin(y, group), torch.isin(y_test, group)
            label = "-".join(str(c) for c in group.tolist())
            parts.append(SegmentData(f"classes {label}", x[tr], y[tr], x_test[te], y_test[te]))
        return SegmentedStream(
            name,
            parts,
            batch_size=batch_size,
            seed=seed,
            n_classes=n_classes,
            default_arch=default_arch,
            mean=mean,
            std=std,
            max_per_segment=max_per_segment,
            max_test_per_segment=max_test_per_segment,
        )

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = f"{name}: the classes dealt into ``n_segments`` (default {segments})."
    return factory


def period_bounds(n: int, n_segments: int) -> list[int]:
    """Where :func:`chronological_stream` cuts ``n`` time-ordered samples: ``n_segments + 1``
    bounds, equal periods."""
    if n_segments <= 0:
        raise ValueError(f"n_segments must be positive, got {n_segments}")
    return np.linspace(0, n, n_segments + 1).astype(int).tolist()


def batch_starts(bounds: list[int], batch_size: int) -> np.ndarray:
    """The row at which each row's batch starts in a :func:`chronological_stream` cut at
    ``bounds``: batches start at each period's start, then every ``batch_size`` rows. A
    row's features may use what lies before its batch start (labels revealed by then)."""
    rows = np.arange(bounds[-1])
    starts = np.asarray(bounds[:-1])[np.searchsorted(bounds[1:], rows, side="right")]
    return starts + (rows - starts) // batch_size * batch_size


def chronological_stream(
    name: str,
    x: Inputs,
    y: Tensor,
    *,
    n_segments: int,
    seed: int = 0,
    batch_size: int = 10,
    n_classes: int | None = None,
    max_per_segment: int | None = None,
    unit: str = "rows",
    schema: Schema | None = None,
    transform: Callable[[Inputs], Inputs] | None = None,
) -> SegmentedStream:
    """Time-ordered samples cut into ``n_segments`` equal periods, never shuffled and with no
    held-out set; ``max_per_segment`` keeps the first samples of each period. ``transform``
    maps each batch's stored inputs to what the learner gets (e.g. row ids to fields)."""
    bounds = period_bounds(len(y), n_segments)
    segments = [
        SegmentData(f"{unit} {a}-{b - 1}", take(x, slice(a, b)), y[a:b], transform=transform)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return SegmentedStream(
        name,
        segments,
        batch_size=batch_size,
        seed=seed,
        shuffle=False,
        n_classes=n_classes,
        default_arch="mlp",
        max_per_segment=max_per_segment,
        schema=schema,
    )
