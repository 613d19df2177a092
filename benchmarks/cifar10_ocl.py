"""Online continual learning on Split CIFAR-10: the protocol of the PCR/HPCR/OnPro papers.

5 segments of 2 classes, one pass, stream batch 10, accuracy matrix on the full 10k test set
after each segment; final average accuracy and average forgetting as mean +- std over seeds.
Writes the ``streamkd compare`` JSON schema (``{"stream", "runs": [...]}``, each run with
its ``memory``) after every run, so a long benchmark keeps what it finished, and a markdown
table (``--markdown``).

    python benchmarks/cifar10_ocl.py --strategies pcr,hpcr --memory 200 --seeds 0,1,2 \\
        --json results/cifar10_ocl.json --markdown results/cifar10_ocl.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from streamkd.experiment import run_one, write_json
from streamkd.strategies import STRATEGIES

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


def strategy_kwargs(extra: dict, name: str) -> dict:
    """The arguments for one strategy: the shared ones, then those under its own name."""
    shared = {k: v for k, v in extra.items() if k not in STRATEGIES}
    own = extra.get(name, {})
    if not isinstance(own, dict):
        raise SystemExit(f"--strategy-args: the value under {name!r} must be an object")
    return {**shared, **own}


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
        default="{}",
        help="JSON of extra strategy arguments for every strategy; a key naming a strategy "
        'holds arguments for it alone, e.g. \'{"channels_last": true, "onpro": '
        '{"rotations": 4}}\'',
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
    extra = json.loads(args.strategy_args)
    if not isinstance(extra, dict):
        raise SystemExit(f"--strategy-args must be a JSON object, got {args.strategy_args!r}")
    kwargs_of = {name: strategy_kwargs(extra, name) for name in names}  # bad args fail now
    out: dict = {"stream": "split-cifar10", "protocol": vars(args), "runs": []}
    if args.keep and args.json_out and Path(args.json_out).exists():
        out["runs"] = json.loads(Path(args.json_out).read_text())["runs"]
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
        Path(args.markdown).write_text(md + "\n")
    return out


if __name__ == "__main__":
    main()
