"""Separation metrics: speaker-count accuracy, PIT separation accuracy, SI-SDR (latent and waveform).

Definitions (docs/anchors.md; the paper gives none for PIT accuracy, so this is the project's):

- **Speaker-count accuracy**: fraction of mixtures whose number of active slots equals the true K,
  with the confusion matrix (rows = true K, columns = estimated K).
- **PIT separation accuracy**: the active output slots are matched one-to-one to the reference
  sources with the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``), maximising the
  summed cosine similarity between a slot's latent sequence and a reference's latent sequence,
  each flattened over time x dims. A reference source is *correct* when it received a matched
  active slot AND that slot's nearest reference by cosine is the same source. The corpus value is
  (correct sources) / (reference sources), summed over mixtures. An under-count leaves sources
  unmatched, which costs accuracy; an over-count leaves active slots unmatched: it does not lower
  this number by itself (it is reported as ``n_extra`` and in the speaker-count accuracy).
- **SI-SDR** (Le Roux et al. 2019): both signals zero-meaned, the reference scaled by the optimal
  alpha = <x, s> / ||s||^2; SI-SDR = 10 log10(||alpha s||^2 / ||x - alpha s||^2). Latent SI-SDR
  flattens a (time, dims) sequence into one vector. SI-SDRi = SI-SDR(estimate) - SI-SDR(mixture),
  the mixture's own latent (or waveform) standing in as the estimate. Averaged over matched
  sources only; unmatched ones are counted in ``n_unmatched``.
- **Waveform K-set matching** (:func:`evaluate_waveforms`): active separated waveforms are matched
  to the clean sources by the Hungarian algorithm on waveform SI-SDR (not on the latent cosine).

Hand-written because torchaudio has no SI-SDR for numpy arrays and torchmetrics is not a
dependency; the formula is a few lines.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import confusion_matrix

__all__ = [
    "si_sdr", "si_sdri", "cosine_matrix", "PITResult", "pit_match", "pit_accuracy",
    "evaluate_separation", "evaluate_waveforms", "speaker_count_accuracy", "MAX_SI_SDR_DB",
]

MAX_SI_SDR_DB = 100.0  # cap for a perfect estimate (zero residual) so means stay finite


def si_sdr(estimate: np.ndarray, reference: np.ndarray, zero_mean: bool = True, max_db: float = MAX_SI_SDR_DB) -> float:
    """Scale-invariant signal-to-distortion ratio in dB, over all elements of the arrays.

    Args:
        estimate: any shape (a waveform, or a (time, dims) latent sequence: flattened).
        reference: same shape as ``estimate``.
        zero_mean: subtract each array's mean first (the standard definition).
        max_db: bound on the magnitude: a perfect (or numerically perfect) estimate gives
            ``max_db`` instead of +inf, an estimate orthogonal to the reference ``-max_db``.

    Returns:
        SI-SDR in dB, clipped to [-max_db, max_db]; ``nan`` for a constant (all-zero) reference.
    """
    x = np.asarray(estimate, dtype=np.float64).ravel()
    s = np.asarray(reference, dtype=np.float64).ravel()
    if x.shape != s.shape:
        raise ValueError(f"si_sdr: estimate has {x.size} elements, reference {s.size}")
    if zero_mean:
        x = x - x.mean()
        s = s - s.mean()
    ss = s @ s
    if ss == 0:
        return float("nan")
    target = (x @ s) / ss * s
    noise = x - target
    t, n = target @ target, noise @ noise
    # relative floor: residuals at rounding level are a perfect estimate, not a 300 dB one
    if n <= 1e-20 * max(t, ss):
        return float(max_db)
    if t == 0:
        return float(-max_db)
    return float(np.clip(10.0 * np.log10(t / n), -max_db, max_db))


def si_sdri(estimate: np.ndarray, reference: np.ndarray, mixture: np.ndarray, **kw) -> float:
    """SI-SDR improvement: ``si_sdr(estimate, reference) - si_sdr(mixture, reference)`` in dB."""
    return si_sdr(estimate, reference, **kw) - si_sdr(mixture, reference, **kw)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity between every pair of flattened items: (S, ...) x (K, ...) -> (S, K)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"cosine_matrix: items have {a.shape[1]} vs {b.shape[1]} elements")
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    return (a / np.maximum(na, 1e-12)) @ (b / np.maximum(nb, 1e-12)).T


@dataclass
class PITResult:
    """PIT matching of one mixture.

    Attributes:
        slot_of: (K,) index of the active slot matched to each reference source, -1 if none.
        correct: (K,) whether each reference source counts as correctly separated.
        n_active: number of active slots (the estimated K).
        n_extra: active slots left unmatched (over-count).
        similarity: (S, K) cosine similarity of every slot (active or not) to every reference.
    """

    slot_of: np.ndarray
    correct: np.ndarray
    n_active: int
    n_extra: int
    similarity: np.ndarray = field(repr=False)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if self.correct.size else float("nan")


def pit_match(slots: np.ndarray, active: np.ndarray, references: np.ndarray) -> PITResult:
    """Hungarian-match active slots to reference sources by cosine similarity (anchors.md).

    Args:
        slots: (S, T, D) latent sequence of every output slot.
        active: (S,) bool, which slots the model declared active (not null).
        references: (K, T, D) latent sequence of each isolated reference source.

    Returns:
        :class:`PITResult`.
    """
    slots = np.asarray(slots)
    active = np.asarray(active, dtype=bool)
    references = np.asarray(references)
    if active.shape != (len(slots),):
        raise ValueError(f"pit_match: active has shape {active.shape}, expected ({len(slots)},)")
    k = len(references)
    sim = cosine_matrix(slots, references)
    act = np.flatnonzero(active)
    slot_of = np.full(k, -1, dtype=np.int64)
    correct = np.zeros(k, dtype=bool)
    if len(act) and k:
        rows, cols = linear_sum_assignment(sim[act], maximize=True)
        slot_of[cols] = act[rows]
        nearest = sim.argmax(axis=1)  # each slot's nearest reference
        for ref_idx, slot in zip(cols, act[rows]):
            correct[ref_idx] = nearest[slot] == ref_idx
    n_matched = int((slot_of >= 0).sum())
    return PITResult(slot_of, correct, int(len(act)), int(len(act) - n_matched), sim)


def pit_accuracy(results: Sequence[PITResult]) -> float:
    """Corpus PIT separation accuracy: correct reference sources / all reference sources."""
    n = sum(r.correct.size for r in results)
    return sum(int(r.correct.sum()) for r in results) / n if n else float("nan")


def evaluate_separation(slots: np.ndarray, active: np.ndarray, references: np.ndarray, mixture: np.ndarray) -> dict:
    """PIT matching plus latent SI-SDR / SI-SDRi of the matched sources for one mixture.

    Args:
        slots: (S, T, D) slot latents; active: (S,) bool; references: (K, T, D) isolated-source
            latents from the frozen target encoder; mixture: (T, D) the mixture's own latent.

    Returns:
        ``{"k", "n_active", "n_extra", "n_correct", "n_unmatched", "pit": PITResult,
        "si_sdr": [per matched source], "si_sdri": [per matched source]}`` (lists in reference
        order, skipping unmatched sources).
    """
    res = pit_match(slots, active, references)
    sdr, sdri = [], []
    for ref_idx, slot in enumerate(res.slot_of):
        if slot < 0:
            continue
        a = si_sdr(slots[slot], references[ref_idx])
        sdr.append(a)
        sdri.append(a - si_sdr(mixture, references[ref_idx]))
    return {
        "k": len(references), "n_active": res.n_active, "n_extra": res.n_extra,
        "n_correct": int(res.correct.sum()), "n_unmatched": int((res.slot_of < 0).sum()),
        "pit": res, "si_sdr": sdr, "si_sdri": sdri,
    }


def evaluate_waveforms(estimates: np.ndarray, active: np.ndarray, references: np.ndarray, mixture: np.ndarray) -> dict:
    """K-set matching and waveform SI-SDR / SI-SDRi of one separated mixture.

    The active estimates are matched one-to-one to the reference sources by the Hungarian
    algorithm maximising the summed waveform SI-SDR (the K-set separation literature's matching;
    with as many estimates as sources it is utterance-level PIT). A source left without an active
    estimate (under-count) is *missed*, an active estimate left without a source (over-count) is
    *extra*; SI-SDR(i) is over the matched sources.

    Args:
        estimates: (S, N) waveform of every output slot; active: (S,) bool; references: (K, N)
            the clean sources; mixture: (N,) the input (the SI-SDRi baseline).

    Returns:
        ``{"k", "n_active", "n_extra", "n_unmatched", "slot_of": (K,) matched slot or -1,
        "si_sdr": [per matched source], "si_sdri": [per matched source]}`` (reference order).
    """
    estimates, references = np.asarray(estimates), np.asarray(references)
    active = np.asarray(active, dtype=bool)
    if active.shape != (len(estimates),) or estimates.shape[1:] != references.shape[1:] \
            or np.shape(mixture) != references.shape[1:]:
        raise ValueError(f"evaluate_waveforms: estimates {estimates.shape}, active {active.shape}, references "
                         f"{references.shape} and mixture {np.shape(mixture)} do not match")
    k, act = len(references), np.flatnonzero(active)
    slot_of = np.full(k, -1, dtype=np.int64)
    if len(act) and k:
        score = np.array([[si_sdr(estimates[a], references[r]) for r in range(k)] for a in act])
        rows, cols = linear_sum_assignment(np.nan_to_num(score, nan=-MAX_SI_SDR_DB), maximize=True)
        slot_of[cols] = act[rows]
    sdr, sdri = [], []
    for r, slot in enumerate(slot_of):
        if slot >= 0:
            a = si_sdr(estimates[slot], references[r])
            sdr.append(a)
            sdri.append(a - si_sdr(mixture, references[r]))
    n_matched = int((slot_of >= 0).sum())
    return {"k": k, "n_active": int(len(act)), "n_extra": int(len(act) - n_matched),
            "n_unmatched": int(k - n_matched), "slot_of": slot_of, "si_sdr": sdr, "si_sdri": sdri}


def speaker_count_accuracy(true_k: Sequence[int], estimated_k: Sequence[int]) -> dict:
    """Fraction of mixtures whose estimated speaker count equals the true one, and the confusion matrix.

    Returns:
        ``{"accuracy", "labels": sorted counts seen in either list, "confusion": (L, L) int array,
        rows = true K, columns = estimated K}``.
    """
    t = np.asarray(true_k, dtype=np.int64)
    e = np.asarray(estimated_k, dtype=np.int64)
    if t.shape != e.shape:
        raise ValueError(f"speaker_count_accuracy: {t.size} true counts vs {e.size} estimates")
    labels = sorted(set(t.tolist()) | set(e.tolist()))
    cm = confusion_matrix(t, e, labels=labels) if t.size else np.zeros((0, 0), dtype=np.int64)
    return {"accuracy": float((t == e).mean()) if t.size else float("nan"), "labels": labels, "confusion": cm}
