"""Figures of the evaluation (matplotlib, Agg canvas, PNG, written atomically).

- :func:`plot_der_by_k`: DER by number of speakers with 95% CI error bars and the targets;
- :func:`plot_timeline`: reference vs hypothesis diarization of one recording;
- :func:`plot_latent_map`: 2-D PCA (or t-SNE) of test latents coloured by speaker and by phone,
  side by side: the factorisation made visible;
- :func:`plot_training_curves`: curve tables (parquet/csv, a ``step`` column + metric columns);
- :func:`plot_separation`: log-mel spectrograms of a mixture, its separated sources and the clean
  sources.

``matplotlib.figure.Figure`` is used directly (no pyplot state), so plotting needs no display and
is safe inside workflow jobs.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from echo.errors import EchoError
from echo.io import atomic_path

__all__ = ["DER_TARGETS", "plot_der_by_k", "plot_timeline", "plot_latent_map", "plot_training_curves",
           "read_curves", "plot_separation"]

log = logging.getLogger(__name__)

# The targets (DER %, by K), drawn as markers; nothing measured is typed in here.
DER_TARGETS = {2: 3.0, 3: 6.0, 4: 8.0, 5: 11.0}


def _save(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _ci_err(point: float, ci: Sequence[float] | None) -> tuple[float, float]:
    if not ci or any(v is None or not np.isfinite(v) for v in ci):
        return 0.0, 0.0
    return max(0.0, point - ci[0]), max(0.0, ci[1] - point)


def plot_der_by_k(diarization: Mapping, path: str | os.PathLike, targets: Mapping[int, float] = DER_TARGETS,
                  title: str | None = None) -> Path:
    """Bars of primary and secondary DER (%) by K with 95% CIs; targets as black markers.

    Args:
        diarization: :func:`echo.evaluate.diarize.evaluate_diarization`'s summary.
        path: output PNG.
        targets: DER target (%) per K.
    """
    ks = sorted(diarization["primary"]["by_k"], key=int)
    if not ks:
        raise EchoError("plot_der_by_k: no recordings scored")
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    x = np.arange(len(ks) + 1)
    width = 0.38
    for off, cond, colour in ((-width / 2, "primary", "tab:blue"), (width / 2, "secondary", "tab:orange")):
        blocks = [diarization[cond]["by_k"][k] for k in ks] + [diarization[cond]]
        vals = np.array([100 * b["der"] for b in blocks])
        err = np.array([_ci_err(100 * b["der"], [100 * v for v in b.get("der_ci", [np.nan] * 2)]) for b in blocks]).T
        label = "primary (collar 0, overlap scored)" if cond == "primary" else "secondary (0.25 s collar each side)"
        ax.bar(x + off, vals, width, yerr=err, capsize=3, color=colour, label=label)
    tx = [i for i, k in enumerate(ks) if int(k) in targets]
    if tx:
        ax.scatter(np.asarray(tx) - width / 2, [targets[int(ks[i])] for i in tx], marker="_", s=300, linewidths=2,
                   color="black", zorder=3, label="target (primary)")
    ax.set_xticks(x, [f"K={k}" for k in ks] + ["all"])
    ax.set_ylabel("DER (%)")
    ax.set_title(title or f"Diarization error rate by number of speakers ({diarization.get('condition', 'blind')})")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_timeline(reference, hypothesis, path: str | os.PathLike, uem=None, title: str | None = None) -> Path:
    """Reference and hypothesis speaker turns of one recording, one row per speaker.

    Args:
        reference, hypothesis: pyannote Annotations.
        uem: optional scored region (Segment or Timeline), shaded outside.
    """
    fig = Figure(figsize=(10, 1.2 + 0.35 * (len(reference.labels()) + len(hypothesis.labels()))))
    axes = fig.subplots(2, 1, sharex=True)
    extent = (reference.get_timeline() | hypothesis.get_timeline()).extent() if (reference or hypothesis) else None
    ref_labels = sorted(reference.labels())
    colour = {("reference", lab): f"C{i % 10}" for i, lab in enumerate(ref_labels)}
    if reference and hypothesis:
        from pyannote.metrics.diarization import DiarizationErrorRate

        # a hypothesis speaker takes the colour of the reference speaker it is mapped to for DER
        for h, r in DiarizationErrorRate().optimal_mapping(reference, hypothesis).items():
            colour[("hypothesis", h)] = colour[("reference", r)]
    spare = iter(f"C{i % 10}" for i in range(len(ref_labels), len(ref_labels) + 100))
    for ax, ann, name in ((axes[0], reference, "reference"), (axes[1], hypothesis, "hypothesis")):
        labels = sorted(ann.labels())
        for row, lab in enumerate(labels):
            segs = [(s.start, s.duration) for s in ann.label_timeline(lab)]
            ax.broken_barh(segs, (row - 0.4, 0.8), color=colour.get((name, lab)) or next(spare))
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(-0.6, max(len(labels), 1) - 0.4)
        ax.set_ylabel(name)
    if uem is not None:
        from pyannote.core import Segment, Timeline

        tl = Timeline([uem]) if isinstance(uem, Segment) else uem
        if tl and extent is not None:
            lo, hi = min(extent.start, tl.extent().start), max(extent.end, tl.extent().end)
            for gap in tl.gaps(support=Segment(lo, hi)):
                for ax in axes:
                    ax.axvspan(gap.start, gap.end, color="0.85", zorder=0)
    axes[1].set_xlabel("time (s)")
    fig.suptitle(title or f"{reference.uri or hypothesis.uri}: reference vs hypothesis", fontsize=10)
    return _save(fig, path)


def _project(x: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, random_state=seed, init="pca", perplexity=min(30.0, max(2.0, (len(x) - 1) / 3))).fit_transform(x)
    raise EchoError(f"plot_latent_map: method expected 'pca' or 'tsne', got {method!r}")


def plot_latent_map(frames: np.ndarray, speakers: Sequence[str], phones: Sequence[str], path: str | os.PathLike,
                    method: str = "pca", max_points: int = 3000, max_classes: int = 10, seed: int = 0,
                    title: str | None = None) -> Path:
    """Two panels of the same 2-D projection: coloured by speaker, and by phone.

    A latent that carries speaker identity and phonetic content separately shows speaker
    clusters in one colouring and phone clusters in the other.

    Args:
        frames: ``(M, D)`` test latents (e.g. :class:`echo.evaluate.abilities.Views`'s ``latent_frames``).
        speakers, phones: ``(M,)`` labels.
        method: ``pca`` or ``tsne``.
        max_points: seeded subsample drawn before projecting.
        max_classes: the most frequent speakers/phones are coloured; the rest are grey.
    """
    x = np.asarray(frames, dtype=np.float64)
    spk = np.asarray(speakers).astype(str)
    ph = np.asarray(phones).astype(str)
    if not (len(x) == len(spk) == len(ph)) or len(x) < 3:
        raise EchoError(f"plot_latent_map: need >= 3 frames with one speaker and phone each, got {len(x)}, {len(spk)}, {len(ph)}")
    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        keep = np.sort(rng.choice(len(x), max_points, replace=False))
        x, spk, ph = x[keep], spk[keep], ph[keep]
    xy = _project(x, method, seed)
    fig = Figure(figsize=(11, 4.8))
    for ax, lab, name in zip(fig.subplots(1, 2), (spk, ph), ("speaker", "phone")):
        values, counts = np.unique(lab, return_counts=True)
        top = values[np.argsort(-counts, kind="stable")[:max_classes]]
        other = ~np.isin(lab, top)
        ax.scatter(xy[other, 0], xy[other, 1], s=4, color="0.8", label="other" if other.any() else None)
        for i, v in enumerate(sorted(top)):
            m = lab == v
            ax.scatter(xy[m, 0], xy[m, 1], s=5, color=f"C{i % 10}", label=v)
        ax.set_title(f"coloured by {name}")
        ax.legend(fontsize=6, markerscale=2, loc="best", ncol=2)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title or f"test latents ({method.upper()})", fontsize=10)
    return _save(fig, path)


def read_curves(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """A curve table (parquet or csv path, or a DataFrame) with a ``step`` column."""
    if isinstance(source, pd.DataFrame):
        df = source
    else:
        p = Path(source)
        if not p.exists():
            raise EchoError(f"{p}: curve table not found")
        df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    if "step" not in df.columns:
        raise EchoError(f"{source if not isinstance(source, pd.DataFrame) else 'curve table'}: expected a 'step' column, "
                        f"got {list(df.columns)}")
    return df


def plot_training_curves(curves: Mapping[str, str | os.PathLike | pd.DataFrame], path: str | os.PathLike,
                         metrics: Sequence[str] | None = None, max_panels: int = 6) -> Path:
    """One panel per metric, one line per run/stage (rows with NaN for that metric are skipped).

    Args:
        curves: name (e.g. stage) -> curve table.
        metrics: columns to draw (default: numeric columns other than ``step`` shared by most
            tables, in first-seen order, at most ``max_panels``).
    """
    tables = {name: read_curves(src) for name, src in curves.items()}
    if metrics is None:
        seen: list[str] = []
        for df in tables.values():
            for c in df.columns:
                if c != "step" and c not in seen and pd.api.types.is_numeric_dtype(df[c]):
                    seen.append(c)
        metrics = seen[:max_panels]
    if not metrics:
        raise EchoError("plot_training_curves: no metric columns to draw")
    ncol = min(3, len(metrics))
    nrow = -(-len(metrics) // ncol)
    fig = Figure(figsize=(4.2 * ncol, 3.0 * nrow))
    axes = np.atleast_1d(fig.subplots(nrow, ncol)).ravel()
    for ax, m in zip(axes, metrics):
        for i, (name, df) in enumerate(tables.items()):
            if m in df.columns:
                d = df[["step", m]].dropna()
                ax.plot(d["step"], d[m], color=f"C{i % 10}", label=name, lw=1)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("step")
        if len(tables) > 1:
            ax.legend(fontsize=7)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    return _save(fig, path)


def plot_separation(mixture: np.ndarray, separated: np.ndarray, references: np.ndarray, path: str | os.PathLike,
                    frontend=None, title: str | None = None) -> Path:
    """Log-mel spectrograms: the mixture (top), then each separated source beside a clean source.

    Args:
        mixture: ``(N,)`` waveform; separated: ``(S, N)`` the rendered speakers; references:
            ``(K, N)`` the clean sources (shown in their own order; the rows are not matched).
        frontend: the :class:`~echo.features.FrontEnd` to draw with (default settings if None).
    """
    from echo.features import FrontEnd

    fe = frontend or FrontEnd()
    rows = 1 + max(len(separated), len(references))
    fig = Figure(figsize=(10, 1.6 * rows))
    axes = fig.subplots(rows, 2, squeeze=False)
    mix = fe.compute(mixture)
    lo, hi = np.percentile(mix, 5), mix.max()
    extent = (0, len(mixture) / fe.sample_rate, 0, fe.n_mels)

    def show(ax, wave, label):
        ax.imshow(fe.compute(wave).T, origin="lower", aspect="auto", vmin=lo, vmax=hi, extent=extent, cmap="magma")
        ax.set_title(label, fontsize=8)
        ax.set_yticks([])

    show(axes[0, 0], mixture, f"mixture {title or ''}".strip())
    axes[0, 1].axis("off")
    for i in range(1, rows):
        if i - 1 < len(separated):
            show(axes[i, 0], separated[i - 1], f"separated speaker {i}")
        else:
            axes[i, 0].axis("off")
        if i - 1 < len(references):
            show(axes[i, 1], references[i - 1], f"clean source {i}")
        else:
            axes[i, 1].axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    return _save(fig, path)
