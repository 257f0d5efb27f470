"""Phoneme error rate (PER); greedy CTC decoding is :func:`echo.heads.ctc.ctc_greedy_decode`.

PER = (substitutions + deletions + insertions) / reference length, both summed over the corpus
before dividing (not a mean of per-utterance rates). Edit distance is
``torchaudio.functional.edit_distance`` (Levenshtein on token sequences).
"""
from __future__ import annotations

from typing import Sequence

from torchaudio.functional import edit_distance

__all__ = ["phoneme_error_rate"]


def phoneme_error_rate(references: Sequence[Sequence], hypotheses: Sequence[Sequence]) -> dict:
    """Corpus PER over paired token sequences (phone symbols as strings, or ids).

    Args:
        references: reference phone sequences (a space-separated string is split on whitespace).
        hypotheses: decoded sequences, same order and length as ``references``.

    Returns:
        ``{"per", "errors", "ref_length", "n_utterances"}``; ``per`` is errors / ref_length.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"phoneme_error_rate: {len(references)} references vs {len(hypotheses)} hypotheses")
    errors = length = 0
    for ref, hyp in zip(references, hypotheses):
        ref = ref.split() if isinstance(ref, str) else list(ref)
        hyp = hyp.split() if isinstance(hyp, str) else list(hyp)
        errors += edit_distance(ref, hyp)
        length += len(ref)
    return {
        "per": errors / length if length else float("nan"),
        "errors": int(errors), "ref_length": int(length), "n_utterances": len(references),
    }
