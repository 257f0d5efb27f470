"""dvc.yaml is generated from the node registry and describes the same stages."""
import yaml

from echo.config import ROOT
from echo.pipeline.dag import nodes
from echo.pipeline.dvc import render


def test_committed_dvc_yaml_is_generated():
    assert (ROOT / "dvc.yaml").read_text() == render(), "run `python -m echo.pipeline dvc`"


def test_dvc_stages_are_the_registry_nodes():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == [n.name for n in nodes()]
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
