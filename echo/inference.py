"""Streaming audio input for inference on people's own recordings, with bounded memory.

Decoding is done block by block so that an hour-long file never exists in memory at its native
rate and channel count (an hour of 48 kHz stereo float32 is 1.4 GB; the same hour as 16 kHz mono
float32 is 230 MB):

- WAV/FLAC/OGG/AIFF (soundfile, seekable): blocks of ``block_s`` are read, mixed to mono and
  resampled with torchaudio's sinc resampler. Each block is resampled with a context margin on
  both sides at a sample offset where both rates align, so the concatenated blocks equal
  :func:`echo.audio.load` on the whole file (to float rounding).
- MP3/M4A/anything else (FFmpeg through torchcodec): decoded whole, FFmpeg converting to 16 kHz
  mono while it decodes, so memory is 230 MB per hour of audio, not the native-rate signal
  (torchcodec's time-range decoding is not seamless for AAC, see :func:`_stream_ffmpeg`).

:func:`probe` checks a file's header without decoding it (exists, not a directory, non-empty,
a readable audio header, no WAV data chunk cut short), so several inputs can all be checked before
any work or output starts. Problems only visible in the samples (NaN/inf, a FLAC/MP3 stream that
ends early) raise while streaming. Every problem is an :class:`~echo.errors.AudioError` with one
line naming the file.

Also the one chunked encoder of long signals (:func:`iter_latents`, :func:`encode_long`; the
diarizer, its back end and the CLI use it), so the encoder's attention never sees more than
``chunk_s`` of audio at once and the log-mel of a block is computed from the samples it needs.

Progress is reported through a ``hook(step, completed=..., total=...)`` the caller passes (the CLI
draws bars with it); nothing here draws on the terminal.
"""
from __future__ import annotations

import logging
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np
import torch

from echo.audio import SAMPLE_RATE, _SOUNDFILE_EXT, _check_path, _ffmpeg_decoder, _first_line, _soundfile_info, loudness_gain, resample
from echo.config import check_fields, rule
from echo.errors import AudioError
from echo.features import FrontEnd
from echo.progress import Hook

__all__ = ["InferenceConfig", "AudioSource", "probe", "stream", "read_all", "is_silent",
           "chunk_log_mel", "token_count", "iter_latents", "encode_long"]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class InferenceConfig:
    """How long recordings are read and encoded.

    Attributes:
        block_s: audio decoded per block while streaming (> 0). Bounds decoder memory.
        chunk_s: audio the encoder sees at once (> 0); attention cost grows with its square.
        context_s: extra audio encoded on each side of a chunk and then dropped (>= 0), so
            tokens near chunk edges still see context.
        silence_dbfs: a recording whose peak is below this level (dB full scale, < 0) is treated
            as silent: no speakers, no phones.
        progress_s: the CLI shows progress bars for inputs longer than this (>= 0) when
            stderr is a terminal.
    """

    SECTION: ClassVar[str] = "inference"

    block_s: float = field(default=60.0, metadata=rule(gt=0))
    chunk_s: float = field(default=30.0, metadata=rule(gt=0))
    context_s: float = field(default=4.0, metadata=rule(ge=0))
    silence_dbfs: float = field(default=-70.0, metadata=rule(lt=0))
    progress_s: float = field(default=120.0, metadata=rule(ge=0))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class AudioSource:
    """A checked input file.

    Attributes:
        path: the file.
        backend: ``"soundfile"`` or ``"ffmpeg"``.
        sample_rate: the file's own rate.
        channels: the file's channel count.
        duration: seconds, from the header.
    """

    path: Path
    backend: str
    sample_rate: int
    channels: int
    duration: float

    @property
    def num_samples(self) -> int:
        """Samples at 16 kHz that streaming will yield (from the header's duration)."""
        return int(round(self.duration * SAMPLE_RATE))


def probe(path: str | os.PathLike) -> AudioSource:
    """Check an input file's header without decoding its samples.

    Raises:
        AudioError: missing, a directory, empty, not audio, a WAV whose data chunk is cut short,
            or a header announcing no samples.
    """
    path = Path(path)
    _check_path(path)
    if path.suffix.lower() in _SOUNDFILE_EXT:
        i = _soundfile_info(path)
        _check_riff_data(path)
        src = AudioSource(path, "soundfile", int(i.samplerate), int(i.channels), i.frames / i.samplerate)
    else:
        dec = _ffmpeg_decoder(path)
        m = dec.metadata
        dur = m.duration_seconds_from_header if m.duration_seconds_from_header is not None else m.duration_seconds
        src = AudioSource(path, "ffmpeg", int(m.sample_rate), int(m.num_channels or 1), float(dur or 0.0))
    if src.num_samples == 0 and src.backend == "soundfile":
        raise AudioError(f"{path}: contains no audio samples")
    return src


def _check_riff_data(path: Path) -> None:
    """Raise if a RIFF/WAVE file's ``data`` chunk claims more bytes than the file holds.

    libsndfile silently reads a cut-off WAV as a shorter one; a file cut off by a failed copy or
    download should be an error. Sizes 0 and 0xFFFFFFFF mean "unknown" (streamed/RF64 writers).
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            cid, clen = struct.unpack("<4sI", fh.read(8))
            if cid == b"data":
                if clen not in (0, 0xFFFFFFFF) and pos + 8 + clen > size:
                    have = size - pos - 8
                    raise AudioError(f"{path}: truncated WAV, header announces {clen} bytes of audio, "
                                     f"the file holds {have} ({100 * have / clen:.0f}%)")
                return
            pos += 8 + clen + (clen & 1)  # chunks are word-aligned


def stream(src: AudioSource, block_s: float = 60.0) -> Iterator[np.ndarray]:
    """Yield consecutive 16 kHz mono float32 blocks of ``src`` (about ``block_s`` each).

    Raises:
        AudioError: non-finite samples, or the stream ends well before the header says.
    """
    blocks = _stream_soundfile(src, block_s) if src.backend == "soundfile" else _stream_ffmpeg(src, block_s)
    for x in blocks:
        if not np.isfinite(x).all():
            raise AudioError(f"{src.path}: contains NaN or infinite samples")
        yield x


def _stream_soundfile(src: AudioSource, block_s: float) -> Iterator[np.ndarray]:
    import soundfile as sf

    sr = src.sample_rate
    # Resample blocks on offsets where both rates fall on whole samples (multiples of `unit` input
    # samples), with a margin of context on each side, so that block edges are seamless.
    unit = sr // math.gcd(sr, SAMPLE_RATE)
    out_unit = SAMPLE_RATE * unit // sr
    block = max(1, round(block_s * sr / unit)) * unit
    margin = 0 if sr == SAMPLE_RATE else max(1, math.ceil(0.05 * sr / unit)) * unit
    total = int(round(src.duration * sr))
    start = 0
    try:
        with sf.SoundFile(str(src.path)) as f:
            while start < total:
                lo = max(0, start - margin)
                f.seek(lo)
                want = min(total, start + block + margin) - lo
                x = f.read(frames=want, dtype="float32", always_2d=True)
                if len(x) < want:
                    raise AudioError(f"{src.path}: truncated, audio ends at {(lo + len(x)) / sr:.1f} s, "
                                     f"header says {src.duration:.1f} s")
                x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
                y = resample(np.ascontiguousarray(x), sr, SAMPLE_RATE)
                skip = (start - lo) // unit * out_unit
                n_out = math.ceil((min(total, start + block) - start) * SAMPLE_RATE / sr)
                yield y[skip:skip + n_out]
                start += block
    except AudioError:
        raise
    except Exception as e:  # e.g. "flac decoder lost sync" on a cut-off FLAC
        raise AudioError(f"{src.path}: truncated or corrupt audio data after {start / sr:.1f} s "
                         f"({_first_line(e)})") from None


def _stream_ffmpeg(src: AudioSource, block_s: float) -> Iterator[np.ndarray]:
    # Decoded whole, with FFmpeg converting to 16 kHz mono as it goes (230 MB per hour of audio):
    # time-range decoding is not seamless for AAC (a range that starts inside a frame seeks and
    # resets the decoder), and compressed files are small enough on disk to be this long rarely.
    dec = _ffmpeg_decoder(src.path, sample_rate=SAMPLE_RATE, num_channels=1)
    try:
        x = dec.get_all_samples().data.numpy()
    except Exception as e:
        raise AudioError(f"{src.path}: not a decodable audio file ({_first_line(e)})") from None
    x = x.mean(axis=0) if x.ndim == 2 else x
    got = len(x)
    if got == 0:
        raise AudioError(f"{src.path}: contains no audio samples")
    # MP3/AAC headers estimate the duration; allow for priming, padding and estimation error
    if src.duration > 0 and got / SAMPLE_RATE < 0.98 * src.duration - 0.5:
        raise AudioError(f"{src.path}: truncated, audio ends at {got / SAMPLE_RATE:.1f} s, "
                         f"header says {src.duration:.1f} s")
    step = max(1, round(block_s * SAMPLE_RATE))
    for i in range(0, got, step):
        yield x[i:i + step].astype(np.float32, copy=False)


def read_all(src: AudioSource, config: InferenceConfig = InferenceConfig(), hook: Hook | None = None) -> np.ndarray:
    """Decode ``src`` block by block into one 16 kHz mono float32 array.

    Memory: the result (230 MB per hour) plus one block; never the file at its native rate.

    Args:
        src: a probed file.
        config: the block length.
        hook: progress callback ``hook("decode", completed=seconds decoded, total=seconds)``.
    """
    parts, done = [], 0
    for x in stream(src, config.block_s):
        parts.append(x)
        done += len(x)
        if hook is not None:
            hook("decode", completed=round(done / SAMPLE_RATE), total=round(src.duration))
    wave = np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else np.zeros(0, np.float32))
    if wave.size == 0:
        raise AudioError(f"{src.path}: contains no audio samples")
    return wave


def is_silent(wave: np.ndarray, silence_dbfs: float = -70.0) -> bool:
    """True when the peak level is below ``silence_dbfs`` (digital silence, a muted channel)."""
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    return peak <= 10.0 ** (silence_dbfs / 20.0)


def chunk_log_mel(frontend: FrontEnd, wave, f0: int, f1: int) -> np.ndarray:
    """Frames ``f0 .. f1 - 1`` of ``frontend.compute(wave)``, computed from the samples they need.

    A centred STFT frame ``f`` reads samples ``f * hop +- n_fft / 2``; the slice read here starts
    a whole number of hops (>= n_fft / 2) before the first frame's centre, so its frames line up
    with the whole signal's, and its own edge padding only touches frames that are dropped, except
    at the signal's true ends. The result equals slicing the whole recording's log-mel (to float
    rounding) at a cost of ``f1 - f0`` frames.
    """
    hop = frontend.hop_length
    f1 = min(f1, frontend.num_frames(len(wave)))
    if f1 <= f0:
        return np.zeros((0, frontend.n_mels), np.float32)
    margin = -(-(frontend.n_fft // 2) // hop) * hop
    lo = max(0, f0 * hop - margin)
    hi = min(len(wave), (f1 - 1) * hop + margin + 1)
    off = lo // hop
    return frontend.compute(wave[lo:hi])[f0 - off: f1 - off]


def token_count(encoder: torch.nn.Module, frontend: FrontEnd, num_samples: int) -> int:
    """Encoder tokens of a signal of ``num_samples`` (the last one may cover a partial patch)."""
    return -(-frontend.num_frames(num_samples) // encoder.cfg.patch_frames)


class _Scaled:
    """``wave`` times ``gain``, sliced like an array (an array or a BlockReader underneath)."""

    def __init__(self, wave, gain: float):
        self.wave, self.gain = wave, np.float32(gain)

    def __len__(self) -> int:
        return len(self.wave)

    def __getitem__(self, key: slice) -> np.ndarray:
        return np.asarray(self.wave[key], dtype=np.float32) * self.gain


@torch.inference_mode()
def iter_latents(encoder: torch.nn.Module, frontend: FrontEnd, wave, chunk_tokens: int,
                 context_tokens: int, level: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """Encode a recording block by block: yields ``(first token, (n, D) float32 latents)`` of
    consecutive blocks of ``chunk_tokens`` tokens, each encoded with ``context_tokens`` of extra
    context on each side (dropped). With one block this equals encoding the whole input at once.

    Args:
        encoder: :class:`echo.models.vit.Encoder`.
        frontend: its log-mel front-end.
        wave: mono samples (an array or a :class:`echo.diarization.diarizer.BlockReader`).
        chunk_tokens, context_tokens: block and context sizes in tokens (>= 1, >= 0).
        level: bring the recording to :data:`echo.audio.REFERENCE_LUFS` first (one gain for the
            whole recording, :func:`echo.audio.loudness_gain`); False encodes the samples as given.
    """
    if level:
        gain = loudness_gain(wave, frontend.sample_rate)
        if gain != 1.0:
            wave = _Scaled(wave, gain)
    p = encoder.cfg.patch_frames
    n = token_count(encoder, frontend, len(wave))
    dev = next(encoder.parameters()).device
    chunk_tokens = max(1, int(chunk_tokens))
    for c0 in range(0, n, chunk_tokens):
        c1 = min(n, c0 + chunk_tokens)
        a, b = max(0, c0 - context_tokens), min(n, c1 + context_tokens)
        mels = torch.from_numpy(chunk_log_mel(frontend, wave, a * p, b * p)).to(dev)
        yield c0, encoder(mels.unsqueeze(0)).features[0, c0 - a: c1 - a].float().cpu().numpy()


def encode_long(encoder: torch.nn.Module, frontend: FrontEnd, wave, chunk_s: float = 30.0,
                context_s: float = 4.0, hook: Hook | None = None) -> np.ndarray:
    """The whole recording's ``(N, D)`` latents from :func:`iter_latents` (training sets, the CLI).

    Args:
        encoder, frontend, wave: as for :func:`iter_latents`.
        chunk_s, context_s: block and context lengths in seconds (rounded to whole tokens).
        hook: progress callback ``hook("encode", completed=blocks done, total=blocks)``.
    """
    token_s = encoder.cfg.patch_frames * frontend.hop_length / frontend.sample_rate
    chunk_tokens, context_tokens = max(1, round(chunk_s / token_s)), round(context_s / token_s)
    total = -(-token_count(encoder, frontend, len(wave)) // chunk_tokens)
    blocks = []
    for _, x in iter_latents(encoder, frontend, wave, chunk_tokens, context_tokens):
        blocks.append(x)
        if hook is not None:
            hook("encode", completed=len(blocks), total=total)
    return np.concatenate(blocks) if blocks else np.zeros((0, encoder.cfg.dim), np.float32)
