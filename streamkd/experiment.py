"""Build and run experiments by name: the layer the CLI, notebooks and benchmarks share."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from streamkd.checkpoint import Checkpointer
from streamkd.evaluate import run
from streamkd.models import Classifier, build_model
from streamkd.strategy import Strategy, resolve_device

MLP_HIDDEN = {"split-digits": (100, 100)}


def write_json(path: str | Path | None, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically (a killed run keeps the previous file).

    ``None`` writes nothing, so callers can pass an optional ``--json`` argument straight in.
    """
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


def make_stream(name: str, *, seed: int = 0, batch_size: int = 10, data_dir=None, **kwargs):
    from streamkd.streams import get_stream

    return get_stream(name, seed=seed, batch_size=batch_size, data_dir=data_dir, **kwargs)


def make_model(
    stream,
    *,
    seed: int = 0,
    arch: str | None = None,
    nf: int | None = None,
    head: str = "linear",
    head_scale: float = 1.0,
    strategy: str | None = None,
) -> Classifier:
    """The stream's default architecture (MLP for vectors and digits/MNIST, reduced ResNet18
    for CIFAR-10), initialised under ``seed``. Naming the ``strategy`` takes the head and
    ResNet width it expects (e.g. PCR's cosine head, OnPro's nf=64)."""
    if strategy is not None:
        from streamkd.strategies import get_strategy

        cls = get_strategy(strategy)
        head, head_scale = cls.head, cls.head_scale
        nf = nf or cls.default_nf
    torch.manual_seed(seed)
    arch = arch or stream.default_arch
    return build_model(
        arch,
        stream.input_shape,
        mean=stream.mean,
        std=stream.std,
        nf=nf or 20,
        head=head,
        head_scale=head_scale,
        hidden=MLP_HIDDEN.get(stream.name, (256, 256)),
    )


def make_strategy(name: str, model: Classifier, **kwargs) -> Strategy:
    from streamkd.strategies import get_strategy

    cls = get_strategy(name)
    return cls(model, **{k: v for k, v in kwargs.items() if v is not None})


def run_one(
    strategy_name: str,
    stream_name: str,
    *,
    seed: int = 0,
    memory: int = 500,
    batch_size: int = 10,
    device: str = "cpu",
    data_dir: str | None = None,
    max_samples: int | None = None,
    eval_every: int | None = None,
    strategy_kwargs: dict[str, Any] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    stream_kwargs: dict[str, Any] | None = None,
    tracker=None,
    parent=None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool = False,
    drift: str | None = None,
    drift_signal: str = "error",
) -> dict[str, Any]:
    """One strategy x seed on one stream; returns the evaluation dict (plus run metadata).

    ``drift`` names a river drift detector (``adwin``, ``page_hinkley``, ``kswin``) that
    watches ``drift_signal`` (``error`` or ``loss``); each run gets a fresh one.
    """
    from streamkd.drift import DriftMonitor
    from streamkd.strategies import get_strategy

    get_strategy(strategy_name)  # fail fast with the list of names, before loading data
    monitor = DriftMonitor(drift, signal=drift_signal) if drift is not None else None
    stream = make_stream(
        stream_name, seed=seed, batch_size=batch_size, data_dir=data_dir, **(stream_kwargs or {})
    )
    dev = resolve_device(device)
    model = make_model(stream, seed=seed, strategy=strategy_name, **(model_kwargs or {}))
    strategy = make_strategy(
        strategy_name, model, memory=memory, seed=seed, device=dev, **(strategy_kwargs or {})
    )
    checkpointer = Checkpointer(checkpoint_dir) if checkpoint_dir is not None else None
    state = checkpointer.load_latest() if (resume and checkpointer is not None) else None
    logger = None
    if tracker is not None:
        if state is not None and state.get("mlflow_run_id"):
            logger = tracker.resume_run(state["mlflow_run_id"])
        else:
            params = {
                "strategy": strategy_name,
                "stream": stream_name,
                "device": str(dev),
                "batch_size": batch_size,
                **strategy.hparams,
                **stream.describe(),
                **(monitor.describe() if monitor is not None else {}),
            }
            logger = tracker.start_run(f"{strategy_name}-seed{seed}", params, parent=parent)
    try:
        result = run(
            strategy,
            stream,
            eval_every=eval_every,
            max_samples=max_samples,
            logger=logger,
            checkpointer=checkpointer,
            checkpoint_every=checkpoint_every,
            resume_state=state,
            progress=progress,
            drift=monitor,
        )
    except BaseException:
        if logger is not None:
            logger.end("FAILED")
        raise
    if logger is not None:
        logger.log_result(result, step=result["samples"])
        logger.end()
    result.update(
        strategy=strategy_name,
        seed=seed,
        stream=stream_name,
        mlflow_run_id=logger.run_id if logger is not None else None,
        resumed_from=int(state["step"]) if state is not None else None,
    )
    return result


def compare(
    strategies: Sequence[str],
    stream_name: str,
    *,
    seeds: Sequence[int] = (0,),
    tracker=None,
    **run_kwargs,
) -> dict[str, Any]:
    """Every strategy x seed on one stream, under one parent MLflow run."""
    from streamkd.strategies import get_strategy

    for name in strategies:
        get_strategy(name)
    parent = None
    if tracker is not None:
        parent = tracker.start_run(
            f"compare-{stream_name}",
            {
                "stream": stream_name,
                "strategies": ",".join(strategies),
                "seeds": ",".join(map(str, seeds)),
                **{k: v for k, v in run_kwargs.items() if isinstance(v, int | float | str)},
            },
        )
    runs = []
    try:
        for name in strategies:
            for seed in seeds:
                runs.append(
                    run_one(
                        name, stream_name, seed=seed, tracker=tracker, parent=parent, **run_kwargs
                    )
                )
    except BaseException:
        if parent is not None:
            parent.end("FAILED")
        raise
    summary = summarize_runs(runs)
    if parent is not None:
        for name, stats in summary.items():
            parent.log_metrics(
                {f"{name}.{k}": v["mean"] for k, v in stats.items() if v["mean"] is not None},
                step=0,
            )
        parent.end()
    return {
        "stream": stream_name,
        "mlflow_parent_run_id": parent.run_id if parent is not None else None,
        "runs": runs,
        "summary": summary,
    }


SUMMARY_KEYS = (
    "final_avg_acc",
    "avg_forgetting",
    "anytime_acc",
    "prequential_acc",
    "samples_per_s",
    "peak_mem_mb",
)


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Mean and standard deviation over seeds, per strategy."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for name in dict.fromkeys(r["strategy"] for r in runs):
        rows = [r for r in runs if r["strategy"] == name]
        out[name] = {}
        for key in SUMMARY_KEYS:
            vals = [r[key] for r in rows if r.get(key) is not None]
            out[name][key] = {
                "mean": statistics.fmean(vals) if vals else None,
                "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0 if vals else None,
            }
    return out


def format_table(summary: dict[str, dict[str, dict[str, float | None]]]) -> str:
    """A markdown table of the summary (accuracies in %, mean +- std over seeds)."""
    head = ("strategy", "final avg acc", "forgetting", "anytime acc", "samples/s", "peak MB")
    keys = ("final_avg_acc", "avg_forgetting", "anytime_acc", "samples_per_s", "peak_mem_mb")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, stats in summary.items():
        cells = [name]
        for key in keys:
            m, s = stats[key]["mean"], stats[key]["std"]
            if m is None:
                cells.append("n/a")
            elif key in ("samples_per_s", "peak_mem_mb"):
                cells.append(f"{m:,.0f}")
            else:
                cells.append(f"{100 * m:.1f} ± {100 * (s or 0):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
