"""Sweeps (``streamkd.sweep``) on the serial backend: cell identity, a sweep folder that skips
finished runs and resumes unfinished ones, and one MLflow run per cell however often a cell
is started. The Ray backend, on a real two-node cluster, is in ``test_sweep_ray.py``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from streamkd.atomic import json_text
from streamkd.sweep import Cell, cell_key, compare
from streamkd.tracking import IDENTITY_TAG, Tracker

# measurements of the machine, not results of the run: they differ between any two runs
MEASURED = ("train_seconds", "samples_per_s", "peak_mem_mb", "mlflow_run_id", "resumed_from")
GRID = dict(seeds=[0, 1], memory=50, max_samples=200, checkpoint_every=50)


def results(out: dict) -> list[dict]:
    """The runs as the JSON output holds them, less what the machine measured."""
    runs = json.loads(json_text(out["runs"]))
    return [{k: v for k, v in r.items() if k not in MEASURED} for r in runs]


def attempts(sweep: Path, cell: str) -> list[str]:
    return [line for line in (sweep / "logs" / f"{cell}.log").read_text().splitlines()]


def test_a_cell_is_known_by_what_decides_its_result():
    base = Cell("er", "split-digits", 50, 0, {}, {"batch_size": 10})
    same = [
        Cell("er", "split-digits", 50, 0, {}, {"batch_size": 10, "data_dir": "/else/where"}),
        Cell("er", "split-digits", 50, 0, {}, {"batch_size": 10, "progress": True}),
    ]
    other = [
        Cell("er", "split-digits", 50, 1, {}, {"batch_size": 10}),
        Cell("er", "split-digits", 200, 0, {}, {"batch_size": 10}),
        Cell("mir", "split-digits", 50, 0, {}, {"batch_size": 10}),
        Cell("er", "split-mnist", 50, 0, {}, {"batch_size": 10}),
        Cell("er", "split-digits", 50, 0, {"lr": 0.05}, {"batch_size": 10}),
        Cell("er", "split-digits", 50, 0, {}, {"batch_size": 20}),
    ]
    assert all(cell_key(c) == cell_key(base) for c in same)
    assert len({cell_key(c) for c in [base, *other]}) == 1 + len(other)


def test_a_sweep_folder_runs_only_what_is_missing_and_equals_a_plain_compare(tmp_path):
    plain = compare(["naive", "er"], "split-digits", **GRID)
    sweep = tmp_path / "sweep"
    first = compare(["naive", "er"], "split-digits", sweep_dir=sweep, **GRID)
    assert results(first) == results(plain)
    assert first["summary"].keys() == plain["summary"].keys() == {"naive", "er"}
    keys = first["cells"]
    assert sorted(p.stem for p in (sweep / "runs").glob("*.json")) == sorted(keys)
    assert all(len(attempts(sweep, k)) == 2 for k in keys)  # started, finished

    again = compare(["naive", "er"], "split-digits", sweep_dir=sweep, **GRID)
    assert again["runs"] == first["runs"]  # read back, not run
    assert all(len(attempts(sweep, k)) == 2 for k in keys)

    # half finished: one run never stored its result (its checkpoints remain: it resumes from
    # the newest one), another lost everything (it starts over)
    resumed, restarted = keys[3], keys[1]
    (sweep / "runs" / f"{resumed}.json").unlink()
    kept = sorted((sweep / "checkpoints" / resumed).glob("ckpt-*.pt"))
    for path in kept[1:]:
        path.unlink()  # keep only an early checkpoint: the run is genuinely mid-way
    (sweep / "runs" / f"{restarted}.json").unlink()
    shutil.rmtree(sweep / "checkpoints" / restarted)
    third = compare(["naive", "er"], "split-digits", sweep_dir=sweep, **GRID)
    assert results(third) == results(plain)
    log = attempts(sweep, resumed)
    assert len(log) == 5 and "resuming from" in log[3], log
    assert third["runs"][3]["resumed_from"] == int(kept[0].stem.split("-")[1])
    assert len(attempts(sweep, restarted)) == 4 and third["runs"][1]["resumed_from"] is None
    untouched = [k for k in keys if k not in (resumed, restarted)]
    assert all(len(attempts(sweep, k)) == 2 for k in untouched)


def _histories(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    keys = client.get_run(run_id).data.metrics
    return {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k))
        for k in keys
        if k not in ("train_seconds", "samples_per_s", "peak_mem_mb")
    }


@pytest.mark.slow  # MLflow stores: the fast tier keeps under 4 minutes
def test_one_mlflow_run_per_cell_however_often_it_is_started(tmp_path):
    """A re-invoked sweep reuses its parent run; a cell started again (a retry after a lost
    worker) continues its run, and nothing it had logged is logged twice."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    sweep = tmp_path / "sweep"
    first = compare(["er"], "split-digits", tracker=Tracker(uri), sweep_dir=sweep, **GRID)
    tracker = Tracker(uri)
    client = tracker.client
    before = {r["mlflow_run_id"]: _histories(client, r["mlflow_run_id"]) for r in first["runs"]}
    assert all(h["loss"] for h in before.values())

    keys = first["cells"]
    for key in keys:  # the first cell starts over, the second resumes mid-way
        (sweep / "runs" / f"{key}.json").unlink()
    shutil.rmtree(sweep / "checkpoints" / keys[0])
    for path in sorted((sweep / "checkpoints" / keys[1]).glob("ckpt-*.pt"))[1:]:
        path.unlink()
    again = compare(["er"], "split-digits", tracker=tracker, sweep_dir=sweep, **GRID)
    assert again["mlflow_parent_run_id"] == first["mlflow_parent_run_id"]
    assert [r["mlflow_run_id"] for r in again["runs"]] == list(before)
    runs = client.search_runs([tracker.experiment_id], max_results=50)
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(runs) == 3 and len(nested) == 2
    assert sorted(r.data.tags[IDENTITY_TAG] for r in nested) == sorted(keys)
    for run_id, history in before.items():
        assert _histories(client, run_id) == history  # no point twice, none missing

    with pytest.raises(ValueError, match="logs to sqlite:///.*re-invoke it the same way"):
        compare(
            ["er"],
            "split-digits",
            tracker=Tracker(f"sqlite:///{tmp_path / 'other.db'}"),
            sweep_dir=sweep,
            **GRID,
        )


def test_a_resumed_logger_drops_what_the_run_holds_already(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}")
    first = tracker.start_run("r")
    for step in (10, 20, 30):
        first.log_metrics({"loss": step / 10, "acc": 0.5}, step=step)
    first.log_metrics({"loss": 9.0}, step=30)  # a key logged twice at one step
    first.flush()
    again = tracker.resume_run(first.run_id)
    for step in (20, 30, 40):  # a replay from a checkpoint at step 10
        again.log_metrics({"loss": step / 10, "acc": 0.5}, step=step)
    again.log_metrics({"loss": 9.0}, step=30)
    again.end()
    client = tracker.client
    loss = [(m.step, m.value) for m in client.get_metric_history(first.run_id, "loss")]
    assert sorted(loss) == [(10, 1.0), (20, 2.0), (30, 3.0), (30, 9.0), (40, 4.0)]
    assert len(client.get_metric_history(first.run_id, "acc")) == 4


def test_the_cli_grid_writes_stream_and_memory_per_run(tmp_path, capsys):
    from streamkd.cli import main

    out = tmp_path / "out.json"
    argv = ["compare", "--strategies", "naive", "--stream", "split-digits", "--memory", "20,40"]
    argv += ["--max-samples", "100", "--no-track", "--quiet", "--json", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| naive split-digits m20 |" in table and "| naive split-digits m40 |" in table
    data = json.loads(out.read_text())
    assert data["streams"] == ["split-digits"] and data["memory"] == [20, 40]
    assert [(r["stream"], r["memory"]) for r in data["runs"]] == [
        ("split-digits", 20),
        ("split-digits", 40),
    ]


@pytest.mark.slow  # MLflow stores: the fast tier keeps under 4 minutes
def test_a_sweep_folder_holds_one_grid_logged_one_way(tmp_path):
    sweep = tmp_path / "sweep"
    compare(["naive"], "split-digits", sweep_dir=sweep, **GRID)
    with pytest.raises(ValueError, match="holds another grid"):
        compare(["naive"], "split-digits", sweep_dir=sweep, **{**GRID, "seeds": [0, 1, 2]})
    with pytest.raises(ValueError, match="ran without MLflow; re-invoke it the same way"):
        compare(
            ["naive"],
            "split-digits",
            tracker=Tracker(f"sqlite:///{tmp_path / 'm.db'}"),
            sweep_dir=sweep,
            **GRID,
        )


@pytest.mark.parametrize(
    ("grid", "flag"),
    [
        (dict(seeds=[0, 0]), "--seeds names 0 more than once"),
        (dict(memory=[50, 50]), "--memory names 50 more than once"),
    ],
)
def test_a_cell_named_twice_is_refused(grid, flag):
    with pytest.raises(ValueError, match=flag):
        compare(["naive"], "split-digits", **{**GRID, **grid})


@pytest.mark.slow  # MLflow stores: the fast tier keeps under 4 minutes
def test_a_retried_cell_keeps_the_params_its_run_holds(tmp_path):
    """A cell whose run holds a param of another value (it began on another device) is
    continued, not refused by MLflow's rule against changing a param."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}")
    sweep = tmp_path / "sweep"
    first = compare(["naive"], "split-digits", tracker=tracker, sweep_dir=sweep, **GRID)
    key, parent = first["cells"][0], first["mlflow_parent_run_id"]
    (sweep / "runs" / f"{key}.json").unlink()
    shutil.rmtree(sweep / "checkpoints" / key)
    tracker.client.delete_run(first["runs"][0]["mlflow_run_id"])
    began = tracker.start_run(  # as an attempt on a GPU node left it
        "naive-seed0",
        {"device": "cuda:0"},
        parent=tracker.resume_run(parent),
        tags={IDENTITY_TAG: key},
    )
    again = compare(["naive"], "split-digits", tracker=tracker, sweep_dir=sweep, **GRID)
    assert again["runs"][0]["mlflow_run_id"] == began.run_id
    params = tracker.client.get_run(began.run_id).data.params
    assert params["device"] == "cuda:0" and params["strategy"] == "naive"
