"""VBx on synthetic embedding sequences: finds the number of speakers it was not told."""
import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from echo.diarization.ahc import AHCConfig, ahc_cluster
from echo.diarization.plda import PLDA, PLDAConfig
from echo.diarization.vbx import VBxConfig, _forward_backward_jump, _prior_update, vbx, vbx_cluster
from echo.errors import ConfigError

D = 128
REFERENCE = Path(__file__).parent / "data" / "vbx_reference.npz"


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
    # VBx's transition loop * I + (1 - loop) * pi, started from pi, against all 3^5 state paths
    rng = np.random.default_rng(3)
    t_len, s, loop = 5, 3, 0.6
    ll = rng.normal(size=(t_len, s)) * 3
    pi = np.array([0.5, 0.2, 0.3])
    tr = loop * np.eye(s) + (1 - loop) * pi[None, :]
    post, log_px, *_ = _forward_backward_jump(ll, pi, loop)
    total, marg = 0.0, np.zeros((t_len, s))
    for path in itertools.product(range(s), repeat=t_len):
        p = pi[path[0]] * np.exp(ll[0, path[0]])
        for t in range(1, t_len):
            p *= tr[path[t - 1], path[t]] * np.exp(ll[t, path[t]])
        total += p
        marg[np.arange(t_len), path] += p
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
    gamma, _, _, beta, scale = _forward_backward_jump(ll, pi, loop)
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


def test_config_validation():
    with pytest.raises(ConfigError, match="VBxConfig.loopP"):
        VBxConfig(loopP=1.0)
    with pytest.raises(ConfigError, match="VBxConfig.Fb"):
        VBxConfig(Fb=0)


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


def test_vbx_matches_buts_reference_implementation():
    # inputs and outputs of BUT's VBx() (see data/README.md for provenance), computed once
    ref = np.load(REFERENCE)
    cfg = VBxConfig(Fa=float(ref["Fa"]), Fb=float(ref["Fb"]), loopP=float(ref["loopP"]),
                    max_iters=int(ref["max_iters"]), epsilon=float(ref["epsilon"]))
    out = vbx(ref["X"], ref["Phi"], ref["gamma_init"], cfg)
    # BUT's log-domain forward-backward takes log(transition + 1e-8) and log(pi + 1e-8): that
    # epsilon, not float rounding, sets the agreement (about 3e-8 on gamma, 5e-9 relative on the ELBO)
    assert len(out.elbo) == len(ref["elbo"])  # same stopping iteration
    np.testing.assert_allclose(out.gamma, ref["gamma"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.pi, ref["pi"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.elbo, ref["elbo"], rtol=1e-7, atol=0)
    assert (out.pi > 1e-3).sum() == (ref["pi"] > 1e-3).sum() == 3  # the three speakers survive
