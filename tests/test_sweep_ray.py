"""``streamkd compare --backend ray`` on a real two-node Ray cluster with a real MLflow
tracking server (slow tier).

Ray's GCS, raylets and agents listen on every interface even when told 127.0.0.1, so the
cluster, the server and the driver live in a network namespace of their own that holds
only loopback (``unshare -n``; commands enter it with ``nsenter``). That needs root, as CI
has. The test process itself stays outside: it reads the tracking server's sqlite file,
the sweep folder and ``/proc``, and kills a worker with ``kill -9``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import skips

from streamkd.atomic import json_text
from streamkd.sweep import compare
from streamkd.tracking import IDENTITY_TAG, Tracker

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
HEAD_PORT, CLIENT_PORT, MLFLOW_PORT = 6390, 10001, 5055
MEASURED = ("train_seconds", "samples_per_s", "peak_mem_mb", "mlflow_run_id", "resumed_from")
TIMING_METRICS = ("train_seconds", "samples_per_s", "peak_mem_mb")


@dataclass
class Cluster:
    enter: list[str]  # prefix that runs a command inside the namespace
    env: dict[str, str]
    address: str
    tracking_uri: str
    store: Path  # the tracking server's sqlite file, read from outside

    def streamkd(self, *args: str, **popen) -> subprocess.Popen:
        cmd = [*self.enter, str(BIN / "streamkd"), *args]
        return subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
        )


def _run(cmd: list[str], env: dict[str, str], timeout: float = 120) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}{done.stderr[-2000:]}"


@pytest.fixture(scope="module")
def cluster():
    if skips.WHEN[skips.NETNS]():
        skips.skip(skips.NETNS)
    root = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))  # short: Ray's socket paths
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",  # the cluster's own secret, shared by its nodes
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
        # the Ray Client proxy starts a server per client; on 2 busy cores it can take longer
        # than Ray's 30 s default, and the client then gets "Initialization failure"
        "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "120",
    }
    holder = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 3600"])
    enter = ["nsenter", f"--net=/proc/{holder.pid}/ns/net", "--"]
    server = None
    try:
        for _ in range(50):  # the namespace exists once the holder has exec'd sleep
            if Path(f"/proc/{holder.pid}/cmdline").read_bytes().startswith(b"sleep"):
                break
            time.sleep(0.1)
        ray = str(BIN / "ray")
        node = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1"]
        node += ["--object-store-memory", str(10**8), "--disable-usage-stats"]
        head = [ray, "start", "--head", "--port", str(HEAD_PORT), "--include-dashboard", "false"]
        head += ["--ray-client-server-port", str(CLIENT_PORT)]
        _run([*enter, *head, "--temp-dir", str(root / "ray"), *node], env)
        _run([*enter, ray, "start", "--address", f"127.0.0.1:{HEAD_PORT}", *node], env)
        store = root / "mlflow.db"
        server = subprocess.Popen(
            [
                *enter,
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{store}",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(MLFLOW_PORT),
                "--workers",
                "1",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{MLFLOW_PORT}/health')"
        for _ in range(120):
            up = subprocess.run([*enter, sys.executable, "-c", probe], capture_output=True)
            if up.returncode == 0:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the MLflow server did not come up in 60 s")
        yield Cluster(
            enter, env, f"127.0.0.1:{HEAD_PORT}", f"http://127.0.0.1:{MLFLOW_PORT}", store
        )
    finally:
        subprocess.run([*enter, str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True)
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
        holder.kill()
        holder.wait()
        shutil.rmtree(root, ignore_errors=True)


def results(runs: list[dict]) -> list[dict]:
    """What the CLI writes of each run, less what the machine measured."""
    from streamkd.cli import _public

    runs = json.loads(json_text([_public(r) for r in runs]))
    return [{k: v for k, v in r.items() if k not in MEASURED} for r in runs]


def nested_runs(store: Path, parent: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("streamkd")
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]


def histories(store: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in client.get_run(run_id).data.metrics
        if key not in TIMING_METRICS
    }


def finish(proc: subprocess.Popen, timeout: float = 400) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out, err


GRID = ["--strategies", "naive,er", "--seeds", "0,1", "--memory", "50,200", "--quiet"]


def test_a_grid_on_two_nodes_equals_serial_one_mlflow_run_per_cell(cluster, tmp_path):
    # one torch thread per run on both backends: the same float sums, bit for bit
    serial = compare(
        ["naive", "er"], "split-digits", seeds=[0, 1], memory=[50, 200], cpus_per_run=1
    )
    sweep, out = tmp_path / "sweep", tmp_path / "ray.json"
    args = [*GRID, "--backend", "ray", "--address", cluster.address]
    args += ["--tracking-uri", cluster.tracking_uri, "--sweep-dir", str(sweep), "--json", str(out)]
    table, err = finish(cluster.streamkd("compare", *args))
    data = json.loads(out.read_text())
    assert results(data["runs"]) == results(serial["runs"])
    assert "0 of 8 runs finished before; 8 sent to Ray" in err
    nodes = {line.split(" node ")[1].split(" ")[0] for line in _logs(sweep)}
    assert len(nodes) == 2, nodes  # both nodes took runs
    nested = nested_runs(cluster.store, data["mlflow_parent_run_id"])
    assert len(nested) == 8
    assert {r.info.run_id for r in nested} == {r["mlflow_run_id"] for r in data["runs"]}
    assert len({r.data.tags[IDENTITY_TAG] for r in nested}) == 8

    # re-invoked when finished: nothing runs (Ray is not even reached), the table again
    again, err = finish(cluster.streamkd("compare", *args))
    assert again == table and "8 of 8 runs finished before" in err
    # half finished: only the missing cells run, into the runs they began
    before = {r.info.run_id: histories(cluster.store, r.info.run_id) for r in nested}
    gone = sorted((sweep / "runs").glob("*.json"))[:3]
    for path in gone:
        path.unlink()
    third, err = finish(cluster.streamkd("compare", *args))
    assert "5 of 8 runs finished before; 3 sent to Ray" in err
    assert results(json.loads(out.read_text())["runs"]) == results(serial["runs"])
    nested = nested_runs(cluster.store, data["mlflow_parent_run_id"])
    assert {r.info.run_id: histories(cluster.store, r.info.run_id) for r in nested} == before


def test_a_grid_through_ray_client(cluster, tmp_path):
    """``--address ray://HOST:PORT``: the driver is a Ray Client of the head node."""
    serial = compare(["naive"], "split-digits", seeds=[0, 1], memory=50, cpus_per_run=1)
    out = tmp_path / "client.json"
    args = ["--strategies", "naive", "--seeds", "0,1", "--memory", "50", "--quiet", "--no-track"]
    args += ["--backend", "ray", "--address", f"ray://127.0.0.1:{CLIENT_PORT}"]
    command = ["compare", *args, "--sweep-dir", str(tmp_path), "--json", str(out)]
    driver = cluster.streamkd(*command)
    _, err = driver.communicate(timeout=400)
    if driver.returncode == 2 and "Initialization failure from server" in err:
        # Ray's client proxy failed to start this client's server in time (seen once on a
        # loaded 2-core machine): connect again, as a user would, once
        driver = cluster.streamkd(*command)
        _, err = driver.communicate(timeout=400)
    assert driver.returncode == 0, err[-3000:]
    assert results(json.loads(out.read_text())["runs"]) == results(serial["runs"])


def _logs(sweep: Path) -> list[str]:
    return [
        line
        for path in sorted((sweep / "logs").glob("*.log"))
        for line in path.read_text().splitlines()
        if " attempt on " in line
    ]


def test_a_killed_worker_is_retried_and_resumes_from_its_checkpoint(cluster, tmp_path, data_dir):
    """kill -9 the worker running a cell mid-run: Ray retries the task, the retry resumes
    from the cell's checkpoint (its log says so), and the JSON and MLflow runs equal an
    uninterrupted sweep's: one run per cell, no metric point twice, none missing."""
    grid = ["--stream", "split-mnist", "--strategies", "er", "--seeds", "0,1", "--memory", "200"]
    grid += ["--per-segment", "1500", "--checkpoint-every", "500", "--quiet"]
    grid += ["--data-dir", str(data_dir)]
    sweep, out = tmp_path / "sweep", tmp_path / "ray.json"
    args = [*grid, "--backend", "ray", "--address", cluster.address, "--json", str(out)]
    args += ["--tracking-uri", cluster.tracking_uri, "--sweep-dir", str(sweep)]
    driver = cluster.streamkd("compare", *args)
    victim = _kill_mid_run(sweep, driver, last=6000)  # of 7,500 samples
    finish(driver)
    log = (sweep / "logs" / f"{victim}.log").read_text()
    assert log.count(" attempt on ") == 2 and "resuming from" in log, log
    data = json.loads(out.read_text())
    resumed = [r for r in data["runs"] if r["resumed_from"]]
    assert len(resumed) == 1 and 0 < resumed[0]["resumed_from"] < resumed[0]["samples"]

    # the same grid, uninterrupted, serially, into its own store
    uri = f"sqlite:///{tmp_path / 'plain.db'}"
    plain = compare(
        ["er"],
        "split-mnist",
        seeds=[0, 1],
        memory=200,
        data_dir=str(data_dir),
        stream_kwargs={"max_per_segment": 1500},
        model_kwargs={"nf": None},
        tracker=Tracker(uri),
        cpus_per_run=1,
    )
    assert results(data["runs"]) == results(plain["runs"])
    nested = nested_runs(cluster.store, data["mlflow_parent_run_id"])
    assert len(nested) == 2
    for ours, theirs in zip(data["runs"], plain["runs"], strict=True):
        assert histories(cluster.store, ours["mlflow_run_id"]) == histories(
            tmp_path / "plain.db", theirs["mlflow_run_id"]
        )


def _kill_mid_run(sweep: Path, driver: subprocess.Popen, last: int) -> str:
    """Wait until a cell has checkpointed before sample ``last`` and not finished, kill -9
    its worker; its key."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        for log in sorted((sweep / "logs").glob("*.log")) if (sweep / "logs").exists() else []:
            key = log.stem
            started = [line for line in log.read_text().splitlines() if " attempt on " in line]
            steps = [int(p.stem[5:]) for p in (sweep / "checkpoints" / key).glob("ckpt-*.pt")]
            if (
                started
                and steps
                and max(steps) < last
                and not (sweep / "runs" / f"{key}.json").exists()
            ):
                pid = int(started[-1].split(" pid ")[1].split(":")[0])
                os.kill(pid, signal.SIGKILL)
                return key
        time.sleep(0.05)
    pytest.fail("no cell was caught between its first checkpoint and its end")


def test_the_sweep_benchmark_runs_and_checks_ray_against_serial(tmp_path, data_dir):
    """benchmarks/sweep_ray.py on a tiny grid, its local Ray inside a loopback-only
    namespace of its own: the Ray results must equal the serial ones (it exits 1 if not)."""
    if skips.WHEN[skips.NETNS]():
        skips.skip(skips.NETNS)
    out = tmp_path / "sweep_ray.json"
    cmd = [sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "sweep_ray.py")]
    cmd += ["--per-segment", "100", "--strategies", "naive", "er", "--seeds", "0"]
    cmd += ["--memory", "50", "--data-dir", str(data_dir), "--json", str(out)]
    loopback = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([*loopback, *cmd], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["identical_results"] and data["config"]["runs"] == 2
    assert set(data["wall_seconds"]) == {"serial", "serial_1thread", "ray"}
    assert all(v > 0 for v in data["ratios"].values())
    assert data["task_round_trip_ms"] > 0 and data["ray_start_seconds"] > 0
