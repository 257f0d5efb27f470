"""Scoring and dev tuning of the diarizer (echo.evaluate.diarize), on constructed recordings
whose latents carry a perfect local segmentation (tests/diarization/helpers.py)."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
from pyannote.core import Annotation, Segment, Timeline

from echo.diarization.ahc import AHCConfig
from echo.diarization.diarizer import Diarizer, DiarizerConfig
from echo.errors import ConfigError, EchoError
from echo.evaluate.diarize import TuneConfig, evaluate_conditions, score_conversations, tune_on_dev
from echo.features import FrontEnd

from tests.diarization.helpers import conversation, fit_plda, latents, parts, speaker_vectors


@dataclasses.dataclass
class Item:
    rec_id: str
    audio: np.ndarray
    annotation: Annotation
    uem: Timeline
    k: int


class LatentDiarizer(Diarizer):
    """The diarizer on constructed latents: ``audio`` is the latent array."""

    def prepare(self, wave, uri, hook=None):
        return self.prepare_latents(wave, uri)


@pytest.fixture(scope="module")
def setup():
    p = parts()
    d = LatentDiarizer(p, fit_plda(p), DiarizerConfig(ahc=AHCConfig(threshold=0.5)))
    d.frontend = FrontEnd()
    items = []
    for i, turns in enumerate([[((0,), 8)], [((0,), 5), ((1,), 5), ((0, 1), 2)], [((0,), 4), ((1,), 4), ((2,), 5)]]):
        k = len({s for spk, _ in turns for s in spk})
        vecs = speaker_vectors(k, 10 + i)
        act, ref, uem = conversation(turns, vecs)
        ref.uri = f"dev{i}"
        items.append(Item(f"dev{i}", latents(act, vecs, seed=i), ref, uem, k))
    return d, items


def test_der_through_the_evaluation_path_matches_a_hand_count():
    ref = Annotation(uri="r")
    ref[Segment(0, 10)] = "A"
    ref[Segment(8, 20)] = "B"  # 2 s overlap
    hyp = Annotation(uri="r")
    hyp[Segment(0, 9)] = "x"     # A: 1 s missed at 9-10
    hyp[Segment(9, 16)] = "y"    # B from 9; 8-9 B missed; 16-20 B missed
    hyp[Segment(20, 22)] = "y"   # 2 s false alarm inside the UEM
    uem = Timeline([Segment(0, 22)])
    s = score_conversations({"r": ref}, {"r": hyp}, {"r": uem}, {"r": 2})
    # reference speech 22 s (10 + 12); missed: A 9-10 (1) + B 8-9 (1) + B 16-20 (4) = 6; FA 2; confusion 0
    assert s["primary"]["total"] == pytest.approx(22.0)
    assert s["primary"]["missed"] == pytest.approx(6.0)
    assert s["primary"]["false_alarm"] == pytest.approx(2.0)
    assert s["primary"]["der"] == pytest.approx(8.0 / 22.0)
    assert s["primary"]["by_k"]["2"]["der"] == pytest.approx(8.0 / 22.0)
    # secondary: 0.25 s each side of every reference boundary (0, 8, 10, 20) is not scored
    assert s["secondary"]["total"] == pytest.approx(20.0)
    assert s["secondary"]["der"] == pytest.approx(7.0 / 20.0)
    assert s["count"]["accuracy"] == 1.0 and s["per_recording"][0]["k_hat"] == 2


def test_evaluate_conditions_scores_blind_and_oracle_from_one_pass(setup):
    d, items = setup
    (blind, hyps), (oracle, _) = evaluate_conditions(d, items, (False, True))
    assert blind["condition"] == "blind" and oracle["condition"] == "oracle"
    assert set(blind["primary"]["by_k"]) == {"1", "2", "3"}
    assert [r["k_hat"] for r in oracle["per_recording"]] == [1, 2, 3]  # oracle K honoured
    assert blind["primary"]["der"] < 0.05 and blind["count"]["accuracy"] == 1.0
    lo, hi = blind["primary"]["der_ci"]
    assert lo <= blind["primary"]["der"] <= hi
    # the overlap of dev1 is scored and found: the exclusive output must miss it
    assert blind["exclusive"]["missed"] > blind["primary"]["missed"] + 1.5
    again = d.cluster(d.prepare(items[1].audio, "dev1")).speaker_diarization
    assert again == hyps["dev1"]


def test_tune_on_dev_selects_by_the_stated_rule(setup):
    d, items = setup
    grid = TuneConfig(Fa=(0.3,), Fb=(5.0, 17.0), loopP=(0.0,), ahc_threshold=(0.1, 0.5, 0.95))
    best, rows = tune_on_dev(d, items, grid)
    assert len(rows) == 6 and sum(r["selected"] for r in rows) == 1
    # smoothed DER = mean over the point and its threshold neighbours, within one (Fa, Fb, loopP) block
    for b in (0, 3):
        blk = rows[b:b + 3]
        assert blk[0]["der_smoothed"] == pytest.approx(np.mean([blk[0]["der"], blk[1]["der"]]))
        assert blk[1]["der_smoothed"] == pytest.approx(np.mean([r["der"] for r in blk]))
    i = next(i for i, r in enumerate(rows) if r["selected"])
    low = min(r["der_smoothed"] for r in rows)
    assert rows[i]["der_smoothed"] <= low + 1e-4 and all(r["der_smoothed"] > low + 1e-4 for r in rows[:i])
    assert (best.vbx.Fb, best.ahc.threshold) == (rows[i]["Fb"], rows[i]["ahc_threshold"])
    assert best.segment_s == d.config.segment_s and d.config.ahc.threshold == 0.5  # the rest untouched
    # the selected row's DER is what the tuned diarizer gives
    tuned = LatentDiarizer(d.parts, d.plda, best)
    tuned.frontend = d.frontend
    (summary, _), = evaluate_conditions(tuned, items, (False,))
    assert summary["primary"]["der"] == pytest.approx(rows[i]["der"])

    class TestSet(list):
        table = pd.DataFrame({"split": ["test"]})
    with pytest.raises(EchoError, match="dev split"):
        tune_on_dev(d, TestSet(items), grid)


def test_tune_config_errors():
    with pytest.raises(ConfigError, match="TuneConfig.Fa: expected a non-empty list"):
        TuneConfig(Fa=())
    with pytest.raises(ConfigError, match="ahc_threshold"):
        TuneConfig(ahc_threshold=("x",))
