"""Representation-collapse watch for JEPA pretraining.

Two statistics of the (layer-normalised) target features, computed on a subsample of tokens:

- mean per-dimension standard deviation across tokens: 0 when every token maps to the same vector;
- effective rank (RankMe, Garrido et al. 2023): ``exp`` of the entropy of the normalised singular
  values of the centred feature matrix; 1 when all variation lies along one direction, 0 when
  there is none.

After warmup, either statistic under its threshold stops the run with :class:`CollapseError`.
"""
from __future__ import annotations

import torch

from echo.errors import EchoError

__all__ = ["CollapseError", "feature_std", "effective_rank", "collapse_stats", "check_collapse"]


class CollapseError(EchoError):
    """The encoder's representations collapsed (near-constant or near-rank-one features)."""


def _flatten(features: torch.Tensor, max_tokens: int) -> torch.Tensor:
    x = features.detach().reshape(-1, features.size(-1)).float()
    if x.size(0) > max_tokens:  # strided subsample: deterministic and spread over the batch
        x = x[torch.linspace(0, x.size(0) - 1, max_tokens, device=x.device).long()]
    return x


def feature_std(features: torch.Tensor, max_tokens: int = 4096) -> torch.Tensor:
    """Mean over dimensions of the per-dimension std across tokens of ``features`` ``(..., D)``."""
    return _flatten(features, max_tokens).std(dim=0, unbiased=False).mean()


def effective_rank(features: torch.Tensor, max_tokens: int = 4096) -> torch.Tensor:
    """``exp(entropy(s / sum(s)))`` of the singular values ``s`` of the centred features (0 if all zero)."""
    x = _flatten(features, max_tokens)
    scale = x.norm()
    x = x - x.mean(dim=0, keepdim=True)
    # identical rows leave only rounding noise after centring: that is rank 0, not a noise spectrum
    if not bool(x.norm() > 1e-5 * scale + 1e-12):
        return torch.zeros((), device=x.device)
    s = torch.linalg.svdvals(x)
    total = s.sum()
    p = s / total
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum())


def collapse_stats(features: torch.Tensor, max_tokens: int = 4096) -> dict[str, torch.Tensor]:
    """``{"feat_std": ..., "eff_rank": ...}`` as 0-d tensors (so ranks can all-reduce them)."""
    return {"feat_std": feature_std(features, max_tokens), "eff_rank": effective_rank(features, max_tokens)}


def check_collapse(stats: dict[str, float], step: int, min_std: float, min_rank: float) -> None:
    """Raise :class:`CollapseError` if ``stats`` fall below the thresholds.

    Raises:
        CollapseError: one line naming the statistic, its value, the threshold and the step.
    """
    if stats["feat_std"] < min_std:
        raise CollapseError(f"pretrain: representations collapsed at step {step}: mean per-dim std of target "
                            f"features {stats['feat_std']:.3g} < pretrain.collapse_min_std={min_std}")
    if stats["eff_rank"] < min_rank:
        raise CollapseError(f"pretrain: representations collapsed at step {step}: effective rank of target "
                            f"features {stats['eff_rank']:.3g} < pretrain.collapse_min_rank={min_rank}")
