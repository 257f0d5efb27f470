"""The node runner: params validated before any work, the node's step run, its timing written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from echo.config import ConfigError
from echo.errors import EchoError
from echo.features import FeatureCache
from echo.pipeline import dag
from echo.pipeline.runner import run_node


def test_run_node_builds_outputs_and_timing(in_tiny):
    run_node("features_test", Path("params.yaml"), mlflow=False)
    n = dag.node("features_test")
    assert len(FeatureCache(n.outs[0])) > 0
    timing = json.loads(Path("logs/timings/features_test.json").read_text())
    assert timing["node"] == "features_test" and timing["wall_s"] >= 0 and timing["device"]


def test_unknown_node_names_the_registry(in_tiny):
    with pytest.raises(EchoError, match="unknown workflow node 'nope'"):
        run_node("nope", Path("params.yaml"), mlflow=False)


def test_bad_params_fail_before_any_work(in_tiny, tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("corpus: [unclosed\n")
    with pytest.raises(ConfigError, match="params.yaml"):
        run_node("features_train", bad, mlflow=False)
    assert not Path("data/features/train").exists()
