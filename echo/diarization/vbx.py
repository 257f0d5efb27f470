"""VBx: Bayesian HMM clustering of embedding sequences (Landini et al., Computer Speech & Language 2022).

Model (in the diagonal PLDA space of :mod:`echo.diarization.plda`): each window's feature x_t is
emitted by one of S speakers; speaker s has a latent mean y_s ~ N(0, diag(phi)) and
x_t | s ~ N(y_s, I). Speaker turns follow an HMM that stays with probability ``loopP`` and
otherwise jumps to speaker s with probability pi_s. Mean-field variational Bayes alternates
(equation numbers of the paper):

- speaker posteriors q(y_s) = N(alpha_s, diag(invL_s)) given frame responsibilities gamma (16, 17);
- per-frame log-likelihoods under those posteriors, scaled by ``Fa`` (23);
- forward-backward over the HMM for gamma and the evidence (19-22);
- the ELBO with the KL term scaled by ``Fb`` (25), and the maximum-likelihood update of pi (24).

``Fa`` scales the acoustic evidence (accounting for correlated overlapping windows); ``Fb``
scales the speaker-prior penalty, and so drives how many speakers survive: redundant speakers'
pi collapse towards 0 and are pruned. Initialised from AHC labels softened by
``init_smoothing``.

Hand-written: BUT's reference VBx (github.com/BUTSpeechFIT/VBx) is not on PyPI and
pyannote.audio (which vendors a copy) is far too heavy a dependency for this one algorithm. This
version uses a scaled (probability-domain, per-frame normalised) forward-backward, which is
equivalent to the log-domain one and needs only matrix-vector products per frame. A golden test
(tests/diarization/test_vbx.py, fixture and provenance in tests/diarization/data/) checks it
against BUT's ``VBx()`` on fixed inputs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.special import softmax

from echo.config import check_fields, rule
from echo.diarization.ahc import AHCConfig, ahc_cluster
from echo.errors import EchoError

__all__ = ["VBxConfig", "VBxResult", "Clustering", "vbx", "smooth_labels", "vbx_cluster"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VBxConfig:
    """VBx settings (defaults: BUT's CALLHOME recipe, 1.5 s windows every 0.25 s).

    Attributes:
        Fa: acoustic scaling factor, > 0.
        Fb: speaker regularisation, > 0 (larger -> fewer speakers).
        loopP: probability of staying with the same speaker between windows, in [0, 1).
        init_smoothing: softmax temperature turning AHC hard labels into initial
            responsibilities (> 0; large keeps them near hard).
        max_iters: maximum VB iterations (>= 1).
        epsilon: stop when the ELBO improves by less than this (>= 0).
        dim: PLDA dimensions used (leading, most discriminative ones); None = all.
        min_speaker_prior: speakers whose final pi falls below this are pruned, in [0, 1).
    """

    Fa: float = field(default=0.3, metadata=rule(gt=0))
    Fb: float = field(default=17.0, metadata=rule(gt=0))
    loopP: float = field(default=0.99, metadata=rule(ge=0, lt=1))
    init_smoothing: float = field(default=5.0, metadata=rule(gt=0))
    max_iters: int = field(default=40, metadata=rule(ge=1))
    epsilon: float = field(default=1e-6, metadata=rule(ge=0))
    dim: int | None = field(default=128, metadata=rule(ge=1))
    min_speaker_prior: float = field(default=1e-3, metadata=rule(ge=0, lt=1))

    def __post_init__(self):
        check_fields(self)


@dataclass
class VBxResult:
    """Raw VBx output: gamma (T, S) responsibilities, pi (S,) speaker priors, elbo per iteration."""

    gamma: np.ndarray
    pi: np.ndarray
    elbo: list[float] = field(default_factory=list)


@dataclass
class Clustering:
    """Diarization clustering of one recording.

    Attributes:
        posteriors: (T, K) per-window posteriors over the K kept speakers (rows sum to 1).
        labels: (T,) most likely speaker per window, in 0..K-1.
        num_speakers: K, the number of speakers found (or forced).
        prior: (K,) VBx speaker priors of the kept speakers.
        elbo: ELBO per VBx iteration.
    """

    posteriors: np.ndarray
    labels: np.ndarray
    num_speakers: int
    prior: np.ndarray
    elbo: list[float] = field(default_factory=list)


def _forward_backward_jump(log_lik: np.ndarray, initial: np.ndarray, loop: float):
    """Scaled forward-backward for VBx's transition ``loop * I + (1 - loop) * 1 pi^T`` (with
    ``initial = pi``), in O(T S) instead of O(T S^2): with normalised forward variables,
    ``alpha @ A = loop * alpha + (1 - loop) * pi`` and ``A @ v = loop * v + (1 - loop) * (pi . v)``.
    Matters when AHC proposes hundreds of speakers on an hour-long recording.

    Returns:
        ``(gamma, log_px, alpha, beta, scale)``: (T, S) state posteriors, total log-likelihood,
        normalised forward and backward variables and the per-frame normalisers ``scale``
        (alpha_t sums to 1; the likelihood of frame t given the past is scale_t * exp(max_t)).
    """
    t_len, s = log_lik.shape
    peak = log_lik.max(axis=1, keepdims=True)
    b = np.exp(log_lik - peak)
    pi = np.asarray(initial, dtype=np.float64)
    jump = (1.0 - loop) * pi
    alpha = np.empty((t_len, s))
    beta = np.empty((t_len, s))
    scale = np.empty(t_len)
    a = pi * b[0]
    scale[0] = a.sum()
    alpha[0] = a / scale[0]
    for t in range(1, t_len):
        a = (loop * alpha[t - 1] + jump) * b[t]
        scale[t] = a.sum()
        alpha[t] = a / scale[t]
    beta[-1] = 1.0
    for t in range(t_len - 2, -1, -1):
        v = b[t + 1] * beta[t + 1]
        beta[t] = (loop * v + jump @ v) / scale[t + 1]
    gamma = alpha * beta
    gamma /= gamma.sum(axis=1, keepdims=True)
    log_px = float(np.log(scale).sum() + peak.sum())
    return gamma, log_px, alpha, beta, scale


def vbx(features: np.ndarray, phi: np.ndarray, q_init: np.ndarray, config: VBxConfig = VBxConfig(), update_prior: bool = True) -> VBxResult:
    """Run VB inference of the VBx model.

    Args:
        features: (T, D) features in the diagonal PLDA space (within-speaker covariance I).
        phi: (D,) across-speaker variances of those dimensions.
        q_init: (T, S) initial responsibilities (rows sum to 1); S is the maximum speaker count.
        config: ``Fa``, ``Fb``, ``loopP``, ``max_iters``, ``epsilon``.
        update_prior: re-estimate pi (24); False keeps it uniform so no speaker is driven out
            (used when the number of speakers is known).

    Returns:
        :class:`VBxResult` (pi is uniform when ``update_prior`` is False).
    """
    x = np.asarray(features, dtype=np.float64)
    phi = np.asarray(phi, dtype=np.float64)
    gamma = np.asarray(q_init, dtype=np.float64)
    t_len, d = x.shape
    if phi.shape != (d,) or gamma.shape[0] != t_len:
        raise EchoError(f"vbx: features {x.shape}, phi {phi.shape} and q_init {gamma.shape} do not agree")
    s = gamma.shape[1]
    pi = np.full(s, 1.0 / s)
    fa, fb, loop = config.Fa, config.Fb, config.loopP
    const = -0.5 * (np.sum(x**2, axis=1, keepdims=True) + d * np.log(2 * np.pi))  # (23), per frame
    rho = x * np.sqrt(phi)  # (18): features in the speaker-variable's standardised coordinates
    elbo: list[float] = []
    for it in range(config.max_iters):
        inv_l = 1.0 / (1.0 + fa / fb * gamma.sum(0)[:, None] * phi)  # (17), (S, D)
        alpha = fa / fb * inv_l * (gamma.T @ rho)  # (16), (S, D)
        log_lik = fa * (rho @ alpha.T - 0.5 * (inv_l + alpha**2) @ phi + const)  # (23)
        # (1): transition loop * I + (1 - loop) * pi, in its O(T S) form
        gamma, log_px, fw, bw, scale = _forward_backward_jump(log_lik, pi, loop)
        elbo.append(log_px + fb * 0.5 * float(np.sum(np.log(inv_l) - inv_l - alpha**2 + 1.0)))  # (25)
        if update_prior:
            pi = _prior_update(log_lik, gamma, bw, scale, pi, loop)
        if it > 0 and elbo[-1] - elbo[-2] < config.epsilon:
            if elbo[-1] < elbo[-2] - 1e-6 * abs(elbo[-2]):
                log.warning("vbx: ELBO decreased at iteration %d (%.6g -> %.6g)", it, elbo[-2], elbo[-1])
            break
    return VBxResult(gamma, pi, elbo)


def _prior_update(log_lik, gamma, beta, scale, pi, loop):
    """Eq. (24): pi_s proportional to the expected number of times speaker s is entered, at the
    first frame or by a jump (probability (1 - loopP) pi_s) from any speaker, itself included."""
    # with normalised forward variables the sum over the source speaker of alpha_{t-1} is 1
    b = np.exp(log_lik - log_lik.max(axis=1, keepdims=True))  # same scaling as _forward_backward_jump
    jumps = (b[1:] * beta[1:] / scale[1:, None]).sum(0)
    new = gamma[0] + (1.0 - loop) * pi * jumps
    return new / new.sum()


def smooth_labels(labels: np.ndarray, num_speakers: int, init_smoothing: float) -> np.ndarray:
    """Hard labels -> soft responsibilities: softmax(one_hot * init_smoothing) per row."""
    q = np.zeros((len(labels), num_speakers))
    q[np.arange(len(labels)), labels] = 1.0
    return softmax(q * init_smoothing, axis=1)


def vbx_cluster(
    embeddings: np.ndarray,
    plda,
    config: VBxConfig = VBxConfig(),
    ahc: AHCConfig = AHCConfig(),
    num_speakers: int | None = None,
) -> Clustering:
    """Diarization clustering of one recording's window embeddings: AHC initialisation, then VBx.

    Blind (``num_speakers`` None): AHC with ``ahc.threshold`` proposes S speakers; VBx runs with
    the prior update; speakers with pi < ``min_speaker_prior`` or winning no window are pruned,
    and the kept speakers' posteriors are renormalised. Oracle K: AHC is cut into exactly K
    clusters and VBx keeps a uniform prior (no speaker is pruned); if VBx still leaves a speaker
    without any window, the AHC-K initialisation is returned instead (logged), so the output has
    K speakers whenever there are at least K windows.

    Args:
        embeddings: (T, D) raw speaker embeddings of consecutive windows.
        plda: fitted :class:`echo.diarization.plda.PLDA` (trained on training speakers).
        config: VBx settings.
        ahc: AHC settings for the initialisation.
        num_speakers: oracle K, or None for blind.

    Returns:
        :class:`Clustering`.
    """
    feats = plda.transform(embeddings, config.dim)
    phi = plda.psi[: feats.shape[1]]
    t_len = len(feats)
    if t_len == 0:
        return Clustering(np.zeros((0, 0)), np.zeros(0, dtype=np.int64), 0, np.zeros(0))
    init = ahc_cluster(feats, ahc, plda=plda, num_clusters=num_speakers)
    s = int(init.max()) + 1
    q0 = smooth_labels(init, s, config.init_smoothing)
    oracle = num_speakers is not None
    res = vbx(feats, phi, q0, config, update_prior=not oracle)
    gamma, pi = res.gamma, res.pi
    if oracle:
        if len(np.unique(gamma.argmax(1))) < s:
            log.info("vbx_cluster: VBx left a speaker without windows at oracle K=%d; using AHC-K", s)
            gamma = q0
        keep = np.arange(s)
    else:
        keep = np.flatnonzero(pi >= config.min_speaker_prior)
        if keep.size == 0:
            keep = np.array([int(pi.argmax())])
        winners = np.unique(keep[gamma[:, keep].argmax(1)])
        keep = winners
    post = gamma[:, keep]
    post = post / np.maximum(post.sum(1, keepdims=True), 1e-300)
    labels = post.argmax(1)
    # number speakers by first appearance so outputs are stable across runs
    _, first = np.unique(labels, return_index=True)
    order = labels[np.sort(first)]
    order = np.r_[order, np.setdiff1d(np.arange(len(keep)), order)]
    post = post[:, order]
    return Clustering(post, post.argmax(1), len(keep), pi[keep][order], res.elbo)
