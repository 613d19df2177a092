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
        (["run", "--strategy", "ewc", "--no-track"], "unknown strategy 'ewc'; available: er, "),
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
    assert data["stream"] == "split-digits" and len(data["runs"]) == 4
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
    assert len(history) >= 2 and history[-1].step > history[0].step  # step = samples seen
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
