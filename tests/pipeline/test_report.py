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


def test_training_curves_come_from_the_model_folders_given(tmp_path, monkeypatch):
    import pandas as pd

    import echo.evaluate.figures as figures
    from echo.pipeline.report import training_curves_figure

    models = {"pretrain": tmp_path / "elsewhere" / "pre", "speaker": tmp_path / "s1", "routing": tmp_path / "missing"}
    for name in ("pretrain", "speaker"):
        models[name].mkdir(parents=True)
        pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.5]}).to_parquet(models[name] / "curves.parquet")
    drawn = {}
    monkeypatch.setattr(figures, "plot_training_curves", lambda curves, path: drawn.update(curves))
    training_curves_figure(tmp_path / "fig.png", models)
    # the folders passed in (a model without curves is left out), labelled by name, in order
    assert drawn == {"pretrain (JEPA)": models["pretrain"] / "curves.parquet",
                     "stage speaker": models["speaker"] / "curves.parquet"}
    assert list(drawn) == ["pretrain (JEPA)", "stage speaker"]
