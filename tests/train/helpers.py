"""Tiny structured log-mel data and tiny configs shared by the pretraining tests.

Each synthetic utterance has its own spectral envelope plus a slow moving ripple and a little
noise, so masked spans are predictable from their context (pure noise would not be).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from echo.models.jepa import PredictorConfig
from echo.models.vit import EncoderConfig
from echo.train.loader import FeatureArrays
from echo.train.pretrain import PretrainConfig

N_MELS = 16
ENC = EncoderConfig(n_mels=N_MELS, dim=32, depth=2, heads=2, mlp_dim=64)
PRED = PredictorConfig(dim=16, depth=1, heads=2, mlp_dim=32)


def tiny_arrays(n_utts: int = 32, seed: int = 0, n_mels: int = N_MELS) -> FeatureArrays:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(80, 200, size=n_utts)
    parts = []
    for L in lengths:
        envelope = rng.standard_normal(n_mels) * 2 - 6  # raw log-mel scale, as the cache stores it
        t = np.arange(L)[:, None]
        ripple = np.sin(2 * np.pi * t / rng.uniform(20, 60) + rng.uniform(0, 6.3) + np.arange(n_mels) * 0.3)
        parts.append(envelope + ripple + 0.1 * rng.standard_normal((L, n_mels)))
    frames = np.concatenate(parts).astype(np.float16)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    f32 = frames.astype(np.float32)
    return FeatureArrays(frames, offsets, lengths.astype(np.int64), f32.mean(0), f32.std(0))


def tiny_config(**changes) -> PretrainConfig:
    base = PretrainConfig(steps=40, batch_size=8, crop_frames=48, lr=3e-3, start_lr=3e-3, warmup_steps=0,
                          log_every=1, checkpoint_every=100, predictor=PRED, collapse_min_rank=0.5,
                          precision="fp32")
    return dataclasses.replace(base, **changes)
