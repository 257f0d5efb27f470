"""Stage 4, segmentation: the local speaker segmentation head on the FINAL shared encoder.

The head (:mod:`echo.heads.segmentation`, powerset, permutation-invariant) learns from chunks of
the TRAINING conversations (train speakers only; noise, rooms and overlap as the simulator makes
them) who of up to ``max_speakers`` local speakers talks at each token. The encoder is frozen:
this stage adds a head and changes no latent, so every ability measured after the routing stage
holds by construction (the summary records the encoder's hash before and after to show it). The
latents are computed once per conversation exactly as the diarizer computes them (same encoder
blocks and context), so the head sees at training what it sees at test.

Model selection: the dev conversations (dev speakers), cut into chunks every ``dev_step_s``; the
selected step has the lowest local segmentation error (missed + false alarm + confusion over
reference speech, best permutation per chunk: the chunk-level DER of EEND papers).

Its own short loop (the head trains on cached latents with no encoder in the loop, which the encoder
stages' :class:`echo.stages.common.StageTrainer` does not do) on the shared training core
(:mod:`echo.train.trainer`): optimizer step with clipping, the NaN guard, the curves.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from echo.config import check_fields, need, rule
from echo.diarization.backend import conversation_latents, conversation_split
from echo.diarization.diarizer import DiarizerConfig
from echo.errors import ConfigError, EchoError
from echo.heads.segmentation import SegmentationConfig, SegmentationHead, best_permutation, powerset_pit_loss
from echo.io import write_json
from echo.train.schedules import WarmupCosine
from echo.train.trainer import fit_head, module_sha, write_rows

__all__ = ["SegmentationStageConfig", "SegmentationFit", "check_chunk_matches_diarizer", "fit_segmentation_head", "local_targets", "segmentation_errors",
           "train_segmentation_stage"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentationStageConfig:
    """params.yaml ``stages.segmentation``.

    Attributes:
        steps: training steps (>= 1).
        batch_size: chunks per step (>= 1).
        chunk_s: chunk length in seconds (> 0); the diarizer's ``segment_s`` must equal it.
        lr: peak AdamW learning rate (> 0); warmup_steps: linear warmup; final_lr_ratio: cosine end.
        weight_decay: AdamW weight decay (>= 0); grad_clip: max gradient norm (> 0).
        eval_every: dev evaluation period in steps (>= 1); log_every: curve period (>= 1).
        dev_step_s: hop between dev chunks (> 0).
        seed: seed of the initialisation and of the chunk draws.
        head: :class:`SegmentationConfig` (``d_model`` is taken from the encoder).
    """

    SECTION = "stages.segmentation"
    steps: int = field(default=800, metadata=rule(ge=1))
    batch_size: int = field(default=32, metadata=rule(ge=1))
    chunk_s: float = field(default=1.5, metadata=rule(gt=0, finite=True))
    lr: float = field(default=2e-3, metadata=rule(gt=0, finite=True))
    warmup_steps: int = field(default=100, metadata=rule(ge=0))
    final_lr_ratio: float = field(default=0.05, metadata=rule(ge=0, le=1))
    weight_decay: float = field(default=0.01, metadata=rule(ge=0))
    grad_clip: float = field(default=1.0, metadata=rule(gt=0, finite=True))
    eval_every: int = field(default=200, metadata=rule(ge=1))
    log_every: int = field(default=25, metadata=rule(ge=1))
    dev_step_s: float = field(default=0.75, metadata=rule(gt=0, finite=True))
    seed: int = 0
    head: SegmentationConfig = field(default_factory=SegmentationConfig)

    def __post_init__(self):
        check_fields(self)
        need(self, self.warmup_steps <= self.steps, "warmup_steps", f"an integer in [0, steps={self.steps}]",
             self.warmup_steps)


def check_chunk_matches_diarizer(stage: SegmentationStageConfig, diarizer: DiarizerConfig,
                                 source: str = "params.yaml") -> None:
    """The head is trained on chunks of ``stages.segmentation.chunk_s`` and applied by the diarizer on
    chunks of ``evaluation.diarizer.segment_s``: the two must be equal. Checked with the params
    (``echo.config.CROSS``), before any job runs.

    Raises:
        ConfigError: one line naming both keys.
    """
    if abs(stage.chunk_s - diarizer.segment_s) > 1e-9:
        raise ConfigError(f"{source}: stages.segmentation.chunk_s: expected evaluation.diarizer.segment_s "
                          f"({diarizer.segment_s}), got {stage.chunk_s}")


def local_targets(activity: np.ndarray, max_speakers: int) -> np.ndarray:
    """``(L, K)`` reference activity of one chunk -> ``(L, max_speakers)`` targets: the chunk's
    speakers that talk, most active first (the extra ones beyond ``max_speakers`` are dropped, as
    pyannote does), zero-padded."""
    act = np.asarray(activity, dtype=np.float32)
    tot = act.sum(0)
    order = [j for j in np.argsort(-tot, kind="stable") if tot[j] > 0][:max_speakers]
    out = np.zeros((act.shape[0], max_speakers), np.float32)
    if order:
        out[:, :len(order)] = act[:, order]
    return out


def segmentation_errors(hard: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Frame-level errors of one chunk under the best speaker permutation (seconds-free counts).

    Args:
        hard: ``(L, S)`` 0/1 predicted activity; target: ``(L, S)`` 0/1 reference.

    Returns:
        ``{"speech", "missed", "false_alarm", "confusion", "count_correct", "frames"}`` (token counts).
    """
    h = torch.as_tensor(hard, dtype=torch.float32)[None]
    t = torch.as_tensor(target, dtype=torch.float32)[None]
    perm = best_permutation(h.clamp(0.02, 0.98), t)[0]
    t = t[0][:, perm].numpy()
    h = h[0].numpy()
    nr, nh = t.sum(1), h.sum(1)
    correct = np.minimum(t, h).sum(1)  # speakers right at each token
    return {"speech": float(nr.sum()), "missed": float(np.maximum(nr - nh, 0).sum()),
            "false_alarm": float(np.maximum(nh - nr, 0).sum()),
            "confusion": float((np.minimum(nr, nh) - correct).sum()),
            "count_correct": float((nr == nh).sum()), "frames": float(len(nr))}


class _Chunks:
    """Training conversations' latents (float16) and reference activity, for random chunks."""

    def __init__(self, items: list[tuple[np.ndarray, np.ndarray]], length: int, max_speakers: int):
        self.lat = [x.astype(np.float16) for x, _ in items]
        self.act = [a for _, a in items]
        self.length, self.s = length, max_speakers
        self.weights = np.array([max(1, len(x) - length + 1) for x in self.lat], np.float64)
        self.weights /= self.weights.sum()

    def sample(self, rng: np.random.Generator, b: int):
        x = np.zeros((b, self.length, self.lat[0].shape[1]), np.float32)
        y = np.zeros((b, self.length, self.s), np.float32)
        m = np.zeros((b, self.length), bool)
        for i, c in enumerate(rng.choice(len(self.lat), size=b, p=self.weights)):
            n = len(self.lat[c])
            a = int(rng.integers(0, max(1, n - self.length + 1)))
            seg = self.lat[c][a:a + self.length]
            x[i, :len(seg)], m[i, :len(seg)] = seg, True
            y[i, :len(seg)] = local_targets(self.act[c][a:a + self.length], self.s)
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(m)


def _dev_chunks(items, length: int, hop: int, s: int):
    xs, ys, ms = [], [], []
    for lat, act in items:
        for a in range(0, max(1, len(lat) - length + 1), hop):
            seg = lat[a:a + length]
            x = np.zeros((length, lat.shape[1]), np.float32)
            y = np.zeros((length, s), np.float32)
            m = np.zeros(length, bool)
            x[:len(seg)], m[:len(seg)] = seg, True
            y[:len(seg)] = local_targets(act[a:a + length], s)
            xs.append(x.astype(np.float16)), ys.append(y), ms.append(m)
    return np.stack(xs), np.stack(ys), np.stack(ms)


@torch.no_grad()
def _evaluate(head: SegmentationHead, dev, device) -> dict[str, float]:
    x, y, m = dev
    head.eval()
    tot = {"speech": 0.0, "missed": 0.0, "false_alarm": 0.0, "confusion": 0.0, "count_correct": 0.0, "frames": 0.0}
    loss, nb = 0.0, 0
    for b in range(0, len(x), 64):
        xb = torch.from_numpy(x[b:b + 64].astype(np.float32)).to(device)
        yb, mb = torch.from_numpy(y[b:b + 64]).to(device), torch.from_numpy(m[b:b + 64]).to(device)
        logits = head(xb, mb)
        loss += float(powerset_pit_loss(logits, yb, head.powerset, mb))
        nb += 1
        hard = head.powerset.hard_multilabel(logits) * m[b:b + 64, :, None]
        for j in range(len(hard)):
            valid = m[b + j]
            e = segmentation_errors(hard[j][valid], y[b + j][valid])
            for k in tot:
                tot[k] += e[k]
    sp = max(tot["speech"], 1.0)
    return {"loss": loss / max(nb, 1), "error": (tot["missed"] + tot["false_alarm"] + tot["confusion"]) / sp,
            "missed": tot["missed"] / sp, "false_alarm": tot["false_alarm"] / sp,
            "confusion": tot["confusion"] / sp, "count_accuracy": tot["count_correct"] / max(tot["frames"], 1.0)}


@dataclass(frozen=True)
class SegmentationFit:
    """What :func:`fit_segmentation_head` returns beside the head: the kept step and the curves."""

    best_step: int
    best: dict
    curves: list
    dev_rows: list
    step_time_s: float
    dev_chunks: int


def fit_segmentation_head(cfg: SegmentationStageConfig, train_items: list, dev_items: list, token_s: float,
                          d_model: int, log_metrics: Callable | None = None,
                          device: torch.device | str = "cpu") -> tuple[SegmentationHead, SegmentationFit]:
    """Train one segmentation head (seed ``cfg.seed``) on cached conversation latents and keep its best dev step.

    The encoder is not in the loop, so several seeds share one encoding pass: the stage calls this
    once per seed (its own, then those of ``seeds.diarization`` for :mod:`echo.evaluate.seeds`).

    Args:
        train_items / dev_items: ``[(latents (N, D), reference activity (N, K)), ...]`` per conversation,
            encoded as the diarizer encodes (:func:`~echo.diarization.backend.conversation_latents`).
        token_s: seconds per latent token; d_model: the latent width.
    """
    dev_t = torch.device(device)
    length = max(1, round(cfg.chunk_s / token_s))
    hcfg = dataclasses.replace(cfg.head, d_model=d_model)
    torch.manual_seed(cfg.seed)
    head = SegmentationHead(hcfg).to(dev_t)
    chunks = _Chunks(train_items, length, hcfg.max_speakers)
    dev = _dev_chunks(dev_items, length, max(1, round(cfg.dev_step_s / token_s)), hcfg.max_speakers)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = WarmupCosine(0.0, cfg.lr, cfg.lr * cfg.final_lr_ratio, cfg.warmup_steps, cfg.steps)
    rng = np.random.default_rng(cfg.seed)

    def loss_of_step(step: int) -> torch.Tensor:
        x, y, m = (t.to(dev_t) for t in chunks.sample(rng, cfg.batch_size))
        return powerset_pit_loss(head(x, m), y, head.powerset, m)

    def evaluate(step: int) -> dict:
        met = _evaluate(head, dev, dev_t)
        log.info("segmentation stage (seed %d): step %d dev error %.4f (missed %.4f, FA %.4f, confusion %.4f), "
                 "count acc %.4f", cfg.seed, step, met["error"], met["missed"], met["false_alarm"],
                 met["confusion"], met["count_accuracy"])
        return met

    fit = fit_head(head, opt, sched, cfg.steps, cfg.grad_clip, loss_of_step, evaluate, eval_every=cfg.eval_every,
                   log_every=cfg.log_every, where=cfg.SECTION, metric="error", higher_is_better=False,
                   log_metrics=log_metrics)
    return head, SegmentationFit(fit.best_step, fit.best, fit.curves, fit.dev_rows, fit.step_time_s, int(len(dev[0])))


def train_segmentation_stage(cfg: SegmentationStageConfig, bundle_dir: str | Path, train_conversations,
                             dev_conversations, out_dir: str | Path, log_metrics: Callable | None = None,
                             device: str = "cpu", diarizer: DiarizerConfig = DiarizerConfig(),
                             extra_seeds: Sequence[int] = ()) -> Path:
    """Train the segmentation head on the frozen final encoder; write ``bundle/`` (the input bundle
    plus the head, stage ``segmentation``), ``curves.parquet``, ``dev.parquet``, ``summary.json``.

    ``extra_seeds``: the same recipe with other seeds (params ``seeds.diarization``), trained on the
    same encoded conversations (encoding is most of this stage's time) and written as
    ``seeds/seed<N>.pt`` for :mod:`echo.evaluate.seeds`; the bundle holds the head of ``cfg.seed``.

    Raises:
        ConfigError: ``chunk_s`` differs from the diarizer's ``segment_s``.
        EchoError: test conversations given, or no conversations.
    """
    from echo.models.bundle import EchoModel

    check_chunk_matches_diarizer(cfg, diarizer, "segmentation stage")
    for sset, want in ((train_conversations, "train"), (dev_conversations, "dev")):
        got = conversation_split(sset)
        if got is not None and got != want:
            raise EchoError(f"segmentation stage: expected {want} conversations, got {got}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev_t = torch.device(device)
    model = EchoModel.load(bundle_dir, map_location=dev_t)
    enc = model.encoder.eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    sha0 = module_sha(enc)
    token_s = enc.cfg.patch_frames * model.frontend.hop_length / model.frontend.sample_rate
    t0 = time.perf_counter()
    train_items = [(lat, act) for _, lat, act, _ in conversation_latents(enc, model.frontend, train_conversations, diarizer)]
    dev_items = [(lat, act) for _, lat, act, _ in conversation_latents(enc, model.frontend, dev_conversations, diarizer)]
    if not train_items or not dev_items:
        raise EchoError("segmentation stage: no training or dev conversations")
    encode_s = time.perf_counter() - t0
    log.info("segmentation stage: encoded %d train / %d dev conversations in %.0f s", len(train_items),
             len(dev_items), encode_s)
    head, fit = fit_segmentation_head(cfg, train_items, dev_items, token_s, enc.cfg.dim, log_metrics, dev_t)
    replicas = []
    for seed in (s for s in extra_seeds if s != cfg.seed):
        other, ofit = fit_segmentation_head(dataclasses.replace(cfg, seed=seed), train_items, dev_items, token_s,
                                            enc.cfg.dim, None, dev_t)
        (out_dir / "seeds").mkdir(exist_ok=True)
        other.cpu().save(out_dir / "seeds" / f"seed{seed}.pt")
        replicas.append({"seed": seed, "best_step": ofit.best_step, "best": ofit.best})
    if module_sha(enc) != sha0:  # the stage must not touch the shared latent
        raise EchoError("segmentation stage: the encoder changed during training")
    meta = dict(model.meta)
    stages = dict(meta.get("stages", {}))
    stages["segmentation"] = {"config": dataclasses.asdict(cfg), "selected_step": fit.best_step, "dev": fit.best,
                              "trainable": "head only (encoder frozen)", "encoder_sha256": sha0}
    meta["stages"] = stages
    bundle = EchoModel(model.encoder.cpu(), model.frontend, "segmentation", speaker=model.speaker, arcface=model.arcface,
                       ctc=model.ctc, vq_ctc=model.vq_ctc, router=model.router, segmentation=head.cpu(), meta=meta)
    bundle.save(out_dir / "bundle")
    write_rows(fit.curves, out_dir / "curves.parquet")
    write_rows(fit.dev_rows, out_dir / "dev.parquet")
    write_json(out_dir / "summary.json", {
        "stage": "segmentation", "config": dataclasses.asdict(cfg), "steps": cfg.steps,
        "trainable": "head only (encoder frozen)", "encoder_sha256_before": sha0, "encoder_sha256_after": module_sha(enc),
        "selection": {"metric": "error", "higher_is_better": False}, "best_step": fit.best_step, "best": fit.best,
        "final": fit.dev_rows[-1] if fit.dev_rows else None, "step_time_s": fit.step_time_s,
        "encode_s": encode_s, "train_chunks_per_step": cfg.batch_size, "device": dev_t.type,
        "train_conversations": len(train_items), "dev_chunks": fit.dev_chunks, "seeds": replicas,
    })
    return out_dir / "bundle"
