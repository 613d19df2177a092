"""Contract suites: the executable definition of a strategy and of a daemon source.

River's ``check_estimator`` for this field. :func:`check_strategy` runs a strategy class on
a tiny real stream and asserts what every strategy here promises; :func:`check_source` does
the same for a daemon source. The test suite runs them over every registered plug-in; run
them on your own before you use it (``docs/extending.md``)::

    from streamkd.checks import check_strategy
    check_strategy(MyStrategy)   # raises StrategyCheckError saying what broke

Each check is a function of its own, so a failure names the promise it broke.
"""

from __future__ import annotations

import copy
import inspect
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from streamkd.strategy import Strategy
from streamkd.types import Batch, InvalidBatchError

# set by the runner for every strategy alike (``streamkd run --memory/--seed/--device``)
SET_BY_RUNNER = ("memory", "seed", "device", "max_classes")
LAYOUT_ONLY = ("channels_last",)  # changes how weights are laid out, never a number
# batches the sync check must see learned with the replay memory full (the replay path's
# steady state, reservoir replacement included)
STEADY_STEPS = 3


class StrategyCheckError(AssertionError):
    """A strategy broke a promise of the contract; the message says which and how."""


class SourceCheckError(AssertionError):
    """A source broke a promise of the contract; the message says which and how."""


@dataclass
class Setting:
    """The tiny real setting a strategy is checked on (:meth:`Strategy.check_setting`)."""

    stream: str | Callable[[], Any]  # a registered stream's name, or a factory of one
    stream_args: dict[str, Any] = field(default_factory=dict)
    model_args: dict[str, Any] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)  # cheaper constructor arguments

    def make_stream(self, batch_size: int = 10):
        """The setting's stream (seed 0)."""
        from streamkd.experiment import make_stream

        if callable(self.stream):
            return self.stream()
        return make_stream(self.stream, seed=0, batch_size=batch_size, **self.stream_args)

    def builder(self, cls: type[Strategy], stream, **overrides: Any) -> Callable[..., Strategy]:
        """A factory of ``cls`` on ``stream``'s default model (seed 0, memory 40 unless
        ``overrides`` say otherwise); its keywords (``device=``...) override again."""
        from streamkd.experiment import make_model

        def build(device: str = "cpu", **more: Any) -> Strategy:
            torch.manual_seed(0)
            model = cls.default_model(stream)
            if model is None:
                model = make_model(stream, seed=0, **{**_layout(cls), **self.model_args})
            kwargs = {"memory": 40, "seed": 0, **self.args, **overrides, **more}
            return cls(model, device=device, **kwargs)

        return build


def _layout(cls: type[Strategy]) -> dict[str, Any]:
    return {"head": cls.head, "head_scale": cls.head_scale, "nf": cls.default_nf}


def _batches(stream, n: int) -> list[Batch]:
    out = []
    for batch in stream:
        out.append(batch)
        if len(out) == n:
            break
    stream.seek(0)
    return out


# -- comparing states ------------------------------------------------------------------------
def _differences(a: Any, b: Any, where: str = "state") -> list[str]:
    """Where two ``state_dict``-like structures differ (tensors bit for bit)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            return [where]
        same = a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in dict.fromkeys([*a, *b]):
            if key not in a or key not in b:
                out.append(f"{where}.{key}")
            else:
                out += _differences(a[key], b[key], f"{where}.{key}")
        return out
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [where]
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in _differences(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:  # NaN == NaN here
        return []
    return [] if a == b else [where]


def _outcome(strategy: Strategy, probe: Batch) -> dict[str, Any]:
    """What an argument may change: the whole ``state_dict`` but the recorded arguments,
    and the predictions on ``probe``."""
    state = strategy.state_dict()
    state.pop("hparams", None)
    state["predictions"] = strategy.predict(probe.x)
    return state


# -- the strategy contract -------------------------------------------------------------------
def check_learns(build: Callable[..., Strategy], batches: list[Batch]) -> dict[str, float]:
    """Learning happens: the weights move, and one batch observed again and again is then
    predicted better than by its most common label (or, where the predictions cannot show it
    yet, its loss fell). Returns the accuracy, the majority rate and the losses' ends."""
    strategy = build()
    batch = batches[0]
    before = copy.deepcopy(strategy.model.state_dict())
    losses = [float(strategy.observe(batch).loss.detach()) for _ in range(12)]
    if not all(v == v for v in losses):
        raise StrategyCheckError(f"observe() returned a NaN loss: {losses}")
    if not _differences(before, strategy.model.state_dict()):
        raise StrategyCheckError("observe() did not change the model's weights")
    moved = [v for v in losses if v > 0]  # contrastive losses are 0 before there are pairs
    fell = len(moved) > 4 and min(moved[-4:]) < moved[0]
    if batch.y is None:  # a regressor (SC-CLIP's trajectories): the loss must fall
        if not fell:
            raise StrategyCheckError(
                f"one batch observed 12 times did not lower its loss: "
                f"{[round(v, 4) for v in losses]}"
            )
        return {"loss": [losses[0], losses[-1]]}
    hits = strategy.predict(batch.x).argmax(1).cpu() == batch.y
    accuracy = float(hits.float().mean())
    majority = float(torch.bincount(batch.y).max()) / len(batch.y)
    if accuracy <= majority and not fell:
        raise StrategyCheckError(
            f"one batch observed 12 times is predicted no better than its most common label "
            f"({accuracy:.2f} vs {majority:.2f}) and its loss did not fall: "
            f"{[round(v, 4) for v in losses]}"
        )
    return {"accuracy": accuracy, "majority": majority, "loss": [losses[0], losses[-1]]}


def _bad_batches(batch: Batch, max_classes: int) -> Iterable[tuple[str, Batch]]:
    """``batch`` spoilt one way at a time (its meta and targets kept)."""
    x, y = batch.x, batch.y
    if y is not None:
        yield "labels at max_classes", replace(batch, y=torch.full_like(y, max_classes))
        yield "a negative label", replace(batch, y=torch.cat([y[:-1], y.new_full((1,), -1)]))
        yield "fewer labels than inputs", replace(batch, y=y[:-1])
        yield "float labels", replace(batch, y=y.float())
    if isinstance(x, dict):
        name = next(iter(x))
        yield (
            f"a missing field ({name})",
            replace(batch, x={k: v for k, v in x.items() if k != name}),
        )
        yield f"field {name} of another dtype", replace(batch, x={**x, name: x[name].double()})
    else:
        yield "another per-sample shape", replace(batch, x=x[..., :-1])
        yield "inputs of another dtype", replace(batch, x=x.double())
        if x.is_floating_point():  # uint8 images cannot hold one
            bad = x.clone()
            bad.view(-1)[0] = float("nan")
            yield "a NaN input", replace(batch, x=bad)


def check_refuses_bad_batches(build: Callable[..., Strategy], batches: list[Batch]) -> None:
    """A bad batch is refused with :class:`InvalidBatchError` and leaves the state exactly
    as it was (nothing learned, counted, drawn or remembered)."""
    strategy = build()
    for batch in batches[:2]:
        strategy.observe(batch)
    for what, bad in _bad_batches(batches[2], strategy.max_classes):
        before = strategy.state_dict()
        try:
            strategy.observe(bad)
        except InvalidBatchError:
            pass
        except Exception as err:  # noqa: BLE001 - the point is to say which kind it was
            raise StrategyCheckError(
                f"a batch with {what} raised {type(err).__name__} ({err}), not InvalidBatchError"
            ) from err
        else:
            raise StrategyCheckError(f"a batch with {what} was learned, not refused")
        changed = _differences(before, strategy.state_dict())
        if changed:
            raise StrategyCheckError(
                f"refusing a batch with {what} changed the state: {', '.join(changed[:5])}"
            )


def check_resumes_exactly(build: Callable[..., Strategy], batches: list[Batch]) -> None:
    """A strategy rebuilt and loaded from ``state_dict()`` between two steps continues bit
    for bit as the uninterrupted one: weights, optimizer, memory and draws."""
    half = len(batches) // 2
    first = build()
    for batch in batches[:half]:
        first.observe(batch)
    state = copy.deepcopy(first.state_dict())
    for batch in batches[half:]:
        first.observe(batch)
    second = build()
    second.load_state_dict(state)
    for batch in batches[half:]:
        second.observe(batch)
    drift = _differences(first.state_dict(), second.state_dict())
    if drift:
        raise StrategyCheckError(
            f"a resumed run drifts from the uninterrupted one at: {', '.join(drift[:5])}"
        )


def _changed_value(default: Any) -> Any:
    """A valid value other than ``default`` for a numeric or boolean argument (``None``:
    no way to make one up; such an argument is not checked)."""
    if isinstance(default, bool):
        return not default
    # far below the default: sizes a tiny run caps (memory, feature width) still bite
    if isinstance(default, numbers.Integral):
        return default // 10 if default >= 10 else default // 2 if default >= 2 else default + 1
    if isinstance(default, numbers.Real):
        return default * 0.1 if default else 0.1
    if (
        isinstance(default, tuple)
        and default
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in default)
    ):
        return tuple(v * 0.1 for v in default)
    return None


def check_honours_arguments(
    cls: type[Strategy],
    build: Callable[..., Strategy],
    batches: list[Batch],
    given: dict[str, Any] | None = None,
) -> list[str]:
    """Every numeric or boolean argument the class adds to :class:`Strategy`'s is honoured
    (changed, it changes what a few steps learn, from a small, full memory, or what is then
    predicted) or refused (a
    ``ValueError`` saying why). The base's own arguments are the base's to honour; the
    class's :attr:`Strategy.passive_arguments` are not checked. An argument the setting
    ``given`` sets is changed from that value. Returns those checked."""
    skip = {*SET_BY_RUNNER, *LAYOUT_ONLY, *cls.passive_arguments, *Strategy.arguments()}
    baseline: dict[str, Any] = {}
    checked = []
    for name, (default, _help) in cls.arguments().items():
        default = (given or {}).get(name, default)
        value = _changed_value(default)
        if name in skip or value is None:
            continue
        context = {"optimizer": "adam"} if name == "betas" else {}
        key = tuple(sorted(context.items()))
        if key not in baseline:
            ref = build(**context)
            for batch in batches:
                ref.observe(batch)
            baseline[key] = _outcome(ref, batches[0])
        try:
            strategy = build(**context, **{name: value})
        except ValueError:
            checked.append(name)  # refused, with a message: honest
            continue
        for batch in batches:
            strategy.observe(batch)
        if not _differences(baseline[key], _outcome(strategy, batches[0])):
            raise StrategyCheckError(
                f"argument {name}={value!r} (default {default!r}) changed nothing in "
                f"{len(batches)} steps: honour it or refuse it (or list it in "
                f"{cls.__name__}.passive_arguments if it acts only outside observe())"
            )
        checked.append(name)
    return checked


def check_sync_budget(cls: type[Strategy], build: Callable[..., Strategy], stream) -> list[int]:
    """Every prequential step of a run over ``stream`` on (emulated) CUDA waits for the
    device at most :attr:`Strategy.sync_budget` times (0 unless a class says otherwise), and
    does nothing a GPU would refuse. Every batch of the stream is counted, and the run must
    go on for :data:`STEADY_STEPS` batches after the replay memory is full, so a sync on the
    replay path (or one that starts once the memory is full) cannot hide after the first
    batches. Returns the count of each batch."""
    from streamkd.evaluate import count_syncs

    counted = count_syncs(lambda: build(device="cuda"), stream)
    if counted.errors:
        raise StrategyCheckError("would fail on a GPU:\n" + "\n".join(counted.errors[:5]))
    if len(counted.steady) < STEADY_STEPS:
        raise ValueError(
            f"the sync check's stream ended {len(counted.steady)} batch(es) after the replay "
            f"memory filled; it needs {STEADY_STEPS} (a longer stream or a smaller memory)"
        )
    if counted.worst > cls.sync_budget:
        sites = "; ".join(f"{n} x {what} at {where}" for (what, where), n in counted.sites.items())
        raise StrategyCheckError(
            f"{counted.worst} host-device synchronisations in one step, over "
            f"{cls.__name__}.sync_budget = {cls.sync_budget} ({sum(counted.per_step)} in "
            f"{len(counted.per_step)} batches, {sum(counted.steady)} with a full memory): {sites}"
        )
    return counted.per_step


def check_strategy(
    cls: type[Strategy],
    *,
    setting: Setting | None = None,
    checks: Iterable[str] = ("learns", "refuses", "resumes", "arguments", "syncs"),
) -> dict[str, Any]:
    """Run the strategy contract on ``cls`` (its :meth:`Strategy.check_setting` unless
    ``setting`` is given): it learns, it refuses bad batches without a trace, it resumes
    bit-exactly from ``state_dict``, it honours or refuses every argument, and it stays
    within its sync budget. Raises :class:`StrategyCheckError` on the first broken promise;
    returns what each check saw."""
    if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
        raise TypeError(f"check_strategy takes a Strategy subclass, got {cls!r}")
    setting = setting or Setting(**cls.check_setting())
    stream = setting.make_stream()
    build = setting.builder(cls, stream)
    batches = _batches(stream, 6)
    if len(batches) < 4:
        raise ValueError(f"the check's stream gave {len(batches)} batches; it needs 4")
    seen: dict[str, Any] = {}
    for name in checks:
        if name == "learns":
            seen[name] = check_learns(build, batches)
        elif name == "refuses":
            check_refuses_bad_batches(build, batches)
        elif name == "resumes":
            check_resumes_exactly(build, batches)
        elif name == "arguments":
            small = setting.builder(cls, stream, memory=20)
            seen[name] = check_honours_arguments(cls, small, batches, setting.args)
        elif name == "syncs":
            seen[name] = check_sync_budget(cls, build, stream)
        else:
            raise ValueError(f"unknown check {name!r}")
        seen.setdefault(name, True)
    return seen


# -- the source contract ---------------------------------------------------------------------
def check_source(
    open_source: Callable[[], Any],
    write: Callable[[list[dict[str, Any]]], None],
    events: list[dict[str, Any]],
    *,
    batch: int = 3,
    timeout: float = 5.0,
) -> None:
    """Run the source contract: ``write(events)`` puts events where the source reads them,
    ``open_source()`` opens a fresh reader (as a restarted daemon does). Checks that every
    event is read once, in order; that ``position()`` after a read, stored and handed to a
    new reader's ``seek()``, replays exactly the events after it (a crash after a
    checkpoint); and that ``commit()`` of what was read loses nothing after it."""
    import time

    def read_all(source, n: int) -> list[Any]:
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            got += source.read(batch)
        return got

    def ids(lines) -> list[str | None]:
        return [line.event.id if line.event is not None else None for line in lines]

    write(events)
    want = [e["id"] for e in events]
    first = open_source()
    try:
        head = read_all(first, len(want) // 2)
        cut = first.position()
        first.commit(len(head))
        rest = read_all(first, len(want) - len(head))
    finally:
        first.close()
    if ids(head + rest) != want:
        raise SourceCheckError(
            f"read {ids(head + rest)}, expected each event once, in order: {want}"
        )
    second = open_source()
    try:
        second.seek(cut)
        replay = read_all(second, len(rest))
    finally:
        second.close()
    if ids(replay) != ids(rest):
        raise SourceCheckError(
            f"a reader resumed at position {cut!r} read {ids(replay)}, expected {ids(rest)}"
        )


__all__ = [
    "STEADY_STEPS",
    "Setting",
    "SourceCheckError",
    "StrategyCheckError",
    "check_honours_arguments",
    "check_learns",
    "check_refuses_bad_batches",
    "check_resumes_exactly",
    "check_source",
    "check_strategy",
    "check_sync_budget",
]
