"""Phoneme error rate (PER) and greedy CTC decoding.

PER = (substitutions + deletions + insertions) / reference length, both summed over the corpus
before dividing (not a mean of per-utterance rates). Edit distance is
``torchaudio.functional.edit_distance`` (Levenshtein on token sequences).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torchaudio.functional import edit_distance

__all__ = ["greedy_ctc_decode", "phoneme_error_rate"]


def greedy_ctc_decode(
    logits: np.ndarray | torch.Tensor,
    blank: int = 0,
    lengths: Sequence[int] | None = None,
) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, collapse repeats, then drop blanks.

    Args:
        logits: (T, V) for one utterance or (B, T, V) for a batch (log-probabilities or raw
            scores: only the argmax matters).
        blank: index of the CTC blank symbol.
        lengths: valid frames per batch item (padding beyond is ignored); default all frames.

    Returns:
        One list of token ids per utterance (a single list inside a list for (T, V) input).
    """
    x = torch.as_tensor(logits)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3:
        raise ValueError(f"greedy_ctc_decode: expected (T, V) or (B, T, V) logits, got shape {tuple(x.shape)}")
    best = x.argmax(dim=-1).cpu().numpy()
    out = []
    for b, path in enumerate(best):
        if lengths is not None:
            path = path[: int(lengths[b])]
        if path.size == 0:
            out.append([])
            continue
        keep = np.ones(path.size, dtype=bool)
        keep[1:] = path[1:] != path[:-1]  # a repeat is merged unless a blank separates it
        collapsed = path[keep]
        out.append(collapsed[collapsed != blank].tolist())
    return out


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
