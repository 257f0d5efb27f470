"""Throughput of the full JEPA pretraining step (real crop loader included) for an encoder profile.

Measures tokens/s (one token = 40 ms of audio) and seconds of audio per second over ``--steps``
timed steps after ``--warmup`` untimed ones (compilation happens there), and on CUDA the model
FLOPs utilisation against ``--peak-flops`` (dense bf16; 989e12 is the H100/H200 SXM datasheet
figure). Without ``--cache`` the loader crops from a synthetic float16 feature array.

Commands::

    # CPU, 2 threads (the dev machine's figure)
    python benchmarks/pretrain_throughput.py --device cpu --threads 2 --batch 8 --steps 10
    # one GPU, compiled, bf16 (autocast), fused AdamW
    python benchmarks/pretrain_throughput.py --device cuda --compile --batch 1024 --steps 40 --peak-flops 989e12

The last line printed is the one-line summary; ``--json PATH`` also writes it as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from echo.models.jepa import jepa_step_flops  # noqa: E402
from echo.models.vit import EncoderConfig  # noqa: E402
from echo.train.loader import FeatureArrays  # noqa: E402
from echo.train.pretrain import JEPATrainer, PretrainConfig  # noqa: E402


def synthetic_arrays(num_frames: int, n_mels: int = 80, seed: int = 0) -> FeatureArrays:
    """Log-mel-like float16 frames cut into 4-20 s utterances (VoxCeleb-like lengths)."""
    rng = np.random.default_rng(seed)
    frames = np.empty((num_frames, n_mels), np.float16)
    chunk = 1 << 20
    for i in range(0, num_frames, chunk):
        n = min(chunk, num_frames - i)
        frames[i:i + n] = rng.standard_normal((n, n_mels), dtype=np.float32) * 2.0 - 6.0
    lengths = []
    while sum(lengths) < num_frames:
        lengths.append(int(rng.integers(400, 2000)))
    lengths[-1] -= sum(lengths) - num_frames
    lengths = np.array([n for n in lengths if n > 0], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return FeatureArrays(frames, offsets, lengths, np.full(n_mels, -6.0, np.float32), np.full(n_mels, 2.0, np.float32))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=8, help="crops per step")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; 8 with --compile)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the forward passes")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU runs)")
    ap.add_argument("--crop-frames", type=int, default=400, help="frames per crop (400 = 4 s = 100 tokens)")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--peak-flops", type=float, default=989e12, help="accelerator peak FLOP/s for MFU")
    ap.add_argument("--cache", type=Path, default=None, help="a FeatureCache directory instead of synthetic frames")
    ap.add_argument("--synthetic-frames", type=int, default=None, help="size of the synthetic array")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of 3 more steps")
    ap.add_argument("--sdpa", default="auto", choices=["auto", "flash", "efficient", "cudnn", "math"],
                    help="restrict F.scaled_dot_product_attention to one backend")
    # profile overrides (default: the paper profile)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--mlp-dim", type=int, default=2048)
    args = ap.parse_args(argv)
    if args.sdpa != "auto":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                   "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[args.sdpa]
        with sdpa_kernel(backend):
            return _run(args)
    return _run(args)


def _run(args) -> dict:

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers outside autocast
        torch.backends.cudnn.allow_tf32 = True
    warmup = args.warmup if args.warmup is not None else (8 if args.compile else 2)
    enc_cfg = EncoderConfig(dim=args.dim, depth=args.depth, heads=args.heads, mlp_dim=args.mlp_dim)
    # schedule length: warmup + timed steps with the loader + the same number on pre-staged batches
    total = warmup + 2 * args.steps + (3 if args.profile else 0)
    cfg = PretrainConfig(steps=total, batch_size=args.batch, crop_frames=args.crop_frames, warmup_steps=min(2, total),
                         precision=args.precision, compile=args.compile, log_every=10**9, checkpoint_every=10**9,
                         pin_memory=True, prefetch=4)
    t0 = time.perf_counter()
    if args.cache is not None:
        from echo.features import FeatureCache

        data = FeatureArrays.from_cache(FeatureCache(args.cache))
    else:
        n = args.synthetic_frames or int(min(4_000_000, max(200_000, 8 * args.batch * args.crop_frames)))
        data = synthetic_arrays(n)
    t_data = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        trainer = JEPATrainer(cfg, enc_cfg, data, Path(tmp), device=args.device, resume=False)
        dev = trainer.ctx.device
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
        n_params = sum(p.numel() for p in trainer.model.encoder.parameters())
        n_tok = trainer.num_tokens

        t0 = time.perf_counter()
        for s in range(3):
            trainer.loader.batch(s)
        loader_ms = (time.perf_counter() - t0) / 3 * 1e3

        def step_flops(batch) -> float:
            return jepa_step_flops(enc_cfg, cfg.predictor, args.batch, n_tok, batch.masks.context.shape[1],
                                   batch.masks.target.shape[1])

        # 1) the real thing: loader thread + step
        flops, t_start, t_warm0 = 0.0, None, time.perf_counter()
        for i, batch in enumerate(trainer.loader.iterate(0, warmup + args.steps)):
            if i == warmup:
                sync()
                t_start = time.perf_counter()
            loss, _, _ = trainer.train_step(batch)
            if i >= warmup:
                flops += step_flops(batch)
        sync()
        elapsed = time.perf_counter() - t_start
        warm_s = t_start - t_warm0
        loss_v = float(loss)

        # 2) the step alone, on batches already on the device (what the loader costs, by difference)
        first = warmup + args.steps
        staged = []
        for s in range(first, first + args.steps):
            b = trainer.loader.batch(s)
            staged.append(type(b)(b.mels.to(dev), type(b.masks)(*(m.to(dev) for m in b.masks)), s))
        sync()
        t0 = time.perf_counter()
        for b in staged:
            trainer.train_step(b)
        sync()
        step_only = time.perf_counter() - t0
        del staged

        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
            with profile(activities=acts) as prof:
                for s in range(first + args.steps, total):
                    trainer.train_step(trainer.loader.batch(s))
                sync()
            key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60), flush=True)

    tokens = args.batch * n_tok * args.steps
    res = {
        "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else f" ({torch.get_num_threads()} threads)"),
        "encoder_params": n_params, "batch": args.batch, "crop_frames": args.crop_frames, "compile": args.compile,
        "precision": str(trainer.amp_dtype or torch.float32).replace("torch.", ""), "timed_steps": args.steps,
        "tokens_per_s": tokens / elapsed, "audio_s_per_s": tokens / elapsed * enc_cfg.patch_frames / 100.0,
        "ms_per_step": elapsed / args.steps * 1e3, "loader_ms_per_batch": loader_ms,
        "step_only_tokens_per_s": tokens / step_only, "step_only_ms": step_only / args.steps * 1e3,
        "mflop_per_token": flops / tokens / 1e6, "warmup_s": warm_s, "data_s": t_data, "final_loss": loss_v,
        "torch": torch.__version__,
    }
    if dev.type == "cuda":
        res["mfu"] = flops / elapsed / args.peak_flops
        res["peak_flops"] = args.peak_flops
        res["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
    res["sdpa"] = args.sdpa
    line = (f"pretrain_throughput {res['device']} sdpa={args.sdpa} params={n_params / 1e6:.1f}M batch={args.batch} "
            f"compile={args.compile} {res['precision']}: {res['tokens_per_s']:,.0f} tokens/s, "
            f"{res['audio_s_per_s']:,.0f} s audio/s, {res['ms_per_step']:.1f} ms/step, "
            f"(step alone {res['step_only_tokens_per_s']:,.0f} tokens/s), loader {loader_ms:.1f} ms/batch, "
            f"{res['mflop_per_token']:.0f} MFLOP/token")
    if "mfu" in res:
        line += f", MFU {100 * res['mfu']:.1f}% of {args.peak_flops / 1e12:.0f} TFLOP/s, peak mem {res['peak_mem_gb']:.1f} GB"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(line, flush=True)
    return res


if __name__ == "__main__":
    main()
