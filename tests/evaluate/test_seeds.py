import copy

import numpy as np
import pytest
import torch

from echo.config import load_raw, validate_raw
from echo.errors import ConfigError
from echo.evaluate.sections import main_table, seeds_table
from echo.evaluate.seeds import SeedsConfig
from echo.pipeline.report import seed_rows
from echo.stages.segmentation import SegmentationStageConfig, fit_segmentation_head

from tests.evaluate.test_sections import DIAR, _row


def test_seeds_config_and_the_published_seed_rule(tmp_path):
    assert SeedsConfig(diarization=[2, 0]).diarization == (2, 0)
    with pytest.raises(ConfigError, match=r"seeds\.diarization: expected distinct seeds, got \[1, 1\]"):
        SeedsConfig(diarization=[1, 1])
    with pytest.raises(ConfigError, match="diarization"):
        SeedsConfig(diarization=[])
    raw = load_raw("params.yaml")
    raw["seeds"] = {"diarization": [1, 2]}
    with pytest.raises(ConfigError) as e:  # checked with the params, before any job
        validate_raw(raw)
    assert str(e.value) == ("params.yaml: seeds.diarization: expected a list that includes stages.segmentation.seed (0), "
                            "got [1, 2]")
    raw["stages"]["segmentation"]["seed"] = 2
    validate_raw(raw)


def _items(rng, n, length=60, d=8):
    out = []
    for _ in range(n):
        act = np.zeros((length, 2), np.uint8)
        act[: length // 2, 0] = 1
        act[length // 3:, 1] = 1
        lat = rng.normal(size=(length, d)).astype(np.float32) + act @ rng.normal(size=(2, d)).astype(np.float32)
        out.append((lat, act))
    return out


def test_one_seed_gives_one_head_and_another_seed_another():
    rng = np.random.default_rng(0)
    train, dev = _items(rng, 4), _items(rng, 2)
    cfg = SegmentationStageConfig(steps=6, batch_size=4, warmup_steps=2, eval_every=3, log_every=2, chunk_s=1.0)

    def state(seed):
        head, fit = fit_segmentation_head(SegmentationStageConfig(**{**cfg.__dict__, "seed": seed}), train, dev, 0.04, 8)
        return head.state_dict(), fit

    (a, fa), (b, fb), (c, _) = state(0), state(0), state(1)
    assert all(torch.equal(a[k], b[k]) for k in a) and fa.best == fb.best and fa.dev_chunks > 0
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _with_der(der):
    d = copy.deepcopy(DIAR)
    d["primary"]["der"] = der
    return d


def test_main_table_puts_the_seed_spread_beside_the_ci_and_judges_the_published_run():
    runs = [_with_der(0.10), _with_der(0.12), _with_der(0.14)]
    md = main_table(runs[0], None, None, runs)
    assert "| metric | this run | across 3 seeds | paper | target | status |" in md
    row = _row(md, "Blind DER, all K, primary")
    assert "10.00 [10.00, 15.00]" in row and "12.00 ± 2.00 (n=3)" in row and row.endswith("| met |")
    assert "| — |" in _row(md, "PIT separation")  # not a diarization number
    assert "across" not in main_table(runs[0], None, None, runs[:1])  # one seed: no spread column


def test_seeds_table_and_rows_from_the_nodes_files():
    tuning = {"selected": {"vbx": {"Fa": 0.3, "Fb": 17.0}, "ahc": {"threshold": 0.4}},
              "grid": [{"der": 0.2, "selected": False}, {"der": 0.15, "selected": True}]}
    seg = {"best_step": 600, "best": {"error": 0.2}}
    other = {"seed": 1, "segmentation": {"best_step": 400, "dev": {"error": 0.3}}, "dev_der": 0.25,
             "selected": {"Fa": 0.1, "Fb": 5.0, "loopP": 0.0, "ahc_threshold": 0.5}, "blind": _with_der(0.14)}
    assert seed_rows({"blind": DIAR}, tuning, seg, None) == []
    rows = seed_rows({"blind": _with_der(0.10)}, tuning, seg, {"primary_seed": 0, "runs": [other]})
    assert [r["seed"] for r in rows] == [0, 1] and rows[0]["dev_der"] == 0.15
    md = seeds_table(rows)
    assert _row(md, "0 (published)").startswith("| 0 (published) | 600 | 20.00 | 0.3 / 17 / 0.4 | 15.00 | 10.00 |")
    assert _row(md, "1 |").startswith("| 1 | 400 | 30.00 | 0.1 / 5 / 0.5 | 25.00 | 14.00 |")
    assert "12.00 ± 2.83 (n=2)" in _row(md, "mean ± std")
    assert "n/a" in seeds_table([])


def test_seed_runs_refuse_a_wrong_split_or_a_missing_head_before_encoding(tmp_path):
    import types

    import pandas as pd

    from echo.evaluate.seeds import diarization_seed_runs
    from echo.errors import EchoError
    from echo.io import write_json
    from tests.helpers import tiny_diarizer

    d = tiny_diarizer()
    write_json(tmp_path / "summary.json", {"config": {"seed": 0}, "seeds": [{"seed": 1, "best_step": 3, "best": {}}]})
    args = (d, tmp_path, d.config, None, None)
    never = types.SimpleNamespace(table=pd.DataFrame({"split": ["dev"]}))  # a dev set where test belongs
    with pytest.raises(EchoError, match="seed runs: expected test conversations, got dev"):
        diarization_seed_runs(*args, never, never)
    with pytest.raises(EchoError, match=r"seeds/seed1\.pt: missing \(the segmentation stage's summary lists seed 1\)"):
        diarization_seed_runs(*args, [object()], [object()])  # would fail if it started encoding
    write_json(tmp_path / "summary.json", {"config": {"seed": 0}, "seeds": []})
    out = diarization_seed_runs(*args, [], [])
    assert out["seeds"] == [0] and out["runs"] == []
