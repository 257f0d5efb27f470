"""VBx on synthetic embedding sequences: finds the number of speakers it was not told."""
import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from echo.diarization.ahc import AHCConfig, ahc_cluster
from echo.diarization.plda import PLDA, PLDAConfig
from echo.diarization.vbx import VBxConfig, _prior_update, assign_overlap, forward_backward, vbx, vbx_cluster
from echo.errors import ConfigError

D = 128


@pytest.fixture(scope="module")
def plda():
    rng = np.random.default_rng(100)  # training speakers, disjoint from the test sequences'
    means = rng.normal(size=(100, D))
    x = np.repeat(means, 20, 0) + 0.5 * rng.normal(size=(2000, D))
    return PLDA.fit(x, np.repeat(np.arange(100), 20), PLDAConfig(lda_dim=64))


def _recording(k, seed):
    """Alternating turns of k unseen speakers (Gaussian clusters in 128-d), 8-24 windows per turn."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, D))
    order = np.concatenate([rng.permutation(k) for _ in range(4)])
    ref = np.concatenate([[s] * rng.integers(8, 25) for s in order])
    return means[ref] + 0.5 * rng.normal(size=(len(ref), D)), ref


def _accuracy(ref, hyp):
    cm = np.zeros((ref.max() + 1, hyp.max() + 1))
    np.add.at(cm, (ref, hyp), 1)
    r, c = linear_sum_assignment(-cm)
    return cm[r, c].sum() / len(ref)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_blind_vbx_finds_untold_speaker_count(plda, k):
    emb, ref = _recording(k, seed=k)
    # a strict AHC threshold over-clusters heavily: VBx has to merge the redundant speakers
    ahc = AHCConfig(threshold=0.8)
    n_init = ahc_cluster(plda.transform(emb, 64), ahc).max() + 1
    assert n_init > k
    out = vbx_cluster(emb, plda, VBxConfig(dim=64), ahc)
    assert out.num_speakers == k
    assert out.posteriors.shape == (len(ref), k)
    assert np.allclose(out.posteriors.sum(1), 1.0)
    assert _accuracy(ref, out.labels) == 1.0
    assert np.all(np.diff(out.elbo) > -1e-6)  # variational bound never decreases
    assert out.labels[0] == 0  # speakers numbered by first appearance


def test_oracle_k_forces_the_count(plda):
    emb, ref = _recording(3, seed=11)
    out = vbx_cluster(emb, plda, VBxConfig(dim=64), AHCConfig(threshold=0.3), num_speakers=3)
    assert out.num_speakers == 3 and _accuracy(ref, out.labels) == 1.0
    forced = vbx_cluster(emb, plda, VBxConfig(dim=64), AHCConfig(threshold=0.3), num_speakers=4)
    assert forced.num_speakers == 4 and len(np.unique(forced.labels)) == 4


def test_fb_strength_controls_speaker_count(plda):
    emb, _ = _recording(3, seed=5)
    q = np.random.default_rng(0).dirichlet(np.ones(6), size=len(emb))
    feats = plda.transform(emb, 64)
    weak = vbx(feats, plda.psi[:64], q, VBxConfig(Fb=1e-3))
    strong = vbx(feats, plda.psi[:64], q, VBxConfig(Fb=1e4))
    assert (weak.pi > 1e-3).sum() > (strong.pi > 1e-3).sum()


def test_forward_backward_matches_path_enumeration():
    rng = np.random.default_rng(3)
    ll = rng.normal(size=(4, 2)) * 3
    tr = np.array([[0.8, 0.2], [0.3, 0.7]])
    ip = np.array([0.6, 0.4])
    post, log_px, *_ = forward_backward(ll, tr, ip)
    total, marg = 0.0, np.zeros((4, 2))
    for path in itertools.product(range(2), repeat=4):
        p = ip[path[0]] * np.exp(ll[0, path[0]])
        for t in range(1, 4):
            p *= tr[path[t - 1], path[t]] * np.exp(ll[t, path[t]])
        total += p
        marg[np.arange(4), path] += p
    assert log_px == pytest.approx(np.log(total), rel=1e-12)
    assert np.allclose(post, marg / total)


def test_prior_update_counts_expected_speaker_entries():
    # brute force over all paths: entries into s = first frame in s, plus every transition into
    # s that was a "jump" (probability (1 - loopP) pi_s out of the transition probability)
    rng = np.random.default_rng(4)
    t_len, s, loop = 5, 3, 0.7
    ll = rng.normal(size=(t_len, s)) * 2
    pi = np.array([0.5, 0.3, 0.2])
    tr = loop * np.eye(s) + (1 - loop) * pi[None, :]
    gamma, _, _, beta, scale = forward_backward(ll, tr, pi)
    total, entries = 0.0, np.zeros(s)
    for path in itertools.product(range(s), repeat=t_len):
        p = pi[path[0]] * np.exp(ll[0, path[0]])
        for t in range(1, t_len):
            p *= tr[path[t - 1], path[t]] * np.exp(ll[t, path[t]])
        total += p
        e = np.zeros(s)
        e[path[0]] += 1
        for t in range(1, t_len):
            e[path[t]] += (1 - loop) * pi[path[t]] / tr[path[t - 1], path[t]]
        entries += p * e
    want = entries / total
    assert np.allclose(_prior_update(ll, gamma, beta, scale, pi, loop), want / want.sum())


def test_assign_overlap_adds_second_speaker_only_where_flagged():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.45, 0.05]])
    act = assign_overlap(p, np.array([False, True, True]))
    assert act.tolist() == [[True, False, False], [False, True, True], [True, True, False]]


def test_config_validation():
    with pytest.raises(ConfigError, match="VBxConfig.loopP"):
        VBxConfig(loopP=1.0)
    with pytest.raises(ConfigError, match="VBxConfig.Fb"):
        VBxConfig(Fb=0)


def test_vbx_transition_fast_path_matches_the_general_forward_backward():
    from echo.diarization.vbx import _forward_backward_jump

    rng = np.random.default_rng(7)
    ll = rng.normal(size=(50, 6)) * 4
    pi = rng.dirichlet(np.ones(6))
    loop = 0.9
    want = forward_backward(ll, loop * np.eye(6) + (1 - loop) * pi[None, :], pi)
    got = _forward_backward_jump(ll, pi, loop)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("metric,threshold", [("cosine", 0.8), ("plda", 0.0)])
def test_capped_ahc_initialisation_still_finds_the_speakers(plda, metric, threshold):
    emb, ref = _recording(3, seed=21)
    assert len(ref) > 120
    ahc = AHCConfig(metric=metric, threshold=threshold, max_windows=40)
    out = vbx_cluster(emb, plda, VBxConfig(dim=64), ahc)
    assert out.posteriors.shape[0] == len(ref)  # every window has a posterior
    assert out.num_speakers == 3 and _accuracy(ref, out.labels) == 1.0
    oracle = vbx_cluster(emb, plda, VBxConfig(dim=64), ahc, num_speakers=3)
    assert oracle.num_speakers == 3 and _accuracy(ref, oracle.labels) == 1.0


def test_vbx_memory_grows_linearly_with_the_windows(plda):
    import tracemalloc

    emb, _ = _recording(3, seed=9)
    rng = np.random.default_rng(0)
    peaks = []
    for reps in (12, 48):  # ~2,000 and ~8,000 windows
        x = np.tile(emb, (reps, 1)) + 0.05 * rng.normal(size=(reps * len(emb), D))
        tracemalloc.start()
        vbx_cluster(x, plda, VBxConfig(dim=64, max_iters=2), AHCConfig(threshold=0.8, max_windows=300))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 5.0 * peaks[0]  # x4 windows: linear ~4, a T x T matrix would be ~16
