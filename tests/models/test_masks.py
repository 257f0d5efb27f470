import numpy as np
import pytest
import torch

from echo.errors import ConfigError
from echo.models.masks import MaskCollator, MaskConfig, step_rng


def _runs(idx: np.ndarray) -> list[int]:
    """Lengths of the runs of consecutive integers in a sorted index list."""
    breaks = np.flatnonzero(np.diff(idx) != 1)
    edges = np.concatenate([[-1], breaks, [len(idx) - 1]])
    return np.diff(edges).tolist()


@pytest.mark.parametrize("n_tokens", [25, 100])
def test_masks_disjoint_in_bounds_and_stackable(n_tokens):
    cfg = MaskConfig()
    coll = MaskCollator(cfg, n_tokens, seed=1)
    n_tgt = round(cfg.target_ratio * n_tokens)
    n_ctx = round(cfg.context_ratio * (n_tokens - n_tgt))
    for step in range(20):
        m = coll(16, step)
        assert m.context.dtype == m.target.dtype == torch.int64
        # the same counts every step: tensors stack and shapes are static across steps
        assert m.target.shape == (16, n_tgt) and m.context.shape == (16, n_ctx)
        ctx, tgt = m.context.numpy(), m.target.numpy()
        assert ctx.min() >= 0 and tgt.min() >= 0 and ctx.max() < n_tokens and tgt.max() < n_tokens
        lengths = coll.block_lengths(step_rng(1, step, MaskCollator.STREAM))
        for c, t in zip(ctx, tgt):
            assert not set(c) & set(t)                               # disjoint
            assert len(set(t)) == n_tgt and (np.diff(t) > 0).all()   # no overlap, sorted
            assert (np.diff(c) > 0).all()
            # targets are at most num_targets contiguous spans (touching blocks merge), each run a
            # sum of some of this batch's block lengths
            runs = _runs(t)
            assert len(runs) <= cfg.num_targets and min(runs) >= lengths.min()
            # the context is one time span with the target blocks cut out
            span = set(range(c[0], c[-1] + 1))
            assert span - set(c) <= set(t)


def test_block_lengths_vary_per_batch_within_spread():
    cfg = MaskConfig(num_targets=4, target_ratio=0.6, block_spread=0.5)
    coll = MaskCollator(cfg, 100, seed=0)
    seen = set()
    for step in range(30):
        lengths = coll.block_lengths(step_rng(0, step, MaskCollator.STREAM))
        assert lengths.sum() == 60 and (lengths >= 1).all()
        assert lengths.min() >= 15 * 0.5 - 1 and lengths.max() <= 15 * 1.5 + 1
        seen.add(tuple(lengths))
    assert len(seen) > 10
    fixed = MaskCollator(MaskConfig(block_spread=0.0), 100).block_lengths(np.random.default_rng(0))
    assert fixed.tolist() == [15, 15, 15, 15]


def test_masks_depend_only_on_seed_and_step():
    a = MaskCollator(MaskConfig(), 100, seed=7)
    b = MaskCollator(MaskConfig(), 100, seed=7)
    for step in (0, 5, 5, 123):
        ma, mb = a(8, step), b(8, step)
        assert torch.equal(ma.context, mb.context) and torch.equal(ma.target, mb.target)
    assert not torch.equal(a(8, 1).target, a(8, 2).target)
    assert not torch.equal(a(8, 1).target, MaskCollator(MaskConfig(), 100, seed=8)(8, 1).target)
    # samples of one batch are masked differently
    m = a(8, 3)
    assert len({tuple(t.tolist()) for t in m.target}) > 1


def test_mask_config_validation():
    with pytest.raises(ConfigError, match="target_ratio"):
        MaskConfig(target_ratio=1.0)
    with pytest.raises(ConfigError, match="context_ratio"):
        MaskConfig(context_ratio=0.0)
    with pytest.raises(ConfigError, match="block_spread"):
        MaskConfig(block_spread=1.0)
    with pytest.raises(ConfigError, match="longer crops"):
        MaskCollator(MaskConfig(num_targets=4, target_ratio=0.9), 4)
