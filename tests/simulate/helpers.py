"""A tiny corpus for simulation tests: a real manifest + FLAC files of tone bursts with silence.

Each utterance is ``silence | burst [| silence gap | burst] | silence``; a burst is a speaker-specific
tone with a little noise, the silences are exact zeros, so the reference activity can be checked on
the samples. The alignment labels the silences ``sil`` and splits each burst into phones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from echo.corpus import manifest

SR = 16_000


def build_corpus(root: Path, speakers: dict[str, int] | None = None, utts_per_speaker: int = 6,
                 alignment: bool = True, seed: int = 0) -> Path:
    """Write ``root/manifest.parquet`` and one FLAC per speaker; return the manifest path."""
    speakers = speakers or {"train": 6, "test": 6}
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, n_spk in speakers.items():
        for s in range(n_spk):
            spk = f"{split}spk{s}"
            f0 = 150.0 + 40.0 * s + (0 if split == "train" else 17.0)
            chunks, pos = [], 0
            for u in range(utts_per_speaker):
                lead, trail = (int(rng.uniform(0.05, 0.3) * SR) for _ in range(2))
                bursts = [int(rng.uniform(0.4, 1.0) * SR)]
                if rng.random() < 0.5:
                    bursts.append(int(rng.uniform(0.3, 0.8) * SR))
                gap = int(rng.uniform(0.35, 0.5) * SR)
                x, phones, starts, ends = [np.zeros(lead, np.float32)], ["sil"], [0], [lead]
                t = lead
                for b_i, b in enumerate(bursts):
                    if b_i:
                        x.append(np.zeros(gap, np.float32))
                        phones.append("sil"), starts.append(t), ends.append(t + gap)
                        t += gap
                    tt = np.arange(b) / SR
                    x.append((0.3 * np.sin(2 * np.pi * f0 * tt) + 0.02 * rng.standard_normal(b)).astype(np.float32))
                    cuts = np.linspace(t, t + b, 4).astype(int)
                    for p, (a, e) in zip(["a", "b", "c"], zip(cuts[:-1], cuts[1:])):
                        phones.append(p), starts.append(int(a)), ends.append(int(e))
                    t += b
                speech_start, speech_end = lead, t
                x.append(np.zeros(trail, np.float32))
                phones.append("sil"), starts.append(t), ends.append(t + trail)
                utt = np.concatenate(x)
                chunks.append(utt)
                rows.append({
                    "utt_id": f"{spk}-{u:02d}", "speaker": spk, "split": split, "source": "embedded",
                    "path": f"audio/{spk}.flac", "start": pos, "num_samples": len(utt), "sample_rate": SR,
                    "duration": len(utt) / SR, "text": "", "phonemes": " ".join(p for p in phones if p != "sil"),
                    "align_phone": phones if alignment else [], "align_start": starts if alignment else [],
                    "align_end": ends if alignment else [],
                    "speech_start": speech_start, "speech_end": speech_end,
                })
                pos += len(utt)
            (root / "audio").mkdir(exist_ok=True)
            sf.write(root / "audio" / f"{spk}.flac", np.concatenate(chunks), SR, subtype="PCM_16")
    df = pd.DataFrame(rows)
    for c in ("start", "num_samples", "sample_rate", "speech_start", "speech_end"):
        df[c] = df[c].astype("int64")
    df = manifest.validate(df)
    path = root / "manifest.parquet"
    df.to_parquet(path, index=False)
    return path


def speech_mask(row: pd.Series) -> np.ndarray:
    """Non-silence samples of a fixture utterance (relative to its start)."""
    m = np.zeros(int(row["num_samples"]), bool)
    for p, a, b in zip(row["align_phone"], row["align_start"], row["align_end"]):
        if p != "sil":
            m[a:b] = True
    return m
