"""Real recorded voices (echo.corpus.real_voices), read from the installed Debian packages: the adapter on
real files (WAV, raw GSM through FFmpeg, Vorbis dialogue by role), speaker-disjoint dev and evaluation
voices, the reserved packages refused, the energy segmentation measured on a constructed signal."""
import json

import numpy as np
import pytest
import soundfile as sf

from echo.corpus import manifest
from echo.corpus import real_voices as rv
from echo.errors import EchoError

SR = 16_000


def test_voices_are_speaker_disjoint_and_never_reserved():
    split_of = {}
    for v in rv.VOICES:
        assert v.split in ("dev", "test")
        assert split_of.setdefault(v.speaker, v.split) == v.split
        assert not any(v.package.startswith(r) for r in rv.RESERVED)
    dev = {(v.package, v.role) for v in rv.VOICES if v.split == "dev"}
    test = {(v.package, v.role) for v in rv.VOICES if v.split == "test"}
    assert not dev & test  # a recording source (package and role) belongs to one split
    # one voice per (package, role): no person is counted twice
    assert len({(v.package, v.role) for v in rv.VOICES}) == len(rv.VOICES)
    assert len({v.speaker for v in rv.VOICES if v.split == "test"}) >= 4  # K up to 4 in the evaluation set


@pytest.mark.parametrize("pkg", ["asterisk-core-sounds-en-wav", "asterisk-core-sounds-es", "asterisk-core-sounds-fr-gsm"])
def test_reserved_packages_are_refused(pkg):
    with pytest.raises(EchoError, match=rf"^{pkg}: reserved for an outside evaluation"):
        rv.package_files(pkg)


def test_a_missing_package_is_named_in_one_line():
    with pytest.raises(EchoError, match=r"^Debian package 'no-such-voice-pkg' is not installed .*install.sh"):
        rv.package_files("no-such-voice-pkg")


def test_speech_segments_find_the_bursts_and_tile_the_signal():
    rng = np.random.default_rng(0)
    x = np.zeros(3 * SR, np.float32)
    x[int(0.5 * SR):int(1.2 * SR)] = 0.2 * rng.standard_normal(int(0.7 * SR))
    x[int(1.8 * SR):int(2.5 * SR)] = 0.05 * rng.standard_normal(int(0.7 * SR))  # 12 dB quieter: still speech
    x += 1e-5 * rng.standard_normal(x.size).astype(np.float32)  # a recording's noise floor
    segs = rv.speech_segments(x)
    assert segs[0][1] == 0 and segs[-1][2] == x.size
    assert all(a[2] == b[1] for a, b in zip(segs, segs[1:]))  # contiguous
    speech = [(a / SR, b / SR) for lab, a, b in segs if lab == rv.SPEECH]
    assert len(speech) == 2
    for (a, b), (ra, rb) in zip(speech, [(0.5, 1.2), (1.8, 2.5)]):
        assert abs(a - ra) <= 0.011 and abs(b - rb) <= 0.011
    # a pause shorter than min_gap_s is bridged
    y = x.copy()
    y[int(1.2 * SR):int(1.8 * SR)] = 0.2 * rng.standard_normal(int(0.6 * SR))
    y[int(1.40 * SR):int(1.50 * SR)] = 0.0
    assert len([s for s in rv.speech_segments(y) if s[0] == rv.SPEECH]) == 1


def test_build_reads_every_voice_from_its_own_package(tmp_path):
    df = rv.build_real_voices(tmp_path / "rv", rv.RealVoicesConfig(max_utts_per_voice=3))
    df = manifest.validate(df)
    assert sorted(df["speaker"].unique()) == sorted(v.speaker for v in rv.VOICES)
    assert (df.groupby("speaker").size() == 3).all()
    by_speaker = {v.speaker: v for v in rv.VOICES}
    for row in df.itertuples():
        v = by_speaker[row.speaker]
        assert row.split == v.split
        assert row.origin in rv.package_files(v.package)  # exactly that package's file
        assert row.speech_end > row.speech_start and row.align_phone.count(rv.SPEECH) >= 1
        assert row.align_start[0] == 0 and row.align_end[-1] == row.num_samples
    assert df.loc[df["speaker"] == "real-es-co", "origin"].str.endswith(".gsm").all()  # decoded through FFmpeg
    assert df.loc[df["speaker"] == "real-nl-fish-big", "origin"].str.endswith(".ogg").all()
    for spk, g in df.groupby("speaker"):
        audio, sr = sf.read(tmp_path / "rv" / g["path"].iloc[0], dtype="float32")
        assert sr == SR and audio.size == g["num_samples"].sum()
        seg = audio[g["start"].iloc[1]: g["start"].iloc[1] + g["num_samples"].iloc[1]]
        assert np.abs(seg).max() > 0.01  # real speech, not silence
    sources = json.loads((tmp_path / "rv" / "sources.json").read_text())
    assert {s["speaker"]: s["licence"] for s in sources} == {v.speaker: v.licence for v in rv.VOICES}
