"""The tables' header: per-node timings and commits, and nothing stale about the tables node itself."""
import json

from echo.pipeline.report import header_section


def _timing(node, wall, commit):
    return {"node": node, "wall_s": wall, "peak_rss_mb": 100.0, "device": "CPU X, 2 threads", "git_commit": commit}


def test_header_lists_each_node_but_the_running_tables_node(tmp_path):
    for node, wall, commit in (("corpus", 60.0, "a" * 40), ("pretrain", 120.0, "b" * 40), ("tables", 9.0, "c" * 40)):
        (tmp_path / f"{node}.json").write_text(json.dumps(_timing(node, wall, commit)))
    md = header_section({"profile": "tiny"}, tmp_path)
    assert "- total node wall time: 3.0 min (every node but `tables`)" in md
    assert "| corpus | 60.00 | 100.00 | CPU X, 2 threads | aaaaaaaaaaaa |" in md
    assert "| tables |" not in md and "cccccccccccc" not in md  # a previous run's timing of this node
    assert "nodes ran at `aaaaaaaaaaaa`, `bbbbbbbbbbbb`" in md and "- device(s): CPU X" in md
    assert "total node wall time: 0.0 min" in header_section({"profile": "tiny"}, tmp_path / "missing")
