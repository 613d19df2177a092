"""MovieLens-100K as a CTR stream: real data (the recbole wheel or a folder), time order, no
label of an unrevealed event in any history, and a learner that beats chance on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skips import require_data

from streamkd.streams.movielens import load_movielens, movielens_ctr

DATA = require_data(load_movielens, module=True)  # `make data` fetches the wheel


def test_the_tables_are_movielens_100k_in_time_order():
    assert len(DATA.rating) == 100_000 and set(np.unique(DATA.rating)) == {1, 2, 3, 4, 5}
    assert np.all(np.diff(DATA.time) >= 0)
    assert abs((DATA.rating >= 4).mean() - 0.55375) < 1e-9  # 55,375 ratings of 4 or 5
    assert DATA.user.max() == 943 and DATA.item.max() == 1682
    toy_story = DATA.genres[1]  # Animation, Children's, Comedy
    assert toy_story.sum() == 3 and toy_story[3] == toy_story[4] == toy_story[5] == 1


def test_each_history_holds_the_users_ratings_before_the_batch_only():
    stream = movielens_ctr(batch_size=10, history=5)
    n = stream.segments[0].n_train  # the first period, read as the learner reads it
    parts = [batch.x for batch, _ in zip(stream, range(n // 10), strict=False)]
    x = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    rows = np.arange(n)
    start = rows // 10 * 10
    for i in [0, 9, 10, 1234, 5000, n - 1]:
        u = DATA.user[i]
        before = np.flatnonzero(DATA.user[: start[i]] == u)[-5:]  # the user's last five
        items = x["hist_item"][i].numpy()
        assert list(items[items > 0]) == list(DATA.item[before])
        assert list(x["hist_rating"][i].numpy()[items > 0]) == list(DATA.rating[before])
        assert x["item"][i] == DATA.item[i]
    # a user's burst inside one batch never sees itself: the same user twice in a batch
    # has the same history for both rows
    for b in range(0, n - 10, 10):
        users = DATA.user[b : b + 10]
        dup = [k for k in range(10) if (users == users[k]).sum() > 1]
        if len(dup) >= 2:
            h = x["hist_item"][b + np.asarray(dup)]
            assert torch.equal(h[0], h[1])
            break
    else:
        pytest.fail("no batch with one user twice")


def test_batches_pass_their_schema_and_a_learner_beats_chance():
    from sklearn.metrics import roc_auc_score

    from streamkd.experiment import make_model, make_strategy

    stream = movielens_ctr(max_per_segment=3000, batch_size=32)
    model = make_model(stream, seed=0)
    strategy = make_strategy("er", model, memory=500, seed=0, max_classes=2, lr=0.05)
    scores, labels = [], []
    for batch in stream:
        strategy.validate(batch)  # the schema: shapes, dtypes, id ranges
        if strategy.samples_seen:  # test, then train
            scores.append(torch.softmax(strategy.predict(batch.x), 1)[:, 1])
            labels.append(batch.y)
        strategy.observe(batch)
    auc = roc_auc_score(torch.cat(labels).numpy(), torch.cat(scores).numpy())
    assert auc > 0.6, auc
