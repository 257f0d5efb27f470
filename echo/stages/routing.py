"""Stage 3, source routing for an unknown number of speakers: null-target K-set prediction.

From a mixture's latent sequence (the shared encoder on the mixture's log-mel) the router predicts
``k_max`` slot sequences and existence logits. The target of each source is the FROZEN target
encoder's latent of that source in isolation: by default a frozen copy of the incoming stage-2
encoder (so slots live in the shared latent the heads read), or the JEPA EMA target encoder from
pretraining (``target: pretrain``). Slots are matched to sources by the Hungarian algorithm; the
regression loss is on matched slots, the existence loss on all slots (null slots target 0). K is
never given to the model.

Run (after stage 2)::

    from echo.simulate.mixtures import MixtureSet
    from echo.stages.routing import RoutingStageConfig, train_routing_stage
    train_routing_stage(RoutingStageConfig(), "runs/stage2_phonetic/bundle", MixtureSet("data/sim/mixtures/train"),
                        MixtureSet("data/sim/mixtures/dev"), FeatureCache("features/train"), "runs/stage3_routing",
                        dev_cache=FeatureCache("features/dev"), log_metrics=print)

The target latents are a fixed function of the frozen target encoder and the sources, so they
are computed once at the start (float16, in host memory) rather than at every step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import numpy as np
import torch

from echo.config import need, rule
from echo.errors import CacheMismatchError, ConfigError, EchoError
from echo.heads.guard import frozen_copy
from echo.heads.pit import KSetConfig, KSetLoss, KSetResult, pairwise_neg_cosine
from echo.heads.router import RouterConfig, RouterOutput, SourceRouter
from echo.models.bundle import EchoModel
from echo.models.vit import Encoder
from echo.stages.batches import CropSampler, LabelledFrames, MixtureFeatures, dev_batches, mixture_indices
from echo.stages.common import (MetricsLogger, StageConfig, StageGuardConfig, StageTrainer, _sha256_of,
                                load_start, phonetic_dev_metrics, speaker_dev_metrics)
from echo.train.trainer import autocast

__all__ = ["RoutingStageConfig", "RoutingStage", "MixtureBatch", "train_routing_stage"]

log = logging.getLogger(__name__)

MIX_STREAM = 0x6D697833  # "mix3"
CLEAN_STREAM = 0x636C6E33  # "cln3"
TARGETS = ("stage2", "pretrain")
SELECT = {"combined": True, "exist_acc": True, "slot_cosine": True, "count_acc": True}


@dataclass(frozen=True)
class RoutingStageConfig(StageConfig):
    """Stage 3 (``stages.routing``): the fields of :class:`~echo.stages.common.StageConfig` plus:

    ``batch_size`` counts mixtures per step; ``crop_s`` is the length of the clean crops used by
    the guard and the replay terms; ``dev_max_utts`` caps the dev mixtures.

    Attributes:
        router: the :class:`~echo.heads.router.RouterConfig` (its ``d_model`` comes from the
            incoming encoder); ``router.k_max`` slots is the most sources a mixture may have
            (>= the sets' largest K).
        kset: matching/regression settings (:class:`~echo.heads.pit.KSetConfig`).
        target: ``stage2`` (frozen copy of the incoming encoder) or ``pretrain`` (the JEPA EMA
            target encoder; pass ``pretrained_encoder``).
        clean_batch_size: clean crops per step for the guard and replay terms (0 = none, which
            requires guard kind != distill and no replay; otherwise >= 2).
        max_mixtures: use at most this many training mixtures (0 = all).
        exist_threshold: existence probability above which a slot counts as active (0 < t < 1).
        select: dev metric that picks the kept step: ``combined`` (mean of existence accuracy
            and matched-slot cosine), ``exist_acc``, ``slot_cosine`` or ``count_acc``.
    """

    SECTION: ClassVar[str] = "stages.routing"

    batch_size: int = 8
    guard: StageGuardConfig = StageGuardConfig(kind="distill", weight=1.0, replay_speaker=0.1, replay_ctc=0.1)
    router: RouterConfig = RouterConfig()
    kset: KSetConfig = KSetConfig()
    target: Literal[TARGETS] = "stage2"
    clean_batch_size: int = field(default=4, metadata=rule(ge=2, also=(0,)))
    max_mixtures: int = field(default=0, metadata=rule(ge=0))
    exist_threshold: float = field(default=0.5, metadata=rule(gt=0, lt=1))
    select: Literal[*SELECT] = "combined"

    def __post_init__(self) -> None:
        super().__post_init__()
        g = self.guard
        reads_clean = (g.kind == "distill" and g.weight > 0) or g.replay_speaker > 0 or g.replay_ctc > 0
        need(self, self.clean_batch_size > 0 or not reads_clean, "clean_batch_size",
             ">= 2 when guard.kind is distill or a replay weight is > 0", self.clean_batch_size)

    @property
    def needs_clean(self) -> bool:
        g = self.guard
        return self.clean_batch_size > 0 and ((g.kind == "distill" and g.weight > 0) or g.replay_speaker > 0 or g.replay_ctc > 0)


class MixtureBatch(NamedTuple):
    """Mixtures ``mels`` ``(B, T, n_mels)``; ``targets`` ``(B, k_max, N, D)`` reference latents
    (zeros where a source is absent); ``target_mask`` ``(B, k_max)`` True where source r exists;
    ``k`` ``(B,)`` true source counts (for metrics only: the model never sees it)."""

    mels: torch.Tensor
    targets: torch.Tensor
    target_mask: torch.Tensor
    k: torch.Tensor


class RoutingStage(StageTrainer):
    """Stage 3 trainer (see :func:`train_routing_stage`)."""

    name: ClassVar[str] = "routing"

    def __init__(self, cfg: RoutingStageConfig, bundle_dir: str | Path, train_mixtures, dev_mixtures, train_cache,
                 out_dir: str | Path, log_metrics: MetricsLogger | None = None, device: str = "cpu",
                 pretrained_encoder: str | Path | None = None, dev_cache=None, noisy_cache=None) -> None:
        super().__init__(cfg, out_dir, log_metrics, device)
        from echo.simulate.mixtures import MixtureSet

        self.frontend = train_cache.frontend
        self.start = load_start(bundle_dir, self.frontend)
        self.input_sha256 = _sha256_of(bundle_dir)
        s = self.start
        enc = s.encoder
        d, patch = enc.cfg.dim, enc.cfg.patch_frames
        self.train_mix = MixtureFeatures(train_mixtures if not isinstance(train_mixtures, (str, Path)) else MixtureSet(train_mixtures),
                                         self.frontend, cfg.max_mixtures)
        self.dev_mix = MixtureFeatures(dev_mixtures if not isinstance(dev_mixtures, (str, Path)) else MixtureSet(dev_mixtures),
                                       self.frontend, cfg.dev_max_utts)
        shared = sorted(set(self.train_mix.speakers) & set(self.dev_mix.speakers))
        if shared:  # model selection must not see training speakers
            raise EchoError(f"dev mixtures: speaker {shared[0]!r} is also in the train mixtures; expected disjoint splits")
        k_top = int(max(self.train_mix.k.max(), self.dev_mix.k.max()))
        if k_top > cfg.router.k_max:
            raise ConfigError(f"{cfg.SECTION}.router.k_max: expected >= the mixtures' largest K ({k_top}), got {cfg.router.k_max}")

        self.teacher = frozen_copy(enc).to(self.device)
        if cfg.target == "pretrain":
            if pretrained_encoder is None:
                raise ConfigError(f"{cfg.SECTION}.target: 'pretrain' needs the pretrained encoder.pt (pretrained_encoder)")
            target_enc = frozen_copy(Encoder.load(pretrained_encoder)).to(self.device)
            if target_enc.cfg.dim != d:
                raise CacheMismatchError(f"{pretrained_encoder}: latent width {target_enc.cfg.dim}, the stage-2 encoder's is {d}")
            self.input_sha256 += ":" + _sha256_of(pretrained_encoder)
        else:
            target_enc = self.teacher
        self.train_targets = self._target_latents(target_enc, self.train_mix)
        self.dev_targets = self._target_latents(target_enc, self.dev_mix)

        torch.manual_seed(cfg.seed)
        router = SourceRouter(replace(cfg.router, d_model=d))
        self.kset = KSetLoss.from_config(cfg.kset)
        self.models["encoder"] = enc
        for name in ("speaker", "arcface", "ctc", "vq_ctc"):
            if getattr(s, name) is not None:
                self.models[name] = getattr(s, name)
        self.models["router"] = router
        self.trainable_heads = {"router"}
        if cfg.guard.replay_heads_trainable:
            self.trainable_heads |= {n for n in ("speaker", "arcface", "ctc", "vq_ctc") if n in self.models}
        self._check_replay()

        data_fp = {"train_mixtures": self.train_mix.fingerprint(), "dev_mixtures": self.dev_mix.fingerprint()}
        self.clean = None
        if cfg.needs_clean:
            train_data = LabelledFrames.from_cache(train_cache)
            speakers = s.meta.get("train_speakers") or train_data.speaker_names
            noisy = self._noisy(train_data, noisy_cache)
            self.clean = CropSampler(train_data, cfg.crop_frames(train_data.frame_rate, patch), cfg.clean_batch_size,
                                     cfg.seed, CLEAN_STREAM, speakers, min_frames=patch * 2,
                                     noisy=noisy, noisy_prob=cfg.noisy_prob, spec_augment=cfg.spec_augment,
                                     fill=s.encoder.mel_mean.detach().cpu().numpy())
            data_fp.update(self._data_fingerprint_of(train=train_data, noisy=noisy))
        self.dev_clean = None
        if dev_cache is not None:  # monitors of the earlier stages' abilities
            dev_data = LabelledFrames.from_cache(dev_cache)
            self.dev_clean = dev_batches(dev_data, cfg.dev_max_utts, int(round(cfg.dev_max_s * dev_data.frame_rate)),
                                         cfg.batch_size, min_frames=patch * 2)
        self._finish_setup(data_fp)

    # -- data ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _target_latents(self, target_enc: Encoder, feats: MixtureFeatures) -> torch.Tensor:
        out = []
        for a in range(0, feats.source_mels.shape[0], 32):
            mels = feats.source_mels[a:a + 32].to(self.device).float()
            with autocast(self.device, self.amp):
                out.append(target_enc(mels).features.float().to(torch.float16).cpu())
        return torch.cat(out)

    def mixture_batch(self, feats: MixtureFeatures, targets: torch.Tensor, rows: np.ndarray) -> MixtureBatch:
        """Assemble the mixtures ``rows`` with their reference latents padded to ``k_max`` slots."""
        b, k_max = len(rows), self.cfg.router.k_max
        tgt = torch.zeros(b, k_max, targets.shape[1], targets.shape[2])
        tmask = torch.zeros(b, k_max, dtype=torch.bool)
        for i, r in enumerate(rows):
            k, f = int(feats.k[r]), int(feats.first[r])
            tgt[i, :k] = targets[f:f + k].float()
            tmask[i, :k] = True
        return MixtureBatch(feats.mels[rows].float().to(self.device), tgt.to(self.device), tmask.to(self.device),
                            torch.as_tensor(feats.k[rows]).to(self.device))

    def routing_loss(self, batch: MixtureBatch) -> tuple[KSetResult, RouterOutput, torch.Tensor]:
        """The K-set loss of a mixture batch: ``(result, router output, frame mask)``."""
        out = self.encoder(batch.mels)
        if out.features.shape[1] != batch.targets.shape[2]:
            raise EchoError(f"routing: mixture latents have {out.features.shape[1]} tokens, targets {batch.targets.shape[2]}")
        r = self.models["router"](out.features, out.mask)
        res = self.kset(r.slots.float(), r.exist_logits.float(), batch.targets, batch.target_mask, out.mask)
        return res, r, out.mask

    # -- the stage -----------------------------------------------------------------------------
    def compute_loss(self, step: int):
        cfg = self.cfg
        rows = mixture_indices(len(self.train_mix), cfg.batch_size, cfg.seed, step, MIX_STREAM)
        res, r, _ = self.routing_loss(self.mixture_batch(self.train_mix, self.train_targets, rows))
        active = torch.sigmoid(r.exist_logits.detach()) >= cfg.exist_threshold
        parts = {"kset_regression": res.regression.detach(), "kset_existence": res.existence.detach(),
                 "exist_acc": (active == res.exist_targets.bool()).float().mean()}
        loss = res.loss
        if self.clean is not None:
            b = self.clean.batch(step).to(self.device)
            out = self.encoder(b.mels, b.lengths)
            guard = self.guard_loss(out.features, b.mels, b.lengths, out.mask)
            replay, rparts = self.replay_loss(out.features, out.mask, b, step)
            loss = loss + guard + replay
            parts.update(guard=guard.detach(), **rparts)
        elif self.anchor is not None:
            guard = self.anchor.penalty(self.encoder)
            loss = loss + guard
            parts["guard"] = guard.detach()
        return loss, parts

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        cfg = self.cfg
        n = len(self.dev_mix)
        exist_ok, count_ok, cos, cos_mix, reg = [], [], [], [], []
        for a in range(0, n, cfg.batch_size):
            batch = self.mixture_batch(self.dev_mix, self.dev_targets, np.arange(a, min(n, a + cfg.batch_size)))
            with autocast(self.device, self.amp):
                res, r, mask = self.routing_loss(batch)
            active = torch.sigmoid(r.exist_logits.float()) >= cfg.exist_threshold
            exist_ok.append((active == res.exist_targets.bool()).float().flatten())
            count_ok.append((active.sum(1) == batch.k).float())
            pc = pairwise_neg_cosine(r.slots.float(), batch.targets, mask)  # (B, S, R)
            present = res.assignment >= 0
            matched = pc.gather(1, res.assignment.clamp_min(0)[:, None, :]).squeeze(1)
            cos.append((1.0 - matched)[present])
            mix = self.encoder(batch.mels).features.float()[:, None]  # copying the mixture: the baseline
            cos_mix.append((1.0 - pairwise_neg_cosine(mix, batch.targets, mask)[:, 0])[present])
            reg.append(res.regression.reshape(1))
        out = {"exist_acc": float(torch.cat(exist_ok).mean()), "count_acc": float(torch.cat(count_ok).mean()),
               "slot_cosine": float(torch.cat(cos).mean()), "slot_cosine_mixture": float(torch.cat(cos_mix).mean()),
               "kset_regression": float(torch.cat(reg).mean())}
        out["combined"] = 0.5 * (out["exist_acc"] + out["slot_cosine"])
        if self.dev_clean is not None:  # are the earlier stages' abilities kept? (non-interference monitors)
            m = self.models
            if "speaker" in m:
                out.update(speaker_dev_metrics(self.encoder, m["speaker"], self.dev_clean, self.device, self.amp))
            if "ctc" in m or "vq_ctc" in m:
                out.update(phonetic_dev_metrics(self.encoder, m["ctc"] if "ctc" in m else None,
                                                m["vq_ctc"] if "vq_ctc" in m else None, self.dev_clean, self.device, self.amp))
        return out

    def selection(self) -> tuple[str, bool]:
        return self.cfg.select, SELECT[self.cfg.select]

    def bundle(self, dev_metrics: dict[str, float]) -> EchoModel:
        m = self.models
        meta = self.stage_meta(dev_metrics)
        meta["routing_target"] = self.cfg.target
        return EchoModel(self.encoder, self.frontend, "routing", speaker=m["speaker"] if "speaker" in m else None,
                         arcface=m["arcface"] if "arcface" in m else None, ctc=m["ctc"] if "ctc" in m else None,
                         vq_ctc=m["vq_ctc"] if "vq_ctc" in m else None, router=m["router"], meta=meta)


def train_routing_stage(cfg: RoutingStageConfig, bundle_dir: str | Path, train_mixtures, dev_mixtures, train_cache,
                        out_dir: str | Path, log_metrics: MetricsLogger | None = None, device: str = "cpu",
                        pretrained_encoder: str | Path | None = None, dev_cache=None, noisy_cache=None) -> Path:
    """Stage 3: train the K-set router (and the encoder, as ``trainable`` allows); resume if killed.

    Args:
        cfg: stage settings.
        bundle_dir: the stage-2 bundle.
        train_mixtures: :class:`echo.simulate.mixtures.MixtureSet` (or its directory) from TRAIN speakers.
        dev_mixtures: the same from DEV speakers (model selection).
        train_cache: the train split's feature cache (front-end; clean crops for guard and replay).
        out_dir: stage directory (same files as stage 1).
        log_metrics: ``log_metrics(metrics, step)`` callback.
        device: ``"cpu"`` or ``"cuda"``.
        pretrained_encoder: the pretraining ``encoder.pt`` (JEPA EMA target), for ``target: pretrain``.
        dev_cache: the dev split's cache: if given, dev speaker EER and dev PER are logged too.
        noisy_cache: the augmented copy of the train cache, needed when ``cfg.noisy_prob`` > 0 (the
            guard's and replay's crops; the mixtures carry their own noise).

    Returns:
        The bundle directory (encoder + all heads + router) of the selected step.
    """
    return RoutingStage(cfg, bundle_dir, train_mixtures, dev_mixtures, train_cache, out_dir, log_metrics, device,
                        pretrained_encoder, dev_cache, noisy_cache).run()
