import math

import pytest
import torch

from echo.errors import ConfigError
from echo.heads.vq import VectorQuantizer, VQConfig, codebook_perplexity


def _vq(**kw):
    cfg = dict(d_model=4, codebook_size=8, code_dim=4, dead_code_steps=0, seed=0)
    cfg.update(kw)
    vq = VectorQuantizer(VQConfig(**cfg))
    book = torch.cat([4 * torch.eye(4), -4 * torch.eye(4)])  # 8 well-separated codes
    vq.codebook.data.copy_(book)
    if vq.config.update == "ema":
        vq.embed_sum.copy_(book)
    return vq, book


def test_codes_perplexity_usage_on_constructed_input():
    vq, book = _vq()
    vq.eval()
    # Valid frames use codes 0,1,2,3 equally; padded frames hold code 7 and must not count.
    codes = torch.tensor([[0, 1, 2, 3, 7, 7], [3, 2, 1, 0, 7, 7]])
    mask = codes != 7
    x = book[codes] + 0.1 * torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0))
    out = vq(x, mask)
    assert torch.equal(out.codes, codes.masked_fill(~mask, -1))
    assert out.perplexity.item() == pytest.approx(4.0, rel=1e-5)
    assert out.usage.item() == pytest.approx(0.5)
    assert torch.equal(out.quantized[mask], book[codes][mask])
    assert torch.equal(out.quantized[~mask], torch.zeros(4, 4))
    # Skewed histogram: counts (2, 1, 1) -> exp(H) with H = -(.5 ln .5 + 2 * .25 ln .25).
    out = vq(book[torch.tensor([[0, 0, 1, 2]])])
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert out.perplexity.item() == pytest.approx(math.exp(h), rel=1e-5)
    assert out.usage.item() == pytest.approx(3 / 8)
    assert codebook_perplexity(torch.tensor([5.0, 0, 0])).item() == pytest.approx(1.0)


def test_straight_through_gradient_and_commitment():
    vq, book = _vq(update="loss", commitment=0.25)
    x = (book[torch.tensor([[0, 5, 2]])] + 0.5).requires_grad_(True)
    out = vq(x)
    out.quantized.sum().backward(retain_graph=True)
    assert torch.equal(x.grad, torch.ones_like(x))  # identity through the quantiser
    # commitment 0.25 * mse + codebook mse = 1.25 * 0.25 (every element is off by 0.5)
    assert out.loss.item() == pytest.approx(1.25 * 0.25, rel=1e-6)
    x.grad = None
    out.loss.backward()
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0


def test_ema_moves_codes_to_the_mean_of_their_latents():
    vq, book = _vq(ema_decay=0.5)
    vq.train()
    g = torch.Generator().manual_seed(1)
    target = book[1] + torch.tensor([0.7, -0.3, 0.2, 0.1])
    for _ in range(30):
        x = target + 0.05 * torch.randn(1, 16, 4, generator=g)
        vq(x)
    torch.testing.assert_close(vq.codebook[1], target, atol=0.05, rtol=0)
    torch.testing.assert_close(vq.codebook[0], book[0], atol=1e-3, rtol=0)  # unused code stays put


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_dead_codes_are_revived_from_batch_latents(update):
    vq, book = _vq(update=update, dead_code_steps=3)
    vq.train()
    g = torch.Generator().manual_seed(2)
    x = book[torch.tensor([[0, 1, 2, 3] * 4])] + 0.01 * torch.randn(1, 16, 4, generator=g)
    revived = [vq(x).revived for _ in range(3)]
    assert revived == [0, 0, 4]  # codes 4..7 unused three steps in a row
    flat = x.reshape(-1, 4)
    for k in range(4, 8):  # each revived code is now one of the batch's latents
        assert (vq.codebook[k] - flat).abs().sum(1).min() < 1e-6
    assert len({tuple(vq.codebook[k].tolist()) for k in range(4, 8)}) == 4  # distinct draws
    assert vq.unused_steps[4:].eq(0).all()
    # Revived codes now win frames, so usage goes up.
    assert vq(x).usage.item() > 0.5


def test_deterministic_under_seed_and_save_load(tmp_path):
    def run(seed):
        vq = VectorQuantizer(VQConfig(d_model=6, codebook_size=16, code_dim=3, project=True,
                                      dead_code_steps=2, seed=seed))
        g = torch.Generator().manual_seed(3)
        for _ in range(5):
            vq(torch.randn(2, 7, 6, generator=g))
        return vq

    a, b, c = run(0), run(0), run(1)
    for (k, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), k
    assert not torch.equal(a.codebook, c.codebook)
    a.save(tmp_path / "a.pt")
    b.save(tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    back = VectorQuantizer.load(tmp_path / "a.pt")
    a.eval()
    x = torch.randn(2, 7, 6)
    assert torch.equal(back(x).quantized, a(x).quantized)
    torch.testing.assert_close(back.decode(back.encode(x)), a(x).quantized)  # ST adds rounding


def test_config_validation():
    with pytest.raises(ConfigError):
        VQConfig(d_model=8, code_dim=4, project=False)
    with pytest.raises(ConfigError):
        VQConfig(update="gumbel")
    with pytest.raises(ConfigError):
        VQConfig(ema_decay=1.0)


@pytest.mark.parametrize("changes, message", [
    ({"codebook_size": 1}, "VQConfig.codebook_size: expected an integer >= 2, got 1"),
    ({"ema_decay": 1.0}, "VQConfig.ema_decay: expected a number in (0, 1), got 1.0"),
    ({"update": "sgd"}, "VQConfig.update: expected one of ['ema', 'loss'], got 'sgd'"),
    ({"code_dim": 3}, "VQConfig.code_dim: expected == d_model (512) when project is false, got 3"),
])
def test_head_config_rules_are_declared_once_and_named(changes, message):
    from echo.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        VQConfig(**changes)
    assert str(e.value) == message
