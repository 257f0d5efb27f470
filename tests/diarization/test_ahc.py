"""AHC: threshold and forced-K cuts on clusters whose answer is known."""
import numpy as np
import pytest

from echo.diarization.ahc import AHCConfig, ahc_cluster, relabel_by_appearance
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
    with pytest.raises(ConfigError, match="ahc.metric"):
        AHCConfig(metric="euclid")
    with pytest.raises(ConfigError, match="needs a fitted PLDA"):
        ahc_cluster(X, AHCConfig(metric="plda", threshold=0.0))
