"""The learning engine: the one prequential step every driver runs, and when to checkpoint.

A strategy (the ``LightningModule`` of this field) says how to learn from a batch; this
module drives it. :func:`prequential_step` validates a batch once, predicts it with the model
as it stands (test), learns it (then train) and times the learning; every loop that learns
from a stream goes through it:

* :func:`streamkd.evaluate.run` over finite streams (held-out evaluation, the accuracy matrix);
* the daemon's learner over live sources (dead letters, publishing the predictor);
* the Avalanche template's training iteration and river's ``learn_many``.

Nothing here waits for the device: the hits stay on it, the timer records CUDA events. The
drivers read them at their own points (curve points, checkpoints, ``/health``).
:class:`CheckpointSchedule` decides, for the same drivers, when a checkpoint is due.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from streamkd.strategy import Strategy
from streamkd.types import Batch, StepResult, to_device


class StepTimer:
    """Seconds spent in ``observe()``: the host clock on CPU; on CUDA, events recorded around
    each step and read only when :attr:`seconds` is asked (at curve points and at the end), so
    timing never makes the step loop wait for the GPU."""

    def __init__(self, device: torch.device, done: float = 0.0) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.done = done
        self._pending: list[tuple[Any, Any]] = []
        self._start: Any = None

    def start(self) -> None:
        if self.cuda:  # on the strategy's GPU, which need not be the current one
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record(torch.cuda.current_stream(self.device))
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record(torch.cuda.current_stream(self.device))
            self._pending.append((self._start, end))
        else:
            self.done += time.perf_counter() - self._start

    def flush(self) -> None:
        """Add the recorded steps' times (waits for the last one to finish on a GPU: one
        wait, as every earlier event on the stream is complete by then)."""
        if self._pending:
            self._pending[-1][1].synchronize()
        for start, end in self._pending:
            self.done += start.elapsed_time(end) / 1000.0
        self._pending.clear()

    @property
    def seconds(self) -> float:
        self.flush()
        return self.done


@dataclass
class Outcome:
    """What one prequential step did: the strategy's :class:`StepResult`, and, when the batch
    was predicted before it was learned, the scores and per-sample hits (on the device)."""

    step: StepResult
    scores: Tensor | None = None
    hits: Tensor | None = None


def hits_of(scores: Tensor, labels: Tensor) -> Tensor:
    """Per-sample hits of ``scores`` against ``labels``, on the scores' device (all misses
    while no class has been learned)."""
    labels = to_device(labels, scores.device)  # pinned: a pageable copy may wait
    if scores.shape[1] == 0:
        return torch.zeros(len(labels), dtype=torch.bool, device=scores.device)
    return scores.argmax(1) == labels


def prequential_step(
    strategy: Strategy,
    batch: Batch,
    *,
    predict: bool = True,
    timer: StepTimer | None = None,
    on_hits: Callable[[Tensor], None] | None = None,
) -> Outcome:
    """Test, then train, on one batch.

    The batch is validated once (:meth:`Strategy.validate`; a bad batch raises
    :class:`~streamkd.types.InvalidBatchError` before anything changes). A labelled batch is
    then predicted with the model as it stands, when ``predict`` is on, and its hits are
    counted on the device; ``on_hits(hits)`` runs then, before learning (a driver that reads
    them on the host, e.g. for a drift detector, waits for the prediction only, not for the
    step). Last, ``observe()`` learns it, timed by ``timer``. The prediction and
    ``observe()`` take the validated batch as it is: no second check, one device copy.
    """
    valid = strategy.validate(batch)
    scores = hits = None
    if predict and valid.y is not None:
        scores = strategy.predict(valid)
        hits = hits_of(scores, valid.labels_on(strategy.device))
        if on_hits is not None:
            on_hits(hits)
    if timer is not None:
        timer.start()
    step = strategy.observe(valid)
    if timer is not None:
        timer.stop()
    return Outcome(step, scores, hits)


class CheckpointSchedule:
    """When a checkpoint is due: at the first batch boundary at or past each multiple of
    ``every`` samples, and once ``seconds`` have passed since the last one (either may be
    ``None``: off). :meth:`written` records a checkpoint taken for any reason."""

    def __init__(
        self, every: int | None = None, seconds: float | None = None, *, samples: int = 0
    ) -> None:
        self.every, self.seconds = every, seconds
        self.next: int | None = None
        self.last_time = time.time()
        self.resume(samples)

    def resume(self, samples: int) -> None:
        """Continue counting from ``samples`` (a resumed run's)."""
        self.next = (samples // self.every + 1) * self.every if self.every else None

    def due(self, samples: int) -> bool:
        """Whether a checkpoint is due after ``samples`` (a sample-count mark is consumed)."""
        due = False
        if self.next is not None and samples >= self.next:
            self.next = (samples // self.every + 1) * self.every
            due = True
        if self.seconds and time.time() - self.last_time >= self.seconds:
            due = True
        return due

    def written(self) -> None:
        """A checkpoint was just written: the clock restarts."""
        self.last_time = time.time()
