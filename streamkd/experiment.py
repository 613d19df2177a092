"""Build and run experiments by name: the layer the CLI, notebooks and benchmarks share."""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamkd.arguments import check_seed, finite_numbers, positive_int
from streamkd.atomic import atomic_write, json_text
from streamkd.checkpoint import Checkpointer
from streamkd.evaluate import run
from streamkd.models import Classifier, build_model
from streamkd.registry import STRATEGIES
from streamkd.strategy import MAX_CLASSES, Strategy, get_strategy, make_strategy, resolve_device
from streamkd.tracking import IDENTITY_TAG

MLP_HIDDEN = {"split-digits": (100, 100)}
log = logging.getLogger(__name__)


def write_json(path: str | Path | None, payload: Any) -> None:
    """Write ``payload`` as indented, strict JSON (NaN and infinities become ``null``),
    atomically (a killed run keeps the previous file).

    ``None`` writes nothing, so callers can pass an optional ``--json`` argument straight in.
    """
    if path is not None:
        atomic_write(path, json_text(payload))


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
    positive_int("nf", nf)
    chosen = {"arch": arch, "nf": nf}
    own = None
    if strategy is not None:
        cls = get_strategy(strategy)
        head, head_scale = cls.head, cls.head_scale
        nf = nf if nf is not None else cls.default_nf
        own = cls.default_model
    torch.manual_seed(seed)
    if own is not None and (model := own(stream)) is not None:
        given = [f"--{k}" for k, v in chosen.items() if v is not None]
        if given:
            raise ValueError(
                f"strategy {strategy!r} builds its own model; {', '.join(given)} does not apply"
            )
        return model
    arch = arch or stream.default_arch
    return build_model(
        arch,
        getattr(stream, "schema", None) or stream.input_shape,
        mean=stream.mean,
        std=stream.std,
        nf=nf or 20,
        head=head,
        head_scale=head_scale,
        hidden=MLP_HIDDEN.get(stream.name, (256, 256)),
    )


@dataclass(frozen=True)
class LearnerSpec:
    """Everything that builds a learner, in one value: the strategy and its arguments, what
    it learns from (a registered ``stream``, or raw inputs of ``input_shape``: float32
    vectors or images, an MLP), the model's options (``arch``, ``nf``), the memory, seed,
    device and label cap. :func:`build_learner` checks it all once, before any data loads.
    """

    strategy: str
    stream: str | None = None
    input_shape: tuple[int, ...] | None = None
    strategy_args: dict[str, Any] = field(default_factory=dict)
    stream_args: dict[str, Any] = field(default_factory=dict)
    model_args: dict[str, Any] = field(default_factory=dict)
    memory: int = 500
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 10
    data_dir: str | None = None
    max_classes: int | None = None


@dataclass
class Learner:
    """What :func:`build_learner` made: the strategy, the stream it was built for (``None``
    for raw inputs) and the label cap it enforces."""

    strategy: Strategy
    stream: Any
    spec: LearnerSpec
    max_classes: int


def check_spec(spec: LearnerSpec) -> type[Strategy]:
    """Every check of a :class:`LearnerSpec` that needs no data: the strategy's name and
    arguments, the seed and counts, what the inputs are. Returns the strategy's class."""
    cls = get_strategy(spec.strategy)
    check_run_arguments(seed=spec.seed, max_classes=spec.max_classes)
    if (spec.stream is None) == (spec.input_shape is None):
        raise ValueError("a learner is built for a stream or for an input shape: give one")
    _check_keys(spec.strategy, cls, spec.strategy_args)  # unknown or reserved: refused
    if spec.input_shape is not None:
        shape = tuple(spec.input_shape)
        if not shape or not all(isinstance(d, int) and d >= 1 for d in shape):
            raise ValueError(f"input_shape must be positive sizes, e.g. (1, 28, 28); got {shape}")
        if spec.model_args:
            raise ValueError(f"raw inputs get an MLP; {', '.join(spec.model_args)} does not apply")
    return cls


def build_learner(spec: LearnerSpec) -> Learner:
    """The one assembly of a learner (the CLI's ``run`` and ``compare``, the daemon, the
    notebooks): checks ``spec`` (:func:`check_spec`), loads the stream, builds the model the
    strategy expects (its head, width or own network; seeded) and the strategy around it.
    Labels must lie below ``max_classes`` (default: the classes the stream declares; a cap
    below them is refused)."""
    cls = check_spec(spec)
    device = resolve_device(spec.device)
    if spec.stream is not None:
        stream = make_stream(
            spec.stream,
            seed=spec.seed,
            batch_size=spec.batch_size,
            data_dir=spec.data_dir,
            **spec.stream_args,
        )
        declared = getattr(stream, "n_classes", None)
        if spec.max_classes is not None and declared is not None and spec.max_classes < declared:
            raise ValueError(
                f"--max-classes {spec.max_classes} is below the stream's classes: the stream "
                f"declares {declared} classes"
            )
        model = make_model(stream, seed=spec.seed, strategy=spec.strategy, **spec.model_args)
    else:
        stream, declared = None, None
        torch.manual_seed(spec.seed)
        model = build_model("mlp", spec.input_shape, head=cls.head, head_scale=cls.head_scale)
    max_classes = spec.max_classes or declared or MAX_CLASSES
    strategy = make_strategy(
        spec.strategy,
        model,
        memory=spec.memory,
        seed=spec.seed,
        device=device,
        max_classes=max_classes,
        **spec.strategy_args,
    )
    return Learner(strategy, stream, spec, max_classes)


# set by their own arguments of run_one / the CLI (--memory, --seed, ...), never twice
RESERVED_ARGS = {
    "memory": "--memory",
    "seed": "--seed/--seeds",
    "device": "--device",
    "max_classes": "--max-classes",
}


def parse_strategy_args(values: str | Sequence[str] | None) -> dict[str, Any]:
    """Parse ``--strategy-args`` values, merged in order.

    Each value is a JSON object (``'{"candidates": 20}'``) or ``key=value`` (the value read
    as JSON, else kept as a string). A key that names a strategy holds arguments for that
    strategy alone: ``'{"onpro": {"rotations": 4}}'`` or ``onpro.rotations=4``; other keys
    apply to every strategy of the run. :func:`strategy_kwargs` checks the keys.
    """
    if values is None:
        return {}
    if isinstance(values, str):
        values = [values]
    out: dict[str, Any] = {}
    for text in values:
        text = text.strip()
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"--strategy-args: {text!r} is not valid JSON ({err})") from None
            if not isinstance(parsed, dict):
                raise ValueError(f"--strategy-args must be a JSON object, got {text!r}")
            items = parsed.items()
        elif "=" in text:
            key, raw = text.split("=", 1)
            try:
                value: Any = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            head, dot, rest = key.strip().partition(".")
            items = [(head, {rest: value})] if dot else [(head, value)]
        else:
            raise ValueError(f"--strategy-args: expected a JSON object or key=value, got {text!r}")
        for key, value in items:
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
    return out


def strategy_kwargs(name: str, strategy_args: dict[str, Any] | None) -> dict[str, Any]:
    """The arguments for strategy ``name`` from parsed ``--strategy-args``: the shared keys,
    then those under its own name. Every key must be an argument of its constructor (the
    error lists the valid ones); a key under a strategy's name must name a strategy."""
    cls = get_strategy(name)
    strategy_args = strategy_args or {}
    for key, value in strategy_args.items():
        if key in STRATEGIES and not isinstance(value, dict):
            raise ValueError(
                f"--strategy-args: the value under strategy {key!r} must be an object of its "
                f"arguments, got {value!r}"
            )
    shared = {k: v for k, v in strategy_args.items() if k not in STRATEGIES}
    for scope, own in strategy_args.items():  # every scope is checked, run or not (typos)
        if scope in STRATEGIES and scope != name:
            _check_keys(scope, STRATEGIES[scope], own)
    kwargs = {**shared, **strategy_args.get(name, {})}
    _check_keys(name, cls, kwargs)
    return kwargs


def _check_keys(name: str, cls: type[Strategy], kwargs: dict[str, Any]) -> None:
    valid = cls.arguments()
    for key, value in kwargs.items():
        finite_numbers(key, value)
        if key in RESERVED_ARGS:
            raise ValueError(
                f"--strategy-args: set {key!r} with {RESERVED_ARGS[key]}, not in --strategy-args"
            )
        if key not in valid:
            raise ValueError(
                f"unknown argument {key!r} for strategy {name!r}; valid: "
                + ", ".join(k for k in valid if k not in RESERVED_ARGS)
            )


def check_run_arguments(seed: int = 0, **counts: int | None) -> None:
    """The seed and the counts of a run (``max_samples``...: positive or ``None``), checked
    before any data is loaded; :func:`compare` checks every run's before the first starts."""
    check_seed(seed)
    for name, value in counts.items():
        positive_int(name, value)


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
    max_classes: int | None = None,
    identity: str | None = None,
) -> dict[str, Any]:
    """One strategy x seed on one stream; returns the evaluation dict (plus run metadata and
    the strategy's ``hparams``).

    ``identity`` (a sweep cell's config hash) tags the MLflow run, so a retry that finds no
    checkpoint continues the run it began instead of starting a second one.

    Labels must lie below ``max_classes`` (default: the classes the stream declares; a cap
    below them is refused). A checkpoint records the run's configuration
    (:func:`run_config`); ``resume`` refuses a checkpoint written under another one, listing
    the differences, since its state would not mean what the new arguments say.

    ``strategy_kwargs`` are constructor arguments of this strategy (see
    :func:`strategy_kwargs` for ``--strategy-args``). ``resume`` continues from the newest
    valid checkpoint in ``checkpoint_dir`` (required with it). ``drift`` names a river drift
    detector (``adwin``, ``page_hinkley``, ``kswin``) that watches ``drift_signal``
    (``error`` or ``loss``); each run gets a fresh one.
    """
    from streamkd.drift import DriftMonitor

    spec = LearnerSpec(
        strategy_name,
        stream=stream_name,
        strategy_args=dict(strategy_kwargs or {}),
        stream_args=dict(stream_kwargs or {}),
        model_args={k: v for k, v in (model_kwargs or {}).items() if v is not None},
        memory=memory,
        seed=seed,
        device=device,
        batch_size=batch_size,
        data_dir=data_dir,
        max_classes=max_classes,
    )
    check_run_arguments(
        seed=seed,
        max_samples=max_samples,
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
    )
    if resume and checkpoint_dir is None:
        raise ValueError("--resume needs --checkpoint-dir: the folder to resume from")
    monitor = DriftMonitor(drift, signal=drift_signal) if drift is not None else None
    learner = build_learner(spec)  # checks the spec (check_spec) before loading any data
    strategy, stream, dev = learner.strategy, learner.stream, learner.strategy.device
    config = run_config(
        strategy_name,
        strategy,
        stream,
        model_kwargs=model_kwargs,
        stream_kwargs=stream_kwargs,
        eval_every=eval_every,
        drift=drift,
        drift_signal=drift_signal,
    )
    checkpointer = Checkpointer(checkpoint_dir, kind="run") if checkpoint_dir is not None else None
    state = None
    if resume and checkpointer is not None:
        state = checkpointer.load_latest()
        if state is None:
            log.warning(
                "--resume: no checkpoint in %s; starting from the beginning", checkpoint_dir
            )
        else:
            check_resumable(state, config, checkpoint_dir)
            log.info("resuming from %s at sample %d", checkpoint_dir, int(state["step"]))
    logger = None
    if tracker is not None:
        params = {
            "strategy": strategy_name,
            "stream": stream_name,
            "device": str(dev),
            "batch_size": batch_size,
            **strategy.hparams,
            **stream.describe(),
            **(monitor.describe() if monitor is not None else {}),
        }
        known = state.get("mlflow_run_id") if state is not None else None
        if not known and identity is not None:  # a retry that died before its first checkpoint
            known = tracker.find_run(identity, parent.run_id if parent is not None else None)
        if known:
            logger = tracker.resume_run(known)
            held = tracker.client.get_run(known).data.params  # MLflow refuses a changed value
            logger.log_params({k: v for k, v in params.items() if k not in held})
        else:
            tags = {IDENTITY_TAG: identity} if identity is not None else None
            logger = tracker.start_run(
                f"{strategy_name}-seed{seed}", params, parent=parent, tags=tags
            )
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
            config=config,
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
        memory=memory,
        mlflow_run_id=logger.run_id if logger is not None else None,
        resumed_from=int(state["step"]) if state is not None else None,
        hparams=dict(strategy.hparams),
    )
    return result


# a run may move between devices: these resolve per device (channels_last: NHWC on CUDA)
RESOLVED_PER_DEVICE = ("device", "channels_last")


def run_config(
    strategy_name: str,
    strategy: Strategy,
    stream,
    *,
    model_kwargs: dict[str, Any] | None = None,
    stream_kwargs: dict[str, Any] | None = None,
    eval_every: int | None = None,
    drift: str | None = None,
    drift_signal: str = "error",
) -> dict[str, Any]:
    """Everything that decides a run's result, as plain JSON values, resolved (a default
    spelled out compares equal to the default left out): the strategy and every argument it
    resolved (those that depend on the device excepted: a run may move to another), the
    stream, its options and class order (the batch size among them: positions count
    batches), the model, the evaluation and drift settings. Stored in every checkpoint and
    compared on resume."""
    from streamkd.streams import OPTION_FLAGS

    model_kwargs, stream_kwargs = model_kwargs or {}, stream_kwargs or {}
    model = strategy.model
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    config = {
        "strategy": strategy_name,
        **{k: v for k, v in strategy.hparams.items() if k not in RESOLVED_PER_DEVICE},
        **stream.describe(),
        **{option: stream_kwargs.get(option) for option in OPTION_FLAGS if option != "order"},
        "segment_classes": [list(s.classes) for s in stream.segments],  # the class order
        "model": type(model.backbone).__name__,
        "width": convs[0].out_channels if convs else None,  # ResNet18's nf, as resolved
        "eval_every": eval_every,
        "drift": drift,
        "drift_signal": drift_signal if drift is not None else None,
    }
    return json.loads(json.dumps(config, default=str))


def check_resumable(
    state: dict[str, Any], config: dict[str, Any], where, *, only_given: bool = False
) -> None:
    """Refuse, in one line listing every difference, a checkpoint written under another
    configuration (or by a version that did not record one). ``only_given`` compares the
    keys of ``config`` alone (a replica checks the model's settings, not the source's)."""
    saved = state.get("config")
    if not isinstance(saved, dict) or not saved:
        raise ValueError(
            f"cannot resume from {where}: the checkpoint does not record its run's "
            "configuration (written by an older streamkd); start a fresh --checkpoint-dir"
        )
    diffs = [
        f"{key} {saved.get(key)} -> {config.get(key)}"
        for key in (config if only_given else dict.fromkeys([*saved, *config]))
        if saved.get(key) != config.get(key)
    ]
    if diffs:
        raise ValueError(
            f"cannot resume from {where}: the run's configuration differs from the "
            f"checkpoint's: {', '.join(diffs)} (resume with the original settings, or start "
            "a fresh --checkpoint-dir)"
        )


SUMMARY_KEYS = (
    "final_avg_acc",
    "avg_forgetting",
    "anytime_acc",
    "prequential_acc",
    "samples_per_s",
    "peak_mem_mb",
)


def summarize_runs(
    runs: list[dict[str, Any]], label: Callable[[dict[str, Any]], str] | None = None
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Mean and standard deviation over seeds, per strategy (or per ``label(run)``: a
    sweep's strategy, stream and memory), in the order the runs came."""
    label = label or (lambda r: r["strategy"])
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for name in dict.fromkeys(map(label, runs)):
        rows = [r for r in runs if label(r) == name]
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
