"""Noisy, reverberant copies of the training utterances, for the specialisation stages.

The test conversations are noisy (``simulation.conversations.snr_db``) and half of them are
reverberant; stages trained on clean utterances alone meet that acoustics for the first time at
test time, which costs speech detection and speaker embeddings dearly. Kaldi-style recipes fix this
by training on augmented copies (MUSAN noise + simulated RIRs); here the copies use the same noise
and room simulation as the conversations (:mod:`echo.simulate.room`), drawn with their own seed,
so nothing about the test recordings leaks into training.

Each utterance keeps its length and alignment: the RIR starts at its direct-path peak and its tail
past the end is cut, and additive noise does not move anything, so the copy's frames share the
clean cache's phone labels frame by frame (:class:`echo.stages.batches.CropSampler` swaps the
frames of a crop and keeps its labels).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from echo.errors import ConfigError
from echo.simulate.room import (RoomConfig, apply_rir, check_range, check_value, noise_at_snr, normalise_fields,
                                room_config, simulate_rirs)

__all__ = ["AugmentConfig", "Augmenter"]


@dataclass(frozen=True)
class AugmentConfig:
    """Augmented training copy (params.yaml ``simulation.augmentation``).

    Attributes:
        seed: base seed; an utterance's draws depend only on ``(seed, utt_id)``.
        snr_db: additive noise SNR range (dB, w.r.t. the utterance's speech power), or None.
        noise_exponent: range of the noise's spectral exponent (0 white, 1 pink, 2 brown).
        reverb_prob: probability that an utterance is reverberated (a fresh room each time).
        room: room ranges for reverberation.
    """

    seed: int = 0
    snr_db: tuple[float, float] | None = (5.0, 30.0)
    noise_exponent: tuple[float, float] = (0.0, 2.0)
    reverb_prob: float = 0.5
    room: RoomConfig = field(default_factory=RoomConfig)

    def __post_init__(self):
        p = "simulation.augmentation"
        normalise_fields(self)
        object.__setattr__(self, "room", room_config(self.room, p))
        check_value(f"{p}.seed", self.seed, 0, 2**32 - 1, int)
        if self.snr_db is not None:
            check_range(f"{p}.snr_db", self.snr_db, -10.0, 80.0)
        check_range(f"{p}.noise_exponent", self.noise_exponent, 0.0, 3.0)
        check_value(f"{p}.reverb_prob", self.reverb_prob, 0.0, 1.0)
        if self.snr_db is None and self.reverb_prob == 0:
            raise ConfigError(f"{p}: snr_db is null and reverb_prob is 0, so the copy would equal the clean "
                              "utterances; set one of them")


class Augmenter:
    """Applies :class:`AugmentConfig` to one utterance's waveform at a time."""

    def __init__(self, cfg: AugmentConfig, sample_rate: int) -> None:
        self.cfg, self.sample_rate = cfg, int(sample_rate)

    def rng(self, utt_id: str) -> np.random.Generator:
        """The utterance's generator: a function of ``(seed, utt_id)`` only, so the copy of an
        utterance does not depend on which other utterances are in the split or their order."""
        return np.random.default_rng([self.cfg.seed, zlib.crc32(utt_id.encode())])

    def __call__(self, wave: np.ndarray, utt_id: str, speech: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
        """The augmented copy of ``wave`` (same length and alignment) and what was drawn.

        Args:
            wave: mono float waveform at ``sample_rate``.
            utt_id: the utterance's id (seeds the draws).
            speech: boolean mask of the samples that carry speech (the SNR reference); default all.

        Returns:
            ``(wave, info)`` with ``info`` = ``reverb`` (bool), ``rt60`` and ``snr_db`` (NaN when absent).
        """
        cfg, rng = self.cfg, self.rng(utt_id)
        x = np.asarray(wave, dtype=np.float32)
        info = {"reverb": False, "rt60": float("nan"), "snr_db": float("nan")}
        if x.size == 0:
            return x, info
        if rng.random() < cfg.reverb_prob:
            (rir,), room = simulate_rirs(1, cfg.room, rng, sample_rate=self.sample_rate)
            x = apply_rir(x, rir)
            info.update(reverb=True, rt60=room["rt60"])
        if cfg.snr_db is not None:
            active = np.ones(x.shape[0], bool) if speech is None else np.asarray(speech, bool)
            if not active.any():
                active = np.ones(x.shape[0], bool)
            snr, expo = float(rng.uniform(*cfg.snr_db)), float(rng.uniform(*cfg.noise_exponent))
            x = x + noise_at_snr(x, active, snr, expo, rng)
            info["snr_db"] = snr
        return x.astype(np.float32), info
