"""``streamkd serve``, second pass: an acknowledged event is never lost nor learned twice, a
failed append stores nothing, every queue and file is bounded, and bad settings are refused.

Most run the daemon in this process (a real uvicorn server in a thread, its learner in a
real process), so a test can inject a disk failure into the WAL's fsync."""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import threading
import time
from pathlib import Path

import pytest
from test_serve import (
    TOKEN,
    _digits_events,
    _wait_learned,
    _wal_ids,
    free_port,
    inspect,
    request,
)

from streamkd.serve import wal as walmod
from streamkd.serve.config import ServeConfig, load_config
from streamkd.serve.learner import DeadLetters


@contextlib.contextmanager
def daemon(tmp_path: Path, **settings):
    """``streamkd serve`` in this process: (port, service); stopped (final checkpoint) after."""
    import uvicorn

    from streamkd.serve import _server_class
    from streamkd.serve.app import Service, create_app

    config = ServeConfig(
        like="split-digits",
        source="http",
        checkpoint_dir=str(tmp_path / "ck"),
        no_track=True,
        port=free_port(),
        checkpoint_seconds=3600,
        **settings,
    ).check()
    service = Service(config)
    app = create_app(service)
    server = _server_class()(
        uvicorn.Config(app, host="127.0.0.1", port=config.port, log_level="warning")
    )
    app.state.server = server
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield config.port, service
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        service.stop()


def metric(port: int, name: str) -> float:
    text = request(port, "GET", "/metrics")[1]
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.slow  # a live daemon
def test_a_reposted_batch_appends_only_its_new_events_and_says_which(tmp_path):
    with daemon(tmp_path) as (port, _):
        events = _digits_events(30)
        status, body = request(port, "POST", "/learn", {"events": events[:20]})
        assert status == 200 and body["new"] == [e["id"] for e in events[:20]]
        status, body = request(port, "POST", "/learn", {"events": events[10:30]})
        assert status == 200 and body["accepted"] == 20
        assert body["held"] == [e["id"] for e in events[10:20]]
        assert body["new"] == [e["id"] for e in events[20:30]]
        assert _wait_learned(port, 30)["events_learned"] == 30
    assert _wal_ids(tmp_path / "ck") == [e["id"] for e in events]


@pytest.mark.slow  # a live daemon, ~20 s
def test_a_torn_batch_is_reposted_whole_and_each_event_is_learned_once(tmp_path):
    """A crash while a batch was being written (never acknowledged) leaves k whole lines and
    a partial one. The restart cuts the partial line; the client re-posts the whole batch:
    the k are held, the rest appended, and the model equals one that never crashed."""
    import torch

    from streamkd.streams.jsonl import parse_event

    events = _digits_events(60)
    first, torn = events[:30], events[30:]
    with daemon(tmp_path / "whole") as (port, _):
        request(port, "POST", "/learn", {"events": first})
        request(port, "POST", "/learn", {"events": torn})
        _wait_learned(port, 60)
        whole = request(port, "POST", "/checkpoint")[1]["model_sha256"]
    with daemon(tmp_path / "torn") as (port, _):
        request(port, "POST", "/learn", {"events": first})
        _wait_learned(port, 30)
    segment = tmp_path / "torn" / "ck" / "wal" / "wal-00000000000000000000.jsonl"
    data = b"".join(parse_event(e, (1, 8, 8), torch.uint8, 10).to_record() for e in torn)
    with open(segment, "ab") as f:  # the crash: 12 whole lines and part of the 13th
        cut = sum(len(line) + 1 for line in data.splitlines()[:12]) + 17
        f.write(data[:cut])
    with daemon(tmp_path / "torn") as (port, _):
        status, body = request(port, "POST", "/learn", {"events": torn})
        assert status == 200 and body["held"] == [e["id"] for e in torn[:12]]
        assert body["new"] == [e["id"] for e in torn[12:]]
        assert _wait_learned(port, 60)["events_learned"] == 60
        assert request(port, "POST", "/checkpoint")[1]["model_sha256"] == whole
    ids = _wal_ids(tmp_path / "torn" / "ck")
    assert ids == [e["id"] for e in events]


@pytest.mark.slow  # a live daemon
def test_an_injected_fsync_failure_answers_503_and_nothing_unacknowledged_is_learned(
    tmp_path, monkeypatch
):
    events = _digits_events(40)
    with daemon(tmp_path) as (port, service):
        assert request(port, "POST", "/learn", {"events": events[:10]})[0] == 200

        def failing(fd):
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(walmod, "_fsync", failing)
        status, body = request(port, "POST", "/learn", {"events": events[10:20]})
        assert status == 503 and "Input/output error" in body["error"]
        monkeypatch.setattr(walmod, "_fsync", walmod.os.fsync)
        assert metric(port, 'streamkd_events_rejected_total{where="wal_503"}') == 1
        status, body = request(port, "POST", "/learn", {"events": events[20:40]})
        assert status == 200 and len(body["new"]) == 20
        assert _wait_learned(port, 30)["events_learned"] == 30
        time.sleep(0.3)  # the learner would have read any more within this time
        assert request(port, "GET", "/health")[1]["events_learned"] == 30
    ids = _wal_ids(tmp_path / "ck")
    assert ids == [e["id"] for e in events[:10] + events[20:40]]
    assert inspect(tmp_path / "ck")["events_learned"] == 30


@pytest.mark.slow  # a live daemon each: the slow tier keeps make test under 4 minutes
def test_queues_are_bounded_and_answer_503_with_retry_after(tmp_path):
    """A batch larger than the queue could ever hold is a 413 (retrying cannot help); rows
    beyond the bound while others wait are a 503 to retry."""
    with daemon(tmp_path, max_queued_rows=4) as (port, _):
        x = _digits_events(1)[0]["x"]
        status, body = request(port, "POST", "/predict", {"batch": [{"x": x}] * 5})
        assert status == 413 and "at most 4 (--max-queued-rows)" in body["error"]
        assert request(port, "POST", "/predict", {"batch": [{"x": x}] * 4})[0] == 200
        answers: list = []

        def post() -> None:
            for _ in range(5):
                answers.append(request(port, "POST", "/predict", {"batch": [{"x": x}] * 3}))

        threads = [threading.Thread(target=post) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = collections.Counter(status for status, _ in answers)
        assert set(statuses) == {200, 503} and statuses[503] > 0, statuses
        assert all("waiting" in body["error"] for status, body in answers if status == 503)
        rejected = metric(port, 'streamkd_events_rejected_total{where="predict_503"}')
        assert rejected == statuses[503]


@pytest.mark.slow  # a live daemon each: the slow tier keeps make test under 4 minutes
def test_a_large_body_is_parsed_off_the_event_loop(tmp_path):
    """While a ~10 MB /predict body is parsed (and its 45,000 answers built), /health is
    still served: the body is parsed and the answer built off the event loop."""
    with daemon(tmp_path, max_body=16 * 2**20, max_queued_rows=100_000) as (port, _):
        x = _digits_events(1)[0]["x"]
        body = json.dumps({"batch": [{"x": x}] * 45_000}).encode()  # ~8.5 MB
        assert len(body) > 8 * 2**20
        done = []

        def post():
            done.append(request(port, "POST", "/predict", raw=body)[0])

        workers = [threading.Thread(target=post) for _ in range(1)]
        for w in workers:
            w.start()
        time.sleep(0.05)
        slowest, answered = 0.0, 0
        while any(w.is_alive() for w in workers):
            started = time.perf_counter()
            assert request(port, "GET", "/health")[0] == 200
            slowest = max(slowest, time.perf_counter() - started)
            answered += any(w.is_alive() for w in workers)
            time.sleep(0.01)
        for w in workers:
            w.join()
        assert done == [200]
        assert answered > 0  # /health was served while the body was being parsed
        # how long it waited is a benchmark's number (benchmarks/serve_load.py), not a test's
        print(f"slowest /health while parsing: {slowest * 1000:.0f} ms")


@pytest.mark.slow  # a live daemon each: the slow tier keeps make test under 4 minutes
def test_a_predict_token_guards_predictions(tmp_path):
    with daemon(tmp_path, token=TOKEN, token_predict="reader") as (port, _):
        x = _digits_events(1)[0]["x"]
        assert request(port, "POST", "/predict", {"x": x})[0] == 401
        assert request(port, "POST", "/predict", {"x": x}, token="reader")[0] == 200
        assert (
            request(port, "POST", "/learn", {"id": "a", "x": x, "y": 1}, token="reader")[0] == 401
        )
        assert metric(port, 'streamkd_events_rejected_total{where="predict_401"}') == 1
    dead = tmp_path / "ck" / "dead-letters.jsonl"
    assert not dead.exists() or dead.read_text() == ""  # 401s are counted, never written


@pytest.mark.slow  # a live daemon each: the slow tier keeps make test under 4 minutes
def test_an_undefined_accuracy_is_left_unset_not_zero(tmp_path):
    def samples(port):
        text = request(port, "GET", "/metrics")[1]
        return [line for line in text.splitlines() if line.startswith("streamkd_prequential")]

    with daemon(tmp_path) as (port, _):
        assert samples(port) == []  # nothing predicted yet: no value, not 0.0
        request(port, "POST", "/learn", {"events": _digits_events(10)})
        _wait_learned(port, 10)
        deadline = time.time() + 10
        while not samples(port):
            assert time.time() < deadline, "the accuracy never appeared"
            time.sleep(0.05)


def test_dead_letters_are_capped_and_rotated(tmp_path):
    path = tmp_path / "dead-letters.jsonl"
    letters = DeadLetters(path, max_bytes=2000)
    for i in range(100):
        letters.write("x" * 50, "y" * 100, f"test:{i}")
    letters.flush()
    letters.close()
    rotated = path.with_name("dead-letters.jsonl.1")
    assert rotated.exists() and rotated.stat().st_size <= 2000 + 300
    assert path.stat().st_size <= 2000 + 300
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["source"] == "test:99"
    long = DeadLetters(tmp_path / "long.jsonl")
    long.write("why", "z" * 50_000, "test")
    long.close()
    assert len(json.loads((tmp_path / "long.jsonl").read_text())["input"]) == 10_000


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ('port = "8000"', "setting 'port' must be int, got str '8000'"),
        ('stop_at_eof = "no"', "setting 'stop_at_eof' must be bool, got str 'no'"),
        ("checkpoint_seconds = true", "'checkpoint_seconds' must be float or null"),
        ("strategy_args = 3", "'strategy_args' must be table"),
    ],
)
def test_toml_values_of_the_wrong_type_are_refused_with_exit_2(tmp_path, capsys, setting, words):
    from streamkd.cli import main

    config = tmp_path / "serve.toml"
    config.write_text(f"[serve]\n{setting}\n")
    assert main(["serve", "--config", str(config), "--no-track"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err
    assert load_config(None, {"checkpoint_seconds": 5}).checkpoint_seconds == 5  # int is a float


@pytest.mark.slow  # a live daemon each: the slow tier keeps make test under 4 minutes
def test_the_folder_lock_is_released_by_a_stop_from_another_thread(tmp_path):
    from streamkd.serve.app import Service

    config = ServeConfig(
        like="split-digits", source="http", checkpoint_dir=str(tmp_path), no_track=True
    ).check()
    service = Service(config)
    stopper = threading.Thread(target=service.stop)
    stopper.start()
    stopper.join(timeout=120)
    again = Service(config)  # the lock is free: a new daemon may take the folder
    again.stop()


@pytest.mark.slow  # a live daemon each: the slow tier keeps make test under 4 minutes
def test_openapi_documents_a_request_and_response_model_for_every_route(tmp_path):
    with daemon(tmp_path) as (port, _):
        spec = request(port, "GET", "/openapi.json")[1]
    for path in ("/predict", "/learn", "/correct"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["$ref"].startswith("#/components/schemas/")
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            ok = op["responses"]["200"]["content"]
            assert ok, (path, method)
    x = spec["components"]["schemas"]["PredictItem"]["properties"]["x"]
    assert x["minItems"] == x["maxItems"] == 1  # the learner's shape (1, 8, 8), uint8
    assert x["items"]["items"]["items"]["maximum"] == 255


@pytest.mark.slow  # a live daemon each: the slow tier keeps make test under 4 minutes
def test_a_replica_behind_a_corrupt_newest_checkpoint_serves_the_fallback_then_moves_on(
    tmp_path, caplog
):
    from streamkd.checkpoint import Checkpointer
    from streamkd.experiment import make_model, make_strategy, make_stream
    from streamkd.serve.learner import Replica

    ck = tmp_path / "ck"
    stream = make_stream("split-digits")

    def strategy():
        return make_strategy("er", make_model(stream), memory=50, max_classes=10)

    writer = Checkpointer(ck, keep=5, kind="daemon")
    learning = strategy()
    config = {"strategy": "er"}

    def save(step):
        state = {
            "kind": "daemon",
            "strategy": learning.state_dict(),
            "position": step,
            "counters": {"events_learned": step, "lines_rejected": 0, "correct": 0, "predicted": 0},
            "config": config,
        }
        return writer.save(state, step=step)

    batches = iter(stream)
    learning.observe(next(batches))
    save(10)
    learning.observe(next(batches))
    newest = save(20)
    newest.write_bytes(newest.read_bytes()[:-50])  # corrupt
    reader = Checkpointer(ck, keep=5, kind="daemon", writable=False)
    with caplog.at_level(logging.DEBUG, logger="streamkd"):
        replica = Replica(strategy(), reader, config=dict(config))
        assert (
            replica.loaded_path.name == "ckpt-000000000010.pt"
            and replica.last_checkpoint_step == 10
        )
        assert replica.refresh() is False  # nothing changed: not re-read
        learning.observe(next(batches))
        save(30)
        assert replica.refresh() is True and replica.last_checkpoint_step == 30  # not stuck
        config_other = {"strategy": "mir"}
        config.update(config_other)
        save(40)  # written by a learner of another config
        assert replica.refresh() is False and replica.error is not None
        assert replica.health()["status"] == "error"
        replica.refresh()
        assert caplog.text.count("replica cannot serve") == 1  # logged once
