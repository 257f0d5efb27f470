"""A tiny project built once per session: the tiny params and the corpus node's output, in a temp dir
that tests chdir into (nodes read and write paths relative to the project root, as Snakemake runs them)."""
from __future__ import annotations

import os
import shutil

import pytest

from echo.config import load_raw, validate_raw
from echo.pipeline import dag, steps
from tests.pipeline.helpers import TINY


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A directory holding params.yaml (the tiny params) and the built data/corpus."""
    d = tmp_path_factory.mktemp("tiny")
    shutil.copy(TINY, d / "params.yaml")
    cwd = os.getcwd()
    os.chdir(d)
    try:
        steps.corpus(dag.node("corpus"), validate_raw(load_raw("params.yaml")), None)
    finally:
        os.chdir(cwd)
    return d


@pytest.fixture
def in_tiny(tiny_corpus, monkeypatch):
    """Run the test inside the tiny project; returns its validated params."""
    monkeypatch.chdir(tiny_corpus)
    return validate_raw(load_raw("params.yaml"))
