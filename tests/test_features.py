import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from echo.errors import CacheMismatchError, EchoError
from echo.features import FeatureCache, FrontEnd, build_feature_cache, frame_labels


def _manifest(tmp_path, n=3):
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        x = (0.1 * rng.standard_normal(16000 + 1600 * i)).astype(np.float32)
        p = tmp_path / f"u{i}.flac"
        sf.write(p, x, 16000, subtype="PCM_16")
        rows.append(dict(utt_id=f"u{i}", speaker=f"s{i % 2}", abs_path=str(p), start=0, num_samples=len(x),
                         align_phone=["sil", "a", "sil"], align_start=[0, 4000, 12000],
                         align_end=[4000, 12000, len(x)]))
    return pd.DataFrame(rows)


def test_frontend_shape():
    fe = FrontEnd()
    f = fe.compute(np.zeros(16000, np.float32) + 1e-3)
    assert f.shape == (fe.num_frames(16000), 80) == (101, 80)


def test_frame_labels_follow_alignment():
    lab = frame_labels(["sil", "a", "b"], [0, 320, 800], [320, 800, 1600], 11, 160, ["a", "b", "sil"])
    # frame centres 0,160,...,1600: 0,160 -> sil; 320..640 -> a; 800..1440 -> b; 1600 outside
    assert lab.tolist() == [2, 2, 0, 0, 0, 1, 1, 1, 1, 1, -1]
    assert (frame_labels([], [], [], 5, 160, ["a"]) == -1).all()


def test_cache_roundtrip_and_mismatch(tmp_path):
    df = _manifest(tmp_path)
    fe = FrontEnd()
    cache = build_feature_cache(df, fe, tmp_path / "cache", ["a", "sil"], shard_frames=150)
    assert len(cache) == 3 and len(list((tmp_path / "cache").glob("feats-*.npy"))) >= 2
    from echo.audio import load

    direct = fe.compute(load(df.abs_path[2]))
    np.testing.assert_allclose(cache.get("u2"), direct, atol=0.02)  # float16 storage
    lab = cache.labels("u0")
    assert lab[30] == 0 and lab[0] == 1  # frame 30 = sample 4800 -> "a"
    feats, labs, offs, lens = cache.arrays()
    np.testing.assert_array_equal(feats[offs[1]:offs[1] + lens[1]], cache.get("u1").astype(np.float16))
    with pytest.raises(CacheMismatchError, match="hop_length=160"):
        FeatureCache(tmp_path / "cache", expected=FrontEnd(hop_length=200))


def test_cache_transform_is_applied_and_must_keep_the_length(tmp_path):
    x = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    sf.write(tmp_path / "a.flac", x, 16000, subtype="PCM_16")
    df = pd.DataFrame([dict(utt_id="u1", speaker="s", abs_path=str(tmp_path / "a.flac"), start=0, num_samples=8000,
                            align_phone=["a"], align_start=[0], align_end=[8000])])
    fe = FrontEnd()
    clean = build_feature_cache(df, fe, tmp_path / "clean", ["a", "sil"])
    loud = build_feature_cache(df, fe, tmp_path / "loud", ["a", "sil"], transform=lambda w, r: 4 * w)
    assert np.allclose(loud.get("u1") - clean.get("u1"), np.log(16.0), atol=0.02)  # power x16 in every bin
    assert np.array_equal(loud.labels("u1"), clean.labels("u1"))
    with pytest.raises(EchoError, match="the transform changed the length of u1"):
        build_feature_cache(df, fe, tmp_path / "short", ["a", "sil"], transform=lambda w, r: w[:100])
    assert not (tmp_path / "short").exists()  # nothing half-written left behind
