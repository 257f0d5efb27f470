"""Transmission channels: telephone band, speech codecs and lossy compression, clipping, level and
microphone colouring, applied to a 16 kHz waveform without moving it in time.

Real recordings reach a diarizer through channels the embedded corpus never has: a phone line
(8 kHz, 300-3400 Hz), G.711 or GSM on top of it, MP3/AAC/Opus at low bit rates, an overdriven
input stage that clips, a quiet or loud level, a microphone's colouring. A :class:`Channel` is one
such path with fixed parameters; :data:`CONDITIONS` names the ones the robustness table scores;
:func:`draw_channel` draws random ones for training augmentation.

Every codec and filter runs in FFmpeg (the ``ffmpeg`` command that ``workflow/install.sh``
installs): the encoders are the ones real files are made with, and FFmpeg's filters (biquad
band limits, parametric equaliser, resampler) are maintained there. Clipping and level are plain
sample arithmetic. The output always has the input's length and alignment: a codec's encoder
delay (MP3's priming samples written to a pipe, filter group delay) is found by cross-correlation
and removed, so the reference RTTM and frame labels still hold (:func:`apply_channel`).
"""
from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
from scipy.signal import correlate

from echo.audio import SAMPLE_RATE
from echo.config import need
from echo.errors import EchoError

__all__ = ["Channel", "CONDITIONS", "KINDS", "apply_channel", "draw_channel", "maybe_channel", "check_channel_kinds",
           "ffmpeg_binary"]

TELEPHONE_BAND = "highpass=f=300:poles=2,lowpass=f=3400:poles=2"
_MAX_LAG_S = 0.1  # codec delays seen here are under 0.1 s (MP3 1536 samples at 16 kHz)


@dataclass(frozen=True)
class Channel:
    """One transmission path with fixed parameters.

    Attributes:
        name: label in tables and logs.
        rate: the channel's sample rate (8000 for a telephone line); the result is back at the input's.
        filters: FFmpeg audio filter graph applied at the input rate before resampling/encoding
            ("" = none), e.g. the telephone band or an equaliser.
        codec: FFmpeg encoder (``pcm_mulaw``, ``libgsm``, ``libmp3lame``, ``libopus``, ``aac``, ...)
            or None for none.
        bit_rate: the encoder's bit rate (``"24k"``) where it takes one.
        container: FFmpeg muxer/demuxer that carries the codec through the pipe.
        gain_db: level change before clipping (dB); a gain that pushes samples past full scale clips
            them there, as an analogue-to-digital converter would.
        clip_db: hard clipping this many dB below the (gained) signal's peak, then scaled back to that
            peak (an overdriven input stage); None = no clipping.
    """

    name: str
    rate: int = SAMPLE_RATE
    filters: str = ""
    codec: str | None = None
    bit_rate: str | None = None
    container: str = "wav"
    gain_db: float = 0.0
    clip_db: float | None = None

    @property
    def uses_ffmpeg(self) -> bool:
        return bool(self.filters) or self.codec is not None or self.rate != SAMPLE_RATE


def _telephone(name: str, codec: str | None = None, container: str = "wav") -> Channel:
    return Channel(name, rate=8000, filters=TELEPHONE_BAND, codec=codec or "pcm_s16le", container=container)


# The robustness table's conditions (fixed parameters, so every run scores the same channels).
CONDITIONS: dict[str, Channel] = {
    "clean": Channel("clean"),
    "telephone": _telephone("telephone"),
    "g711_mulaw": _telephone("g711_mulaw", "pcm_mulaw"),
    "g711_alaw": _telephone("g711_alaw", "pcm_alaw"),
    "gsm": _telephone("gsm", "libgsm", "gsm"),
    "mp3_24k": Channel("mp3_24k", codec="libmp3lame", bit_rate="24k", container="mp3"),
    "opus_12k": Channel("opus_12k", codec="libopus", bit_rate="12k", container="ogg"),
    "aac_24k": Channel("aac_24k", codec="aac", bit_rate="24k", container="adts"),
    "clipped": Channel("clipped", clip_db=-12.0),
    "quiet": Channel("quiet", gain_db=-30.0),
}
# Kinds :func:`draw_channel` draws from (params: ``simulation.augmentation.channels``).
KINDS = ("telephone", "g711", "gsm", "mp3", "opus", "aac", "clip", "level", "eq")
_DEMUXER = {"adts": "aac"}  # FFmpeg's muxer and demuxer names differ for raw AAC


def ffmpeg_binary() -> str:
    """The ``ffmpeg`` command, or a one-line error naming the package that provides it."""
    path = shutil.which("ffmpeg")
    if path is None:
        raise EchoError("ffmpeg not found on PATH: the channel simulation needs it "
                        "(Debian package 'ffmpeg'; workflow/install.sh installs it)")
    return path


def _ffmpeg(args: list[str], data: bytes, what: str) -> bytes:
    cmd = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", *args]
    p = subprocess.run(cmd, input=data, capture_output=True)
    if p.returncode != 0:
        msg = p.stderr.decode(errors="replace").strip().splitlines()
        raise EchoError(f"ffmpeg failed on {what}: {msg[-1] if msg else 'exit status %d' % p.returncode}")
    return p.stdout


def _through_ffmpeg(x: np.ndarray, ch: Channel, sr: int) -> np.ndarray:
    raw = ["-f", "f32le", "-ar", str(sr), "-ac", "1"]
    enc = raw + ["-i", "pipe:0"]
    if ch.filters:
        enc += ["-af", ch.filters]
    enc += ["-ar", str(ch.rate), "-c:a", ch.codec or "pcm_f32le"]
    if ch.bit_rate:
        enc += ["-b:a", ch.bit_rate]
    container = ch.container if ch.codec else "f32le"
    coded = _ffmpeg(enc + ["-f", container, "pipe:1"], x.astype(np.float32).tobytes(), f"channel {ch.name!r} (encode)")
    dec = (["-f", _DEMUXER.get(container, container)] + (["-ar", str(ch.rate), "-ac", "1"] if container == "f32le" else [])
           + ["-i", "pipe:0"] + raw[:2] + ["-ar", str(sr), "-ac", "1", "pipe:1"])
    return np.frombuffer(_ffmpeg(dec, coded, f"channel {ch.name!r} (decode)"), dtype=np.float32)


def _align(y: np.ndarray, x: np.ndarray, max_lag: int) -> np.ndarray:
    """``y`` shifted so it lines up with ``x`` (lag by cross-correlation within +-max_lag), cut or
    zero-padded to ``x``'s length."""
    n = x.shape[0]
    lag = 0
    if n and y.size and max_lag > 0:
        m = min(n, y.shape[0])
        c = correlate(y[:m + max_lag].astype(np.float64), x[:m].astype(np.float64), mode="full", method="fft")
        zero = m - 1  # index of lag 0 in the full correlation
        lo, hi = max(0, zero - max_lag), min(c.shape[0], zero + max_lag + 1)
        lag = int(np.argmax(c[lo:hi])) + lo - zero
    out = np.zeros(n, dtype=np.float32)
    if lag >= 0:
        seg = y[lag:lag + n]
        out[:seg.shape[0]] = seg
    else:
        seg = y[:n + lag]
        out[-lag:-lag + seg.shape[0]] = seg
    return out


def apply_channel(wave: np.ndarray, channel: Channel | str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``wave`` passed through ``channel``: same length, same alignment, float32 at ``sample_rate``.

    Order: level, clipping, then the FFmpeg path (filters, resampling to ``channel.rate``, encode,
    decode, resampling back). A name is looked up in :data:`CONDITIONS`.

    Raises:
        EchoError: an unknown condition name, a missing ``ffmpeg``, or FFmpeg refusing the settings.
    """
    if isinstance(channel, str):
        if channel not in CONDITIONS:
            raise EchoError(f"unknown channel condition {channel!r}; expected one of {sorted(CONDITIONS)}")
        channel = CONDITIONS[channel]
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    if x.size == 0:
        return x.copy()
    if channel.gain_db:
        x = x * np.float32(10 ** (channel.gain_db / 20))
        if channel.gain_db > 0:
            x = np.clip(x, -1.0, 1.0)
    if channel.clip_db is not None:
        peak = float(np.max(np.abs(x)))
        if peak > 0:
            t = peak * 10 ** (channel.clip_db / 20)
            x = np.clip(x, -t, t) * np.float32(peak / t)
    if channel.uses_ffmpeg:
        x = _align(_through_ffmpeg(x, channel, sample_rate), x, int(_MAX_LAG_S * sample_rate))
    return x.astype(np.float32)


def draw_channel(kinds: tuple[str, ...], rng: np.random.Generator) -> Channel:
    """A random channel of one of ``kinds`` (see :data:`KINDS`), for training augmentation.

    Parameters are drawn around real conditions: telephone band edges, G.711 mu- or A-law, GSM,
    MP3 16-48 kb/s, Opus 8-24 kb/s, AAC 16-32 kb/s, clipping 3-15 dB below peak, level -30..+6 dB
    (clipped at full scale when loud), and a microphone colouring of a random high-pass, low-pass
    and two parametric equaliser bands of +-10 dB.
    """
    kind = str(rng.choice(np.asarray(kinds)))
    if kind == "telephone":
        lo, hi = rng.uniform(200, 400), rng.uniform(3000, 3600)
        return Channel(kind, rate=8000, filters=f"highpass=f={lo:.0f},lowpass=f={hi:.0f}", codec="pcm_s16le")
    if kind == "g711":
        return _telephone(kind, str(rng.choice(["pcm_mulaw", "pcm_alaw"])))
    if kind == "gsm":
        return _telephone(kind, "libgsm", "gsm")
    if kind == "mp3":
        return Channel(kind, codec="libmp3lame", bit_rate=f"{int(rng.choice([16, 24, 32, 48]))}k", container="mp3")
    if kind == "opus":
        return Channel(kind, codec="libopus", bit_rate=f"{int(rng.choice([8, 12, 16, 24]))}k", container="ogg")
    if kind == "aac":
        return Channel(kind, codec="aac", bit_rate=f"{int(rng.choice([16, 24, 32]))}k", container="adts")
    if kind == "clip":
        return Channel(kind, clip_db=-float(rng.uniform(3.0, 15.0)))
    if kind == "level":
        return Channel(kind, gain_db=float(rng.uniform(-30.0, 6.0)))
    if kind == "eq":
        bands = [f"highpass=f={rng.uniform(50, 250):.0f}", f"lowpass=f={rng.uniform(4000, 7800):.0f}"]
        for _ in range(2):
            f = math.exp(rng.uniform(math.log(150), math.log(5000)))
            bands.append(f"equalizer=f={f:.0f}:t=o:w=1:g={rng.uniform(-10, 10):.1f}")
        return Channel(kind, filters=",".join(bands))
    raise EchoError(f"unknown channel kind {kind!r}; expected one of {list(KINDS)}")


def check_channel_kinds(cfg) -> None:
    """``cfg.channels`` names only kinds of :data:`~echo.simulate.channels.KINDS`, each once."""
    for i, kind in enumerate(cfg.channels):
        need(cfg, kind in KINDS, f"channels[{i}]", f"one of {list(KINDS)}", kind)
    need(cfg, len(set(cfg.channels)) == len(cfg.channels), "channels", "distinct kinds", list(cfg.channels))


def maybe_channel(prob: float, kinds: tuple[str, ...], rng: np.random.Generator) -> Channel | None:
    """With probability ``prob``, a channel drawn from ``kinds``; else None. (Draws nothing from
    ``rng`` when ``prob`` is 0, so a recipe without channels draws what it drew before they existed.)"""
    if prob <= 0 or rng.random() >= prob:
        return None
    return draw_channel(tuple(kinds), rng)

