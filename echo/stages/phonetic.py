"""Stage 2, phonetic content: a continuous CTC head AND the paper's VQ bottleneck + CTC head, both
on the shared latent and both trained in this stage, so PER is reported both ways.

Run (after stage 1)::

    from echo.stages.phonetic import PhoneticStageConfig, train_phonetic_stage
    train_phonetic_stage(PhoneticStageConfig(), "runs/stage1_speaker/bundle", FeatureCache("features/train"),
                         FeatureCache("features/dev"), "runs/stage2_phonetic", log_metrics=print)

CTC targets of a crop are its frame phone labels, repeats collapsed, silence and unknown frames
dropped. The VQ codebook's perplexity and usage are logged on training batches and on dev; dead
codes (unused for ``vq_dead_code_steps`` steps) are re-initialised from current latents. By
default the guard distils towards the stage-1 encoder and replays a small ArcFace term.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch

from echo.config import need, rule
from echo.heads.ctc import CTCConfig, CTCHead
from echo.heads.vq import UPDATES, VQConfig
from echo.models.bundle import EchoModel
from echo.stages.common import (MetricsLogger, StageConfig, StageGuardConfig, StageTrainer, phonetic_dev_metrics, speaker_dev_metrics)

__all__ = ["PhoneticStageConfig", "PhoneticStage", "train_phonetic_stage"]

log = logging.getLogger(__name__)

CROP_STREAM = 0x70686E32  # "phn2"
SELECT = {"per_ctc": "per_ctc", "per_vq": "per_vq", "per_mean": "per_mean"}


@dataclass(frozen=True)
class PhoneticStageConfig(StageConfig):
    """Stage 2 (``stages.phonetic``): the fields of :class:`~echo.stages.common.StageConfig` plus:

    Attributes:
        ctc_hidden_dim: hidden width of both CTC heads (>= 1).
        ctc_layers: hidden layers of both CTC heads (0 = linear probe; 0..4).
        ctc_dropout: dropout in the CTC heads (0 <= p < 1).
        ctc_upsample: output frames per 40 ms token of both CTC heads (1..4; see :class:`CTCConfig`).
        codebook_size: VQ codes (>= 2).
        code_dim: VQ code width; 0 = the latent width (no projection), else projected (>= 0).
        vq_update: ``ema`` or ``loss`` codebook learning.
        vq_commitment: commitment weight β (>= 0).
        vq_dead_code_steps: revive codes unused this many steps (>= 0; 0 = never).
        ctc_weight: weight of the continuous CTC loss (>= 0).
        vq_ctc_weight: weight of the VQ-CTC loss incl. commitment (>= 0).
        select: dev metric that picks the kept step: ``per_ctc``, ``per_vq`` or ``per_mean`` (lower is better).
    """

    SECTION: ClassVar[str] = "stages.phonetic"

    guard: StageGuardConfig = StageGuardConfig(kind="distill", weight=1.0, replay_speaker=0.1)
    ctc_hidden_dim: int = field(default=256, metadata=rule(ge=1))
    ctc_layers: int = field(default=1, metadata=rule(ge=0, le=4))
    ctc_dropout: float = field(default=0.1, metadata=rule(ge=0, lt=1))
    ctc_upsample: int = field(default=1, metadata=rule(ge=1, le=4))
    codebook_size: int = field(default=256, metadata=rule(ge=2))
    code_dim: int = field(default=0, metadata=rule(ge=0))
    vq_update: Literal[UPDATES] = "ema"
    vq_commitment: float = field(default=0.25, metadata=rule(ge=0))
    vq_dead_code_steps: int = field(default=50, metadata=rule(ge=0))
    ctc_weight: float = field(default=1.0, metadata=rule(ge=0))
    vq_ctc_weight: float = field(default=1.0, metadata=rule(ge=0))
    select: Literal[*SELECT] = "per_ctc"

    def __post_init__(self) -> None:
        super().__post_init__()
        need(self, self.ctc_weight + self.vq_ctc_weight > 0, "ctc_weight", "ctc_weight + vq_ctc_weight > 0",
             (self.ctc_weight, self.vq_ctc_weight))


class PhoneticStage(StageTrainer):
    """Stage 2 trainer (see :func:`train_phonetic_stage`)."""

    name: ClassVar[str] = "phonetic"

    def __init__(self, cfg: PhoneticStageConfig, bundle_dir: str | Path, train_cache, dev_cache, out_dir: str | Path,
                 log_metrics: MetricsLogger | None = None, device: str = "cpu", noisy_cache=None) -> None:
        super().__init__(cfg, out_dir, log_metrics, device)
        self._load_clean(bundle_dir, train_cache, dev_cache, noisy_cache)
        s = self.start
        enc = s.encoder
        patch, d = enc.cfg.patch_frames, enc.cfg.dim
        # speaker indices must be those of the stage-1 ArcFace centres for the replay term
        self._clean_batches(CROP_STREAM, s.meta.get("train_speakers") or self.train_data.speaker_names)
        self.inventory = self.sampler.inventory
        torch.manual_seed(cfg.seed)
        ctc_cfg = CTCConfig(d_model=d, hidden_dim=cfg.ctc_hidden_dim, num_layers=cfg.ctc_layers, dropout=cfg.ctc_dropout,
                            upsample=cfg.ctc_upsample,
                            frame_shift=patch / self.train_data.frame_rate)
        code_dim = cfg.code_dim or d
        vq_cfg = VQConfig(d_model=d, codebook_size=cfg.codebook_size, code_dim=code_dim, project=code_dim != d,
                          update=cfg.vq_update, commitment=cfg.vq_commitment, dead_code_steps=cfg.vq_dead_code_steps,
                          seed=cfg.seed)
        self.models["encoder"] = enc
        for name in ("speaker", "arcface"):
            if getattr(s, name) is not None:
                self.models[name] = getattr(s, name)
        self.models["ctc"] = CTCHead(ctc_cfg, self.inventory)
        self.models["vq_ctc"] = CTCHead(ctc_cfg, self.inventory, vq_cfg)
        self.trainable_heads = {"ctc", "vq_ctc"}
        if cfg.guard.replay_heads_trainable:
            self.trainable_heads |= {n for n in ("speaker", "arcface") if n in self.models}
        self._check_replay()
        self._finish_setup(self._data_fingerprint_of(train=self.train_data, dev=self.dev_data, noisy=self.noisy_data))

    def compute_loss(self, step: int):
        cfg = self.cfg
        b = self.sampler.batch(step).to(self.device)
        out = self.encoder(b.mels, b.lengths)
        z, m = out.features, out.mask
        c = self.models["ctc"].loss(z, m, b.targets, b.target_lengths)
        v = self.models["vq_ctc"].loss(z, m, b.targets, b.target_lengths)
        guard = self.guard_loss(z, b.mels, b.lengths, m)
        replay, rparts = self.replay_loss(z, m, b, step)
        loss = cfg.ctc_weight * c.total + cfg.vq_ctc_weight * v.total + guard + replay
        q = v.output.vq
        return loss, {"ctc": c.ctc.detach(), "vq_ctc": v.ctc.detach(), "vq_commitment": v.vq.detach(),
                      "vq_perplexity": q.perplexity, "vq_usage": q.usage.detach(), "vq_revived": torch.tensor(float(q.revived)),
                      "guard": guard.detach(), **rparts}

    def evaluate(self) -> dict[str, float]:
        m = self.models
        res = phonetic_dev_metrics(self.encoder, m["ctc"], m["vq_ctc"], self.dev_set, self.device, self.amp)
        res["per_mean"] = 0.5 * (res["per_ctc"] + res["per_vq"])
        if "speaker" in m:  # is stage 1's ability kept? (non-interference monitor)
            res.update(speaker_dev_metrics(self.encoder, m["speaker"], self.dev_set, self.device, self.amp))
        return res

    def selection(self) -> tuple[str, bool]:
        return SELECT[self.cfg.select], False

    def bundle(self, dev_metrics: dict[str, float]) -> EchoModel:
        m = self.models
        return EchoModel(self.encoder, self.frontend, "phonetic", speaker=m["speaker"] if "speaker" in m else None,
                         arcface=m["arcface"] if "arcface" in m else None, ctc=m["ctc"], vq_ctc=m["vq_ctc"],
                         router=self.start.router, meta=self.stage_meta(dev_metrics))


def train_phonetic_stage(cfg: PhoneticStageConfig, bundle_dir: str | Path, train_cache, dev_cache,
                         out_dir: str | Path, log_metrics: MetricsLogger | None = None, device: str = "cpu",
                         noisy_cache=None) -> Path:
    """Stage 2: specialise the encoder for phonetic content; resume from ``out_dir`` if killed.

    Args:
        cfg: stage settings.
        bundle_dir: the stage-1 bundle (or a pretrained ``encoder.pt`` to skip stage 1; replay of
            ArcFace then needs ``guard.replay_speaker: 0``).
        train_cache: the train split's :class:`echo.features.FeatureCache` (frame phone labels).
        dev_cache: the dev split's cache (dev PER selects the kept step).
        out_dir: stage directory (same files as stage 1).
        log_metrics: ``log_metrics(metrics, step)`` callback.
        device: ``"cpu"`` or ``"cuda"``.
        noisy_cache: the augmented copy of the train cache (``features_train_noisy``), needed when
            ``cfg.noisy_prob`` > 0.

    Returns:
        The bundle directory (encoder + speaker head + CTC head + VQ-CTC head) of the selected step.
    """
    return PhoneticStage(cfg, bundle_dir, train_cache, dev_cache, out_dir, log_metrics, device, noisy_cache).run()
