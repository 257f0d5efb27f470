"""The workflow's nodes: the single source of truth that both Snakemake and DVC are built from.

Each :class:`Node` is one concrete job (wildcards already expanded): its command, the files it
reads (data and the package sources whose edits should re-run it), the files it writes, the
params keys it depends on (its *slice* of params.yaml), and its metrics. ``python -m echo.pipeline
snakemake`` writes the Snakemake rules (``workflow/rules/nodes.smk``) and ``python -m echo.pipeline
dvc`` writes ``dvc.yaml`` from the same list; tests check both committed files are up to date.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Node", "SPLITS", "nodes", "node"]

SPLITS = ("train", "dev", "test")
SIMULATED = {"conversations": ("train", "dev", "test"), "mixtures": ("train", "dev", "test")}
REAL_SPLITS = ("dev", "test")  # conversations of real recorded voices (echo.corpus.real_voices)
STAGE_HEADS = {"speaker": ("speaker", "pooling", "arcface"), "phonetic": ("ctc", "vq"),
               "routing": ("router", "pit")}


@dataclass(frozen=True)
class Node:
    """One workflow job."""

    name: str
    stage: str
    step: str  # function in echo.pipeline.steps
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    params: tuple[str, ...]
    code: tuple[str, ...]
    wildcards: tuple[tuple[str, str], ...] = ()
    metrics: tuple[str, ...] = ()
    gpu: int = 0
    threads: int = 1
    dirs: frozenset[str] = field(default_factory=frozenset)

    @property
    def cmd(self) -> str:
        return f"python -m echo.pipeline run {self.name}"

    @property
    def log(self) -> str:
        return f"logs/{self.name}.log"

    @property
    def benchmark(self) -> str:
        return f"logs/benchmarks/{self.name}.tsv"

    @property
    def all_outs(self) -> tuple[str, ...]:
        return self.outs + self.metrics


def _code(*mods: str) -> tuple[str, ...]:
    return ("echo/pipeline/steps.py",) + tuple(mods)


def nodes() -> list[Node]:
    """All nodes in a topological order."""
    out: list[Node] = [Node(
        "corpus", "corpus", "corpus", deps=(), outs=("data/corpus",), params=("corpus",),
        code=_code("echo/corpus/embedded.py", "echo/corpus/espeak.py", "echo/corpus/speakers.py",
                   "echo/corpus/texts.py", "echo/corpus/adapters.py", "echo/corpus/stats.py"),
        metrics=("results/corpus_stats.json",), threads=2, dirs=frozenset({"data/corpus"}))]
    for s in SPLITS:
        out.append(Node(
            f"features_{s}", "features", "features", deps=("data/corpus",), outs=(f"data/features/{s}",),
            params=("features",), code=_code("echo/features.py"), wildcards=(("split", s),),
            dirs=frozenset({f"data/features/{s}"})))
    out.append(Node(
        "features_train_noisy", "features", "augmented_features", deps=("data/corpus",),
        outs=("data/features/train_noisy",), params=("features", "simulation.augmentation"),
        code=_code("echo/features.py", "echo/simulate/augment.py", "echo/simulate/conversations.py",
                   "echo/simulate/room.py", "echo/simulate/channels.py"),
        wildcards=(("split", "train"),), dirs=frozenset({"data/features/train_noisy"})))
    sim_code = _code("echo/simulate/conversations.py", "echo/simulate/mixtures.py", "echo/simulate/room.py",
                     "echo/simulate/utterances.py", "echo/simulate/shards.py", "echo/simulate/stats.py",
                     "echo/simulate/rttm.py", "echo/simulate/sets.py", "echo/simulate/channels.py", "echo/metrics/der.py")
    for kind, splits in SIMULATED.items():
        for s in splits:
            out.append(Node(
                f"{kind}_{s}", "simulation", "simulate", deps=("data/corpus",),
                outs=(f"data/sim/{kind}/{s}", f"results/figures/{kind}_{s}.png"),
                params=(f"simulation.{kind}", f"simulation.sets.{kind}_{s}"), code=sim_code,
                wildcards=(("kind", kind), ("split", s)), metrics=(f"results/simulation/{kind}_{s}.json",),
                dirs=frozenset({f"data/sim/{kind}/{s}"})))
    out.append(Node(
        "real_voices", "corpus", "real_voices", deps=(), outs=("data/real_voices",), params=("evaluation.real_voices",),
        code=_code("echo/corpus/real_voices.py"), metrics=("results/real_voices.json",),
        dirs=frozenset({"data/real_voices"})))
    for s in REAL_SPLITS:
        out.append(Node(
            f"conversations_real_{s}", "simulation", "simulate", deps=("data/real_voices",),
            outs=(f"data/sim/real/{s}", f"results/figures/real_{s}.png"),
            params=("simulation.conversations", f"simulation.sets.real_{s}"), code=sim_code,
            wildcards=(("kind", "real"), ("split", s)), metrics=(f"results/simulation/real_{s}.json",),
            dirs=frozenset({f"data/sim/real/{s}"})))
    out.append(Node(
        "pretrain", "pretrain", "pretrain", deps=("data/features/train",), outs=("models/pretrain",),
        params=("features", "encoder", "pretrain"),
        code=_code("echo/models/vit.py", "echo/models/jepa.py", "echo/models/masks.py", "echo/train/pretrain.py",
                   "echo/train/loader.py", "echo/train/schedules.py", "echo/train/checkpoint.py",
                   "echo/train/collapse.py", "echo/train/distributed.py"),
        gpu=1, threads=2, dirs=frozenset({"models/pretrain"})))
    stage_code = ("echo/stages/common.py", "echo/stages/batches.py", "echo/models/bundle.py", "echo/heads/guard.py")
    prev = "models/pretrain"
    for st, heads in STAGE_HEADS.items():
        extra = (("data/sim/mixtures/train", "data/sim/mixtures/dev", "models/pretrain") if st == "routing" else ())
        out.append(Node(
            f"stage_{st}", "stages", "stage", deps=(prev, "data/features/train", "data/features/dev", "data/features/train_noisy") + extra,
            outs=(f"models/stages/{st}",), params=(f"stages.{st}",),
            code=_code(f"echo/stages/{st}.py", *stage_code, *(f"echo/heads/{h}.py" for h in heads)),
            wildcards=(("stage", st),), gpu=1, threads=2, dirs=frozenset({f"models/stages/{st}"})))
        prev = f"models/stages/{st}"
    out.append(Node(
        "stage_segmentation", "stages", "segmentation_stage",
        deps=("models/stages/routing", "data/sim/conversations/train", "data/sim/conversations/dev"),
        outs=("models/stages/segmentation",), params=("stages.segmentation", "evaluation.diarizer", "seeds"),
        code=_code("echo/stages/segmentation.py", "echo/heads/segmentation.py", "echo/diarization/backend.py",
                   "echo/diarization/diarizer.py", "echo/models/bundle.py", "echo/inference.py", "echo/audio.py"),
        wildcards=(("stage", "segmentation"),), gpu=1, threads=2, dirs=frozenset({"models/stages/segmentation"})))
    out.append(Node(
        "stage_separation", "stages", "separation_stage",
        deps=("models/stages/routing", "data/sim/mixtures/train", "data/sim/mixtures/dev"),
        outs=("models/stages/separation",), params=("stages.separation",),
        code=_code("echo/stages/separation.py", "echo/heads/separator.py", "echo/metrics/separation.py",
                   "echo/models/bundle.py", "echo/train/trainer.py"),
        wildcards=(("stage", "separation"),), gpu=1, threads=2, dirs=frozenset({"models/stages/separation"})))
    eval_code = ("echo/evaluate/__init__.py", "echo/metrics/probe.py", "echo/metrics/verification.py",
                 "echo/metrics/asr.py", "echo/metrics/bootstrap.py")
    for st in ("pretrain",) + tuple(STAGE_HEADS):
        model = "models/pretrain" if st == "pretrain" else f"models/stages/{st}"
        out.append(Node(
            f"abilities_{st}", "evaluation", "abilities", deps=(model, "data/features/test", "data/corpus", "data/features/dev"),
            outs=("results/figures/latent_map.png",) if st == "routing" else (), params=("evaluation.abilities",), code=_code("echo/evaluate/abilities.py", "echo/evaluate/figures.py", *eval_code),
            wildcards=(("stage", st),), metrics=(f"results/abilities/{st}.json",), threads=2))
    diar_code = ("echo/evaluate/diarize.py", "echo/diarization/diarizer.py", "echo/diarization/backend.py",
                 "echo/diarization/plda.py", "echo/diarization/ahc.py", "echo/diarization/vbx.py",
                 "echo/heads/segmentation.py", "echo/metrics/der.py", "echo/inference.py", "echo/audio.py")
    out.append(Node(
        "backend", "evaluation", "backend",
        deps=("models/stages/segmentation", "data/sim/conversations/train", "data/sim/conversations/dev",
              "models/stages/separation"),
        outs=("models/echo",), params=("evaluation.diarizer", "evaluation.backend", "evaluation.tune"),
        code=_code(*diar_code), metrics=("results/diarization_tuning.json",), threads=2,
        dirs=frozenset({"models/echo"})))
    out.append(Node(
        "diarization", "evaluation", "diarization", deps=("models/echo", "data/sim/conversations/test"),
        outs=("results/rttm/test_blind.rttm", "results/figures/der_by_k.png", "results/figures/timeline.png"),
        params=("evaluation.bootstrap",), code=_code(*diar_code, "echo/evaluate/figures.py"),
        metrics=("results/diarization.json",), threads=2))
    out.append(Node(
        "diarization_seeds", "evaluation", "diarization_seeds",
        deps=("models/echo", "models/stages/segmentation", "data/sim/conversations/dev", "data/sim/conversations/test"),
        outs=(), params=("evaluation.diarizer", "evaluation.tune", "evaluation.bootstrap"),
        code=_code("echo/evaluate/seeds.py", "echo/stages/segmentation.py", *diar_code),
        metrics=("results/diarization_seeds.json",), threads=2))
    out.append(Node(
        "diarization_channels", "evaluation", "diarization_channels",
        deps=("models/echo", "data/sim/conversations/test"), outs=(),
        params=("evaluation.channels", "evaluation.bootstrap"),
        code=_code("echo/evaluate/channels.py", "echo/simulate/channels.py", *diar_code),
        metrics=("results/diarization_channels.json",), threads=2))
    out.append(Node(
        "diarization_real", "evaluation", "diarization_real",
        deps=("models/echo", "data/sim/real/dev", "data/sim/real/test"), outs=("results/rttm/real_test_blind.rttm",),
        params=("evaluation.bootstrap",), code=_code(*diar_code), metrics=("results/diarization_real.json",), threads=2))
    out.append(Node(
        "separation", "evaluation", "separation",
        deps=("models/stages/separation", "models/stages/phonetic", "data/sim/mixtures/test", "models/pretrain",
              "models/echo"),
        outs=("results/figures/separation.png",), params=("evaluation.separation",),
        code=_code("echo/evaluate/separation.py", "echo/metrics/separation.py", "echo/heads/router.py",
                   "echo/heads/separator.py", "echo/stages/separation.py", "echo/evaluate/figures.py", *diar_code),
        metrics=("results/separation.json",), threads=2))
    out.append(Node(
        "tables", "report", "tables",
        deps=("results/corpus_stats.json", "results/diarization_tuning.json", "results/diarization.json",
              "results/diarization_seeds.json", "results/diarization_channels.json", "results/diarization_real.json", "results/real_voices.json",
              "results/separation.json")
        + tuple(f"results/abilities/{st}.json" for st in ("pretrain",) + tuple(STAGE_HEADS))
        + tuple(f"results/simulation/{k}_{s}.json" for k, ss in SIMULATED.items() for s in ss)
        + tuple(f"results/simulation/real_{s}.json" for s in REAL_SPLITS)
        + ("models/pretrain",) + tuple(f"models/stages/{st}" for st in (*STAGE_HEADS, "segmentation", "separation")),
        outs=("results/tables.md", "results/figures/training_curves.png"), params=("profile",), code=_code("echo/pipeline/report.py"),
        metrics=("results/metrics.json",)))
    return out


def node(name: str) -> Node:
    for n in nodes():
        if n.name == name:
            return n
    raise KeyError(name)
