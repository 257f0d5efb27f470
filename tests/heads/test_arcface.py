import math

import pytest
import torch
import torch.nn.functional as F

from echo.errors import CacheMismatchError, ConfigError
from echo.heads.arcface import ArcFaceConfig, ArcFaceLoss, arcface_logits


def _setup():
    torch.manual_seed(0)
    head = ArcFaceLoss(8, 5, ArcFaceConfig(scale=10.0, margin=0.0))
    emb = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    return head, emb, labels


def test_zero_margin_is_scaled_cosine_softmax():
    head, emb, labels = _setup()
    out = head(emb, labels)
    cos = F.normalize(emb, dim=-1) @ F.normalize(head.weight, dim=-1).t()
    torch.testing.assert_close(out.logits, 10.0 * cos, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, F.cross_entropy(10.0 * cos, labels), rtol=1e-5, atol=1e-6)


def test_margin_penalises_only_the_target_logit():
    _, emb, labels = _setup()
    cos = torch.tensor([[0.8, 0.1, -0.3], [0.2, 0.5, 0.0]])
    y = torch.tensor([0, 1])
    m = 0.3
    logits = arcface_logits(cos, y, scale=1.0, margin=m)
    assert logits[0, 0] == pytest.approx(math.cos(math.acos(0.8) + m), abs=1e-6)
    assert logits[1, 1] == pytest.approx(math.cos(math.acos(0.5) + m), abs=1e-6)
    assert logits[0, 0] < cos[0, 0] and logits[1, 1] < cos[1, 1]
    nontarget = torch.ones_like(cos, dtype=torch.bool)
    nontarget[0, 0] = nontarget[1, 1] = False
    assert torch.equal(logits[nontarget], cos[nontarget])
    # Loss grows with the margin for the same embeddings.
    head, emb, labels = _setup()
    l0 = head(emb, labels).loss
    head_m = ArcFaceLoss(8, 5, ArcFaceConfig(scale=10.0, margin=0.3))
    head_m.load_state_dict(head.state_dict())
    assert head_m(emb, labels).loss > l0


def test_threshold_and_easy_margin_fallbacks():
    cos = torch.tensor([[-0.99, 0.0]])
    y = torch.tensor([0])
    m = 0.5
    hard = arcface_logits(cos, y, 1.0, m)  # θ + m > π: fallback cos - m sin m
    assert hard[0, 0] == pytest.approx(-0.99 - math.sin(math.pi - m) * m, abs=1e-6)
    easy = arcface_logits(cos, y, 1.0, m, easy_margin=True)  # cos <= 0: no margin
    assert easy[0, 0] == pytest.approx(-0.99, abs=1e-6)


def test_margin_warmup_schedule():
    cfg = ArcFaceConfig(margin=0.2, margin_warmup_steps=100)
    assert cfg.margin_at(0) == 0.0
    assert cfg.margin_at(50) == pytest.approx(0.1)
    assert cfg.margin_at(1000) == pytest.approx(0.2)
    assert cfg.margin_at(None) == pytest.approx(0.2)
    head, emb, labels = _setup()
    warm = ArcFaceLoss(8, 5, ArcFaceConfig(scale=10.0, margin=0.3, margin_warmup_steps=10))
    warm.load_state_dict(head.state_dict())
    torch.testing.assert_close(warm(emb, labels, step=0).loss, head(emb, labels).loss)


def test_training_separates_classes():
    torch.manual_seed(1)
    centers = torch.randn(4, 8) * 3
    labels = torch.arange(4).repeat(8)
    emb = centers[labels] + torch.randn(32, 8)
    head = ArcFaceLoss(8, 4, ArcFaceConfig(scale=16.0, margin=0.2))
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    first = head(emb, labels).loss.item()
    for _ in range(30):
        out = head(emb, labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.loss.item() < 0.5 * first
    assert (out.cosine.argmax(1) == labels).float().mean() > 0.9


def test_save_load_round_trip(tmp_path):
    head, emb, labels = _setup()
    head.save(tmp_path / "arc.pt")
    back = ArcFaceLoss.load(tmp_path / "arc.pt")
    assert back.config == head.config
    assert torch.equal(back.weight, head.weight)
    assert torch.equal(back(emb, labels).logits, head(emb, labels).logits)
    with pytest.raises(CacheMismatchError):
        from echo.heads.speaker import SpeakerHead
        SpeakerHead.load(tmp_path / "arc.pt")
    with pytest.raises(ConfigError):
        ArcFaceConfig(margin=2.0)
