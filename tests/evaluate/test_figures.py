import numpy as np
import pandas as pd
import pytest
from pyannote.core import Annotation, Segment, Timeline

from echo.errors import EchoError
from echo.evaluate.figures import plot_der_by_k, plot_latent_map, plot_timeline, plot_training_curves

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 2000


def _cond(der):
    return {"der": der, "der_ci": [der - 0.01, der + 0.02]}


def test_der_by_k_and_timeline(tmp_path):
    diar = {"condition": "blind", "primary": {**_cond(0.1), "by_k": {"2": _cond(0.05), "3": _cond(0.12)}},
            "secondary": {**_cond(0.08), "by_k": {"2": _cond(0.03), "3": _cond(0.1)}}}
    out = plot_der_by_k(diar, tmp_path / "der.png")
    assert _is_png(out) and not list(tmp_path.glob(".der.png*"))  # no temporary left behind
    ref, hyp = Annotation(uri="c"), Annotation(uri="c")
    ref[Segment(0, 3)] = "A"
    ref[Segment(2.5, 6)] = "B"
    hyp[Segment(0.1, 2.9)] = "spk0"
    hyp[Segment(3, 6)] = "spk1"
    assert _is_png(plot_timeline(ref, hyp, tmp_path / "timeline.png", uem=Timeline([Segment(0, 7)])))
    with pytest.raises(EchoError, match="no recordings"):
        plot_der_by_k({"primary": {"by_k": {}}, "secondary": {"by_k": {}}}, tmp_path / "x.png")


def test_latent_map_and_curves(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16))
    spk = np.repeat([f"s{i}" for i in range(3)], 100)
    ph = np.tile(["a", "b", "c"], 100)
    assert _is_png(plot_latent_map(x, spk, ph, tmp_path / "map.png", max_points=200))
    assert _is_png(plot_latent_map(x[:60], spk[:60], ph[:60], tmp_path / "tsne.png", method="tsne"))
    with pytest.raises(EchoError, match="pca"):
        plot_latent_map(x, spk, ph, tmp_path / "bad.png", method="umap")
    pd.DataFrame({"step": range(10), "loss": np.linspace(2, 1, 10), "eer": np.linspace(0.3, 0.1, 10)}).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame({"step": range(5), "loss": np.linspace(3, 2, 5)}).to_csv(tmp_path / "b.csv", index=False)
    out = plot_training_curves({"speaker": tmp_path / "a.parquet", "phonetic": tmp_path / "b.csv"}, tmp_path / "curves.png")
    assert _is_png(out)
    with pytest.raises(EchoError, match="'step' column"):
        plot_training_curves({"x": pd.DataFrame({"loss": [1.0]})}, tmp_path / "c.png")
