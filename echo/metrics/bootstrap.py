"""Error bars: percentile bootstrap confidence intervals over items, and mean +- std over seeds.

The bootstrap resamples *items* (recordings, mixtures, utterances) with replacement. For a rate
that is a ratio of sums, such as DER = sum(error seconds) / sum(reference seconds), pass
``(numerators, denominators)``: each replicate recomputes the ratio of the resampled sums, so
long recordings weigh as they do in the point estimate. Percentile intervals (Efron) are used:
simple, and adequate for the hundreds of items per condition we report.

Hand-written rather than ``scipy.stats.bootstrap(paired=True, method="percentile")``, which draws
the same resamples from the same generator and gives the same interval on ordinary inputs
(tests/metrics/test_bootstrap.py checks it), but differs where the tables need otherwise: it
refuses a condition of one item (a K group with one recording), and one replicate whose resampled
denominators sum to 0 (only recordings without reference speech drawn) makes its whole interval
NaN, where this one leaves such replicates out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from echo.config import check_fields, rule

__all__ = ["BootstrapConfig", "CI", "bootstrap_ci", "mean_std", "format_mean_std"]


@dataclass(frozen=True)
class BootstrapConfig:
    """Bootstrap settings.

    Attributes:
        n_boot: number of resamples (>= 100).
        confidence: two-sided coverage of the interval, in (0, 1).
        seed: seed of the resampling generator (the interval is a deterministic function of it).
    """

    n_boot: int = field(default=1000, metadata=rule(ge=100))
    confidence: float = field(default=0.95, metadata=rule(gt=0, lt=1))
    seed: int = 0

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class CI:
    """A point estimate with its bootstrap interval."""

    point: float
    low: float
    high: float
    n_items: int

    def as_dict(self) -> dict:
        return {"point": self.point, "low": self.low, "high": self.high, "n_items": self.n_items}


def bootstrap_ci(
    values: Sequence[float] | np.ndarray | tuple[Sequence[float], Sequence[float]],
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> CI:
    """Percentile bootstrap interval over items.

    Args:
        values: per-item values (the statistic is their mean), or a tuple
            ``(numerators, denominators)`` of equal length (the statistic is sum/sum, e.g. DER from
            per-recording error and total seconds).
        n_boot: number of resamples.
        seed: seed of ``numpy.random.default_rng``.
        confidence: interval coverage (0.95 -> 2.5th and 97.5th percentiles).

    Returns:
        :class:`CI` with the statistic on the full sample and the interval bounds.
    """
    BootstrapConfig(n_boot=n_boot, confidence=confidence, seed=seed)  # validate
    if isinstance(values, tuple) and len(values) == 2:
        num = np.asarray(values[0], dtype=np.float64)
        den = np.asarray(values[1], dtype=np.float64)
        if num.shape != den.shape or num.ndim != 1:
            raise ValueError(f"bootstrap_ci: numerators {num.shape} and denominators {den.shape} must be equal 1-D")
    else:
        num = np.asarray(values, dtype=np.float64).ravel()
        den = np.ones_like(num)
    n = num.size
    if n == 0:
        return CI(float("nan"), float("nan"), float("nan"), 0)
    point = float(num.sum() / den.sum())
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)  # bound the index matrix to ~16 MB
    for lo in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - lo), n))
        with np.errstate(invalid="ignore", divide="ignore"):
            stats[lo:lo + len(idx)] = num[idx].sum(1) / den[idx].sum(1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.nanpercentile(stats, [tail, 100.0 - tail])
    return CI(point, float(low), float(high), n)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) across runs, e.g. training seeds.

    A single run gives std ``nan`` rather than a misleading 0.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")


def format_mean_std(values: Sequence[float], digits: int = 2, scale: float = 1.0) -> str:
    """``"mean ± std (n=N)"`` for tables; ``scale=100`` turns rates into percentages."""
    m, s = mean_std(np.asarray(values, dtype=np.float64) * scale)
    n = len(values)
    return f"{m:.{digits}f} ± {s:.{digits}f} (n={n})" if n > 1 else f"{m:.{digits}f} (n=1)"
