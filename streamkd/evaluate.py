"""Evaluation of a strategy on a stream: prequential (test-then-train) accuracy while it
learns, and held-out evaluation after each segment, giving the accuracy matrix.

Definitions (T' = segments trained so far, ``A[i][j]`` = held-out accuracy on segment j
after training through segment i):
  * final average accuracy = mean_j<T' A[T'-1][j]
  * average forgetting     = mean_j<T'-1 (max_{j<=i<T'-1} A[i][j] - A[T'-1][j])
  * backward transfer      = mean_j<T'-1 (A[T'-1][j] - A[j][j])
  * anytime accuracy       = mean over evaluation points of the mean accuracy on the segments
    seen so far (A_AUC of Koh et al., ICLR 2022); points are segment ends plus every
    ``eval_every`` samples when set
  * prequential accuracy   = accuracy of predictions made on each batch before training on it
  * samples/s counts ``observe()`` time only; peak memory is CUDA's peak allocation on GPU and
    the process's peak resident set size on CPU.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from typing import TYPE_CHECKING, Any

import torch

from streamkd.strategy import Strategy
from streamkd.types import validate_batch

if TYPE_CHECKING:
    from streamkd.checkpoint import Checkpointer
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
def heldout_accuracy(strategy: Strategy, x: torch.Tensor, y: torch.Tensor, chunk: int) -> float:
    correct = 0
    for start in range(0, len(y), chunk):
        scores = strategy.predict(x[start : start + chunk])
        if scores.shape[1] == 0:
            continue
        pred = scores.argmax(1).cpu()
        correct += int((pred == y[start : start + chunk]).sum())
    return correct / len(y)


class Evaluator:
    """Keeps the running evaluation state of one run (checkpointable with ``state_dict``)."""

    def __init__(
        self,
        stream: SegmentedStream,
        *,
        eval_every: int | None = None,
        eval_chunk: int = 500,
        log_every: int = 500,
        window: int = 1000,
    ) -> None:
        self.stream = stream
        self.eval_every, self.eval_chunk = eval_every, eval_chunk
        self.log_every, self.window = log_every, window
        self.n_segments = len(stream.segments)
        self.acc_matrix: list[list[float | None]] = []
        self.row_segments: list[int] = []
        self.anytime: list[list[float]] = []  # [samples, mean acc over seen segments]
        self.curve: list[list[float]] = []  # [samples, windowed prequential acc, mean loss]
        self.current_segment: int | None = None
        self.samples = 0
        self.correct = 0
        self.predicted = 0
        self.train_seconds = 0.0
        self._win_correct = self._win_n = 0
        self._loss_sum = torch.zeros(())
        self._loss_n = 0
        self._next_log = log_every
        self._next_eval = eval_every or 0

    # -- held-out ---------------------------------------------------------------------------
    def evaluate_all(self, strategy: Strategy) -> list[float | None]:
        row: list[float | None] = []
        for j in range(self.n_segments):
            test = self.stream.test_set(j)
            row.append(None if test is None else heldout_accuracy(strategy, *test, self.eval_chunk))
        return row

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
        accs = []
        for j in range(seg + 1):
            test = self.stream.test_set(j)
            if test is not None:
                accs.append(heldout_accuracy(strategy, *test, self.eval_chunk))
        if accs:
            self.anytime.append([self.samples, sum(accs) / len(accs)])

    # -- per batch --------------------------------------------------------------------------
    def record_prediction(self, scores: torch.Tensor, y: torch.Tensor) -> None:
        hits = 0 if scores.shape[1] == 0 else int((scores.argmax(1).cpu() == y).sum())
        self.correct += hits
        self.predicted += len(y)
        self._win_correct += hits
        self._win_n += len(y)

    def record_step(self, loss: torch.Tensor, n: int, logger: RunLogger | None) -> None:
        self.samples += n
        self._loss_sum = self._loss_sum + loss.detach().cpu()
        self._loss_n += 1
        if self.samples >= self._next_log:
            self._next_log += self.log_every
            loss_avg = float(self._loss_sum) / max(self._loss_n, 1)
            acc = self._win_correct / self._win_n if self._win_n else float("nan")
            self.curve.append([self.samples, acc, loss_avg])
            if logger is not None:
                metrics = {"loss": loss_avg}
                if self._win_n:
                    metrics["prequential_acc"] = acc
                logger.log_metrics(metrics, step=self.samples)
            self._win_correct = self._win_n = 0
            self._loss_sum = torch.zeros(())
            self._loss_n = 0

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
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
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
            "loss_sum": self._loss_sum.clone(),
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.acc_matrix = [[(None if v == -1.0 else v) for v in row] for row in state["acc_matrix"]]
        self.row_segments = list(state["row_segments"])
        self.anytime = [list(p) for p in state["anytime"]]
        self.curve = [list(p) for p in state["curve"]]
        seg = int(state["current_segment"])
        self.current_segment = None if seg < 0 else seg
        (
            self.samples,
            self.correct,
            self.predicted,
            self._win_correct,
            self._win_n,
            self._loss_n,
            self._next_log,
            self._next_eval,
        ) = (int(v) for v in state["counts"])
        self._loss_sum = state["loss_sum"].clone()
        self.train_seconds = float(state["train_seconds"])


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
    log_every: int = 500,
    max_samples: int | None = None,
    logger: RunLogger | None = None,
    checkpointer: Checkpointer | None = None,
    checkpoint_every: int | None = None,
    resume_state: dict[str, Any] | None = None,
    progress: bool = False,
    prequential: bool = True,
) -> dict[str, Any]:
    """Drive ``strategy`` over ``stream`` once and return the evaluation as a plain dict.

    With a ``checkpointer``, the full state (strategy, evaluator, stream position, MLflow run
    id) is saved every ``checkpoint_every`` samples and at the end; ``resume_state`` (a
    checkpoint's contents, e.g. ``Checkpointer.load_latest()``) restores a run first, so it
    continues where it stopped.
    """
    ev = Evaluator(stream, eval_every=eval_every, log_every=log_every)
    if resume_state is not None:
        strategy.load_state_dict(resume_state["strategy"])
        ev.load_state_dict(resume_state["evaluator"])
        stream.seek(int(resume_state["stream_position"]))
    if strategy.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(strategy.device)
    next_ckpt = None
    if checkpoint_every:
        next_ckpt = (ev.samples // checkpoint_every + 1) * checkpoint_every

    def save_checkpoint() -> None:
        checkpointer.save(
            {
                "strategy": strategy.state_dict(),
                "evaluator": ev.state_dict(),
                "stream_position": stream.position(),
                "mlflow_run_id": logger.run_id if logger is not None else "",
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
    for batch in stream:
        seg = batch.segment if batch.segment is not None else 0
        if ev.current_segment is not None and seg != ev.current_segment:
            ev.end_segment(strategy, ev.current_segment, logger)
        ev.current_segment = seg
        validate_batch(batch, strategy.model.input_shape)
        if prequential and batch.y is not None:
            ev.record_prediction(strategy.predict(batch.x), batch.y)
        t0 = time.perf_counter()
        step = strategy.observe(batch)
        if strategy.device.type == "cuda":
            torch.cuda.synchronize(strategy.device)
        ev.train_seconds += time.perf_counter() - t0
        ev.record_step(step.loss, step.n, logger)
        if ev.eval_every and ev.samples >= ev._next_eval:
            ev._next_eval = (ev.samples // ev.eval_every + 1) * ev.eval_every
            ev.anytime_point(strategy)
        if bar is not None:
            bar.update(1)
        if checkpointer is not None and next_ckpt is not None and ev.samples >= next_ckpt:
            next_ckpt = (ev.samples // checkpoint_every + 1) * checkpoint_every
            save_checkpoint()
        if max_samples is not None and ev.samples >= max_samples:
            break
    if bar is not None:
        bar.close()
    if checkpointer is not None:
        save_checkpoint()  # at the batch boundary, before the closing evaluation
    if ev.current_segment is not None and (
        not ev.row_segments or ev.row_segments[-1] != ev.current_segment
    ):
        ev.end_segment(strategy, ev.current_segment, logger)
    result = ev.result(strategy)
    if not math.isfinite(result["train_seconds"]):
        result["train_seconds"] = None
    return result
