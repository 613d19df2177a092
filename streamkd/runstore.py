"""Finished runs kept one JSON file each, so a long job can stop and resume: a run is done
once its file exists, and a re-invocation reuses every file made under the same settings and
refuses one made under others (a silent mix of protocols would corrupt a table)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamkd.atomic import atomic_write, json_text


class RunMismatchError(ValueError):
    """A stored run was made under other settings than the ones asked for now."""


class RunStore:
    """``folder/<key>.json`` per finished run, with the settings it ran under (``protocol``,
    shared by every run of the job, plus the run's own ``config``).

    Examples:
        >>> import tempfile
        >>> store = RunStore(tempfile.mkdtemp(), {"stream": "s"})
        >>> store.get_or_run("a", {"seed": 0}, lambda: {"auc": 0.7})
        {'auc': 0.7}
        >>> store.get_or_run("a", {"seed": 0}, lambda: {"auc": 0.0})  # not run again
        {'auc': 0.7}
        >>> (store.ran, store.reused)
        (1, 1)
    """

    def __init__(self, folder: str | Path, protocol: dict[str, Any], read_only: bool = False):
        self.folder, self.protocol, self.read_only = Path(folder), protocol, read_only
        self.ran = self.reused = 0
        if not read_only:  # an unwritable folder fails now, not after the first long run
            self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get_or_run(self, key: str, config: dict[str, Any], run: Callable[[], Any]) -> Any:
        """The stored result of ``key``, else ``run()``'s, stored (atomically) on return and
        returned as stored (strict JSON), so the first call and every later one agree.
        Raises :class:`RunMismatchError` if ``key`` was stored under other settings, or, when
        ``read_only``, is missing."""
        path = self.path(key)
        want = json.loads(json.dumps({"protocol": self.protocol, **config}))
        if path.exists():
            stored = json.loads(path.read_text())
            if stored.get("config") != want:
                raise RunMismatchError(
                    f"{path} was made under other settings ({stored.get('config')} against "
                    f"{want}); use another folder for runs of these settings"
                )
            self.reused += 1
            return stored["result"]
        if self.read_only:
            raise RunMismatchError(f"{path} is missing: run it first (read-only report)")
        text = json_text({"config": want, "result": run()})
        self.ran += 1
        atomic_write(path, text)
        return json.loads(text)["result"]  # as a later call reads it back (NaN: None)
