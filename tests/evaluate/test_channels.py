"""Channel robustness scoring (echo.evaluate.channels): every conversation goes through each condition,
the clean condition is the reference, the difference and its paired interval are right, the config's
errors are one line; and the robustness table renders what the dict holds."""
import numpy as np
import pytest

from echo.errors import ConfigError
from echo.evaluate import channels as ec
from echo.evaluate.sections import channels_table

from tests.evaluate.test_diarize import setup  # noqa: F401 (module fixture: a diarizer on constructed latents)


def test_config_rules():
    assert ec.ChannelEvalConfig().conditions[0] == "clean"
    with pytest.raises(ConfigError, match=r"evaluation.channels.conditions: expected a list that starts with 'clean'"):
        ec.ChannelEvalConfig(conditions=("gsm",))
    with pytest.raises(ConfigError, match=r"conditions\[1\]: expected one of \['clean', "):
        ec.ChannelEvalConfig(conditions=("clean", "fax"))
    with pytest.raises(ConfigError, match=r"conditions: expected distinct names"):
        ec.ChannelEvalConfig(conditions=("clean", "gsm", "gsm"))


def test_each_condition_scores_the_same_recordings_against_clean(setup, monkeypatch):  # noqa: F811
    diarizer, items = setup
    seen = []

    def fake_channel(latents, name):
        # the test diarizer reads latents as its "audio": "same" changes nothing, "half" silences the
        # second half of every recording (speech there is then missed)
        seen.append(name)
        if name == "half":
            out = latents.copy()
            out[out.shape[0] // 2:] = 0.0
            return out
        return latents

    monkeypatch.setattr(ec, "apply_channel", fake_channel)
    monkeypatch.setattr(ec, "CONDITIONS", {"clean": None, "same": None, "half": None})
    cfg = ec.ChannelEvalConfig(conditions=("clean", "same", "half"))
    out = ec.evaluate_channels(diarizer, items, cfg)
    assert seen == ["clean"] * 3 + ["same"] * 3 + ["half"] * 3
    assert out["order"] == ["clean", "same", "half"] and out["reference"] == "clean"
    c, s, h = (out["conditions"][n] for n in out["order"])
    assert c["delta_der"] == 0.0 and c["delta_der_ci"] == [0.0, 0.0]
    assert s["der"] == c["der"] and s["delta_der"] == 0.0 and s["delta_der_ci"] == [0.0, 0.0]
    assert h["delta_der"] == pytest.approx(h["der"] - c["der"], abs=1e-12) and h["delta_der"] > 0.05
    lo, hi = h["delta_der_ci"]
    assert lo <= h["delta_der"] <= hi and lo > 0  # every recording got worse: the paired interval excludes 0
    assert h["missed_rate"] > c["missed_rate"] and h["n_recordings"] == len(items)


def test_table_shows_delta_targets_and_status():
    def cond(der, delta, ci):
        return {"der": der, "der_ci": [der - 0.01, der + 0.01], "jer": 0.2, "missed_rate": 0.05,
                "false_alarm_rate": 0.02, "confusion_rate": der - 0.07, "count_accuracy": 0.8,
                "count_accuracy_ci": [0.7, 0.9], "by_k": {"2": {"der": der, "der_ci": [der, der]}},
                "n_recordings": 10, "real_time_factor": 0.01, "delta_der": delta, "delta_der_ci": ci}

    res = {"order": ["clean", "gsm", "clipped"], "reference": "clean",
           "conditions": {"clean": cond(0.14, 0.0, [0.0, 0.0]), "gsm": cond(0.20, 0.06, [0.04, 0.08]),
                          "clipped": cond(0.17, 0.03, [0.01, 0.05])}}
    text = channels_table(res)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "14.00 [13.00, 15.00]" in rows["clean"] and "| — | — | — |" in rows["clean"]
    assert "+6.00 [4.00, 8.00]" in rows["gsm"] and "≤ 3 pts" in rows["gsm"] and "**missed**" in rows["gsm"]
    assert "+3.00 [1.00, 5.00]" in rows["clipped"] and "≤ 5 pts" in rows["clipped"] and "| met |" in rows["clipped"]
    assert channels_table(None).endswith("n/a (no channel results)\n")
    assert np.isfinite(res["conditions"]["gsm"]["der"])
