"""Speed and memory of ``python -m echo separate`` on a long recording: real-time factor and peak RSS.

    python benchmarks/separate_speed.py                              # 10 min, 2 CPU threads
    python benchmarks/separate_speed.py --checkpoint models/echo     # the trained separation model
    python benchmarks/separate_speed.py --minutes 10 60 --device cuda

Each measurement runs the real command line in a fresh process (decoding, the diarization, the
chunked separation, the WAV/RTTM/JSON writing, ``Separator.from_pretrained`` and Python start-up
included) and reads the process's own peak resident memory (``VmHWM``), as
``benchmarks/diarize_rtf.py`` does, whose audio and process timing this script shares: espeak-ng
speech of four voices taking turns (noise bursts without espeak-ng), written as 16 kHz FLAC. The
start-up cost is measured on a 5 s file and printed, so it can be told apart from per-second costs.

Without ``--checkpoint`` the model is one of the default profile's shapes with random weights
(``diarize_rtf.default_bundle`` plus the default slot separator): the cost hardly depends on the
weights, except through how many speakers the diarization finds (one output WAV each), how many
slots the router activates per chunk, and how many chunks reach the model at all: a chunk where the
diarization hears one speaker is copied to that speaker without it. So ``--num-speakers 4`` (the
recording's four voices) is passed by default: a blind count of 1 (random weights often find one
speaker) would skip the model everywhere and time only the diarization.

The issue's targets: RTF <= 0.05 and peak RSS <= 2 GB at 10 minutes on 2 CPU threads. Figures are
printed, never asserted: timings depend on the machine and on what else runs on it (the load
average is printed beside them).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diarize_rtf import default_bundle, measure, synth_turns, time_command, work_dir  # noqa: E402

TARGET = {"rtf": 0.05, "peak_rss_gb": 2.0}


def run_separate(audio: Path, bundle: Path, threads: int, device: str | None, num_speakers: int | None) -> dict:
    """``python -m echo separate`` on ``audio`` in a fresh process: wall seconds, peak RSS, speakers."""
    out = audio.with_suffix(".sep")
    argv = ["separate", str(audio), "--checkpoint", str(bundle), "--out-dir", str(out)]
    if num_speakers:
        argv += ["--num-speakers", str(num_speakers)]
    if device:
        argv += ["--device", device]
    r = time_command(argv, audio, threads)
    r["speakers"] = json.loads((out / f"{audio.stem}.json").read_text())["num_speakers"]
    shutil.rmtree(out)  # S WAVs of the whole recording: not kept
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[10.0], help="recording lengths (default 10)")
    ap.add_argument("--threads", type=int, default=2, help="torch / BLAS threads (default 2)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--num-speakers", type=int, default=4,
                    help="passed to separate (default 4, the recording's voices; 0: blind)")
    ap.add_argument("--checkpoint", type=Path, help="model folder to time (default: random default-shape model)")
    ap.add_argument("--keep", type=Path, help="keep the generated audio and model in this folder")
    args = ap.parse_args(argv)
    with work_dir(args.keep, "echo-sep-") as work:
        bundle = args.checkpoint or default_bundle(work / "bundle", separator=True)
        rows = measure(lambda path: run_separate(path, bundle, args.threads, args.device, args.num_speakers),
                       synth_turns(work), work, args.minutes)
        for r in rows[1:]:
            met = [f"RTF {'met' if r['rtf'] <= TARGET['rtf'] else 'missed'}",
                   f"memory {'met' if r['peak_rss_gb'] <= TARGET['peak_rss_gb'] else 'missed'}"]
            print(f"targets (RTF <= {TARGET['rtf']}, <= {TARGET['peak_rss_gb']} GB) at {r['audio_s'] / 60:g} min: "
                  f"{', '.join(met)}")
        print(json.dumps({"device": args.device, "threads": args.threads, "checkpoint": str(args.checkpoint),
                          "num_speakers": args.num_speakers,
                          "rows": rows, "target": TARGET}, indent=1))
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
