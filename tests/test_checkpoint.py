import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from streamkd.checkpoint import FORMAT_VERSION, MAGIC, Checkpointer, CheckpointError
from streamkd.evaluate import run
from streamkd.experiment import make_model, make_strategy, make_stream, run_one


def test_save_load_round_trip_and_keep(tmp_path):
    ck = Checkpointer(tmp_path / "ck", keep=2)
    for step in (10, 20, 30):
        ck.save({"value": torch.tensor([step]), "nested": {"a": [1, 2]}}, step=step)
    assert [p.name for p in ck.paths()] == ["ckpt-000000000030.pt", "ckpt-000000000020.pt"]
    state = ck.load_latest()
    assert state["step"] == 30 and state["value"].item() == 30 and state["nested"]["a"] == [1, 2]
    assert not list((tmp_path / "ck").glob("*.tmp"))


def test_corrupt_checkpoint_is_refused_and_the_previous_one_used(tmp_path, caplog):
    ck = Checkpointer(tmp_path)
    ck.save({"value": torch.tensor([1])}, step=1)
    newest = ck.save({"value": torch.tensor([2])}, step=2)
    raw = bytearray(newest.read_bytes())
    raw[-10] ^= 0xFF
    newest.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt: its checksum does not match"):
        Checkpointer.load(newest)
    assert ck.load_latest()["value"].item() == 1
    assert "falling back to the previous checkpoint" in caplog.text
    # truncated and foreign files too
    newest.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a streamkd checkpoint"):
        Checkpointer.load(newest)
    only = Checkpointer(tmp_path / "only")
    bad = only.save({"v": 1}, step=5)
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        only.load_latest()


def test_checkpoint_refuses_pickled_objects(tmp_path):
    """weights_only loading: a checkpoint carrying arbitrary objects is refused."""
    import hashlib
    import io

    from streamkd.checkpoint import MAGIC

    buf = io.BytesIO()
    torch.save({"format": 1, "evil": object.__new__(subprocess.Popen)}, buf)
    data = buf.getvalue()
    path = tmp_path / "ckpt-000000000001.pt"
    path.write_bytes(MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n" + data)
    with pytest.raises(CheckpointError, match="unreadable payload"):
        Checkpointer.load(path)


def test_library_resume_equals_uninterrupted_run(tmp_path):
    def fresh(stream_seed=0):
        stream = make_stream("split-digits", seed=stream_seed)
        return make_strategy(
            "mir", make_model(stream), memory=100, optimizer="adam", lr=1e-3
        ), stream

    full_strategy, full_stream = fresh()
    full = run(full_strategy, full_stream, log_every=50)  # max_samples below would shrink

    ck = Checkpointer(tmp_path)
    first, stream = fresh()
    run(first, stream, max_samples=600, checkpointer=ck, checkpoint_every=250, log_every=50)
    state = ck.load_latest()
    assert 600 <= state["step"] < 620  # batches never straddle segments
    second, stream = fresh()
    resumed = run(second, stream, checkpointer=ck, checkpoint_every=250, resume_state=state)
    assert resumed["acc_matrix"] == full["acc_matrix"]
    assert resumed["prequential_acc"] == full["prequential_acc"]
    assert resumed["samples"] == full["samples"]
    assert resumed["curve"] == full["curve"]


def _write_raw(path, payload: dict) -> None:
    """A checkpoint file holding ``payload`` as it is (its format untouched)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    path.write_bytes(MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n" + data)


def _as_format_1(path) -> None:
    """Rewrite a checkpoint in the layout streamkd wrote before the shared schema."""
    state = Checkpointer.load(path)
    kind = state.pop("kind")
    if kind == "run":
        state["stream_position"] = state.pop("position")
        del state["counters"]
    else:
        state["source_position"] = state.pop("position")
        state["events_learned"] = state["counters"]["events_learned"]
    _write_raw(path, {**state, "format": 1})


def test_a_run_resumes_from_checkpoints_written_in_format_1(tmp_path):
    def fresh():
        stream = make_stream("split-digits", seed=0)
        return make_strategy("er", make_model(stream), memory=100), stream

    full = run(*fresh(), log_every=50)
    ck = Checkpointer(tmp_path, kind="run")
    run(*fresh(), max_samples=600, checkpointer=ck, checkpoint_every=250, log_every=50)
    for path in ck.paths():
        _as_format_1(path)
        payload = path.read_bytes()[len(MAGIC) + 65 :]
        assert torch.load(io.BytesIO(payload), weights_only=True)["format"] == 1
    state = ck.load_latest()
    assert state["kind"] == "run" and state["format"] == FORMAT_VERSION
    assert state["counters"]["events_learned"] == state["step"] >= 600
    resumed = run(*fresh(), checkpointer=ck, checkpoint_every=250, resume_state=state)
    assert resumed["acc_matrix"] == full["acc_matrix"] and resumed["curve"] == full["curve"]


def test_a_daemon_checkpoint_in_format_1_reads_in_the_shared_schema(tmp_path):
    from streamkd.serve.learner import inspect_checkpoints

    stream = make_stream("split-digits", seed=0)
    strategy = make_strategy("er", make_model(stream), memory=20)
    counters = {"events_learned": 30, "lines_rejected": 1, "correct": 12, "predicted": 30}
    old = {
        "format": 1,
        "step": 30,
        "strategy": strategy.state_dict(),
        "source_position": 4096,
        "events_learned": 30,
        "counters": counters,
        "config": {"strategy": "er"},
        "mlflow_run_id": "",
        "drift": {},
    }
    _write_raw(tmp_path / "ckpt-000000000030.pt", old)
    state = Checkpointer(tmp_path, kind="daemon").load_latest()
    assert (state["kind"], state["position"], state["counters"]) == ("daemon", 4096, counters)
    info = inspect_checkpoints(tmp_path)
    assert info["source_position"] == 4096 and info["prequential_acc"] == 0.4
    # a run's folder does not take a daemon's checkpoint for its own
    with pytest.raises(CheckpointError, match="is a daemon's, and this folder is read as a run's"):
        Checkpointer(tmp_path, kind="run", writable=False).load_latest()


def test_a_checkpoint_of_a_newer_format_is_refused_naming_it(tmp_path):
    _write_raw(tmp_path / "ckpt-000000000010.pt", {"format": FORMAT_VERSION + 1, "step": 10})
    with pytest.raises(CheckpointError, match=f"has format {FORMAT_VERSION + 1}; this streamkd"):
        Checkpointer(tmp_path).load_latest()


@pytest.mark.slow
@pytest.mark.parametrize("stream", ["split-mnist", "elec2-fields"])
def test_killed_cli_run_resumes_to_the_same_accuracy_matrix(tmp_path, data_dir, stream):
    """A real SIGKILL half way through; --resume ends where the uninterrupted run ends (on
    images, and on multi-field inputs whose buffer holds one tensor per field)."""
    base = [
        sys.executable,
        "-m",
        "streamkd.cli",
        "run",
        "--strategy",
        "er",
        "--stream",
        stream,
        "--max-samples",
        "8000",
        "--memory",
        "200",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--quiet",
        "--checkpoint-every",
        "1500",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    env = {**os.environ, "STREAMKD_DATA": str(data_dir)}
    full = subprocess.run(
        [*base, "--checkpoint-dir", str(tmp_path / "full"), "--json", str(tmp_path / "full.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert full.returncode == 0, full.stderr
    ck_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [*base, "--checkpoint-dir", str(ck_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(ck_dir.glob("ckpt-*.pt")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = Checkpointer(ck_dir).load_latest()
    assert 0 < saved["step"] < 8000, "the run must be killed half way"
    resumed = subprocess.run(
        [*base, "--checkpoint-dir", str(ck_dir), "--resume", "--json", str(tmp_path / "res.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "full.json").read_text())["runs"][0]
    b = json.loads((tmp_path / "res.json").read_text())["runs"][0]
    assert b["resumed_from"] == saved["step"]
    assert b["acc_matrix"] == a["acc_matrix"]
    assert b["final_avg_acc"] == a["final_avg_acc"]
    assert b["prequential_acc"] == a["prequential_acc"] and b["curve"] == a["curve"]
    # the resumed run kept logging into the same MLflow run
    assert b["mlflow_run_id"] == saved["mlflow_run_id"]


def test_resume_with_a_corrupt_only_checkpoint_fails_clearly(tmp_path):
    ck = Checkpointer(tmp_path)
    stream = make_stream("split-digits")
    run(
        make_strategy("er", make_model(stream), memory=50),
        stream,
        max_samples=100,
        checkpointer=ck,
        checkpoint_every=50,
    )
    for p in ck.paths():
        p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        run_one("er", "split-digits", memory=50, checkpoint_dir=tmp_path, resume=True)
