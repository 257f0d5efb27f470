"""The whole DAG end to end on a tiny params file: Snakemake builds it (4 parallel jobs, one MLflow
SQLite store), DVC versions it, a params change re-runs exactly the affected nodes under both tools,
and `dvc metrics show` reads the metrics. Every node of the real workflow runs here."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from echo.pipeline.dag import nodes

from tests.pipeline.helpers import copy_project

pytestmark = pytest.mark.slow
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1",
       "PYTHONUNBUFFERED": "1"}


def _sh(args, cwd, check=True, timeout=1500):
    bindir = str(Path(sys.executable).parent)
    env = {**ENV, "PATH": bindir + os.pathsep + ENV.get("PATH", "")}
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}")
    return p


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the workflow with the tiny params as params.yaml, built once with Snakemake."""
    d = copy_project(tmp_path_factory.mktemp("proj"))
    p = _sh([sys.executable, "-m", "snakemake", "--cores", "4", "results/tables.md"], d)
    (d / "snakemake.out").write_text(p.stdout + p.stderr)
    return d


def test_snakemake_builds_every_node(project):
    for n in nodes():
        for o in n.all_outs:
            assert (project / o).exists(), o
        assert (project / n.log).stat().st_size > 0, n.log
        assert (project / n.benchmark).exists()
    tables = (project / "results/tables.md").read_text()
    assert "# Echo results" in tables and "## Corpus" in tables


def test_mlflow_has_one_child_per_job(project):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("echo")
    parents = client.search_runs([exp.experiment_id], "tags.`echo.kind` = 'workflow'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert sorted(r.data.tags["rule"] for r in children) == sorted(n.name for n in nodes())
    assert all(r.info.status == "FINISHED" and "wall_time_s" in r.data.metrics for r in children)


def test_dvc_versions_and_repro_reruns_only_affected(project):
    _sh(["dvc", "init", "--no-scm", "-q"], project)
    _sh(["dvc", "commit", "-f", "-q"], project)
    st = _sh(["dvc", "status"], project)
    assert "changed" not in st.stdout, st.stdout
    shown = _sh(["dvc", "metrics", "show", "--json"], project)
    assert "results/metrics.json" in shown.stdout

    # change one evaluation key: only the node reading it and the tables downstream re-run
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluation"]["separation"]["threshold"] = 0.6
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dry = _sh([sys.executable, "-m", "snakemake", "-n", "results/tables.md"], project)
    planned = set(re.findall(r"^rule (\w+):", dry.stdout + dry.stderr, flags=re.M))
    expected = {"separation", "tables"}
    assert planned == expected
    rep = _sh(["dvc", "repro"], project)
    ran = set(re.findall(r"Running stage '(\w+)'", rep.stdout))
    assert ran == expected, rep.stdout[-3000:]
    sep = json.loads((project / "results/separation.json").read_text())
    assert sep["threshold"] == 0.6  # the re-run used the new value
    # both tools agree again: snakemake sees nothing to do after dvc rebuilt with the same commands
    after = _sh(["dvc", "status"], project)
    assert "changed" not in after.stdout


def test_mlflow_ui_serves_the_runs(project):
    """`mlflow ui` as the README runs it, on loopback, lists the workflow's runs."""
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bindir = str(Path(sys.executable).parent)
    env = {**ENV, "PATH": bindir + os.pathsep + ENV.get("PATH", "")}
    proc = subprocess.Popen(["mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=project, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=echo"
        body = None
        for _ in range(360):  # bounded: at most ~3 min for the server to start on a loaded CI machine
            try:
                body = json.loads(urllib.request.urlopen(url, timeout=2).read())
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, "mlflow ui did not answer"
        exp_id = body["experiment"]["experiment_id"]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search",
                                     data=json.dumps({"experiment_ids": [exp_id], "max_results": 100}).encode(),
                                     headers={"Content-Type": "application/json"})
        runs = json.loads(urllib.request.urlopen(req, timeout=10).read())["runs"]
        assert {n.name for n in nodes()} <= {r["info"]["run_name"] for r in runs}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_rerun_gives_identical_weights_and_metrics(project, tmp_path):
    """Issue 13: same machine, same params -> the same result. Pretraining and its abilities row are
    re-run from scratch (no work/ to resume from) in a copy of the built project and compared with the
    Snakemake build: every weight tensor exactly (the .pt archive's bytes hold its temp file's name),
    the metrics JSON without its timing keys."""
    import shutil

    import torch

    from echo.models.vit import Encoder

    d = copy_project(tmp_path)
    shutil.copytree(project / "data", d / "data")
    for name in ("pretrain", "abilities_pretrain"):
        _sh([sys.executable, "-m", "echo.pipeline", "run", name, "--no-mlflow"], d)
    again, built = (Encoder.load(p / "models/pretrain/encoder.pt").state_dict() for p in (d, project))
    assert again.keys() == built.keys()
    assert all(torch.equal(again[k], built[k]) for k in built)

    def untimed(path):
        return {k: v for k, v in json.loads(path.read_text()).items() if not k.endswith(("_s", "_time"))}

    m = "results/abilities/pretrain.json"
    assert untimed(d / m) == untimed(project / m)


def test_seed_runs_reproduce_the_published_chain(project, tmp_path):
    """Issue 13: a seed's path through the seed runs (its head trained beside the published one by the
    segmentation stage, dev and test encoded once into cached blocks) gives, for the published seed,
    exactly the numbers of the real chain (stage_segmentation -> backend -> diarization): the
    published seed is swapped into the extra list and both nodes re-run."""
    import shutil

    built = json.loads((project / "results/diarization_seeds.json").read_text())
    assert built["primary_seed"] == 0 and [r["seed"] for r in built["runs"]] == [1]
    assert "across 2 seeds" in (project / "results/tables.md").read_text()
    d = copy_project(tmp_path)
    for sub in ("data", "models"):
        shutil.copytree(project / sub, d / sub)
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["stages"]["segmentation"]["seed"] = 1
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("stage_segmentation", "diarization_seeds"):
        _sh([sys.executable, "-m", "echo.pipeline", "run", name, "--no-mlflow"], d)
    assert (d / "models/stages/segmentation/seeds/seed0.pt").is_file()
    (run,) = json.loads((d / "results/diarization_seeds.json").read_text())["runs"]
    assert run["seed"] == 0
    published = json.loads((project / "results/diarization.json").read_text())["blind"]
    tuning = json.loads((project / "results/diarization_tuning.json").read_text())
    chosen = next(r for r in tuning["grid"] if r["selected"])
    assert run["dev_der"] == chosen["der"]
    assert run["selected"]["ahc_threshold"] == chosen["ahc_threshold"]
    for key in ("primary", "secondary", "count"):
        assert run["blind"][key] == published[key], key
