"""VectorIndex: one wrapper over FAISS with stable int64 ids.

FAISS is imported after torch (both bundle an OpenMP runtime; torch first avoids the known
clash); its thread count, from ``STREAMKD_FAISS_THREADS`` or torch's, is set in the searching
thread at each search (OpenMP's count is per thread).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch

from streamkd.atomic import atomic_path

# isort: split
import faiss  # after torch, always

FAISS_THREADS = int(os.environ.get("STREAMKD_FAISS_THREADS", torch.get_num_threads()))

METRICS = ("ip", "l2")


class VectorIndex:
    """Exact nearest-neighbour search over vectors with caller-chosen, stable ids.

    ``IndexIDMap2`` over ``IndexFlatIP`` (``metric="ip"``) or ``IndexFlatL2``. Adding an id that
    is already present replaces its vector. With ``normalize=True`` vectors are L2-normalised
    on the way in, so ``ip`` becomes cosine similarity. Scores are returned as given by FAISS:
    similarities for ``ip`` (higher is nearer), squared distances for ``l2`` (lower is nearer).

    Examples:
        >>> import torch
        >>> index = VectorIndex(2, metric="l2")
        >>> index.add(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]]), ids=[10, 11, 12])
        >>> scores, ids = index.search(torch.tensor([[0.9, 0.1]]), k=2)
        >>> ids.tolist(), [round(s, 2) for s in scores[0].tolist()]  # squared distances
        ([[11, 10]], [0.02, 0.82])
        >>> index.remove([11]), len(index), 11 in index
        (1, 2, False)
        >>> index.search(torch.tensor([[0.9, 0.1]]), k=3)[1].tolist()  # -1: fewer than k stored
        [[10, 12, -1]]
    """

    def __init__(self, dim: int, metric: str = "ip", normalize: bool = False) -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim, self.metric, self.normalize = int(dim), metric, normalize
        flat = faiss.IndexFlatIP(self.dim) if metric == "ip" else faiss.IndexFlatL2(self.dim)
        self._index = faiss.IndexIDMap2(flat)
        self._ids: set[int] = set()

    def __len__(self) -> int:
        return self._index.ntotal

    def __contains__(self, id_: int) -> bool:
        return int(id_) in self._ids

    def _as_array(self, vectors: torch.Tensor | np.ndarray) -> np.ndarray:
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().to("cpu", torch.float32).numpy()
        arr = np.ascontiguousarray(vectors, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("vectors contain NaN or infinite values")
        if self.normalize:
            arr = arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)
        return arr

    @staticmethod
    def _as_ids(ids: torch.Tensor | np.ndarray | list[int]) -> np.ndarray:
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        return np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))

    def add(self, vectors: torch.Tensor | np.ndarray, ids: torch.Tensor | np.ndarray | list[int]):
        """Add vectors under ``ids``; an id already present has its vector replaced."""
        arr, id_arr = self._as_array(vectors), self._as_ids(ids)
        if len(arr) != len(id_arr):
            raise ValueError(f"got {len(arr)} vectors but {len(id_arr)} ids")
        if len(np.unique(id_arr)) != len(id_arr):
            raise ValueError("ids passed to one add() call must be unique")
        present = [i for i in id_arr.tolist() if i in self._ids]
        if present:
            self.remove(present)
        self._index.add_with_ids(arr, id_arr)
        self._ids.update(id_arr.tolist())

    def remove(self, ids: torch.Tensor | np.ndarray | list[int]) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed."""
        id_arr = self._as_ids(ids)
        if len(id_arr) == 0:
            return 0
        removed = self._index.remove_ids(faiss.IDSelectorBatch(id_arr))
        self._ids.difference_update(id_arr.tolist())
        return int(removed)

    def reconstruct(self, id_: int) -> np.ndarray:
        if int(id_) not in self._ids:
            raise KeyError(f"id {id_} is not in the index")
        return self._index.reconstruct(int(id_))

    def search(
        self,
        queries: torch.Tensor | np.ndarray,
        k: int,
        among: torch.Tensor | np.ndarray | list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest stored vectors per query: ``(scores, ids)``, each ``(n, k)``;
        with ``among``, only those ids are candidates (an exact search over the subset).

        Where fewer than ``k`` vectors are stored, missing slots hold id ``-1``.
        """
        q = self._as_array(queries)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        params = None
        if among is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(self._as_ids(among)))
        with _threads_for(len(q)):
            scores, ids = self._index.search(q, int(k), params=params)
        return torch.from_numpy(scores), torch.from_numpy(ids)

    def range_search(
        self, query: torch.Tensor | np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every stored vector within ``threshold`` of one query: ``(scores, ids)``, nearest
        first -- similarity above it for ``ip``, squared distance below it for ``l2``."""
        q = self._as_array(query)
        if len(q) != 1:
            raise ValueError(f"range_search takes one query, got {len(q)}")
        with _threads_for(1):
            _, scores, ids = self._index.range_search(q, float(threshold))
        order = np.argsort(-scores if self.metric == "ip" else scores, kind="stable")
        return scores[order], ids[order]

    def reset(self) -> None:
        self._index.reset()
        self._ids.clear()

    def save(self, path: str | Path) -> None:
        """Write the index (vectors and ids) to ``path`` atomically."""
        with atomic_path(path) as tmp:
            faiss.write_index(self._index, str(tmp))

    @classmethod
    def load(cls, path: str | Path, normalize: bool = False) -> VectorIndex:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no index file at {path}")
        raw = faiss.read_index(str(path))
        if not isinstance(raw, faiss.IndexIDMap2):
            raise ValueError(f"{path} does not hold an IndexIDMap2 index")
        metric = "ip" if raw.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
        obj = cls(raw.d, metric=metric, normalize=normalize)
        obj._index = raw
        obj._ids = set(faiss.vector_to_array(raw.id_map).tolist())
        return obj


@contextlib.contextmanager
def _threads_for(n_queries: int):
    """A few queries are scanned on one thread: OpenMP's fork-join costs more than it saves
    (one query over 100,000 x 128 floats: 2 ms on one thread, 6 ms on two); more queries on
    ``FAISS_THREADS``. OpenMP's count belongs to the calling thread: set at every search."""
    before = faiss.omp_get_max_threads()  # restored: torch may share the OpenMP runtime
    faiss.omp_set_num_threads(FAISS_THREADS if n_queries >= 16 else 1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
