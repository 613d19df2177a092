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
import sys
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


def _definition(obj: Any) -> tuple[str, str]:
    """Where ``obj`` is defined: its source file and qualified name. The same file imported
    under two module names (``strategies.er`` and ``streamkd.strategies.er`` in a checkout)
    defines the same plug-in twice, not two plug-ins."""
    module = sys.modules.get(getattr(obj, "__module__", ""), None)
    where = getattr(module, "__file__", None) or getattr(obj, "__module__", "?")
    return os.path.realpath(where) if where else "?", getattr(obj, "__qualname__", repr(obj))


_load_lock = threading.RLock()
_plugins_loaded = False


def load_plugins() -> None:
    """Import the modules named in ``STREAMKD_PLUGINS`` and the ``streamkd.plugins`` entry
    points (once per process; a module that fails to import is an error naming it)."""
    global _plugins_loaded
    with _load_lock:
        if _plugins_loaded:
            return
        for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise ImportError(
                    f"{PLUGINS_ENV} names {module!r}, which cannot be imported: {err}"
                ) from err
        for point in entry_points(group=ENTRY_POINT_GROUP):
            point.load()
        _plugins_loaded = True  # only once all loaded: a failure is raised again next time


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
        self._loading = False  # the loading thread reads a partial registry meanwhile

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
        if held is not None and held.obj is not obj and _definition(held.obj) != _definition(obj):
            raise ValueError(
                f"{self.kind} name {name!r} is taken by {_origin(held.obj)}; "
                f"{_origin(obj)} needs another name"
            )
        if held is not None and held.obj is not obj and _origin(held.obj) != _origin(obj):
            return held.obj  # the same file under another module name: the first one stays
        self._entries[name] = Entry(name, obj, help)
        return obj

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a test's or a notebook's plug-in); unknown names are ignored."""
        self._entries.pop(name, None)

    # -- reading -------------------------------------------------------------------------------
    def load(self) -> None:
        """Import the built-in package and the configured plug-ins (once; a failure is
        raised again at the next read, never hidden behind a half-filled registry). Other
        threads wait for the loading one; the loading thread itself (a module that reads the
        registry while it is imported) sees what is registered so far."""
        if self._loaded:
            return
        with _load_lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                for package in self.packages:
                    importlib.import_module(package)
                load_plugins()
                self._loaded = True
            finally:
                self._loading = False

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
