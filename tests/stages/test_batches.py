import numpy as np
import pytest
import torch

from echo.errors import CacheMismatchError, EchoError
from echo.errors import ConfigError
from echo.stages.batches import (CropSampler, LabelledFrames, SpecAugmentConfig, ctc_targets, dev_batches, mixture_indices,
                                  phone_lookup, spec_augment)

from tests.stages.helpers import build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def test_phone_lookup_drops_silence():
    inv, lookup = phone_lookup(["a", "b", "sil", "z"])
    assert inv.phones == ("a", "b", "z")
    assert lookup.tolist() == [1, 2, -1, 3]


def test_ctc_targets_collapse_then_drop_silence_and_unknown():
    _, lookup = phone_lookup(["a", "b", "sil"])  # a=1, b=2, sil dropped
    lab = np.array([2, 2, 0, 0, 0, 2, 0, -1, -1, 0, 1, 1, 2])
    # runs: sil a sil a -1 a b sil -> a a a b
    assert ctc_targets(lab, lookup) == [1, 1, 1, 2]
    assert ctc_targets(np.array([], np.int64), lookup) == []
    assert ctc_targets(np.array([-1, 2, 2]), lookup) == []


def test_crops_are_a_function_of_seed_and_step(world):
    data = LabelledFrames.from_cache(world["train"])
    a = CropSampler(data, 100, 6, seed=3, stream=7)
    b = CropSampler(data, 100, 6, seed=3, stream=7)
    x, y = a.batch(5), b.batch(5)
    for u, v in zip(x[:-1], y[:-1]):
        assert torch.equal(u, v)
    assert not torch.equal(a.batch(6).mels, x.mels)
    assert not torch.equal(CropSampler(data, 100, 6, seed=4, stream=7).batch(5).mels, x.mels)
    assert x.mels.shape == (6, int(x.lengths.max()), 80) and x.mels.dtype == torch.float32
    assert (x.lengths <= 100).all()
    assert set(x.speakers.tolist()) <= set(range(4))


def test_crop_content_labels_and_targets_match_the_cache(world):
    cache = world["train"]
    data = LabelledFrames.from_cache(cache)
    s = CropSampler(data, 60, 8, seed=0, stream=1)
    batch = s.batch(0)
    _, lookup = phone_lookup(cache.inventory)
    for i in range(8):
        row = int(batch.utt[i])
        utt = data.utt_ids[row]
        feats, labels = cache.get(utt), cache.labels(utt)
        n = int(batch.lengths[i])
        crop = batch.mels[i, :n].numpy()
        # find the crop inside the utterance (float16 storage)
        starts = [t for t in range(len(feats) - n + 1)
                  if np.allclose(feats[t:t + n].astype(np.float16).astype(np.float32), crop)]
        assert starts, utt
        t = starts[0]
        assert ctc_targets(labels[t:t + n], lookup) == batch.targets[i, :int(batch.target_lengths[i])].tolist()
        assert s.speakers[int(batch.speakers[i])] == cache.index.set_index("utt_id").loc[utt, "speaker"]
        assert (batch.mels[i, n:] == 0).all()


def test_dev_batches_cover_every_dev_speaker(world):
    data = LabelledFrames.from_cache(world["dev"])
    batches = dev_batches(data, max_utts=9, max_frames=150, batch_size=4)
    spk = torch.cat([b.speakers for b in batches])
    assert len(spk) == 9 and set(spk.tolist()) == {0, 1, 2}
    assert all(int(b.lengths.max()) <= 150 for b in batches)
    again = dev_batches(data, max_utts=9, max_frames=150, batch_size=4)
    assert all(torch.equal(a.mels, b.mels) for a, b in zip(batches, again))


def test_mixture_indices_distinct_and_deterministic():
    a = mixture_indices(10, 4, seed=0, step=3, stream=1)
    assert len(set(a.tolist())) == 4 and np.array_equal(a, mixture_indices(10, 4, 0, 3, 1))
    assert len(mixture_indices(3, 5, 0, 0, 1)) == 5


def test_noisy_crops_swap_frames_and_keep_labels(world):
    clean = LabelledFrames.from_cache(world["train"])
    noisy = LabelledFrames.from_cache(world["train_noisy"])
    assert not np.array_equal(noisy.frames, clean.frames)
    base = CropSampler(clean, 60, 8, seed=2, stream=1).batch(4)
    # noisy_prob 0 (or no copy) leaves the clean-only crops exactly as they were
    zero = CropSampler(clean, 60, 8, seed=2, stream=1, noisy=noisy, noisy_prob=0.0).batch(4)
    assert torch.equal(zero.mels, base.mels)
    full = CropSampler(clean, 60, 8, seed=2, stream=1, noisy=noisy, noisy_prob=1.0).batch(4)
    for u, v in zip(full[1:], base[1:]):  # same rows, starts, speakers and CTC targets
        assert torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v
    for i in range(8):
        n, row = int(full.lengths[i]), int(full.utt[i])
        crop = full.mels[i, :n].numpy()
        seg = noisy.frames[noisy.offsets[row]:noisy.offsets[row] + noisy.lengths[row]].astype(np.float32)
        assert any(np.array_equal(seg[t:t + n], crop) for t in range(len(seg) - n + 1))
        assert not np.array_equal(crop, base.mels[i, :n].numpy())
    half = CropSampler(clean, 60, 64, seed=2, stream=1, noisy=noisy, noisy_prob=0.5).batch(0)
    ref = CropSampler(clean, 60, 64, seed=2, stream=1).batch(0)
    swapped = np.mean([not torch.equal(half.mels[i], ref.mels[i]) for i in range(64)])
    assert 0.3 <= swapped <= 0.7


def test_noisy_copy_must_be_of_the_same_utterances(world):
    clean = LabelledFrames.from_cache(world["train"])
    dev = LabelledFrames.from_cache(world["dev"])
    with pytest.raises(CacheMismatchError, match="not a copy of the train cache"):
        CropSampler(clean, 60, 4, seed=0, stream=1, noisy=dev, noisy_prob=0.5)
    with pytest.raises(EchoError, match="noisy_prob > 0 needs the augmented copy"):
        CropSampler(clean, 60, 4, seed=0, stream=1, noisy_prob=0.5)


def test_spec_augment_masks_bands_and_spans_inside_each_crop():
    rng = np.random.default_rng(0)
    mels = rng.normal(size=(4, 50, 20)).astype(np.float32) + 10.0
    lengths = np.array([50, 30, 12, 50])
    mels[1, 30:] = mels[2, 12:] = 0.0  # padding
    fill = np.arange(20, dtype=np.float32)
    out = spec_augment(mels.copy(), lengths, fill, SpecAugmentConfig(1, 5, 0, 0), np.random.default_rng(1))
    for i, n in enumerate(lengths):
        masked = np.flatnonzero((out[i, :n] == fill).all(axis=0))  # whole bins set to their fill value
        assert masked.size <= 5
        if masked.size:  # one contiguous band
            assert np.array_equal(masked, np.arange(masked.min(), masked.max() + 1))
        assert (out[i, n:] == 0).all()  # padding untouched
        changed = np.flatnonzero((out[i, :n] != mels[i, :n]).any(axis=0))
        assert np.array_equal(changed, masked)
    out = spec_augment(mels.copy(), lengths, fill, SpecAugmentConfig(0, 0, 2, 8), np.random.default_rng(2))
    for i, n in enumerate(lengths):
        masked = np.flatnonzero((out[i] == fill).all(axis=1))
        assert masked.size <= 16 and (masked < n).all()
        assert np.array_equal(np.flatnonzero((out[i] != mels[i]).any(axis=1)), masked)
    # wide masks do reach their width: over many crops some span is 8 frames, none wider
    many = spec_augment(np.full((200, 50, 20), 10.0, np.float32), np.full(200, 50), fill,
                        SpecAugmentConfig(0, 0, 1, 8), np.random.default_rng(3))
    widths = [(m == fill).all(axis=1).sum() for m in many]
    assert max(widths) == 8 and min(widths) == 0


def test_spec_augment_config_needs_widths_with_masks():
    assert not SpecAugmentConfig().active and SpecAugmentConfig(time_masks=1, time_width=3).active
    with pytest.raises(ConfigError, match="freq_width"):
        SpecAugmentConfig(freq_masks=2)
    with pytest.raises(ConfigError, match="time_width"):
        SpecAugmentConfig(time_masks=1, time_width=0)


def test_sampler_masks_are_reproducible_and_leave_crops_and_targets_alone(world):
    data = LabelledFrames.from_cache(world["train"])
    fill = np.zeros(80, np.float32) - 3.0
    plain = CropSampler(data, 100, 6, seed=3, stream=7)
    cfg = SpecAugmentConfig(2, 10, 2, 10)
    a = CropSampler(data, 100, 6, seed=3, stream=7, spec_augment=cfg, fill=fill)
    b = CropSampler(data, 100, 6, seed=3, stream=7, spec_augment=cfg, fill=fill)
    x, y, p = a.batch(5), b.batch(5), plain.batch(5)
    assert torch.equal(x.mels, y.mels) and not torch.equal(x.mels, p.mels)
    for u, v in zip(x[1:-1], p[1:-1]):  # same crops, lengths, speakers, targets
        assert torch.equal(u, v)
    diff = x.mels != p.mels
    assert bool(((x.mels == -3.0) | ~diff).all())  # every change is a fill
    with pytest.raises(EchoError, match="fill value per mel bin"):
        CropSampler(data, 100, 6, seed=3, stream=7, spec_augment=cfg)
