"""ReplayBuffer: fixed-capacity memory of past samples, preallocated on the strategy's device."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from streamkd.index import VectorIndex
from streamkd.types import Inputs, inputs_len, take, to_device

POLICIES = ("reservoir", "class_balanced")


@dataclass
class Replay:
    """Samples drawn from a buffer: inputs, labels, their slots and any stored extras."""

    x: Inputs
    y: Tensor
    idx: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)
    y_host: Tensor | None = None  # the labels on the host, when the slots were chosen there

    def __len__(self) -> int:
        return len(self.y)


class ReplayBuffer:
    """A fixed-capacity replay memory.

    Storage is allocated once, on the first insertion, as tensors on ``device``; inputs keep
    their dtype (images stay ``uint8``). Multi-field inputs (a dict of tensors) are stored
    as one preallocated tensor per field. Each slot also records its insertion step (the
    stream index of the sample). ``extras`` such as logits or features are stored alongside
    when passed to :meth:`add` (their shapes are fixed by the first call).

    Insertion policies:
      * ``reservoir`` -- reservoir sampling (Vitter 1985): every sample seen so far is in the
        buffer with equal probability ``capacity / seen``.
      * ``class_balanced`` -- CBRS (Chrysakis & Moens, ICML 2020): while full, a sample of a
        class that is not among the largest replaces a random sample of a largest class;
        otherwise it replaces a random sample of its own class with probability m_c / n_c.

    Retrieval: :meth:`sample` (uniform, without replacement) and :meth:`nearest` (k-NN over a
    stored extra through a FAISS :class:`VectorIndex`, when ``index_key`` is set).

    GPU: slots are chosen on the host (from the host generator) and sent with non-blocking
    copies; the labels are mirrored on the host (``labels``), so the class bookkeeping
    (CBRS, :meth:`classes`, the host labels of a sample) never reads the device. Pass the
    labels' host copy to :meth:`add` when they already are on the device.

    Examples:
        >>> import torch
        >>> buffer = ReplayBuffer(4, generator=torch.Generator().manual_seed(0))
        >>> buffer.add(torch.arange(6.0).view(6, 1), torch.tensor([0, 1, 0, 1, 0, 1]))
        [0, 1, 2, 3, -1, -1]
        >>> len(buffer), buffer.seen  # full after 4; the last two lost the reservoir draw
        (4, 6)
        >>> replay = buffer.sample(3)
        >>> len(replay), tuple(replay.x.shape), buffer.classes().tolist()
        (3, (3, 1), [0, 1])

        Class-balanced (CBRS) insertion keeps a minority class that arrives late:

        >>> cbrs = ReplayBuffer(4, policy="class_balanced", generator=torch.Generator())
        >>> _ = cbrs.add(torch.zeros(8, 2), torch.tensor([0, 0, 0, 0, 0, 0, 1, 1]))
        >>> torch.bincount(cbrs.labels).tolist()  # samples per class
        [2, 2]
    """

    def __init__(
        self,
        capacity: int,
        *,
        policy: str = "reservoir",
        device: str | torch.device = "cpu",
        generator: torch.Generator | None = None,
        index_key: str | None = None,
        index_metric: str = "ip",
    ) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if policy not in POLICIES:
            raise ValueError(f"unknown buffer policy {policy!r}; expected one of {POLICIES}")
        self.capacity = int(capacity)
        self.policy = policy
        self.device = torch.device(device)
        self.generator = generator if generator is not None else torch.Generator()
        self.index_key = index_key
        self.index_metric = index_metric
        self.index: VectorIndex | None = None
        self.size = 0
        self.seen = 0
        self.x: Inputs | None = None
        self.y: Tensor | None = None
        self.labels: Tensor | None = None  # the host copy of ``y``
        self.step: Tensor | None = None
        self.extras: dict[str, Tensor] = {}
        self.class_seen: dict[int, int] = {}

    def __len__(self) -> int:
        return self.size

    @property
    def input_dtype(self) -> torch.dtype | None:
        """The dtype of the stored tensor inputs (``None``: nothing stored, or fields)."""
        return self.x.dtype if isinstance(self.x, Tensor) else None

    # -- storage ---------------------------------------------------------------------------
    def _allocate(self, x: Inputs, extras: dict[str, Tensor]) -> None:
        cap, dev = self.capacity, self.device

        def like(v: Tensor) -> Tensor:
            return torch.empty((cap, *v.shape[1:]), dtype=v.dtype, device=dev)

        self.x = {k: like(v) for k, v in x.items()} if isinstance(x, dict) else like(x)
        self.y = torch.empty(cap, dtype=torch.long, device=dev)
        self.labels = torch.empty(cap, dtype=torch.long)
        self.step = torch.empty(cap, dtype=torch.long, device=dev)
        for key, value in extras.items():
            self.extras[key] = torch.empty((cap, *value.shape[1:]), dtype=value.dtype, device=dev)

    def _check(self, x: Inputs, y: Tensor, extras: dict[str, Tensor]) -> None:
        n = inputs_len(x)
        if n != len(y):
            raise ValueError(f"got {n} inputs but {len(y)} labels")
        if isinstance(x, dict):
            uneven = {k: len(v) for k, v in x.items() if len(v) != n}
            if uneven:
                raise ValueError(f"fields {uneven} do not have the {n} rows of the others")
        if self.x is not None:
            self._check_inputs(x)
        for key, value in extras.items():
            if len(value) != n:
                raise ValueError(f"extra {key!r} has {len(value)} rows for {n} samples")
            if self.x is not None:
                if key not in self.extras:
                    raise ValueError(f"extra {key!r} was not stored from the first insertion")
                if tuple(value.shape[1:]) != tuple(self.extras[key].shape[1:]):
                    raise ValueError(
                        f"extra {key!r} has shape {tuple(value.shape[1:])}, the buffer holds "
                        f"{tuple(self.extras[key].shape[1:])}"
                    )
        if self.x is not None and set(extras) != set(self.extras):
            raise ValueError(
                f"extras {sorted(extras)} differ from those stored so far {sorted(self.extras)}"
            )

    def _check_inputs(self, x: Inputs) -> None:
        stored = self.x
        if isinstance(x, dict) != isinstance(stored, dict):
            kind = "a dict of fields" if isinstance(stored, dict) else "a tensor"
            raise ValueError(f"the buffer holds {kind}; got {type(x).__name__} inputs")
        pairs = (
            [(f"field {k!r}", x.get(k), v) for k, v in stored.items()]
            if isinstance(stored, dict)
            else [("inputs", x, stored)]
        )
        if isinstance(x, dict) and set(x) != set(stored):
            raise ValueError(f"inputs have fields {sorted(x)}, the buffer holds {sorted(stored)}")
        for what, new, old in pairs:
            if tuple(new.shape[1:]) != tuple(old.shape[1:]):
                raise ValueError(
                    f"{what} of shape {tuple(new.shape[1:])} do not match the buffer's "
                    f"{tuple(old.shape[1:])}"
                )
            if new.dtype != old.dtype:
                raise ValueError(
                    f"{what} of dtype {new.dtype} do not match the buffer's {old.dtype}"
                )

    def add(
        self, x: Inputs, y: Tensor, *, host_labels: Tensor | None = None, **extras: Tensor
    ) -> list[int]:
        """Offer a batch to the buffer; returns the slot written per sample (-1: not stored).

        ``host_labels``: ``y``'s copy on the host, when ``y`` lives on a GPU (without it the
        buffer copies ``y`` to the host, which waits for the GPU)."""
        n = inputs_len(x)
        self._check(x, y, extras)
        if host_labels is not None and len(host_labels) != len(y):
            raise ValueError(f"got {len(host_labels)} host labels for {len(y)} labels")
        if self.capacity == 0 or n == 0:
            self.seen += n
            return [-1] * n
        if self.x is None:
            self._allocate(x, extras)
        # without a host copy, labels that live on a GPU are read from it here (a wait)
        host_labels = (y if host_labels is None else host_labels).cpu().long()
        policy = self.policy == "reservoir"
        slots = self._reservoir_slots(n) if policy else self._balanced_slots(host_labels)
        first = self.seen
        self.seen += n
        # later samples win when two in one batch drew the same slot (sequential semantics)
        chosen = {s: i for i, s in enumerate(slots) if s >= 0}
        if not chosen:
            return slots
        if list(chosen) == list(range(slots[0], slots[0] + n)):
            dst: slice | Tensor = slice(slots[0], slots[0] + n)  # filling: one contiguous copy
            src: slice | Tensor = slice(None)
            steps = torch.arange(first, first + n)
        else:
            dst = torch.tensor(list(chosen), dtype=torch.long)
            src = torch.tensor(list(chosen.values()), dtype=torch.long)
            steps = src + first
        self.labels[dst] = host_labels[src]
        dst_d = _to(dst, self.device)

        src_on: dict[torch.device, slice | Tensor] = {}

        def rows(value: Tensor) -> Tensor:  # value[src] on the buffer's device, no waiting
            if value.device not in src_on:
                src_on[value.device] = _to(src, value.device)
            return _to(value[src_on[value.device]], self.device)

        if isinstance(x, dict):
            for key, value in x.items():
                self.x[key][dst_d] = rows(value)
        else:
            self.x[dst_d] = rows(x)
        self.y[dst_d] = rows(y).long()
        self.step[dst_d] = _to(steps, self.device)
        for key, value in extras.items():
            self.extras[key][dst_d] = rows(value.detach()).to(self.extras[key].dtype)
        if self.index_key is not None and self.index_key in extras:
            vectors = rows(extras[self.index_key].detach()).float().flatten(1)
            if self.index is None:
                self.index = VectorIndex(vectors.shape[1], metric=self.index_metric)
            self.index.add(vectors, list(chosen))  # FAISS searches on the host
        return slots

    def _reservoir_slots(self, n: int) -> list[int]:
        cap, seen = self.capacity, self.seen
        slots = []
        draws = None
        for i in range(n):
            pos = seen + i
            if pos < cap:
                slots.append(pos)
                continue
            if draws is None:
                draws = torch.rand(n - i, generator=self.generator, dtype=torch.float64).tolist()
                offset = i
            j = int(draws[i - offset] * (pos + 1))
            slots.append(j if j < cap else -1)
        self.size = min(cap, seen + n)
        return slots

    def _balanced_slots(self, y: Tensor) -> list[int]:
        """CBRS slots for host labels ``y``, from the host label copy."""
        labels = y.tolist()
        slots = []
        y_mem = self.labels
        for label in labels:
            self.class_seen[label] = self.class_seen.get(label, 0) + 1
            if self.size < self.capacity:
                slots.append(self.size)
                y_mem[self.size] = label
                self.size += 1
                continue
            counts = torch.bincount(y_mem[: self.size], minlength=max(label + 1, 1))
            largest = int(counts.max())
            if int(counts[label]) < largest:
                big = (counts == largest).nonzero().flatten()
                cls = int(big[torch.randint(len(big), (1,), generator=self.generator)])
            else:
                u = float(torch.rand(1, generator=self.generator))
                if u > int(counts[label]) / self.class_seen[label]:
                    slots.append(-1)
                    continue
                cls = label
            members = (y_mem[: self.size] == cls).nonzero().flatten()
            slot = int(members[torch.randint(len(members), (1,), generator=self.generator)])
            y_mem[slot] = label
            slots.append(slot)
        return slots

    def relabel(self, old: int, new: int) -> None:
        """Merge label ``old`` into ``new`` (stored samples and the per-label counts CBRS
        keeps): two labels found to be one (e.g. a scenario recognised as come back)."""
        if self.y is not None:
            self.y.masked_fill_(self.y == old, new)
            self.labels.masked_fill_(self.labels == old, new)
        if old in self.class_seen:
            self.class_seen[new] = self.class_seen.get(new, 0) + self.class_seen.pop(old)

    # -- retrieval -------------------------------------------------------------------------
    def gather(self, idx: Tensor) -> Replay:
        """The stored samples at slots ``idx`` (host slots also give the host labels)."""
        host = idx.device.type == "cpu"
        y_host = self.labels[idx] if host else None
        idx = _to(idx, self.device)
        extras = {k: v[idx] for k, v in self.extras.items()}
        return Replay(take(self.x, idx), self.y[idx], idx, extras, y_host)

    def sample(self, k: int, exclude_classes: Tensor | None = None) -> Replay:
        """Up to ``k`` distinct stored samples drawn uniformly at random (slots drawn on the
        host), optionally none of the classes in ``exclude_classes``."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        if exclude_classes is not None:
            allowed = ~torch.isin(self.labels[: self.size], exclude_classes.cpu())
            pool = allowed.nonzero().flatten()
            perm = torch.randperm(len(pool), generator=self.generator)[:k]
            return self.gather(pool[perm])
        idx = torch.randperm(self.size, generator=self.generator)[: min(k, self.size)]
        return self.gather(idx)

    def nearest(self, queries: Tensor, k: int) -> Replay:
        """The stored samples whose ``index_key`` extra is nearest to each query (deduplicated)."""
        if self.index is None or len(self.index) == 0:
            raise RuntimeError(
                "nearest-neighbour retrieval needs a buffer built with index_key=... and at least "
                "one insertion that passed that extra"
            )
        _, ids = self.index.search(queries.detach().float().flatten(1), k)
        ids = ids.flatten()
        ids = torch.unique(ids[ids >= 0])
        return self.gather(ids)

    def all(self) -> Replay:
        return self.gather(torch.arange(self.size))

    def classes(self) -> Tensor:
        """The labels held, sorted, on the host."""
        if not self.size:
            return torch.empty(0, dtype=torch.long)
        return torch.unique(self.labels[: self.size])

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        n = self.size
        return {
            "capacity": self.capacity,
            "policy": self.policy,
            "size": n,
            "seen": self.seen,
            "x": None if self.x is None else _cpu_rows(self.x, n),
            "y": None if self.y is None else self.y[:n].cpu().clone(),
            "step": None if self.step is None else self.step[:n].cpu().clone(),
            "extras": {k: v[:n].cpu().clone() for k, v in self.extras.items()},
            "class_seen": [[int(c), int(m)] for c, m in self.class_seen.items()],
        }

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity or state["policy"] != self.policy:
            raise ValueError(
                f"buffer state is for capacity={state['capacity']} policy={state['policy']!r}, "
                f"this buffer has capacity={self.capacity} policy={self.policy!r}"
            )
        self.size, self.seen = int(state["size"]), int(state["seen"])
        self.class_seen = {int(c): int(m) for c, m in state["class_seen"]}
        self.x = self.y = self.labels = self.step = None
        self.extras = {}
        self.index = None
        if state["x"] is None:
            return
        self._allocate(state["x"], state["extras"])
        n = self.size
        if isinstance(self.x, dict):
            for key, value in state["x"].items():
                self.x[key][:n] = value.to(self.device)
        else:
            self.x[:n] = state["x"].to(self.device)
        self.y[:n] = state["y"].to(self.device)
        self.labels[:n] = state["y"]
        self.step[:n] = state["step"].to(self.device)
        for key, value in state["extras"].items():
            self.extras[key][:n] = value.to(self.device)
        if self.index_key is not None and self.index_key in self.extras and n:
            vectors = self.extras[self.index_key][:n].float().flatten(1)
            self.index = VectorIndex(vectors.shape[1], metric=self.index_metric)
            self.index.add(vectors, torch.arange(n))


def _to(index: slice | Tensor, device: torch.device) -> slice | Tensor:
    """:func:`~streamkd.types.to_device` for tensors; slices pass through."""
    return to_device(index, device) if isinstance(index, Tensor) else index


def _cpu_rows(x: Inputs, n: int) -> Inputs:
    if isinstance(x, dict):
        return {k: v[:n].cpu().clone() for k, v in x.items()}
    return x[:n].cpu().clone()
