"""Summary numbers of a corpus manifest: size per split, phone inventory, alignment coverage."""
from __future__ import annotations

import numpy as np
import pandas as pd

from echo.corpus.manifest import SILENCE, SPLITS

__all__ = ["corpus_stats"]


def _lengths(values) -> np.ndarray:
    return np.array([0 if v is None else len(v) for v in values], dtype=np.int64)


def corpus_stats(df: pd.DataFrame) -> dict:
    """Describe a manifest (any source; real corpora simply have empty alignments).

    Args:
        df: a manifest as read by :func:`echo.corpus.manifest.read`.

    Returns:
        A JSON-serialisable dict: ``utterances``, ``speakers``, ``hours``,
        ``mean_utterance_s``; ``splits`` (per split: ``speakers``, ``utterances``, ``hours``);
        ``phone_inventory`` (sorted non-silence phone symbols, from alignments or, where those are
        empty, from the ``phonemes`` strings) and ``phone_inventory_size``; ``aligned_share``
        (share of utterances with an alignment) and ``speech_phone_share`` (share of the aligned
        utterances' audio covered by non-silence phones; 0.0 without alignments).
    """
    n = len(df)
    seconds = df["duration"].astype(float)
    splits = {}
    for split in SPLITS:
        part = df[df["split"] == split]
        splits[split] = {"speakers": int(part["speaker"].nunique()), "utterances": int(len(part)),
                         "hours": float(part["duration"].sum() / 3600.0)}

    inventory: set[str] = set()
    aligned = _lengths(df["align_phone"]) > 0
    speech_samples = total_samples = 0
    for phones, starts, ends in zip(df["align_phone"][aligned], df["align_start"][aligned], df["align_end"][aligned]):
        phones, starts, ends = list(phones), np.asarray(starts, np.int64), np.asarray(ends, np.int64)
        is_speech = np.array([p != SILENCE for p in phones])
        inventory.update(p for p in phones if p != SILENCE)
        speech_samples += int((ends - starts)[is_speech].sum())
        total_samples += int(ends[-1] - starts[0])
    for text in df["phonemes"][~aligned]:
        inventory.update(p for p in str(text or "").split() if p != SILENCE)

    return {
        "utterances": int(n),
        "speakers": int(df["speaker"].nunique()),
        "hours": float(seconds.sum() / 3600.0),
        "mean_utterance_s": float(seconds.mean()) if n else 0.0,
        "splits": splits,
        "phone_inventory": sorted(inventory),
        "phone_inventory_size": len(inventory),
        "aligned_share": float(aligned.mean()) if n else 0.0,
        "speech_phone_share": float(speech_samples / total_samples) if total_samples else 0.0,
    }
