"""MLflow tracking on a SQLite backend: one parent run per workflow invocation, one child per job.

Why the parent is made up front: when several processes open a fresh SQLite store at once, MLflow's
schema migrations collide and corrupt it (``_alembic_tmp_tags already exists``). The workflow's
``onstart`` hook (or the first node when run alone, e.g. by ``dvc repro``) creates the database,
the experiment and the parent run once; parallel jobs only append child runs afterwards.

The store lives in the working directory (``mlflow.db``, artifacts under ``mlartifacts/``), so
``mlflow ui --backend-store-uri sqlite:///mlflow.db`` run there shows everything. The artifact
location is stored *relative* (``mlartifacts``, and ``mlartifacts/<run>/artifacts`` per run): MLflow
resolves it against the reader's current directory, so a copied or moved project (``cp -r``,
``mv``) still finds its own artifacts. MLflow itself makes every location absolute when it creates
an experiment; :func:`_experiment_id` rewrites it (and the locations of runs logged by older
versions of this module, which stored absolute paths) in the SQLite store.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

__all__ = ["tracking_uri", "start_parent", "parent_run_id", "NodeRun", "node_run", "git_commit", "flatten"]

log = logging.getLogger(__name__)
EXPERIMENT = "echo"
ARTIFACTS = "mlartifacts"  # the experiment's artifact location, relative to the project directory
PARENT_FILE = Path(".echo") / "mlflow_parent_run"


def _quiet_env() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def tracking_uri(workdir: str | Path | None = None) -> str:
    """``sqlite:///<workdir>/mlflow.db`` (absolute, so every job agrees regardless of its cwd)."""
    return f"sqlite:///{Path(workdir or Path.cwd()).resolve() / 'mlflow.db'}"


def _client(workdir: str | Path | None = None):
    _quiet_env()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(workdir))


def _experiment_id(client, workdir: str | Path | None = None) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        art = (Path(workdir or Path.cwd()).resolve() / ARTIFACTS).as_uri()
        exp = client.get_experiment(client.create_experiment(EXPERIMENT, artifact_location=art))
    if exp.artifact_location != ARTIFACTS:
        _make_relative(workdir, exp.experiment_id, exp.artifact_location)
    return exp.experiment_id


def _make_relative(workdir: str | Path | None, experiment_id: str, location: str) -> None:
    """Store the experiment's artifact location (and its runs') as ``mlartifacts`` relative paths.

    Only an Echo location (``file://<some project>/mlartifacts``, wherever the project was then) is
    rewritten; one a user pointed elsewhere (another folder, object storage) is kept. MLflow has no
    API to change an experiment's artifact location, hence SQL on the store.
    """
    import sqlite3
    from urllib.parse import urlparse

    u = urlparse(location)
    if u.scheme not in ("", "file") or Path(u.path).name != ARTIFACTS:
        return
    db = Path(workdir or Path.cwd()).resolve() / "mlflow.db"
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con, con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                    (ARTIFACTS, int(experiment_id)))
        con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                    "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                    (ARTIFACTS, len(location) + 1, int(experiment_id), len(location), location))


def git_commit(workdir: str | Path | None = None) -> str | None:
    """Commit hash of the working tree (suffixed ``-dirty`` when it has changes), or None."""
    try:
        cwd = str(workdir or Path.cwd())
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def start_parent(run_name: str = "workflow", workdir: str | Path | None = None, tags: dict | None = None) -> str:
    """Create the DB, experiment and a parent run; remember its id for the jobs of this invocation."""
    client = _client(workdir)
    exp = _experiment_id(client, workdir)
    all_tags = {"echo.kind": "workflow", "git_commit": git_commit(workdir) or "none", **(tags or {})}
    run = client.create_run(exp, run_name=run_name, tags=all_tags)
    client.set_terminated(run.info.run_id, "RUNNING")
    path = Path(workdir or Path.cwd()) / PARENT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run.info.run_id)
    return run.info.run_id


def finish_parent(status: str = "FINISHED", workdir: str | Path | None = None) -> None:
    rid = parent_run_id(workdir, create=False)
    if rid:
        _client(workdir).set_terminated(rid, status)


def parent_run_id(workdir: str | Path | None = None, create: bool = True) -> str | None:
    """The current invocation's parent run id; a node run on its own (``dvc repro``) makes one."""
    path = Path(workdir or Path.cwd()) / PARENT_FILE
    if path.exists():
        return path.read_text().strip()
    return start_parent("standalone", workdir) if create else None


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Flatten nested params into ``a.b.c -> value`` strings (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = str(d)[:6000]
    return out


class NodeRun:
    """A child run for one workflow job: metrics, curves and small artifacts go here."""

    def __init__(self, client, run_id: str, workdir: str | Path | None = None):
        self.client, self.run_id = client, run_id
        self.workdir = Path(workdir or Path.cwd()).resolve()

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log finite scalar metrics (non-finite values are skipped: MLflow rejects NaN in SQLite)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()
                 if v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))]
        for i in range(0, len(batch), 900):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 900])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file or directory into the run's artifacts (under the project's ``mlartifacts/``)."""
        from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

        p = Path(path)
        if not p.exists():
            return
        uri = self.client.get_run(self.run_id).info.artifact_uri
        if "://" not in uri and not Path(uri).is_absolute():  # relative: to the project, not the cwd
            uri = str(self.workdir / uri)
            repo = LocalArtifactRepository(uri)
            repo.log_artifacts(str(p), artifact_path) if p.is_dir() else repo.log_artifact(str(p), artifact_path)
        elif p.is_dir():
            self.client.log_artifacts(self.run_id, str(p), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(p), artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)


@contextlib.contextmanager
def node_run(node: str, params: dict, wildcards: dict | None = None, workdir: str | Path | None = None,
             enabled: bool = True) -> Iterator[NodeRun | None]:
    """Open a child run tagged with rule, wildcards, params hash and git commit.

    Args:
        node: workflow node (job) name.
        params: the node's params slice (logged flattened; its hash is a tag).
        wildcards: wildcard values of the job.
        enabled: ``False`` yields ``None`` (e.g. library use outside the workflow).
    """
    if not enabled:
        yield None
        return
    from mlflow.entities import Param

    from echo.config import params_hash

    client = _client(workdir)
    exp = _experiment_id(client, workdir)
    parent = parent_run_id(workdir)
    tags = {"mlflow.parentRunId": parent, "echo.kind": "node", "rule": node,
            "wildcards": ",".join(f"{k}={v}" for k, v in (wildcards or {}).items()),
            "params_hash": params_hash(params), "git_commit": git_commit(workdir) or "none"}
    run = client.create_run(exp, run_name=node, tags=tags)
    flat = flatten(params)
    items = [Param(k[:250], v) for k, v in sorted(flat.items())]
    for i in range(0, len(items), 90):
        client.log_batch(run.info.run_id, params=items[i:i + 90])
    nr = NodeRun(client, run.info.run_id, workdir)
    try:
        yield nr
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
