"""Schemathesis against a live ``streamkd serve`` (slow tier): a real daemon on loopback, its
own ``/openapi.json``, a bounded number of examples per operation and a fixed seed.

The fuzzer runs as its CLI (``python -m schemathesis.cli run``) in a subprocess: its phases
(examples, coverage, fuzzing), its checks, and a HAR record of every exchange, which the tests
then read for what the checks do not say (who was refused, what was learned). Every run holds
the server to: no 5xx, every status code, content type, header and body as documented.

``positive_data_acceptance`` is left out where a token lets requests through: some schema-valid
requests are refused by state the schema cannot express (an event without ``x`` whose id no
earlier ``/predict`` named, one id twice in a request). The runs that check "nothing refused
changed the model" take the model's digest (``POST /checkpoint``) before and after, and count
the write-ahead log's lines: what was acknowledged is all that may have been learned.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from test_serve import TOKEN, _digits_events, _wait_learned, _wal_lines, request, start_server

EXAMPLES = 40  # per operation and phase: the whole file runs in about a minute
MUTATING = ("/learn", "/checkpoint", "/correct")
BODIES = ("/predict", "/learn", "/correct")
# the daemon reads any body as JSON whatever its Content-Type (the README's `curl -d` sends
# form-urlencoded): Schemathesis' Content-Type probes carry a schema-valid body, so a run whose
# every request must be refused leaves them out (the other runs send and check them)
ONLY_SCHEMA_VIOLATIONS = """
import schemathesis


@schemathesis.hook
def filter_case(context, case):
    content_type = (case.headers or {}).get("Content-Type")
    return content_type is None or content_type.startswith("application/json")
"""


@contextlib.contextmanager
def daemon(tmp_path: Path, *extra: str):
    """``streamkd serve`` learning from HTTP on a free loopback port: (port, checkpoint dir)."""
    ck = tmp_path / "ck"
    args = ["--like", "split-digits", "--source", "http", "--no-track"]
    args += ["--checkpoint-dir", str(ck), "--checkpoint-seconds", "3600", *extra]
    proc, port = start_server(args)
    try:
        yield port, ck
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fuzz(port: int, tmp_path: Path, name: str, *options: str, hooks: str | None = None):
    """One ``schemathesis run`` against the daemon (exit code asserted, its report printed on
    failure); the exchanges it recorded, as (method, path, request content type, status,
    answer)."""
    har = tmp_path / f"{name}.har"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    env.pop("SCHEMATHESIS_HOOKS", None)
    if hooks is not None:
        path = tmp_path / f"{name}_hooks.py"
        path.write_text(hooks)
        env["SCHEMATHESIS_HOOKS"] = str(path)
    command = [sys.executable, "-m", "schemathesis.cli", "run"]
    command += [f"http://127.0.0.1:{port}/openapi.json", "--workers", "1"]
    command += ["--max-examples", str(EXAMPLES), "--request-timeout", "30"]
    command += ["--generation-database", "none", "--no-color", "--continue-on-failure"]
    command += ["--report", "har", "--report-har-path", str(har), *options]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    report = done.stdout[-30000:] + done.stderr[-5000:]
    print(report)  # shown by pytest when a test fails
    assert done.returncode == 0, f"schemathesis {name} exited {done.returncode}:\n{report}"
    exchanges = []
    for entry in json.loads(har.read_text())["log"]["entries"]:
        sent, got = entry["request"], entry["response"]
        headers = {h["name"].lower(): h["value"] for h in sent["headers"]}
        exchanges.append(
            (
                sent["method"],
                urlsplit(sent["url"]).path,
                headers.get("content-type"),
                got["status"],
                got["content"].get("text", ""),
            )
        )
    assert exchanges, f"schemathesis {name} sent nothing"
    tally = collections.Counter((m, p, s) for m, p, _, s, _ in exchanges)
    print(f"{name}: {len(exchanges)} exchanges", sorted(tally.items()))
    server_errors = [x[:4] for x in exchanges if x[3] >= 500]
    assert not server_errors, f"{name}: 5xx answers {server_errors[:10]}"
    return exchanges


def learned_ids(exchanges) -> list[str]:
    """The event ids the daemon acknowledged as new (appended to its write-ahead log)."""
    return [
        event_id
        for method, path, _, status, answer in exchanges
        if (method, path, status) == ("POST", "/learn", 200)
        for event_id in json.loads(answer)["new"]
    ]


def checkpoint(port: int, token: str | None = None) -> dict:
    status, body = request(port, "POST", "/checkpoint", token=token)
    assert status == 200, body
    return body


def warm_up(port: int, ck: Path, token: str | None) -> dict:
    """20 events learned (the model is not the initial one) and checkpointed: its digest."""
    status, body = request(port, "POST", "/learn", {"events": _digits_events(20)}, token=token)
    assert (status, body["accepted"]) == (200, 20), body
    _wait_learned(port, 20)
    assert _wal_lines(ck) == 20
    return checkpoint(port, token)


def settled(port: int, ck: Path, learned: int, token: str | None) -> dict:
    """Once the daemon has learned ``learned`` events: exactly those are in its log and its
    model (a checkpoint's step is the number of events learned)."""
    assert _wal_lines(ck) == learned
    _wait_learned(port, learned)
    after = checkpoint(port, token)
    assert after["step"] == learned
    assert request(port, "GET", "/health")[1]["events_learned"] == learned
    return after


@pytest.mark.slow
def test_fuzz_without_a_token_no_5xx_and_every_answer_as_documented(tmp_path):
    """No token: every request is allowed; positive and negative generation, every check but
    positive_data_acceptance. Whatever was refused was not learned: the daemon learned
    exactly the ids its 200 answers called new."""
    with daemon(tmp_path) as (port, ck):
        before = checkpoint(port)
        exchanges = fuzz(
            port,
            tmp_path,
            "open",
            "--mode",
            "all",
            "--seed",
            "1",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        )
        for route in BODIES:
            assert any(p == route and m == "POST" for m, p, *_ in exchanges), route
        new = learned_ids(exchanges)
        assert len(new) == len(set(new))  # an id is never new twice
        after = settled(port, ck, len(new), None)
        if not new:
            assert after["model_sha256"] == before["model_sha256"]


@pytest.mark.slow
def test_fuzz_without_the_token_every_mutating_request_is_refused_and_nothing_changes(tmp_path):
    """A token is set and the fuzzer does not send it: every POST to a mutating route answers
    401 (``/predict`` is open: no --token-predict), nothing reaches the log, and the model's
    digest is the one before the run. Every check runs, positive_data_acceptance too (a 401
    is an accepted answer to a valid request without credentials)."""
    with daemon(tmp_path, "--token", TOKEN) as (port, ck):
        before = warm_up(port, ck, TOKEN)
        exchanges = fuzz(
            port, tmp_path, "anonymous", "--mode", "all", "--seed", "2", "--checks", "all"
        )
        for route in MUTATING:
            answers = collections.Counter(
                s for m, p, _, s, _ in exchanges if (m, p) == ("POST", route)
            )
            assert answers and set(answers) == {401}, (route, answers)
        assert any(p == "/predict" and s == 200 for _, p, _, s, _ in exchanges)
        after = settled(port, ck, 20, TOKEN)
        assert after["model_sha256"] == before["model_sha256"]


@pytest.mark.slow
def test_fuzz_with_the_token_schema_violations_are_refused_and_change_nothing(tmp_path):
    """The token is sent. Negative generation only (bodies and methods the schema does not
    allow): every request to a route that may change something is refused with a 4xx, and
    the model's digest is the one before. Then positive generation: no 5xx, every answer as
    documented, and exactly the acknowledged events learned."""
    bearer = ["--header", f"Authorization: Bearer {TOKEN}"]
    with daemon(tmp_path, "--token", TOKEN) as (port, ck):
        before = warm_up(port, ck, TOKEN)
        exchanges = fuzz(
            port,
            tmp_path,
            "negative",
            *bearer,
            "--mode",
            "negative",
            "--seed",
            "3",
            "--checks",
            "all",
            hooks=ONLY_SCHEMA_VIOLATIONS,
        )
        assert all(ctype in (None, "application/json") for _, _, ctype, _, _ in exchanges)
        for route in BODIES:
            assert any((m, p) == ("POST", route) for m, p, *_ in exchanges), route
        let_through = [
            x[:4]
            for x in exchanges
            if not 400 <= x[3] < 500
            and (x[0], x[1]) not in (("GET", "/health"), ("GET", "/metrics"))
        ]
        assert not let_through, f"schema violations not refused: {let_through[:10]}"
        after = settled(port, ck, 20, TOKEN)
        assert after["model_sha256"] == before["model_sha256"]

        exchanges = fuzz(
            port,
            tmp_path,
            "positive",
            *bearer,
            "--mode",
            "positive",
            "--seed",
            "4",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        )
        new = learned_ids(exchanges)
        assert len(new) == len(set(new))
        settled(port, ck, 20 + len(new), TOKEN)


@pytest.mark.slow
def test_fuzz_a_correction_memory_and_its_applied_answers_as_documented(tmp_path):
    """droc takes corrections, so ``/correct``'s parser is fuzzed too (the daemons above
    answer it 409), and an answer that applied a correction (``applied``, which no random
    input reaches) is held to the schema through Schemathesis' own checks."""
    import schemathesis

    droc = ("--strategy", "droc", "--strategy-args", "text_encoder_kind=hashing")
    droc += ("--strategy-args", "calibration_samples=20")  # takes corrections after 20 inputs
    with daemon(tmp_path, *droc) as (port, ck):
        events = _digits_events(40)
        assert request(port, "POST", "/learn", {"events": events[:30]})[0] == 200
        _wait_learned(port, 30)
        x = events[35]["x"]
        assert request(port, "POST", "/predict", {"id": "p35", "x": x})[0] == 200
        status, body = request(port, "POST", "/correct", {"id": "p35", "text": "that's a 3"})
        assert status == 200, body
        predict = schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/openapi.json")
        for sent in ({"x": x}, {"batch": [{"id": "a", "x": x}, {"x": x}]}):
            case = predict["/predict"]["POST"].Case(body=sent, media_type="application/json")
            response = case.call()
            answer = response.json()
            assert all(row["applied"] for row in answer.get("predictions", [answer])), answer
            case.validate_response(response)  # raises with Schemathesis' report

        exchanges = fuzz(
            port,
            tmp_path,
            "droc",
            "--mode",
            "all",
            "--seed",
            "5",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        )
        corrections = collections.Counter(
            s for m, p, _, s, _ in exchanges if (m, p) == ("POST", "/correct")
        )
        assert 409 not in corrections and 422 in corrections, corrections
        settled(port, ck, 30 + len(learned_ids(exchanges)), None)
