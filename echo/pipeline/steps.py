"""The body of every workflow node. Each step reads its inputs, writes its outputs atomically and
returns small extras (artifacts) for MLflow; ``node`` carries the paths, ``raw`` the params."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from echo.config import load_section
from echo.io import write_json
from echo.pipeline.progress import NodeProgress

log = logging.getLogger("echo.pipeline")


def _flat_numbers(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_numbers(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def corpus(node, raw, run):
    """Build the utterance manifest (embedded espeak-ng corpus or a real corpus) and its statistics."""
    from echo.corpus.stats import corpus_stats

    out = Path(node.outs[0])
    source = raw["corpus"]["source"]
    if source == "embedded":
        from echo.corpus.embedded import build_embedded_corpus

        df = build_embedded_corpus(load_section(raw, "corpus.embedded"), out, hook=NodeProgress())
    else:
        from echo.corpus.adapters import build_real_corpus

        df = build_real_corpus(load_section(raw, "corpus.real"), out, hook=NodeProgress())  # root checked with the params
    stats = corpus_stats(df)
    stats["source"] = source
    write_json(node.metrics[0], stats)
    if run:
        run.log_metrics(_flat_numbers(stats))


def _split_rows(node):
    """The manifest rows of the node's ``split`` wildcard and the phone inventory of ALL splits
    (one phone set, so label ids agree across the caches)."""
    from echo.corpus import manifest as mf
    from echo.features import phone_inventory

    full = mf.read(Path(node.deps[0]) / "manifest.parquet")
    return full[full["split"] == dict(node.wildcards)["split"]].reset_index(drop=True), phone_inventory(full)


def real_voices(node, raw, run):
    """Real recorded voices from the installed Debian packages (echo.corpus.real_voices): the manifest of
    the real-voice dev and evaluation speakers, and their sources and licences."""
    from echo.corpus.real_voices import build_real_voices

    df = build_real_voices(Path(node.outs[0]), load_section(raw, "evaluation.real_voices"), hook=NodeProgress())
    sources = json.loads((Path(node.outs[0]) / "sources.json").read_text())
    write_json(node.metrics[0], {"voices": sources, "utterances": len(df), "hours": float(df["duration"].sum() / 3600),
                                 "speakers_by_split": {s: sorted(g["speaker"].unique()) for s, g in df.groupby("split")}})
    if run:
        run.log_metrics({"utterances": len(df), "hours": float(df["duration"].sum() / 3600)})


def features(node, raw, run):
    """Log-mel features of one split into the sharded cache (phone labels from the alignment)."""
    from echo.features import build_feature_cache

    df, inventory = _split_rows(node)
    cache = build_feature_cache(df, load_section(raw, "features"), Path(node.outs[0]), inventory, hook=NodeProgress())
    if run:
        run.log_metrics({"utterances": len(cache), "frames": float(cache.stats["frames"])})


def augmented_features(node, raw, run):
    """Log-mel features of a noisy, reverberant copy of the training split, partly through random
    transmission channels (same index and labels as the clean cache), for the specialisation stages."""
    from echo.corpus.manifest import SILENCE
    from echo.features import build_feature_cache
    from echo.simulate.augment import Augmenter

    fe = load_section(raw, "features")
    augmenter = Augmenter(load_section(raw, "simulation.augmentation"), fe.sample_rate)
    df, inventory = _split_rows(node)
    drawn = []

    def transform(wave, row):
        # SNR reference: the aligned phones, not the padding
        speech = [(int(a), int(b)) for ph, a, b in zip(row.align_phone, row.align_start, row.align_end) if ph != SILENCE]
        out, info = augmenter(wave, row.utt_id, np.array(speech, dtype=np.int64).reshape(-1, 2))
        drawn.append(info)
        return out

    cache = build_feature_cache(df, fe, Path(node.outs[0]), inventory, transform=transform,
                                hook=NodeProgress())
    reverb = float(np.mean([d["reverb"] for d in drawn]))
    channel = float(np.mean([bool(d["channel"]) for d in drawn]))
    snrs = [d["snr_db"] for d in drawn if np.isfinite(d["snr_db"])]
    log.info("augmented %d utterances: reverberant share %.2f, through a channel %.2f, median SNR %.1f dB",
             len(drawn), reverb, channel, float(np.median(snrs)) if snrs else float("nan"))
    if run:
        run.log_metrics({"utterances": len(cache), "reverb_share": reverb, "channel_share": channel,
                         **({"snr_db_median": float(np.median(snrs))} if snrs else {})})


def tables(node, raw, run):
    """results/tables.md (what this run produced, with commit and params) and results/metrics.json."""
    from echo.io import write_text
    from echo.pipeline.report import render, training_curves_figure

    # the model folders this node depends on, by name (pretrain, speaker, ..., segmentation)
    models = {Path(d).name: Path(d) for d in node.deps if not Path(d).suffix}
    training_curves_figure(Path(node.outs[1]), models)
    md, metrics = render(raw, models, results=Path(node.metrics[0]).parent)
    write_text(node.outs[0], md)
    write_json(node.metrics[0], metrics)
    if run:
        run.log_metrics(_flat_numbers(metrics))


def simulate(node, raw, run):
    """Simulated conversations (diarization) or mixtures (routing) of one split, with statistics."""
    import shutil

    from echo.corpus import manifest as mf
    from echo.io import atomic_path

    w = dict(node.wildcards)
    kind, split = w["kind"], w["split"]
    spec = load_section(raw, "simulation.sets").spec(kind, split)
    if kind == "real":  # conversations of the real recorded voices
        kind = "conversations"
    cfg = load_section(raw, f"simulation.{kind}")
    df = mf.read(Path(node.deps[0]) / "manifest.parquet", split=split)
    out = Path(node.outs[0])
    if kind == "conversations":
        from echo.simulate.conversations import simulate_conversations

        simulate_conversations(df, cfg, out, k_values=list(spec.k), n_per_k=spec.n_per_k, hook=NodeProgress(),
                               channel_prob=spec.channel_prob, channels=spec.channels)
    else:
        from echo.simulate.mixtures import simulate_mixtures

        simulate_mixtures(df, cfg, out, k_values=list(spec.k), n_per_k=spec.n_per_k, hook=NodeProgress())
    stats = json.loads((out / "stats.json").read_text())
    write_json(node.metrics[0], stats)
    with atomic_path(node.outs[1]) as tmp:
        shutil.copyfile(out / "stats.png", tmp)
    if run:
        run.log_metrics(_flat_numbers(stats))


def _work_dir(name: str, raw: dict, keys: tuple[str, ...], inputs: tuple[str, ...]) -> Path:
    """A resumable scratch directory keyed by the params slice and the inputs' fingerprints.

    Training checkpoints live here, outside the node's declared outputs (which Snakemake and DVC
    delete before a run), so a killed run resumes; the key ensures a run never resumes from a
    checkpoint made with other params or other data.
    """
    import hashlib

    from echo.config import params_hash, params_slice

    h = hashlib.sha256(params_hash(params_slice(raw, keys)).encode())
    for inp in inputs:
        p = Path(inp)
        for f in sorted(p.rglob("*.json")) + sorted(p.rglob("*.parquet")) if p.is_dir() else [p]:
            if f.is_file():
                h.update(f.read_bytes())
    d = Path("work") / f"{name}-{h.hexdigest()[:12]}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pretrain(node, raw, run):
    """JEPA pretraining of the encoder (torchrun with ECHO_NPROC=N processes on a multi-GPU node)."""
    import os
    import subprocess
    import sys

    nproc = int(os.environ.get("ECHO_NPROC", "1"))
    if nproc > 1 and "RANK" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "echo.pipeline", "worker", node.name] + (["--run-id", run.run_id] if run else [])
        log.info("launching %s", " ".join(cmd))
        subprocess.run(cmd, check=True)
        return
    pretrain_body(node, raw, run)


def pretrain_body(node, raw, run):
    """The pretraining itself, on one process or as one torchrun rank (rank 0 writes outputs)."""
    import shutil

    from echo.features import FeatureCache
    from echo.io import atomic_dir
    from echo.train.pretrain import pretrain as jepa_pretrain

    enc_cfg = load_section(raw, "encoder")
    cfg = load_section(raw, "pretrain")
    fe = load_section(raw, "features")
    cache = FeatureCache(node.deps[0], expected=fe)
    work = _work_dir(node.name, raw, node.params, (node.deps[0],))
    logger = (lambda m, step: run.log_metrics(m, step)) if run else None
    ckpt = jepa_pretrain(cfg, enc_cfg, cache, work, log_metrics=logger, device=_device())
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    from echo.models.bundle import ENCODER_FILE

    with atomic_dir(node.outs[0]) as tmp:
        shutil.copyfile(ckpt, tmp / ENCODER_FILE)
        shutil.copyfile(work / "curves.parquet", tmp / "curves.parquet")


def _copy_outputs(src: Path, dst: str, names: tuple[str, ...]) -> None:
    """Copy a finished run's deliverables from its work dir into the node's output, atomically."""
    import shutil

    from echo.io import atomic_dir

    with atomic_dir(dst) as tmp:
        for name in names:
            p = src / name
            if p.is_dir():
                shutil.copytree(p, tmp / name)
            elif p.exists():
                shutil.copyfile(p, tmp / name)


STAGE_OUTPUTS = ("bundle", "curves.parquet", "dev.parquet", "summary.json")


def stage(node, raw, run):
    """One specialisation stage on the shared encoder (speaker, phonetic or routing)."""
    from echo.features import FeatureCache
    from echo.models.bundle import ENCODER_FILE

    name = dict(node.wildcards)["stage"]
    # the node's deps in dag.py's order: the previous model, the feature caches, then routing's extras
    prev, train_dir, dev_dir, noisy_dir, *extra = node.deps
    cfg = load_section(raw, f"stages.{name}")
    fe = load_section(raw, "features")
    train = FeatureCache(train_dir, expected=fe)
    dev = FeatureCache(dev_dir, expected=fe)
    noisy = FeatureCache(noisy_dir, expected=fe) if cfg.noisy_prob > 0 else None
    work = _work_dir(node.name, raw, node.params, node.deps)
    logger = (lambda m, step: run.log_metrics(m, step)) if run else None
    if name == "speaker":
        from echo.stages.speaker import train_speaker_stage

        train_speaker_stage(cfg, Path(prev) / ENCODER_FILE, train, dev, work, logger, _device(), noisy)
    elif name == "phonetic":
        from echo.stages.phonetic import train_phonetic_stage

        train_phonetic_stage(cfg, Path(prev) / "bundle", train, dev, work, logger, _device(), noisy)
    else:
        from echo.stages.routing import train_routing_stage

        mix_train, mix_dev, pretrained = extra
        train_routing_stage(cfg, Path(prev) / "bundle", Path(mix_train), Path(mix_dev), train, work, logger,
                            _device(), pretrained_encoder=Path(pretrained) / ENCODER_FILE, dev_cache=dev,
                            noisy_cache=noisy)
    _copy_outputs(work, node.outs[0], STAGE_OUTPUTS)
    return {"artifacts": {"summary": work / "summary.json"}}


def _load_model(path: Path):
    """A stage's model: its bundle, or the pretrained encoder (the ablation's first row)."""
    from echo.models.bundle import ENCODER_FILE

    if (path / ENCODER_FILE).exists():
        path = path / ENCODER_FILE
    elif (path / "bundle").is_dir():
        path = path / "bundle"
    if path.suffix == ".pt":
        from echo.models.vit import Encoder

        return Encoder.load(path)
    from echo.models.bundle import EchoModel

    return EchoModel.load(path)


def abilities(node, raw, run):
    """Speaker / phonetic / factorisation abilities of one stage's model on TEST speakers (ablation row);
    the content views are also probed on DEV speakers, where ``content_layer: auto`` picks the headline one."""
    from echo.corpus import manifest as mf
    from echo.evaluate.abilities import extract_views, measure_abilities
    from echo.features import FeatureCache

    model = _load_model(Path(node.deps[0]))
    test = FeatureCache(node.deps[1], expected=load_section(raw, "features"))
    man = mf.read(Path(node.deps[2]) / "manifest.parquet", split="test")
    refs = {u: p for u, p in zip(man["utt_id"], man["phonemes"]) if p}
    cfg = load_section(raw, "evaluation.abilities")
    v = extract_views(model, test, cfg, hook=NodeProgress())
    dev = extract_views(model, FeatureCache(node.deps[3], expected=load_section(raw, "features")), cfg)
    out = measure_abilities(model, test, cfg, references=refs or None, views=v, dev_views=dev)
    out["stage"] = dict(node.wildcards)["stage"]
    write_json(node.metrics[0], out)
    if node.outs:  # the final model: a 2-D map of its shared latent, by speaker and by phone
        from echo.evaluate.figures import plot_latent_map

        phones = [test.inventory[int(i)] if isinstance(i, (int, np.integer)) else str(i) for i in v.frame_phones]
        plot_latent_map(v.latent_frames, [str(x) for x in v.frame_speakers], phones, node.outs[0],
                        title="shared latent of the final encoder (test speakers)")
    if run:
        run.log_metrics(_flat_numbers(out))


def segmentation_stage(node, raw, run):
    """Stage 4: the local speaker segmentation head on the frozen final encoder (train conversations)."""
    from echo.simulate.conversations import ConversationSet
    from echo.stages.segmentation import train_segmentation_stage

    cfg = load_section(raw, "stages.segmentation")
    work = _work_dir(node.name, raw, node.params, node.deps)
    logger = (lambda m, step: run.log_metrics(m, step)) if run else None
    train_segmentation_stage(cfg, Path(node.deps[0]) / "bundle", ConversationSet(node.deps[1]),
                             ConversationSet(node.deps[2]), work, logger, _device(),
                             diarizer=load_section(raw, "evaluation.diarizer"),
                             extra_seeds=load_section(raw, "seeds").diarization)
    _copy_outputs(work, node.outs[0], STAGE_OUTPUTS + ("seeds",))
    return {"artifacts": {"summary": work / "summary.json"}}


def separation_stage(node, raw, run):
    """Stage 5: the speaker separator (each speaker as a waveform) on the frozen final encoder (train mixtures)."""
    from echo.simulate.mixtures import MixtureSet
    from echo.stages.separation import train_separation_stage

    work = _work_dir(node.name, raw, node.params, node.deps)
    logger = (lambda m, step: run.log_metrics(m, step)) if run else None
    train_separation_stage(load_section(raw, "stages.separation"), Path(node.deps[0]) / "bundle",
                           MixtureSet(node.deps[1]), MixtureSet(node.deps[2]), work, logger, _device())
    _copy_outputs(work, node.outs[0], STAGE_OUTPUTS)
    return {"artifacts": {"summary": work / "summary.json"}}


def backend(node, raw, run):
    """The deployable diarizer: final bundle + PLDA fitted on TRAIN conversations + settings tuned on DEV."""
    import dataclasses

    from echo.diarization.backend import fit_backend
    from echo.diarization.diarizer import Diarizer
    from echo.evaluate.diarize import tune_on_dev
    from echo.models.bundle import EchoModel
    from echo.simulate.conversations import ConversationSet

    model = EchoModel.load(Path(node.deps[0]) / "bundle")
    # the deployable model also renders each speaker as audio (`echo separate`)
    model.separator = EchoModel.load(Path(node.deps[3]) / "bundle").separator
    dcfg = load_section(raw, "evaluation.diarizer")
    plda = fit_backend(model, ConversationSet(node.deps[1]), dcfg, load_section(raw, "evaluation.backend"))
    best, rows = tune_on_dev(Diarizer(model, plda, dcfg), ConversationSet(node.deps[2]),
                             load_section(raw, "evaluation.tune"))
    Diarizer(model, plda, best).save(node.outs[0])
    write_json(node.metrics[0], {"grid": rows, "selected": dataclasses.asdict(best)})
    if run:
        run.log_metrics({"dev_der_selected": next(r["der"] for r in rows if r["selected"])})


def diarization(node, raw, run):
    """Blind diarization of the TEST conversations (K never given): DER/JER by K with CIs, RTTMs, figures."""
    from echo.diarization.diarizer import Diarizer
    from echo.evaluate.diarize import evaluate_conditions
    from echo.evaluate.figures import plot_der_by_k, plot_timeline
    from echo.metrics.der import write_rttm
    from echo.simulate.conversations import ConversationSet

    # the same object as `python -m echo diarize`, so the CLI reproduces these numbers
    diarizer = Diarizer.from_pretrained(node.deps[0])
    convs = ConversationSet(node.deps[1])
    boot = load_section(raw, "evaluation.bootstrap")
    (summary, hyps), (oracle, _) = evaluate_conditions(diarizer, convs, (False, True), bootstrap=boot)
    write_rttm(node.outs[0], hyps)
    write_json(node.metrics[0], {"blind": summary, "oracle": oracle})
    plot_der_by_k(summary, node.outs[1])
    # the timeline of the test conversation with the most speakers
    item = max((convs[i] for i in range(len(convs))), key=lambda it: (it.k, it.rec_id))
    plot_timeline(item.annotation, hyps[item.rec_id], node.outs[2], uem=item.uem,
                  title=f"{item.rec_id} (K={item.k}): reference vs blind hypothesis")
    if run:
        run.log_metrics(_flat_numbers({"blind": summary, "oracle": oracle}))


def diarization_seeds(node, raw, run):
    """The diarization chain with the other seeds of ``seeds.diarization`` (their segmentation heads, trained
    by the segmentation stage; dev tuning; blind TEST DER) on the published run's frozen encoder and PLDA."""
    from echo.diarization.diarizer import Diarizer
    from echo.evaluate.seeds import diarization_seed_runs
    from echo.simulate.conversations import ConversationSet

    out = diarization_seed_runs(
        Diarizer.from_pretrained(node.deps[0]), Path(node.deps[1]), load_section(raw, "evaluation.diarizer"),
        load_section(raw, "evaluation.tune"), load_section(raw, "evaluation.bootstrap"),
        *(ConversationSet(d) for d in node.deps[2:]), hook=NodeProgress())
    write_json(node.metrics[0], out)
    if run:
        run.log_metrics({f"seed{r['seed']}_{k}": v for r in out["runs"]
                         for k, v in _flat_numbers({"blind": r["blind"]}).items()})


def diarization_channels(node, raw, run):
    """The TEST conversations through each channel of ``evaluation.channels`` (telephone band, codecs,
    clipping), diarized blind with the published diarizer: DER per condition and its paired difference."""
    from echo.diarization.diarizer import Diarizer
    from echo.evaluate.channels import evaluate_channels
    from echo.simulate.channels import ffmpeg_binary
    from echo.simulate.conversations import ConversationSet

    ffmpeg_binary()  # a missing ffmpeg is named before any conversation is encoded
    out = evaluate_channels(Diarizer.from_pretrained(node.deps[0]), ConversationSet(node.deps[1]),
                            load_section(raw, "evaluation.channels"), load_section(raw, "evaluation.bootstrap"),
                            hook=NodeProgress())
    write_json(node.metrics[0], out)
    if run:
        run.log_metrics({f"{name}_{k}": v for name, r in out["conditions"].items()
                         for k, v in _flat_numbers(r).items()})


def diarization_real(node, raw, run):
    """Blind diarization of the conversations of REAL recorded voices (dev and the real-voice evaluation
    set) with the published diarizer, tuned on synthetic dev; nothing is tuned on these sets."""
    from echo.diarization.diarizer import Diarizer
    from echo.evaluate.diarize import evaluate_diarization
    from echo.metrics.der import write_rttm
    from echo.simulate.conversations import ConversationSet

    diarizer = Diarizer.from_pretrained(node.deps[0])
    boot = load_section(raw, "evaluation.bootstrap")
    out = {}
    for split, d in zip(("dev", "test"), node.deps[1:]):
        summary, hyps = evaluate_diarization(diarizer, ConversationSet(d), bootstrap=boot)
        out[split] = {"blind": summary}
        if split == "test":
            write_rttm(node.outs[0], hyps)
    write_json(node.metrics[0], out)
    if run:
        run.log_metrics(_flat_numbers(out))


def separation(node, raw, run):
    """Routing and separation of the TEST mixtures: count and PIT accuracy, latent and waveform SI-SDR(i), by K
    (waveforms blind: the speakers the deployable diarizer finds in each mixture)."""
    from echo.diarization.diarizer import Diarizer
    from echo.evaluate.separation import evaluate_routing
    from echo.models.bundle import EchoModel
    from echo.simulate.mixtures import MixtureSet

    separation_stage, phonetic, mixtures, pretrained, deployed = node.deps
    model = EchoModel.load(Path(separation_stage) / "bundle")
    target_src = model.meta.get("routing_target", "stage2")
    target = (_load_model(Path(pretrained)) if target_src == "pretrain"
              else EchoModel.load(Path(phonetic) / "bundle").encoder)
    out = evaluate_routing(model, MixtureSet(mixtures), target_encoder=target,
                           config=load_section(raw, "evaluation.separation"), hook=NodeProgress(),
                           figure=node.outs[0], diarizer=Diarizer.from_pretrained(deployed, device=_device()))
    write_json(node.metrics[0], out)
    if run:
        run.log_metrics(_flat_numbers(out))
