"""ViT audio encoder over log-mel patches (full 80-band x 4 frames = one 40 ms token).

Reading order: rotary positions, attention, MLP, block, config, encoder.

Positions are rotary (RoPE) along time, computed on the fly from token indices, so the encoder
runs on inputs of any length and on any subset of tokens (the JEPA context is a gathered subset
whose original indices are passed as ``positions``). The encoder owns its input normalisation
(``mel_mean``/``mel_std`` buffers, set from the training split's statistics), so inference on raw
log-mel frames is self-contained, and it saves/loads itself with its config and a format version.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from echo.config import check_fields, need, rule
from echo.errors import CacheMismatchError, ConfigError, EchoError
from echo.heads import read_torch, write_torch

__all__ = ["EncoderConfig", "Encoder", "EncoderOutput", "Block", "RotaryTable", "rope_angles", "gather_tokens",
           "ENCODER_FORMAT", "ENCODER_FORMAT_VERSION"]

log = logging.getLogger(__name__)

ENCODER_FORMAT = "echo.encoder"
# Bump when the architecture or the meaning of a saved tensor changes: old files then fail loudly.
ENCODER_FORMAT_VERSION = 1


def rope_angles(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary cos/sin tables for integer token positions.

    Args:
        positions: ``(B, N)`` or ``(N,)`` token indices (need not be contiguous).
        head_dim: per-head width (even).
        base: RoPE frequency base.

    Returns:
        ``(cos, sin)``, each ``(B or 1, 1, N, head_dim // 2)`` float32, ready to broadcast over heads.
    """
    if positions.dim() == 1:
        positions = positions.unsqueeze(0)
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    ang = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # (B, N, hd/2)
    return ang.cos().unsqueeze(1), ang.sin().unsqueeze(1)


class RotaryTable(nn.Module):
    """Cached RoPE cos/sin for positions ``0 .. size-1`` (computed on the fly beyond).

    Why a table: under ``torch.compile`` the on-the-fly ``cos``/``sin`` were fused into every
    q/k rotation and recomputed per head, layer and pass, which cost ~30% of an H200 training
    step; a lookup is a cheap load. The buffer is not persistent (it is derived from the
    config), so checkpoints do not carry it. Values are identical to :func:`rope_angles`.
    """

    def __init__(self, head_dim: int, base: float, size: int = 16_384):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        cos, sin = rope_angles(torch.arange(size), head_dim, base)
        self.register_buffer("cos", cos[0, 0], persistent=False)  # (size, head_dim // 2)
        self.register_buffer("sin", sin[0, 0], persistent=False)

    def forward(self, positions: torch.Tensor | None, n: int,
                num_positions: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` ``(B or 1, 1, N, head_dim // 2)`` for ``positions`` ``(B, N)``, or ``0..n-1`` if None.

        Args:
            positions: token indices, or None for ``0..n-1``.
            n: number of tokens.
            num_positions: known exclusive bound on ``positions`` (e.g. the uncropped length);
                lets the table be used without reading ``positions`` (a host sync on GPUs).
                Without it, explicit positions are checked in eager mode and must lie below
                the table size under ``torch.compile``.
        """
        size = self.cos.size(0)
        if positions is None:
            if n <= size:
                return self.cos[:n][None, None], self.sin[:n][None, None]
            return rope_angles(torch.arange(n, device=self.cos.device), self.head_dim, self.base)
        if num_positions is not None:
            if num_positions > size:
                return rope_angles(positions, self.head_dim, self.base)
        elif not torch.compiler.is_compiling() and int(positions.max()) >= size:
            return rope_angles(positions, self.head_dim, self.base)
        if positions.dim() == 1:
            positions = positions.unsqueeze(0)
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # rotate-half form: pairs (i, i + hd/2) rotate together; equivalent to interleaved RoPE
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, m]]``: pick tokens ``(B, M, D)`` from ``x`` ``(B, N, D)`` by ``index`` ``(B, M)``."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.size(-1)))


class Attention(nn.Module):
    """Multi-head self-attention with RoPE on queries/keys; SDPA picks flash/efficient kernels."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), rope, attn_mask))
        return x + self.mlp(self.norm2(x))


def init_transformer_weights(module: nn.Module, blocks: Sequence[Block]) -> None:
    """Truncated-normal(0.02) linears, unit LayerNorms, and residual projections scaled down by depth
    (as in I-JEPA/GPT-2) so the residual stream's variance does not grow with the number of blocks."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for i, b in enumerate(blocks, start=1):
            b.attn.proj.weight.div_(math.sqrt(2.0 * i))
            b.mlp.fc2.weight.div_(math.sqrt(2.0 * i))


@dataclass(frozen=True)
class EncoderConfig:
    """ViT encoder shape. The defaults are the paper profile (~25.4M parameters).

    Attributes:
        n_mels: mel bins per frame (a token spans all of them).
        patch_frames: frames per token (4 frames at 100 Hz = 40 ms).
        dim: latent width.
        depth: transformer blocks.
        heads: attention heads (``dim / heads`` must be even for RoPE).
        mlp_dim: hidden width of each block's MLP.
        dropout: dropout on attention, MLP and residual branches (0 for JEPA pretraining).
        rope_base: RoPE frequency base.
    """

    n_mels: int = field(default=80, metadata=rule(ge=1))
    patch_frames: int = field(default=4, metadata=rule(ge=1))
    dim: int = field(default=512, metadata=rule(ge=1))
    depth: int = field(default=8, metadata=rule(ge=1))
    heads: int = field(default=8, metadata=rule(ge=1))
    mlp_dim: int = field(default=2048, metadata=rule(ge=1))
    dropout: float = field(default=0.0, metadata=rule(ge=0, lt=1))
    rope_base: float = field(default=10_000.0, metadata=rule(gt=1))

    def __post_init__(self) -> None:
        check_fields(self)
        need(self, self.dim % self.heads == 0 and (self.dim // self.heads) % 2 == 0, "heads",
             f"dim/heads to be an even integer (dim={self.dim})", self.heads)

    @property
    def patch_dim(self) -> int:
        return self.patch_frames * self.n_mels


class EncoderOutput(NamedTuple):
    """``features`` ``(B, N, dim)`` (zero at padded tokens); ``mask`` ``(B, N)`` bool, True = valid
    token; ``layers``: outputs of the requested blocks (before the final norm), in request order."""

    features: torch.Tensor
    mask: torch.Tensor
    layers: tuple[torch.Tensor, ...] = ()


class Encoder(nn.Module):
    """ViT over log-mel patches; input raw log-mel ``(B, T, n_mels)`` at 100 frames/s.

    Token ``i`` covers frames ``[i * patch_frames, (i + 1) * patch_frames)``; a trailing partial
    patch is zero-padded (after normalisation) and counts as a valid token.
    """

    def __init__(self, cfg: EncoderConfig = EncoderConfig()):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mel_mean", torch.zeros(cfg.n_mels))
        self.register_buffer("mel_std", torch.ones(cfg.n_mels))
        self.patch_embed = nn.Linear(cfg.patch_dim, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_dim, cfg.dropout) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.rope = RotaryTable(cfg.dim // cfg.heads, cfg.rope_base)
        init_transformer_weights(self, self.blocks)

    # -- normalisation -------------------------------------------------------------------------
    def set_normalization(self, mean, std) -> None:
        """Set the per-mel-bin input statistics (the training split's ``FeatureCache.stats``)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.numel() != self.cfg.n_mels or std.numel() != self.cfg.n_mels:
            raise ConfigError(f"encoder normalisation: expected {self.cfg.n_mels} means and stds, got {mean.numel()} and {std.numel()}")
        with torch.no_grad():
            self.mel_mean.copy_(mean)
            self.mel_std.copy_(std.clamp_min(1e-5))

    # -- pieces used by JEPA training ----------------------------------------------------------
    def num_tokens(self, num_frames: int | torch.Tensor):
        """Tokens for ``num_frames`` frames (ceil division by ``patch_frames``)."""
        return (num_frames + self.cfg.patch_frames - 1) // self.cfg.patch_frames

    def patchify(self, mels: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise raw log-mel ``(B, T, n_mels)`` and cut it into flat patches ``(B, N, patch_dim)``.

        Frames at or beyond ``lengths`` (and the padding of a partial last patch) are zero after
        normalisation, so a padded item gives exactly the patches of the unpadded one.
        """
        B, T, Fm = mels.shape
        if Fm != self.cfg.n_mels:
            raise ConfigError(f"encoder input: expected {self.cfg.n_mels} mel bins, got {Fm}")
        x = (mels.float() - self.mel_mean) / self.mel_std
        if lengths is not None:
            x = x * (torch.arange(T, device=x.device) < lengths.to(x.device)[:, None]).unsqueeze(-1)
        P = self.cfg.patch_frames
        N = -(-T // P)
        if N * P != T:
            x = F.pad(x, (0, 0, 0, N * P - T))
        return x.reshape(B, N, P * Fm)

    def embed(self, mels: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalise, patchify and project raw log-mel frames.

        Args:
            mels: ``(B, T, n_mels)`` raw log-mel (any float dtype).
            lengths: ``(B,)`` valid frames per item, or None when all are ``T`` long.

        Returns:
            ``(tokens (B, N, dim), token_mask (B, N) bool or None)``.
        """
        x = self.patch_embed(self.patchify(mels, lengths))
        token_mask = None
        if lengths is not None:
            token_mask = torch.arange(x.size(1), device=x.device) < self.num_tokens(lengths.to(x.device))[:, None]
        return x, token_mask

    def encode(self, x: torch.Tensor, positions: torch.Tensor | None = None,
               token_mask: torch.Tensor | None = None,
               return_layers: Sequence[int] | None = None,
               num_positions: int | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Run the blocks on embedded tokens.

        Args:
            x: ``(B, N, dim)`` from :meth:`embed` (possibly a gathered subset of tokens).
            positions: ``(B, N)`` original token indices; defaults to ``0..N-1``.
            token_mask: ``(B, N)`` bool, True = valid (keys at False are ignored by attention).
            return_layers: block indices (negative counts from the end) whose outputs to return.
            num_positions: exclusive bound on ``positions`` if known (skips a check; see
                :class:`RotaryTable`).

        Returns:
            ``(final-normed features (B, N, dim), requested block outputs)``.
        """
        rope = self.rope(positions, x.size(1), num_positions)
        attn_mask = None if token_mask is None else token_mask[:, None, None, :]
        wanted = {}
        if return_layers:
            for i in return_layers:
                j = i + self.cfg.depth if i < 0 else i
                if not 0 <= j < self.cfg.depth:
                    raise ConfigError(f"encoder return_layers: expected indices in [-{self.cfg.depth}, {self.cfg.depth}), got {i}")
                wanted[j] = None
        for j, blk in enumerate(self.blocks):
            x = blk(x, rope, attn_mask)
            if j in wanted:
                wanted[j] = x
        layers = tuple(wanted[i + self.cfg.depth if i < 0 else i] for i in (return_layers or ()))
        return self.norm(x), layers

    def forward(self, mels: torch.Tensor, lengths: torch.Tensor | None = None,
                return_layers: Sequence[int] | None = None) -> EncoderOutput:
        """Encode raw log-mel frames.

        Args:
            mels: ``(B, T, n_mels)`` raw (unnormalised) log-mel at 100 frames/s, or ``(T, n_mels)``.
            lengths: ``(B,)`` valid frames per item for a padded batch (None: all valid).
            return_layers: block indices whose outputs to return as well (e.g. ``(3, -1)``).

        Returns:
            :class:`EncoderOutput` with ``features`` ``(B, ceil(T / patch_frames), dim)``.
        """
        if mels.dim() == 2:
            mels = mels.unsqueeze(0)
        x, token_mask = self.embed(mels, lengths)
        feats, layers = self.encode(x, token_mask=token_mask, return_layers=return_layers)
        if token_mask is None:
            token_mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        else:
            keep = token_mask.unsqueeze(-1).to(feats.dtype)
            feats = feats * keep
            layers = tuple(h * keep.to(h.dtype) for h in layers)
        return EncoderOutput(feats, token_mask, layers)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write config, format version and weights (normalisation included) atomically; the same
        weights give the same bytes (:func:`echo.heads.write_torch`)."""
        write_torch(path, {
            "format": ENCODER_FORMAT,
            "version": ENCODER_FORMAT_VERSION,
            "config": dataclasses.asdict(self.cfg),
            "state_dict": {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()},
        })
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "Encoder":
        """Rebuild an encoder saved by :meth:`save` (in eval mode).

        Raises:
            CacheMismatchError: the file is not an Echo encoder of this format version.
        """
        path = Path(path)
        if not path.is_file():
            raise EchoError(f"{path}: encoder checkpoint not found")
        payload = read_torch(path, "Echo encoder", map_location)
        if not isinstance(payload, dict) or payload.get("format") != ENCODER_FORMAT:
            raise CacheMismatchError(f"{path}: not an Echo encoder checkpoint (expected format {ENCODER_FORMAT!r})")
        if payload.get("version") != ENCODER_FORMAT_VERSION:
            raise CacheMismatchError(f"{path}: encoder format version {payload.get('version')}, this code reads "
                                     f"version {ENCODER_FORMAT_VERSION}; re-run pretraining")
        known = {f.name for f in dataclasses.fields(EncoderConfig)}
        unknown = sorted(set(payload["config"]) - known)
        if unknown:
            raise CacheMismatchError(f"{path}: encoder config has unknown key {unknown[0]!r}; written by another version")
        model = cls(EncoderConfig(**payload["config"]))
        model.load_state_dict(payload["state_dict"])
        return model.eval()
