import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from echo.errors import EchoError
from echo.models.masks import MaskCollator, MaskConfig
from echo.train.loader import CropLoader, FeatureArrays

from tests.train.helpers import tiny_arrays


def test_crops_stay_inside_one_utterance_and_match_the_array():
    data = tiny_arrays(n_utts=10)
    loader = CropLoader(data, crop_frames=60, batch_size=32, seed=3)
    ends = data.offsets + data.lengths
    for step in range(5):
        starts = loader.crop_starts(step)
        b = loader.batch(step)
        assert b.mels.shape == (32, 60, 16) and b.mels.dtype == torch.float16 and b.step == step
        u = np.searchsorted(data.offsets, starts, side="right") - 1
        assert (starts >= data.offsets[u]).all() and (starts + 60 <= ends[u]).all()
        for i in (0, 31):
            assert np.array_equal(b.mels[i].numpy(), data.frames[starts[i]:starts[i] + 60])


def test_short_utterances_are_skipped_and_all_long_ones_are_used():
    data = tiny_arrays(n_utts=10)
    data.lengths[:3] = 20  # pretend the first three are short (crops would spill over)
    loader = CropLoader(data, crop_frames=60, batch_size=64, seed=0)
    seen = set()
    for step in range(20):
        seen |= set((np.searchsorted(data.offsets, loader.crop_starts(step), side="right") - 1).tolist())
    assert seen == set(range(3, 10))
    with pytest.raises(EchoError, match="shorter pretrain.crop_frames"):
        CropLoader(data, crop_frames=10_000, batch_size=2)


def test_deterministic_by_step_and_sharded_by_rank():
    data = tiny_arrays()
    masks = MaskCollator(MaskConfig(), 12, seed=0)
    whole = CropLoader(data, 48, batch_size=8, masks=masks, seed=5)
    ranks = [CropLoader(data, 48, batch_size=4, masks=masks, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for step in (0, 7):
        full = whole.batch(step)
        parts = [r.batch(step) for r in ranks]
        # the ranks' slices concatenate to the single-process global batch, crops and masks alike
        assert torch.equal(torch.cat([p.mels for p in parts]), full.mels)
        assert torch.equal(torch.cat([p.masks.context for p in parts]), full.masks.context)
        assert torch.equal(torch.cat([p.masks.target for p in parts]), full.masks.target)
        assert not torch.equal(parts[0].mels, parts[1].mels)
    assert torch.equal(whole.batch(3).mels, CropLoader(data, 48, 8, seed=5).batch(3).mels)
    assert not torch.equal(whole.batch(3).mels, whole.batch(4).mels)


def test_iterate_prefetches_the_same_batches():
    data = tiny_arrays()
    loader = CropLoader(data, 48, batch_size=4, masks=MaskCollator(MaskConfig(), 12), seed=1, prefetch=2)
    got = list(loader.iterate(3, 9))
    assert [b.step for b in got] == list(range(3, 9))
    for b in got:
        assert torch.equal(b.mels, loader.batch(b.step).mels)
    it = loader.iterate(0, 1000)  # abandoning an iterator must not hang
    next(it)
    it.close()


def test_from_real_feature_cache(tmp_path):
    from echo.features import FrontEnd, build_feature_cache

    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        x = (0.1 * rng.standard_normal(16000 + 3200 * i)).astype(np.float32)
        sf.write(tmp_path / f"u{i}.flac", x, 16000, subtype="PCM_16")
        rows.append(dict(utt_id=f"u{i}", speaker="s0", abs_path=str(tmp_path / f"u{i}.flac"), start=0,
                         num_samples=len(x), align_phone=[], align_start=[], align_end=[]))
    cache = build_feature_cache(pd.DataFrame(rows), FrontEnd(), tmp_path / "cache", ["sil"], shard_frames=150)
    data = FeatureArrays.from_cache(cache)
    assert data.frames.shape == (int(cache.index.num_frames.sum()), 80) and data.mean.shape == (80,)
    b = CropLoader(data, 100, batch_size=4, seed=0).batch(0)
    assert b.mels.shape == (4, 100, 80)
    u2 = cache.get("u2")
    start = int(data.offsets[2])
    np.testing.assert_array_equal(data.frames[start:start + len(u2)], u2.astype(np.float16))
