"""The speaker separator's signal path: STFT round trip, the training loss against the metric, an
oracle mask through the head's own masking and inversion, outputs that sum to the mixture, and
masks that follow the identity they are given."""
import numpy as np
import pytest
import torch

from echo.errors import ConfigError, EchoError
from echo.heads.separator import SeparatorConfig, SpeakerSeparator, istft, si_sdr_loss, stft
from echo.metrics.separation import si_sdr, si_sdri

SR = 16_000
CFG = SeparatorConfig(d_model=16, identity_dim=6, width=8, hidden=8, num_blocks=2, slot_attention_every=1, num_heads=2)


def _sources(n: int = SR) -> np.ndarray:
    """Two 'voices' far apart in frequency: a 180 Hz harmonic voice below 1 kHz, a chirp above 2 kHz."""
    t = np.arange(n) / SR
    low = sum(np.sin(2 * np.pi * 180 * h * t) / h for h in range(1, 5))
    high = np.sin(2 * np.pi * (2500 * t + 800 * t ** 2))
    return 0.1 * np.stack([low, high]).astype(np.float32)


def test_stft_round_trip_is_exact():
    x = torch.randn(2, 3, 6400)
    spec = stft(x, CFG)
    assert spec.shape == (2, 3, 6400 // CFG.hop_length + 1, CFG.n_bins)
    assert torch.allclose(istft(spec, CFG, 6400), x, atol=1e-5)


def test_training_loss_is_minus_the_metric():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((3, 4000)).astype(np.float32)
    est = ref + rng.uniform(0.1, 2.0, (3, 1)).astype(np.float32) * rng.standard_normal((3, 4000)).astype(np.float32)
    loss = si_sdr_loss(torch.from_numpy(est), torch.from_numpy(ref)).numpy()
    np.testing.assert_allclose(-loss, [si_sdr(e, r) for e, r in zip(est, ref)], atol=1e-3)
    assert float(si_sdr_loss(torch.from_numpy(3.0 * ref), torch.from_numpy(ref)).max()) < -60  # scale-invariant


def test_an_oracle_mask_through_the_head_separates_a_constructed_mixture(monkeypatch):
    src = _sources()
    mix = src.sum(0)
    spec = stft(torch.from_numpy(src), CFG)
    irm = spec.abs() / spec.abs().sum(0, keepdim=True).clamp_min(1e-8)  # (2, frames, bins)
    head = SpeakerSeparator(CFG)
    # the head's mask logits replaced by log(ideal ratio mask): the softmax gives the mask back
    monkeypatch.setattr(head, "mask_logits", lambda *a: torch.log(irm.clamp_min(1e-12))[None])
    n_tok = -(-(len(mix) // CFG.hop_length + 1) // CFG.patch_frames)
    out = head(torch.from_numpy(mix)[None], torch.zeros(1, 2, 6), torch.zeros(1, n_tok, 16),
               torch.ones(1, 2, dtype=torch.bool))[0].numpy()
    for k in range(2):
        assert si_sdri(out[k], src[k], mix) > 15.0
    assert si_sdr(out.sum(0), mix) > 60


def test_outputs_sum_to_the_mixture_and_inactive_slots_are_silent():
    torch.manual_seed(0)
    head = SpeakerSeparator(CFG).eval()
    n = 4480  # 28 frames + 1: the last token is partial
    mix = torch.randn(2, n)
    ident, lat = torch.randn(2, 3, 6), torch.randn(2, 8, 16)
    active = torch.tensor([[True, False, True], [False, True, False]])
    with torch.no_grad():
        out = head(mix, ident, lat, active)
    assert out.shape == (2, 3, n)
    assert torch.all(out[~active] == 0)
    assert torch.allclose(out.sum(1), mix, atol=1e-4)
    assert torch.allclose(out[1, 1], mix[1], atol=1e-4)  # one active slot renders the whole mixture


def test_bad_inputs_and_config():
    head = SpeakerSeparator(CFG)
    with pytest.raises(EchoError, match="no speaker to render"):
        head(torch.randn(1, 1600), torch.randn(1, 2, 6), torch.randn(1, 3, 16), torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(EchoError, match=r"expected identities \(B, S, 6\)"):
        head(torch.randn(1, 1600), torch.randn(1, 2, 3, 6), torch.randn(1, 3, 16), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(EchoError, match=r"mixture latent \(B, T, 16\)"):
        head(torch.randn(1, 1600), torch.randn(1, 2, 6), torch.randn(1, 3, 8), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ConfigError, match="kernel_size"):
        SeparatorConfig(kernel_size=4)
    with pytest.raises(ConfigError, match="width"):
        SeparatorConfig(width=10, num_heads=4)


def test_the_masks_follow_the_identities():
    """Swapping the two identities swaps the two outputs (nothing else tells the speakers apart),
    and an identity's scale does not matter (it is normalised)."""
    torch.manual_seed(0)
    head = SpeakerSeparator(CFG).eval()
    mix, lat = torch.randn(1, 3200), torch.randn(1, 6, 16)
    ident = torch.randn(1, 2, 6)
    on = torch.ones(1, 2, dtype=torch.bool)
    with torch.no_grad():
        a = head(mix, ident, lat, on)
        b = head(mix, ident.flip(1), lat, on)
        c = head(mix, ident * torch.tensor([3.0, 0.5])[None, :, None], lat, on)
    assert not torch.allclose(a[0, 0], a[0, 1], atol=1e-3)
    assert torch.allclose(a, b.flip(1), atol=1e-5) and torch.allclose(a, c, atol=1e-5)
