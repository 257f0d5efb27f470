"""RTTM and UEM files for many recordings, built on pyannote.core.

Writing goes through ``pyannote.core.Annotation.to_rttm``. Reading is a small parser written here
because the maintained loaders (``pyannote.database.util.load_rttm``/``load_uem``) live in
pyannote.database, which is not a dependency of the project.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pyannote.core import Annotation, Segment, Timeline

from echo.audio import SAMPLE_RATE
from echo.errors import EchoError

__all__ = ["annotation_from_intervals", "rttm_text", "uem_text", "read_rttm", "read_uem"]


def annotation_from_intervals(uri: str, intervals: dict[str, np.ndarray], sample_rate: int = SAMPLE_RATE) -> Annotation:
    """Annotation of one recording from per-speaker ``[n, 2]`` sample intervals (merged per speaker).

    Times are rounded to the millisecond, the precision RTTM files are written with, so that the
    annotation equals the one read back from the file.
    """
    ann = Annotation(uri=uri)
    for speaker in sorted(intervals):
        iv = _merge(np.asarray(intervals[speaker], dtype=np.int64).reshape(-1, 2))
        for k, (a, b) in enumerate(iv):
            start, end = round(a / sample_rate, 3), round(b / sample_rate, 3)
            if end > start:
                ann[Segment(start, end), f"{speaker}_{k}"] = speaker
    return ann


def rttm_text(annotations: list[Annotation]) -> str:
    """RTTM lines of several recordings (one file may hold many file ids)."""
    return "".join(a.to_rttm() for a in annotations)


def uem_text(durations: dict[str, float]) -> str:
    """UEM lines ``<uri> 1 <start> <end>`` scoring each whole recording."""
    return "".join(f"{uri} 1 0.000 {dur:.3f}\n" for uri, dur in durations.items())


def read_rttm(path: str | Path) -> dict[str, Annotation]:
    """Parse an RTTM file into one Annotation per file id (``SPEAKER`` lines only).

    Raises:
        EchoError: a line that is not a 10-field RTTM record with numeric onset and duration.
    """
    out: dict[str, Annotation] = {}
    counts: dict[str, int] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        f = line.split()
        if not f or f[0] != "SPEAKER":
            continue
        try:
            if len(f) < 8:
                raise ValueError
            uri, onset, dur, label = f[1], float(f[3]), float(f[4]), f[7]
        except ValueError:
            raise EchoError(f"{path}:{n}: expected 'SPEAKER <uri> <chan> <onset> <dur> <NA> <NA> <speaker> <NA> <NA>', got {line!r}") from None
        ann = out.setdefault(uri, Annotation(uri=uri))
        counts[uri] = counts.get(uri, 0) + 1
        ann[Segment(onset, round(onset + dur, 3)), counts[uri]] = label
    return out


def read_uem(path: str | Path) -> dict[str, Timeline]:
    """Parse a UEM file (``<uri> <chan> <start> <end>``) into one Timeline per file id."""
    out: dict[str, Timeline] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        f = line.split()
        if not f:
            continue
        try:
            uri, start, end = f[0], float(f[2]), float(f[3])
        except (ValueError, IndexError):
            raise EchoError(f"{path}:{n}: expected '<uri> <channel> <start> <end>', got {line!r}") from None
        out.setdefault(uri, Timeline(uri=uri)).add(Segment(start, end))
    return out


def _merge(iv: np.ndarray) -> np.ndarray:
    if iv.shape[0] == 0:
        return iv
    iv = iv[np.argsort(iv[:, 0], kind="stable")]
    merged = [list(iv[0])]
    for a, b in iv[1:]:
        if a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return np.asarray(merged, dtype=np.int64)
