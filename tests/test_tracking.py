import multiprocessing as mp

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
    assert exp.artifact_location.startswith("file://")
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
