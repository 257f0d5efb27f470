"""Bootstrap intervals: contain the estimate, shrink with more items, ratio of sums, deterministic."""
import numpy as np
import pytest

from echo.errors import ConfigError
from echo.metrics.bootstrap import bootstrap_ci, format_mean_std, mean_std


def test_ci_contains_point_and_shrinks_with_more_items():
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.normal(0.2, 0.1, 20), n_boot=1000, seed=1)
    large = bootstrap_ci(rng.normal(0.2, 0.1, 2000), n_boot=1000, seed=1)
    for ci in (small, large):
        assert ci.low <= ci.point <= ci.high
    assert (large.high - large.low) < 0.25 * (small.high - small.low)  # ~ 1/sqrt(100) = 0.1
    # the 95% interval of a mean of 2000 N(0.2, 0.1) draws is about +-1.96 * 0.1/sqrt(2000)
    assert (large.high - large.low) == pytest.approx(2 * 1.96 * 0.1 / np.sqrt(2000), rel=0.15)


def test_ratio_of_sums_for_der():
    errors = np.array([1.0, 2.0, 30.0])
    totals = np.array([10.0, 10.0, 100.0])
    ci = bootstrap_ci((errors, totals), n_boot=500, seed=0)
    assert ci.point == pytest.approx(33.0 / 120.0)  # not the mean of rates (0.2)
    assert ci.low <= ci.point <= ci.high and ci.n_items == 3


def test_deterministic_and_degenerate():
    v = np.arange(50.0)
    assert bootstrap_ci(v, seed=3) == bootstrap_ci(v, seed=3)
    const = bootstrap_ci(np.full(30, 0.5), n_boot=200)
    assert const.low == const.high == const.point == 0.5
    with pytest.raises(ConfigError, match="n_boot"):
        bootstrap_ci(v, n_boot=10)


def test_mean_std_across_seeds():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    m, s = mean_std([4.0])
    assert m == 4.0 and np.isnan(s)
    assert format_mean_std([0.1, 0.2, 0.3], scale=100) == "20.00 ± 10.00 (n=3)"


@pytest.mark.parametrize("n", [7, 300, 2501])  # 2501: the resamples are drawn in several blocks
def test_ratio_of_sums_interval_equals_scipys_percentile_bootstrap(n):
    from scipy import stats

    rng = np.random.default_rng(n)
    num, den = rng.uniform(0, 5, n), rng.uniform(5, 50, n)
    ours = bootstrap_ci((num, den), n_boot=1000, seed=3)
    theirs = stats.bootstrap((num, den), lambda a, b, axis=-1: a.sum(axis) / b.sum(axis), paired=True,
                             vectorized=True, n_resamples=1000, batch=max(1, 2_000_000 // n), method="percentile",
                             confidence_level=0.95, rng=np.random.default_rng(3)).confidence_interval
    assert (ours.low, ours.high) == (theirs.low, theirs.high)
