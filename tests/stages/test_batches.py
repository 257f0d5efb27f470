import numpy as np
import pytest
import torch

from echo.errors import CacheMismatchError, EchoError
from echo.stages.batches import CropSampler, LabelledFrames, ctc_targets, dev_batches, mixture_indices, phone_lookup

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
