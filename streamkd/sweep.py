"""Sweeps: ``streamkd compare``'s grid (stream x memory x strategy x seed), run one cell
after another in this process (``serial``) or each cell as a Ray task on a cluster (``ray``).

Every cell is one call of :func:`run_cell`, whichever the backend, so both give the same
results. With a sweep folder (``sweep_dir``, on storage every node sees; the Ray backend
always has one) a cell is known by :func:`cell_key`, a hash of everything that decides its
result, and keeps

* ``runs/<key>.json``: its finished result (a :class:`~streamkd.runstore.RunStore`): a
  re-invoked sweep reuses it and runs nothing for that cell;
* ``checkpoints/<key>/``: its checkpoints: a retried task (its worker lost) or a re-invoked
  sweep resumes from the newest instead of starting over;
* ``logs/<key>.log``: what each attempt did (started, resumed from sample N, finished);

and ``sweep.json`` names the MLflow store and the parent run the first invocation made.

MLflow: the driver makes the parent run once; each cell logs one nested run tagged with
its key (:data:`~streamkd.tracking.IDENTITY_TAG`); a retried or resumed cell finds that run
and continues it, and what it had logged is not logged twice (see
:meth:`~streamkd.tracking.Tracker.resume_run`). Any tracking URI works; a cluster's tasks
share an ``mlflow server`` (docs/sweeps.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from streamkd.arguments import first_line, positive_int
from streamkd.atomic import atomic_write, check_writable, json_text
from streamkd.experiment import (
    check_run_arguments,
    run_one,
    strategy_kwargs,
    summarize_runs,
)
from streamkd.runstore import RunStore

log = logging.getLogger(__name__)

BACKENDS = ("serial", "ray")
DEFAULT_SWEEPS = Path("results") / "sweeps"
CHECKPOINT_EVERY = 1000  # samples between a cell's checkpoints in a sweep folder
PROBE_SECONDS = 5.0
# where each worker finds the data: passed to every task (a node's own environment may lack it)
DATA_VARS = ("STREAMKD_DATA", "STREAMKD_CACHE")
# settings that say where things are or how they are shown, not what a run computes
NOT_IN_KEY = ("data_dir", "progress")


@dataclass(frozen=True)
class Cell:
    """One run of the grid: everything :func:`~streamkd.experiment.run_one` needs, as plain
    JSON values (``kwargs``: batch size, device, sample cap, model and stream options...)."""

    strategy: str
    stream: str
    memory: int
    seed: int
    strategy_kwargs: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)

    def label(self, one_setting: bool) -> str:
        """The summary row it belongs to: the strategy, plus the stream and memory when the
        grid has several."""
        return self.strategy if one_setting else f"{self.strategy} {self.stream} m{self.memory}"


def cell_config(cell: Cell) -> dict[str, Any]:
    """What decides a cell's result (the streamkd version among it), as JSON values."""
    from streamkd import __version__

    config = {
        "streamkd": __version__,
        **asdict(cell),
        "kwargs": {k: v for k, v in cell.kwargs.items() if k not in NOT_IN_KEY},
    }
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def cell_key(cell: Cell) -> str:
    """A cell's identity: its folder names, its MLflow tag."""
    text = json.dumps(cell_config(cell), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Setup:
    """What every task of one sweep shares (plain values: it travels to Ray workers)."""

    sweep_dir: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    parent_run_id: str | None = None
    data_dir: str | None = None
    checkpoint_every: int = CHECKPOINT_EVERY
    threads: int | None = None  # torch threads of each run (None: torch's default)
    progress: bool = False


_trackers: dict[tuple[str, str], Any] = {}


def _tracker(setup: Setup):
    """One :class:`~streamkd.tracking.Tracker` per store and process (a Ray worker runs
    many cells)."""
    from streamkd.tracking import Tracker

    if setup.tracking_uri is None:
        return None
    key = (setup.tracking_uri, setup.experiment)
    if key not in _trackers:
        _trackers[key] = Tracker(setup.tracking_uri, experiment=setup.experiment)
    return _trackers[key]


def run_cell(cell: Cell, setup: Setup) -> dict[str, Any]:
    """Run one cell (or return its stored result): the one function both backends call.

    In a sweep folder the run checkpoints every ``setup.checkpoint_every`` samples and
    resumes from its newest checkpoint when there is one (a retry after a lost worker, a
    re-invoked sweep). With ``setup.threads`` torch uses that many threads for the run."""
    import torch

    before = torch.get_num_threads()
    if setup.threads is not None:
        torch.set_num_threads(setup.threads)
    try:
        return _run_cell(cell, setup)
    finally:
        torch.set_num_threads(before)


def _run_cell(cell: Cell, setup: Setup) -> dict[str, Any]:
    from streamkd.tracking import RunLogger

    tracker = _tracker(setup)
    parent = (
        RunLogger(tracker.client, setup.parent_run_id)
        if tracker is not None and setup.parent_run_id is not None
        else None
    )
    key = cell_key(cell)
    common = dict(
        seed=cell.seed,
        memory=cell.memory,
        strategy_kwargs=cell.strategy_kwargs,
        tracker=tracker,
        parent=parent,
        identity=key,
        data_dir=setup.data_dir,
        progress=setup.progress,
        **{k: v for k, v in cell.kwargs.items() if k not in NOT_IN_KEY},
    )
    if setup.sweep_dir is None:
        return run_one(cell.strategy, cell.stream, **common)
    root = Path(setup.sweep_dir)
    checkpoints = root / "checkpoints" / key

    def attempt() -> dict[str, Any]:
        resume = any(checkpoints.glob("ckpt-*.pt"))
        with _cell_log(root / "logs" / f"{key}.log") as note:
            note(f"attempt on {_where()} pid {os.getpid()}: {cell_config(cell)}")
            result = run_one(
                cell.strategy,
                cell.stream,
                checkpoint_dir=checkpoints,
                checkpoint_every=setup.checkpoint_every,
                resume=resume,
                **common,
            )
            note(f"finished: {result['samples']} samples")
        return result

    return _results(root).get_or_run(key, cell_config(cell), attempt)


def _where() -> str:
    """This host, and the Ray node when the attempt runs in a Ray task."""
    where = socket.gethostname()
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            where += f" node {ray.get_runtime_context().get_node_id()[:12]}"
    return where


class _cell_log:
    """streamkd's log lines (``resuming from ... at sample N``) and the attempt's own notes
    (to the file only), appended to the cell's log file for the attempt's duration."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self.logger = logging.getLogger("streamkd")
        self.notes = logging.getLogger("streamkd_cell")  # outside streamkd: not on stderr
        self.notes.propagate = False

    def __enter__(self):
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        self.notes.addHandler(self.handler)
        self.notes.setLevel(logging.INFO)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return lambda text: self.notes.info("%s", text)

    def __exit__(self, kind, error, trace) -> None:
        if error is not None:
            self.notes.info("attempt failed: %s: %s", kind.__name__, error)
        self.logger.removeHandler(self.handler)
        self.notes.removeHandler(self.handler)
        self.logger.setLevel(self.level)
        self.handler.close()


class SweepError(RuntimeError):
    """A sweep stopped by its engine (a worker lost more often than retried, a node gone),
    not by a run's own error; re-invoking it resumes what was cut short."""


def compare(
    strategies: Sequence[str],
    streams: str | Sequence[str],
    *,
    seeds: Sequence[int] = (0,),
    memory: int | Sequence[int] = 500,
    tracker=None,
    strategy_args: dict[str, Any] | None = None,
    backend: str = "serial",
    sweep_dir: str | Path | None = None,
    address: str | None = None,
    cpus_per_run: float | None = None,
    gpus_per_run: float = 0.0,
    max_retries: int = 3,
    checkpoint_every: int = CHECKPOINT_EVERY,
    progress: bool = False,
    data_dir: str | None = None,
    **run_kwargs: Any,
) -> dict[str, Any]:
    """Every cell of stream x memory x strategy x seed, under one parent MLflow run; the
    results in that order, whichever the backend.

    Checked before the first cell starts: the strategies and their ``strategy_args`` (per
    strategy), the streams' names and options, seeds and counts (each value once), the
    sweep folder (one grid, logged one way) and, for Ray, the cluster at ``address``
    (``None``: a new local Ray on this machine; ``auto``: the cluster ``ray start`` made
    here; ``HOST:PORT`` or ``ray://HOST:PORT``; with an address, name a ``sweep_dir`` every
    node sees) and a node large enough for one run. Missing data shows when a stream's
    first run starts. ``run_kwargs`` are :func:`~streamkd.experiment.run_one`'s.

    Each run gets ``int(cpus_per_run)`` torch threads (Ray's default: 1; serial's: torch's
    own). The backends give identical results for the same thread count; another count sums
    floats in another order, so losses differ in their last digits."""
    from streamkd.streams import check_stream

    streams = [streams] if isinstance(streams, str) else list(streams)
    memories = [memory] if isinstance(memory, int) else list(memory)
    if "strategy_kwargs" in run_kwargs:
        raise ValueError("compare() takes strategy_args (per strategy), not strategy_kwargs")
    for what, flag, values in (
        ("strategy", "--strategies", strategies),
        ("seed", "--seeds", seeds),
        ("stream", "--stream", streams),
        ("memory size", "--memory", memories),
    ):
        if not values:
            raise ValueError(f"{flag} names no {what}: give at least one")
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "serial" and address is not None:
        raise ValueError("--address names a Ray cluster: it needs --backend ray")
    if cpus_per_run is not None and not (math.isfinite(cpus_per_run) and cpus_per_run > 0):
        raise ValueError(f"--cpus-per-run must be > 0, got {cpus_per_run}")
    if backend == "ray" and cpus_per_run is None:
        cpus_per_run = 1.0
    if not (math.isfinite(gpus_per_run) and gpus_per_run >= 0):
        raise ValueError(f"--gpus-per-run must be >= 0, got {gpus_per_run}")
    if max_retries < 0:
        raise ValueError(f"--max-retries must be >= 0, got {max_retries}")
    positive_int("checkpoint_every", checkpoint_every)
    for flag, values in (
        ("--strategies", strategies),
        ("--seeds", seeds),
        ("--stream", streams),
        ("--memory", memories),
    ):
        twice = sorted({str(v) for v in values if list(values).count(v) > 1})
        if twice:
            raise ValueError(f"{flag} names {', '.join(twice)} more than once: give each once")
    for m in memories:
        if not isinstance(m, int) or m < 0:
            raise ValueError(f"--memory sizes must be integers >= 0, got {m!r}")
    if backend == "ray" and address is not None and sweep_dir is None:
        raise ValueError(
            "--address names a cluster: give --sweep-dir on storage every node sees (the "
            "runs' results and checkpoints live there)"
        )
    run_kwargs = {
        **run_kwargs,
        "device": _device(run_kwargs.get("device", "cpu"), backend, gpus_per_run),
    }
    counts = ("max_samples", "eval_every", "max_classes")
    for seed in seeds:  # every run's arguments, before the first run starts
        check_run_arguments(seed, **{k: run_kwargs.get(k) for k in counts})
    kwargs_of = {name: strategy_kwargs(name, strategy_args) for name in strategies}
    for name in streams:
        check_stream(name, dict(run_kwargs.get("stream_kwargs") or {}))
    cells = [
        Cell(name, stream, m, seed, kwargs_of[name], run_kwargs)
        for stream in streams
        for m in memories
        for name in strategies
        for seed in seeds
    ]
    if backend == "ray" and sweep_dir is None:  # retries resume from here: always a folder
        sweep_dir = DEFAULT_SWEEPS / _grid_key(cells)
    if sweep_dir is not None:
        sweep_dir = Path(sweep_dir).expanduser().resolve()
        check_writable(sweep_dir, what="--sweep-dir", directory=True)
        _check_grid(sweep_dir, cells)
    unfinished = [c for c in cells if not _finished(sweep_dir, c)]
    if backend == "ray" and unfinished:  # reached before anything is written, logged or run
        connect_ray(address, cpus_per_run, gpus_per_run)
    if sweep_dir is not None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    parent = _parent_run(
        tracker, sweep_dir, cells, streams, strategies, seeds, memories, run_kwargs
    )
    setup = Setup(
        sweep_dir=str(sweep_dir) if sweep_dir is not None else None,
        tracking_uri=tracker.portable_uri() if tracker is not None else None,
        experiment=tracker.experiment if tracker is not None else None,
        parent_run_id=parent.run_id if parent is not None else None,
        data_dir=str(Path(data_dir).resolve()) if data_dir is not None else None,
        checkpoint_every=checkpoint_every,
        threads=max(1, int(cpus_per_run)) if cpus_per_run is not None else None,
        progress=progress and backend == "serial",
    )
    if sweep_dir is not None:
        log.info("sweep folder %s: %d cells", sweep_dir, len(cells))
    try:
        if backend == "ray":
            runs = run_on_ray(
                cells,
                setup,
                cpus_per_run,
                gpus_per_run,
                max_retries,
                progress,
            )
        else:
            runs = [run_cell(cell, setup) for cell in cells]
    except BaseException:
        if parent is not None:
            parent.end("FAILED")
        raise
    one_setting = len(streams) == 1 and len(memories) == 1
    labels = {id(run): cell.label(one_setting) for run, cell in zip(runs, cells, strict=True)}
    summary = summarize_runs(runs, label=lambda r: labels[id(r)])
    if parent is not None:
        for name, stats in summary.items():
            parent.log_metrics(
                {f"{name}.{k}": v["mean"] for k, v in stats.items() if v["mean"] is not None},
                step=0,
            )
        parent.end()
    return {
        "streams": streams,
        "memory": memories,
        "seeds": list(seeds),
        "sweep_dir": str(sweep_dir) if sweep_dir is not None else None,
        "cells": [cell_key(cell) for cell in cells],
        "mlflow_parent_run_id": parent.run_id if parent is not None else None,
        "runs": runs,
        "summary": summary,
    }


def _results(sweep_dir: str | Path, read_only: bool = False) -> RunStore:
    """The sweep's finished runs, one file each."""
    return RunStore(Path(sweep_dir) / "runs", {}, read_only=read_only)


def _finished(sweep_dir: str | Path | None, cell: Cell) -> bool:
    return sweep_dir is not None and _results(sweep_dir, True).path(cell_key(cell)).exists()


def _device(device: str, backend: str, gpus_per_run: float) -> str:
    """The device a run will get, as its key records it: ``auto`` is decided here (Ray
    shows a task the GPUs it asked for, none without ``--gpus-per-run``)."""
    from streamkd.strategy import resolve_device

    if device != "auto":
        return device
    if backend == "ray":
        return "cuda" if gpus_per_run > 0 else "cpu"
    return str(resolve_device("auto"))


def _grid_key(cells: list[Cell]) -> str:
    return hashlib.sha256("".join(sorted(map(cell_key, cells))).encode()).hexdigest()[:12]


def _check_grid(sweep_dir: Path, cells: list[Cell]) -> None:
    """A sweep folder holds one grid: another one is refused (its parent run, summary and
    sweep.json describe the first)."""
    record = sweep_dir / "sweep.json"
    if record.exists():
        stored = json.loads(record.read_text()).get("grid")
        if stored is not None and stored != _grid_key(cells):
            raise ValueError(
                f"{sweep_dir} holds another grid (other strategies, seeds, streams, memory "
                "sizes or settings, or another streamkd version); give a fresh --sweep-dir"
            )


def _parent_run(tracker, sweep_dir, cells, streams, strategies, seeds, memories, run_kwargs):
    """The sweep's parent MLflow run: made once, and found again by a re-invocation of the
    same sweep folder, which must log where the first did (its cells' runs live there)."""
    record = Path(sweep_dir) / "sweep.json" if sweep_dir is not None else None
    where = {
        "tracking_uri": tracker.portable_uri() if tracker is not None else None,
        "experiment": tracker.experiment if tracker is not None else None,
    }
    if record is not None and record.exists():
        stored = json.loads(record.read_text())
        if {k: stored.get(k) for k in where} != where:
            said = (
                f"logs to {stored['tracking_uri']} (experiment {stored['experiment']!r})"
                if stored.get("tracking_uri")
                else "ran without MLflow"
            )
            raise ValueError(
                f"the sweep in {sweep_dir} {said}; re-invoke it the same way "
                "(--tracking-uri, --experiment, --no-track), or give a fresh --sweep-dir"
            )
        if tracker is None:
            return None
        from mlflow.exceptions import MlflowException

        try:
            return tracker.resume_run(stored["parent_run_id"])
        except MlflowException:
            raise ValueError(
                f"the sweep in {sweep_dir} logged under parent run {stored['parent_run_id']}, "
                f"which {stored['tracking_uri']} no longer holds; give a fresh --sweep-dir"
            ) from None
    parent = (
        None
        if tracker is None
        else tracker.start_run(
            f"compare-{'+'.join(streams)}",
            {
                "streams": ",".join(streams),
                "strategies": ",".join(strategies),
                "seeds": ",".join(map(str, seeds)),
                "memory": ",".join(map(str, memories)),
                **{k: v for k, v in run_kwargs.items() if isinstance(v, int | float | str)},
            },
        )
    )
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(
            record,
            json_text(
                {
                    **where,
                    "parent_run_id": parent.run_id if parent is not None else None,
                    "grid": _grid_key(cells),
                }
            ),
        )
    return parent


def _host_port(address: str) -> tuple[str, int] | None:
    """``HOST:PORT`` of ``address`` (``ray://`` stripped); ``None`` for ``auto``."""
    if address == "auto":
        return None
    parsed = urllib.parse.urlparse(address if "://" in address else f"gcs://{address}")
    if parsed.scheme not in ("gcs", "ray") or not parsed.hostname or parsed.port is None:
        raise ValueError(
            f"--address {address!r}: expected auto, HOST:PORT (the head's GCS) or "
            "ray://HOST:PORT (Ray Client)"
        )
    return parsed.hostname, parsed.port


def connect_ray(address: str | None, cpus_per_run: float, gpus_per_run: float = 0.0) -> None:
    """Reach the Ray cluster at ``address`` (``None``: start a new one on this machine), or
    raise ``ValueError`` in one line: Ray missing, nothing listening there, no cluster
    found, no node large enough for one run."""
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--backend ray needs Ray: pip install 'streamkd[ray]' (or make install-full)"
        ) from None
    if ray.is_initialized():
        return
    if address is not None:
        target = _host_port(address)
        if target is not None:  # a quick probe: ray.init would wait a minute on a dead port
            try:
                socket.create_connection(target, timeout=PROBE_SECONDS).close()
            except OSError as err:
                raise ValueError(
                    f"--address {address}: nothing answers at {target[0]}:{target[1]} ({err})"
                ) from None
    env = {var: str(Path(os.environ[var]).resolve()) for var in DATA_VARS if var in os.environ}
    options: dict[str, Any] = {
        "address": address or "local",
        "runtime_env": {"env_vars": env} if env else None,
        "logging_level": logging.WARNING,
        "log_to_driver": False,  # a run's own lines go to its cell log, not into the table
    }
    if address is None:
        options["include_dashboard"] = False
    try:
        ray.init(**options)
    except Exception as err:  # ConnectionError, AuthenticationError...: all end the same way
        raise ValueError(
            f"--address {address}: no Ray cluster reached ({first_line(err)})"
        ) from None
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for flag, resource, wanted in (
        ("--cpus-per-run", "CPU", cpus_per_run),
        ("--gpus-per-run", "GPU", gpus_per_run),
    ):
        largest = max((n.get(resource, 0) for n in nodes), default=0)
        if wanted > largest:
            ray.shutdown()
            raise ValueError(
                f"{flag} {wanted:g}: the largest node of the Ray cluster has {largest:g} "
                f"{resource}s, so no run could ever be scheduled"
            )


def run_on_ray(
    cells: list[Cell],
    setup: Setup,
    cpus_per_run: float,
    gpus_per_run: float,
    max_retries: int,
    progress: bool,
) -> list[dict[str, Any]]:
    """Each cell not finished yet as one Ray task (retried up to ``max_retries`` times when
    its worker dies; a retry resumes from the cell's checkpoint); results in cell order."""
    from tqdm.auto import tqdm

    results: list[dict[str, Any] | None] = [None] * len(cells)
    todo = []
    for i, cell in enumerate(cells):
        if _finished(setup.sweep_dir, cell):  # by an earlier invocation: read back
            results[i] = run_cell(cell, setup)
        else:
            todo.append(i)
    done = len(cells) - len(todo)
    pending: dict[Any, int] = {}
    if todo:
        import ray

        task = ray.remote(run_cell).options(
            num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=max_retries
        )
        pending = {task.remote(cells[i], setup): i for i in todo}
    log.info("%d of %d runs finished before; %d sent to Ray", done, len(cells), len(pending))
    bar = tqdm(total=len(cells), initial=done, unit="run", disable=not progress)
    started = time.perf_counter()
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            cell = cells[i]
            try:
                results[i] = ray.get(ready[0])
            except ray.exceptions.RayTaskError as err:  # the run's own error, not Ray's wrapper
                log.debug("%s", err.traceback_str)
                raise err.cause if isinstance(err.cause, Exception) else err from None
            except ray.exceptions.RayError as err:  # a lost worker or node, past its retries
                raise SweepError(
                    f"{cell.strategy} {cell.stream} m{cell.memory} seed {cell.seed}: "
                    f"{type(err).__name__} after {max_retries} retries ({first_line(err)}); "
                    "re-invoke the sweep to resume it from its checkpoint"
                ) from None
            r = results[i]
            resumed = f", resumed from sample {r['resumed_from']}" if r.get("resumed_from") else ""
            acc = r.get("final_avg_acc")
            tqdm.write(
                f"done {cell.strategy} {cell.stream} m{cell.memory} seed {cell.seed}: "
                f"final avg acc {'n/a' if acc is None else f'{acc:.3f}'}{resumed}",
                file=sys.stderr,
            )
            bar.update(1)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    log.info("Ray: %d runs in %.1f s", len(cells) - done, time.perf_counter() - started)
    return [r for r in results if r is not None]
