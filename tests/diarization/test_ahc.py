"""AHC: threshold and forced-K cuts on clusters whose answer is known."""
import numpy as np
import pytest

from echo.diarization.ahc import AHCConfig, ahc_cluster, nearest_centroid, relabel_by_appearance
from echo.errors import ConfigError

RNG = np.random.default_rng(0)
CENTRES = RNG.normal(size=(3, 20))
TRUE = np.array([2, 2, 0, 0, 1, 1, 2, 0, 1, 1])
X = CENTRES[TRUE] + 0.05 * RNG.normal(size=(len(TRUE), 20))


def test_threshold_recovers_clusters_numbered_by_appearance():
    labels = ahc_cluster(X, AHCConfig(threshold=0.5))
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 0, 1, 2, 2]
    # a threshold above every within-cluster cosine splits everything
    assert ahc_cluster(X, AHCConfig(threshold=0.99999)).max() + 1 == len(X)
    # a threshold below every cosine merges everything
    assert ahc_cluster(X, AHCConfig(threshold=-1.0)).max() == 0


def test_forced_number_of_clusters():
    assert ahc_cluster(X, num_clusters=3).tolist() == [0, 0, 1, 1, 2, 2, 0, 1, 2, 2]
    two = ahc_cluster(X, num_clusters=2)
    assert two.max() + 1 == 2
    assert ahc_cluster(X[:1]).tolist() == [0]


def test_relabel_and_config():
    assert relabel_by_appearance(np.array([7, 7, 3, 9, 3])).tolist() == [0, 0, 1, 2, 1]
    with pytest.raises(ConfigError, match="AHCConfig.metric"):
        AHCConfig(metric="euclid")
    with pytest.raises(ConfigError, match="needs a fitted PLDA"):
        ahc_cluster(X, AHCConfig(metric="plda", threshold=0.0))


def _turns(n_windows, seed):
    """3 speakers taking turns of 20-60 windows, as in a long recording."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 20))
    truth = []
    while len(truth) < n_windows:
        truth += [int(rng.integers(3))] * int(rng.integers(20, 60))
    truth = np.array(truth[:n_windows])
    return centres[truth] + 0.3 * rng.normal(size=(n_windows, 20)), truth


def test_capped_ahc_assigns_every_window_as_the_full_tree_does():
    x, truth = _turns(600, seed=1)
    full = ahc_cluster(x, AHCConfig(threshold=0.5, max_windows=None))
    capped = ahc_cluster(x, AHCConfig(threshold=0.5, max_windows=50))
    assert capped.shape == (600,) and capped.max() + 1 == 3
    np.testing.assert_array_equal(capped, full)
    np.testing.assert_array_equal(capped, relabel_by_appearance(truth))
    # the evenly spaced windows keep the labels of the tree built on them alone
    picked = np.unique(np.linspace(0, 599, 50).round().astype(int))
    assert len(picked) == 50
    sub = ahc_cluster(x[picked], AHCConfig(threshold=0.5, max_windows=None))
    np.testing.assert_array_equal(relabel_by_appearance(capped[picked]), sub)
    # oracle K is cut on the subsample and every window still gets one of the K labels
    two = ahc_cluster(x, AHCConfig(max_windows=50), num_clusters=2)
    assert two.shape == (600,) and set(two.tolist()) == {0, 1}


def test_cap_leaves_recordings_below_it_unchanged():
    expected = [0, 0, 1, 1, 2, 2, 0, 1, 2, 2]
    for cap in (None, 10, 2000):
        assert ahc_cluster(X, AHCConfig(threshold=0.5, max_windows=cap)).tolist() == expected
        assert ahc_cluster(X, AHCConfig(max_windows=cap), num_clusters=3).tolist() == expected
    # one window over the cap takes the capped path and still gives the same answer here
    assert ahc_cluster(X, AHCConfig(threshold=0.5, max_windows=9)).tolist() == expected


def test_capped_ahc_memory_grows_linearly():
    import tracemalloc

    peaks = []
    for n in (6000, 12000):
        x, _ = _turns(n, seed=2)
        tracemalloc.start()
        labels = ahc_cluster(x, AHCConfig(threshold=0.5, max_windows=300))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert len(labels) == n and labels.max() + 1 == 3
    # the full tree on 12,000 windows would need > 500 MB (condensed distances alone)
    assert peaks[1] < 2.5 * peaks[0] and peaks[1] < 30e6


def test_nearest_centroid_by_cosine():
    members = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    got = nearest_centroid(np.array([[2.0, 0.3], [0.1, 3.0], [-1.0, 0.0]]), members, np.array([7, 7, 4]))
    assert got.tolist() == [7, 4, 4]  # (-1, 0) is orthogonal to 4's centre but opposite to 7's
    with pytest.raises(ConfigError, match="AHCConfig.max_windows"):
        AHCConfig(max_windows=1)
