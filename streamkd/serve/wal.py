"""The ``http`` source's write-ahead log: what ``POST /learn`` acknowledged, in order.

Layout: ``<checkpoint-dir>/wal/wal-<start>.jsonl``, segments of whole lines
(:meth:`~streamkd.streams.jsonl.Event.to_record`), where ``<start>`` (20 digits) is the
segment's first byte as an offset into the whole log. A position is such an offset, so a
checkpoint's position stays valid while segments come and go (a ``wal.jsonl`` of earlier
releases becomes the segment that starts at 0).

Guarantees, after PostgreSQL's WAL:

* **An acknowledged event is durable.** :meth:`WriteAheadLog.append` returns only once its
  lines are fsynced. Concurrent appends share one fsync (group commit): a request that
  arrives while another's fsync runs writes its lines at once and waits for the next.
* **The learner reads only what is durable.** The log publishes its durable end
  (``on_durable``); :class:`WalSource` never reads past it. A failed write or fsync cuts the
  file back to the durable end, and every append not yet durable fails: nothing
  unacknowledged is ever learned, and nothing is learned from bytes that vanish.
* **Idempotent per event id** (Kafka's idempotent producer): an id already in a retained
  segment is not appended again; :meth:`append` says which ids were new and which were
  held. The dedup window is the retained segments (stated in the README): an id is known
  until its segment is deleted.
* **Bounded**: the active segment is closed at ``segment_bytes``; a closed segment is
  deleted once every kept checkpoint's position lies beyond it (so a fall back to the
  oldest kept checkpoint still finds its events). :class:`WalSource` does that, as the
  learner's ``commit()`` after each checkpoint.
* A crash mid-append leaves at most an unterminated last line, never acknowledged: it is
  cut at start (:meth:`WriteAheadLog.__init__`).
"""

from __future__ import annotations

import collections
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import torch

from streamkd.registry import SOURCES
from streamkd.streams.jsonl import Line, parse_line
from streamkd.streams.source import SourceContext

log = logging.getLogger(__name__)
SEGMENT_BYTES = 64 * 2**20
READ_BYTES = 2**20  # the learner reads the log in chunks of at most this
SEGMENT = re.compile(r"wal-(\d{20})\.jsonl")
LEGACY = "wal.jsonl"  # the single-file WAL of earlier releases, in the checkpoint folder
_fsync = os.fsync  # the one durability call (tests inject failures here)
_write = os.write


class WalError(OSError):
    """An append that is not durable (the write or its fsync failed): nothing of it stays."""


def wal_dir(checkpoint_dir: str | Path) -> Path:
    """The WAL folder of a checkpoint folder (a legacy ``wal.jsonl`` moved into it)."""
    checkpoint_dir = Path(checkpoint_dir).expanduser()
    folder = checkpoint_dir / "wal"
    legacy = checkpoint_dir / LEGACY
    if legacy.exists() and not segments(folder):
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(legacy, folder / _name(0))
        _fsync_dir(folder)
        _fsync_dir(checkpoint_dir)
        log.info("moved the WAL %s into %s (segmented since 0.2)", legacy, folder)
    return folder


def segments(folder: Path) -> list[int]:
    """The start offsets of the segments in ``folder``, in order."""
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := SEGMENT.fullmatch(p.name)))


def _name(start: int) -> str:
    return f"wal-{start:020d}.jsonl"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def _complete(path: Path) -> int:
    """The size of ``path`` up to and including its last newline."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos = size
        while pos > 0:
            step = min(1 << 16, pos)
            f.seek(pos - step)
            cut = f.read(step).rfind(b"\n")
            if cut >= 0:
                return pos - step + cut + 1
            pos -= step
    return 0


def _ids_of(path: Path) -> list[str]:
    """The event ids of a segment's lines (a line that is not an event has none)."""
    ids = []
    with open(path, "rb") as f:
        for line in f:
            try:
                event_id = orjson.loads(line).get("id")
            except (orjson.JSONDecodeError, AttributeError):
                continue
            if isinstance(event_id, str):
                ids.append(event_id)
    return ids


class WriteAheadLog:
    """The writer (the HTTP process): see the module docstring."""

    def __init__(
        self,
        folder: str | Path,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        on_durable: Callable[[int], None] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.on_durable = on_durable
        starts = segments(self.folder)
        if not starts:
            (self.folder / _name(0)).touch()
            _fsync_dir(self.folder)
            _fsync_dir(self.folder.parent)
            starts = [0]
        self.cut = self._repair(self.folder / _name(starts[-1]))
        self._start = starts[-1]  # the active segment's start
        self._fd = os.open(self.folder / _name(self._start), os.O_WRONLY | os.O_APPEND)
        _fsync(self._fd)  # what survived the crash is durable from here on
        self._end = self._start + os.fstat(self._fd).st_size
        self._durable_end = self._end
        # ids -> the append sequence number that wrote it (0: durable before this process)
        self._ids: dict[str, int] = {}
        self._segment_ids: dict[int, list[str]] = {}
        for start in starts:
            ids = _ids_of(self.folder / _name(start))
            self._segment_ids[start] = ids
            self._ids.update(dict.fromkeys(ids, 0))
        self._seq = self._durable_seq = 0
        self._failed: list[tuple[int, int, str]] = []  # (first, last) seqs that failed, why
        self._syncing = False
        self._broken: str | None = None  # why every append fails from now on
        self._lock = threading.Lock()  # the file and the ids; taken before _cond, never after
        self._cond = threading.Condition(threading.Lock())
        self.appends = self.fsyncs = self.failures = 0
        self._publish()

    def _repair(self, path: Path) -> int:
        """Cut an unterminated last line (a crash mid-write: never acknowledged)."""
        size, keep = path.stat().st_size, _complete(path)
        if keep < size:
            with open(path, "r+b") as f:
                f.truncate(keep)
                _fsync(f.fileno())
            log.warning(
                "cut %d bytes of an unfinished write (never acknowledged) off %s", size - keep, path
            )
        return size - keep

    # -- what the server reads ---------------------------------------------------------------
    @property
    def durable_end(self) -> int:
        return self._durable_end

    def known(self) -> int:
        """How many event ids the dedup window holds."""
        return len(self._ids)

    def disk_bytes(self) -> int:
        """Bytes in the segments (one the learner deletes meanwhile counts nothing)."""
        total = 0
        for start in segments(self.folder):
            try:
                total += (self.folder / _name(start)).stat().st_size
            except FileNotFoundError:
                continue
        return total

    # -- appending ---------------------------------------------------------------------------
    def append(self, records: list[tuple[str, bytes]]) -> tuple[list[str], list[str]]:
        """Append the records whose ids are new, durably; ``(new ids, held ids)``. Raises
        :class:`WalError` (nothing of this call stays) if the write or its fsync fails, or if
        an id held here was itself still waiting for an fsync that failed."""
        with self._lock:
            self._settle_before_rotation()
            self._forget_deleted()
            new = [(i, line) for i, line in records if i not in self._ids]
            held = [i for i, _ in records if i in self._ids]
            wait_for = max((self._ids[i] for i in held), default=0)
            if new:
                if self._broken is not None or self._fd < 0:
                    raise WalError(5, self._broken or "the WAL is closed")
                self._maybe_rotate()
                data = b"".join(line for _, line in new)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[_write(self._fd, view) :]
                except OSError as err:
                    self.failures += 1
                    self._cut_back(self._end)
                    raise WalError(err.errno, f"cannot append to the WAL: {err.strerror}") from None
                self._end += len(data)
                self._seq += 1
                wait_for = self._seq
                segment = self._segment_ids.setdefault(self._start, [])
                for event_id, _ in new:
                    self._ids[event_id] = self._seq
                    segment.append(event_id)
                self.appends += 1
        self._sync(wait_for)
        return [i for i, _ in new], held

    def _sync(self, seq: int) -> None:
        """Return once append ``seq`` is durable; one caller at a time runs the fsync that
        covers every append written before it started (group commit)."""
        while True:
            with self._cond:
                while True:
                    for first, last, why in self._failed:
                        if first <= seq <= last:
                            raise WalError(5, why)
                    if self._durable_seq >= seq:
                        return
                    if not self._syncing:
                        self._syncing = True
                        break
                    self._cond.wait()
            with self._lock:
                target, end, fd = self._seq, self._end, self._fd
            try:
                _fsync(fd)
                error = None
            except OSError as err:
                error = err
            with self._lock, self._cond:
                try:
                    if error is None:
                        self._durable_seq, self._durable_end = target, end
                        self.fsyncs += 1
                    else:  # nothing after the durable end stays: cut it, fail its appends
                        self._cut_back(self._durable_end)
                        first, last = self._durable_seq + 1, self._seq
                        why = f"the WAL's fsync failed ({error.strerror}): not stored, retry"
                        self._failed = [*self._failed[-99:], (first, last, why)]
                        for event_id in [i for i, s in self._ids.items() if s >= first]:
                            del self._ids[event_id]
                        ids = self._segment_ids.get(self._start, [])
                        self._segment_ids[self._start] = [i for i in ids if i in self._ids]
                        self._end = self._durable_end
                        self._durable_seq = self._seq  # the failed ones are settled, as failed
                        self.failures += 1
                    self._publish()  # under the lock: a later end is never overwritten
                finally:
                    self._syncing = False
                    self._cond.notify_all()

    def _publish(self) -> None:
        if self.on_durable is not None:
            self.on_durable(self._durable_end)

    def _settle_before_rotation(self) -> None:
        """Called holding ``_lock``: once the active segment is full, wait (lock released)
        until everything written to it is durable, so that :meth:`_maybe_rotate` can close
        it. Every appender waits here before writing, so a full segment takes no more writes
        and its pending fsync comes however busy the log is."""
        while self._full() and self._durable_seq != self._seq:
            pending = self._seq
            self._lock.release()
            try:
                self._sync(pending)
            except WalError:
                pass  # those appends failed (their callers were told); settled all the same
            finally:
                self._lock.acquire()

    def _full(self) -> bool:
        return self._end - self._start >= self.segment_bytes

    def _maybe_rotate(self) -> None:
        """Close the active segment at ``segment_bytes`` (only when all of it is durable)."""
        if not self._full() or self._durable_seq != self._seq:
            return
        start, path = self._end, self.folder / _name(self._end)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            self.failures += 1
            raise WalError(err.errno, f"cannot start a WAL segment: {err.strerror}") from None
        try:
            _fsync_dir(self.folder)
        except OSError as err:  # the new segment may not survive a crash: not used
            os.close(fd)
            path.unlink(missing_ok=True)
            self.failures += 1
            raise WalError(err.errno, f"cannot start a WAL segment: {err.strerror}") from None
        os.close(self._fd)
        self._fd, self._start = fd, start

    def _cut_back(self, end: int) -> None:
        """Cut the active segment back to ``end``; if even that fails, the log is broken
        (every later append fails) rather than holding bytes nobody acknowledged."""
        try:
            os.ftruncate(self._fd, end - self._start)
        except OSError as err:
            self._broken = f"the WAL could not be cut back after a failure ({err.strerror})"

    def _forget_deleted(self) -> None:
        """Drop the ids of segments the learner deleted (the dedup window moves on)."""
        oldest = min(self._segment_ids, default=None)
        if oldest is None or oldest == self._start or (self.folder / _name(oldest)).exists():
            return
        alive = set(segments(self.folder))
        for start in [s for s in self._segment_ids if s not in alive and s != self._start]:
            for event_id in self._segment_ids.pop(start):
                self._ids.pop(event_id, None)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class WalSource:
    """The learner's side: reads the WAL's records in order, never past ``durable()``.

    Same protocol as :class:`~streamkd.streams.jsonl.JsonlSource` (``read``, ``position``,
    ``seek``, ``commit``, ``at_end``, ``describe``, ``close``). ``commit()``, called after
    each checkpoint, deletes the closed segments that all ``keep`` kept checkpoints lie
    beyond.
    """

    def __init__(
        self,
        folder: str | Path,
        shape: tuple[int, ...],
        dtype: torch.dtype = torch.float32,
        *,
        max_classes: int | None = None,
        durable: Callable[[], int] | None = None,
        keep: int = 3,
        max_wait: float = 0.05,
        poll: float = 0.005,
    ) -> None:
        self.folder = Path(folder)
        self.shape, self.dtype, self.max_classes = tuple(shape), dtype, max_classes
        self.durable = durable or self._file_end
        self.max_wait, self.poll = max_wait, poll
        self._position = 0
        # the open segment, read with pread into a buffer of our own that never holds a
        # byte past the durable end (a buffered file would read ahead into bytes a failed
        # append then cuts, and hand them out after the cut)
        self._fd = -1
        self._file_start = -1
        self._buf, self._off = b"", 0  # bytes from the position on: self._buf[self._off:]
        # (checkpoint step, WAL position) of the kept checkpoints of this run
        self._covered: collections.deque[tuple[int | None, int]] = collections.deque(maxlen=keep)
        self.deleted = 0  # segments deleted by this reader

    def describe(self) -> str:
        return "http (WAL)"

    def position(self) -> int:
        return self._position

    def _file_end(self) -> int:
        starts = segments(self.folder)
        if not starts:
            return 0
        return starts[-1] + _complete(self.folder / _name(starts[-1]))

    def seek(self, position: int) -> None:
        """Continue at a checkpoint's ``position``. Beyond the end of the log (its tail was
        lost with a power failure after the checkpoint was written): a warning, and the
        learner continues at the end. Before the oldest segment: refused (deleted by hand)."""
        position, end = int(position), self.durable()
        starts = segments(self.folder)
        if starts and position < starts[0]:
            raise ValueError(
                f"the checkpoint's WAL position {position} lies before the oldest segment "
                f"({starts[0]}) of {self.folder}: segments it needs were deleted"
            )
        if position > end:
            log.warning(
                "the checkpoint's WAL position %d lies beyond the end of the log (%d): its tail "
                "was lost (a power failure?); continuing at the end, the events in between "
                "were learned",
                position,
                end,
            )
            position = end
        self._position = position
        self._covered.clear()  # kept checkpoints older than this one: positions unknown
        self._close_file()

    def commit(self, step: int | None = None) -> None:
        """After the checkpoint of ``step`` at the current position: delete the segments
        every kept checkpoint lies beyond (until ``keep`` checkpoints of this run, none). A
        checkpoint of a step already kept replaces that file, so it replaces its entry."""
        if step is not None and self._covered and self._covered[-1][0] == step:
            self._covered[-1] = (step, self._position)
        else:
            self._covered.append((step, self._position))
        if len(self._covered) < (self._covered.maxlen or 1):
            return
        upto = min(position for _, position in self._covered)
        starts = segments(self.folder)
        for start, following in zip(starts, starts[1:], strict=False):
            if following <= upto and start != self._file_start:
                (self.folder / _name(start)).unlink(missing_ok=True)
                self.deleted += 1

    def at_end(self) -> bool:
        return self._position >= self.durable()

    def read(self, n: int) -> list[Line]:
        """Up to ``n`` durable records; waits at most ``max_wait`` for a whole batch."""
        lines: list[Line] = []
        deadline = None
        while len(lines) < n:
            lines.extend(self._read_available(n - len(lines)))
            if len(lines) >= n:
                break
            if not lines:
                return lines  # nothing: the caller decides how long to wait
            deadline = deadline or time.monotonic() + self.max_wait
            if time.monotonic() >= deadline:
                break
            time.sleep(self.poll)
        return lines

    def _read_available(self, n: int) -> list[Line]:
        end = self.durable()
        out: list[Line] = []
        while len(out) < n:
            cut = self._buf.find(b"\n", self._off)
            if cut < 0:
                if not self._fill(end):
                    break
                continue
            raw = self._buf[self._off : cut + 1]
            self._off = cut + 1
            self._position += len(raw)
            text = raw.strip()
            if text:
                line = parse_line(
                    text, self.shape, self.dtype, self.max_classes,
                    end=self._position, where="WAL: ", record=True,
                )  # fmt: skip
                out.append(line)
        return out

    def _fill(self, end: int) -> bool:
        """Read more of the log, never past ``end`` (durable); False when there is none."""
        read_at = self._position + len(self._buf) - self._off
        if read_at >= end or not self._open_segment():
            return False
        chunk = os.pread(self._fd, min(end - read_at, READ_BYTES), read_at - self._file_start)
        if chunk:
            self._buf, self._off = self._buf[self._off :] + chunk, 0
            return True
        if self._off < len(self._buf):  # below the durable end every line is whole
            raise RuntimeError(f"{self.folder}: the line at {self._position} is not whole")
        return self._next_segment()  # this segment is done: the next starts where it ended

    def _open_segment(self) -> bool:
        """Open the segment holding the position (if not open); False if there is none."""
        if self._fd >= 0:
            return True
        starts = segments(self.folder)
        start = max((s for s in starts if s <= self._position), default=None)
        if start is None and starts:  # a fresh start after its first segments were deleted
            log.warning(
                "the WAL in %s starts at %d (earlier segments were deleted): learning from there",
                self.folder,
                starts[0],
            )
            start = self._position = starts[0]
        if start is None:
            return False
        self._fd = os.open(self.folder / _name(start), os.O_RDONLY)
        self._file_start = start
        return True

    def _next_segment(self) -> bool:
        """Move to the segment that starts at the position; False if there is none yet."""
        if self._file_start == self._position or self._position not in segments(self.folder):
            return False
        self._close_file()
        return True

    def _close_file(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._file_start = -1, -1
        self._buf, self._off = b"", 0

    def close(self) -> None:
        self._close_file()


@SOURCES.register("http", help="http (POST /learn, through the write-ahead log)")
def open_wal(url: str, context: SourceContext) -> WalSource:
    """``http``: the events ``POST /learn`` wrote to the WAL in the checkpoint folder."""
    if context.finite:
        raise ValueError("--stop-at-eof needs a finite source (jsonl:PATH), not http")
    if context.folder is None:
        raise ValueError("the http source keeps its WAL in the checkpoint folder: none given")
    return WalSource(
        wal_dir(context.folder),
        context.shape,
        context.dtype,
        max_classes=context.max_classes,
        durable=context.durable,
        keep=context.keep,
    )


open_wal.takes_location = False  # the URL is the bare word http
