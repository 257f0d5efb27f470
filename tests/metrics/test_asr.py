"""PER on known strings (greedy CTC decoding: tests/heads/test_ctc.py)."""
import pytest

from echo.metrics.asr import phoneme_error_rate


def test_per_known_strings():
    # "a b c d" -> "a x c": one substitution + one deletion; second pair exact
    out = phoneme_error_rate(["a b c d", ["a", "b"]], ["a x c", ["a", "b"]])
    assert out["errors"] == 2 and out["ref_length"] == 6
    assert out["per"] == pytest.approx(2 / 6)
    # insertions count too and PER can exceed 1
    assert phoneme_error_rate([[1]], [[2, 3, 4]])["per"] == 3.0
