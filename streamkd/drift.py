"""Concept-drift monitoring: a river drift detector watching a learner's error or loss.

``DriftMonitor("adwin")`` feeds river's ``ADWIN`` (or ``PageHinkley``, ``KSWIN``, or any river
drift detector instance) one value at a time and records an event whenever it fires::

    monitor = DriftMonitor("adwin", signal="error")
    for i, (x, y) in enumerate(stream):
        monitor.update(float(model.predict_one(x) != y), index=i)
        model.learn_one(x, y)
    monitor.events  # [{"index": 10367, "detector": "adwin", "signal": "error"}, ...]

Signals: ``"error"`` is the 0/1 mistake of each prequential prediction (one value per sample,
``index`` = the sample's position in the stream); ``"loss"`` is the training loss of each
mini-batch (``index`` = the position of the batch's last sample). ``streamkd.evaluate.run``
takes a monitor as ``drift=`` and puts its events in the result and in MLflow.

Checkpoints: the project's checkpoints load with ``torch.load(weights_only=True)``, so
:meth:`DriftMonitor.state_dict` holds plain values only: the events, and the signal values
fed since the detector last restarted. river's detectors restart after each detection, so
their state is a function of exactly those values, and :meth:`load_state_dict` rebuilds it by
replaying them into a fresh detector (without recording events again): a resumed run detects
what an uninterrupted one would. Two limits: the replay keeps at most ``replay_limit`` values
(beyond that, resume replays the most recent ones and the detector state is approximate),
and a detector instance with its own unseeded randomness (``KSWIN(seed=None)``) cannot be
replayed exactly. KSWIN built by name gets ``seed=0`` unless a seed is given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from river.base import DriftDetector

DETECTORS: dict[str, str] = {"adwin": "ADWIN", "page_hinkley": "PageHinkley", "kswin": "KSWIN"}
SIGNALS = ("error", "loss")


def make_detector(name: str, **kwargs) -> DriftDetector:
    """The river drift detector registered as ``name``, built with ``kwargs``."""
    if name not in DETECTORS:
        raise ValueError(
            f"unknown drift detector {name!r}; available: {', '.join(sorted(DETECTORS))}"
        )
    from river import drift

    if name == "kswin":
        kwargs.setdefault("seed", 0)  # KSWIN samples its reference window at random
    return getattr(drift, DETECTORS[name])(**kwargs)


class DriftMonitor:
    """Runs a river drift detector over a per-sample or per-batch signal and keeps its events.

    ``detector`` is a name (``adwin``, ``page_hinkley``, ``kswin``; ``detector_kwargs`` go to
    its constructor) or a river ``DriftDetector`` instance (used as given; ``reset`` clones
    it). ``signal`` says what is fed: ``"error"`` or ``"loss"`` (see the module docstring).
    Non-finite values (a diverged loss) are not fed, so they cannot poison the detector.

    Examples:
        An error rate that jumps from 0 to 1 at sample 1,000:

        >>> monitor = DriftMonitor("adwin", signal="error")
        >>> [i for i in range(2000) if monitor.update(float(i >= 1000), index=i)]
        [1023]
        >>> monitor.events
        [{'index': 1023, 'detector': 'adwin', 'signal': 'error'}]
        >>> monitor.update_many(torch.zeros(5), start_index=2000)  # no new event
        []
        >>> monitor.update(float("nan"), index=2005), monitor.n_updates  # not fed
        (False, 2005)
    """

    def __init__(
        self,
        detector: str | DriftDetector = "adwin",
        *,
        signal: str = "error",
        replay_limit: int = 100_000,
        **detector_kwargs: Any,
    ) -> None:
        if signal not in SIGNALS:
            raise ValueError(f"unknown drift signal {signal!r}; expected one of {SIGNALS}")
        if replay_limit < 1:
            raise ValueError(f"replay_limit must be >= 1, got {replay_limit}")
        if isinstance(detector, str):
            self._prototype = make_detector(detector, **detector_kwargs)
            self.name = detector
        else:
            if detector_kwargs:
                raise ValueError(
                    "detector keyword arguments only apply to a detector given by name; "
                    f"got an instance and {sorted(detector_kwargs)}"
                )
            if not (hasattr(detector, "update") and hasattr(detector, "drift_detected")):
                raise ValueError(
                    f"detector must be a name ({', '.join(sorted(DETECTORS))}) or a river "
                    f"drift detector, got {type(detector).__name__}"
                )
            self._prototype = detector.clone()
            names = {cls: name for name, cls in DETECTORS.items()}
            self.name = names.get(type(detector).__name__, type(detector).__name__)
        self.signal = signal
        self.replay_limit = replay_limit
        self.detector = self._prototype.clone()
        self.events: list[dict[str, Any]] = []
        self.n_updates = 0
        self._history: list[float] = []  # values fed since the detector last restarted

    def update(self, value: float, index: int) -> bool:
        """Feed one value (the signal at stream position ``index``); True if drift fired."""
        value = float(value)
        if not math.isfinite(value):
            return False
        self.detector.update(value)
        self.n_updates += 1
        if self.detector.drift_detected:
            self.events.append({"index": int(index), "detector": self.name, "signal": self.signal})
            self._history.clear()  # river's detectors restart on their next update
            return True
        self._history.append(value)
        if len(self._history) > 2 * self.replay_limit:
            del self._history[: -self.replay_limit]
        return False

    def update_many(
        self, values: Iterable[float] | torch.Tensor, start_index: int
    ) -> list[dict[str, Any]]:
        """Feed consecutive values (positions ``start_index``, ``start_index + 1``, ...);
        returns the events they raised."""
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().flatten().tolist()
        before = len(self.events)
        for offset, value in enumerate(values):
            self.update(value, start_index + offset)
        return self.events[before:]

    def reset(self) -> None:
        """Forget everything: a fresh detector and no events."""
        self.detector = self._prototype.clone()
        self.events = []
        self.n_updates = 0
        self._history = []

    def describe(self) -> dict[str, Any]:
        """Flat, plain description (for MLflow params): detector, signal and its settings."""
        out: dict[str, Any] = {"drift": self.name, "drift_signal": self.signal}
        for key, value in self._prototype._get_params().items():
            if isinstance(value, bool | int | float | str) or value is None:
                out[f"drift_{key}"] = value
        return out

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain values only (loadable with ``torch.load(weights_only=True)``)."""
        history = self._history[-self.replay_limit :]
        return {
            "detector": self.name,
            "signal": self.signal,
            "events": [dict(e) for e in self.events],
            "n_updates": self.n_updates,
            "history": torch.tensor(history, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the events and rebuild the detector by replaying the saved values."""
        if (state["detector"], state["signal"]) != (self.name, self.signal):
            raise ValueError(
                f"drift state is for {state['detector']!r} on {state['signal']!r}, this monitor "
                f"runs {self.name!r} on {self.signal!r}"
            )
        self.detector = self._prototype.clone()
        self._history = [float(v) for v in state["history"].tolist()]
        for value in self._history:  # these values did not fire before: record nothing
            self.detector.update(value)
        self.events = [dict(e) for e in state["events"]]
        self.n_updates = int(state["n_updates"])

    def __repr__(self) -> str:
        return (
            f"DriftMonitor({self.name!r}, signal={self.signal!r}, updates={self.n_updates}, "
            f"events={len(self.events)})"
        )
