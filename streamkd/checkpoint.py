"""Checkpointer: atomic, checksummed checkpoints of a run's full state.

File layout: a magic line, the SHA-256 of the payload in hex, a newline, then the payload
(``torch.save`` of a dict of tensors and plain values). Writing goes to a temporary file in
the same folder, is fsynced and renamed over the final name, so a crash never leaves a
half-written checkpoint under a checkpoint's name. Loading verifies the checksum and uses
``torch.load(weights_only=True)``, which never unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import torch

from streamkd.atomic import atomic_write, check_writable

MAGIC = b"STREAMKD-CKPT-1\n"
FORMAT_VERSION = 1
log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint could not be read (corrupt, truncated, wrong format, or none valid)."""


class Checkpointer:
    """Saves ``ckpt-<samples>.pt`` files in ``directory``, keeping the newest ``keep``.

    The folder is checked for writing when the checkpointer is made (unless ``writable`` is
    false: a reader of someone else's checkpoints), so a run that could not save fails
    before it trains, not at its first checkpoint; temporary files a crash left mid-write
    are removed then, and reported. ``required`` keys are those every checkpoint must hold:
    one without them is skipped like a corrupt one.
    """

    def __init__(
        self,
        directory: str | Path,
        keep: int = 3,
        required: tuple[str, ...] = (),
        writable: bool = True,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory).expanduser()
        self.keep = keep
        self.required = tuple(required)
        if writable:
            check_writable(self.directory, what="checkpoint folder", directory=True)
            self.remove_partial_files()

    def paths(self) -> list[Path]:
        """Checkpoint files, newest (most samples) first."""
        if not self.directory.exists():
            return []
        return sorted(self.directory.glob("ckpt-*.pt"), reverse=True)

    def save(self, state: dict[str, Any], step: int) -> Path:
        from streamkd import __version__

        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT_VERSION, "version": __version__, "step": int(step), **state}
        buf = io.BytesIO()
        torch.save(payload, buf)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest().encode()
        final = atomic_write(
            self.directory / f"ckpt-{int(step):012d}.pt", MAGIC + digest + b"\n" + data
        )
        for old in self.paths()[self.keep :]:
            old.unlink(missing_ok=True)
        return final

    def remove_partial_files(self) -> None:
        """Delete the temporary files a crash left mid-write (never valid checkpoints)."""
        if not self.directory.is_dir():
            return
        partial = sorted({*self.directory.glob(".ckpt-*.tmp"), *self.directory.glob("ckpt-*.tmp")})
        for path in partial:
            path.unlink(missing_ok=True)
        if partial:
            log.warning(
                "removed %d partial checkpoint file(s) a crash left in %s: %s",
                len(partial),
                self.directory,
                ", ".join(p.name for p in partial),
            )

    @staticmethod
    def load(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
        """Read and verify one checkpoint; raises :class:`CheckpointError` if it is bad
        (including when it lacks one of the ``required`` keys)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
        if not raw.startswith(MAGIC):
            raise CheckpointError(f"{path} is not a streamkd checkpoint (bad header)")
        header_end = len(MAGIC) + 64
        digest, data = raw[len(MAGIC) : header_end], raw[header_end + 1 :]
        if hashlib.sha256(data).hexdigest().encode() != digest:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its checksum does not match its contents "
                "(truncated or modified file)"
            )
        try:
            state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as err:  # checksum matched, so the payload itself is malformed
            raise CheckpointError(f"checkpoint {path} has an unreadable payload: {err}") from err
        if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(
                f"checkpoint {path} has format {found!r}, expected {FORMAT_VERSION}"
            )
        missing = [key for key in ("step", *required) if key not in state]
        if missing:
            raise CheckpointError(
                f"checkpoint {path} lacks {', '.join(map(repr, missing))} (not written by a "
                "complete run of this kind)"
            )
        return state

    def load_latest(self) -> dict[str, Any] | None:
        """The newest valid checkpoint, skipping (and reporting) corrupt ones.

        Returns ``None`` when the folder holds no checkpoint at all; raises
        :class:`CheckpointError` when there are checkpoints but none is valid.
        """
        found = self.latest()
        return None if found is None else found[1]

    def latest(self, quiet: bool = False) -> tuple[Path, dict[str, Any]] | None:
        """:meth:`load_latest` with the file it read (a reader tracks what it loaded);
        ``quiet`` reports skipped files at debug level (a poller that retries)."""
        report = log.debug if quiet else log.warning
        errors = []
        for path in self.paths():
            try:
                state = self.load(path, self.required)
            except CheckpointError as err:
                report("%s; falling back to the previous checkpoint", err)
                errors.append(str(err))
                continue
            if errors:
                report("resuming from %s", path)
            return path, state
        if errors:
            raise CheckpointError(f"no valid checkpoint in {self.directory}: " + "; ".join(errors))
        return None
