import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from echo.corpus import manifest
from echo.errors import ConfigError, EchoError
from echo.simulate.mixtures import MixtureConfig, MixtureSet, make_mixture, simulate_mixtures
from echo.simulate.utterances import UtterancePool

from tests.simulate.helpers import SR, build_corpus

QUANT = 1 / 32768  # one 16-bit step


@pytest.fixture(scope="module")
def pool(corpus) -> UtterancePool:
    return UtterancePool(manifest.read(corpus, "train"), int(0.3 * SR))


def _digest(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("reverb", [0.0, 1.0])
def test_mixture_is_sum_of_sources_plus_noise_at_the_drawn_snr(pool, reverb):
    cfg = MixtureConfig(duration_s=2.0, reverb_prob=reverb, snr_db=(5.0, 15.0))
    for i in range(8):
        m = make_mixture(pool, 1 + i % 4, cfg, np.random.default_rng(i))
        assert m.sources.shape == (1 + i % 4, 2 * SR) and m.info["reverb"] == bool(reverb)
        np.testing.assert_allclose(m.mixture - m.noise, m.sources.sum(0), atol=1e-6)
        active = np.zeros(m.mixture.size, bool)
        for iv in m.intervals:
            for a, b in iv:
                active[a:b] = True
        speech = m.sources.sum(0)
        snr = 10 * np.log10(np.mean(speech[active] ** 2) / np.mean(m.noise ** 2))
        assert snr == pytest.approx(m.info["snr_db"], abs=0.05)
        assert np.abs(m.mixture).max() <= 0.9 + 1e-6 and np.abs(m.sources).max() <= 0.9 + 1e-6


def test_sources_active_exactly_on_their_shifted_alignment(pool):
    cfg = MixtureConfig(duration_s=2.0, snr_db=None, full_overlap_prob=0.5)
    modes = set()
    for i in range(12):
        m = make_mixture(pool, 1 + i % 4, cfg, np.random.default_rng(i))
        modes.add(m.mode)
        assert len(set(m.speakers)) == len(m.speakers)
        for j in range(len(m.speakers)):
            s = m.sources[j]
            on, ln = m.onsets[j], m.lengths[j]
            assert not s[:on].any() and not s[on + ln:].any()
            u = next(x for x in pool.utterances if x.utt_id == m.utt_ids[j]).num_samples
            if m.mode == "full":
                assert ln == min(u, s.size)
            else:
                assert min(u, int(cfg.min_active_s * SR)) <= ln <= min(u, s.size)
            speech = np.zeros(s.size, bool)
            for p, a, b in zip(m.phones[j], m.phone_start[j], m.phone_end[j]):
                assert on <= a < b <= on + ln
                speech[a:b] |= p != "sil"
            # the fixture's silence is exact zeros and its bursts never are
            frames = s.size // 160
            loud = np.abs(s[:frames * 160]).reshape(frames, 160).max(1) > 0
            lab = speech[:frames * 160].reshape(frames, 160)
            assert (loud[lab.all(1)]).all() and not loud[~lab.any(1)].any()
    assert modes == {"full", "partial"}


@pytest.fixture(scope="module")
def mix_dir(corpus, tmp_path_factory) -> Path:
    cfg = MixtureConfig(duration_s=1.5, n_per_k=6, snr_db=None, shard_hours=0.002)
    return simulate_mixtures(manifest.read(corpus, "train"), cfg, tmp_path_factory.mktemp("mix") / "train")


def test_written_mixtures_read_back(mix_dir, corpus):
    ds = MixtureSet(mix_dir)
    assert ds.table["k"].value_counts().sort_index().to_dict() == {1: 6, 2: 6, 3: 6, 4: 6}
    assert json.loads((mix_dir / "stats.json").read_text())["k_histogram"] == {"1": 6, "2": 6, "3": 6, "4": 6}
    assert 1 < ds.table["shard"].nunique() < len(ds)
    train_speakers = set(manifest.read(corpus, "train")["speaker"])
    for i in range(len(ds)):
        item = ds[i]
        k = int(ds.table.iloc[i]["k"])
        assert item.sources.shape == (k, item.mixture.size) and len(item.alignments) == k
        assert set(item.speakers) <= train_speakers and len(set(item.speakers)) == k
        # no noise: the stored mixture is the sum of the stored sources up to 16-bit rounding
        np.testing.assert_allclose(item.mixture, item.sources.sum(0), atol=(k + 1) * QUANT)
        for j, (phones, start, end) in enumerate(item.alignments):
            assert len(phones) == len(start) == len(end)
            if len(start):
                assert start.min() >= 0 and end.max() <= item.mixture.size
                speech = np.zeros(item.mixture.size, bool)
                for p, a, b in zip(phones, start, end):
                    speech[a:b] |= p != "sil"
                assert np.abs(item.sources[j][speech]).max() > 0.01
                assert not (~speech).any() or np.abs(item.sources[j][~speech]).max() <= QUANT


def test_same_seed_same_bytes_other_split_other_speakers(corpus, tmp_path):
    cfg = MixtureConfig(duration_s=1.0, n_per_k=3, reverb_prob=0.5, shard_hours=0.002)
    df = manifest.read(corpus, "train")
    a = _digest(simulate_mixtures(df, cfg, tmp_path / "a"))
    b = _digest(simulate_mixtures(df.iloc[::-1], cfg, tmp_path / "b"))
    assert a == b and any(k.startswith("audio/") for k in a)
    assert pd.read_parquet(tmp_path / "a" / "mixtures.parquet")["reverb"].any()
    test = simulate_mixtures(manifest.read(corpus, "test"), cfg, tmp_path / "t", k_values=(1, 5), n_per_k=2)
    t = pd.read_parquet(test / "sources.parquet")
    assert not set(t["speaker"]) & set(df["speaker"])
    assert pd.read_parquet(test / "mixtures.parquet")["k"].tolist() == [1, 1, 5, 5]


def test_npy_shards_and_empty_alignment(tmp_path):
    path = build_corpus(tmp_path / "c", {"dev": 3}, utts_per_speaker=3, alignment=False)
    cfg = MixtureConfig(duration_s=1.0, n_per_k=2, snr_db=None, audio_format="npy")
    d = simulate_mixtures(manifest.read(path, "dev"), cfg, tmp_path / "o", k_values=(2, 3))
    ds = MixtureSet(d)
    assert all(p.suffix == ".npy" for p in (d / "audio").iterdir())
    item = ds[3]
    assert item.sources.shape[0] == 3 and all(len(a[0]) == 0 for a in item.alignments)
    np.testing.assert_allclose(item.mixture, item.sources.sum(0), atol=4 * QUANT)


def test_errors(corpus, tmp_path):
    with pytest.raises(ConfigError, match="MixtureConfig.full_overlap_prob"):
        MixtureConfig(full_overlap_prob=1.5)
    with pytest.raises(ConfigError, match="MixtureConfig.min_active_s"):
        MixtureConfig(duration_s=2.0, min_active_s=3.0)
    with pytest.raises(EchoError, match="K values"):
        simulate_mixtures(manifest.read(corpus, "test"), MixtureConfig(), tmp_path / "x", k_values=(9,))
