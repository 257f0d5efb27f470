"""JEPA pretraining model (I-JEPA adapted to audio): context encoder + narrow predictor; the EMA
target encoder lives beside it (no gradients), and the loss is smooth-L1 to layer-normalised
target features.

Unlike I-JEPA, which runs the predictor once per target block, all target blocks of a sample are
predicted in one predictor pass (their mask tokens may attend to each other): one pass over the
context instead of ``num_targets``, which matters for throughput and changes nothing for the
encoder.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from echo.config import check_fields, need, rule
from echo.models.vit import Block, Encoder, EncoderConfig, RotaryTable, gather_tokens, init_transformer_weights

__all__ = ["PredictorConfig", "Predictor", "JEPA", "target_features", "jepa_loss", "ema_update",
           "jepa_step_flops"]


@dataclass(frozen=True)
class PredictorConfig:
    """Attributes:
        dim: predictor width (narrower than the encoder).
        depth: transformer blocks.
        heads: attention heads (``dim / heads`` even).
        mlp_dim: MLP hidden width.
    """

    dim: int = field(default=256, metadata=rule(ge=1))
    depth: int = field(default=4, metadata=rule(ge=1))
    heads: int = field(default=4, metadata=rule(ge=1))
    mlp_dim: int = field(default=1024, metadata=rule(ge=1))

    def __post_init__(self) -> None:
        check_fields(self)
        need(self, self.dim % self.heads == 0 and (self.dim // self.heads) % 2 == 0, "heads",
             f"dim/heads to be an even integer (dim={self.dim})", self.heads)


class Predictor(nn.Module):
    """Predicts target-token features from context features and the targets' positions.

    Mask tokens are one learned vector; what distinguishes them is their position, carried by
    RoPE relative to the context tokens' positions.
    """

    def __init__(self, enc_dim: int, cfg: PredictorConfig = PredictorConfig(), rope_base: float = 10_000.0):
        super().__init__()
        self.cfg = cfg
        self.rope_base = rope_base
        self.embed = nn.Linear(enc_dim, cfg.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_dim) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.out = nn.Linear(cfg.dim, enc_dim)
        self.rope = RotaryTable(cfg.dim // cfg.heads, rope_base)
        init_transformer_weights(self, self.blocks)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, context: torch.Tensor, context_pos: torch.Tensor, target_pos: torch.Tensor,
                num_positions: int | None = None) -> torch.Tensor:
        """Args:
            context: ``(B, Nc, enc_dim)`` context-encoder features.
            context_pos: ``(B, Nc)`` their token indices.
            target_pos: ``(B, Nt)`` token indices to predict.
            num_positions: exclusive bound on the indices (the crop's tokens), if known.

        Returns:
            ``(B, Nt, enc_dim)`` predicted target features.
        """
        B, Nt = target_pos.shape
        x = torch.cat([self.embed(context), self.mask_token.expand(B, Nt, -1).to(context.dtype)], dim=1)
        rope = self.rope(torch.cat([context_pos, target_pos], dim=1), x.size(1), num_positions)
        for blk in self.blocks:
            x = blk(x, rope)
        return self.out(self.norm(x[:, -Nt:]))


class JEPA(nn.Module):
    """The trained part of JEPA: context encoder + predictor (what DDP wraps)."""

    def __init__(self, enc_cfg: EncoderConfig = EncoderConfig(), pred_cfg: PredictorConfig = PredictorConfig()):
        super().__init__()
        self.encoder = Encoder(enc_cfg)
        self.predictor = Predictor(enc_cfg.dim, pred_cfg, enc_cfg.rope_base)

    def forward(self, mels: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """Predict target-token features from the context tokens of fixed-length crops.

        Args:
            mels: ``(B, T, n_mels)`` raw log-mel crops.
            context_idx: ``(B, Nc)`` context token indices.
            target_idx: ``(B, Nt)`` target token indices (disjoint from the context).

        Returns:
            ``(B, Nt, dim)`` predictions.
        """
        # gather raw patches, not embeddings: the patch projection then runs on context tokens only
        # and the backward pass has no scatter into the full sequence
        patches = self.encoder.patchify(mels)
        n = patches.size(1)  # indices are < n: the rotary tables need not inspect them (no GPU sync)
        z, _ = self.encoder.encode(self.encoder.patch_embed(gather_tokens(patches, context_idx)),
                                   positions=context_idx, num_positions=n)
        return self.predictor(z, context_idx, target_idx, num_positions=n)


@torch.no_grad()
def target_features(target_encoder: Encoder, mels: torch.Tensor) -> torch.Tensor:
    """Layer-normalised (no affine, float32) target-encoder features of all tokens ``(B, N, dim)``."""
    x, _ = target_encoder.embed(mels)
    h, _ = target_encoder.encode(x)
    return F.layer_norm(h.float(), (h.size(-1),))


def jepa_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 (beta 1) between predictions and layer-normalised target features, in float32."""
    return F.smooth_l1_loss(pred.float(), target.float())


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online``, in place, over all parameters."""
    tp = [p for p in target.parameters()]
    op = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(tp, op, 1.0 - float(momentum))


def _block_flops(dim: int, mlp_dim: int, n: int) -> float:
    """Forward FLOPs of one block on one sequence of ``n`` tokens (matmuls only; 2 per MAC)."""
    return 2.0 * n * (4 * dim * dim + 2 * dim * mlp_dim) + 4.0 * n * n * dim


def jepa_step_flops(enc_cfg: EncoderConfig, pred_cfg: PredictorConfig, batch: int, n_tokens: int,
                    n_context: int, n_target: int) -> float:
    """Matmul FLOPs of one JEPA training step (target forward + context/predictor forward and backward).

    Backward costs twice the forward; norms, softmax and element-wise ops are ignored, as in the
    usual MFU accounting (PaLM appendix B, nanoGPT ``estimate_mfu``).
    """
    D, P = enc_cfg.dim, enc_cfg.patch_dim
    enc = lambda n: 2.0 * n * P * D + enc_cfg.depth * _block_flops(D, enc_cfg.mlp_dim, n)  # noqa: E731
    n_pred = n_context + n_target
    pred = (2.0 * n_context * D * pred_cfg.dim + pred_cfg.depth * _block_flops(pred_cfg.dim, pred_cfg.mlp_dim, n_pred)
            + 2.0 * n_target * pred_cfg.dim * D)
    return batch * (enc(n_tokens) + 3.0 * (enc(n_context) + pred))
