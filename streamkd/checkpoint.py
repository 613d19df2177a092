"""Checkpointer: atomic, checksummed checkpoints of a run's full state.

File layout: a magic line, the SHA-256 of the payload in hex, a newline, then the payload
(``torch.save`` of a dict of tensors and plain values). Writing goes to a temporary file in
the same folder, is fsynced and renamed over the final name, so a crash never leaves a
half-written checkpoint under a checkpoint's name. Loading verifies the checksum and uses
``torch.load(weights_only=True)``, which never unpickles arbitrary objects.

One schema for every checkpoint, a run's (``streamkd run --checkpoint-dir``) and a daemon's
(``streamkd serve``), versioned by its ``format``:

* ``kind``: ``"run"`` or ``"daemon"``; ``step``: samples learned;
* ``strategy``: :meth:`~streamkd.strategy.Strategy.state_dict`;
* ``position``: where the stream or source continues (a batch index, a byte offset, a Redis
  entry id);
* ``counters``: ``events_learned``, ``correct``, ``predicted`` (the prequential
  predictions) and, for a daemon, ``lines_rejected``;
* ``config``: what decides the result (compared on resume; a checkpoint without one cannot
  be resumed); ``mlflow_run_id``;
* a run's ``evaluator`` (accuracy matrix, curves); a daemon's ``drift`` detector.

Format 1 (before the schema was shared: a run's ``stream_position``, a daemon's
``source_position`` and ``events_learned``) is read and converted; a newer format is refused,
naming it.
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
FORMAT_VERSION = 2
KINDS = ("run", "daemon")
REQUIRED = ("kind", "strategy", "position", "counters")
"""What every checkpoint of the current format holds (besides ``format`` and ``step``)."""
log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint could not be read (corrupt, truncated, wrong format, or none valid)."""


class Checkpointer:
    """Saves ``ckpt-<samples>.pt`` files in ``directory``, keeping the newest ``keep``.

    The folder is checked for writing when the checkpointer is made (unless ``writable`` is
    false: a reader of someone else's checkpoints), so a run that could not save fails
    before it trains, not at its first checkpoint; temporary files a crash left mid-write
    are removed then, and reported. With ``kind`` (``"run"`` or ``"daemon"``) it holds the
    shared schema (module docstring): what it saves must follow it, and a checkpoint that
    does not, or is of the other kind, is skipped like a corrupt one. Without, it stores
    any state (``format`` and ``step`` added).
    """

    def __init__(
        self,
        directory: str | Path,
        keep: int = 3,
        kind: str | None = None,
        writable: bool = True,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if kind is not None and kind not in (*KINDS, "any"):
            raise ValueError(f"kind must be one of {KINDS} or 'any', got {kind!r}")
        self.directory = Path(directory).expanduser()
        self.keep = keep
        self.kind = kind
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
        if self.kind is not None:  # the schema's keys (module docstring)
            missing = [key for key in REQUIRED if key not in state]
            if missing or self.kind not in ("any", state["kind"]):
                raise ValueError(
                    f"a {self.kind} checkpoint holds kind={self.kind!r} and "
                    f"{', '.join(REQUIRED)}; this state lacks {missing or 'the kind'}"
                )
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
    def load(path: str | Path, kind: str | None = None) -> dict[str, Any]:
        """Read and verify one checkpoint, in the current format (format 1 converted); raises
        :class:`CheckpointError` if it is bad, of a newer format, or not of ``kind`` (``"any"``:
        the schema's keys, of either kind)."""
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
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        if found == 1:
            state = upgrade_format_1(state)
        elif found != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {path} has format {found!r}; this streamkd reads formats 1 to "
                f"{FORMAT_VERSION} (a newer streamkd wrote it: upgrade to resume from it)"
            )
        missing = [key for key in ("step", *(REQUIRED if kind else ())) if key not in state]
        if missing:
            raise CheckpointError(
                f"checkpoint {path} lacks {', '.join(map(repr, missing))} (not written by a "
                "complete run)"
            )
        if kind not in (None, "any") and state["kind"] != kind:
            raise CheckpointError(
                f"checkpoint {path} is a {state['kind']}'s, and this folder is read as a "
                f"{kind}'s (use another folder)"
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
                state = self.load(path, self.kind)
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


def upgrade_format_1(state: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint in the current schema. Format 1 had two layouts: a run's
    (``evaluator``, ``stream_position``) and a daemon's (``source_position``,
    ``events_learned``, ``counters``); one with neither is returned unconverted and fails
    the required keys."""
    state = dict(state)
    if "stream_position" in state and "evaluator" in state:
        counts = state["evaluator"].get("counts", [state["step"], 0, 0])
        state.update(
            kind="run",
            position=state.pop("stream_position"),
            counters={
                "events_learned": int(counts[0]),
                "correct": int(counts[1]),
                "predicted": int(counts[2]),
            },
        )
        state.setdefault("config", {})
    elif "source_position" in state and "counters" in state:
        state.pop("events_learned", None)  # also in the counters
        state.update(kind="daemon", position=state.pop("source_position"))
    state["format"] = FORMAT_VERSION
    return state
