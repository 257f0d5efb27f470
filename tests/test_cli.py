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
from echo.diarization.plda import PLDA, PLDAConfig
from echo.diarization.segments import WindowConfig, sliding_windows
from echo.heads.ctc import CTCConfig, CTCHead, PhoneInventory
from echo.heads.router import RouterConfig, SourceRouter
from echo.heads.speaker import SpeakerConfig, SpeakerHead
from echo.metrics.der import format_rttm, read_rttm
from echo.models.bundle import EchoModel
from echo.models.vit import Encoder, EncoderConfig

D, E = 32, 16
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg CLI not installed")


def _bundle(path):
    torch.manual_seed(0)
    model = EchoModel(
        Encoder(EncoderConfig(dim=D, depth=1, heads=2, mlp_dim=64)), stage="routing",
        speaker=SpeakerHead(SpeakerConfig(d_model=D, emb_dim=E, attention_dim=8)),
        ctc=CTCHead(CTCConfig(d_model=D, hidden_dim=16, num_layers=0), PhoneInventory(("a", "b", "c"))),
        router=SourceRouter(RouterConfig(d_model=D, k_max=3, width=16, num_layers=1, num_heads=2)))
    model.eval().save(path)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, E))
    x = np.repeat(centres, 12, 0) + 0.3 * rng.normal(size=(96, E))
    PLDA.fit(x, np.repeat(np.arange(8), 12), PLDAConfig(lda_dim=6)).save(path / "plda.npz")
    # the diarizer settings of the evaluation; energy speech detection keeps the test deterministic
    # in what counts as speech
    (path / "diarizer.json").write_text(json.dumps({"speech": {"source": "energy"}}))
    return path


def _talk(seconds=6.0, sr=16000, seed=0):
    """Two 'voices' (a tone and a noise burst) taking turns, with pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    phase = (t % 3.0)
    x = np.where(phase < 1.2, 0.3 * np.sin(2 * np.pi * 180 * t), 0.0)
    x = np.where((phase >= 1.5) & (phase < 2.7), 0.2 * rng.standard_normal(t.size), x)
    return (x + 1e-3 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    bundle = _bundle(root / "bundle")
    files = {}
    x = _talk()
    files["wav"] = root / "talk.wav"
    sf.write(files["wav"], np.stack([x, 0.5 * x], 1), 16000)
    x44 = audio.resample(x, 16000, 44100)
    files["wav44"] = root / "stereo44.wav"
    sf.write(files["wav44"], np.stack([x44, x44], 1), 44100)
    files["flac"] = root / "talk2.flac"
    sf.write(files["flac"], _talk(seed=1), 16000, subtype="PCM_16")
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
def test_diarize_writes_the_same_rttm_as_the_evaluation_diarizer(env, capsys, tmp_path):
    root, bundle, files = env
    out = tmp_path / "talk.rttm"
    rc, _, err = run(["diarize", files["wav"], "--rttm", out, "--checkpoint", bundle, "--device", "cpu"], capsys)
    assert rc == 0, err
    # the evaluation's code path on the same audio gives the same bytes
    from echo.cli import diarizer_config, load_model, load_plda
    from echo.evaluate.diarize import Diarizer

    model = load_model(bundle, "cpu")
    cfg = diarizer_config(bundle)
    assert cfg.speech.source == "energy"  # the evaluated settings from diarizer.json, not the defaults
    d = Diarizer(model, load_plda(bundle), cfg, frontend=model.frontend)
    expected = format_rttm({"talk": d.diarize(audio.load(files["wav"]), "talk")})
    assert expected and out.read_text() == expected
    assert set(read_rttm(out)) == {"talk"}


def test_diarize_oracle_k_and_exclusive(env, capsys, tmp_path):
    root, bundle, files = env
    out = tmp_path / "k2.rttm"
    rc, _, err = run(["diarize", files["wav"], "--rttm", out, "--checkpoint", bundle, "--num-speakers", "2",
                      "--exclusive"], capsys)
    assert rc == 0, err
    ann = read_rttm(out)["talk"]
    assert len(ann.labels()) == 2
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
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["talk.rttm", "talk2.rttm"]
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
        sf.write(p, _talk(4.0), 16000, subtype="PCM_16")
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "truncated-mp3":
        wav = d / "full.wav"
        sf.write(wav, _talk(4.0), 16000)
        p = d / "cut.mp3"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), str(p)], check=True)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind in ("nan", "inf"):
        x = _talk(2.0)
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
        head.write_bytes(pickle.dumps({"kind": "speaker", "obj": _talk}, protocol=4))
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


def test_separate_writes_activity_and_latent_streams(env, capsys, tmp_path):
    root, bundle, files = env
    out = tmp_path / "sep"
    # activity threshold 1.0: every routed frame counts as active, so the random router's slots
    # all become sources and the streams are exercised
    rc, _, err = run(["separate", files["wav"], "--out-dir", out, "--checkpoint", bundle, "--route-seconds", "2",
                      "--activity-threshold", "1.0"], capsys)
    assert rc == 0, err
    meta = json.loads((out / "talk.json").read_text())
    n_tokens = -(-(1 + 6 * 16000 // 160) // 4)
    assert 1 <= meta["num_sources"] <= 3 * 3  # at most k_max new sources per routed chunk
    labels = set(read_rttm(out / "talk.rttm")["talk"].labels())
    assert labels == {s["label"] for s in meta["sources"]}
    for s in meta["sources"]:
        z = np.load(out / s["latents"])
        assert z.shape == (n_tokens, D) and np.isfinite(z).all()
    assert sorted(p.name for p in out.iterdir()) == sorted(["talk.json", "talk.rttm"] + [s["latents"] for s in meta["sources"]])


def test_help_and_python_dash_m(env, tmp_path):
    root, bundle, files = env
    env_vars = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "echo", "separate", "--help"], capture_output=True, text=True, env=env_vars)
    assert r.returncode == 0 and "no decoder" in " ".join(r.stdout.split())
    r = subprocess.run([sys.executable, "-m", "echo", "diarize", str(tmp_path / "nope.wav"), "--checkpoint", str(bundle)],
                       capture_output=True, text=True, env=env_vars)
    assert r.returncode == 1 and r.stderr == f"echo: error: {tmp_path / 'nope.wav'}: no such file\n"
