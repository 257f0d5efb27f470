"""Permutation-invariant matching of predicted slots to reference sources, and the K-set loss.

:func:`pit_assign` solves the slot-to-reference assignment exactly with the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``), for any number of slots S >= references R, with a
per-example mask of which references exist (mixtures in a batch have different K).

:class:`KSetLoss` wraps any pairwise loss in the style of asteroid's ``PITLossWrapper``
(``pit_from="pw_mtx"``): the pairwise function builds a ``(B, S, R)`` cost matrix, the matching
runs on its detached values, and the regression loss is the mean cost of the matched pairs
(gathered from the differentiable matrix). Slots left unmatched are the null slots: the existence
loss (BCE on every slot) targets 1 for matched slots and 0 for the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from echo.config import check_fields, rule
from echo.errors import EchoError

__all__ = ["pit_assign", "pairwise_mse", "pairwise_neg_cosine", "pairwise_smooth_l1", "PAIRWISE_LOSSES",
           "KSetConfig", "KSetResult", "KSetLoss", "kset_loss", "exist_targets"]

PairwiseLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def pit_assign(cost: torch.Tensor | np.ndarray, ref_mask: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Minimum-cost assignment of references to distinct slots, per batch element.

    Args:
        cost: ``(B, S, R)`` cost of giving reference r to slot s (lower is better).
        ref_mask: bool ``(B, R)``, True where reference r exists; None = all exist.

    Returns:
        int64 ``(B, R)``: the slot matched to each reference, -1 for absent references.

    Raises:
        EchoError: a batch element has more existing references than slots.
    """
    c = cost.detach().float().cpu().numpy() if isinstance(cost, torch.Tensor) else np.asarray(cost, dtype=np.float64)
    if c.ndim != 3:
        raise EchoError(f"pit_assign: expected a cost of shape (B, S, R), got {c.shape}")
    b, s, r = c.shape
    if ref_mask is None:
        m = np.ones((b, r), dtype=bool)
    else:
        m = ref_mask.cpu().numpy() if isinstance(ref_mask, torch.Tensor) else np.asarray(ref_mask)
        m = m.astype(bool)
    out = np.full((b, r), -1, dtype=np.int64)
    for i in range(b):
        refs = np.flatnonzero(m[i])
        if refs.size == 0:
            continue
        if refs.size > s:
            raise EchoError(f"pit_assign: example {i} has {refs.size} references but only {s} slots; expected S >= R")
        rows, cols = linear_sum_assignment(c[i][:, refs])
        out[i, refs[cols]] = rows
    device = cost.device if isinstance(cost, torch.Tensor) else None
    return torch.from_numpy(out).to(device)


def _frame_weights(frame_mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    b, t = like.shape[0], like.shape[2]
    if frame_mask is None:
        return like.new_full((b, t), 1.0 / t)
    w = frame_mask.to(like.dtype)
    return w / w.sum(dim=1, keepdim=True).clamp_min(1.0)


def pairwise_mse(slots: torch.Tensor, targets: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, S, T, D), (B, R, T, D) -> (B, S, R)`` mean squared error over valid frames and dims.

    Uses ``|a|² + |b|² - 2 a·b`` so no ``(B, S, R, T, D)`` tensor is built.
    """
    w = _frame_weights(frame_mask, slots)  # (B, T), sums to 1 over valid frames
    a2 = torch.einsum("bstd,bt->bs", slots.square(), w)
    b2 = torch.einsum("brtd,bt->br", targets.square(), w)
    ab = torch.einsum("bstd,brtd,bt->bsr", slots, targets, w)
    return ((a2[:, :, None] + b2[:, None, :] - 2.0 * ab) / slots.shape[-1]).clamp_min(0.0)


def pairwise_neg_cosine(slots: torch.Tensor, targets: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - cos`` per frame, averaged over valid frames: ``(B, S, R)`` in [0, 2]."""
    w = _frame_weights(frame_mask, slots)
    cos = torch.einsum("bstd,brtd->bsrt", F.normalize(slots, dim=-1), F.normalize(targets, dim=-1))
    return 1.0 - torch.einsum("bsrt,bt->bsr", cos, w)


def pairwise_smooth_l1(slots: torch.Tensor, targets: torch.Tensor, frame_mask: torch.Tensor | None = None,
                       beta: float = 1.0) -> torch.Tensor:
    """Smooth-L1 (Huber) over valid frames and dims, ``(B, S, R)``; builds a ``(B, S, R, T, D)`` tensor."""
    w = _frame_weights(frame_mask, slots)
    a_, t_ = torch.broadcast_tensors(slots[:, :, None], targets[:, None])  # (B, S, R, T, D)
    per = F.smooth_l1_loss(a_, t_, reduction="none", beta=beta).mean(dim=-1)
    return torch.einsum("bsrt,bt->bsr", per, w)


PAIRWISE_LOSSES: dict[str, PairwiseLoss] = {
    "mse": pairwise_mse, "neg_cosine": pairwise_neg_cosine, "smooth_l1": pairwise_smooth_l1,
}


@dataclass(frozen=True)
class KSetConfig:
    """K-set loss.

    Attributes:
        regression: pairwise loss on matched slots, one of ``mse``, ``neg_cosine``, ``smooth_l1``.
        exist_weight: weight of the existence BCE (>= 0).
        exist_match_weight: add ``w * -log σ(exist_logit)`` to the matching cost (DETR-style; >= 0;
            0 = match on the regression cost alone).
    """

    regression: Literal[*PAIRWISE_LOSSES] = "mse"
    exist_weight: float = field(default=1.0, metadata=rule(ge=0))
    exist_match_weight: float = field(default=0.0, metadata=rule(ge=0))

    def __post_init__(self) -> None:
        check_fields(self)


class KSetResult(NamedTuple):
    loss: torch.Tensor  # regression + exist_weight * existence
    regression: torch.Tensor  # mean matched pairwise cost
    existence: torch.Tensor  # mean BCE over all slots
    assignment: torch.Tensor  # (B, R) slot of each reference, -1 where absent
    exist_targets: torch.Tensor  # (B, S) 1 for matched slots, 0 for null slots
    cost: torch.Tensor  # (B, S, R) detached pairwise cost


def exist_targets(assignment: torch.Tensor, num_slots: int) -> torch.Tensor:
    """``(B, R)`` assignment -> float ``(B, S)``: 1 for matched slots, 0 for null slots."""
    out = torch.zeros(assignment.shape[0], num_slots + 1, device=assignment.device)
    # Absent references (-1) land in the extra last column, which is dropped.
    out.scatter_(1, torch.where(assignment >= 0, assignment, num_slots), 1.0)
    return out[:, :num_slots]


class KSetLoss(nn.Module):
    """PIT wrapper around a pairwise loss, plus the existence BCE of null-target K-set prediction.

    Args:
        pairwise: a callable ``(slots, targets, frame_mask) -> (B, S, R)`` or a name in
            :data:`PAIRWISE_LOSSES`.
        exist_weight: weight of the existence loss.
        exist_match_weight: see :class:`KSetConfig`.
    """

    def __init__(self, pairwise: PairwiseLoss | str = "mse", exist_weight: float = 1.0,
                 exist_match_weight: float = 0.0) -> None:
        super().__init__()
        self.pairwise = PAIRWISE_LOSSES[pairwise] if isinstance(pairwise, str) else pairwise
        self.exist_weight, self.exist_match_weight = exist_weight, exist_match_weight

    @classmethod
    def from_config(cls, config: KSetConfig) -> "KSetLoss":
        return cls(config.regression, config.exist_weight, config.exist_match_weight)

    def forward(self, slots: torch.Tensor, exist_logits: torch.Tensor, targets: torch.Tensor,
                target_mask: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None) -> KSetResult:
        """Match, then score.

        Args:
            slots: ``(B, S, T, D)`` predicted slot sequences.
            exist_logits: ``(B, S)``.
            targets: ``(B, R, T, D)`` reference latents (zero-padded where a reference is absent).
            target_mask: bool ``(B, R)``, True where reference r exists; None = all.
            frame_mask: bool ``(B, T)``, True = valid frame; None = all.

        Returns:
            :class:`KSetResult`.
        """
        b, s = exist_logits.shape
        if slots.shape[:2] != (b, s) or targets.shape[0] != b or targets.shape[2:] != slots.shape[2:]:
            raise EchoError(f"kset_loss: shapes do not agree: slots {tuple(slots.shape)}, "
                            f"exist {tuple(exist_logits.shape)}, targets {tuple(targets.shape)}")
        r = targets.shape[1]
        if target_mask is None:
            target_mask = torch.ones(b, r, dtype=torch.bool, device=slots.device)
        cost = self.pairwise(slots, targets, frame_mask)  # (B, S, R)
        match = cost.detach()
        if self.exist_match_weight > 0:
            match = match - self.exist_match_weight * F.logsigmoid(exist_logits.detach())[:, :, None]
        assignment = pit_assign(match, target_mask).to(slots.device)
        present = assignment >= 0
        matched = cost.gather(1, assignment.clamp_min(0)[:, None, :]).squeeze(1)  # (B, R)
        n = present.sum()
        regression = (matched * present).sum() / n.clamp_min(1)
        ex_t = exist_targets(assignment, s).to(exist_logits.dtype)
        existence = F.binary_cross_entropy_with_logits(exist_logits, ex_t)
        return KSetResult(regression + self.exist_weight * existence, regression, existence,
                          assignment, ex_t, cost.detach())


def kset_loss(slots: torch.Tensor, exist_logits: torch.Tensor, targets: torch.Tensor,
              target_mask: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None,
              config: KSetConfig = KSetConfig()) -> KSetResult:
    """Functional form of :class:`KSetLoss` (see its ``forward`` for the arguments)."""
    return KSetLoss.from_config(config)(slots, exist_logits, targets, target_mask, frame_mask)
