"""MovieLens-100K and -1M as CTR streams: real data (the wheels or a folder), time order, no
label of an unrevealed event in any history, and a learner that beats chance on it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from skips import require_data

from streamkd.data import cached_arrays
from streamkd.streams.movielens import (
    GENRES,
    ML_1M,
    load_movielens,
    movielens_1m_ctr,
    movielens_ctr,
)

DATA = require_data(load_movielens, module=True)  # `make data` fetches the wheels


@pytest.fixture(scope="module")
def data_1m():
    return require_data(lambda: load_movielens(release=ML_1M))


def test_the_tables_are_movielens_100k_in_time_order():
    assert len(DATA.rating) == 100_000 and set(np.unique(DATA.rating)) == {1, 2, 3, 4, 5}
    assert np.all(np.diff(DATA.time) >= 0)
    assert abs((DATA.rating >= 4).mean() - 0.55375) < 1e-9  # 55,375 ratings of 4 or 5
    assert DATA.user.max() == 943 and DATA.item.max() == 1682
    toy_story = DATA.genres[1]  # Animation, Children's, Comedy
    assert toy_story.sum() == 3 and toy_story[3] == toy_story[4] == toy_story[5] == 1


def test_the_tables_are_movielens_1m_in_time_order(data_1m):
    assert len(data_1m.rating) == 1_000_209 and set(np.unique(data_1m.rating)) == {1, 2, 3, 4, 5}
    assert np.all(np.diff(data_1m.time) >= 0)
    assert (data_1m.rating >= 4).sum() == 575_281  # GroupLens' ML-1M: 57.5% of 4 or 5
    assert data_1m.n_users == 6040 and data_1m.n_items == 3883
    assert len(np.unique(data_1m.user)) == 6040 and len(np.unique(data_1m.item)) == 3706
    toy_story = data_1m.genres[1]  # the item file's first movie: Animation Children's Comedy
    assert toy_story.sum() == 3 and toy_story[GENRES.index("Animation")] == 1
    assert data_1m.genres[:, GENRES.index("unknown")].sum() == 0  # ML-1M has no such genre
    assert data_1m.occupation.max() == 20 and data_1m.age[1] == 0  # user 1: under 18


@pytest.mark.parametrize("release", ["100k", "1m"])
def test_each_history_holds_the_users_ratings_before_the_batch_only(release, request):
    if release == "100k":
        make, data, batch = movielens_ctr, DATA, 10
    else:
        make, data, batch = movielens_1m_ctr, request.getfixturevalue("data_1m"), 100
    stream = make(batch_size=batch, history=5)
    # the first two periods, read as the learner reads them; the second starts at a row
    # that is no multiple of the batch size, and its batches start there
    n = stream.segments[0].n_train + stream.segments[1].n_train
    second = stream.segments[0].n_train
    rows = [0, batch - 1, batch, 1234, second - 1, second, second + 1, second + batch, n - 1]
    parts = [b.x for b in itertools.takewhile(lambda b: b.segment < 2, stream)]
    x = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    rows_of = np.arange(n)
    within = np.where(rows_of < second, rows_of, rows_of - second)
    start = np.where(rows_of < second, 0, second) + within // batch * batch
    for i in rows:
        u = data.user[i]
        before = np.flatnonzero(data.user[: start[i]] == u)[-5:]  # the user's last five
        items = x["hist_item"][i].numpy()
        assert list(items[items > 0]) == list(data.item[before])
        assert list(x["hist_rating"][i].numpy()[items > 0]) == list(data.rating[before])
        assert x["item"][i] == data.item[i] and x["user"][i] == u
    # a user's burst inside one batch never sees itself: the same user twice in a batch
    # has the same history for both rows
    for b in range(0, second - batch, batch):
        users = data.user[b : b + batch]
        dup = [k for k in range(batch) if (users == users[k]).sum() > 1]
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


def test_grouplens_own_1m_files_give_the_tables_of_the_wheel(tmp_path, monkeypatch, data_1m):
    """``ratings.dat``/``movies.dat``/``users.dat`` (movie ids with gaps, ``::``): written
    from the wheel's tables for the first 5,000 ratings, read back the same."""
    monkeypatch.setenv("STREAMKD_CACHE", str(tmp_path / "cache"))  # its parse, cached apart
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    movie_id = 2 * np.arange(data_1m.n_items + 1) + 5  # GroupLens' ids have gaps
    n = 5000
    ratings = [
        f"{data_1m.user[i]}::{movie_id[data_1m.item[i]]}::{data_1m.rating[i]}::{int(data_1m.time[i])}"
        for i in range(n)
    ]
    (folder / "ratings.dat").write_text("\n".join(ratings) + "\n", encoding="latin-1")
    movies = []
    for i in range(1, data_1m.n_items + 1):
        names = [g for g, on in zip(GENRES, data_1m.genres[i], strict=True) if on]
        year = 1920 + 10 * data_1m.year[i]  # the decade bucket back to a year in it
        movies.append(f"{movie_id[i]}::Movie {i} ({year})::{'|'.join(names)}")
    (folder / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    ages, occupations = (1, 18, 25, 35, 45, 50, 56), data_1m.occupation
    users = [
        f"{u}::{'FM'[1 - data_1m.gender[u]]}::{ages[data_1m.age[u]]}::{occupations[u]}::"
        f"{data_1m.zip[u] if data_1m.zip[u] < 10 else 'x'}2345"
        for u in range(1, data_1m.n_users + 1)
    ]
    (folder / "users.dat").write_text("\n".join(users) + "\n", encoding="latin-1")
    read = load_movielens(tmp_path, ML_1M)
    for name in ("user", "item", "rating", "time"):
        assert np.array_equal(getattr(read, name), getattr(data_1m, name)[:n]), name
    for name in ("genres", "year", "age", "gender", "occupation", "zip"):
        assert np.array_equal(getattr(read, name), getattr(data_1m, name)), name


def test_parsed_tables_are_cached_once_and_a_damaged_file_is_built_again(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMKD_CACHE", str(tmp_path))
    built = []

    def build():
        built.append(1)
        return {"a": np.arange(3)}

    assert cached_arrays("t", "k1", build)["a"].tolist() == [0, 1, 2]
    assert cached_arrays("t", "k1", build)["a"].tolist() == [0, 1, 2] and len(built) == 1
    (tmp_path / "t-k1.npz").write_bytes(b"PK\x03\x04 torn")
    assert cached_arrays("t", "k1", build)["a"].tolist() == [0, 1, 2] and len(built) == 2
    assert cached_arrays("t", "k2", build) and len(built) == 3  # another key: built anew
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t-k1.npz", "t-k2.npz"]
