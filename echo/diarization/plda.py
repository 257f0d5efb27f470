"""LDA + two-covariance PLDA for speaker embeddings, in the diagonal form VBx needs.

Pipeline (as in BUT's VBx recipe): embeddings -> LDA (sklearn, to ``lda_dim``; also whitens the
within-class scatter) -> length normalisation to norm sqrt(dim) -> PLDA. The PLDA is the
two-covariance model (Ioffe 2006; Brummer & de Villiers 2010): x = m + y + e with speaker
variable y ~ N(0, B) and residual e ~ N(0, W), fitted by the closed-form moment estimates
(between- and within-speaker scatter of training speakers; no EM). Simultaneous diagonalisation
(generalised eigenproblem B v = psi W v) gives a space where the within-speaker covariance is the
identity and the across-speaker covariance is diag(psi), sorted by decreasing psi: exactly the
model VBx assumes.

Hand-written: no maintained PyPI package offers this PLDA (Kaldi's is C++, speechbrain's and
pyannote's come with heavy frameworks); it is ~100 lines of numpy/scipy.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import eigh
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from echo.config import check_fields, rule
from echo.errors import CacheMismatchError, EchoError
from echo.io import atomic_path

__all__ = ["PLDAConfig", "PLDA", "length_norm"]

log = logging.getLogger(__name__)
_FORMAT = "echo-plda-v1"


@dataclass(frozen=True)
class PLDAConfig:
    """PLDA training settings.

    Attributes:
        lda_dim: LDA output dimension (>= 2); capped at (training speakers - 1) and the input dim.
        within_ridge: relative ridge added to the within-speaker covariance before the
            diagonalisation (>= 0), for numerical safety.
    """

    lda_dim: int = field(default=128, metadata=rule(ge=2))
    within_ridge: float = field(default=1e-6, metadata=rule(ge=0))

    def __post_init__(self):
        check_fields(self)


def length_norm(x: np.ndarray) -> np.ndarray:
    """Scale each row to norm sqrt(dim) (Garcia-Romero & Espy-Wilson 2011)."""
    x = np.asarray(x, dtype=np.float64)
    return x * (np.sqrt(x.shape[1]) / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))


class PLDA:
    """A fitted LDA + PLDA model (plain arrays; saves/loads itself as .npz).

    Attributes:
        lda_offset: (d,) and lda_matrix: (D, d): the LDA as an affine map ``x @ lda_matrix + lda_offset``.
        mean: (d,) PLDA mean in the length-normalised LDA space.
        basis: (d, d) columns map centred features into the diagonal PLDA space.
        psi: (d,) across-speaker variances in that space (decreasing); within-speaker is identity.
    """

    def __init__(self, lda_offset, lda_matrix, mean, basis, psi):
        self.lda_offset = np.asarray(lda_offset, dtype=np.float64)
        self.lda_matrix = np.asarray(lda_matrix, dtype=np.float64)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.basis = np.asarray(basis, dtype=np.float64)
        self.psi = np.asarray(psi, dtype=np.float64)

    @property
    def input_dim(self) -> int:
        return self.lda_matrix.shape[0]

    @property
    def dim(self) -> int:
        return self.psi.shape[0]

    @classmethod
    def fit(cls, embeddings: np.ndarray, speakers, config: PLDAConfig = PLDAConfig()) -> "PLDA":
        """Fit LDA and PLDA on training-speaker embeddings (never test speakers).

        Args:
            embeddings: (N, D) one embedding per segment/utterance.
            speakers: (N,) speaker label of each row; needs >= 3 speakers with >= 2 rows each.
            config: ``lda_dim``, ``within_ridge``.
        """
        x = np.asarray(embeddings, dtype=np.float64)
        y = np.asarray(speakers)
        if x.ndim != 2 or len(x) != len(y):
            raise EchoError(f"PLDA.fit: expected (N, D) embeddings and N labels, got {x.shape} and {y.shape}")
        classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
        if len(classes) < 3 or (counts >= 2).sum() < 3:
            raise EchoError(f"PLDA.fit: needs >= 3 speakers with >= 2 embeddings each, got {len(classes)} speakers")
        d = min(config.lda_dim, len(classes) - 1, x.shape[1])
        if d < config.lda_dim:
            log.warning("PLDA.fit: lda_dim %d capped to %d (speakers - 1 / input dim)", config.lda_dim, d)
        lda = LinearDiscriminantAnalysis(n_components=d, solver="svd").fit(x, inverse)
        # read the fitted LDA back as an affine map so the model is plain arrays
        offset = lda.transform(np.zeros((1, x.shape[1])))[0]
        matrix = lda.transform(np.eye(x.shape[1])) - offset
        z = length_norm(x @ matrix + offset)

        mean = z.mean(0)
        class_means = np.zeros((len(classes), d))
        np.add.at(class_means, inverse, z)
        class_means /= counts[:, None]
        resid = z - class_means[inverse]
        within = resid.T @ resid / len(z)
        dm = class_means - mean
        between = (dm * counts[:, None]).T @ dm / len(z)
        within += config.within_ridge * np.trace(within) / d * np.eye(d)
        psi, vecs = eigh(between, within)  # vecs.T @ within @ vecs = I, vecs.T @ between @ vecs = diag(psi)
        order = np.argsort(psi)[::-1]
        return cls(offset, matrix, mean, vecs[:, order], np.maximum(psi[order], 0.0))

    def embed(self, x: np.ndarray) -> np.ndarray:
        """LDA projection then length normalisation (the space AHC-by-cosine can also use)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise EchoError(f"PLDA: expected (N, {self.input_dim}) embeddings, got {x.shape}")
        return length_norm(x @ self.lda_matrix + self.lda_offset)

    def transform(self, x: np.ndarray, dim: int | None = None) -> np.ndarray:
        """Features in the diagonal PLDA space (within-speaker identity, across diag(psi)).

        Args:
            x: (N, D) raw embeddings.
            dim: keep the first ``dim`` (most speaker-discriminative) dimensions; all if None.
        """
        f = (self.embed(x) - self.mean) @ self.basis
        return f[:, :dim] if dim is not None else f

    def score_matrix(self, feats: np.ndarray, feats2: np.ndarray | None = None) -> np.ndarray:
        """Same-speaker vs different-speaker log-likelihood ratios between PLDA-space features.

        Args:
            feats: (N, d') output of :meth:`transform` (d' <= dim, the leading dimensions).
            feats2: (M, d') second set; defaults to ``feats``.

        Returns:
            (N, M) LLR matrix.
        """
        a = np.asarray(feats, dtype=np.float64)
        b = a if feats2 is None else np.asarray(feats2, dtype=np.float64)
        psi = self.psi[: a.shape[1]]
        # per dimension the pair (x1, x2) is Gaussian with variances psi+1 and covariance psi
        # (same speaker) or 0 (different speakers); the LLR is quadratic in x1, x2
        tot = psi + 1.0
        det = tot**2 - psi**2
        q = tot / det - 1.0 / tot
        p = psi / det
        const = 0.5 * np.sum(np.log(tot) * 2 - np.log(det))
        qa = -0.5 * (a**2 @ q)
        qb = -0.5 * (b**2 @ q)
        return const + qa[:, None] + qb[None, :] + (a * p) @ b.T

    def save(self, path: str | os.PathLike) -> None:
        """Write the model to ``path`` (.npz), atomically."""
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, format=np.array(_FORMAT), lda_offset=self.lda_offset, lda_matrix=self.lda_matrix,
                         mean=self.mean, basis=self.basis, psi=self.psi)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PLDA":
        """Read a model written by :meth:`save`."""
        if not os.path.exists(path):
            raise EchoError(f"{path}: PLDA model not found")
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z or str(z["format"]) != _FORMAT:
                raise CacheMismatchError(f"{path}: not an {_FORMAT} PLDA model")
            return cls(z["lda_offset"], z["lda_matrix"], z["mean"], z["basis"], z["psi"])
