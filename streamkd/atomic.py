"""One atomic write for every file streamkd writes (checkpoints, indexes, JSON results).

The data goes to a temporary file in the target's folder, is fsynced, renamed over the
target and the folder is fsynced: a crash at any point leaves either the old file or the
new one under the final name, never a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name (FAISS);
    on success it is fsynced and renamed over ``path``, on error it is removed."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # one name per target: a crash leaves no litter
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; returns the path.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = atomic_write(Path(folder) / "out" / "result.json", json_text({"n": 3}))
        ...     print(path.read_text(), [p.name for p in path.parent.iterdir()])
        {
         "n": 3
        } ['result.json']
    """
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path).expanduser()


def strict_json(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None`` (JSON has no such numbers).

    Examples:
        >>> strict_json({"loss": float("inf"), "acc": [0.5, float("nan")]})
        {'loss': None, 'acc': [0.5, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def json_text(payload: Any) -> str:
    """Indented, strict JSON: NaN and infinities become ``null``, other objects ``str()``.

    Examples:
        >>> print(json_text({"acc": float("nan"), "path": Path("a/b")}))
        {
         "acc": null,
         "path": "a/b"
        }
    """
    return json.dumps(strict_json(payload), indent=1, default=str, allow_nan=False)


def check_writable(path: str | Path, *, what: str = "output", directory: bool = False) -> None:
    """Refuse, before any work starts, a location a later write would fail on: a file path
    that is a folder, a path under a file, or a folder this process cannot write into
    (probed by creating a temporary file, so it holds for root and read-only mounts too)."""
    path = Path(path).expanduser()
    if directory and path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is not a directory (it is a file)")
    if not directory and path.is_dir():
        raise ValueError(f"{what} {path} is a directory; expected a file path")
    probe = path if directory else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{what} {path}: {probe} is not a directory (it is a file)")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise ValueError(
            f"cannot write {what} {path}: {probe} is not writable ({err.strerror})"
        ) from None
