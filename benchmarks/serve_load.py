"""Load on ``streamkd serve``: /predict from concurrent clients while the learner consumes a
JSONL source, against the same learner with no traffic.

    python benchmarks/serve_load.py --json results/serve_load.json

Phases, one after the other on this machine:
1. ``idle``: the daemon learns split-mnist events with no /predict traffic (events/s).
2. ``load``: a fresh daemon learns the same events while ``--clients`` threads (persistent
   HTTP connections) post single-image /predict requests for ``--seconds``; predictions/s,
   p50/p99 latency, failed requests and events learned/s.
3. ``run``: ``streamkd run`` on split-mnist with the same strategy (samples/s, no server).

The ratios: learning under load / idle, and the server's learning / ``streamkd run``'s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLI = [sys.executable, "-m", "streamkd.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body


def start(events: Path, ck: Path, strategy: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--like", "split-mnist", "--strategy", strategy, "--no-track"]
        + ["--source", f"jsonl:{events}", "--checkpoint-dir", str(ck), "--port", str(port)]
        + ["--checkpoint-every", "5000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            get(port, "/health")
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the daemon did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def learned_rate(port: int, seconds: float) -> tuple[float, int]:
    a = get(port, "/health")["events_learned"]
    t0 = time.perf_counter()
    time.sleep(seconds)
    b = get(port, "/health")["events_learned"]
    return (b - a) / (time.perf_counter() - t0), b


def client(port: int, bodies: list[bytes], until: float, out: list, failures: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    rng = random.Random(threading.get_ident())
    while time.perf_counter() < until:
        body = rng.choice(bodies)
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except OSError as err:
            failures.append(repr(err))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            continue
        if not ok:
            failures.append(resp.status)
        out.append(time.perf_counter() - t0)
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60000, help="split-mnist events exported")
    parser.add_argument(
        "--copies",
        type=int,
        default=5,
        help="the export repeated (fresh ids) so that no phase's learner runs out of events",
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--strategy", default="er")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    try:
        events = work / "events.jsonl"
        subprocess.run(
            [*CLI, "export-jsonl", "--stream", "split-mnist", "--out", str(events)]
            + ["--max-samples", str(args.events)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        lines = events.read_text().splitlines()
        bodies = [json.dumps({"x": json.loads(line)["x"]}).encode() for line in lines[:500]]
        with open(events, "a") as f:  # copies with fresh ids (e0 -> c1-e0, ...)
            for copy in range(1, args.copies):
                for line in lines:
                    f.write(line.replace('{"id":"', f'{{"id":"c{copy}-', 1) + "\n")
        size = events.stat().st_size

        proc, port = start(events, work / "idle", args.strategy)
        time.sleep(1.0)
        idle_rate, _ = learned_rate(port, args.idle_seconds)
        if get(port, "/health")["source_position"] >= size:
            raise SystemExit("the learner ran out of events while idle: raise --copies")
        stop(proc)

        proc, port = start(events, work / "load", args.strategy)
        time.sleep(1.0)
        latencies: list[float] = []
        failures: list = []
        until = time.perf_counter() + args.seconds
        threads = [
            threading.Thread(target=client, args=(port, bodies, until, latencies, failures))
            for _ in range(args.clients)
        ]
        before = get(port, "/health")["events_learned"]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        health = get(port, "/health")
        after = health["events_learned"]
        stop(proc)
        if health["source_position"] >= size:
            raise SystemExit("the learner ran out of events under load: raise --copies")

        run_json = work / "run.json"
        subprocess.run(
            [*CLI, "run", "--stream", "split-mnist", "--strategy", args.strategy, "--quiet"]
            + ["--no-track", "--max-samples", "20000", "--json", str(run_json)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        run_rate = json.loads(run_json.read_text())["runs"][0]["samples_per_s"]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    latencies.sort()
    under_load = (after - before) / elapsed
    result = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "requests": len(latencies),
        "failed_requests": len(failures),
        "predictions_per_s": len(latencies) / elapsed,
        "latency_p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "latency_p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "learned_per_s_under_load": under_load,
        "learned_per_s_idle": idle_rate,
        "learning_under_load_vs_idle": under_load / idle_rate if idle_rate else None,
        "streamkd_run_samples_per_s": run_rate,
        "serve_idle_vs_streamkd_run": idle_rate / run_rate if run_rate else None,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    if args.json:  # imported here: the load generator itself stays free of torch
        from streamkd.experiment import write_json

        write_json(args.json, result)  # atomic, strict JSON


if __name__ == "__main__":
    main()
