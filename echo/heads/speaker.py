"""Speaker head: masked attentive statistics pooling -> projection -> L2-normalised embedding.

The layout follows the x-vector/ECAPA tail: ``pool (2D) -> BN -> Linear -> BN -> L2 norm``. The
embedding is trained with :class:`echo.heads.arcface.ArcFaceLoss` and clustered by VBx downstream.
"""
from __future__ import annotations

from typing import Literal
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from echo.config import check_fields, rule
from echo.heads import Checkpointed
from echo.heads.pooling import VARIANTS, AttentiveStatsPooling, PoolingConfig

__all__ = ["SpeakerConfig", "SpeakerHead"]


@dataclass(frozen=True)
class SpeakerConfig:
    """Speaker embedding head.

    Attributes:
        d_model: encoder latent width (>= 1).
        emb_dim: embedding width (>= 1).
        pooling: ``"okabe"`` or ``"ecapa"`` (see :mod:`echo.heads.pooling`).
        attention_dim: hidden width of the pooling scorer (>= 1).
        batchnorm: batch-normalise the pooled statistics and the projection (x-vector style).
    """

    d_model: int = field(default=512, metadata=rule(ge=1))
    emb_dim: int = field(default=256, metadata=rule(ge=1))
    pooling: Literal[VARIANTS] = "okabe"
    attention_dim: int = field(default=128, metadata=rule(ge=1))
    batchnorm: bool = True

    def __post_init__(self) -> None:
        check_fields(self)

class SpeakerHead(Checkpointed, nn.Module):
    """``(B, T, d_model)`` latents + mask -> ``(B, emb_dim)`` unit-norm speaker embeddings."""

    kind = "speaker"
    config_class = SpeakerConfig

    def __init__(self, config: SpeakerConfig = SpeakerConfig()) -> None:
        super().__init__()
        self.config = config
        self.pool = AttentiveStatsPooling(PoolingConfig(config.d_model, config.attention_dim, config.pooling))
        d2 = self.pool.output_dim
        self.pool_norm = nn.BatchNorm1d(d2) if config.batchnorm else nn.Identity()
        self.proj = nn.Linear(d2, config.emb_dim)
        self.emb_norm = nn.BatchNorm1d(config.emb_dim) if config.batchnorm else nn.Identity()

    def forward(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embed a batch of (padded) latent sequences.

        Args:
            latents: ``(B, T, d_model)``.
            mask: bool ``(B, T)``, True = valid; None = all valid.

        Returns:
            ``(B, emb_dim)`` L2-normalised embeddings. (In training mode with batch norm, B must
            be > 1.)
        """
        pooled = self.pool_norm(self.pool(latents, mask))
        return F.normalize(self.emb_norm(self.proj(pooled)), dim=-1)

    @torch.no_grad()
    def embed_windows(self, latents: np.ndarray, starts, length: int, masks: np.ndarray | None = None,
                      batch_size: int = 64) -> np.ndarray:
        """Embeddings of windows of one recording's latents, in padded batches (the one place the
        diarizer, its back end and ``echo embed`` cut windows out of a latent sequence).

        Args:
            latents: ``(N, d_model)`` latents of the recording.
            starts: ``(M,)`` first token of each window; a window is ``latents[s : s + length]``
                (shorter at the end of the recording), zero-padded to ``length``.
            length: window length in tokens (the padded width of every batch).
            masks: ``(M, length)`` bool, the tokens each window is pooled over (within the
                recording); None = all its tokens.
            batch_size: windows per forward pass.

        Returns:
            ``(M, emb_dim)`` float32 unit embeddings.
        """
        lat = np.asarray(latents, dtype=np.float32)
        starts = np.asarray(starts, dtype=np.int64)
        dev = next(self.parameters()).device
        out = []
        for b0 in range(0, len(starts), batch_size):
            part = starts[b0:b0 + batch_size]
            x = np.zeros((len(part), length, lat.shape[1]), np.float32)
            m = np.zeros((len(part), length), bool)
            for r, a in enumerate(part):
                seg = lat[a:a + length]
                x[r, :len(seg)] = seg
                m[r, :len(seg)] = True if masks is None else masks[b0 + r, :len(seg)]
            out.append(self(torch.from_numpy(x).to(dev), torch.from_numpy(m).to(dev)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.config.emb_dim), np.float32)
