"""``streamkd serve``: events, the JSONL source, the HTTP API against a real server process,
and crash safety (kill -9 and restart: nothing lost, nothing learned twice)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from skips import needs_linux, redis_server

from streamkd.checkpoint import Checkpointer
from streamkd.serve.client import free_port
from streamkd.streams.jsonl import EventError, JsonlSource, parse_event

CLI = [sys.executable, "-m", "streamkd.cli"]
SHAPE = (1, 8, 8)


# -- events and the JSONL source -----------------------------------------------------------------


def _event(**kw):
    return {"id": "e1", "x": np.zeros(SHAPE, dtype=int).tolist(), "y": 3, **kw}


@pytest.mark.parametrize(
    ("event", "words"),
    [
        (_event(x=[[1, 2]]), "x has shape [1, 2], expected [1, 8, 8]"),
        (_event(x=np.full(SHAPE, 0.5).tolist()), "integers in 0..255"),
        (_event(x=np.full(SHAPE, 300).tolist()), "integers in 0..255"),
        (_event(x=np.full(SHAPE, np.nan).tolist()), "NaN or infinite"),
        (_event(x=[[["a"] * 8] * 8]), "numbers or evenly nested lists"),
        (_event(y=10), "label 10 is out of range (expected [0, 9])"),
        (_event(y=-1), "out of range"),
        (_event(y=True), "y must be an integer"),
        (_event(label=3), "unknown keys ['label']"),
        (_event(id=""), "id must be a non-empty string"),
        (_event(id="x" * 257), "at most 256 characters"),
        (_event(ts="now"), "ts must be a finite number"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_events_are_refused_with_the_reason(event, words):
    with pytest.raises(EventError, match=re.escape(words)):
        parse_event(event, SHAPE, torch.uint8, max_classes=10)


def test_a_good_event_has_the_learners_shape_and_dtype():
    event = parse_event(_event(x=np.full(SHAPE, 7).tolist()), SHAPE, torch.uint8, 10)
    assert event.x.dtype == np.uint8 and event.x.shape == SHAPE and event.y == 3


def test_jsonl_source_reads_whole_lines_only_and_seeks_back(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(_event(id=f"e{i}", y=i % 10)) for i in range(5)]
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # a writer caught mid-line
    source = JsonlSource(path, SHAPE, torch.uint8, max_classes=10, max_wait=0.0)
    got = source.read(10)
    assert [line.event.id for line in got] == ["e0", "e1", "e2"]
    middle = got[0].end
    assert source.position() == len("\n".join(lines[:3])) + 1 and source.at_end()
    with open(path, "a") as f:
        f.write(lines[3][20:] + "\n{not json\n" + lines[4] + "\n")
    got = source.read(10)
    assert [line.event.id if line.event else line.error[:12] for line in got] == [
        "e3",
        "invalid JSON",
        "e4",
    ]
    assert source.at_end()
    finite = JsonlSource(path, SHAPE, torch.uint8, max_classes=10, follow=False)
    path.write_text(lines[0] + "\n" + lines[1])  # no newline at the end of a finished file
    assert [line.event.id for line in finite.read(10)] == ["e0", "e1"] and finite.at_end()
    path.write_text("\n".join(lines) + "\n{not json\n")
    source.seek(middle)
    assert [line.event.id for line in source.read(2)] == ["e1", "e2"]
    with pytest.raises(ValueError, match="truncated or replaced"):
        source.seek(path.stat().st_size + 1)


def test_the_file_source_refuses_true_and_false_pixels_as_learn_does(tmp_path):
    """numpy reads ``[true, 7]`` as ``[1, 7]``: the sources' shared parser refuses it, for a
    file (and the WAL and Redis, which parse with it) as for ``POST /learn``."""
    x = np.full(SHAPE, 7).tolist()
    x[0][0][0] = True
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(_event(id="b", x=x)) + "\n" + json.dumps(_event(id="g")) + "\n")
    bad, good = JsonlSource(path, SHAPE, torch.uint8, max_classes=10, follow=False).read(10)
    assert bad.event is None and "event 'b': x must be numbers, not true or false" in bad.error
    assert good.event.id == "g"


# -- a real server ------------------------------------------------------------------------------


def _newest_step(ck: Path) -> int:
    return max((int(p.stem.split("-")[1]) for p in ck.glob("ckpt-*.pt")), default=0)


def request(port, method, path, body=None, token=None, raw: bytes | None = None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as err:
        text, status = err.read().decode(), err.code
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def start_server(args: list[str], env=None, wait=True) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if not wait:
        return proc, port
    deadline, last = time.time() + 120, "no answer"
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read()}")
        try:
            status, body = request(port, "GET", "/health")
            if status == 200:
                return proc, port
            last = f"/health {status}: {body}"
        except OSError as err:
            last = repr(err)
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"serve never became healthy in 120 s ({last}): {proc.stderr.read()}")


def inspect(ck: Path) -> dict:
    """``streamkd inspect DIR --json``, in this process (it reads; the server keeps running)."""
    import contextlib
    import io

    from streamkd.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["inspect", str(ck), "--json"]) == 0
    return json.loads(out.getvalue())


def export(stream: str, out: Path, n: int) -> None:
    done = subprocess.run(
        [*CLI, "export-jsonl", "--stream", stream, "--out", str(out), "--max-samples", str(n)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


def serve_until_done(args: list[str]) -> None:
    """``streamkd serve ARGS`` on a free port, to its end (a finite source): exit 0."""
    done = subprocess.run(
        [*CLI, "serve", *args, "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr


def serve_to_end(events: Path, ck: Path, like: str, extra=()) -> dict:
    serve_until_done(
        ["--like", like, "--source", f"jsonl:{events}", "--stop-at-eof"]
        + ["--checkpoint-dir", str(ck), "--no-track", *extra]
    )
    return inspect(ck)


@pytest.mark.slow
def test_serve_a_file_to_its_end_deterministically(tmp_path):
    events = tmp_path / "digits.jsonl"
    export("split-digits", events, 400)
    a = serve_to_end(events, tmp_path / "a", "split-digits")
    b = serve_to_end(events, tmp_path / "b", "split-digits", ["--checkpoint-every", "100"])
    assert a["events_learned"] == b["events_learned"] == 400
    assert a["model_sha256"] == b["model_sha256"]
    assert a["prequential_acc"] == b["prequential_acc"] > 0.3
    assert a["source_position"] == events.stat().st_size


TOKEN = "s3cret"


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def _eventually_holds(path: Path, *words: str, timeout: float = 10) -> str:
    """The text of ``path`` once it holds every word (dead letters are written off the
    event loop), or as it is after ``timeout``."""
    deadline = time.time() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if all(w in text for w in words) or time.time() > deadline:
            return text
        time.sleep(0.02)


def _wal_ids(ck: Path) -> list[str]:
    """The event ids in the WAL's segments, in order."""
    paths = sorted((ck / "wal").glob("wal-*.jsonl"))
    return [json.loads(line)["id"] for p in paths for line in p.read_text().splitlines()]


def _wal_lines(ck: Path) -> int:
    return sum(_lines(p) for p in (ck / "wal").glob("wal-*.jsonl"))


@pytest.fixture
def http_server(tmp_path):
    ck = tmp_path / "ck"
    args = ["--like", "split-digits", "--source", "http", "--checkpoint-dir", str(ck)]
    args += ["--no-track", "--token", TOKEN, "--checkpoint-seconds", "3600", "--max-body", "200000"]
    proc, port = start_server(args)
    yield port, ck
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def _digits_events(n, start=0):
    from streamkd.experiment import make_stream

    out = []
    for batch in make_stream("split-digits"):
        for x, y in zip(batch.x.tolist(), batch.y.tolist(), strict=True):
            out.append({"id": f"d{len(out)}", "x": x, "y": y})
        if len(out) >= start + n:
            break
    return out[start : start + n]


def _wait_learned(port, n, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        health = request(port, "GET", "/health")[1]
        if health["events_learned"] >= n:
            return health
        time.sleep(0.05)
    raise AssertionError(f"learned {health['events_learned']} of {n}")


@pytest.mark.slow  # a live daemon behind HTTP
def test_predict_learn_and_delayed_labels_over_http(http_server):
    port, ck = http_server
    good = _digits_events(40)
    status, body = request(port, "POST", "/learn", {"events": good[:30]}, token=TOKEN)
    assert (status, body["accepted"]) == (200, 30)
    _wait_learned(port, 30)
    status, single = request(
        port, "POST", "/predict", {"id": "p1", "x": good[30]["x"]}, token=TOKEN
    )
    assert status == 200 and isinstance(single["label"], int) and single["model_version"] == 30
    status, many = request(port, "POST", "/predict", {"batch": [{"x": e["x"]} for e in good[31:]]})
    assert status == 200 and len(many["predictions"]) == 9
    # a label arriving later for the /predict id reuses the features seen then, if the
    # /predict was authorised (an anonymous client may not choose training features)
    status, body = request(port, "POST", "/learn", {"id": "p1", "y": good[30]["y"]}, token=TOKEN)
    assert status == 200
    request(port, "POST", "/predict", {"id": "p2", "x": good[31]["x"]})
    status, body = request(port, "POST", "/learn", {"id": "p2", "y": 1}, token=TOKEN)
    assert status == 422 and "has no x" in body["error"]
    _wait_learned(port, 31)
    status, body = request(port, "POST", "/checkpoint", token=TOKEN)
    assert status == 200 and body["step"] == 31
    metrics = request(port, "GET", "/metrics")[1]
    assert "streamkd_events_learned_total 31.0" in metrics
    assert "streamkd_predictions_total 11.0" in metrics


BAD_REQUESTS = [
    # name, method, path, body (or raw bytes), token, status, words
    ("wrong shape", "POST", "/learn", {"id": "b1", "x": [1, 2], "y": 1}, TOKEN, 422, "shape"),
    (
        "wrong dtype",
        "POST",
        "/learn",
        {"id": "b2", "x": np.full(SHAPE, 0.5).tolist(), "y": 1},
        TOKEN,
        422,
        "0..255",
    ),
    (
        "NaN in /predict",
        "POST",
        "/predict",
        json.dumps({"x": np.full(SHAPE, np.nan).tolist()}).encode(),
        None,
        400,
        "NaN and Infinity are not JSON",
    ),
    ("huge number", "POST", "/predict", b'{"x": ' + b"9" * 5000 + b"}", None, 400, "JSON"),
    ("deep nesting", "POST", "/predict", b"[" * 100_000 + b"]" * 100_000, None, 400, "JSON"),
    (
        "unhashable id",
        "POST",
        "/learn",
        {"id": [1], "x": np.zeros(SHAPE, int).tolist(), "y": 1},
        TOKEN,
        422,
        "id must be",
    ),
    ("string pixels", "POST", "/predict", {"x": [[["1"] * 8] * 8]}, None, 422, "numbers"),
    ("true pixels", "POST", "/predict", {"x": [[[True] * 8] * 8]}, None, 422, "numbers"),
    (
        "a false pixel",
        "POST",
        "/learn",
        {"id": "b6", "x": [[[0] * 7 + [False]] + [[0] * 8] * 7], "y": 1},
        TOKEN,
        422,
        "not true or false",
    ),
    (
        "NaN values",
        "POST",
        "/learn",
        json.dumps({"id": "b3", "x": np.full(SHAPE, np.nan).tolist(), "y": 1}).encode(),
        TOKEN,
        400,
        "NaN and Infinity are not JSON",
    ),
    (
        "label out of range",
        "POST",
        "/learn",
        {"id": "b4", "x": np.zeros(SHAPE, int).tolist(), "y": 10},
        TOKEN,
        422,
        "out of range",
    ),
    ("oversized body", "POST", "/learn", b"[" + b"0," * 150_000 + b"0]", TOKEN, 413, "over"),
    ("missing token", "POST", "/learn", {"id": "b5"}, None, 401, "token"),
    ("wrong token", "POST", "/checkpoint", None, "nope", 401, "token"),
    ("invalid JSON", "POST", "/learn", b"{not json", TOKEN, 400, "invalid JSON"),
    ("one id twice", "POST", "/learn", None, TOKEN, 422, "appears twice in this request"),
    (
        "unknown predict key",
        "POST",
        "/predict",
        {"x": np.zeros(SHAPE, int).tolist(), "label": 3},
        None,
        422,
        "unknown keys ['label']",
    ),
    ("unknown route", "GET", "/nowhere", None, None, 404, "/nowhere"),
    ("correct", "POST", "/correct", {}, TOKEN, 409, "does not take corrections"),
]


@pytest.mark.slow  # a live daemon behind HTTP
def test_bad_requests_get_their_4xx_are_counted_dead_lettered_and_change_nothing(http_server):
    port, ck = http_server
    good = _digits_events(20)
    assert request(port, "POST", "/learn", {"events": good}, token=TOKEN)[0] == 200
    _wait_learned(port, 20)
    assert request(port, "POST", "/checkpoint", token=TOKEN)[0] == 200
    before = inspect(ck)
    wal_lines = _wal_lines(ck)
    failures = []
    for name, method, path, body, token, status, words in BAD_REQUESTS:
        if name == "one id twice":
            body = {"events": [{**good[0], "id": "twice"}, {**good[1], "id": "twice"}]}
        raw = body if isinstance(body, bytes) else None
        got, answer = request(port, method, path, None if raw else body, token, raw=raw)
        if got != status or words not in json.dumps(answer):
            failures.append(f"{name}: {got} {answer}"[:300])
    assert not failures, "\n".join(failures)
    assert request(port, "POST", "/checkpoint", token=TOKEN)[0] == 200
    after = inspect(ck)
    assert after["model_sha256"] == before["model_sha256"]
    assert after["events_learned"] == 20 and _wal_lines(ck) == wal_lines == 20
    # the refusals with a body are dead-lettered (off the event loop); 401/404 only counted
    written = [row[0] for row in BAD_REQUESTS if row[5] not in (401, 404)]
    deadline = time.time() + 10
    while time.time() < deadline and _lines(ck / "dead-letters.jsonl") < len(written):
        time.sleep(0.05)
    dead = (ck / "dead-letters.jsonl").read_text().splitlines()
    assert len(dead) == len(written)
    metrics = request(port, "GET", "/metrics")[1]
    rejected = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("streamkd_events_rejected_total{")
    )
    assert rejected == len(BAD_REQUESTS)


@pytest.mark.slow  # a live daemon, ~20 s
def test_a_correction_posted_to_droc_applies_to_the_next_prediction(tmp_path):
    ck = tmp_path / "ck"
    args = ["--like", "split-digits", "--source", "http", "--checkpoint-dir", str(ck)]
    args += ["--no-track", "--strategy", "droc", "--strategy-args", "text_encoder_kind=hashing"]
    proc, port = start_server(args)
    try:
        events = _digits_events(1500)
        assert request(port, "POST", "/learn", {"events": events[:30]})[0] == 200
        _wait_learned(port, 30)
        x, truth = events[935]["x"], events[935]["y"]
        status, first = request(port, "POST", "/predict", {"id": "p935", "x": x})
        assert status == 200 and first["applied"] is None
        wrong = (truth + 1) % 10 if first["label"] != (truth + 1) % 10 else (truth + 2) % 10
        # too early: the image embedding is not calibrated yet (refused, nothing stored)
        status, body = request(
            port, "POST", "/correct", {"id": "p935", "text": f"that's a {wrong}"}
        )
        assert status == 422 and "observed 30 of the 512 inputs" in body["error"], body
        for start in range(30, 900, 100):
            assert (
                request(port, "POST", "/learn", {"events": events[start : start + 100]})[0] == 200
            )
        _wait_learned(port, 900)
        # by the id of the prediction: the features seen then
        status, body = request(
            port, "POST", "/correct", {"id": "p935", "text": f"that's a {wrong}"}
        )
        assert status == 200, body
        assert body["stored"]["label"] == wrong and body["stored"]["level"] == "plan"
        status, after = request(port, "POST", "/predict", {"x": x})
        assert after["label"] == wrong and after["applied"]["label"] == wrong
        assert after["applied"]["similarity"] >= body["stored"]["floor"] >= 0.9
        # real images of the other classes are left alone (at most 1% taken over)
        others = [{"x": e["x"]} for e in events[1000:1500] if e["y"] != truth]
        status, many = request(port, "POST", "/predict", {"batch": others})
        taken = sum(p["applied"] is not None for p in many["predictions"])
        assert status == 200 and taken <= 0.01 * len(others), (taken, len(others))
        # an unreadable correction: 422, dead-lettered, nothing stored
        status, body = request(port, "POST", "/correct", {"x": x, "text": "make it nicer"})
        assert status == 422 and "cannot read the correction" in body["error"]
        status, body = request(port, "POST", "/correct", {"text": "that is a 3"})
        assert status == 422 and "needs x" in body["error"]
        dead = _eventually_holds(ck / "dead-letters.jsonl", "make it nicer", "needs x")
        assert "make it nicer" in dead and "needs x" in dead
        # the correction is in the checkpoint: a restarted daemon still applies it
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        proc, port = start_server(args)
        status, again = request(port, "POST", "/predict", {"x": x})
        assert again["label"] == wrong and again["applied"]["entry"] == after["applied"]["entry"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_serve_refuses_what_it_cannot_honour(tmp_path, capsys):
    from streamkd.cli import main

    base = ["serve", "--like", "split-digits", "--no-track", "--checkpoint-dir", str(tmp_path)]
    cases = [
        (["--host", "0.0.0.0"], "set --token"),
        (["--source", "kafka://x"], "unknown source 'kafka://x'"),
        (["--source", "http", "--stop-at-eof"], "needs a finite source"),
        (["--batch-size", "0"], "batch_size must be a positive integer"),
    ]
    for extra, words in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
    bad = tmp_path / "bad.toml"
    bad.write_text('[serve]\nstrategy = "er"\nbatchsize = 3\n')
    assert main(["serve", "--config", str(bad)]) == 2
    assert "unknown serve settings ['batchsize']" in capsys.readouterr().err


# -- crash safety (slow) -------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_five_times_on_a_file_source_loses_and_repeats_nothing(tmp_path):
    events = tmp_path / "mnist.jsonl"
    export("split-mnist", events, 20_000)
    args = ["--like", "split-mnist", "--source", f"jsonl:{events}", "--stop-at-eof"]
    args += ["--no-track", "--checkpoint-every", "1000"]
    full = serve_to_end(events, tmp_path / "full", "split-mnist", ["--checkpoint-every", "1000"])
    ck = tmp_path / "killed"
    rng = random.Random(0)
    for kill in range(5):  # each after a checkpoint that moved on, at a random moment past it
        proc, _ = start_server([*args, "--checkpoint-dir", str(ck)], wait=False)
        target = 2000 * (kill + 1)
        deadline = time.time() + 240
        while time.time() < deadline and _newest_step(ck) < target and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        assert proc.poll() is None, "the run finished before five kills"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert target <= _newest_step(ck) < 20_000
    killed = serve_to_end(events, ck, "split-mnist", ["--checkpoint-every", "1000"])
    assert full["events_learned"] == killed["events_learned"] == 20_000
    assert killed["model_sha256"] == full["model_sha256"]
    assert killed["prequential_acc"] == full["prequential_acc"]


@pytest.mark.slow
def test_http_source_kill_9_mid_posting_then_reposting_learns_each_event_once(tmp_path):
    ck = tmp_path / "ck"
    args = ["--like", "split-digits", "--source", "http", "--checkpoint-dir", str(ck)]
    args += ["--no-track", "--checkpoint-every", "200"]
    events = _digits_events(1347)
    events = (events * 2)[:2000]
    events = [{**e, "id": f"h{i}"} for i, e in enumerate(events)]
    proc, port = start_server(args)
    acknowledged: set[str] = set()
    for i in range(0, 2000, 10):
        if i == 1000:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        try:
            status, _ = request(port, "POST", "/learn", {"events": events[i : i + 10]})
        except OSError:
            continue
        if status == 200:
            acknowledged.update(e["id"] for e in events[i : i + 10])
    assert 0 < len(acknowledged) < 2000
    proc, port = start_server(args)
    try:
        for e in events:
            if e["id"] not in acknowledged:
                status, answer = request(port, "POST", "/learn", e)
                assert status == 200 and answer["new"] + answer["held"] == [e["id"]], answer
        health = _wait_learned(port, 2000, timeout=120)
        assert health["events_learned"] == 2000
        wal = _wal_ids(ck)
        assert len(wal) == len(set(wal)) == 2000
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_0_and_a_corrupt_newest_falls_back(tmp_path):
    events = tmp_path / "digits.jsonl"
    export("split-digits", events, 1347)
    ck = tmp_path / "ck"
    args = ["--like", "split-digits", "--source", f"jsonl:{events}", "--checkpoint-dir", str(ck)]
    args += ["--no-track", "--checkpoint-every", "300"]
    proc, port = start_server(args)
    _wait_learned(port, 1347)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0 and time.time() - sent < 10
    newest = Checkpointer(ck).paths()[0]
    assert Checkpointer.load(newest)["counters"]["events_learned"] == 1347
    previous = Checkpointer.load(Checkpointer(ck).paths()[1])["counters"]["events_learned"]
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated
    proc, port = start_server(args)
    try:
        assert _wait_learned(port, 1347)["events_learned"] == 1347  # the rest read again
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "falling back to the previous checkpoint" in err
    assert f"resumed from {ck}: {previous} events learned" in err  # the step it resumed from
    assert previous < 1347


# -- Redis Stream source (slow: a real redis-server) ---------------------------------------------


@pytest.fixture
def redis_port(tmp_path):
    """A redis-server of our own on a free loopback port (`make test` installs the binary)."""
    server = redis_server()
    port = free_port()
    proc = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        + ["--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 20
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.slow
def test_redis_source_kill_9_twice_gives_the_uninterrupted_model(tmp_path, redis_port):
    import redis

    client = redis.Redis(port=redis_port, decode_responses=True)
    stream = f"events-{time.time_ns()}"
    events = [{**e, "id": f"r{i}"} for i, e in enumerate(_digits_events(1347) * 4)]
    for i in range(0, len(events), 200):
        pipe = client.pipeline()
        for e in events[i : i + 200]:
            pipe.xadd(stream, {"event": json.dumps(e)})
        pipe.execute()

    def args(group: str, ck: Path) -> list[str]:
        url = f"redis://127.0.0.1:{redis_port}/{stream}?group={group}&consumer=c1"
        return ["--like", "split-digits", "--source", url, "--checkpoint-dir", str(ck)]

    common = ["--no-track", "--checkpoint-every", "200", "--stop-at-eof"]
    full = tmp_path / "full"
    serve_until_done([*args("full", full), *common])
    ck = tmp_path / "killed"
    for min_step in (1000, 3000):  # killed while learning, after these checkpoints
        proc, _ = start_server([*args("killed", ck), *common], wait=False)
        deadline = time.time() + 120
        while time.time() < deadline and _newest_step(ck) < min_step and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(0.05)
        assert proc.poll() is None, "the run ended before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert min_step <= _newest_step(ck) < len(events)
    serve_until_done([*args("killed", ck), *common])
    a, b = inspect(full), inspect(ck)
    assert a["events_learned"] == b["events_learned"] == len(events)
    assert a["model_sha256"] == b["model_sha256"] and a["prequential_acc"] == b["prequential_acc"]
    groups = {g["name"]: g for g in client.xinfo_groups(stream)}
    assert groups["killed"]["pending"] == 0  # every entry acknowledged once checkpointed


@pytest.mark.slow
def test_a_replica_follows_the_learners_checkpoints(tmp_path):
    ck = tmp_path / "ck"
    args = ["--like", "split-digits", "--no-track", "--checkpoint-seconds", "3600"]
    learner, lport = start_server([*args, "--source", "http", "--checkpoint-dir", str(ck)])
    replica = None
    try:
        events = _digits_events(200)
        assert request(lport, "POST", "/learn", {"events": events[:100]})[0] == 200
        _wait_learned(lport, 100)
        assert request(lport, "POST", "/checkpoint")[1]["step"] == 100
        replica, rport = start_server(
            [*args, "--replica-of", str(ck), "--checkpoint-dir", str(tmp_path / "replica")]
        )
        assert request(rport, "GET", "/health")[1]["model_version"] == 100
        assert request(rport, "POST", "/learn", events[100])[0] == 409
        assert request(lport, "POST", "/learn", {"events": events[100:]})[0] == 200
        _wait_learned(lport, 200)
        assert request(lport, "POST", "/checkpoint")[1]["step"] == 200
        deadline = time.time() + 120  # only "never": how fast is a benchmark's question
        while request(rport, "GET", "/health")[1]["model_version"] < 200:
            assert time.time() < deadline, "the replica never swapped to the new checkpoint"
            time.sleep(0.02)
        batch = {"batch": [{"x": e["x"]} for e in events[:20]]}
        ours = request(rport, "POST", "/predict", batch)[1]
        # the learner's predictions for that checkpoint: the same checkpoint loaded here
        from streamkd.experiment import make_model, make_strategy, make_stream

        stream = make_stream("split-digits")
        strategy = make_strategy("er", make_model(stream), memory=500, max_classes=10)
        strategy.load_state_dict(Checkpointer.load(Checkpointer(ck).paths()[0])["strategy"])
        x = torch.tensor([e["x"] for e in events[:20]], dtype=torch.uint8)
        labels = strategy.predict(x).argmax(1).tolist()
        assert [p["label"] for p in ours["predictions"]] == labels
        assert ours["model_version"] == 200
    finally:
        for proc in (learner, replica):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)


@pytest.mark.slow  # a live daemon, ~15 s
def test_serve_feature_vectors_by_input_shape_with_drift_detection(tmp_path):
    """No --like: float32 vectors of --input-shape, an MLP, labels capped by --max-classes;
    ADWIN watches the prequential error and its state is checkpointed."""
    events = tmp_path / "elec2.jsonl"
    export("elec2", events, 3000)
    info = serve_to_end(
        events,
        tmp_path / "ck",
        "elec2",
        ["--input-shape", "6", "--max-classes", "2", "--drift", "adwin"],
    )
    assert info["events_learned"] == 3000 and info["prequential_acc"] > 0.55
    state = Checkpointer.load(Checkpointer(tmp_path / "ck").paths()[0])
    assert state["drift"]["detector"] == "adwin" and state["drift"]["n_updates"] == 3000
    assert state["config"]["input_shape"] == "6" and state["config"]["like"] is None
    assert state["strategy"]["hparams"]["max_classes"] == 2


@pytest.mark.slow
def test_one_mlflow_run_per_daemon_continued_after_a_restart(tmp_path):
    import sqlite3

    events = tmp_path / "digits.jsonl"
    export("split-digits", events, 400)
    db = tmp_path / "m.db"
    ck = tmp_path / "ck"

    args = ["--like", "split-digits", "--source", f"jsonl:{events}", "--stop-at-eof"]
    args += ["--checkpoint-dir", str(ck), "--tracking-uri", f"sqlite:///{db}"]
    args += ["--checkpoint-every", "100"]
    serve_until_done(args)
    serve_until_done(args)  # a restart: resumes, finds nothing new, ends
    with sqlite3.connect(db) as con:
        runs = con.execute("select run_uuid, status from runs").fetchall()
        steps = con.execute("select distinct step from metrics where key = 'loss'").fetchall()
        tag = con.execute("select value from tags where key = 'checkpoint_step'").fetchall()
    assert len(runs) == 1 and runs[0][1] == "FINISHED"
    assert sorted(s for (s,) in steps) == [100, 200, 300, 400]
    assert tag == [("400",)]
    assert inspect(ck)["mlflow_run_id"] == runs[0][0]


@pytest.mark.slow
def test_a_torn_wal_tail_is_cut_at_start_and_nothing_acknowledged_is_lost(tmp_path):
    """A crash in the middle of an append leaves a line without its newline (never
    acknowledged): the restart cuts it, learns every whole line, and takes new posts."""
    ck = tmp_path / "ck"
    ck.mkdir()
    events = _digits_events(11)
    whole = "".join(json.dumps(e) + "\n" for e in events[:10])
    (ck / "wal.jsonl").write_text(whole + json.dumps(events[10])[:50])
    args = ["--like", "split-digits", "--source", "http", "--checkpoint-dir", str(ck)]
    proc, port = start_server([*args, "--no-track"])
    try:
        _wait_learned(port, 10)  # the WAL of earlier releases becomes the first segment
        assert (ck / "wal" / "wal-00000000000000000000.jsonl").read_text() == whole
        assert request(port, "POST", "/learn", events[10])[0] == 200  # its id was never logged
        assert _wait_learned(port, 11)["events_learned"] == 11
        assert request(port, "GET", "/health")[1]["lines_rejected"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "cut 50 bytes of an unfinished write" in err


def _learner_pid(daemon: int) -> int:
    """The daemon's learner process (its other child is multiprocessing's resource tracker)."""
    children = Path(f"/proc/{daemon}/task/{daemon}/children").read_text().split()
    learners = [
        int(c)
        for c in children
        if "spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")
    ]
    assert len(learners) == 1, children
    return learners[0]


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):  # dead, waiting to be reaped by whoever adopted it
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@needs_linux
def test_the_learner_process_dies_with_the_daemon_and_its_crash_stops_the_daemon(tmp_path):
    events, ck = tmp_path / "digits.jsonl", tmp_path / "ck"
    export("split-digits", events, 300)
    args = ["--like", "split-digits", "--source", f"jsonl:{events}", "--checkpoint-dir", str(ck)]
    args += ["--no-track", "--checkpoint-every", "100"]
    # the learner alone crashes: /health says so and the daemon exits 1, with the reason
    proc, port = start_server(args)
    _wait_learned(port, 300)
    os.kill(_learner_pid(proc.pid), signal.SIGKILL)
    assert proc.wait(timeout=60) == 1
    assert "learner process ended unexpectedly" in proc.stderr.read()
    # kill -9 of the daemon takes its learner with it (no orphan writing checkpoints)
    proc, port = start_server(args)
    learner = _learner_pid(proc.pid)
    proc.kill()
    proc.wait(timeout=30)
    assert _gone(learner)
    # and the next start resumes: everything learned once
    proc, port = start_server(args)
    assert _wait_learned(port, 300)["events_learned"] == 300
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert inspect(ck)["events_learned"] == 300
