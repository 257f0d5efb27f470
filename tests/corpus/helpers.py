"""Builders of tiny real-layout corpus trees (VoxCeleb2/1, LibriSpeech) for the adapter tests.

Utterances are synthetic: near-silence (-80 dBFS noise), a burst of harmonic tone plus noise,
near-silence again, so the energy trim has known boundaries. Each tree also gets broken files
(random bytes, empty, truncated) with the right extension.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16_000
LEAD_S, SPEECH_S, TAIL_S = 0.3, 1.0, 0.2
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "hello", "world", "speech")


def utterance(seed: int, sr: int = SR) -> np.ndarray:
    """LEAD_S of near-silence, SPEECH_S of tone + noise at about -13 dBFS, TAIL_S of near-silence."""
    rng = np.random.default_rng(seed)
    n_lead, n_sp, n_tail = int(LEAD_S * sr), int(SPEECH_S * sr), int(TAIL_S * sr)
    t = np.arange(n_sp) / sr
    f0 = 100 + 20 * (seed % 7)
    burst = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * 0.15 + 0.02 * rng.standard_normal(n_sp)
    x = 1e-4 * rng.standard_normal(n_lead + n_sp + n_tail)
    x[n_lead:n_lead + n_sp] += burst
    return x.astype(np.float32)


def sentence(seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, size=4)).upper()


def write_audio(path: Path, x: np.ndarray, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".m4a":
        tmp = path.with_suffix(".tmp.wav")
        sf.write(tmp, x, sr, subtype="PCM_16")
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(tmp), "-c:a", "aac",
                        "-b:a", "64k", str(path)], check=True, timeout=60)
        tmp.unlink()
    else:
        sf.write(path, x, sr, subtype="PCM_16")
    return path


def add_broken(directory: Path, ext: str, seed: int = 0) -> dict[str, Path]:
    """Put a corrupt (random bytes), an empty and a truncated file of type ``ext`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    corrupt = directory / f"90001{ext}"
    corrupt.write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    empty = directory / f"90002{ext}"
    empty.write_bytes(b"")
    truncated = directory / f"90003{ext}"
    write_audio(truncated, utterance(seed + 999))
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return {"corrupt": corrupt, "empty": empty, "truncated": truncated}


def make_voxceleb(root: Path, source: str, dev: list[str], test: list[str], flat: bool = False,
                  videos: int = 1, utts: int = 2, broken: bool = True) -> dict[str, Path]:
    """Build ``<root>/{dev,test}/<aac|wav>/idN/<video>/<n>.<ext>`` (or ``<root>/idN/...`` if flat).

    Returns the broken files (placed in the first speaker's first video), if ``broken``.
    """
    ext, sub = (".m4a", "aac") if source == "voxceleb2" else (".wav", "wav")
    seed = 0
    broken_dir = None
    for split, speakers in (("dev", dev), ("test", test)):
        base = root if flat else root / split / sub
        for spk in speakers:
            for v in range(videos):
                vdir = base / spk / f"vid{v}_X-{spk[-2:]}"
                broken_dir = broken_dir or vdir
                for u in range(utts):
                    seed += 1
                    write_audio(vdir / f"{u + 1:05d}{ext}", utterance(seed))
    return add_broken(broken_dir, ext) if broken else {}


def make_librispeech(root: Path, subsets: dict[str, list[str]], utts: int = 2) -> tuple[dict[str, str], dict[str, Path]]:
    """Build ``<root>/<subset>/<spk>/<chap>/<spk>-<chap>-<utt>.flac`` with ``.trans.txt`` files.

    Returns ``(texts by utterance id, broken files)``; broken files sit in the first chapter.
    """
    texts, seed, first = {}, 0, None
    for subset, speakers in subsets.items():
        for spk in speakers:
            chap = str(100 + int(spk))
            cdir = root / subset / spk / chap
            first = first or cdir
            lines = []
            for u in range(utts):
                seed += 1
                utt = f"{spk}-{chap}-{u:04d}"
                write_audio(cdir / f"{utt}.flac", utterance(seed))
                texts[utt] = sentence(seed)
                lines.append(f"{utt} {texts[utt]}")
            (cdir / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    broken = add_broken(first, ".flac")
    # give the broken files names in the LibriSpeech pattern, and transcripts, like real ones would have
    renamed = {}
    spk, chap = first.parent.name, first.name
    with open(first / f"{spk}-{chap}.trans.txt", "a") as fh:
        for i, (kind, p) in enumerate(broken.items()):
            utt = f"{spk}-{chap}-{9000 + i:04d}"
            renamed[kind] = p.rename(p.with_name(f"{utt}.flac"))
            fh.write(f"{utt} BROKEN FILE\n")
    return texts, renamed


def have_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None
