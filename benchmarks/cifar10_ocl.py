"""Online continual learning on Split CIFAR-10: the protocol of the PCR/HPCR/OnPro papers.

5 segments of 2 classes, one pass, stream batch 10, accuracy matrix on the full 10k test set
after each segment; final average accuracy and average forgetting as mean +- std over seeds.
Writes JSON shaped like ``streamkd compare``'s runs (``{"stream", "runs": [...]}``, each run
with its ``memory``) after every run, so a long benchmark keeps what it finished, and a markdown
table (``--markdown``).

    python benchmarks/cifar10_ocl.py --strategies pcr,hpcr --memory 200 --seeds 0,1,2 \\
        --json results/cifar10_ocl.json --markdown results/cifar10_ocl.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from streamkd.atomic import atomic_write
from streamkd.experiment import parse_strategy_args, run_one, strategy_kwargs, write_json

KEYS = (
    "strategy",
    "memory",
    "seed",
    "final_avg_acc",
    "avg_forgetting",
    "anytime_acc",
    "acc_matrix",
    "train_seconds",
    "samples",
    "samples_per_s",
    "peak_mem_mb",
    "mlflow_run_id",
)


def table(runs: list[dict]) -> str:
    lines = [
        "| strategy | memory | seeds | final avg acc | forgetting | samples/s | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["strategy"], r["memory"]), []).append(r)
    for (name, memory), rows in groups.items():

        def stat(key, scale=100.0, rows=rows):
            vals = [r[key] * scale for r in rows if r[key] is not None]
            sd = statistics.pstdev(vals) if len(vals) > 1 else 0.0
            return f"{statistics.fmean(vals):.1f} ± {sd:.1f}"

        lines.append(
            f"| {name} | {memory} | {','.join(str(r['seed']) for r in rows)} | "
            f"{stat('final_avg_acc')} | {stat('avg_forgetting')} | "
            f"{statistics.fmean(r['samples_per_s'] for r in rows):.0f} | "
            f"{statistics.fmean(r['train_seconds'] for r in rows):.0f} |"
        )
    return "\n".join(lines)


# the options that define the protocol: runs made under other values cannot be merged
PROTOCOL = ("nf", "max_samples", "per_segment", "test_per_segment", "class_order")


def kept_runs(path: Path, protocol: dict, kwargs_of: dict[str, dict]) -> list[dict]:
    """The runs of an earlier ``--json`` that were made under this protocol. A different
    protocol, or other arguments for a strategy that is run again, is refused (merging them
    would mix two experiments in one table)."""
    earlier = json.loads(path.read_text())
    before = {k: earlier.get("protocol", {}).get(k) for k in PROTOCOL}
    changed = [
        f"{k}: {before[k]!r} then, {protocol[k]!r} now"
        for k in PROTOCOL
        if before[k] != protocol[k]
    ]
    if changed:
        raise SystemExit(
            f"--keep: {path} was made under another protocol ({'; '.join(changed)}); "
            "use another --json or drop --keep"
        )
    for run in earlier["runs"]:
        name = run["strategy"]
        if name in kwargs_of and run.get("strategy_args", {}) != kwargs_of[name]:
            raise SystemExit(
                f"--keep: {path} ran {name} with arguments {run.get('strategy_args')}, "
                f"now {kwargs_of[name]}; use another --json or drop --keep"
            )
    return earlier["runs"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strategies", default="er,scr,pcr,hpcr,onpro")
    p.add_argument("--memory", default="200", help="comma-separated memory sizes")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--nf", type=int, default=None, help="ResNet width (default: per strategy)")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--per-segment", type=int, default=None, help="training samples per segment")
    p.add_argument(
        "--test-per-segment",
        type=int,
        default=None,
        help="evaluate on a seeded subset of N held-out samples per segment (default: all)",
    )
    p.add_argument(
        "--class-order",
        default="fixed",
        choices=("fixed", "seeded"),
        help="fixed = 0-1, 2-3, ..., 8-9 as in the official PCR/OnPro runs",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--strategy-args",
        action="append",
        default=[],
        help="strategy arguments, as for `streamkd run` (repeatable JSON or key=value); a key "
        'naming a strategy holds arguments for it alone, e.g. \'{"channels_last": true, '
        '"onpro": {"rotations": 4}}\'',
    )
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--no-track", action="store_true")
    p.add_argument("--json", dest="json_out", default=None)
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the runs already in --json and run only the missing (strategy, memory, seed)",
    )
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)
    tracker = None
    if not args.no_track:
        from streamkd.tracking import Tracker

        tracker = Tracker(args.tracking_uri, experiment="cifar10_ocl")
    stream_kwargs = {"order": args.class_order}
    if args.per_segment:
        stream_kwargs["max_per_segment"] = args.per_segment
    if args.test_per_segment:
        stream_kwargs["max_test_per_segment"] = args.test_per_segment
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    try:  # bad arguments fail now, before the first run
        extra = parse_strategy_args(args.strategy_args)
        kwargs_of = {name: strategy_kwargs(name, extra) for name in names}
    except ValueError as err:
        raise SystemExit(f"cifar10_ocl: {err}") from None
    out: dict = {"stream": "split-cifar10", "protocol": vars(args), "runs": []}
    if args.keep and args.json_out and Path(args.json_out).exists():
        out["runs"] = kept_runs(Path(args.json_out), vars(args), kwargs_of)
    done = {(r["strategy"], r["memory"], r["seed"]) for r in out["runs"]}
    for memory in [int(m) for m in args.memory.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:  # seed-major: partial runs pair up
            for name in names:
                if (name, memory, seed) in done:
                    continue
                result = run_one(
                    name,
                    "split-cifar10",
                    seed=seed,
                    memory=memory,
                    device=args.device,
                    data_dir=args.data_dir,
                    max_samples=args.max_samples,
                    strategy_kwargs=kwargs_of[name],
                    model_kwargs={"nf": args.nf},
                    stream_kwargs=stream_kwargs,
                    tracker=tracker,
                )
                result["memory"] = memory
                record = {k: result.get(k) for k in KEYS}
                out["runs"].append({**record, "strategy_args": kwargs_of[name]})
                last = result["acc_matrix"][-1]
                print(
                    f"{name} memory={memory} seed={seed}: final avg acc "
                    f"{result['final_avg_acc']:.3f}, forgetting {result['avg_forgetting']:.3f}, "
                    f"last row {[round(v, 3) for v in last]}, "
                    f"{result['samples_per_s']:.1f} samples/s",
                    flush=True,
                )
                write_json(args.json_out, out)
    md = table(out["runs"])
    print(md)
    if args.markdown:
        atomic_write(args.markdown, md + "\n")
    return out


if __name__ == "__main__":
    main()
