"""JEPA pretraining of the ViT audio encoder, from one CPU to many GPUs with the same code.

Single process (CPU or one GPU)::

    pretrain(PretrainConfig(...), EncoderConfig(), FeatureCache("features/train"), Path("runs/pretrain"),
             log_metrics=mlflow_logger, device="cuda")

Several GPUs (one process per GPU; the same call inside the script)::

    torchrun --standalone --nproc_per_node=8 script_that_calls_pretrain.py

The training step reads as I-JEPA's named steps: target features (EMA encoder, no gradient,
layer-normalised), context encoder + predictor, smooth-L1 loss, optimizer step with schedules,
EMA update. Data, masks and dropout are functions of ``(seed, step)``, and checkpoints carry the
rest of the state, so a killed run resumes on the trajectory it would have followed.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from torch.nn.parallel import DistributedDataParallel

from echo.config import check_fields, need, rule
from echo.errors import ConfigError, EchoError
from echo.models.bundle import ENCODER_FILE
from echo.models.jepa import JEPA, PredictorConfig, ema_update, jepa_loss, target_features
from echo.models.masks import MaskCollator, MaskConfig
from echo.models.vit import EncoderConfig, gather_tokens
from echo.train import distributed
from echo.train.collapse import check_collapse, collapse_stats
from echo.train.loader import Batch, CropLoader, FeatureArrays
from echo.train.schedules import Cosine, Linear, WarmupCosine
from echo.train.trainer import (amp_dtype, autocast, check_finite, optimizer_step, param_groups, restore_state,
                                rows_until, save_state, seed_dropout, trajectory, write_rows)

__all__ = ["PretrainConfig", "JEPATrainer", "pretrain"]

log = logging.getLogger(__name__)

MetricsLogger = Callable[[dict, int], None]


@dataclass(frozen=True)
class PretrainConfig:
    """JEPA pretraining settings (``pretrain`` section of params.yaml).

    Attributes:
        steps: optimizer steps.
        batch_size: crops per process per step (global batch = batch_size x world size).
        crop_frames: frames per crop (100 frames/s; a multiple of the encoder's patch_frames).
        lr: peak learning rate (after warmup).
        start_lr: learning rate at step 0 (linear warmup from it).
        final_lr: learning rate at the last step (cosine decay from the peak).
        warmup_steps: warmup length.
        weight_decay: AdamW weight decay at step 0 (biases and 1-D parameters never decay).
        final_weight_decay: weight decay at the last step (cosine).
        ema_start: EMA momentum of the target encoder at step 0.
        ema_end: EMA momentum at the last step (linear).
        adam_betas: AdamW betas.
        grad_clip: max global gradient norm (0 disables clipping).
        precision: "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32".
        compile: torch.compile the model and target forward passes.
        checkpoint_every: steps between training checkpoints.
        log_every: steps between logged metrics (and collapse checks).
        seed: seeds initialisation, data order, masks and dropout.
        collapse_min_std: fail if the mean per-dim std of target features drops below this.
        collapse_min_rank: fail if their effective rank drops below this.
        collapse_after: first step at which collapse is checked (None: warmup_steps).
        pin_memory: page-locked host batches (CUDA only).
        prefetch: batches built ahead by the loader thread.
        mask: multi-block mask shape.
        predictor: predictor shape.
    """

    steps: int = field(default=100_000, metadata=rule(ge=1))
    batch_size: int = field(default=256, metadata=rule(ge=1))
    crop_frames: int = field(default=400, metadata=rule(ge=1))
    lr: float = field(default=5e-4, metadata=rule(gt=0, lt=1))
    start_lr: float = field(default=1e-5, metadata=rule(ge=0, lt=1))
    final_lr: float = field(default=1e-6, metadata=rule(ge=0, lt=1))
    warmup_steps: int = field(default=5_000, metadata=rule(ge=0))
    weight_decay: float = field(default=0.04, metadata=rule(ge=0))
    final_weight_decay: float = field(default=0.4, metadata=rule(ge=0))
    ema_start: float = field(default=0.996, metadata=rule(ge=0, le=1))
    ema_end: float = field(default=1.0, metadata=rule(ge=0, le=1))
    adam_betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=rule(ge=0, lt=1))
    grad_clip: float = field(default=1.0, metadata=rule(ge=0))
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = False
    checkpoint_every: int = field(default=1_000, metadata=rule(ge=1))
    log_every: int = field(default=50, metadata=rule(ge=1))
    seed: int = 0
    collapse_min_std: float = field(default=0.01, metadata=rule(ge=0))
    collapse_min_rank: float = field(default=4.0, metadata=rule(ge=0))
    collapse_after: int | None = field(default=None, metadata=rule(ge=0))
    pin_memory: bool = True
    prefetch: int = field(default=4, metadata=rule(ge=1))
    mask: MaskConfig = MaskConfig()
    predictor: PredictorConfig = PredictorConfig()

    # settings that do not change the trajectory (a resume may change them)
    NON_TRAJECTORY = ("compile", "checkpoint_every", "log_every", "pin_memory", "prefetch",
                      "collapse_min_std", "collapse_min_rank", "collapse_after")

    def __post_init__(self) -> None:
        check_fields(self)
        need(self, self.warmup_steps <= self.steps, "warmup_steps", f"an integer in [0, steps={self.steps}]",
             self.warmup_steps)
        need(self, self.ema_start <= self.ema_end, "ema_start", f"<= ema_end ({self.ema_end})", self.ema_start)


class JEPATrainer:
    """Owns the models, optimizer, schedules, loader and checkpoints of one pretraining run.

    :func:`pretrain` is the entry point; the class is public so benchmarks and tests can drive
    single steps (:meth:`train_step`) with the exact production code.

    Args:
        cfg: pretraining settings.
        enc_cfg: encoder shape.
        train_data: a :class:`echo.features.FeatureCache` (or :class:`FeatureArrays`) of the train split.
        out_dir: run directory (checkpoints, curves, final encoder).
        log_metrics: ``log_metrics(metrics, step)``, called on rank 0 every ``log_every`` steps.
        device: ``"cpu"`` or ``"cuda"``.
        resume: continue from ``out_dir/checkpoints/last.pt`` if it exists.
    """

    def __init__(self, cfg: PretrainConfig, enc_cfg: EncoderConfig, train_data, out_dir: str | Path,
                 log_metrics: MetricsLogger | None = None, device: str = "cpu", resume: bool = True):
        if cfg.crop_frames % enc_cfg.patch_frames:
            raise ConfigError(f"pretrain.crop_frames: expected a multiple of encoder.patch_frames={enc_cfg.patch_frames}, "
                              f"got {cfg.crop_frames}")
        self.cfg, self.enc_cfg = cfg, enc_cfg
        self.out_dir = Path(out_dir)
        self.log_metrics = log_metrics
        self.ctx = distributed.setup(device)
        dev = self.ctx.device
        self.data = FeatureArrays.coerce(train_data)
        if self.data.frames.shape[1] != enc_cfg.n_mels:
            raise ConfigError(f"encoder.n_mels: expected {self.data.frames.shape[1]} (the features' mel bins), got {enc_cfg.n_mels}")
        self.amp_dtype = amp_dtype(cfg.precision, dev, "pretrain.precision")
        self.num_tokens = cfg.crop_frames // enc_cfg.patch_frames

        torch.manual_seed(cfg.seed)  # identical initialisation on every rank
        self.model = JEPA(enc_cfg, cfg.predictor)
        self.model.encoder.set_normalization(self.data.mean, self.data.std)
        self.target = copy.deepcopy(self.model.encoder).requires_grad_(False).eval()
        self.model.to(dev).train()
        self.target.to(dev)

        self.optimizer = torch.optim.AdamW(param_groups(self.model.named_parameters(), cfg.weight_decay), lr=cfg.lr,
                                           betas=tuple(cfg.adam_betas), fused=True)
        self.lr_schedule = WarmupCosine(cfg.start_lr, cfg.lr, cfg.final_lr, cfg.warmup_steps, cfg.steps)
        self.wd_schedule = Cosine(cfg.weight_decay, cfg.final_weight_decay, cfg.steps)
        self.ema_schedule = Linear(cfg.ema_start, cfg.ema_end, cfg.steps)

        self.masks = MaskCollator(cfg.mask, self.num_tokens, cfg.seed)
        self.loader = CropLoader(self.data, cfg.crop_frames, cfg.batch_size, self.masks, cfg.seed,
                                 self.ctx.rank, self.ctx.world_size, cfg.pin_memory and dev.type == "cuda",
                                 cfg.prefetch)

        net: torch.nn.Module = self.model
        if self.ctx.distributed:
            # buffers (input normalisation) are equal on all ranks and never change: no broadcast
            net = DistributedDataParallel(self.model, device_ids=[dev] if dev.type == "cuda" else None,
                                          broadcast_buffers=False, gradient_as_bucket_view=True)
        self._forward_context = net
        self._forward_target = lambda mels: target_features(self.target, mels)
        if cfg.compile:
            self._forward_context = torch.compile(net)
            self._forward_target = torch.compile(self._forward_target)

        self.step = 0  # completed optimizer steps
        self.curves: list[dict] = []
        if resume and self.checkpoint_path.exists():
            self._resume()

    # -- paths ---------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoints" / "last.pt"

    @property
    def encoder_path(self) -> Path:
        return self.out_dir / ENCODER_FILE

    @property
    def curves_path(self) -> Path:
        return self.out_dir / "curves.parquet"

    def fingerprint(self) -> dict:
        return {"pretrain": trajectory(self.cfg), "encoder": dataclasses.asdict(self.enc_cfg),
                "world_size": self.ctx.world_size, "data": self.data.fingerprint(), "amp": str(self.amp_dtype),
                "device": self.ctx.device.type}

    # -- one iteration -------------------------------------------------------------------------
    def train_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer step on ``batch`` (must be the batch of step ``self.step``).

        Returns:
            ``(loss, grad_norm, target_features)`` as device tensors (no host sync).
        """
        if batch.step != self.step:
            raise EchoError(f"pretrain: got the batch of step {batch.step} at step {self.step}")
        lr, wd, momentum = self.lr_schedule.step(), self.wd_schedule.step(), self.ema_schedule.step()
        for g in self.optimizer.param_groups:
            g["lr"] = lr
            if g["decays"]:
                g["weight_decay"] = wd
        if self.enc_cfg.dropout > 0:  # each rank draws its own masks
            seed_dropout(self.cfg.seed, self.step, self.ctx.rank)
        dev = self.ctx.device
        mels = batch.mels.to(dev, non_blocking=True)
        ctx_idx = batch.masks.context.to(dev, non_blocking=True)
        tgt_idx = batch.masks.target.to(dev, non_blocking=True)

        with autocast(dev, self.amp_dtype):
            h = self._forward_target(mels)                       # targets: EMA encoder, layer-normed
            z = self._forward_context(mels, ctx_idx, tgt_idx)    # context encoder + predictor
            loss = jepa_loss(z, gather_tokens(h, tgt_idx))
        loss.backward()
        grad_norm = optimizer_step(self.optimizer, self.model.parameters(), self.cfg.grad_clip)
        ema_update(self.target, self.model.encoder, momentum)
        self.step += 1
        self._last = {"lr": lr, "weight_decay": wd, "momentum": momentum}
        return loss.detach(), grad_norm, h

    # -- the run -------------------------------------------------------------------------------
    def train(self) -> Path:
        """Run (or finish) the configured steps; return the final encoder checkpoint's path.

        Raises:
            CollapseError: representations collapsed after warmup.
            EchoError: the loss became NaN/inf.
        """
        cfg = self.cfg
        if self.step >= cfg.steps and self.encoder_path.exists():
            log.info("pretraining already complete at step %d: %s", self.step, self.encoder_path)
            return self.encoder_path
        tokens_per_step = cfg.batch_size * self.ctx.world_size * self.num_tokens
        t_last, step_last = time.perf_counter(), self.step
        with contextlib.closing(self.loader.iterate(self.step, cfg.steps)) as batches:
            for batch in batches:
                loss, grad_norm, h = self.train_step(batch)
                s = self.step
                if s % cfg.log_every == 0 or s == cfg.steps or s == 1:
                    now = time.perf_counter()
                    rate = tokens_per_step * (s - step_last) / max(now - t_last, 1e-9)
                    t_last, step_last = now, s
                    self._log(s, loss, grad_norm, h, rate)
                if s % cfg.checkpoint_every == 0 and s < cfg.steps:
                    self.save_checkpoint()
        self.save_checkpoint()
        if self.ctx.is_main:
            self.target.save(self.encoder_path)
        distributed.barrier(self.ctx)
        return self.encoder_path

    def _log(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, h: torch.Tensor, tokens_per_s: float) -> None:
        stats = collapse_stats(h)
        packed = torch.stack([loss.float(), grad_norm.float(), stats["feat_std"], stats["eff_rank"]])
        loss_v, gn, std, rank = distributed.all_reduce_mean(packed, self.ctx).tolist()
        rec = {"step": step, "loss": loss_v, "grad_norm": gn, **self._last, "feat_std": std, "eff_rank": rank,
               "tokens_per_s": tokens_per_s, "audio_s_per_s": tokens_per_s * self.enc_cfg.patch_frames / 100.0}
        self.curves.append(rec)
        if self.ctx.is_main and self.log_metrics is not None:
            self.log_metrics({k: v for k, v in rec.items() if k != "step"}, step)
        if self.ctx.is_main:  # progress: one log line per logged step (the caller's log_metrics sees the same)
            log.info("step %d/%d loss %.4f feat_std %.3f eff_rank %.1f lr %.2e %.0f tokens/s", step, self.cfg.steps,
                     loss_v, std, rank, rec.get("lr", float("nan")), tokens_per_s)
        check_finite(loss_v, step, "pretrain", "lower pretrain.lr or check the features", self._write_curves)
        after = self.cfg.warmup_steps if self.cfg.collapse_after is None else self.cfg.collapse_after
        if step >= after:
            try:
                check_collapse(rec, step, self.cfg.collapse_min_std, self.cfg.collapse_min_rank)
            except EchoError:
                self._write_curves()
                raise

    # -- persistence ---------------------------------------------------------------------------
    @property
    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model, "target": self.target}

    def _write_curves(self) -> None:
        if self.ctx.is_main:
            write_rows(self.curves, self.curves_path)

    def save_checkpoint(self) -> None:
        """Write the training state (rank 0) and the curves so far; all ranks wait for it."""
        if self.ctx.is_main:
            save_state(self.checkpoint_path, self.fingerprint(), self.step, self._modules, self.optimizer,
                       schedules={"lr": self.lr_schedule.state_dict(), "wd": self.wd_schedule.state_dict(),
                                  "ema": self.ema_schedule.state_dict()},
                       curves=self.curves)
            self._write_curves()
        distributed.barrier(self.ctx)

    def _resume(self) -> None:
        state = restore_state(self.checkpoint_path, self.fingerprint(), self._modules, self.optimizer, self.ctx.device)
        self.step = int(state["step"])
        for sched in (self.lr_schedule, self.wd_schedule, self.ema_schedule):
            sched.fast_forward(self.step)
        self.curves = rows_until(state["curves"], self.step)
        log.info("resumed pretraining from %s at step %d", self.checkpoint_path, self.step)


def pretrain(cfg: PretrainConfig, enc_cfg: EncoderConfig, train_cache, out_dir: str | Path,
             log_metrics: MetricsLogger | None = None, device: str = "cpu") -> Path:
    """JEPA-pretrain the encoder; resume from ``out_dir``'s last checkpoint if there is one.

    Writes ``out_dir/encoder.pt`` (the EMA target encoder, input normalisation included; load it
    with :meth:`echo.models.vit.Encoder.load`), ``out_dir/curves.parquet`` (one row per logged
    step: loss, grad_norm, lr, weight_decay, momentum, feat_std, eff_rank, tokens_per_s,
    audio_s_per_s) and ``out_dir/checkpoints/last.pt``.

    Args:
        cfg: pretraining settings.
        enc_cfg: encoder shape.
        train_cache: the train split's :class:`echo.features.FeatureCache` (or :class:`FeatureArrays`).
        out_dir: run directory.
        log_metrics: ``log_metrics(metrics: dict, step: int)`` callback (rank 0 only).
        device: ``"cpu"`` or ``"cuda"``; under torchrun each rank uses ``cuda:LOCAL_RANK``.

    Returns:
        Path of the final encoder checkpoint.
    """
    trainer = JEPATrainer(cfg, enc_cfg, train_cache, out_dir, log_metrics, device)
    try:
        return trainer.train()
    finally:
        distributed.teardown(trainer.ctx)
