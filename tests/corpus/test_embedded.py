"""The embedded espeak-ng corpus: byte determinism, splits, alignment/audio agreement, session colours, statistics."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from echo.audio import info, read_segment
from echo.corpus import manifest
from echo.corpus.embedded import EmbeddedCorpusConfig, build_embedded_corpus, check_alignment
from echo.corpus.espeak import espeak_available
from echo.corpus.manifest import SILENCE
from echo.corpus.stats import corpus_stats
from echo.errors import ConfigError, EchoError

pytestmark = pytest.mark.skipif(not espeak_available(), reason="libespeak-ng not installed")

TINY = EmbeddedCorpusConfig(seed=7, n_train_speakers=3, n_dev_speakers=1, n_test_speakers=1, utts_per_speaker=2,
                            processes=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("embedded") / "corpus"
    build_embedded_corpus(TINY, out)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != "config.json"}


def test_same_seed_gives_identical_bytes_whatever_the_process_count(corpus, tmp_path):
    again = tmp_path / "again"
    build_embedded_corpus(replace(TINY, processes=2), again)
    a, b = _files(corpus), _files(again)
    assert sorted(a) == sorted(b)
    assert "manifest.parquet" in a and sum(k.endswith(".flac") for k in a) == 5
    for name in a:
        assert a[name] == b[name], name


def test_other_seed_gives_other_corpus(corpus, tmp_path):
    other = tmp_path / "other"
    df = build_embedded_corpus(replace(TINY, seed=8, n_train_speakers=1, n_dev_speakers=0, n_test_speakers=0,
                                       utts_per_speaker=1), other)
    ref = manifest.read(corpus / "manifest.parquet")
    assert df["text"].iloc[0] not in set(ref["text"])


def test_manifest_layout_and_speaker_disjoint_splits(corpus):
    df = manifest.read(corpus / "manifest.parquet")
    assert len(df) == 10 and df["utt_id"].is_unique
    assert (df["source"] == "embedded").all() and (df["sample_rate"] == 16000).all()
    per_split = df.groupby("split")["speaker"].nunique().to_dict()
    assert per_split == {"train": 3, "dev": 1, "test": 1}
    train, test = set(df.loc[df.split == "train", "speaker"]), set(df.loc[df.split == "test", "speaker"])
    assert not train & test
    assert df["text"].is_unique  # no sentence is shared, so test sentences are unseen too
    for col, dtype in manifest.COLUMNS.items():
        if dtype != "object":  # text columns read back as object or pandas' str dtype
            assert str(df[col].dtype) == dtype, col
    assert all(isinstance(v, str) for v in df["phonemes"])
    assert all(isinstance(v, (int, np.integer)) for v in df["align_start"].iloc[0])
    # utterances lie back to back in one 16 kHz FLAC shard per speaker
    for spk, part in df.groupby("speaker"):
        assert part["path"].nunique() == 1
        sr, frames = info(part["abs_path"].iloc[0])
        assert sr == 16000 and frames == part["num_samples"].sum()
        assert list(part["start"]) == [0] + list(np.cumsum(part["num_samples"])[:-1])
    assert np.allclose(df["duration"], df["num_samples"] / 16000)


def test_alignment_tiles_audio_and_matches_its_energy(corpus):
    df = manifest.read(corpus / "manifest.parquet")
    for r in df.itertuples():
        segs = list(zip(r.align_phone, r.align_start, r.align_end))
        check_alignment(segs, r.num_samples, r.utt_id)  # starts at 0, no gaps, ends at num_samples
        speech = [(p, s, e) for p, s, e in segs if p != SILENCE]
        assert (r.speech_start, r.speech_end) == (speech[0][1], speech[-1][2])
        assert r.phonemes == " ".join(p for p, _, _ in speech)
        assert segs[0][0] == SILENCE and segs[-1][0] == SILENCE  # padding at both ends
        x = read_segment(r.abs_path, r.start, r.num_samples).astype(np.float64)
        assert x.size == r.num_samples

        def db(s, e):
            return 10 * np.log10(np.mean(x[s:e] ** 2) + 1e-12)

        speech_db = 10 * np.log10(np.mean(np.concatenate([x[s:e] ** 2 for _, s, e in speech])))
        lead, trail = segs[0], segs[-1]
        assert speech_db > db(lead[1], lead[2]) + 20, r.utt_id
        assert speech_db > db(trail[1], trail[2]) + 20, r.utt_id
        # and the silence really is at the edges: the 50 ms just inside the speech is louder
        assert db(r.speech_start, r.speech_start + 2000) > db(lead[1], lead[2]) + 10, r.utt_id


def test_train_speakers_have_a_colour_per_session_and_dev_test_do_not_change(corpus, tmp_path):
    df = manifest.read(corpus / "manifest.parquet")
    sessions = {s["speaker"]: s["sessions"] for s in json.loads((corpus / "speakers.json").read_text())}
    for spk, part in df.groupby("speaker"):
        colours = sessions[spk]
        split = part["split"].iloc[0]
        assert len(colours) == (2 if split == "train" else 1), spk  # min(train_sessions=4, 2 utterances)
        if split == "train":
            assert colours[0]["level_db"] != colours[1]["level_db"]
            assert colours[0]["lowpass_hz"] != colours[1]["lowpass_hz"]
        for k, r in enumerate(part.sort_values("utt_id").itertuples()):
            # measured: each utterance's speech level is its own session's level, not the speaker's
            colour = colours[k * len(colours) // len(part)]
            x = read_segment(r.abs_path, r.start, r.num_samples).astype(np.float64)
            if np.abs(x).max() >= 0.96:  # rescaled to keep the FLAC from clipping: level not kept
                continue
            level = 10 * np.log10(np.mean(x[r.speech_start:r.speech_end] ** 2))
            assert level == pytest.approx(colour["level_db"], abs=0.3), r.utt_id
    # one session per train speaker: dev and test audio are byte for byte what they were
    one = tmp_path / "one"
    build_embedded_corpus(replace(TINY, train_sessions=1), one)
    a, b = _files(corpus), _files(one)
    for spk, split in df.groupby("speaker")["split"].first().items():
        name = f"audio/{spk}.flac"
        assert (a[name] == b[name]) == (split != "train"), (spk, split)


def test_alignment_check_rejects_bad_segments():
    good = [(SILENCE, 0, 10), ("a", 10, 20), (SILENCE, 20, 30)]
    check_alignment(good, 30, "x")
    with pytest.raises(EchoError, match="ends at"):
        check_alignment(good, 31, "x")
    with pytest.raises(EchoError, match="gap"):
        check_alignment([(SILENCE, 0, 10), ("a", 12, 30)], 30, "x")
    with pytest.raises(EchoError, match="no speech"):
        check_alignment([(SILENCE, 0, 30)], 30, "x")


def test_corpus_stats(corpus):
    df = manifest.read(corpus / "manifest.parquet")
    st = corpus_stats(df)
    assert st["utterances"] == 10 and st["speakers"] == 5
    assert st["splits"]["train"] == {"speakers": 3, "utterances": 6, "hours": pytest.approx(
        df.loc[df.split == "train", "duration"].sum() / 3600)}
    assert st["aligned_share"] == 1.0 and 0.5 < st["speech_phone_share"] < 1.0
    assert st["phone_inventory"] == sorted({p for ps in df["align_phone"] for p in ps} - {SILENCE})
    assert st["phone_inventory_size"] > 20
    assert st["mean_utterance_s"] == pytest.approx(df["duration"].mean())
    # a real corpus: no alignments, phonemes may be unknown
    real = df.copy()
    real["align_phone"] = [[] for _ in range(len(real))]
    real["align_start"] = [[] for _ in range(len(real))]
    real["align_end"] = [[] for _ in range(len(real))]
    real.loc[real.index[5:], "phonemes"] = ""
    st2 = corpus_stats(real)
    assert st2["aligned_share"] == 0.0 and st2["speech_phone_share"] == 0.0
    assert set(st2["phone_inventory"]) <= set(st["phone_inventory"]) and st2["phone_inventory_size"] > 10


def test_config_validation():
    with pytest.raises(ConfigError, match="n_train_speakers"):
        EmbeddedCorpusConfig(n_train_speakers=0)
    with pytest.raises(ConfigError, match="max_words"):
        EmbeddedCorpusConfig(min_words=10, max_words=5)
    with pytest.raises(ConfigError, match="processes"):
        EmbeddedCorpusConfig(processes=0)
    with pytest.raises(ConfigError, match="train_sessions"):
        EmbeddedCorpusConfig(train_sessions=0)
    assert EmbeddedCorpusConfig().n_speakers == 240
