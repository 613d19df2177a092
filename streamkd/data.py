"""Where datasets live: ``--data-dir``, else ``$STREAMKD_DATA``, else ``../shared/data`` and
``./data`` relative to the working directory. Nothing is ever downloaded."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "STREAMKD_DATA"
DEFAULT_CANDIDATES = ("../shared/data", "data")


class DataNotFoundError(FileNotFoundError):
    """A dataset was not found; the message says where we looked and how to point at it."""


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
