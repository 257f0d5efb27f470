"""The body of every workflow node. Each step reads its inputs, writes its outputs atomically and
returns small extras (artifacts) for MLflow; ``node`` carries the paths, ``raw`` the params."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from echo.config import load_section
from echo.io import write_json

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

        df = build_embedded_corpus(load_section(raw, "corpus.embedded"), out)
    else:
        from echo.corpus.adapters import build_real_corpus

        cfg = load_section(raw, "corpus.real")
        if not cfg.root:
            from echo.errors import ConfigError

            raise ConfigError(f"params.yaml: corpus.real.root: expected the directory holding {source}, got an empty string")
        df = build_real_corpus(cfg, out)
    stats = corpus_stats(df)
    stats["source"] = source
    write_json(node.metrics[0], stats)
    if run:
        run.log_metrics(_flat_numbers(stats))


def features(node, raw, run):
    """Log-mel features of one split into the sharded cache (phone labels from the alignment)."""
    from echo.corpus import manifest as mf
    from echo.features import build_feature_cache, phone_inventory

    split = dict(node.wildcards)["split"]
    fe = load_section(raw, "features")
    full = mf.read(Path(node.deps[0]) / "manifest.parquet")
    inventory = phone_inventory(full)  # all splits: one phone set, so ids agree across splits
    df = full[full["split"] == split].reset_index(drop=True)
    cache = build_feature_cache(df, fe, Path(node.outs[0]), inventory)
    if run:
        run.log_metrics({"utterances": len(cache), "frames": float(cache.stats["frames"])})


def tables(node, raw, run):
    """results/tables.md (what this run produced, with commit and params) and results/metrics.json."""
    from echo.io import write_text
    from echo.pipeline.report import render

    md, metrics = render(raw)
    write_text(node.outs[0], md)
    write_json(node.metrics[0], metrics)
    if run:
        run.log_metrics(_flat_numbers(metrics))


def simulate(node, raw, run):
    """Simulated conversations (diarization) or mixtures (routing) of one split, with statistics."""
    import shutil

    from echo.config import params_slice
    from echo.corpus import manifest as mf
    from echo.io import atomic_path

    w = dict(node.wildcards)
    kind, split = w["kind"], w["split"]
    spec = load_section(raw, "simulation.sets").spec(kind, split)
    cfg = load_section(raw, f"simulation.{kind}")
    df = mf.read(Path(node.deps[0]) / "manifest.parquet", split=split)
    out = Path(node.outs[0])
    if kind == "conversations":
        from echo.simulate.conversations import simulate_conversations

        simulate_conversations(df, cfg, out, k_values=list(spec.k), n_per_k=spec.n_per_k)
    else:
        from echo.simulate.mixtures import simulate_mixtures

        simulate_mixtures(df, cfg, out, k_values=list(spec.k), n_per_k=spec.n_per_k)
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


def _device(pref: str = "auto") -> str:
    import torch

    return "cuda" if pref == "auto" and torch.cuda.is_available() else ("cpu" if pref == "auto" else pref)


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
    with atomic_dir(node.outs[0]) as tmp:
        shutil.copyfile(ckpt, tmp / "encoder.pt")
        shutil.copyfile(work / "curves.parquet", tmp / "curves.parquet")
