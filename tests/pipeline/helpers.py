"""A copy of the workflow with the tiny params as params.yaml (shared by the workflow tests)."""
from __future__ import annotations

import shutil
from pathlib import Path

from echo.config import ROOT

TINY = ROOT / "tests" / "data" / "params-tiny.yaml"


def copy_project(d: Path) -> Path:
    """Copy the Snakefile, workflow, profiles, package and dvc.yaml into ``d``, tiny params as params.yaml."""
    for name in ("Snakefile", "workflow", "profiles", "echo", "dvc.yaml"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, d / name)
    shutil.copy(TINY, d / "params.yaml")
    for pyc in d.rglob("__pycache__"):
        shutil.rmtree(pyc)
    return d
