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

* reads of device data: ``item``, ``tolist``, ``bool``/``int``/``float``/``complex``/index
  conversion, formatting and printing (``f"{t:.2f}"``, ``repr``), ``x in t``, copies to the
  host (``cpu()``, ``to("cpu")``, ``numpy(force=True)``, ``copy_`` into a host tensor);
* device values written into host memory: ``host[0] = dev.sum()``, ``host[1:3] = dev[:2]``
  (a copy to the host, as ``copy_``), ``host.index_put_(idx, dev_scalar)`` (torch moves a
  0-dim value to the target's device first);
* ops whose output size depends on device data: ``nonzero``, ``unique``, ``masked_select``,
  boolean-mask indexing, ``repeat_interleave`` without ``output_size``, one-argument
  ``where``, ``bincount``, ``combinations``, ``equal``, ``allclose``;
* blocking host-to-device copies: ``to("cuda")`` without ``non_blocking=True``,
  ``torch.tensor(data, device="cuda")``, a device tensor indexed by a host index tensor;
* non-blocking host-to-device copies (``to("cuda", non_blocking=True)``, ``copy_(...,
  non_blocking=True)``) from pageable memory. torch issues ``cudaMemcpyAsync`` for them
  either way; CUDA documents that call as possibly synchronous with respect to the host when
  the source is pageable (the driver may wait for the stream and stage the data through
  pinned memory; "API synchronization behavior" in the CUDA runtime docs), and CUDA's own
  sync debug mode does not report it. Only a pinned source makes the copy asynchronous, so
  the emulation emulates pinning: ``pin_memory()`` returns a copy whose storage is tagged
  as pinned (a tensor already pinned is returned as it is, as torch does), factories take
  ``pin_memory=True``, and ``is_pinned()`` is true for tagged storages and their views;
* ``torch.cuda.synchronize``, and ``Event.synchronize()`` of an event not yet known to be
  complete. Events keep CUDA's rules: ``elapsed_time`` needs both events created with
  ``enable_timing=True`` and recorded (else it raises, as torch does) and both complete:
  reached by ``synchronize()`` of that event or of one recorded after it (one stream, in
  order), or by ``torch.cuda.synchronize``; reading it before is reported as an error (a
  GPU refuses it while the work is pending). ``query()`` never waits and is not counted; it
  answers ``True`` (the CPU has done the work), which a caller may rely on, so it also
  makes the event complete.

It also reports what would fail on a GPU (:attr:`EmulatedCuda.errors`): an op mixing device
tensors with host tensors that are not 0-dim, device values (not 0-dim) written into a host
tensor by advanced indexing, a device tensor handed to NumPy (``numpy()``,
``np.asarray``: torch raises ``TypeError``), ``pin_memory()`` of a device tensor, a host
generator drawing for a ``cuda`` factory, a device generator drawing on the host.

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
_READS = {
    "item",
    "tolist",
    "__bool__",
    "__int__",
    "__float__",
    "__complex__",
    "__index__",
    "__format__",
    "__repr__",
    "__contains__",
    "cpu",
}
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


def _tagged(table: dict[int, StorageWeakRef], ptr: int) -> bool:
    """Whether the storage at ``ptr`` is in ``table``, alive and still at ``ptr`` (a freed or
    resized one is dropped: its old address may now belong to another allocation)."""
    ref = table.get(ptr)
    if ref is None:
        return False
    if ref.expired() or torch.UntypedStorage._new_with_weak_ptr(ref.cdata).data_ptr() != ptr:
        del table[ptr]
        return False
    return True


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
    """``torch.cuda.Event`` for the emulation: times on the host clock, CUDA's rules on when
    they may be read (see the module docstring). ``emulate_cuda`` binds a subclass to its
    mode, which counts the waits."""

    mode: EmulatedCuda

    def __init__(
        self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False
    ) -> None:  # (torch.cuda.Event's arguments; only enable_timing changes what it allows)
        self.enable_timing = enable_timing
        self.time: float | None = None
        self.order: int | None = None  # its place on the (one, emulated) stream once recorded

    def record(self, stream=None) -> None:
        self.time = time.perf_counter()
        self.order = self.mode._recorded()

    def wait(self, stream=None) -> None:
        """Make a stream wait for the event: device-side, the host goes on."""

    def synchronize(self) -> None:
        """The host waits for the event (a sync, unless it is already known complete)."""
        if self.order is not None and not self.mode._complete(self.order):
            self.mode._count("Event.synchronize()")
            self.mode._reach(self.order)

    def query(self) -> bool:
        """Whether the event is complete: never waits; the emulated device is always done."""
        if self.order is not None:
            self.mode._reach(self.order)
        return True

    def elapsed_time(self, end: _FakeEvent) -> float:
        """Milliseconds from this event to ``end``, refused as torch refuses it."""
        if not (self.enable_timing and end.enable_timing):
            raise ValueError("Both events must be created with argument 'enable_timing=True'.")
        if self.order is None or end.order is None:
            raise ValueError("Both events must be recorded before calculating elapsed time.")
        if not (self.mode._complete(self.order) and self.mode._complete(end.order)):
            self.mode._error(
                "Event.elapsed_time() before both events completed (synchronize() the later "
                "one first): a GPU refuses it while their work is pending"
            )
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
        self._pinned_storage: dict[int, StorageWeakRef] = {}
        self._events = 0  # events recorded so far (their order on the one emulated stream)
        self._events_done = 0  # events up to this one are known complete
        self.syncs: Counter[tuple[str, str]] = Counter()
        self.errors: list[str] = []
        self.counting = True

    # -- tags ----------------------------------------------------------------------------
    def on_device(self, t) -> bool:
        if not _real(t) or not t.is_cpu:  # (``is_cpu``: ``device`` is what this mode fakes)
            return False
        ptr = t.untyped_storage().data_ptr()
        if not ptr:  # no storage (an empty tensor): tagged by identity
            return t in self._device_empty
        return _tagged(self._device_storage, ptr)

    def is_pinned(self, t) -> bool:
        """Whether host tensor ``t`` lives in (emulated) pinned memory."""
        if not _real(t) or not t.is_cpu or self.on_device(t):
            return False
        ptr = t.untyped_storage().data_ptr()
        return bool(ptr) and _tagged(self._pinned_storage, ptr)

    def _tag(self, t) -> None:
        if _real(t) and t.is_cpu:
            storage = t.untyped_storage()
            if storage.data_ptr():
                self._device_storage[storage.data_ptr()] = StorageWeakRef(storage)
            else:
                self._device_empty[t] = True

    def _tag_pinned(self, t) -> None:
        if _real(t) and t.is_cpu and t.untyped_storage().data_ptr():
            storage = t.untyped_storage()
            self._pinned_storage[storage.data_ptr()] = StorageWeakRef(storage)

    def _pin(self, t):
        """``pin_memory()``: a pinned copy (``t`` itself when already pinned, as in torch)."""
        if self.on_device(t):
            self._error("pin_memory: a device tensor (only host tensors can be pinned)")
            return t
        if self.is_pinned(t):
            return t
        out = t.clone()
        self._tag_pinned(out)
        return out

    # -- events: one emulated stream, completed in order -----------------------------------
    def _recorded(self) -> int:
        self._events += 1
        return self._events

    def _complete(self, order: int) -> bool:
        return order <= self._events_done

    def _reach(self, order: int) -> None:
        self._events_done = max(self._events_done, order)

    def _synchronize(self) -> None:
        """``torch.cuda.synchronize()``: counted; every event recorded so far is complete."""
        self._count("torch.cuda.synchronize()")
        self._events_done = self._events

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
        if name == "pin_memory":
            return self._pin(args[0])
        if name == "is_pinned":
            return self.is_pinned(args[0])
        pin = kwargs.get("pin_memory") is True  # a factory allocating pinned memory
        if pin:
            kwargs["pin_memory"] = False
        to_cuda = self._redirect(name, args, kwargs)
        if name in ("to", "cuda", "cpu"):
            return self._copy(func, name, args, kwargs, to_cuda)
        if device_in:
            self._check(name, args, kwargs, tensors)
        elif to_cuda and name in _FACTORIES_FROM_DATA:
            self._count(f"torch.{name}(data, device=cuda): blocking copy")
        out = func(*args, **kwargs)
        if pin:
            for t in tree_flatten(out)[0]:
                self._tag_pinned(t)
        if name == "__set__:data" and device_in:  # ``param.data = device tensor`` (Module.to)
            self._tag(args[0])
        if device_in or to_cuda:
            host_self = args[0] if args and _real(args[0]) and not self.on_device(args[0]) else None
            for t in tree_flatten(out)[0]:
                if t is not host_self:  # an in-place op writes a host tensor: it stays one
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
                if not src.numel():  # 0 bytes: no wait
                    pass
                elif not kwargs.get("non_blocking", False):
                    self._count(f"{name}(cuda) without non_blocking: blocking copy")
                elif not self.is_pinned(src):
                    self._count(f"{name}(cuda, non_blocking=True) from pageable memory")
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
        elif name == "numpy" and kwargs.get("force"):
            self._count("numpy(force=True): copy to the host")
        elif name in ("numpy", "__array__"):
            self._error(f"{name}: a device tensor to NumPy (torch raises TypeError; .cpu() first)")
        elif name in _DATA_DEPENDENT:
            self._count(f"{name}(): data-dependent size")
        elif name == "where" and len(args) + len(kwargs) == 1:
            self._count("where(cond): data-dependent size")
        elif name == "repeat_interleave" and "output_size" not in kwargs:
            if isinstance(kwargs.get("repeats", args[1] if len(args) > 1 else None), torch.Tensor):
                self._count("repeat_interleave without output_size")
        elif name == "copy_":
            dst, src = args[0], args[1]
            non_blocking = kwargs.get("non_blocking", len(args) > 2 and args[2])
            if self.on_device(src) and not self.on_device(dst):
                self._count("copy_(): copy to the host")
            elif not self.on_device(src) and src.dim():
                if not non_blocking:
                    self._count("copy_() from the host: blocking copy")
                elif not self.is_pinned(src):
                    self._count("copy_(non_blocking=True) from pageable memory")
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
        value = args[2] if len(args) > 2 else None
        if not isinstance(value, torch.Tensor):
            return
        value_on_dev = self.on_device(value)
        if name == "__setitem__" and target_on_dev and not value_on_dev and value.dim():
            if value.numel():
                self._count("__setitem__ of a host tensor: blocking copy")
        elif value_on_dev and not target_on_dev:
            self._check_write_to_host(name, index, value)

    def _check_write_to_host(self, name, index, value) -> None:
        """Device values written into a host tensor: basic indexing copies them to the host
        (``copy_``); advanced indexing (``index_put_``) moves a 0-dim value to the host
        first, and refuses any other (a CPU kernel cannot read device memory)."""
        parts = index if isinstance(index, tuple) else (index,)
        advanced = name != "__setitem__" or any(
            isinstance(p, (torch.Tensor, list, np.ndarray)) for p in parts
        )
        if not advanced:
            self._count(f"{name} of device values into a host tensor: copy to the host")
        elif value.dim() == 0:
            self._count(f"{name} of a device scalar into a host tensor: copy to the host")
        else:
            self._error(
                f"{name}: device values of shape {tuple(value.shape)} written into a host "
                "tensor by advanced indexing (a GPU refuses this)"
            )


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
        mode._synchronize()

    class Event(_FakeEvent):
        """``torch.cuda.Event`` in the emulation, counting its waits in this mode."""

    Event.mode = mode

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
        "Event": Event,
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
