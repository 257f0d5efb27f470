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
    log.info("node %s: done in %.1f s", name, time.time() - t0)
