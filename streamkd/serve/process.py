"""The daemon's learner in a process of its own.

Why a process: in one interpreter the HTTP server and the learner share one lock. Under 16
concurrent ``/predict`` clients on a 2-core machine the learner thread got 0.41 of a core
and learned at 37% of its idle speed, with a core still free. In its own process it keeps
its own lock; the HTTP process parses requests, writes the ``http`` source's write-ahead log
and runs batched forward passes on the newest predictor the learner sends it.

Protocol, two one-way pipes of pickled messages between our own two processes (client data
never travels as a pickle: it reaches the learner as JSON lines in the source):

* learner -> server: ``("ready", info)`` once started (or ``("failed", message)``); then
  ``("state", state)`` every :data:`PUBLISH_SECONDS` -- health, learning-step times, and a
  new frozen predictor when the model changed; ``("checkpointed", (request, ok, step))``;
  ``("finished", error)`` last.
* server -> learner: ``("checkpoint", request)`` and ``("stop",)``.

The learner dies with the server (``PR_SET_PDEATHSIG`` on Linux, and end-of-file on the
command pipe everywhere), so ``kill -9`` of the daemon is ``kill -9`` of both: the server
holds the checkpoint folder's lock, and no orphaned learner writes after it is gone.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch

from streamkd.serve.config import ServeConfig
from streamkd.serve.learner import (
    CHECKPOINT_KEYS,
    PUBLISH_SECONDS,
    DeadLetters,
    Learner,
    Predictor,
    build_strategy,
)

log = logging.getLogger(__name__)
START_SECONDS = 600.0  # the learner's start: load the data, build the model, resume


class LearnerProcess:
    """The server's handle on the learner process: the newest predictor and health it sent,
    and the commands it takes. Starting it returns once the learner has resumed (or raises
    :class:`ValueError` with the learner's reason, e.g. a checkpoint of another config)."""

    def __init__(self, config: ServeConfig) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter: nothing forked mid-thread
        command_end, self._commands = ctx.Pipe(duplex=False)
        self._states, state_end = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_learner_main,
            args=(dataclasses.asdict(config), command_end, state_end, os.getpid()),
            name="streamkd-learner",
            daemon=True,
        )
        self.process.start()
        command_end.close()  # ours closed: end-of-file tells each side the other is gone
        state_end.close()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.step_seconds: deque[float] = deque()
        self.last_checkpoint_step: int | None = None
        self.last_checkpoint_time = time.time()
        self._health: dict[str, Any] = {}
        self._answers: dict[int, tuple[bool, int | None]] = {}
        self._requests = 0
        self._changed = threading.Condition()
        self._send_lock = threading.Lock()

        try:
            kind, info = self._receive(timeout=START_SECONDS)
        except EOFError:
            self.process.join(timeout=10)
            code = self.process.exitcode
            kind, info = "failed", f"the learner ended while starting (exit code {code}); see above"
        if kind != "ready":
            self.process.join(timeout=10)
            raise ValueError(info)
        self.shape, self.dtype = tuple(info["shape"]), info["dtype"]
        self.max_classes, self.resumed = info["max_classes"], info["resumed"]
        self._apply(info["state"])
        self._reader = threading.Thread(target=self._read, name="learner-reader", daemon=True)
        self._reader.start()

    # -- what the server reads ---------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        health = dict(self._health)
        if self.error is not None:
            health["status"] = "error"
        if health.get("last_checkpoint_step") is not None:
            health["last_checkpoint_age_s"] = time.time() - self.last_checkpoint_time
        return health

    # -- commands ----------------------------------------------------------------------------
    def checkpoint(self, timeout: float = 30.0) -> int | None:
        """A checkpoint written after this call, waited for: its step, or None if none came
        in time."""
        with self._changed:
            self._requests += 1
            request = self._requests
        if not self._send(("checkpoint", request)):
            return None
        with self._changed:
            self._changed.wait_for(
                lambda: request in self._answers or self.finished.is_set(), timeout=timeout
            )
            ok, step = self._answers.pop(request, (False, None))
        return step if ok else None

    def stop(self) -> None:
        self._send(("stop",))

    def wait(self, timeout: float) -> bool:
        """Wait for the learner's final checkpoint and its exit; False if it did not finish
        in time (it is then killed: a crash, which the next start recovers from)."""
        done = self.finished.wait(timeout)
        self.process.join(timeout=10 if done else 0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
            return False
        return done and self.error is None

    # -- the pipes ---------------------------------------------------------------------------
    def _send(self, message: tuple) -> bool:
        try:
            with self._send_lock:
                self._commands.send(message)
            return True
        except (BrokenPipeError, OSError):  # the learner has gone: _read reports why
            return False

    def _receive(self, timeout: float | None = None) -> tuple[str, Any]:
        deadline = None if timeout is None else time.time() + timeout
        while not self._states.poll(0.5):
            if not self.process.is_alive() and not self._states.poll(0):
                raise EOFError
            if deadline is not None and time.time() > deadline:
                self.process.kill()
                return "failed", f"the learner did not start within {timeout:.0f} s"
        return pickle.loads(self._states.recv_bytes())

    def _read(self) -> None:
        try:
            while True:
                kind, payload = self._receive()
                if kind == "state":
                    self._apply(payload)
                elif kind == "checkpointed":
                    request, ok, step = payload
                    with self._changed:
                        self._answers[request] = (ok, step)
                        self._changed.notify_all()
                elif kind == "finished":
                    if payload is not None:
                        self.error = RuntimeError(payload)
                    break
        except (EOFError, OSError):
            self.process.join(timeout=5)
            self.error = RuntimeError(
                f"the learner process ended unexpectedly (exit code {self.process.exitcode})"
            )
            log.error("%s", self.error)
        finally:
            self.finished.set()
            with self._changed:
                self._changed.notify_all()

    def _apply(self, state: dict[str, Any]) -> None:
        if state["predictor"] is not None:
            self.predictor = Predictor(pickle.loads(state["predictor"]), state["version"])
        self._health = state["health"]
        self.last_checkpoint_step = self._health["last_checkpoint_step"]
        self.last_checkpoint_time = state["last_checkpoint_time"]
        self.step_seconds.extend(state["steps"])


# -- the learner process ------------------------------------------------------------------------


def _learner_main(fields: dict[str, Any], commands, states, parent: int) -> None:
    """Entry point of the learner process (spawned by :class:`LearnerProcess`)."""
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches both: the server stops us
    _log_to_stderr()
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with send_lock:
            states.send_bytes(data)

    from streamkd.checkpoint import CheckpointError
    from streamkd.data import DataNotFoundError
    from streamkd.types import InvalidBatchError

    config = ServeConfig(**fields)
    torch.set_num_threads(config.threads()[0])
    try:
        learner, built, resumed = open_learner(config)
    except (ValueError, DataNotFoundError, CheckpointError, InvalidBatchError) as err:
        send(("failed", str(err)))
        return
    except Exception as err:  # noqa: BLE001 - reported to the server, with the traceback here
        log.exception("the learner could not start")
        send(("failed", f"the learner could not start: {err!r}"))
        return
    signal.signal(signal.SIGTERM, lambda *_: learner.stop())  # a final checkpoint, then exit

    publisher = _Publisher(learner, send)
    send(
        (
            "ready",
            {
                "shape": built.shape,
                "dtype": built.dtype,
                "max_classes": built.max_classes,
                "resumed": resumed,
                "state": publisher.state(),
            },
        )
    )
    publisher.start()
    threading.Thread(
        target=_obey, args=(commands, learner, send), name="commands", daemon=True
    ).start()
    error = None
    try:
        learner.run()
    except BaseException as err:  # noqa: BLE001 - logged by run(); reported to the server
        error = f"the learner stopped on an error: {err!r}"
    finally:
        publisher.stop()
        learner.source.close()
        if learner.logger is not None:
            learner.logger.end("FAILED" if error else "FINISHED")
        send(("state", publisher.state()))
        send(("finished", error))


def open_learner(config: ServeConfig) -> tuple[Learner, Any, bool]:
    """The learner a config describes, resumed from its folder's newest good checkpoint."""
    from streamkd.checkpoint import Checkpointer
    from streamkd.drift import DriftMonitor
    from streamkd.streams.jsonl import JsonlSource
    from streamkd.streams.redis import RedisSource

    built = build_strategy(config)
    ck_dir = Path(config.checkpoint_dir).expanduser()
    checkpointer = Checkpointer(ck_dir, keep=config.keep, required=CHECKPOINT_KEYS)
    if config.source.startswith("redis://"):
        source = RedisSource(config.source, built.shape, built.dtype, max_classes=built.max_classes)
    else:
        path = source_path(config)
        if config.stop_at_eof and not path.exists():
            raise ValueError(f"--source {config.source}: {path} does not exist")
        source = JsonlSource(
            path,
            built.shape,
            built.dtype,
            max_classes=built.max_classes,
            follow=not config.stop_at_eof,
        )
    state = checkpointer.load_latest()  # read once: for MLflow and for the learner
    learner = Learner(
        built.strategy,
        source,
        checkpointer,
        batch_size=config.batch_size,
        checkpoint_every=config.checkpoint_every,
        checkpoint_seconds=config.checkpoint_seconds,
        stop_at_eof=config.stop_at_eof,
        dead_letters=DeadLetters(ck_dir / "dead-letters.jsonl"),
        config=built.config,
        logger=_mlflow_run(config, state),
        drift=DriftMonitor(config.drift) if config.drift is not None else None,
    )
    try:
        resumed = learner.resume(state)
    except BaseException:
        source.close()
        if learner.logger is not None:
            learner.logger.end("FAILED")
        raise
    return learner, built, resumed


def source_path(config: ServeConfig) -> Path:
    """The JSON-lines file a ``jsonl:PATH`` or ``http`` source reads (http: the WAL)."""
    if config.source == "http":
        return Path(config.checkpoint_dir).expanduser() / "wal.jsonl"
    return Path(config.source.split(":", 1)[1]).expanduser()


def _mlflow_run(config: ServeConfig, state: dict[str, Any] | None):
    """One MLflow run per daemon: a resumed daemon continues its checkpoint's run."""
    if config.no_track:
        return None
    from streamkd.tracking import Tracker

    tracker = Tracker(config.tracking_uri, experiment="streamkd-serve")
    if state is not None and state.get("mlflow_run_id"):
        return tracker.resume_run(state["mlflow_run_id"])
    return tracker.start_run(
        f"serve-{config.strategy}",
        {"strategy": config.strategy, "source": config.source, "like": config.like},
    )


class _Publisher:
    """Sends the learner's state to the server every :data:`PUBLISH_SECONDS`; pickles a
    predictor only when the learner published a new one. The learner never waits on it."""

    def __init__(self, learner: Learner, send) -> None:
        self.learner, self.send = learner, send
        self._sent = None
        self._stop = threading.Event()

    def state(self) -> dict[str, Any]:
        learner = self.learner
        last_time = learner.last_checkpoint_time  # read before health: never newer than it
        predictor = learner.predictor
        blob = None
        if predictor is not self._sent:
            blob = pickle.dumps(predictor.scores, protocol=pickle.HIGHEST_PROTOCOL)
            self._sent = predictor
        steps = []
        while learner.step_seconds:  # popleft is atomic: no sample lost to the learner
            steps.append(learner.step_seconds.popleft())
        return {
            "health": learner.health(),
            "last_checkpoint_time": last_time,
            "predictor": blob,
            "version": predictor.version,
            "steps": steps,
        }

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(PUBLISH_SECONDS):
            try:
                self.send(("state", self.state()))
            except OSError:  # the server has gone; the command thread ends this process
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _obey(commands, learner: Learner, send) -> None:
    while True:
        try:
            message = commands.recv()
        except (EOFError, OSError):  # the server is gone: end as a crash would, at once
            os._exit(1)
        if message[0] == "stop":
            learner.stop()
        elif message[0] == "checkpoint":
            ok = learner.request_checkpoint()
            send(("checkpointed", (message[1], ok, learner.last_checkpoint_step)))


def _die_with(parent: int) -> None:
    """Ask the kernel to kill this process when the server dies (Linux); the command pipe's
    end-of-file covers the rest."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() != parent:  # the server died before the line above took effect
        os._exit(1)


def _log_to_stderr() -> None:
    """The learner's log lines (resumed, a skipped checkpoint) as the CLI prints its own."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("streamkd: %(message)s"))
    root = logging.getLogger("streamkd")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
