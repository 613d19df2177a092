"""Delayed labels: prequential (test-then-train) evaluation when a sample's label becomes known
only some time after its inputs, as river's delayed progressive validation does
(``river.evaluate.progressive_val_score(..., moment=, delay=)``, built on
``river.stream.simulate_qa``).

Plain test-then-train scores a batch and then learns it at once. That is sound when a label
arrives with its inputs; it leaks when labels lie in the future of the inputs and samples
overlap in time. A trajectory window of ETH/UCY is 8 observed steps and 12 to predict: learning
it right after scoring it teaches the model where pedestrians were up to 4.8 s after the next
batch's inputs end, so the next batch is scored by a model that has seen its future.

:func:`delayed_prequential` replays a stream on one clock. Each row carries two times in
``batch.meta``: ``observed`` (default ``"observed_until"``), when its inputs are complete (the
last observed frame), and ``known`` (``"known_at"``), when its label is (the last target frame).
The rules:

* a row is **predicted** at its ``observed`` time;
* a batch is **learned** once the clock has reached the ``known`` time of every row in it (and
  after the batch before it: the learner's order of batches is kept);
* at equal times, predictions come first.

So every row is predicted by a model that has learned only rows whose labels were all known
strictly before the row's inputs were complete: nothing from after its last observed time.
The batches are learned exactly as the stream cuts them, in the stream's order; only the
moments of prediction move. :func:`prequential` is the plain order, and
:class:`LeakMeter` measures what either order lets through.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from streamkd.types import Batch, cat_inputs, take

OBSERVED, KNOWN = "observed_until", "known_at"


class Event(NamedTuple):
    """One step of a replay: ``kind`` is ``"predict"`` (score ``batch`` with the model as it
    is; never learn from it) or ``"learn"`` (``observe(batch)``); ``time`` is the clock then."""

    kind: str
    batch: Batch
    time: float


def prequential(
    batches: Iterable[Batch], *, observed: str = OBSERVED, known: str = KNOWN
) -> Iterator[Event]:
    """Plain prequential order: each batch predicted, then learned at once (the leaky order
    when labels lie in the future of the inputs; for comparison with
    :func:`delayed_prequential`). ``time`` is the batch's last ``observed`` time."""
    for batch in batches:
        time = float(_times(batch, observed, known)[0][-1])
        yield Event("predict", batch, time)
        yield Event("learn", batch, time)


def delayed_prequential(
    batches: Iterable[Batch], *, observed: str = OBSERVED, known: str = KNOWN
) -> Iterator[Event]:
    """The batches replayed on one clock with delayed labels (the rules are in the module
    docstring): ``"predict"`` events carry the rows due at that time (one event per run of
    rows from the same segment, gathered across the stream's batches); ``"learn"`` events
    carry the stream's batches unchanged, in order.

    ``batches`` must come in time order: ``meta[observed]`` never decreases from row to row
    (across batches too), and each row's ``meta[known]`` is at least its ``meta[observed]``
    (times are numbers or tensors of one per row). The stream is read ahead only as far as
    the rows due before the next batch can be learned.

    Examples:
        Rows observed until t = 0, 1, 2, 3 whose labels are known 2 later, in batches of 2:

        >>> import torch
        >>> from streamkd.types import Batch
        >>> def rows(a, b):
        ...     t = torch.arange(a, b)
        ...     return Batch(x=t, meta={"observed_until": t, "known_at": t + 2})
        >>> events = delayed_prequential([rows(0, 2), rows(2, 4)])
        >>> [(e.kind, e.batch.x.tolist(), e.time) for e in events]  # doctest: +NORMALIZE_WHITESPACE
        [('predict', [0, 1, 2, 3], 3.0), ('learn', [0, 1], 3.0), ('learn', [2, 3], 5.0)]

        Row 3 is predicted before rows 0 and 1 are learned (their labels arrive at t = 3, when
        row 3's inputs are complete: predictions first). Plain test-then-train would predict
        rows 2 and 3 after learning row 1, whose label (t = 3) lies after row 2's inputs
        (t = 2).
    """
    source = iter(batches)
    ahead: deque[list] = deque()  # read, not learned: [batch, observed, next row, latest known]
    last_observed = -float("inf")
    exhausted = False
    learned_until = -float("inf")

    def read() -> bool:
        nonlocal last_observed, exhausted
        batch = next(source, None)
        if batch is None:
            exhausted = True
            return False
        seen, ready = _times(batch, observed, known)
        if (seen and seen[0] < last_observed) or any(
            b < a for a, b in zip(seen, seen[1:], strict=False)
        ):
            raise ValueError(
                f"delayed_prequential needs batches in time order: meta[{observed!r}] decreased"
            )
        if any(r < s for s, r in zip(seen, ready, strict=True)):
            raise ValueError(
                f"a row's label is known (meta[{known!r}]) before its inputs are complete "
                f"(meta[{observed!r}])"
            )
        if seen:
            last_observed = seen[-1]
        ahead.append([batch, seen, 0, max(ready, default=-float("inf"))])
        return True

    while ahead or read():
        batch, _, _, ready = ahead[0]
        time = max(ready, learned_until)
        while not exhausted and ahead[-1][1][-1:] <= [time] and read():
            pass  # read on until a row observed after `time` is in sight
        due = []
        for entry in ahead:
            other, seen, start = entry[0], entry[1], entry[2]
            stop = bisect.bisect_right(seen, time)
            if stop > start:
                due.append(_rows(other, start, stop))
                entry[2] = stop
            if stop < len(seen):
                break
        for part in _by_segment(due):
            yield Event("predict", part, float(time))
        ahead.popleft()
        learned_until = time
        yield Event("learn", batch, float(time))


class LeakMeter:
    """What a replay lets a prediction see of the future: the share of predicted rows whose
    model had already learned a row with a label later than the predicted row's ``observed``
    time (:attr:`share`; 0 under :func:`delayed_prequential` by construction, near 1 under
    :func:`prequential` when samples overlap in time).

    With ``key`` (a meta field naming whom a row is about, e.g. ``"ego"``: the pedestrian) it
    also counts rows whose own future had been learned (:attr:`own_share`: a learned row of
    the same key whose label time is later than the row's ``observed`` time) and by how much
    (:attr:`own_ahead`: the mean over predicted rows of that lead, in clock units, 0 where
    none; a key is matched by value, so two subjects may share one only where their times do not
    overlap, as pedestrian ids of different recordings laid end to end on one clock).

    Feed it the events of a replay (:meth:`update`)."""

    def __init__(self, *, observed: str = OBSERVED, known: str = KNOWN, key: str | None = None):
        self.observed, self.known, self.key = observed, known, key
        self.learned_until = -float("inf")
        self.own_until: dict = {}
        self.predicted = self.leaked = self.own_leaked = 0
        self.own_lead = 0.0

    def update(self, event: Event) -> None:
        seen, ready = _times(event.batch, self.observed, self.known)
        keys = _values(event.batch.meta[self.key]) if self.key else None
        if event.kind == "learn":
            self.learned_until = max([self.learned_until, *ready])
            for k, r in zip(keys or (), ready, strict=False):
                self.own_until[k] = max(self.own_until.get(k, r), r)
            return
        self.predicted += len(seen)
        self.leaked += sum(s < self.learned_until for s in seen)
        for k, s in zip(keys or (), seen, strict=True):
            lead = self.own_until.get(k, s) - s
            if lead > 0:
                self.own_leaked += 1
                self.own_lead += lead

    @property
    def share(self) -> float:
        return self.leaked / self.predicted if self.predicted else 0.0

    @property
    def own_share(self) -> float:
        return self.own_leaked / self.predicted if self.predicted else 0.0

    @property
    def own_ahead(self) -> float:
        return self.own_lead / self.predicted if self.predicted else 0.0

    def as_dict(self) -> dict:
        out = {"predicted": self.predicted, "leaked": self.leaked, "share": self.share}
        if self.key:
            out |= {"own_share": self.own_share, "own_ahead": self.own_ahead}
        return out


# -- rows of batches ----------------------------------------------------------------------------
def _values(v) -> list:
    return v.tolist() if isinstance(v, Tensor) else list(v)


def _times(batch: Batch, observed: str, known: str) -> tuple[list, list]:
    for name in (observed, known):
        if name not in batch.meta:
            raise ValueError(
                f"a delayed-label replay needs batch.meta[{name!r}] (one time per row)"
            )
    return _values(batch.meta[observed]), _values(batch.meta[known])


def _rows(batch: Batch, start: int, stop: int) -> Batch:
    """Rows ``start:stop`` of a batch: inputs, labels, targets and the per-row meta fields."""
    n, index = len(batch), slice(start, stop)
    if start == 0 and stop == n:
        return batch
    meta = {
        k: v[index] if isinstance(v, (Tensor, list, tuple)) and len(v) == n else v
        for k, v in batch.meta.items()
    }
    return Batch(
        x=take(batch.x, index),
        y=None if batch.y is None else batch.y[index],
        segment=batch.segment,
        task=None if batch.task is None else batch.task[index],
        meta=meta,
        targets={k: v[index] for k, v in batch.targets.items()},
    )


def _by_segment(parts: list[Batch]) -> Iterator[Batch]:
    """Consecutive parts of the same segment joined into one batch."""
    run: list[Batch] = []
    for part in parts:
        if run and part.segment != run[0].segment:
            yield _join(run)
            run = []
        run.append(part)
    if run:
        yield _join(run)


def _join(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    meta = {}
    for k, v in first.meta.items():
        if isinstance(v, Tensor) and len(v) == len(first):
            meta[k] = torch.cat([p.meta[k] for p in parts])
        elif isinstance(v, (list, tuple)) and len(v) == len(first):
            meta[k] = [item for p in parts for item in p.meta[k]]
        else:
            meta[k] = v
    return Batch(
        x=cat_inputs([p.x for p in parts]),
        y=None if first.y is None else torch.cat([p.y for p in parts]),
        segment=first.segment,
        task=None if first.task is None else torch.cat([p.task for p in parts]),
        meta=meta,
        targets={k: torch.cat([p.targets[k] for p in parts]) for k in first.targets},
    )
