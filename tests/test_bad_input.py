"""The fault-injection suite: bad input never changes state, resume refuses what it cannot
honour, and what the CLI cannot do is said before the work starts, in one line, exit 2.

Extending it: a rejected batch is a row of ``BAD_BATCHES`` (a name, a function that turns a
good batch into the bad one, and the words the error must contain); a refused command is a
row of ``REFUSED_COMMANDS`` (argv and the words). Each batch row runs against every
registered strategy, and after every rejection :func:`assert_unchanged` compares the full
state (model, optimizer, buffer, generator, global RNG, counters) with a snapshot taken
before. The daemon's suite reuses ``snapshot``/``assert_unchanged`` and both tables.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from skips import not_as_root
from statecheck import assert_unchanged, changed_paths, same_state, snapshot

from streamkd.checkpoint import Checkpointer
from streamkd.cli import main
from streamkd.experiment import make_model, make_strategy, make_stream
from streamkd.strategies import STRATEGIES
from streamkd.types import Batch, InvalidBatchError

# the strategies that learn from images and vectors (CTR ones read named fields)
IMAGE_STRATEGIES = sorted(n for n, c in STRATEGIES.items() if not c.needs_fields)

# -- rejected batches: every strategy, after a few good uint8 batches ---------------------------

BadBatch = Callable[[Batch], Batch]


def _x(fn) -> BadBatch:
    return lambda b: Batch(fn(b.x), b.y)


def _y(fn) -> BadBatch:
    return lambda b: Batch(b.x, fn(b.y))


BAD_BATCHES: list[tuple[str, BadBatch, str]] = [
    ("float64 after uint8", _x(lambda x: x.double() / 255), "dtype torch.float64"),
    ("float16 after uint8", _x(lambda x: x.half() / 255), "dtype torch.float16"),
    ("float32 after uint8", _x(lambda x: x.float() / 255), "dtype torch.float32"),
    ("int32 images", _x(lambda x: x.int()), "dtype torch.int32"),
    ("int64 images", _x(lambda x: x.long()), "dtype torch.int64"),
    ("bool images", _x(lambda x: x > 0), "dtype torch.bool"),
    ("wrong image size", _x(lambda x: x[..., :20]), "per-sample shape"),
    ("flattened images", _x(lambda x: x.flatten(1)), "per-sample shape"),
    ("empty batch", lambda b: Batch(b.x[:0], b.y[:0]), "empty"),
    ("dict for a tensor model", _x(lambda x: {"image": x}), "takes a tensor"),
    ("label 10^6", _y(lambda y: torch.full_like(y, 10**6)), "class id 1000000"),
    ("label 10^9", _y(lambda y: torch.full_like(y, 10**9)), "class id 1000000000"),
    ("label beyond the stream's classes", _y(lambda y: torch.full_like(y, 10)), "class id 10"),
    ("negative label", _y(lambda y: y - 100), "negative class id"),
    ("float labels", _y(lambda y: y.float()), "integer class ids"),
    ("labels of the wrong length", _y(lambda y: y[:-1]), "one label per sample"),
    ("2-D labels", _y(lambda y: y[:, None]), "one label per sample"),
    ("no labels", _y(lambda y: None), "needs labels"),
]


@pytest.fixture(scope="module")
def mnist_batches(data_dir):
    stream = make_stream("split-mnist", seed=0, max_per_segment=20, batch_size=10, order="fixed")
    return stream, list(stream)


def _warm_strategy(name: str, stream, batches):
    model = make_model(stream, seed=0, strategy=name)
    strategy = make_strategy(name, model, memory=30, replay_batch=10, seed=0, max_classes=10)
    for batch in batches[:3]:
        strategy.observe(batch)
    return strategy


@pytest.mark.parametrize("name", IMAGE_STRATEGIES)
def test_rejected_batches_change_nothing(name, mnist_batches):
    """Every row is refused with InvalidBatchError before the model, optimizer, buffer,
    generator or counters move; afterwards a good batch still trains."""
    stream, batches = mnist_batches
    strategy = _warm_strategy(name, stream, batches)
    failures = []
    for row, make_bad, words in BAD_BATCHES:
        before = snapshot(strategy)
        try:
            strategy.observe(make_bad(batches[3]))
        except InvalidBatchError as err:
            if words not in str(err):
                failures.append(f"{row}: message {str(err)!r} lacks {words!r}")
        except Exception as err:  # noqa: BLE001 - the row's failure is what we report
            failures.append(f"{row}: {type(err).__name__}: {err}")
        else:
            failures.append(f"{row}: accepted")
        changed = changed_paths(before, snapshot(strategy))
        if changed:
            failures.append(f"{row}: changed {changed}")
    assert not failures, "\n".join(failures)
    seen = strategy.samples_seen
    strategy.observe(batches[3])
    assert strategy.samples_seen == seen + 10


def test_integer_images_other_than_uint8_are_refused_from_the_first_batch(mnist_batches):
    """Integer images are only read as uint8 (scaled by 1/255); int32 0..255 would be fed
    unscaled, so it is refused even when it is the first batch."""
    stream, batches = mnist_batches
    naive = make_strategy("naive", make_model(stream, seed=0), seed=0)
    before = snapshot(naive)
    with pytest.raises(InvalidBatchError, match="uint8 .* or floating point"):
        naive.observe(Batch(batches[0].x.int(), batches[0].y))
    assert_unchanged(before, naive)


def test_max_classes_default_and_the_streams_classes(mnist_batches):
    stream, batches = mnist_batches
    er = make_strategy("er", make_model(stream, seed=0), seed=0)
    assert er.max_classes == 10_000  # documented default cap of the head's growth
    with pytest.raises(ValueError, match="max_classes must be a positive integer"):
        make_strategy("er", make_model(stream, seed=0), max_classes=0)


# -- RiverClassifier ----------------------------------------------------------------------------


def _river_state(model) -> dict:
    state = {
        "pending_x": [list(r) for r in model._pending_x],
        "pending_y": list(model._pending_y),
        "classes": list(model.classes),
        "features": model.features,
    }
    if model.learner is not None:
        state["learner"] = snapshot(model.learner)
    return state


RIVER_BAD_SAMPLES: list[tuple[str, Callable[[dict], tuple[dict, object]], str]] = [
    ("unhashable label", lambda x: (x, [1]), "hashable"),
    ("NaN label", lambda x: (x, float("nan")), "NaN"),
    ("None label", lambda x: (x, None), "None"),
    ("feature beyond float32", lambda x: ({**x, "a": 1e300}, 1), "float32"),
    ("infinite feature", lambda x: ({**x, "a": float("inf")}, 1), "finite"),
    ("string feature", lambda x: ({**x, "a": "yes"}, 1), "finite number"),
    ("missing feature", lambda x: ({k: v for k, v in x.items() if k != "a"}, 1), "missing"),
]


def _river_rows(n):
    return [({"a": float(i % 3), "b": float(i % 5) / 5}, i % 2) for i in range(n)]


@pytest.mark.parametrize("batch_size", [1, 5])
def test_river_rejected_samples_leave_pending_batch_and_classes_untouched(batch_size):
    from streamkd.integrations.river import RiverClassifier

    rows = _river_rows(12)
    model = RiverClassifier("er", seed=0, batch_size=batch_size)
    for x, y in rows[:4]:
        model.learn_one(x, y)
    failures = []
    for row, make_bad, words in RIVER_BAD_SAMPLES:
        before = _river_state(model)
        try:
            model.learn_one(*make_bad(rows[4][0]))
        except ValueError as err:
            if words not in str(err):
                failures.append(f"{row}: message {str(err)!r} lacks {words!r}")
        except Exception as err:  # noqa: BLE001
            failures.append(f"{row}: {type(err).__name__}: {err}")
        else:
            failures.append(f"{row}: accepted")
        if not same_state(before, _river_state(model)):
            failures.append(f"{row}: changed the pending batch, classes or learner")
    assert not failures, "\n".join(failures)
    for x, y in rows[4:10]:  # the good samples buffered before are all learned
        model.learn_one(x, y)
    assert model.learner.samples_seen == 10 - 10 % batch_size
    assert model.classes == [0, 1]


def test_river_refused_first_samples_fix_no_layout():
    from streamkd.integrations.river import RiverClassifier

    model = RiverClassifier("er", seed=0)
    with pytest.raises(ValueError, match="float32"):
        model.learn_one({"a": 10**400}, 1)  # an int too large for a float
    assert model.features is None
    model = RiverClassifier("er", {"momentum": float("nan")}, seed=0)
    with pytest.raises(ValueError, match="momentum must be a finite number"):
        model.learn_one({"a": 1.0}, 1)  # the first step builds the strategy, which refuses
    assert model.features is None and model.classes == [] and not model._pending_y


def test_river_refuses_an_empty_first_sample_and_bad_frames():
    import pandas as pd

    from streamkd.integrations.river import RiverClassifier

    model = RiverClassifier("er", seed=0, batch_size=2)
    with pytest.raises(ValueError, match="no features"):
        model.learn_one({}, 1)
    assert model.features is None and model.learner is None
    model.learn_one({"a": 1.0}, 0)
    before = _river_state(model)
    for y in ([1.0, float("nan")], [[1], 2]):
        with pytest.raises(ValueError):
            model.learn_many(pd.DataFrame({"a": [1.0, 2.0]}), pd.Series(y))
        assert same_state(before, _river_state(model))
    with pytest.raises(ValueError, match="float32"):
        model.learn_many(pd.DataFrame({"a": [1.0, 1e300]}), pd.Series([0, 1]))
    assert same_state(before, _river_state(model))
    model.learn_many(pd.DataFrame({"a": [1.0, 2.0]}), pd.Series([0, 1]))
    assert model.learner.samples_seen == 3 and model.classes == [0, 1]


# -- resume ------------------------------------------------------------------------------------

BASE_RUN = ["run", "--strategy", "er", "--stream", "split-digits", "--memory", "100"]
BASE_RUN += ["--no-track", "--quiet", "--checkpoint-every", "300"]


@pytest.fixture
def saved_run(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert main([*BASE_RUN, "--checkpoint-dir", str(ck), "--max-samples", "600"]) == 0
    capsys.readouterr()
    return ck


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--batch-size", "20"], "batch_size 10 -> 20"),
        (["--seed", "1"], "seed 0 -> 1"),
        (["--lr", "0.5"], "lr 0.1 -> 0.5"),
        (["--stream", "split-mnist"], "stream split-digits -> split-mnist"),
        (["--memory", "50"], "memory 100 -> 50"),
        (["--strategy", "mir"], "strategy er -> mir"),
        (["--per-segment", "50"], "max_per_segment None -> 50"),
        (["--eval-every", "100"], "eval_every None -> 100"),
    ],
)
def test_resume_refuses_a_changed_configuration(saved_run, capsys, extra, words):
    files = sorted(p.name for p in saved_run.iterdir())
    code = main([*BASE_RUN, "--checkpoint-dir", str(saved_run), "--resume", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("streamkd: error: cannot resume") and words in err, err
    assert len(err.splitlines()) == 1, err
    assert sorted(p.name for p in saved_run.iterdir()) == files  # nothing written


def test_resume_with_the_same_configuration_and_a_new_stopping_point(saved_run, tmp_path):
    """Defaults spelled out (class order, width, the stream's classes) compare equal."""
    out = tmp_path / "res.json"
    same = ["--class-order", "seeded", "--nf", "20", "--max-classes", "10", "--lr", "0.1"]
    argv = [*BASE_RUN, "--checkpoint-dir", str(saved_run), "--resume", "--json", str(out)]
    assert main([*argv, *same]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["hparams"]["max_classes"] == 10  # a run caps labels at the stream's classes
    assert 600 <= run["resumed_from"] < 700 and run["samples"] == 1347


def test_resuming_a_finished_run_trains_nothing_more(saved_run, tmp_path):
    out = tmp_path / "res.json"
    args = [*BASE_RUN, "--checkpoint-dir", str(saved_run), "--resume", "--max-samples", "600"]
    assert main([*args, "--json", str(out)]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["samples"] == run["resumed_from"] >= 600


def test_a_checkpoint_without_a_recorded_configuration_is_refused_clearly(saved_run, capsys):
    ck = Checkpointer(saved_run)
    for path in ck.paths():
        state = Checkpointer.load(path)
        del state["config"]
        state.pop("format")
        path.unlink()
        ck.save(state, step=state.pop("step"))
    _refused(
        capsys,
        [*BASE_RUN, "--checkpoint-dir", str(saved_run), "--resume"],
        "does not record its run's configuration",
    )


def test_the_configuration_ignores_what_resolves_per_device(mnist_batches):
    from streamkd.experiment import run_config

    stream, _ = mnist_batches
    configs = [
        run_config(
            "er",
            make_strategy("er", make_model(stream, seed=0), channels_last=flag),
            stream,
        )
        for flag in (False, True)
    ]
    assert configs[0] == configs[1] and "device" not in configs[0]


def test_resume_removes_partial_temp_files_and_says_it_starts_fresh(tmp_path, capsys):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / ".ckpt-000000000300.pt.tmp").write_bytes(b"half a checkpoint")
    (ck / "ckpt-000000000600.pt.tmp").write_bytes(b"half a checkpoint")
    args = [*BASE_RUN, "--checkpoint-dir", str(ck), "--resume", "--max-samples", "100"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "removed 2 partial checkpoint file(s)" in err and "starting from the beginning" in err
    assert not list(ck.glob("*.tmp"))


def test_a_checkpoint_missing_keys_falls_back_to_the_previous_one(saved_run, caplog):
    newest, previous = Checkpointer(saved_run).paths()[:2]
    previous_step = Checkpointer.load(previous)["step"]
    state = Checkpointer.load(newest)
    del state["strategy"]
    state.pop("format")
    step = state.pop("step")
    newest.unlink()
    Checkpointer(saved_run).save(state, step=step)  # valid header and checksum, no strategy
    from streamkd.experiment import run_one

    result = run_one(
        "er",
        "split-digits",
        memory=100,
        checkpoint_dir=saved_run,
        checkpoint_every=300,
        resume=True,
        max_samples=700,
    )
    assert result["resumed_from"] == previous_step
    assert "lacks 'strategy'" in caplog.text


# -- the CLI: what it cannot do, it says first ---------------------------------------------------


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a refused command starts training."""
    from streamkd.strategy import Strategy

    def trained(self, batch):
        raise AssertionError("training started before the bad argument was refused")

    monkeypatch.setattr(Strategy, "prepare", trained)


def _refused(capsys, argv, words) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("streamkd: error:") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for word in [words] if isinstance(words, str) else words:
        assert word in err, err
    return err


RUN = ["run", "--stream", "split-digits", "--no-track", "--quiet"]
RAY = ["compare", "--backend", "ray", "--quiet", "--no-track"]

REFUSED_COMMANDS: list[tuple[str, list[str], str | list[str]]] = [
    ("lr nan", [*RUN, "--lr", "nan"], "lr must be a finite number"),
    ("lr inf", [*RUN, "--lr", "inf"], "lr must be a finite number"),
    ("momentum nan", [*RUN, "--strategy-args", "momentum=NaN"], "momentum must be a finite"),
    ("device mps", [*RUN, "--device", "mps"], "unknown device 'mps'"),
    ("device meta", [*RUN, "--device", "meta"], "unknown device 'meta'"),
    ("max-samples 0", [*RUN, "--max-samples", "0"], "max_samples must be a positive"),
    ("max-samples -5", [*RUN, "--max-samples", "-5"], "max_samples must be a positive"),
    ("checkpoint-every -5", [*RUN, "--checkpoint-every", "-5"], "checkpoint_every must be"),
    ("eval-every -1", [*RUN, "--eval-every", "-1"], "eval_every must be a positive"),
    ("test-per-segment 0", [*RUN, "--test-per-segment", "0"], "max_test_per_segment must be"),
    ("test-per-segment -5", [*RUN, "--test-per-segment", "-5"], "max_test_per_segment must be"),
    ("per-segment 0", [*RUN, "--per-segment", "0"], "max_per_segment must be"),
    ("batch-size 0", [*RUN, "--batch-size", "0"], "batch_size must be positive"),
    ("memory -1", [*RUN, "--memory", "-1"], "memory and replay_batch must be >= 0"),
    ("nf 0", [*RUN, "--nf", "0"], "nf must be a positive"),
    ("seed -1", [*RUN, "--seed", "-1"], "seed must be an integer in [0, 4294967295]"),
    ("seed 10^20", [*RUN, "--seed", "99999999999999999999"], "seed must be an integer in"),
    ("max-classes 0", [*RUN, "--max-classes", "0"], "max_classes must be a positive"),
    (
        "max-classes below the stream's",
        [*RUN, "--max-classes", "5"],
        "the stream declares 10 classes",
    ),
    ("seeds empty", ["compare", "--seeds", "", "--no-track", "--quiet"], "--seeds names no seed"),
    ("seeds commas", ["compare", "--seeds", ",,,", "--no-track", "--quiet"], "--seeds names no"),
    (
        "compare: a later strategy's NaN argument",
        ["compare", "--strategies", "naive,er", "--strategy-args", "er.lr=NaN", "--no-track"],
        "lr must be a finite number",
    ),
    (
        "compare max-samples 0",
        ["compare", "--max-samples", "0", "--no-track", "--quiet"],
        "max_samples must be a positive",
    ),
    ("device cuda:7", [*RUN, "--device", "cuda:7"], "device 'cuda:7'"),
    (
        "strategies empty",
        ["compare", "--strategies", "", "--no-track", "--quiet"],
        "--strategies names no strategy",
    ),
    (
        "compare seed -1",
        ["compare", "--seeds", "0,-1", "--no-track", "--quiet"],
        "seed must be an integer in",
    ),
    (
        "ray: nothing at --address",
        [*RAY, "--address", "127.0.0.1:1", "--sweep-dir", "sweep"],
        ["--address 127.0.0.1:1", "nothing answers"],
    ),
    (
        "ray: --address not HOST:PORT",
        [*RAY, "--address", "head", "--sweep-dir", "sweep"],
        "expected auto, HOST:PORT",
    ),
    ("ray: --address, no --sweep-dir", [*RAY, "--address", "auto"], "give --sweep-dir"),
    ("ray: a seed twice", [*RAY, "--seeds", "0,1,0"], "--seeds names 0 more than once"),
    (
        "ray: tracking server down",
        [*RAY[:-1], "--tracking-uri", "http://127.0.0.1:1"],
        ["http://127.0.0.1:1", "cannot reach"],
    ),
    ("ray: unknown strategy", [*RAY, "--strategies", "er,gdumb"], "unknown strategy 'gdumb'"),
    ("ray: unknown stream", [*RAY, "--stream", "split-digits,nope"], "unknown stream 'nope'"),
    ("ray: cpus per run 0", [*RAY, "--cpus-per-run", "0"], "--cpus-per-run must be > 0"),
    ("ray: memory -1 in the grid", [*RAY, "--memory", "50,-1"], "--memory sizes must be"),
    ("--address without ray", ["compare", "--address", "auto", "--no-track"], "needs --backend"),
    ("tracking garbage", [*RUN[:-2], "--tracking-uri", "garbage"], "--tracking-uri 'garbage'"),
    ("tracking foo://", [*RUN[:-2], "--tracking-uri", "foo://bar"], "--tracking-uri 'foo://bar'"),
    (
        "tracking unreachable server",
        [*RUN[:-2], "--tracking-uri", "http://127.0.0.1:1"],
        ["http://127.0.0.1:1", "cannot reach"],
    ),
    (
        "tracking sqlite in a missing folder",
        [*RUN[:-2], "--tracking-uri", "sqlite:////nonexistent/dir/x.db"],
        "folder /nonexistent/dir does not exist",
    ),
]


@pytest.mark.parametrize(
    ("argv", "words"), [r[1:] for r in REFUSED_COMMANDS], ids=[r[0] for r in REFUSED_COMMANDS]
)
def test_refused_commands_exit_2_in_one_line_before_training(capsys, no_training, argv, words):
    _refused(capsys, argv, words)
    assert not Path("/nonexistent").exists()
    assert not list(Path.cwd().rglob("*.tmp"))
    assert not Path("results").exists() and not Path("sweep").exists()  # nothing made


def test_output_locations_are_checked_before_training(tmp_path, capsys, no_training):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    (tmp_path / "a_dir").mkdir()
    cases = [
        (["--json", str(a_file / "out.json")], "not a directory"),
        (["--json", str(tmp_path / "a_dir")], "is a directory"),
        (["--checkpoint-dir", str(a_file)], "not a directory"),
        (["--checkpoint-dir", str(a_file / "ck")], "not a directory"),
    ]
    if Path("/proc/1").is_dir():  # unwritable even for root
        cases += [
            (["--json", "/proc/1/streamkd-out.json"], "cannot write"),
            (["--checkpoint-dir", "/proc/1/streamkd-ck"], "cannot write"),
        ]
    for extra, words in cases:
        _refused(capsys, [*RUN, *extra], words)
    assert not list(tmp_path.rglob("*.tmp"))


@not_as_root
def test_read_only_output_folders_are_refused_before_training(tmp_path, capsys, no_training):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        _refused(capsys, [*RUN, "--json", str(ro / "out.json")], "cannot write")
        _refused(capsys, [*RUN, "--checkpoint-dir", str(ro)], "cannot write")
    finally:
        ro.chmod(0o700)


def test_data_errors_name_the_file(tmp_path, capsys, no_training):
    empty = tmp_path / "empty"
    (empty / "mnist").mkdir(parents=True)
    _refused(
        capsys,
        [*RUN[:1], "--stream", "split-mnist", "--no-track", "--data-dir", str(empty)],
        [str(empty / "mnist" / "mnist.npz"), "expected"],
    )
    corrupt = tmp_path / "corrupt"
    (corrupt / "mnist").mkdir(parents=True)
    (corrupt / "mnist" / "mnist.npz").write_bytes(b"PK\x03\x04 not really a zip")
    _refused(
        capsys,
        [*RUN[:1], "--stream", "split-mnist", "--no-track", "--data-dir", str(corrupt)],
        [str(corrupt / "mnist" / "mnist.npz"), "cannot read"],
    )


def test_a_diverging_run_writes_strict_json(tmp_path, capsys):
    """lr 1e30 is finite, so it runs; the losses overflow and the JSON holds null, not NaN."""
    out = tmp_path / "out.json"
    code = main([*RUN, "--lr", "1e30", "--max-samples", "200", "--json", str(out)])
    assert code == 0
    text = out.read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"JSON holds {c}"))
    assert "NaN" not in text and "Infinity" not in text


# -- MLflow ------------------------------------------------------------------------------------


def _metrics(db: Path, run_id: str) -> list[tuple[str, int, float]]:
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "select key, step, value from metrics where run_uuid = ?", (run_id,)
        ).fetchall()
    return sorted((k, int(s), float(v)) for k, s, v in rows)


def test_final_and_windowed_prequential_accuracy_have_two_names(tmp_path, capsys):
    out = tmp_path / "out.json"
    db = tmp_path / "m.db"
    argv = [*RUN[:-2], "--quiet", "--max-samples", "300", "--json", str(out)]
    assert main([*argv, "--tracking-uri", f"sqlite:///{db}"]) == 0
    run = json.loads(out.read_text())["runs"][0]
    rows = _metrics(db, run["mlflow_run_id"])
    last = {k: v for k, s, v in rows if s == run["samples"]}
    assert {"prequential_acc", "prequential_acc_window"} <= set(last)
    assert last["prequential_acc"] == json.loads(out.read_text())["runs"][0]["prequential_acc"]
    assert sum(1 for k, s, _ in rows if k == "prequential_acc") == 1  # one meaning, one value


def test_metrics_are_flushed_with_every_checkpoint(tmp_path, monkeypatch):
    """What a checkpoint covers is in MLflow when the checkpoint exists: a crash right after
    a save loses no history (the kill -9 version is in the slow tier)."""
    from streamkd.checkpoint import Checkpointer
    from streamkd.experiment import run_one
    from streamkd.tracking import Tracker

    db = tmp_path / "m.db"
    seen: list[tuple[int, int]] = []
    real_save = Checkpointer.save

    def save(self, state, step):
        run_id = state["mlflow_run_id"]
        logged = {s for k, s, _ in _metrics(db, run_id) if k == "loss"}
        seen.append((step, max(logged, default=0)))
        return real_save(self, state, step)

    monkeypatch.setattr(Checkpointer, "save", save)
    run_one(
        "er",
        "split-digits",
        memory=50,
        tracker=Tracker(f"sqlite:///{db}"),
        checkpoint_dir=tmp_path / "ck",
        checkpoint_every=200,
        max_samples=800,
    )
    assert len(seen) >= 4
    for step, logged in seen:  # every curve point up to the checkpoint is already stored
        assert step - logged < 13 + 10, (step, logged)  # log interval 13 on split-digits


def _newest_step(ck: Path) -> int:
    return max((int(p.stem.split("-")[1]) for p in ck.glob("ckpt-*.pt")), default=0)


def _kill_at(args: list[str], ck: Path, min_step: int, env: dict) -> None:
    """Start the CLI, SIGKILL it a moment after a checkpoint at ``min_step`` or later."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "streamkd.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and _newest_step(ck) < min_step and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.05)  # after this checkpoint: curve points it does not cover yet
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"


@pytest.mark.slow
def test_kill_and_resume_keeps_the_mlflow_metric_history(tmp_path, data_dir):
    """Killed at three points, each followed by --resume: MLflow holds the uninterrupted
    run's history; only points logged between the last checkpoint and a kill appear twice."""
    import subprocess
    import sys

    db = tmp_path / "m.db"
    base = ["run", "--strategy", "er", "--stream", "split-mnist", "--memory", "200"]
    base += ["--max-samples", "6000", "--quiet", "--device", "cpu", "--checkpoint-every", "500"]
    base += ["--tracking-uri", f"sqlite:///{db}"]
    env = {**os.environ, "STREAMKD_DATA": str(data_dir)}
    cli = [sys.executable, "-m", "streamkd.cli"]
    full = subprocess.run(
        [*cli, *base, "--checkpoint-dir", str(tmp_path / "full"), "--json", str(tmp_path / "f")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert full.returncode == 0, full.stderr
    ck = tmp_path / "killed"
    args = [*base, "--checkpoint-dir", str(ck)]
    for min_step in (500, 2000, 3500):  # three kills, each run resumed by the next
        _kill_at([*args, *(["--resume"] if min_step > 500 else [])], ck, min_step, env)
        assert min_step <= _newest_step(ck) < 6000
    done = subprocess.run(
        [*cli, *args, "--resume", "--json", str(tmp_path / "r")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    a = json.loads((tmp_path / "f").read_text())["runs"][0]
    b = json.loads((tmp_path / "r").read_text())["runs"][0]
    assert b["resumed_from"] is not None and b["curve"] == a["curve"]
    want, got = _metrics(db, a["mlflow_run_id"]), _metrics(db, b["mlflow_run_id"])
    want = [m for m in want if m[0] not in ("train_seconds", "samples_per_s", "peak_mem_mb")]
    got = [m for m in got if m[0] not in ("train_seconds", "samples_per_s", "peak_mem_mb")]
    assert sorted(set(got)) == sorted(set(want))
    repeated = {m for m in got if got.count(m) > 1}
    assert len(repeated) < 0.3 * len(set(got))  # only the points after each last checkpoint


@pytest.mark.slow
def test_eight_compares_start_together_on_a_fresh_sqlite_store(tmp_path):
    import subprocess
    import sys

    db = tmp_path / "fresh.db"
    cmd = [sys.executable, "-m", "streamkd.cli", "compare", "--strategies", "naive,er"]
    cmd += ["--max-samples", "100", "--quiet", "--tracking-uri", f"sqlite:///{db}"]
    procs = [
        subprocess.Popen(
            [*cmd, "--seeds", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in range(8)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    with sqlite3.connect(db) as con:
        runs = con.execute("select name, status from runs").fetchall()
    assert len(runs) == 8 * 3  # a parent and two child runs per process
    assert {s for _, s in runs} == {"FINISHED"}


# -- property-based: random shapes, dtypes, labels and NaN/inf patterns -------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DTYPES = [torch.uint8, torch.float32, torch.float64, torch.float16, torch.int32, torch.int64]
DTYPES += [torch.bool, torch.int8]
SPECIALS = [0.0, 1.0, 255.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e300]


@st.composite
def batches(draw, shapes=((4,), (3,), (2, 2), ())):
    n = draw(st.integers(0, 4))
    shape = draw(st.sampled_from(shapes))
    dtype = draw(st.sampled_from(DTYPES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 9)))
    x = torch.rand((n, *shape), generator=gen, dtype=torch.float64)
    for _ in range(draw(st.integers(0, 2))):  # NaN/inf/huge values at random places
        if x.numel():
            x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from(SPECIALS))
    x = (x * 255).nan_to_num(0, 0, 0).to(dtype) if not dtype.is_floating_point else x.to(dtype)
    n_labels = n + draw(st.sampled_from([0, 0, 0, -1, 1]))
    labels = draw(
        st.lists(
            st.sampled_from([0, 1, 2, 3, -1, 9, 10**6, 2**40]),
            min_size=max(n_labels, 0),
            max_size=max(n_labels, 0),
        )
    )
    y_dtype = draw(st.sampled_from([torch.int64, torch.int64, torch.int32, torch.float32]))
    y = torch.tensor(labels, dtype=torch.int64).to(y_dtype) if labels or n_labels == 0 else None
    return Batch(x, y)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches())
def test_property_validate_batch_raises_only_invalid_batch_error(batch):
    from streamkd.types import validate_batch

    try:
        validate_batch(batch, (4,), max_classes=10)
    except InvalidBatchError:
        return
    x, y = batch.x, batch.y
    assert x.shape[1:] == (4,) and len(x) > 0
    assert x.dtype == torch.uint8 or (x.is_floating_point() and bool(torch.isfinite(x).all()))
    assert y is None or (len(y) == len(x) and int(y.min()) >= 0 and int(y.max()) < 10)


@pytest.fixture(scope="module")
def vector_strategy():
    from streamkd.models import build_model

    return make_strategy("er", build_model("mlp", (4,)), memory=8, seed=0, max_classes=10)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(batch=batches())
def test_property_observe_learns_or_rejects_whole(vector_strategy, batch):
    before = snapshot(vector_strategy)
    try:
        vector_strategy.observe(batch)
    except ValueError:  # InvalidBatchError is a ValueError
        assert_unchanged(before, vector_strategy)
        return
    assert vector_strategy.samples_seen == before["samples_seen"] + len(batch)


@st.composite
def river_samples(draw):
    keys = draw(st.sampled_from([("a", "b"), ("a",), ("a", "b", "c"), ()]))
    value = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-5, 5),
        st.sampled_from(["x", None, True]),
    )
    x = {k: draw(value) for k in keys}
    y = draw(
        st.one_of(
            st.integers(0, 3),
            st.sampled_from([float("nan"), None, "cat", (1, 2), [1]]),
            st.floats(),
        )
    )
    return x, y


@settings(max_examples=80, deadline=None)
@given(
    samples=st.lists(river_samples(), min_size=1, max_size=8), batch_size=st.sampled_from([1, 3])
)
def test_property_river_learns_or_rejects_whole(samples, batch_size):
    from streamkd.integrations.river import RiverClassifier

    model = RiverClassifier("er", seed=0, batch_size=batch_size)
    model.learn_one({"a": 0.0, "b": 1.0}, 0)
    accepted = 1
    for x, y in samples:
        before = _river_state(model)
        try:
            model.learn_one(x, y)
        except ValueError:
            assert same_state(before, _river_state(model))
            continue
        accepted += 1
    learned = model.learner.samples_seen if model.learner is not None else 0
    assert learned + len(model._pending_y) == accepted


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=4),
    labels=st.lists(
        st.one_of(st.integers(0, 2), st.sampled_from([float("nan"), None])), min_size=1, max_size=4
    ),
)
def test_property_river_learn_many_learns_or_rejects_whole(rows, labels):
    import pandas as pd

    from streamkd.integrations.river import RiverClassifier

    model = RiverClassifier("er", seed=0, batch_size=2)
    model.learn_one({"a": 0.0}, 0)
    before = _river_state(model)
    try:
        model.learn_many(
            pd.DataFrame({"a": rows}),
            pd.Series(labels[: len(rows)] + [0] * (len(rows) - len(labels))),
        )
    except ValueError:
        assert same_state(before, _river_state(model))
        return
    assert model.learner.samples_seen == 1 + len(rows)
