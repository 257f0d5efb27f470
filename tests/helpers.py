"""Bad input paths shared by the audio decoding and streaming inference tests."""
from __future__ import annotations

from pathlib import Path


def write_bad_input(path: Path, case: str) -> Path:
    """Make ``path`` a bad audio input: ``missing`` (nothing there), ``empty`` (0 bytes), ``directory``
    or ``text`` (a text file with an audio name); return it."""
    if case == "empty":
        path.write_bytes(b"")
    elif case == "directory":
        path.mkdir()
    elif case == "text":
        path.write_text("this is not audio\n" * 10)
    elif case != "missing":
        raise ValueError(f"unknown bad-input case {case!r}")
    return path
