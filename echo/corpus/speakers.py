"""Synthetic speaker identities: a fixed voice, accent, prosody and vocal-tract warp per speaker; a channel per session.

espeak-ng alone offers ~70 usable voice variants; one identity here combines a variant with an
English accent, base pitch, pitch range, speaking rate, a vocal-tract warp (the 22.05 kHz output
is read as if sampled at ``warp_rate`` and resampled to 16 kHz, which scales every formant, the
pitch and the tempo by ``warp``) and a channel colour (a smooth random EQ curve between a
high-pass and a low-pass edge, a level and a noise floor). The continuous parameters make
identities distinct without making any single parameter give the speaker away.

The colour belongs to a recording session, not to the voice: a speaker recorded in several
sessions (:func:`session_colours`, ``corpus.embedded.train_sessions``) gets one colour per
session, as a VoxCeleb speaker gets one channel per video. With one colour per speaker the colour
is a label shortcut: measured on dev speakers at 1f54b14, filtering every utterance through the
same telephone band moved the speaker head's mean non-target cosine from 0.21 to 0.80, i.e. the
embedding had learnt the band edges and EQ as identity.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from echo.errors import ConfigError

__all__ = ["ACCENTS", "VARIANTS", "EQ_BANDS_HZ", "ChannelColour", "SpeakerIdentity", "sample_identities",
           "sample_colour", "session_colours"]

# English accents of espeak-ng 1.51 (`espeak-ng --voices=en`; "en" is British English, named by its
# file gmw/en since espeak_SetVoiceByName does not know "en-gb"; MBROLA voices excluded: they need
# the non-free mbrola binary and voice files).
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")

# `+variant` files of espeak-ng-data/voices/!v that sound like a person. Left out: whispering
# (whisper, whisperf, caleb), heavy echo/robot effects (robosoft*, RicishayMax*, UniRobot,
# anikaRobot, Demonic, Tweaky), names with spaces ("Mr serious") and test voices (fast).
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6",
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2", "Henrique",
    "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "Storm", "adam", "anika", "announcer",
    "antonio", "aunty", "belinda", "benjamin", "boris", "croak", "david", "ed", "edward", "edward2", "grandma",
    "grandpa", "gustave", "iven", "iven2", "iven3", "iven4", "john", "kaukovalta", "linda", "marcelo", "max",
    "michel", "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby",
    "steph", "steph2", "steph3", "travis", "victor", "zac",
)

EQ_BANDS_HZ = (125, 250, 500, 1000, 2000, 4000)  # centre frequencies of the channel's EQ gains

# Parameter ranges of sampled identities (espeak units where noted).
PITCH_RANGE = (25, 75)  # espeakPITCH, 0..100, 50 = the variant's own pitch
PITCH_SPAN_RANGE = (15, 85)  # espeakRANGE, 0 = monotone
RATE_RANGE = (135, 205)  # words per minute
WARP_RANGE = (0.90, 1.12)  # formant/pitch/tempo scale
WARP_STEP_HZ = 50  # warp_rate is a multiple of this, so 22.05->16 kHz resampling kernels stay small
HIGHPASS_RANGE = (40.0, 220.0)
LOWPASS_RANGE = (4500.0, 7800.0)
EQ_SD_DB, EQ_MAX_DB = 3.5, 8.0
LEVEL_RANGE_DB = (-28.0, -18.0)  # speech RMS, dBFS
NOISE_RANGE_DB = (-72.0, -55.0)  # noise floor RMS, dBFS


@dataclass(frozen=True)
class ChannelColour:
    """A fixed per-speaker recording channel.

    Attributes:
        highpass_hz: lower band edge (microphone/cable roll-off).
        lowpass_hz: upper band edge (codec/bandwidth limit).
        eq_db: gains in dB at :data:`EQ_BANDS_HZ`, interpolated on a log-frequency axis.
        level_db: RMS of the speech part, dBFS.
        noise_db: RMS of the additive noise floor, dBFS.
    """

    highpass_hz: float
    lowpass_hz: float
    eq_db: tuple[float, ...]
    level_db: float
    noise_db: float


@dataclass(frozen=True)
class SpeakerIdentity:
    """One synthetic speaker; every utterance of the speaker uses exactly these settings.

    Attributes:
        speaker: speaker id (e.g. ``"esp0007"``).
        accent: espeak language voice, one of :data:`ACCENTS`.
        variant: espeak ``+variant``, one of :data:`VARIANTS`.
        pitch: espeakPITCH, 0..100.
        pitch_range: espeakRANGE, 0..100.
        rate: espeakRATE, words per minute.
        warp_rate: the rate (Hz) espeak's 22.05 kHz output is reinterpreted as before resampling
            to 16 kHz; ``warp = warp_rate / 22050`` scales formants, pitch and tempo.
        channel: the speaker's channel colour.
    """

    speaker: str
    accent: str
    variant: str
    pitch: int
    pitch_range: int
    rate: int
    warp_rate: int
    channel: ChannelColour

    @property
    def voice(self) -> str:
        """espeak voice name, e.g. ``"en-gb-scotland+f3"``."""
        return f"{self.accent}+{self.variant}"

    @property
    def warp(self) -> float:
        return self.warp_rate / 22_050

    def to_dict(self) -> dict:
        d = asdict(self)
        d["voice"], d["warp"] = self.voice, self.warp
        return d


def _key(ident: SpeakerIdentity) -> tuple:
    # What makes two identities "the same": the synthesis settings, ignoring the name.
    return (ident.accent, ident.variant, ident.pitch, ident.pitch_range, ident.rate, ident.warp_rate)


def sample_identities(n: int, seed: int, prefix: str = "esp") -> list[SpeakerIdentity]:
    """Draw ``n`` distinct speaker identities, deterministically for ``seed``.

    Voice variants are used in balanced rounds (each variant once per round, in shuffled order)
    so that all variants appear before any repeats; accents likewise.

    Args:
        n: number of identities (>= 1).
        seed: random seed.
        prefix: speaker-id prefix; ids are ``f"{prefix}{i:04d}"``.

    Returns:
        ``n`` identities whose synthesis settings are pairwise different.
    """
    if n < 1:
        raise ConfigError(f"speakers.n: expected >= 1, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EA4E5]))

    def balanced(items):
        while True:
            for i in rng.permutation(len(items)):
                yield items[int(i)]

    variants, accents = balanced(VARIANTS), balanced(ACCENTS)
    out: list[SpeakerIdentity] = []
    seen: set[tuple] = set()
    warp_lo = int(np.ceil(WARP_RANGE[0] * 22_050 / WARP_STEP_HZ))
    warp_hi = int(np.floor(WARP_RANGE[1] * 22_050 / WARP_STEP_HZ))
    while len(out) < n:
        channel = sample_colour(rng)
        ident = SpeakerIdentity(
            speaker=f"{prefix}{len(out):04d}", accent=next(accents), variant=next(variants),
            pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
            pitch_range=int(rng.integers(PITCH_SPAN_RANGE[0], PITCH_SPAN_RANGE[1] + 1)),
            rate=int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1)),
            warp_rate=int(rng.integers(warp_lo, warp_hi + 1)) * WARP_STEP_HZ,
            channel=channel,
        )
        if _key(ident) in seen:  # astronomically rare, but distinctness is a promise
            continue
        seen.add(_key(ident))
        out.append(ident)
    return out


def sample_colour(rng: np.random.Generator) -> ChannelColour:
    """Draw one channel colour (band edges, EQ, level, noise floor) from the module's ranges."""
    eq = np.clip(rng.normal(0.0, EQ_SD_DB, len(EQ_BANDS_HZ)), -EQ_MAX_DB, EQ_MAX_DB)
    return ChannelColour(
        highpass_hz=round(float(np.exp(rng.uniform(*np.log(HIGHPASS_RANGE)))), 1),
        lowpass_hz=round(float(rng.uniform(*LOWPASS_RANGE)), 1),
        eq_db=tuple(round(float(g), 2) for g in eq),
        level_db=round(float(rng.uniform(*LEVEL_RANGE_DB)), 2),
        noise_db=round(float(rng.uniform(*NOISE_RANGE_DB)), 2),
    )


def session_colours(ident: SpeakerIdentity, n_sessions: int, seed: int, speaker_index: int) -> list[ChannelColour]:
    """The channel colour of each of a speaker's ``n_sessions`` recording sessions.

    Session 0 keeps the identity's own colour (so one session reproduces the one-colour corpus);
    the others are drawn from the same ranges, deterministically for ``(seed, speaker_index)``.
    """
    if n_sessions < 1:
        raise ConfigError(f"n_sessions: expected >= 1, got {n_sessions}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, speaker_index, 0xC0105E55]))
    return [ident.channel] + [sample_colour(rng) for _ in range(n_sessions - 1)]
