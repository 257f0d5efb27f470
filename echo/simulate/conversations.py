"""Simulated conversations with 1..K speakers for diarization, with reference RTTM and UEM.

Recipe (after the EEND simulation of Fujita et al. 2019 and the conversation simulation of Landini
et al. 2022, "From simulated mixtures to simulated conversations"): utterances are trimmed to their
speech extent and placed as a sequence of turns. The first K turns visit every speaker once in a
random order, later turns go to a random other speaker. A turn either follows the previous one after
an exponential pause (scale ``beta_s[K-1]``) or starts inside it. Overlap is controlled rather than
left to chance: before each turn the overlap it would need for the recording to sit exactly on the
target ratio is computed from the running totals; when an overlap is due the turn overlaps with
probability ``overlap_prob`` (always when the deficit gets large, and on the last turn), by a random
0.5-1.5 times the due amount. Deficits accumulated over pause turns make overlaps of varying length,
and the last turn lands the recording on the target. An overlap only ever involves the previous
turn's speaker alone (it is bounded by the part of that turn nobody else speaks in), so at most two
speakers talk at once and nobody overlaps themselves.

Overlap ratio = duration with >= 2 active speakers / duration with >= 1 active speaker, measured on
the reference segments (the speech intervals of the source utterances: their speech extent, split at
alignment pauses of at least ``min_pause_s``).

Run (the lead's workflow does this per split)::

    from echo.corpus import manifest
    from echo.simulate.conversations import ConversationConfig, simulate_conversations
    simulate_conversations(manifest.read("data/manifest.parquet", "test"), ConversationConfig(),
                           "data/sim/conversations/test", k_values=(1, 2, 3, 4, 5), n_per_k=50)
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
from echo.io import write_text
from echo.simulate.channels import apply_channel, maybe_channel
from echo.simulate.room import RoomConfig, apply_rir, noise_at_snr, simulate_rirs
from echo.simulate.rttm import annotation_from_intervals, read_rttm, read_uem, rttm_text, uem_text
from echo.simulate.shards import AUDIO_FORMATS, SET_RULES, check_set_fields, generator, open_set, read_set, read_shard
from echo.simulate.utterances import Utterance, UtterancePool
from echo.progress import Hook

__all__ = ["ConversationConfig", "Turn", "ConversationPlan", "plan_conversation", "render_conversation",
           "simulate_conversations", "ConversationSet", "overlap_ratio"]

log = logging.getLogger(__name__)

PEAK = 0.9  # recordings are scaled down (never up) to this peak so 16-bit storage never clips
_GRID = 64  # overlap candidates searched per overlapping turn


@dataclass(frozen=True)
class ConversationConfig:
    """Conversation simulation (params.yaml: ``simulate.conversations``).

    Attributes:
        seed: base seed; a recording's generator is seeded by (seed, split, K, index).
        k_max: default speaker counts are 1..k_max (entry points may pass others, e.g. 1..5 for test).
        n_per_k: default number of recordings per speaker count.
        min_duration_s, max_duration_s: a recording's target length is drawn uniformly in between;
            turns are added until it is reached, and a recording never exceeds ``max_duration_s``
            (except when its first K turns alone are longer).
        beta_s: scale (mean, s) of the exponential pause between non-overlapping turns, per K
            (entry K-1; the last entry serves larger K). Also bounds the leading/trailing silence.
        overlap_ratio: target overlap ratio of recordings with K >= 2 (K = 1 has none).
        overlap_prob: chance that a turn overlaps its predecessor when overlap is due.
        gain_db: per-speaker gain range (dB) around the -25 dBFS utterance level.
        snr_db: additive noise SNR range (dB, w.r.t. speech power), or None for no noise.
        noise_exponent: range of the noise's spectral exponent (0 white, 1 pink, 2 brown).
        reverb_prob: probability that a recording is reverberated (one room, one RIR per speaker).
        room: room ranges for reverberation.
        min_pause_s: alignment pauses at least this long split a reference segment; 0 = never.
        shard_hours: audio hours per shard file.
        audio_format: ``flac`` (compact) or ``npy`` (int16, memory-mappable).
    """

    seed: int = field(default=0, metadata=SET_RULES["seed"])
    k_max: int = field(default=4, metadata=SET_RULES["k_max"])
    n_per_k: int = field(default=100, metadata=rule(ge=0, le=10**7))
    min_duration_s: float = field(default=30.0, metadata=rule(ge=1.0, le=3600.0))
    max_duration_s: float = field(default=120.0, metadata=rule(ge=1.0, le=3600.0))
    beta_s: tuple[float, ...] = field(default=(1.0, 1.0, 1.0, 1.0, 1.0), metadata=rule(gt=0, le=60, nonempty=True))
    overlap_ratio: float = field(default=0.15, metadata=rule(ge=0.0, le=0.6))
    overlap_prob: float = field(default=0.5, metadata=rule(ge=0.0, le=1.0))
    gain_db: tuple[float, float] = field(default=(-5.0, 5.0), metadata=SET_RULES["gain_db"])
    snr_db: tuple[float, float] | None = field(default=(10.0, 30.0), metadata=SET_RULES["snr_db"])
    noise_exponent: tuple[float, float] = field(default=(0.0, 2.0), metadata=SET_RULES["noise_exponent"])
    reverb_prob: float = field(default=0.5, metadata=SET_RULES["reverb_prob"])
    room: RoomConfig = field(default_factory=RoomConfig)
    min_pause_s: float = field(default=0.3, metadata=SET_RULES["min_pause_s"])
    shard_hours: float = field(default=1.0, metadata=SET_RULES["shard_hours"])
    audio_format: Literal[AUDIO_FORMATS] = "flac"

    def __post_init__(self):
        check_set_fields(self)
        need(self, self.min_duration_s <= self.max_duration_s, "max_duration_s",
             f">= min_duration_s ({self.min_duration_s})", self.max_duration_s)

    def beta(self, k: int) -> float:
        return float(self.beta_s[min(k, len(self.beta_s)) - 1])


@dataclass(frozen=True)
class Turn:
    """One placed utterance: ``onset`` in recording samples; ``overlap`` = samples shared with the previous turn's speech."""

    speaker: str
    utt: Utterance
    onset: int
    overlap: int


@dataclass(frozen=True)
class ConversationPlan:
    """Where every utterance goes, before any audio is read."""

    k: int
    speakers: tuple[str, ...]
    gains_db: dict
    turns: tuple[Turn, ...]
    num_samples: int
    target_overlap: float

    def intervals(self) -> dict[str, np.ndarray]:
        """Per-speaker ``[n, 2]`` reference speech intervals in recording samples."""
        out: dict[str, list] = {s: [] for s in self.speakers}
        for t in self.turns:
            out[t.speaker].append(t.utt.intervals + t.onset)
        return {s: np.concatenate(v) if v else np.zeros((0, 2), np.int64) for s, v in out.items()}


def overlap_ratio(intervals: dict[str, np.ndarray], num_samples: int) -> tuple[float, int, int]:
    """``(ratio, overlap samples, speech samples)`` of per-speaker sample intervals."""
    count = np.zeros(num_samples + 1, np.int32)
    for iv in intervals.values():
        for a, b in iv:  # per speaker the intervals never overlap, so a difference array counts speakers
            count[a] += 1
            count[b] -= 1
    active = np.cumsum(count[:-1])
    speech, over = int((active >= 1).sum()), int((active >= 2).sum())
    return (over / speech if speech else 0.0), over, speech


def _shared(a: np.ndarray, b: np.ndarray) -> int:
    """Total length of the intersection of two sets of disjoint intervals."""
    lo = np.maximum(a[:, None, 0], b[None, :, 0])
    hi = np.minimum(a[:, None, 1], b[None, :, 1])
    return int(np.clip(hi - lo, 0, None).sum())


def plan_conversation(pool: UtterancePool, k: int, cfg: ConversationConfig, rng: np.random.Generator) -> ConversationPlan:
    """Choose K speakers of the pool and place their utterances as turns (no audio is read).

    Args:
        pool: the split's utterances.
        k: number of speakers (``<= len(pool.speakers)``).
        cfg: conversation settings.
        rng: the recording's generator.

    Returns:
        The plan; ``plan.intervals()`` is the reference activity.
    """
    sr = SAMPLE_RATE
    speakers = tuple(str(s) for s in rng.choice(pool.speakers, size=k, replace=False))
    gains = {s: float(rng.uniform(*cfg.gain_db)) for s in speakers}
    draws = {s: pool.draw(s, rng) for s in speakers}
    target = cfg.overlap_ratio if k >= 2 else 0.0
    beta = cfg.beta(k) * sr
    goal = int(rng.uniform(cfg.min_duration_s, cfg.max_duration_s) * sr)
    limit = int(cfg.max_duration_s * sr)
    order = list(rng.permutation(speakers))
    turns: list[Turn] = []
    t_end = int(min(rng.exponential(beta), beta))  # leading silence
    alone_from = 0  # from here to t_end only the previous turn's speaker talks
    over = speech = 0
    prev_iv = None
    while True:
        i = len(turns)
        if i < k:
            spk = order[i]
        else:
            others = [s for s in speakers if s != turns[-1].speaker] or list(speakers)
            spk = others[int(rng.integers(len(others)))]
        utt = draws[spk].next()
        iv, n, a = utt.intervals, utt.num_samples, utt.speech_samples
        last = i >= k - 1 and t_end + n >= goal
        o = shared = 0
        if prev_iv is not None and turns[-1].speaker != spk and target > 0:
            due = (target * (speech + a) - over) / (1 + target)  # overlap that puts this turn on target
            o_max = min(t_end - alone_from, n - 1)
            if due > 0 and o_max > 0:
                cand = np.linspace(0, o_max, _GRID + 1).astype(np.int64)[1:]
                gain = np.array([_shared(prev_iv, iv + (t_end - c)) for c in cand])
                if last or due > 0.5 * gain[-1] or rng.random() < cfg.overlap_prob:
                    want = due if last else due * rng.uniform(0.5, 1.5)
                    j = int(np.argmin(np.abs(gain - want)))
                    o, shared = int(cand[j]), int(gain[j])
        gap = 0 if o else int(rng.exponential(beta))
        onset = t_end - o + gap
        if i >= k and onset + n > limit:
            break
        turns.append(Turn(spk, utt, onset, shared))
        over += shared
        speech += a - shared
        alone_from = t_end if o else onset
        t_end = onset + n
        prev_iv = iv + onset
        if last:
            break
    total = min(max(t_end + int(min(rng.exponential(beta), beta)), t_end), max(limit, t_end))
    return ConversationPlan(k, speakers, gains, tuple(turns), int(total), target)


def reverberate(signals: list[np.ndarray], cfg, rng: np.random.Generator,
                sample_rate: int = SAMPLE_RATE) -> tuple[list[np.ndarray], dict]:
    """With probability ``cfg.reverb_prob``, put the signals (one per speaker) in one simulated room.

    Args:
        signals: one signal per speaker, aligned to the recording.
        cfg: a :class:`ConversationConfig`, :class:`~echo.simulate.mixtures.MixtureConfig` or
            :class:`~echo.simulate.augment.AugmentConfig` (``reverb_prob`` and ``room``).
        rng: the recording's generator.
        sample_rate: the signals' rate (the RIRs are simulated at it).

    Returns:
        ``(signals, info)``: the reverberant images (or the signals themselves) and the recording's
        ``info`` (``reverb``, ``rt60``; ``snr_db`` and ``noise_exponent`` NaN until :func:`draw_noise`).
    """
    info = {"reverb": False, "rt60": float("nan"), "snr_db": float("nan"), "noise_exponent": float("nan")}
    if rng.random() < cfg.reverb_prob:
        rirs, room = simulate_rirs(len(signals), cfg.room, rng, sample_rate=sample_rate)
        signals = [apply_rir(x, h) for x, h in zip(signals, rirs)]
        info.update(reverb=True, rt60=room["rt60"])
    return signals, info


def draw_noise(speech: np.ndarray, intervals, cfg, rng: np.random.Generator, info: dict) -> np.ndarray | None:
    """Noise at an SNR drawn from ``cfg.snr_db`` w.r.t. the power of ``speech`` where it is active.

    Args:
        speech: the recording's speech (sum of the speakers).
        intervals: per-speaker ``[n, 2]`` speech intervals in samples (the active region).
        cfg: a :class:`ConversationConfig`, :class:`~echo.simulate.mixtures.MixtureConfig` or
            :class:`~echo.simulate.augment.AugmentConfig` (``snr_db`` and ``noise_exponent``).
        rng: the recording's generator.
        info: the recording's info; ``snr_db`` and ``noise_exponent`` are recorded in it.

    Returns:
        The noise (same length as ``speech``), or None when ``cfg.snr_db`` is None.
    """
    if cfg.snr_db is None:
        return None
    active = np.zeros(speech.shape[0], bool)
    for iv in intervals:
        for a, b in iv:
            active[a:b] = True
    snr, expo = float(rng.uniform(*cfg.snr_db)), float(rng.uniform(*cfg.noise_exponent))
    info.update(snr_db=snr, noise_exponent=expo)
    return noise_at_snr(speech, active, snr, expo, rng)


def render_conversation(pool: UtterancePool, plan: ConversationPlan, cfg: ConversationConfig,
                        rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Mix the planned turns: gains, optional reverberation, optional noise, peak limit.

    Returns:
        ``(audio float32 [n], info)`` with ``snr_db``, ``noise_exponent``, ``reverb``, ``rt60``.
    """
    n = plan.num_samples
    tracks = {s: np.zeros(n, np.float32) for s in plan.speakers}
    for t in plan.turns:
        x = pool.audio(t.utt) * np.float32(10 ** (plan.gains_db[t.speaker] / 20))
        tracks[t.speaker][t.onset:t.onset + x.shape[0]] += x
    signals, info = reverberate([tracks[s] for s in plan.speakers], cfg, rng)
    audio = np.sum(signals, axis=0).astype(np.float32)
    noise = draw_noise(audio, plan.intervals().values(), cfg, rng, info)
    if noise is not None:
        audio = audio + noise
    peak = float(np.max(np.abs(audio))) if n else 0.0
    if peak > PEAK:
        audio = audio * np.float32(PEAK / peak)
    return audio.astype(np.float32), info


def simulate_conversations(manifest_df: pd.DataFrame, cfg: ConversationConfig, out_dir: str | Path,
                           k_values: tuple[int, ...] | None = None, n_per_k: int | None = None,
                           hook: Hook | None = None, channel_prob: float = 0.0,
                           channels: tuple[str, ...] = ()) -> Path:
    """Simulate conversations from one split's utterances and write them to ``out_dir`` atomically.

    Output: ``recordings.parquet`` (one row per recording), ``turns.parquet`` (one row per placed
    utterance), ``reference.rttm`` + ``reference.uem`` (all recordings), ``audio/shard-*.{flac,npy}``,
    ``stats.json``, ``stats.png``, ``config.json``.

    Args:
        manifest_df: ``echo.corpus.manifest.read(path, split)``: the rows of ONE split.
        cfg: simulation settings.
        out_dir: output directory (replaced as a whole).
        k_values: speaker counts (default ``1..cfg.k_max``).
        n_per_k: recordings per speaker count (default ``cfg.n_per_k``).
        hook: progress callback (see :mod:`echo.progress`).
        channel_prob, channels: share of the recordings passed whole through a random channel of one
            of these kinds (:func:`~echo.simulate.channels.maybe_channel`, drawn from the recording's own
            generator stream, so the speech, turns and noise are those of the same recording without).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        EchoError: a table with several splits, or a K larger than the split's number of speakers.
    """
    from echo.simulate.stats import conversation_stats

    out_dir = Path(out_dir)
    rows, turn_rows, annotations, durations = [], [], [], {}
    with open_set("conversations", manifest_df, cfg, out_dir, k_values, n_per_k, hook) as run:
        pool = run.pool
        for k, i in run.jobs():
            rng = generator(cfg.seed, pool.split, k, i)
            plan = plan_conversation(pool, k, cfg, rng)
            audio, info = render_conversation(pool, plan, cfg, rng)
            channel = maybe_channel(channel_prob, channels, generator(cfg.seed, pool.split, k, i, 1))
            if channel is not None:
                audio = np.clip(apply_channel(audio, channel), -1.0, 1.0)
            info["channel"] = channel.name if channel else ""
            rec_id = f"{pool.split}_conv_k{k}_{i:06d}"
            shard, offset = run.shards.add(audio)
            intervals = plan.intervals()
            ratio, over, speech = overlap_ratio(intervals, plan.num_samples)
            annotations.append(annotation_from_intervals(rec_id, intervals))
            durations[rec_id] = plan.num_samples / SAMPLE_RATE
            rows.append({"rec_id": rec_id, "split": pool.split, "k": k, "speakers": list(plan.speakers),
                         "shard": shard, "offset": offset, "num_samples": plan.num_samples,
                         "duration": plan.num_samples / SAMPLE_RATE, "n_turns": len(plan.turns),
                         "target_overlap": plan.target_overlap, "achieved_overlap": ratio,
                         "speech_s": speech / SAMPLE_RATE, "overlap_s": over / SAMPLE_RATE, **info})
            for j, t in enumerate(plan.turns):
                turn_rows.append({"rec_id": rec_id, "turn": j, "speaker": t.speaker, "utt_id": t.utt.utt_id,
                                  "onset": t.onset, "num_samples": t.utt.num_samples,
                                  "gain_db": plan.gains_db[t.speaker], "overlap_prev": t.overlap})
        run.finish({"recordings": pd.DataFrame(rows, columns=_RECORDING_COLUMNS),
                    "turns": pd.DataFrame(turn_rows, columns=_TURN_COLUMNS)}, conversation_stats)
        write_text(run.tmp / "reference.rttm", rttm_text(annotations))
        write_text(run.tmp / "reference.uem", uem_text(durations))
    log.info("wrote %d conversations (%.2f h) to %s", len(rows), sum(durations.values()) / 3600, out_dir)
    return out_dir


_RECORDING_COLUMNS = ["rec_id", "split", "k", "speakers", "shard", "offset", "num_samples", "duration", "n_turns",
                      "target_overlap", "achieved_overlap", "speech_s", "overlap_s", "snr_db", "noise_exponent",
                      "reverb", "rt60", "channel"]
_TURN_COLUMNS = ["rec_id", "turn", "speaker", "utt_id", "onset", "num_samples", "gain_db", "overlap_prev"]


@dataclass(frozen=True)
class ConversationItem:
    """One recording: 16 kHz float32 ``audio``, reference ``annotation`` and scored region ``uem``."""

    rec_id: str
    audio: np.ndarray
    annotation: "Annotation"  # noqa: F821 (pyannote.core.Annotation)
    uem: "Timeline"  # noqa: F821 (pyannote.core.Timeline)
    k: int


class ConversationSet:
    """Reader of a directory written by :func:`simulate_conversations`.

    ``ConversationSet(d)[i]`` is a :class:`ConversationItem`; ``.table`` is ``recordings.parquet``.
    """

    def __init__(self, out_dir: str | Path):
        self.root, self.table, self.config = read_set(out_dir, "recordings", "simulate_conversations")
        self.annotations = read_rttm(self.root / "reference.rttm")
        self.uems = read_uem(self.root / "reference.uem")

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> ConversationItem:
        from pyannote.core import Annotation

        r = self.table.iloc[i]
        audio = read_shard(self.root, r["shard"], int(r["offset"]), int(r["num_samples"]))
        ann = self.annotations.get(r["rec_id"], Annotation(uri=r["rec_id"]))
        return ConversationItem(r["rec_id"], audio, ann, self.uems[r["rec_id"]], int(r["k"]))
