"""Greedy CTC decoding on constructed logits and PER on known strings."""
import numpy as np
import pytest
import torch

from echo.metrics.asr import greedy_ctc_decode, phoneme_error_rate


def _logits(path, vocab=4):
    x = np.full((len(path), vocab), -5.0)
    x[np.arange(len(path)), path] = 3.0
    return x


def test_greedy_ctc_collapses_repeats_and_drops_blanks():
    # blank=0: "1 1" merges, the blank between the 1s keeps two 1s, "2 2" merges
    assert greedy_ctc_decode(_logits([0, 1, 1, 0, 1, 2, 2, 0])) == [[1, 1, 2]]
    assert greedy_ctc_decode(_logits([0, 0, 0])) == [[]]
    assert greedy_ctc_decode(_logits([3, 3, 3, 0]), blank=3) == [[0]]


def test_greedy_ctc_batch_with_lengths_and_torch_input():
    batch = torch.tensor(np.stack([_logits([1, 2, 2, 3]), _logits([2, 0, 2, 1])]))
    assert greedy_ctc_decode(batch, lengths=[4, 3]) == [[1, 2, 3], [2, 2]]


def test_per_known_strings():
    # "a b c d" -> "a x c": one substitution + one deletion; second pair exact
    out = phoneme_error_rate(["a b c d", ["a", "b"]], ["a x c", ["a", "b"]])
    assert out["errors"] == 2 and out["ref_length"] == 6
    assert out["per"] == pytest.approx(2 / 6)
    # insertions count too and PER can exceed 1
    assert phoneme_error_rate([[1]], [[2, 3, 4]])["per"] == 3.0
