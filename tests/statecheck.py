"""Whole-state comparison for tests that feed a learner bad input: a refusal must leave
every tensor of ``state_dict()`` (model, optimizer, buffer, generator, counters) alone."""

from __future__ import annotations

import math

import torch


def snapshot(strategy) -> dict:
    """Everything a rejected input must leave alone (``state_dict`` copies every tensor)."""
    return strategy.state_dict()


def same_state(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
        )
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def changed_paths(a, b, path="state") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return [d for k in a for d in changed_paths(a[k], b[k], f"{path}.{k}")]
    return [] if same_state(a, b) else [path]


def assert_unchanged(before: dict, strategy) -> None:
    changed = changed_paths(before, snapshot(strategy))
    assert not changed, f"a rejected input changed {changed}"


def assert_resumes_exactly(strategy, make, rest, probe) -> None:
    """Save ``strategy``, let it learn ``rest``; a fresh ``make()`` loaded with the saved
    state learns ``rest`` too: both predict ``probe`` alike, bit for bit (the teacher too, if
    any)."""
    saved = strategy.state_dict()
    for batch in rest:
        strategy.observe(batch)
    resumed = make()
    resumed.load_state_dict(saved)
    for batch in rest:
        resumed.observe(batch)
    assert torch.equal(strategy.predict(probe), resumed.predict(probe))
    if hasattr(strategy, "predict_teacher"):
        assert torch.equal(strategy.predict_teacher(probe), resumed.predict_teacher(probe))
