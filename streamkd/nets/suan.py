"""SUAN and LightSUAN (Lai et al., "Exploring Scaling Laws of CTR Model for Online Performance
Improvement"): CTR models over a user's behaviour sequence. The online distillation that pairs
them is the strategy :class:`streamkd.strategies.lightsuan.LightSUANKD`.

**SUAN** (Stacked Unified Attention Network), as its released code (``laiweijiang/SUAN``,
TensorFlow 1) builds it, on the fields of :mod:`streamkd.streams.movielens`:

* a target-aware sequence: the user's last ``seq_len`` behaviours in time order, each token
  the concatenation of its side-feature embeddings (movie, rating, genres), then the
  candidate movie's features projected to one token, appended last; a learned position
  table (N(0, 0.02)) and a projected time embedding (of the log day gap) are added;
* one bias for every head and layer: a learned relative-position vector of ``2L+1`` entries
  expanded to a Toeplitz matrix, plus a time bias from a 129-entry table indexed by
  ``clip(int(ln(max(|t_i - t_j|, 1 s)) / 0.301), 0, 128)``, plus the mask: causal, and no
  attention to padding (id 0) except a token's own slot;
* Unified Attention Blocks, in the code's order (post-norm)::

      x = RMSNorm(x)
      x = RMSNorm(SelfAttention(x) + x)            # Q, K, V, O without bias
      c = CrossAttention(x, profile tokens)        # queries: the sequence; keys: age,
                                                   # gender, occupation, zip embeddings
      x = RMSNorm(DualAlign(x, c) + x)             # s = mean(x + c); z = ReLU(W_r s);
                                                   # softmax over (W_1 z, W_2 z) per channel
      x = SwiGLU(x) + x                            # hidden 3 * dim
* the head: an MLP on [the candidate token's output, the profile embeddings, the candidate's
  embeddings], then two logits whose difference is the click logit (a two-class softmax is
  the sigmoid of that difference, so cross-entropy is SUAN's BCE).

**LightSUAN** keeps the blocks and changes two things the paper names (it has no released
code): sparse self-attention, a local window of ``window`` tokens plus every
``dilation``-th token further back (:func:`attention_pattern`); and parallel inference, which
encodes a user's history once and scores many candidates against it
(:meth:`SUAN.score_candidates`). Caching needs behaviour states that do not depend on the
candidate. The causal mask gives that for attention, but SUAN's dual-alignment mean runs over
the whole sequence, candidate included. LightSUAN therefore takes that mean over each
token's prefix, ``s_i = mean(u_1..u_i)``. We chose the prefix mean over a mean over
behaviours only for two reasons:
  * every position becomes causal, so history states cache exactly;
  * the candidate, the last token and the only one the head reads, still gets the mean of
    the whole sequence, as in SUAN.

**Grades** (:data:`GRADES`): depth, width and sequence length grow together. The paper's
grade table is not in the code, so ours are sized for a CPU: grades 1-3 for MovieLens-100K
(its stream carries 30 past ratings), grade 4 for MovieLens-1M, with 50 (a pass over 1M
events at 100 behaviours takes about 100 minutes on two cores, at 50 about 40).

Stated simplifications against the code (the training-side one, the optimizer, is stated
with the strategy):
  * a ReLU head of widths (4·dim, 2·dim) (the code: 1024-512-256 with BatchNorm and Dice);
  * cross-attention scaled by ``sqrt(head size)`` (the code divides by the square root of
    the number of profile tokens, which looks like a slip);
  * the time-bias table is learned (the code wraps it in ``stop_gradient``);
  * the dual-alignment mean runs over every slot, padding included, as in the code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamkd.models import MLP, Classifier, LinearHead
from streamkd.types import Schema

HISTORY = ("hist_item", "hist_rating", "hist_genres", "hist_gap")
TARGET = ("item", "item_genres", "item_year")
PROFILE = ("age", "gender", "occupation", "zip")
TIME_BUCKETS = 128  # the code's num_buckets: a 129-entry table
TIME_SCALE = 0.301  # the code's divisor of ln(seconds)
DAY = 86400.0
MASKED = -1e9  # the code's additive mask value


@dataclass(frozen=True)
class Grade:
    """A model size: ``layers`` blocks, ``embed`` units per side feature (a token is three
    of them, so ``dim = 3 * embed``), the last ``seq_len`` behaviours, ``heads`` heads."""

    layers: int
    embed: int
    seq_len: int
    heads: int = 2

    @property
    def dim(self) -> int:
        return 3 * self.embed


GRADES: dict[int, Grade] = {
    1: Grade(layers=1, embed=8, seq_len=10),
    2: Grade(layers=2, embed=12, seq_len=20),
    3: Grade(layers=3, embed=16, seq_len=30),
    4: Grade(layers=4, embed=20, seq_len=50),
}


def attention_pattern(
    n_tokens: int, window: int | None = None, dilation: int | None = None
) -> Tensor:
    """Which keys (columns) each query (row) may attend to: causal, and with ``window``,
    only the ``window`` nearest tokens (itself included) plus, with ``dilation``, every
    ``dilation``-th token further back."""
    pos = torch.arange(n_tokens)
    return _allowed(pos[:, None] - pos[None, :], window, dilation)


def time_buckets(seconds: Tensor) -> Tensor:
    """SUAN's time-gap bucket: ``clip(int(ln(max(|dt|, 1)) / 0.301), 0, 128)``."""
    return (seconds.abs().clamp_min(1.0).log() / TIME_SCALE).clamp(0, TIME_BUCKETS).long()


def _allowed(distance: Tensor, window: int | None, dilation: int | None) -> Tensor:
    ok = distance >= 0
    if window is not None:
        near = distance < window
        if dilation is not None:
            near = near | (distance % dilation == 0)
        ok = ok & near
    return ok


def _lookup(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]`` for a 1-d table, with a deterministic backward pass."""
    return F.embedding(index, table[:, None]).squeeze(-1)


class RMSNorm(nn.Module):
    """``gamma * x / (rms(x) + eps)`` (the code adds ``eps`` outside the root)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * x / (x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate, self.up = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


@dataclass
class LayerCache:
    """A block's view of the history for later tokens: keys, values and the running sum
    of ``x + c`` over ``count`` slots (the prefix mean's numerator)."""

    keys: Tensor  # (B, heads, L, head_dim)
    values: Tensor
    mixed_sum: Tensor  # (B, dim)
    count: int

    def repeat(self, times: int) -> LayerCache:
        rep = lambda t: t.repeat_interleave(times, 0)  # noqa: E731
        return LayerCache(rep(self.keys), rep(self.values), rep(self.mixed_sum), self.count)


class UnifiedAttentionBlock(nn.Module):
    """One SUAN block (see the module docstring for the order of its parts)."""

    def __init__(self, dim: int, heads: int, prefix_mean: bool) -> None:
        super().__init__()
        if dim % heads or dim % 4:
            raise ValueError(f"dim {dim} must divide by heads ({heads}) and by 4")
        self.heads, self.prefix_mean = heads, prefix_mean
        self.norm_in, self.norm_attn, self.norm_align = RMSNorm(dim), RMSNorm(dim), RMSNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.cq, self.ck, self.cv, self.co = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.squeeze = nn.Linear(dim, dim // 4, bias=False)  # W_r
        self.excite = nn.Linear(dim // 4, 2 * dim, bias=False)  # W_1 and W_2, stacked
        self.ffn = SwiGLU(dim, 3 * dim)

    def forward(
        self, x: Tensor, bias: Tensor, profile: Tensor, past: LayerCache | None = None
    ) -> tuple[Tensor, LayerCache]:
        """``x`` (B, T, dim) are the tokens after ``past``'s (if any); ``bias`` (B, 1, T,
        T_past + T) is added to the attention logits; ``profile`` (B, P, dim)."""
        x = self.norm_in(x)
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        keys, values = k, v
        if past is not None:
            keys, values = torch.cat([past.keys, k], 2), torch.cat([past.values, v], 2)
        attended = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias)
        x = self.norm_attn(self.o(self._merge(attended)) + x)
        c = self._merge(
            F.scaled_dot_product_attention(
                self._split(self.cq(x)),
                self._split(self.ck(profile)),
                self._split(self.cv(profile)),
            )
        )
        c = self.co(c)
        mixed = x + c
        before = past.count if past is not None else 0
        if self.prefix_mean:
            running = mixed.cumsum(1)
            if past is not None:
                running = running + past.mixed_sum[:, None]
            count = torch.arange(before + 1, before + x.shape[1] + 1, device=x.device)
            s = running / count[:, None].to(x.dtype)
        else:
            if past is not None:
                raise ValueError("a sequence-mean block cannot continue a cached history")
            s = mixed.mean(1, keepdim=True)
        gates = self.excite(F.relu(self.squeeze(s))).unflatten(-1, (2, -1)).softmax(-2)
        x = self.norm_align(gates[..., 0, :] * x + gates[..., 1, :] * c + x)
        x = self.ffn(x) + x
        total = mixed.sum(1) + (past.mixed_sum if past is not None else 0)
        return x, LayerCache(keys, values, total, before + mixed.shape[1])

    def _split(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def _merge(self, t: Tensor) -> Tensor:
        return t.transpose(1, 2).flatten(2)


@dataclass
class HistoryCache:
    """A user's history encoded once (:meth:`SUANEncoder.encode_history`)."""

    layers: list[LayerCache]
    seconds: Tensor  # (B, L) behaviour times relative to now
    valid: Tensor  # (B, L)
    profile: Tensor  # (B, P, dim)
    profile_flat: Tensor  # (B, P * embed)


class SUANEncoder(nn.Module):
    """The sequence encoder and the head's MLP: fields in, the head's features out."""

    def __init__(
        self,
        schema: Schema,
        grade: Grade,
        window: int | None = None,
        dilation: int | None = None,
        prefix_mean: bool = False,
    ) -> None:
        super().__init__()
        missing = [f for f in (*HISTORY, *TARGET, *PROFILE) if f not in schema]
        if missing:
            raise ValueError(
                f"SUAN reads the fields of the movielens-ctr stream; missing: {', '.join(missing)}"
            )
        history = schema["hist_item"].shape[0]
        if grade.seq_len > history:
            raise ValueError(
                f"grade needs {grade.seq_len} behaviours but the stream carries {history} "
                f"(build the stream with history >= {grade.seq_len})"
            )
        for name, value in (("window", window), ("dilation", dilation)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if dilation is not None and window is None:
            raise ValueError("dilation sparsifies a local window: set window too (None: dense)")
        self.grade, self.window, self.dilation = grade, window, dilation
        self.prefix_mean = prefix_mean
        e, dim, length = grade.embed, grade.dim, grade.seq_len
        genres = schema["item_genres"].shape[0]
        self.item = nn.Embedding(schema["item"].num_ids, e, padding_idx=0)
        self.rating = nn.Embedding(schema["hist_rating"].num_ids, e)  # 0: none (the candidate)
        self.genres = nn.Linear(genres, e, bias=False)
        self.year = nn.Embedding(schema["item_year"].num_ids, e)
        self.target = nn.Linear(3 * e, dim)  # the candidate's features -> its token
        self.profile = nn.ModuleDict({f: nn.Embedding(schema[f].num_ids, e) for f in PROFILE})
        self.profile_proj = nn.Linear(e, dim)
        self.position = nn.Parameter(torch.randn(length + 1, dim) * 0.02)
        self.time = nn.Linear(1, dim)
        self.relative = nn.Parameter(torch.randn(2 * length + 1) * 0.02)
        self.time_bias = nn.Parameter(torch.randn(TIME_BUCKETS + 1) * 0.02)
        self.blocks = nn.ModuleList(
            UnifiedAttentionBlock(dim, grade.heads, prefix_mean) for _ in range(grade.layers)
        )
        self.mlp = MLP(dim + len(PROFILE) * e + 3 * e, (4 * dim, 2 * dim))
        self.out_dim = self.mlp.out_dim

    @property
    def seq_len(self) -> int:
        return self.grade.seq_len

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        tokens, seconds, valid = self._behaviours(x)
        target, target_flat = self._target(x["item"], x["item_genres"], x["item_year"])
        n = self.seq_len
        tokens = torch.cat([tokens, target[:, None] + self._slot(n)], 1)
        seconds = torch.cat([seconds, seconds.new_zeros(len(seconds), 1)], 1)
        valid = torch.cat([valid, valid.new_ones(len(valid), 1)], 1)
        pos = torch.arange(n + 1, device=tokens.device)
        bias = self._bias(seconds, seconds, pos, pos, valid)
        profile, profile_flat = self._profile(x)
        for block in self.blocks:
            tokens, _ = block(tokens, bias, profile)
        return self.mlp(torch.cat([tokens[:, -1], profile_flat, target_flat], 1))

    def encode_history(self, x: dict[str, Tensor]) -> HistoryCache:
        """Run the history through every block once; the states do not depend on any
        candidate (prefix-mean models only: LightSUAN)."""
        if not self.prefix_mean:
            raise ValueError(
                "SUAN's dual-alignment mean spans the candidate, so its history states depend "
                "on it and cannot be cached; LightSUAN (prefix mean) can"
            )
        tokens, seconds, valid = self._behaviours(x)
        pos = torch.arange(self.seq_len, device=tokens.device)
        bias = self._bias(seconds, seconds, pos, pos, valid)
        profile, profile_flat = self._profile(x)
        layers = []
        for block in self.blocks:
            tokens, cache = block(tokens, bias, profile)
            layers.append(cache)
        return HistoryCache(layers, seconds, valid, profile, profile_flat)

    def score(self, cache: HistoryCache, item: Tensor, genres: Tensor, year: Tensor) -> Tensor:
        """The head's features for ``C`` candidates per user (``item`` (B, C)) against an
        encoded history: (B, C, out_dim)."""
        users, per_user = item.shape
        target, target_flat = self._target(item, genres, year)
        n = self.seq_len
        tokens = (target + self._slot(n)).reshape(users * per_user, 1, -1)
        rep = lambda t: t.repeat_interleave(per_user, 0)  # noqa: E731
        k_seconds = torch.cat([cache.seconds, cache.seconds.new_zeros(users, 1)], 1)
        k_valid = torch.cat([cache.valid, cache.valid.new_ones(users, 1)], 1)
        k_pos = torch.arange(n + 1, device=item.device)
        q_pos = k_pos[-1:]
        bias = rep(self._bias(k_seconds[:, -1:], k_seconds, q_pos, k_pos, k_valid))
        profile = rep(cache.profile)
        for block, past in zip(self.blocks, cache.layers, strict=True):
            tokens, _ = block(tokens, bias, profile, past.repeat(per_user))
        features = torch.cat(
            [tokens[:, -1], rep(cache.profile_flat), target_flat.reshape(users * per_user, -1)], 1
        )
        return self.mlp(features).unflatten(0, (users, per_user))

    # -- parts ------------------------------------------------------------------------------------
    def _behaviours(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        n = self.seq_len
        item, rating = x["hist_item"][:, -n:], x["hist_rating"][:, -n:]
        gap = x["hist_gap"][:, -n:]
        tokens = torch.cat(
            [self.item(item), self.rating(rating), self.genres(x["hist_genres"][:, -n:])], -1
        )
        tokens = tokens + self.position[:n] + self.time(gap[..., None])
        seconds = -torch.expm1(gap) * DAY  # each behaviour's time, relative to the event
        return tokens, seconds, item > 0

    def _target(self, item: Tensor, genres: Tensor, year: Tensor) -> tuple[Tensor, Tensor]:
        flat = torch.cat([self.item(item), self.genres(genres), self.year(year)], -1)
        return self.target(flat), flat

    def _slot(self, index: int) -> Tensor:
        """What the candidate's slot adds: its position and a zero time gap."""
        return self.position[index] + self.time.bias

    def _profile(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        parts = torch.stack([self.profile[f](x[f]) for f in PROFILE], 1)  # (B, P, e)
        return self.profile_proj(parts), parts.flatten(1)

    def _bias(
        self, q_seconds: Tensor, k_seconds: Tensor, q_pos: Tensor, k_pos: Tensor, k_valid: Tensor
    ) -> Tensor:
        """(B, 1, Tq, Tk): relative position + time bias, and the mask."""
        distance = q_pos[:, None] - k_pos[None, :]
        # table lookups by F.embedding: its CPU backward is deterministic, that of indexing
        # (a threaded index_put_ with accumulation) is not
        relative = _lookup(self.relative, self.seq_len - distance)  # (Tq, Tk)
        gap = q_seconds[:, :, None] - k_seconds[:, None, :]
        timed = _lookup(self.time_bias, time_buckets(gap))  # (B, Tq, Tk)
        allowed = _allowed(distance, self.window, self.dilation) & (
            k_valid[:, None, :] | (distance == 0)
        )
        return (relative + timed).masked_fill(~allowed, MASKED)[:, None]


class SUAN(Classifier):
    """A SUAN CTR model at ``grade`` (an int key of :data:`GRADES` or a :class:`Grade`):
    fields of ``movielens-ctr`` in, two logits out (``click_logit`` is their difference)."""

    window: int | None = None
    dilation: int | None = None
    prefix_mean = False

    def __init__(self, schema: Schema, grade: int | Grade = 1) -> None:
        if isinstance(grade, int):
            if grade not in GRADES:
                raise ValueError(f"unknown grade {grade}; defined: {sorted(GRADES)}")
            grade = GRADES[grade]
        encoder = SUANEncoder(schema, grade, self.window, self.dilation, self.prefix_mean)
        super().__init__(encoder, LinearHead(encoder.out_dim, 2), None, None, schema)

    @property
    def grade(self) -> Grade:
        return self.backbone.grade

    def click_logit(self, x: dict[str, Tensor]) -> Tensor:
        logits = self(x)
        return logits[:, 1] - logits[:, 0]

    def score_candidates(self, history: dict[str, Tensor], candidates: dict[str, Tensor]):
        """Click logits (B, C) of ``C`` candidates for each of ``B`` users.

        ``history`` holds the history and profile fields of each user (B rows);
        ``candidates`` holds ``item`` (B, C), ``item_genres`` (B, C, genres) and
        ``item_year`` (B, C). LightSUAN encodes each history once and attends from each
        candidate to the cached states; SUAN runs the full sequence once per candidate.
        """
        missing = [f for f in (*HISTORY, *PROFILE) if f not in history]
        missing += [f"candidates[{f!r}]" for f in TARGET if f not in candidates]
        if missing:
            raise ValueError(f"score_candidates needs {', '.join(missing)}")
        item, genres, year = (candidates[f] for f in TARGET)
        users = len(history["hist_item"])
        if item.dim() != 2 or len(item) != users:
            raise ValueError(
                f"candidates['item'] must be (users, candidates) with {users} users, got shape "
                f"{tuple(item.shape)}"
            )
        n_genres = self.input_schema["item_genres"].shape[0]
        if genres.shape != (*item.shape, n_genres) or year.shape != item.shape:
            raise ValueError(
                f"candidates: item_genres must be {(*item.shape, n_genres)} and item_year "
                f"{tuple(item.shape)}, got {tuple(genres.shape)} and {tuple(year.shape)}"
            )
        if self.prefix_mean:
            features = self.backbone.score(
                self.backbone.encode_history(history), item, genres, year
            )
        else:
            per_user = item.shape[1]
            x = {k: history[k].repeat_interleave(per_user, 0) for k in (*HISTORY, *PROFILE)}
            x.update(
                item=item.flatten(), item_genres=genres.flatten(0, 1), item_year=year.flatten()
            )
            features = self.backbone(x).unflatten(0, item.shape)
        logits = self.head(features)
        return logits[..., 1] - logits[..., 0]


class LightSUAN(SUAN):
    """SUAN with sparse self-attention (a local ``window`` plus every ``dilation``-th token)
    and the prefix dual-alignment mean that makes parallel candidate scoring exact."""

    prefix_mean = True

    def __init__(
        self, schema: Schema, grade: int | Grade = 1, window: int = 4, dilation: int = 3
    ) -> None:
        self.window, self.dilation = window, dilation
        super().__init__(schema, grade)
