"""The same 12-run grid (naive, ER, ER-ACE x seeds 0-1 x memory 50/200 on Split-MNIST) run
serially and as Ray tasks on this machine, side by side in one process.

* ``serial``          -- ``streamkd compare`` as before: one run after another, torch's
                         default threads (all cores), no sweep folder;
* ``serial_1thread``  -- one after another, one torch thread each, in a sweep folder
                         (checkpoints every 1,000 samples): the same work as each Ray task;
* ``ray``             -- a local Ray with every CPU here, one CPU (and torch thread) per run,
                         the same sweep folder mechanics; Ray's start is timed apart.

The results of ``serial_1thread`` and ``ray`` must be identical (checked; the run stops if
not). Ray's own cost is measured too: the start of a local instance, and the round trip of
an empty task (one at a time, and 200 in flight). Writes ``--json``; ratios are wall-time
speed-ups over the ``ray`` sweep.

    python benchmarks/sweep_ray.py --json results/sweep_ray.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

from streamkd.atomic import json_text
from streamkd.experiment import write_json
from streamkd.sweep import compare, connect_ray

STRATEGIES = ["naive", "er", "er_ace"]
SEEDS = [0, 1]
MEMORY = [50, 200]
MEASURED = ("train_seconds", "samples_per_s", "peak_mem_mb", "mlflow_run_id", "resumed_from")


def comparable(runs: list[dict]) -> list[dict]:
    runs = json.loads(json_text(runs))
    return [{k: v for k, v in r.items() if k not in MEASURED} for r in runs]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def ray_overhead() -> dict[str, float]:
    """An empty task's round trip: alone (median of 20) and with 200 in flight (mean)."""
    import ray

    @ray.remote(num_cpus=1)
    def nothing() -> None:
        return None

    ray.get(nothing.remote())  # a worker is up
    alone = []
    for _ in range(20):
        start = time.perf_counter()
        ray.get(nothing.remote())
        alone.append(time.perf_counter() - start)
    start = time.perf_counter()
    ray.get([nothing.remote() for _ in range(200)])
    many = (time.perf_counter() - start) / 200
    return {"task_round_trip_ms": 1e3 * statistics.median(alone), "task_in_flight_ms": 1e3 * many}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--per-segment", type=int, default=6000, help="training samples/segment")
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--memory", nargs="+", type=int, default=MEMORY)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    grid = dict(
        seeds=args.seeds,
        memory=args.memory,
        data_dir=args.data_dir,
        stream_kwargs={"max_per_segment": args.per_segment},
    )
    runs = len(args.strategies) * len(args.seeds) * len(args.memory)
    print(f"{runs} runs of Split-MNIST ({args.per_segment} samples per segment)", flush=True)
    walls: dict[str, float] = {}
    plain, walls["serial"] = timed(lambda: compare(args.strategies, "split-mnist", **grid))
    print(f"serial ({torch.get_num_threads()} threads): {walls['serial']:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as fanned:
        single, walls["serial_1thread"] = timed(
            lambda: compare(args.strategies, "split-mnist", sweep_dir=one, cpus_per_run=1, **grid)
        )
        print(f"serial (1 thread, sweep folder): {walls['serial_1thread']:.1f} s", flush=True)
        _, start = timed(lambda: connect_ray(None, 1))
        import ray

        cpus = int(ray.cluster_resources()["CPU"])
        fanned_out, walls["ray"] = timed(
            lambda: compare(args.strategies, "split-mnist", backend="ray", sweep_dir=fanned, **grid)
        )
        print(f"ray ({cpus} one-CPU workers): {walls['ray']:.1f} s (+{start:.1f} s start)")
        if comparable(fanned_out["runs"]) != comparable(single["runs"]):
            sys.exit("sweep_ray: the Ray results differ from the serial ones (1 thread each)")
        in_task = sum(r["train_seconds"] for r in fanned_out["runs"])
        overhead = ray_overhead()
    out = {
        "config": {
            "runs": runs,
            "stream": "split-mnist",
            "per_segment": args.per_segment,
            "strategies": args.strategies,
            "seeds": args.seeds,
            "memory": args.memory,
            "ray_cpus": cpus,
            "serial_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "ray": ray.__version__,
        },
        "wall_seconds": walls,
        "ray_start_seconds": start,
        "ratios": {
            "serial_vs_ray": walls["serial"] / walls["ray"],
            "serial_1thread_vs_ray": walls["serial_1thread"] / walls["ray"],
        },
        # the learning steps alone, summed over runs: Ray's higher sum is two runs sharing
        # this machine's caches, memory bandwidth and Ray's own processes
        "train_seconds_summed": {
            "serial_1thread": sum(r["train_seconds"] for r in single["runs"]),
            "ray": in_task,
        },
        **overhead,
        "identical_results": True,
    }
    ray.shutdown()
    print(json.dumps({k: out[k] for k in ("wall_seconds", "ratios")}, indent=1))
    print({k: round(v, 2) for k, v in overhead.items()})
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
