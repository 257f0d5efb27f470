"""Progress reporting: the library calls a hook the caller passes; drawing bars is the caller's job.

A hook is any callable ``hook(step, completed=..., total=...)``: ``step`` names the work (``"decode"``,
``"features train"``), ``completed`` counts units done, ``total`` is the count expected (``None`` when
unknown). The CLI draws tqdm bars from it (``echo.cli``), the workflow's node runner writes log lines
(:class:`echo.pipeline.progress.NodeProgress`); library code never imports tqdm or rich.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, TypeVar

__all__ = ["Hook", "track"]

Hook = Callable[..., Any]
T = TypeVar("T")


def track(items: Iterable[T], hook: Hook | None, step: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items``, calling ``hook(step, completed=i, total=total)`` after each one (and once with 0
    before the first, so a caller can show the work has started)."""
    if hook is None:
        yield from items
        return
    hook(step, completed=0, total=total)
    for i, item in enumerate(items, 1):
        yield item
        hook(step, completed=i, total=total)
