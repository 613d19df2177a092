"""The daemon's learner: the single writer. It reads a source in batches, predicts each batch
before learning it (prequential accuracy), learns it, and checkpoints its whole state with the
source's position, so a restart after ``kill -9`` continues from the newest checkpoint and the
events after it are read again: nothing lost, nothing learned twice.

Readers (``/predict``, in the server process: :mod:`streamkd.serve.process`) never touch the
training model: the learner publishes a frozen predictor (:meth:`Strategy.predictor`) between
steps, and they use the newest one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamkd.checkpoint import Checkpointer
from streamkd.drift import DriftMonitor
from streamkd.engine import CheckpointSchedule, prequential_step
from streamkd.experiment import check_resumable
from streamkd.strategy import Strategy
from streamkd.streams.jsonl import Event, events_batch
from streamkd.streams.source import Source
from streamkd.types import InvalidBatchError

log = logging.getLogger(__name__)
PUBLISH_SECONDS = 0.5  # a new predictor at most this often (and after every checkpoint)


def model_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a model's parameters and buffers (its ``state_dict``), by name in sorted
    order: equal digests mean the same model, bit for bit."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def inspect_checkpoints(directory: str | Path) -> dict[str, Any]:
    """What the newest good checkpoint of ``directory`` holds (a daemon's or a run's): step,
    events learned, source position, strategy, prequential accuracy, MLflow run id and the
    model's digest. Reads only: the folder may belong to a running daemon."""
    from streamkd.checkpoint import CheckpointError

    state = Checkpointer(directory, kind="any", writable=False).load_latest()
    if state is None:
        raise CheckpointError(f"no checkpoint in {directory}")
    counters = state["counters"]  # one schema for a run's and a daemon's (streamkd.checkpoint)
    predicted = counters.get("predicted") or 0
    return {
        "kind": state["kind"],
        "step": int(state["step"]),
        "events_learned": int(counters["events_learned"]),
        "source_position": state["position"],
        "strategy": state["strategy"]["strategy"],
        "prequential_acc": counters.get("correct", 0) / predicted if predicted else None,
        "mlflow_run_id": state.get("mlflow_run_id") or None,
        "model_sha256": model_digest(state["strategy"]["model"]),
    }


@dataclass
class Built:
    """A daemon's strategy and what its inputs must be."""

    strategy: Strategy
    shape: tuple[int, ...]
    dtype: torch.dtype
    max_classes: int
    config: dict[str, Any]  # what a checkpoint must match to be resumed


def build_strategy(config) -> Built:
    """The strategy a :class:`~streamkd.serve.config.ServeConfig` names, on a model for
    ``--like STREAM``'s inputs (its default model) or for ``--input-shape`` (float32, MLP)."""
    from streamkd.experiment import (
        RESOLVED_PER_DEVICE,
        LearnerSpec,
        build_learner,
        strategy_kwargs,
    )

    shape = None
    if config.input_shape is not None:
        shape = tuple(int(d) for d in str(config.input_shape).split(","))
    learner = build_learner(
        LearnerSpec(
            config.strategy,
            stream=config.like if shape is None else None,
            input_shape=shape,
            strategy_args=strategy_kwargs(config.strategy, config.strategy_args),
            memory=config.memory,
            seed=config.seed,
            device=config.device,
            data_dir=config.data_dir,
            max_classes=config.max_classes,
        )
    )
    strategy, max_classes, like = learner.strategy, learner.max_classes, learner.stream
    dtype = torch.float32
    if like is not None:
        if like.input_shape is None:
            raise ValueError(f"--like {config.like}: multi-field streams cannot be served yet")
        shape, dtype = tuple(like.input_shape), next(iter(like)).x.dtype
    run_config = {
        "strategy": config.strategy,
        **{k: v for k, v in strategy.hparams.items() if k not in RESOLVED_PER_DEVICE},
        "like": config.like,
        "input_shape": config.input_shape,
        "drift": config.drift,
        "source": config.source,
        "batch_size": config.batch_size,
    }
    run_config = json.loads(json.dumps(run_config, default=str))
    return Built(strategy, shape, dtype, max_classes, run_config)


class DeadLetters:
    """Refused input, one JSON line each (why, what, where from), written by a thread of its
    own so a refusal never waits for the disk.

    Bounded: at most ``queue`` records wait (more are counted in ``dropped``, not written);
    the input kept per record is cut at ``INPUT_MAX`` characters; the file is rotated to
    ``<name>.1`` once it passes ``max_bytes`` (one rotation kept, so at most twice
    ``max_bytes`` on disk). The server and learner processes append to the same file, one
    ``O_APPEND`` write per record; a lock file serialises their rotations.
    """

    INPUT_MAX = 10_000

    def __init__(self, path: str | Path, max_bytes: int = 16 * 2**20, queue: int = 1000) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.count = self.dropped = 0
        self._pending: deque[bytes] = deque()
        self._limit = queue
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._closed = False
        self._thread = threading.Thread(target=self._drain, name="dead-letters", daemon=True)
        self._thread.start()

    def write(self, reason: str, payload: str | bytes, source: str) -> None:
        if isinstance(payload, bytes):
            payload = payload[: self.INPUT_MAX * 4].decode("utf-8", errors="replace")
        record = {
            "time": time.time(),
            "source": source,
            "reason": reason,
            "input": payload[: self.INPUT_MAX],
        }
        data = (json.dumps(record) + "\n").encode()
        with self._lock:
            if len(self._pending) >= self._limit or self._closed:
                self.dropped += 1
                return
            self._pending.append(data)
            self.count += 1
            self._ready.notify()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every record written so far is on disk."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while (self._pending or self._busy) and time.monotonic() < deadline:
                self._ready.wait(0.01)

    _busy = False

    def _drain(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if not self._pending and self._closed:
                    return
                batch = list(self._pending)
                self._pending.clear()
                self._busy = True
            try:
                self._append(batch)
            except OSError as err:  # a full disk: the dead letters are lost, said once
                log.warning("cannot write %d dead letter(s) to %s: %s", len(batch), self.path, err)
            finally:
                with self._lock:
                    self._busy = False
                    self._ready.notify_all()

    def _append(self, records: list[bytes]) -> None:
        """Append ``records``, rotating before one would take the file past ``max_bytes``."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        chunk: list[bytes] = []
        for record in records:
            if chunk and size + len(record) > self.max_bytes:
                self._write(b"".join(chunk))
                chunk = []
            if size and size + len(record) > self.max_bytes:
                size = self._rotate()
            chunk.append(record)
            size += len(record)
        if chunk:
            self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _rotate(self) -> int:
        """Move the file to ``<name>.1`` (unless the other process just did); its new size."""
        import fcntl

        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the other process may be rotating too
            try:
                if self.path.stat().st_size > self.max_bytes // 2:
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                    return 0
                return self.path.stat().st_size
            except FileNotFoundError:
                return 0

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._ready.notify_all()
        self._thread.join(timeout=10)


@dataclass
class Counters:
    """What the learner has done; part of every checkpoint."""

    events_learned: int = 0
    lines_rejected: int = 0
    correct: int = 0
    predicted: int = 0

    @property
    def prequential_acc(self) -> float | None:
        return self.correct / self.predicted if self.predicted else None


@dataclass
class Predictor:
    """A frozen scorer and the model version (events learned) it was taken at."""

    scores: Callable[[torch.Tensor], torch.Tensor]
    version: int
    serial: int = 0  # publications so far: a correction waits for the one that holds it
    taken_at: float = field(default_factory=time.time)


class Learner:
    """Consumes ``source`` with ``strategy``; checkpoints into ``checkpointer``."""

    def __init__(
        self,
        strategy: Strategy,
        source: Source,
        checkpointer: Checkpointer,
        *,
        batch_size: int = 10,
        checkpoint_every: int | None = 1000,
        checkpoint_seconds: float | None = 60.0,
        stop_at_eof: bool = False,
        dead_letters: DeadLetters | None = None,
        config: dict[str, Any] | None = None,
        logger=None,
        drift: DriftMonitor | None = None,
        log_every: int = 100,
        publish_seconds: float = PUBLISH_SECONDS,
    ) -> None:
        self.strategy, self.source, self.checkpointer = strategy, source, checkpointer
        self.drift, self.log_every = drift, log_every
        self.publish_seconds = publish_seconds
        self._next_log = log_every
        self.batch_size = batch_size
        self.stop_at_eof = stop_at_eof
        self.dead_letters = dead_letters
        self.config = config or {}
        self.logger = logger
        self.counters = Counters()
        self.last_checkpoint_step: int | None = None
        self.schedule = CheckpointSchedule(checkpoint_every, checkpoint_seconds)
        self.step_seconds: deque[float] = deque(
            maxlen=100_000
        )  # drained by the publisher, for /metrics
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._calls_lock = threading.Lock()
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self.publications = 0
        self.predictor = self._publish()

    # -- state -------------------------------------------------------------------------------
    def resume(self, state: dict[str, Any] | None) -> bool:
        """Continue from ``state``, the newest good checkpoint (``load_latest()``, which
        skips and logs corrupt ones); ``None`` starts fresh."""
        if state is None:
            log.info("no checkpoint in %s: starting fresh", self.checkpointer.directory)
            return False
        check_resumable(state, self.config, self.checkpointer.directory)
        self.strategy.load_state_dict(state["strategy"])
        self.source.seek(state["position"])
        self.counters = Counters(**state["counters"])
        if self.drift is not None and state.get("drift"):
            self.drift.load_state_dict(state["drift"])
        self._next_log = (self.counters.events_learned // self.log_every + 1) * self.log_every
        self.last_checkpoint_step = int(state["step"])
        self.schedule.resume(self.counters.events_learned)
        self.predictor = self._publish()
        log.info(
            "resumed from %s: %d events learned, source position %s",
            self.checkpointer.directory,
            self.counters.events_learned,
            self.source.position(),
        )
        return True

    def state(self) -> dict[str, Any]:
        return {
            "kind": "daemon",
            "strategy": self.strategy.state_dict(),
            "position": self.source.position(),
            "counters": dict(vars(self.counters)),
            "config": self.config,
            "mlflow_run_id": self.logger.run_id if self.logger is not None else "",
            "drift": self.drift.state_dict() if self.drift is not None else {},
        }

    def checkpoint(self) -> None:
        """Write a checkpoint now (learner thread only: between steps)."""
        if self.logger is not None:
            self.logger.flush()
        step = self.counters.events_learned
        self.checkpointer.save(self.state(), step=step)
        self.source.commit(step)  # e.g. XACK the Redis entries the checkpoint now covers
        if self.logger is not None:
            self.logger.set_tags({"checkpoint_step": step})
        self.last_checkpoint_step = step
        self.schedule.written()
        self.predictor = self._publish()

    def submit(self, call: Callable[[], Any]) -> Future:
        """Run ``call`` in the learner thread at the next step boundary (the learner is the
        single writer: a checkpoint on request, a correction); returns its future. Calls
        still pending when the learner stops fail with :class:`RuntimeError`."""
        future: Future = Future()
        with self._calls_lock:  # never queued after the final drain
            if self.finished.is_set():
                future.set_exception(RuntimeError("the learner has stopped"))
            else:
                self._calls.put((call, future))
        return future

    def _run_calls(self) -> None:
        while True:
            try:
                call, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as err:  # noqa: BLE001 - the caller gets it
                    future.set_exception(err)
                    if not isinstance(err, Exception):
                        raise

    # -- the loop ----------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Learn until stopped (or, with ``stop_at_eof``, until the source is exhausted);
        a final checkpoint is written either way."""
        try:
            while not self._stop.is_set():
                lines = self.source.read(self.batch_size)
                if lines:
                    self._learn_lines(lines)
                elif self.stop_at_eof and self.source.at_end():
                    break
                else:  # the source is quiet: predictions catch up with the last step
                    if self.predictor.version != self.counters.events_learned:
                        self.predictor = self._publish()
                    self._stop.wait(0.01)
                self._maybe_checkpoint()
            self.checkpoint()
        except BaseException as err:  # a crash of the loop is reported, never silent
            self.error = err
            log.exception("the learner stopped on an error")
            raise
        finally:
            with self._calls_lock:
                self.finished.set()
            while True:  # nothing runs after the final checkpoint: pending calls fail
                try:
                    _, future = self._calls.get_nowait()
                except queue.Empty:
                    break
                future.set_exception(RuntimeError("the learner has stopped"))

    def _learn_lines(self, lines) -> None:
        events: list[Event] = []
        for line in lines:
            if line.event is None:
                self.counters.lines_rejected += 1
                if self.dead_letters is not None:
                    self.dead_letters.write(line.error or "", line.text, self.source.describe())
            elif line.event.y is not None:
                events.append(line.event)
        if events:
            self._learn(events)

    def _learn(self, events: list[Event]) -> None:
        batch = events_batch(events, self.source.dtype)
        started = time.perf_counter()
        try:
            step = prequential_step(self.strategy, batch, on_hits=self._count).step
        except InvalidBatchError as err:  # e.g. a label beyond max_classes: dead-lettered
            self.counters.lines_rejected += len(events)  # refused before anything changed
            if self.dead_letters is not None:
                for e in events:
                    self.dead_letters.write(str(err), json.dumps(e.to_json()), "learner")
            return
        self.counters.events_learned += len(events)
        self.step_seconds.append(time.perf_counter() - started)
        if self.logger is not None and self.counters.events_learned >= self._next_log:
            n = self.counters.events_learned
            self._next_log = (n // self.log_every + 1) * self.log_every
            self.logger.log_metrics(  # buffered: written at checkpoints, off the step path
                {"loss": float(step.loss), "prequential_acc": self.counters.prequential_acc},
                step=n,
            )
        if time.time() - self.predictor.taken_at >= self.publish_seconds:
            self.predictor = self._publish()

    def _count(self, hits: torch.Tensor) -> None:
        """The prequential hits, counted on the host before the step is learned (the step
        then runs on the device while the next lines are read)."""
        hit = hits.cpu()
        self.counters.correct += int(hit.sum())
        if self.drift is not None:
            self.drift.update_many((~hit).float(), start_index=self.counters.predicted)
        self.counters.predicted += len(hit)

    def _maybe_checkpoint(self) -> None:
        self._run_calls()
        if self.schedule.due(self.counters.events_learned):
            self.checkpoint()

    @property
    def last_checkpoint_time(self) -> float:
        """When the last checkpoint was written (the learner's start before the first)."""
        return self.schedule.last_time

    def _publish(self) -> Predictor:
        # eval mode, as predict() uses: what a predictor computes (e.g. SCR's class means,
        # cached) must not depend on when it was published
        self.strategy.train_mode(False)
        self.publications += 1
        return Predictor(
            self.strategy.predictor(), self.counters.events_learned, serial=self.publications
        )

    # -- what operators read -----------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        age = (
            time.time() - self.last_checkpoint_time
            if self.last_checkpoint_step is not None
            else None
        )
        return {
            "status": "error" if self.error else ("finished" if self.finished.is_set() else "ok"),
            "events_learned": self.counters.events_learned,
            "lines_rejected": self.counters.lines_rejected,
            "prequential_acc": self.counters.prequential_acc,
            "drift_events": len(self.drift.events) if self.drift is not None else None,
            "model_version": self.predictor.version,
            "source": self.source.describe(),
            "source_position": self.source.position(),
            "last_checkpoint_step": self.last_checkpoint_step,
            "last_checkpoint_age_s": age,
        }


class Replica:
    """A read replica: serves predictions from the newest checkpoint a learner wrote in
    ``checkpointer``'s folder, hot-swapping to each new one (polled every ``poll`` seconds):
    the new predictor is built aside and swapped in one reference assignment, so a request
    never sees half a model. It never learns and never writes into the folder.

    It tracks the file it actually loaded (after a corrupt newest one, the fallback) apart
    from the newest file it has looked at, so it re-reads only when the folder changes. A
    checkpoint of another config is not loaded: the replica reports an error (``/health``
    503, logged once) and keeps serving what it had until a matching one appears.
    """

    def __init__(
        self,
        strategy: Strategy,
        checkpointer: Checkpointer,
        *,
        config: dict[str, Any] | None = None,
        poll: float = 0.25,
    ) -> None:
        self.strategy, self.checkpointer = strategy, checkpointer
        self.config = config or {}
        self.poll = poll
        self.counters = Counters()
        self.last_checkpoint_step: int | None = None
        self.last_checkpoint_time = time.time()
        self.loaded_path: Path | None = None
        self._looked: tuple | None = None  # (newest path, mtime, size) last read
        self._loaded: tuple | None = None  # the same of the file loaded
        self.step_seconds: deque[float] = deque()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.predictor = Predictor(strategy.predictor(), 0)
        self.refresh()

    @staticmethod
    def _signature(path: Path) -> tuple | None:
        try:
            stat = path.stat()
        except OSError:  # rotated away meanwhile: the next poll
            return None
        return (path, stat.st_mtime_ns, stat.st_size)

    def refresh(self) -> bool:
        """Load the newest good checkpoint if the folder changed and it is not the one
        loaded; True if swapped."""
        paths = self.checkpointer.paths()
        newest = self._signature(paths[0]) if paths else None
        if newest is None or newest == self._looked:  # e.g. a correction rewrites a step
            return False
        found = self.checkpointer.latest(quiet=self._looked is not None)
        self._looked = newest
        if found is None:
            return False
        path, state = found
        signature = self._signature(path)
        if signature is None or signature == self._loaded:
            return False
        try:
            check_resumable(state, self.config, self.checkpointer.directory, only_given=True)
        except ValueError as err:
            if self.error is None or str(self.error) != str(err):
                log.error("replica cannot serve %s: %s", path.name, err)
            self.error = err
            return False
        self.strategy.load_state_dict(state["strategy"])
        self.counters = Counters(**state["counters"])
        self.last_checkpoint_step = int(state["step"])
        self.last_checkpoint_time = signature[1] / 1e9  # the checkpoint's age, not the load's
        self._loaded, self.loaded_path, self.error = signature, path, None
        self.predictor = Predictor(self.strategy.predictor(), self.counters.events_learned)
        log.info("replica now serves %s (%d events learned)", path.name, state["step"])
        return True

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        try:
            while not self._stop.wait(self.poll):
                try:
                    self.refresh()
                except Exception as err:  # noqa: BLE001 - a learner mid-rotation: next poll
                    log.debug("replica could not load a checkpoint yet: %s", err)
        finally:
            self.finished.set()

    def health(self) -> dict[str, Any]:
        return {
            "status": "error" if self.error is not None else "replica",
            "error": None if self.error is None else str(self.error),
            "events_learned": self.counters.events_learned,
            "prequential_acc": self.counters.prequential_acc,
            "model_version": self.predictor.version,
            "replica_of": str(self.checkpointer.directory),
            "checkpoint": self.loaded_path.name if self.loaded_path else None,
            "last_checkpoint_step": self.last_checkpoint_step,
            "last_checkpoint_age_s": (
                time.time() - self.last_checkpoint_time if self.loaded_path else None
            ),
        }
