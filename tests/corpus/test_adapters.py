"""Real-corpus adapters on tiny fixture trees with the real layouts, codecs and broken files."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from echo import audio
from echo.corpus import g2p, manifest
from echo.corpus.adapters import RealCorpusConfig, build_real_corpus, hash_split, scan_corpus, speech_extent
from echo.errors import ConfigError, EchoError

from tests.corpus import helpers as fx


VOX2_DEV = ["id00011", "id00012", "id00013", "id00014", "id00015"]
VOX2_TEST = ["id00021", "id00022"]


def _skip_warnings(caplog):
    return [r for r in caplog.records if r.levelno == logging.WARNING and "skipped" in r.getMessage()]


def _check_downstream(df: pd.DataFrame, broken: dict[str, Path]) -> None:
    """Every row decodes through echo.audio exactly as the manifest says; no broken file is listed."""
    paths = set(df["path"])
    for p in broken.values():
        assert str(p.resolve()) not in paths
    for row in df.itertuples():
        assert Path(row.path).is_absolute()
        sr, n = audio.info(row.path)
        assert (sr, n) == (row.sample_rate, row.num_samples)
        x = audio.read_segment(row.path, row.start, row.num_samples, audio.SAMPLE_RATE)
        assert 0 <= row.speech_start < row.speech_end <= len(x) + 1
        assert row.duration == pytest.approx(row.num_samples / row.sample_rate)


def _check_trim(df: pd.DataFrame, tol_s: float) -> None:
    # the fixture's speech burst spans [LEAD_S, LEAD_S + SPEECH_S) seconds
    start, end = fx.LEAD_S * fx.SR, (fx.LEAD_S + fx.SPEECH_S) * fx.SR
    assert np.all(np.abs(df["speech_start"] - start) <= tol_s * fx.SR), df["speech_start"].tolist()
    assert np.all(np.abs(df["speech_end"] - end) <= tol_s * fx.SR), df["speech_end"].tolist()


@pytest.mark.skipif(not fx.have_ffmpeg(), reason="ffmpeg CLI not found: cannot encode AAC/.m4a fixtures")
def test_voxceleb2_official_layout_splits_and_skips(tmp_path, caplog):
    root = tmp_path / "vox2"
    broken = fx.make_voxceleb(root, "voxceleb2", VOX2_DEV, VOX2_TEST)
    with caplog.at_level(logging.INFO, logger="echo.corpus.adapters"):
        df = build_real_corpus(RealCorpusConfig(source="voxceleb2", root=str(root), dev_fraction=0.2), tmp_path / "out")

    warns = _skip_warnings(caplog)
    assert len(warns) == 1 and "skipped 3 of" in warns[0].getMessage()
    skipped = pd.read_csv(tmp_path / "out" / "skipped.tsv", sep="\t")
    assert sorted(skipped["path"]) == sorted(str(p.resolve()) for p in broken.values())
    assert len(df) == (len(VOX2_DEV) + len(VOX2_TEST)) * 2
    assert set(df["source"]) == {"voxceleb2"} and (df["start"] == 0).all()
    assert (df["text"] == "").all() and (df["phonemes"] == "").all()

    spk_split = df.groupby("speaker")["split"].agg(set)
    assert all(len(s) == 1 for s in spk_split)  # speaker-disjoint
    test_spk = {s for s, v in spk_split.items() if v == {"test"}}
    assert test_spk == {f"vox2_{s}" for s in VOX2_TEST}  # official test speakers, and only them
    dev_spk = {s for s, v in spk_split.items() if v == {"dev"}}
    assert dev_spk and dev_spk.isdisjoint(test_spk) and len(dev_spk) < len(VOX2_DEV)
    for s in dev_spk | {s for s, v in spk_split.items() if v == {"train"}}:
        expect = hash_split(s.removeprefix("vox2_"), "echo", 0.2)
        assert expect == spk_split[s].copy().pop() or s in dev_spk  # hash rule (or the min-hash fallback)

    back = manifest.read(tmp_path / "out" / "manifest.parquet")
    assert list(back.columns[: len(manifest.COLUMNS)]) == list(manifest.COLUMNS)
    assert back["align_phone"].map(len).eq(0).all()
    _check_downstream(back, broken)
    _check_trim(back, tol_s=0.1)  # AAC adds encoder delay/padding


@pytest.mark.skipif(not fx.have_ffmpeg(), reason="ffmpeg CLI not found: cannot encode AAC/.m4a fixtures")
def test_voxceleb2_flat_layout_gets_hashed_test_split(tmp_path):
    root = tmp_path / "vox2flat"
    speakers = [f"id{n:05d}" for n in range(100, 112)]
    broken = fx.make_voxceleb(root, "voxceleb2", speakers, [], flat=True, utts=1)
    cfg = RealCorpusConfig(source="voxceleb2", root=str(root), dev_fraction=0.25, test_fraction=0.25)
    df, skipped = scan_corpus(cfg)
    assert len(skipped) == 3 and len(df) == len(speakers)
    assert set(df["split"]) == {"train", "dev", "test"}
    for row in df.itertuples():
        assert row.split == hash_split(row.speaker.removeprefix("vox2_"), "echo", 0.25, 0.25)
    _check_downstream(df, broken)


def test_voxceleb1_wav_official_test_ids_and_truncated_wav(tmp_path, caplog):
    root = tmp_path / "vox1"
    broken = fx.make_voxceleb(root / "wav", "voxceleb1", ["id10001", "id10002", "id10003"], [], flat=True)
    fx.make_voxceleb(root / "wav", "voxceleb1", ["id10270", "id10309"], [], flat=True, utts=1, broken=False)
    with caplog.at_level(logging.INFO, logger="echo.corpus.adapters"):
        df = build_real_corpus(RealCorpusConfig(source="voxceleb1", root=str(root)), tmp_path / "out")
    warns = _skip_warnings(caplog)
    assert len(warns) == 1 and "skipped 3 of" in warns[0].getMessage() and "truncated: 1" in warns[0].getMessage()
    # per-file details are at INFO, one line each
    assert sum(r.levelno == logging.INFO and r.getMessage().startswith("skip ") for r in caplog.records) == 3
    assert set(df.loc[df["split"] == "test", "speaker"]) == {"vox1_id10270", "vox1_id10309"}
    _check_downstream(df, broken)
    _check_trim(df, tol_s=0.03)


def test_librispeech_transcripts_phonemes_subset_splits(tmp_path, caplog):
    root = tmp_path / "LibriSpeech"
    subsets = {"train-clean-100": ["19", "26"], "train-other-500": ["27"], "dev-clean": ["84"], "test-clean": ["61"]}
    texts, broken = fx.make_librispeech(root, subsets)
    (root / "README.TXT").write_text("not a subset")
    with caplog.at_level(logging.INFO, logger="echo.corpus.adapters"):
        df = build_real_corpus(RealCorpusConfig(source="librispeech", root=str(tmp_path), workers=2),
                               tmp_path / "out")  # the LibriSpeech/ level is found by itself
    assert len(_skip_warnings(caplog)) == 1
    assert len(df) == len(texts)
    split_of = {"19": "train", "26": "train", "27": "train", "84": "dev", "61": "test"}
    for row in df.itertuples():
        utt = row.utt_id.removeprefix("ls_")
        assert row.text == texts[utt]
        assert row.speaker == f"ls_{utt.split('-')[0]}" and row.split == split_of[utt.split("-")[0]]
    if g2p.available_backend("auto") != "none":
        assert (df["phonemes"] != "").all()
        assert all("ˈ" not in p and "ˌ" not in p and p == " ".join(p.split()) for p in df["phonemes"])
        assert not any(any(c.isupper() for c in p) for p in df["phonemes"])  # IPA, not letters spelled out
        assert g2p.phonemize([texts[df["utt_id"][0].removeprefix("ls_")]])[0] == df["phonemes"][0]
    _check_downstream(df, broken)
    _check_trim(df, tol_s=0.03)


def test_librispeech_subset_mapping_and_selection(tmp_path):
    root = tmp_path / "ls"
    fx.make_librispeech(root, {"train-clean-100": ["19", "26"], "dev-clean": ["84"], "dev-other": ["85"]}, utts=1)
    cfg = RealCorpusConfig(source="librispeech", root=str(root), phonemes="none",
                           subset_splits={"train-*": "train", "dev-clean": "dev", "dev-other": "test"})
    df, _ = scan_corpus(cfg)
    assert dict(zip(df["speaker"], df["split"])) == {"ls_19": "train", "ls_26": "train", "ls_84": "dev", "ls_85": "test"}
    assert (df["phonemes"] == "").all() and (df["text"] != "").all()
    df2, _ = scan_corpus(RealCorpusConfig(source="librispeech", root=str(root), phonemes="none", subsets=("dev-clean",)))
    assert set(df2["speaker"]) == {"ls_84"}
    # root pointing at one subset directory
    df3, _ = scan_corpus(RealCorpusConfig(source="librispeech", root=str(root / "dev-other"), phonemes="none",
                                          subset_splits=(("dev-*", "dev"),)))
    assert set(df3["speaker"]) == {"ls_85"} and set(df3["split"]) == {"dev"}


def test_caps_are_deterministic_and_output_bytes_stable(tmp_path):
    root = tmp_path / "vox1"
    fx.make_voxceleb(root, "voxceleb1", [f"id1000{i}" for i in range(6)], [], flat=True, videos=2, utts=2)
    cfg = RealCorpusConfig(source="voxceleb1", root=str(root), max_speakers=2, max_utts_per_speaker=3,
                           dev_fraction=0.3, test_fraction=0.3)
    a = build_real_corpus(cfg, tmp_path / "a")
    b = build_real_corpus(cfg, tmp_path / "b")
    assert (tmp_path / "a" / "manifest.parquet").read_bytes() == (tmp_path / "b" / "manifest.parquet").read_bytes()
    assert a["speaker"].nunique() <= 2 * 3  # at most 2 per split
    assert a.groupby("split")["speaker"].nunique().max() <= 2
    assert a.groupby("speaker").size().max() <= 3
    full, _ = scan_corpus(RealCorpusConfig(source="voxceleb1", root=str(root), dev_fraction=0.3, test_fraction=0.3))
    assert set(a["utt_id"]) < set(full["utt_id"])
    # a capped speaker keeps the split it has in the full corpus
    full_split = dict(zip(full["speaker"], full["split"]))
    assert all(full_split[spk] == split for spk, split in zip(a["speaker"], a["split"]))


def test_hash_split_is_stable_and_follows_fractions():
    ids = [f"id{n:05d}" for n in range(4000)]
    splits = [hash_split(s, "echo", 0.1, 0.05) for s in ids]
    assert splits == [hash_split(s, "echo", 0.1, 0.05) for s in ids]
    frac = pd.Series(splits).value_counts(normalize=True)
    assert abs(frac["dev"] - 0.1) < 0.02 and abs(frac["test"] - 0.05) < 0.015
    assert [hash_split(s, "other", 0.1, 0.05) for s in ids] != splits


def test_speech_extent_and_silence():
    x = np.zeros(32000, dtype=np.float32)
    x[8000:24000] = 0.3 * np.sin(np.arange(16000) * 0.2)
    s0, s1 = speech_extent(x)
    assert abs(s0 - 8000) <= 400 and abs(s1 - 24000) <= 400
    assert speech_extent(np.full(16000, 1e-5, dtype=np.float32)) is None


def test_silent_file_is_skipped(tmp_path):
    root = tmp_path / "vox1"
    fx.make_voxceleb(root, "voxceleb1", ["id10001", "id10002"], [], flat=True, utts=1)
    silent = root / "id10002" / "vid0_X-02" / "00009.wav"
    sf.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    df, skipped = scan_corpus(RealCorpusConfig(source="voxceleb1", root=str(root)))
    assert str(silent.resolve()) in set(skipped["path"]) and str(silent.resolve()) not in set(df["path"])
    assert skipped.set_index("path").loc[str(silent.resolve()), "reason"].startswith("silent")


def test_bad_root_and_config_errors(tmp_path):
    with pytest.raises(EchoError, match="corpus root not found"):
        scan_corpus(RealCorpusConfig(source="voxceleb2", root=str(tmp_path / "missing")))
    (tmp_path / "empty" / "stuff").mkdir(parents=True)
    with pytest.raises(EchoError, match="does not look like voxceleb1") as e:
        scan_corpus(RealCorpusConfig(source="voxceleb1", root=str(tmp_path / "empty")))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="real_corpus.root"):
        scan_corpus(RealCorpusConfig(source="voxceleb1"))
    with pytest.raises(ConfigError, match="RealCorpusConfig.source"):
        RealCorpusConfig(source="timit", root="x")
    with pytest.raises(ConfigError, match="dev_fraction"):
        RealCorpusConfig(source="voxceleb2", root="x", dev_fraction=0.9)
    with pytest.raises(ConfigError, match="subset_splits"):
        RealCorpusConfig(source="librispeech", root="x", subset_splits={"train-*": "training"})
    with pytest.raises(ConfigError, match="max_speakers"):
        RealCorpusConfig(source="librispeech", root="x", max_speakers=0)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_g2p_backends_agree_and_strip_stress():
    texts = ["HELLO WORLD", "IT'S NINETEEN TWENTY, AND THEN. SO", ""]
    cli = g2p.phonemize(texts, backend="cli")
    assert cli[0] == "h ə l oʊ w ɜː l d" and cli[2] == ""
    if g2p.available_backend("library") == "library":
        assert g2p.phonemize(texts, backend="library") == cli
    assert g2p.phonemize(texts, backend="none") == ["", "", ""]
