"""Argument checks shared by the library and the CLI: one wording per kind of bad value, so a
flag and the keyword argument behind it are refused with the same message."""

from __future__ import annotations

import math
import numbers
from typing import Any

SEED_MAX = 2**32 - 1  # numpy's legacy seeding and most tools stop here


def positive_int(name: str, value: Any, *, optional: bool = True) -> int | None:
    """``value`` as an int >= 1 (``None`` passes when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def first_line(err: BaseException) -> str:
    """An error's first line (its type's name when it says nothing): for one-line refusals
    of a library's multi-line messages."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_seed(value: Any) -> int:
    """A seed every random source here accepts: an integer in ``[0, 2**32 - 1]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"seed must be an integer in [0, {SEED_MAX}], got {value!r}")
    if not 0 <= value <= SEED_MAX:
        raise ValueError(f"seed must be an integer in [0, {SEED_MAX}], got {value}")
    return int(value)


def finite_numbers(name: str, value: Any) -> None:
    """Refuse NaN and infinities in a float, or in a tuple/list of numbers."""
    values = value if isinstance(value, tuple | list) else (value,)
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
