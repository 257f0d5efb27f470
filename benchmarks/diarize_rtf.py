"""Speed and memory of ``python -m echo diarize`` on long recordings: real-time factor and peak RSS.

    python benchmarks/diarize_rtf.py                         # 10 min and 60 min, 2 CPU threads
    python benchmarks/diarize_rtf.py --minutes 10 --threads 2 --checkpoint models/echo
    python benchmarks/diarize_rtf.py --device cuda

Each measurement runs the real command line in a fresh process (decode + encoder + speaker head +
PLDA/AHC/VBx + RTTM, model loading and Python start-up included) and reads that process's peak
resident memory from ``wait4`` (tracemalloc does not see torch's allocations). The start-up
cost is measured on a 5 s file and printed, so it can be told apart from per-second costs.

Without ``--checkpoint`` a bundle of the default shapes (EncoderConfig(): 25.4M parameters, d=512,
8 blocks; default speaker/CTC/router heads) with random weights is built in a temporary folder,
with a PLDA fitted on random embeddings: the cost does not depend on the weights' values (with a
random CTC head every token counts as speech, the worst case for the number of embedded windows).
The long input is espeak-ng speech of four voices taking turns (tiled from a few minutes of
synthesised turns), or noise bursts when espeak-ng is not installed, written as 16 kHz FLAC.

Figures are printed, never asserted: timings depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SR = 16_000
SENTENCES = [
    "The committee will meet again next week to discuss the budget for the coming year.",
    "I honestly think we should try the other approach before we decide anything.",
    "Could you send me the numbers from the last quarter when you have a moment?",
    "That is a fair point, but the schedule does not leave us much room.",
    "Let us take a short break and come back to this question afterwards.",
    "Nobody expected the results to be so different from the first experiment.",
]
VOICES = ["en-us+m3", "en-gb+f2", "en-us+f4", "en-gb-scotland+m1"]


def synth_turns(workdir: Path, seed: int = 0) -> list[np.ndarray]:
    """A pool of single-speaker turns at 16 kHz: espeak-ng voices, or noise bursts without it."""
    import soundfile as sf

    from echo.audio import resample

    rng = np.random.default_rng(seed)
    if shutil.which("espeak-ng") is None:
        print("espeak-ng not found: using noise bursts as turns", file=sys.stderr)
        return [(0.1 * (k + 1) * rng.standard_normal(int(SR * rng.uniform(1.5, 5.0)))).astype(np.float32)
                for k in range(4) for _ in range(6)]
    turns = []
    for v, voice in enumerate(VOICES):
        for s, text in enumerate(SENTENCES):
            wav = workdir / f"turn{v}_{s}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(150 + 10 * v), "-w", str(wav), text], check=True)
            x, sr = sf.read(wav, dtype="float32")
            turns.append(resample(x, sr, SR))
    return turns


def long_recording(turns: list[np.ndarray], seconds: float, seed: int = 0) -> np.ndarray:
    """Turns in random order with short pauses (0.1-0.8 s) and a faint noise floor, to ``seconds``."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    out = (1e-3 * rng.standard_normal(n)).astype(np.float32)
    pos = 0
    while pos < n:
        t = turns[rng.integers(len(turns))]
        m = min(len(t), n - pos)
        out[pos:pos + m] += t[:m]
        pos += m + int(rng.uniform(0.1, 0.8) * SR)
    return out


def default_bundle(path: Path) -> Path:
    """A bundle of the default shapes with random weights, plus a PLDA fitted on random embeddings."""
    import torch

    from echo.diarization.plda import PLDA
    from echo.heads.ctc import CTCConfig, CTCHead, PhoneInventory
    from echo.heads.router import SourceRouter
    from echo.heads.speaker import SpeakerConfig, SpeakerHead
    from echo.models.bundle import EchoModel
    from echo.models.vit import Encoder, EncoderConfig

    torch.manual_seed(0)
    phones = tuple("a b d e f g h i k l m n o p r s t u v w z".split())
    model = EchoModel(Encoder(EncoderConfig()), stage="routing", speaker=SpeakerHead(),
                      ctc=CTCHead(CTCConfig(), PhoneInventory(phones)), router=SourceRouter())
    model.eval().save(path)
    rng = np.random.default_rng(0)
    emb = SpeakerConfig().emb_dim
    x = np.repeat(rng.normal(size=(200, emb)), 10, 0) + 0.5 * rng.normal(size=(2000, emb))
    PLDA.fit(x, np.repeat(np.arange(200), 10)).save(path / "plda.npz")
    return path


def run_cli(audio: Path, bundle: Path, threads: int, device: str | None) -> dict:
    """Run ``python -m echo diarize`` in a fresh process; wall seconds and its peak RSS."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-c", f"import torch; torch.set_num_threads({threads}); "
           "from echo.cli import main; raise SystemExit(main())",
           "diarize", str(audio), "--checkpoint", str(bundle), "--rttm", str(audio.with_suffix(".rttm"))]
    if device:
        cmd += ["--device", device]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"diarize failed on {audio}:\n{err}")
    speakers = len({line.split()[7] for line in audio.with_suffix(".rttm").read_text().splitlines()})
    return {"wall_s": wall, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, "speakers": speakers}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[10.0, 60.0], help="recording lengths")
    ap.add_argument("--threads", type=int, default=2, help="torch / BLAS threads (default 2)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--checkpoint", type=Path, help="bundle to time (default: random default-shape bundle)")
    ap.add_argument("--keep", type=Path, help="keep the generated audio and bundle in this folder")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="echo-rtf-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        import soundfile as sf

        bundle = args.checkpoint or default_bundle(work / "bundle")
        turns = synth_turns(work)
        rows = []
        warm = work / "warmup.flac"  # fills the page cache (Python, torch, the bundle): not timed
        sf.write(warm, long_recording(turns, 5.0), SR, subtype="PCM_16")
        run_cli(warm, bundle, args.threads, args.device)
        for minutes in [5.0 / 60.0] + list(args.minutes):
            seconds = minutes * 60.0
            path = work / f"rec_{int(round(seconds))}s.flac"
            sf.write(path, long_recording(turns, seconds), SR, subtype="PCM_16")
            r = run_cli(path, bundle, args.threads, args.device)
            r.update(audio_s=seconds, rtf=r["wall_s"] / seconds)
            rows.append(r)
            label = "start-up (5 s file)" if seconds < 10 else f"{minutes:g} min"
            print(f"{label:>20}: wall {r['wall_s']:8.1f} s   RTF {r['rtf']:.4f}   peak RSS {r['peak_rss_gb']:.2f} GB"
                  f"   speakers {r['speakers']}", flush=True)
        base = rows[0]["wall_s"]
        for r in rows[1:]:
            r["rtf_without_startup"] = (r["wall_s"] - base) / r["audio_s"]
        print(json.dumps({"device": args.device, "threads": args.threads, "rows": rows}, indent=1))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
