"""Stage 5, separation: the speaker separator that renders each speaker of a mixture as a waveform.

The separator (:mod:`echo.heads.separator`) learns, from the TRAINING mixtures (train speakers
only), to turn a speaker's identity into that speaker's waveform: the mixture's STFT masked and
inverted, the mask predicted from the identity, the mixture latent and the mixture spectrum. The
encoder and every other head are frozen: this stage adds a head and changes no latent, so every
ability measured after the routing stage holds by construction (the summary records the
encoder's and the speaker head's hashes before and after). The mixture latents are computed once,
so the head trains with no encoder in the loop.

A source's identity at training (:func:`solo_identities`) is what the diarizer gives at test: the
speaker head's unit embedding of the MIXTURE latent pooled over the tokens where that source talks
alone (the diarizer pools each local speaker's single-speaker tokens the same way), over the tokens
where it talks at all when it never talks alone (a fully overlapped mixture), over the whole
mixture when it is silent throughout. Who talks in a token comes, at training, from the clean
sources (a token's RMS at least ``active_rms``); at test from the diarization of the mixture
(:mod:`echo.evaluate.separation`). The identity is one vector for the whole mixture, also in a
training crop, as at test. Every source of a mixture is rendered; the loss is the negative SI-SDR
of each source (``min_reference_rms`` skips crops where a source is silent).

Model selection: the dev mixtures (dev speakers), whole, each source rendered from its identity
over the clean sources' activity (the training condition: the stage has no diarizer yet); the
selected step has the highest dev waveform SI-SDRi (:func:`echo.metrics.separation.evaluate_waveforms`).
The test evaluation replaces the clean activity by the diarizer's, so its figure is blind.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from echo.config import check_fields, need, rule
from echo.errors import EchoError
from echo.heads.separator import SeparatorConfig, SpeakerSeparator, si_sdr_loss
from echo.io import write_json
from echo.metrics.separation import evaluate_waveforms
from echo.simulate.mixtures import spread_indices
from echo.train.schedules import WarmupCosine
from echo.train.trainer import fit_head, module_sha, param_groups, write_rows

__all__ = ["SeparationStageConfig", "EncodedMixtures", "encode_mixtures", "padded_identities", "pooling_masks",
           "solo_identities", "token_activity", "train_separation_stage"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeparationStageConfig:
    """params.yaml ``stages.separation``.

    Attributes:
        steps: training steps (>= 1).
        batch_size: mixtures per step (>= 1).
        crop_s: training crop length in seconds (> 0; whole mixtures when longer than them).
        lr: peak AdamW learning rate (> 0); warmup_steps: linear warmup; final_lr_ratio: cosine end.
        weight_decay: AdamW weight decay of the matrices (>= 0); grad_clip: max gradient norm (> 0).
        eval_every: dev evaluation period in steps (>= 1); log_every: curve period (>= 1).
        min_reference_rms: a source whose crop has a lower RMS is not a training target (>= 0).
        active_rms: a source talks in a token whose RMS is at least this (> 0); sets where it
            talks alone, the tokens its identity is pooled over.
        min_solo_tokens: fewer single-speaker tokens than this (>= 1) and the identity pools
            every token the source talks in instead.
        max_sdr_db: the loss stops rewarding a source above this SI-SDR (> 0), so easy sources do
            not dominate the batch.
        max_mixtures: use at most this many training mixtures, evenly spread (0 = all).
        dev_max_mixtures: use at most this many dev mixtures (0 = all).
        seed: seed of the initialisation and of the batch draws.
        separator: :class:`SeparatorConfig` (``d_model``, ``identity_dim``, ``patch_frames`` and
            the STFT come from the encoder, the speaker head and the front-end).
    """

    SECTION = "stages.separation"
    steps: int = field(default=600, metadata=rule(ge=1))
    batch_size: int = field(default=8, metadata=rule(ge=1))
    crop_s: float = field(default=2.0, metadata=rule(gt=0, finite=True))
    lr: float = field(default=2e-3, metadata=rule(gt=0, finite=True))
    warmup_steps: int = field(default=30, metadata=rule(ge=0))
    final_lr_ratio: float = field(default=0.05, metadata=rule(ge=0, le=1))
    weight_decay: float = field(default=0.01, metadata=rule(ge=0))
    grad_clip: float = field(default=5.0, metadata=rule(gt=0, finite=True))
    eval_every: int = field(default=100, metadata=rule(ge=1))
    log_every: int = field(default=10, metadata=rule(ge=1))
    min_reference_rms: float = field(default=1e-3, metadata=rule(ge=0))
    active_rms: float = field(default=0.01, metadata=rule(gt=0, finite=True))
    min_solo_tokens: int = field(default=3, metadata=rule(ge=1))
    max_sdr_db: float = field(default=30.0, metadata=rule(gt=0, finite=True))
    max_mixtures: int = field(default=0, metadata=rule(ge=0))
    dev_max_mixtures: int = field(default=0, metadata=rule(ge=0))
    seed: int = 0
    separator: SeparatorConfig = field(default_factory=SeparatorConfig)

    def __post_init__(self):
        check_fields(self)
        need(self, self.warmup_steps <= self.steps, "warmup_steps", f"an integer in [0, steps={self.steps}]",
             self.warmup_steps)


class EncodedMixtures(NamedTuple):
    """A mixture set as the frozen model sees it (all mixtures of one length).

    ``mixture`` ``(M, N)`` and ``sources`` (list of ``(K_i, N)``) waveforms; ``latent`` ``(M, T, D)``
    float16 mixture latents; ``identity`` (list of ``(K_i, E)``: each source's unit identity,
    :func:`solo_identities`).
    """

    mixture: np.ndarray
    sources: list[np.ndarray]
    latent: torch.Tensor
    identity: list[torch.Tensor]
    mix_ids: list[str]
    speakers: list[str]


def token_activity(sources: np.ndarray, patch_samples: int, n_tokens: int, active_rms: float) -> np.ndarray:
    """``(K, n_tokens)`` bool: who talks in each latent token (the token's RMS >= ``active_rms``).

    Token ``t`` covers samples ``[t * patch_samples, (t + 1) * patch_samples)``; tokens past the
    end of the waveform are silent.
    """
    k, n = sources.shape
    whole = min(n_tokens, n // patch_samples)
    out = np.zeros((k, n_tokens), bool)
    if whole:
        x = sources[:, :whole * patch_samples].astype(np.float64).reshape(k, whole, patch_samples)
        out[:, :whole] = np.sqrt((x ** 2).mean(-1)) >= active_rms
    return out


def pooling_masks(activity: np.ndarray, min_solo_tokens: int) -> np.ndarray:
    """``(K, T)`` bool: the tokens each speaker's identity is pooled over (see the module docstring).

    Single-speaker tokens when there are at least ``min_solo_tokens``, else every token the speaker
    talks in, else (silent throughout) every token.
    """
    alone = activity & (activity.sum(0, keepdims=True) == 1)
    use = np.where(alone.sum(1, keepdims=True) >= min_solo_tokens, alone, activity)
    return np.where(use.any(1, keepdims=True), use, True)


@torch.no_grad()
def solo_identities(speaker: torch.nn.Module, latent: torch.Tensor, activity: np.ndarray,
                    min_solo_tokens: int) -> torch.Tensor:
    """``(K, E)`` unit identities: the speaker head ``speaker`` (in eval mode) on one mixture's
    latent ``(T, D)``, pooled over :func:`pooling_masks` of ``activity`` ``(K, T)``."""
    mask = torch.from_numpy(pooling_masks(activity, min_solo_tokens)).to(latent.device)
    k = mask.shape[0]
    return speaker(latent.float()[None].expand(k, -1, -1), mask).float().cpu()


@torch.no_grad()
def encode_mixtures(model, mixtures, active_rms: float, min_solo_tokens: int, max_mixtures: int = 0,
                    batch_size: int = 16, hook: Callable | None = None) -> EncodedMixtures:
    """Encode every mixture with the frozen encoder and give each source its identity.

    Args:
        model: an :class:`~echo.models.bundle.EchoModel` with a speaker head.
        mixtures: a :class:`~echo.simulate.mixtures.MixtureSet`.
        active_rms / min_solo_tokens: :class:`SeparationStageConfig`'s.
        max_mixtures: at most this many, evenly spread (0 = all).
    """
    n = len(mixtures)
    if n == 0:
        raise EchoError(f"{getattr(mixtures, 'root', 'mixtures')}: no mixtures")
    idx = spread_indices(n, max_mixtures)
    fe = model.frontend
    patch_samples = model.encoder.cfg.patch_frames * fe.hop_length
    mix, srcs, lat, ident, ids, speakers = [], [], [], [], [], set()
    for a in range(0, len(idx), batch_size):
        items = [mixtures[int(i)] for i in idx[a:a + batch_size]]
        if len({len(it.mixture) for it in items} | {len(mix[0]) if mix else len(items[0].mixture)}) > 1:
            raise EchoError(f"{getattr(mixtures, 'root', 'mixtures')}: mixtures of different lengths; expected one "
                            f"window length per set")
        out = model.latents(torch.from_numpy(np.stack([fe.compute(it.mixture) for it in items])))
        for j, it in enumerate(items):
            act = token_activity(it.sources, patch_samples, out.features.shape[1], active_rms)
            ident.append(solo_identities(model.speaker, out.features[j], act, min_solo_tokens))
            mix.append(it.mixture.astype(np.float32))
            srcs.append(it.sources.astype(np.float32))
            ids.append(str(it.mix_id))
            speakers.update(it.speakers)
        lat.append(out.features.to(torch.float16).cpu())
        if hook is not None:
            hook("encode", completed=min(len(idx), a + batch_size), total=len(idx))
    return EncodedMixtures(np.stack(mix), srcs, torch.cat(lat), ident, ids, sorted(speakers))


def padded_identities(identities, identity_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of per-mixture identities ``(K_i, E)`` (K_i >= 1) as the separator takes them:
    ``(B, max K_i, E)`` zero-padded, and the ``(B, max K_i)`` bool mask of the speakers to render."""
    k = max(len(x) for x in identities)
    ident = torch.zeros(len(identities), k, identity_dim)
    active = torch.zeros(len(identities), k, dtype=torch.bool)
    for i, x in enumerate(identities):
        ident[i, :len(x)] = torch.as_tensor(np.asarray(x, np.float32))
        active[i, :len(x)] = True
    return ident, active


def _train_batch(data: EncodedMixtures, rows: np.ndarray, crop_tokens: int, patch_samples: int, min_rms: float,
                 rng: np.random.Generator, device: torch.device):
    t = data.latent.shape[1]
    n_tok = min(t, data.mixture.shape[1] // patch_samples)  # whole tokens inside the waveform
    crop = min(crop_tokens, n_tok)
    mix, lat, est_idx, refs = [], [], [], []
    for i, r in enumerate(rows):
        t0 = int(rng.integers(0, n_tok - crop + 1))
        a, b = t0 * patch_samples, (t0 + crop) * patch_samples
        mix.append(data.mixture[r, a:b])
        lat.append(data.latent[r, t0:t0 + crop])
        for q, ref in enumerate(data.sources[r][:, a:b]):
            if float(np.sqrt(np.mean(ref ** 2))) >= min_rms:
                est_idx.append((i, q))
                refs.append(ref)
    ident, active = padded_identities([data.identity[r] for r in rows], data.identity[rows[0]].shape[1])
    return (torch.from_numpy(np.stack(mix)).to(device), ident.to(device), torch.stack(lat).float().to(device),
            active.to(device), est_idx, torch.from_numpy(np.stack(refs)).to(device) if refs else None)


@torch.no_grad()
def evaluate_dev(separator: SpeakerSeparator, data: EncodedMixtures, device: torch.device,
                 batch_size: int = 16) -> dict[str, float]:
    """Dev waveform separation: SI-SDRi over matched sources (by K too), each source rendered from
    its identity over the clean sources' activity."""
    separator.eval()
    per_k: dict[int, list[float]] = {}
    missed = extra = 0
    for a in range(0, len(data.mixture), batch_size):
        rows = np.arange(a, min(len(data.mixture), a + batch_size))
        ident, act = padded_identities([data.identity[r] for r in rows], data.identity[rows[0]].shape[1])
        waves = separator(torch.from_numpy(data.mixture[rows]).to(device), ident.to(device),
                          data.latent[rows].float().to(device), act.to(device)).float().cpu().numpy()
        for j, r in enumerate(rows):
            w = evaluate_waveforms(waves[j], act[j].numpy(), data.sources[r], data.mixture[r])
            per_k.setdefault(w["k"], []).extend(w["si_sdri"])
            missed += w["n_unmatched"]
            extra += w["n_extra"]
    every = [v for vals in per_k.values() for v in vals]
    out = {"si_sdri": float(np.mean(every)) if every else math.nan, "missed": float(missed), "extra": float(extra)}
    out.update({f"si_sdri_k{k}": float(np.mean(v)) if v else math.nan for k, v in sorted(per_k.items())})
    return out


def train_separation_stage(cfg: SeparationStageConfig, bundle_dir: str | Path, train_mixtures, dev_mixtures,
                           out_dir: str | Path, log_metrics: Callable | None = None, device: str = "cpu") -> Path:
    """Train the speaker separator on the frozen model; write ``bundle/`` (the input bundle plus
    the separator, stage ``separation``), ``curves.parquet``, ``dev.parquet``, ``summary.json``.

    Args:
        cfg: stage settings.
        bundle_dir: the routing-stage bundle (its encoder is the final one).
        train_mixtures / dev_mixtures: :class:`~echo.simulate.mixtures.MixtureSet` of TRAIN / DEV speakers.
        out_dir: stage directory.
        log_metrics: ``log_metrics(metrics, step)`` callback.
        device: ``"cpu"`` or ``"cuda"``.

    Raises:
        EchoError: the bundle has no speaker head, or the dev and train mixtures share a speaker.
    """
    from echo.models.bundle import EchoModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev_t = torch.device(device)
    model = EchoModel.load(bundle_dir, map_location=dev_t)
    if model.speaker is None:
        raise EchoError(f"{bundle_dir}: no speaker head; the separation stage renders speakers by their identity")
    frozen = {"encoder": module_sha(model.encoder), "speaker": module_sha(model.speaker)}
    t0 = time.perf_counter()
    enc_args = (cfg.active_rms, cfg.min_solo_tokens)
    train = encode_mixtures(model, train_mixtures, *enc_args, max_mixtures=cfg.max_mixtures)
    dev = encode_mixtures(model, dev_mixtures, *enc_args, max_mixtures=cfg.dev_max_mixtures)
    shared = sorted(set(train.speakers) & set(dev.speakers))
    if shared:  # model selection must not see training speakers
        raise EchoError(f"separation stage: dev speaker {shared[0]!r} is also in the train mixtures; expected disjoint splits")
    encode_s = time.perf_counter() - t0
    log.info("separation stage: encoded %d train / %d dev mixtures in %.0f s", len(train.mixture), len(dev.mixture),
             encode_s)

    fe, enc = model.frontend, model.encoder
    scfg = dataclasses.replace(cfg.separator, d_model=enc.cfg.dim, identity_dim=model.speaker.config.emb_dim,
                               patch_frames=enc.cfg.patch_frames, n_fft=fe.n_fft, win_length=fe.win_length,
                               hop_length=fe.hop_length)
    torch.manual_seed(cfg.seed)
    sep = SpeakerSeparator(scfg).to(dev_t)
    patch_samples = enc.cfg.patch_frames * fe.hop_length
    crop_tokens = max(1, round(cfg.crop_s * fe.sample_rate / patch_samples))
    # one-source mixtures teach nothing (one rendered speaker's mask is 1): drawn from the rest
    pool = np.array([i for i in range(len(train.mixture)) if len(train.sources[i]) >= 2])
    if len(pool) == 0:
        raise EchoError("separation stage: no training mixture has two or more sources; nothing to separate")
    opt = torch.optim.AdamW(param_groups(sep.named_parameters(), cfg.weight_decay), lr=cfg.lr)
    sched = WarmupCosine(0.0, cfg.lr, cfg.lr * cfg.final_lr_ratio, cfg.warmup_steps, cfg.steps)
    rng = np.random.default_rng(cfg.seed)

    def loss_of_step(step: int) -> torch.Tensor | None:
        rows = rng.choice(pool, size=cfg.batch_size)
        mix, ident, lat, active, est_idx, refs = _train_batch(train, rows, crop_tokens, patch_samples,
                                                              cfg.min_reference_rms, rng, dev_t)
        if refs is None:  # every source of the draw silent in its crop
            return None
        waves = sep(mix, ident, lat, active)
        est = torch.stack([waves[i, q] for i, q in est_idx])
        return si_sdr_loss(est, refs).clamp(min=-cfg.max_sdr_db).mean()

    def evaluate(step: int) -> dict:
        met = evaluate_dev(sep, dev, dev_t)
        log.info("separation stage: step %d dev SI-SDRi %.2f dB (%s)", step, met["si_sdri"],
                 ", ".join(f"{k} {v:.2f}" for k, v in met.items() if k.startswith("si_sdri_k")))
        return met

    fit = fit_head(sep, opt, sched, cfg.steps, cfg.grad_clip, loss_of_step, evaluate, eval_every=cfg.eval_every,
                   log_every=cfg.log_every, where=cfg.SECTION, metric="si_sdri", higher_is_better=True,
                   log_metrics=log_metrics)
    after = {"encoder": module_sha(model.encoder), "speaker": module_sha(model.speaker)}
    if after != frozen:  # the stage must not touch the shared latent or the identities
        raise EchoError("separation stage: the encoder or the speaker head changed during training")
    meta = dict(model.meta)
    stages = dict(meta.get("stages", {}))
    trainable = "separator only (encoder and every other head frozen)"
    stages["separation"] = {"config": dataclasses.asdict(cfg), "selected_step": fit.best_step, "dev": fit.best,
                            "trainable": trainable, "conditioning": "speaker identity", "sha256": frozen}
    meta["stages"] = stages
    bundle = EchoModel(model.encoder.cpu(), fe, "separation", speaker=model.speaker, arcface=model.arcface,
                       ctc=model.ctc, vq_ctc=model.vq_ctc, router=model.router,
                       segmentation=model.segmentation, separator=sep.cpu(), meta=meta)
    bundle.save(out_dir / "bundle")
    write_rows(fit.curves, out_dir / "curves.parquet")
    write_rows(fit.dev_rows, out_dir / "dev.parquet")
    write_json(out_dir / "summary.json", {
        "stage": "separation", "config": dataclasses.asdict(cfg), "steps": cfg.steps, "trainable": trainable,
        "conditioning": "speaker identity", "sha256_before": frozen, "sha256_after": after,
        "selection": {"metric": "si_sdri", "higher_is_better": True}, "best_step": fit.best_step, "best": fit.best,
        "final": fit.dev_rows[-1] if fit.dev_rows else None, "step_time_s": fit.step_time_s,
        "encode_s": encode_s, "train_mixtures": len(train.mixture), "train_pool": int(len(pool)),
        "dev_mixtures": len(dev.mixture), "device": dev_t.type,
        "parameters": int(sum(p.numel() for p in sep.parameters())),
    })
    return out_dir / "bundle"
