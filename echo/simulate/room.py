"""Room acoustics for simulation: image-method reverberation and coloured additive noise.

Reverberation uses pyroomacoustics' ``ShoeBox`` (image source method) with a random room, RT60
(absorption from Sabine's formula) and random source/microphone positions. Every RIR is cut at its
direct-path peak, so a reverberant image stays sample-aligned with the dry signal and its reference
RTTM/alignment. Noise is synthetic 1/f^alpha noise generated from the recording's own random
generator: deterministic and nothing to download.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.signal import fftconvolve

from echo.config import check_fields, need, rule
from echo.audio import SAMPLE_RATE
from echo.errors import ConfigError

__all__ = ["RoomConfig", "simulate_rirs", "apply_rir", "coloured_noise", "noise_at_snr"]

log = logging.getLogger(__name__)


def check_ranges(cfg, *names: str) -> None:
    """Cross-item rule of ``[low, high]`` range fields (their bounds are the fields' rules): low <= high.

    Raises:
        FieldError: the first range whose low exceeds its high.
    """
    for name in names:
        r = getattr(cfg, name)
        need(cfg, r is None or r[0] <= r[1], name, "[low, high] with low <= high", list(r or ()))


def normalise_fields(cfg) -> None:
    """Turn list values (as YAML/JSON give them) into tuples on a frozen dataclass, in place."""
    for name, value in vars(cfg).items():
        if isinstance(value, list):
            object.__setattr__(cfg, name, tuple(value))


def room_config(value, where: str) -> "RoomConfig":
    """Accept a RoomConfig or a mapping of its fields (from params.yaml)."""
    if isinstance(value, RoomConfig):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(RoomConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"{where}.room: unknown key(s) {unknown}, expected {sorted(RoomConfig.__dataclass_fields__)}")
        return RoomConfig(**value)
    raise ConfigError(f"{where}.room: expected a mapping of room settings, got {type(value).__name__}")


@dataclass(frozen=True)
class RoomConfig:
    """Random shoebox rooms for reverberation (params.yaml: ``simulate.<set>.room``).

    Attributes:
        width_m, length_m, height_m: room size ranges in metres.
        rt60_s: reverberation time range in seconds (Sabine; infeasible draws are redrawn).
        max_order: cap on the image-method reflection order; it bounds the cost (a full-order RIR of a
            0.9 s room takes ~2 s of CPU), at the price of a slightly short late tail.
        min_wall_distance_m: sources and microphone keep at least this distance from the walls.
    """

    width_m: tuple[float, float] = field(default=(3.0, 10.0), metadata=rule(ge=1.5, le=50.0))
    length_m: tuple[float, float] = field(default=(3.0, 10.0), metadata=rule(ge=1.5, le=50.0))
    height_m: tuple[float, float] = field(default=(2.5, 4.0), metadata=rule(ge=1.5, le=20.0))
    rt60_s: tuple[float, float] = field(default=(0.2, 0.6), metadata=rule(ge=0.05, le=2.0))
    max_order: int = field(default=30, metadata=rule(ge=0, le=200))
    min_wall_distance_m: float = field(default=0.5, metadata=rule(ge=0.05, le=0.7))

    def __post_init__(self):
        normalise_fields(self)
        check_fields(self)
        check_ranges(self, "width_m", "length_m", "height_m", "rt60_s")


def simulate_rirs(num_sources: int, cfg: RoomConfig, rng: np.random.Generator,
                  sample_rate: int = SAMPLE_RATE) -> tuple[list[np.ndarray], dict]:
    """Simulate one room with one microphone and ``num_sources`` talkers.

    Args:
        num_sources: number of source positions (one per speaker).
        cfg: room ranges.
        rng: the recording's generator (all randomness comes from it).

    Returns:
        ``(rirs, info)``: one float32 RIR per source, starting at its direct-path peak and scaled so
        that peak is 1; ``info`` holds ``rt60`` and ``room`` (dimensions).
    """
    import pyroomacoustics as pra

    for _ in range(100):
        dims = np.array([rng.uniform(*cfg.width_m), rng.uniform(*cfg.length_m), rng.uniform(*cfg.height_m)])
        rt60 = float(rng.uniform(*cfg.rt60_s))
        try:
            absorption, order = pra.inverse_sabine(rt60, dims)
        except ValueError:  # RT60 too short for this room size: the walls would need absorption > 1
            continue
        break
    else:
        raise ConfigError(f"room: no room in {cfg.width_m}x{cfg.length_m}x{cfg.height_m} m reaches RT60 {cfg.rt60_s}")
    room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(absorption), max_order=min(order, cfg.max_order))
    d = cfg.min_wall_distance_m

    def position() -> np.ndarray:
        return np.array([rng.uniform(d, dims[0] - d), rng.uniform(d, dims[1] - d), rng.uniform(1.0, min(2.0, dims[2] - d))])

    room.add_microphone(position())
    for _ in range(num_sources):
        room.add_source(position())
    room.compute_rir()
    rirs = []
    for h in room.rir[0]:
        h = np.asarray(h, dtype=np.float64)
        peak = int(np.argmax(np.abs(h)))
        rirs.append((h[peak:] / h[peak]).astype(np.float32))
    return rirs, {"rt60": rt60, "room": dims.round(3).tolist()}


def apply_rir(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Reverberant image of ``x`` with the same length and alignment (the tail past the end is cut)."""
    return fftconvolve(x.astype(np.float64), rir.astype(np.float64))[: x.shape[0]].astype(np.float32)


def coloured_noise(num_samples: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS.

    Hand-written (a spectral shaping of white noise) because no maintained dependency of the
    project generates coloured noise.
    """
    white = rng.standard_normal(num_samples)
    spec = np.fft.rfft(white)
    f = np.fft.rfftfreq(num_samples)
    shape = np.zeros_like(f)
    shape[1:] = f[1:] ** (-exponent / 2.0)  # no DC: brown noise would otherwise drift
    y = np.fft.irfft(spec * shape, n=num_samples)
    rms = np.sqrt(np.mean(y ** 2))
    return (y / rms if rms > 0 else y).astype(np.float32)


def noise_at_snr(speech: np.ndarray, active: np.ndarray, snr_db: float, exponent: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Noise for ``speech`` at ``snr_db`` relative to the speech power over the ``active`` samples."""
    p = float(np.mean(np.square(speech[active], dtype=np.float64))) if active.any() else 0.0
    return coloured_noise(speech.shape[0], exponent, rng) * np.float32(np.sqrt(p / 10 ** (snr_db / 10)))
