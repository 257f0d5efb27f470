"""Augmented training copies: same length and alignment, SNR as drawn, deterministic per utterance."""
import numpy as np
import pytest

from echo.errors import ConfigError
from echo.simulate.augment import AugmentConfig, Augmenter
from echo.simulate.room import RoomConfig

SR = 16_000


def _speech(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.1 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * rng.standard_normal(t.size))).astype(np.float32)


def test_noise_only_hits_the_drawn_snr_over_the_speech_samples():
    x = _speech()
    speech = np.zeros(x.size, bool)
    speech[4000:12000] = True
    aug = Augmenter(AugmentConfig(snr_db=(10.0, 10.0), reverb_prob=0.0), SR)
    y, info = aug(x, "utt-1", np.array([[4000, 12000]]))
    assert y.shape == x.shape and y.dtype == np.float32
    noise = y.astype(np.float64) - x
    snr = 10 * np.log10(np.mean(x[speech].astype(np.float64) ** 2) / np.mean(noise ** 2))
    assert info["snr_db"] == 10.0 and not info["reverb"]
    assert snr == pytest.approx(10.0, abs=0.05)


def test_reverb_keeps_length_and_direct_path_alignment():
    x = np.zeros(SR, np.float32)
    x[8000] = 1.0  # an impulse: its reverberant image must peak where it was
    aug = Augmenter(AugmentConfig(snr_db=None, reverb_prob=1.0, room=RoomConfig(max_order=6)), SR)
    y, info = aug(x, "utt-2")
    assert y.shape == x.shape and info["reverb"] and 0.2 <= info["rt60"] <= 0.6
    assert int(np.argmax(np.abs(y))) == 8000 and np.allclose(y[:8000], 0.0)
    assert np.abs(y[8001:]).sum() > 0  # a tail after the direct path


def test_draws_depend_only_on_seed_and_utterance_id():
    x = _speech()
    cfg = AugmentConfig(reverb_prob=0.5, room=RoomConfig(max_order=6))
    a, b = Augmenter(cfg, SR), Augmenter(cfg, SR)
    ya, _ = a(x, "spk1-003")
    a(x, "spk2-000")  # other utterances in between change nothing
    yb, _ = b(x, "spk1-003")
    assert np.array_equal(ya, yb)
    assert not np.array_equal(ya, a(x, "spk1-004")[0])
    assert not np.array_equal(ya, Augmenter(AugmentConfig(seed=1, reverb_prob=0.5, room=RoomConfig(max_order=6)), SR)(x, "spk1-003")[0])


def test_reverb_share_follows_the_probability():
    cfg = AugmentConfig(snr_db=None, reverb_prob=0.3, room=RoomConfig(max_order=2))
    aug = Augmenter(cfg, SR)
    x = _speech(0.1)
    share = np.mean([aug(x, f"u{i}")[1]["reverb"] for i in range(300)])
    assert 0.22 <= share <= 0.38


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"AugmentConfig.snr_db"):
        AugmentConfig(snr_db=(30.0, 5.0))
    with pytest.raises(ConfigError, match="AugmentConfig.reverb_prob"):
        AugmentConfig(reverb_prob=1.5)
    with pytest.raises(ConfigError, match=r"AugmentConfig.snr_db: expected a \[low, high\] range when reverb_prob is 0"):
        AugmentConfig(snr_db=None, reverb_prob=0.0)
    with pytest.raises(ConfigError, match="AugmentConfig.room: unknown key"):
        AugmentConfig(room={"rt60": 0.3})
    assert AugmentConfig(snr_db=[5, 10]).snr_db == (5, 10)  # YAML lists become tuples


def test_no_speech_intervals_means_the_whole_utterance_is_the_snr_reference():
    x = _speech(0.5)
    aug = Augmenter(AugmentConfig(reverb_prob=0.0), SR)
    whole, _ = aug(x, "u")
    for empty in (np.empty((0, 2), np.int64), np.array([[300, 300]])):
        assert np.array_equal(aug(x, "u", empty)[0], whole)
    assert not np.array_equal(aug(x, "u", np.array([[0, 800]]))[0], whole)


def test_channel_share_of_the_copy_is_drawn_per_utterance_and_keeps_alignment():
    from scipy.signal import welch

    x = _speech(2.0)
    base = AugmentConfig(snr_db=(30.0, 30.0), reverb_prob=0.0)
    aug = Augmenter(AugmentConfig(snr_db=(30.0, 30.0), reverb_prob=0.0, channel_prob=1.0, channels=("telephone",)), SR)
    y, info = aug(x, "spk1-000")
    y0, info0 = Augmenter(base, SR)(x, "spk1-000")
    assert info["channel"] == "telephone" and info0["channel"] == ""
    assert y.shape == x.shape
    f, p = welch(y, SR, nperseg=1024)
    assert p[f > 4000].sum() / p.sum() < 1e-3  # band-limited like a phone line
    c = np.correlate(y.astype(np.float64), y0.astype(np.float64), "full")
    assert abs(int(np.argmax(c)) - (x.size - 1)) <= 1  # still aligned with the labels
    share = np.mean([bool(Augmenter(AugmentConfig(reverb_prob=0.0, channel_prob=0.3, channels=("clip",)), SR)(
        x, f"u{i}")[1]["channel"]) for i in range(200)])
    assert 0.2 < share < 0.4
    with pytest.raises(ConfigError, match=r"channels\[0\]: expected one of \['telephone'"):
        AugmentConfig(channels=("fax",))
    with pytest.raises(ConfigError, match=r"channel_prob: expected a number in \[0, 1\], got 1.5"):
        AugmentConfig(channel_prob=1.5)
