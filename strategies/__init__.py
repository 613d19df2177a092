"""Strategies, one file each.

Every module in this folder is imported here, and each :class:`~streamkd.strategy.Strategy`
subclass that declares a ``name`` registers itself (:data:`streamkd.registry.STRATEGIES`):
adding a strategy is adding a file (``docs/extending.md``). Classes are reachable by their
class name too (``from streamkd.strategies import ER``); a module of this folder imports a
sibling's class from the sibling's module (``from streamkd.strategies.er import ER``), since
this package is still being imported then.
"""

from __future__ import annotations

import importlib
import pkgutil

from streamkd.registry import STRATEGIES
from streamkd.strategy import Strategy, get_strategy


def __getattr__(name: str) -> type[Strategy]:
    """A registered strategy by its class name (``ER``, ``OnPro``...)."""
    for cls in STRATEGIES.values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "STRATEGIES",
    "Strategy",
    "get_strategy",
    *sorted(c.__name__ for c in STRATEGIES.values() if c.__module__.startswith(f"{__name__}.")),
]
