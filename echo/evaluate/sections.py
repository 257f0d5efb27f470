"""Markdown sections of ``results/tables.md``, rendered from the evaluation result dicts.

Every measured number comes from the dicts passed in (:func:`echo.evaluate.diarize.evaluate_diarization`,
:func:`echo.evaluate.separation.evaluate_routing`, :func:`echo.evaluate.abilities.measure_abilities`).
The only numbers typed in here are the paper's published figures (:data:`PAPER`) and the project
targets (:data:`TARGETS`), shown beside ours for comparison.

Formatting: a single result shows ``point [low, high]`` (95% bootstrap CI) where the dict has an
interval; a list of results (one per training seed) shows ``mean ± std (n=N)`` over seeds and the
target status is judged on the mean. Missing results print ``n/a``. Rates are stored as fractions
and shown in %, SI-SDR in dB, gaps in points.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from echo.metrics.bootstrap import mean_std

__all__ = ["PAPER", "TARGETS", "markdown_table", "format_cell", "status", "main_table", "diarization_by_k_table",
           "separation_by_k_table", "waveform_separation_table", "confusion_table", "ablation_table", "content_views_table", "phonetic_stage_table", "tuning_table", "segmentation_table",
           "separator_table", "seeds_table", "channels_table", "real_voices_table"]

# The paper's published numbers (anchors.md), for the comparison column only.
PAPER = {"der_blind": 15.00, "pit_accuracy": 97.80, "latent_si_sdr": 9.52, "factorisation_gap": 53.50}
# The project's targets: (comparison, threshold) in display units (% / dB / points).
TARGETS = {
    "der_all": ("<=", 12.0), "der_k2": ("<=", 5.0), "der_k3": ("<=", 8.0), "der_k4": ("<=", 11.0),
    "der_k5": ("<=", 14.0), "missed": ("<=", 5.0), "fa_k1": ("<=", 3.0), "count_conversations": (">=", 90.0),
    "count_accuracy": (">=", 90.0), "pit_accuracy": (">=", 99.0), "si_sdri": (">=", 10.0),
    "factorisation_gap": (">=", 40.0), "per": ("<=", 20.0), "per_vq": ("<=", 35.0),
    "wave_si_sdri_k2": (">=", 8.0), "wave_si_sdri_multi": (">=", 5.0),
    # channel robustness: DER increase over the clean condition, in points (issue 11)
    "channel_telephone": ("<=", 3.0), "channel_codec": ("<=", 3.0), "channel_clipped": ("<=", 5.0),
    # the real-voice evaluation set (issue 11)
    "real_der": ("<=", 20.0), "real_count": (">=", 80.0),
}
# which robustness target each channel condition is judged against
CHANNEL_TARGET = {"telephone": "channel_telephone", "g711_mulaw": "channel_codec", "g711_alaw": "channel_codec",
                  "gsm": "channel_codec", "mp3_24k": "channel_codec", "opus_12k": "channel_codec",
                  "aac_24k": "channel_codec", "clipped": "channel_clipped"}
CHANNEL_TEXT = {"clean": "16 kHz full band, as simulated", "telephone": "8 kHz, 300-3400 Hz band",
                "g711_mulaw": "8 kHz band + G.711 mu-law", "g711_alaw": "8 kHz band + G.711 A-law",
                "gsm": "8 kHz band + GSM 06.10 (13 kb/s)", "mp3_24k": "MP3 24 kb/s", "opus_12k": "Opus 12 kb/s",
                "aac_24k": "AAC 24 kb/s", "clipped": "hard clipping 12 dB below peak", "quiet": "level -30 dB"}

Result = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


def _get(d: Mapping | None, path: str):
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return None
        if part not in cur:
            # by-K dicts may have int keys after a round trip through Python rather than JSON
            alt = int(part) if part.isdigit() else None
            if alt is None or alt not in cur:
                return None
            part = alt
        cur = cur[part]
    return cur


def _finite(v) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(float(v))


def _values(res: Result, path: str) -> list[float]:
    if res is None:
        return []
    items = [res] if isinstance(res, Mapping) else list(res)
    return [float(v) for v in (_get(r, path) for r in items) if _finite(v)]


def _point(res: Result, path: str) -> float | None:
    """The number judged against a target: the value, or the mean over seeds."""
    v = _values(res, path)
    return float(np.mean(v)) if v else None


def format_cell(res: Result, path: str, scale: float = 1.0, digits: int = 2, ci: str | None = None,
                sign: bool = False) -> str:
    """One table cell.

    Args:
        res: a result dict, a list of them (seeds), or None.
        path: dotted key of the number (``"primary.by_k.2.der"``).
        scale: multiply before printing (100 for %).
        digits: decimals.
        ci: dotted key of ``[low, high]`` (used for a single result), or ``"<path>_low/<path>_high"``
            style pair given as ``"a|b"``.
        sign: print an explicit ``+`` for positive values (gains, gaps).
    """
    if res is None:
        return "n/a"
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    if not isinstance(res, Mapping):
        vals = [v * scale for v in _values(res, path)]
        if not vals:
            return "n/a"
        m, s = mean_std(vals)
        return f"{f.format(m)} ± {s:.{digits}f} (n={len(vals)})" if len(vals) > 1 else f"{f.format(m)} (n=1)"
    v = _get(res, path)
    if not _finite(v):
        return "n/a"
    text = f.format(float(v) * scale)
    if ci:
        if "|" in ci:
            lo, hi = (_get(res, p) for p in ci.split("|"))
        else:
            pair = _get(res, ci)
            lo, hi = (pair[0], pair[1]) if isinstance(pair, (list, tuple)) and len(pair) == 2 else (None, None)
        if _finite(lo) and _finite(hi):
            text += f" [{float(lo) * scale:.{digits}f}, {float(hi) * scale:.{digits}f}]"
    return text


def status(value: float | None, target: tuple[str, float] | None) -> str:
    """``met`` / ``missed`` for a value in display units against ``(op, threshold)``; ``—`` without a target."""
    if target is None:
        return "—"
    if value is None or not math.isfinite(value):
        return "n/a"
    op, thr = target
    ok = value <= thr + 1e-12 if op == "<=" else value >= thr - 1e-12
    return "met" if ok else "**missed**"


def _target_text(target: tuple[str, float] | None, unit: str) -> str:
    if target is None:
        return "—"
    return f"{'≤' if target[0] == '<=' else '≥'} {target[1]:g}{unit}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-markdown table of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _note(res: Result) -> str:
    if res is None or isinstance(res, Mapping):
        return "95% bootstrap CI in brackets (resampling recordings / mixtures / utterances)."
    return f"mean ± std over {len(list(res))} training seeds (sample std)."


def main_table(diarization: Result = None, separation: Result = None, abilities: Result = None,
               diarization_seeds: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The headline table: this run next to the paper and the targets.

    Args:
        diarization: blind :func:`~echo.evaluate.diarize.evaluate_diarization` summary (or a list over seeds).
        separation: :func:`~echo.evaluate.separation.evaluate_routing` summary (or list).
        abilities: final-model :func:`~echo.evaluate.abilities.measure_abilities` dict (or list).
        diarization_seeds: blind summaries of the same diarization chain trained with each seed of
            ``seeds.diarization``, the published one first (:mod:`echo.evaluate.seeds`); with two or
            more, a column gives the diarization rows' mean ± std across them beside the run's CI.
            Targets are judged on the published run.

    Returns:
        A markdown section (heading, table, note).
    """
    D, S, A = diarization, separation, abilities
    spread = list(diarization_seeds) if diarization_seeds is not None and len(diarization_seeds) > 1 else None
    rows: list[list[str]] = []

    def row(name, res, path, scale, unit, paper=None, target_key=None, ci=None, sign=False):
        target = TARGETS.get(target_key) if target_key else None
        p = _point(res, path)
        cells = [name, format_cell(res, path, scale, ci=ci, sign=sign)]
        if spread is not None:
            cells.append(format_cell(spread, path, scale, sign=sign) if res is D else "—")
        rows.append(cells + [("+" if sign else "") + f"{paper:.2f}" if paper is not None else "—",
                             _target_text(target, unit), status(p * scale if p is not None else None, target)])

    row("Blind DER, all K, primary (%)", D, "primary.der", 100, " %", PAPER["der_blind"], "der_all",
        ci="primary.der_ci")
    row("Missed speech, all K (%)", D, "primary.missed_rate", 100, " %", target_key="missed")
    row("False alarm, all K (%)", D, "primary.false_alarm_rate", 100, " %")
    row("Speaker confusion, all K (%)", D, "primary.confusion_rate", 100, " %")
    row("False alarm, K=1 (%)", D, "primary.by_k.1.false_alarm_rate", 100, " %", target_key="fa_k1")
    row("Exclusive output DER, all K (%)", D, "exclusive.der", 100, " %")
    for k in (1, 2, 3, 4, 5):
        if k == 1 and _get(D if isinstance(D, Mapping) else (D[0] if D else None), "primary.by_k.1") is None:
            continue
        row(f"Blind DER, K={k}, primary (%)", D, f"primary.by_k.{k}.der", 100, " %",
            target_key=f"der_k{k}" if f"der_k{k}" in TARGETS else None, ci=f"primary.by_k.{k}.der_ci")
    row("Blind DER, all K, secondary 0.25 s collar (%)", D, "secondary.der", 100, " %", ci="secondary.der_ci")
    row("JER, all K, primary (%)", D, "primary.jer", 100, " %", ci="primary.jer_ci")
    row("Speaker-count accuracy, conversations (%)", D, "count.accuracy", 100, " %", target_key="count_conversations",
        ci="count.accuracy_ci")
    row("Speaker-count accuracy, mixtures (%)", S, "count_accuracy", 100, " %", target_key="count_accuracy",
        ci="count_accuracy_ci")
    row("PIT separation accuracy (%)", S, "pit_accuracy", 100, " %", PAPER["pit_accuracy"], "pit_accuracy",
        ci="pit_accuracy_ci")
    row("Latent SI-SDR (dB)", S, "si_sdr", 1, " dB", PAPER["latent_si_sdr"], ci="si_sdr_ci", sign=True)
    row("Latent SI-SDRi (dB)", S, "si_sdri", 1, " dB", target_key="si_sdri", ci="si_sdri_ci", sign=True)
    if _get(S if isinstance(S, Mapping) else (S[0] if S else None), "waveform") is not None:
        row("Waveform SI-SDRi, K=2 (dB)", S, "by_k.2.waveform.si_sdri", 1, " dB", target_key="wave_si_sdri_k2",
            ci="by_k.2.waveform.si_sdri_ci", sign=True)
        row("Waveform SI-SDRi, K=2..4 (dB)", S, "multi_speaker.waveform.si_sdri", 1, " dB",
            target_key="wave_si_sdri_multi", ci="multi_speaker.waveform.si_sdri_ci", sign=True)
    a0 = A if isinstance(A, Mapping) else (A[0] if A else None)
    view = _get(a0, "content_view") or "n/a"
    row(f"Factorisation gap, speaker-ID, content view = {view} (points)", A, "factorisation_gap", 1, " pts",
        PAPER["factorisation_gap"], "factorisation_gap", sign=True)
    row(f"Factorisation gap, phone, content view = {view} (points)", A, "gap_phone_points", 1, " pts", sign=True)
    row(f"Frame phone accuracy, content view = {view} (%)", A, "phone_acc_content_view", 100, " %")
    if _get(a0, "content_views.hidden") is not None and view != "hidden":
        row("Factorisation gap, speaker-ID, hidden-layer view (points)", A, "content_views.hidden.gap_speaker_points",
            1, " pts", sign=True)
        row("Frame phone accuracy, hidden-layer view (%)", A, "content_views.hidden.phone_acc", 100, " %")
    row("PER, continuous CTC (%)", A, "per", 100, " %", target_key="per", ci="per_ci_low|per_ci_high")
    row("PER, through VQ (%)", A, "per_vq", 100, " %", target_key="per_vq", ci="per_vq_ci_low|per_vq_ci_high")
    row("Speaker verification EER (%)", A, "eer", 100, " %")
    note = _note(next((r for r in (D, S, A) if r is not None), None))
    header = ["metric", "this run"] + ([f"across {len(spread)} seeds"] if spread is not None else []) + [
        "paper", "target", "status"]
    if spread is not None:
        note += (f" 'across {len(spread)} seeds': mean ± sample std of the diarization chain (segmentation stage, "
                 "dev tuning, blind test DER) trained with each seed of `seeds.diarization` on this run's encoder "
                 "(table 'Diarization across training seeds').")
    return "\n".join([
        "## Main results", "",
        markdown_table(header, rows), "",
        f"{note} Paper = the published Echo numbers; targets from the project issue. DER primary: "
        "collar 0, overlap scored; definitions in docs/metrics.md.", ""])


def seeds_table(runs: Sequence[Mapping[str, Any]] | None,
                title: str = "Diarization across training seeds (test conversations, blind)") -> str:
    """One row per seed of the diarization chain and a mean ± std row.

    Args:
        runs: ``[{"seed", "published": bool, "segmentation": {"best_step", "dev": {"error"}}, "selected":
            {"Fa", "Fb", "ahc_threshold"}, "dev_der", "blind": summary}, ...]``, the published run first.
    """
    if not runs:
        return f"## {title}\n\nn/a (no seed runs)\n"
    ks = _keys([r["blind"] for r in runs], "primary.by_k")
    paths = [("primary.der", 100), *((f"primary.by_k.{k}.der", 100) for k in ks), ("primary.missed_rate", 100),
             ("primary.false_alarm_rate", 100), ("primary.confusion_rate", 100), ("count.accuracy", 100)]
    body = []
    for r in runs:
        sel, seg = r.get("selected") or {}, r.get("segmentation") or {}
        body.append([f"{r['seed']}" + (" (published)" if r.get("published") else ""),
                     str(seg.get("best_step", "n/a")), format_cell(seg, "dev.error", 100),
                     " / ".join(f"{float(sel[k]):g}" if _finite(sel.get(k)) else "n/a" for k in ("Fa", "Fb", "ahc_threshold")),
                     format_cell(r, "dev_der", 100),
                     *(format_cell(r["blind"], p, sc) for p, sc in paths)])
    if len(runs) > 1:
        blind = [r["blind"] for r in runs]
        body.append([f"mean ± std (n={len(runs)})", "", format_cell([r.get("segmentation") or {} for r in runs], "dev.error", 100),
                     "", format_cell(list(runs), "dev_der", 100), *(format_cell(blind, p, sc) for p, sc in paths)])
    header = ["seed", "seg. step", "dev local error (%)", "Fa / Fb / AHC thr.", "dev DER (%)", "test DER (%)",
              *(f"K={k} (%)" for k in ks), "missed (%)", "false alarm (%)", "confusion (%)", "count acc. (%)"]
    return "\n".join([
        f"## {title}", "", markdown_table(header, body), "",
        "Each seed trains the segmentation head (`stages.segmentation` with that seed), tunes the clustering on dev "
        "with the same grid and rule, and diarizes the test conversations blind; the encoder, the other heads and the "
        "PLDA are the published run's (the PLDA is fitted on reference single-speaker regions, which no segmentation "
        "seed changes). std = sample standard deviation across seeds (ddof 1); with 3 seeds it is a rough figure.", ""])


def _keys(res: Result, path: str) -> list[str]:
    items = [res] if isinstance(res, Mapping) else list(res or [])
    keys: list[str] = []
    for r in items:
        for k in (_get(r, path) or {}):
            if str(k) not in keys:
                keys.append(str(k))
    return sorted(keys, key=int)


def diarization_by_k_table(diarization: Result, title: str = "Diarization by number of speakers",
                           targets: bool = True) -> str:
    """DER (primary, secondary), JER, error components and count accuracy for each K and overall
    (``targets``: the synthetic test set's per-K targets in the last columns)."""
    D = diarization
    if D is None:
        return f"## {title}\n\nn/a (not evaluated)\n"
    rows = []
    for k in _keys(D, "primary.by_k") + ["all"]:
        pre = "" if k == "all" else f"by_k.{k}."
        p, s, c = f"primary.{pre}", f"secondary.{pre}", ("count." + pre) if k != "all" else "count."
        tot = _point(D, p + "total")
        comp = []
        for key in ("missed", "false_alarm", "confusion"):
            v = _point(D, p + key)
            comp.append(f"{100 * v / tot:.2f}" if v is not None and tot else "n/a")
        target = TARGETS.get(f"der_k{k}" if k != "all" else "der_all") if targets else None
        der = _point(D, p + "der")
        n = _point(D, p + "n_recordings")
        rows.append([f"K={k}" if k != "all" else "all", f"{n:.0f}" if n is not None else "n/a",
                     format_cell(D, p + "der", 100, ci=p + "der_ci"), format_cell(D, s + "der", 100, ci=s + "der_ci"),
                     format_cell(D, p + "jer", 100, ci=p + "jer_ci"), *comp,
                     format_cell(D, c + "accuracy", 100, ci=c + "accuracy_ci"),
                     _target_text(target, " %"), status(100 * der if der is not None else None, target)])
    cond = D.get("condition", "blind") if isinstance(D, Mapping) else (D[0].get("condition", "blind") if D else "blind")
    return "\n".join([
        f"## {title} ({cond})", "",
        markdown_table(["K", "recordings", "DER primary (%)", "DER secondary (%)", "JER (%)", "missed (%)", "false alarm (%)",
                "confusion (%)", "count acc. (%)", "target", "status"], rows), "",
        f"{_note(D)} Error components are shares of reference speech (primary condition).", ""])


def separation_by_k_table(separation: Result, title: str = "Routing / separation by number of speakers") -> str:
    """Count accuracy, PIT accuracy, latent SI-SDR and SI-SDRi for each K and overall."""
    S = separation
    if S is None:
        return f"## {title}\n\nn/a (not evaluated)\n"
    rows = []
    for k in _keys(S, "by_k") + ["all"]:
        pre = "" if k == "all" else f"by_k.{k}."
        n = _point(S, pre + "n_mixtures")
        rows.append([f"K={k}" if k != "all" else "all", f"{n:.0f}" if n is not None else "n/a",
                     format_cell(S, pre + "count_accuracy", 100, ci=pre + "count_accuracy_ci"),
                     format_cell(S, pre + "pit_accuracy", 100, ci=pre + "pit_accuracy_ci"),
                     format_cell(S, pre + "si_sdr", 1, ci=pre + "si_sdr_ci", sign=True),
                     format_cell(S, pre + "si_sdri", 1, ci=pre + "si_sdri_ci", sign=True)])
    return "\n".join([
        f"## {title}", "",
        markdown_table(["K", "mixtures", "count acc. (%)", "PIT acc. (%)", "latent SI-SDR (dB)", "latent SI-SDRi (dB)"], rows), "",
        f"{_note(S)} SI-SDR(i) averages matched sources; targets: count ≥ 99 %, PIT ≥ 99 %, SI-SDRi ≥ 10 dB.", ""])


def waveform_separation_table(separation: Result, title: str = "Waveform separation by number of speakers") -> str:
    """Waveform SI-SDR / SI-SDRi of the separator's outputs for each K, K = 2..4 and overall, with the
    K-set matching's matched / missed / extra sources; blind (the diarizer's speakers), then the
    clean-activity diagnostic beside it."""
    S = separation
    first = S if isinstance(S, Mapping) else (S[0] if S else None)
    if first is None or (_get(first, "waveform") is None and _get(first, "waveform_clean_activity") is None):
        return f"## {title}\n\nn/a (no separator in the evaluated model)\n"
    rows = []
    for k in _keys(S, "by_k") + ["K=2..4", "all"]:
        pre = {"all": "", "K=2..4": "multi_speaker."}.get(k, f"by_k.{k}.")
        w = pre + "waveform."
        n, src = _point(S, pre + "n_mixtures"), _point(S, pre + "n_sources")
        counts = [_point(S, w + key) for key in ("n_matched", "n_missed", "n_extra")]
        target = TARGETS.get({"2": "wave_si_sdri_k2", "K=2..4": "wave_si_sdri_multi"}.get(k, ""))
        value = _point(S, w + "si_sdri")
        rows.append([k if not k.isdigit() else f"K={k}", f"{n:.0f}" if n is not None else "n/a",
                     f"{src:.0f}" if src is not None else "n/a",
                     format_cell(S, w + "count_accuracy", 100, 1, ci=w + "count_accuracy_ci"),
                     *(f"{c:.0f}" if c is not None else "n/a" for c in counts),
                     format_cell(S, w + "si_sdr", 1, ci=w + "si_sdr_ci", sign=True),
                     format_cell(S, w + "si_sdri", 1, ci=w + "si_sdri_ci", sign=True),
                     format_cell(S, w + "si_sdri_all_sources", 1, ci=w + "si_sdri_all_sources_ci", sign=True),
                     format_cell(S, pre + "waveform_clean_activity.si_sdri", 1,
                                 ci=pre + "waveform_clean_activity.si_sdri_ci", sign=True),
                     _target_text(target, " dB"), status(value, target)])
    return "\n".join([
        f"## {title}", "",
        markdown_table(["K", "mixtures", "sources", "count acc. (%)", "matched", "missed", "extra", "SI-SDR (dB)",
                        "SI-SDRi (dB)", "SI-SDRi, every source (dB)", "SI-SDRi, clean-activity identities (dB)",
                        "target", "status"], rows), "",
        f"{_note(S)} Blind: the deployable diarizer diarizes each mixture (K never given) and the separator renders "
        "every speaker it finds from that speaker's embedding (what `echo separate` does); estimates are matched to "
        "the clean sources by the Hungarian algorithm on waveform SI-SDR. SI-SDR(i) averages the matched sources; "
        "'every source' also counts each missed source, scored as the unprocessed mixture (0 dB improvement). The "
        "clean-activity column is a diagnostic, not a result: every true source rendered from its identity pooled "
        "where the clean sources say it talks alone (the stage's training condition), so the gap to the blind "
        "column is what the diarization of the mixture costs. "
        "Spectrograms of one test mixture: [figure](figures/separation.png).", ""])


def confusion_table(result: Mapping | None, path: str = "count", title: str = "Speaker-count confusion") -> str:
    """Confusion matrix (rows = true K, columns = estimated K) from ``result[path]``."""
    c = _get(result, path) if result is not None else None
    if not c or not c.get("labels"):
        return f"### {title}\n\nn/a\n"
    labels = c["labels"]
    rows = [[f"K={t}"] + [str(v) for v in c["confusion"][i]] for i, t in enumerate(labels)]
    return "\n".join([f"### {title}", "", markdown_table(["true \\ estimated"] + [str(v) for v in labels], rows), ""])


_ABLATION = [
    ("spk-ID, speaker view (%)", "speaker_id_acc_speaker_view", 100, False),
    ("spk-ID, content view (%)", "speaker_id_acc_content_view", 100, False),
    ("phone acc., content view (%)", "phone_acc_content_view", 100, False),
    ("phone acc., speaker view (%)", "phone_acc_speaker_view", 100, False),
    ("gap spk (pts)", "gap_speaker_points", 1, True),
    ("gap phone (pts)", "gap_phone_points", 1, True),
    ("latent spk-ID (%)", "latent_speaker_id_acc", 100, False),
    ("latent phone acc. (%)", "latent_phone_acc", 100, False),
    ("EER (%)", "eer", 100, False),
]


def ablation_table(stages: Mapping[str, Result], title: str = "Stage ablation (abilities on test speakers)") -> str:
    """One row per stage (in the given order): the ability probes, PER, and, where a stage's dict
    has them, blind DER (``der``) and PIT accuracy (``pit_accuracy``) merged in by the caller.

    Args:
        stages: stage name (``pretrain``, ``+speaker``, ``+phonetic``, ``+routing``, ``+routing (VQ)``,
            ...) -> :func:`~echo.evaluate.abilities.measure_abilities` dict (or a list over seeds).
    """
    extra = [c for c in (("blind DER (%)", "der", 100, False), ("PIT acc. (%)", "pit_accuracy", 100, False))
             if any(_values(r, c[1]) for r in stages.values())]
    cols = _ABLATION + [("PER (%)", "per", 100, False), ("PER VQ (%)", "per_vq", 100, False)] + extra
    rows = []
    for name, res in stages.items():
        cells = [name]
        for _, key, scale, sign in cols:
            ci = f"{key}_ci_low|{key}_ci_high" if key in ("per", "per_vq") else None
            cells.append(format_cell(res, key, scale, ci=ci, sign=sign))
        rows.append(cells)
    first = next(iter(stages.values()), None)
    return "\n".join([
        f"## {title}", "",
        markdown_table(["stage"] + [c[0] for c in cols], rows), "",
        f"{_note(first)} Views (docs/metrics.md): speaker view = speaker head, content view = the headline view of "
        "the phonetic heads (chosen on dev speakers; the next table gives every view), each falling back to the "
        "shared latent when the stage has no such head (the pretrained row therefore has gap 0 by construction "
        "and its information is the latent probes).", ""])


_VIEW_NAMES = {"hidden": "hidden (CTC head's last hidden layer)", "posterior": "posterior (CTC posteriors, blank included)",
               "phones": "phones (posteriorgram over phones, blank removed)", "codes": "codes (VQ code vectors)"}


def content_views_table(stages: Mapping[str, Result], title: str = "Content views (test speakers; dev decides)") -> str:
    """Every content view of every stage that has phonetic heads: both probes on test and on dev
    speakers, the gaps, and which view the dev rule chose (:func:`~echo.evaluate.abilities.choose_content_view`).

    Args:
        stages: stage row name -> :func:`~echo.evaluate.abilities.measure_abilities` dict (or a list over seeds).
    """
    from echo.evaluate.abilities import CONTENT_VIEWS  # the tie-break order of the choice

    rows = []
    for name, res in stages.items():
        r0 = res if isinstance(res, Mapping) else (res[0] if res else None)
        views = (r0 or {}).get("content_views") or {}
        for view in sorted(views, key=lambda v: (CONTENT_VIEWS.index(v) if v in CONTENT_VIEWS else len(CONTENT_VIEWS), v)):
            mark = "**" if (r0 or {}).get("content_view") == view else ""
            rows.append([name, f"{mark}{_VIEW_NAMES.get(view, view)}{mark}",
                         *(format_cell(res, f"content_views.{view}.{k}", sc, sign=sg) for k, sc, sg in (
                             ("speaker_id_acc", 100, False), ("phone_acc", 100, False),
                             ("gap_speaker_points", 1, True), ("gap_phone_points", 1, True))),
                         *(format_cell(res, f"content_views_dev.{view}.{k}", sc, sign=sg) for k, sc, sg in (
                             ("speaker_id_acc", 100, False), ("phone_acc", 100, False), ("gap_speaker_points", 1, True)))])
    if not rows:
        return f"## {title}\n\nn/a (no stage with a CTC head)\n"
    return "\n".join([f"## {title}", "", markdown_table(
        ["stage", "content view", "spk-ID (%)", "phone acc. (%)", "gap spk (pts)", "gap phone (pts)",
         "dev spk-ID (%)", "dev phone acc. (%)", "dev gap spk (pts)"], rows), "",
        "Bold: the headline content view, chosen on DEV speakers: the largest speaker-direction gap among the views "
        "whose dev frame phone accuracy is at least the hidden view's (ties: the order of the table, hidden, posterior, phones, codes). The hidden view "
        "is the only content view before issue 12 and stays reported. Probes and gaps as in the stage ablation "
        "(docs/metrics.md).", ""])


def phonetic_stage_table(summary: Mapping | None, dev_rows: Sequence[Mapping] | None) -> str:
    """The phonetic stage on dev utterances: PER of both heads and the VQ codebook's use, per evaluation."""
    title = "## Phonetic stage (stage 2) on dev utterances"
    if not summary:
        return f"{title}\n\nn/a (not trained)\n"

    def cell(r, k, scale=100.0, fmt="{:.2f}"):
        return fmt.format(scale * r[k]) if _finite(r.get(k)) else "n/a"

    body = [[str(int(r["step"])) + (" (selected)" if int(r["step"]) == summary.get("best_step") else ""),
             cell(r, "per_ctc"), cell(r, "per_vq"), cell(r, "vq_perplexity", 1.0, "{:.1f}"), cell(r, "vq_usage", 100.0, "{:.1f}"),
             cell(r, "speaker_eer")] for r in dev_rows or []]
    cfg = summary.get("config", {})
    return "\n".join([title, "", markdown_table(["step", "PER, CTC (%)", "PER, VQ (%)", "VQ perplexity",
                                                   "codes used (%)", "dev EER (%)"], body), "",
                      f"Greedy CTC decoding of dev utterances (dev speakers); codebook of {cfg.get('codebook_size', 'n/a')} "
                      "codes, perplexity = exp(entropy of dev code use). The gap between the two PER columns is the "
                      "VQ bottleneck's cost (the paper's 'structural wall' for ASR).", ""])


def tuning_table(rows: Sequence[Mapping], title: str = "Clustering settings tuned on dev conversations", top: int = 10) -> str:
    """The :func:`~echo.evaluate.diarize.tune_on_dev` grid: the selected point first, then the best by dev DER."""
    if not rows:
        return f"### {title}\n\nn/a\n"
    chosen = [r for r in rows if r.get("selected")]
    rest = sorted((r for r in rows if not r.get("selected")), key=lambda r: (r["der"] if _finite(r["der"]) else math.inf))
    body = [[("**selected** " if r.get("selected") else "") + f"{r['Fa']:g}", f"{r['Fb']:g}", f"{r['loopP']:g}",
             f"{r.get('ahc_threshold', float('nan')):g}", f"{100 * r['der']:.2f}",
             f"{100 * r.get('der_smoothed', float('nan')):.2f}", f"{100 * r['count_accuracy']:.1f}"]
            for r in (chosen + rest)[:top]]
    return "\n".join([f"### {title}", "",
                      markdown_table(["Fa", "Fb", "loopP", "AHC threshold", "dev DER (%)",
                                      "dev DER, mean with threshold neighbours (%)", "dev count acc. (%)"], body),
                      "", f"{len(rows)} grid points. Selection: the lowest neighbour-averaged dev DER (a flat optimum), "
                      "ties within 0.01 points broken by grid order; the selected row is used on test.", ""])


def segmentation_table(summary: Mapping | None, dev_rows: Sequence[Mapping] | None) -> str:
    """The segmentation stage on dev chunks: local error (best permutation per chunk) per evaluation."""
    title = "## Local segmentation (stage 4) on dev conversations"
    if not summary:
        return f"{title}\n\nn/a (not trained)\n"
    body = [[str(int(r["step"])) + (" (selected)" if int(r["step"]) == summary.get("best_step") else ""),
             f"{100 * r['error']:.2f}", f"{100 * r['missed']:.2f}", f"{100 * r['false_alarm']:.2f}",
             f"{100 * r['confusion']:.2f}", f"{100 * r['count_accuracy']:.2f}", f"{r['loss']:.4f}"] for r in dev_rows or []]
    cfg = summary.get("config", {})
    head = cfg.get("head", {})
    return "\n".join([title, "", markdown_table(["step", "local error (%)", "missed (%)", "false alarm (%)",
                                                   "confusion (%)", "frame count acc. (%)", "dev loss"], body), "",
                      f"{summary.get('dev_chunks', 'n/a')} dev chunks of {cfg.get('chunk_s')} s; powerset over "
                      f"{head.get('max_speakers')} local speakers, at most {head.get('max_per_frame')} at once; "
                      f"{summary.get('train_conversations', 'n/a')} training conversations (train speakers). Local error "
                      "= (missed + false alarm + confusion) / reference speech, counted per 40 ms token under the best "
                      "permutation of each chunk's local speakers; frame count accuracy = share of tokens whose number "
                      "of active speakers is right. The encoder is frozen in this stage (hash "
                      f"{'unchanged' if summary.get('encoder_sha256_before') == summary.get('encoder_sha256_after') else 'CHANGED'}), "
                      "so the ablation's +routing row is also the final model's.", ""])


def separator_table(summary: Mapping | None, dev_rows: Sequence[Mapping] | None) -> str:
    """The separation stage on dev mixtures: waveform SI-SDRi (matched sources) per evaluation, by K."""
    title = "## Speaker separator (stage 5) on dev mixtures"
    if not summary:
        return f"{title}\n\nn/a (not trained)\n"
    ks = sorted({key for r in dev_rows or [] for key in r if key.startswith("si_sdri_k")})
    body = [[str(int(r["step"])) + (" (selected)" if int(r["step"]) == summary.get("best_step") else ""),
             f"{r['si_sdri']:+.2f}", *(f"{r[k]:+.2f}" if _finite(r.get(k)) else "n/a" for k in ks),
             f"{r['missed']:.0f}", f"{r['extra']:.0f}"] for r in dev_rows or []]
    same = summary.get("sha256_before") == summary.get("sha256_after")
    return "\n".join([title, "", markdown_table(["step", "SI-SDRi (dB)", *(f"K={k[len('si_sdri_k'):]}" for k in ks),
                                                   "missed", "extra"], body), "",
                      f"{summary.get('parameters', 'n/a')} parameters, trained on {summary.get('train_pool', 'n/a')} of "
                      f"{summary.get('train_mixtures', 'n/a')} training mixtures (train speakers; the others have one "
                      f"source), selected on {summary.get('dev_mixtures', 'n/a')} dev mixtures by SI-SDRi, each source "
                      "rendered from its identity over the clean sources' activity. The encoder and the speaker head "
                      "are frozen in this stage (hashes "
                      f"{'unchanged' if same else 'CHANGED'}), so no other ability can move.", ""])


def channels_table(res: Mapping[str, Any] | None,
                   title: str = "Channel robustness (the same test conversations, blind)") -> str:
    """DER per transmission channel and its difference to the clean condition (paired CI).

    Args:
        res: :func:`~echo.evaluate.channels.evaluate_channels` output, or None.
    """
    if not res:
        return f"## {title}\n\nn/a (no channel results)\n"
    conds = res["conditions"]
    ks = _keys([conds[c] for c in res["order"]], "by_k")
    body = []
    for name in res["order"]:
        r = conds[name]
        tkey = CHANNEL_TARGET.get(name)
        target = TARGETS.get(tkey) if tkey else None
        delta = _get(r, "delta_der")
        body.append([f"{name}", CHANNEL_TEXT.get(name, ""), format_cell(r, "der", 100, ci="der_ci"),
                     "—" if name == res["reference"] else format_cell(r, "delta_der", 100, ci="delta_der_ci", sign=True),
                     _target_text(target, " pts"), status(float(delta) * 100 if _finite(delta) else None, target)
                     if name != res["reference"] else "—",
                     *(format_cell(r, f"{p}_rate", 100) for p in ("missed", "false_alarm", "confusion")),
                     format_cell(r, "count_accuracy", 100), *(format_cell(r, f"by_k.{k}.der", 100) for k in ks)])
    header = ["condition", "channel", "DER (%)", "Δ vs clean (pts)", "target", "status", "missed (%)",
              "false alarm (%)", "confusion (%)", "count acc. (%)", *(f"K={k} (%)" for k in ks)]
    return "\n".join([
        f"## {title}", "", markdown_table(header, body), "",
        "Each condition passes every test conversation through the channel (FFmpeg's encoders and filters, "
        "`echo.simulate.channels`; same length and alignment, so the reference still holds) and diarizes it blind "
        "with the published dev-tuned diarizer; nothing is re-tuned per condition. Δ: the condition's DER minus "
        "the clean one's, with a paired 95% bootstrap CI (the same recordings resampled in both).", ""])


def real_voices_table(res: Mapping[str, Any] | None, voices: Mapping[str, Any] | None,
                      title: str = "Real voices (recorded people, blind)") -> str:
    """The real-voice dev and evaluation sets: DER, components, count accuracy against the targets,
    the evaluation set by K, and the voices with their packages and licences.

    Args:
        res: ``{"dev": {"blind": summary}, "test": {"blind": summary}}`` (the ``diarization_real`` node).
        voices: ``results/real_voices.json`` (``{"voices": [...]}``).
    """
    if not res:
        return f"## {title}\n\nn/a (no real-voice results)\n"
    rows = []
    for split, name in (("dev", "dev (decisions only)"), ("test", "evaluation")):
        b = (res.get(split) or {}).get("blind")
        if b is None:
            continue
        der, cnt = _point(b, "primary.der"), _point(b, "count.accuracy")
        n_voices = len([v for v in (voices or {}).get("voices", []) if v.get("split") == split]) or "n/a"
        rows.append([name, str(n_voices), f"{b.get('n_recordings', 0)}", f"{b.get('audio_s', 0.0) / 3600:.2f}",
                     format_cell(b, "primary.der", 100, ci="primary.der_ci"),
                     *(format_cell(b, f"primary.{k}_rate", 100) for k in ("missed", "false_alarm", "confusion")),
                     format_cell(b, "count.accuracy", 100, ci="count.accuracy_ci"),
                     *((status(100 * der if der is not None else None, TARGETS["real_der"]),
                        status(100 * cnt if cnt is not None else None, TARGETS["real_count"])) if split == "test"
                       else ("—", "—"))])
    header = ["set", "voices", "recordings", "hours", "DER (%)", "missed (%)", "false alarm (%)", "confusion (%)",
              "count acc. (%)", f"DER {_target_text(TARGETS['real_der'], ' %')}",
              f"count {_target_text(TARGETS['real_count'], ' %')}"]
    vrows = [[v["speaker"], v["split"], v["language"], v["person"], f"`{v['package']}`", v["licence"],
              str(v["utterances"]), f"{60 * v['hours']:.1f}"] for v in (voices or {}).get("voices", [])]
    parts = [f"## {title}", "", markdown_table(header, rows), "",
             "Conversations simulated from recordings of real people in Debian packages (`echo.corpus.real_voices`) "
             "with the synthetic sets' turn-taking, noise and rooms; dev and evaluation voices are disjoint, and none "
             "of them is used for training or tuning: the diarizer is the published one, tuned on synthetic dev. "
             "95% bootstrap CIs over recordings.", ""]
    test = (res.get("test") or {}).get("blind")
    if test is not None:
        parts.append(diarization_by_k_table(test, "Real-voice evaluation by number of speakers", targets=False))
    if vrows:
        parts += ["### Real voices used", "", markdown_table(["speaker", "split", "language", "voice", "package", "licence",
                                                              "utterances", "minutes"], vrows), ""]
    return "\n".join(parts)
