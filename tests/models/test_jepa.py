import torch

from echo.models.jepa import JEPA, PredictorConfig, ema_update, jepa_step_flops, target_features
from echo.models.masks import MaskCollator, MaskConfig
from echo.models.vit import Encoder, EncoderConfig

ENC = EncoderConfig(n_mels=16, dim=32, depth=2, heads=2, mlp_dim=64)
PRED = PredictorConfig(dim=16, depth=1, heads=2, mlp_dim=32)


def test_predictor_shapes_and_context_only_gradient():
    torch.manual_seed(0)
    model = JEPA(ENC, PRED)
    mels = torch.randn(3, 80, 16, requires_grad=True)
    m = MaskCollator(MaskConfig(), 20, seed=0)(3, 0)
    z = model(mels, m.context, m.target)
    assert z.shape == (3, m.target.shape[1], 32)
    z.sum().backward()
    # the prediction may only see context frames: target frames get no gradient
    g = mels.grad.abs().sum(-1).reshape(3, 20, 4).sum(-1)
    for b in range(3):
        assert (g[b, m.target[b]] == 0).all()
        assert (g[b, m.context[b]] > 0).all()


def test_target_features_are_layer_normalised():
    torch.manual_seed(0)
    h = target_features(Encoder(ENC), torch.randn(2, 40, 16))
    assert h.dtype == torch.float32 and h.shape == (2, 10, 32)
    torch.testing.assert_close(h.mean(-1), torch.zeros(2, 10), atol=1e-5, rtol=0)
    torch.testing.assert_close(h.var(-1, unbiased=False), torch.ones(2, 10), atol=1e-3, rtol=0)


def test_ema_update():
    torch.manual_seed(0)
    online, target = Encoder(ENC), Encoder(ENC)
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for b, t, o in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    ema_update(target, online, 1.0)  # momentum 1 freezes the target
    for b, t, o in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)


def test_flops_estimate_matches_parameter_rule():
    # with short sequences attention is negligible and a forward costs ~2 FLOPs per weight per token
    cfg, pred = EncoderConfig(), PredictorConfig()
    with torch.device("meta"):
        enc = Encoder(cfg)
    n_weights = sum(p.numel() for n, p in enc.named_parameters() if p.ndim == 2)
    f = jepa_step_flops(cfg, pred, batch=1, n_tokens=4, n_context=0, n_target=0)
    assert abs(f - 2 * 4 * n_weights) / (2 * 4 * n_weights) < 0.01
    # the paper-profile step on 100-token crops: target fwd + ~40% context fwd/bwd + predictor
    full = jepa_step_flops(cfg, pred, 1, 100, 37, 60) / 100
    assert 1.0e8 < full < 1.6e8
