"""The utterance manifest: the one table every corpus source produces and every later stage reads.

One row per utterance, stored as Parquet. Columns (dtype):

- ``utt_id`` (str, unique), ``speaker`` (str), ``split`` (``train`` | ``dev`` | ``test``),
  ``source`` (str: ``embedded``, ``voxceleb2``, ``voxceleb1``, ``librispeech``)
- ``path`` (str): audio file, relative to the manifest's directory or absolute
- ``start`` (int64), ``num_samples`` (int64): the utterance inside ``path``, in the file's own rate
- ``sample_rate`` (int64): the file's rate; ``duration`` (float64, seconds)
- ``text`` (str, ``""`` if unknown), ``phonemes`` (str, space-separated phone symbols, ``""`` if unknown)
- ``align_phone`` (list<str>), ``align_start`` / ``align_end`` (list<int64>): phone segments in
  samples at 16 kHz relative to the utterance start (empty lists when no alignment exists)
- ``speech_start`` / ``speech_end`` (int64): speech extent at 16 kHz (leading/trailing silence trimmed)
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from echo.errors import EchoError

__all__ = ["COLUMNS", "SPLITS", "SILENCE", "validate", "read", "resolve_path"]

SPLITS = ("train", "dev", "test")
SILENCE = "sil"  # phone label for silence / pauses in alignments
COLUMNS = {
    "utt_id": "object", "speaker": "object", "split": "object", "source": "object",
    "path": "object", "start": "int64", "num_samples": "int64", "sample_rate": "int64",
    "duration": "float64", "text": "object", "phonemes": "object",
    "align_phone": "object", "align_start": "object", "align_end": "object",
    "speech_start": "int64", "speech_end": "int64",
}


def validate(df: pd.DataFrame, where: str = "manifest") -> pd.DataFrame:
    """Check columns, splits, id uniqueness and speaker-disjoint splits; return ``df`` in column order.

    Raises:
        EchoError: naming the first violated rule.
    """
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise EchoError(f"{where}: missing columns {missing}")
    bad = set(df["split"].unique()) - set(SPLITS)
    if bad:
        raise EchoError(f"{where}: unknown split(s) {sorted(bad)}, expected one of {SPLITS}")
    if df["utt_id"].duplicated().any():
        raise EchoError(f"{where}: duplicate utt_id {df.loc[df['utt_id'].duplicated(), 'utt_id'].iloc[0]!r}")
    per_spk = df.groupby("speaker")["split"].nunique()
    if (per_spk > 1).any():
        raise EchoError(f"{where}: speaker {per_spk[per_spk > 1].index[0]!r} appears in more than one split")
    return df[list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]]


def read(path: str | Path, split: str | None = None) -> pd.DataFrame:
    """Read and validate a manifest, optionally keeping one split; adds ``abs_path``."""
    path = Path(path)
    if not path.exists():
        raise EchoError(f"{path}: manifest not found")
    df = validate(pd.read_parquet(path), str(path))
    if split is not None:
        df = df[df["split"] == split].reset_index(drop=True)
    df["abs_path"] = [str(resolve_path(path, p)) for p in df["path"]]
    return df


def resolve_path(manifest_path: str | Path, audio_path: str) -> Path:
    p = Path(audio_path)
    return p if p.is_absolute() else Path(manifest_path).parent / p
