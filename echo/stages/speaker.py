"""Stage 1, speaker identity: attentive-statistics speaker head + ArcFace on the training speakers.

Run (the lead's workflow calls this after pretraining)::

    from echo.features import FeatureCache
    from echo.stages.speaker import SpeakerStageConfig, train_speaker_stage
    train_speaker_stage(SpeakerStageConfig(), "runs/pretrain/encoder.pt", FeatureCache("features/train"),
                        FeatureCache("features/dev"), "runs/stage1_speaker", log_metrics=print, device="cpu")

Labels are the TRAIN speakers' indices; dev speakers (disjoint) only select the checkpoint, by
the EER (or leave-one-out 1-NN accuracy) of their embeddings; test speakers are never read.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch

from echo.config import need, rule
from echo.errors import ConfigError
from echo.heads.arcface import ArcFaceConfig, ArcFaceLoss
from echo.heads.pooling import VARIANTS
from echo.heads.speaker import SpeakerConfig, SpeakerHead
from echo.models.bundle import EchoModel
from echo.stages.common import MetricsLogger, StageConfig, StageGuardConfig, StageTrainer, speaker_dev_metrics

__all__ = ["SpeakerStageConfig", "SpeakerStage", "train_speaker_stage"]

log = logging.getLogger(__name__)

CROP_STREAM = 0x73706B31  # "spk1"


@dataclass(frozen=True)
class SpeakerStageConfig(StageConfig):
    """Stage 1 (``stages.speaker``): the fields of :class:`~echo.stages.common.StageConfig` plus:

    Attributes:
        emb_dim: speaker embedding width (>= 1).
        pooling: ``okabe`` or ``ecapa`` attentive statistics pooling.
        attention_dim: hidden width of the pooling scorer (>= 1).
        arcface: ArcFace scale, margin and margin warm-up.
        select: dev metric that picks the kept step: ``eer`` (lower is better) or ``knn`` (1-NN accuracy).
    """

    SECTION: ClassVar[str] = "stages.speaker"

    guard: StageGuardConfig = StageGuardConfig(kind="distill", weight=0.5)
    emb_dim: int = field(default=192, metadata=rule(ge=1))
    pooling: Literal[VARIANTS] = "okabe"
    attention_dim: int = field(default=128, metadata=rule(ge=1))
    arcface: ArcFaceConfig = ArcFaceConfig(scale=30.0, margin=0.2, margin_warmup_steps=50)
    select: Literal["eer", "knn"] = "eer"

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("replay_speaker", "replay_ctc"):  # stage 1 has no earlier head to replay
            need(self, not getattr(self.guard, key), f"guard.{key}", "0 (stage 1 has no earlier head to replay)",
                 getattr(self.guard, key))


class SpeakerStage(StageTrainer):
    """Stage 1 trainer (see :func:`train_speaker_stage`)."""

    name: ClassVar[str] = "speaker"

    def __init__(self, cfg: SpeakerStageConfig, encoder_ckpt: str | Path, train_cache, dev_cache, out_dir: str | Path,
                 log_metrics: MetricsLogger | None = None, device: str = "cpu", noisy_cache=None) -> None:
        super().__init__(cfg, out_dir, log_metrics, device)
        self._load_clean(encoder_ckpt, train_cache, dev_cache, noisy_cache)
        self.speakers = self.train_data.speaker_names
        if len(self.speakers) < 2:
            raise ConfigError(f"{cfg.SECTION}: the train cache has {len(self.speakers)} speaker(s); expected >= 2")
        enc = self.start.encoder
        self._clean_batches(CROP_STREAM, self.speakers)
        torch.manual_seed(cfg.seed)  # head initialisation is a function of the seed
        head = SpeakerHead(SpeakerConfig(d_model=enc.cfg.dim, emb_dim=cfg.emb_dim, pooling=cfg.pooling,
                                         attention_dim=cfg.attention_dim))
        arcface = ArcFaceLoss(cfg.emb_dim, len(self.speakers), cfg.arcface)
        self.models.update({"encoder": enc, "speaker": head, "arcface": arcface})
        self.trainable_heads = {"speaker", "arcface"}
        self._finish_setup(self._data_fingerprint_of(train=self.train_data, dev=self.dev_data, noisy=self.noisy_data))

    def compute_loss(self, step: int):
        b = self.sampler.batch(step).to(self.device)
        out = self.encoder(b.mels, b.lengths)
        emb = self.models["speaker"](out.features, out.mask)
        arc = self.models["arcface"](emb, b.speakers, step=step)
        guard = self.guard_loss(out.features, b.mels, b.lengths, out.mask)
        acc = (arc.cosine.argmax(dim=1) == b.speakers).float().mean()
        return arc.loss + guard, {"arcface": arc.loss.detach(), "guard": guard.detach(), "train_acc": acc.detach()}

    def evaluate(self) -> dict[str, float]:
        return speaker_dev_metrics(self.encoder, self.models["speaker"], self.dev_set, self.device, self.amp)

    def selection(self) -> tuple[str, bool]:
        return ("speaker_eer", False) if self.cfg.select == "eer" else ("speaker_knn_acc", True)

    def bundle(self, dev_metrics: dict[str, float]) -> EchoModel:
        s = self.start
        return EchoModel(self.encoder, self.frontend, "speaker", speaker=self.models["speaker"],
                         arcface=self.models["arcface"], ctc=s.ctc, vq_ctc=s.vq_ctc, router=s.router,
                         meta={**self.stage_meta(dev_metrics), "train_speakers": self.speakers})


def train_speaker_stage(cfg: SpeakerStageConfig, encoder_ckpt: str | Path, train_cache, dev_cache,
                        out_dir: str | Path, log_metrics: MetricsLogger | None = None, device: str = "cpu",
                        noisy_cache=None) -> Path:
    """Stage 1: specialise the encoder for speaker identity; resume from ``out_dir`` if killed.

    Args:
        cfg: stage settings.
        encoder_ckpt: the pretrained encoder (``encoder.pt`` from pretraining) or a bundle directory.
        train_cache: :class:`echo.features.FeatureCache` of the train split (labels = its speakers).
        dev_cache: the dev split's cache (model selection only).
        out_dir: stage directory (``bundle/``, ``checkpoints/``, ``curves.parquet``, ``dev.parquet``,
            ``summary.json``).
        log_metrics: ``log_metrics(metrics, step)`` callback (train losses and ``dev_*`` metrics).
        device: ``"cpu"`` or ``"cuda"``.
        noisy_cache: the augmented copy of the train cache (``features_train_noisy``), needed when
            ``cfg.noisy_prob`` > 0.

    Returns:
        The bundle directory (encoder + speaker head + ArcFace centres) of the selected step.
    """
    return SpeakerStage(cfg, encoder_ckpt, train_cache, dev_cache, out_dir, log_metrics, device, noisy_cache).run()
