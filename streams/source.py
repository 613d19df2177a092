"""The daemon's live sources: the :class:`Source` protocol and how a URL picks one.

A finite stream (:class:`streamkd.types.Stream`) is iterated once by ``streamkd run``; a
*source* feeds the long-running learner of ``streamkd serve`` and may never end. It hands out
raw lines (parsed events, or refusals for the dead-letter file) in a fixed order and can say
where it is, so a checkpoint records a position and a restart after ``kill -9`` continues
there: nothing lost, nothing learned twice.

A source registers its URL scheme in :data:`streamkd.registry.SOURCES` with a factory
``factory(url, context) -> Source``; :func:`open_source` picks it from the URL::

    @SOURCES.register("jsonl", help="jsonl:PATH")
    def open_jsonl(url: str, context: SourceContext) -> JsonlSource: ...

Built in: ``jsonl:PATH`` (:mod:`streamkd.streams.jsonl`), ``redis://``/``rediss://``
(:mod:`streamkd.streams.redis`) and ``http`` (``POST /learn`` through the write-ahead log,
:mod:`streamkd.serve.wal`). ``streamkd.checks.check_source`` is the contract a new source
must pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from streamkd.registry import SOURCES

if TYPE_CHECKING:
    from streamkd.streams.jsonl import Line


@dataclass(frozen=True)
class SourceContext:
    """What the daemon tells a source factory besides the URL."""

    shape: tuple[int, ...]  # the learner's per-sample input shape
    dtype: torch.dtype = torch.float32  # the inputs' dtype (uint8 images or float32)
    max_classes: int | None = None  # labels at or above it are refused (dead-lettered)
    folder: Path | None = None  # the daemon's checkpoint folder (the http source's WAL)
    finite: bool = False  # --stop-at-eof: the source ends where its data ends
    durable: Callable[[], int] | None = None  # the http WAL's published durable end
    keep: int = 3  # checkpoints kept (what the WAL must still cover)


@runtime_checkable
class Source(Protocol):
    """What the daemon's learner reads (one thread: the learner's).

    * ``read(n)``: up to ``n`` lines from the current position, in order (may be fewer, or
      none at the live end);
    * ``position()``: where the next read starts, a JSON value a checkpoint stores;
      ``seek(position)`` continues there (refusing a position the data no longer holds);
    * ``commit(step)``: everything up to the checkpoint of ``step`` is durable elsewhere
      (acknowledge, delete, trim); ``at_end()``: a finite source is exhausted;
    * ``describe()``: one line for logs and ``/health`` (no secrets); ``close()``.
    """

    dtype: torch.dtype

    def read(self, n: int) -> list[Line]: ...

    def position(self) -> Any: ...

    def seek(self, position: Any) -> None: ...

    def commit(self, step: int | None = None) -> None: ...

    def at_end(self) -> bool: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


def scheme_of(url: str) -> str:
    """The registry key of ``url``: the part before ``:`` (``http`` has none)."""
    return url.split(":", 1)[0] if ":" in url else url


def source_syntax() -> str:
    """Every registered source's URL form, for help texts and refusals."""
    return ", ".join(dict.fromkeys(entry.help or entry.name for entry in SOURCES.entries()))


def check_source_url(url: str) -> None:
    """Refuse a URL no registered source reads, listing those that exist: an unknown
    scheme, a location given to a source that takes none (``http``: a factory with
    ``takes_location = False``) or none given to one that needs it (``jsonl:`` alone)."""
    if isinstance(url, str) and scheme_of(url) in SOURCES:
        _, colon, location = url.partition(":")
        if getattr(SOURCES[scheme_of(url)], "takes_location", True) == bool(colon and location):
            return
    raise ValueError(f"unknown source {url!r}; expected one of: {source_syntax()}")


def open_source(url: str, context: SourceContext) -> Source:
    """The source ``url`` names, opened for ``context``'s learner."""
    check_source_url(url)
    return SOURCES[scheme_of(url)](url, context)
