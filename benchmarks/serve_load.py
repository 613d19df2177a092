"""Load on ``streamkd serve``: how fast it learns with no traffic, how many predictions it
answers while it learns, and what that costs the learning, against ``streamkd run``.

    python benchmarks/serve_load.py --json results/serve_load.json

Phases, one after the other, alone on this machine (ER on split-mnist events):

1. ``idle_jsonl``: the daemon learns a JSONL file with no traffic (events/s).
2. ``idle_http``: events posted to ``/learn`` (batches of 500) pile up in the WAL; once the
   posting ends, the rate at which the learner works through the backlog.
3. ``load``: ``/predict`` from ``--clients`` connections (wrk when installed, else Python
   threads) for ``--seconds`` while the learner consumes the JSONL file: predictions/s,
   p50/p99, failures, events learned/s.
4. ``load_learn``: the same with ``/learn`` posted at ``--learn-rate`` events/s (batches of
   50, from a thread) on the ``http`` source, with a backlog to learn.
5. ``run``: ``streamkd run`` on split-mnist with the same strategy, with the default torch
   threads and with the learner's one thread (samples/s over ``observe()``).
6. ``publish``: what publishing a predictor costs (pickled in the learner, unpickled in the
   server) for the MLP and for the reduced ResNet18, and so per second at the default
   ``publish_seconds``.
7. ``large_body``: the slowest ``/health`` while an 8 MiB ``/predict`` body is served.

The ratios: learning under load / idle, and the daemon's idle learning / ``streamkd run``'s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pickle
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from streamkd.serve.client import call, free_port, health

CLI = [sys.executable, "-m", "streamkd.cli"]
WRK_SCRIPT = r"""
local bodies = {}
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/predict", {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def start(source: str, ck: Path, strategy: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--like", "split-mnist", "--strategy", strategy, "--no-track"]
        + ["--source", source, "--checkpoint-dir", str(ck), "--port", str(port)]
        + ["--checkpoint-every", "5000", "--max-body", str(16 * 2**20)]
        + ["--max-queued-rows", "100000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            health(port)
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the daemon did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)


def learned_rate(port: int, seconds: float) -> float:
    a = health(port)["events_learned"]
    t0 = time.perf_counter()
    time.sleep(seconds)
    b = health(port)["events_learned"]
    return (b - a) / (time.perf_counter() - t0)


def python_clients(port: int, bodies: list[bytes], seconds: float, clients: int) -> dict:
    latencies: list[float] = []
    failures: list = []
    until = time.perf_counter() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        rng = random.Random(threading.get_ident())
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", rng.choice(bodies), {"Content-Type": "x"})
                resp = conn.getresponse()
                resp.read()
            except OSError as err:
                failures.append(repr(err))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            if resp.status != 200:
                failures.append(resp.status)
            latencies.append(time.perf_counter() - t0)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "client": "python threads",
        "requests": len(latencies),
        "seconds": elapsed,
        "failed_requests": len(failures),
        "predictions_per_s": len(latencies) / elapsed,
        "latency_p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "latency_p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
    }


def wrk_clients(port: int, bodies_file: Path, seconds: float, clients: int, work: Path) -> dict:
    script = work / "predict.lua"
    script.write_text(WRK_SCRIPT)
    done = subprocess.run(
        ["wrk", "-t2", f"-c{clients}", f"-d{int(seconds)}s", "--timeout", "10s"]
        + ["-s", str(script), f"http://127.0.0.1:{port}/predict"],
        env={**os.environ, "BODIES": str(bodies_file)},
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+)", done.stdout)
    if found is None:
        raise RuntimeError(f"wrk said: {done.stdout}\n{done.stderr}")
    requests, micros, p50, p99, errors = map(int, found.groups())
    return {
        "client": "wrk (2 threads)",
        "requests": requests,
        "seconds": micros / 1e6,
        "failed_requests": errors,
        "predictions_per_s": requests / (micros / 1e6),
        "latency_p50_ms": p50 / 1000,
        "latency_p99_ms": p99 / 1000,
    }


def post_events(port: int, lines: list[str], batch: int, rate: float | None, until: float) -> dict:
    """POST /learn batches of ``batch`` events (at ``rate`` events/s, or as fast as answered)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    sent = failed = 0
    t0 = time.perf_counter()
    for i in range(0, len(lines), batch):
        if time.perf_counter() >= until:
            break
        body = ('{"events":[' + ",".join(lines[i : i + batch]) + "]}").encode()
        conn.request("POST", "/learn", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        if resp.status == 200:
            sent += len(lines[i : i + batch])
        else:
            failed += 1
        if rate:
            lag = t0 + sent / rate - time.perf_counter()
            if lag > 0:
                time.sleep(lag)
    conn.close()
    return {"events_posted": sent, "failed_posts": failed, "seconds": time.perf_counter() - t0}


def run_rate(strategy: str, threads: int | None, work: Path) -> float:
    out = work / f"run-{threads}.json"
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    subprocess.run(
        [*CLI, "run", "--stream", "split-mnist", "--strategy", strategy, "--quiet"]
        + ["--no-track", "--max-samples", "20000", "--json", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    return json.loads(out.read_text())["runs"][0]["samples_per_s"]


def publish_cost(repeats: int = 20) -> dict:
    """Seconds to pickle (learner) and unpickle (server) one predictor."""
    import torch

    from streamkd.experiment import make_strategy
    from streamkd.models import build_model
    from streamkd.serve.learner import PUBLISH_SECONDS

    torch.set_num_threads(1)
    out = {"publish_seconds": PUBLISH_SECONDS}
    for name, model in (
        ("mlp", build_model("mlp", (1, 28, 28))),
        ("resnet18_nf20", build_model("resnet18", (3, 32, 32), nf=20)),
    ):
        strategy = make_strategy("er", model, memory=10)
        t0 = time.perf_counter()
        for _ in range(repeats):
            blob = pickle.dumps(strategy.predictor(), protocol=pickle.HIGHEST_PROTOCOL)
        dump = (time.perf_counter() - t0) / repeats
        t0 = time.perf_counter()
        for _ in range(repeats):
            pickle.loads(blob)
        load = (time.perf_counter() - t0) / repeats
        params = sum(p.numel() for p in model.parameters())
        out[name] = {
            "parameters": params,
            "bytes": len(blob),
            "pickle_ms": 1000 * dump,
            "unpickle_ms": 1000 * load,
            "learner_share_at_default": dump / PUBLISH_SECONDS,
            "server_share_at_default": load / PUBLISH_SECONDS,
            "learner_share_at_50ms": dump / 0.05,
        }
    return out


def large_body(port: int, line: str) -> dict:
    x = json.loads(line)["x"]
    body = json.dumps({"batch": [{"x": x}] * 5000}).encode()  # ~8 MiB of 28x28 images
    worst, statuses = [], []
    for _ in range(3):
        result: list = []

        def post(out=result) -> None:
            out.append(call(port, "POST", "/predict", body))

        poster = threading.Thread(target=post)
        poster.start()
        slowest = 0.0
        while poster.is_alive():
            t0 = time.perf_counter()
            health(port)
            slowest = max(slowest, time.perf_counter() - t0)
            time.sleep(0.005)
        poster.join()
        worst.append(1000 * slowest)
        statuses.append(result[0][0])
    return {"body_mib": len(body) / 2**20, "slowest_health_ms": worst, "statuses": statuses}


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
    parser.add_argument("--learn-rate", type=float, default=500.0, help="events/s in load_learn")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--strategy", default="er")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk"))

    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    result: dict = {"strategy": args.strategy, "cpus": os.cpu_count()}
    try:
        events = work / "events.jsonl"
        subprocess.run(
            [*CLI, "export-jsonl", "--stream", "split-mnist", "--out", str(events)]
            + ["--max-samples", str(args.events)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        lines = events.read_text().splitlines()
        bodies = [json.dumps({"x": json.loads(line)["x"]}) for line in lines[:500]]
        bodies_file = work / "bodies.txt"
        bodies_file.write_text("\n".join(bodies) + "\n")
        with open(events, "a") as f:  # copies with fresh ids (e0 -> c1-e0, ...)
            for copy in range(1, args.copies):
                for line in lines:
                    f.write(line.replace('{"id":"', f'{{"id":"c{copy}-', 1) + "\n")
        all_lines = events.read_text().splitlines()
        size = events.stat().st_size

        def predict_load(port: int) -> dict:
            if use_wrk:
                return wrk_clients(port, bodies_file, args.seconds, args.clients, work)
            return python_clients(port, [b.encode() for b in bodies], args.seconds, args.clients)

        # 1. idle, JSONL file
        proc, port = start(f"jsonl:{events}", work / "idle", args.strategy)
        time.sleep(1.0)
        idle = learned_rate(port, args.idle_seconds)
        if health(port)["source_position"] >= size:
            raise SystemExit("the learner ran out of events while idle: raise --copies")
        stop(proc)
        result["idle_jsonl"] = {"learned_per_s": idle}

        # 2. idle, the http source's WAL (a backlog posted first)
        proc, port = start("http", work / "idle-http", args.strategy)
        posted = post_events(
            port, all_lines, 500, None, time.perf_counter() + 2 * args.idle_seconds
        )
        idle_http = learned_rate(port, args.idle_seconds)
        left = posted["events_posted"] - health(port)["events_learned"]
        stop(proc)
        if left <= 0:
            raise SystemExit("the learner worked through the backlog: raise --events")
        result["idle_http"] = {
            "learned_per_s": idle_http,
            "posted_per_s": posted["events_posted"] / posted["seconds"],
        }

        # 3. /predict load on a learner of the JSONL file
        proc, port = start(f"jsonl:{events}", work / "load", args.strategy)
        time.sleep(1.0)
        before, t0 = health(port)["events_learned"], time.perf_counter()
        load = predict_load(port)
        after, elapsed = health(port)["events_learned"], time.perf_counter() - t0
        if health(port)["source_position"] >= size:
            raise SystemExit("the learner ran out of events under load: raise --copies")
        stop(proc)
        load["learned_per_s"] = (after - before) / elapsed
        load["learning_vs_idle"] = load["learned_per_s"] / idle
        result["load"] = load

        # 4. /predict load and /learn at --learn-rate on the http source, with a backlog
        proc, port = start("http", work / "load-learn", args.strategy)
        backlog = all_lines[: len(all_lines) // 2]
        post_events(port, backlog, 500, None, time.perf_counter() + 60)
        rest = all_lines[len(backlog) :]
        poster_out: dict = {}
        until = time.perf_counter() + args.seconds + 1

        def poster() -> None:
            poster_out.update(post_events(port, rest, 50, args.learn_rate, until))

        feeder = threading.Thread(target=poster)
        before, t0 = health(port)["events_learned"], time.perf_counter()
        feeder.start()
        both = predict_load(port)
        after, elapsed = health(port)["events_learned"], time.perf_counter() - t0
        feeder.join()
        stop(proc)
        both["learned_per_s"] = (after - before) / elapsed
        both["learning_vs_idle_http"] = both["learned_per_s"] / idle_http
        both["learn_posted_per_s"] = poster_out["events_posted"] / poster_out["seconds"]
        both["failed_learn_posts"] = poster_out["failed_posts"]
        result["load_learn"] = both

        # 5. streamkd run
        run_default, run_one = run_rate(args.strategy, None, work), run_rate(args.strategy, 1, work)
        result["run"] = {"samples_per_s": run_default, "samples_per_s_one_thread": run_one}
        result["serve_idle_jsonl_vs_run"] = idle / run_default
        result["serve_idle_http_vs_run"] = idle_http / run_default
        result["serve_idle_http_vs_run_one_thread"] = idle_http / run_one

        # 6. the cost of publishing predictors; 7. a large body
        result["publish"] = publish_cost()
        proc, port = start(f"jsonl:{events}", work / "large", args.strategy)
        result["large_body"] = large_body(port, lines[0])
        stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(json.dumps(result, indent=1))
    if args.json:
        from streamkd.experiment import write_json

        write_json(args.json, result)  # atomic, strict JSON


if __name__ == "__main__":
    main()
