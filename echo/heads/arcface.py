"""Additive angular margin softmax (ArcFace; Deng et al., CVPR 2019) for speaker classification.

For a unit embedding ``x`` and unit class centres ``W_j`` with ``cos θ_j = x · W_j``, the target
class logit becomes ``s · cos(θ_y + m)`` and the others stay ``s · cos θ_j``. Because
``cos(θ + m)`` is not monotonic once ``θ + m > π``, the standard fallback is used there:
``cos θ - m sin m`` ("threshold" handling, insightface), or with ``easy_margin`` the margin is only
applied where ``cos θ > 0``.

The margin can be warmed up linearly from 0 over ``margin_warmup_steps`` steps; the schedule is a
pure function of the step (pass ``step`` to :meth:`ArcFaceLoss.forward`), so a resumed run lands
on the same margin.

Hand-written: torch has no angular-margin loss; the formulation follows insightface/speechbrain.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from echo.config import check_fields, rule
from echo.errors import ConfigError, EchoError
from echo.heads import Checkpointed, config_from_dict

__all__ = ["ArcFaceConfig", "ArcFaceOutput", "ArcFaceLoss", "arcface_logits"]


@dataclass(frozen=True)
class ArcFaceConfig:
    """ArcFace loss.

    Attributes:
        scale: logit scale ``s`` (> 0; 30 is the usual value for speaker embeddings).
        margin: additive angular margin ``m`` in radians (0 <= m < π/2; 0.2 is usual).
        easy_margin: apply the margin only where ``cos θ > 0`` instead of the threshold fallback.
        margin_warmup_steps: linear warm-up of the margin from 0 over this many steps (>= 0; 0 = off).
    """

    scale: float = field(default=30.0, metadata=rule(gt=0))
    margin: float = field(default=0.2, metadata=rule(ge=0, lt=math.pi / 2))
    easy_margin: bool = False
    margin_warmup_steps: int = field(default=0, metadata=rule(ge=0))

    def __post_init__(self) -> None:
        check_fields(self)

    def margin_at(self, step: int | None) -> float:
        """The margin in effect at ``step`` (None = after warm-up)."""
        if step is None or self.margin_warmup_steps == 0:
            return self.margin
        return self.margin * min(1.0, max(0, step) / self.margin_warmup_steps)


class ArcFaceOutput(NamedTuple):
    loss: torch.Tensor  # scalar cross-entropy on the margin logits
    logits: torch.Tensor  # (B, C) scaled logits with the margin on the target class
    cosine: torch.Tensor  # (B, C) plain cosines (for accuracy / scoring, no margin)


def arcface_logits(cosine: torch.Tensor, labels: torch.Tensor, scale: float, margin: float,
                   easy_margin: bool = False) -> torch.Tensor:
    """Apply the additive angular margin to the target column of a cosine matrix.

    Args:
        cosine: ``(B, C)`` cosines between unit embeddings and unit class centres.
        labels: ``(B,)`` int64 class indices.
        scale: logit scale ``s``.
        margin: angular margin ``m`` (radians).
        easy_margin: see :class:`ArcFaceConfig`.

    Returns:
        ``(B, C)`` logits: ``s cos(θ_y + m)`` (or its fallback) on the target, ``s cos θ_j`` elsewhere.
    """
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    # The clamp keeps d sqrt/d cos finite at |cos| = 1.
    sine = (1.0 - cosine.square()).clamp_min(1e-7).sqrt()
    phi = cosine * cos_m - sine * sin_m
    if easy_margin:
        phi = torch.where(cosine > 0, phi, cosine)
    else:
        threshold = math.cos(math.pi - margin)
        phi = torch.where(cosine > threshold, phi, cosine - math.sin(math.pi - margin) * margin)
    target = F.one_hot(labels, cosine.shape[1]).to(torch.bool)
    return scale * torch.where(target, phi, cosine)


class ArcFaceLoss(Checkpointed, nn.Module):
    """Class centres plus the ArcFace cross-entropy.

    Args:
        emb_dim: embedding width (>= 1).
        num_classes: number of training speakers (>= 2).
        config: :class:`ArcFaceConfig`.
    """

    kind = "arcface"
    config_class = ArcFaceConfig

    def __init__(self, emb_dim: int, num_classes: int, config: ArcFaceConfig = ArcFaceConfig()) -> None:
        super().__init__()
        if emb_dim < 1 or num_classes < 2:
            raise ConfigError(f"arcface: expected emb_dim >= 1 and num_classes >= 2, got {emb_dim}, {num_classes}")
        self.config = config
        self.emb_dim, self.num_classes = emb_dim, num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, emb_dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, emb_dim) -> (B, C)`` cosines to the class centres."""
        return F.linear(F.normalize(embeddings, dim=-1), F.normalize(self.weight, dim=-1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, step: int | None = None) -> ArcFaceOutput:
        """Loss and logits for a batch.

        Args:
            embeddings: ``(B, emb_dim)``; normalised here, so raw or unit vectors both work.
            labels: ``(B,)`` int64 in ``[0, num_classes)``.
            step: training step for the margin warm-up (None = full margin).

        Returns:
            :class:`ArcFaceOutput` ``(loss, logits, cosine)``.
        """
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise EchoError(f"arcface: expected labels of shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        cos = self.cosine(embeddings).clamp(-1.0, 1.0)
        cfg = self.config
        logits = arcface_logits(cos, labels, cfg.scale, cfg.margin_at(step), cfg.easy_margin)
        return ArcFaceOutput(F.cross_entropy(logits, labels), logits, cos)

    def checkpoint_extra(self) -> dict:
        return {"emb_dim": self.emb_dim, "num_classes": self.num_classes}

    @classmethod
    def from_checkpoint(cls, config: dict, extra: dict) -> "ArcFaceLoss":
        return cls(extra["emb_dim"], extra["num_classes"], config_from_dict(ArcFaceConfig, config, "arcface"))
