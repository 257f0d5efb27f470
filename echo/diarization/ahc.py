"""Agglomerative hierarchical clustering (AHC) of embedding sequences: the initialisation of VBx.

``scipy.cluster.hierarchy`` does the clustering; this module only turns similarities into
distances and a similarity threshold into a cut height. Two similarities:

- ``cosine`` between the given features (typically PLDA-space features from
  :meth:`echo.diarization.plda.PLDA.transform`, i.e. within-speaker-whitened);
- ``plda``: PLDA log-likelihood ratios (:meth:`PLDA.score_matrix`).

Clusters are merged while their linkage similarity is >= ``threshold``. For VBx the threshold is
usually set to over-cluster slightly: VBx merges redundant speakers but cannot split one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from echo.errors import ConfigError

__all__ = ["AHCConfig", "ahc_cluster", "relabel_by_appearance"]

_METRICS = ("cosine", "plda")
_LINKAGES = ("average", "complete", "single", "weighted")


@dataclass(frozen=True)
class AHCConfig:
    """AHC settings.

    Attributes:
        metric: ``cosine`` or ``plda`` (LLR; needs the PLDA model).
        linkage: ``average`` | ``complete`` | ``single`` | ``weighted`` (scipy linkage methods
            valid on arbitrary dissimilarities).
        threshold: merge while linkage similarity >= threshold: a cosine in [-1, 1], or a PLDA
            LLR (any real; 0 = equal odds).
    """

    metric: str = "cosine"
    linkage: str = "average"
    threshold: float = 0.3

    def __post_init__(self):
        if self.metric not in _METRICS:
            raise ConfigError(f"ahc.metric: expected one of {_METRICS}, got {self.metric!r}")
        if self.linkage not in _LINKAGES:
            raise ConfigError(f"ahc.linkage: expected one of {_LINKAGES}, got {self.linkage!r}")
        if not isinstance(self.threshold, (int, float)):
            raise ConfigError(f"ahc.threshold: expected a number, got {self.threshold!r}")
        if self.metric == "cosine" and not -1.0 <= self.threshold <= 1.0:
            raise ConfigError(f"ahc.threshold: expected a cosine in [-1, 1] for metric cosine, got {self.threshold!r}")


def relabel_by_appearance(labels: np.ndarray) -> np.ndarray:
    """Renumber cluster ids 0, 1, 2, ... in order of first appearance (stable output)."""
    labels = np.asarray(labels)
    _, first = np.unique(labels, return_index=True)
    order = labels[np.sort(first)]
    mapping = {old: new for new, old in enumerate(order)}
    return np.array([mapping[v] for v in labels], dtype=np.int64)


def ahc_cluster(features: np.ndarray, config: AHCConfig = AHCConfig(), plda=None, num_clusters: int | None = None) -> np.ndarray:
    """Cluster a sequence of embeddings.

    Args:
        features: (T, d) one feature vector per window.
        config: similarity, linkage and threshold.
        plda: :class:`echo.diarization.plda.PLDA`, required when ``config.metric == "plda"``
            (``features`` must then be its :meth:`transform` output).
        num_clusters: if given, cut the tree into exactly this many clusters (oracle K; fewer
            only if there are fewer windows) and ignore the threshold.

    Returns:
        (T,) int cluster ids, numbered by first appearance.
    """
    x = np.asarray(features, dtype=np.float64)
    t = len(x)
    if t == 0:
        return np.zeros(0, dtype=np.int64)
    if t == 1:
        return np.zeros(1, dtype=np.int64)
    if config.metric == "cosine":
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sim = np.clip(xn @ xn.T, -1.0, 1.0)
    else:
        if plda is None:
            raise ConfigError("ahc.metric: 'plda' needs a fitted PLDA model")
        sim = plda.score_matrix(x)
    top = float(sim.max())
    dist = top - (sim + sim.T) / 2.0  # >= 0; symmetrised against rounding
    np.fill_diagonal(dist, 0.0)
    tree = linkage(squareform(dist, checks=False), method=config.linkage)
    if num_clusters is not None:
        if num_clusters < 1:
            raise ConfigError(f"num_speakers: expected an integer >= 1, got {num_clusters!r}")
        labels = fcluster(tree, t=min(num_clusters, t), criterion="maxclust")
    else:
        labels = fcluster(tree, t=top - config.threshold, criterion="distance")
    return relabel_by_appearance(labels)
