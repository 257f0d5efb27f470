"""RTTM and UEM files for many recordings, built on pyannote.core.

RTTM text goes through ``pyannote.core.Annotation.to_rttm`` (the line format of
:func:`echo.metrics.der.format_rttm`, in the set's recording order). Reading, and the UEM line
format, are the project's one implementation in :mod:`echo.metrics.der` (re-exported here).
"""
from __future__ import annotations

import numpy as np
from pyannote.core import Annotation, Segment

from echo.audio import SAMPLE_RATE
from echo.metrics.der import format_uem, read_rttm, read_uem

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
    """UEM lines ``<uri> 1 <start> <end>`` scoring each whole recording, in the order given."""
    return "".join(format_uem({uri: Segment(0.0, dur)}) for uri, dur in durations.items())


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
