from dataclasses import dataclass

import numpy as np
import pytest
import torch


from echo.errors import ConfigError, EchoError
from echo.evaluate.separation import SeparationConfig, evaluate_routing, score_mixture, summarise_separation
from echo.metrics.bootstrap import BootstrapConfig

from tests.evaluate.helpers import tiny_parts

B = BootstrapConfig(n_boot=200)


def _centred_orthogonal(rng, n, shape):
    x = rng.standard_normal((n, int(np.prod(shape))))
    x -= x.mean(1, keepdims=True)
    q, _ = np.linalg.qr(np.c_[np.ones(x.shape[1]), x.T])  # orthonormal, orthogonal to the constant
    return (q[:, 1:n + 1].T * 10.0).reshape((n,) + shape)


def _at_db(ref, noise, db):
    """ref + noise scaled so that SI-SDR(ref + noise, ref) = db (noise orthogonal to ref, zero mean)."""
    return ref + noise * np.sqrt(np.sum(ref**2) / np.sum(noise**2) / 10 ** (db / 10))


def test_hand_values_on_constructed_latents():
    rng = np.random.default_rng(0)
    shape = (10, 4)
    v = _centred_orthogonal(rng, 6, shape)  # 6 mutually orthogonal, zero-mean, equal-norm sequences
    r0, r1, n0, n1, junk, r2 = v
    # mixture 1: K=2, two active slots at 10 dB and 20 dB, one inactive slot
    slots = np.stack([_at_db(r1, n1, 20.0), junk, _at_db(r0, n0, 10.0)])
    row1 = score_mixture(slots, np.array([True, False, True]), np.stack([r0, r1]), r0 + r1, "m1")
    # the mixture r0 + r1 has SI-SDR 0 dB against either source (orthogonal, equal norm)
    assert row1["k_hat"] == 2 and row1["n_correct"] == 2
    assert row1["si_sdr"] == pytest.approx([10.0, 20.0]) and row1["si_sdri"] == pytest.approx([10.0, 20.0])
    # mixture 2: K=3 but one active slot: an under-count, two sources unmatched
    row2 = score_mixture(np.stack([_at_db(r2, n0, 10.0), junk, junk]), np.array([True, False, False]),
                         np.stack([r0, r1, r2]), r0 + r1 + r2, "m2")
    assert row2["k_hat"] == 1 and row2["n_unmatched"] == 2 and row2["n_correct"] == 1
    s = summarise_separation([row1, row2], B)
    assert s["count_accuracy"] == 0.5 and s["pit_accuracy"] == pytest.approx(3 / 5)
    assert s["si_sdr"] == pytest.approx(40.0 / 3)  # mean over the 3 matched sources
    # SI-SDR(r0+r1+r2, r2) = 10 log10(1/2): the SI-SDRi of the matched source is 10 + 3.01 dB
    assert s["by_k"]["3"]["si_sdri"] == pytest.approx(10.0 - 10 * np.log10(0.5))
    assert s["by_k"]["2"]["pit_accuracy"] == 1.0 and s["by_k"]["3"]["pit_accuracy"] == pytest.approx(1 / 3)
    assert s["count"]["labels"] == [1, 2, 3]
    assert s["count"]["confusion"] == [[0, 0, 0], [0, 1, 0], [1, 0, 0]]  # rows true K, cols estimated
    lo, hi = s["pit_accuracy_ci"]
    assert lo <= s["pit_accuracy"] <= hi


@dataclass
class Mix:
    mix_id: str
    mixture: np.ndarray
    sources: np.ndarray


def _mixtures(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = 1 + i % 3
        src = (0.1 * rng.standard_normal((k, 16000))).astype(np.float32)
        out.append(Mix(f"mix{i}", src.sum(0), src))
    return out


def test_copying_router_has_zero_improvement_and_full_count():
    parts = tiny_parts()
    with torch.no_grad():  # slots = the mixture latent (residual only); every slot declared active
        parts.router.out_proj.weight.zero_()
        parts.router.out_proj.bias.zero_()
        parts.router.exist[1].bias.fill_(20.0)
    s = evaluate_routing(parts, _mixtures(6), config=SeparationConfig(batch_size=4, bootstrap=B))
    # with the evaluated encoder as the reference, a copy of the mixture improves nothing
    assert s["si_sdri"] == pytest.approx(0.0, abs=1e-6)
    assert [r["k_hat"] for r in s["per_mixture"]] == [3] * 6
    assert s["count_accuracy"] == pytest.approx(2 / 6)  # only the K=3 mixtures are counted right
    assert set(s["by_k"]) == {"1", "2", "3"} and s["n_sources"] == 12 and s["target"] == "evaluated encoder"
    # a separate target encoder changes the references, not the estimated counts
    other = tiny_parts(seed=1).encoder
    s2 = evaluate_routing(parts, _mixtures(6), target_encoder=other, config=SeparationConfig(bootstrap=B))
    assert s2["target"] == "given" and [r["k_hat"] for r in s2["per_mixture"]] == [3] * 6
    assert s2["si_sdr"] != pytest.approx(s["si_sdr"])


def test_needs_a_router_and_valid_config():
    with pytest.raises(EchoError, match="router"):
        evaluate_routing(tiny_parts(router=False), _mixtures(1))
    from echo.heads.separator import SeparatorConfig, SpeakerSeparator

    no_speaker = tiny_parts()
    no_speaker.separator = SpeakerSeparator(SeparatorConfig(d_model=32, identity_dim=16, width=8, hidden=8,
                                                            num_blocks=2, num_heads=2, slot_attention_every=1))
    no_speaker.speaker = None
    with pytest.raises(EchoError, match="has a separator but no speaker head to give identities"):
        evaluate_routing(no_speaker, _mixtures(1))
    with pytest.raises(ConfigError, match="SeparationConfig.threshold"):
        SeparationConfig(threshold=1.0)


def test_waveforms_are_scored_blind_from_the_diarizer_and_from_the_clean_activity():
    from types import SimpleNamespace

    from echo.heads.separator import SeparatorConfig, SpeakerSeparator

    parts = tiny_parts()
    torch.manual_seed(0)
    parts.separator = SpeakerSeparator(SeparatorConfig(d_model=32, identity_dim=16, width=8, hidden=8, num_blocks=2,
                                                       num_heads=2, slot_attention_every=1)).eval()
    calls = []

    def diarize(wave, uri=None):  # finds nobody in mix0, else at most two speakers
        calls.append(uri)
        k = 0 if uri == "mix0" else min(2, 1 + int(uri[3:]) % 3)
        return SimpleNamespace(speaker_embeddings=np.eye(16, dtype=np.float32)[:k])

    mixes = _mixtures(6)  # K = 1, 2, 3, 1, 2, 3
    s = evaluate_routing(parts, mixes, config=SeparationConfig(batch_size=4, bootstrap=B),
                         diarizer=_Callable(diarize, SimpleNamespace(separator=parts.separator)))
    assert calls == [m.mix_id for m in mixes]
    # nobody found: the whole mixture is one source; three speakers heard as two: one missed
    assert [r["wave_k_hat"] for r in s["per_mixture"]] == [1, 2, 2, 1, 2, 2]
    w, c = s["waveform"], s["waveform_clean_activity"]
    assert (w["n_missed"], w["n_extra"], w["n_matched"]) == (2, 0, 10)
    assert w["count_accuracy"] == pytest.approx(4 / 6)
    assert (c["n_missed"], c["n_extra"], c["n_matched"], c["count_accuracy"]) == (0, 0, 12, 1.0)
    assert s["by_k"]["3"]["waveform"]["n_missed"] == 2 and s["by_k"]["1"]["waveform"]["si_sdri"] == pytest.approx(0, abs=1e-6)
    assert np.isfinite(s["multi_speaker"]["waveform"]["si_sdri"])
    # without a diarizer only the clean-activity diagnostic is scored
    s2 = evaluate_routing(parts, mixes, config=SeparationConfig(bootstrap=B))
    assert "waveform" not in s2 and s2["waveform_clean_activity"]["n_matched"] == 12


class _Callable:
    """A stand-in diarizer: ``model.separator`` and ``__call__(wave, uri=...)``."""

    def __init__(self, fn, model):
        self.fn, self.model = fn, model

    def __call__(self, wave, uri=None):
        return self.fn(wave, uri=uri)
