"""Non-interference guards for staged specialisation of the shared encoder.

When a later stage (phonetic CTC, routing) trains the encoder that an earlier stage (speaker)
already shaped, three guards limit how much the earlier ability can be overwritten:

- **freezing**: only the top-N transformer blocks (or adapters, or nothing) stay trainable
  (:func:`set_trainable`); works on any module that holds its blocks in an ``nn.ModuleList``
  (``blocks`` by default, or a dotted path such as ``"encoder.blocks"``);
- **latent distillation** towards a frozen copy of the previous stage's encoder
  (:func:`frozen_copy`, :func:`latent_distillation_loss`): MSE or cosine on the latents;
- **L2-SP** (Li, Grandvalet & Davoine, ICML 2018): a penalty ``w/2 · Σ ||θ - θ₀||²`` towards the
  parameters at the start of the stage (:class:`ParameterAnchor`), instead of plain weight decay
  towards 0.

Freezing sets ``requires_grad=False``: frozen parameters get no gradient, so optimizers skip them
(even with weight decay). It does not stop dropout or normalisation statistics; put frozen
models in ``eval()`` for that (the ViT has LayerNorm only, which holds no running statistics).
"""
from __future__ import annotations

import copy
import fnmatch
import logging
import re
from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from echo.config import check_fields, need, rule
from echo.errors import ConfigError, EchoError

__all__ = ["GuardConfig", "set_trainable", "apply_guard", "trainable_parameters", "frozen_copy",
           "latent_distillation_loss", "ParameterAnchor"]

log = logging.getLogger(__name__)

_TRAINABLE = re.compile(r"^(all|none|adapters|top([1-9][0-9]*))$")
DISTILL_KINDS = ("mse", "cosine")


@dataclass(frozen=True)
class GuardConfig:
    """Guards of one specialisation stage.

    Attributes:
        trainable: ``"all"``, ``"none"``, ``"adapters"`` or ``"topN"`` (N >= 1: the last N blocks).
        extra_trainable: name patterns (fnmatch, e.g. ``"norm.*"``) kept trainable in addition,
            e.g. the final norm above the blocks; ignored with ``"none"``.
        frozen: name patterns frozen whatever ``trainable`` says (applied last).
        adapter_patterns: name patterns of adapter parameters (for ``"adapters"``).
        blocks_attr: dotted path of the ``nn.ModuleList`` of blocks (for ``"topN"``).
        distill: ``"mse"`` or ``"cosine"`` latent distillation towards the previous stage.
        distill_weight: weight of the distillation loss (>= 0; 0 = off).
        anchor_weight: L2-SP weight ``w`` (>= 0; 0 = off).
    """

    SECTION: ClassVar[str] = "guard"

    trainable: str = "all"
    extra_trainable: tuple[str, ...] = ()
    frozen: tuple[str, ...] = ()
    adapter_patterns: tuple[str, ...] = ("*adapter*",)
    blocks_attr: str = "blocks"
    distill: Literal[DISTILL_KINDS] = "mse"
    distill_weight: float = field(default=0.0, metadata=rule(ge=0))
    anchor_weight: float = field(default=0.0, metadata=rule(ge=0))

    def __post_init__(self) -> None:
        check_fields(self)
        need(self, bool(_TRAINABLE.match(self.trainable)), "trainable", "all | none | adapters | topN (N >= 1)",
             self.trainable)

def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def set_trainable(model: nn.Module, trainable: str = "all", extra_trainable: Iterable[str] = (),
                  frozen: Iterable[str] = (), adapter_patterns: Iterable[str] = ("*adapter*",),
                  blocks_attr: str = "blocks") -> list[str]:
    """Set ``requires_grad`` on every parameter of ``model``.

    Args:
        model: any module; for ``"topN"`` it must hold an ``nn.ModuleList`` at ``blocks_attr``.
        trainable: ``"all" | "none" | "adapters" | "topN"``.
        extra_trainable: name patterns kept trainable in addition (not with ``"none"``).
        frozen: name patterns frozen in every case (applied last).
        adapter_patterns: name patterns selecting adapters for ``"adapters"``.
        blocks_attr: dotted path of the block list.

    Returns:
        Names of the parameters left trainable, in ``named_parameters`` order.

    Raises:
        ConfigError: unknown mode, N larger than the number of blocks, or no adapter found.
        EchoError: ``blocks_attr`` is not an ``nn.ModuleList`` of ``model``.
    """
    m = _TRAINABLE.match(trainable)
    if not m:
        raise ConfigError(f"guard.trainable: expected all | none | adapters | topN (N >= 1), got {trainable!r}")
    names = [n for n, _ in model.named_parameters()]
    if trainable == "all":
        keep = set(names)
    elif trainable == "none":
        keep = set()
    elif trainable == "adapters":
        keep = {n for n in names if _matches(n, adapter_patterns)}
        if not keep:
            raise ConfigError(f"guard.adapter_patterns: no parameter matches {list(adapter_patterns)}")
    else:
        n_top = int(m.group(2))
        try:
            blocks = model.get_submodule(blocks_attr)
        except AttributeError:
            blocks = None
        if not isinstance(blocks, nn.ModuleList):
            raise EchoError(f"guard: {type(model).__name__} has no nn.ModuleList at '{blocks_attr}' (for trainable={trainable!r})")
        if n_top > len(blocks):
            raise ConfigError(f"guard.trainable: expected N <= {len(blocks)} blocks, got {trainable!r}")
        prefixes = tuple(f"{blocks_attr}.{i}." for i in range(len(blocks) - n_top, len(blocks)))
        keep = {n for n in names if n.startswith(prefixes)}
    if trainable != "none":
        keep |= {n for n in names if _matches(n, extra_trainable)}
    keep -= {n for n in names if _matches(n, frozen)}
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
    kept = [n for n in names if n in keep]
    log.info("guard: %s -> %d of %d parameter tensors trainable", trainable, len(kept), len(names))
    return kept


def apply_guard(model: nn.Module, config: GuardConfig) -> list[str]:
    """:func:`set_trainable` with the fields of a :class:`GuardConfig`."""
    return set_trainable(model, config.trainable, config.extra_trainable, config.frozen,
                         config.adapter_patterns, config.blocks_attr)


def trainable_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The parameters with ``requires_grad`` (what to hand the optimizer)."""
    return (p for p in model.parameters() if p.requires_grad)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with every parameter frozen: the previous stage's teacher."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def latent_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
                             kind: str = "mse", weight: float = 1.0) -> torch.Tensor:
    """Distance of the student's latents to the frozen teacher's, over valid frames.

    Args:
        student: ``(B, T, D)`` latents of the encoder being trained.
        teacher: ``(B, T, D)`` latents of the frozen previous-stage encoder (detached here).
        mask: bool ``(B, T)``, True = valid; None = all.
        kind: ``"mse"`` (mean over frames and dims) or ``"cosine"`` (mean ``1 - cos`` over frames).
        weight: multiplies the loss.

    Returns:
        Scalar loss (0 when student == teacher).
    """
    if student.shape != teacher.shape:
        raise EchoError(f"guard: student latents {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ")
    if kind not in DISTILL_KINDS:
        raise ConfigError(f"guard.distill: expected one of {DISTILL_KINDS}, got {kind!r}")
    teacher = teacher.detach()
    if kind == "mse":
        per_frame = (student - teacher).square().mean(dim=-1)
    else:
        per_frame = 1.0 - F.cosine_similarity(student, teacher, dim=-1)
    if mask is None:
        return weight * per_frame.mean()
    m = mask.to(per_frame.dtype)
    return weight * (per_frame * m).sum() / m.sum().clamp_min(1.0)


class ParameterAnchor:
    """L2-SP anchor: ``weight/2 · Σ ||θ - θ₀||²`` over the anchored parameters.

    Args:
        model: the module whose current parameters become the anchor θ₀ (copied).
        weight: penalty weight.
        names: parameter names to anchor; None = those with ``requires_grad`` now (call after
            :func:`set_trainable`).
    """

    def __init__(self, model: nn.Module, weight: float, names: Iterable[str] | None = None) -> None:
        params = dict(model.named_parameters())
        chosen = [n for n, p in params.items() if p.requires_grad] if names is None else list(names)
        missing = [n for n in chosen if n not in params]
        if missing:
            raise EchoError(f"guard: anchor parameter {missing[0]!r} not in {type(model).__name__}")
        self.weight = weight
        self.reference = {n: params[n].detach().clone() for n in chosen}

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The L2-SP penalty of ``model``'s current parameters (differentiable)."""
        params = dict(model.named_parameters())
        total = None
        for n, ref in self.reference.items():
            p = params[n]
            term = (p - ref.to(device=p.device, dtype=p.dtype)).square().sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.weight * total
