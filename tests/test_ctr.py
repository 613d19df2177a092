"""streamkd.ctr: prequential scoring order, the metrics against hand-computed values, power
laws, and the counting baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamkd.ctr import (
    CountingCTR,
    Prequential,
    auc,
    fit_power_law,
    logloss,
    prequential_ctr,
    windowed_auc,
)
from streamkd.types import Batch, Field


class Memorizer:
    """Scores an event by the label it learned for the same key: a perfect cheat if it ever
    learns a batch before scoring it, chance otherwise (every key is new)."""

    def __init__(self) -> None:
        self.known: dict[int, float] = {}
        self.learned: list[int] = []

    def score(self, x):
        return {"model": torch.tensor([self.known.get(int(k), 0.5) for k in x["key"]])}

    def learn(self, batch: Batch) -> None:
        self.known.update({int(k): float(y) for k, y in zip(batch.x["key"], batch.y, strict=True)})
        self.learned.append(len(batch.y))


def _batches(n_batches: int = 20, size: int = 10, seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    keys = torch.arange(n_batches * size)
    y = torch.randint(0, 2, (n_batches * size,), generator=g)
    return [
        Batch({"key": keys[i * size : (i + 1) * size]}, y[i * size : (i + 1) * size])
        for i in range(n_batches)
    ]


def test_each_batch_is_scored_before_its_learner_sees_its_labels():
    learner, batches = Memorizer(), _batches()
    result = prequential_ctr(learner.score, learner.learn, batches)
    # the first batch is learned unscored; every later one is scored by a learner that has
    # not seen its labels, so the memorizer knows nothing: a constant 0.5, AUC exactly 0.5
    assert len(result.labels) == 190 and learner.learned == [10] * 20
    assert np.all(result.probabilities["model"] == 0.5) and result.auc("model") == 0.5
    assert np.array_equal(result.labels, torch.cat([b.y for b in batches[1:]]).numpy())
    # learning first (the wrong order) would score every event right: the cheat it guards
    cheat = Memorizer()
    for b in batches:
        cheat.learn(b)
    assert auc(result.labels, cheat.score({"key": torch.arange(10, 200)})["model"].numpy()) == 1


def test_max_events_and_a_stream_too_short_to_score():
    learner = Memorizer()
    result = prequential_ctr(learner.score, learner.learn, _batches(), max_events=50)
    assert sum(learner.learned) == 50 and len(result.labels) == 40
    with pytest.raises(ValueError, match="fewer than two batches"):
        prequential_ctr(learner.score, learner.learn, _batches(1))


def test_metrics_match_their_definitions():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.6, 0.8, 0.3])
    # pairs (click, no click) ranked right: of 6, 0.8 beats both, 0.6 beats 0.1 and ties 0.6
    # (half), 0.3 beats 0.1 only: (2 + 1.5 + 1) / 6
    assert auc(y, p) == pytest.approx(4.5 / 6)
    expected = -np.mean([math.log(0.9), math.log(0.4), math.log(0.6), math.log(0.8), math.log(0.3)])
    assert logloss(y, p) == pytest.approx(expected)
    assert logloss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-7))  # clipped
    y6, p6 = np.array([0, 1, 1, 1, 0, 1]), np.array([0.2, 0.9, 0.8, 0.2, 0.3, 0.4])
    assert windowed_auc(y6, p6, 3) == [(3, 1.0), (6, 0.5)]
    assert windowed_auc(np.array([1, 1, 0, 1]), np.array([0.5] * 4), 2) == [(4, 0.5)]  # 1 class
    whole = Prequential(y, {"m": p})
    tail = whole.after(2)
    assert np.array_equal(tail.labels, [1, 1, 1]) and np.array_equal(tail.probabilities["m"], p[2:])


def test_power_law_fit_recovers_its_exponent():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    fit = fit_power_law(x, 0.5 * x**0.1)
    assert fit["a"] == pytest.approx(0.5) and fit["b"] == pytest.approx(0.1)
    assert fit["r2"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two or more positive"):
        fit_power_law([1.0], [0.5])
    with pytest.raises(ValueError, match="two or more positive"):
        fit_power_law([1.0, 2.0], [0.5, -0.1])


SCHEMA = {"user": Field((), torch.int64, num_ids=4), "item": Field((), torch.int64, num_ids=3)}


def test_counting_is_a_sum_of_beta_smoothed_logits_updated_after_each_batch():
    counts = CountingCTR.for_schema(SCHEMA, prior_strength=2.0)
    x = {"user": torch.tensor([1, 1, 2]), "item": torch.tensor([1, 2, 1])}
    assert torch.allclose(counts.score(x)["model"], torch.full((3,), 0.5))  # nothing seen yet
    counts.learn(Batch(x, torch.tensor([1, 1, 0])))
    p0 = (2 + 1) / (3 + 2)  # the stream's rate under Beta(1, 1)

    def rate(clicks, views):
        return (clicks + 2.0 * p0) / (views + 2.0)

    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    # user 1: 2 of 2; item 1: 1 of 2 -> logit r_u + logit r_i - logit p0
    want = logit(rate(2, 2)) + logit(rate(1, 2)) - logit(p0)
    new = {"user": torch.tensor([1, 3]), "item": torch.tensor([1, 0])}  # user 3, item 0: unseen
    got = counts.score(new)["model"]
    assert got[0] == pytest.approx(1 / (1 + math.exp(-want)), abs=1e-6)
    assert got[1] == pytest.approx(p0, abs=1e-6)  # no evidence: the base rate
    with pytest.raises(ValueError, match="missing \\['user'\\]"):
        CountingCTR.for_schema({"item": SCHEMA["item"]})
    with pytest.raises(ValueError, match="prior_strength must be positive"):
        CountingCTR(4, 3, prior_strength=0)


def test_counting_beats_chance_on_movielens_and_needs_no_seed():
    from skips import require_data

    from streamkd.streams.movielens import movielens_ctr

    stream = require_data(lambda: movielens_ctr(batch_size=100, max_per_segment=4000))
    runs = []
    for _ in range(2):
        counts = CountingCTR.for_schema(stream.schema)
        runs.append(prequential_ctr(counts.score, counts.learn, stream))
        stream.seek(0)
    assert runs[0].auc("model") > 0.65, runs[0].auc("model")
    assert np.array_equal(runs[0].probabilities["model"], runs[1].probabilities["model"])
