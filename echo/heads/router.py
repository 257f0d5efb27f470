"""Null-target K-set prediction: route a mixture's latent sequence into ``k_max`` source slots.

From the mixture latents ``(B, T, D)`` the router predicts ``k_max`` slot sequences
``(B, k_max, T, D)`` and one existence logit per slot ``(B, k_max)``. Each slot is trained (with
:func:`echo.heads.pit.kset_loss`) to be either one source's clean latent (the frozen target
encoder applied to that isolated source) or null (existence 0), so the number of speakers is
never given: it is the number of slots whose existence probability passes a threshold.

Architecture (light, ~1-2 M parameters at the defaults):

1. project the mixture latent to ``width``;
2. copy it once per slot and condition each copy on a learned slot embedding by FiLM
   (``h_k = LN(h) * (1 + γ_k) + β_k``), which breaks the symmetry between slots;
3. ``num_layers`` axial transformer blocks over the ``(slot, time)`` grid: self-attention over time
   within each slot (masked), then self-attention across the slots at each frame (this is how the
   slots agree which source each one takes, like the attractors of EEND-EDA), then an MLP;
4. per-slot output projection back to ``d_model`` (plus the mixture latent itself when
   ``residual_mixture``, so an untrained slot starts at the mixture, the SI-SDRi baseline), and an
   existence logit from the masked time-average of the slot's hidden sequence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from echo.config import check_fields, need, rule, wired
from echo.errors import EchoError
from echo.heads import Checkpointed

__all__ = ["RouterConfig", "RouterOutput", "SourceRouter", "active_slots"]


@dataclass(frozen=True)
class RouterConfig:
    """Source router (K-set predictor).

    Attributes:
        d_model: encoder latent width (>= 1).
        k_max: number of slots, the most speakers a mixture can be split into (>= 1).
        width: the router's internal width (>= 1, divisible by ``num_heads``).
        num_layers: axial (time + slot attention) blocks (>= 1).
        num_heads: attention heads (>= 1).
        ff_mult: MLP expansion factor (>= 1).
        dropout: dropout in attention and MLP (0 <= p < 1).
        residual_mixture: add the mixture latent to every slot's output.
    """

    d_model: int = field(default=512, metadata=wired(ge=1))
    k_max: int = field(default=4, metadata=rule(ge=1))
    width: int = field(default=256, metadata=rule(ge=1))
    num_layers: int = field(default=2, metadata=rule(ge=1))
    num_heads: int = field(default=4, metadata=rule(ge=1))
    ff_mult: int = field(default=2, metadata=rule(ge=1))
    dropout: float = field(default=0.0, metadata=rule(ge=0, lt=1))
    residual_mixture: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        need(self, self.width % self.num_heads == 0, "width", f"a multiple of num_heads ({self.num_heads})", self.width)


class RouterOutput(NamedTuple):
    slots: torch.Tensor  # (B, k_max, T, d_model), zero on padded frames
    exist_logits: torch.Tensor  # (B, k_max)


def active_slots(exist_logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Bool ``(B, k_max)``: slots whose existence probability is >= ``threshold``.

    ``active_slots(...).sum(1)`` is the estimated speaker count.
    """
    return torch.sigmoid(exist_logits) >= threshold


class _AxialBlock(nn.Module):
    """Pre-norm block: attention over time (per slot), attention over slots (per frame), MLP."""

    def __init__(self, cfg: RouterConfig) -> None:
        super().__init__()
        w = cfg.width
        self.time_norm, self.slot_norm, self.ff_norm = nn.LayerNorm(w), nn.LayerNorm(w), nn.LayerNorm(w)
        self.time_attn = nn.MultiheadAttention(w, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.slot_attn = nn.MultiheadAttention(w, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(w, cfg.ff_mult * w), nn.GELU(), nn.Dropout(cfg.dropout),
                                nn.Linear(cfg.ff_mult * w, w), nn.Dropout(cfg.dropout))

    def forward(self, h: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        b, k, t, w = h.shape
        x = self.time_norm(h).reshape(b * k, t, w)
        h = h + self.time_attn(x, x, x, key_padding_mask=pad.repeat_interleave(k, dim=0),
                               need_weights=False)[0].view(b, k, t, w)
        x = self.slot_norm(h).transpose(1, 2).reshape(b * t, k, w)
        h = h + self.slot_attn(x, x, x, need_weights=False)[0].view(b, t, k, w).transpose(1, 2)
        return h + self.ff(self.ff_norm(h))


class SourceRouter(Checkpointed, nn.Module):
    """Mixture latents ``(B, T, D)`` -> ``k_max`` slot sequences and existence logits."""

    kind = "router"
    config_class = RouterConfig

    def __init__(self, config: RouterConfig = RouterConfig()) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.in_proj = nn.Linear(config.d_model, w)
        self.in_norm = nn.LayerNorm(w)
        # Unit-variance slot embeddings: the slots must differ from the first step.
        self.slot_embed = nn.Parameter(torch.randn(config.k_max, w))
        self.film = nn.Linear(w, 2 * w)
        self.blocks = nn.ModuleList(_AxialBlock(config) for _ in range(config.num_layers))
        self.out_norm = nn.LayerNorm(w)
        self.out_proj = nn.Linear(w, config.d_model)
        self.exist = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 1))

    def forward(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> RouterOutput:
        """Predict the slots of a batch of mixtures.

        Args:
            latents: mixture latents ``(B, T, d_model)``.
            mask: bool ``(B, T)``, True = valid; None = all valid.

        Returns:
            :class:`RouterOutput` ``(slots, exist_logits)``.
        """
        if latents.dim() != 3 or latents.shape[-1] != self.config.d_model:
            raise EchoError(f"router: expected latents (B, T, {self.config.d_model}), got {tuple(latents.shape)}")
        b, t, _ = latents.shape
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=latents.device)
        if not bool(mask.any(dim=1).all()):
            raise EchoError("router: a mixture has no valid frame; expected >= 1 True per mask row")
        k = self.config.k_max
        h = self.in_norm(self.in_proj(latents))  # (B, T, W)
        gamma, beta = self.film(self.slot_embed).chunk(2, dim=-1)  # (K, W) each
        h = h.unsqueeze(1) * (1 + gamma[None, :, None]) + beta[None, :, None]  # (B, K, T, W)
        for block in self.blocks:
            h = block(h, ~mask)
        h = self.out_norm(h)
        valid = mask[:, None, :, None].to(h.dtype)  # (B, 1, T, 1)
        slots = self.out_proj(h)
        if self.config.residual_mixture:
            slots = slots + latents.unsqueeze(1)
        pooled = (h * valid).sum(dim=2) / valid.sum(dim=2)  # (B, K, W)
        return RouterOutput(slots * valid, self.exist(pooled).squeeze(-1).view(b, k))
