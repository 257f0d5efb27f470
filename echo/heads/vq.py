"""Vector-quantisation bottleneck on frame latents (van den Oord et al., VQ-VAE, 2017).

Each valid frame latent (optionally projected to ``code_dim``) is replaced by its nearest codebook
vector; gradients pass straight through (``z + sg(q - z)``). The codebook learns either by
exponential moving averages of the assigned latents (``update="ema"``, VQ-VAE-2 style) or by the codebook loss ``||sg(z) - q||²``
(``update="loss"``); both add the commitment loss ``β ||z - sg(q)||²``.

Dead codes: a code unused for ``dead_code_steps`` consecutive training steps is re-initialised
from a random valid latent of the current batch (Jukebox / SoundStream practice). All randomness
(initialisation, projections, revival draws) comes from generators derived from ``seed`` (and the
step counter for revivals), so two runs with the same seed and inputs give identical bytes,
including after a resume from a state dict.

Hand-written: torch has no VQ layer; the maintained third-party ones (vector-quantize-pytorch) are
not a dependency of this project and do not take a padding mask.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from echo.config import check_fields, need, rule
from echo.errors import EchoError
from echo.heads import Checkpointed

__all__ = ["VQConfig", "VQOutput", "VectorQuantizer", "codebook_perplexity"]

UPDATES = ("ema", "loss")


@dataclass(frozen=True)
class VQConfig:
    """Vector-quantisation bottleneck.

    Attributes:
        d_model: input/output latent width (>= 1).
        codebook_size: number of codes K (>= 2).
        code_dim: codebook vector width (>= 1); must equal ``d_model`` unless ``project``.
        project: linear projections ``d_model -> code_dim`` before and ``code_dim -> d_model``
            after quantisation.
        update: ``"ema"`` (moving-average codebook) or ``"loss"`` (codebook loss + SGD).
        ema_decay: EMA decay (0 < decay < 1); used with ``update="ema"``.
        commitment: commitment-loss weight β (>= 0).
        dead_code_steps: revive a code after this many consecutive unused training steps
            (>= 0; 0 = never).
        epsilon: floor on the EMA cluster sizes before dividing (> 0).
        seed: seed of the initialisation and revival draws (>= 0).
    """

    d_model: int = field(default=512, metadata=rule(ge=1))
    codebook_size: int = field(default=512, metadata=rule(ge=2))
    code_dim: int = field(default=512, metadata=rule(ge=1))
    project: bool = False
    update: Literal[UPDATES] = "ema"
    ema_decay: float = field(default=0.99, metadata=rule(gt=0, lt=1))
    commitment: float = field(default=0.25, metadata=rule(ge=0))
    dead_code_steps: int = field(default=100, metadata=rule(ge=0))
    epsilon: float = field(default=1e-5, metadata=rule(gt=0))
    seed: int = field(default=0, metadata=rule(ge=0))

    def __post_init__(self) -> None:
        check_fields(self)
        need(self, self.project or self.code_dim == self.d_model, "code_dim",
             f"== d_model ({self.d_model}) when project is false", self.code_dim)

class VQOutput(NamedTuple):
    quantized: torch.Tensor  # (B, T, d_model) straight-through quantised latents, 0 on padding
    codes: torch.Tensor  # (B, T) int64 code per frame, -1 on padding
    loss: torch.Tensor  # scalar: commitment (+ codebook loss with update="loss")
    perplexity: torch.Tensor  # scalar: exp(entropy) of this batch's code histogram
    usage: torch.Tensor  # scalar: fraction of codes used at least once in this batch
    revived: int  # codes re-initialised at this step


def codebook_perplexity(counts: torch.Tensor) -> torch.Tensor:
    """``exp(H(p))`` of a code histogram; K for uniform use of K codes, 1 for a single code."""
    total = counts.sum()
    if total <= 0:
        return counts.new_tensor(0.0)
    p = counts / total
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum())


class VectorQuantizer(Checkpointed, nn.Module):
    """Masked VQ bottleneck over ``(B, T, d_model)`` latents (see module docstring)."""

    kind = "vq"
    config_class = VQConfig

    def __init__(self, config: VQConfig = VQConfig()) -> None:
        super().__init__()
        self.config = config
        k, c = config.codebook_size, config.code_dim
        # Build under a private RNG so construction is a function of the seed alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.proj_in = nn.Linear(config.d_model, c) if config.project else nn.Identity()
            self.proj_out = nn.Linear(c, config.d_model) if config.project else nn.Identity()
            init = torch.randn(k, c)
        if config.update == "ema":
            self.register_buffer("codebook", init)
            # Cluster sizes start at 1: a code's first EMA update blends its init with the batch mean.
            self.register_buffer("cluster_size", torch.ones(k))
            self.register_buffer("embed_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("unused_steps", torch.zeros(k, dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def _nearest(self, z: torch.Tensor) -> torch.Tensor:
        cb = self.codebook.detach().float()
        d = z.square().sum(1, keepdim=True) - 2.0 * z @ cb.t() + cb.square().sum(1)
        return d.argmin(dim=1)

    def encode(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Code indices ``(B, T)`` (int64, -1 on padding); no state change."""
        z = self.proj_in(latents).float()
        codes = self._nearest(z.reshape(-1, z.shape[-1])).view(z.shape[:2])
        return codes if mask is None else codes.masked_fill(~mask, -1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, T)`` -> latents ``(B, T, d_model)``; -1 (padding) decodes to zeros."""
        q = F.embedding(codes.clamp_min(0), self.codebook)
        return self.proj_out(q) * (codes >= 0).unsqueeze(-1).to(q.dtype)

    def forward(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> VQOutput:
        """Quantise; in training mode also update the EMA codebook and revive dead codes.

        Args:
            latents: ``(B, T, d_model)``.
            mask: bool ``(B, T)``, True = valid; None = all valid. Padding frames take no part in
                the loss, the statistics or the codebook updates.

        Returns:
            :class:`VQOutput`.
        """
        if latents.dim() != 3 or latents.shape[-1] != self.config.d_model:
            raise EchoError(f"vq: expected latents (B, T, {self.config.d_model}), got {tuple(latents.shape)}")
        b, t, _ = latents.shape
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=latents.device)
        z = self.proj_in(latents)
        flat = z.reshape(b * t, -1)
        codes = self._nearest(flat.detach().float())
        q = F.embedding(codes, self.codebook).to(flat.dtype)
        valid = mask.reshape(-1)
        zv, qv, cv = flat[valid], q[valid], codes[valid]
        counts = torch.bincount(cv, minlength=self.config.codebook_size).float()

        loss = self.config.commitment * F.mse_loss(zv, qv.detach()) if zv.numel() else flat.sum() * 0.0
        if self.config.update == "loss" and zv.numel():
            loss = loss + F.mse_loss(qv, zv.detach())
        q_st = flat + (q - flat).detach()
        quantized = self.proj_out(q_st.view(b, t, -1)) * mask.unsqueeze(-1).to(latents.dtype)

        revived = 0
        if self.training:
            with torch.no_grad():
                if self.config.update == "ema":
                    self._ema_update(zv.detach().float(), cv, counts)
                revived = self._revive_dead(zv.detach().float(), counts)
        return VQOutput(quantized, codes.view(b, t).masked_fill(~mask, -1), loss,
                        codebook_perplexity(counts).detach(), (counts > 0).float().mean(), revived)

    def _ema_update(self, zv: torch.Tensor, cv: torch.Tensor, counts: torch.Tensor) -> None:
        d, eps = self.config.ema_decay, self.config.epsilon
        sums = torch.zeros_like(self.embed_sum).index_add_(0, cv, zv)
        self.cluster_size.mul_(d).add_(counts, alpha=1.0 - d)
        self.embed_sum.mul_(d).add_(sums, alpha=1.0 - d)
        # Only codes used in this batch move: for the others sum/size is unchanged in exact
        # arithmetic, and recomputing it once both have decayed to ~0 (Laplace smoothing does
        # that) would drag unused codes to the origin.
        used = counts > 0
        self.codebook[used] = self.embed_sum[used] / self.cluster_size[used].clamp_min(eps).unsqueeze(1)

    def _revive_dead(self, zv: torch.Tensor, counts: torch.Tensor) -> int:
        self.step += 1
        self.unused_steps += 1
        self.unused_steps[counts > 0] = 0
        if self.config.dead_code_steps == 0 or zv.shape[0] == 0:
            return 0
        dead = self.unused_steps >= self.config.dead_code_steps
        n = int(dead.sum())
        if n == 0:
            return 0
        # Seeded by (seed, step): deterministic, and identical after resuming from a state dict.
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + int(self.step))
        reps = -(-n // zv.shape[0])
        idx = torch.cat([torch.randperm(zv.shape[0], generator=g) for _ in range(reps)])[:n]
        new = zv[idx.to(zv.device)].to(self.codebook.dtype)
        self.codebook.data[dead] = new
        if self.config.update == "ema":
            self.embed_sum[dead] = new
            self.cluster_size[dead] = 1.0
        self.unused_steps[dead] = 0
        return n
