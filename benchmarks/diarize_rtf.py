"""Speed and memory of ``python -m echo diarize`` on long recordings: real-time factor and peak RSS.

    python benchmarks/diarize_rtf.py                         # 10 min and 60 min, 2 CPU threads
    python benchmarks/diarize_rtf.py --minutes 10 --threads 2 --checkpoint models/echo
    python benchmarks/diarize_rtf.py --paper                 # the 25.4M paper-profile encoder
    python benchmarks/diarize_rtf.py --stages-minutes 2      # also: where the time goes, per stage
    python benchmarks/diarize_rtf.py --device cuda

Each measurement runs the real command line in a fresh process (decode + encoder + segmentation head
+ speaker head + PLDA/AHC/VBx + RTTM, ``Diarizer.from_pretrained`` and Python start-up included); the process writes its own peak
resident memory (``VmHWM`` of /proc/self/status) when it ends (tracemalloc does not see torch's
allocations, and ``wait4``'s figure includes this benchmark process's memory at fork time). The start-up
cost is measured on a 5 s file and printed, so it can be told apart from per-second costs.

Without ``--checkpoint`` a bundle of the default profile's shapes (encoder d=512, 4 blocks, MLP 1024,
8 heads, as in params.yaml; ``--paper``: the 25.4M paper profile, 8 blocks, MLP 2048; default
speaker/CTC/router/segmentation heads) with random weights is built in a temporary folder and
written with ``Diarizer.save``, with a PLDA fitted on random embeddings: the cost does not depend
much on the weights' values (the segmentation chunks are fixed by the recording's length; only the
clustering sees how many local speakers the random segmentation head finds).
The long input is espeak-ng speech of four voices taking turns (tiled from a few minutes of
synthesised turns), or noise bursts when espeak-ng is not installed, written as 16 kHz FLAC.

``--stages-minutes`` additionally times, in this process, how one recording's diarization splits
between log-mel, encoder, segmentation head, speaker head and clustering (forward hooks on the
modules; log-mel and bookkeeping are the remainder). The machine's load average is printed next
to the figures, and a last line compares them with pyannote.audio's CPU figures measured on this
kind of machine (docs: /work/shared/notes/anchors.md).

Figures are printed, never asserted: timings depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

SR = 16_000
# pyannote.audio 4.0.7 (community-1 architecture, random weights), 2 CPU threads, 10 min of audio
PYANNOTE_CPU = {"rtf": (1.54, 1.64), "peak_rss_gb": 2.95}
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


def default_bundle(path: Path, paper: bool = False, separator: bool = False) -> Path:
    """The deployable folder (``Diarizer.save``: bundle + ``plda.npz`` + ``diarizer.json``) of a model
    of the default profile's shapes (or the paper profile's) with random weights and default
    diarizer settings, with a PLDA fitted on random embeddings; with ``separator``, also the
    separation stage's default slot separator."""
    import torch

    from echo.diarization.diarizer import Diarizer, DiarizerConfig
    from echo.diarization.plda import PLDA
    from echo.heads.ctc import CTCConfig, CTCHead, PhoneInventory
    from echo.heads.router import SourceRouter
    from echo.heads.segmentation import SegmentationConfig, SegmentationHead
    from echo.heads.separator import SeparatorConfig, SpeakerSeparator
    from echo.heads.speaker import SpeakerConfig, SpeakerHead
    from echo.models.bundle import EchoModel
    from echo.models.vit import Encoder, EncoderConfig

    torch.manual_seed(0)
    phones = tuple("a b d e f g h i k l m n o p r s t u v w z".split())
    shape = EncoderConfig() if paper else EncoderConfig(dim=512, depth=4, mlp_dim=1024, heads=8)
    model = EchoModel(Encoder(shape), stage="separation" if separator else "segmentation",
                      speaker=SpeakerHead(SpeakerConfig(d_model=shape.dim)),
                      ctc=CTCHead(CTCConfig(d_model=shape.dim), PhoneInventory(phones)), router=SourceRouter(),
                      segmentation=SegmentationHead(SegmentationConfig(d_model=shape.dim)),
                      separator=SpeakerSeparator(SeparatorConfig(d_model=shape.dim, identity_dim=SpeakerConfig().emb_dim))
                      if separator else None)
    rng = np.random.default_rng(0)
    emb = SpeakerConfig().emb_dim
    x = np.repeat(rng.normal(size=(200, emb)), 10, 0) + 0.5 * rng.normal(size=(2000, emb))
    plda = PLDA.fit(x, np.repeat(np.arange(200), 10))
    return Diarizer(model.eval(), plda, DiarizerConfig()).save(path)


# The child reports its own high-water mark (VmHWM): wait4's ru_maxrss also counts the pages the
# benchmark process itself held when it forked (Linux carries the pre-exec peak over exec), which
# inflated the figures by this process's torch import and generated audio (~0.4 GB at 1 h).
_CHILD = ("import os, torch; torch.set_num_threads({threads}); from echo.cli import main\n"
          "try:\n    rc = main()\nfinally:\n"
          "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
          "    open(os.environ['ECHO_BENCH_HWM'], 'w').write(hwm)\n"
          "raise SystemExit(rc)")


def time_command(argv: list[str], audio: Path, threads: int) -> dict:
    """Run ``python -m echo ARGV`` on ``audio`` in a fresh process with ``threads`` threads; its wall
    seconds and peak RSS (VmHWM; its stderr goes to ``audio``'s ``.log``)."""
    hwm = audio.with_suffix(".hwm")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), ECHO_BENCH_HWM=str(hwm))
    cmd = [sys.executable, "-c", _CHILD.format(threads=threads)] + argv
    log = audio.with_suffix(".log")
    t0 = time.perf_counter()
    with open(log, "w") as err:  # a file, not a pipe: a chatty child cannot block on a full pipe
        proc = subprocess.Popen(cmd, env=env, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed on {audio}:\n{log.read_text()[-3000:]}")
    return {"wall_s": wall, "peak_rss_gb": int(hwm.read_text()) * 1024 / 1e9,
            "maxrss_wait4_gb": usage.ru_maxrss * 1024 / 1e9}


def run_cli(audio: Path, bundle: Path, threads: int, device: str | None, exclusive: bool = False) -> dict:
    """Run ``python -m echo diarize`` in a fresh process; wall seconds and its peak RSS (VmHWM)."""
    argv = ["diarize", str(audio), "--checkpoint", str(bundle), "--rttm", str(audio.with_suffix(".rttm"))]
    if device:
        argv += ["--device", device]
    if exclusive:
        argv += ["--exclusive"]
    r = time_command(argv, audio, threads)
    r["speakers"] = len({line.split()[7] for line in audio.with_suffix(".rttm").read_text().splitlines()})
    return r


@contextlib.contextmanager
def work_dir(keep: Path | None, prefix: str) -> Iterator[Path]:
    """``keep`` (created if needed), or a temporary folder removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix)) if keep is None else keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def measure(run: Callable[[Path], dict], turns: list[np.ndarray], work: Path, minutes: list[float]) -> list[dict]:
    """Time ``run(path)`` (one CLI process: a dict with ``wall_s``, ``peak_rss_gb`` and ``speakers``)
    on recordings of 5 s (the start-up cost) and of each of ``minutes``, after an untimed 5 s one
    that fills the page cache (Python, torch, the model); prints a line per recording and returns
    the rows, with the RTF, the load average and, for the long ones, the RTF without start-up."""
    import soundfile as sf

    warm = work / "warmup.flac"
    sf.write(warm, long_recording(turns, 5.0), SR, subtype="PCM_16")
    run(warm)
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs", flush=True)
    rows = []
    for m in [5.0 / 60.0] + list(minutes):
        seconds = m * 60.0
        path = work / f"rec_{int(round(seconds))}s.flac"
        sf.write(path, long_recording(turns, seconds), SR, subtype="PCM_16")
        r = run(path)
        r.update(audio_s=seconds, rtf=r["wall_s"] / seconds, load_avg_1min=os.getloadavg()[0])
        rows.append(r)
        label = "start-up (5 s file)" if seconds < 10 else f"{m:g} min"
        print(f"{label:>20}: wall {r['wall_s']:8.1f} s   RTF {r['rtf']:.4f}   peak RSS {r['peak_rss_gb']:.2f} GB"
              f"   speakers {r['speakers']}   (load {r['load_avg_1min']:.2f})", flush=True)
    for r in rows[1:]:
        r["rtf_without_startup"] = (r["wall_s"] - rows[0]["wall_s"]) / r["audio_s"]
    return rows


def stage_breakdown(bundle: Path, wave: np.ndarray, threads: int, device: str) -> dict:
    """Seconds per stage of one in-process diarization (encoder, heads by forward hooks)."""
    import torch

    from echo.diarization.diarizer import Diarizer

    torch.set_num_threads(threads)
    d = Diarizer.from_pretrained(bundle, device=device)
    model = d.model
    spent: dict[str, float] = {}
    started: dict[str, float] = {}
    # the diarizer runs the encoder, the segmentation head and the speaker head (not CTC, not the router)
    modules = {"encoder": model.encoder, "segmentation head": model.segmentation, "speaker head": model.speaker}
    for name, mod in modules.items():
        if mod is None:
            continue
        mod.register_forward_pre_hook(lambda m, a, name=name: started.__setitem__(name, time.perf_counter()))
        mod.register_forward_hook(lambda m, a, o, name=name: spent.__setitem__(
            name, spent.get(name, 0.0) + time.perf_counter() - started[name]))
    t0 = time.perf_counter()
    prep = d.prepare(wave, "stages")
    t1 = time.perf_counter()
    d.cluster(prep)
    t2 = time.perf_counter()
    out = dict(spent)
    out["log-mel + chunks + bookkeeping"] = (t1 - t0) - sum(spent.values())
    out["AHC + VBx + reconstruction"] = t2 - t1
    out["chunks"] = len(prep.starts)
    out["local speakers"] = int(prep.valid.sum())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[10.0, 60.0], help="recording lengths")
    ap.add_argument("--threads", type=int, default=2, help="torch / BLAS threads (default 2)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--checkpoint", type=Path, help="bundle to time (default: random default-shape bundle)")
    ap.add_argument("--paper", action="store_true", help="random bundle of the 25.4M paper profile instead")
    ap.add_argument("--exclusive", action="store_true", help="diarize with --exclusive (the RTTM written is the exclusive one; same work)")
    ap.add_argument("--stages-minutes", type=float, default=0.0, help="also time the stages on this many minutes")
    ap.add_argument("--keep", type=Path, help="keep the generated audio and bundle in this folder")
    args = ap.parse_args(argv)
    with work_dir(args.keep, "echo-rtf-") as work:
        bundle = args.checkpoint or default_bundle(work / "bundle", args.paper)
        turns = synth_turns(work)
        rows = measure(lambda path: run_cli(path, bundle, args.threads, args.device, args.exclusive), turns, work,
                       args.minutes)
        stages = None
        if args.stages_minutes > 0:
            stages = stage_breakdown(bundle, long_recording(turns, args.stages_minutes * 60.0), args.threads, args.device)
            audio = args.stages_minutes * 60.0
            print(f"where the time goes ({args.stages_minutes:g} min, {stages['chunks']} segmentation chunks, "
                  f"{stages['local speakers']} local speakers, in-process):")
            for k, v in stages.items():
                if k not in ("chunks", "local speakers"):
                    print(f"{k:>34}: {v:7.2f} s   RTF {v / audio:.4f}")
        p_lo, p_hi = PYANNOTE_CPU["rtf"]
        for r in rows[1:]:
            print(f"vs pyannote.audio 4 on CPU (RTF {p_lo}-{p_hi}, peak {PYANNOTE_CPU['peak_rss_gb']} GB at 10 min, "
                  f"{args.threads} threads): {r['audio_s'] / 60:g} min: {p_lo / r['rtf']:.0f}-{p_hi / r['rtf']:.0f}x "
                  f"faster, {PYANNOTE_CPU['peak_rss_gb'] / r['peak_rss_gb']:.1f}x less peak memory")
        print(json.dumps({"device": args.device, "threads": args.threads, "exclusive": args.exclusive, "rows": rows, "stages": stages,
                          "pyannote_cpu": PYANNOTE_CPU}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
