import pytest
import torch

from echo.errors import ConfigError
from echo.heads.pit import KSetLoss
from echo.heads.router import RouterConfig, SourceRouter, active_slots

D, K_MAX, T = 16, 3, 8


def _mixtures(n, seed):
    """Sources = one fixed random vector per speaker (+ small frame noise); mixture = sum."""
    g = torch.Generator().manual_seed(seed)
    speakers = torch.randn(6, D, generator=torch.Generator().manual_seed(123))
    targets = torch.zeros(n, K_MAX, T, D)
    tmask = torch.zeros(n, K_MAX, dtype=torch.bool)
    for i in range(n):
        k = int(torch.randint(1, K_MAX + 1, (1,), generator=g))
        spk = torch.randperm(6, generator=g)[:k]
        targets[i, :k] = speakers[spk, None, :] + 0.05 * torch.randn(k, T, D, generator=g)
        tmask[i, :k] = True
    return targets.sum(1), targets, tmask


def test_shapes_padding_and_active_slots():
    torch.manual_seed(0)
    router = SourceRouter(RouterConfig(d_model=D, k_max=K_MAX, width=16, num_layers=1, num_heads=2)).eval()
    x = torch.randn(2, T, D)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, 5:] = False
    out = router(x, mask)
    assert out.slots.shape == (2, K_MAX, T, D) and out.exist_logits.shape == (2, K_MAX)
    assert (out.slots[1, :, 5:] == 0).all()
    x2 = x.clone()
    x2[1, 5:] = 99.0  # padded frames do not reach the valid outputs
    out2 = router(x2, mask)
    torch.testing.assert_close(out2.slots, out.slots)
    torch.testing.assert_close(out2.exist_logits, out.exist_logits)
    assert active_slots(torch.tensor([[2.0, -1.0, 0.0]])).tolist() == [[True, False, True]]


def test_kset_loss_decreases_when_training_a_tiny_router():
    torch.manual_seed(0)
    router = SourceRouter(RouterConfig(d_model=D, k_max=K_MAX, width=32, num_layers=1, num_heads=2,
                                       residual_mixture=False))
    crit = KSetLoss("mse")
    mix, targets, tmask = _mixtures(48, seed=0)
    opt = torch.optim.Adam(router.parameters(), lr=3e-3)
    history = []
    for step in range(40):
        out = router(mix)
        res = crit(out.slots, out.exist_logits, targets, tmask)
        opt.zero_grad()
        res.loss.backward()
        opt.step()
        history.append((res.regression.item(), res.existence.item()))
    assert history[-1][0] < 0.5 * history[0][0]
    assert history[-1][1] < 0.7 * history[0][1]
    # Null-target behaviour generalises to fresh mixtures: the count is mostly right.
    router.eval()
    mix, targets, tmask = _mixtures(64, seed=1)
    with torch.no_grad():
        out = router(mix)
    count_acc = (active_slots(out.exist_logits).sum(1) == tmask.sum(1)).float().mean().item()
    assert count_acc > 0.6


def test_save_load_bit_identical(tmp_path):
    torch.manual_seed(0)
    router = SourceRouter(RouterConfig(d_model=D, k_max=K_MAX, width=16, num_layers=2, num_heads=2)).eval()
    router.save(tmp_path / "router.pt")
    back = SourceRouter.load(tmp_path / "router.pt")
    x = torch.randn(2, T, D)
    a, b = router(x), back(x)
    assert torch.equal(a.slots, b.slots) and torch.equal(a.exist_logits, b.exist_logits)
    with pytest.raises(ConfigError):
        RouterConfig(width=30, num_heads=4)
