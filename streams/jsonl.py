"""Events as JSON lines: the daemon's file source, its HTTP write-ahead log, and the export of
any registered stream as events.

An event is one JSON object per line::

    {"id": "e42", "x": [[...]], "y": 3, "ts": 1700000000.0}

``id`` is a non-empty string (at most 256 characters), ``x`` a number or nested lists of
numbers with the learner's per-sample shape (images as 0..255 integers when the learner takes
uint8), ``y`` a class id or ``null`` (predict-only), ``ts`` an optional timestamp. Unknown keys
are refused, so a misspelt ``"label"`` is not silently ignored.

:class:`JsonlSource` reads a file that may still be growing, like ``tail -f``; its position is
a byte offset, always at the end of a whole line. Events already in the file are read in
batches formed by count, in file order, so what is learned from them does not depend on
timing; only a partial batch at the live end waits (at most ``max_wait`` seconds) for more.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gc
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from streamkd.registry import SOURCES
from streamkd.streams.source import SourceContext
from streamkd.types import Batch

ID_MAX = 256
EVENT_KEYS = frozenset({"id", "x", "y", "ts"})
NUMPY_DTYPES = {torch.uint8: np.uint8, torch.float32: np.float32}


class EventError(ValueError):
    """An event (or a line) that cannot be learned: the message says what and why."""


@dataclass(frozen=True)
class Event:
    """One parsed, validated event: ``x`` already has the learner's shape and dtype."""

    id: str
    x: np.ndarray
    y: int | None = None
    ts: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "x": self.x.tolist(), "y": self.y}
        if self.ts is not None:
            out["ts"] = self.ts
        return out

    def to_record(self) -> bytes:
        """One line of the daemon's write-ahead log: the id first, then ``xb``, the already
        validated ``x`` as base64 of its raw bytes (read back with :func:`parse_record`
        without converting or checking numbers again)."""
        out: dict[str, Any] = {"id": self.id, "y": self.y}
        if self.ts is not None:
            out["ts"] = self.ts
        out["xb"] = base64.b64encode(np.ascontiguousarray(self.x).tobytes()).decode()
        return orjson.dumps(out) + b"\n"


def parse_event(
    obj: Any,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    max_classes: int | None = None,
    *,
    bools: bool = True,
) -> Event:
    """Validate a decoded JSON event against the learner's inputs; raises :class:`EventError`.

    ``bools``: whether the event's text may hold ``true`` or ``false`` at all (numpy reads
    them among numbers as 1/0, so ``x`` is searched for them and refused); a caller holding
    the raw bytes passes :func:`may_hold_bools` of them, so the common event costs one byte
    search instead of a walk over ``x``."""
    if not isinstance(obj, dict):
        raise EventError(f"an event must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - EVENT_KEYS)
    if unknown:
        raise EventError(f"unknown keys {unknown}; an event has id, x, y and optional ts")
    event_id = obj.get("id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= ID_MAX:
        raise EventError(f"id must be a non-empty string of at most {ID_MAX} characters")
    if "x" not in obj:
        raise EventError(f"event {event_id!r} has no x")
    x = _features(obj["x"], shape, dtype, event_id)
    if bools and _holds_bool(obj["x"]):
        raise EventError(f"event {event_id!r}: x must be numbers, not true or false")
    y = obj.get("y")
    if y is not None:
        if isinstance(y, bool) or not isinstance(y, int):
            raise EventError(f"event {event_id!r}: y must be an integer class id or null")
        if y < 0 or (max_classes is not None and y >= max_classes):
            bound = f"[0, {max_classes - 1}]" if max_classes is not None else ">= 0"
            raise EventError(f"event {event_id!r}: label {y} is out of range (expected {bound})")
    ts = obj.get("ts")
    if ts is not None and (
        isinstance(ts, bool) or not isinstance(ts, int | float) or not _finite(ts)
    ):
        raise EventError(f"event {event_id!r}: ts must be a finite number or absent")
    return Event(event_id, x, y, None if ts is None else float(ts))


def may_hold_bools(raw: str | bytes) -> bool:
    """Whether JSON text holds ``true`` or ``false`` anywhere (one pass over its bytes)."""
    return (
        ("true" in raw or "false" in raw)
        if isinstance(raw, str)
        else (b"true" in raw or b"false" in raw)
    )


def _holds_bool(value: Any) -> bool:
    """Whether ``value`` (a decoded ``x``, already of the learner's shape) holds a boolean."""
    if isinstance(value, bool):
        return True
    return isinstance(value, list) and any(_holds_bool(v) for v in value)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        return False


def _features(raw: Any, shape: tuple[int, ...], dtype: torch.dtype, event_id: str) -> np.ndarray:
    if dtype not in NUMPY_DTYPES:
        raise EventError(f"inputs of dtype {dtype} cannot come from JSON events")
    try:
        values = np.array(raw)  # ints stay int64, any float makes float64
    except (TypeError, ValueError, OverflowError, RecursionError):
        values = None  # ragged lists
    if values is None or values.dtype.kind not in "iuf":  # strings, booleans, big ints
        raise EventError(f"event {event_id!r}: x must be numbers or evenly nested lists of numbers")
    if values.shape != tuple(shape):
        raise EventError(
            f"event {event_id!r}: x has shape {list(values.shape)}, expected {list(shape)}"
        )
    floats = values.dtype.kind == "f"
    if floats and not np.isfinite(values).all():
        raise EventError(f"event {event_id!r}: x holds NaN or infinite values")
    if dtype == torch.uint8:
        if (
            values.min(initial=0) < 0
            or values.max(initial=0) > 255
            or (floats and (values % 1).any())
        ):
            raise EventError(f"event {event_id!r}: x must hold integers in 0..255 (uint8 images)")
    elif np.abs(values).max(initial=0) > np.finfo(np.float32).max:
        raise EventError(f"event {event_id!r}: x holds values beyond float32's range")
    return values.astype(NUMPY_DTYPES[dtype])


def events_batch(events: list[Event], dtype: torch.dtype) -> Batch:
    """One labelled batch of events (their ids in ``meta["ids"]``)."""
    x = torch.from_numpy(np.stack([e.x for e in events])).to(dtype)
    y = torch.tensor([e.y for e in events], dtype=torch.long)
    return Batch(x, y, meta={"ids": [e.id for e in events]})


_GC_PAUSE = 1 << 20  # bodies of this many bytes and more are decoded with the collector paused
_gc_pauses = 0
_gc_lock = threading.Lock()


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (process-wide, counted across threads): decoding
    a large body creates millions of lists, and the collections they trigger made an 8 MiB
    body take 0.8 s to decode instead of 0.12 s."""
    global _gc_pauses
    with _gc_lock:
        _gc_pauses += 1
        gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0:
                gc.enable()


def decode_json(text: str | bytes) -> Any:
    """Strict JSON (orjson: no NaN or Infinity literals, integers within 64 bits, nesting
    at most 1024 deep); every failure is an :class:`EventError`."""
    try:
        if len(text) >= _GC_PAUSE:
            with _gc_paused():
                return orjson.loads(text)
        return orjson.loads(text)
    except orjson.JSONDecodeError as err:
        hint = ""
        if isinstance(text, str | bytes) and any(
            w in text
            for w in ((b"NaN", b"Infinity") if isinstance(text, bytes) else ("NaN", "Infinity"))
        ):
            hint = " (NaN and Infinity are not JSON: send finite numbers)"
        raise EventError(f"invalid JSON: {str(err)[:200]}{hint}") from None
    except (ValueError, RecursionError) as err:
        raise EventError(f"invalid JSON: {type(err).__name__}: {str(err)[:200]}") from None


def parse_record(
    text: str | bytes,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    max_classes: int | None = None,
) -> Event:
    """A write-ahead-log line (:meth:`Event.to_record`) back as its event. The WAL's own
    lines were validated when they arrived; this checks only that the bytes fit the
    learner's shape and labels (a WAL of another config, or a damaged line). A line with
    ``x`` instead of ``xb`` (the WAL of earlier releases) is parsed as an event."""
    obj = decode_json(text)
    if not isinstance(obj, dict) or "xb" not in obj:
        return parse_event(obj, shape, dtype, max_classes, bools=may_hold_bools(text))
    event_id, y, ts = obj.get("id"), obj.get("y"), obj.get("ts")
    np_dtype = NUMPY_DTYPES[dtype]
    try:
        raw = base64.b64decode(obj["xb"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise EventError(f"WAL record {event_id!r}: xb is not base64") from None
    expected = int(np.prod(shape)) * np.dtype(np_dtype).itemsize
    if len(raw) != expected or not isinstance(event_id, str):
        raise EventError(
            f"WAL record {event_id!r}: {len(raw)} bytes of x, expected {expected} "
            f"(shape {list(shape)}, {np.dtype(np_dtype).name}): a WAL of another config?"
        )
    if y is not None and (
        not isinstance(y, int) or y < 0 or (max_classes is not None and y >= max_classes)
    ):
        raise EventError(f"WAL record {event_id!r}: label {y!r} is out of range")
    x = np.frombuffer(raw, dtype=np_dtype).reshape(shape)
    return Event(event_id, x, y, None if ts is None else float(ts))


def parse_line(
    text: str | bytes,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    max_classes: int | None,
    *,
    end: int = 0,
    where: str = "",
    record: bool = False,
) -> Line:
    """One source line as an event (a WAL line if ``record``: :func:`parse_record`), or as
    the reason it is not one: never raises, so one bad line can never stop a learner (it
    goes to the dead-letter file)."""
    try:
        if record:
            return Line(end, parse_record(text, shape, dtype, max_classes))
        obj = decode_json(text)
        return Line(end, parse_event(obj, shape, dtype, max_classes, bools=may_hold_bools(text)))
    except Exception as err:  # noqa: BLE001 - the last line of defence, reported
        why = str(err) if isinstance(err, EventError) else f"unreadable event: {err!r}"
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return Line(end, None, f"{where}{why}", text)


@dataclass
class Line:
    """One line read from a source: its decoded event or why it could not be."""

    end: int  # the byte offset just after the line
    event: Event | None
    error: str | None = None
    text: str = ""


class JsonlSource:
    """Events from a JSON-lines file that may still be growing.

    ``read(n)`` returns up to ``n`` lines (parsed events, or errors for the dead-letter
    file) from the current position, waiting at most ``max_wait`` seconds at the live end
    for a full batch; with ``follow=False`` the end of the file is the end of the source.
    ``position()`` is the byte offset after the last line returned; ``seek(offset)`` goes
    back to one (a checkpoint's). When following, a line without its newline is not read
    until it is complete, so a writer caught mid-line is never half-read; a finite file's
    unterminated last line is read as it is.
    """

    def __init__(
        self,
        path: str | Path,
        shape: tuple[int, ...],
        dtype: torch.dtype = torch.float32,
        *,
        max_classes: int | None = None,
        follow: bool = True,
        max_wait: float = 0.05,
        poll: float = 0.01,
    ) -> None:
        self.path = Path(path)
        self.shape, self.dtype, self.max_classes = tuple(shape), dtype, max_classes
        self.follow, self.max_wait, self.poll = follow, max_wait, poll
        self._offset = 0
        self._file = None

    def position(self) -> int:
        return self._offset

    def seek(self, offset: int) -> None:
        """Continue at ``offset`` (a checkpoint's); refused if the file is now shorter, i.e.
        truncated or replaced since (reading on would stall or start mid-line)."""
        offset = int(offset)
        size = self.path.stat().st_size if self.path.exists() else 0
        if offset > size:
            raise ValueError(
                f"{self.path} has {size} bytes but the checkpoint's position is byte {offset}: "
                "the file was truncated or replaced since; restore it or start a fresh "
                "--checkpoint-dir"
            )
        self._offset = offset

    def commit(self, step: int | None = None) -> None:
        """Called once the checkpoint of ``step`` covers the position: nothing to
        acknowledge in a file."""

    def describe(self) -> str:
        return f"jsonl:{self.path}"

    def _open(self):
        if self._file is None:
            if not self.path.exists():
                return None
            self._file = open(self.path, "rb")  # noqa: SIM115 - held open while tailing
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def at_end(self) -> bool:
        """True when every line has been read: every complete one when following a growing
        file, every one (an unterminated last line included) of a finite file."""
        if not self.path.exists():
            return True
        end = _complete_size(self.path) if self.follow else self.path.stat().st_size
        return self._offset >= end

    def read(self, n: int) -> list[Line]:
        """Up to ``n`` lines from the position; fewer only at the end of what is written."""
        lines: list[Line] = []
        deadline = None
        while len(lines) < n:
            got = self._read_available(n - len(lines))
            lines.extend(got)
            if len(lines) >= n or not self.follow:
                break
            if lines and deadline is None:
                deadline = time.monotonic() + self.max_wait
            if deadline is not None and time.monotonic() >= deadline:
                break
            if not got:
                if not lines:  # nothing at all: return, the caller decides how long to wait
                    break
                time.sleep(self.poll)
        return lines

    def _read_available(self, n: int) -> list[Line]:
        f = self._open()
        if f is None:
            return []
        f.seek(self._offset)
        out: list[Line] = []
        while len(out) < n:
            raw = f.readline()
            if not raw or (not raw.endswith(b"\n") and self.follow):
                break  # the end, or a line still being written (a finite file's last is whole)
            self._offset += len(raw)
            text = raw.strip()
            if not text:
                continue
            out.append(self._parse(text))
        return out

    def _parse(self, text: bytes) -> Line:
        return parse_line(text, self.shape, self.dtype, self.max_classes, end=self._offset)


def _complete_size(path: Path) -> int:
    """The size of ``path`` up to its last newline."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb") as f:
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return size
        # a partial last line: scan back to its start
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                return pos - step + cut + 1
            pos -= step
        return 0


def append_lines(path: str | Path, lines: list[str]) -> None:
    """Append whole lines and fsync before returning: what is acknowledged is durable. On
    any failure the file is cut back to its size before the call (nothing half-appended)."""
    data = "".join(line.rstrip("\n") + "\n" for line in lines).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def repair_tail(path: str | Path) -> int:
    """Cut an unterminated last line (a write a crash interrupted: never acknowledged) off
    ``path``; returns the bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    size, keep = path.stat().st_size, _complete_size(path)
    if keep < size:
        with open(path, "r+b") as f:
            f.truncate(keep)
            os.fsync(f.fileno())
    return size - keep


def export_events(stream, out: str | Path, max_samples: int | None = None) -> int:
    """Write a registered stream's training samples as events (ids ``e0``, ``e1``...), in
    stream order; returns the number written. Written to a temporary name and renamed, so
    a reader tailing ``out`` never sees a half-written export."""
    from streamkd.atomic import atomic_path

    n = 0
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        for batch in stream:
            if isinstance(batch.x, dict):
                raise ValueError(f"stream {stream.name!r} has multi-field inputs: not exportable")
            xs = batch.x.numpy()
            for x, y in zip(xs, batch.y.tolist(), strict=True):
                if max_samples is not None and n >= max_samples:
                    return n
                value = x.tolist() if x.dtype == np.uint8 else np.round(x, 6).tolist()
                f.write(json.dumps({"id": f"e{n}", "x": value, "y": y}, separators=(",", ":")))
                f.write("\n")
                n += 1
    return n


@SOURCES.register("jsonl", help="jsonl:PATH")
def open_jsonl(url: str, context: SourceContext) -> JsonlSource:
    """``jsonl:PATH``: the JSON-lines file at PATH, followed as it grows (or read to its end
    when ``context.finite``, which needs the file to exist)."""
    path = Path(url.split(":", 1)[1]).expanduser()
    if context.finite and not path.exists():
        raise ValueError(f"--source {url}: {path} does not exist")
    return JsonlSource(
        path,
        context.shape,
        context.dtype,
        max_classes=context.max_classes,
        follow=not context.finite,
    )
