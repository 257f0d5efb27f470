"""EER on known scores; deterministic trial lists."""
import numpy as np
import pytest
from scipy.stats import norm

from echo.errors import EchoError
from echo.metrics.verification import TrialsConfig, build_trials, cosine_scores, equal_error_rate


def test_eer_hand_case():
    # at thresholds in (0.6, 0.65]: target 0.6 rejected (FNR 1/4), non-target 0.65 accepted (FPR 1/4)
    scores = [0.6, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3, 0.65]
    targets = [True] * 4 + [False] * 4
    eer, thr = equal_error_rate(scores, targets)
    assert eer == pytest.approx(0.25)
    assert 0.6 <= thr <= 0.65


def test_eer_separable_and_interpolated():
    assert equal_error_rate([2, 3, 0, 1], [True, True, False, False])[0] == 0.0
    # scores 1 (target) and 2 (non-target) fully inverted: EER 1
    assert equal_error_rate([1.0, 2.0], [True, False])[0] == pytest.approx(1.0)


def test_eer_gaussian_scores():
    rng = np.random.default_rng(0)
    tar, non = rng.normal(1.0, 1.0, 20000), rng.normal(-1.0, 1.0, 20000)
    eer, thr = equal_error_rate(np.r_[tar, non], np.r_[np.ones(20000, bool), np.zeros(20000, bool)])
    assert eer == pytest.approx(norm.cdf(-1.0), abs=0.006)
    assert thr == pytest.approx(0.0, abs=0.05)
    with pytest.raises(EchoError):
        equal_error_rate([1, 2], [True, True])


def test_trials_deterministic_and_labelled_correctly():
    utts = [f"u{i:02d}" for i in range(30)]
    spk = [f"s{i % 5}" for i in range(30)]
    cfg = TrialsConfig(n_target=40, n_nontarget=60, seed=7)
    a = build_trials(utts, spk, cfg)
    perm = np.random.default_rng(1).permutation(30)
    b = build_trials([utts[i] for i in perm], [spk[i] for i in perm], cfg)
    assert a.equals(b)  # independent of input order
    assert a["target"].sum() == 40 and (~a["target"]).sum() == 60
    of = dict(zip(utts, spk))
    same = [of[e] == of[t] for e, t in zip(a["enrol"], a["test"])]
    assert same == a["target"].tolist()
    assert not a.duplicated(["enrol", "test"]).any() and (a["enrol"] != a["test"]).all()
    # fewer target pairs exist than asked: all of them (5 speakers x C(6,2) = 75)
    assert build_trials(utts, spk, TrialsConfig(n_target=1000, n_nontarget=10))["target"].sum() == 75


def test_cosine_scores():
    trials = build_trials(["a", "b", "c"], ["x", "x", "y"], TrialsConfig(n_target=5, n_nontarget=5))
    emb = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    s = cosine_scores(emb, ["a", "b", "c"], trials)
    assert s[trials["target"].to_numpy()].tolist() == [1.0]
    assert np.allclose(s[~trials["target"].to_numpy()], 0.0)
