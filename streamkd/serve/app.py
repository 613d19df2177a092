"""``streamkd serve``: the HTTP API around a learner process
(:class:`~streamkd.serve.process.LearnerProcess`) or a read replica.

Routes (request and response models in ``/openapi.json``, shown at ``/docs``; see
:mod:`streamkd.serve.schema`):

* ``POST /predict`` -- ``{"x": ...}`` or ``{"batch": [{"id"?, "x"}, ...]}``; concurrent
  requests are batched into one forward pass (up to ``PREDICT_BATCH`` rows, waiting at most
  ``PREDICT_WAIT`` seconds) on the newest frozen predictor the learner published. An ``id``
  keeps the features (up to ``remember_bytes``), so a later ``/learn`` may send only the label.
* ``POST /learn`` -- an event or ``{"events": [...]}`` (the ``http`` source): validated whole,
  then appended to the write-ahead log (:mod:`streamkd.serve.wal`) and fsynced before the
  answer, so an acknowledged event survives a crash. Idempotent per event id: an id already
  in the log is not appended again, and the answer lists which ids were ``new`` and which
  were already ``held`` -- a client re-posts a batch whose answer it lost, whole.
* ``POST /checkpoint`` (waits for it; answers its step and model digest), ``GET /health``,
  ``GET /metrics`` (Prometheus).
* ``POST /correct`` -- ``{"text", "x" or "id"}`` for strategies that take corrections (droc):
  applied by the learner between steps and checkpointed before the answer; others answer 409.

Mutating routes need ``Authorization: Bearer <token>`` when a token is set, ``/predict``
when ``--token-predict`` is. Every refusal is a 4xx (or 503 when a bound is reached, with
``Retry-After``) with a precise message, counted in ``/metrics``; the ones with a body are
written, reasons truncated, to the capped and rotated ``dead-letters.jsonl`` off the event
loop (401/404/405 are counted only: an unauthenticated client cannot fill the disk). None
changes the model.

Bounds: ``max_body`` per request; ``max_connections`` open connections and tasks (uvicorn's
``limit_concurrency``, 503 beyond); ``max_queued_rows`` rows waiting for a forward pass (503);
``PARSE_SLOTS`` large bodies parsed at once, off the event loop (503 beyond).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hmac
import logging
import multiprocessing as mp
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException

from streamkd.atomic import strict_json
from streamkd.checkpoint import Checkpointer
from streamkd.serve import schema
from streamkd.serve.config import ServeConfig
from streamkd.serve.learner import DeadLetters, Replica, build_strategy
from streamkd.serve.metrics import Metrics
from streamkd.serve.process import LearnerProcess
from streamkd.serve.wal import WalError, WriteAheadLog, wal_dir
from streamkd.strategy import get_strategy
from streamkd.streams.jsonl import (
    EVENT_KEYS,
    Event,
    EventError,
    decode_json,
    may_hold_bools,
    parse_event,
)

log = logging.getLogger(__name__)
PREDICT_BATCH = 256
PREDICT_WAIT = 0.002
PARSE_INLINE = 64 * 1024  # bodies up to this many bytes are parsed on the event loop (< 1 ms)
PARSE_SLOTS = 4  # larger bodies parsed (or waiting to be) at once; beyond: 503
REASON_MAX = 500  # characters of a refusal's reason kept in a dead letter
RETRY_AFTER = "1"
PREDICT_KEYS = frozenset({"id", "x"})


class Refused(Exception):
    """A request refused with an HTTP status and a message."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers


class JSON(JSONResponse):
    """A strict JSON answer written by orjson (NaN and infinities as null); a
    ``JSONResponse`` so that ``/openapi.json`` documents the routes' answers as JSON (their
    models), not as ``{"type": "string"}`` beside them, which no answer could match."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:
            return orjson.dumps(strict_json(content))


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
        self.dead = DeadLetters(dead_dir / "dead-letters.jsonl", max_bytes=config.dead_letter_bytes)
        self._folder_lock = None
        self.wal: WriteAheadLog | None = None
        self._init_counters()
        if self.replica:
            built = build_strategy(config)
            self.shape, self.dtype, self.max_classes = built.shape, built.dtype, built.max_classes
            model_config = {
                k: v for k, v in built.config.items() if k not in ("source", "batch_size")
            }
            checkpointer = Checkpointer(ck_dir, keep=config.keep, kind="daemon", writable=False)
            self.learner = Replica(built.strategy, checkpointer, config=model_config)
            self.resumed = True
            return
        from filelock import FileLock, Timeout

        # one learner per folder (two would both write and both log); the server holds the
        # lock, and its learner process dies with it; not thread-local: stop() may run in
        # another thread than the one that built the service
        self._folder_lock = FileLock(ck_dir / "serve.lock", thread_local=False)
        try:
            self._folder_lock.acquire(timeout=0)
        except Timeout:
            raise ValueError(
                f"--checkpoint-dir {ck_dir} is held by another streamkd serve"
            ) from None
        try:
            Checkpointer(ck_dir, keep=config.keep, kind="daemon")  # writable?
            durable = None
            if config.source == "http":
                durable = mp.get_context("spawn").RawValue("q", 0)
                self.wal = WriteAheadLog(
                    wal_dir(ck_dir),
                    segment_bytes=config.wal_segment_bytes,
                    on_durable=lambda end: setattr(durable, "value", end),
                )
            self.learner = LearnerProcess(config, durable=durable)
            self.shape, self.dtype = self.learner.shape, self.learner.dtype
            self.max_classes, self.resumed = self.learner.max_classes, self.learner.resumed
        except BaseException:
            if getattr(self, "learner", None) is not None:
                self.learner.stop()
                self.learner.wait(timeout=60)
            if self.wal is not None:
                self.wal.close()
            self._folder_lock.release()
            raise

    def _init_counters(self) -> None:
        self.remembered: OrderedDict[str, np.ndarray] = OrderedDict()
        self.remembered_bytes = 0
        self.rejected: dict[str, int] = {}
        self.predictions = 0
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._finished_cleanly = False
        self.wal_pool = ThreadPoolExecutor(16, "wal")  # waiters share fsyncs (group commit)
        self.parse_pool = ThreadPoolExecutor(PARSE_SLOTS, "parse")
        self.parse_slots = threading.BoundedSemaphore(PARSE_SLOTS)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start following the learner's checkpoints (a replica; a learner process runs
        from the moment the service is built)."""
        if self.replica and self._thread is None:
            self._thread = threading.Thread(target=self.learner.run, name="replica", daemon=True)
            self._thread.start()

    def stop(self) -> bool:
        """Stop the learner (its final checkpoint) and release everything; safe to call
        twice, from any thread. False if the learner did not finish within its time."""
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
        self.wal_pool.shutdown(wait=False)
        self.parse_pool.shutdown(wait=False)
        if self.wal is not None:
            self.wal.close()
        self.dead.close()
        if self._folder_lock is not None:
            self._folder_lock.release()
        return self._finished_cleanly

    # -- refusals ----------------------------------------------------------------------------
    def refuse(
        self, status: int, reason: str, payload: bytes | str, kind: str, **headers: str
    ) -> Refused:
        with self._count_lock:
            key = f"{kind}_{status}" if status in (401, 404, 405, 503) else kind
            self.rejected[key] = self.rejected.get(key, 0) + 1
        if status not in (401, 404, 405):  # no body worth keeping, and free to send
            self.dead.write(reason[:REASON_MAX], payload, f"http:{kind}")
        return Refused(status, reason, headers or None)

    async def parse(self, work, raw: bytes, kind: str):
        """``work(raw)`` on the event loop for a small body, else in the parse pool (at
        most ``PARSE_SLOTS`` at once: a flood of large bodies gets 503, not a stalled loop)."""
        if len(raw) <= PARSE_INLINE:
            return work(raw)
        if not self.parse_slots.acquire(blocking=False):
            raise self.refuse(
                503, "too many large requests at once; retry", b"", kind, **{"Retry-After": "1"}
            )
        try:
            return await asyncio.get_running_loop().run_in_executor(self.parse_pool, work, raw)
        finally:
            self.parse_slots.release()

    def _body(self, raw: bytes, kind: str) -> Any:
        try:
            return decode_json(raw)
        except EventError as err:
            raise self.refuse(400, str(err), raw, kind) from None

    def _event(self, obj: Any, raw: bytes, kind: str, where: str = "", bools: bool = True) -> Event:
        """One event of a request, checked by the sources' parser; ``bools``: whether the
        body holds a ``true`` or ``false`` at all (:func:`may_hold_bools`, once per request)."""
        try:
            return parse_event(obj, self.shape, self.dtype, self.max_classes, bools=bools)
        except EventError as err:
            raise self.refuse(422, f"{where}{err}", raw, kind) from None

    # -- predict -----------------------------------------------------------------------------
    def parse_predict(self, raw: bytes) -> tuple[list[str | None], np.ndarray, bool]:
        body = self._body(raw, "predict")
        if isinstance(body, dict) and "batch" in body:
            items, single = body["batch"], False
            if set(body) != {"batch"}:
                extra = sorted(set(body) - {"batch"})
                raise self.refuse(422, f"unknown keys {extra}; expected batch", raw, "predict")
            if not isinstance(items, list) or not items:
                raise self.refuse(422, "batch must be a non-empty list", raw, "predict")
        else:
            items, single = [body], True
        most = self.config.max_queued_rows
        if len(items) > most:  # could never be queued: not a 503 to retry
            reason = f"a batch of {len(items)} rows; at most {most} (--max-queued-rows)"
            raise self.refuse(413, reason, raw, "predict")
        ids, xs, bools = [], [], may_hold_bools(raw)
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "x" not in item:
                raise self.refuse(422, f"item {i}: expected an object with x", raw, "predict")
            unknown = sorted(set(item) - PREDICT_KEYS)
            if unknown:
                raise self.refuse(
                    422, f"item {i}: unknown keys {unknown}; an item has x and id", raw, "predict"
                )
            item_id = item.get("id")  # null or absent: no id
            if item_id is not None and (not isinstance(item_id, str) or not item_id):
                raise self.refuse(
                    422, f"item {i}: id must be a non-empty string or null", raw, "predict"
                )
            item = {"id": item_id or f"item-{i}", "x": item["x"]}
            event = self._event(item, raw, "predict", bools=bools)
            ids.append(item_id)
            xs.append(event.x)
        return ids, np.stack(xs), single

    def remember(self, ids: list[str | None], x: np.ndarray) -> None:
        """Keep the features of named predictions, newest last, up to ``remember_bytes``."""
        cap = self.config.remember_bytes
        with self._count_lock:
            for event_id, row in zip(ids, x, strict=True):
                if not event_id or row.nbytes > cap:
                    continue
                old = self.remembered.pop(event_id, None)
                self.remembered_bytes -= 0 if old is None else old.nbytes
                self.remembered[event_id] = row.copy()
                self.remembered_bytes += row.nbytes
                while self.remembered_bytes > cap:
                    self.remembered_bytes -= self.remembered.popitem(last=False)[1].nbytes

    def remembered_x(self, event_id: Any) -> np.ndarray | None:
        with self._count_lock:
            return self.remembered.get(event_id) if isinstance(event_id, str) else None

    # -- correct -----------------------------------------------------------------------------
    def parse_correction(self, raw: bytes) -> tuple[str, np.ndarray]:
        """``{"text": ..., "x": ...}`` or ``{"text": ..., "id": <an earlier /predict id>}``."""
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
        body = self._body(raw, "correct")
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
            return body["text"], x
        return body["text"], self._event({"id": "correction", "x": x}, raw, "correct").x

    # -- learn -------------------------------------------------------------------------------
    def parse_learn(self, raw: bytes) -> list[Event]:
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
        body = self._body(raw, "learn")
        if isinstance(body, dict) and "events" in body:
            if set(body) != {"events"}:
                extra = sorted(set(body) - {"events"})
                raise self.refuse(422, f"unknown keys {extra}; expected events", raw, "learn")
            items = body["events"]
        else:
            items = [body]
        if not isinstance(items, list) or not items:
            raise self.refuse(422, "events must be a non-empty list", raw, "learn")
        events, seen, bools = [], set(), may_hold_bools(raw)
        for i, item in enumerate(items):
            if isinstance(item, dict) and "x" not in item and set(item) <= EVENT_KEYS:
                x = self.remembered_x(item.get("id"))
                if x is not None:
                    item = {**item, "x": x}
            event = self._event(item, raw, "learn", where=f"event {i}: ", bools=bools)
            if event.y is None:
                raise self.refuse(422, f"event {event.id!r}: /learn needs a label y", raw, "learn")
            if event.id in seen:
                raise self.refuse(
                    422, f"event id {event.id!r} appears twice in this request", raw, "learn"
                )
            seen.add(event.id)
            events.append(event)
        return events

    def append(self, events: list[Event], raw: bytes) -> tuple[list[str], list[str]]:
        """Durably append the new events (a worker thread: fsyncs are shared)."""
        assert self.wal is not None
        try:
            return self.wal.append([(e.id, e.to_record()) for e in events])
        except WalError as err:
            log.error("a /learn append failed: %s", err.strerror)
            raise self.refuse(
                503, f"not stored: {err.strerror}", raw, "wal", **{"Retry-After": RETRY_AFTER}
            ) from None


def create_app(service: Service):
    """The FastAPI application over ``service`` (a replica starts following with the app)."""
    metrics = Metrics(service)
    batcher = PredictBatcher(service, metrics)
    bodies = schema.request_models(service.shape, service.dtype, service.max_classes)

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        watcher = asyncio.create_task(_exit_when_finished(app, service))
        yield
        watcher.cancel()
        await asyncio.get_running_loop().run_in_executor(None, service.stop)

    app = FastAPI(
        title="streamkd serve",
        version=_version(),
        lifespan=lifespan,
        default_response_class=JSON,
    )

    async def body_of(request: Request, kind: str) -> bytes:
        limit = service.config.max_body
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limit:
            raise service.refuse(413, f"request body over {limit} bytes", b"", kind)
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise service.refuse(413, f"request body over {limit} bytes", b"", kind)
            chunks.append(chunk)
        return b"".join(chunks)

    def authorized(request: Request, token: str | None) -> bool:
        if token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def authorize(request: Request, kind: str, token: str | None) -> None:
        if not authorized(request, token):
            raise service.refuse(401, "missing or wrong bearer token", b"", kind)

    @app.exception_handler(Refused)
    async def refused(request: Request, err: Refused):
        headers = dict(err.headers or {})
        if err.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSON({"error": err.reason}, status_code=err.status, headers=headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        reason = f"{request.method} {request.url.path}: {err.detail}"
        service.refuse(err.status_code, reason, b"", "route")
        return JSON({"error": reason}, status_code=err.status_code, headers=err.headers)

    def responses(ok: type, *codes: int) -> dict[int | str, dict[str, Any]]:
        out: dict[int | str, dict[str, Any]] = {200: {"model": ok}}
        for code in codes:
            out[code] = {"model": schema.Refusal}
        return out

    def body_spec(route: str) -> dict[str, Any]:
        return {"requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{route.strip('/').title()}Request"}
        }}}}  # fmt: skip

    refusals = (400, 401, 409, 413, 422, 503)

    @app.post(
        "/predict",
        response_model=None,
        responses=responses(schema.OnePrediction | schema.Predictions, *refusals),
        openapi_extra=body_spec("/predict"),
    )
    async def predict(request: Request):
        """Scores for one input or a batch, from the newest published predictor."""
        authorize(request, "predict", service.config.token_predict)
        raw = await body_of(request, "predict")
        ids, x, single = await service.parse(service.parse_predict, raw, "predict")
        if authorized(request, service.config.token):  # only a client trusted to /learn
            if len(ids) > PREDICT_BATCH:  # may name features for it (copied off the loop)
                await asyncio.to_thread(service.remember, ids, x)
            else:
                service.remember(ids, x)
        scores, applied, version = await batcher.submit(torch.from_numpy(x))
        answer = functools.partial(_render_predictions, ids, scores, applied, version, single)
        if len(ids) <= PREDICT_BATCH:
            return Response(answer(), media_type="application/json")
        loop = asyncio.get_running_loop()  # a large answer is built off the event loop
        return Response(
            await loop.run_in_executor(service.parse_pool, answer), media_type="application/json"
        )

    @app.post(
        "/learn",
        response_model=None,
        responses=responses(schema.Learned, *refusals),
        openapi_extra=body_spec("/learn"),
    )
    async def learn(request: Request):
        """Append labelled events to the write-ahead log (idempotent per event id)."""
        authorize(request, "learn", service.config.token)
        raw = await body_of(request, "learn")
        events = await service.parse(service.parse_learn, raw, "learn")
        loop = asyncio.get_running_loop()
        new, held = await loop.run_in_executor(service.wal_pool, service.append, events, raw)
        return JSON({"accepted": len(new) + len(held), "new": new, "held": held})

    @app.post(
        "/checkpoint", response_model=None, responses=responses(schema.Checkpointed, 401, 409, 503)
    )
    async def checkpoint(request: Request):
        """Write a checkpoint now and wait for it."""
        authorize(request, "checkpoint", service.config.token)
        if service.replica:
            raise service.refuse(409, "a replica does not write checkpoints", b"", "checkpoint")
        if service.learner.finished.is_set():
            raise service.refuse(503, "the learner has stopped", b"", "checkpoint")
        loop = asyncio.get_running_loop()
        ok, result = await loop.run_in_executor(
            None, service.learner.call, "checkpoint", None, 30.0
        )
        if not ok:
            raise service.refuse(503, f"no checkpoint: {result}", b"", "checkpoint")
        return JSON(result)

    @app.post(
        "/correct",
        response_model=None,
        responses=responses(schema.Stored, *refusals),
        openapi_extra=body_spec("/correct"),
    )
    async def correct(request: Request):
        """Store a correction (strategies with a correction memory)."""
        authorize(request, "correct", service.config.token)
        raw = await body_of(request, "correct")
        text, x = await service.parse(service.parse_correction, raw, "correct")
        loop = asyncio.get_running_loop()
        call = functools.partial(service.learner.call, "correct", (x, text), 60.0)
        ok, result = await loop.run_in_executor(None, call)
        if not ok:  # a timed-out call may still be applied: say so
            raise service.refuse(
                503, f"correction not confirmed ({result}); check before re-sending", raw, "correct"
            )
        if "refused" in result:
            raise service.refuse(422, result["refused"], raw, "correct")
        return JSON({"stored": result})

    @app.get(
        "/health",
        response_model=None,
        responses={200: {"model": schema.Health}, 503: {"model": schema.Health}},
    )
    async def health():
        """The learner's state; 503 when it failed (or a replica cannot serve)."""
        state = service.learner.health()
        failed = service.learner.error is not None or state.get("status") == "error"
        return JSON(state, status_code=503 if failed else 200)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus():
        """Prometheus metrics."""
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            for route, model in bodies.items():
                name = f"{route.strip('/').title()}Request"
                found = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
                components.update(found.pop("$defs", {}))
                components[name] = found
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi
    return app


def _version() -> str:
    from streamkd import __version__

    return __version__


async def _exit_when_finished(app, service: Service) -> None:
    """Stop the server once the learner has finished (``--stop-at-eof``, or a crash)."""
    while not service.learner.finished.is_set():
        await asyncio.sleep(0.05)
    server = getattr(app.state, "server", None)
    if server is not None:
        server.should_exit = True


class PredictBatcher:
    """Dynamic batching: requests arriving together share one forward pass. At most
    ``max_queued_rows`` rows wait; beyond, a request is refused with 503 and Retry-After."""

    def __init__(self, service: Service, metrics) -> None:
        self.service, self.metrics = service, metrics
        # one thread runs every forward pass (one at a time anyway); torch's thread count is
        # per calling thread under OpenMP, so it is set there, to this process's share
        self.executor = ThreadPoolExecutor(
            1, "predict", initializer=torch.set_num_threads, initargs=(service.config.threads()[1],)
        )
        self.queue: collections.deque[tuple[torch.Tensor, asyncio.Future]] = collections.deque()
        self.queued_rows = 0
        self.wakeup: asyncio.Event | None = None
        self.worker: asyncio.Task | None = None

    async def submit(self, x: torch.Tensor):
        loop = asyncio.get_running_loop()
        if self.queued_rows + len(x) > self.service.config.max_queued_rows:
            raise self.service.refuse(
                503, "too many predictions waiting; retry", b"", "predict", **{"Retry-After": "1"}
            )
        if self.worker is None:
            self.wakeup = asyncio.Event()
            self.worker = loop.create_task(self._work())
        future = loop.create_future()
        self.queue.append((x, future))
        self.queued_rows += len(x)
        self.wakeup.set()
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            if not self.queue:
                continue
            if self.queued_rows < PREDICT_BATCH:
                await asyncio.sleep(PREDICT_WAIT)  # let concurrent requests join
            taken, rows = [], 0
            while self.queue and rows < PREDICT_BATCH:
                taken.append(self.queue.popleft())
                rows += len(taken[-1][0])
            self.queued_rows -= rows
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


def _render_predictions(
    ids: list[str | None],
    scores: torch.Tensor,
    applied: list | None,
    version: int,
    single: bool,
) -> bytes:
    """``/predict``'s answer as JSON bytes (NaN and infinite scores as null)."""
    labels = scores.argmax(1).tolist() if scores.shape[1] else [None] * len(ids)
    rows = [
        {"id": i, "label": label, "scores": row}
        for i, label, row in zip(ids, labels, scores.tolist(), strict=True)
    ]
    if applied is not None:  # a correction memory: the knowledge each answer used
        for row, knowledge in zip(rows, applied, strict=True):
            row["applied"] = knowledge
    out = {**rows[0]} if single else {"predictions": rows}
    out["model_version"] = version
    return orjson.dumps(out)


def _scores_on_cpu(predictor, x: torch.Tensor) -> tuple[torch.Tensor, list | None]:
    """Scores, and what knowledge each row used where the predictor reports it (DROC)."""
    explain = getattr(predictor.scores, "predict_with_knowledge", None)
    if explain is not None:
        scores, applied = explain(x)
        return scores.cpu(), applied
    return predictor.scores(x).cpu(), None
