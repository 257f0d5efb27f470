"""Short mixtures of K = 1..k_max sources for source routing and separation, with clean references.

Each mixture is a window of ``duration_s`` seconds. In ``full`` mode every source is cropped from
a long enough utterance to cover the whole window (shorter utterances are placed at a random
onset); in ``partial`` mode each source covers a random span of at least ``min_active_s``. Each
source keeps its scaled signal aligned to the mixture (after gain, reverberation if any, and the
mixture's peak limiting), so ``mixture = sum(sources) + noise`` holds exactly before 16-bit storage,
and its phone alignment shifted into mixture time and clipped to the window.

Storage: for each mixture the shard holds ``[mixture | source_0 | ... | source_{K-1}]`` back to back;
``mixtures.parquet`` has one row per mixture and ``sources.parquet`` one row per source (with its own
shard offset and alignment). Read it with :class:`MixtureSet`.

Run (the lead's workflow does this per split)::

    from echo.corpus import manifest
    from echo.simulate.mixtures import MixtureConfig, simulate_mixtures
    simulate_mixtures(manifest.read("data/manifest.parquet", "train"), MixtureConfig(), "data/sim/mixtures/train")
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal
from pathlib import Path

import numpy as np
import pandas as pd

from echo.config import need, rule
from echo.audio import SAMPLE_RATE
from echo.simulate.conversations import PEAK, draw_noise, overlap_ratio, reverberate
from echo.simulate.room import RoomConfig
from echo.simulate.shards import AUDIO_FORMATS, SET_RULES, check_set_fields, generator, open_set, read_set, read_shard
from echo.simulate.utterances import UtterancePool
from echo.progress import Hook

__all__ = ["MixtureConfig", "Mixture", "make_mixture", "simulate_mixtures", "MixtureSet", "MixtureItem",
           "spread_indices"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MixtureConfig:
    """Mixture simulation (params.yaml: ``simulate.mixtures``).

    Attributes:
        seed: base seed; a mixture's generator is seeded by (seed, split, K, index).
        k_max: default source counts are 1..k_max.
        n_per_k: default number of mixtures per source count.
        duration_s: window length in seconds.
        full_overlap_prob: probability of ``full`` mode (all sources span the window), else ``partial``.
        min_active_s: shortest span of a source in ``partial`` mode (also capped by the utterance).
        gain_db: per-source gain range (dB) around the -25 dBFS utterance level.
        snr_db: additive noise SNR range (dB, w.r.t. speech power), or None for no noise.
        noise_exponent: range of the noise's spectral exponent (0 white, 1 pink, 2 brown).
        reverb_prob: probability that a mixture is reverberated; its sources are then the
            reverberant images (targets stay ``mixture - noise`` decompositions).
        room: room ranges for reverberation.
        min_pause_s: alignment pauses at least this long count as inactive in ``achieved_overlap``.
        shard_hours: audio hours (mixtures and sources together) per shard file.
        audio_format: ``flac`` (compact) or ``npy`` (int16, memory-mappable).
    """

    seed: int = field(default=0, metadata=SET_RULES["seed"])
    k_max: int = field(default=4, metadata=SET_RULES["k_max"])
    n_per_k: int = field(default=1000, metadata=rule(ge=0, le=10**8))
    duration_s: float = field(default=4.0, metadata=rule(ge=0.25, le=60.0))
    full_overlap_prob: float = field(default=0.5, metadata=rule(ge=0.0, le=1.0))
    min_active_s: float = field(default=1.0, metadata=rule(ge=0.0))
    gain_db: tuple[float, float] = field(default=(-5.0, 5.0), metadata=SET_RULES["gain_db"])
    snr_db: tuple[float, float] | None = field(default=(10.0, 30.0), metadata=SET_RULES["snr_db"])
    noise_exponent: tuple[float, float] = field(default=(0.0, 2.0), metadata=SET_RULES["noise_exponent"])
    reverb_prob: float = field(default=0.0, metadata=SET_RULES["reverb_prob"])
    room: RoomConfig = field(default_factory=RoomConfig)
    min_pause_s: float = field(default=0.3, metadata=SET_RULES["min_pause_s"])
    shard_hours: float = field(default=1.0, metadata=SET_RULES["shard_hours"])
    audio_format: Literal[AUDIO_FORMATS] = "flac"

    def __post_init__(self):
        check_set_fields(self)
        need(self, self.min_active_s <= self.duration_s, "min_active_s", f"seconds in [0, duration_s={self.duration_s}]",
             self.min_active_s)


@dataclass(frozen=True)
class Mixture:
    """One simulated mixture in memory (float32, before 16-bit storage).

    Attributes:
        mixture: ``[n]`` = ``sources.sum(0) + noise``.
        sources: ``[K, n]`` scaled source signals aligned to the mixture.
        noise: ``[n]`` additive noise (zeros without noise).
        speakers, utt_ids: per source.
        onsets, lengths: each source's span in the window (samples).
        crops: each span's start inside the trimmed utterance.
        gains_db: per source.
        phones, phone_start, phone_end: per source, alignment in mixture samples, clipped to its span.
        intervals: per source ``[m, 2]`` speech intervals in mixture samples.
        mode: ``full`` or ``partial``; info: ``snr_db``, ``noise_exponent``, ``reverb``, ``rt60``.
    """

    mixture: np.ndarray
    sources: np.ndarray
    noise: np.ndarray
    speakers: tuple[str, ...]
    utt_ids: tuple[str, ...]
    onsets: tuple[int, ...]
    lengths: tuple[int, ...]
    crops: tuple[int, ...]
    gains_db: tuple[float, ...]
    phones: tuple[tuple[str, ...], ...]
    phone_start: tuple[np.ndarray, ...]
    phone_end: tuple[np.ndarray, ...]
    intervals: tuple[np.ndarray, ...]
    mode: str
    info: dict


def _clip(start: np.ndarray, end: np.ndarray, shift: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s, e = np.clip(start + shift, lo, hi), np.clip(end + shift, lo, hi)
    keep = e > s
    return s[keep], e[keep], keep


def make_mixture(pool: UtterancePool, k: int, cfg: MixtureConfig, rng: np.random.Generator) -> Mixture:
    """Build one mixture of ``k`` distinct speakers of the pool.

    Args:
        pool: the split's utterances.
        k: number of sources.
        cfg: mixture settings.
        rng: the mixture's generator.

    Returns:
        The mixture with its sources, noise and per-source alignments.
    """
    n = int(round(cfg.duration_s * SAMPLE_RATE))
    min_active = max(1, int(round(cfg.min_active_s * SAMPLE_RATE)))
    speakers = tuple(str(s) for s in rng.choice(pool.speakers, size=k, replace=False))
    mode = "full" if rng.random() < cfg.full_overlap_prob else "partial"
    sources = np.zeros((k, n), np.float32)
    utts, onsets, lengths, crops, gains, phones, pstart, pend, ivs = [], [], [], [], [], [], [], [], []
    for j, spk in enumerate(speakers):
        utt = pool.draw(spk, rng).next()
        u = utt.num_samples
        span = n if mode == "full" else int(rng.integers(min(min_active, n), n + 1))
        a = min(u, span)
        onset = int(rng.integers(0, n - a + 1))
        crop = int(rng.integers(0, u - a + 1))
        g = float(rng.uniform(*cfg.gain_db))
        sources[j, onset:onset + a] = pool.audio(utt)[crop:crop + a] * np.float32(10 ** (g / 20))
        shift = onset - crop
        ps, pe, keep = _clip(utt.phone_start, utt.phone_end, shift, onset, onset + a)
        s0, s1, _ = _clip(utt.intervals[:, 0], utt.intervals[:, 1], shift, onset, onset + a)
        utts.append(utt.utt_id), onsets.append(onset), lengths.append(a), crops.append(crop), gains.append(g)
        phones.append(tuple(p for p, kp in zip(utt.phones, keep) if kp)), pstart.append(ps), pend.append(pe)
        ivs.append(np.stack([s0, s1], axis=1))
    signals, info = reverberate(list(sources), cfg, rng)
    sources = np.stack(signals)
    speech = sources.sum(axis=0)
    noise = draw_noise(speech, ivs, cfg, rng, info)
    if noise is None:
        noise = np.zeros(n, np.float32)
    # one factor for everything keeps mixture == sum(sources) + noise and no stored signal clips
    peak = max(float(np.max(np.abs(speech + noise))), float(np.max(np.abs(sources))))
    scale = np.float32(PEAK / peak) if peak > PEAK else np.float32(1.0)
    sources, noise = sources * scale, noise * scale
    mixture = sources.sum(axis=0) + noise
    return Mixture(mixture.astype(np.float32), sources.astype(np.float32), noise.astype(np.float32), speakers,
                   tuple(utts), tuple(onsets), tuple(lengths), tuple(crops), tuple(gains), tuple(phones),
                   tuple(pstart), tuple(pend), tuple(ivs), mode, info)


# a different stream from conversations (seeded by ``(seed, split, K, index)``) so the two sets do not mirror each other
_STREAM = 1


def simulate_mixtures(manifest_df: pd.DataFrame, cfg: MixtureConfig, out_dir: str | Path,
                      k_values: tuple[int, ...] | None = None, n_per_k: int | None = None,
                      hook: Hook | None = None) -> Path:
    """Simulate mixtures from one split's utterances and write them to ``out_dir`` atomically.

    Output: ``mixtures.parquet``, ``sources.parquet``, ``audio/shard-*.{flac,npy}``, ``stats.json``,
    ``stats.png``, ``config.json``.

    Args:
        manifest_df: ``echo.corpus.manifest.read(path, split)``: the rows of ONE split.
        cfg: simulation settings.
        out_dir: output directory (replaced as a whole).
        k_values: source counts (default ``1..cfg.k_max``).
        n_per_k: mixtures per source count (default ``cfg.n_per_k``).
        hook: progress callback (see :mod:`echo.progress`).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        EchoError: a table with several splits, or a K larger than the split's number of speakers.
    """
    from echo.simulate.stats import mixture_stats

    out_dir = Path(out_dir)
    rows, src_rows = [], []
    with open_set("mixtures", manifest_df, cfg, out_dir, k_values, n_per_k, hook) as run:
        pool = run.pool
        for k, i in run.jobs():
            m = make_mixture(pool, k, cfg, generator(cfg.seed, pool.split, _STREAM, k, i))
            mix_id = f"{pool.split}_mix_k{k}_{i:07d}"
            n = m.mixture.shape[0]
            shard, offset = run.shards.add(m.mixture, *m.sources)
            ratio, over, speech = overlap_ratio(dict(enumerate(m.intervals)), n)
            rows.append({"mix_id": mix_id, "split": pool.split, "k": k, "speakers": list(m.speakers),
                         "utt_ids": list(m.utt_ids), "mode": m.mode, "shard": shard, "offset": offset,
                         "num_samples": n, "duration": n / SAMPLE_RATE, "achieved_overlap": ratio,
                         "speech_s": speech / SAMPLE_RATE, "overlap_s": over / SAMPLE_RATE, **m.info})
            for j in range(k):
                src_rows.append({"mix_id": mix_id, "slot": j, "speaker": m.speakers[j], "utt_id": m.utt_ids[j],
                                 "shard": shard, "offset": offset + (j + 1) * n, "onset": m.onsets[j],
                                 "length": m.lengths[j], "crop": m.crops[j], "gain_db": m.gains_db[j],
                                 "align_phone": list(m.phones[j]), "align_start": m.phone_start[j].tolist(),
                                 "align_end": m.phone_end[j].tolist()})
        run.finish({"mixtures": pd.DataFrame(rows, columns=_MIXTURE_COLUMNS),
                    "sources": pd.DataFrame(src_rows, columns=_SOURCE_COLUMNS)}, mixture_stats)
    log.info("wrote %d mixtures to %s", len(rows), out_dir)
    return out_dir


_MIXTURE_COLUMNS = ["mix_id", "split", "k", "speakers", "utt_ids", "mode", "shard", "offset", "num_samples",
                    "duration", "achieved_overlap", "speech_s", "overlap_s", "snr_db", "noise_exponent", "reverb", "rt60"]
_SOURCE_COLUMNS = ["mix_id", "slot", "speaker", "utt_id", "shard", "offset", "onset", "length", "crop", "gain_db",
                   "align_phone", "align_start", "align_end"]


def spread_indices(n: int, at_most: int | None) -> np.ndarray:
    """Indices of at most ``at_most`` of ``n`` mixtures, evenly spread over the set (so every K of a
    set stored K by K keeps its share); 0 or None = all ``n``."""
    if not at_most or n <= at_most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, at_most).round().astype(np.int64))


@dataclass(frozen=True)
class MixtureItem:
    """One stored mixture: ``mixture [n]``, ``sources [K, n]`` (float32, 16 kHz), per-source
    ``alignments`` as ``(phones, start, end)`` in mixture samples, ``speakers`` and ``utt_ids``."""

    mix_id: str
    mixture: np.ndarray
    sources: np.ndarray
    alignments: list[tuple[list[str], np.ndarray, np.ndarray]]
    speakers: list[str]
    utt_ids: list[str]


class MixtureSet:
    """Reader of a directory written by :func:`simulate_mixtures`.

    ``MixtureSet(d)[i]`` is a :class:`MixtureItem`; ``.table`` / ``.sources`` are the Parquet tables.
    """

    def __init__(self, out_dir: str | Path):
        self.root, self.table, self.config = read_set(out_dir, "mixtures", "simulate_mixtures")
        self.sources = pd.read_parquet(self.root / "sources.parquet")
        self._by_mix = self.sources.groupby("mix_id", sort=False).indices

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> MixtureItem:
        r = self.table.iloc[i]
        n = int(r["num_samples"])
        src = self.sources.iloc[np.sort(self._by_mix[r["mix_id"]])].sort_values("slot")
        block = read_shard(self.root, r["shard"], int(r["offset"]), n * (1 + len(src)))
        alignments = [(list(s.align_phone), np.asarray(s.align_start, np.int64), np.asarray(s.align_end, np.int64))
                      for s in src.itertuples(index=False)]
        return MixtureItem(r["mix_id"], block[:n], block[n:].reshape(len(src), n), alignments,
                           list(src["speaker"]), list(src["utt_id"]))
