import json

import pytest

from streamkd.cli import main


def test_lists(capsys):
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("naive", "er ", "er_ace", "mir"))
    assert main(["streams"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in ("split-digits", "split-mnist", "split-cifar10", "elec2", "river"))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "--strategy", "ewc", "--no-track"], "unknown strategy 'ewc'; available: droc, "),
        (["run", "--stream", "split-imagenet", "--no-track"], "unknown stream 'split-imagenet'"),
        (["compare", "--strategies", "er,gdumb", "--no-track"], "unknown strategy 'gdumb'"),
        (["run", "--stream", "river:NoSuchSet", "--no-track"], "unknown river dataset"),
        (["run", "--device", "tpu", "--no-track"], "unknown device 'tpu'"),
        (
            ["run", "--stream", "elec2", "--strategy", "scr", "--no-track"],
            "scr augments images and needs inputs shaped (C, H, W)",
        ),
    ],
)
def test_bad_names_get_clear_errors(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_missing_data_directory_says_where_it_looked(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    code = main(["run", "--stream", "split-cifar10", "--data-dir", str(missing), "--no-track"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(missing / "cifar10") in err and "STREAMKD_DATA" in err and "--data-dir" in err


def test_compare_writes_json_and_mlflow_runs(tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out.json"
    code = main(
        [
            "compare",
            "--stream",
            "split-digits",
            "--strategies",
            "naive,er",
            "--seeds",
            "0,1",
            "--memory",
            "100",
            "--json",
            str(out),
            "--tracking-uri",
            uri,
            "--quiet",
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "| naive |" in table and "±" in table
    data = json.loads(out.read_text())
    assert data["streams"] == ["split-digits"] and len(data["runs"]) == 4
    for r in data["runs"]:
        for key in (
            "strategy",
            "seed",
            "final_avg_acc",
            "avg_forgetting",
            "anytime_acc",
            "acc_matrix",
            "samples_per_s",
            "peak_mem_mb",
            "mlflow_run_id",
        ):
            assert key in r
        assert 0 <= r["final_avg_acc"] <= 1 and len(r["acc_matrix"]) == 5
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["streamkd"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 4
    assert {r.info.run_id for r in children} == {r["mlflow_run_id"] for r in data["runs"]}
    child = children[0]
    assert child.data.params["strategy"] in ("naive", "er")
    assert "final_avg_acc" in child.data.metrics and "loss" in child.data.metrics
    client = mlflow.tracking.MlflowClient(uri)
    history = client.get_metric_history(child.info.run_id, "loss")
    # a curve a person can read: ~1/100 of the 1,347-sample stream per point (>= 50 points)
    assert len(history) >= 50 and history[-1].step > history[0].step  # step = samples seen
    steps = [h.step for h in history]
    assert steps == sorted(steps) and steps[-1] == 1347
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"acc_matrix.json", "acc_matrix.png", "learning_curves.png"} <= artifacts


def test_run_prints_the_accuracy_matrix(capsys):
    assert main(["run", "--strategy", "er", "--no-track", "--quiet", "--max-samples", "300"]) == 0
    out = capsys.readouterr().out
    assert "accuracy matrix" in out


def test_write_json_is_atomic_and_optional(tmp_path):
    from streamkd.experiment import write_json

    path = tmp_path / "deep" / "out.json"
    write_json(path, {"runs": [1]})
    write_json(path, {"runs": [1, 2]})
    assert json.loads(path.read_text()) == {"runs": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temp file left behind
    write_json(None, {"ignored": True})  # an absent --json writes nothing


def test_strategy_args_reach_the_strategy_and_are_recorded(tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "mir.json"
    argv = ["run", "--strategy", "mir", "--strategy-args", '{"candidates": 20}']
    argv += ["--strategy-args", "mir.momentum=0.5", "--max-samples", "200", "--quiet"]
    assert main([*argv, "--json", str(out), "--tracking-uri", uri]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["hparams"]["candidates"] == 20 and run["hparams"]["momentum"] == 0.5
    params = mlflow.tracking.MlflowClient(uri).get_run(run["mlflow_run_id"]).data.params
    assert params["candidates"] == "20" and params["momentum"] == "0.5"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["run", "--strategy", "mir", "--strategy-args", '{"candidate": 20}'],
            "unknown argument 'candidate' for strategy 'mir'; valid: candidates, lr, optimizer",
        ),
        (
            ["compare", "--strategies", "naive,mir", "--strategy-args", "candidates=20"],
            "unknown argument 'candidates' for strategy 'naive'",
        ),
        (["run", "--strategy-args", "memory=5"], "set 'memory' with --memory"),
        (
            ["run", "--strategy", "er", "--strategy-args", "mir.candidate=5"],
            "unknown argument 'candidate' for strategy 'mir'",
        ),
        (["run", "--strategy-args", "{not json"], "is not valid JSON"),
        (["run", "--lr", "0.1", "--strategy-args", "lr=0.2"], "lr is given twice"),
        (["run", "--resume"], "--resume needs --checkpoint-dir"),
    ],
)
def test_bad_strategy_arguments_and_flags_exit_2_before_training(capsys, argv, expected):
    assert main([*argv, "--no-track", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_strategies_verbose_lists_arguments_with_defaults(capsys):
    assert main(["strategies", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "candidates" in out and "50" in out  # MIR's own argument and default
    assert "mixup_lambda_max" in out and "replay_per_class" in out
    assert main(["strategies"]) == 0
    assert "candidates" not in capsys.readouterr().out
