"""Transmission channels (echo.simulate.channels), measured on real synthesised speech through real FFmpeg:
the band limit of the telephone path, each codec's round trip (length, alignment, what it changes), the
clip level, the level change, the random draws, and the one-line errors."""
import numpy as np
import pytest
from scipy.signal import correlate, resample_poly, welch

from echo.corpus.espeak import synthesize
from echo.errors import EchoError
from echo.simulate import channels as ch

SR = 16_000
CODECS = ("g711_mulaw", "g711_alaw", "gsm", "mp3_24k", "opus_12k", "aac_24k")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    s = synthesize("The quick brown fox jumps over the lazy dog near the river bank.", "en-us+m3")
    x = resample_poly(s.audio.astype(np.float64) / 32768.0, 160, 441)  # espeak's 22.05 kHz -> 16 kHz
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


def _band_share(y: np.ndarray, above_hz: float) -> float:
    f, p = welch(y, SR, nperseg=1024)
    return float(p[f > above_hz].sum() / p.sum())


def _lag(y: np.ndarray, x: np.ndarray, max_lag: int = 1600) -> int:
    c = correlate(y.astype(np.float64), x.astype(np.float64), mode="full", method="fft")
    zero = x.shape[0] - 1
    return int(np.argmax(c[zero - max_lag: zero + max_lag + 1])) - max_lag


def _snr_db(ref: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref.astype(np.float64) - y) ** 2)))


def test_telephone_band_removes_what_a_phone_line_cannot_carry(speech):
    y = ch.apply_channel(speech, "telephone")
    assert y.shape == speech.shape and y.dtype == np.float32
    assert _band_share(speech, 4000) > 0.01  # the synthesiser's speech has energy above 4 kHz ...
    assert _band_share(y, 4000) < 1e-4       # ... the 8 kHz line has none (Nyquist 4 kHz, low-pass 3.4 kHz)
    f, p = welch(y, SR, nperseg=1024)
    f0, p0 = welch(speech, SR, nperseg=1024)
    low = (f > 40) & (f < 120)
    assert p[low].sum() < 0.2 * p0[low].sum()  # the 300 Hz high-pass
    assert _lag(y, speech) == 0


@pytest.mark.parametrize("name", CODECS)
def test_codec_round_trip_keeps_length_and_alignment_and_changes_the_signal(speech, name):
    y = ch.apply_channel(speech, name)
    assert y.shape == speech.shape and np.isfinite(y).all()
    assert _lag(y, speech) == 0  # encoder delay removed: the reference RTTM still holds
    c = ch.CONDITIONS[name]
    # compare with the same band limit without the codec: what is left is the codec's own error
    ref = ch.apply_channel(speech, "telephone") if c.rate == 8000 else speech
    snr = _snr_db(ref, y)
    assert np.isfinite(snr) and snr < 45.0  # it is a real lossy codec ...
    # ... of this very signal (measured here: GSM 4, Opus 8, AAC 8, MP3 11, G.711 37 dB)
    assert snr > {"gsm": 2.0, "opus_12k": 4.0, "aac_24k": 4.0}.get(name, 7.0)
    if name.startswith("g711"):
        assert snr > 30.0  # 8-bit companding: ~37 dB on speech


def test_mp3_through_a_pipe_is_delayed_and_the_channel_undoes_it(speech):
    raw = ch._through_ffmpeg(speech, ch.CONDITIONS["mp3_24k"], SR)
    assert _lag(raw, speech) > 0  # LAME's priming samples, with no gapless header on a pipe
    assert _lag(ch.apply_channel(speech, "mp3_24k"), speech) == 0


def test_clipping_cuts_at_the_stated_level_below_the_peak(speech):
    y = ch.apply_channel(speech, ch.Channel("c", clip_db=-12.0))
    peak = float(np.max(np.abs(speech)))
    t = peak * 10 ** (-12.0 / 20)
    assert float(np.max(np.abs(y))) == pytest.approx(peak, rel=1e-6)  # scaled back to the input's peak
    clipped = np.abs(speech) >= t
    assert 0.001 < clipped.mean() < 0.5
    assert np.allclose(np.abs(y[clipped]), peak, rtol=1e-5)
    below = ~clipped
    assert np.allclose(y[below], speech[below] * peak / t, rtol=1e-5, atol=1e-7)  # linear below the level


def test_level_change_and_full_scale(speech):
    quiet = ch.apply_channel(speech, "quiet")
    assert 20 * np.log10(np.std(quiet) / np.std(speech)) == pytest.approx(-30.0, abs=1e-3)
    loud = ch.apply_channel(speech, ch.Channel("loud", gain_db=12.0))
    assert float(np.max(np.abs(loud))) == 1.0  # past full scale it clips, as a converter does
    assert (np.abs(loud) == 1.0).mean() > 0.001


def test_draws_are_deterministic_and_every_kind_runs(speech):
    a = [ch.draw_channel(ch.KINDS, np.random.default_rng(3)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        c = ch.draw_channel(ch.KINDS, rng)
        seen.add(c.name)
    assert seen == set(ch.KINDS)
    x = speech[: SR // 2]
    for kind in ch.KINDS:
        c = ch.draw_channel((kind,), np.random.default_rng(1))
        y = ch.apply_channel(x, c)
        assert c.name == kind and y.shape == x.shape and np.isfinite(y).all()
        assert not np.array_equal(y, x)
    eq = ch.apply_channel(speech, ch.draw_channel(("eq",), np.random.default_rng(2)))
    assert _lag(eq, speech) == 0


def test_errors_are_one_line(speech, monkeypatch):
    with pytest.raises(EchoError, match=r"unknown channel condition 'phone'; expected one of"):
        ch.apply_channel(speech, "phone")
    with pytest.raises(EchoError, match=r"unknown channel kind 'fax'"):
        ch.draw_channel(("fax",), np.random.default_rng(0))
    with pytest.raises(EchoError, match=r"ffmpeg failed on channel 'bad' \(encode\): "):
        ch.apply_channel(speech, ch.Channel("bad", codec="no_such_codec"))
    monkeypatch.setattr(ch.shutil, "which", lambda name: None)
    with pytest.raises(EchoError, match=r"^ffmpeg not found on PATH: .*Debian package 'ffmpeg'"):
        ch.apply_channel(speech, "gsm")
    assert np.array_equal(ch.apply_channel(speech, "clean"), speech)  # no FFmpeg needed for what needs none
