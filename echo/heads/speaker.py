"""Speaker head: masked attentive statistics pooling -> projection -> L2-normalised embedding.

The layout follows the x-vector/ECAPA tail: ``pool (2D) -> BN -> Linear -> BN -> L2 norm``. The
embedding is trained with :class:`echo.heads.arcface.ArcFaceLoss` and clustered by VBx downstream.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from echo.errors import ConfigError
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

    d_model: int = 512
    emb_dim: int = 256
    pooling: str = "okabe"
    attention_dim: int = 128
    batchnorm: bool = True

    def __post_init__(self) -> None:
        if self.d_model < 1:
            raise ConfigError(f"speaker.d_model: expected >= 1, got {self.d_model}")
        if self.emb_dim < 1:
            raise ConfigError(f"speaker.emb_dim: expected >= 1, got {self.emb_dim}")
        if self.pooling not in VARIANTS:
            raise ConfigError(f"speaker.pooling: expected one of {VARIANTS}, got {self.pooling!r}")
        if self.attention_dim < 1:
            raise ConfigError(f"speaker.attention_dim: expected >= 1, got {self.attention_dim}")


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
