"""Evaluation of a strategy on a stream: prequential (test-then-train) accuracy while it
learns, and held-out evaluation after each segment, giving the accuracy matrix.

Definitions (T' = segments trained so far, ``A[i][j]`` = held-out accuracy on segment j
after training through segment i):
  * final average accuracy = ``mean_j<T' A[T'-1][j]``
  * average forgetting     = ``mean_j<T'-1 (max_{j<=i<T'-1} A[i][j] - A[T'-1][j])``
  * backward transfer      = ``mean_j<T'-1 (A[T'-1][j] - A[j][j])``
  * anytime accuracy       = mean over evaluation points of the mean accuracy on the segments
    seen so far (A_AUC of Koh et al., ICLR 2022); points are segment ends plus every
    ``eval_every`` samples when set
  * prequential accuracy   = accuracy of predictions made on each batch before training on it
  * learning curves        = every ``log_every`` samples (default: the stream's length / 100,
    so even a short stream gives ~50-100 points), the prequential accuracy and mean loss over
    the trailing ``window`` samples (default 5 x ``log_every``)
  * samples/s counts ``observe()`` time only (CUDA events on a GPU); peak memory is CUDA's
    peak allocation on GPU and the process's peak resident set size on CPU.

On a GPU the per-batch path never waits for the device: hits and losses are summed on the
device and read at curve points, checkpoints and the end; step times come from CUDA events
read at the same points; each batch's inputs are copied once, pinned and non-blocking
(``streamkd.syncs`` counts what remains; the drift monitor reads every batch's errors or
loss on the host, so it costs one wait per batch when on).

With a :class:`~streamkd.drift.DriftMonitor` (``drift=``), each sample's prequential error (from
the prediction already made for accuracy: no extra forward pass) or each batch's loss is fed
to a drift detector; its events land in ``result["drift_events"]`` and in MLflow (metric
``drift`` = 1 at step = the event's sample index, and the final count ``drift_events``).
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import warnings
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from streamkd.arguments import positive_int
from streamkd.engine import CheckpointSchedule, StepTimer, prequential_step
from streamkd.strategy import Strategy
from streamkd.types import Batch, Inputs, inputs_len, take, to_device

if TYPE_CHECKING:
    from streamkd.checkpoint import Checkpointer
    from streamkd.drift import DriftMonitor
    from streamkd.streams.split import SegmentedStream
    from streamkd.tracking import RunLogger


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(acc_matrix: list[list[float | None]], row_segments: list[int]) -> dict[str, Any]:
    """Final average accuracy, forgetting and backward transfer from an accuracy matrix."""
    if not acc_matrix or all(v is None for v in acc_matrix[-1]):
        return {"final_avg_acc": None, "avg_forgetting": None, "bwt": None}
    last, k = acc_matrix[-1], row_segments[-1] + 1
    seen = [j for j in range(k) if last[j] is not None]
    final = _mean([last[j] for j in seen])
    forgetting, bwt = [], []
    for j in seen:
        if j >= k - 1:
            continue
        earlier = [acc_matrix[r][j] for r, s in enumerate(row_segments[:-1]) if s >= j]
        if earlier:
            forgetting.append(max(earlier) - last[j])
        diag = [acc_matrix[r][j] for r, s in enumerate(row_segments[:-1]) if s == j]
        if diag:
            bwt.append(last[j] - diag[-1])
    return {
        "final_avg_acc": final,
        "avg_forgetting": _mean(forgetting) if forgetting else 0.0,
        "bwt": _mean(bwt) if bwt else 0.0,
    }


@torch.no_grad()
def heldout_hits(strategy: Strategy, x: Inputs, y: torch.Tensor, chunk: int) -> torch.Tensor:
    """Correct predictions of ``strategy.predict`` on ``(x, y)``, in chunks: a count summed
    on the device (nothing is read)."""
    correct = torch.zeros((), dtype=torch.long, device=strategy.device)
    for start in range(0, inputs_len(x), chunk):
        scores = strategy.predict(take(x, slice(start, start + chunk)))
        if scores.shape[1] == 0:
            continue
        labels = to_device(y[start : start + chunk], scores.device)
        correct += (scores.argmax(1) == labels).sum()
    return correct


def expected_calibration_error(scores: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al., 2017): confidences (the softmax maximum of ``scores``) in ``bins``
    equal-width bins; the mean over samples of |accuracy - confidence| of each one's bin."""
    positive_int("bins", bins, optional=False)
    if scores.dim() != 2 or len(scores) != len(labels) or not len(labels):
        raise ValueError(
            f"expected (n, classes) scores and n labels, got {tuple(scores.shape)} and "
            f"{tuple(labels.shape)}"
        )
    confidence, predicted = torch.softmax(scores.float(), 1).max(1)
    correct = (predicted == labels.to(predicted.device)).float()
    which = (confidence * bins).ceil().clamp(1, bins).long() - 1  # (k/bins, (k+1)/bins]
    total = torch.zeros(bins).index_add_(0, which.cpu(), (correct - confidence).cpu())
    return float(total.abs().sum() / len(labels))


class Evaluator:
    """Keeps the running evaluation state of one run (checkpointable with ``state_dict``)."""

    def __init__(
        self,
        stream: SegmentedStream,
        *,
        eval_every: int | None = None,
        eval_chunk: int = 500,
        log_every: int | None = None,
        window: int | None = None,
        drift: DriftMonitor | None = None,
    ) -> None:
        self.stream = stream
        self.drift = drift
        self._drift_logged = 0  # events already handed to the logger
        self.eval_every, self.eval_chunk = eval_every, eval_chunk
        log_every = default_log_every(stream) if log_every is None else log_every
        if log_every <= 0 or (window is not None and window <= 0):
            raise ValueError(f"log_every and window must be positive, got {log_every}, {window}")
        self.log_every, self.window = log_every, window or 5 * log_every
        # the curve's trailing window, as [correct, predicted, loss sum, steps] per interval
        self._recent: deque[list[float]] = deque(maxlen=max(1, self.window // log_every))
        self.n_segments = len(stream.segments)
        self.acc_matrix: list[list[float | None]] = []
        self.row_segments: list[int] = []
        self.anytime: list[list[float]] = []  # [samples, mean acc over seen segments]
        self.curve: list[list[float]] = []  # [samples, windowed prequential acc, mean loss]
        self.current_segment: int | None = None
        self.samples = 0
        self._correct = 0
        self.predicted = 0
        self._timer: StepTimer | None = None
        self._seconds = 0.0  # before a timer exists (a resumed run's)
        self._win_correct = self._win_n = 0
        self._hits: torch.Tensor | None = None  # hits not yet read, on the device
        self._loss_sum = torch.zeros(())
        self._loss_n = 0
        self._next_log = self.log_every
        self._next_eval = eval_every or 0

    # -- held-out ---------------------------------------------------------------------------
    def evaluate_all(self, strategy: Strategy) -> list[float | None]:
        return self._accuracies(strategy, range(self.n_segments))

    def _accuracies(self, strategy: Strategy, segments) -> list[float | None]:
        """Held-out accuracy on each of ``segments`` (``None``: no test set); the device's
        counts are read once for all of them."""
        tests = [self.stream.test_set(j) for j in segments]
        hits = [heldout_hits(strategy, *t, self.eval_chunk) for t in tests if t is not None]
        counts = iter(torch.stack(hits).tolist() if hits else [])
        return [None if t is None else next(counts) / len(t[1]) for t in tests]

    def end_segment(self, strategy: Strategy, segment: int, logger: RunLogger | None) -> None:
        row = self.evaluate_all(strategy)
        self.acc_matrix.append(row)
        self.row_segments.append(segment)
        seen = [v for v in row[: segment + 1] if v is not None]
        if seen:
            self.anytime.append([self.samples, sum(seen) / len(seen)])
        if logger is not None:
            metrics = {f"acc_seg{j}": v for j, v in enumerate(row) if v is not None}
            if seen:
                metrics["avg_acc_seen"] = sum(seen) / len(seen)
            logger.log_metrics(metrics, step=self.samples)

    def anytime_point(self, strategy: Strategy) -> None:
        seg = self.current_segment or 0
        accs = [a for a in self._accuracies(strategy, range(seg + 1)) if a is not None]
        if accs:
            self.anytime.append([self.samples, sum(accs) / len(accs)])

    # -- per batch --------------------------------------------------------------------------
    def learn(
        self, strategy: Strategy, batch: Batch, logger: RunLogger | None, prequential: bool = True
    ) -> None:
        """One batch through the engine (:func:`streamkd.engine.prequential_step`: validated
        once, predicted, learned, timed), then the bookkeeping; none of it waits for the
        device."""
        if self._timer is None:
            self._timer = StepTimer(strategy.device, done=self._seconds)
        out = prequential_step(
            strategy, batch, predict=prequential, timer=self._timer, on_hits=self.record_hits
        )
        self.record_step(out.step.loss, out.step.n, logger)

    @property
    def train_seconds(self) -> float:
        return self._timer.seconds if self._timer is not None else self._seconds

    @property
    def correct(self) -> int:
        """Prequential hits so far (reads the device's running sum)."""
        self._read_hits()
        return self._correct

    def _read_hits(self) -> None:
        if self._hits is not None:
            hits = int(self._hits)
            self._correct += hits
            self._win_correct += hits
            self._hits = None

    def record_hits(self, hit: torch.Tensor) -> None:
        """Count a prequential prediction's per-sample hits (summed on the device)."""
        if self.drift is not None and self.drift.signal == "error":
            self.drift.update_many((~hit).float().cpu(), start_index=self.samples)
        hits = hit.sum()
        self._hits = hits if self._hits is None else self._hits + hits
        self.predicted += len(hit)
        self._win_n += len(hit)

    def record_step(self, loss: torch.Tensor, n: int, logger: RunLogger | None) -> None:
        self.samples += n
        if self._loss_sum.device != loss.device:  # a new or resumed run's host sum, once
            self._loss_sum = to_device(self._loss_sum, loss.device)
        self._loss_sum = self._loss_sum + loss.detach()
        self._loss_n += 1
        if self.drift is not None:
            if self.drift.signal == "loss":
                self.drift.update(float(loss), index=self.samples - 1)
            self.log_drift(logger)
        if self.samples >= self._next_log:
            self.log_point(logger)

    def log_point(self, logger: RunLogger | None) -> None:
        """Close the current interval: one curve point (and MLflow metrics) at ``samples``."""
        if not self._loss_n:
            return
        self._read_hits()
        if self._timer is not None:  # the step times recorded since, read here too
            self._timer.flush()
        self._next_log = (self.samples // self.log_every + 1) * self.log_every
        self._recent.append([self._win_correct, self._win_n, float(self._loss_sum), self._loss_n])
        correct, predicted, loss_sum, steps = (sum(p[i] for p in self._recent) for i in range(4))
        loss_avg = loss_sum / max(steps, 1)
        acc = correct / predicted if predicted else float("nan")
        self.curve.append([self.samples, acc, loss_avg])
        if logger is not None:
            metrics = {"loss": loss_avg}
            if predicted:  # the run's overall prequential_acc is logged once, at the end
                metrics["prequential_acc_window"] = acc
            logger.log_metrics(metrics, step=self.samples)
        self._win_correct = self._win_n = 0
        self._loss_sum = torch.zeros_like(self._loss_sum)  # stays on the device
        self._loss_n = 0

    def log_drift(self, logger: RunLogger | None) -> None:
        """Log drift events not logged yet: metric ``drift`` = 1 at step = sample index."""
        events = self.drift.events
        if logger is not None:
            for event in events[self._drift_logged :]:
                logger.log_metrics({"drift": 1.0}, step=event["index"])
        self._drift_logged = len(events)

    # -- results ----------------------------------------------------------------------------
    def result(self, strategy: Strategy) -> dict[str, Any]:
        out: dict[str, Any] = summarize(self.acc_matrix, self.row_segments)
        out.update(
            {
                "anytime_acc": _mean([a for _, a in self.anytime]),
                "prequential_acc": self.correct / self.predicted if self.predicted else None,
                "acc_matrix": self.acc_matrix,
                "row_segments": self.row_segments,
                "samples": self.samples,
                "train_seconds": self.train_seconds,
                "samples_per_s": self.samples / self.train_seconds if self.train_seconds else None,
                "peak_mem_mb": peak_memory_mb(strategy.device),
                "curve": self.curve,
                "anytime": self.anytime,
            }
        )
        if self.drift is not None:
            out["drift_events"] = [dict(e) for e in self.drift.events]
        return out

    def state_dict(self) -> dict[str, Any]:
        self._read_hits()
        state = {
            "acc_matrix": [[(-1.0 if v is None else v) for v in row] for row in self.acc_matrix],
            "row_segments": list(self.row_segments),
            "anytime": self.anytime,
            "curve": [[float(v) for v in point] for point in self.curve],
            "current_segment": -1 if self.current_segment is None else self.current_segment,
            "counts": [
                self.samples,
                self.correct,
                self.predicted,
                self._win_correct,
                self._win_n,
                self._loss_n,
                self._next_log,
                self._next_eval,
            ],
            "loss_sum": self._loss_sum.cpu().clone(),
            "recent": [list(p) for p in self._recent],
            "log_every": [self.log_every, self.window],  # a resumed curve keeps its interval
            "train_seconds": self.train_seconds,
        }
        if self.drift is not None:
            state["drift"] = self.drift.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.acc_matrix = [[(None if v == -1.0 else v) for v in row] for row in state["acc_matrix"]]
        self.row_segments = list(state["row_segments"])
        self.anytime = [list(p) for p in state["anytime"]]
        self.curve = [list(p) for p in state["curve"]]
        seg = int(state["current_segment"])
        self.current_segment = None if seg < 0 else seg
        (
            self.samples,
            self._correct,
            self.predicted,
            self._win_correct,
            self._win_n,
            self._loss_n,
            self._next_log,
            self._next_eval,
        ) = (int(v) for v in state["counts"])
        self._loss_sum = state["loss_sum"].clone()
        self._hits = None
        if "log_every" in state:
            self.log_every, self.window = (int(v) for v in state["log_every"])
            self._recent = deque(maxlen=max(1, self.window // self.log_every))
        self._recent.clear()
        self._recent.extend(list(p) for p in state.get("recent", []))
        self._seconds = float(state["train_seconds"])
        self._timer = None
        if self.drift is not None and "drift" in state:
            self.drift.load_state_dict(state["drift"])
            self._drift_logged = len(self.drift.events)  # logged before the checkpoint


def default_log_every(stream, max_samples: int | None = None) -> int:
    """A curve point every 1/100 of what will be trained (the stream, or ``max_samples``
    when smaller; at least a batch); 500 samples when the length is unknown (a live
    source)."""
    n = getattr(stream, "n_samples", None) or max_samples
    if not n:
        return 500
    if max_samples is not None:
        n = min(n, max_samples)
    return max(getattr(stream, "batch_size", 1), n // 100)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def run(
    strategy: Strategy,
    stream: SegmentedStream,
    *,
    eval_every: int | None = None,
    log_every: int | None = None,
    max_samples: int | None = None,
    logger: RunLogger | None = None,
    checkpointer: Checkpointer | None = None,
    checkpoint_every: int | None = None,
    resume_state: dict[str, Any] | None = None,
    progress: bool = False,
    prequential: bool = True,
    drift: DriftMonitor | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Drive ``strategy`` over ``stream`` once and return the evaluation as a plain dict.

    With a ``checkpointer``, the full state (strategy, evaluator, stream position, MLflow run
    id) is saved every ``checkpoint_every`` samples and at the end; ``resume_state`` (a
    checkpoint's contents, e.g. ``Checkpointer.load_latest()``) restores a run first, so it
    continues where it stopped. The logger's buffered metrics are flushed before each
    checkpoint, so MLflow holds every point a checkpoint covers; after a crash only the
    points since the last checkpoint are logged again. ``config`` (the run's settings, see
    :func:`streamkd.experiment.run_config`) is stored in each checkpoint. ``drift`` watches
    the run for concept drift (see the module docstring); its state is part of the
    checkpoint.
    """
    for name, value in (
        ("max_samples", max_samples),
        ("eval_every", eval_every),
        ("checkpoint_every", checkpoint_every),
        ("log_every", log_every),
    ):
        positive_int(name, value)
    if drift is not None and drift.signal == "error" and not prequential:
        raise ValueError("the drift signal 'error' needs prequential=True (it uses its errors)")
    if log_every is None:
        log_every = default_log_every(stream, max_samples)
    ev = Evaluator(stream, eval_every=eval_every, log_every=log_every, drift=drift)
    if resume_state is not None:
        strategy.load_state_dict(resume_state["strategy"])
        ev.load_state_dict(resume_state["evaluator"])
        stream.seek(int(resume_state["position"]))
    if strategy.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(strategy.device)
    schedule = CheckpointSchedule(checkpoint_every, samples=ev.samples)

    def save_checkpoint() -> None:
        if logger is not None:  # what the checkpoint covers is in MLflow before it exists
            logger.flush()
        evaluator = ev.state_dict()  # reads the device's hit count once
        checkpointer.save(
            {
                "kind": "run",
                "strategy": strategy.state_dict(),
                "position": stream.position(),
                "counters": {
                    "events_learned": ev.samples,
                    "correct": ev.correct,
                    "predicted": ev.predicted,
                },
                "config": config or {},
                "mlflow_run_id": logger.run_id if logger is not None else "",
                "evaluator": evaluator,
            },
            step=ev.samples,
        )

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(stream),
            initial=stream.position(),
            unit="batch",
            leave=False,
            disable=not sys.stderr.isatty(),
        )
    done = max_samples is not None and ev.samples >= max_samples  # a resumed, finished run
    for batch in () if done else stream:
        seg = batch.segment if batch.segment is not None else 0
        if ev.current_segment is not None and seg != ev.current_segment:
            ev.end_segment(strategy, ev.current_segment, logger)
        ev.current_segment = seg
        ev.learn(strategy, batch, logger, prequential)
        if ev.eval_every and ev.samples >= ev._next_eval:
            ev._next_eval = (ev.samples // ev.eval_every + 1) * ev.eval_every
            ev.anytime_point(strategy)
        if bar is not None:
            bar.update(1)
        if checkpointer is not None and schedule.due(ev.samples):
            save_checkpoint()
        if max_samples is not None and ev.samples >= max_samples:
            break
    if bar is not None:
        bar.close()
    if checkpointer is not None:
        save_checkpoint()  # at the batch boundary, before the closing evaluation
    ev.log_point(logger)  # the curve ends at the last sample
    if ev.current_segment is not None and (
        not ev.row_segments or ev.row_segments[-1] != ev.current_segment
    ):
        ev.end_segment(strategy, ev.current_segment, logger)
    result = ev.result(strategy)
    if drift is not None and logger is not None:
        logger.log_metrics({"drift_events": len(drift.events)}, step=ev.samples)
    if not math.isfinite(result["train_seconds"]):
        result["train_seconds"] = None
    return result


@dataclass
class SyncCount:
    """What :func:`count_syncs` saw: synchronisations per batch, and where they came from;
    ``full_from`` is the first counted batch that began with the replay memory full (``None``:
    it never filled), so that the replay path's steady state is known to be among them."""

    per_step: list[int]
    sites: Counter
    errors: list[str]
    full_from: int | None = None

    @property
    def worst(self) -> int:
        return max(self.per_step, default=0)

    @property
    def steady(self) -> list[int]:
        """The counts of the batches learned with a full memory."""
        return [] if self.full_from is None else self.per_step[self.full_from :]


def count_syncs(
    build: Callable[[], Strategy],
    stream: SegmentedStream,
    *,
    steps: int | None = None,
    skip: int = 0,
    real_gpu: bool = False,
) -> SyncCount:
    """Host-device synchronisations per batch of :func:`run`'s loop.

    ``build()`` makes the strategy, with ``device="cuda"``. By default it runs on the CPU
    under :func:`streamkd.syncs.emulate_cuda`, which counts every operation that would make
    the host wait for a GPU (any machine). ``real_gpu=True`` runs it on the GPU and counts
    what CUDA's sync debug mode reports (``torch.cuda.set_sync_debug_mode``). Each of
    ``steps`` batches (default: all the stream has) after the first ``skip`` is counted over
    its prequential prediction, ``observe()`` and bookkeeping; curve points, evaluations and
    checkpoints (which read the device once per interval, on purpose) are not counted.
    """
    if real_gpu and not torch.cuda.is_available():
        raise ValueError("count_syncs(real_gpu=True) needs a CUDA GPU; without one it emulates")
    from streamkd.syncs import emulate_cuda  # the emulator loads only when counting

    with emulate_cuda() if not real_gpu else _cuda_sync_warnings() as counter:
        counter.counting = False
        strategy = build()
        ev = Evaluator(stream, log_every=10**12)
        per_step: list[int] = []
        full_from: int | None = None
        for i, batch in enumerate(stream):
            if steps is not None and i >= skip + steps:
                break
            memory = strategy.buffer
            if i >= skip and full_from is None and len(memory) >= memory.capacity:
                full_from = len(per_step)
            before = sum(counter.syncs.values())
            counter.counting = i >= skip
            ev.learn(strategy, batch, None)
            counter.counting = False
            if i >= skip:
                per_step.append(sum(counter.syncs.values()) - before)
    return SyncCount(per_step, counter.syncs, list(counter.errors), full_from)


class _SyncWarnings:
    """Counts CUDA's synchronisation warnings (``set_sync_debug_mode("warn")``) by site."""

    def __init__(self) -> None:
        self.syncs: Counter = Counter()
        self.errors: list[str] = []
        self.counting = True

    def record(self, message, category, filename, lineno, file=None, line=None) -> None:
        if self.counting and "synchronizing" in str(message):
            self.syncs[(str(message).split(".")[0], f"{filename}:{lineno}")] += 1


@contextlib.contextmanager
def _cuda_sync_warnings():
    counter = _SyncWarnings()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = counter.record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counter
        finally:
            torch.cuda.set_sync_debug_mode(previous)
