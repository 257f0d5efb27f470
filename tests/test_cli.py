"""The inference CLI, run for real on a tiny randomly initialised bundle and real audio files."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from echo import audio
from echo.cli import DEFAULT_MODEL, main
from echo.diarization.diarizer import MODEL_FILES, Diarizer, DiarizerConfig
from echo.diarization.segments import WindowConfig, sliding_windows
from echo.metrics.der import format_rttm, read_rttm
from echo.models.bundle import EchoModel
from tests.helpers import E, talk, tiny_diarizer

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg CLI not installed")


def _bundle(path):
    """The deployable folder (bundle + plda.npz + diarizer.json + the separator), as the workflow writes it."""
    tiny_diarizer().save(path)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    bundle = _bundle(root / "bundle")
    files = {}
    x = talk()
    files["wav"] = root / "talk.wav"
    sf.write(files["wav"], np.stack([x, 0.5 * x], 1), 16000)
    x44 = audio.resample(x, 16000, 44100)
    files["wav44"] = root / "stereo44.wav"
    sf.write(files["wav44"], np.stack([x44, x44], 1), 44100)
    files["flac"] = root / "talk2.flac"
    sf.write(files["flac"], talk(seed=1), 16000, subtype="PCM_16")
    if shutil.which("ffmpeg"):
        for ext, codec in ((".mp3", "libmp3lame"), (".m4a", "aac")):
            files[ext[1:]] = root / f"talk{ext}"
            subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(files["wav44"]), "-c:a", codec,
                            str(files[ext[1:]])], check=True)
    return root, bundle, files


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _error_line(err):
    lines = [l for l in err.splitlines() if l.startswith("echo: error:")]
    assert len(lines) == 1, err
    return lines[0]


# -- diarize ---------------------------------------------------------------------------------------
def test_diarize_writes_what_the_pretrained_diarizer_gives(env, capsys, tmp_path):
    root, bundle, files = env
    out = tmp_path / "talk.rttm"
    rc, _, err = run(["diarize", files["wav"], "--rttm", out, "--checkpoint", bundle, "--device", "cpu"], capsys)
    assert rc == 0, err
    # Diarizer.from_pretrained on the same folder and audio (decoded whole, not streamed): same bytes
    d = Diarizer.from_pretrained(bundle)
    assert d.config == DiarizerConfig(segment_s=2.0, segment_step_s=1.0)  # the folder's settings, not the defaults
    res = d(audio.load(files["wav"]), uri="talk")
    expected = format_rttm({"talk": res.speaker_diarization})
    assert expected and out.read_text() == expected
    assert set(read_rttm(out)) == {"talk"}


def test_diarize_oracle_k_and_exclusive(env, capsys, tmp_path):
    root, bundle, files = env
    out = tmp_path / "k2.rttm"
    rc, _, err = run(["diarize", files["wav"], "--rttm", out, "--checkpoint", bundle, "--num-speakers", "2",
                      "--exclusive"], capsys)
    assert rc == 0, err
    ann = read_rttm(out)["talk"]
    # exactly 2, or fewer with the stated reason
    assert len(ann.labels()) == 2 or "echo: warning: diarize talk: 2 speakers requested" in err, err
    assert not list(ann.get_overlap()), "exclusive output overlaps"


@pytest.mark.parametrize("kind", ["wav44", "flac", pytest.param("mp3", marks=needs_ffmpeg),
                                  pytest.param("m4a", marks=needs_ffmpeg)])
def test_diarize_formats_to_stdout(env, capsys, kind):
    root, bundle, files = env
    rc, out, err = run(["diarize", files[kind], "--checkpoint", bundle], capsys)
    assert rc == 0, err
    uri = files[kind].stem
    lines = out.splitlines()
    assert lines and all(l.startswith(f"SPEAKER {uri} 1 ") for l in lines)
    end = max(float(l.split()[3]) + float(l.split()[4]) for l in lines)
    assert 4.0 < end <= 6.2  # the 6 s recording, whatever its rate and container


def test_out_dir_one_rttm_per_input(env, capsys, tmp_path):
    root, bundle, files = env
    rc, _, err = run(["diarize", files["wav"], files["flac"], "--out-dir", tmp_path / "o", "--checkpoint", bundle],
                     capsys)
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["talk.json", "talk.rttm", "talk2.json", "talk2.rttm"]
    assert set(read_rttm(tmp_path / "o" / "talk2.rttm")) == {"talk2"}


def test_silent_audio_gives_empty_valid_rttm(env, capsys, tmp_path):
    root, bundle, files = env
    p = tmp_path / "quiet.wav"
    sf.write(p, np.zeros(16000 * 3, np.float32), 16000)
    out = tmp_path / "quiet.rttm"
    rc, _, err = run(["diarize", p, "--rttm", out, "--checkpoint", bundle], capsys)
    assert rc == 0, err
    assert out.exists() and out.read_text() == "" and read_rttm(out) == {}
    assert "silent" in err and "error" not in err


def _make_bad(kind, d):
    p = d / f"{kind}.wav"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "not-audio":
        p.write_text("SPEAKER rec 1 0.0 1.0 <NA> <NA> a <NA> <NA>\n" * 20)
    elif kind in ("truncated-wav", "truncated-flac"):
        p = p.with_suffix(".wav" if kind.endswith("wav") else ".flac")
        sf.write(p, talk(4.0), 16000, subtype="PCM_16")
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "truncated-mp3":
        wav = d / "full.wav"
        sf.write(wav, talk(4.0), 16000)
        p = d / "cut.mp3"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), str(p)], check=True)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind in ("nan", "inf"):
        x = talk(2.0)
        x[3000] = np.nan if kind == "nan" else np.inf
        sf.write(p, x, 16000, subtype="FLOAT")
    elif kind == "directory":
        p.mkdir()
    # "missing": nothing
    return p


BAD = {"empty": "empty file", "not-audio": "not a readable audio file", "truncated-wav": "truncated",
       "truncated-flac": "truncated or corrupt", "nan": "NaN or infinite", "inf": "NaN or infinite", "directory": "is a directory",
       "missing": "no such file"}


@pytest.mark.parametrize("kind", list(BAD) + [pytest.param("truncated-mp3", marks=needs_ffmpeg)])
def test_bad_input_one_line_and_no_output(env, capsys, tmp_path, kind):
    root, bundle, files = env
    bad = _make_bad(kind, tmp_path)
    out = tmp_path / "out.rttm"
    rc, stdout, err = run(["diarize", bad, "--rttm", out, "--checkpoint", bundle], capsys)
    assert rc == 1
    line = _error_line(err)
    assert line.startswith(f"echo: error: {bad}: ") and BAD.get(kind, "truncated") in line
    assert "Traceback" not in err and stdout == ""
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.rttm")]


def test_one_bad_input_among_several_writes_nothing(env, capsys, tmp_path):
    root, bundle, files = env
    bad = _make_bad("nan", tmp_path)  # only visible after decoding, i.e. after good inputs ran
    out_dir = tmp_path / "o"
    rc, _, err = run(["diarize", files["wav"], bad, "--out-dir", out_dir, "--checkpoint", bundle], capsys)
    assert rc == 1 and f"{bad}: contains NaN" in _error_line(err)
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_several_bad_inputs_are_all_reported_before_any_work(env, capsys, tmp_path):
    root, bundle, files = env
    a, b = tmp_path / "missing.wav", _make_bad("empty", tmp_path)
    rc, _, err = run(["diarize", a, files["wav"], b, "--rttm", tmp_path / "x.rttm", "--checkpoint", bundle], capsys)
    assert rc == 1
    lines = err.strip().splitlines()
    assert [l.split(": ")[2] for l in lines] == [str(a), str(b)]


def test_checkpoint_from_another_model_version(env, capsys, tmp_path):
    root, bundle, files = env
    old = shutil.copytree(bundle, tmp_path / "old")
    meta = json.loads((old / "bundle.json").read_text())
    meta["version"] = 0
    (old / "bundle.json").write_text(json.dumps(meta))
    rc, _, err = run(["diarize", files["wav"], "--rttm", tmp_path / "o.rttm", "--checkpoint", old], capsys)
    assert rc == 1 and "bundle format version 0" in _error_line(err)
    # an encoder file from another encoder version
    shutil.rmtree(old)
    old = shutil.copytree(bundle, tmp_path / "old")
    payload = torch.load(old / "encoder.pt", weights_only=True)
    payload["version"] = 99
    torch.save(payload, old / "encoder.pt")
    rc, _, err = run(["diarize", files["wav"], "--checkpoint", old], capsys)
    assert rc == 1 and "encoder format version 99" in _error_line(err)
    # a corrupt head file
    (old / "encoder.pt").write_bytes((bundle / "encoder.pt").read_bytes())
    (old / "speaker.pt").write_bytes(b"garbage")
    rc, _, err = run(["diarize", files["wav"], "--checkpoint", old], capsys)
    assert rc == 1 and _error_line(err).startswith(f"echo: error: {old}")
    assert not (tmp_path / "o.rttm").exists()


@pytest.mark.parametrize("kind", ["truncated", "random-bytes", "raw-pickle"])
def test_damaged_head_file_is_one_line_naming_the_file(env, capsys, tmp_path, kind):
    import pickle
    import warnings

    root, bundle, files = env
    bad = shutil.copytree(bundle, tmp_path / "bad")
    head = bad / "speaker.pt"
    if kind == "truncated":
        head.write_bytes(head.read_bytes()[:300])
    elif kind == "random-bytes":
        head.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:  # a pickle of an arbitrary object: refused by the weights-only loader, and no torch warning
        head.write_bytes(pickle.dumps({"kind": "speaker", "obj": talk}, protocol=4))
    reason = {"truncated": "truncated or corrupt archive", "random-bytes": "not a torch checkpoint",
              "raw-pickle": "a plain pickle, not a torch checkpoint"}[kind]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, stdout, err = run(["diarize", files["wav"], "--rttm", tmp_path / "o.rttm", "--checkpoint", bad], capsys)
    assert rc == 1 and stdout == ""
    assert err.strip().splitlines() == [f"echo: error: {head}: not a readable Echo speaker head ({reason})"]
    assert not caught, [str(w.message) for w in caught]
    assert not (tmp_path / "o.rttm").exists()


def test_default_model_is_announced_and_missing_one_says_how_to_train(env, capsys, tmp_path, monkeypatch):
    root, bundle, files = env
    monkeypatch.delenv("ECHO_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(["diarize", files["wav"]], capsys)
    assert rc == 1
    line = _error_line(err)
    assert str(DEFAULT_MODEL) in line and "snakemake --cores all results/tables.md" in line and "--checkpoint" in line
    shutil.copytree(bundle, tmp_path / DEFAULT_MODEL)
    rc, out, err = run(["diarize", files["wav"]], capsys)
    assert rc == 0 and out.startswith("SPEAKER talk ")
    assert f"using the default model {DEFAULT_MODEL}" in err
    monkeypatch.setenv("ECHO_MODEL", str(bundle))
    rc, out2, err = run(["diarize", files["wav"]], capsys)
    assert rc == 0 and out2 == out and "$ECHO_MODEL" in err


def test_bad_options_are_one_line(env, capsys, tmp_path):
    root, bundle, files = env
    rc, _, err = run(["diarize", files["wav"], "--num-speakers", "0", "--checkpoint", bundle], capsys)
    assert rc == 1 and "--num-speakers" in _error_line(err)
    rc, _, err = run(["diarize", files["wav"], "--min-speakers", "3", "--max-speakers", "2", "--checkpoint", bundle],
                     capsys)
    assert rc == 1 and "--min-speakers" in _error_line(err)
    rc, _, err = run(["diarize", files["wav"], "--rttm", tmp_path, "--checkpoint", bundle], capsys)
    assert rc == 1 and "--rttm" in _error_line(err)
    if not torch.cuda.is_available():
        rc, _, err = run(["diarize", files["wav"], "--device", "cuda", "--checkpoint", bundle], capsys)
        assert rc == 1 and "--device cuda" in _error_line(err)


def _rttm_rows(path):
    return [(l.split()[1], float(l.split()[3]), float(l.split()[4]), l.split()[7]) for l in path.read_text().splitlines()]


def _json_rows(doc, key):
    return [(doc["uri"], s["start"], round(s["end"] - s["start"], 3), s["speaker"]) for s in doc[key]]


def test_out_dir_json_agrees_with_rttm_and_has_both_diarizations(env, capsys, tmp_path):
    root, bundle, files = env
    o = tmp_path / "o"
    rc, _, err = run(["diarize", files["wav"], "--out-dir", o, "--checkpoint", bundle], capsys)
    assert rc == 0, err
    doc = json.loads((o / "talk.json").read_text())
    assert set(doc) == {"uri", "duration", "num_speakers", "diarization", "exclusive_diarization", "warnings"}
    assert doc["uri"] == "talk" and doc["duration"] == 6.0 and doc["warnings"] == []
    assert doc["diarization"] and doc["num_speakers"] == len({s["speaker"] for s in doc["diarization"]})
    for key in ("diarization", "exclusive_diarization"):
        for seg in doc[key]:
            assert 0 <= seg["start"] < seg["end"] <= 6.0 and seg["start"] == round(seg["start"], 3)
    # the RTTM is the overlapping diarization, segment for segment
    rows = _rttm_rows(o / "talk.rttm")
    assert [(u, a, pytest.approx(b, abs=1e-9), k) for u, a, b, k in rows] == _json_rows(doc, "diarization")
    # --exclusive: the RTTM is the exclusive one; the JSON is unchanged
    o2 = tmp_path / "o2"
    rc, _, err = run(["diarize", files["wav"], "--out-dir", o2, "--exclusive", "--checkpoint", bundle], capsys)
    assert rc == 0, err
    assert json.loads((o2 / "talk.json").read_text()) == doc
    rows = _rttm_rows(o2 / "talk.rttm")
    assert [(u, a, pytest.approx(b, abs=1e-9), k) for u, a, b, k in rows] == _json_rows(doc, "exclusive_diarization")
    assert not list(read_rttm(o2 / "talk.rttm")["talk"].get_overlap())


def test_folder_input_one_rttm_and_json_per_file(env, capsys, tmp_path):
    root, bundle, files = env
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(files["wav"], folder / "b.wav")
    shutil.copy(files["flac"], folder / "a.FLAC")
    (folder / "notes.txt").write_text("not audio")
    (folder / "sub").mkdir()
    shutil.copy(files["wav"], folder / "sub" / "deep.wav")  # not recursive
    o = tmp_path / "o"
    rc, _, err = run(["diarize", folder, files["wav44"], "--out-dir", o, "--checkpoint", bundle], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in o.iterdir()) == ["a.json", "a.rttm", "b.json", "b.rttm", "stereo44.json",
                                                    "stereo44.rttm"]
    for uri in ("a", "b", "stereo44"):
        assert set(read_rttm(o / f"{uri}.rttm")) == {uri}
        assert json.loads((o / f"{uri}.json").read_text())["uri"] == uri
    # an empty folder is an error
    (tmp_path / "empty").mkdir()
    rc, _, err = run(["diarize", tmp_path / "empty", "--out-dir", tmp_path / "o3", "--checkpoint", bundle], capsys)
    assert rc == 1 and _error_line(err).startswith(f"echo: error: {tmp_path / 'empty'}: is a directory with no audio")
    assert not (tmp_path / "o3").exists()


def test_embeddings_one_row_per_speaker_in_label_order(env, capsys, tmp_path):
    root, bundle, files = env
    o = tmp_path / "o"
    rc, _, err = run(["diarize", files["wav"], "--out-dir", o, "--embeddings", "--checkpoint", bundle], capsys)
    assert rc == 0, err
    doc = json.loads((o / "talk.json").read_text())
    emb = np.load(o / "talk.npy")
    assert doc["embeddings"] == "talk.npy" and emb.dtype == np.float32
    assert emb.shape == (doc["num_speakers"], E) == (len(doc["labels"]), E)
    assert doc["labels"] == sorted({s["speaker"] for s in doc["diarization"]}, key=lambda l: int(l[3:]))
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    # the same as the diarizer's own speaker_embeddings
    res = Diarizer.from_pretrained(bundle)(audio.load(files["wav"]), uri="talk")
    assert res.labels == doc["labels"] and np.allclose(res.speaker_embeddings, emb, atol=1e-5)
    # --embeddings needs a folder to write to
    rc, _, err = run(["diarize", files["wav"], "--embeddings", "--checkpoint", bundle], capsys)
    assert rc == 1 and "--embeddings" in _error_line(err)


@pytest.mark.parametrize("opts,check", [
    (["--num-speakers", "1"], lambda n, w: n == 1),
    (["--num-speakers", "2"], lambda n, w: n == 2 or any("2 speakers requested" in x for x in w)),
    (["--num-speakers", "4"], lambda n, w: n == 4 or any("4 speakers requested" in x for x in w)),
    (["--max-speakers", "1"], lambda n, w: n == 1),
    (["--min-speakers", "3"], lambda n, w: n >= 3 or any("3 speakers requested" in x for x in w)),
    (["--min-speakers", "2", "--max-speakers", "2"], lambda n, w: n == 2 or any("2 speakers requested" in x for x in w)),
])
def test_speaker_counts_are_honoured_or_a_stated_warning(env, capsys, tmp_path, opts, check):
    root, bundle, files = env
    o = tmp_path / "o"
    rc, _, err = run(["diarize", files["wav"], "--out-dir", o, "--checkpoint", bundle] + opts, capsys)
    assert rc == 0, err
    doc = json.loads((o / "talk.json").read_text())
    n = doc["num_speakers"]
    assert n == len(set(read_rttm(o / "talk.rttm")["talk"].labels()))
    assert check(n, doc["warnings"]), (n, doc["warnings"])
    # each warning is on stderr as one line, and nothing else is
    assert [l for l in err.splitlines() if "warning" in l] == [f"echo: warning: {w}" for w in doc["warnings"]]


def test_speaker_count_that_cannot_be_met_is_one_line_and_nothing_written(env, capsys, tmp_path):
    root, bundle, files = env
    o = tmp_path / "o"
    for opts in (["--num-speakers", "1000"], ["--min-speakers", "1000"]):
        rc, stdout, err = run(["diarize", files["wav"], files["flac"], "--out-dir", o, "--checkpoint", bundle] + opts,
                              capsys)
        assert rc == 1 and stdout == "" and "Traceback" not in err
        line = _error_line(err)
        assert line.startswith("echo: error: diarize talk: 1000 speakers requested but only ") and \
            "at most" in line, line
        assert err.strip().splitlines() == [line]
        assert not o.exists()
    rc, stdout, err = run(["diarize", files["wav"], "--num-speakers", "1000", "--checkpoint", bundle], capsys)
    assert rc == 1 and stdout == ""


@pytest.mark.parametrize("opts,flag", [
    (["--num-speakers", "0"], "--num-speakers: expected an integer >= 1, got 0"),
    (["--min-speakers", "-1"], "--min-speakers: expected an integer >= 1, got -1"),
    (["--max-speakers", "0"], "--max-speakers: expected an integer >= 1, got 0"),
    (["--min-speakers", "3", "--max-speakers", "2"], "--min-speakers: expected <= --max-speakers (2), got 3"),
    (["--num-speakers", "1", "--min-speakers", "2"], "--num-speakers: expected >= --min-speakers (2), got 1"),
    (["--num-speakers", "3", "--max-speakers", "2"], "--num-speakers: expected <= --max-speakers (2), got 3"),
    (["--chunk-seconds", "inf"], "--chunk-seconds: expected finite seconds > 0, got inf"),
    (["--chunk-seconds", "nan"], "--chunk-seconds: expected finite seconds > 0, got nan"),
    (["--chunk-seconds", "0"], "--chunk-seconds: expected finite seconds > 0, got 0"),
    (["--chunk-seconds", "-5"], "--chunk-seconds: expected finite seconds > 0, got -5"),
])
@pytest.mark.parametrize("command", ["diarize", "separate"])
def test_bad_counts_and_chunk_seconds_fail_before_any_work(env, capsys, tmp_path, monkeypatch, opts, flag, command):
    root, bundle, files = env
    _no_work(monkeypatch)
    o = tmp_path / "o"
    rc, stdout, err = run([command, files["wav"], "--out-dir", o, "--checkpoint", bundle] + opts, capsys)
    assert rc == 1 and stdout == ""
    assert err.strip().splitlines() == [f"echo: error: {flag}"]
    assert not o.exists()


def test_chunk_seconds_inf_is_one_line_for_every_command(env, capsys, tmp_path, monkeypatch):
    root, bundle, files = env
    _no_work(monkeypatch)
    for argv in (["embed", files["wav"], "--out", tmp_path / "e.npy"], ["transcribe", files["wav"]],
                 ["separate", files["wav"], "--out-dir", tmp_path / "s"]):
        rc, _, err = run(argv + ["--chunk-seconds", "inf", "--checkpoint", bundle], capsys)
        assert rc == 1 and err.strip().splitlines() == ["echo: error: --chunk-seconds: expected finite seconds > 0, got inf"]
    assert list(tmp_path.iterdir()) == []


def _no_work(monkeypatch):
    """Make loading the model or decoding any audio fail loudly: what runs after this did neither."""
    import echo.inference

    def boom(*a, **k):
        raise AssertionError("work started before the options and output paths were checked")

    monkeypatch.setattr(Diarizer, "from_pretrained", classmethod(boom))
    monkeypatch.setattr(EchoModel, "load", classmethod(boom))
    for name in ("stream", "read_all", "probe"):
        monkeypatch.setattr(echo.inference, name, boom)


def _read_only_dir(path):
    """A directory this process cannot write in, or None where it still can (root ignores 0o500)."""
    path.mkdir()
    path.chmod(0o500)
    try:
        (path / ".probe").write_text("x")
    except OSError:
        return path
    (path / ".probe").unlink()
    return None


@pytest.mark.parametrize("case", ["out-dir-parent-is-file", "out-dir-is-file", "out-dir-read-only",
                                  "out-dir-under-read-only", "rttm-read-only", "rttm-parent-missing",
                                  "rttm-parent-is-file", "rttm-is-dir"])
def test_bad_output_path_fails_before_any_work(env, capsys, tmp_path, monkeypatch, case):
    root, bundle, files = env
    work = tmp_path / "w"
    work.mkdir()
    (work / "file").write_text("x")
    if case == "out-dir-parent-is-file":
        target, flag, problem = work / "file" / "o", "--out-dir", f"cannot create it, {work / 'file'} is a file, not a directory"
    elif case == "out-dir-is-file":
        target, flag, problem = work / "file", "--out-dir", "exists and is not a directory"
    elif case in ("out-dir-read-only", "out-dir-under-read-only", "rttm-read-only"):
        ro = _read_only_dir(work / "ro")
        if ro is None:
            (work / "ro").chmod(0o700)
            pytest.skip("this user (root) can write in a 0o500 directory")
        target, flag, problem = {
            "out-dir-read-only": (ro, "--out-dir", "directory is not writable"),
            "out-dir-under-read-only": (ro / "a" / "b", "--out-dir", f"cannot create it, directory {ro} is not writable"),
            "rttm-read-only": (ro / "x.rttm", "--rttm", f"directory {ro} is not writable")}[case]
    elif case == "rttm-parent-missing":
        target, flag, problem = work / "nope" / "x.rttm", "--rttm", f"directory {work / 'nope'} does not exist"
    elif case == "rttm-parent-is-file":
        target, flag, problem = work / "file" / "x.rttm", "--rttm", f"{work / 'file'} is not a directory"
    else:
        target, flag, problem = work, "--rttm", "is a directory, expected a file name"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    _no_work(monkeypatch)
    try:
        rc, stdout, err = run(["diarize", files["wav"], files["flac"], flag, target, "--checkpoint", bundle], capsys)
    finally:
        if (work / "ro").exists():
            (work / "ro").chmod(0o700)
    assert rc == 1 and stdout == ""
    assert err.strip().splitlines() == [f"echo: error: {target}: {problem} ({flag})"]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing left behind


def test_writability_probe_sees_a_read_only_directory(tmp_path):
    # the check itself, also where the test above is skipped (root): an os.access refusal is enough
    from echo import cli

    assert cli._can_write_in(tmp_path) and list(tmp_path.iterdir()) == []
    orig = os.access
    try:
        os.access = lambda p, mode, **k: False if str(p) == str(tmp_path) else orig(p, mode, **k)
        assert not cli._can_write_in(tmp_path)
    finally:
        os.access = orig


def test_two_inputs_with_the_same_name_fail_before_any_work(env, capsys, tmp_path, monkeypatch):
    root, bundle, files = env
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(files["wav"], tmp_path / d / "talk.wav")
    _no_work(monkeypatch)
    rc, _, err = run(["diarize", tmp_path / "a" / "talk.wav", tmp_path / "b", "--out-dir", tmp_path / "o",
                      "--checkpoint", bundle], capsys)
    assert rc == 1
    assert err.strip().splitlines() == [f"echo: error: {tmp_path / 'b' / 'talk.wav'}: has the same name (talk) as "
                                        f"{tmp_path / 'a' / 'talk.wav'}; outputs would collide, rename one"]
    assert not (tmp_path / "o").exists()


def test_diarizer_warnings_are_printed_once_and_kept_in_the_json(env, capsys, tmp_path, monkeypatch):
    import logging

    root, bundle, files = env
    call = Diarizer.__call__
    msg = "diarize talk: 3 speakers requested, 2 found: 1 cluster(s) won no speech after reconstruction"

    def with_warning(self, *a, **k):  # as the diarizer does: in .warnings and logged
        out = call(self, *a, **k)
        out.warnings.append(msg)
        logging.getLogger("echo.diarization.diarizer").warning(msg)
        return out

    monkeypatch.setattr(Diarizer, "__call__", with_warning)
    o = tmp_path / "o"
    rc, _, err = run(["diarize", files["wav"], "--out-dir", o, "--checkpoint", bundle], capsys)
    assert rc == 0, err
    assert err.strip().splitlines() == [f"echo: warning: {msg}"]
    assert json.loads((o / "talk.json").read_text())["warnings"] == [msg]


def test_from_pretrained_of_save_gives_identical_output(env, tmp_path):
    from echo.diarization.diarizer import BlockReader

    root, bundle, files = env
    x = tiny_diarizer()
    y = Diarizer.from_pretrained(x.save(tmp_path / "d"))
    assert {p.name for p in (tmp_path / "d").iterdir()} >= set(MODEL_FILES.values()) | {"bundle.json", "segmentation.pt"}
    assert y.config == x.config
    wave = audio.load(files["wav"])
    for kw in ({}, {"num_speakers": 2}, {"max_speakers": 1}):
        a, b = x(wave, uri="talk", **kw), y(wave, uri="talk", **kw)
        assert a.labels == b.labels and a.warnings == b.warnings
        assert format_rttm(a.speaker_diarization) == format_rttm(b.speaker_diarization)
        assert format_rttm(a.exclusive_speaker_diarization) == format_rttm(b.exclusive_speaker_diarization)
        assert np.array_equal(a.speaker_embeddings, b.speaker_embeddings)
    # and streamed through a BlockReader, as the CLI feeds it
    blocks = BlockReader(lambda: (wave[i:i + 16000] for i in range(0, len(wave), 16000)), len(wave))
    c = y(blocks, uri="talk")
    assert format_rttm(c.speaker_diarization) == format_rttm(x(wave, uri="talk").speaker_diarization)
    # overrides of from_pretrained change the settings, not the weights
    z = Diarizer.from_pretrained(tmp_path / "d", chunk_s=2.0)
    assert z.config.chunk_s == 2.0 and z.config.segment_s == x.config.segment_s


# -- transcribe / embed / separate -------------------------------------------------------------------
def test_transcribe_tsv_stdout_and_json(env, capsys, tmp_path):
    root, bundle, files = env
    rc, out, err = run(["transcribe", files["wav"], "--checkpoint", bundle], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "start\tend\tphone" and len(lines) > 1
    rows = [l.split("\t") for l in lines[1:]]
    starts, ends = np.array([float(r[0]) for r in rows]), np.array([float(r[1]) for r in rows])
    assert (ends > starts).all() and (np.diff(starts) > 0).all() and ends[-1] <= 6.05
    assert {r[2] for r in rows} <= {"a", "b", "c"}
    rc, _, err = run(["transcribe", files["wav"], "--checkpoint", bundle, "--out", tmp_path / "t.json"], capsys)
    data = json.loads((tmp_path / "t.json").read_text())
    assert rc == 0 and [p["phone"] for p in data["phones"]] == [r[2] for r in rows]


def test_transcribe_words_from_a_word_list(env, capsys, caplog, tmp_path):
    root, _, files = env
    bundle = tmp_path / "bundle"
    tiny_diarizer(phones=("b", "k", "æ")).save(bundle)  # espeak-ng en-us: cab = k æ b, back = b æ k
    words = tmp_path / "words.txt"
    words.write_text("# my words\ncab\nBack\n\nxylophone\n")  # xylophone has phones the model lacks
    rc, out, err = run(["transcribe", files["wav"], "--checkpoint", bundle, "--words", words], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "start\tend\tword\tphones" and len(lines) > 1
    rows = [l.split("\t") for l in lines[1:]]
    assert {r[2] for r in rows} <= {"cab", "back"} and "skipped: xylophone" in caplog.text  # with a warning
    assert all(r[3] == {"cab": "k æ b", "back": "b æ k"}[r[2]] for r in rows)
    starts, ends = np.array([float(r[0]) for r in rows]), np.array([float(r[1]) for r in rows])
    assert (ends > starts).all() and (starts[1:] >= ends[:-1] - 1e-9).all() and starts[0] >= 0 and ends[-1] <= 6.05
    rc, _, err = run(["transcribe", files["wav"], "--checkpoint", bundle, "--words", words, "--out", tmp_path / "w.json"],
                     capsys)
    data = json.loads((tmp_path / "w.json").read_text())
    assert rc == 0 and [w["word"] for w in data["words"]] == [r[2] for r in rows] and data["phones"]
    # a word list the model cannot spell, or an empty one: one line, nothing written
    (tmp_path / "none.txt").write_text("xylophone\n")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    for bad, msg in (("none.txt", "none of the 1 words"), ("empty.txt", "word list is empty"), ("missing.txt", "cannot read")):
        rc, _, err = run(["transcribe", files["wav"], "--checkpoint", bundle, "--words", tmp_path / bad,
                          "--out", tmp_path / "bad.json"], capsys)
        assert rc != 0 and msg in _error_line(err) and not (tmp_path / "bad.json").exists()


def test_embed_whole_and_per_window(env, capsys, tmp_path):
    root, bundle, files = env
    rc, _, err = run(["embed", files["wav"], "--out", tmp_path / "e.npy", "--checkpoint", bundle], capsys)
    assert rc == 0, err
    e = np.load(tmp_path / "e.npy")
    assert e.shape == (E,) and abs(np.linalg.norm(e) - 1) < 1e-4
    rc, _, err = run(["embed", files["wav"], "--out", tmp_path / "w.npy", "--per-window", "--checkpoint", bundle],
                     capsys)
    assert rc == 0, err
    w, win = np.load(tmp_path / "w.npy"), np.load(tmp_path / "w.windows.npy")
    expected = sliding_windows(6.0, WindowConfig())
    assert w.shape == (len(expected), E) and np.allclose(win, expected)
    # silence has no speaker: an error, and no file
    p = tmp_path / "quiet.wav"
    sf.write(p, np.zeros(8000, np.float32), 16000)
    rc, _, err = run(["embed", p, "--out", tmp_path / "q.npy", "--checkpoint", bundle], capsys)
    assert rc == 1 and "silent" in _error_line(err) and not (tmp_path / "q.npy").exists()


def test_separate_writes_one_wav_per_speaker_summing_to_the_input(env, capsys, tmp_path):
    from echo.metrics.separation import si_sdr
    from echo.separation import Separator

    root, bundle, files = env
    out = tmp_path / "sep"
    rc, _, err = run(["separate", files["wav"], "--out-dir", out, "--checkpoint", bundle, "--num-speakers", "2"], capsys)
    assert rc == 0, err
    meta = json.loads((out / "talk.json").read_text())
    x = audio.load(files["wav"])  # the input as the CLI reads it: mono, 16 kHz
    assert meta["uri"] == "talk" and meta["input"] == str(files["wav"]) and meta["sample_rate"] == 16000
    assert meta["duration"] == round(len(x) / 16000, 3) and meta["num_speakers"] == len(meta["speakers"]) >= 1
    ann = read_rttm(out / "talk.rttm")["talk"]
    assert sorted(ann.labels()) == sorted(s["label"] for s in meta["speakers"])
    waves = []
    for s in meta["speakers"]:
        assert s["wav"] == f"talk.{s['label']}.wav"
        assert s["speech_seconds"] == round(ann.label_duration(s["label"]), 3)
        w, sr = sf.read(out / s["wav"], dtype="float32")
        assert sr == 16000 and w.shape == x.shape and sf.info(out / s["wav"]).subtype == "PCM_16"
        waves.append(w)
    assert si_sdr(np.sum(waves, 0), x) > 30.0  # 16-bit WAVs of sources that sum to the input
    assert sorted(p.name for p in out.iterdir()) == sorted(["talk.json", "talk.rttm"] + [s["wav"] for s in meta["speakers"]])
    # the library on the same folder and audio: the same diarization and the same sources
    lib = Separator.from_pretrained(bundle)(x, num_speakers=2, uri="talk")
    assert (out / "talk.rttm").read_text() == format_rttm({"talk": lib.diarization.speaker_diarization})
    assert np.abs(np.stack(waves) - lib.sources).max() < 2 / 32768


def test_separate_silent_audio_writes_no_wav_and_says_so(env, capsys, tmp_path):
    root, bundle, files = env
    p = tmp_path / "quiet.flac"
    sf.write(p, np.zeros(16000 * 2, np.float32), 16000)
    rc, _, err = run(["separate", p, "--out-dir", tmp_path / "o", "--checkpoint", bundle], capsys)
    assert rc == 0, err
    assert sorted(q.name for q in (tmp_path / "o").iterdir()) == ["quiet.json", "quiet.rttm"]
    meta = json.loads((tmp_path / "o" / "quiet.json").read_text())
    assert meta["speakers"] == [] and meta["duration"] == 2.0 and "silent" in meta["warnings"][0]
    assert (tmp_path / "o" / "quiet.rttm").read_text() == ""


@pytest.mark.parametrize("where,problem", [("file", "exists and is not a directory"),
                                           ("file/o", "cannot create it, {file} is a file, not a directory")])
def test_separate_bad_out_dir_fails_before_any_work(env, capsys, tmp_path, monkeypatch, where, problem):
    root, bundle, files = env
    (tmp_path / "file").write_text("x")
    target = tmp_path / where
    before = sorted(tmp_path.rglob("*"))
    _no_work(monkeypatch)
    rc, stdout, err = run(["separate", files["wav"], "--out-dir", target, "--checkpoint", bundle], capsys)
    assert rc == 1 and stdout == ""
    assert err.strip().splitlines() == [f"echo: error: {target}: {problem.format(file=tmp_path / 'file')} (--out-dir)"]
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated-wav", "nan"])
def test_separate_bad_input_one_line_and_no_output(env, capsys, tmp_path, kind):
    root, bundle, files = env
    bad = _make_bad(kind, tmp_path)
    rc, stdout, err = run(["separate", bad, "--out-dir", tmp_path / "o", "--checkpoint", bundle], capsys)
    assert rc == 1 and stdout == "" and "Traceback" not in err
    assert _error_line(err).startswith(f"echo: error: {bad}: ") and BAD.get(kind, "truncated") in err
    assert not (tmp_path / "o").exists()


def test_separate_with_a_model_without_separator_is_one_line(env, capsys, tmp_path):
    root, bundle, files = env
    d = tiny_diarizer()
    d.model.separator = None
    d.save(tmp_path / "m")
    rc, _, err = run(["separate", files["wav"], "--out-dir", tmp_path / "o", "--checkpoint", tmp_path / "m"], capsys)
    assert rc == 1 and err.strip().splitlines() == [
        f"echo: error: {tmp_path / 'm'}: no separator; expected a model from the separation stage (models/echo)"]
    assert not (tmp_path / "o").exists()


def test_help_and_python_dash_m(env, tmp_path):
    root, bundle, files = env
    env_vars = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "echo", "separate", "--help"], capture_output=True, text=True, env=env_vars)
    assert r.returncode == 0 and "16 kHz mono, 16-bit PCM" in " ".join(r.stdout.split())
    r = subprocess.run([sys.executable, "-m", "echo", "diarize", str(tmp_path / "nope.wav"), "--checkpoint", str(bundle)],
                       capture_output=True, text=True, env=env_vars)
    assert r.returncode == 1 and r.stderr == f"echo: error: {tmp_path / 'nope.wav'}: no such file\n"
