"""results/tables.md and results/metrics.json from the JSON results the nodes wrote.

Every number here was read from a file a node produced in this run; nothing is typed in, except the
paper's published figures and the project targets (``echo.evaluate.sections.PAPER``/``TARGETS``)
shown beside ours for comparison.
"""
from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

from echo.config import params_hash
from echo.metrics.bootstrap import mean_std
from echo.tracking import git_commit


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _table(header: list[str], rows: list[list]) -> str:
    """:func:`~echo.evaluate.sections.markdown_table` of raw values (floats to 2 decimals)."""
    from echo.evaluate.sections import markdown_table

    return markdown_table(header, [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in r] for r in rows])


def header_section(raw: dict, timings_dir: Path) -> str:
    timings = [json.loads(p.read_text()) for p in sorted(timings_dir.glob("*.json"))] if timings_dir.exists() else []
    # the tables node is running now: a timing file of its own would be a previous run's
    timings = [t for t in timings if t.get("node") != "tables"]
    devices = sorted({t["device"].split(",")[0] for t in timings})
    commits = sorted({(t.get("git_commit") or "none")[:12] for t in timings})
    out = ["# Echo results", "",
           f"- commit: `{git_commit() or 'no git checkout'}` (tables); nodes ran at {', '.join(f'`{c}`' for c in commits) or 'n/a'}"
           " (per node below)",
           f"- params: profile `{raw.get('profile')}`, params hash `{params_hash(raw)}`",
           f"- generated: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {platform.node() or 'unknown host'}",
           f"- device(s): {', '.join(devices) if devices else 'unknown'}",
           f"- total node wall time: {sum(t['wall_s'] for t in timings) / 60:.1f} min (every node but `tables`)", ""]
    if timings:
        out += ["<details><summary>Wall time and peak memory per node</summary>", "",
                _table(["node", "wall (s)", "peak RSS (MB)", "device", "commit"],
                       [[t["node"], t["wall_s"], t["peak_rss_mb"], t["device"], (t.get("git_commit") or "none")[:12]]
                        for t in timings]),
                "", "</details>", ""]
    return "\n".join(out)


def corpus_section(stats: dict) -> str:
    rows = []
    for s in ("train", "dev", "test"):
        d = stats["splits"].get(s, {})
        rows.append([s, d.get("speakers", 0), d.get("utterances", 0), float(d.get("hours", 0.0))])
    out = [f"## Corpus ({stats['source']})", "", _table(["split", "speakers", "utterances", "hours"], rows), ""]
    out.append(f"Mean utterance {stats['mean_utterance_s']:.2f} s. Phoneme inventory: {stats['phone_inventory_size']} "
               f"symbols. Alignment coverage: {100 * stats['aligned_share']:.1f}% of utterances aligned by the "
               f"synthesiser, {100 * stats['speech_phone_share']:.1f}% of audio in non-silence phones.")
    return "\n".join(out) + "\n"


def simulation_section(sim: dict[str, dict]) -> str:
    """Conversations and mixtures per split: K histogram, overlap achieved vs target, SNR, reverb."""
    rows = []
    for name, st in sim.items():
        kind, split = name.split("_", 1)
        ks = ", ".join(f"{k}:{n}" for k, n in sorted(st["k_histogram"].items(), key=lambda x: int(x[0])))
        if kind in ("conversations", "real"):  # real: conversations of the real recorded voices
            ov = st["overlap_k2plus"]
            overlap = f"{100 * ov['achieved']:.1f} (target {100 * ov['target']:.1f})"
        else:
            overlap = f"{100 * st['overlap']['mean']:.1f} (mean per mixture)"
        snr = st.get("snr_db", {})
        snr_s = f"{snr['mean']:.1f} [{snr['min']:.1f}, {snr['max']:.1f}]" if snr.get("count") else "no noise"
        rows.append([kind, split, st["recordings"] if "recordings" in st else sum(st["k_histogram"].values()),
                     ks, float(st["hours"]), overlap, snr_s, f"{100 * st.get('reverb_share', 0.0):.0f}%"])
    figs = " ".join(f"[{n}](figures/{n}.png)" for n in sim)
    return "\n".join(["## Simulated conversations and mixtures", "",
                       _table(["set", "split", "recordings", "K: count", "hours", "overlap % (K>=2)", "SNR dB",
                               "reverb"], rows), "", f"Overlap and K distributions: {figs}", ""])


ABLATION_ROWS = {"pretrain": "after pretraining", "speaker": "+speaker", "phonetic": "+phonetic",
                 "routing": "+routing"}


def evaluation_sections(results: Path, models: dict[str, Path]) -> tuple[list[str], dict]:
    """Main table, by-K tables, confusions, stage ablation and dev tuning, from the evaluation JSONs."""
    from echo.evaluate import sections as sec

    diar = _load(results / "diarization.json")
    sep = _load(results / "separation.json")
    abil = {st: _load(results / "abilities" / f"{st}.json") for st in ABLATION_ROWS}
    final = abil.get("routing")
    tuning = _load(results / "diarization_tuning.json")
    channels = _load(results / "diarization_channels.json")
    real = _load(results / "diarization_real.json")
    seg_dir = models.get("segmentation")
    seed_runs = seed_rows(diar, tuning, _load(seg_dir / "summary.json") if seg_dir else None,
                          _load(results / "diarization_seeds.json"))
    parts = [sec.main_table(diar["blind"], sep, final, [r["blind"] for r in seed_runs] if seed_runs else None),
             "Figures: [DER by K](figures/der_by_k.png), [reference vs hypothesis timeline](figures/timeline.png), "
             "[shared latent by speaker and by phone](figures/latent_map.png), "
             "[separated spectrograms](figures/separation.png), "
             "[training curves](figures/training_curves.png).\n",
             sec.diarization_by_k_table(diar["blind"], "Blind diarization by number of speakers (K never given)"),
             sec.diarization_by_k_table(diar["oracle"], "Oracle-K diarization by number of speakers"),
             sec.confusion_table(diar["blind"], "count", "Speaker-count confusion, test conversations (rows: true K)"),
             sec.separation_by_k_table(sep),
             sec.waveform_separation_table(sep),
             sec.confusion_table(sep, "count", "Speaker-count confusion, test mixtures (rows: true K)"),
             sec.seeds_table(seed_runs),
             sec.channels_table(channels),
             sec.real_voices_table(real, _load(results / "real_voices.json"))]
    if "pretrain" in models and (models["pretrain"] / "curves.parquet").exists():
        text, m = pretraining_section(models["pretrain"] / "curves.parquet", abil.get("pretrain"))
        parts.append(text)
    else:
        m = {}
    rows = {ABLATION_ROWS[k]: v for k, v in abil.items() if v is not None}
    parts.append(sec.ablation_table(rows))
    parts.append(sec.content_views_table(rows))
    import pandas as pd

    ph_dir = models.get("phonetic")
    ph_dev = ph_dir / "dev.parquet" if ph_dir else None
    parts.append(sec.phonetic_stage_table(_load(ph_dir / "summary.json") if ph_dir else None,
                                          pd.read_parquet(ph_dev).to_dict("records") if ph_dev and ph_dev.exists() else None))
    seg_dev = seg_dir / "dev.parquet" if seg_dir else None
    parts.append(sec.segmentation_table(_load(seg_dir / "summary.json") if seg_dir else None,
                                        pd.read_parquet(seg_dev).to_dict("records") if seg_dev and seg_dev.exists() else None))
    sep_dir = models.get("separation")
    sep_dev = sep_dir / "dev.parquet" if sep_dir else None
    parts.append(sec.separator_table(_load(sep_dir / "summary.json") if sep_dir else None,
                                     pd.read_parquet(sep_dev).to_dict("records") if sep_dev and sep_dev.exists() else None))
    if tuning:
        parts.append(sec.tuning_table(tuning["grid"]))
    seed_der = [r["blind"]["primary"]["der"] for r in seed_runs]
    metrics = {
        "der_blind": diar["blind"]["primary"]["der"], "der_blind_secondary": diar["blind"]["secondary"]["der"],
        "der_oracle": diar["oracle"]["primary"]["der"], "jer_blind": diar["blind"]["primary"]["jer"],
        "count_accuracy_conversations": diar["blind"]["count"]["accuracy"],
        "diarization_rtf": diar["blind"]["real_time_factor"],
        "count_accuracy_mixtures": sep["count_accuracy"], "pit_accuracy": sep["pit_accuracy"],
        "latent_si_sdr": sep["si_sdr"], "latent_si_sdri": sep["si_sdri"],
        "waveform_si_sdri": sep.get("waveform", {}).get("si_sdri"),
        "waveform_si_sdri_by_k": {k: v["waveform"]["si_sdri"] for k, v in sep.get("by_k", {}).items() if "waveform" in v},
        "waveform_si_sdri_multi_speaker": sep.get("multi_speaker", {}).get("waveform", {}).get("si_sdri"),
        "der_blind_by_k": {str(k): v["der"] for k, v in diar["blind"]["primary"].get("by_k", {}).items()},
        "missed_blind": diar["blind"]["primary"].get("missed_rate"),
        "false_alarm_blind": diar["blind"]["primary"].get("false_alarm_rate"),
        "confusion_blind": diar["blind"]["primary"].get("confusion_rate"),
        "der_exclusive": diar["blind"].get("exclusive", {}).get("der"),
        "der_blind_seeds": {"seeds": [r["seed"] for r in seed_runs], "der": seed_der,
                            **dict(zip(("mean", "std"), mean_std(seed_der)))} if len(seed_der) > 1 else None,
        "der_channels": {name: {"der": r["der"], "delta_der": r["delta_der"]}
                         for name, r in channels["conditions"].items()} if channels else None,
        "der_real": {split: {"der": r["blind"]["primary"]["der"], "count_accuracy": r["blind"]["count"]["accuracy"]}
                     for split, r in real.items()} if real else None,
        "pretrain": m,
        "abilities": {st: {k: v for k, v in (a or {}).items()
                           if isinstance(v, (int, float)) or k in ("content_view", "content_views", "content_views_dev")}
                      for st, a in abil.items()},
    }
    return parts, metrics


def seed_rows(diar: dict, tuning: dict | None, segmentation: dict | None, seeds: dict | None) -> list[dict]:
    """The diarization chain per training seed for :func:`~echo.evaluate.sections.seeds_table`: the
    published run (``diarization.json``, its tuning and segmentation stage) first, then the
    ``diarization_seeds`` node's runs; [] without that node's results."""
    if not seeds:
        return []
    sel = (tuning or {}).get("selected") or {}
    chosen = next((r for r in (tuning or {}).get("grid", []) if r.get("selected")), {})
    published = {"seed": seeds["primary_seed"], "published": True, "blind": diar["blind"],
                 "segmentation": {"best_step": (segmentation or {}).get("best_step"), "dev": (segmentation or {}).get("best")},
                 "selected": {"Fa": sel.get("vbx", {}).get("Fa"), "Fb": sel.get("vbx", {}).get("Fb"),
                              "ahc_threshold": sel.get("ahc", {}).get("threshold")},
                 "dev_der": chosen.get("der")}
    return [published, *seeds["runs"]]


def pretraining_section(curves_path: Path, abil: dict | None) -> tuple[str, dict]:
    """JEPA pretraining: loss, representation health and what a k-NN probe finds in the frozen latent."""
    import pandas as pd

    c = pd.read_parquet(curves_path)
    first, last = c.iloc[0], c.iloc[-1]
    rows = [["JEPA loss (smooth-L1)", float(first["loss"]), float(last["loss"])],
            ["target feature std (mean over dims)", float(first["feat_std"]), float(last["feat_std"])],
            ["target effective rank (of 512)", float(first["eff_rank"]), float(last["eff_rank"])]]
    m = {"loss_final": float(last["loss"]), "eff_rank_final": float(last["eff_rank"]),
         "feat_std_final": float(last["feat_std"]), "steps": int(last["step"]),
         "tokens_per_s_median": float(c["tokens_per_s"].median())}
    probe = ""
    if abil:
        probe = (f"k-NN probes on the frozen pretrained latent (test speakers): speaker ID "
                 f"{100 * abil['latent_speaker_id_acc']:.1f}%, frame phone accuracy {100 * abil['latent_phone_acc']:.1f}%; "
                 "the stage ablation below shows what specialisation adds.")
    return "\n".join(["## JEPA pretraining", "",
                       _table(["quantity", f"step {int(first['step'])}", f"step {int(last['step'])}"], rows), "",
                       f"Median throughput {m['tokens_per_s_median']:.0f} tokens/s "
                       f"({m['tokens_per_s_median'] * 0.04:.0f} s of audio per s). {probe}", ""]), m


def training_curves_figure(path: Path, models: dict[str, Path]) -> None:
    """The training curves of every model folder in ``models`` (name -> folder) that has them."""
    from echo.evaluate.figures import plot_training_curves

    curves = {("pretrain (JEPA)" if name == "pretrain" else f"stage {name}"): d / "curves.parquet"
              for name, d in models.items()}
    curves = {k: v for k, v in curves.items() if v.exists()}
    if curves:
        plot_training_curves(curves, path)


def render(raw: dict, models: dict[str, Path], results: Path = Path("results"),
           timings: Path = Path("logs/timings")) -> tuple[str, dict]:
    """Return (markdown, metrics dict for dvc/MLflow) from the results directory and the trained
    model folders (``models``: name -> folder, e.g. ``{"pretrain": Path("models/pretrain"), ...}``)."""
    parts = [header_section(raw, timings)]
    metrics: dict = {}
    if (results / "diarization.json").exists():
        ev, m = evaluation_sections(results, models)
        parts += ev
        metrics.update(m)
    corpus = _load(results / "corpus_stats.json")
    if corpus:
        parts.append(corpus_section(corpus))
        metrics["corpus"] = {"hours": corpus["hours"], "speakers": corpus["speakers"],
                             "utterances": corpus["utterances"], "phone_inventory_size": corpus["phone_inventory_size"]}
    sim = {p.stem: json.loads(p.read_text()) for p in sorted((results / "simulation").glob("*.json"))}
    if sim:
        parts.append(simulation_section(sim))
    return "\n".join(parts), metrics
