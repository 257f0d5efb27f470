"""Node bodies on real tiny data: each step reads and writes the paths its node declares."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from echo.corpus import manifest as mf
from echo.features import FeatureCache
from echo.pipeline import dag, steps


def test_corpus_writes_manifest_and_stats(in_tiny):
    n = dag.node("corpus")
    man = mf.read(Path(n.outs[0]) / "manifest.parquet")
    assert set(man["split"]) == set(dag.SPLITS)
    stats = json.loads(Path(n.metrics[0]).read_text())
    assert stats["source"] == "embedded"


def test_features_go_where_the_node_says(in_tiny):
    """A node whose outs point elsewhere writes there: the step takes no path of its own."""
    n = dataclasses.replace(dag.node("features_dev"), outs=("elsewhere/features_dev",))
    steps.features(n, in_tiny, None)
    cache = FeatureCache("elsewhere/features_dev")
    dev = mf.read("data/corpus/manifest.parquet", split="dev")
    assert sorted(cache.index["utt_id"]) == sorted(dev["utt_id"])
    assert not Path("data/features/dev").exists()


def test_simulate_copies_stats_into_metrics(in_tiny):
    n = dataclasses.replace(dag.node("conversations_dev"),
                            outs=("elsewhere/convs_dev", "elsewhere/convs_dev.png"), metrics=("elsewhere/convs.json",))
    steps.simulate(n, in_tiny, None)
    assert json.loads(Path(n.metrics[0]).read_text()) == json.loads((Path(n.outs[0]) / "stats.json").read_text())
    assert Path(n.outs[1]).stat().st_size > 0


def test_work_dir_is_keyed_by_params_slice_and_inputs(in_tiny, tmp_path):
    inp = tmp_path / "input.json"
    inp.write_text("{}")
    a = steps._work_dir("node", in_tiny, ("features",), (str(inp),))
    assert steps._work_dir("node", in_tiny, ("features",), (str(inp),)) == a  # a re-run resumes here
    other = json.loads(json.dumps(in_tiny))
    other["features"]["extra"] = 1  # any change inside the slice
    assert steps._work_dir("node", other, ("features",), (str(inp),)) != a  # other params: fresh start
    inp.write_text('{"changed": 1}')
    assert steps._work_dir("node", in_tiny, ("features",), (str(inp),)) != a  # other data: fresh start


def test_flat_numbers_keeps_numbers_only():
    got = steps._flat_numbers({"a": 1, "b": {"c": 2.5, "d": True, "e": "x"}, "f": [1]})
    assert got == {"a": 1.0, "b.c": 2.5}
