"""Attentive statistics pooling over a padded latent sequence.

Okabe et al., "Attentive Statistics Pooling for Deep Speaker Embedding" (Interspeech 2018): a small
attention network scores each frame, and the pooled vector is the attention-weighted mean and
standard deviation. The ``"ecapa"`` variant (Desplanques et al., ECAPA-TDNN, 2020) makes the scores
channel-dependent (one weight per frame *and* channel) and context-dependent (the scorer also sees
the utterance's global mean and standard deviation).

Hand-written: torchaudio/speechbrain-style pooling layers take no padding mask over ``(B, T, D)``
latents, and masking is the point here (padded frames must have exactly zero weight).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from echo.errors import ConfigError, EchoError

__all__ = ["PoolingConfig", "AttentiveStatsPooling", "masked_mean_std"]

VARIANTS = ("okabe", "ecapa")


@dataclass(frozen=True)
class PoolingConfig:
    """Attentive statistics pooling.

    Attributes:
        d_model: input latent width (>= 1).
        attention_dim: hidden width of the frame scorer (>= 1).
        variant: ``"okabe"`` (one scalar weight per frame) or ``"ecapa"`` (channel- and
            context-dependent weights).
        eps: floor on the variance before the square root (> 0), keeps gradients finite.
    """

    d_model: int = 512
    attention_dim: int = 128
    variant: str = "okabe"
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.d_model < 1:
            raise ConfigError(f"pooling.d_model: expected >= 1, got {self.d_model}")
        if self.attention_dim < 1:
            raise ConfigError(f"pooling.attention_dim: expected >= 1, got {self.attention_dim}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"pooling.variant: expected one of {VARIANTS}, got {self.variant!r}")
        if not self.eps > 0:
            raise ConfigError(f"pooling.eps: expected > 0, got {self.eps}")


def _check_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if x.dim() != 3:
        raise EchoError(f"pooling: expected latents of shape (B, T, D), got {tuple(x.shape)}")
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
        raise EchoError(f"pooling: expected a bool mask of shape {tuple(x.shape[:2])}, "
                        f"got {mask.dtype} {tuple(mask.shape)}")
    if not bool(mask.any(dim=1).all()):
        raise EchoError("pooling: a sequence has no valid frame; expected >= 1 True per mask row")
    return mask


def masked_mean_std(x: torch.Tensor, weights: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean and standard deviation over time.

    Args:
        x: ``(B, T, D)`` values (padded frames must already be finite, e.g. zeroed).
        weights: ``(B, T, 1)`` or ``(B, T, D)``, summing to 1 over T, zero on padding.
        eps: variance floor.

    Returns:
        ``(mean, std)``, each ``(B, D)``.
    """
    mean = (weights * x).sum(dim=1)
    var = (weights * x.square()).sum(dim=1) - mean.square()
    return mean, var.clamp_min(eps).sqrt()


class AttentiveStatsPooling(nn.Module):
    """Masked attentive statistics pooling: ``(B, T, D) -> (B, 2 D)`` (weighted mean ++ std)."""

    def __init__(self, config: PoolingConfig = PoolingConfig()) -> None:
        super().__init__()
        self.config = config
        d, h = config.d_model, config.attention_dim
        ecapa = config.variant == "ecapa"
        self.scorer = nn.Sequential(
            nn.Linear(3 * d if ecapa else d, h),
            nn.Tanh(),
            nn.Linear(h, d if ecapa else 1),
        )

    @property
    def output_dim(self) -> int:
        return 2 * self.config.d_model

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pool a padded sequence.

        Args:
            x: latents ``(B, T, D)``.
            mask: bool ``(B, T)``, True = valid frame; None = all valid.

        Returns:
            ``(B, 2 D)``: attention-weighted mean and standard deviation, concatenated.
        """
        mask = _check_mask(x, mask)
        valid = mask.unsqueeze(-1)
        # Zero padded frames so that NaN/inf there cannot leak through 0 * x.
        x = x.masked_fill(~valid, 0.0)
        eps = self.config.eps
        if self.config.variant == "ecapa":
            uniform = valid.to(x.dtype) / valid.sum(dim=1, keepdim=True).to(x.dtype)
            g_mean, g_std = masked_mean_std(x, uniform, eps)
            t = x.shape[1]
            ctx = torch.cat([x, g_mean.unsqueeze(1).expand(-1, t, -1), g_std.unsqueeze(1).expand(-1, t, -1)], dim=-1)
            scores = self.scorer(ctx)
        else:
            scores = self.scorer(x)
        scores = scores.masked_fill(~valid, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        mean, std = masked_mean_std(x, weights, eps)
        return torch.cat([mean, std], dim=-1)
