"""Noisy, reverberant copies of the training utterances, through random transmission channels, for the
specialisation stages.

The test conversations are noisy (``simulation.conversations.snr_db``) and half of them are
reverberant; stages trained on clean utterances alone meet that acoustics for the first time at
test time, which costs speech detection and speaker embeddings dearly. Kaldi-style recipes fix this
by training on augmented copies (MUSAN noise + simulated RIRs); here the copies use the same noise
and room simulation as the conversations (:mod:`echo.simulate.room`), drawn with their own seed,
so nothing about the test recordings leaks into training. A share of the copies then goes through a
random transmission channel (:func:`echo.simulate.channels.draw_channel`: telephone band, G.711, GSM,
MP3/Opus/AAC at low bit rates, clipping, level, microphone colouring), which real recordings have and
the synthesiser's output never does.

Each utterance keeps its length and alignment: the RIR starts at its direct-path peak and its tail
past the end is cut, additive noise does not move anything and a channel keeps length and alignment
(:func:`~echo.simulate.channels.apply_channel`), so the copy's frames share the
clean cache's phone labels frame by frame (:class:`echo.stages.batches.CropSampler` swaps the
frames of a crop and keeps its labels).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from echo.config import check_fields, need, rule
from echo.simulate.channels import KINDS, apply_channel, check_channel_kinds, maybe_channel
from echo.simulate.conversations import draw_noise, reverberate
from echo.simulate.room import RoomConfig, check_ranges, normalise_fields, room_config
from echo.simulate.shards import SET_RULES

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
        channel_prob: probability that the copy then goes through a random transmission channel.
        channels: the channel kinds drawn from (:data:`echo.simulate.channels.KINDS`).
    """

    seed: int = field(default=0, metadata=SET_RULES["seed"])
    snr_db: tuple[float, float] | None = field(default=(5.0, 30.0), metadata=SET_RULES["snr_db"])
    noise_exponent: tuple[float, float] = field(default=(0.0, 2.0), metadata=SET_RULES["noise_exponent"])
    reverb_prob: float = field(default=0.5, metadata=SET_RULES["reverb_prob"])
    room: RoomConfig = field(default_factory=RoomConfig)
    channel_prob: float = field(default=0.0, metadata=rule(ge=0.0, le=1.0))
    channels: tuple[str, ...] = field(default=KINDS, metadata=rule(nonempty=True))

    def __post_init__(self):
        normalise_fields(self)
        object.__setattr__(self, "room", room_config(self.room, "AugmentConfig"))
        check_fields(self)
        check_channel_kinds(self)
        check_ranges(self, "snr_db", "noise_exponent")
        need(self, self.snr_db is not None or self.reverb_prob > 0, "snr_db",
             "a [low, high] range when reverb_prob is 0 (else the copy would equal the clean utterances)", None)


class Augmenter:
    """Applies :class:`AugmentConfig` to one utterance's waveform at a time."""

    def __init__(self, cfg: AugmentConfig, sample_rate: int) -> None:
        self.cfg, self.sample_rate = cfg, int(sample_rate)

    def rng(self, utt_id: str) -> np.random.Generator:
        """The utterance's generator: a function of ``(seed, utt_id)`` only, so the copy of an
        utterance does not depend on which other utterances are in the split or their order."""
        return np.random.default_rng([self.cfg.seed, zlib.crc32(utt_id.encode())])

    def __call__(self, wave: np.ndarray, utt_id: str, intervals: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
        """The augmented copy of ``wave`` (same length and alignment) and what was drawn.

        The room and the noise are drawn exactly as for a conversation
        (:func:`~echo.simulate.conversations.reverberate`, then
        :func:`~echo.simulate.conversations.draw_noise`), from the utterance's own generator.

        Args:
            wave: mono float waveform at ``sample_rate``.
            utt_id: the utterance's id (seeds the draws).
            intervals: ``[n, 2]`` sample intervals that carry speech (the SNR reference); default,
                or when they cover nothing, the whole utterance.

        Returns:
            ``(wave, info)`` with ``info`` = ``reverb`` (bool), ``rt60``, ``snr_db``,
            ``noise_exponent`` (NaN when absent) and ``channel`` (the channel kind, "" for none).
        """
        x = np.asarray(wave, dtype=np.float32)
        if x.size == 0:
            return x, {"reverb": False, "rt60": float("nan"), "snr_db": float("nan"), "noise_exponent": float("nan"),
                       "channel": ""}
        rng = self.rng(utt_id)
        (x,), info = reverberate([x], self.cfg, rng, sample_rate=self.sample_rate)
        iv = np.asarray(intervals if intervals is not None else np.empty((0, 2)), dtype=np.int64).reshape(-1, 2)
        if not (iv[:, 1] > iv[:, 0]).any():
            iv = np.array([[0, x.shape[0]]], dtype=np.int64)
        noise = draw_noise(x, [iv], self.cfg, rng, info)
        x = (x if noise is None else x + noise).astype(np.float32)
        channel = maybe_channel(self.cfg.channel_prob, self.cfg.channels, rng)
        info["channel"] = channel.name if channel else ""
        return (apply_channel(x, channel, self.sample_rate) if channel else x), info
