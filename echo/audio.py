"""Audio decoding and resampling with one-line errors for bad input.

WAV/FLAC/OGG are read with soundfile (libsndfile, can seek inside a file); anything else (AAC in
.m4a as VoxCeleb2 ships it, MP3, ...) goes through torchcodec, i.e. the FFmpeg libraries.
Everything is returned as mono float32 at the requested rate (torchaudio's windowed-sinc resampler).

People's recordings come at any level, and the encoder only ever saw the training data's (-22 LUFS
median for the embedded conversations): 30 dB quieter, a recording's log-mel frames sit 6.9 nats
lower in every band and the diarizer found one speaker in every test conversation. The encoder's
input is therefore brought to :data:`REFERENCE_LUFS` (:func:`loudness_gain`, ITU-R BS.1770-4
gated loudness measured by pyloudnorm) before any frame is computed (:func:`echo.inference.iter_latents`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from echo.errors import AudioError

__all__ = ["SAMPLE_RATE", "REFERENCE_LUFS", "load", "read_segment", "info", "resample", "write_flac",
           "loudness", "loudness_gain"]

SAMPLE_RATE = 16_000
# The level the encoder's input is brought to: the embedded training conversations' median integrated
# loudness is -22.3 LUFS (10th-90th percentile -24.9..-19.4; measured at 9e8f3d0), the EBU R128 target -23.
REFERENCE_LUFS = -23.0
_MAX_GAIN_DB = 40.0  # a nearly silent file is not amplified into its noise floor beyond this
_LOUDNESS_WHOLE_S = 600.0  # up to this length the whole signal is measured; longer, evenly spaced excerpts
_EXCERPT_S, _EXCERPTS = 10.0, 60
_SOUNDFILE_EXT = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif"}


def _check_path(path: Path) -> None:
    """Raise a one-line AudioError for a missing path, a directory or an empty file (also used by
    :func:`echo.inference.probe`)."""
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, expected an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")


def info(path: str | os.PathLike) -> tuple[int, int]:
    """Return ``(sample_rate, num_frames)`` of an audio file without decoding it all."""
    path = Path(path)
    _check_path(path)
    if path.suffix.lower() in _SOUNDFILE_EXT:
        i = _soundfile_info(path)
        return int(i.samplerate), int(i.frames)
    x, sr = _decode_ffmpeg(path)
    return sr, x.shape[-1]


def load(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a whole file to mono float32 at ``sample_rate``.

    Raises:
        AudioError: missing/empty/undecodable file, no samples, or non-finite samples.
    """
    return read_segment(path, 0, None, sample_rate)


def read_segment(path: str | os.PathLike, start: int, num_samples: int | None,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read ``num_samples`` samples from ``start`` (both in the file's own rate), mono, resampled.

    Args:
        path: audio file.
        start: first sample, in the file's sample rate.
        num_samples: number of samples in the file's rate, or ``None`` for the rest of the file.
        sample_rate: rate of the returned signal.
    """
    path = Path(path)
    _check_path(path)
    if path.suffix.lower() in _SOUNDFILE_EXT:
        import soundfile as sf

        try:
            with sf.SoundFile(str(path)) as f:
                sr = f.samplerate
                if start:
                    f.seek(start)
                x = f.read(frames=-1 if num_samples is None else num_samples, dtype="float32", always_2d=True)
        except AudioError:
            raise
        except Exception as e:
            raise AudioError(f"{path}: not a readable audio file ({_first_line(e)})") from None
        x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
        if num_samples is not None and x.shape[0] < num_samples:
            raise AudioError(f"{path}: truncated, expected {num_samples} samples from {start}, got {x.shape[0]}")
    else:
        full, sr = _decode_ffmpeg(path)
        stop = None if num_samples is None else start + num_samples
        x = full[start:stop]
        if num_samples is not None and x.shape[0] < num_samples:
            raise AudioError(f"{path}: truncated, expected {num_samples} samples from {start}, got {x.shape[0]}")
    if x.size == 0:
        raise AudioError(f"{path}: contains no audio samples")
    if not np.isfinite(x).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    return resample(np.ascontiguousarray(x, dtype=np.float32), sr, sample_rate)


def resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's sinc interpolation); identity when rates agree."""
    if orig_sr == new_sr:
        return x.astype(np.float32, copy=False)
    import torch
    import torchaudio.functional as AF

    y = AF.resample(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), orig_sr, new_sr)
    return y.numpy()


def write_flac(path: str | os.PathLike, x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono audio as 16-bit FLAC atomically."""
    import soundfile as sf

    from echo.io import atomic_path

    with atomic_path(path, suffix=".flac") as tmp:
        sf.write(str(tmp), np.clip(x, -1.0, 1.0), sample_rate, subtype="PCM_16", format="FLAC")


def _soundfile_info(path: Path):
    """libsndfile's header info of ``path`` (``soundfile.info``), or a one-line AudioError."""
    import soundfile as sf

    try:
        return sf.info(str(path))
    except Exception as e:  # libsndfile's messages are long; keep one line
        raise AudioError(f"{path}: not a readable audio file ({_first_line(e)})") from None


def _ffmpeg_decoder(path: Path, **kw):
    """A torchcodec ``AudioDecoder`` of ``path`` (keywords go to it), or a one-line AudioError."""
    try:
        from torchcodec.decoders import AudioDecoder
    except Exception as e:  # FFmpeg shared libraries missing
        raise AudioError(f"{path}: decoding {path.suffix or 'this file'} needs FFmpeg via torchcodec, "
                         f"which failed to load ({_first_line(e)}); run workflow/install.sh") from None
    try:
        return AudioDecoder(str(path), **kw)
    except Exception as e:
        raise AudioError(f"{path}: not a decodable audio file ({_first_line(e)})") from None


def _decode_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    dec = _ffmpeg_decoder(path)
    try:
        samples = dec.get_all_samples()
    except Exception as e:
        raise AudioError(f"{path}: not a decodable audio file ({_first_line(e)})") from None
    data = samples.data.numpy()
    if data.ndim == 2:
        data = data.mean(axis=0)
    return data.astype(np.float32, copy=False), int(samples.sample_rate)


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


def loudness(wave, sample_rate: int = SAMPLE_RATE) -> float:
    """Integrated loudness (LUFS, ITU-R BS.1770-4: K-weighting, 400 ms blocks, absolute and relative
    gates) of a mono signal: an array or anything sliced like one (a long file's
    :class:`~echo.diarization.diarizer.BlockReader`).

    Up to 10 minutes the whole signal is measured; a longer one by 60 evenly spaced 10 s excerpts,
    read in order (one forward pass, memory bounded). ``-inf`` for silence or under 0.4 s of signal.
    """
    import pyloudnorm

    n = len(wave)
    if n < int(0.4 * sample_rate):
        return float("-inf")
    if n <= _LOUDNESS_WHOLE_S * sample_rate:
        x = np.asarray(wave[0:n], dtype=np.float64)
    else:
        w = int(_EXCERPT_S * sample_rate)
        starts = np.linspace(0, n - w, _EXCERPTS).astype(np.int64)
        x = np.concatenate([np.asarray(wave[int(s):int(s) + w], dtype=np.float64) for s in starts])
    with np.errstate(divide="ignore"):
        import warnings

        with warnings.catch_warnings():  # pyloudnorm warns on possible clipping; the level is still right
            warnings.simplefilter("ignore")
            return float(pyloudnorm.Meter(sample_rate).integrated_loudness(x))


def loudness_gain(wave, sample_rate: int = SAMPLE_RATE, target_lufs: float = REFERENCE_LUFS) -> float:
    """The linear gain that brings ``wave`` to ``target_lufs`` (:func:`loudness`), at most +-40 dB;
    1.0 for a silent or too short signal."""
    lufs = loudness(wave, sample_rate)
    if not np.isfinite(lufs):
        return 1.0
    return float(10 ** (np.clip(target_lufs - lufs, -_MAX_GAIN_DB, _MAX_GAIN_DB) / 20))
