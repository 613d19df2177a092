"""MLflow tracking: a parent run per comparison, a nested run per strategy x seed.

Metrics are buffered and sent with ``log_batch`` (one request per 1,000 values and at the
end), so logging never dominates the step time; ``step`` is always the number of samples
seen. Default store: ``sqlite:///mlflow.db`` in the working directory.

A store is checked when the :class:`Tracker` is made, before any work: the URI's scheme, a
sqlite file's folder (never created behind the user's back), a server's reachability. A
new sqlite store is created and migrated under a file lock (``<db>.lock``), so several
processes starting on a fresh store at once do not race through MLflow's migrations.
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from streamkd.arguments import first_line
from streamkd.atomic import json_text

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "streamkd"
FLUSH_AT = 1000
SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")
PLAIN = ("databricks", "databricks-uc", "uc")  # MLflow's bare store names
PROBE_SECONDS = 5.0
IDENTITY_TAG = "streamkd.identity"  # a run's config hash: one MLflow run per sweep cell


def check_tracking_uri(uri: str) -> Path | None:
    """Refuse a tracking URI MLflow would fail on later (or silently misread), in one line;
    returns the database file of a sqlite store (``None`` for the others)."""
    from streamkd.atomic import check_writable

    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.split("+")[0]  # postgresql+psycopg2 -> postgresql
    if uri in PLAIN or scheme in PLAIN:
        return None
    if scheme not in SCHEMES:
        raise ValueError(
            f"--tracking-uri {uri!r} is not a store URI: expected sqlite:///PATH.db, "
            "http(s)://HOST:PORT, file:///PATH or a database URI (postgresql://, mysql://)"
        )
    if scheme == "sqlite":
        path = uri[len("sqlite:///") :].split("?")[0] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise ValueError(
                f"--tracking-uri {uri!r}: expected sqlite:///PATH.db (a file; "
                "sqlite:////abs/path.db for an absolute one)"
            )
        db = Path(path)
        if not db.parent.is_dir():
            raise ValueError(
                f"--tracking-uri {uri!r}: the folder {db.parent} does not exist (it is not "
                "created for you: a typo would scatter stores)"
            )
        check_writable(db, what="MLflow store")
        return db
    if scheme == "http":  # https is left to MLflow's own TLS settings (private CAs...)
        probe = uri.rstrip("/") + "/health"
        try:
            urllib.request.urlopen(probe, timeout=PROBE_SECONDS).close()
        except urllib.error.HTTPError:
            pass  # a server answered (an auth proxy may refuse /health): reachable
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ValueError(
                f"--tracking-uri {uri!r}: cannot reach the MLflow server ({reason})"
            ) from None
    return None


class Tracker:
    """A handle on one MLflow store and experiment."""

    def __init__(
        self, tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT
    ) -> None:
        import contextlib

        from filelock import FileLock
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri or DEFAULT_TRACKING_URI
        self.experiment = experiment
        db = check_tracking_uri(self.tracking_uri)
        # the first connection creates and migrates a new sqlite store; one process at a time
        lock = FileLock(f"{db}.lock") if db is not None else contextlib.nullcontext()
        try:
            with lock:
                self.client = MlflowClient(tracking_uri=self.tracking_uri)
                found = self.client.get_experiment_by_name(experiment)
                self.experiment_id = (
                    found.experiment_id
                    if found is not None
                    else self.client.create_experiment(experiment)
                )
        except MlflowException as err:
            raise ValueError(f"--tracking-uri {self.tracking_uri!r}: {first_line(err)}") from None

    def start_run(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        parent: RunLogger | None = None,
        tags: dict[str, str] | None = None,
    ) -> RunLogger:
        all_tags = dict(tags or {})
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent.run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        logger = RunLogger(self.client, run.info.run_id)
        if params:
            logger.log_params(params)
        return logger

    def resume_run(self, run_id: str) -> RunLogger:
        """Reopen a run (e.g. after a restart from a checkpoint) to keep logging into it.

        A replay from a checkpoint logs again what the run logged after that checkpoint;
        the returned logger drops, per metric and step, as many points as the run already
        holds there, so a resumed run's histories equal an uninterrupted one's."""
        self.client.update_run(run_id, status="RUNNING")
        logged: Counter = Counter()
        for key in self.client.get_run(run_id).data.metrics:
            logged.update((key, m.step) for m in self.client.get_metric_history(run_id, key))
        return RunLogger(self.client, run_id, logged=logged)

    def find_run(self, identity: str, parent_run_id: str | None = None) -> str | None:
        """The id of the run tagged ``streamkd.identity = identity`` (under ``parent_run_id``
        when given), else ``None``: how a retried or re-invoked sweep cell finds its run
        instead of making a second one."""
        query = f"tags.`{IDENTITY_TAG}` = '{identity}'"
        if parent_run_id is not None:
            query += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
        found = self.client.search_runs([self.experiment_id], query, max_results=2)
        if len(found) > 1:
            raise ValueError(f"two MLflow runs carry {IDENTITY_TAG}={identity}: {found}")
        return found[0].info.run_id if found else None

    def portable_uri(self) -> str:
        """The tracking URI as another process in another folder reads it (a sqlite path
        made absolute)."""
        db = (
            check_tracking_uri(self.tracking_uri)
            if self.tracking_uri.startswith("sqlite")
            else None
        )
        return f"sqlite:///{db.resolve()}" if db is not None else self.tracking_uri


class RunLogger:
    """Logs params, buffered metrics and artifacts into one MLflow run."""

    def __init__(self, client, run_id: str, logged: Counter | None = None) -> None:
        self.client, self.run_id = client, run_id
        self._pending: list = []
        self._logged = logged or Counter()  # (key, step): points the run holds already

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)) for k, v in params.items() if v is not None]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if value is None:
                continue
            if self._logged[key, int(step)]:  # logged before a restart: not twice
                self._logged[key, int(step)] -= 1
                continue
            self._pending.append(Metric(key, float(value), now, int(step)))
        if len(self._pending) >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        while self._pending:
            chunk, self._pending = self._pending[:FLUSH_AT], self._pending[FLUSH_AT:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_result(self, result: dict[str, Any], step: int) -> None:
        """Final metrics, the accuracy matrix (JSON + PNG heatmap) and learning curves (PNG)."""
        finals = {
            k: result.get(k)
            for k in (
                "final_avg_acc",
                "avg_forgetting",
                "bwt",
                "anytime_acc",
                "prequential_acc",
                "samples_per_s",
                "train_seconds",
                "peak_mem_mb",
            )
        }
        self.log_metrics({k: v for k, v in finals.items() if v is not None}, step=step)
        self.flush()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            (out / "acc_matrix.json").write_text(
                json.dumps(
                    {"acc_matrix": result["acc_matrix"], "row_segments": result["row_segments"]},
                    indent=1,
                )
            )
            (out / "result.json").write_text(json_text(result))
            if any(v is not None for row in result["acc_matrix"] for v in row):
                plot_acc_matrix(result["acc_matrix"], out / "acc_matrix.png")
            if result.get("curve"):
                plot_curves(result, out / "learning_curves.png")
            for file in sorted(out.iterdir()):
                self.client.log_artifact(self.run_id, str(file))

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status=status)


def plot_acc_matrix(acc_matrix: list[list[float | None]], path: Path, title: str = "") -> None:
    # a bare Figure, not pyplot: no backend switch, so a notebook's own plots keep working
    import numpy as np
    from matplotlib.figure import Figure

    data = np.array([[np.nan if v is None else v for v in row] for row in acc_matrix], float)
    fig = Figure(figsize=(1.0 + 0.7 * data.shape[1], 1.0 + 0.6 * data.shape[0]))
    ax = fig.subplots()
    im = ax.imshow(data, vmin=0, vmax=1, cmap="viridis")
    for (i, j), v in np.ndenumerate(data):
        if not np.isnan(v):
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                color="white" if v < 0.6 else "black",
                fontsize=8,
            )
    ax.set_xlabel("evaluated on segment")
    ax.set_ylabel("after training segment")
    ax.set_title(title or "accuracy matrix")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_curves(result: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    curve = result["curve"]
    fig = Figure(figsize=(9, 3.2))
    ax1, ax2 = fig.subplots(1, 2)
    xs = [p[0] for p in curve]
    ax1.plot(xs, [p[1] for p in curve], label="prequential (window)")
    if result.get("anytime"):
        ax1.plot(
            [p[0] for p in result["anytime"]],
            [p[1] for p in result["anytime"]],
            "o-",
            label="held-out, seen segments",
        )
    ax1.set_xlabel("samples seen")
    ax1.set_ylabel("accuracy")
    ax1.set_ylim(0, 1)
    ax1.legend(fontsize=8)
    ax2.plot(xs, [p[2] for p in curve])
    ax2.set_xlabel("samples seen")
    ax2.set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
