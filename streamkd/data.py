"""Where datasets live: ``--data-dir``, else ``$STREAMKD_DATA``, else ``../shared/data`` and
``./data`` relative to the working directory. Nothing is ever downloaded."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

ENV_VAR = "STREAMKD_DATA"
DEFAULT_CANDIDATES = ("../shared/data", "data")


class DataNotFoundError(FileNotFoundError):
    """A dataset was not found; the message says where we looked and how to point at it."""


class DataError(ValueError):
    """A dataset file exists but cannot be read (corrupt, truncated, unexpected contents)."""


def require_file(file: Path, expected: str = "") -> Path:
    """``file`` if it exists, else a :class:`DataNotFoundError` naming it (and what it holds)."""
    if not file.is_file():
        raise DataNotFoundError(f"expected {file}" + (f" ({expected})" if expected else ""))
    return file


@contextlib.contextmanager
def reading(file: Path) -> Iterator[None]:
    """Any failure while reading ``file`` becomes a :class:`DataError` that names it."""
    try:
        yield
    except (DataError, DataNotFoundError):
        raise
    except Exception as err:  # numpy, zipfile, PIL, csv: each has its own exception types
        raise DataError(f"cannot read {file}: {type(err).__name__}: {err}") from None


def find_data(
    subdir: str, data_dir: str | Path | None = None, markers: tuple[str, ...] = ()
) -> Path:
    """Resolve the folder of one dataset.

    Returns the first of ``<root>/<subdir>`` or ``<root>/<marker>`` that exists, for each
    root in order: ``data_dir``, ``$STREAMKD_DATA``, then the defaults. ``markers`` are
    alternative layouts (e.g. torchvision's ``cifar-10-batches-py``), tried under each root.
    """
    if data_dir is not None:
        roots = [Path(data_dir)]
    elif os.environ.get(ENV_VAR):
        roots = [Path(os.environ[ENV_VAR])]
    else:
        roots = [Path(c) for c in DEFAULT_CANDIDATES]
    looked: list[str] = []
    for root in roots:
        for name in (subdir, *markers):
            candidate = root / name
            looked.append(str(candidate.resolve()))
            if candidate.exists():
                return candidate
    raise DataNotFoundError(
        f"dataset {subdir!r} not found; looked in: {', '.join(looked)}. "
        f"Pass --data-dir DIR (or data_dir=...) or set {ENV_VAR}=DIR to the folder that "
        f"holds {subdir}/."
    )
