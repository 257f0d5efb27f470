"""results/tables.md and results/metrics.json from the JSON results the nodes wrote.

Every number here was read from a file a node produced in this run; nothing is typed in, except the
paper's published figures (``PAPER``) shown beside ours for comparison.
"""
from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

from echo.config import params_hash
from echo.tracking import git_commit

# The paper's published numbers (../shared/notes/anchors.md), for the comparison column only.
PAPER = {"der_blind": 15.00, "pit_accuracy": 97.80, "latent_si_sdr": 9.52, "factorisation_gap": 53.50}


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.2f}"
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def header_section(raw: dict, timings_dir: Path) -> str:
    timings = [json.loads(p.read_text()) for p in sorted(timings_dir.glob("*.json"))] if timings_dir.exists() else []
    devices = sorted({t["device"] for t in timings})
    out = ["# Echo results", "",
           f"- commit: `{git_commit() or 'no git checkout'}`",
           f"- params: profile `{raw.get('profile')}`, params hash `{params_hash(raw)}`",
           f"- generated: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {platform.node() or 'unknown host'}",
           f"- device(s): {', '.join(devices) if devices else 'unknown'}",
           f"- total node wall time: {sum(t['wall_s'] for t in timings) / 60:.1f} min", ""]
    if timings:
        out += ["<details><summary>Wall time and peak memory per node</summary>", "",
                _table(["node", "wall (s)", "peak RSS (MB)", "device"],
                       [[t["node"], t["wall_s"], t["peak_rss_mb"], t["device"]] for t in timings]),
                "", "</details>", ""]
    return "\n".join(out)


def corpus_section(stats: dict) -> str:
    rows = []
    for s in ("train", "dev", "test"):
        d = stats.get("splits", {}).get(s, {})
        rows.append([s, d.get("speakers", 0), d.get("utterances", 0), float(d.get("hours", 0.0))])
    out = [f"## Corpus ({stats.get('source', '?')})", "", _table(["split", "speakers", "utterances", "hours"], rows), ""]
    inv = stats.get("phoneme_inventory", [])
    out.append(f"Phoneme inventory: {len(inv)} symbols. Alignment coverage: "
               f"{100 * stats.get('alignment_utterance_share', 0):.1f}% of utterances, "
               f"{100 * stats.get('alignment_speech_share', 0):.1f}% of audio in non-silence phones.")
    return "\n".join(out) + "\n"


def render(raw: dict, results: Path = Path("results"), timings: Path = Path("logs/timings")) -> tuple[str, dict]:
    """Return (markdown, flat metrics dict) from the results directory."""
    parts = [header_section(raw, timings)]
    metrics: dict = {}
    corpus = _load(results / "corpus_stats.json")
    if corpus:
        parts.append(corpus_section(corpus))
        metrics["corpus"] = {"hours_total": sum(d.get("hours", 0) for d in corpus.get("splits", {}).values())}
    return "\n".join(parts), metrics
