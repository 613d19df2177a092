"""A Redis Stream read through a consumer group: the daemon's distributed source.

URL forms (``group`` defaults to ``streamkd``, ``consumer`` to ``learner``)::

    redis://HOST:PORT/STREAM?group=G&consumer=C            database 0
    redis://HOST:PORT/DB/STREAM?group=G&consumer=C         a numeric first segment is the DB
    redis://:PASSWORD@HOST:PORT/DB/STREAM                   a password (``requirepass``)
    redis://USER:PASSWORD@HOST:PORT/DB/STREAM               an ACL user
    rediss://HOST:PORT/DB/STREAM?ssl_ca_certs=/path/ca.pem  TLS

The connection is made by redis-py's own URL parser (``redis.Redis.from_url``). Besides
``group`` and ``consumer``, the query may hold the redis-py connection options listed in
:data:`PASSED` (and, for ``rediss://``, :data:`PASSED_TLS`, e.g. ``ssl_cert_reqs=none``);
anything else is refused. A stream whose name is a number needs the DB form
(``redis://HOST:PORT/0/42``); special characters in a name are percent-encoded.

Each entry holds one event as JSON in its ``event`` field (see
:mod:`streamkd.streams.jsonl`). Entries are acknowledged (``XACK``) only once a checkpoint
covers them (:meth:`RedisSource.commit`). The position is the id of the last entry handed to
the learner. On start, every entry after the position up to the group's last delivered one
is read again first, in id order (``XRANGE``), then new ones (``XREADGROUP >``): after a
crash, or after a fall back to an older checkpoint whose successors had acknowledged more,
nothing is lost and, the learner having restarted from that checkpoint, nothing is learned
twice.

**Redis restarts and outages.** redis-py retries each command a few times with exponential
backoff (a dropped connection is reconnected at once). A longer outage does not stop the
learner: :meth:`~RedisSource.read` logs one warning, backs off (exponentially, up to
:data:`BACKOFF_CAP` seconds per read) and returns no events; it logs ``reconnected`` when
Redis answers again. :meth:`~RedisSource.commit` keeps the entries it could not acknowledge
and acknowledges them at the next commit; :meth:`~RedisSource.at_end` says False while
Redis is unreachable. A read whose reply was lost with its connection (redis-py retried it)
has delivered entries nobody saw: they are found in the consumer's pending list and handed
out first, in id order, so nothing is skipped or learned twice. Redis restarted *with*
persistence (AOF or RDB) keeps the stream and the group, and reading goes on where it was.
Restarted *without* persistence, the group is gone (``NOGROUP``): the source logs an error
saying Redis lost the stream's state and recreates the group, after the position if the
stream still reaches it (nothing learned is read again), else from the stream's start (the
stream was wiped: what is in it now is new, and the position starts again from ``0-0``).

**One live learner per stream, group and consumer.** Two learners with the same consumer
would split the entries between them and acknowledge each other's. A learner claims the
key ``streamkd:consumer:<stream>:<group>:<consumer>`` (``SET NX PX``, :data:`LOCK_TTL`
seconds) and a heartbeat thread extends it every third of that, only while it still holds
its own token. :meth:`~RedisSource.close` releases it. A new learner finding the key held
waits up to the TTL and a margin (a crashed learner's claim expires: restarting after
``kill -9`` works, a few seconds later) and otherwise refuses to start. Should the heartbeat
ever find the key held by someone else (the claim expired during a long outage and another
learner took it), it logs an error and the next read raises :class:`ConsumerTakenError`,
so the learner stops rather than consume twice.

The start-up replay above reads the group's entries up to its last delivered one, whichever
consumer they went to: give each learner its own group.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any

import torch

from streamkd.registry import SOURCES
from streamkd.streams.jsonl import Line, parse_line
from streamkd.streams.source import SourceContext

log = logging.getLogger(__name__)

FIELD = "event"
GROUP, CONSUMER = "streamkd", "learner"
FORM = (
    "redis://[[USER]:PASSWORD@]HOST[:PORT]/[DB/]STREAM[?group=G&consumer=C] (or rediss:// for TLS)"
)
OURS = frozenset({"group", "consumer"})
#: redis-py connection options a URL may set (``db`` only if the path gives none). Not
#: ``protocol`` (RESP3 replies have other shapes) nor ``retry_on_*`` (retries are ours).
PASSED = frozenset(
    {
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_read_size",
        "health_check_interval",
        "max_connections",
        "client_name",
    }
)
#: redis-py's TLS options, for ``rediss://`` only.
PASSED_TLS = frozenset(
    {
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
    }
)
SOCKET_TIMEOUT = 30.0  # a half-open connection fails a command, never hangs the learner
CONNECT_TIMEOUT = 5.0
HEALTH_CHECK_SECONDS = 10
RETRIES = 3  # redis-py's own retries of each command: 0.05 + 0.1 + 0.2 s of backoff
RETRY_BASE, RETRY_CAP = 0.025, 0.5
BACKOFF_BASE, BACKOFF_CAP = 0.1, 3.0  # read()'s backoff while Redis stays unreachable
LOCK_TTL = 5.0
LOCK_MARGIN = 1.0

# Extend our claim if we still hold it (1); claim it again if it expired (2); else 0.
_REFRESH = """
local held = redis.call('get', KEYS[1])
if held == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
if not held then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def _not_retried(error: type[Exception]) -> dict[str, Any]:
    """``Retry`` keywords that keep ``error`` (a refused login) from being retried, where
    the installed redis-py can say so (``Retry(is_retryable=...)``)."""
    from redis.retry import Retry

    if "is_retryable" not in inspect.signature(Retry.__init__).parameters:
        return {}
    return {"is_retryable": lambda err: not isinstance(err, error)}


def _pause(seconds: float) -> None:
    """read()'s backoff while Redis is unreachable (a function of its own for the tests)."""
    time.sleep(seconds)


class ConsumerTakenError(RuntimeError):
    """Another learner holds this source's consumer: this one must stop reading."""


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def redacted(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages and logs."""
    try:
        parsed = urllib.parse.urlsplit(url)
        if parsed.password is None:
            return url
        user = parsed.username or ""
        host = parsed.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit(parsed._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "<an unparsable URL>"


@dataclass(frozen=True)
class Target:
    """What a source URL names: the URL handed to ``redis.Redis.from_url`` and ours."""

    client_url: str
    stream: str
    group: str
    consumer: str
    db: int
    tls: bool


def parse_url(url: str) -> Target:
    """Split a source URL (see the module docstring); a bad one is a one-line ValueError."""

    def bad(why: str) -> ValueError:
        return ValueError(f"--source {redacted(url)!r}: {why}; expected {FORM}")

    try:
        parsed = urllib.parse.urlsplit(url)
        host, _ = parsed.hostname, parsed.port  # a bad port raises here
    except ValueError as err:
        raise bad(str(err)) from None
    scheme = parsed.scheme.lower()
    if scheme not in ("redis", "rediss") or not url.lower().startswith(f"{scheme}://"):
        raise bad("the scheme must be redis:// or rediss://")
    if not host:
        raise bad("no host")
    segments = [urllib.parse.unquote(s) for s in parsed.path.split("/")[1:]]
    db: int | None = None
    if len(segments) >= 2 and segments[0].isdigit():
        db, segments = int(segments[0]), segments[1:]
    stream = "/".join(segments)
    if not stream:
        raise bad("no stream name")
    if db is None and stream.isdigit():
        raise bad(f"/{stream} could be a database or a stream: write /DB/{stream}")
    pairs = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
    names = [name for name, _ in pairs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise bad(f"options given twice: {repeated}")
    query = dict(pairs)
    allowed = OURS | PASSED | (PASSED_TLS if scheme == "rediss" else frozenset())
    unknown = sorted(set(query) - allowed)
    if unknown:
        tls = sorted(set(unknown) & PASSED_TLS)
        hint = f" ({tls} need rediss://)" if tls else ""
        raise ValueError(
            f"--source {redacted(url)!r}: unknown options {unknown}{hint}; a source takes "
            f"group, consumer and the redis-py options {sorted(allowed - OURS)}"
        )
    if "db" in query:
        if db is not None:
            raise bad("the database is given twice (in the path and as ?db=)")
        if not query["db"].isdigit():
            raise bad(f"db={query['db']!r} is not a database number")
        db = int(query.pop("db"))
    db = db or 0
    group, consumer = query.pop("group", GROUP), query.pop("consumer", CONSUMER)
    if not group or not consumer:
        raise bad("group and consumer must not be empty")
    netloc = parsed.netloc  # user, password and host as written: redis-py decodes them
    client_url = urllib.parse.urlunsplit(
        (scheme, netloc, f"/{db}", urllib.parse.urlencode(query), "")
    )
    return Target(client_url, stream, group, consumer, db, scheme == "rediss")


class RedisSource:
    """Events from a Redis Stream (see the module docstring); ``read``/``position``/
    ``seek``/``at_end`` as :class:`~streamkd.streams.jsonl.JsonlSource`, plus ``commit``.

    ``lock_ttl`` is the lifetime in seconds of this learner's claim on its consumer
    (renewed every third of it; a crashed learner's claim lets a new one start after it).
    """

    def __init__(
        self,
        url: str,
        shape: tuple[int, ...],
        dtype: torch.dtype = torch.float32,
        *,
        max_classes: int | None = None,
        block_ms: int = 50,
        lock_ttl: float = LOCK_TTL,
    ) -> None:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        target = parse_url(url)
        self.url, self.where = url, redacted(url)
        self.stream, self.group, self.consumer = target.stream, target.group, target.consumer
        self.db = target.db
        self.shape, self.dtype, self.max_classes = tuple(shape), dtype, max_classes
        self.block_ms = block_ms
        self.lock_ttl = float(lock_ttl)
        self.lock_key = f"streamkd:consumer:{self.stream}:{self.group}:{self.consumer}"
        self._token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._position = "0-0"  # the last entry handed to the learner
        self._replay_end = "0-0"  # entries up to here are read again first
        self._delivered: list[str] = []  # handed out, not yet acknowledged
        self._ack_covered = False  # seek() could not acknowledge: commit() does it
        self._down_since: float | None = None  # when Redis stopped answering
        self._failures = 0
        self._lost: str | None = None  # why the consumer is no longer ours
        self._confirmed = 0.0  # when the claim was last known to be ours (monotonic)
        self._claim_mutex = threading.Lock()
        self._stop_heartbeat = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._closed = False
        self._claimed = False  # the consumer's key may be ours: close() releases it
        self.client = redis.Redis.from_url(
            target.client_url,
            decode_responses=True,
            socket_timeout=max(SOCKET_TIMEOUT, 2 * block_ms / 1000),
            socket_connect_timeout=CONNECT_TIMEOUT,
            health_check_interval=HEALTH_CHECK_SECONDS,
            retry=Retry(
                ExponentialBackoff(cap=RETRY_CAP, base=RETRY_BASE),
                RETRIES,
                supported_errors=(redis.ConnectionError, redis.TimeoutError),
                **_not_retried(redis.AuthenticationError),
            ),
        )
        self._refresh_script = self.client.register_script(_REFRESH)
        self._release_script = self.client.register_script(_RELEASE)
        try:
            self.client.ping()
            self._claim()
            try:
                self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise
            self._replay_end = self._last_delivered()
        except BaseException as err:
            self.close()
            if isinstance(err, redis.AuthenticationError):
                raise ValueError(
                    f"--source {self.where!r}: Redis refused the login ({err}): give the "
                    "password in the URL, redis://:PASSWORD@HOST:PORT/... or "
                    "redis://USER:PASSWORD@HOST:PORT/..."
                ) from None
            if isinstance(err, redis.ConnectionError | redis.TimeoutError):
                raise ValueError(f"--source {self.where!r}: cannot reach Redis ({err})") from None
            if isinstance(err, redis.RedisError):
                raise ValueError(f"--source {self.where!r}: {err}") from None
            raise
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"redis-claim-{self.consumer}", daemon=True
        )
        self._heartbeat.start()

    # -- the interface the learner uses --------------------------------------------------
    def describe(self) -> str:
        return f"redis:{self.stream}/{self.group}/{self.consumer}"

    def position(self) -> str:
        return self._position

    def seek(self, position: Any) -> None:
        """Resume after ``position`` (a checkpoint's): pending entries up to it were
        learned and checkpointed already, so they are acknowledged (at the next commit if
        Redis is unreachable now); those after it are read again (see the module
        docstring)."""
        import redis

        self._position = str(position)
        try:
            self._ack_pending_covered()
        except (redis.ConnectionError, redis.TimeoutError) as err:
            self._note_outage(err)
            self._ack_covered = True

    def commit(self, step: int | None = None) -> None:
        """Acknowledge every entry handed out up to the position (the checkpoint of
        ``step`` covers them).
        While Redis is unreachable, nothing is lost: the next commit acknowledges them."""
        import redis

        upto = _id_key(self._position)
        done = [e for e in self._delivered if _id_key(e) <= upto]
        try:
            if self._ack_covered:
                self._ack_pending_covered()
                self._ack_covered = False
            if done:
                self.client.xack(self.stream, self.group, *done)
        except (redis.ConnectionError, redis.TimeoutError) as err:
            self._note_outage(err)
            return
        self._delivered = [e for e in self._delivered if _id_key(e) > upto]

    def at_end(self) -> bool:
        """Every entry of the stream handed to the learner (False while Redis is
        unreachable or the stream is gone: :meth:`read` will tell)."""
        import redis

        try:
            last = self.client.xinfo_stream(self.stream)["last-generated-id"]
        except (redis.ConnectionError, redis.TimeoutError) as err:
            self._note_outage(err)
            return False
        except redis.ResponseError as err:
            if "no such key" in str(err).lower():
                return False
            raise
        return _id_key(self._position) >= _id_key(last)

    def read(self, n: int) -> list[Line]:
        """Up to ``n`` events, in id order; ``[]`` when none came within ``block_ms`` or
        when Redis is unreachable (after a backoff: see the module docstring). Raises
        :class:`ConsumerTakenError` once another learner holds this consumer."""
        import redis

        if self._lost:
            raise ConsumerTakenError(self._lost)
        try:
            stale = time.monotonic() - self._confirmed > self.lock_ttl * 2 / 3
            if stale or self._down_since is not None:
                self._check_claim()  # the heartbeat is late, or Redis was away: check first
            try:
                lines = self._read(n)
            except redis.ResponseError as err:
                if not str(err).startswith("NOGROUP"):
                    raise
                self._check_claim()  # lost with the group: claimed again, unless taken
                self._recreate_group()
                lines = []
        except (redis.ConnectionError, redis.TimeoutError) as err:
            self._note_outage(err)
            _pause(min(BACKOFF_CAP, BACKOFF_BASE * 2**self._failures))
            self._failures += 1
            return []
        self._back_online()
        return lines

    def close(self) -> None:
        """Stop the heartbeat, release the consumer (if still ours) and disconnect."""
        if self._closed:
            return
        self._closed = True
        self._stop_heartbeat.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join(timeout=10)
        if self._claimed:
            try:
                self._release_script(keys=[self.lock_key], args=[self._token])
            except Exception as err:  # noqa: BLE001 - unreachable: the claim expires by itself
                log.debug("could not release %s: %s", self.lock_key, err)
        self.client.close()

    # -- reading ---------------------------------------------------------------------------
    def _read(self, n: int) -> list[Line]:
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
        entries = got[0][1] if got else []
        # Entries delivered to us after the position that we did not get (the reply of an
        # earlier XREADGROUP lost with its connection, and retried) come first.
        first = self.client.xpending_range(
            self.stream,
            self.group,
            min=f"({self._position}",
            max="+",
            count=1,
            consumername=self.consumer,
        )
        if first and (not entries or _id_key(first[0]["message_id"]) < _id_key(entries[0][0])):
            log.warning(
                "%s: entries delivered by a read whose reply was lost (from %s on) are "
                "handed out now, in order",
                self.describe(),
                first[0]["message_id"],
            )
            got = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: self._position}, count=n
            )
            entries = got[0][1] if got else []
        return self._lines(entries)

    def _lines(self, entries: list[tuple[str, dict]]) -> list[Line]:
        lines = []
        for entry_id, fields in entries:
            self._delivered.append(entry_id)
            self._position = entry_id
            if not fields:  # deleted (XDEL, XTRIM) while pending: nothing to learn
                continue
            text = fields.get(FIELD, "")
            where = f"entry {entry_id}: "
            lines.append(parse_line(text, self.shape, self.dtype, self.max_classes, where=where))
        return lines

    def _last_delivered(self) -> str:
        group = next(g for g in self.client.xinfo_groups(self.stream) if g["name"] == self.group)
        return group["last-delivered-id"]

    def _pending_entries(self) -> list[str]:
        pending = self.client.xpending_range(
            self.stream, self.group, min="-", max="+", count=1_000_000, consumername=self.consumer
        )
        return [p["message_id"] for p in pending]

    def _ack_pending_covered(self) -> None:
        covered = [e for e in self._pending_entries() if _id_key(e) <= _id_key(self._position)]
        if covered:
            self.client.xack(self.stream, self.group, *covered)

    def _recreate_group(self) -> None:
        """The group vanished (Redis restarted without persistence, or it was deleted)."""
        import redis

        try:
            last = self.client.xinfo_stream(self.stream)["last-generated-id"]
        except redis.ResponseError:
            last = "0-0"  # the stream is gone too
        kept = _id_key(last) >= _id_key(self._position)
        start = self._position if kept else "0-0"
        log.error(
            "Redis lost the state of stream %r: its consumer group %r is gone (Redis "
            "restarted without persistence, or the group was deleted); %d acknowledgements "
            "still due are dropped. %s",
            self.stream,
            self.group,
            len(self._delivered),
            f"The stream still reaches position {self._position}: the group is recreated "
            "after it, nothing learned is read again."
            if kept
            else f"The stream ends at {last}, before position {self._position}: it was "
            "wiped, what it holds now is new and is read from its start.",
        )
        try:
            self.client.xgroup_create(self.stream, self.group, id=start, mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        self._position = self._replay_end = start
        self._delivered = []

    # -- outages ---------------------------------------------------------------------------
    def _note_outage(self, err: Exception) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "Redis is unreachable for %s (%s): retrying with backoff (up to %.0f s "
                "apart); the learner waits, nothing is lost or learned twice",
                self.where,
                err,
                BACKOFF_CAP,
            )

    def _back_online(self) -> None:
        if self._down_since is not None:
            log.warning(
                "reconnected to Redis for %s after %.1f s",
                self.where,
                time.monotonic() - self._down_since,
            )
            self._down_since, self._failures = None, 0

    # -- the single-consumer claim ----------------------------------------------------------
    def _claim(self) -> None:
        """Take the consumer's key, waiting up to the TTL and a margin for another
        learner's claim to expire; a ValueError if it is still live."""
        ttl_ms = max(1, round(self.lock_ttl * 1000))
        deadline = time.monotonic() + self.lock_ttl + LOCK_MARGIN
        told = False
        self._claimed = True  # from the first SET on (its reply may be lost)
        while True:
            if self.client.set(self.lock_key, self._token, nx=True, px=ttl_ms):
                break
            holder = self.client.get(self.lock_key)
            if holder == self._token:  # our SET went through, its reply was lost
                break
            if holder is not None:
                if time.monotonic() >= deadline:
                    raise ValueError(
                        f"--source {self.where!r}: consumer {self.consumer} of group "
                        f"{self.group} on stream {self.stream} is already live in another "
                        f"learner ({holder}); stop that one first, or give this one another "
                        f"group (key {self.lock_key})"
                    )
                if not told:
                    log.info(
                        "consumer %s of group %s on stream %s is held by %s: waiting up to "
                        "%.0f s for it to expire (a crashed learner's claim does)",
                        self.consumer,
                        self.group,
                        self.stream,
                        holder,
                        self.lock_ttl + LOCK_MARGIN,
                    )
                    told = True
                time.sleep(min(0.1, self.lock_ttl / 10))
        self._confirmed = time.monotonic()

    def _refresh(self) -> None:
        """Extend the claim (or take it again if it expired); a claim now held by someone
        else is lost for good: logged, and the next read raises."""
        with self._claim_mutex:
            if self._lost or self._closed:
                return
            began = time.monotonic()
            ttl_ms = max(1, round(self.lock_ttl * 1000))
            status = self._refresh_script(keys=[self.lock_key], args=[self._token, ttl_ms])
            if status == 0:
                holder = self.client.get(self.lock_key)
                self._lost = (
                    f"--source {self.where}: consumer {self.consumer} of group {self.group} on "
                    f"stream {self.stream} was taken over by another learner ({holder}) while "
                    "this one could not renew its claim: stopping, so no entry is read twice"
                )
                log.error("%s", self._lost)
                return
            if status == 2:
                log.warning(
                    "the claim on consumer %s of group %s on stream %s had expired (Redis "
                    "restarted or unreachable for over %.1f s): claimed again",
                    self.consumer,
                    self.group,
                    self.stream,
                    self.lock_ttl,
                )
            self._confirmed = began

    def _check_claim(self) -> None:
        self._refresh()
        if self._lost:
            raise ConsumerTakenError(self._lost)

    def _beat(self) -> None:
        import redis

        while not self._stop_heartbeat.wait(self.lock_ttl / 3):
            try:
                self._refresh()
            except (redis.ConnectionError, redis.TimeoutError):
                pass  # read() reports the outage; the claim is checked again after it
            except Exception:  # noqa: BLE001 - the heartbeat must outlive odd errors
                log.exception("renewing the claim on %s", self.lock_key)
            if self._lost:
                return


@SOURCES.register("rediss", help="rediss://... (TLS)")
@SOURCES.register("redis", help="redis://[:PASSWORD@]HOST:PORT[/DB]/STREAM?group=G&consumer=C")
def open_redis(url: str, context: SourceContext) -> RedisSource:
    """``redis[s]://``: a Redis Stream read through a consumer group (module docstring);
    with ``context.finite`` (``--stop-at-eof``) the learner stops once it has read what the
    stream held (``at_end``)."""
    return RedisSource(url, context.shape, context.dtype, max_classes=context.max_classes)
