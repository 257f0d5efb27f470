"""Source utterances for simulation: speech extents, speech intervals and level-normalised audio.

Every simulated recording is built from the utterances of ONE split's manifest; the pool refuses a
table that mixes splits, so a speaker can never cross from training into test material.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from echo.audio import read_segment
from echo.corpus.manifest import COLUMNS, SILENCE
from echo.errors import EchoError

__all__ = ["Utterance", "UtterancePool", "REFERENCE_DBFS"]

log = logging.getLogger(__name__)

REFERENCE_DBFS = -25.0  # every utterance is scaled to this RMS over its speech before its gain
_MIN_SPEECH_SAMPLES = 1600  # 0.1 s: shorter speech extents are too short to be a turn
_PAUSE_LABELS = {SILENCE, "sp", "spn", ""}


@dataclass(frozen=True)
class Utterance:
    """One source utterance, trimmed to its speech extent (all positions in 16 kHz samples).

    Attributes:
        index: row in the pool's table.
        utt_id: manifest id; speaker: manifest speaker.
        num_samples: length after trimming (``speech_end - speech_start``).
        intervals: ``[n, 2]`` int64 speech intervals relative to the trimmed start (pauses of at
            least ``min_pause`` samples inside the alignment removed; one interval without alignment).
        phones: phone labels; phone_start / phone_end: int64 arrays relative to the trimmed start
            (may reach outside ``[0, num_samples)``; users clip them to what they keep).
    """

    index: int
    utt_id: str
    speaker: str
    num_samples: int
    intervals: np.ndarray
    phones: tuple[str, ...]
    phone_start: np.ndarray
    phone_end: np.ndarray

    @property
    def speech_samples(self) -> int:
        return int((self.intervals[:, 1] - self.intervals[:, 0]).sum())


class UtterancePool:
    """The utterances of one split, grouped by speaker, with cached level-normalised audio.

    Args:
        manifest_df: rows of ONE split from ``echo.corpus.manifest.read(path, split)`` (needs
            ``abs_path``); utterances with less than 0.1 s of speech are skipped.
        min_pause: alignment pauses (``sil`` phones) at least this many samples long split an
            utterance's speech into several intervals; 0 keeps one interval per utterance.
        cache_size: number of decoded utterances kept in memory.

    Raises:
        EchoError: missing columns, several splits in the table, or no usable utterance.
    """

    def __init__(self, manifest_df: pd.DataFrame, min_pause: int, cache_size: int = 256):
        missing = [c for c in list(COLUMNS) + ["abs_path"] if c not in manifest_df.columns]
        if missing:
            raise EchoError(f"simulation manifest: missing columns {missing}; read it with echo.corpus.manifest.read")
        splits = sorted(manifest_df["split"].unique())
        if len(splits) != 1:
            raise EchoError(f"simulation manifest: expected the rows of exactly one split, got {splits}; "
                            "pass manifest.read(path, split)")
        self.split = str(splits[0])
        df = manifest_df.copy()
        df = df[(df["speech_end"] - df["speech_start"]) >= _MIN_SPEECH_SAMPLES]
        if df.empty:
            raise EchoError(f"simulation manifest ({self.split}): no utterance has at least 0.1 s of speech")
        # sorting makes every draw independent of the manifest's row order
        self.table = df.sort_values(["speaker", "utt_id"]).reset_index(drop=True)
        self.speakers: list[str] = sorted(self.table["speaker"].unique())
        self.by_speaker: dict[str, np.ndarray] = {
            s: np.asarray(g, dtype=np.int64) for s, g in self.table.groupby("speaker", sort=True).indices.items()}
        self.utterances = [self._describe(i, row, min_pause) for i, row in enumerate(self.table.itertuples(index=False))]
        self._audio = functools.lru_cache(maxsize=cache_size)(self._load)

    def __len__(self) -> int:
        return len(self.utterances)

    @staticmethod
    def _describe(i: int, row, min_pause: int) -> Utterance:
        s0, s1 = int(row.speech_start), int(row.speech_end)
        phones = tuple(str(p) for p in (row.align_phone if row.align_phone is not None else ()))
        ps = np.asarray(row.align_start if len(phones) else [], dtype=np.int64) - s0
        pe = np.asarray(row.align_end if len(phones) else [], dtype=np.int64) - s0
        n = s1 - s0
        intervals = _speech_intervals(phones, ps, pe, n, min_pause)
        return Utterance(i, str(row.utt_id), str(row.speaker), n, intervals, phones, ps, pe)

    def draw(self, speaker: str, rng: np.random.Generator) -> "SpeakerDraw":
        """Return a without-replacement sampler of one speaker's utterances (reshuffles when used up)."""
        return SpeakerDraw(self, speaker, rng)

    def audio(self, utt: Utterance) -> np.ndarray:
        """Trimmed audio of ``utt`` at 16 kHz scaled to ``REFERENCE_DBFS`` RMS over its speech (read-only)."""
        return self._audio(utt.index)

    def _load(self, index: int) -> np.ndarray:
        row = self.table.iloc[index]
        utt = self.utterances[index]
        x = read_segment(row["abs_path"], int(row["start"]), int(row["num_samples"]))
        s0 = int(row["speech_start"])
        x = x[s0:s0 + utt.num_samples]
        if x.shape[0] < utt.num_samples:
            raise EchoError(f"{row['abs_path']}: utterance {row['utt_id']!r} has {x.shape[0] + s0} samples at 16 kHz, "
                            f"speech_end says {int(row['speech_end'])}")
        mask = np.zeros(utt.num_samples, bool)
        for a, b in utt.intervals:
            mask[a:b] = True
        rms = float(np.sqrt(np.mean(np.square(x[mask], dtype=np.float64)))) if mask.any() else 0.0
        gain = 10 ** (REFERENCE_DBFS / 20) / rms if rms > 1e-8 else 0.0
        y = (x * gain).astype(np.float32)
        y.setflags(write=False)
        return y


class SpeakerDraw:
    """Utterances of one speaker in a random order, cycling through a fresh permutation when used up."""

    def __init__(self, pool: UtterancePool, speaker: str, rng: np.random.Generator):
        self._pool, self._idx, self._rng = pool, pool.by_speaker[speaker], rng
        self._order: list[int] = []

    def next(self) -> Utterance:
        if not self._order:
            self._order = list(self._rng.permutation(self._idx))
        return self._pool.utterances[int(self._order.pop())]


def _speech_intervals(phones, ps, pe, n: int, min_pause: int) -> np.ndarray:
    """Speech intervals of a trimmed utterance from its alignment's non-pause phones."""
    keep = [(max(0, int(a)), min(n, int(b))) for p, a, b in zip(phones, ps, pe) if p not in _PAUSE_LABELS]
    keep = sorted((a, b) for a, b in keep if b > a)
    if min_pause <= 0 or not keep:
        return np.array([[0, n]], dtype=np.int64)
    merged = [list(keep[0])]
    for a, b in keep[1:]:
        if a - merged[-1][1] < min_pause:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    # the speech extent is the authority on where speech starts and ends
    merged[0][0], merged[-1][1] = 0, n
    return np.asarray(merged, dtype=np.int64)
