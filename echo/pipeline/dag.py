"""The workflow's nodes: the single source of truth that both Snakemake and DVC are built from.

Each :class:`Node` is one concrete job (wildcards already expanded): its command, the files it
reads (data and the package sources whose edits should re-run it), the files it writes, the
params keys it depends on (its *slice* of params.yaml), and its metrics. ``workflow/rules/*.smk``
turn the nodes of a stage into Snakemake rules; ``python -m echo.pipeline dvc`` writes
``dvc.yaml`` from the same list, and a test checks the committed file is up to date.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Node", "SPLITS", "nodes", "node", "STAGES"]

SPLITS = ("train", "dev", "test")
SIMULATED = {"conversations": ("dev", "test"), "mixtures": ("train", "dev", "test")}
STAGES = ("corpus", "features", "simulation", "pretrain", "probe", "report")


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
    sim_code = _code("echo/simulate/conversations.py", "echo/simulate/mixtures.py", "echo/simulate/room.py",
                     "echo/simulate/utterances.py", "echo/simulate/shards.py", "echo/simulate/stats.py",
                     "echo/simulate/rttm.py", "echo/simulate/sets.py")
    for kind, splits in SIMULATED.items():
        for s in splits:
            out.append(Node(
                f"{kind}_{s}", "simulation", "simulate", deps=("data/corpus",),
                outs=(f"data/sim/{kind}/{s}", f"results/figures/{kind}_{s}.png"),
                params=(f"simulation.{kind}", f"simulation.sets.{kind}_{s}"), code=sim_code,
                wildcards=(("kind", kind), ("split", s)), metrics=(f"results/simulation/{kind}_{s}.json",),
                dirs=frozenset({f"data/sim/{kind}/{s}"})))
    out.append(Node(
        "pretrain", "pretrain", "pretrain", deps=("data/features/train",), outs=("models/pretrain",),
        params=("features", "encoder", "pretrain"),
        code=_code("echo/models/vit.py", "echo/models/jepa.py", "echo/models/masks.py", "echo/train/pretrain.py",
                   "echo/train/loader.py", "echo/train/schedules.py", "echo/train/checkpoint.py",
                   "echo/train/collapse.py", "echo/train/distributed.py"),
        gpu=1, threads=2, dirs=frozenset({"models/pretrain"})))
    out.append(Node(
        "tables", "report", "tables",
        deps=("results/corpus_stats.json", "models/pretrain") + tuple(f"data/features/{s}" for s in SPLITS)
        + tuple(f"results/simulation/{k}_{s}.json" for k, ss in SIMULATED.items() for s in ss),
        outs=("results/tables.md",), params=("profile",), code=_code("echo/pipeline/report.py"),
        metrics=("results/metrics.json",)))
    return out


def node(name: str) -> Node:
    for n in nodes():
        if n.name == name:
            return n
    raise KeyError(name)
