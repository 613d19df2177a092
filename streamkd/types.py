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
    ``targets`` holds what a regression learner must predict and never sees as input (the
    future positions of a trajectory stream), field by field, one row per sample.
    """

    x: Inputs
    y: Tensor | None = None
    segment: int | None = None
    task: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return inputs_len(self.x)


@dataclass
class ValidBatch(Batch):
    """A batch a learner has checked (:meth:`streamkd.strategy.Strategy.validate`), with its
    inputs' device copy, made once for both the prediction and ``observe()``.

    ``contract`` is what it was checked against (the inputs' shape or fields, the label cap,
    the dtype learned so far): a learner takes it unchecked only under the same contract, and
    checks it again otherwise. It is a value handed from the check to its users, not a mark on
    the tensors: change its tensors in place after the check and the check no longer holds.
    Only :meth:`~streamkd.strategy.Strategy.validate` sets the contract: a copy made with
    ``dataclasses.replace`` (other inputs) has none, and is checked again.
    """

    contract: tuple = field(default=(), init=False)
    _copies: dict[str, Inputs] = field(default_factory=dict, init=False, repr=False, compare=False)

    def on(self, device: torch.device | str) -> Inputs:
        """The inputs on ``device``, copied once (pinned and non-blocking to a GPU)."""
        key = str(device)
        if key not in self._copies:
            self._copies[key] = to_device(self.x, torch.device(device))
        return self._copies[key]

    def labels_on(self, device: torch.device | str) -> Tensor:
        """The labels on ``device``, copied once (pinned and non-blocking to a GPU), for both
        the prediction's hits and ``observe()``; raises if there are none."""
        if self.y is None:
            raise InvalidBatchError("this batch has no labels (batch.y is None)")
        key = f"y:{device}"
        if key not in self._copies:
            self._copies[key] = to_device(self.y, torch.device(device))
        return self._copies[key]


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


@dataclass(frozen=True)
class Field:
    """One field of a multi-field input, per sample: its ``shape``, ``dtype`` and, for id
    fields (integer dtype), ``num_ids``: ids must lie in ``[0, num_ids)``."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    num_ids: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        is_int = not self.dtype.is_floating_point and self.dtype != torch.bool
        if is_int != (self.num_ids is not None):
            raise ValueError(
                f"a field of dtype {self.dtype} {'needs' if is_int else 'takes no'} num_ids "
                "(integer fields hold ids in [0, num_ids); float fields hold values)"
            )

    def describe(self) -> str:
        ids = f", ids < {self.num_ids}" if self.num_ids is not None else ""
        return f"{list(self.shape)} {str(self.dtype).replace('torch.', '')}{ids}"


Schema = dict[str, Field]
"""A multi-field input's declaration: field name -> :class:`Field`."""


# -- inputs that are a tensor or a dict of tensors --------------------------------------------
def take(x: Inputs, index: Tensor | slice) -> Inputs:
    """Rows ``index`` of every field (or of the tensor)."""
    if isinstance(x, dict):
        return {k: v[index] for k, v in x.items()}
    return x[index]


def cat_inputs(parts: list[Inputs]) -> Inputs:
    """Concatenate inputs along the batch dimension, field by field for dicts."""
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def to_device(x: Inputs, device: torch.device, non_blocking: bool = True) -> Inputs:
    """``x`` on ``device``; host tensors bound for CUDA go through pinned memory, so the copy
    is asynchronous and the host does not wait for the GPU."""
    if isinstance(x, dict):
        return {k: to_device(v, device, non_blocking) for k, v in x.items()}
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu" and non_blocking:
        x = x.pin_memory()
    return x.to(device, non_blocking=non_blocking)


def inputs_len(x: Inputs) -> int:
    if isinstance(x, dict):
        if not x:
            raise InvalidBatchError("inputs are an empty dict: no fields")
        return len(next(iter(x.values())))
    return len(x)


InputSpec = tuple[int, ...] | Schema | None
"""What a model takes: a per-sample shape, a :data:`Schema` of fields, or ``None`` (any)."""


def _validate_fields(x: dict, schema: Schema | None) -> int:
    """Check a dict of fields against ``schema``; returns the number of samples."""
    if not x:
        raise InvalidBatchError("batch.x is an empty dict: no fields")
    if schema is None:
        raise InvalidBatchError(
            f"this model takes a tensor; got a dict of fields ({', '.join(map(str, x))})"
        )
    missing, extra = sorted(set(schema) - set(x)), sorted(set(x) - set(schema))
    if missing or extra:
        raise InvalidBatchError(
            f"batch.x has fields {sorted(x)}; expected {sorted(schema)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra})" if extra else "")
        )
    n = None
    for name, spec in schema.items():
        v = x[name]
        if not isinstance(v, Tensor):
            raise InvalidBatchError(
                f"field {name!r} must be a torch.Tensor, got {type(v).__name__}"
            )
        if v.ndim == 0 or len(v) == 0:
            raise InvalidBatchError(f"field {name!r} is empty (shape {tuple(v.shape)})")
        if n is None:
            n = len(v)
        elif len(v) != n:
            raise InvalidBatchError(
                f"fields disagree on the batch size: {name!r} has {len(v)} rows, others {n}"
            )
        if tuple(v.shape[1:]) != spec.shape:
            raise InvalidBatchError(
                f"field {name!r} has per-sample shape {tuple(v.shape[1:])}, expected {spec.shape}"
            )
        if v.dtype != spec.dtype:
            raise InvalidBatchError(f"field {name!r} has dtype {v.dtype}, expected {spec.dtype}")
        if spec.num_ids is not None:
            lo, hi = int(v.min()), int(v.max())
            if lo < 0 or hi >= spec.num_ids:
                raise InvalidBatchError(
                    f"field {name!r} holds ids in [{lo}, {hi}]; expected ids in "
                    f"[0, {spec.num_ids - 1}]"
                )
        elif not bool(torch.isfinite(v).all()):
            raise InvalidBatchError(f"field {name!r} contains NaN or infinite values")
    return n


FLOAT32_MAX = torch.finfo(torch.float32).max


def validate_batch(
    batch: Batch,
    spec: InputSpec,
    *,
    max_classes: int | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Reject a malformed batch with a specific message (shape, dtype, NaN, ids, labels).

    ``spec`` is what the model takes: the per-sample shape of a tensor input, a
    :data:`Schema` for multi-field inputs, or ``None`` (a tensor of any shape; a dict of
    fields is refused, since nothing declares what its fields should be). Tensor inputs are
    ``uint8`` (images, scaled by 1/255 in the model) or floating point, finite once cast to
    float32; other integer dtypes are refused (int32 pixels would reach the network
    unscaled). ``dtype``, when given, is the dtype the learner's inputs already have (its
    replay memory stores that one). Labels are integer class ids in ``[0, max_classes)``.
    """
    if not isinstance(batch, Batch):
        raise InvalidBatchError(f"expected a streamkd Batch, got {type(batch).__name__}")
    x = batch.x
    if isinstance(x, dict):
        n = _validate_fields(x, spec if isinstance(spec, dict) else None)
    else:
        n = _validate_tensor(x, spec, dtype)
    _validate_labels(batch.y, n, max_classes)


def _validate_tensor(x, spec: InputSpec, dtype: torch.dtype | None = None) -> int:
    if not isinstance(x, Tensor):
        raise InvalidBatchError(f"batch.x must be a torch.Tensor, got {type(x).__name__}")
    if isinstance(spec, dict):
        raise InvalidBatchError(
            f"this model takes a dict of fields ({', '.join(spec)}); got a tensor of shape "
            f"{tuple(x.shape)}"
        )
    if x.ndim == 0 or len(x) == 0:
        raise InvalidBatchError(f"batch.x is empty (shape {tuple(x.shape)})")
    if spec is not None and tuple(x.shape[1:]) != tuple(spec):
        raise InvalidBatchError(
            f"batch.x has per-sample shape {tuple(x.shape[1:])}, expected {tuple(spec)} "
            f"(full batch shape {tuple(x.shape)})"
        )
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise InvalidBatchError(
            f"batch.x has dtype {x.dtype}; expected uint8 (images, scaled by 1/255) or "
            "floating point (other integer dtypes would reach the network unscaled)"
        )
    if dtype is not None and x.dtype != dtype:
        raise InvalidBatchError(
            f"batch.x has dtype {x.dtype}, but this learner's inputs are {dtype} (fixed by "
            "the first batch it learned; its replay memory stores them): convert the stream"
        )
    if x.is_floating_point():
        finite = torch.isfinite(x) if x.dtype != torch.float64 else x.abs() <= FLOAT32_MAX
        if not bool(finite.all()):
            bad = int((~finite).flatten(1).any(1).sum())
            raise InvalidBatchError(
                f"batch.x contains NaN or infinite values (once cast to float32) in {bad} sample(s)"
            )
    return len(x)


def _validate_labels(y, n: int, max_classes: int | None = None) -> None:
    if y is None:
        return
    if not isinstance(y, Tensor):
        raise InvalidBatchError(f"batch.y must be a torch.Tensor, got {type(y).__name__}")
    if y.ndim != 1 or len(y) != n:
        raise InvalidBatchError(
            f"batch.y must be 1-D with one label per sample: got shape {tuple(y.shape)} "
            f"for {n} inputs"
        )
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise InvalidBatchError(f"batch.y must hold integer class ids, got dtype {y.dtype}")
    lo, hi = (int(v) for v in torch.stack([y.min(), y.max()]).tolist())
    if lo < 0:
        raise InvalidBatchError(f"batch.y holds a negative class id ({lo}); ids must be >= 0")
    if max_classes is not None and hi >= max_classes:
        raise InvalidBatchError(
            f"batch.y holds class id {hi}; this learner takes class ids below {max_classes} "
            "(max_classes: the stream's declared classes or the cap, --max-classes)"
        )
