"""``streamkd serve``: the HTTP API around a learner process
(:class:`~streamkd.serve.process.LearnerProcess`) or a read replica.

Routes (OpenAPI schema at ``/docs``):

* ``POST /predict`` -- ``{"x": ...}`` or ``{"batch": [{"id"?, "x"}, ...]}``; concurrent
  requests are batched into one forward pass (up to ``PREDICT_BATCH`` rows, waiting at most
  ``PREDICT_WAIT`` seconds) on the newest frozen predictor the learner published. An ``id``
  keeps the features, so a later ``/learn`` may send only the label.
* ``POST /learn`` -- an event or ``{"events": [...]}`` (the ``http`` source): validated
  whole, then appended to the write-ahead log ``<checkpoint-dir>/wal.jsonl`` and fsynced
  before the answer, so an acknowledged event survives a crash; an id already logged is
  refused (409), so a client that re-posts after a lost answer never makes it learn twice.
* ``POST /checkpoint`` (waits for it), ``GET /health``, ``GET /metrics`` (Prometheus).
* ``POST /correct`` -- ``{"text", "x" or "id"}`` for strategies that take corrections (droc):
  applied by the learner between steps and checkpointed before the answer; others answer 409.

Mutating routes need ``Authorization: Bearer <token>`` when a token is set. Every refusal is a
4xx with a precise message, counted in ``/metrics`` and written with its reason to
``<checkpoint-dir>/dead-letters.jsonl``; none changes the model.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from streamkd.atomic import strict_json
from streamkd.checkpoint import Checkpointer
from streamkd.serve.config import ServeConfig
from streamkd.serve.learner import CHECKPOINT_KEYS, DeadLetters, Replica, build_strategy
from streamkd.serve.metrics import Metrics
from streamkd.serve.process import LearnerProcess, source_path
from streamkd.streams.jsonl import EventError, append_lines, decode_json, parse_event, repair_tail

log = logging.getLogger(__name__)
PREDICT_BATCH = 256
PREDICT_WAIT = 0.002
REMEMBERED_PREDICTIONS = 10_000  # ids whose features a delayed /learn may reuse


class Refused(Exception):
    """A request refused with an HTTP status and a message."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class Service:
    """What the routes use: the learner (a :class:`LearnerProcess`, or a :class:`Replica`
    in this process), the WAL, the remembered predictions and the refusal counters."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.replica = config.replica_of is not None
        ck_dir = Path(config.replica_of or config.checkpoint_dir).expanduser()
        if self.replica and not Checkpointer(ck_dir, writable=False).paths():
            raise ValueError(f"--replica-of {ck_dir}: no checkpoint there yet")
        ck_dir.mkdir(parents=True, exist_ok=True)
        dead_dir = Path(config.checkpoint_dir).expanduser() if self.replica else ck_dir
        dead_dir.mkdir(parents=True, exist_ok=True)
        self.dead = DeadLetters(dead_dir / "dead-letters.jsonl")
        self._folder_lock = None
        self.wal = None
        self._init_counters()
        if self.replica:
            built = build_strategy(config)
            self.shape, self.dtype, self.max_classes = built.shape, built.dtype, built.max_classes
            model_config = {
                k: v for k, v in built.config.items() if k not in ("source", "batch_size")
            }
            checkpointer = Checkpointer(
                ck_dir, keep=config.keep, required=CHECKPOINT_KEYS, writable=False
            )
            self.learner = Replica(built.strategy, checkpointer, config=model_config)
            self.resumed, self.known_ids = True, set()
            return
        from filelock import FileLock, Timeout

        # one learner per folder (two would both write and both log); the server holds the
        # lock, and its learner process dies with it
        self._folder_lock = FileLock(ck_dir / "serve.lock")
        try:
            self._folder_lock.acquire(timeout=0)
        except Timeout:
            raise ValueError(
                f"--checkpoint-dir {ck_dir} is held by another streamkd serve"
            ) from None
        try:
            Checkpointer(ck_dir, keep=config.keep, required=CHECKPOINT_KEYS)  # writable?
            if config.source == "http":
                self.wal = source_path(config)
                if cut := repair_tail(self.wal):
                    log.warning(
                        "cut %d bytes of an unfinished write (never acknowledged) off %s",
                        cut,
                        self.wal,
                    )
            self.learner = LearnerProcess(config)
            self.shape, self.dtype = self.learner.shape, self.learner.dtype
            self.max_classes, self.resumed = self.learner.max_classes, self.learner.resumed
            self.known_ids = self._logged_ids()
        except BaseException:
            if getattr(self, "learner", None) is not None:
                self.learner.stop()
                self.learner.wait(timeout=60)
            self._folder_lock.release()
            raise

    def _init_counters(self) -> None:
        self.remembered: OrderedDict[str, np.ndarray] = OrderedDict()
        self.rejected: dict[str, int] = {}
        self.predictions = 0
        self.predict_seconds: list[float] = []
        self._wal_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._finished_cleanly = False

    def _logged_ids(self) -> set[str]:
        """Ids already in the write-ahead log (a re-post after a crash is a duplicate)."""
        ids: set[str] = set()
        if self.wal is not None and self.wal.exists():
            with open(self.wal) as f:
                for line in f:
                    try:
                        ids.add(json.loads(line)["id"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue
        return ids

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start following the learner's checkpoints (a replica; a learner process runs
        from the moment the service is built)."""
        if self.replica and self._thread is None:
            self._thread = threading.Thread(target=self.learner.run, name="replica", daemon=True)
            self._thread.start()

    def stop(self) -> bool:
        """Stop the learner (its final checkpoint) and release everything; safe to call
        twice. False if the learner did not finish within its time."""
        if self._stopped:
            return self._finished_cleanly
        self._stopped = True
        self.learner.stop()
        if self.replica:
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._finished_cleanly = True
        else:
            self._finished_cleanly = self.learner.wait(timeout=300)
            if not self._finished_cleanly and self.learner.error is None:
                log.error("the learner did not finish its final checkpoint in 300 s")
        if self._folder_lock is not None:
            self._folder_lock.release()
        return self._finished_cleanly

    # -- refusals ----------------------------------------------------------------------------
    def refuse(self, status: int, reason: str, payload: str, kind: str) -> Refused:
        with self._count_lock:
            self.rejected[kind] = self.rejected.get(kind, 0) + 1
        self.dead.write(reason, payload, f"http:{kind}")
        return Refused(status, reason)

    # -- predict -----------------------------------------------------------------------------
    def parse_inputs(self, body: Any, raw: str) -> tuple[list[str | None], torch.Tensor, bool]:
        if isinstance(body, dict) and "batch" in body:
            items, single = body["batch"], False
            if not isinstance(items, list) or not items:
                raise self.refuse(422, "batch must be a non-empty list", raw, "predict")
        else:
            items, single = [body], True
        ids, xs = [], []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "x" not in item:
                raise self.refuse(422, f"item {i}: expected an object with x", raw, "predict")
            if "id" in item and not isinstance(item["id"], str):
                raise self.refuse(422, f"item {i}: id must be a string", raw, "predict")
            event_id = item.get("id") or f"predict-{i}"
            try:
                event = parse_event(
                    {"id": event_id, "x": item["x"]}, self.shape, self.dtype, self.max_classes
                )
            except EventError as err:
                raise self.refuse(422, str(err), raw, "predict") from None
            ids.append(item.get("id"))
            xs.append(event.x)
        return ids, torch.from_numpy(np.stack(xs)), single

    def remember(self, ids: list[str | None], x: torch.Tensor) -> None:
        with self._count_lock:
            for event_id, row in zip(ids, x.numpy(), strict=True):
                if event_id:
                    self.remembered[event_id] = row.copy()
                    self.remembered.move_to_end(event_id)
                    while len(self.remembered) > REMEMBERED_PREDICTIONS:
                        self.remembered.popitem(last=False)

    def remembered_x(self, event_id: Any) -> list | None:
        with self._count_lock:
            row = self.remembered.get(event_id) if isinstance(event_id, str) else None
        return None if row is None else row.tolist()

    # -- correct -----------------------------------------------------------------------------
    def parse_correction(self, body: Any, raw: str) -> tuple[str, np.ndarray]:
        """``{"text": ..., "x": ...}`` or ``{"text": ..., "id": <an earlier /predict id>}``."""
        from streamkd.strategies import get_strategy

        if self.replica:
            raise self.refuse(
                409, "a replica serves predictions; POST /correct to the learner", raw, "correct"
            )
        if not hasattr(get_strategy(self.config.strategy), "correct"):
            raise self.refuse(
                409,
                f"strategy {self.config.strategy!r} does not take corrections "
                "(a correction-memory strategy such as droc does)",
                raw,
                "correct",
            )
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise self.refuse(
                422, "a correction is an object with text (and x or id)", raw, "correct"
            )
        unknown = sorted(set(body) - {"text", "x", "id"})
        if unknown:
            raise self.refuse(
                422, f"unknown keys {unknown}; a correction has text, x or id", raw, "correct"
            )
        x = body.get("x")
        if x is None:
            x = self.remembered_x(body.get("id"))
            if x is None:
                raise self.refuse(
                    422,
                    "a correction needs x, or the id of a recent /predict with x",
                    raw,
                    "correct",
                )
        try:
            event = parse_event(
                {"id": "correction", "x": x}, self.shape, self.dtype, self.max_classes
            )
        except EventError as err:
            raise self.refuse(422, str(err), raw, "correct") from None
        return body["text"], event.x

    # -- learn -------------------------------------------------------------------------------
    def learn(self, body: Any, raw: str) -> list[str]:
        if self.replica:
            reason = "a replica serves predictions; POST /learn to the learner"
            raise self.refuse(409, reason, raw, "learn")
        if self.wal is None:
            raise self.refuse(
                409,
                f"this daemon learns from {self.config.source}; POST /learn needs --source http",
                raw,
                "learn",
            )
        items = body.get("events") if isinstance(body, dict) and "events" in body else [body]
        if not isinstance(items, list) or not items:
            raise self.refuse(422, "events must be a non-empty list", raw, "learn")
        lines, ids = [], []
        for i, item in enumerate(items):
            if isinstance(item, dict) and "x" not in item:
                x = self.remembered_x(item.get("id"))
                if x is not None:
                    item = {**item, "x": x}
            try:
                event = parse_event(item, self.shape, self.dtype, self.max_classes)
            except EventError as err:
                raise self.refuse(422, f"event {i}: {err}", raw, "learn") from None
            if event.y is None:
                raise self.refuse(422, f"event {event.id!r}: /learn needs a label y", raw, "learn")
            ids.append(event.id)
            lines.append(json.dumps(event.to_json(), separators=(",", ":")))
        with self._wal_lock:
            seen = [i for i in ids if i in self.known_ids]
            if seen or len(set(ids)) != len(ids):
                dup = seen or [i for i in ids if ids.count(i) > 1]
                raise self.refuse(
                    409, f"duplicate event id(s) {sorted(set(dup))[:10]}", raw, "learn"
                )
            append_lines(self.wal, lines)
            self.known_ids.update(ids)
        return ids


def create_app(service: Service):
    """The FastAPI application over ``service`` (a replica starts following with the app)."""
    metrics = Metrics(service)
    batcher = PredictBatcher(service, metrics)

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        watcher = asyncio.create_task(_exit_when_finished(app, service))
        yield
        watcher.cancel()
        await asyncio.get_running_loop().run_in_executor(None, service.stop)

    app = FastAPI(title="streamkd serve", lifespan=lifespan)

    async def body_of(request: Request, kind: str) -> tuple[Any, str]:
        limit = service.config.max_body
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limit:
            raise service.refuse(413, f"request body over {limit} bytes", "", kind)
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise service.refuse(413, f"request body over {limit} bytes", "", kind)
            chunks.append(chunk)
        raw = b"".join(chunks).decode("utf-8", errors="replace")
        try:
            return decode_json(raw), raw
        except EventError as err:
            raise service.refuse(400, str(err), raw, kind) from None

    def authorized(request: Request) -> bool:
        token = service.config.token
        if token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def authorize(request: Request, kind: str) -> None:
        if not authorized(request):
            raise service.refuse(401, "missing or wrong bearer token", "", kind)

    @app.exception_handler(Refused)
    async def refused(request: Request, err: Refused):
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse({"error": err.reason}, status_code=err.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        reason = f"{request.method} {request.url.path}: {err.detail}"
        service.refuse(err.status_code, reason, "", "route")
        return JSONResponse({"error": reason}, status_code=err.status_code, headers=err.headers)

    @app.post("/predict")
    async def predict(request: Request):
        body, raw = await body_of(request, "predict")
        ids, x, single = service.parse_inputs(body, raw)
        if authorized(request):  # only a client trusted to /learn may name features for it
            service.remember(ids, x)
        scores, applied, version = await batcher.submit(x)
        rows = [
            {"id": i, "label": int(s.argmax()) if s.numel() else None, "scores": s.tolist()}
            for i, s in zip(ids, scores, strict=True)
        ]
        if applied is not None:  # a correction memory: the knowledge each answer used
            for row, knowledge in zip(rows, applied, strict=True):
                row["applied"] = knowledge
        out = {**rows[0]} if single else {"predictions": rows}
        out["model_version"] = version
        return JSONResponse(strict_json(out))

    @app.post("/learn")
    async def learn(request: Request):
        authorize(request, "learn")
        body, raw = await body_of(request, "learn")
        loop = asyncio.get_running_loop()
        ids = await loop.run_in_executor(None, service.learn, body, raw)  # fsync off the loop
        return {"accepted": len(ids), "ids": ids}

    @app.post("/checkpoint")
    async def checkpoint(request: Request):
        authorize(request, "checkpoint")
        if service.replica:
            raise service.refuse(409, "a replica does not write checkpoints", "", "checkpoint")
        if service.learner.finished.is_set():
            return JSONResponse(
                {"error": "the learner has stopped", "step": service.learner.last_checkpoint_step},
                status_code=503,
            )
        loop = asyncio.get_running_loop()
        step = await loop.run_in_executor(None, service.learner.checkpoint)
        if step is None:
            return JSONResponse({"error": "no checkpoint within 30 s"}, status_code=503)
        return {"step": step}

    @app.post("/correct")
    async def correct(request: Request):
        authorize(request, "correct")
        body, raw = await body_of(request, "correct")
        text, x = service.parse_correction(body, raw)
        loop = asyncio.get_running_loop()
        call = functools.partial(service.learner.call, "correct", (x, text), 60.0)
        ok, result = await loop.run_in_executor(None, call)
        if not ok:
            return JSONResponse(  # a timed-out call may still be applied: say so
                {"error": f"correction not confirmed ({result}); check before re-sending"},
                status_code=503,
            )
        if "refused" in result:
            raise service.refuse(422, result["refused"], raw, "correct")
        return JSONResponse(strict_json({"stored": result}))

    @app.get("/health")
    async def health():
        status = 503 if service.learner.error is not None else 200
        return JSONResponse(strict_json(service.learner.health()), status_code=status)

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)

    return app


async def _exit_when_finished(app, service: Service) -> None:
    """Stop the server once the learner has finished (``--stop-at-eof``, or a crash)."""
    while not service.learner.finished.is_set():
        await asyncio.sleep(0.05)
    server = getattr(app.state, "server", None)
    if server is not None:
        server.should_exit = True


class PredictBatcher:
    """Dynamic batching: requests arriving together share one forward pass."""

    def __init__(self, service: Service, metrics) -> None:
        self.service, self.metrics = service, metrics
        # one thread runs every forward pass (one at a time anyway); torch's thread count is
        # per calling thread under OpenMP, so it is set there, to this process's share
        self.executor = ThreadPoolExecutor(
            1, "predict", initializer=torch.set_num_threads, initargs=(service.config.threads()[1],)
        )
        self.queue: list[tuple[torch.Tensor, asyncio.Future]] = []
        self.wakeup: asyncio.Event | None = None
        self.worker: asyncio.Task | None = None

    async def submit(self, x: torch.Tensor):
        loop = asyncio.get_running_loop()
        if self.worker is None:
            self.wakeup = asyncio.Event()
            self.worker = loop.create_task(self._work())
        future = loop.create_future()
        self.queue.append((x, future))
        self.wakeup.set()
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            if not self.queue:
                continue
            if sum(len(x) for x, _ in self.queue) < PREDICT_BATCH:
                await asyncio.sleep(PREDICT_WAIT)  # let concurrent requests join
            taken, rows = [], 0
            while self.queue and rows < PREDICT_BATCH:
                taken.append(self.queue.pop(0))
                rows += len(taken[-1][0])
            if self.queue:
                self.wakeup.set()
            predictor = self.service.learner.predictor
            x = torch.cat([t for t, _ in taken])
            started = time.perf_counter()
            try:
                run = functools.partial(_scores_on_cpu, predictor, x)
                scores, applied = await loop.run_in_executor(self.executor, run)
            except Exception as err:  # noqa: BLE001 - each waiting request gets the error
                for _, future in taken:
                    if not future.done():  # a client that went away cancelled its future
                        future.set_exception(err)
                continue
            self.metrics.observe_predict(time.perf_counter() - started, len(x))
            start = 0
            for t, future in taken:
                if not future.done():
                    part = None if applied is None else applied[start : start + len(t)]
                    future.set_result((scores[start : start + len(t)], part, predictor.version))
                start += len(t)


def _scores_on_cpu(predictor, x: torch.Tensor) -> tuple[torch.Tensor, list | None]:
    """Scores, and what knowledge each row used where the predictor reports it (DROC)."""
    explain = getattr(predictor.scores, "predict_with_knowledge", None)
    if explain is not None:
        scores, applied = explain(x)
        return scores.cpu(), applied
    return predictor.scores(x).cpu(), None
