"""DROC's correction memory: corrections distilled into a knowledge base and retrieved by a
cascade, so the same mistake is corrected once.

Each :class:`MemoryEntry` holds what one correction (or several, merged) taught: a task
``category`` (DROC's task category, e.g. the verb "open"; ``"label"`` for a classifier), the
task ``text`` it was made in, a ``kind`` and ``value`` -- parameter offsets (skill level), a
label (plan level: "that is a cat") or a constraint (plan level: "open the drawer first") --
and counts and times for merging and eviction. Its text embedding (a frozen sentence encoder,
:mod:`streamkd.encoders`) and visual embedding (the learner's frozen backbone, or any image
encoder) live in FAISS :class:`~streamkd.index.VectorIndex`es under the entry's stable id.

Why two kinds of index, one pair per category: the text and the visual embeddings live in
different spaces of different widths, and the cascade searches each in turn. The visual index
holds one vector per entry, under the entry's stable id; the text index one per distinct task
text (entries repeat their task's text: 100,000 entries may share 400 texts), whose id maps
to its entries. One pair per category makes the cascade's first stage a dictionary lookup,
and each later search scans only that category.

Retrieval (:meth:`CorrectionMemory.retrieve`) is DROC's cascade, not a weighted score:

1. **category / text relevance** -- the entries of the query's category; with a task text,
   only those whose text is as relevant as the best match (within ``text_margin`` cosine).
   DROC asks GPT-4 which stored tasks share the new one's category; the category key and the
   sentence-encoder similarity stand in for it. ``min_relevance`` is the relevance floor:
   below it, no stored text is relevant and nothing is retrieved (DROC's LLM answers
   "nothing relevant").
2. **text -> image** -- with a ``text_to_image`` map (text embedding -> a query in the visual
   space, e.g. CLIP's text tower) and an ``object_text``: the ``top_text_image`` (3, as DROC)
   entries whose images best match the text. DROC uses CLIP ViT-g-14 here; streamkd ships no
   joint text-image model, so by default this stage is skipped -- as DROC skips it when the
   query names no visual attribute.
3. **image -> image** -- the nearest by visual cosine similarity (DROC: L2 between DINOv2
   features; on unit vectors the order is the same).

:meth:`distill` merges near-duplicates into one generalisable entry (same category, kind and
text, visual cosine above ``merge_similarity``): offsets averaged by count, the majority label,
one copy of a constraint. When full, the least recently useful entry goes (:meth:`touch` marks
an entry useful when its knowledge is applied).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from streamkd.index import VectorIndex

KINDS = ("offset", "label", "constraint")
INDEXED = ("entries", "_visual", "_texts", "_text_id", "_members", "_next_text_id")


@dataclass
class MemoryEntry:
    """One piece of distilled knowledge (see the module docstring)."""

    id: int
    category: str
    text: str
    kind: str
    value: Any  # offsets: list of floats; label: int or str; constraint: str
    count: int = 1
    votes: dict[str, int] = field(default_factory=dict)  # labels: corrections per label
    created: int = 0
    last_used: int = 0
    uses: int = 0


@dataclass
class Retrieved:
    """An entry the cascade returned, with its image similarity and text relevance."""

    entry: MemoryEntry
    image_similarity: float
    text_similarity: float | None
    stages: tuple[str, ...]


class CorrectionMemory:
    """A capacity-bounded correction knowledge base over FAISS indexes (module docstring)."""

    def __init__(
        self,
        visual_dim: int,
        text_dim: int = 384,
        *,
        capacity: int = 10_000,
        text_margin: float = 0.02,
        top_text_image: int = 3,
        merge_similarity: float = 0.9,
        text_to_image: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        if not 0.0 <= text_margin <= 2.0:
            raise ValueError(f"text_margin must be in [0, 2], got {text_margin}")
        if not -1.0 <= merge_similarity <= 1.0:
            raise ValueError(f"merge_similarity must be in [-1, 1], got {merge_similarity}")
        self.visual_dim, self.text_dim = int(visual_dim), int(text_dim)
        self.capacity, self.text_margin = int(capacity), float(text_margin)
        self.top_text_image, self.merge_similarity = int(top_text_image), merge_similarity
        self.text_to_image = text_to_image
        self._next_id = 0
        self._clear()
        self.clock = 0  # advances on every add and retrieval: recency for eviction

    def __len__(self) -> int:
        return len(self.entries)

    def categories(self) -> list[str]:
        return sorted(self._visual)

    # -- writing -----------------------------------------------------------------------------
    def add(
        self,
        category: str,
        text: str,
        text_embedding: np.ndarray,
        visual_embedding: np.ndarray,
        kind: str,
        value: Any,
    ) -> int:
        """Store one correction's knowledge; returns its id. Evicts the least recently
        useful entry first when the memory is full."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
        if not isinstance(category, str) or not category:
            raise ValueError("category must be a non-empty string")
        text_vec = _row(text_embedding, self.text_dim, "text_embedding")
        visual_vec = _row(visual_embedding, self.visual_dim, "visual_embedding")
        if kind == "offset":
            if isinstance(value, str) or not hasattr(value, "__len__"):
                raise ValueError(f"an offset is a sequence of numbers, got {value!r}")
            value = [float(v) for v in value]
        elif kind == "label":
            if not isinstance(value, str | int | np.integer) or isinstance(value, bool):
                raise ValueError(f"a label is an int or a string, got {value!r}")
            value = value if isinstance(value, str) else int(value)
        elif not isinstance(value, str):
            raise ValueError(f"a constraint is text, got {value!r}")
        while len(self.entries) >= self.capacity:
            self.evict(1)
        self.clock += 1
        entry = MemoryEntry(
            self._next_id,
            category,
            text,
            kind,
            value,
            votes={str(value): 1} if kind == "label" else {},
            created=self.clock,
            last_used=self.clock,
        )
        self._store(entry, text_vec, visual_vec)
        self._next_id += 1
        return entry.id

    def _store(self, entry: MemoryEntry, text_vec: np.ndarray, visual_vec: np.ndarray) -> None:
        key = (entry.category, entry.text)
        if key not in self._text_id:  # one vector per distinct task text of a category
            self._text_id[key] = self._next_text_id
            self._members[self._next_text_id] = set()
            if entry.category not in self._texts:
                self._texts[entry.category] = VectorIndex(self.text_dim, "ip", normalize=True)
            self._texts[entry.category].add(text_vec, [self._next_text_id])
            self._next_text_id += 1
        self._members[self._text_id[key]].add(entry.id)
        if entry.category not in self._visual:
            self._visual[entry.category] = VectorIndex(self.visual_dim, "ip", normalize=True)
        self._visual[entry.category].add(visual_vec, [entry.id])
        self.entries[entry.id] = entry

    def _clear(self) -> None:
        self.entries: dict[int, MemoryEntry] = {}
        self._visual: dict[str, VectorIndex] = {}  # per category, by entry id
        self._texts: dict[str, VectorIndex] = {}  # per category, by text id
        self._text_id: dict[tuple[str, str], int] = {}  # (category, text) -> text id
        self._members: dict[int, set[int]] = {}  # text id -> entry ids
        self._next_text_id = 0

    def remove(self, ids: list[int]) -> None:
        missing = [i for i in ids if int(i) not in self.entries]
        if missing:
            raise KeyError(f"no entries {missing[:10]} in the memory")
        for id_ in ids:
            entry = self.entries.pop(int(id_))
            key = (entry.category, entry.text)
            tid = self._text_id[key]
            self._members[tid].discard(entry.id)
            if not self._members[tid]:
                self._texts[entry.category].remove([tid])
                del self._members[tid], self._text_id[key]
            self._visual[entry.category].remove([entry.id])
            if not len(self._visual[entry.category]):
                del self._texts[entry.category], self._visual[entry.category]

    def evict(self, n: int = 1) -> list[int]:
        """Remove the ``n`` least recently useful entries (then the least used, the oldest)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        order = sorted(self.entries.values(), key=lambda e: (e.last_used, e.uses, e.created))
        gone = [e.id for e in order[:n]]
        self.remove(gone)
        return gone

    def touch(self, id_: int, uses: int = 1) -> None:
        """Mark an entry useful now (its knowledge was applied ``uses`` times since the last
        touch)."""
        entry = self.entries[int(id_)]
        self.clock += 1
        entry.last_used, entry.uses = self.clock, entry.uses + int(uses)

    # -- retrieval ---------------------------------------------------------------------------
    def retrieve(
        self,
        category: str,
        visual_embedding: np.ndarray,
        text_embedding: np.ndarray | None = None,
        *,
        object_text_embedding: np.ndarray | None = None,
        k: int = 1,
        min_relevance: float | None = None,
    ) -> list[Retrieved]:
        """DROC's cascade for one query (module docstring): category and text relevance,
        then text -> image (when configured), then the ``k`` nearest images. With
        ``min_relevance``, nothing is returned when no stored text of the category is at
        least that relevant (cosine) to the query's: DROC's "no relevant knowledge"."""
        if min_relevance is not None and text_embedding is None:
            raise ValueError("min_relevance needs a text_embedding to measure relevance")
        self.clock += 1
        if category not in self._visual:
            return []
        text_index, visual_index = self._texts[category], self._visual[category]
        visual = _row(visual_embedding, self.visual_dim, "visual_embedding")
        stages = ["category"]
        candidates: np.ndarray | None = None  # None: the whole category
        relevance: dict[int, float] = {}
        if text_embedding is not None:
            text = _row(text_embedding, self.text_dim, "text_embedding")
            best = float(text_index.search(text, 1)[0][0, 0])
            if min_relevance is not None and best < min_relevance:
                return []
            scores, tids = text_index.range_search(text, best - self.text_margin - 1e-6)
            for score, tid in zip(scores.tolist(), tids.tolist(), strict=True):
                relevance.update(dict.fromkeys(self._members[tid], score))
            candidates = np.fromiter(relevance, dtype=np.int64, count=len(relevance))
            stages.append("text")
        if self.text_to_image is not None and object_text_embedding is not None:
            query = self.text_to_image(_row(object_text_embedding, self.text_dim, "object text"))
            _, ids = visual_index.search(query, self.top_text_image, among=candidates)
            candidates = ids[0][ids[0] >= 0].numpy()
            stages.append("text->image")
        sims, ids = visual_index.search(visual, k, among=candidates)
        out = []
        for sim, id_ in zip(sims[0].tolist(), ids[0].tolist(), strict=True):
            if id_ >= 0:
                entry = self.entries[id_]
                out.append(Retrieved(entry, sim, relevance.get(id_), (*stages, "image")))
        return out

    def nearest(
        self, category: str, visual_embeddings: np.ndarray
    ) -> tuple[list[float], list[MemoryEntry | None]]:
        """The image stage alone, for a batch of queries without text (a classifier's
        inputs): per row, the nearest entry of ``category`` and its cosine similarity."""
        self.clock += 1
        visual = np.asarray(visual_embeddings, dtype=np.float32).reshape(-1, self.visual_dim)
        if category not in self._visual:
            return [float("-inf")] * len(visual), [None] * len(visual)
        sims, ids = self._visual[category].search(visual, 1)
        entries = [self.entries.get(int(i)) if i >= 0 else None for i in ids[:, 0].tolist()]
        return sims[:, 0].tolist(), entries

    def vectors(self, category: str) -> tuple[list[int], np.ndarray]:
        """The ids of ``category``'s entries (ascending) and their stored image embeddings,
        one row each (for a caller that searches them elsewhere, e.g. on a GPU)."""
        ids = sorted(e.id for e in self.entries.values() if e.category == category)
        if not ids:
            return [], np.zeros((0, self.visual_dim), dtype=np.float32)
        index = self._visual[category]
        return ids, np.stack([index.reconstruct(i) for i in ids]).astype(np.float32)

    # -- distillation ------------------------------------------------------------------------
    def distill(self) -> int:
        """Merge near-duplicates (same category, kind and text; visual cosine at least
        ``merge_similarity``) into one entry each; returns how many entries were merged away."""
        merged = 0
        groups: dict[tuple[str, str, str], list[MemoryEntry]] = {}
        for entry in sorted(self.entries.values(), key=lambda e: e.id):
            width = len(entry.value) if entry.kind == "offset" else 0  # offsets merge alike
            groups.setdefault((entry.category, entry.kind, entry.text, width), []).append(entry)
        for (category, *_), members in groups.items():
            if len(members) < 2:
                continue
            visual = self._visual[category]
            vectors = np.stack([visual.reconstruct(e.id) for e in members])
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            keepers: list[int] = []  # clusters in id order: the oldest entry keeps each
            for i in range(len(members)):
                sims = [float(vectors[i] @ vectors[j]) for j in keepers]
                if sims and max(sims) >= self.merge_similarity:  # into the nearest cluster
                    j = keepers[int(np.argmax(sims))]
                    self._merge(members[j], members[i], vectors, i, j)
                    merged += 1
                else:
                    keepers.append(i)
        return merged

    def _merge(self, keep: MemoryEntry, other: MemoryEntry, vectors, i: int, j: int) -> None:
        n, m = keep.count, other.count
        if keep.kind == "offset":
            keep.value = [
                (n * a + m * b) / (n + m) for a, b in zip(keep.value, other.value, strict=True)
            ]
        elif keep.kind == "label":
            votes = Counter(keep.votes) + Counter(other.votes)
            keep.votes = dict(votes)
            winner = max(votes.items(), key=lambda kv: (kv[1], kv[0]))[0]
            keep.value = int(winner) if winner.lstrip("-").isdigit() else winner
        vectors[j] = (n * vectors[j] + m * vectors[i]) / (n + m)
        vectors[j] /= max(float(np.linalg.norm(vectors[j])), 1e-12)
        self._visual[keep.category].add(vectors[j], [keep.id])  # the cluster's centre
        keep.count, keep.uses = n + m, keep.uses + other.uses
        keep.last_used = max(keep.last_used, other.last_used)
        self.remove([other.id])

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors and a JSON string only: loads under ``torch.load(weights_only=True)``."""
        ordered = sorted(self.entries.values(), key=lambda e: e.id)
        text = np.zeros((len(ordered), self.text_dim), dtype=np.float32)
        visual = np.zeros((len(ordered), self.visual_dim), dtype=np.float32)
        for row, e in enumerate(ordered):
            text[row] = self._texts[e.category].reconstruct(self._text_id[(e.category, e.text)])
            visual[row] = self._visual[e.category].reconstruct(e.id)
        return {
            "entries": json.dumps([asdict(e) for e in ordered]),
            "text": torch.from_numpy(text),
            "visual": torch.from_numpy(visual),
            "next_id": self._next_id,
            "clock": self.clock,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        entries = [MemoryEntry(**e) for e in json.loads(state["entries"])]
        text, visual = state["text"].numpy(), state["visual"].numpy()
        if text.shape != (len(entries), self.text_dim) or visual.shape != (
            len(entries),
            self.visual_dim,
        ):
            raise ValueError(
                f"memory state holds {len(entries)} entries with text {tuple(text.shape)} and "
                f"visual {tuple(visual.shape)} embeddings; this memory takes widths "
                f"{self.text_dim} and {self.visual_dim}"
            )
        self._clear()
        for row, e in enumerate(entries):
            self._store(e, text[row : row + 1], visual[row : row + 1])
        self._next_id, self.clock = int(state["next_id"]), int(state["clock"])

    def __getstate__(self) -> dict[str, Any]:  # pickles (FAISS indexes do not)
        settings = {k: v for k, v in vars(self).items() if k not in INDEXED}
        return {"settings": settings, "state": self.state_dict()}

    def __setstate__(self, data: dict[str, Any]) -> None:
        vars(self).update(data["settings"])
        self.load_state_dict(data["state"])


def _row(vector: np.ndarray | torch.Tensor, dim: int, what: str) -> np.ndarray:
    if isinstance(vector, torch.Tensor):
        vector = vector.detach().cpu().numpy()
    arr = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    if arr.shape[1] != dim:
        raise ValueError(f"{what} has width {arr.shape[1]}, expected {dim}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return arr
