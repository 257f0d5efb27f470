"""Speaker verification: a deterministic trial list over test speakers, cosine scoring, and EER.

EER is the operating point where the false-rejection rate (FNR = 1 - TPR) equals the
false-acceptance rate (FPR). ``sklearn.metrics.roc_curve`` gives the step points; the crossing is
linearly interpolated between the last point with FNR > FPR and the first with FNR <= FPR.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from echo.config import check_fields, rule
from echo.errors import EchoError

__all__ = ["TrialsConfig", "build_trials", "cosine_scores", "equal_error_rate"]


@dataclass(frozen=True)
class TrialsConfig:
    """Trial-list size.

    Attributes:
        n_target: at most this many same-speaker pairs (all pairs if fewer exist); >= 1.
        n_nontarget: at most this many different-speaker pairs; >= 1.
        seed: seed of the pair sampler (same inputs + seed -> identical list).
    """

    n_target: int = field(default=10000, metadata=rule(ge=1))
    n_nontarget: int = field(default=10000, metadata=rule(ge=1))
    seed: int = 0

    def __post_init__(self):
        check_fields(self)


def build_trials(utt_ids: Sequence[str], speakers: Sequence[str], config: TrialsConfig = TrialsConfig()) -> pd.DataFrame:
    """Sample target and non-target utterance pairs (pass test-split utterances only).

    Utterances are sorted by id first, so the list does not depend on input order. Target pairs
    are drawn without replacement from all unordered same-speaker pairs; non-target pairs are
    drawn uniformly from different-speaker pairs, without duplicates.

    Args:
        utt_ids: utterance ids (unique).
        speakers: speaker of each utterance.
        config: sizes and seed.

    Returns:
        DataFrame with columns ``enrol``, ``test`` (utterance ids, enrol < test) and ``target``
        (bool), targets first, each block sorted.
    """
    ids = np.asarray(utt_ids, dtype=object)
    spk = np.asarray(speakers, dtype=object)
    if ids.shape != spk.shape:
        raise EchoError(f"build_trials: {ids.size} utterance ids vs {spk.size} speakers")
    if len(set(ids.tolist())) != ids.size:
        raise EchoError("build_trials: utterance ids are not unique")
    order = np.argsort(ids.astype(str), kind="stable")
    ids, spk = ids[order], spk[order]
    rng = np.random.default_rng(config.seed)

    same = []
    for s in sorted(set(spk.tolist())):
        idx = np.flatnonzero(spk == s)
        a, b = np.triu_indices(len(idx), k=1)
        same.append(np.stack([idx[a], idx[b]], 1))
    same = np.concatenate(same) if same else np.zeros((0, 2), dtype=np.int64)
    if len(same) > config.n_target:
        same = same[np.sort(rng.choice(len(same), config.n_target, replace=False))]

    n = ids.size
    counts = pd.Series(spk).value_counts().to_numpy()
    possible = (n * n - int((counts**2).sum())) // 2
    want = min(config.n_nontarget, possible)
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < want:
        m = 2 * (want - len(chosen)) + 16
        i, j = rng.integers(0, n, m), rng.integers(0, n, m)
        for a, b in zip(np.minimum(i, j), np.maximum(i, j)):
            if spk[a] != spk[b] and len(chosen) < want:
                chosen.add((int(a), int(b)))
    diff = np.array(sorted(chosen), dtype=np.int64).reshape(-1, 2)

    pairs = np.concatenate([same, diff]).astype(np.int64)
    return pd.DataFrame({
        "enrol": ids[pairs[:, 0]].astype(str), "test": ids[pairs[:, 1]].astype(str),
        "target": np.r_[np.ones(len(same), bool), np.zeros(len(diff), bool)],
    })


def cosine_scores(embeddings: np.ndarray, utt_ids: Sequence[str], trials: pd.DataFrame) -> np.ndarray:
    """Cosine similarity of each trial's two utterance embeddings.

    Args:
        embeddings: (N, D) one embedding per utterance, rows aligned with ``utt_ids``.
        utt_ids: ids of the rows.
        trials: output of :func:`build_trials`.
    """
    pos = {u: i for i, u in enumerate(utt_ids)}
    missing = [u for u in pd.unique(trials[["enrol", "test"]].to_numpy().ravel()) if u not in pos]
    if missing:
        raise EchoError(f"cosine_scores: no embedding for utterance {missing[0]!r}")
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    a = x[[pos[u] for u in trials["enrol"]]]
    b = x[[pos[u] for u in trials["test"]]]
    return (a * b).sum(1)


def equal_error_rate(scores: Sequence[float], targets: Sequence[bool]) -> tuple[float, float]:
    """Equal error rate of verification scores (higher score = more likely the same speaker).

    Args:
        scores: one score per trial.
        targets: True for same-speaker trials.

    Returns:
        ``(eer, threshold)``: EER as a fraction in [0, 1] and the (interpolated) score threshold
        where it is reached.
    """
    y = np.asarray(targets, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.all() or not y.any():
        raise EchoError("equal_error_rate: needs both target and non-target trials")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    fnr = 1.0 - tpr
    d = fnr - fpr  # decreasing from 1 at the strictest threshold to -1 at the most lenient
    i = int(np.argmax(d <= 0))
    if i == 0:
        return float(fpr[0]), float(thr[0])
    w = d[i - 1] / (d[i - 1] - d[i])  # fraction of the way from point i-1 to point i
    eer = fpr[i - 1] + w * (fpr[i] - fpr[i - 1])
    t_prev = thr[i - 1] if np.isfinite(thr[i - 1]) else thr[i]
    return float(eer), float(t_prev + w * (thr[i] - t_prev))
