"""CUDA smoke test of every head at the real width (d=512, 10 s = 250 tokens); skipped without a GPU.

Run on a GPU machine: ``python -m pytest -q tests/heads/test_cuda.py`` (or run this file).
"""
import time

import pytest
import torch

from echo.heads.arcface import ArcFaceLoss
from echo.heads.ctc import CTCConfig, CTCHead, PhoneInventory, pad_targets
from echo.heads.guard import frozen_copy, latent_distillation_loss
from echo.heads.pit import KSetLoss
from echo.heads.router import RouterConfig, SourceRouter
from echo.heads.speaker import SpeakerConfig, SpeakerHead
from echo.heads.vq import VectorQuantizer, VQConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
B, T, D = 16, 250, 512


def _batch(dev):
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(B, T, D, device=dev, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool, device=dev)
    mask[B // 2:, T // 2:] = False
    return x, mask


def test_all_heads_bf16_forward_backward_on_cuda():
    dev = torch.device("cuda")
    x, mask = _batch(dev)
    x.requires_grad_(True)
    spk = SpeakerHead(SpeakerConfig(pooling="ecapa")).to(dev)
    arc = ArcFaceLoss(256, 100).to(dev)
    inv = PhoneInventory(tuple(f"p{i}" for i in range(40)))
    ctc = CTCHead(CTCConfig(), inv, VQConfig(codebook_size=256, dead_code_steps=1)).to(dev)
    router = SourceRouter(RouterConfig(k_max=4)).to(dev)
    kset = KSetLoss("mse")
    teacher = frozen_copy(router)
    targets, lengths = pad_targets([[1 + (i * 7 + j) % 40 for j in range(20)] for i in range(B)])
    refs = torch.randn(B, 4, T, D, device=dev)
    rmask = torch.arange(4, device=dev)[None] < (1 + torch.arange(B, device=dev)[:, None] % 4)
    times = []
    for _ in range(4):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            emb = spk(x, mask)
            l_arc = arc(emb, torch.arange(B, device=dev) % 100).loss
            l_ctc = ctc.loss(x, mask, targets.to(dev), lengths.to(dev))
            out = router(x, mask)
            res = kset(out.slots.float(), out.exist_logits.float(), refs, rmask, mask)
            l_dist = latent_distillation_loss(out.slots[:, 0], teacher(x, mask).slots[:, 0], mask)
        loss = l_arc + l_ctc.total + res.loss + l_dist
        loss.backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert (res.assignment.cpu() >= 0).sum() == rmask.sum().cpu()
    assert l_ctc.output.vq.revived >= 0 and ctc.vq.codebook.is_cuda
    print(f"\nheads fwd+bwd, B={B} T={T} D={D}, bf16: {min(times) * 1e3:.1f} ms/step (best of 4)")


def test_router_cuda_matches_cpu_in_fp32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    router = SourceRouter(RouterConfig(k_max=3, width=128)).eval()
    x, mask = _batch(torch.device("cpu"))
    with torch.no_grad():
        a = router(x[:4], mask[:4])
        b = router.cuda()(x[:4].cuda(), mask[:4].cuda())
    torch.testing.assert_close(b.slots.cpu(), a.slots, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(b.exist_logits.cpu(), a.exist_logits, rtol=1e-3, atol=1e-3)


def test_vq_cuda_matches_cpu_and_revives():
    cfg = VQConfig(d_model=D, codebook_size=64, dead_code_steps=1, seed=3)
    x, mask = _batch(torch.device("cpu"))
    cpu, gpu = VectorQuantizer(cfg), VectorQuantizer(cfg).cuda()
    oc, og = cpu(x[:2], mask[:2]), gpu(x[:2].cuda(), mask[:2].cuda())
    assert torch.equal(oc.codes, og.codes.cpu()) and oc.revived == og.revived > 0
    torch.testing.assert_close(gpu.codebook.cpu(), cpu.codebook, rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
    raise SystemExit(pytest.main(["-q", "-s", __file__]))
