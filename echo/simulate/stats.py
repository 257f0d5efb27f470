"""Summary statistics of a simulated set (for stats.json, MLflow and the docs) and their plot."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from echo.io import atomic_path

__all__ = ["conversation_stats", "mixture_stats", "plot_stats"]


def _describe(x: pd.Series) -> dict:
    x = x.dropna().astype(float)
    if x.empty:
        return {"count": 0}
    q = np.quantile(x, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {"count": int(x.size), "mean": float(x.mean()), "std": float(x.std(ddof=0)),
            "min": float(q[0]), "p10": float(q[1]), "median": float(q[2]), "p90": float(q[3]), "max": float(q[4])}


def _overlap_by_k(table: pd.DataFrame) -> dict:
    out = {}
    for k, g in table.groupby("k", sort=True):
        speech = float(g["speech_s"].sum())
        out[str(int(k))] = {
            "recordings": int(len(g)),
            # time-weighted: total overlapped time over total speech time of all recordings of this K
            "achieved_overlap": float(g["overlap_s"].sum() / speech) if speech else 0.0,
            "achieved_overlap_mean": float(g["achieved_overlap"].mean()),
            "achieved_overlap_std": float(g["achieved_overlap"].std(ddof=0)),
            **({"target_overlap": float(g["target_overlap"].iloc[0])} if "target_overlap" in g else {}),
        }
    return out


def _common(table: pd.DataFrame) -> dict:
    return {
        "recordings": int(len(table)),
        "hours": float(table["duration"].sum() / 3600),
        "speech_hours": float(table["speech_s"].sum() / 3600),
        "k_histogram": {str(int(k)): int(v) for k, v in table["k"].value_counts().sort_index().items()},
        "overlap_by_k": _overlap_by_k(table),
        "snr_db": _describe(table["snr_db"]),
        "noise_share": float(table["snr_db"].notna().mean()) if len(table) else 0.0,
        "reverb_share": float(table["reverb"].mean()) if len(table) else 0.0,
        "rt60_s": _describe(table["rt60"]),
        "speakers": int(len({s for ss in table["speakers"] for s in ss})),
    }


def conversation_stats(table: pd.DataFrame) -> dict:
    """Statistics of ``recordings.parquet`` of a conversation set.

    Returns:
        JSON-ready dict: counts, hours, K histogram, overlap achieved vs target per K and over all
        recordings with K >= 2, SNR and RT60 distributions, reverb share, duration distribution.
    """
    out = _common(table)
    multi = table[table["k"] >= 2]
    speech = float(multi["speech_s"].sum())
    out["overlap_k2plus"] = {
        "target": float(multi["target_overlap"].mean()) if len(multi) else math.nan,
        "achieved": float(multi["overlap_s"].sum() / speech) if speech else math.nan,
        "achieved_mean": float(multi["achieved_overlap"].mean()) if len(multi) else math.nan,
    }
    out["duration_s"] = _describe(table["duration"])
    out["turns"] = _describe(table["n_turns"])
    return _finite(out)


def mixture_stats(table: pd.DataFrame) -> dict:
    """Statistics of ``mixtures.parquet``: as for conversations plus the full/partial mode shares."""
    out = _common(table)
    out["mode_share"] = {str(m): float(v) for m, v in table["mode"].value_counts(normalize=True).sort_index().items()}
    out["overlap"] = _describe(table["achieved_overlap"])
    return _finite(out)


def _finite(d):
    """NaN is not JSON: report it as null."""
    if isinstance(d, dict):
        return {k: _finite(v) for k, v in d.items()}
    if isinstance(d, float) and not math.isfinite(d):
        return None
    return d


def plot_stats(table: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """PNG with the K histogram and the achieved overlap ratio per K (target marked when known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_k, ax_o) = plt.subplots(1, 2, figsize=(9, 3.5))
    counts = table["k"].value_counts().sort_index()
    ax_k.bar(counts.index.astype(int), counts.values, color="tab:blue")
    ax_k.set_xlabel("number of speakers K")
    ax_k.set_ylabel("recordings")
    ax_k.set_xticks(counts.index.astype(int))
    ks = sorted(int(k) for k in table["k"].unique())
    data = [table.loc[table["k"] == k, "achieved_overlap"].to_numpy() for k in ks]
    if ks:
        ax_o.boxplot(data, positions=ks, widths=0.6)
    if "target_overlap" in table and len(table):
        tgt = table.groupby("k")["target_overlap"].first()
        ax_o.scatter(tgt.index.astype(int), tgt.values, marker="x", color="tab:red", zorder=3, label="target")
        ax_o.legend(loc="upper left")
    ax_o.set_xlabel("number of speakers K")
    ax_o.set_ylabel("overlap ratio (overlap / speech)")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        # no date in PNG metadata, so the same table gives the same bytes
        fig.savefig(tmp, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
