"""Streams, one file each.

Every module in this folder is imported here; a stream factory registers itself with
``@STREAMS.register(name, help=...)`` (:data:`streamkd.registry.STREAMS`), so adding a stream
is adding a file (``docs/extending.md``). A name ``prefix:<Name>`` registers a family
(``river:<Name>``: any river dataset); ``prefix:Anything`` calls its factory with
``Anything`` first.

:func:`get_stream` passes a factory only the options its signature names and refuses any
other with a ``ValueError`` naming the option, its CLI flag and the options the stream takes.
Daemon sources (``jsonl:``, ``redis://``) register in :data:`streamkd.registry.SOURCES`
(:mod:`streamkd.streams.source`).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Any

from streamkd.registry import STREAMS
from streamkd.streams.split import SegmentedStream

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

OPTION_FLAGS = {
    "max_per_segment": "--per-segment",
    "max_test_per_segment": "--test-per-segment",
    "order": "--class-order",
}
"""The CLI flag of each stream option that has one (named in refusals)."""

__all__ = [
    "OPTION_FLAGS",
    "STREAMS",
    "SegmentedStream",
    "check_stream",
    "get_stream",
    "stream_options",
]


def stream_options(factory: Callable[..., SegmentedStream], skip: int = 0) -> list[str]:
    """The keyword options ``factory`` accepts, after its first ``skip`` parameters."""
    params = list(inspect.signature(factory).parameters.values())[skip:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _named(option: str) -> str:
    flag = OPTION_FLAGS.get(option)
    return f"{option} ({flag})" if flag else option


def get_stream(name: str, **options: Any) -> SegmentedStream:
    """Build the stream registered as ``name`` (``river:<Dataset>`` for river data).

    Raises ``ValueError`` for an unknown name or an option the stream cannot honour.
    """
    factory, args = check_stream(name, options)
    return factory(*args, **options)


def check_stream(name: str, options: dict[str, Any]) -> tuple[Any, tuple[Any, ...]]:
    """The factory of stream ``name`` and its leading arguments, once the name and every
    option are known good (no data is loaded): a grid is checked before its first run."""
    args: tuple[Any, ...] = ()
    prefix, colon, rest = name.partition(":")
    if colon and rest and f"{prefix}:<Name>" in STREAMS:
        factory, args = STREAMS[f"{prefix}:<Name>"], (rest,)
    elif name in STREAMS and not name.endswith(":<Name>"):
        factory = STREAMS[name]
    else:
        raise ValueError(f"unknown stream {name!r}; available: {', '.join(STREAMS)}")
    accepted = stream_options(factory, skip=len(args))
    refused = [k for k in options if k not in accepted]
    if refused:
        raise ValueError(
            f"stream {name!r} does not accept {', '.join(map(_named, refused))}; "
            f"it accepts: {', '.join(map(_named, accepted))}"
        )
    return factory, args
