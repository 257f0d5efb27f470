"""Agglomerative hierarchical clustering (AHC) of embedding sequences: the initialisation of VBx.

``scipy.cluster.hierarchy`` does the clustering; this module only turns similarities into
distances and a similarity threshold into a cut height. Two similarities:

- ``cosine`` between the given features (typically PLDA-space features from
  :meth:`echo.diarization.plda.PLDA.transform`, i.e. within-speaker-whitened);
- ``plda``: PLDA log-likelihood ratios (:meth:`PLDA.score_matrix`).

Clusters are merged while their linkage similarity is >= ``threshold``. For VBx the threshold is
usually set to over-cluster slightly: VBx merges redundant speakers but cannot split one.

Long recordings: scipy's linkage needs the full condensed distance matrix (T^2/2 floats) and
O(T^2) time, i.e. ~5 GB and ~20 s for the 14,400 windows of an hour. Above ``max_windows``
windows, AHC runs on ``max_windows`` evenly spaced windows (at the default 1.5 s / 0.25 s windows
and the default cap, one window every ~1.75 s of an hour: still every turn longer than that), and
every other window joins the cluster whose centroid is most similar in the same metric (cosine
to the mean of the unit-normalised members; PLDA LLR against the members' mean). Memory is then
O(max_windows^2 + T * clusters). VBx afterwards refines every window's assignment.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from echo.config import check_fields, need, rule
from echo.errors import ConfigError

__all__ = ["AHCConfig", "ahc_cluster", "nearest_centroid", "relabel_by_appearance"]

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
        max_windows: cluster at most this many (evenly spaced) windows and assign the rest to the
            nearest cluster centroid (integer >= 2, or None = all windows: quadratic memory).
    """

    metric: Literal[_METRICS] = "cosine"
    linkage: Literal[_LINKAGES] = "average"
    threshold: float = field(default=0.3, metadata=rule(finite=True))
    max_windows: int | None = field(default=2000, metadata=rule(ge=2))

    def __post_init__(self):
        check_fields(self)
        need(self, self.metric != "cosine" or -1.0 <= self.threshold <= 1.0, "threshold",
             "a cosine in [-1, 1] for metric cosine", self.threshold)


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

    Above ``config.max_windows`` windows the tree is built on that many evenly spaced windows
    (which keep their tree labels) and every other window takes its nearest centroid's label,
    so the cluster count is that of the subsample's cut.

    Returns:
        (T,) int cluster ids, numbered by first appearance.
    """
    x = np.asarray(features, dtype=np.float64)
    t = len(x)
    if t == 0:
        return np.zeros(0, dtype=np.int64)
    if t == 1:
        return np.zeros(1, dtype=np.int64)
    if num_clusters is not None and num_clusters < 1:
        raise ConfigError(f"num_speakers: expected an integer >= 1, got {num_clusters!r}")
    if config.metric == "plda" and plda is None:
        raise ConfigError("ahc.metric: 'plda' needs a fitted PLDA model")
    cap = config.max_windows
    if cap is None or t <= cap:
        return relabel_by_appearance(_linkage_labels(x, config, plda, num_clusters))
    picked = np.unique(np.linspace(0, t - 1, cap).round().astype(np.int64))
    labels = np.empty(t, dtype=np.int64)
    labels[picked] = _linkage_labels(x[picked], config, plda, num_clusters)
    rest = np.setdiff1d(np.arange(t), picked)
    labels[rest] = nearest_centroid(x[rest], x[picked], labels[picked], config.metric, plda)
    return relabel_by_appearance(labels)


def nearest_centroid(features: np.ndarray, members: np.ndarray, member_labels: np.ndarray, metric: str = "cosine",
                     plda=None, batch: int = 4096) -> np.ndarray:
    """Assign each feature vector to the most similar cluster centroid.

    Args:
        features: (N, d) vectors to assign.
        members: (M, d) clustered vectors; member_labels: (M,) their cluster ids (any integers).
        metric: ``cosine`` (to the normalised mean of the unit-normalised members) or ``plda``
            (LLR against the members' mean; ``plda`` required).
        plda: :class:`echo.diarization.plda.PLDA` for ``metric="plda"``.
        batch: rows scored at once (bounds the (batch, clusters) score block).

    Returns:
        (N,) cluster ids taken from ``member_labels``.
    """
    ids, inv = np.unique(np.asarray(member_labels), return_inverse=True)
    m = np.asarray(members, dtype=np.float64)
    if metric == "cosine":
        m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    cent = np.zeros((len(ids), m.shape[1]))
    np.add.at(cent, inv, m)
    cent /= np.bincount(inv, minlength=len(ids))[:, None]
    if metric == "cosine":
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    x = np.asarray(features, dtype=np.float64)
    out = np.empty(len(x), dtype=ids.dtype)
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        score = xb @ cent.T if metric == "cosine" else plda.score_matrix(xb, cent)
        out[i:i + batch] = ids[score.argmax(1)]
    return out


def _linkage_labels(x: np.ndarray, config: AHCConfig, plda, num_clusters: int | None) -> np.ndarray:
    t = len(x)
    if config.metric == "cosine":
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sim = np.clip(xn @ xn.T, -1.0, 1.0)
    else:
        sim = plda.score_matrix(x)
    top = float(sim.max())
    dist = top - (sim + sim.T) / 2.0  # >= 0; symmetrised against rounding
    np.fill_diagonal(dist, 0.0)
    del sim
    tree = linkage(squareform(dist, checks=False), method=config.linkage)
    if num_clusters is not None:
        return fcluster(tree, t=min(num_clusters, t), criterion="maxclust")
    return fcluster(tree, t=top - config.threshold, criterion="distance")
