"""Multi-block masking of contiguous time spans for JEPA pretraining (I-JEPA's recipe in 1-D).

A token spans the full mel band, so a "block" is a contiguous run of tokens in time. Per batch:

1. the lengths of the ``num_targets`` target blocks are drawn once, from a generator seeded by
   ``(seed, step)``; they vary around their mean but always sum to ``target_ratio`` of the
   tokens, and the context always keeps ``context_ratio`` of the rest, so every batch has the
   same number of context and target tokens: index tensors stack, and shapes are static across
   steps (``torch.compile`` builds one graph; torch 2.11's inductor failed on the dynamic-shape
   graph that I-JEPA-style varying totals need);
2. per sample, the blocks are put in a random order at random non-overlapping positions;
3. the context is a contiguous window over the remaining (non-target) tokens, i.e. a time span
   with the target blocks cut out: context and targets are disjoint by construction.

Everything depends only on ``(seed, step)``, so masks are identical after a resume and across
data-parallel ranks (each rank takes its slice of the global batch).

Hand-written with numpy (vectorised over the batch): no maintained library builds JEPA masks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from echo.config import check_fields, rule
from echo.errors import ConfigError

__all__ = ["MaskConfig", "JepaMasks", "MaskCollator", "step_rng"]


def step_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    """A generator that depends only on ``(seed, step, stream)`` (streams: data, masks, ...)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(step), int(stream)]))


@dataclass(frozen=True)
class MaskConfig:
    """Attributes:
        num_targets: target blocks per sample.
        target_ratio: fraction of a crop's tokens that are targets (fixed: static shapes).
        block_spread: block lengths are drawn per batch in ``mean * (1 +- block_spread)``.
        context_ratio: fraction of the non-target tokens kept as context (one time span).
        min_context: minimum context tokens.
    """

    num_targets: int = field(default=4, metadata=rule(ge=1))
    target_ratio: float = field(default=0.6, metadata=rule(gt=0, lt=1))
    block_spread: float = field(default=0.5, metadata=rule(ge=0, lt=1))
    context_ratio: float = field(default=0.9, metadata=rule(gt=0, le=1))
    min_context: int = field(default=2, metadata=rule(ge=1))

    def __post_init__(self) -> None:
        check_fields(self)


class JepaMasks(NamedTuple):
    """Sorted token indices: ``context`` ``(B, n_ctx)`` and ``target`` ``(B, n_tgt)`` int64."""

    context: torch.Tensor
    target: torch.Tensor


class MaskCollator:
    """Builds the context/target indices of one batch of ``num_tokens``-token crops.

    Args:
        cfg: mask shape.
        num_tokens: tokens per crop (all crops of a batch have the same length).
        seed: run seed.

    Raises:
        ConfigError: the crop is too short for the blocks and the minimum context.
    """

    STREAM = 0x6D61736B  # "mask": keeps mask draws independent of the data stream

    def __init__(self, cfg: MaskConfig, num_tokens: int, seed: int = 0):
        self.cfg = cfg
        self.num_tokens = N = int(num_tokens)
        self.seed = int(seed)
        self.num_target = max(cfg.num_targets, int(round(cfg.target_ratio * N)))
        free = N - self.num_target
        self.num_context = min(free, max(cfg.min_context, int(round(cfg.context_ratio * free))))
        if free < cfg.min_context:
            raise ConfigError(f"pretrain.mask: {N} tokens per crop leave no room for {cfg.num_targets} target "
                              f"blocks and {cfg.min_context} context tokens; use longer crops")

    def block_lengths(self, rng: np.random.Generator) -> np.ndarray:
        """Draw the ``num_targets`` block lengths of a batch (each >= 1, summing to ``num_target``)."""
        K, T, spread = self.cfg.num_targets, self.num_target, self.cfg.block_spread
        w = rng.uniform(1.0 - spread, 1.0 + spread, size=K)
        # 1 token per block guaranteed, the rest shared in proportion to w (largest remainder)
        share = (T - K) * w / w.sum()
        lengths = 1 + np.floor(share).astype(np.int64)
        rest = T - int(lengths.sum())
        lengths[np.argsort(-(share - np.floor(share)), kind="stable")[:rest]] += 1
        return lengths

    def __call__(self, batch_size: int, step: int) -> JepaMasks:
        """Masks of the ``batch_size`` crops of global step ``step`` (deterministic in ``(seed, step)``)."""
        rng = step_rng(self.seed, step, self.STREAM)
        N, B, K = self.num_tokens, int(batch_size), self.cfg.num_targets
        T, n_ctx = self.num_target, self.num_context
        lengths = self.block_lengths(rng)
        order = np.argsort(rng.random((B, K)), axis=1)  # each sample its own block order
        L = lengths[order]                              # (B, K)
        free = N - T
        # Non-overlapping placement: K sorted gap offsets in [0, free]; block k starts after the
        # k earlier blocks, so blocks never overlap (they may touch).
        gaps = np.sort(rng.integers(0, free + 1, size=(B, K)), axis=1)
        starts = gaps + np.cumsum(L, axis=1) - L
        edges = np.zeros((B, N + 1), dtype=np.int64)
        rows = np.repeat(np.arange(B), K)
        np.add.at(edges, (rows, starts.ravel()), 1)
        np.add.at(edges, (rows, (starts + L).ravel()), -1)
        is_target = np.cumsum(edges[:, :N], axis=1) > 0
        # every row has exactly T targets and `free` others, so row-major nonzero lists reshape
        target = np.nonzero(is_target)[1].reshape(B, T)
        rest = np.nonzero(~is_target)[1].reshape(B, free)
        first = rng.integers(0, free - n_ctx + 1, size=B)
        context = np.take_along_axis(rest, first[:, None] + np.arange(n_ctx), axis=1)
        return JepaMasks(torch.from_numpy(context.astype(np.int64)), torch.from_numpy(target.astype(np.int64)))
