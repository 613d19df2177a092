"""The daemon's learner in a process of its own.

Why a process: in one interpreter the HTTP server and the learner share one lock. Under 16
concurrent ``/predict`` clients on a 2-core machine the learner thread got 0.41 of a core
and learned at 37% of its idle speed, with a core still free. In its own process it keeps
its own lock; the HTTP process parses requests, writes the ``http`` source's write-ahead log
and runs batched forward passes on the newest predictor the learner sends it.

Protocol, two one-way pipes of pickled messages between our own two processes (client data
never travels as a pickle: it reaches the learner as JSON lines in the source, or as a
validated array with a correction):

* learner -> server: ``("ready", info)`` once started (or ``("failed", message)``); then
  ``("state", state)`` every :data:`STATE_SECONDS` -- health, learning-step times, and a
  new frozen predictor when the learner published one (at most every ``publish_seconds``,
  after each checkpoint and correction, and when the source goes quiet);
  ``("answer", (request, ok, result))`` for each call; ``("finished", error)`` last.
* server -> learner: calls ``(kind, request, payload)`` -- ``"checkpoint"`` and ``"correct"``,
  run by the learner thread between steps (it stays the single writer) -- and ``("stop",)``.

The ``http`` source's durable end (:mod:`streamkd.serve.wal`) is a shared 64-bit integer the
server sets after each fsync and the learner's :class:`~streamkd.serve.wal.WalSource` reads:
the learner never reads a byte that is not durable.

The learner dies with the server: ``PR_SET_PDEATHSIG`` on Linux (tied to the thread that
started it: build the service in the main thread), and end-of-file on the command pipe once
it runs; so ``kill -9`` of the daemon is ``kill -9`` of both. The server holds the checkpoint
folder's lock, and no orphaned learner writes after it is gone.
"""

from __future__ import annotations

import contextlib
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
    DeadLetters,
    Learner,
    Predictor,
    build_strategy,
    model_digest,
)

log = logging.getLogger(__name__)
START_SECONDS = 600.0  # the learner's start: load the data, build the model, resume
STATE_SECONDS = 0.05  # health and step times to the server this often


class LearnerProcess:
    """The server's handle on the learner process: the newest predictor and health it sent,
    and the commands it takes. Starting it returns once the learner has resumed (or raises
    :class:`ValueError` with the learner's reason, e.g. a checkpoint of another config)."""

    def __init__(self, config: ServeConfig, durable=None) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter: nothing forked mid-thread
        command_end, self._commands = ctx.Pipe(duplex=False)
        self._states, state_end = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_learner_main,
            args=(dataclasses.asdict(config), command_end, state_end, os.getpid(), durable),
            name="streamkd-learner",
            daemon=True,
        )
        with _sigint_ignored():  # inherited: Ctrl-C never interrupts the child's start-up
            self.process.start()
        command_end.close()  # ours closed: end-of-file tells each side the other is gone
        state_end.close()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.step_seconds: deque[float] = deque(maxlen=100_000)  # drained by /metrics
        self.last_checkpoint_step: int | None = None
        self.last_checkpoint_time = time.time()
        self._health: dict[str, Any] = {}
        self._answers: dict[int, tuple[bool, Any]] = {}
        self._waiting: set[int] = set()
        self._requests = 0
        self._changed = threading.Condition()
        self._send_lock = threading.Lock()
        try:
            try:
                kind, info = self._receive(timeout=START_SECONDS)
            except EOFError:
                self.process.join(timeout=10)
                code = self.process.exitcode
                kind, info = "failed", f"the learner ended while starting (exit code {code})"
            if kind != "ready":
                raise ValueError(info)
            self.shape, self.dtype = tuple(info["shape"]), info["dtype"]
            self.max_classes, self.resumed = info["max_classes"], info["resumed"]
            self._apply(info["state"])
        except BaseException:  # no learner may outlive a failed start (nor the folder lock)
            self.process.kill()
            self.process.join()
            raise
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
    def call(self, kind: str, payload: Any, timeout: float) -> tuple[bool, Any]:
        """Run ``kind`` in the learner thread between steps and wait for its answer:
        ``(True, result)``, or ``(False, reason)`` if it failed, timed out or the learner
        has stopped. A result naming a ``publication`` waits (up to ``timeout`` again) for
        the predictor of that publication to serve here, so the next /predict sees what the
        call changed; past that wait it returns the result all the same."""
        ok, result = self._call(kind, payload, timeout)
        if ok and isinstance(result, dict) and "publication" in result:
            with self._changed:
                self._changed.wait_for(
                    lambda: (
                        self.predictor.serial >= result["publication"] or self.finished.is_set()
                    ),
                    timeout=timeout,
                )
        return ok, result

    def _call(self, kind: str, payload: Any, timeout: float) -> tuple[bool, Any]:
        with self._changed:
            self._requests += 1
            request = self._requests
            self._waiting.add(request)
        try:
            if not self._send((kind, request, payload)):
                return False, "the learner has stopped"
            with self._changed:
                self._changed.wait_for(
                    lambda: request in self._answers or self.finished.is_set(), timeout=timeout
                )
                if request in self._answers:
                    return self._answers.pop(request)
            return False, (
                "the learner has stopped" if self.finished.is_set() else f"no answer in {timeout} s"
            )
        finally:
            with self._changed:
                self._waiting.discard(request)
                self._answers.pop(request, None)  # a late answer is dropped, never kept

    def stop(self) -> None:
        self._send(("stop",))

    def wait(self, timeout: float) -> bool:
        """Wait for the learner's final checkpoint and its exit; False if it did not finish
        in time (it is then killed: a crash, which the next start recovers from)."""
        done = self.finished.wait(timeout)
        self.process.join(timeout=60 if done else 0)  # after "finished": MLflow's last writes
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
                elif kind == "answer":
                    request, ok, result = payload
                    with self._changed:
                        if request in self._waiting:
                            self._answers[request] = (ok, result)
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
        except Exception as err:  # noqa: BLE001 - an unreadable message: stop, with the reason
            self.error = RuntimeError(f"a message from the learner could not be read: {err!r}")
            self.process.kill()
        finally:
            self.finished.set()
            with self._changed:
                self._changed.notify_all()

    def _apply(self, state: dict[str, Any]) -> None:
        if state["predictor"] is not None:
            scores = pickle.loads(state["predictor"])
            self.predictor = Predictor(scores, state["version"], serial=state["serial"])
            with self._changed:
                self._changed.notify_all()
        self._health = state["health"]
        self.last_checkpoint_step = self._health["last_checkpoint_step"]
        self.last_checkpoint_time = state["last_checkpoint_time"]
        self.step_seconds.extend(state["steps"])


# -- the learner process ------------------------------------------------------------------------


def _learner_main(fields: dict[str, Any], commands, states, parent: int, durable=None) -> None:
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
        learner, built, resumed = open_learner(config, durable)
    except (ValueError, DataNotFoundError, CheckpointError, InvalidBatchError) as err:
        send(("failed", str(err)))
        return
    except Exception as err:  # noqa: BLE001 - reported to the server, with the traceback here
        log.exception("the learner could not start")
        send(("failed", f"the learner could not start: {err!r}"))
        return
    signal.signal(signal.SIGTERM, lambda *_: learner.stop())  # a final checkpoint, then exit

    publisher = _Publisher(learner, send)
    error = None
    try:
        ready = {
            "shape": built.shape,
            "dtype": built.dtype,
            "max_classes": built.max_classes,
            "resumed": resumed,
            "state": publisher.state(),
        }
        send(("ready", ready))
        publisher.start()
        threading.Thread(
            target=_obey, args=(commands, learner, send), name="commands", daemon=True
        ).start()
        learner.run()
    except BaseException as err:  # noqa: BLE001 - logged by run(); reported to the server
        error = f"the learner stopped on an error: {err!r}"
    finally:
        publisher.stop()
        error = error or publisher.error
        for cleanup in (
            learner.source.close,
            learner.dead_letters.close,
            lambda: learner.logger and learner.logger.end("FAILED" if error else "FINISHED"),
            lambda: send(("state", publisher.state())),
        ):
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - each step on its own: "finished" always goes
                log.exception("while stopping the learner")
        send(("finished", error))


def open_learner(config: ServeConfig, durable=None) -> tuple[Learner, Any, bool]:
    """The learner a config describes, resumed from its folder's newest good checkpoint.
    ``durable``: the shared durable end of the ``http`` source's WAL (none: read what is
    written, e.g. a WAL no server appends to)."""
    from streamkd.checkpoint import Checkpointer
    from streamkd.drift import DriftMonitor
    from streamkd.streams.source import SourceContext, open_source

    built = build_strategy(config)
    ck_dir = Path(config.checkpoint_dir).expanduser()
    checkpointer = Checkpointer(ck_dir, keep=config.keep, kind="daemon")
    source = open_source(
        config.source,
        SourceContext(
            built.shape,
            built.dtype,
            max_classes=built.max_classes,
            folder=ck_dir,
            finite=config.stop_at_eof,
            durable=None if durable is None else (lambda: durable.value),
            keep=config.keep,
        ),
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
        dead_letters=DeadLetters(ck_dir / "dead-letters.jsonl", max_bytes=config.dead_letter_bytes),
        config=built.config,
        logger=_mlflow_run(config, state),
        drift=DriftMonitor(config.drift) if config.drift is not None else None,
        publish_seconds=config.publish_seconds,
    )
    try:
        resumed = learner.resume(state)
    except BaseException:
        source.close()
        if learner.logger is not None:
            learner.logger.end("FAILED")
        raise
    return learner, built, resumed


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
    """Sends the learner's state to the server every :data:`STATE_SECONDS` from its own
    thread; pickles a predictor only when the learner published a new one. A failure to
    send stops the learner, with the reason."""

    def __init__(self, learner: Learner, send) -> None:
        self.learner, self.send = learner, send
        self.error: str | None = None
        self._sent = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        health = learner.health()
        health["model_version"] = predictor.version  # the predictor the server will serve
        return {
            "health": health,
            "last_checkpoint_time": last_time,
            "predictor": blob,
            "version": predictor.version,
            "serial": predictor.serial,
            "steps": steps,
        }

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(STATE_SECONDS):
            try:
                self.send(("state", self.state()))
            except OSError:  # the server has gone; the command thread ends this process
                return
            except Exception as err:  # noqa: BLE001 - e.g. a predictor that cannot pickle
                log.exception("cannot send the learner's state")
                self.error = f"cannot send the learner's state: {err!r}"
                self.learner.stop()
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _obey(commands, learner: Learner, send) -> None:
    """The command thread: calls go to the learner thread (answered when done), a stop
    stops it; end-of-file means the server is gone."""
    while True:
        try:
            message = commands.recv()
        except (EOFError, OSError):  # the server is gone: end as a crash would, at once
            os._exit(1)
        if message[0] == "stop":
            learner.stop()
            continue
        kind, request, payload = message
        work = CALLS.get(kind)
        if work is None:
            send(("answer", (request, False, f"unknown call {kind!r}")))
            continue
        future = learner.submit(lambda work=work, payload=payload: work(learner, payload))
        future.add_done_callback(lambda f, request=request: _answer(send, request, f))


def _answer(send, request: int, future) -> None:
    err = future.exception()
    answer = (request, True, future.result()) if err is None else (request, False, str(err))
    with contextlib.suppress(OSError):  # the server is gone: the command thread ends us
        send(("answer", answer))


def _checkpoint(learner: Learner, _payload: Any) -> dict[str, Any]:
    learner.checkpoint()
    digest = model_digest(learner.strategy.model.state_dict())
    return {"step": learner.last_checkpoint_step, "model_sha256": digest}


def _correct(learner: Learner, payload: tuple[Any, str]) -> dict[str, Any]:
    """A correction (e.g. DROC's), then a checkpoint: durable before it is acknowledged."""
    from streamkd.types import InvalidBatchError

    x, text = payload
    try:
        result = learner.strategy.correct(torch.from_numpy(x), text)
    except (ValueError, InvalidBatchError) as err:  # CorrectionError is a ValueError
        return {"refused": str(err)}
    learner.checkpoint()  # publishes a predictor holding the correction
    return {**result, "publication": learner.predictor.serial}


CALLS = {"checkpoint": _checkpoint, "correct": _correct}


@contextlib.contextmanager
def _sigint_ignored():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
