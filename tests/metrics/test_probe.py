"""k-NN factorisation probe on synthetic views with known content."""
import numpy as np
import pytest

from echo.errors import ConfigError
from echo.metrics.probe import ProbeConfig, factorisation_gap, phone_accuracy, speaker_id_accuracy, speaker_id_split

RNG = np.random.default_rng(0)
N_SPK, N_UTT, N_PHONE, D = 12, 6, 8, 32
SPK_MEAN = RNG.normal(size=(N_SPK, D))
PHONE_MEAN = RNG.normal(size=(N_PHONE, D))


def _utterances():
    spk = np.repeat(np.arange(N_SPK), N_UTT)
    speaker_view = SPK_MEAN[spk] + 0.3 * RNG.normal(size=(len(spk), D))
    content_view = RNG.normal(size=(len(spk), D))  # pooled content carries no identity
    return speaker_view, content_view, np.array([f"spk{s}" for s in spk])


def _frames(n_per=40):
    spk = np.repeat(np.arange(N_SPK), n_per)
    ph = RNG.integers(0, N_PHONE, len(spk))
    speaker_view = SPK_MEAN[spk] + 0.3 * RNG.normal(size=(len(spk), D))
    content_view = PHONE_MEAN[ph] + 0.3 * RNG.normal(size=(len(spk), D))
    phones = np.array([f"p{p}" for p in ph], dtype=object)
    phones[::10] = "sil"
    return speaker_view, content_view, phones, np.array([f"spk{s}" for s in spk])


def test_split_is_per_speaker_and_deterministic():
    spk = np.repeat(["a", "b", "c"], [4, 5, 1])
    enrol, probe = speaker_id_split(spk, 0.5, seed=3)
    assert set(enrol) & set(probe) == set()
    assert sorted(spk[enrol]) == ["a", "a", "b", "b"]  # round(4 * 0.5), round(5 * 0.5) = 2, 2
    assert "c" not in spk[np.r_[enrol, probe]]  # one utterance: left out
    su, _, us = _utterances()
    assert speaker_id_accuracy(su, us, ProbeConfig(enrol_fraction=0.3)) == 1.0
    again = speaker_id_split(spk, 0.5, seed=3)
    assert np.array_equal(enrol, again[0]) and np.array_equal(probe, again[1])


def test_gap_on_views_with_known_content():
    su, cu, us = _utterances()
    sf, cf, ph, fs = _frames()
    both = factorisation_gap(su, {"content": (cu, cf), "speaker again": (su, sf)}, us, sf, ph, fs, ProbeConfig())
    out = both["content"]
    # a content view that is the speaker view itself has gap 0 (its probes are the speaker view's)
    assert both["speaker again"]["speaker_id"]["gap_points"] == 0.0 and both["speaker again"]["phone"]["gap_points"] == 0.0
    assert out["speaker_id"]["speaker_view"] == 1.0
    assert out["speaker_id"]["content_view"] < 0.4  # chance is 1/12
    assert out["phone"]["content_view"] > 0.95
    assert out["phone"]["speaker_view"] < 0.35  # chance is 1/8
    assert out["speaker_id"]["gap_points"] == pytest.approx(
        100 * (out["speaker_id"]["speaker_view"] - out["speaker_id"]["content_view"]))
    assert out["speaker_id"]["gap_points"] > 60 and out["phone"]["gap_points"] > 60


def test_phone_probe_is_speaker_disjoint():
    # each speaker pronounces each phone with its own private code: a within-speaker split would
    # be perfect, a speaker-disjoint one is at chance
    spk = np.repeat(np.arange(N_SPK), 80)
    ph = RNG.integers(0, N_PHONE, len(spk))
    private = RNG.normal(size=(N_SPK, N_PHONE, D))
    frames = private[spk, ph] + 0.05 * RNG.normal(size=(len(spk), D))
    acc = phone_accuracy(frames, [f"p{p}" for p in ph], [f"s{s}" for s in spk], ProbeConfig(ignore_phones=()))
    assert acc < 0.3


def test_caps_and_config():
    sf, cf, ph, fs = _frames()
    cfg = ProbeConfig(max_train_frames=50, max_test_frames=20, seed=1)
    assert phone_accuracy(cf, ph, fs, cfg) == phone_accuracy(cf, ph, fs, cfg)
    assert ProbeConfig(ignore_phones=["sil", "sp"]).ignore_phones == ("sil", "sp")
    with pytest.raises(ConfigError, match="ProbeConfig.enrol_fraction"):
        ProbeConfig(enrol_fraction=1.0)
    with pytest.raises(ConfigError, match="ProbeConfig.speaker_k"):
        ProbeConfig(speaker_k=0)
