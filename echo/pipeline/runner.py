"""Run one workflow node: validate params, open its MLflow child run, call its step, log the outcome."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from echo.config import load_raw, params_slice, validate_raw
from echo.errors import EchoError
from echo.pipeline import dag, steps
from echo.tracking import node_run

log = logging.getLogger("echo.pipeline")


def run_node(name: str, params_path: Path, mlflow: bool = True) -> None:
    """Run node ``name`` with the params in ``params_path`` (validated first)."""
    try:
        n = dag.node(name)
    except KeyError:
        raise EchoError(f"unknown workflow node {name!r} (see echo/pipeline/dag.py)") from None
    raw = validate_raw(load_raw(params_path), str(params_path))
    import torch

    torch.set_num_threads(max(1, min(n.threads, os.cpu_count() or 1)))
    sl = params_slice(raw, n.params)
    log.info("node %s: params %s", name, sl)
    t0 = time.time()
    with node_run(name, sl, dict(n.wildcards), enabled=mlflow) as run:
        result = getattr(steps, n.step)(n, raw, run) or {}
        if run is not None:
            run.log_metrics({"wall_time_s": time.time() - t0})
            for m in n.metrics:
                run.log_artifact(m)
            for k, v in result.get("artifacts", {}).items():
                run.log_artifact(v, k)
    _write_timing(n, time.time() - t0)
    log.info("node %s: done in %.1f s", name, time.time() - t0)


def device_name() -> str:
    """The machine a node ran on, in words (GPU name, or CPU model and thread count)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = "cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def _write_timing(n, wall: float) -> None:
    """Wall time, peak memory and device per node, for the header of results/tables.md."""
    import resource

    from echo.io import write_json
    from echo.tracking import git_commit

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_json(Path("logs/timings") / f"{n.name}.json",
               {"node": n.name, "wall_s": round(wall, 2), "peak_rss_mb": round(peak_mb, 1),
                "device": device_name(), "git_commit": git_commit()})


def run_worker(name: str, params_path: Path, run_id: str | None) -> None:
    """One torchrun rank of node ``name``; rank 0 logs into the parent process's MLflow child run."""
    n = dag.node(name)
    raw = validate_raw(load_raw(params_path), str(params_path))
    run = None
    if run_id and os.environ.get("RANK", "0") == "0":
        from echo.tracking import NodeRun, _client

        run = NodeRun(_client(), run_id)
    getattr(steps, n.step + "_body")(n, raw, run)
