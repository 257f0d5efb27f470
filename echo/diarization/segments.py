"""Sliding windows over a recording, and window-level speaker decisions -> pyannote Annotations.

Overlapping windows share time; each window *owns* the span from the midpoint of its overlap
with the previous window to the midpoint of its overlap with the next one (for equal windows:
centre +- step/2; the first window starts at its start, the last ends at its end), as in BUT's
VBx recipe. Consecutive owned spans of the same speaker merge into one segment. RTTM reading and
writing live in :mod:`echo.metrics.der` (``read_rttm``, ``write_rttm``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from pyannote.core import Annotation, Segment, Timeline

from echo.diarization.vbx import assign_overlap
from echo.errors import ConfigError, EchoError

__all__ = [
    "WindowConfig", "sliding_windows", "window_regions", "activity_to_annotation",
    "labels_to_annotation", "posteriors_to_annotation", "annotation_to_frames",
]


@dataclass(frozen=True)
class WindowConfig:
    """Embedding windows.

    Attributes:
        window: window length in seconds (> 0).
        step: hop between window starts in seconds, in (0, window].
    """

    window: float = 1.5
    step: float = 0.25

    def __post_init__(self):
        if not (isinstance(self.window, (int, float)) and self.window > 0):
            raise ConfigError(f"windows.window: expected seconds > 0, got {self.window!r}")
        if not (isinstance(self.step, (int, float)) and 0 < self.step <= self.window):
            raise ConfigError(f"windows.step: expected seconds in (0, window={self.window}], got {self.step!r}")


def sliding_windows(duration: float, config: WindowConfig = WindowConfig()) -> np.ndarray:
    """Window (start, end) times covering ``[0, duration]``.

    Starts are multiples of ``step``; the last window is truncated at ``duration`` so the tail is
    covered; a recording shorter than one window gives the single window ``[0, duration]``.

    Returns:
        (N, 2) float array of start and end seconds.
    """
    if duration <= 0:
        return np.zeros((0, 2))
    n = 1 if duration <= config.window else math.ceil((duration - config.window) / config.step - 1e-9) + 1
    starts = config.step * np.arange(n)
    return np.stack([starts, np.minimum(starts + config.window, duration)], axis=1)


def window_regions(windows: np.ndarray) -> np.ndarray:
    """The span each window owns: overlaps with neighbours are split at their midpoint.

    Args:
        windows: (N, 2) start/end seconds, sorted by start.

    Returns:
        (N, 2) owned start/end seconds (contiguous where the windows overlap or touch).
    """
    w = np.asarray(windows, dtype=np.float64).reshape(-1, 2)
    r = w.copy()
    if len(w) > 1:
        overlap = w[:-1, 1] >= w[1:, 0]
        mid = (w[:-1, 1] + w[1:, 0]) / 2.0
        r[:-1, 1] = np.where(overlap, mid, w[:-1, 1])
        r[1:, 0] = np.where(overlap, mid, w[1:, 0])
    return r


def activity_to_annotation(activity: np.ndarray, windows: np.ndarray, uri: str, labels: Sequence[str] | None = None) -> Annotation:
    """Per-window speaker activity -> Annotation with contiguous spans merged.

    Args:
        activity: (N, K) bool, speaker k active in window n (several per window = overlap).
        windows: (N, 2) window start/end seconds.
        uri: recording id.
        labels: K speaker labels; default ``spk0``, ``spk1``, ...

    Returns:
        Annotation (one track per merged segment).
    """
    act = np.asarray(activity, dtype=bool)
    regions = window_regions(windows)
    if act.ndim != 2 or len(act) != len(regions):
        raise EchoError(f"activity_to_annotation: activity {act.shape} does not match {len(regions)} windows")
    labels = list(labels) if labels is not None else [f"spk{k}" for k in range(act.shape[1])]
    if len(labels) != act.shape[1]:
        raise EchoError(f"activity_to_annotation: {len(labels)} labels for {act.shape[1]} speakers")
    ann = Annotation(uri=uri)
    for k, label in enumerate(labels):
        spans = Timeline([Segment(s, e) for s, e in regions[act[:, k]] if e > s]).support()
        for seg in spans:
            ann[seg, ann.new_track(seg)] = label
    return ann


def labels_to_annotation(labels: np.ndarray, windows: np.ndarray, uri: str, speech: np.ndarray | None = None) -> Annotation:
    """Exclusive (one speaker per window) labels -> Annotation.

    Args:
        labels: (N,) int speaker id per window (negative = no speaker).
        windows: (N, 2) window start/end seconds.
        uri: recording id.
        speech: optional (N,) bool; windows without speech get no speaker.
    """
    lab = np.asarray(labels, dtype=np.int64)
    k = int(lab.max()) + 1 if lab.size and lab.max() >= 0 else 0
    act = np.zeros((len(lab), k), dtype=bool)
    ok = lab >= 0
    act[np.flatnonzero(ok), lab[ok]] = True
    if speech is not None:
        act &= np.asarray(speech, dtype=bool)[:, None]
    return activity_to_annotation(act, windows, uri)


def posteriors_to_annotation(
    posteriors: np.ndarray,
    windows: np.ndarray,
    uri: str,
    exclusive: bool = True,
    second: np.ndarray | None = None,
    speech: np.ndarray | None = None,
) -> Annotation:
    """Per-window speaker posteriors -> Annotation.

    Args:
        posteriors: (N, K) per-window speaker posteriors (e.g. :class:`Clustering.posteriors`).
        windows: (N, 2) window start/end seconds.
        uri: recording id.
        exclusive: True = only the most likely speaker per window (no overlap); False = also the
            second most likely speaker where ``second`` is True.
        second: (N,) bool overlap evidence, required when ``exclusive`` is False.
        speech: optional (N,) bool; windows without speech get no speaker.
    """
    p = np.asarray(posteriors, dtype=np.float64)
    if exclusive:
        mask = np.zeros(len(p), dtype=bool)
    elif second is None:
        raise EchoError("posteriors_to_annotation: exclusive=False needs the overlap mask 'second'")
    else:
        mask = np.asarray(second, dtype=bool)
    act = assign_overlap(p, mask)
    if speech is not None:
        act &= np.asarray(speech, dtype=bool)[:, None]
    return activity_to_annotation(act, windows, uri)


def annotation_to_frames(annotation: Annotation, times: np.ndarray, labels: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Reference activity sampled at given times (e.g. window centres), for training/diagnostics.

    Returns:
        ``((len(times), K) bool activity, labels)``; labels default to the annotation's, sorted.
    """
    labels = list(labels) if labels is not None else sorted(annotation.labels())
    t = np.asarray(times, dtype=np.float64)
    act = np.zeros((len(t), len(labels)), dtype=bool)
    for k, label in enumerate(labels):
        for seg in annotation.label_timeline(label, copy=False):
            act[:, k] |= (t >= seg.start) & (t < seg.end)
    return act, labels
