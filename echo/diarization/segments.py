"""Sliding embedding windows over a recording (``echo embed --per-window``).

The diarizer's own chunks and its activity -> Annotation step live in
:mod:`echo.diarization.diarizer`; RTTM reading and writing in :mod:`echo.metrics.der`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from echo.config import check_fields, need, rule

__all__ = ["WindowConfig", "sliding_windows"]


@dataclass(frozen=True)
class WindowConfig:
    """Embedding windows.

    Attributes:
        window: window length in seconds (> 0).
        step: hop between window starts in seconds, in (0, window].
    """

    SECTION: ClassVar[str] = "windows"

    window: float = field(default=1.5, metadata=rule(gt=0, finite=True))
    step: float = field(default=0.25, metadata=rule(gt=0, finite=True))

    def __post_init__(self):
        check_fields(self)
        need(self, self.step <= self.window, "step", f"seconds in (0, window={self.window}]", self.step)


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
