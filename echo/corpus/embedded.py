"""The embedded corpus: multi-speaker English speech synthesised with espeak-ng, with phone alignments.

Build (the lead's workflow wires params.yaml to :class:`EmbeddedCorpusConfig`)::

    python -c "from pathlib import Path; from echo.corpus.embedded import *; \\
               build_embedded_corpus(EmbeddedCorpusConfig(), Path('data/embedded'))"

Output directory (built in a temporary sibling and renamed into place whole)::

    manifest.parquet       one row per utterance (echo/corpus/manifest.py)
    audio/<speaker>.flac   16 kHz mono, the speaker's utterances back to back
    speakers.json          every identity's synthesis settings, split and session colours
    config.json            the resolved EmbeddedCorpusConfig

Per utterance: espeak-ng speaks the sentence (22.05 kHz) and reports the start sample of every
phone; the audio is resampled to 16 kHz as if it had been recorded at the speaker's
``warp_rate`` (vocal-tract warp), padded with a random stretch of silence at both ends, coloured
by the session's channel and given a noise floor (a train speaker's utterances fall into
``train_sessions`` sessions of consecutive utterances, each with its own colour; dev and test
speakers have one). Phone starts are carried through the same
resampling and padding, so the alignment is exact at 16 kHz up to one-sample rounding; it is
checked to tile the audio before anything is written.

Everything random is seeded per speaker and per utterance from ``cfg.seed``: the same config
gives byte-identical manifest and FLAC files whatever ``processes`` is.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from echo.config import check_fields, need, rule
from echo.audio import SAMPLE_RATE, resample, write_flac
from echo.corpus import manifest
from echo.corpus.espeak import phone_segments, synthesize
from echo.corpus.manifest import SILENCE
from echo.corpus.speakers import EQ_BANDS_HZ, ChannelColour, SpeakerIdentity, sample_identities, session_colours
from echo.corpus.texts import generate_sentences
from echo.errors import EchoError
from echo.io import atomic_dir, write_json, write_parquet
from echo.progress import Hook, track

__all__ = ["EmbeddedCorpusConfig", "build_embedded_corpus", "render_utterance", "check_alignment",
           "channel_filter"]

log = logging.getLogger(__name__)

_FIR_TAPS = 257  # odd: a linear-phase FIR applied centred ("same") shifts nothing in time


@dataclass(frozen=True)
class EmbeddedCorpusConfig:
    """Size and randomness of the embedded corpus.

    The defaults give 240 speakers x 8 utterances: 1.71 h of audio (mean utterance 3.2 s), 113 MB
    of FLAC, built in ~2 min with 2 processes on a shared 2-core machine.

    Attributes:
        seed: master seed (identities, texts, per-utterance synthesis).
        n_train_speakers: speakers in ``train``.
        n_dev_speakers: speakers in ``dev``.
        n_test_speakers: speakers in ``test``.
        utts_per_speaker: utterances per speaker (each a different sentence).
        min_words: fewest words per sentence.
        max_words: most words per sentence.
        min_pad_s: shortest silence added before and after each utterance, seconds.
        max_pad_s: longest such silence, seconds.
        processes: worker processes synthesising speakers in parallel (results do not depend on it).
        train_sessions: recording sessions per TRAIN speaker, each with its own channel colour
            (:func:`~echo.corpus.speakers.session_colours`; consecutive utterances share a session,
            at most one session per utterance). Dev and test speakers have one session, so those
            sets do not change with this key. 1 = one colour per speaker, which lets the speaker
            head learn the colour as identity.
    """

    seed: int = field(default=0, metadata=rule(ge=0))
    n_train_speakers: int = field(default=200, metadata=rule(ge=1, le=5000))
    n_dev_speakers: int = field(default=20, metadata=rule(ge=0, le=5000))
    n_test_speakers: int = field(default=20, metadata=rule(ge=0, le=5000))
    utts_per_speaker: int = field(default=8, metadata=rule(ge=1, le=1000))
    min_words: int = field(default=5, metadata=rule(ge=3, le=40))
    max_words: int = field(default=14, metadata=rule(ge=3, le=40))
    min_pad_s: float = field(default=0.05, metadata=rule(ge=0.0, le=2.0))
    max_pad_s: float = field(default=0.30, metadata=rule(ge=0.0, le=2.0))
    processes: int = field(default=2, metadata=rule(ge=1, le=64))
    train_sessions: int = field(default=4, metadata=rule(ge=1, le=1000))

    def __post_init__(self):
        check_fields(self)
        need(self, self.min_words <= self.max_words, "max_words", f">= min_words ({self.min_words})", self.max_words)
        need(self, self.min_pad_s <= self.max_pad_s, "max_pad_s", f">= min_pad_s ({self.min_pad_s})", self.max_pad_s)

    @property
    def n_speakers(self) -> int:
        return self.n_train_speakers + self.n_dev_speakers + self.n_test_speakers


def channel_filter(channel: ChannelColour, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Linear-phase FIR taps of a channel's magnitude response (scipy.signal.firwin2).

    Response: the EQ gains interpolated over log-frequency, times a 2nd-order Butterworth-shaped
    high-pass and a 4th-order Butterworth-shaped low-pass magnitude at the channel's edges.
    """
    from scipy.signal import firwin2

    nyq = sample_rate / 2
    f = np.linspace(0.0, nyq, 257)
    logf = np.log(np.maximum(f, 1.0))
    eq_db = np.interp(logf, np.log(EQ_BANDS_HZ), channel.eq_db)
    hp = 1.0 / np.sqrt(1.0 + (channel.highpass_hz / np.maximum(f, 1e-3)) ** 4)
    lp = 1.0 / np.sqrt(1.0 + (f / channel.lowpass_hz) ** 8)
    gain = 10.0 ** (eq_db / 20.0) * hp * lp
    gain[0] = 0.0
    gain[-1] = 0.0
    return firwin2(_FIR_TAPS, f, gain, fs=sample_rate)


def _rms_db(x: np.ndarray) -> float:
    return 10.0 * np.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-20)


def check_alignment(segments: list[tuple[str, int, int]], num_samples: int, where: str) -> None:
    """Raise :class:`EchoError` unless ``segments`` tile ``[0, num_samples)`` in order without gaps."""
    if not segments:
        raise EchoError(f"{where}: empty alignment")
    if segments[0][1] != 0:
        raise EchoError(f"{where}: alignment starts at sample {segments[0][1]}, expected 0")
    for (p0, s0, e0), (p1, s1, e1) in zip(segments, segments[1:]):
        if e0 != s1:
            raise EchoError(f"{where}: alignment gap or overlap between {p0!r} ending {e0} and {p1!r} starting {s1}")
    for p, s, e in segments:
        if e <= s:
            raise EchoError(f"{where}: empty or reversed segment {p!r} [{s}, {e})")
        if not p or any(c.isspace() for c in p):
            raise EchoError(f"{where}: bad phone symbol {p!r}")
    if segments[-1][2] != num_samples:
        raise EchoError(f"{where}: alignment ends at {segments[-1][2]}, audio has {num_samples} samples")
    if all(p == SILENCE for p, _, _ in segments):
        raise EchoError(f"{where}: alignment holds no speech phone")


def render_utterance(ident: SpeakerIdentity, text: str, seed: int, min_pad_s: float = 0.05,
                     max_pad_s: float = 0.30, fir: np.ndarray | None = None, channel: ChannelColour | None = None
                     ) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """Synthesise one utterance of ``ident`` at 16 kHz with its phone alignment.

    Args:
        ident: the speaker.
        text: the sentence.
        seed: utterance seed (espeak's noise, padding lengths, noise floor).
        min_pad_s: shortest silence padding at each end, seconds.
        max_pad_s: longest silence padding at each end, seconds.
        fir: the taps of ``channel``'s :func:`channel_filter` (computed when ``None``).
        channel: the session's colour (``ident.channel`` when ``None``).

    Returns:
        ``(audio, segments)``: float32 mono audio at 16 kHz and ``(phone, start, end)`` segments
        in samples tiling it.
    """
    from scipy.signal import oaconvolve

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA0D10]))
    syn = synthesize(text, ident.voice, rate=ident.rate, pitch=ident.pitch, pitch_range=ident.pitch_range,
                     seed=int(rng.integers(2**31)))
    if syn.audio.size == 0:
        raise EchoError(f"espeak produced no audio for {ident.speaker} text {text!r}")
    # The vocal-tract warp: reading 22.05 kHz samples as if taken at warp_rate scales all
    # frequencies by warp_rate / 22050; resampling from there to 16 kHz "restores" the rate.
    speech = resample(syn.audio.astype(np.float32) / 32768.0, ident.warp_rate, SAMPLE_RATE)
    expected = syn.audio.size * SAMPLE_RATE / ident.warp_rate
    if abs(speech.size - expected) > 2:
        raise EchoError(f"resampling {ident.speaker}: got {speech.size} samples, expected ~{expected:.0f}")
    lead, trail = (int(round(rng.uniform(min_pad_s, max_pad_s) * SAMPLE_RATE)) for _ in range(2))
    x = np.concatenate([np.zeros(lead, np.float64), speech.astype(np.float64), np.zeros(trail, np.float64)])
    segments = phone_segments(syn.events, syn.audio.size, scale=SAMPLE_RATE / ident.warp_rate, offset=lead,
                              total=x.size)
    where = f"{ident.speaker} {text[:40]!r}"
    check_alignment(segments, x.size, where)

    ch = ident.channel if channel is None else channel
    fir = channel_filter(ch) if fir is None else fir
    y = oaconvolve(x, fir, mode="same")
    s0, s1 = _speech_extent(segments)
    y *= 10.0 ** ((ch.level_db - _rms_db(y[s0:s1])) / 20.0)
    noise = oaconvolve(rng.standard_normal(x.size), fir, mode="same")
    y += noise * 10.0 ** ((ch.noise_db - _rms_db(noise)) / 20.0)
    peak = float(np.max(np.abs(y)))
    if peak > 0.97:  # keep 16-bit FLAC from clipping; loud speakers just get a little quieter
        y *= 0.97 / peak
    if not np.isfinite(y).all():
        raise EchoError(f"{where}: non-finite samples after the channel filter")
    return y.astype(np.float32), segments


def _speech_extent(segments: list[tuple[str, int, int]]) -> tuple[int, int]:
    speech = [(s, e) for p, s, e in segments if p != SILENCE]
    return speech[0][0], speech[-1][1]


def _utterance_seed(seed: int, speaker_index: int, utt_index: int) -> int:
    return int(np.random.SeedSequence([seed, speaker_index, utt_index]).generate_state(1)[0])


def _render_speaker(job: dict) -> list[dict]:
    """Worker: synthesise all utterances of one speaker, write its FLAC shard, return manifest rows."""
    ident: SpeakerIdentity = job["identity"]
    colours = job["colours"]
    firs = [channel_filter(c) for c in colours]
    n_utts = len(job["utterances"])
    rows, chunks, offset = [], [], 0
    for k, (utt_id, text, seed) in enumerate(job["utterances"]):
        session = k * len(colours) // n_utts  # consecutive utterances share a session
        audio, segs = render_utterance(ident, text, seed, job["min_pad_s"], job["max_pad_s"], firs[session],
                                       colours[session])
        s0, s1 = _speech_extent(segs)
        rows.append({
            "utt_id": utt_id, "speaker": ident.speaker, "split": job["split"], "source": "embedded",
            "path": job["rel_path"], "start": offset, "num_samples": audio.size, "sample_rate": SAMPLE_RATE,
            "duration": audio.size / SAMPLE_RATE, "text": text,
            "phonemes": " ".join(p for p, _, _ in segs if p != SILENCE),
            "align_phone": [p for p, _, _ in segs], "align_start": [int(s) for _, s, _ in segs],
            "align_end": [int(e) for _, _, e in segs], "speech_start": s0, "speech_end": s1,
        })
        chunks.append(audio)
        offset += audio.size
    write_flac(Path(job["out_dir"]) / job["rel_path"], np.concatenate(chunks), SAMPLE_RATE)
    return rows


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # the parallelism is across speakers


def build_embedded_corpus(cfg: EmbeddedCorpusConfig, out_dir: Path, hook: Hook | None = None) -> pd.DataFrame:
    """Build the embedded corpus into ``out_dir`` (replaced atomically) and return its manifest.

    Args:
        cfg: corpus size and seeds.
        out_dir: output directory; an existing one is replaced only once the new one is complete.
        hook: progress callback ``hook("embedded corpus", completed=speakers, total=speakers)``.

    Returns:
        The validated manifest (also written to ``out_dir/manifest.parquet``).
    """
    out_dir = Path(out_dir)
    idents = sample_identities(cfg.n_speakers, cfg.seed)
    splits = (["train"] * cfg.n_train_speakers + ["dev"] * cfg.n_dev_speakers + ["test"] * cfg.n_test_speakers)
    texts = generate_sentences(cfg.n_speakers * cfg.utts_per_speaker, cfg.seed, cfg.min_words, cfg.max_words)
    log.info("embedded corpus: %d speakers x %d utterances -> %s", cfg.n_speakers, cfg.utts_per_speaker, out_dir)
    with atomic_dir(out_dir) as tmp:
        jobs = []
        for i, (ident, split) in enumerate(zip(idents, splits)):
            utts = [(f"{ident.speaker}-{k:03d}", texts[i * cfg.utts_per_speaker + k], _utterance_seed(cfg.seed, i, k))
                    for k in range(cfg.utts_per_speaker)]
            n_sessions = min(cfg.train_sessions, cfg.utts_per_speaker) if split == "train" else 1
            jobs.append({"identity": ident, "split": split, "utterances": utts,
                         "colours": session_colours(ident, n_sessions, cfg.seed, i),
                         "rel_path": f"audio/{ident.speaker}.flac",
                         "out_dir": str(tmp), "min_pad_s": cfg.min_pad_s, "max_pad_s": cfg.max_pad_s})
        (tmp / "audio").mkdir()
        if cfg.processes == 1:
            results = list(track(map(_render_speaker, jobs), hook, "embedded corpus", len(jobs)))
        else:
            # spawn, not fork: the parent may hold torch's thread pools, which do not survive fork
            with mp.get_context("spawn").Pool(cfg.processes, initializer=_worker_init) as pool:
                results = list(track(pool.imap(_render_speaker, jobs), hook, "embedded corpus", len(jobs)))
        df = pd.DataFrame([row for rows in results for row in rows], columns=list(manifest.COLUMNS))
        for col, dtype in manifest.COLUMNS.items():
            if dtype != "object":
                df[col] = df[col].astype(dtype)
        df = manifest.validate(df, str(out_dir / "manifest.parquet"))
        write_parquet(df, tmp / "manifest.parquet")
        write_json(tmp / "speakers.json", [dict(job["identity"].to_dict(), split=job["split"],
                                                 sessions=[asdict(c) for c in job["colours"]]) for job in jobs])
        write_json(tmp / "config.json", asdict(cfg))
    log.info("embedded corpus: %d utterances, %.2f h", len(df), df["duration"].sum() / 3600)
    return df
