"""Click-through-rate evaluation on a stream: prequential click probabilities (each batch
scored before its learner trains on it), AUC and logloss over the whole stream or a part of
it, AUC over windows of it, power-law fits for scaling curves, and :class:`CountingCTR`, the
baseline every deep model must beat."""

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

    def after(self, events: int) -> Prequential:
        """The scored events past the first ``events`` scored ones (e.g. what follows a
        tuning prefix)."""
        return Prequential(
            self.labels[events:], {k: v[events:] for k, v in self.probabilities.items()}
        )


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


class CountingCTR:
    """Per-user and per-item click rates with Beta priors, combined as a sum of logits: what
    a practitioner tries first, and the row every deep CTR model must beat.

    With ``p0`` the stream's click rate so far (Beta(1, 1) prior) and ``a`` the prior
    strength, a user's rate is ``r_u = (clicks_u + a p0) / (views_u + a)``, an item's ``r_i``
    likewise, and ``logit P(click) = logit r_u + logit r_i - logit p0``: each id moves the
    base rate by its own evidence, as naive Bayes would. Counts are on ``device``, updated
    after each batch (:meth:`learn`) and read by :meth:`score` with no host round trip.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        prior_strength: float = 10.0,
        user_field: str = "user",
        item_field: str = "item",
        device: str | torch.device = "cpu",
    ) -> None:
        if not prior_strength > 0:
            raise ValueError(f"prior_strength must be positive, got {prior_strength}")
        self.prior_strength = float(prior_strength)
        self.fields = (user_field, item_field)
        zeros = lambda n: torch.zeros(n, dtype=torch.float64, device=device)  # noqa: E731
        self.clicks = [zeros(n_users), zeros(n_items)]
        self.views = [zeros(n_users), zeros(n_items)]
        self.total = zeros(2)  # clicks, views

    @classmethod
    def for_schema(
        cls,
        schema,
        prior_strength: float = 10.0,
        user_field: str = "user",
        item_field: str = "item",
        **kwargs,
    ) -> CountingCTR:
        """Sized by the id ranges of a stream's user and item fields."""
        wanted = (user_field, item_field)
        missing = [f for f in wanted if f not in schema or not schema[f].num_ids]
        if missing:
            raise ValueError(f"counting needs id fields {list(wanted)}; missing {missing}")
        n_users, n_items = (schema[f].num_ids for f in wanted)
        return cls(n_users, n_items, prior_strength, user_field, item_field, **kwargs)

    def _ids(self, x: Inputs) -> list[Tensor]:
        return [x[f].to(self.total.device).long() for f in self.fields]

    def score(self, x: Inputs) -> dict[str, Tensor]:
        base = (self.total[0] + 1) / (self.total[1] + 2)
        a = self.prior_strength
        logit = -torch.logit(base)
        for ids, clicks, views in zip(self._ids(x), self.clicks, self.views, strict=True):
            logit = logit + torch.logit((clicks[ids] + a * base) / (views[ids] + a))
        return {"model": torch.sigmoid(logit).float()}

    def learn(self, batch: Batch) -> None:
        y = batch.y.to(self.total.device, torch.float64)
        for ids, clicks, views in zip(self._ids(batch.x), self.clicks, self.views, strict=True):
            clicks.index_add_(0, ids, y)
            views.index_add_(0, ids, torch.ones_like(y))
        self.total += torch.stack([y.sum(), y.new_tensor(float(len(y)))])


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
    with np.errstate(invalid="ignore", divide="ignore"):  # refused below, with a reason
        lx = np.log(np.asarray(list(x), dtype=np.float64))
        ly = np.log(np.asarray(list(y), dtype=np.float64))
    if len(lx) < 2 or not np.all(np.isfinite(lx)) or not np.all(np.isfinite(ly)):
        raise ValueError("a power law needs two or more positive (x, y) points")
    b, log_a = np.polyfit(lx, ly, 1)
    residual = ly - (log_a + b * lx)
    total = ((ly - ly.mean()) ** 2).sum()
    r2 = 1 - (residual**2).sum() / total if total > 0 else math.nan
    return {"a": float(math.exp(log_a)), "b": float(b), "r2": float(r2)}
