"""PLDA: the diagonal space has the promised covariances, LLRs match a brute-force Gaussian, round trip."""
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from echo.diarization.plda import PLDA, PLDAConfig
from echo.errors import CacheMismatchError, ConfigError, EchoError

D = 48


def _train(n_spk=60, n_utt=15, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_spk, D))
    x = np.repeat(means, n_utt, 0) + 0.5 * rng.normal(size=(n_spk * n_utt, D))
    return x, np.repeat([f"s{i}" for i in range(n_spk)], n_utt)


def test_diagonal_space_whitens_within_speaker():
    x, y = _train()
    plda = PLDA.fit(x, y, PLDAConfig(lda_dim=32))
    f = plda.transform(x)
    assert f.shape == (len(x), 32)
    assert np.all(np.diff(plda.psi) <= 0) and plda.psi[0] > 1.0
    cls = np.unique(y)
    means = np.stack([f[y == c].mean(0) for c in cls])
    resid = f - means[np.searchsorted(cls, y)]
    within = resid.T @ resid / len(f)
    between = (means - f.mean(0)).T @ (means - f.mean(0)) / len(cls)
    assert np.allclose(within, np.eye(32), atol=1e-6)
    assert np.allclose(between, np.diag(plda.psi), atol=1e-6)


def test_llr_matches_two_covariance_gaussians():
    x, y = _train()
    plda = PLDA.fit(x, y, PLDAConfig(lda_dim=8))
    f = plda.transform(x[[0, 1, 20, 100]])
    psi = plda.psi
    same = np.block([[np.diag(psi + 1), np.diag(psi)], [np.diag(psi), np.diag(psi + 1)]])
    diff = np.diag(np.r_[psi + 1, psi + 1])
    s = plda.score_matrix(f)
    for i in range(4):
        for j in range(4):
            pair = np.r_[f[i], f[j]]
            want = multivariate_normal(np.zeros(16), same).logpdf(pair) - multivariate_normal(np.zeros(16), diff).logpdf(pair)
            assert s[i, j] == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert s[0, 1] > 0 > s[0, 3]  # utterances 0, 1 share a speaker; utterance 100 does not


def test_save_load_round_trip(tmp_path):
    x, y = _train()
    plda = PLDA.fit(x, y, PLDAConfig(lda_dim=16))
    plda.save(tmp_path / "plda.npz")
    back = PLDA.load(tmp_path / "plda.npz")
    assert back.transform(x[:10]).tobytes() == plda.transform(x[:10]).tobytes()
    np.savez(tmp_path / "other.npz", psi=np.ones(3))
    with pytest.raises(CacheMismatchError, match="other.npz"):
        PLDA.load(tmp_path / "other.npz")


def test_bad_input():
    with pytest.raises(ConfigError, match="PLDAConfig.lda_dim"):
        PLDAConfig(lda_dim=1)
    with pytest.raises(EchoError, match="3 speakers"):
        PLDA.fit(np.zeros((4, 3)), ["a", "a", "b", "b"])
    x, y = _train()
    with pytest.raises(EchoError, match=f"\\(N, {D}\\)"):
        PLDA.fit(x, y, PLDAConfig(lda_dim=8)).transform(np.zeros((2, 5)))
