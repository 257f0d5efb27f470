"""The training core every Echo trainer shares: pretraining and the specialisation stages.

A trainer keeps only what is its own (its batches, its losses, what it logs), the way I-JEPA's
``train.py`` keeps the step as named closures; the pieces that must behave the same in every
trainer live here, once:

- :func:`amp_dtype` and :func:`autocast`: the ``precision`` setting (``auto`` | ``bf16`` | ``fp32``);
- :func:`seed_dropout`: dropout masks as a function of ``(seed, step)``, so a resumed run draws
  the masks the uninterrupted run drew;
- :func:`param_groups` and :func:`optimizer_step`: AdamW groups without decay on biases and 1-D
  parameters, gradient clipping, the step;
- :func:`check_finite`: a NaN/inf loss stops the run with one line;
- :func:`module_sha`: the hash that shows a frozen module unchanged by a head-only stage;
- :func:`fit_head`: the whole loop of a head trained on cached inputs with the encoder frozen (the
  segmentation and separation stages), with dev selection of the kept step;
- :func:`trajectory`, :func:`save_state`, :func:`restore_state`, :func:`rows_until` and
  :func:`write_rows`: checkpoints (through :mod:`echo.train.checkpoint`), resume, training curves.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from echo.errors import ConfigError, EchoError
from echo.io import write_parquet
from echo.train.checkpoint import load_train_state, save_train_state

__all__ = ["amp_dtype", "autocast", "seed_dropout", "param_groups", "optimizer_step", "check_finite",
           "module_sha", "HeadFit", "fit_head", "trajectory", "save_state", "restore_state", "rows_until", "write_rows"]

log = logging.getLogger(__name__)

DROPOUT_STREAM = 0x64726F70  # "drop": keeps dropout seeds apart from the other (seed, step) streams


def amp_dtype(precision: str, device: torch.device, where: str) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` setting on ``device`` (None: plain fp32).

    ``auto`` is bf16 on CUDA and fp32 elsewhere; ``bf16`` is honoured on CPU too (torch's CPU
    autocast supports it).

    Raises:
        ConfigError: bf16 asked for on a GPU without bf16 (names ``where``, the params path).
    """
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{where}: bf16 asked for but this GPU does not support it; use fp32")
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``'s type, a no-op when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def seed_dropout(seed: int, step: int, *streams: int) -> None:
    """Seed torch's global RNG from ``(seed, step, *streams)`` before a step's forward pass.

    ``streams`` tell apart processes that must draw different masks (pretraining passes its rank).
    """
    entropy = [int(seed), int(step), *streams, DROPOUT_STREAM]
    torch.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))


def param_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float, **group: Any) -> list[dict]:
    """AdamW groups of the trainable parameters: weight decay on matrices only; biases and 1-D
    parameters (norms, gains) never decay.

    Args:
        named_parameters: ``module.named_parameters()`` (or several chained, in a fixed order).
        weight_decay: decay of the matrices.
        group: other keys every group carries (e.g. a ``base_lr`` the trainer's schedule scales).

    Returns:
        The non-empty groups among ``decay`` then ``no decay``; each has ``decays`` (True for the
        matrices) so a weight-decay schedule knows which groups to update.
    """
    decay, no_decay = [], []
    for name, p in named_parameters:
        if p.requires_grad:
            (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": params, "weight_decay": wd, "decays": decays, **group}
            for params, wd, decays in ((decay, weight_decay, True), (no_decay, 0.0, False)) if params]


def optimizer_step(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter], grad_clip: float) -> torch.Tensor:
    """Clip the global gradient norm of ``params`` to ``grad_clip`` (0: no clipping), step, clear
    the gradients; return the norm before clipping (a device tensor, no host sync)."""
    with_grad = [p for p in params if p.grad is not None]
    # the order of ``params`` is the order of the norm's float sum: callers keep theirs fixed
    grad_norm = torch.nn.utils.clip_grad_norm_(with_grad, grad_clip if grad_clip > 0 else math.inf, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.detach()


def check_finite(loss: float, step: int, where: str, hint: str, flush: Callable[[], None] | None = None) -> None:
    """Stop the run when the loss is NaN/inf.

    Args:
        loss: the step's loss (a host float).
        where: the config section, first word of the message (e.g. ``pretrain``).
        hint: what to change, for the message.
        flush: called before raising (e.g. to write the curves so far).

    Raises:
        EchoError: ``<where>: loss is nan at step <step>; <hint>``.
    """
    if not math.isfinite(loss):
        if flush is not None:
            flush()
        raise EchoError(f"{where}: loss is {loss} at step {step}; {hint}")


def module_sha(module: nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names and bytes): shows a frozen part unchanged."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class HeadFit(NamedTuple):
    """What :func:`fit_head` returns: the kept step, its dev metrics, the logged rows, the median step time."""

    best_step: int
    best: dict | None
    curves: list[dict]
    dev_rows: list[dict]
    step_time_s: float | None


def fit_head(head: nn.Module, optimizer: torch.optim.Optimizer, schedule, steps: int, grad_clip: float,
             loss_of_step: Callable[[int], torch.Tensor | None], evaluate: Callable[[int], dict], *,
             eval_every: int, log_every: int, where: str, metric: str, higher_is_better: bool,
             log_metrics: Callable[[dict, int], None] | None = None) -> HeadFit:
    """Train a head on cached inputs and keep its best dev step (loaded back into ``head``, in eval mode).

    Args:
        head: the trained module (all its parameters are optimised).
        optimizer / schedule: the optimizer and a schedule whose ``step()`` gives each step's lr.
        loss_of_step: ``loss_of_step(step)`` draws the step's batch and returns its loss (None: no
            usable batch, the step is skipped).
        evaluate: ``evaluate(step)`` -> dev metrics (plain floats), every ``eval_every`` steps and at the end.
        where: the params section, for the NaN message and the log lines.
        metric / higher_is_better: the dev metric that picks the kept step (the first best wins ties).
        log_metrics: ``log_metrics(metrics, step)`` (MLflow), or None.
    """
    best: dict = {"step": 0, "value": None, "state": None, "metrics": None}
    curves: list[dict] = []
    dev_rows: list[dict] = []
    times: list[float] = []

    def run_eval(step: int) -> None:
        met = evaluate(step)
        dev_rows.append({"step": step, **met})
        if log_metrics is not None:
            log_metrics({f"dev_{k}": v for k, v in met.items()}, step)
        v = met[metric]
        if best["value"] is None or (v > best["value"] if higher_is_better else v < best["value"]):
            best.update(step=step, value=v, metrics=met, state={k: t.detach().clone() for k, t in head.state_dict().items()})

    for step in range(1, steps + 1):
        t1 = time.perf_counter()
        head.train()
        lr = schedule.step()
        for g in optimizer.param_groups:
            g["lr"] = lr
        loss = loss_of_step(step)
        if loss is not None:
            value = float(loss.detach())
            check_finite(value, step, where, f"lower {where}.lr")
            loss.backward()
            gn = optimizer_step(optimizer, head.parameters(), grad_clip)
            times.append(time.perf_counter() - t1)
            if step % log_every == 0 or step == 1 or step == steps:
                rec = {"step": step, "loss": value, "grad_norm": float(gn), "lr": lr, "step_s": times[-1]}
                curves.append(rec)
                if log_metrics is not None:
                    log_metrics({k: v for k, v in rec.items() if k != "step"}, step)
                log.info("%s: step %d/%d loss %.4f", where, step, steps, value)
        if step % eval_every == 0 or step == steps:
            run_eval(step)
    if best["state"] is not None:
        head.load_state_dict(best["state"])
    head.eval()
    return HeadFit(best["step"], best["metrics"], curves, dev_rows, float(np.median(times)) if times else None)


def trajectory(cfg: Any) -> dict:
    """The settings of ``cfg`` (a config dataclass) that shape the trajectory: all fields but the
    ones its ``NON_TRAJECTORY`` lists (a resumed run may change those)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in type(cfg).NON_TRAJECTORY}


def save_state(path: Path, fingerprint: dict, step: int, modules: Mapping[str, nn.Module],
               optimizer: torch.optim.Optimizer, **extra: Any) -> None:
    """Write a training checkpoint: ``step``, the modules' and the optimizer's state, and ``extra``
    (curves, schedules, ...: plain values only)."""
    state = {"step": step, "modules": {k: m.state_dict() for k, m in modules.items()},
             "optimizer": optimizer.state_dict(), **extra}
    save_train_state(path, state, fingerprint)


def restore_state(path: Path, fingerprint: dict, modules: Mapping[str, nn.Module],
                  optimizer: torch.optim.Optimizer, device: torch.device) -> dict:
    """Load a checkpoint written by :func:`save_state` for the same run into ``modules`` and
    ``optimizer``; return the whole state (``step`` and the trainer's ``extra``).

    Raises:
        CacheMismatchError: see :func:`echo.train.checkpoint.load_train_state`.
    """
    state = load_train_state(path, fingerprint, map_location=device)
    for k, m in modules.items():
        m.load_state_dict(state["modules"][k])
    optimizer.load_state_dict(state["optimizer"])
    return state


def rows_until(rows: list[dict], step: int) -> list[dict]:
    """The logged rows of steps up to ``step`` (a checkpoint's curves, as they were at its step)."""
    return [r for r in rows if r["step"] <= step]


def write_rows(rows: list[dict], path: Path) -> None:
    """Write logged rows (one dict per step) as a Parquet table, atomically; nothing when empty."""
    if rows:
        write_parquet(pd.DataFrame(rows), path)
