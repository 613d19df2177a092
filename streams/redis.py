"""A Redis Stream read through a consumer group: the daemon's distributed source.

``redis://HOST:PORT/STREAM?group=G&consumer=C`` (``group`` defaults to ``streamkd``,
``consumer`` to ``learner``). Each entry holds one event as JSON in its ``event`` field (see
:mod:`streamkd.streams.jsonl`). Entries are acknowledged (``XACK``) only once a checkpoint
covers them (:meth:`RedisSource.commit`). The position is the id of the last entry handed to
the learner. On start, every entry after the position up to the group's last delivered one
is read again first, in id order (``XRANGE``), then new ones (``XREADGROUP >``): after a
crash, or after a fall back to an older checkpoint whose successors had acknowledged more,
nothing is lost and, the learner having restarted from that checkpoint, nothing is learned
twice. One learner per group and consumer.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import torch

from streamkd.streams.jsonl import Line, parse_line

FIELD = "event"


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RedisSource:
    """Events from a Redis Stream (see the module docstring); ``read``/``position``/
    ``seek``/``at_end`` as :class:`~streamkd.streams.jsonl.JsonlSource`, plus ``commit``."""

    def __init__(
        self,
        url: str,
        shape: tuple[int, ...],
        dtype: torch.dtype = torch.float32,
        *,
        max_classes: int | None = None,
        block_ms: int = 50,
    ) -> None:
        import redis

        parsed = urllib.parse.urlparse(url)
        stream = parsed.path.lstrip("/")
        if parsed.scheme != "redis" or not parsed.hostname or not stream:
            raise ValueError(
                f"--source {url!r}: expected redis://HOST:PORT/STREAM?group=G&consumer=C"
            )
        query = dict(urllib.parse.parse_qsl(parsed.query))
        unknown = sorted(set(query) - {"group", "consumer"})
        if unknown:
            raise ValueError(f"--source {url!r}: unknown options {unknown} (group, consumer)")
        self.url, self.stream = url, stream
        self.group = query.get("group", "streamkd")
        self.consumer = query.get("consumer", "learner")
        self.shape, self.dtype, self.max_classes = tuple(shape), dtype, max_classes
        self.block_ms = block_ms
        self.client = redis.Redis(
            host=parsed.hostname,
            port=parsed.port or 6379,
            decode_responses=True,
            socket_timeout=30,  # a half-open connection fails the learner, never hangs it
            health_check_interval=10,
        )
        try:
            self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise ValueError(f"--source {url!r}: {err}") from None
        except redis.ConnectionError as err:
            raise ValueError(f"--source {url!r}: cannot reach Redis ({err})") from None
        self._position = "0-0"  # the last entry handed to the learner
        self._replay_end = self._last_delivered()  # entries up to here are read again first
        self._delivered: list[str] = []  # handed out, not yet acknowledged

    def describe(self) -> str:
        return f"redis:{self.stream}/{self.group}/{self.consumer}"

    def position(self) -> str:
        return self._position

    def seek(self, position: Any) -> None:
        """Resume after ``position`` (a checkpoint's): pending entries up to it were
        learned and checkpointed already, so they are acknowledged; those after it are read
        again (see the module docstring)."""
        self._position = str(position)
        covered = [e for e in self._pending_entries() if _id_key(e) <= _id_key(self._position)]
        if covered:
            self.client.xack(self.stream, self.group, *covered)

    def _last_delivered(self) -> str:
        group = next(g for g in self.client.xinfo_groups(self.stream) if g["name"] == self.group)
        return group["last-delivered-id"]

    def _pending_entries(self) -> list[str]:
        pending = self.client.xpending_range(
            self.stream, self.group, min="-", max="+", count=1_000_000, consumername=self.consumer
        )
        return [p["message_id"] for p in pending]

    def commit(self) -> None:
        """Acknowledge every entry handed out up to the position (a checkpoint covers them)."""
        upto = _id_key(self._position)
        done = [e for e in self._delivered if _id_key(e) <= upto]
        if done:
            self.client.xack(self.stream, self.group, *done)
            self._delivered = [e for e in self._delivered if _id_key(e) > upto]

    def at_end(self) -> bool:
        """Every entry of the stream handed to the learner."""
        last = self.client.xinfo_stream(self.stream)["last-generated-id"]
        return _id_key(self._position) >= _id_key(last)

    def read(self, n: int) -> list[Line]:
        if _id_key(self._position) < _id_key(self._replay_end):
            entries = self.client.xrange(
                self.stream, min=f"({self._position}", max=self._replay_end, count=n
            )
            if entries:
                return self._lines(entries)
            self._replay_end = self._position  # trimmed away: nothing more to replay
        got = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=n, block=self.block_ms
        )
        return self._lines(got[0][1] if got else [])

    def _lines(self, entries: list[tuple[str, dict]]) -> list[Line]:
        lines = []
        for entry_id, fields in entries:
            self._delivered.append(entry_id)
            self._position = entry_id
            text = fields.get(FIELD, "")
            where = f"entry {entry_id}: "
            lines.append(parse_line(text, self.shape, self.dtype, self.max_classes, where=where))
        return lines

    def close(self) -> None:
        self.client.close()
