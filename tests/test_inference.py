import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from echo import audio
from echo.errors import AudioError, ConfigError
from echo.audio import REFERENCE_LUFS, loudness, loudness_gain
from echo.inference import InferenceConfig, encode_long, iter_latents, is_silent, probe, read_all, stream

from tests.helpers import write_bad_input

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg CLI not installed")


def _noise(sr, seconds, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    return (0.2 * rng.standard_normal((int(sr * seconds), channels))).astype(np.float32)


@pytest.mark.parametrize("sr,channels", [(44100, 2), (16000, 1), (8000, 3)])
def test_streamed_blocks_equal_whole_file_load(tmp_path, sr, channels):
    p = tmp_path / "a.flac"
    sf.write(p, _noise(sr, 2.3, channels), sr, subtype="PCM_24")
    src = probe(p)
    assert (src.sample_rate, src.channels) == (sr, channels)
    blocks = list(stream(src, block_s=0.3))  # many blocks, boundaries inside the signal
    assert len(blocks) >= 7
    y = np.concatenate(blocks)
    ref = audio.load(p)
    assert len(y) == len(ref)
    # the margin around each block makes block-wise resampling seamless
    np.testing.assert_allclose(y, ref, atol=2e-5)


@needs_ffmpeg
@pytest.mark.parametrize("ext,codec", [(".mp3", "libmp3lame"), (".m4a", "aac")])
def test_compressed_stream_is_16k_mono_and_matches_whole_decode(tmp_path, ext, codec):
    wav = tmp_path / "a.wav"
    sf.write(wav, _noise(44100, 3.0, 2), 44100)
    p = tmp_path / f"a{ext}"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), "-c:a", codec, str(p)], check=True)
    src = probe(p)
    assert src.backend == "ffmpeg" and src.sample_rate == 44100
    y = np.concatenate(list(stream(src, block_s=0.5)))  # blocks of one whole decode
    from torchcodec.decoders import AudioDecoder

    whole = AudioDecoder(str(p), sample_rate=16000, num_channels=1).get_all_samples().data.numpy()[0]
    assert len(y) == len(whole) and abs(len(y) - 48000) < 4096
    np.testing.assert_array_equal(y, whole)


def test_read_all_matches_stream(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, _noise(22050, 1.7), 22050)
    cfg = InferenceConfig(block_s=0.4)
    np.testing.assert_array_equal(read_all(probe(p), cfg), np.concatenate(list(stream(probe(p), 0.4))))


def test_truncated_wav_is_caught_from_the_header(tmp_path):
    p = tmp_path / "cut.wav"
    sf.write(p, _noise(16000, 2.0), 16000, subtype="PCM_16")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"cut\.wav: truncated WAV"):
        probe(p)


def test_truncated_flac_fails_while_streaming(tmp_path):
    p = tmp_path / "cut.flac"
    sf.write(p, _noise(16000, 4.0), 16000, subtype="PCM_16")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    src = probe(p)  # FLAC headers announce the full length
    with pytest.raises(AudioError, match=r"cut\.flac: "):
        list(stream(src, 1.0))


@pytest.mark.parametrize("case,message", [
    ("missing", "no such file"), ("empty", "empty file"), ("directory", "is a directory"),
    ("text", "not a readable audio file")])
def test_probe_rejects_bad_paths(tmp_path, case, message):
    p = write_bad_input(tmp_path / "x.wav", case)
    with pytest.raises(AudioError, match=message) as e:
        probe(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_nan_samples_fail_while_streaming(tmp_path):
    x = _noise(16000, 1.0)
    x[5000] = np.nan
    p = tmp_path / "nan.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite"):
        read_all(probe(p))


def test_is_silent():
    assert is_silent(np.zeros(1600, np.float32))
    assert is_silent(np.full(1600, 1e-5, np.float32))  # -100 dBFS
    assert not is_silent(np.full(1600, 1e-2, np.float32))


def test_encode_long_blocks_equal_the_whole_encoding_and_report_progress():
    import torch

    from echo.features import FrontEnd
    from echo.models.vit import Encoder, EncoderConfig

    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(n_mels=80, dim=16, depth=1, heads=2, mlp_dim=32)).eval()
    fe = FrontEnd()
    wave = _noise(16000, 3.3)[:, 0]
    gain = loudness_gain(wave)
    assert abs(loudness(wave * np.float32(gain)) - REFERENCE_LUFS) < 0.05 and gain != 1.0
    with torch.no_grad():  # the whole recording at the reference level, in one pass
        whole = enc(torch.from_numpy(fe.compute(wave * np.float32(gain)))[None]).features[0].numpy()
    calls = []
    # context wider than the recording: every block sees all of it, so only block edges can differ
    chunked = encode_long(enc, fe, wave, chunk_s=0.72, context_s=4.0, hook=lambda step, **kw: calls.append((step, kw)))
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-4)
    assert calls == [("encode", {"completed": i, "total": 5}) for i in range(1, 6)]
    with torch.no_grad():  # level=False encodes the samples as given
        raw = enc(torch.from_numpy(fe.compute(wave))[None]).features[0].numpy()
    blocks = np.concatenate([x for _, x in iter_latents(enc, fe, wave, 18, 100, level=False)])
    np.testing.assert_allclose(blocks, raw, rtol=1e-4, atol=1e-4)


def test_read_all_reports_decoded_seconds(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, _noise(16000, 2.0), 16000)
    seen = []
    read_all(probe(p), InferenceConfig(block_s=0.5), hook=lambda step, completed, total: seen.append((step, completed, total)))
    assert [s[0] for s in seen] == ["decode"] * 4 and seen[-1][1:] == (2, 2)


def test_config_ranges():
    with pytest.raises(ConfigError, match="inference.chunk_s"):
        InferenceConfig(chunk_s=0)
    with pytest.raises(ConfigError, match="inference.silence_dbfs"):
        InferenceConfig(silence_dbfs=3.0)
