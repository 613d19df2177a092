"""Core data types: what flows from a stream into a strategy and back out."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

Inputs = Tensor | dict[str, Tensor]


class InvalidBatchError(ValueError):
    """A batch that a strategy refused before it touched the model or the buffer."""


@dataclass
class Batch:
    """One mini-batch of a stream.

    ``x`` is a tensor (images stay ``uint8`` until they reach the device) or a dict of tensors
    for multi-field data; ``y`` holds integer class labels and is ``None`` for predict-only
    traffic. ``segment`` names the evaluation segment (task) the batch belongs to; strategies
    must not rely on it. ``meta`` carries anything else (event ids, timestamps, raw text).
    """

    x: Inputs
    y: Tensor | None = None
    segment: int | None = None
    task: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        if isinstance(self.x, dict):
            return len(next(iter(self.x.values())))
        return len(self.x)


@dataclass
class StepResult:
    """What one ``observe()`` call did: the loss (a 0-d tensor, synced lazily) and its parts."""

    loss: Tensor
    n: int
    parts: dict[str, Tensor] = field(default_factory=dict)

    @property
    def loss_value(self) -> float:
        return float(self.loss)


@dataclass(frozen=True)
class Segment:
    """A contiguous part of a stream (a task, for evaluation only) and its held-out data."""

    name: str
    n_train: int
    classes: tuple[int, ...] = ()


@runtime_checkable
class Stream(Protocol):
    """An iterable of batches that can report and restore where it is.

    ``position()`` is the number of batches already yielded; ``seek(pos)`` makes the next
    iteration start at that batch, so a checkpoint can record exactly where learning stopped.
    """

    name: str
    segments: list[Segment]

    def __iter__(self) -> Iterator[Batch]: ...

    def position(self) -> int: ...

    def seek(self, position: int) -> None: ...

    def test_set(self, segment: int) -> tuple[Tensor, Tensor] | None: ...


def validate_batch(batch: Batch, input_shape: tuple[int, ...] | None) -> None:
    """Reject a malformed batch with a specific message (shape, dtype, NaN, labels).

    ``input_shape`` is the per-sample shape the model expects (``None`` skips that check).
    """
    if not isinstance(batch, Batch):
        raise InvalidBatchError(f"expected a streamkd Batch, got {type(batch).__name__}")
    x = batch.x
    if isinstance(x, dict):
        raise InvalidBatchError(
            "this strategy takes tensor inputs; got a dict of fields "
            f"({', '.join(x)}). Use a strategy built for multi-field inputs."
        )
    if not isinstance(x, Tensor):
        raise InvalidBatchError(f"batch.x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 0 or len(x) == 0:
        raise InvalidBatchError(f"batch.x is empty (shape {tuple(x.shape)})")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise InvalidBatchError(
            f"batch.x has per-sample shape {tuple(x.shape[1:])}, expected {tuple(input_shape)} "
            f"(full batch shape {tuple(x.shape)})"
        )
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise InvalidBatchError(f"batch.x contains NaN or infinite values in {bad} sample(s)")
    if x.dtype == torch.bool or x.is_complex():
        raise InvalidBatchError(f"batch.x has dtype {x.dtype}; expected uint8 or floating point")
    y = batch.y
    if y is None:
        return
    if not isinstance(y, Tensor):
        raise InvalidBatchError(f"batch.y must be a torch.Tensor, got {type(y).__name__}")
    if y.ndim != 1 or len(y) != len(x):
        raise InvalidBatchError(
            f"batch.y must be 1-D with one label per sample: got shape {tuple(y.shape)} "
            f"for {len(x)} inputs"
        )
    if y.is_floating_point() or y.dtype == torch.bool:
        raise InvalidBatchError(f"batch.y must hold integer class ids, got dtype {y.dtype}")
    lo = int(y.min())
    if lo < 0:
        raise InvalidBatchError(f"batch.y holds a negative class id ({lo}); ids must be >= 0")
