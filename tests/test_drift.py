import json
from pathlib import Path

import pytest
import torch
from river import drift as river_drift

from streamkd.checkpoint import Checkpointer
from streamkd.cli import main
from streamkd.drift import DriftMonitor
from streamkd.evaluate import run
from streamkd.experiment import make_model, make_strategy, make_stream


def _er(stream, seed=0):
    return make_strategy("er", make_model(stream, seed=seed, strategy="er"), memory=200, seed=seed)


def test_monitor_records_indexed_events_and_resets():
    mon = DriftMonitor("adwin")
    assert mon.update_many([0.0] * 1000, start_index=0) == []
    events = mon.update_many(torch.ones(1000), start_index=1000)
    assert len(events) >= 1 and events == mon.events
    assert events[0] == {"index": events[0]["index"], "detector": "adwin", "signal": "error"}
    assert 1000 <= events[0]["index"] < 1100  # flagged soon after the jump, not before it
    assert mon.n_updates == 2000
    mon.reset()
    assert mon.events == [] and mon.n_updates == 0 and not mon.detector.drift_detected


def test_detector_by_name_with_kwargs_or_as_instance():
    mon = DriftMonitor("page_hinkley", signal="loss", threshold=20.0)
    assert mon.describe()["drift"] == "page_hinkley" and mon.describe()["drift_threshold"] == 20
    assert mon.describe()["drift_signal"] == "loss"
    given = DriftMonitor(river_drift.ADWIN(delta=0.01))
    assert given.name == "adwin" and given.describe()["drift_delta"] == 0.01
    assert DriftMonitor("kswin").detector.seed == 0  # reproducible unless told otherwise
    with pytest.raises(ValueError, match="only apply to a detector given by name"):
        DriftMonitor(river_drift.ADWIN(), delta=0.1)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("ddm",), {}, "unknown drift detector 'ddm'; available: adwin, kswin, page_hinkley"),
        (("adwin",), {"signal": "accuracy"}, "unknown drift signal 'accuracy'"),
        ((object(),), {}, "must be a name (adwin, kswin, page_hinkley) or a river"),
    ],
)
def test_bad_detector_or_signal_gets_a_clear_error(args, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DriftMonitor(*args, **kwargs)


def test_cli_lists_valid_detectors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--drift", "ddm", "--no-track"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'ddm'" in err and all(
        name in err for name in ("adwin", "page_hinkley", "kswin")
    )


def test_adwin_flags_the_drift_of_river_concept_drift_stream():
    # ConceptDriftStream's defaults: Agrawal function 0 turns into function 2 around sample
    # 5000, over a sigmoid of width 1000 (so mostly within 4500-5500)
    stream = make_stream("river:ConceptDriftStream", seed=0, n_samples=7000)
    head = stream._data[0].x[:1000]  # standardise Agrawal's raw salaries and loans
    stream.mean, stream.std = tuple(head.mean(0).tolist()), tuple(head.std(0).tolist())
    mon = DriftMonitor("adwin")
    result = run(_er(stream), stream, drift=mon)
    at = [e["index"] for e in result["drift_events"]]
    assert result["drift_events"] == mon.events and mon.n_updates == 7000
    assert any(4500 <= i <= 6500 for i in at), at
    # events during the first ~1500 samples track the learner's own falling error; after that
    # nothing may fire until the drift begins
    assert not any(2500 <= i < 4000 for i in at), at


def test_error_signal_reuses_the_prequential_prediction(data_dir):
    """Monitoring adds no forward pass and changes nothing about learning."""

    def forwards(drift):
        stream = make_stream("elec2", data_dir=data_dir)
        strategy = _er(stream)
        calls = []
        strategy.model.register_forward_hook(lambda *_: calls.append(1))
        result = run(strategy, stream, max_samples=1000, drift=drift)
        return len(calls), result

    plain_calls, plain = forwards(None)
    mon = DriftMonitor("adwin")
    drift_calls, watched = forwards(mon)
    assert drift_calls == plain_calls
    assert watched["prequential_acc"] == plain["prequential_acc"]
    assert mon.n_updates == 1000 and "drift_events" not in plain


def test_loss_signal_is_fed_once_per_batch(data_dir):
    stream = make_stream("elec2", data_dir=data_dir, batch_size=10)
    mon = DriftMonitor("page_hinkley", signal="loss")
    result = run(_er(stream), stream, max_samples=500, drift=mon)
    assert mon.n_updates == 50 and result["drift_events"] == mon.events
    with pytest.raises(ValueError, match="needs prequential=True"):
        run(_er(stream), stream, drift=DriftMonitor("adwin"), prequential=False)


def test_state_is_plain_and_resume_detects_what_an_uninterrupted_run_does(tmp_path, data_dir):
    def fresh():
        stream = make_stream("elec2", data_dir=data_dir)
        return _er(stream), stream, DriftMonitor("adwin")

    strategy, stream, mon = fresh()
    full = run(strategy, stream, max_samples=4000, drift=mon)
    assert len(full["drift_events"]) >= 2  # the comparison below must have something to match

    ck = Checkpointer(tmp_path)
    strategy, stream, mon = fresh()
    run(strategy, stream, max_samples=1700, drift=mon, checkpointer=ck, checkpoint_every=500)
    state = ck.load_latest()  # torch.load(weights_only=True): plain values only
    assert state["evaluator"]["drift"]["events"] == mon.events
    strategy, stream, mon = fresh()
    resumed = run(strategy, stream, max_samples=4000, drift=mon, resume_state=state)
    assert resumed["drift_events"] == full["drift_events"]
    with pytest.raises(ValueError, match="drift state is for 'adwin'"):
        DriftMonitor("page_hinkley").load_state_dict(state["evaluator"]["drift"])


def test_cli_elec2_puts_drift_events_in_json_and_mlflow(tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out.json"
    argv = ["run", "--stream", "elec2", "--strategy", "er", "--drift", "adwin"]
    argv += ["--max-samples", "3000", "--json", str(out), "--tracking-uri", uri, "--quiet"]
    assert main(argv) == 0
    assert "drift (adwin on error):" in capsys.readouterr().out
    run_json = json.loads(out.read_text())["runs"][0]
    events = run_json["drift_events"]
    assert events and all(e["detector"] == "adwin" and e["signal"] == "error" for e in events)
    assert all(0 <= e["index"] < run_json["samples"] for e in events)

    client = mlflow.tracking.MlflowClient(uri)
    run_id = run_json["mlflow_run_id"]
    history = client.get_metric_history(run_id, "drift")
    assert sorted(m.step for m in history) == [e["index"] for e in events]
    assert all(m.value == 1.0 for m in history)
    logged = client.get_run(run_id).data
    assert logged.metrics["drift_events"] == len(events)
    assert logged.params["drift"] == "adwin" and logged.params["drift_signal"] == "error"
    saved = Path(client.download_artifacts(run_id, "result.json", str(tmp_path)))
    assert json.loads(saved.read_text())["drift_events"] == events
