import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyannote.core import Annotation, Segment
from scipy.signal import correlate

from echo.corpus import manifest
from echo.errors import ConfigError, EchoError
from echo.simulate.conversations import (ConversationConfig, ConversationSet, overlap_ratio, plan_conversation,
                                         simulate_conversations)
from echo.simulate.rttm import annotation_from_intervals
from echo.simulate.utterances import UtterancePool

from tests.simulate.helpers import SR, build_corpus

SHORT = dict(min_duration_s=8.0, max_duration_s=14.0, shard_hours=0.01)  # a few shards per test set


def _digest(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target", [0.1, 0.3])
def test_achieved_overlap_within_two_points_on_300_recordings(corpus, target):
    cfg = ConversationConfig(overlap_ratio=target, **SHORT)
    pool = UtterancePool(manifest.read(corpus, "train"), int(cfg.min_pause_s * SR))
    over = speech = 0
    per_rec = []
    for i in range(300):
        plan = plan_conversation(pool, 2 + i % 3, cfg, np.random.default_rng(i))
        r, o, s = overlap_ratio(plan.intervals(), plan.num_samples)
        per_rec.append(r)
        over, speech = over + o, speech + s
        assert len({t.speaker for t in plan.turns}) == plan.k
        count = np.zeros(plan.num_samples + 1, np.int32)
        for iv in plan.intervals().values():
            iv = iv[np.argsort(iv[:, 0])]
            assert (iv[1:, 0] >= iv[:-1, 1]).all()  # nobody overlaps themselves
            np.add.at(count, iv[:, 0], 1)
            np.add.at(count, iv[:, 1], -1)
        assert np.cumsum(count).max() <= 2  # overlaps are between two speakers
        # only the first K turns (one per speaker) may push a recording past the maximum
        assert cfg.min_duration_s * 0.5 < plan.num_samples / SR <= cfg.max_duration_s or len(plan.turns) == plan.k
    assert abs(over / speech - target) < 0.02
    assert abs(np.mean(per_rec) - target) < 0.02
    # overlaps are not all alike: lengths spread over a wide range
    lengths = [t.overlap for i in range(20) for t in
               plan_conversation(pool, 3, cfg, np.random.default_rng(1000 + i)).turns if t.overlap > 0]
    assert np.percentile(lengths, 90) > 2 * np.percentile(lengths, 10)


def test_single_speaker_recordings_have_no_overlap(corpus):
    cfg = ConversationConfig(overlap_ratio=0.3, **SHORT)
    pool = UtterancePool(manifest.read(corpus, "train"), int(cfg.min_pause_s * SR))
    for i in range(10):
        plan = plan_conversation(pool, 1, cfg, np.random.default_rng(i))
        assert overlap_ratio(plan.intervals(), plan.num_samples)[0] == 0.0
        starts = [t.onset for t in plan.turns]
        ends = [t.onset + t.utt.num_samples for t in plan.turns]
        assert all(e <= s for e, s in zip(ends[:-1], starts[1:]))


@pytest.fixture(scope="module")
def clean_set(corpus, tmp_path_factory) -> Path:
    """Test split, K = 1..5, no noise and no reverb so silence is exact zeros."""
    cfg = ConversationConfig(snr_db=None, reverb_prob=0.0, overlap_ratio=0.2, **SHORT)
    out = tmp_path_factory.mktemp("conv") / "test"
    return simulate_conversations(manifest.read(corpus, "test"), cfg, out, k_values=(1, 2, 3, 4, 5), n_per_k=3)


def test_k_distribution_and_tables(clean_set):
    ds = ConversationSet(clean_set)
    assert ds.table["k"].value_counts().sort_index().to_dict() == {1: 3, 2: 3, 3: 3, 4: 3, 5: 3}
    assert set(ds.annotations) == set(ds.table["rec_id"])  # every recording has speech in the RTTM
    assert ds.table["shard"].nunique() < len(ds.table)  # sharded, not one file per recording
    stats = json.loads((clean_set / "stats.json").read_text())
    assert stats["k_histogram"] == {str(k): 3 for k in range(1, 6)}
    assert stats["hours"] == pytest.approx(ds.table["duration"].sum() / 3600)
    assert abs(stats["overlap_k2plus"]["achieved"] - 0.2) < 0.03
    assert (clean_set / "stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    turns = pd.read_parquet(clean_set / "turns.parquet")
    assert (turns.groupby("rec_id")["speaker"].nunique().reindex(ds.table["rec_id"]).to_numpy() == ds.table["k"]).all()


def test_rttm_round_trip_and_sample_level_agreement(clean_set, corpus):
    ds = ConversationSet(clean_set)
    turns = pd.read_parquet(clean_set / "turns.parquet")
    man = manifest.read(corpus, "test").set_index("utt_id")
    for i in range(len(ds)):
        item = ds[i]
        assert isinstance(item.annotation, Annotation)
        assert len(item.annotation.labels()) == item.k
        assert item.uem.extent() == Segment(0.0, round(len(item.audio) / SR, 3))
        # the reference rebuilt independently from the turn table + manifest alignment equals the file
        sub = turns[turns["rec_id"] == item.rec_id]
        iv = {}
        mask_by_spk = {}
        for t in sub.itertuples():
            row = man.loc[t.utt_id]
            m = np.zeros(int(row["num_samples"]), bool)
            for p, a, b in zip(row["align_phone"], row["align_start"], row["align_end"]):
                m[a:b] = p != "sil"
            m = m[row["speech_start"]:row["speech_end"]]
            full = mask_by_spk.setdefault(t.speaker, np.zeros(len(item.audio), bool))
            full[t.onset:t.onset + m.size] |= m
        for spk, m in mask_by_spk.items():
            edges = np.flatnonzero(np.diff(np.concatenate([[0], m.astype(np.int8), [0]])))
            iv[spk] = edges.reshape(-1, 2)
        expected = annotation_from_intervals(item.rec_id, iv)
        assert sorted(expected.labels()) == sorted(item.annotation.labels())
        for label in expected.labels():
            assert list(expected.label_timeline(label)) == list(item.annotation.label_timeline(label))
        # sample level: 10 ms frames with any non-zero sample are exactly the frames the RTTM calls speech
        frames = len(item.audio) // 160
        loud = np.abs(item.audio[:frames * 160].reshape(frames, 160)).max(axis=1) > 0
        ref = np.zeros(frames, bool)
        for seg in item.annotation.get_timeline().support():
            ref[int(round(seg.start * 100)):int(round(seg.end * 100))] = True
        edge = np.zeros(frames, bool)
        for seg in item.annotation.get_timeline().support():
            for t in (seg.start, seg.end):
                edge[max(0, int(t * 100) - 1):int(t * 100) + 2] = True
        assert (loud[~edge] == ref[~edge]).all(), item.rec_id
        # overlap measured by pyannote agrees with the table
        ann = item.annotation
        ov = ann.get_overlap().duration()
        sp = ann.get_timeline().support().duration()
        assert ov / sp == pytest.approx(ds.table.iloc[i]["achieved_overlap"], abs=2e-3)


def test_no_speaker_in_two_splits(corpus, tmp_path):
    cfg = ConversationConfig(**SHORT)
    tables = {}
    for split in ("train", "test"):
        df = manifest.read(corpus, split)
        d = simulate_conversations(df, cfg, tmp_path / split, k_values=(2, 4), n_per_k=2)
        tables[split] = pd.read_parquet(d / "recordings.parquet")
        used = {s for ss in tables[split]["speakers"] for s in ss}
        assert used <= set(df["speaker"])
    a, b = ({s for ss in t["speakers"] for s in ss} for t in tables.values())
    assert a and b and not a & b
    both = pd.concat([manifest.read(corpus, "train"), manifest.read(corpus, "test")])
    with pytest.raises(EchoError, match="exactly one split"):
        simulate_conversations(both, cfg, tmp_path / "mixed", k_values=(2,), n_per_k=1)
    with pytest.raises(EchoError, match="K values"):
        simulate_conversations(manifest.read(corpus, "train"), cfg, tmp_path / "big", k_values=(7,), n_per_k=1)


def test_same_seed_same_bytes_with_noise_and_reverb(corpus, tmp_path):
    cfg = ConversationConfig(reverb_prob=0.5, min_duration_s=4.0, max_duration_s=6.0, shard_hours=0.005)
    df = manifest.read(corpus, "train")
    a = _digest(simulate_conversations(df, cfg, tmp_path / "a", k_values=(1, 3), n_per_k=3))
    b = _digest(simulate_conversations(df.sample(frac=1.0, random_state=1), cfg, tmp_path / "b", k_values=(1, 3), n_per_k=3))
    assert a == b and len(a) >= 8
    tab = pd.read_parquet(tmp_path / "a" / "recordings.parquet")
    assert tab["reverb"].any() and tab["snr_db"].notna().all()
    c = _digest(simulate_conversations(df, ConversationConfig(**{**cfg.__dict__, "seed": 1}), tmp_path / "c",
                                       k_values=(1, 3), n_per_k=3))
    assert c["recordings.parquet"] != a["recordings.parquet"]


def test_manifest_without_alignment(tmp_path):
    path = build_corpus(tmp_path / "c", {"train": 3}, utts_per_speaker=4, alignment=False)
    d = simulate_conversations(manifest.read(path, "train"), ConversationConfig(**SHORT), tmp_path / "o",
                               k_values=(1, 2, 3), n_per_k=2)
    ds = ConversationSet(d)
    turns = pd.read_parquet(d / "turns.parquet")
    # without an alignment each utterance is one reference segment: its whole speech extent
    for i in range(len(ds)):
        ann, rec = ds[i].annotation, ds.table.iloc[i]["rec_id"]
        sub = turns[turns["rec_id"] == rec]
        assert len(list(ann.itertracks())) <= len(sub)  # touching turns of one speaker merge
        for spk, g in sub.groupby("speaker"):
            assert ann.label_duration(spk) == pytest.approx(g["num_samples"].sum() / SR, abs=1e-3 * len(g))


@pytest.mark.parametrize("bad, match", [
    (dict(overlap_ratio=0.9), "overlap_ratio"),
    (dict(min_duration_s=10.0, max_duration_s=5.0), "max_duration_s: expected >= min_duration_s"),
    (dict(beta_s=()), "beta_s"),
    (dict(snr_db=(30.0, 10.0)), "snr_db"),
    (dict(audio_format="wav"), "audio_format"),
    (dict(k_max=0), "k_max"),
])
def test_config_errors_name_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        ConversationConfig(**bad)


def test_config_from_yaml_like_mapping_round_trips(clean_set):
    stored = json.loads((clean_set / "config.json").read_text())["config"]
    cfg = ConversationConfig(**stored)  # lists and a nested mapping, as params.yaml gives them
    assert cfg == ConversationConfig(snr_db=None, reverb_prob=0.0, overlap_ratio=0.2, **SHORT)
    assert isinstance(cfg.room.rt60_s, tuple) and isinstance(cfg.beta_s, tuple)
    with pytest.raises(ConfigError, match=r"ConversationConfig.room: unknown key\(s\) \['rt60'\]"):
        ConversationConfig(room={"rt60": 0.3})


def test_channel_share_changes_only_the_chosen_recordings_and_keeps_their_reference(corpus, tmp_path):
    cfg = ConversationConfig(snr_db=None, reverb_prob=0.0, **SHORT)
    df = manifest.read(corpus, "train")
    plain = ConversationSet(simulate_conversations(df, cfg, tmp_path / "plain", k_values=(1, 2), n_per_k=4))
    moved = ConversationSet(simulate_conversations(df, cfg, tmp_path / "moved", k_values=(1, 2), n_per_k=4,
                                                   channel_prob=0.5, channels=("telephone", "gsm")))
    names = moved.table["channel"].tolist()
    assert set(names) <= {"", "telephone", "gsm"} and 0 < sum(map(bool, names)) < len(names)
    assert (plain.table["channel"] == "").all()
    for i in range(len(plain)):
        a, b = plain[i], moved[i]
        assert a.rec_id == b.rec_id and a.annotation == b.annotation and a.audio.shape == b.audio.shape
        if names[i]:
            assert not np.allclose(a.audio, b.audio, atol=1e-3)
            # the 8 kHz line keeps the speech where it was: correlation peaks at lag 0
            c = correlate(b.audio.astype(np.float64), a.audio.astype(np.float64), "full", method="fft")
            assert abs(int(np.argmax(c)) - (a.audio.size - 1)) <= 1
        else:  # the same recording as without channels: the channel draws use their own stream
            assert np.array_equal(a.audio, b.audio)
