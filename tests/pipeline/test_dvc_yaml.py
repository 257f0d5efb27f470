"""dvc.yaml and the Snakemake rules come from one registry; check they agree with each other."""
import re
import subprocess
import sys

import yaml

from echo.config import ROOT
from echo.pipeline.dag import nodes
from echo.pipeline.dvc import render


def test_committed_dvc_yaml_is_generated():
    assert (ROOT / "dvc.yaml").read_text() == render(), "run `python -m echo.pipeline dvc`"


def test_dvc_stages_match_snakemake_jobs():
    """Snakemake's own DAG (dry run of the default target) has exactly the DVC stages, same outputs."""
    # --forceall: list every job even where outputs already exist
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--forceall", "results/tables.md"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = set(re.findall(r"^rule (\w+):", out.stdout + out.stderr, flags=re.M))
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert jobs == set(stages)
    for n in nodes():
        st = stages[n.name]
        outs = [o if isinstance(o, str) else next(iter(o)) for o in st["outs"]]
        assert set(outs) == set(n.outs) | {n.log}
        assert st["params"] == list(n.params)
        assert set(st["deps"]) == set(n.deps) | set(n.code)


def test_unknown_node_is_one_line_error(capsys):
    from echo.pipeline.__main__ import main

    assert main(["run", "no_such_node", "--no-mlflow"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "echo: error: unknown workflow node 'no_such_node' (see echo/pipeline/dag.py)"
