"""Counting the host-device synchronisations of a training step, on a machine without a GPU.

Every read of GPU data on the host (``.item()``, ``bool(t)``, ``.cpu()``, an op whose output
size depends on the data such as ``nonzero``...) makes the host wait until the GPU has
finished all queued work, and leaves the GPU idle while the host catches up. A per-step path
should have none. :class:`EmulatedCuda` makes that checkable anywhere: it runs code written
for ``device="cuda"`` on the CPU, tags the tensors a GPU would hold, and counts each
operation that would synchronise on a real GPU, with the line of code that made it.

How: a :class:`~torch.overrides.TorchFunctionMode` sees every torch call. Factories and
copies aimed at ``cuda`` are redirected to the CPU and their storage is tagged as device
memory (``.device`` then reports ``cuda:0``); results of ops reading tagged tensors are
tagged. ``torch.cuda``'s runtime calls (availability, RNG state, events, synchronize) are
stubbed for the duration. Counted as synchronisations:

* reads of device data: ``item``, ``tolist``, ``numpy``, ``bool``/``int``/``float``/index
  conversion, copies to the host (``cpu()``, ``to("cpu")``, ``copy_`` into a host tensor);
* ops whose output size depends on device data: ``nonzero``, ``unique``, ``masked_select``,
  boolean-mask indexing, ``repeat_interleave`` without ``output_size``, one-argument
  ``where``, ``bincount``, ``combinations``, ``equal``, ``allclose``;
* blocking host-to-device copies: ``to("cuda")`` without ``non_blocking=True``,
  ``torch.tensor(data, device="cuda")``, a device tensor indexed by a host index tensor;
* ``torch.cuda.synchronize``.

It also reports what would fail on a GPU (:attr:`EmulatedCuda.errors`): an op mixing device
tensors with host tensors that are not 0-dim, a host generator drawing for a ``cuda``
factory, a device generator drawing on the host.

Limits: code that branches on ``torch.cuda`` features not stubbed here (streams, graphs),
and custom C++ ops, are not emulated; reads inside torch's own C++ code are not seen.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from unittest import mock

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

DEVICE = torch.device("cuda", 0)

# a read of a device tensor's values on the host
_READS = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "cpu"}
# output size depends on the data: the host must wait for it
_DATA_DEPENDENT = {
    "nonzero",
    "argwhere",
    "unique",
    "unique_consecutive",
    "masked_select",
    "bincount",
    "combinations",
    "equal",
    "allclose",
}
# ops where host and device tensors legitimately meet (copies, indexing, attribute access)
_MIXING_ALLOWED = {
    "to",
    "cpu",
    "cuda",
    "copy_",
    "__getitem__",
    "__setitem__",
    "index_put_",
    "index_put",
    "__get__",
    "__set__",
    "pin_memory",
    "set_",
    "_has_compatible_shallow_copy_type",
}
_FACTORIES_FROM_DATA = {"tensor", "as_tensor", "asarray", "from_numpy"}
_HERE = __file__


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


def _is_cpu(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cpu"
    return isinstance(device, str) and device.startswith("cpu")


def _real(t) -> bool:
    """A tensor with storage (not a lazy module's uninitialised parameter)."""
    return isinstance(t, torch.Tensor) and not isinstance(
        t, torch.nn.parameter.UninitializedTensorMixin
    )


def _name(func) -> str:
    name = getattr(func, "__name__", "")
    if name in ("__get__", "__set__"):
        owner = getattr(getattr(func, "__self__", None), "__name__", "")
        return f"{name}:{owner}"
    return name


def _caller() -> str:
    """``file:line`` of the innermost frame outside torch and this module."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if path != _HERE and "/torch/" not in path and "contextlib" not in path:
            parts = path.split("/")
            short = "/".join(parts[-2:]) if len(parts) > 1 else path
            return f"{short}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


class _FakeEvent:
    """``torch.cuda.Event`` for the emulation: times on the host clock."""

    def __init__(
        self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False
    ) -> None:  # (torch.cuda.Event's arguments; the host clock needs none of them)
        self.time: float | None = None

    def record(self, stream=None) -> None:
        self.time = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: _FakeEvent) -> float:
        return (end.time - self.time) * 1000.0


class EmulatedCuda(TorchFunctionMode):
    """Run code written for ``device="cuda"`` on the CPU, counting what would synchronise.

    Use :func:`emulate_cuda`; ``syncs`` counts ``(what, where)`` pairs while ``counting`` is
    on, ``errors`` lists what a GPU would refuse.
    """

    def __init__(self) -> None:
        super().__init__()
        self._device_storage: dict[int, StorageWeakRef] = {}
        self._device_empty: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.syncs: Counter[tuple[str, str]] = Counter()
        self.errors: list[str] = []
        self.counting = True

    # -- tags ----------------------------------------------------------------------------
    def on_device(self, t) -> bool:
        if not _real(t) or not t.is_cpu:  # (``is_cpu``: ``device`` is what this mode fakes)
            return False
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if not ptr:  # no storage (an empty tensor): tagged by identity
            return t in self._device_empty
        ref = self._device_storage.get(ptr)
        if ref is None:
            return False
        if ref.expired():  # freed; the address now belongs to a host allocation
            del self._device_storage[ptr]
            return False
        return True

    def _tag(self, t) -> None:
        if _real(t) and t.is_cpu:
            storage = t.untyped_storage()
            if storage.data_ptr():
                self._device_storage[storage.data_ptr()] = StorageWeakRef(storage)
            else:
                self._device_empty[t] = True

    def _count(self, what: str) -> None:
        if self.counting:
            self.syncs[(what, _caller())] += 1

    def _error(self, what: str) -> None:
        self.errors.append(f"{what} at {_caller()}")

    # -- the mode ------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = _name(func)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        device_in = [t for t in tensors if self.on_device(t)]
        if name == "__get__:device" and device_in:
            return DEVICE
        if name == "__get__:is_cuda" and device_in:
            return True
        if name in ("pin_memory", "is_pinned"):
            return args[0] if name == "pin_memory" else False
        to_cuda = self._redirect(name, args, kwargs)
        if name in ("to", "cuda", "cpu"):
            return self._copy(func, name, args, kwargs, to_cuda)
        if device_in:
            self._check(name, args, kwargs, tensors)
        elif to_cuda and name in _FACTORIES_FROM_DATA:
            self._count(f"torch.{name}(data, device=cuda): blocking copy")
        out = func(*args, **kwargs)
        if name == "__set__:data" and device_in:  # ``param.data = device tensor`` (Module.to)
            self._tag(args[0])
        if device_in or to_cuda:
            for t in tree_flatten(out)[0]:
                self._tag(t)
        return out

    def _redirect(self, name: str, args, kwargs) -> bool:
        """Point a ``device=cuda`` keyword at the CPU; check the generator it draws with."""
        device = kwargs.get("device")
        to_cuda = _is_cuda(device)
        if to_cuda:
            kwargs["device"] = "cpu"
        gen = kwargs.get("generator")
        if gen is not None:
            is_device_gen = getattr(gen, "for_cuda", False)
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if not is_device_gen and (to_cuda or any(self.on_device(a) for a in tensors)):
                self._error(f"torch.{name}: a host generator drawing on cuda")
            elif (
                not to_cuda and is_device_gen and not any(self.on_device(a) for a in tensors)
            ):  # (multinomial, normal... draw where their tensor arguments live)
                self._error(f"torch.{name}: a cuda generator drawing on the host")
        return to_cuda

    def _copy(self, func, name, args, kwargs, to_cuda):
        """``to``/``cuda``/``cpu``: a copy between host and (emulated) device, or a cast."""
        src, rest = args[0], []
        target = kwargs.pop("device", None)  # ("cpu" already, when it was cuda)
        if to_cuda or name == "cuda":
            target = DEVICE
        for a in args[1:]:
            if isinstance(a, (str, torch.device)) or (
                isinstance(a, int) and not isinstance(a, bool)
            ):
                target = DEVICE if _is_cuda(a) else a
                rest.append("cpu")  # every tensor here lives on the CPU
            elif isinstance(a, torch.Tensor):  # to(other): other's dtype and device
                target = DEVICE if self.on_device(a) else a.device
                rest.append(a.dtype)
            else:
                rest.append(a)
        if name == "cpu":
            target = "cpu"
        on_dev = self.on_device(src)
        if _is_cuda(target):
            if on_dev:
                out = src.to(*rest, **kwargs)
            else:
                if not kwargs.get("non_blocking", False) and src.numel():  # 0 bytes: no wait
                    self._count(f"{name}(cuda) without non_blocking: blocking copy")
                out = src.to(*rest, **kwargs).clone()
            self._tag(out)
            return out
        if target is not None and _is_cpu(target) and on_dev:
            self._count(f"{name}(): copy to the host")
            return src.to(*rest, **kwargs).clone()  # a new, untagged storage
        out = func(src, *rest, **kwargs) if name != "cpu" else src
        if on_dev:
            self._tag(out)
        return out

    def _check(self, name, args, kwargs, tensors) -> None:
        if name in _READS:
            self._count(f"{name}()")
        elif name in _DATA_DEPENDENT:
            self._count(f"{name}(): data-dependent size")
        elif name == "where" and len(args) + len(kwargs) == 1:
            self._count("where(cond): data-dependent size")
        elif name == "repeat_interleave" and "output_size" not in kwargs:
            if isinstance(kwargs.get("repeats", args[1] if len(args) > 1 else None), torch.Tensor):
                self._count("repeat_interleave without output_size")
        elif name == "copy_":
            dst, src = args[0], args[1]
            if self.on_device(src) and not self.on_device(dst):
                self._count("copy_(): copy to the host")
            elif not self.on_device(src) and src.dim() and not kwargs.get("non_blocking"):
                self._count("copy_() from the host: blocking copy")
        if name in ("__getitem__", "__setitem__", "index_put_", "index_put"):
            self._check_index(name, args)
        elif name.split(":")[0] not in _MIXING_ALLOWED:
            host = [t for t in tensors if not self.on_device(t) and t.dim() > 0 and t.numel()]
            if host:
                self._error(
                    f"{name}: host tensor(s) of shape {tuple(host[0].shape)} mixed with "
                    "device tensors (a GPU refuses this)"
                )

    def _check_index(self, name, args) -> None:
        target, index = args[0], args[1] if len(args) > 1 else None
        parts = index if isinstance(index, tuple) else (index,)
        target_on_dev = self.on_device(target)
        if target_on_dev and any(isinstance(p, (list, np.ndarray)) for p in parts):
            self._count(f"{name} with a list or array index: blocking copy")
        parts = [p for p in parts if isinstance(p, torch.Tensor)]
        for p in parts:
            if p.dtype == torch.bool and (target_on_dev or self.on_device(p)):
                self._count(f"{name} with a boolean mask: data-dependent size")
            elif target_on_dev and not self.on_device(p) and p.dim() > 0:
                self._count(f"{name} with a host index tensor: blocking copy")
            elif not target_on_dev and self.on_device(p):
                self._error(f"{name}: a host tensor indexed by a device tensor")
        if name == "__setitem__" and len(args) > 2:
            value = args[2]
            host_value = isinstance(value, torch.Tensor) and not self.on_device(value)
            if host_value and value.numel() and value.dim() and target_on_dev:
                self._count("__setitem__ of a host tensor: blocking copy")


_REAL_GENERATOR = torch.Generator
_REAL_AUTOCAST = torch.autocast


def _autocast(device_type: str, *args, **kwargs):
    """CUDA autocast is a no-op in the emulation (precision does not change what syncs)."""
    if device_type == "cuda":
        return nullcontext()
    return _REAL_AUTOCAST(device_type, *args, **kwargs)


@contextmanager
def emulate_cuda() -> Iterator[EmulatedCuda]:
    """A context in which ``device="cuda"`` runs on the CPU and synchronisations are counted
    (see the module docstring). Yields the :class:`EmulatedCuda` mode."""
    mode = EmulatedCuda()

    class Generator(_REAL_GENERATOR):
        """``torch.Generator`` in the emulation: a CPU generator, remembered as a device one
        when made for ``cuda``."""

        def __new__(cls, device="cpu"):
            return super().__new__(cls, "cpu")

        def __init__(self, device="cpu") -> None:
            self.for_cuda = _is_cuda(device)

    rng_states: dict[int, torch.Tensor] = {}

    def synchronize(device=None) -> None:
        mode._count("torch.cuda.synchronize()")

    def get_rng_state(device="cuda") -> torch.Tensor:
        return rng_states.get(0, torch.zeros(16, dtype=torch.uint8)).clone()

    def set_rng_state(state, device="cuda") -> None:
        rng_states[0] = state.clone()

    patches = {
        "is_available": lambda: True,
        "device_count": lambda: 1,
        "current_device": lambda: 0,
        "current_stream": lambda device=None: None,
        "synchronize": synchronize,
        "Event": _FakeEvent,
        "get_rng_state": get_rng_state,
        "set_rng_state": set_rng_state,
        "get_rng_state_all": lambda: [get_rng_state()],
        "set_rng_state_all": lambda states: set_rng_state(states[0]),
        "manual_seed": lambda seed: None,
        "manual_seed_all": lambda seed: None,
        "reset_peak_memory_stats": lambda device=None: None,
        "max_memory_allocated": lambda device=None: 0,
    }
    with ExitStack() as stack:
        for attr, value in patches.items():
            stack.enter_context(mock.patch.object(torch.cuda, attr, value))
        stack.enter_context(mock.patch.object(torch, "Generator", Generator))
        stack.enter_context(mock.patch.object(torch, "autocast", _autocast))
        if hasattr(torch, "accelerator"):  # its runtime (torch >= 2.6) would look for a GPU
            stack.enter_context(
                mock.patch.object(torch.accelerator, "current_accelerator", lambda **_: None)
            )
        stack.enter_context(mode)
        yield mode
