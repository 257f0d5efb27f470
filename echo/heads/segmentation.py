"""Local speaker segmentation on the shared latent: who of up to ``max_speakers`` local speakers is
active at each 40 ms token of a few-second chunk, with overlap.

The output is pyannote 3's *powerset* encoding (Plaquet & Bredin, Interspeech 2023): one softmax
over every set of at most ``max_per_frame`` of the chunk's ``max_speakers`` local speakers
(``{}``, ``{0}``, ``{1}``, ..., ``{0, 1}``, ...), so speech activity, overlap and the number of
active speakers per frame come out of one argmax, with no activation threshold to tune (the
multi-label EEND alternative needs one per output; tuning fragility is what the project's dev
tuning suffered from). The local speakers are unordered, so training is permutation-invariant:
the powerset posteriors are turned into per-speaker activities, the permutation of the reference
speakers with the lowest binary cross-entropy is chosen per chunk, and the cross-entropy of the
permuted powerset targets is minimised (as in pyannote.audio's ``SpeakerDiarization`` task).

Architecture: the encoder latents ``(B, T, D)`` -> layer norm -> linear to ``width`` ->
``num_layers`` bidirectional LSTM layers (pyannote's PyanNet uses the same recurrent stack; one
layer is enough on top of a transformer encoder that already sees the whole chunk, and keeps the
head cheap on CPU at 25 tokens/s) -> linear -> powerset logits ``(B, T, C)``. Hand-written: the powerset mapping of
pyannote.audio is not a separate package and pyannote.audio itself is far too heavy a dependency.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from echo.config import check_fields, need, rule, wired
from echo.heads import Checkpointed

__all__ = ["SegmentationConfig", "Powerset", "SegmentationHead", "powerset_pit_loss", "best_permutation"]


@dataclass(frozen=True)
class SegmentationConfig:
    """Segmentation head.

    Attributes:
        d_model: encoder latent width (>= 1).
        max_speakers: local speakers per chunk (>= 1).
        max_per_frame: most speakers active at one token (1 <= . <= max_speakers).
        width: LSTM hidden size per direction (>= 1).
        num_layers: bidirectional LSTM layers (>= 1).
        dropout: dropout between LSTM layers, in [0, 1).
    """

    d_model: int = field(default=512, metadata=wired(ge=1))
    max_speakers: int = field(default=3, metadata=rule(ge=1))
    max_per_frame: int = field(default=2, metadata=rule(ge=1))
    width: int = field(default=128, metadata=rule(ge=1))
    num_layers: int = field(default=1, metadata=rule(ge=1))
    dropout: float = field(default=0.1, metadata=rule(ge=0, lt=1))

    def __post_init__(self) -> None:
        check_fields(self)
        need(self, self.max_per_frame <= self.max_speakers, "max_per_frame",
             f"an integer in [1, max_speakers={self.max_speakers}]", self.max_per_frame)


class Powerset:
    """The powerset classes of ``num_speakers`` speakers with at most ``max_per_frame`` at once.

    Class 0 is silence; then the single speakers in order, then the pairs, ... ``mapping`` is the
    ``(C, num_speakers)`` 0/1 matrix of each class's members.
    """

    def __init__(self, num_speakers: int, max_per_frame: int):
        self.num_speakers, self.max_per_frame = int(num_speakers), int(max_per_frame)
        sets = [c for k in range(self.max_per_frame + 1) for c in itertools.combinations(range(self.num_speakers), k)]
        self.sets = sets
        m = np.zeros((len(sets), self.num_speakers), dtype=np.float32)
        for i, c in enumerate(sets):
            m[i, list(c)] = 1.0
        self.mapping_np = m
        # multi-label row (as a bit mask) -> class; rows with too many speakers have no class
        self._index = {sum(1 << j for j in c): i for i, c in enumerate(sets)}

    @property
    def num_classes(self) -> int:
        return len(self.sets)

    @cached_property
    def mapping(self) -> torch.Tensor:
        return torch.from_numpy(self.mapping_np)

    def to_multilabel(self, probs: torch.Tensor) -> torch.Tensor:
        """Powerset posteriors ``(..., C)`` -> per-speaker activity probabilities ``(..., S)``."""
        return probs @ self.mapping.to(probs.device, probs.dtype)

    def hard_multilabel(self, logits: torch.Tensor | np.ndarray) -> np.ndarray:
        """Argmax class -> ``(..., S)`` 0/1 activity."""
        cls = np.asarray(logits.argmax(-1).cpu() if isinstance(logits, torch.Tensor) else np.argmax(logits, -1))
        return self.mapping_np[cls]

    def to_powerset(self, multilabel: torch.Tensor) -> torch.Tensor:
        """``(..., S)`` 0/1 activity -> class ids; a frame with more than ``max_per_frame`` active
        speakers keeps its ``max_per_frame`` lowest-numbered ones (the training targets order the
        local speakers by activity, so those are the most active)."""
        y = multilabel.long()
        keep = torch.cumsum(y, dim=-1) <= self.max_per_frame
        y = y * keep
        bits = (y << torch.arange(self.num_speakers, device=y.device)).sum(-1)
        table = torch.full((1 << self.num_speakers,), -1, dtype=torch.long)
        for b, i in self._index.items():
            table[b] = i
        return table.to(y.device)[bits]


class SegmentationHead(Checkpointed, nn.Module):
    """Encoder latents ``(B, T, D)`` (+ optional valid mask) -> powerset logits ``(B, T, C)``."""

    kind = "segmentation"
    config_class = SegmentationConfig

    def __init__(self, config: SegmentationConfig = SegmentationConfig()):
        super().__init__()
        self.config = config
        self.powerset = Powerset(config.max_speakers, config.max_per_frame)
        self.norm = nn.LayerNorm(config.d_model)
        self.proj = nn.Linear(config.d_model, config.width)
        self.lstm = nn.LSTM(config.width, config.width, num_layers=config.num_layers, batch_first=True,
                            bidirectional=True, dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.out = nn.Sequential(nn.Linear(2 * config.width, config.width), nn.LeakyReLU(),
                                 nn.Linear(config.width, self.powerset.num_classes))

    def forward(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.proj(self.norm(latents))
        if mask is not None:
            h = h * mask.unsqueeze(-1).to(h.dtype)
        h, _ = self.lstm(h)
        return self.out(h)


def best_permutation(activity: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per chunk, the permutation of the target speakers that best matches the predicted activity.

    Args:
        activity: ``(B, T, S)`` predicted activity probabilities.
        target: ``(B, T, S)`` 0/1 reference activity.
        mask: ``(B, T)`` valid tokens (None = all).

    Returns:
        int64 ``(B, S)``: ``target[b, :, perm[b]]`` is aligned with ``activity[b]``.
    """
    s = activity.shape[-1]
    perms = torch.tensor(list(itertools.permutations(range(s))), device=activity.device)  # (P, S)
    p = activity.clamp(1e-6, 1 - 1e-6)
    y = target.to(p.dtype)[:, :, perms]  # (B, T, P, S)
    bce = -(y * p.log()[:, :, None] + (1 - y) * (1 - p).log()[:, :, None]).sum(-1)  # (B, T, P)
    if mask is not None:
        bce = bce * mask[:, :, None].to(bce.dtype)
    return perms[bce.sum(1).argmin(-1)]


def powerset_pit_loss(logits: torch.Tensor, target: torch.Tensor, powerset: Powerset,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Permutation-invariant powerset cross-entropy.

    Args:
        logits: ``(B, T, C)`` powerset logits.
        target: ``(B, T, S)`` 0/1 reference activity of the chunk's local speakers (any order).
        powerset: the :class:`Powerset` of the head.
        mask: ``(B, T)`` valid tokens.

    Returns:
        scalar loss (mean over valid tokens).
    """
    with torch.no_grad():
        act = powerset.to_multilabel(logits.float().softmax(-1))
        perm = best_permutation(act, target, mask)
        aligned = torch.gather(target, 2, perm[:, None, :].expand(-1, target.shape[1], -1))
        cls = powerset.to_powerset(aligned)
    ce = F.cross_entropy(logits.float().transpose(1, 2), cls, reduction="none")  # (B, T)
    if mask is None:
        return ce.mean()
    m = mask.to(ce.dtype)
    return (ce * m).sum() / m.sum().clamp_min(1.0)
