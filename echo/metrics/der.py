"""Diarization error rate (DER) and Jaccard error rate (JER), scored with pyannote.metrics.

Definitions (docs/anchors.md):

- **Primary**: ``collar=0.0, skip_overlap=False``: overlapped speech is scored and nothing is
  forgiven around boundaries.
- **Secondary** (comparison with older papers): a 0.25 s forgiveness collar on each side of every
  reference boundary. pyannote's ``collar`` is the TOTAL width of the region removed around a
  boundary, so that is ``collar=0.5`` here (NIST md-eval / dscore would call it ``-c 0.25``).
- DER = (missed detection + false alarm + confusion) / total reference speech, summed over
  recordings before dividing (ratio of sums, pyannote's ``abs(metric)``), never a mean of rates.
- JER follows DIHARD II: per reference speaker, (FA + MISS) / union with its mapped system
  speaker (1 if unmapped); the overall value averages over all reference speakers of all
  recordings (pyannote's accumulation).

Also the project's RTTM / UEM reader (pyannote.database is not a dependency) and writers (RTTM
lines by pyannote.core); :mod:`echo.simulate.rttm` re-exports the readers for the simulated references.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Mapping

from pyannote.core import Annotation, Segment, Timeline
from pyannote.metrics.diarization import DiarizationErrorRate, JaccardErrorRate

from echo.config import check_fields, need, rule
from echo.errors import EchoError
from echo.io import write_text

__all__ = [
    "DERConfig", "score_diarization", "read_rttm", "write_rttm", "format_rttm", "read_uem",
    "write_uem", "format_uem", "PRIMARY", "SECONDARY",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DERConfig:
    """How DER/JER are scored.

    Attributes:
        collar: total width in seconds of the forgiveness region centred on each reference
            boundary (pyannote convention: 0.5 means 0.25 s on each side). >= 0.
        skip_overlap: if True, overlapped reference regions are not scored.
    """

    SECTION: ClassVar[str] = "der"

    collar: float = field(default=0.0, metadata=rule(ge=0, finite=True))
    skip_overlap: bool = False

    def __post_init__(self):
        check_fields(self)
        need(self, isinstance(self.skip_overlap, bool), "skip_overlap", "true or false", self.skip_overlap)


PRIMARY = DERConfig(collar=0.0, skip_overlap=False)
SECONDARY = DERConfig(collar=0.5, skip_overlap=False)  # 0.25 s each side


def _uem_for(ref: Annotation, hyp: Annotation, uem: Timeline | Segment | None) -> Timeline:
    if uem is None:
        # pyannote would guess the same extent but warn on every call; make the guess explicit
        support = ref.get_timeline().union(hyp.get_timeline())
        return Timeline([support.extent()]) if support else Timeline()
    if isinstance(uem, Segment):
        return Timeline([uem])
    return uem


def score_diarization(
    refs: Mapping[str, Annotation],
    hyps: Mapping[str, Annotation],
    uems: Mapping[str, Timeline | Segment] | None = None,
    k_of: Mapping[str, int] | None = None,
    config: DERConfig = PRIMARY,
) -> dict:
    """Score hypotheses against references: overall, by number of speakers K, and per recording.

    Args:
        refs: reference annotation per recording uri.
        hyps: hypothesis per uri; a uri missing here is scored as an empty hypothesis (all missed).
        uems: scored region per uri (a Timeline or a Segment); a missing uri uses the extent of
            reference and hypothesis together.
        k_of: number of reference speakers per uri, used to group results by K; defaults to the
            number of labels in each reference.
        config: collar / overlap handling (``PRIMARY`` or ``SECONDARY``).

    Returns:
        ``{"collar", "skip_overlap", "n_recordings", "der", "jer", "missed", "false_alarm",
        "confusion", "total", "by_k": {K: {same keys without by_k/per_recording}},
        "per_recording": [{"uri", "k", "der", "jer", "missed", "false_alarm", "confusion",
        "error", "total", "jer_speaker_count", "jer_speaker_error"}]}``. Durations in seconds.
        ``error`` / ``total`` per recording are the numerator / denominator for
        :func:`echo.metrics.bootstrap.bootstrap_ci`.

    Raises:
        EchoError: a hypothesis uri has no reference.
    """
    extra = sorted(set(hyps) - set(refs))
    if extra:
        raise EchoError(f"hypothesis uri {extra[0]!r} has no reference annotation")
    uems = uems or {}
    per_recording = []
    for uri in sorted(refs):
        ref = refs[uri]
        hyp = hyps.get(uri)
        if hyp is None:
            log.warning("no hypothesis for %s: scored as empty", uri)
            hyp = Annotation(uri=uri)
        uem = _uem_for(ref, hyp, uems.get(uri))
        der = DiarizationErrorRate(collar=config.collar, skip_overlap=config.skip_overlap)
        jer = JaccardErrorRate(collar=config.collar, skip_overlap=config.skip_overlap)
        d = der(ref, hyp, uem=uem, detailed=True)
        j = jer(ref, hyp, uem=uem, detailed=True)
        k = int(k_of[uri]) if k_of is not None else len(ref.labels())
        error = d["missed detection"] + d["false alarm"] + d["confusion"]
        per_recording.append({
            "uri": uri, "k": k,
            "der": error / d["total"] if d["total"] > 0 else (0.0 if error == 0 else float("inf")),
            "jer": j["jaccard error rate"] if j["speaker count"] > 0 else 0.0,
            "missed": d["missed detection"], "false_alarm": d["false alarm"],
            "confusion": d["confusion"], "error": error, "total": d["total"],
            "jer_speaker_count": j["speaker count"], "jer_speaker_error": j["speaker error"],
        })
    by_k_rows: dict[int, list[dict]] = defaultdict(list)
    for row in per_recording:
        by_k_rows[row["k"]].append(row)
    out = {"collar": config.collar, "skip_overlap": config.skip_overlap, **_aggregate(per_recording)}
    out["by_k"] = {k: _aggregate(rows) for k, rows in sorted(by_k_rows.items())}
    out["per_recording"] = per_recording
    return out


def _aggregate(rows: list[dict]) -> dict:
    keys = ("missed", "false_alarm", "confusion", "error", "total", "jer_speaker_count", "jer_speaker_error")
    s = {key: float(sum(r[key] for r in rows)) for key in keys}
    return {
        "n_recordings": len(rows),
        "der": s["error"] / s["total"] if s["total"] > 0 else float("nan"),
        "jer": s["jer_speaker_error"] / s["jer_speaker_count"] if s["jer_speaker_count"] > 0 else float("nan"),
        "missed": s["missed"], "false_alarm": s["false_alarm"], "confusion": s["confusion"],
        "total": s["total"],
    }


# --- RTTM / UEM -------------------------------------------------------------------------------
# RTTM: SPEAKER <uri> <channel> <onset> <duration> <NA> <NA> <speaker> <NA> <NA>


def read_rttm(path: str | os.PathLike) -> dict[str, Annotation]:
    """Read an RTTM file into one Annotation per uri (only ``SPEAKER`` lines; ``;``/``#`` comments).

    Raises:
        EchoError: a line is malformed (names file and line number).
    """
    path = Path(path)
    if not path.exists():
        raise EchoError(f"{path}: RTTM file not found")
    out: dict[str, Annotation] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        f = line.split()
        if not f or f[0].startswith((";", "#")) or f[0] != "SPEAKER":
            continue
        try:
            uri, onset, dur, spk = f[1], float(f[3]), float(f[4]), f[7]
        except (IndexError, ValueError):
            raise EchoError(f"{path}:{n}: expected 'SPEAKER uri chan onset duration <NA> <NA> speaker ...', got {line!r}") from None
        if dur < 0:
            raise EchoError(f"{path}:{n}: negative duration {dur}")
        ann = out.setdefault(uri, Annotation(uri=uri))
        if dur > 0:
            seg = Segment(onset, round(onset + dur, 6))  # drop float noise of the sum
            ann[seg, ann.new_track(seg)] = spk
    return out


def format_rttm(annotations: Mapping[str, Annotation] | Annotation) -> str:
    """RTTM text through ``pyannote.core.Annotation.to_rttm``, recordings sorted by uri (each one's
    lines in pyannote's track order: by time, then track), so the same input gives the same bytes.

    Raises:
        EchoError: a uri or label is empty or holds whitespace (the fields are whitespace-separated).
    """
    if isinstance(annotations, Annotation):
        annotations = {annotations.uri: annotations}
    for uri in sorted(annotations):
        names = [uri] + [str(label) for label in annotations[uri].labels()]
        bad = [x for x in names if not x or any(c.isspace() for c in x)]
        if bad:
            raise EchoError(f"RTTM: uri/speaker label {bad[0]!r} is empty or contains whitespace")
    return "".join(annotations[uri].to_rttm() for uri in sorted(annotations))


def write_rttm(path: str | os.PathLike, annotations: Mapping[str, Annotation] | Annotation) -> None:
    """Write annotations as RTTM, atomically (times rounded to milliseconds)."""
    write_text(path, format_rttm(annotations))


def read_uem(path: str | os.PathLike) -> dict[str, Timeline]:
    """Read a UEM file (``uri channel start end`` per line) into one Timeline per uri."""
    path = Path(path)
    if not path.exists():
        raise EchoError(f"{path}: UEM file not found")
    out: dict[str, list[Segment]] = defaultdict(list)
    for n, line in enumerate(path.read_text().splitlines(), 1):
        f = line.split()
        if not f or f[0].startswith((";", "#")):
            continue
        try:
            out[f[0]].append(Segment(float(f[2]), float(f[3])))
        except (IndexError, ValueError):
            raise EchoError(f"{path}:{n}: expected 'uri channel start end', got {line!r}") from None
    return {uri: Timeline(segs, uri=uri) for uri, segs in out.items()}


def format_uem(uems: Mapping[str, Timeline | Segment]) -> str:
    """UEM text (``uri 1 start end`` per scored region), sorted by uri (times rounded to milliseconds)."""
    lines = []
    for uri in sorted(uems):
        t = uems[uri]
        for s in ([t] if isinstance(t, Segment) else t):
            lines.append(f"{uri} 1 {s.start:.3f} {s.end:.3f}\n")
    return "".join(lines)


def write_uem(path: str | os.PathLike, uems: Mapping[str, Timeline | Segment]) -> None:
    """Write scored regions as a UEM file, atomically."""
    write_text(path, format_uem(uems))
