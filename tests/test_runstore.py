"""RunStore: a finished run is kept and reused; one made under other settings is refused,
never mixed into a table."""

from __future__ import annotations

import json

import pytest

from streamkd.runstore import RunMismatchError, RunStore


def test_a_stored_run_is_reused_and_other_settings_are_refused(tmp_path):
    calls = []

    def run():
        calls.append(1)
        return {"auc": 0.71}

    store = RunStore(tmp_path, {"stream": "s", "events": 100})
    assert store.get_or_run("a", {"seed": 0}, run) == {"auc": 0.71}
    assert RunStore(tmp_path, {"stream": "s", "events": 100}).get_or_run("a", {"seed": 0}, run)
    assert len(calls) == 1  # the second store read the file
    stored = json.loads((tmp_path / "a.json").read_text())
    assert stored["config"] == {"protocol": {"stream": "s", "events": 100}, "seed": 0}
    with pytest.raises(RunMismatchError, match="other settings"):
        RunStore(tmp_path, {"stream": "s", "events": 200}).get_or_run("a", {"seed": 0}, run)
    with pytest.raises(RunMismatchError, match="other settings"):
        store.get_or_run("a", {"seed": 1}, run)
    with pytest.raises(RunMismatchError, match="missing: run it first"):
        RunStore(tmp_path, {"stream": "s"}, read_only=True).get_or_run("b", {}, run)
    assert len(calls) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
