"""Plug-in registries: strategies, streams and daemon sources register themselves by name.

One mechanism for the three extension points. A strategy registers when its class is
defined (:meth:`streamkd.strategy.Strategy.__init_subclass__` reads its ``name``); a stream
factory with the :meth:`Registry.register` decorator of :data:`STREAMS`; a daemon source with
that of :data:`SOURCES`, under its URL scheme. Adding one is one new file: the built-in
packages are scanned (every module in ``streamkd.strategies`` and ``streamkd.streams`` is
imported, as Mammoth scans its model folder), then the modules named in ``STREAMKD_PLUGINS``
(comma-separated, for plug-ins that live outside streamkd) and the ``streamkd.plugins``
entry points of installed packages. A class defined in a module you import registers too.

Reading a registry (``in``, ``[]``, iterating, :meth:`Registry.get`) loads the plug-ins
first, so every name is there when one is asked for::

    >>> from streamkd.registry import STRATEGIES
    >>> "er" in STRATEGIES and STRATEGIES["er"].__name__
    'ER'
    >>> STRATEGIES.get("nope")
    Traceback (most recent call last):
    ...
    ValueError: unknown strategy 'nope'; available: ...
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
PLUGINS_ENV = "STREAMKD_PLUGINS"
ENTRY_POINT_GROUP = "streamkd.plugins"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered plug-in: its object and a one-line help (for ``streamkd strategies``...)."""

    name: str
    obj: T
    help: str = ""


def _origin(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


_load_lock = threading.RLock()
_plugins_loaded = False


def load_plugins() -> None:
    """Import the modules named in ``STREAMKD_PLUGINS`` and the ``streamkd.plugins`` entry
    points (once per process; a module that fails to import is an error naming it)."""
    global _plugins_loaded
    with _load_lock:
        if _plugins_loaded:
            return
        _plugins_loaded = True
        for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise ImportError(
                    f"{PLUGINS_ENV} names {module!r}, which cannot be imported: {err}"
                ) from err
        for point in entry_points(group=ENTRY_POINT_GROUP):
            point.load()


class Registry(Generic[T]):
    """Names to plug-ins of one kind, filled by the plug-ins themselves.

    A mapping for reading (``name in registry``, ``registry[name]``, iteration in
    registration order, :meth:`items`); :meth:`get` refuses an unknown name listing the
    known ones. A name taken by another object is refused (the same class defined again,
    e.g. a module reloaded, replaces itself)."""

    def __init__(self, kind: str, *packages: str) -> None:
        self.kind, self.packages = kind, packages
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False

    # -- writing -------------------------------------------------------------------------------
    def register(self, name: str, obj: T | None = None, *, help: str = "") -> Any:
        """Register ``obj`` as ``name``; without ``obj``, a decorator that registers what it
        decorates and returns it unchanged."""
        if obj is None:

            def decorate(target: T) -> T:
                self.register(name, target, help=help)
                return target

            return decorate
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"a {self.kind} needs a non-empty name without spaces, got {name!r}")
        held = self._entries.get(name)
        if held is not None and held.obj is not obj and _origin(held.obj) != _origin(obj):
            raise ValueError(
                f"{self.kind} name {name!r} is taken by {_origin(held.obj)}; "
                f"{_origin(obj)} needs another name"
            )
        self._entries[name] = Entry(name, obj, help)
        return obj

    # -- reading -------------------------------------------------------------------------------
    def load(self) -> None:
        """Import the built-in package and the configured plug-ins (once)."""
        if self._loaded:
            return
        with _load_lock:
            if self._loaded:
                return
            self._loaded = True  # before importing: the package's modules read us meanwhile
            for package in self.packages:
                importlib.import_module(package)
            load_plugins()

    def get(self, name: str) -> T:
        """The plug-in registered as ``name``; an unknown name is refused listing the valid
        ones."""
        self.load()
        entry = self._entries.get(name)
        if entry is None:
            raise ValueError(
                f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._entries))}"
            )
        return entry.obj

    def entries(self) -> list[Entry[T]]:
        self.load()
        return list(self._entries.values())

    def items(self) -> list[tuple[str, T]]:
        return [(e.name, e.obj) for e in self.entries()]

    def values(self) -> list[T]:
        return [e.obj for e in self.entries()]

    def keys(self) -> list[str]:
        return [e.name for e in self.entries()]

    def __getitem__(self, name: str) -> T:
        self.load()
        return self._entries[name].obj

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        self.load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


STRATEGIES: Registry[type] = Registry("strategy", "streamkd.strategies")
"""Strategy classes by ``name`` (each registers when defined; see ``Strategy``)."""
STREAMS: Registry[Callable[..., Any]] = Registry("stream", "streamkd.streams")
"""Stream factories by CLI name (``@STREAMS.register("split-mnist", help=...)``)."""
SOURCES: Registry[Callable[..., Any]] = Registry("source", "streamkd.streams", "streamkd.serve.wal")
"""Daemon source factories by URL scheme (``jsonl``, ``redis``...: ``streamkd.streams.source``)."""
