"""Click-through-rate evaluation on a stream: prequential click probabilities (each batch
scored before its learner trains on it), AUC and logloss over the whole stream, AUC over
windows of it, and power-law fits for scaling curves."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from streamkd.types import Batch, Inputs

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] for the logloss


@dataclass
class Prequential:
    """The labels of every scored event and, per model name, its click probabilities."""

    labels: np.ndarray
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)

    def auc(self, name: str) -> float:
        return auc(self.labels, self.probabilities[name])

    def logloss(self, name: str) -> float:
        return logloss(self.labels, self.probabilities[name])


def click_probability(scores: Tensor) -> Tensor:
    """P(click) from a two-class score matrix (n, 2): the softmax's second column."""
    if scores.dim() != 2 or scores.shape[1] != 2:
        raise ValueError(f"expected two-class scores (n, 2), got shape {tuple(scores.shape)}")
    return torch.softmax(scores.float(), 1)[:, 1]


def strategy_scorer(strategy, teacher: bool = False) -> Callable[[Inputs], dict[str, Tensor]]:
    """What :func:`prequential_ctr` scores for a strategy: its prediction (``student`` for a
    distilling strategy) and, with ``teacher``, its teacher's."""

    def score(x: Inputs) -> dict[str, Tensor]:
        out = {"model": click_probability(strategy.predict(x))}
        if teacher:
            out["teacher"] = click_probability(strategy.predict_teacher(x))
        return out

    return score


def prequential_ctr(
    score: Callable[[Inputs], dict[str, Tensor]],
    learn: Callable[[Batch], object],
    batches: Iterable[Batch],
    max_events: int | None = None,
) -> Prequential:
    """Test then train over ``batches``: ``score(x)`` (click probabilities per model name)
    before ``learn(batch)``. The first batch is learned unscored (no model has seen a label
    yet), for every learner alike. Stops after ``max_events`` learned events."""
    labels: list[Tensor] = []
    probs: dict[str, list[Tensor]] = {}
    seen = 0
    for batch in batches:
        if max_events is not None and seen >= max_events:
            break
        if seen:
            for name, p in score(batch.x).items():
                probs.setdefault(name, []).append(p.detach().cpu())
            labels.append(batch.y.cpu())
        learn(batch)
        seen += len(batch.y)
    if not labels:
        raise ValueError("the stream held fewer than two batches: nothing was scored")
    return Prequential(
        torch.cat(labels).numpy(), {k: torch.cat(v).double().numpy() for k, v in probs.items()}
    )


def auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Area under the ROC curve (the probability a random click outscores a random
    non-click; ties count half)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, probabilities))


def logloss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy, probabilities clipped to ``[1e-7, 1 - 1e-7]``."""
    p = np.clip(probabilities, EPS, 1 - EPS)
    y = labels.astype(np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def windowed_auc(
    labels: np.ndarray, probabilities: np.ndarray, window: int
) -> list[tuple[int, float]]:
    """AUC of consecutive windows of ``window`` scored events: ``(events up to the window's
    end, its AUC)``; a window with one class only is skipped."""
    out = []
    for end in range(window, len(labels) + 1, window):
        y = labels[end - window : end]
        if 0 < y.sum() < len(y):
            out.append((end, auc(y, probabilities[end - window : end])))
    return out


def fit_power_law(x: Iterable[float], y: Iterable[float]) -> dict[str, float]:
    """Least squares of ``log y = log a + b log x``: ``y ~ a * x**b``, with the fit's R^2 in
    log space."""
    lx = np.log(np.asarray(list(x), dtype=np.float64))
    ly = np.log(np.asarray(list(y), dtype=np.float64))
    if len(lx) < 2 or not np.all(np.isfinite(lx)) or not np.all(np.isfinite(ly)):
        raise ValueError("a power law needs two or more positive (x, y) points")
    b, log_a = np.polyfit(lx, ly, 1)
    residual = ly - (log_a + b * lx)
    total = ((ly - ly.mean()) ** 2).sum()
    r2 = 1 - (residual**2).sum() / total if total > 0 else math.nan
    return {"a": float(math.exp(log_a)), "b": float(b), "r2": float(r2)}
