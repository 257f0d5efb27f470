"""The workflow's progress hook: library progress (:mod:`echo.progress`) as lines in the node's log.

A node's stdout/stderr go to ``logs/<node>.log`` (no terminal), so a bar would be one long line of
carriage returns; a line every ``interval_s`` seconds (and one when a step completes) reads well in
a log file and in ``tail -f``.
"""
from __future__ import annotations

import logging
import time

__all__ = ["NodeProgress"]

log = logging.getLogger("echo.progress")


class NodeProgress:
    """``hook(step, completed=, total=)`` -> ``progress: <step> <completed>/<total> (<pct>%)`` log lines,
    at most one per ``interval_s`` per step, plus the step's first and last."""

    def __init__(self, interval_s: float = 30.0, clock=time.monotonic):
        self.interval_s, self.clock = interval_s, clock
        self._last: dict[str, float] = {}

    def __call__(self, step: str, completed: int | None = None, total: int | None = None, **_) -> None:
        if completed is None:
            return
        now = self.clock()
        first, done = step not in self._last, total is not None and completed >= total
        if not (first or done or now - self._last[step] >= self.interval_s):
            return
        self._last[step] = now
        if total:
            log.info("progress: %s %d/%d (%.0f%%)", step, completed, total, 100.0 * completed / total)
        else:
            log.info("progress: %s %d", step, completed)
