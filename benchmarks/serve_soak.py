"""Soak: ``streamkd serve`` under steady /learn, /predict and refused traffic for minutes;
its memory and its bytes on disk must level off.

    python benchmarks/serve_soak.py --minutes 12 --json results/serve_soak.json

One daemon (ER on split-digits events, the ``http`` source, loopback only) with small WAL
segments and frequent checkpoints, so that retention turns over many times in the run. Three
client threads: ``/learn`` batches at ``--learn-rate`` events/s (fresh ids), ``/predict`` at
``--predict-rate`` requests/s (half of them with an id, whose features are remembered), and
refused requests at ``--bad-rate``/s (401, 404, 422: the dead-letter file is capped). Every
``--every`` seconds: the resident memory of the daemon and its learner process, the bytes in
the checkpoint folder (WAL segments, checkpoints, dead letters), the segments, the dedup
window, events learned.

Verdict: growth after warm-up (the first ``--warmup`` minutes) of RSS and of disk bytes,
(mean of the last minute) / (mean of the minute after warm-up) - 1; flat means < 5%.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from streamkd.serve.client import free_port

CLI = [sys.executable, "-m", "streamkd.cli"]


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its children (the learner process)."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(c) for c in children.read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: bytes | None = None, token: str | None = None):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            self.conn.request(method, path, body, headers)
            resp = self.conn.getresponse()
            return resp.status, resp.read()
        except OSError:
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            return None, b""


def paced(rate: float, until: float, work) -> int:
    """Call ``work(i)`` ``rate`` times a second until ``until``; returns the calls made."""
    t0, i = time.perf_counter(), 0
    while time.perf_counter() < until:
        work(i)
        i += 1
        lag = t0 + i / rate - time.perf_counter()
        if lag > 0:
            time.sleep(lag)
    return i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--warmup", type=float, default=2.0, help="minutes not judged")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--learn-rate", type=float, default=300.0, help="events/s")
    parser.add_argument("--predict-rate", type=float, default=100.0, help="requests/s")
    parser.add_argument("--bad-rate", type=float, default=20.0, help="refused requests/s")
    parser.add_argument("--segment-bytes", type=int, default=2 * 2**20)
    parser.add_argument("--checkpoint-every", type=int, default=5000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve-soak-"))
    token = "soak-token"
    try:
        exported = work / "digits.jsonl"
        subprocess.run(
            [*CLI, "export-jsonl", "--stream", "split-digits", "--out", str(exported)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        events = [json.loads(line) for line in exported.read_text().splitlines()]
        ck = work / "ck"
        port = free_port()
        proc = subprocess.Popen(
            [*CLI, "serve", "--like", "split-digits", "--source", "http", "--no-track"]
            + ["--checkpoint-dir", str(ck), "--port", str(port), "--token", token]
            + ["--checkpoint-every", str(args.checkpoint_every), "--keep", "3"]
            + ["--wal-segment-bytes", str(args.segment_bytes)]
            + ["--dead-letter-bytes", str(256 * 1024), "--remember-bytes", str(2 * 2**20)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        probe = Client(port)
        while probe.call("GET", "/health")[0] != 200:
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit("the daemon did not start")
            time.sleep(0.2)

        started = time.perf_counter()
        until = started + 60 * args.minutes
        counts: dict[str, int] = {}
        statuses: dict[str, dict[str, int]] = {"learn": {}, "predict": {}, "bad": {}}

        def note(kind: str, status) -> None:
            table = statuses[kind]
            table[str(status)] = table.get(str(status), 0) + 1

        def learner() -> None:
            client, batch = Client(port), 30

            def one(i: int) -> None:
                chosen = [
                    {**events[(i * batch + k) % len(events)], "id": f"s{i}-{k}"}
                    for k in range(batch)
                ]
                body = json.dumps({"events": chosen}).encode()
                note("learn", client.call("POST", "/learn", body, token)[0])

            counts["learn_posts"] = paced(args.learn_rate / batch, until, one)

        def predictor() -> None:
            client = Client(port)

            def one(i: int) -> None:
                item = {"x": events[i % len(events)]["x"]}
                if i % 2:
                    item["id"] = f"p{i}"  # remembered (bounded by --remember-bytes)
                body = json.dumps(item).encode()
                note("predict", client.call("POST", "/predict", body, token)[0])

            counts["predictions"] = paced(args.predict_rate, until, one)

        def refused() -> None:
            client = Client(port)
            bad = [
                ("POST", "/learn", b'{"id": "x", "x": [1], "y": 1}', None),  # 401
                ("GET", "/nowhere", None, None),  # 404
                ("POST", "/learn", b'{"id": "x", "x": [1], "y": 1}', token),  # 422
                ("POST", "/predict", b"{not json" + b"x" * 2000, None),  # 400
            ]

            def one(i: int) -> None:
                method, path, body, tok = bad[i % len(bad)]
                note("bad", client.call(method, path, body, tok)[0])

            counts["bad_requests"] = paced(args.bad_rate, until, one)

        threads = [threading.Thread(target=f) for f in (learner, predictor, refused)]
        for t in threads:
            t.start()
        samples = []
        while time.perf_counter() < until:
            time.sleep(args.every)
            status, body = Client(port).call("GET", "/health")  # a fresh connection
            health = json.loads(body) if status == 200 else {}
            wal = ck / "wal"
            samples.append(
                {
                    "t": round(time.perf_counter() - started, 1),
                    "rss_mb": rss_bytes(proc.pid) / 2**20,
                    "disk_mb": folder_bytes(ck) / 2**20,
                    "wal_segments": len(list(wal.glob("wal-*.jsonl"))),
                    "checkpoints": len(list(ck.glob("ckpt-*.pt"))),
                    "dead_letter_mb": sum(p.stat().st_size for p in ck.glob("dead-letters*"))
                    / 2**20,
                    "events_learned": health.get("events_learned"),
                }
            )
            print(json.dumps(samples[-1]), flush=True)
        for t in threads:
            t.join()
        metrics = Client(port).call("GET", "/metrics")[1].decode()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def growth(key: str) -> float | None:
        warm = [s[key] for s in samples if 60 * args.warmup <= s["t"] < 60 * (args.warmup + 1)]
        last = [s[key] for s in samples if s["t"] >= samples[-1]["t"] - 60]
        if not warm or not last:
            return None
        base = sum(warm) / len(warm)
        return (sum(last) / len(last)) / base - 1 if base else None

    known = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("streamkd_wal_known_ids ")
    ]
    result = {
        "minutes": args.minutes,
        "warmup_minutes": args.warmup,
        "learn_rate": args.learn_rate,
        "predict_rate": args.predict_rate,
        "bad_rate": args.bad_rate,
        "segment_bytes": args.segment_bytes,
        "counts": counts,
        "statuses": statuses,
        "rss_growth_after_warmup": growth("rss_mb"),
        "disk_growth_after_warmup": growth("disk_mb"),
        "max_wal_segments": max(s["wal_segments"] for s in samples),
        "final_known_ids": known[0] if known else None,
        "events_learned": samples[-1]["events_learned"],
        "exit_code": code,
        "samples": samples,
        "cpus": os.cpu_count(),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    if args.json:
        from streamkd.experiment import write_json

        write_json(args.json, result)


if __name__ == "__main__":
    main()
