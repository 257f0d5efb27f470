import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from echo import audio
from echo.errors import AudioError

from tests.helpers import write_bad_input


def _tone(sr, seconds=0.5, f=440.0):
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def test_wav_stereo_44k_is_mono_16k(tmp_path):
    x = _tone(44100)
    p = tmp_path / "a.wav"
    sf.write(p, np.stack([x, x], 1), 44100)
    y = audio.load(p)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 8000) <= 1
    # a 440 Hz tone stays a 440 Hz tone after resampling
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spec) * 16000 / len(y) - 440) < 5


def test_read_segment_flac(tmp_path):
    x = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    p = tmp_path / "a.flac"
    sf.write(p, x, 16000, subtype="PCM_16")
    seg = audio.read_segment(p, 1000, 500)
    np.testing.assert_allclose(seg, x[1000:1500], atol=1e-4)
    with pytest.raises(AudioError, match="truncated"):
        audio.read_segment(p, 15900, 500)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg CLI not installed")
def test_m4a_through_ffmpeg(tmp_path):
    src = tmp_path / "a.wav"
    sf.write(src, _tone(16000, 1.0), 16000)
    dst = tmp_path / "a.m4a"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(src), "-c:a", "aac", str(dst)], check=True)
    y = audio.load(dst)
    assert abs(len(y) - 16000) < 2048  # AAC priming/padding
    assert np.abs(y).max() > 0.1


@pytest.mark.parametrize("case", ["missing", "empty", "directory", "text", "nan"])
def test_bad_input_one_line(tmp_path, case):
    p = tmp_path / "x.wav"
    if case == "nan":
        x = _tone(16000)
        x[100] = np.nan
        sf.write(p, x, 16000, subtype="FLOAT")
    else:
        write_bad_input(p, case)
    with pytest.raises(AudioError) as e:
        audio.load(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg


def test_loudness_gain_brings_any_level_to_the_reference_and_leaves_silence_alone():
    from echo.audio import REFERENCE_LUFS, loudness, loudness_gain

    rng = np.random.default_rng(0)
    t = np.arange(16000 * 5) / 16000
    x = (0.1 * np.sin(2 * np.pi * 300 * t) * (rng.random(t.size) > 0.3)).astype(np.float32)
    for db in (-30.0, -10.0, 0.0, 6.0):
        y = x * np.float32(10 ** (db / 20))
        assert loudness(y) == pytest.approx(loudness(x) + db, abs=0.01)  # BS.1770 is linear in level
        assert loudness(y * np.float32(loudness_gain(y))) == pytest.approx(REFERENCE_LUFS, abs=0.01)
    assert loudness_gain(np.zeros(16000 * 2, np.float32)) == 1.0
    assert loudness_gain(x[:4000]) == 1.0  # under 0.4 s: no gated measurement
    assert loudness_gain(x * np.float32(10 ** (-42 / 20))) == pytest.approx(100.0)  # +40 dB at most (43 needed)
    assert loudness_gain(x * np.float32(1e-4)) == 1.0  # below BS.1770's -70 LUFS absolute gate: "silence"


def test_loudness_of_a_long_signal_reads_excerpts_forward_only():
    from echo.audio import loudness
    from echo.diarization.diarizer import BlockReader

    rng = np.random.default_rng(1)
    n = 16000 * 700  # over the 10-minute whole-signal limit
    block = (0.05 * rng.standard_normal(16000 * 10)).astype(np.float32)
    reader = BlockReader(lambda: (block for _ in range(70)), n)
    assert loudness(reader) == pytest.approx(loudness(block), abs=0.2)
    assert reader.passes == 1
