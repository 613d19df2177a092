"""The contract suites (``streamkd.checks``) and the plug-in registries: every registered
strategy and source passes its contract; purpose-built broken strategies fail it, each at
the promise it breaks; a strategy, a stream and a source added in one new file work with no
other edit."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from streamkd.checks import (
    Setting,
    SourceCheckError,
    StrategyCheckError,
    check_source,
    check_strategy,
)
from streamkd.registry import SOURCES, STRATEGIES, STREAMS, Registry
from streamkd.serve.wal import WriteAheadLog, wal_dir
from streamkd.strategies.er import ER
from streamkd.streams.jsonl import Event
from streamkd.streams.source import SourceContext, open_source
from streamkd.types import InvalidBatchError, StepResult

DIGITS = Setting("split-digits", {"max_per_segment": 30, "order": "fixed"})


# the costly ones (5-20 s each: ResNet steps, many arguments) run in the slow tier
COSTLY = {"onpro", "lightsuan", "hpcr", "scr"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow] if n in COSTLY else []) for n in STRATEGIES]
)
def test_every_registered_strategy_passes_the_contract(name):
    seen = check_strategy(STRATEGIES[name])
    assert set(seen) == {"learns", "refuses", "resumes", "arguments", "syncs"}
    assert len(seen["syncs"]) >= 6  # every batch of the setting's stream


# -- broken on purpose: each fails at the promise it breaks -----------------------------------
class CountsBeforeChecking(ER):
    """Counts the batch before validating it: a refused batch still moves the count."""

    def observe(self, batch):
        self.samples_seen += len(batch)
        return super().observe(batch)


class ForgetsItsSchedule(ER):
    """Decays its learning rate by a step counter it does not save."""

    def __init__(self, model, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.steps = 0

    def observe(self, batch):
        self.steps += 1
        for group in self.optimizer.param_groups:
            group["lr"] = 0.1 / self.steps
        return super().observe(batch)


class IgnoresAnArgument(ER):
    def __init__(self, model, *, sharpness: float = 2.0, **kwargs) -> None:
        """Args:
        sharpness: accepted, recorded, never used
        """
        super().__init__(model, **kwargs)


class ReadsTheLoss(ER):
    """Reads its loss back on the host every step, over a budget of none."""

    sync_budget = 0

    def observe(self, batch):
        step = super().observe(batch)
        self.last_loss = float(step.loss)
        return step


class ReadsLateInReplay(ER):
    """Reads the loss once its memory has been replacing for a while (reservoir sampling past
    twice its capacity): a sync that the first batches after the memory filled do not show."""

    def observe(self, batch):
        step = super().observe(batch)
        if self.samples_seen > 2 * self.buffer.capacity:
            self.last_loss = float(step.loss)
        return step


def test_a_strategy_that_changes_its_state_on_a_refused_batch_fails():
    with pytest.raises(StrategyCheckError, match=r"changed the state: state\.samples_seen"):
        check_strategy(CountsBeforeChecking, setting=DIGITS, checks=["refuses"])
    check_strategy(ER, setting=DIGITS, checks=["refuses"])  # its parent passes


def test_a_strategy_whose_resume_drifts_fails():
    with pytest.raises(StrategyCheckError, match="resumed run drifts .* state.model"):
        check_strategy(ForgetsItsSchedule, setting=DIGITS, checks=["resumes"])


def test_a_strategy_that_ignores_an_argument_fails():
    with pytest.raises(StrategyCheckError, match="argument sharpness=0.2 .* changed nothing"):
        check_strategy(IgnoresAnArgument, setting=DIGITS, checks=["arguments"])


def test_a_strategy_over_its_sync_budget_fails():
    with pytest.raises(
        StrategyCheckError,
        match=r"1 host-device .*ReadsTheLoss\.sync_budget = 0 \(15 in 15 batches, 11 with a full "
        r"memory\): 15 x __float__",
    ):
        check_strategy(ReadsTheLoss, setting=DIGITS, checks=["syncs"])


def test_a_sync_late_on_the_replay_path_fails_the_budget():
    """The check counts the whole stream, not a few batches after the memory filled."""
    with pytest.raises(StrategyCheckError, match=r"ReadsLateInReplay\.sync_budget = 0 \(7 in 15"):
        check_strategy(ReadsLateInReplay, setting=DIGITS, checks=["syncs"])


def test_the_sync_check_refuses_a_stream_that_never_fills_the_memory():
    big = Setting("split-digits", DIGITS.stream_args, args={"memory": 500})  # 150 samples
    with pytest.raises(ValueError, match="0 batch.* after the replay memory filled; it needs 3"):
        check_strategy(ER, setting=big, checks=["syncs"])


def test_a_strategy_that_does_not_learn_fails():
    class NeverSteps(ER):
        def observe(self, batch):
            x, y = self.prepare(batch)
            return StepResult(self.model(x).sum() * 0, len(y))

    with pytest.raises(StrategyCheckError, match="predicted no better than its most common"):
        check_strategy(NeverSteps, setting=DIGITS, checks=["learns"])


# -- plug-ins in one file -------------------------------------------------------------------
PLUGIN = '''
"""A strategy, a stream and a source in one file, nothing else edited."""
import torch.nn.functional as F

from streamkd.registry import SOURCES, STREAMS
from streamkd.strategy import Strategy
from streamkd.streams.digits import split_digits
from streamkd.streams.jsonl import open_jsonl
from streamkd.types import StepResult


class SmoothedReplay(Strategy):
    name = "smoothed_replay_{tag}"
    help = "experience replay with label smoothing (a test's plug-in)"

    def __init__(self, model, *, smoothing: float = 0.1, **kwargs):
        """Args:
        smoothing: label smoothing of the cross-entropy
        """
        super().__init__(model, **kwargs)
        self.smoothing = smoothing

    def observe(self, batch):
        x, y = self.prepare(batch)
        inputs, labels = self.with_replay(x, y)
        loss = F.cross_entropy(self.model(inputs), labels, label_smoothing=self.smoothing)
        self.step(loss)
        self.remember(x, y)
        return StepResult(loss.detach(), len(y))


@STREAMS.register("digits-{tag}", help="split-digits under another name (a test's plug-in)")
def digits_again(seed=0, batch_size=10, data_dir=None, max_per_segment=None, order="seeded"):
    return split_digits(
        seed=seed, batch_size=batch_size, max_per_segment=max_per_segment, order=order
    )


SOURCES.register("jsonl{tag}", lambda url, ctx: open_jsonl("jsonl:" + url.split(":", 1)[1], ctx),
                 help="jsonl{tag}:PATH")
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The plug-in file written into a fresh folder on ``sys.path`` and imported."""
    tag = tmp_path.name[-6:].replace("-", "_").lower()
    (tmp_path / f"plugin_{tag}.py").write_text(PLUGIN.replace("{tag}", tag))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(f"plugin_{tag}")
    yield tag, module, tmp_path
    STRATEGIES.unregister(f"smoothed_replay_{tag}")  # later tests see the built-in ones only
    STREAMS.unregister(f"digits-{tag}")
    SOURCES.unregister(f"jsonl{tag}")


def test_a_strategy_in_one_new_file_passes_the_contract_and_runs_from_the_cli(plugin):
    from streamkd.cli import main

    tag, module, folder = plugin
    assert STRATEGIES[f"smoothed_replay_{tag}"] is module.SmoothedReplay
    check_strategy(module.SmoothedReplay)
    out = folder / "run.json"
    code = main(
        ["run", "--strategy", f"smoothed_replay_{tag}", "--stream", f"digits-{tag}"]
        + ["--per-segment", "60", "--no-track", "--quiet", "--device", "cpu"]
        + ["--json", str(out)]
    )
    assert not code
    (result,) = json.loads(out.read_text())["runs"]
    assert result["strategy"] == f"smoothed_replay_{tag}" and result["samples"] == 300
    assert result["hparams"]["smoothing"] == 0.1  # recorded, as every strategy's arguments
    assert result["acc_matrix"][0][0] > 0.8  # its first two classes, learned: chance is 0.5


def test_plugins_outside_the_package_load_from_streamkd_plugins(plugin):
    """A fresh process finds the file's strategy and stream by STREAMKD_PLUGINS alone."""
    tag, _module, folder = plugin
    env = {**os.environ, "STREAMKD_PLUGINS": f"plugin_{tag}", "PYTHONPATH": str(folder)}
    code = (
        "from streamkd.registry import STRATEGIES, STREAMS; print(list(STRATEGIES), list(STREAMS))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"smoothed_replay_{tag}" in out.stdout and f"digits-{tag}" in out.stdout
    env["STREAMKD_PLUGINS"] = "no_such_plugin_module"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode and "STREAMKD_PLUGINS names 'no_such_plugin_module'" in out.stderr


def test_a_name_taken_by_another_plugin_is_refused():
    registry: Registry = Registry("widget")
    registry.register("a", int)
    registry.register("a", int)  # the same object again: fine
    with pytest.raises(ValueError, match="widget name 'a' is taken by builtins.int"):
        registry.register("a", float)
    with pytest.raises(ValueError, match="unknown widget 'b'; available: a"):
        registry.get("b")
    with pytest.raises(ValueError, match="strategy name 'er' is taken"):

        class AnotherER(ER):
            name = "er"


def test_an_unknown_source_scheme_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown source 'ftp://x'; expected one of: .*jsonl:PATH"):
        open_source("ftp://x", SourceContext((4,)))
    assert {"http", "jsonl", "redis", "rediss"} <= set(SOURCES)
    assert "split-digits" in STREAMS


# -- the source contract ----------------------------------------------------------------------
SHAPE = (4,)
EVENTS = [{"id": f"e{i}", "x": [float(i)] * 4, "y": i % 3} for i in range(11)]


def _jsonl_writer(path):
    def write(events):
        with open(path, "a") as f:
            f.writelines(json.dumps(e) + "\n" for e in events)

    return write


def test_the_jsonl_source_passes_the_source_contract(tmp_path):
    path = tmp_path / "events.jsonl"
    context = SourceContext(SHAPE, finite=True)
    check_source(lambda: open_source(f"jsonl:{path}", context), _jsonl_writer(path), EVENTS)


def test_the_http_wal_source_passes_the_source_contract(tmp_path):
    log = WriteAheadLog(wal_dir(tmp_path))

    def write(events):
        records = [
            (e["id"], Event(e["id"], np.asarray(e["x"], np.float32), e["y"]).to_record())
            for e in events
        ]
        log.append(records)

    context = SourceContext(SHAPE, folder=tmp_path, durable=lambda: log.durable_end)
    check_source(lambda: open_source("http", context), write, EVENTS)
    log.close()


def test_a_source_that_replays_from_the_start_fails_the_contract(tmp_path):
    from streamkd.streams.jsonl import JsonlSource

    class Amnesiac(JsonlSource):
        def seek(self, offset):  # forgets the checkpoint's position
            super().seek(0)

    path = tmp_path / "events.jsonl"
    with pytest.raises(SourceCheckError, match="resumed at position"):
        check_source(
            lambda: Amnesiac(path, SHAPE, torch.float32, follow=False),
            _jsonl_writer(path),
            EVENTS,
        )


def test_the_contract_is_documented_where_a_newcomer_looks():
    from pathlib import Path

    guide = (Path(__file__).parents[1] / "docs" / "extending.md").read_text()
    for name in ("check_strategy", "check_source", "sync_budget", "STREAMS.register"):
        assert name in guide, name
    assert textwrap.dedent(guide).count("\n") > 40


# -- what a review found ----------------------------------------------------------------------
def test_a_registry_whose_loading_failed_says_so_again_instead_of_a_partial_list():
    registry: Registry = Registry("widget", "no_such_package_for_widgets")
    for _ in range(2):  # not "unknown widget" the second time
        with pytest.raises(ModuleNotFoundError, match="no_such_package_for_widgets"):
            registry.get("a")


def test_the_same_strategy_file_imported_under_another_module_name_is_not_a_clash(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1]))  # `strategies` as a top package
    twin = importlib.import_module("strategies.er")
    assert twin.ER is not ER and STRATEGIES["er"] is ER


def test_a_validated_batch_changed_with_replace_is_checked_again():
    from dataclasses import replace

    learner = DIGITS.builder(ER, DIGITS.make_stream())()
    batch = next(iter(DIGITS.make_stream()))
    valid = learner.validate(batch)
    with pytest.raises(InvalidBatchError, match="shape"):
        learner.observe(replace(valid, x=batch.x[:, :-1]))
    assert learner.samples_seen == 0


def test_source_urls_are_checked_against_what_each_source_takes():
    for url in ("http://host/feed", "jsonl", "jsonl:", "ftp://x"):
        with pytest.raises(ValueError, match="unknown source"):
            open_source(url, SourceContext(SHAPE))
