"""The daemon's configuration: a TOML file (``--config serve.toml``, read with ``tomllib``)
whose ``[serve]`` table holds the same keys as the flags; a flag given on the command line
wins over the file. Unknown keys are refused, so a typo never passes as a default."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamkd.arguments import check_seed, positive_int
from streamkd.streams.source import check_source_url

MAX_BODY = 8 * 2**20  # bytes per request body


@dataclass
class ServeConfig:
    """Everything ``streamkd serve`` runs with (see ``streamkd serve --help``)."""

    strategy: str = "er"
    strategy_args: dict[str, Any] = field(default_factory=dict)
    like: str | None = "split-digits"
    input_shape: str | None = None  # "C,H,W" or "F": instead of --like (float32 inputs, MLP)
    max_classes: int | None = None
    drift: str | None = None
    source: str = "http"
    checkpoint_dir: str = "serve-checkpoints"
    checkpoint_every: int | None = 1000
    checkpoint_seconds: float | None = 60.0
    keep: int = 3
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    token_predict: str | None = None  # also required by /predict (a private model)
    stop_at_eof: bool = False
    batch_size: int = 10
    tracking_uri: str | None = None
    no_track: bool = False
    seed: int = 0
    memory: int = 500
    data_dir: str | None = None
    device: str = "cpu"
    max_body: int = MAX_BODY
    replica_of: str | None = None
    learner_threads: int | None = None  # None: half the CPUs (see threads())
    publish_seconds: float = 0.5  # a new predictor for /predict at most this often
    wal_segment_bytes: int = 64 * 2**20  # the http source's WAL rotates at this size
    dead_letter_bytes: int = 16 * 2**20  # dead-letters.jsonl rotates at this size (2 kept)
    max_connections: int = 256  # open connections and tasks (uvicorn's limit_concurrency)
    max_queued_rows: int = 4096  # /predict rows waiting for a forward pass; beyond: 503
    remember_bytes: int = 64 * 2**20  # features of /predict ids kept for a later /learn

    def check(self) -> ServeConfig:
        """Refuse what the daemon could not honour, before it starts (one line each)."""
        check_types(self)
        check_seed(self.seed)
        for name in (
            "checkpoint_every", "batch_size", "keep", "max_body", "wal_segment_bytes",
            "dead_letter_bytes", "max_connections", "max_queued_rows", "remember_bytes",
        ):  # fmt: skip
            positive_int(name, getattr(self, name))
        for name in ("checkpoint_seconds", "publish_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.input_shape is not None:
            self.like = None  # --input-shape replaces the default --like
            try:
                dims = tuple(int(d) for d in str(self.input_shape).split(","))
            except ValueError:
                dims = ()
            if not dims or min(dims) < 1:
                raise ValueError(
                    f"--input-shape {self.input_shape!r}: expected positive sizes, e.g. 1,28,28"
                )
        if self.like is None and self.input_shape is None:
            raise ValueError("--like STREAM or --input-shape is required: the inputs' shape")
        positive_int("max_classes", self.max_classes)
        positive_int("learner_threads", self.learner_threads)
        if self.drift is not None:
            from streamkd.drift import DETECTORS

            if self.drift not in DETECTORS:
                raise ValueError(
                    f"unknown --drift {self.drift!r}; expected one of {list(DETECTORS)}"
                )
        check_source_url(self.source)
        if self.replica_of is not None and self.stop_at_eof:
            raise ValueError("a replica (--replica-of) serves predictions: no --stop-at-eof")
        if self.stop_at_eof and self.source == "http":
            raise ValueError("--stop-at-eof needs a finite source (jsonl:PATH), not http")
        self.token = self.token or os.environ.get("STREAMKD_TOKEN") or None
        self.token_predict = self.token_predict or os.environ.get("STREAMKD_TOKEN_PREDICT") or None
        if not _loopback(self.host) and not self.token:
            raise ValueError(
                f"--host {self.host} listens beyond this machine: set --token (or "
                "STREAMKD_TOKEN) so that /learn, /correct and /checkpoint need it"
            )
        return self

    def threads(self) -> tuple[int, int]:
        """Torch threads of the learner process and of the HTTP process's forward passes.
        A learner and its server each get their own share of the CPUs this process may use
        (threads beyond them only spin: on 2 cores, two threads each made the learner 6x
        slower under /predict load than one each); a replica has no learner: all for it."""
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        cpus = cpus or 1
        if self.replica_of is not None:
            return 0, cpus
        learner = self.learner_threads or max(1, cpus // 2)
        return learner, max(1, cpus - learner)


def check_types(config: ServeConfig) -> None:
    """Refuse a setting of the wrong type (e.g. ``port = "8000"`` or ``stop_at_eof = "no"``
    in the TOML file) with its key, the expected type and what was given."""
    hints = typing.get_type_hints(ServeConfig)
    for f in dataclasses.fields(config):
        value, expected = getattr(config, f.name), hints[f.name]
        allowed = typing.get_args(expected) if isinstance(expected, types.UnionType) else ()
        allowed = allowed or (typing.get_origin(expected) or expected,)
        allowed = tuple(typing.get_origin(a) or a for a in allowed)
        if value is None and type(None) in allowed:
            continue
        ok = any(
            isinstance(value, a)
            and not (isinstance(value, bool) and a in (int, float))  # true is not 1
            or (a is float and isinstance(value, int) and not isinstance(value, bool))
            for a in allowed
            if a is not type(None)
        )
        if not ok:
            names = " or ".join(
                "null"
                if a is type(None)
                else {"str": "string", "dict": "table"}.get(a.__name__, a.__name__)
                for a in allowed
            )
            raise ValueError(
                f"setting {f.name!r} must be {names}, got {type(value).__name__} {value!r}"
            )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> ServeConfig:
    """``[serve]`` of the TOML file at ``path`` (if any), then ``overrides`` (flags given)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except OSError as err:
            raise ValueError(f"cannot read --config {path}: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"--config {path} is not valid TOML: {err}") from None
        values = dict(document.get("serve", {}))
        extra = sorted(set(document) - {"serve"})
        if extra:
            raise ValueError(f"--config {path}: unknown tables {extra}; expected [serve]")
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(ServeConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown serve settings {unknown}; known: {sorted(known)}")
    return ServeConfig(**values).check()
