import pytest
import torch
from torch import nn

from echo.errors import ConfigError, EchoError
from echo.heads.guard import (GuardConfig, ParameterAnchor, apply_guard, frozen_copy, latent_distillation_loss,
                              set_trainable, trainable_parameters)


class TinyEncoder(nn.Module):
    def __init__(self, d=16, depth=4):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
                                    for _ in range(depth))
        self.adapter = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.norm(h + self.adapter(h))


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_top2_freezing_leaves_frozen_params_unchanged_after_optimizer_step():
    torch.manual_seed(0)
    model = TinyEncoder()
    kept = apply_guard(model, GuardConfig(trainable="top2", extra_trainable=("norm.*",)))
    assert kept and all(n.startswith(("blocks.2.", "blocks.3.", "norm.")) for n in kept)
    assert any(n.startswith("blocks.2.") for n in kept) and "norm.weight" in kept
    before = _snapshot(model)
    # All parameters handed to AdamW with weight decay: frozen ones must still not move.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        loss = (model(torch.randn(2, 5, 8)) - 1.0).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in model.named_parameters():
        if n in kept:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n
            assert p.grad is None


def test_trainable_modes_patterns_and_errors():
    model = TinyEncoder()
    names = [n for n, _ in model.named_parameters()]
    assert set_trainable(model, "all") == names
    assert set_trainable(model, "none", extra_trainable=("norm.*",)) == []
    assert list(trainable_parameters(model)) == []
    assert set_trainable(model, "adapters") == ["adapter.weight", "adapter.bias"]
    kept = set_trainable(model, "all", frozen=("embed.*", "blocks.0.*"))
    assert not any(n.startswith(("embed.", "blocks.0.")) for n in kept) and "blocks.1.linear1.weight" in kept
    with pytest.raises(ConfigError):
        set_trainable(model, "top5")
    with pytest.raises(ConfigError):
        set_trainable(model, "top")
    with pytest.raises(EchoError):
        set_trainable(nn.Linear(2, 2), "top1")
    with pytest.raises(ConfigError):
        set_trainable(nn.Linear(2, 2), "adapters")
    wrapped = nn.Module()
    wrapped.encoder = model
    assert set_trainable(wrapped, "top1", blocks_attr="encoder.blocks")[0].startswith("encoder.blocks.3.")


def test_latent_distillation_towards_frozen_copy():
    torch.manual_seed(0)
    student = TinyEncoder()
    teacher = frozen_copy(student)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    x = torch.randn(3, 6, 8)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    for kind in ("mse", "cosine"):
        assert latent_distillation_loss(student(x), teacher(x), mask, kind).item() == pytest.approx(0.0, abs=1e-6)
    teacher_before = _snapshot(teacher)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    (student(x) - 2.0).square().mean().backward()
    opt.step()
    s, t = student(x), teacher(x)
    d = latent_distillation_loss(s, t, mask, "mse", weight=2.0)
    manual = 2.0 * (s - t).square().mean(-1)[mask].mean()
    torch.testing.assert_close(d, manual)
    assert d.item() > 0
    assert all(torch.equal(p, teacher_before[n]) for n, p in teacher.named_parameters())
    # Padded frames do not count.
    s2 = s.clone()
    s2[0, 4:] += 100.0
    torch.testing.assert_close(latent_distillation_loss(s2, t, mask, "cosine"), latent_distillation_loss(s, t, mask, "cosine"))


def test_l2sp_anchor_penalty_and_pull_back():
    torch.manual_seed(0)
    model = TinyEncoder()
    set_trainable(model, "top1")
    anchor = ParameterAnchor(model, weight=0.5)
    assert set(anchor.reference) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert anchor.penalty(model).item() == 0.0
    p = model.blocks[3].linear1.weight
    with torch.no_grad():
        p.add_(1.0)
    expected = 0.5 * 0.5 * p.numel()
    assert anchor.penalty(model).item() == pytest.approx(expected, rel=1e-5)
    anchor.penalty(model).backward()
    torch.testing.assert_close(p.grad, torch.full_like(p, 0.5))  # w * (θ - θ0)
    opt = torch.optim.SGD(trainable_parameters(model), lr=1.0)
    opt.step()
    assert anchor.penalty(model).item() < expected


def test_guard_config_validation():
    for bad in (dict(trainable="top0"), dict(trainable="bottom2"), dict(distill="l1"), dict(anchor_weight=-1.0)):
        with pytest.raises(ConfigError):
            GuardConfig(**bad)
