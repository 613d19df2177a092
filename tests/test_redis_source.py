"""The Redis Stream source against a real redis-server of its own (a free loopback port):
its URL forms (password, database, TLS), a Redis restart mid-stream, a lost reply, a lost
group, and the claim that keeps a second learner off a live consumer."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from skips import redis_server

from streamkd.serve.client import free_port
from streamkd.streams import redis as redis_source
from streamkd.streams.redis import ConsumerTakenError, RedisSource, parse_url

SHAPE = (1, 8, 8)
LOGGER = "streamkd.streams.redis"


class Server:
    """A redis-server on a free loopback port that a test can stop and start again."""

    def __init__(self, folder: Path, *args: str, tls: bool = False) -> None:
        self.binary = redis_server()
        self.port, self.folder, self.args, self.tls = free_port(), folder, args, tls
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        port = ["--port", str(self.port)]
        if self.tls:
            port = ["--port", "0", "--tls-port", str(self.port)]
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", *port, "--save", "", "--appendonly", "no"]
            + ["--dir", str(self.folder), *self.args],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.time() + 20
        while time.time() < deadline:
            assert self.proc.poll() is None, "redis-server exited at start"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc = None

    def client(self, **kwargs):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, **kwargs)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path).start()
    yield s
    if s.proc is not None:
        s.stop()


def event(i: int) -> str:
    import json

    x = [[[(i * 7 + 8 * r + c) % 256 for c in range(8)] for r in range(8)]]
    return json.dumps({"id": f"e{i}", "x": x, "y": i % 10})


def add(client, stream: str, numbers) -> None:
    for i in numbers:
        client.xadd(stream, {"event": event(i)})


def source(url: str, **kwargs) -> RedisSource:
    return RedisSource(url, SHAPE, torch.uint8, max_classes=10, **kwargs)


def read_ids(src: RedisSource, want: int, n: int = 4, timeout: float = 20) -> list[str]:
    """The ids of the events read until ``want`` came (or ``timeout``)."""
    ids: list[str] = []
    deadline = time.time() + timeout
    while len(ids) < want and time.time() < deadline:
        for line in src.read(n):
            assert line.error is None, line.error
            ids.append(line.event.id)
    return ids


def ids(numbers) -> list[str]:
    return [f"e{i}" for i in numbers]


def messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# -- URLs ---------------------------------------------------------------------------------------


def test_url_forms_split_into_redis_py_url_and_ours():
    old = parse_url("redis://h:6380/events?group=g&consumer=c")
    assert (old.stream, old.group, old.consumer, old.db) == ("events", "g", "c", 0)
    assert old.client_url == "redis://h:6380/0"
    new = parse_url("redis://:s%40cret@h:6380/2/a/b")
    assert (new.stream, new.group, new.consumer, new.db) == ("a/b", "streamkd", "learner", 2)
    assert new.client_url == "redis://:s%40cret@h:6380/2"
    tls = parse_url("rediss://u:p@h/0/42?ssl_cert_reqs=none&socket_timeout=5&consumer=x")
    assert (tls.stream, tls.consumer, tls.db, tls.tls) == ("42", "x", 0, True)
    assert tls.client_url == "rediss://u:p@h/0?ssl_cert_reqs=none&socket_timeout=5"
    assert parse_url("redis://h/events?db=3").db == 3


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://h:6379/events", "the scheme must be"),
        ("redis:/h/events", "the scheme must be"),
        ("redis://h:6379/", "no stream name"),
        ("redis://h:6379/2/", "no stream name"),
        ("redis:///events", "no host"),
        ("redis://h:99999/events", "Port out of range"),
        ("redis://h/5", "could be a database or a stream"),
        ("redis://h/2/events?db=3", "the database is given twice"),
        ("redis://h/events?group=a&group=b", "options given twice"),
        ("redis://h/events?group=", "must not be empty"),
    ],
)
def test_bad_urls_are_refused_with_the_expected_form(url, says):
    with pytest.raises(ValueError, match=says) as caught:
        parse_url(url)
    text = str(caught.value)
    assert "\n" not in text and "rediss://" in text and "STREAM" in text


@pytest.mark.parametrize(
    "url, unknown",
    [
        ("redis://h/events?grup=g", "['grup']"),
        ("redis://h/events?protocol=3", "['protocol']"),  # RESP3 replies have other shapes
        ("redis://h/events?ssl_cert_reqs=none", "need rediss://"),
    ],
)
def test_unknown_options_are_refused_by_name(url, unknown):
    with pytest.raises(ValueError, match="unknown options") as caught:
        parse_url(url)
    assert unknown in str(caught.value)


def test_a_password_is_never_shown():
    with pytest.raises(ValueError) as caught:
        parse_url("redis://:hunter2@h/events?nope=1")
    assert "hunter2" not in str(caught.value) and ":***@h" in str(caught.value)


def test_password_and_database_from_the_url(tmp_path):
    s = Server(tmp_path, "--requirepass", "secret").start()
    try:
        for url in (
            f"redis://127.0.0.1:{s.port}/2/events",
            f"redis://:wrong@127.0.0.1:{s.port}/2/events",
        ):
            with pytest.raises(ValueError, match="Redis refused the login") as caught:
                source(url)
            assert "wrong" not in str(caught.value)
        add(s.client(password="secret", db=2), "events", range(6))
        src = source(f"redis://:secret@127.0.0.1:{s.port}/2/events?group=g&consumer=c")
        try:
            assert read_ids(src, 6) == ids(range(6))
            assert src.describe() == "redis:events/g/c"
        finally:
            src.close()
        assert s.client(password="secret").exists("events") == 0  # db 0 untouched
        user = source(f"redis://default:secret@127.0.0.1:{s.port}/2/events?group=g2")
        try:
            assert read_ids(user, 6) == ids(range(6))
        finally:
            user.close()
    finally:
        s.stop()


def test_the_stream_only_form_reads_database_0(server):
    add(server.client(), "events", range(5))
    src = source(f"redis://127.0.0.1:{server.port}/events?group=g&consumer=c")
    try:
        assert read_ids(src, 5) == ids(range(5))
        assert src.at_end()
        src.commit()
        assert server.client().xpending("events", "g")["pending"] == 0
    finally:
        src.close()


def test_unreachable_redis_is_refused_at_start():
    with pytest.raises(ValueError, match="cannot reach Redis"):
        source(f"redis://127.0.0.1:{free_port()}/events")


def test_tls_with_rediss(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    tls = ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no"]
    s = Server(tmp_path, *tls, tls=True).start()
    try:
        add(s.client(ssl=True, ssl_ca_certs=str(cert)), "events", range(5))
        base = f"rediss://127.0.0.1:{s.port}/events"
        for query, group in ((f"ssl_ca_certs={cert}", "verified"), ("ssl_cert_reqs=none", "any")):
            src = source(f"{base}?{query}&group={group}")
            try:
                assert read_ids(src, 5) == ids(range(5))
            finally:
                src.close()
        with pytest.raises(ValueError, match="cannot reach Redis"):  # not the server's CA
            source(base)
    finally:
        s.stop()


# -- outages and restarts -----------------------------------------------------------------------


def test_a_redis_restart_mid_stream_loses_and_repeats_nothing(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger=LOGGER)
    pauses: list[float] = []
    monkeypatch.setattr(redis_source, "_pause", pauses.append)  # the backoff, without waiting
    s = Server(tmp_path, "--appendonly", "yes").start()  # the stream survives the restart
    url = f"redis://127.0.0.1:{s.port}/events?group=g&consumer=c"
    try:
        add(s.client(), "events", range(10))
        src = source(url, lock_ttl=1.0)
        try:
            got = read_ids(src, 4)
            assert got == ids(range(4))
            s.stop()
            for _ in range(3):
                assert src.read(4) == []
            assert src.at_end() is False
            src.commit()  # nothing acknowledged: it keeps the ids for the next commit
            assert len(messages(caplog, "Redis is unreachable")) == 1
            s.start()
            add(s.client(), "events", range(10, 15))
            got += read_ids(src, 11)
            assert got == ids(range(15))
            assert len(messages(caplog, "reconnected to Redis")) == 1
            assert pauses == [0.1, 0.2, 0.4]  # exponential
            assert src.at_end()
            src.commit()
            assert s.client().xpending("events", "g")["pending"] == 0
            s.stop()  # a second outage is reported again, once
            assert src.read(4) == [] and src.read(4) == []
            s.start()
            add(s.client(), "events", [15])
            assert read_ids(src, 1) == ["e15"]
            assert len(messages(caplog, "Redis is unreachable")) == 2
            assert len(messages(caplog, "reconnected to Redis")) == 2
            assert pauses == [0.1, 0.2, 0.4, 0.1, 0.2]  # from the start again
        finally:
            src.close()
    finally:
        if s.proc is not None:
            s.stop()


def test_entries_of_a_lost_reply_are_handed_out_first_in_order(server):
    client = server.client()
    add(client, "events", range(10))
    src = source(f"redis://127.0.0.1:{server.port}/events?group=g&consumer=c")
    try:
        assert read_ids(src, 3, n=3) == ids(range(3))
        # an XREADGROUP whose reply was lost with its connection: e3, e4 delivered, unseen
        client.xreadgroup("g", "c", {"events": ">"}, count=2)
        assert read_ids(src, 7, n=10) == ids(range(3, 10))
        src.commit()
        assert client.xpending("events", "g")["pending"] == 0
    finally:
        src.close()


def test_a_group_lost_with_a_restart_without_persistence_is_recreated(server, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    add(server.client(), "events", range(5))
    src = source(f"redis://127.0.0.1:{server.port}/events?group=g&consumer=c", lock_ttl=1.0)
    try:
        assert read_ids(src, 5) == ids(range(5))
        server.stop()
        server.start()  # no persistence: the stream, its group and the claim are gone
        add(server.client(), "events", range(5, 8))
        assert read_ids(src, 3) == ids(range(5, 8))
        assert len(messages(caplog, "Redis lost the state of stream 'events'")) == 1
        src.commit()
        assert server.client().xpending("events", "g")["pending"] == 0
        assert server.client().get(src.lock_key) is not None  # claimed again
    finally:
        src.close()


def test_a_group_lost_while_the_stream_stays_goes_on_after_the_position(server, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    client = server.client()
    add(client, "events", range(5))
    src = source(f"redis://127.0.0.1:{server.port}/events?group=g&consumer=c")
    try:
        assert read_ids(src, 5) == ids(range(5))
        client.xgroup_destroy("events", "g")  # as a restart from an AOF without the group
        add(client, "events", range(5, 8))
        assert read_ids(src, 3) == ids(range(5, 8))  # e0..e4 are not learned twice
        assert src.read(10) == []
        assert len(messages(caplog, "still reaches position")) == 1
    finally:
        src.close()


# -- one live learner per consumer --------------------------------------------------------------


def test_a_second_learner_on_a_live_consumer_is_refused(server):
    url = f"redis://127.0.0.1:{server.port}/events?group=g&consumer=c"
    first = source(url, lock_ttl=0.5)
    began = time.monotonic()
    with pytest.raises(ValueError, match="consumer c of group g on stream events is already live"):
        source(url, lock_ttl=0.5)
    assert time.monotonic() - began >= 0.5  # it waited for a crashed learner's claim to expire
    other = source(url.replace("consumer=c", "consumer=d"), lock_ttl=0.5)  # another consumer
    other.close()
    first.close()
    began = time.monotonic()
    second = source(url, lock_ttl=0.5)  # released: at once
    assert time.monotonic() - began < 0.4
    second._stop_heartbeat.set()  # second "crashes": its claim is never renewed nor released
    second._heartbeat.join()
    began = time.monotonic()
    third = source(url, lock_ttl=0.5)
    assert time.monotonic() - began < 1.5
    try:
        with pytest.raises(ConsumerTakenError, match="taken over by another learner"):
            second.read(4)  # the crashed one, were it to come back, stops
    finally:
        second.close()
        assert server.client().get(third.lock_key) == third._token  # not released by second
        third.close()
    assert server.client().get(third.lock_key) is None


def test_a_claim_taken_by_someone_else_stops_the_next_read(server, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    client = server.client()
    add(client, "events", range(3))
    src = source(f"redis://127.0.0.1:{server.port}/events?group=g&consumer=c", lock_ttl=0.6)
    try:
        assert read_ids(src, 1, n=1) == ["e0"]
        client.set(src.lock_key, "intruder", px=10_000)
        deadline = time.time() + 5
        while not messages(caplog, "taken over") and time.time() < deadline:
            time.sleep(0.05)
        assert [r.levelno for r in caplog.records if "taken over" in r.getMessage()] == [
            logging.ERROR
        ]
        with pytest.raises(ConsumerTakenError, match="intruder"):
            src.read(4)
    finally:
        src.close()
    assert client.get(src.lock_key) == "intruder"  # close() releases only its own claim


def test_the_redis_source_passes_the_source_contract(server):
    """``streamkd.checks.check_source``: each event once, in order; a reader resumed at a
    checkpoint's position reads exactly what followed it."""
    import json

    from streamkd.checks import check_source
    from streamkd.streams.source import SourceContext, open_source

    client = server.client()
    url = f"redis://127.0.0.1:{server.port}/events?group=g&consumer=c"
    context = SourceContext(SHAPE, torch.uint8, max_classes=10)

    def write(events):
        for e in events:
            client.xadd("events", {"event": json.dumps(e)})

    events = [json.loads(event(i)) for i in range(11)]
    check_source(lambda: open_source(url, context), write, events)
