"""Fixtures shared by the simulation tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.simulate.helpers import build_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A tiny packaged-layout corpus (FLAC, manifest, alignments), built once for the simulation tests."""
    return build_corpus(tmp_path_factory.mktemp("corpus"))
