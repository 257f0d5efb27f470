"""Per-iteration schedules (learning rate, weight decay, EMA momentum).

Each schedule is a small object stepped once per iteration; ``value_at(i)`` is the pure function
behind it, so a resumed run fast-forwards to the step it stopped at and continues on exactly the
same values. Hand-written rather than ``torch.optim.lr_scheduler``: those schedule only the lr and
mutate the optimizer, while the EMA momentum and weight decay need the same treatment.
"""
from __future__ import annotations

import math

from echo.errors import ConfigError

__all__ = ["Schedule", "WarmupCosine", "Cosine", "Linear"]


class Schedule:
    """Base: ``step()`` returns the value for the current iteration and advances by one."""

    def __init__(self) -> None:
        self.iteration = 0

    def value_at(self, iteration: int) -> float:
        raise NotImplementedError

    def step(self) -> float:
        v = self.value_at(self.iteration)
        self.iteration += 1
        return v

    def fast_forward(self, iterations: int) -> "Schedule":
        """Skip ``iterations`` steps (on resume) without computing them."""
        if iterations < 0:
            raise ValueError("cannot fast-forward by a negative number of iterations")
        self.iteration += int(iterations)
        return self

    def state_dict(self) -> dict:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])


def _cosine(start: float, end: float, progress: float) -> float:
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine(Schedule):
    """Linear warmup ``start -> peak`` over ``warmup`` iterations, then cosine ``peak -> final``
    until ``total``; ``final`` afterwards."""

    def __init__(self, start: float, peak: float, final: float, warmup: int, total: int):
        super().__init__()
        if total < 1 or not 0 <= warmup <= total:
            raise ConfigError(f"schedule: expected 0 <= warmup <= total and total >= 1, got warmup={warmup}, total={total}")
        self.start, self.peak, self.final, self.warmup, self.total = start, peak, final, int(warmup), int(total)

    def value_at(self, iteration: int) -> float:
        if iteration < self.warmup:
            return self.start + (self.peak - self.start) * iteration / self.warmup
        span = max(1, self.total - self.warmup)
        return _cosine(self.peak, self.final, (iteration - self.warmup) / span)


class _Ramp(Schedule):
    """Base of the schedules that go from ``start`` to ``final`` over ``total`` iterations."""

    def __init__(self, start: float, final: float, total: int):
        super().__init__()
        if total < 1:
            raise ConfigError(f"schedule: expected total >= 1, got {total}")
        self.start, self.final, self.total = start, final, int(total)


class Cosine(_Ramp):
    """Half-cosine from ``start`` to ``final`` over ``total`` iterations (may increase, as the
    I-JEPA weight decay 0.04 -> 0.4 does)."""

    def value_at(self, iteration: int) -> float:
        return _cosine(self.start, self.final, iteration / self.total)


class Linear(_Ramp):
    """Linear from ``start`` to ``final`` over ``total`` iterations (EMA momentum 0.996 -> 1.0)."""

    def value_at(self, iteration: int) -> float:
        return self.start + (self.final - self.start) * min(max(iteration / self.total, 0.0), 1.0)
