"""What the three specialisation stages share: configs, the guard, dev metrics and the training loop.

A stage trainer owns the shared encoder (loaded from the previous stage), its heads, a frozen copy
of the incoming encoder (the guard's teacher), the optimizer and the checkpoints. The loop is the
same for every stage:

1. every ``eval_every`` steps (and at step 0, the incoming model's level) the dev metrics are
   computed; the best one on the stage's selection metric is written as the stage's bundle
   (``out_dir/bundle``);
2. every ``checkpoint_every`` steps the training state is written (``out_dir/checkpoints/last.pt``);
   batches and dropout are functions of ``(seed, step)``, so a killed run resumes on the same
   trajectory;
3. at the end: ``curves.parquet`` (train losses), ``dev.parquet`` (dev metrics per evaluation),
   ``summary.json`` (config, what was trainable, selected step, step time).

Non-interference (the guard): ``trainable`` picks which encoder parameters may change at all;
``guard.kind`` adds a term that keeps the encoder near the previous stage: ``distill`` (latents of
clean utterances close to the frozen previous encoder's), ``l2sp`` (weights close to the stage's
starting weights), ``freeze`` (nothing beyond ``trainable``), ``none``; ``guard.replay_*`` keep the
earlier heads' losses in the objective (ArcFace in stages 2-3, CTC in stage 3).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from echo.config import check_fields, need, rule
from echo.errors import CacheMismatchError, ConfigError, EchoError
from echo.features import FrontEnd
from echo.heads.ctc import ctc_greedy_decode
from echo.heads.guard import ParameterAnchor, frozen_copy, latent_distillation_loss, set_trainable
from echo.heads.vq import codebook_perplexity
from echo.io import write_json
from echo.models.bundle import BUNDLE_FILE, EchoModel
from echo.models.vit import Encoder
from echo.stages.batches import CropBatch, CropSampler, LabelledFrames, SpecAugmentConfig, dev_batches
from echo.train.schedules import WarmupCosine
from echo.train.trainer import (amp_dtype, autocast, check_finite, optimizer_step, param_groups, restore_state,
                                rows_until, save_state, seed_dropout, trajectory, write_rows)

__all__ = ["StageGuardConfig", "StageConfig", "StageTrainer", "MetricsLogger", "load_start",
           "speaker_dev_metrics", "phonetic_dev_metrics", "knn_accuracy_loo", "GUARD_KINDS"]

log = logging.getLogger(__name__)

MetricsLogger = Callable[[dict, int], None]
GUARD_KINDS = ("distill", "l2sp", "freeze", "none")
_TRAINABLE = re.compile(r"^(all|none|top([1-9][0-9]*))$")


@dataclass(frozen=True)
class StageGuardConfig:
    """How a stage protects what earlier stages built.

    Attributes:
        kind: ``distill`` | ``l2sp`` | ``freeze`` | ``none`` (see the module docstring).
        weight: weight of the distillation or L2-SP term (>= 0).
        distance: distillation distance, ``mse`` or ``cosine``.
        replay_speaker: weight of the replayed ArcFace loss of stage 1 (>= 0; stages 2-3).
        replay_ctc: weight of the replayed CTC losses of stage 2 (>= 0; stage 3).
        replay_heads_trainable: let the replayed heads adapt (False: they stay as the earlier
            stage selected them and the encoder must stay compatible with them).
    """

    kind: Literal[GUARD_KINDS] = "distill"
    weight: float = field(default=1.0, metadata=rule(ge=0, finite=True))
    distance: Literal["mse", "cosine"] = "mse"
    replay_speaker: float = field(default=0.0, metadata=rule(ge=0, finite=True))
    replay_ctc: float = field(default=0.0, metadata=rule(ge=0, finite=True))
    replay_heads_trainable: bool = False

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class StageConfig:
    """Settings every stage has (each stage's config adds its heads).

    Attributes:
        steps: optimizer steps (>= 1).
        batch_size: examples per step (>= 2; batch norm in the speaker head needs 2).
        crop_s: seconds per training crop of clean utterances (>= 0.2).
        lr: peak learning rate of the heads (0 < lr < 1).
        encoder_lr: peak learning rate of the trainable encoder parameters (0 < lr < 1).
        warmup_steps: linear warm-up (0 <= warmup <= steps), then cosine decay.
        final_lr_ratio: learning rate at the last step as a fraction of the peak (0..1).
        weight_decay: AdamW weight decay on matrices (>= 0).
        grad_clip: max global gradient norm (0 = off).
        trainable: encoder parameters that may change: ``all``, ``none`` or ``topN`` (the last N
            blocks and the final norm).
        guard: :class:`StageGuardConfig`.
        seed: seeds head initialisation, batches and dropout.
        eval_every: steps between dev evaluations (and model selection).
        checkpoint_every: steps between training checkpoints.
        log_every: steps between logged training losses.
        dev_max_utts: dev utterances used for the dev metrics (>= 2).
        dev_max_s: dev utterances are cut to this many seconds (> 0).
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``bf16`` or ``fp32``.
        noisy_prob: share of training crops cut from the noisy, reverberant copy of the training
            utterances (``simulation.augmentation``) instead of the clean ones, in [0, 1]; the test
            conversations are noisy, and a stage that never heard noise detects speech and
            embeds speakers poorly there.
        spec_augment: :class:`~echo.stages.batches.SpecAugmentConfig`, frequency and time masks on
            the training crops of clean utterances (the speaker and phonetic stages' crops, the
            routing stage's replay crops; default: none).
    """

    SECTION: ClassVar[str] = "stages"

    steps: int = field(default=200, metadata=rule(ge=1))
    batch_size: int = field(default=16, metadata=rule(ge=2))
    crop_s: float = field(default=2.0, metadata=rule(ge=0.2, finite=True))
    lr: float = field(default=2e-3, metadata=rule(gt=0, lt=1))
    encoder_lr: float = field(default=2e-4, metadata=rule(gt=0, lt=1))
    warmup_steps: int = field(default=20, metadata=rule(ge=0))
    final_lr_ratio: float = field(default=0.05, metadata=rule(ge=0, le=1))
    weight_decay: float = field(default=0.01, metadata=rule(ge=0))
    grad_clip: float = field(default=1.0, metadata=rule(ge=0))
    trainable: str = "top2"
    guard: StageGuardConfig = StageGuardConfig()
    seed: int = field(default=0, metadata=rule(ge=0))
    eval_every: int = field(default=50, metadata=rule(ge=1))
    checkpoint_every: int = field(default=50, metadata=rule(ge=1))
    log_every: int = field(default=10, metadata=rule(ge=1))
    dev_max_utts: int = field(default=100, metadata=rule(ge=2))
    dev_max_s: float = field(default=6.0, metadata=rule(gt=0))
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    noisy_prob: float = field(default=0.0, metadata=rule(ge=0, le=1))
    spec_augment: SpecAugmentConfig = SpecAugmentConfig()

    # settings that do not change the trajectory (a resumed run may change them)
    NON_TRAJECTORY: ClassVar[tuple[str, ...]] = ("checkpoint_every", "log_every")

    def __post_init__(self) -> None:
        check_fields(self)
        need(self, self.warmup_steps <= self.steps, "warmup_steps", f"an integer in [0, steps={self.steps}]",
             self.warmup_steps)
        need(self, bool(_TRAINABLE.match(self.trainable)), "trainable", "all | none | topN (N >= 1)", self.trainable)
        need(self, not (self.guard.kind == "freeze" and self.trainable == "all"), "guard.kind",
             "trainable topN or none with guard 'freeze' (it guards nothing with trainable 'all'), or another guard kind",
             self.guard.kind)

    def crop_frames(self, frame_rate: float, patch_frames: int) -> int:
        """Crop length in frames, rounded to whole tokens."""
        n = int(round(self.crop_s * frame_rate))
        return max(patch_frames, n - n % patch_frames)


def load_start(source: str | Path, frontend: FrontEnd | None = None) -> EchoModel:
    """The model a stage starts from: an encoder checkpoint (``encoder.pt`` from pretraining) or a
    bundle directory from the previous stage.

    Raises:
        EchoError: nothing there.
    """
    source = Path(source)
    if source.is_dir():
        model = EchoModel.load(source)
        if frontend is not None and model.frontend != frontend:
            raise CacheMismatchError(f"{source}: bundle made with another front-end than the feature cache's")
        return model
    return EchoModel(Encoder.load(source), frontend or FrontEnd(), "pretrain")


def _sha256_of(source: str | Path) -> str:
    source = Path(source)
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


# -- dev metrics -------------------------------------------------------------------------------
def knn_accuracy_loo(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out 1-NN (cosine) accuracy over items whose label occurs at least twice."""
    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    labels = np.asarray(labels)
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    usable = counts[inv] >= 2
    if not usable.any():
        return float("nan")
    nn_idx = sim.argmax(axis=1)
    return float((labels[nn_idx] == labels)[usable].mean())


@torch.no_grad()
def _dev_latents(encoder: Encoder, batches: list[CropBatch], device: torch.device, amp):
    for b in batches:
        with autocast(device, amp):
            out = encoder(b.mels.to(device), b.lengths.to(device))
        yield b, out.features.float(), out.mask


@torch.no_grad()
def speaker_dev_metrics(encoder: Encoder, head: nn.Module, batches: list[CropBatch], device: torch.device,
                        amp=None) -> dict[str, float]:
    """Dev speaker metrics of the speaker head on the encoder: leave-one-out 1-NN accuracy and the
    EER over all utterance pairs (cosine scoring)."""
    from echo.metrics.verification import equal_error_rate

    embs, spk = [], []
    for b, z, m in _dev_latents(encoder, batches, device, amp):
        embs.append(head(z, m).float().cpu().numpy())
        spk.append(b.speakers.numpy())
    e, s = np.concatenate(embs), np.concatenate(spk)
    out = {"speaker_knn_acc": knn_accuracy_loo(e, s)}
    iu = np.triu_indices(len(s), k=1)
    x = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    scores, same = (x @ x.T)[iu], (s[:, None] == s[None, :])[iu]
    out["speaker_eer"] = float(equal_error_rate(scores, same)[0]) if same.any() and not same.all() else float("nan")
    return out


@torch.no_grad()
def phonetic_dev_metrics(encoder: Encoder, ctc: nn.Module | None, vq_ctc: nn.Module | None,
                         batches: list[CropBatch], device: torch.device, amp=None) -> dict[str, float]:
    """Dev PER of greedy CTC decoding, continuous (``per_ctc``) and through the VQ bottleneck
    (``per_vq``), plus the codebook's dev perplexity and usage."""
    from echo.metrics.asr import phoneme_error_rate

    refs, hyp_c, hyp_v, counts = [], [], [], None
    for b, z, m in _dev_latents(encoder, batches, device, amp):
        refs.extend(t[:n].tolist() for t, n in zip(b.targets, b.target_lengths))
        if ctc is not None:
            out = ctc(z, m)
            hyp_c.extend(h.ids for h in ctc_greedy_decode(out.log_probs, out.lengths))
        if vq_ctc is not None:
            out = vq_ctc(z, m)
            hyp_v.extend(h.ids for h in ctc_greedy_decode(out.log_probs, out.lengths))
            codes = out.vq.codes[m]
            c = torch.bincount(codes, minlength=vq_ctc.vq.config.codebook_size).float().cpu()
            counts = c if counts is None else counts + c
    res: dict[str, float] = {}
    if ctc is not None:
        res["per_ctc"] = float(phoneme_error_rate(refs, hyp_c)["per"])
    if vq_ctc is not None:
        res["per_vq"] = float(phoneme_error_rate(refs, hyp_v)["per"])
        res["vq_perplexity"] = float(codebook_perplexity(counts))
        res["vq_usage"] = float((counts > 0).float().mean())
    return res


# -- the training loop -------------------------------------------------------------------------
class StageTrainer:
    """Base of the stage trainers (see the module docstring for the loop and the files).

    Subclasses build ``self.models`` (an ``nn.ModuleDict`` with ``"encoder"`` and the heads),
    ``self.trainable_heads`` (names of heads the optimizer trains), ``self.teacher`` (frozen
    incoming encoder) and ``self.start`` (the incoming :class:`EchoModel`), then call
    :meth:`_finish_setup`; they implement :meth:`compute_loss`, :meth:`evaluate`,
    :meth:`selection` and :meth:`bundle`.
    """

    name: ClassVar[str] = "stage"

    def __init__(self, cfg: StageConfig, out_dir: str | Path, log_metrics: MetricsLogger | None, device: str | torch.device):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.log_metrics = log_metrics
        self.device = torch.device(device)
        self.amp = amp_dtype(cfg.precision, self.device, f"{cfg.SECTION}.precision")
        self.step = 0
        self.curves: list[dict] = []
        self.dev_curves: list[dict] = []
        self.best: dict | None = None
        self.step_times: list[float] = []
        self.models = nn.ModuleDict()
        self.trainable_heads: set[str] = set()
        self.teacher: Encoder | None = None
        self.anchor: ParameterAnchor | None = None
        self.input_sha256 = ""

    # -- paths ---------------------------------------------------------------------------------
    @property
    def bundle_path(self) -> Path:
        return self.out_dir / "bundle"

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoints" / "last.pt"

    @property
    def encoder(self) -> Encoder:
        return self.models["encoder"]

    # -- setup ---------------------------------------------------------------------------------
    def _load_clean(self, source: str | Path, train_cache, dev_cache, noisy_cache=None) -> None:
        """Set ``train_data``/``dev_data`` (clean labelled frames of the caches, checked compatible),
        ``noisy_data`` (the augmented copy of the train cache when ``noisy_prob`` > 0, else None),
        ``frontend``, ``start`` (the incoming model, from ``source``) and ``input_sha256``."""
        self.train_data = LabelledFrames.from_cache(train_cache)
        self.dev_data = LabelledFrames.from_cache(dev_cache)
        self.train_data.check_compatible(self.dev_data, "dev cache")
        self.noisy_data = self._noisy(self.train_data, noisy_cache)
        self.frontend = train_cache.frontend
        self.start = load_start(source, self.frontend)
        self.input_sha256 = _sha256_of(source)

    def _noisy(self, train_data: LabelledFrames, noisy_cache) -> LabelledFrames | None:
        """The augmented copy of ``train_data`` the crops need (None when ``noisy_prob`` is 0)."""
        if self.cfg.noisy_prob == 0:
            return None
        if noisy_cache is None:
            raise ConfigError(f"{self.cfg.SECTION}.noisy_prob: {self.cfg.noisy_prob} needs the augmented training "
                              "cache (the features_train_noisy node, data/features/train_noisy); set 0 to train on clean crops")
        noisy = LabelledFrames.from_cache(noisy_cache)
        train_data.check_same_utterances(noisy, str(getattr(noisy_cache, "path", "augmented cache")))
        return noisy

    def _data_fingerprint_of(self, **parts: LabelledFrames | None) -> dict:
        return {k: v.fingerprint() for k, v in parts.items() if v is not None}

    def _clean_batches(self, crop_stream: int, speakers: list[str]) -> None:
        """Set ``sampler`` (training crops of ``train_data``, labelled by index in ``speakers``) and
        ``dev_set`` (the dev batches); both at least two tokens long."""
        cfg = self.cfg
        patch = self.start.encoder.cfg.patch_frames
        self.sampler = CropSampler(self.train_data, cfg.crop_frames(self.train_data.frame_rate, patch), cfg.batch_size,
                                   cfg.seed, crop_stream, speakers, min_frames=patch * 2,
                                   noisy=self.noisy_data, noisy_prob=cfg.noisy_prob, spec_augment=cfg.spec_augment,
                                   fill=self.start.encoder.mel_mean.detach().cpu().numpy())
        self.dev_set = dev_batches(self.dev_data, cfg.dev_max_utts, int(round(cfg.dev_max_s * self.dev_data.frame_rate)),
                                   cfg.batch_size, min_frames=patch * 2)

    def _finish_setup(self, data_fingerprint: dict) -> None:
        cfg = self.cfg
        enc = self.encoder
        if self.teacher is None:
            self.teacher = frozen_copy(enc)
        extra = ("norm.*",) if cfg.trainable.startswith("top") else ()
        self.encoder_trainable = set_trainable(enc, cfg.trainable, extra_trainable=extra)
        for name, mod in self.models.items():
            if name != "encoder":
                mod.requires_grad_(name in self.trainable_heads)
        if cfg.guard.kind == "l2sp" and cfg.guard.weight > 0 and self.encoder_trainable:
            self.anchor = ParameterAnchor(enc, cfg.guard.weight)
        self.models.to(self.device)
        self.teacher.to(self.device)
        self._data_fingerprint = data_fingerprint
        heads = [(f"{n}.{k}", p) for n in sorted(self.trainable_heads) for k, p in self.models[n].named_parameters()]
        groups = (param_groups(enc.named_parameters(), cfg.weight_decay, base_lr=cfg.encoder_lr)
                  + param_groups(heads, cfg.weight_decay, base_lr=cfg.lr))
        if not groups:
            raise ConfigError(f"{cfg.SECTION}: nothing to train (trainable={cfg.trainable!r} and no trainable head)")
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        self.schedule = WarmupCosine(0.0, 1.0, cfg.final_lr_ratio, cfg.warmup_steps, cfg.steps)
        if self.checkpoint_path.exists():
            self._resume()

    def fingerprint(self) -> dict:
        return {"stage": self.name, "config": trajectory(self.cfg), "encoder": dataclasses.asdict(self.encoder.cfg),
                "input_sha256": self.input_sha256, "data": self._data_fingerprint,
                "device": self.device.type, "amp": str(self.amp)}

    # -- to implement --------------------------------------------------------------------------
    def compute_loss(self, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss of ``step`` and its named parts (detached scalars)."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def selection(self) -> tuple[str, bool]:
        """``(dev metric key, higher_is_better)`` used to keep the best step."""
        raise NotImplementedError

    def bundle(self, dev_metrics: dict[str, float]) -> EchoModel:
        raise NotImplementedError

    # -- guard and replay ----------------------------------------------------------------------
    def guard_loss(self, student: torch.Tensor, mels: torch.Tensor, lengths: torch.Tensor | None,
                   mask: torch.Tensor | None) -> torch.Tensor:
        """The guard term of the current encoder on a clean batch whose student latents are ``student``.

        ``distill``: :func:`echo.heads.guard.latent_distillation_loss` towards the frozen incoming
        encoder's latents of the same frames; ``l2sp``: the parameter anchor's penalty; else 0.
        """
        g = self.cfg.guard
        if not self.encoder_trainable or g.weight == 0:
            return student.new_zeros(())
        if g.kind == "distill":
            with torch.no_grad():
                teacher = self.teacher(mels, lengths).features
            return latent_distillation_loss(student.float(), teacher.float(), mask, g.distance, g.weight)
        if g.kind == "l2sp" and self.anchor is not None:
            return self.anchor.penalty(self.encoder).to(student.device)
        return student.new_zeros(())

    def replay_loss(self, latents: torch.Tensor, mask: torch.Tensor, batch: CropBatch,
                    step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Earlier heads' losses on a clean batch: ArcFace (``guard.replay_speaker``) and the mean of
        the continuous and VQ CTC losses (``guard.replay_ctc``); 0 where the weight is 0."""
        g = self.cfg.guard
        total, parts = latents.new_zeros(()), {}
        if g.replay_speaker > 0:
            keep = batch.speakers >= 0
            if int(keep.sum()) >= 2:
                emb = self.models["speaker"](latents[keep], mask[keep])
                arc = self.models["arcface"](emb, batch.speakers[keep], step=None)
                total = total + g.replay_speaker * arc.loss
                parts["replay_arcface"] = arc.loss.detach()
        if g.replay_ctc > 0:
            lc = self.models["ctc"].loss(latents, mask, batch.targets, batch.target_lengths).ctc
            lv = self.models["vq_ctc"].loss(latents, mask, batch.targets, batch.target_lengths).total
            total = total + g.replay_ctc * 0.5 * (lc + lv)
            parts["replay_ctc"], parts["replay_vq_ctc"] = lc.detach(), lv.detach()
        return total, parts

    def _check_replay(self) -> None:
        g, p = self.cfg.guard, self.cfg.SECTION
        if g.replay_speaker > 0 and not ("speaker" in self.models and "arcface" in self.models):
            raise ConfigError(f"{p}.guard.replay_speaker: the incoming bundle has no speaker head + ArcFace centres; "
                              f"expected 0 or a stage-1 bundle")
        if g.replay_ctc > 0 and not ("ctc" in self.models and "vq_ctc" in self.models):
            raise ConfigError(f"{p}.guard.replay_ctc: the incoming bundle has no CTC heads; expected 0 or a stage-2 bundle")

    def _set_modes(self) -> None:
        for name, mod in self.models.items():
            mod.train(name == "encoder" or name in self.trainable_heads)
        self.teacher.eval()

    # -- loop ----------------------------------------------------------------------------------
    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimizer step (the ``self.step``-th); returns the loss parts."""
        cfg, step = self.cfg, self.step
        mult = self.schedule.value_at(step + 1)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * mult
        seed_dropout(cfg.seed, step)
        self._set_modes()
        with autocast(self.device, self.amp):
            loss, parts = self.compute_loss(step)
        loss.backward()
        grad_norm = optimizer_step(self.optimizer, (p for g in self.optimizer.param_groups for p in g["params"]),
                                   cfg.grad_clip)
        self.step += 1
        return {"loss": loss.detach(), **parts, "grad_norm": grad_norm,
                "lr": torch.tensor(cfg.lr * mult), "encoder_lr": torch.tensor(cfg.encoder_lr * mult)}

    def run(self) -> Path:
        """Train (or finish training) and return the selected bundle's directory."""
        cfg = self.cfg
        summary = self.out_dir / "summary.json"
        if self.step >= cfg.steps and (self.bundle_path / BUNDLE_FILE).exists() and summary.exists():
            log.info("%s stage already complete: %s", self.name, self.bundle_path)
            return self.bundle_path
        if self.step == 0 and not self.dev_curves:
            self._evaluate()
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            parts = self.train_step()
            loss = float(parts["loss"])
            dt = time.perf_counter() - t0
            self.step_times.append(dt)
            s = self.step
            check_finite(loss, s, cfg.SECTION, f"lower {cfg.SECTION}.lr / encoder_lr", self._write_tables)
            if s % cfg.log_every == 0 or s == 1 or s == cfg.steps:
                rec = {"step": s, **{k: float(v) for k, v in parts.items()}, "step_s": dt}
                self.curves.append(rec)
                if self.log_metrics is not None:
                    self.log_metrics({k: v for k, v in rec.items() if k != "step"}, s)
                log.info("%s stage: step %d/%d loss %.4f (%.2f s/step)", self.name, s, cfg.steps, loss, dt)  # progress
            if s % cfg.eval_every == 0 or s == cfg.steps:
                self._evaluate()
            if s % cfg.checkpoint_every == 0 and s < cfg.steps:
                self.save_checkpoint()
        self.save_checkpoint()
        self._write_summary(summary)
        return self.bundle_path

    def _evaluate(self) -> None:
        for mod in self.models.values():
            mod.eval()
        metrics = self.evaluate()
        self.dev_curves.append({"step": self.step, **metrics})
        if self.log_metrics is not None:
            self.log_metrics({f"dev_{k}": v for k, v in metrics.items()}, self.step)
        key, higher = self.selection()
        v = float(metrics.get(key, float("nan")))
        finite = math.isfinite(v)
        prev = None if self.best is None else self.best.get("value")
        better = finite and (prev is None or (v > prev if higher else v < prev))
        if better or self.best is None:  # the first evaluation always leaves a bundle behind
            self.best = {"step": self.step, "value": v if finite else None, "metrics": metrics}
            self.bundle(metrics).save(self.bundle_path)
            log.info("%s stage: dev %s = %.4f at step %d -> %s", self.name, key, v, self.step, self.bundle_path)

    def stage_meta(self, dev_metrics: dict[str, float]) -> dict:
        """Provenance of this stage for the bundle: previous stages' records plus this one."""
        stages = dict(self.start.meta.get("stages", {}))  # earlier stages' records travel along
        stages[self.name] = {"config": dataclasses.asdict(self.cfg), "selected_step": self.step,
                             "dev": dev_metrics, "trainable": self.cfg.trainable,
                             "trainable_tensors": len(self.encoder_trainable), "input_sha256": self.input_sha256}
        return {"stages": stages, "train_speakers": self.start.meta.get("train_speakers")}

    # -- persistence ---------------------------------------------------------------------------
    def _write_tables(self) -> None:
        write_rows(self.curves, self.out_dir / "curves.parquet")
        write_rows(self.dev_curves, self.out_dir / "dev.parquet")

    def _write_summary(self, path: Path) -> None:
        times = self.step_times[2:] or self.step_times
        key, higher = self.selection()
        write_json(path, {
            "stage": self.name, "config": dataclasses.asdict(self.cfg), "steps": self.step,
            "trainable": self.cfg.trainable, "trainable_encoder_tensors": self.encoder_trainable,
            "selection": {"metric": key, "higher_is_better": higher},
            "best_step": self.best["step"] if self.best else None,
            "best": self.best["metrics"] if self.best else None,
            "final": self.dev_curves[-1] if self.dev_curves else None,
            "step_time_s": float(np.median(times)) if times else None,
            "device": self.device.type, "bundle": str(self.bundle_path),
        })

    def save_checkpoint(self) -> None:
        save_state(self.checkpoint_path, self.fingerprint(), self.step, self.models, self.optimizer,
                   curves=self.curves, dev_curves=self.dev_curves, best=self.best or {}, step_times=self.step_times)
        self._write_tables()

    def _resume(self) -> None:
        state = restore_state(self.checkpoint_path, self.fingerprint(), self.models, self.optimizer, self.device)
        self.step = int(state["step"])
        self.curves = rows_until(state["curves"], self.step)
        self.dev_curves = rows_until(state["dev_curves"], self.step)
        self.best = state["best"] or None
        self.step_times = list(state["step_times"])
        log.info("resumed %s stage from %s at step %d", self.name, self.checkpoint_path, self.step)
