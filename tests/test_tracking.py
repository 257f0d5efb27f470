import multiprocessing as mp
import os
import shutil
import sqlite3

import pytest

from echo.tracking import flatten, node_run, start_parent, tracking_uri


def _child(args):
    workdir, i = args
    with node_run(f"job{i}", {"sec": {"a": i, "b": [1, 2]}}, {"split": f"s{i}"}, workdir=workdir) as run:
        for step in range(5):
            run.log_metrics({"loss": 1.0 / (step + 1), "nan_is_skipped": float("nan")}, step=step)
    return i


def test_parallel_child_runs_share_one_parent(tmp_path):
    parent = start_parent("test", workdir=tmp_path)
    with mp.get_context("spawn").Pool(4) as pool:
        assert sorted(pool.map(_child, [(str(tmp_path), i) for i in range(8)])) == list(range(8))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(tmp_path))
    exp = client.get_experiment_by_name("echo")
    assert exp.artifact_location == "mlartifacts"  # relative: the project can be copied or moved
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(runs) == 8
    r = {x.data.tags["rule"]: x for x in runs}["job3"]
    assert r.data.tags["wildcards"] == "split=s3" and len(r.data.tags["params_hash"]) == 12
    assert r.data.params["sec.a"] == "3" and r.info.status == "FINISHED"
    hist = client.get_metric_history(r.info.run_id, "loss")
    assert [m.step for m in hist] == list(range(5))
    assert "nan_is_skipped" not in r.data.metrics


def test_failed_node_is_marked_failed(tmp_path):
    start_parent("t", workdir=tmp_path)
    try:
        with node_run("bad", {}, workdir=tmp_path):
            raise RuntimeError("x")
    except RuntimeError:
        pass
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(tmp_path))
    runs = client.search_runs([client.get_experiment_by_name("echo").experiment_id], "tags.rule = 'bad'")
    assert runs[0].info.status == "FAILED"


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1]}}) == {"a.b": "1", "a.c": "[1]"}


def _log_run_with_artifact(project):
    (project / "report.txt").write_text("hello from the original\n")
    start_parent("t", workdir=project)
    with node_run("node", {"a": 1}, workdir=project) as run:
        run.log_artifact(project / "report.txt", "reports")
        rid = run.run_id
    return rid


@pytest.mark.parametrize("how", ["mv", "cp -r"])
def test_artifacts_are_read_from_a_moved_or_copied_project(tmp_path, monkeypatch, how):
    from mlflow.tracking import MlflowClient

    project = tmp_path / "project"
    project.mkdir()
    rid = _log_run_with_artifact(project)  # logged with another cwd: the artifact is under project/
    assert (project / "mlartifacts" / rid / "artifacts" / "reports" / "report.txt").is_file()
    moved = tmp_path / "project2"
    shutil.move(project, moved) if how == "mv" else shutil.copytree(project, moved)
    if how == "cp -r":  # the copy must not read (or write) the original's files
        shutil.rmtree(project / "mlartifacts")
    monkeypatch.chdir(moved)  # as `mlflow ui --backend-store-uri sqlite:///mlflow.db` started there
    # (the absolute form of that URI: MLflow caches one store per URI string within a process)
    client = MlflowClient(tracking_uri=f"sqlite:///{moved / 'mlflow.db'}")
    assert [a.path for a in client.list_artifacts(rid, "reports")] == ["reports/report.txt"]
    got = client.download_artifacts(rid, "reports/report.txt", str(tmp_path))
    assert open(got).read() == "hello from the original\n"
    # new runs in the moved project write under the moved project
    with node_run("again", {}, workdir=moved) as run:
        run.log_artifact(moved / "report.txt")
    assert (moved / "mlartifacts" / run.run_id / "artifacts" / "report.txt").is_file()
    assert not os.path.exists(tmp_path / "project" / "mlartifacts" / run.run_id)


def test_a_store_with_absolute_locations_is_made_relative(tmp_path, monkeypatch):
    """Stores written before locations were relative are fixed the next time a run is opened."""
    from mlflow.tracking import MlflowClient

    project = tmp_path / "old"
    project.mkdir()
    rid = _log_run_with_artifact(project)
    old = (project / "mlartifacts").as_uri()
    with sqlite3.connect(project / "mlflow.db") as con:  # what the previous version stored
        con.execute("UPDATE experiments SET artifact_location = ?", (old,))
        con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, 12)", (old,))
    moved = shutil.move(project, tmp_path / "new")
    start_parent("again", workdir=moved)
    monkeypatch.chdir(moved)
    client = MlflowClient(tracking_uri=f"sqlite:///{moved / 'mlflow.db'}")
    assert client.get_run(rid).info.artifact_uri == f"mlartifacts/{rid}/artifacts"
    assert [a.path for a in client.list_artifacts(rid, "reports")] == ["reports/report.txt"]
