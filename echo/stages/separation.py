"""Stage 5, separation: the slot separator that renders the routing slots as waveforms.

The separator (:mod:`echo.heads.separator`) learns, from the TRAINING mixtures (train speakers
only), to turn each routing slot into its source's waveform: the mixture's STFT masked and
inverted, the mask predicted from the slot latent, the mixture latent and the mixture spectrum.
The encoder and the router are frozen: this stage adds a head and changes no latent and no slot,
so every ability measured after the routing stage holds by construction (the summary records the
encoder's and the router's hashes before and after). Their outputs on every mixture are computed
once, so the head trains on cached slots with no encoder in the loop.

Which source a slot is trained to render is the routing stage's own matching: the Hungarian
assignment of slots to sources by the cosine between each slot and the source's latent (the
frozen encoder on the isolated source), so slot ``k``'s waveform is the speaker slot ``k`` stands
for, and a long recording's chunks can be stitched by the speaker embedding of each slot. The
slots rendered at training are the matched ones plus the ones the router declares active, as at
test (an over-count's extra slot must learn to take little); the loss is the negative SI-SDR of
each matched source (``min_reference_rms`` skips crops where a source is silent).

Model selection: the dev mixtures (dev speakers), whole, rendered from the router's active slots
exactly as the evaluation does; the selected step has the highest dev waveform SI-SDRi over the
matched sources (:func:`echo.metrics.separation.evaluate_waveforms`).
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
from echo.heads.router import rendered_slots
from echo.heads.separator import SeparatorConfig, SlotSeparator, si_sdr_loss
from echo.io import write_json
from echo.metrics.separation import evaluate_waveforms, pit_match
from echo.simulate.mixtures import spread_indices
from echo.train.schedules import WarmupCosine
from echo.train.trainer import fit_head, module_sha, param_groups, write_rows

__all__ = ["SeparationStageConfig", "RoutedMixtures", "route_mixtures", "train_separation_stage"]

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
        max_sdr_db: the loss stops rewarding a source above this SI-SDR (> 0), so easy sources do
            not dominate the batch.
        max_mixtures: use at most this many training mixtures, evenly spread (0 = all).
        dev_max_mixtures: use at most this many dev mixtures (0 = all).
        seed: seed of the initialisation and of the batch draws.
        separator: :class:`SeparatorConfig` (``d_model``, ``patch_frames`` and the STFT come from
            the encoder and its front-end).
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
    max_sdr_db: float = field(default=30.0, metadata=rule(gt=0, finite=True))
    max_mixtures: int = field(default=0, metadata=rule(ge=0))
    dev_max_mixtures: int = field(default=0, metadata=rule(ge=0))
    seed: int = 0
    separator: SeparatorConfig = field(default_factory=SeparatorConfig)

    def __post_init__(self):
        check_fields(self)
        need(self, self.warmup_steps <= self.steps, "warmup_steps", f"an integer in [0, steps={self.steps}]",
             self.warmup_steps)


class RoutedMixtures(NamedTuple):
    """A mixture set as the frozen routing model sees it (all mixtures of one length).

    ``mixture`` ``(M, N)`` and ``sources`` (list of ``(K_i, N)``) waveforms; ``slots`` ``(M, S, T, D)``
    float16; ``exist`` ``(M, S)`` existence probabilities; ``latent`` ``(M, T, D)`` float16 mixture
    latents; ``slot_of`` (list of ``(K_i,)``: the slot the routing matching gives each source).
    """

    mixture: np.ndarray
    sources: list[np.ndarray]
    slots: torch.Tensor
    exist: torch.Tensor
    latent: torch.Tensor
    slot_of: list[np.ndarray]
    mix_ids: list[str]
    speakers: list[str]


@torch.no_grad()
def route_mixtures(model, mixtures, max_mixtures: int = 0, batch_size: int = 16,
                   hook: Callable | None = None) -> RoutedMixtures:
    """Run the frozen encoder and router on every mixture (and the encoder on every source).

    Args:
        model: the routing-stage :class:`~echo.models.bundle.EchoModel`.
        mixtures: a :class:`~echo.simulate.mixtures.MixtureSet`.
        max_mixtures: at most this many, evenly spread (0 = all).
    """
    n = len(mixtures)
    if n == 0:
        raise EchoError(f"{getattr(mixtures, 'root', 'mixtures')}: no mixtures")
    idx = spread_indices(n, max_mixtures)
    fe, enc = model.frontend, model.encoder
    mix, srcs, slots, exist, lat, slot_of, ids, speakers = [], [], [], [], [], [], [], set()
    for a in range(0, len(idx), batch_size):
        items = [mixtures[int(i)] for i in idx[a:a + batch_size]]
        if len({len(it.mixture) for it in items} | {len(mix[0]) if mix else len(items[0].mixture)}) > 1:
            raise EchoError(f"{getattr(mixtures, 'root', 'mixtures')}: mixtures of different lengths; expected one "
                            f"window length per set")
        out = model.latents(torch.from_numpy(np.stack([fe.compute(it.mixture) for it in items])))
        r = model.route(out.features, out.mask)
        refs = model.latents(torch.from_numpy(np.stack([fe.compute(s) for it in items for s in it.sources])))
        refs = refs.features.float().cpu().numpy()
        first = 0
        for j, it in enumerate(items):
            k = len(it.sources)
            slots_j = r.slots[j].float().cpu().numpy()  # every slot may take a source (k <= k_max)
            so = pit_match(slots_j, np.ones(len(slots_j), bool), refs[first:first + k]).slot_of
            first += k
            mix.append(it.mixture.astype(np.float32))
            srcs.append(it.sources.astype(np.float32))
            slot_of.append(so)
            ids.append(str(it.mix_id))
            speakers.update(it.speakers)
        slots.append(r.slots.to(torch.float16).cpu())
        exist.append(r.exist_prob.float().cpu())
        lat.append(out.features.to(torch.float16).cpu())
        if hook is not None:
            hook("route", completed=min(len(idx), a + batch_size), total=len(idx))
    return RoutedMixtures(np.stack(mix), srcs, torch.cat(slots), torch.cat(exist), torch.cat(lat), slot_of, ids,
                          sorted(speakers))


def _rendered(data: RoutedMixtures, rows, threshold: float, with_matched: bool) -> torch.Tensor:
    """Bool ``(B, S)`` slots to render: the router's active ones (the most probable one if none),
    plus the matched ones at training."""
    act = rendered_slots(data.exist[rows] >= threshold, data.exist[rows])
    if with_matched:
        for i, r in enumerate(rows):
            act[i, data.slot_of[r][data.slot_of[r] >= 0]] = True
    return act


def _train_batch(data: RoutedMixtures, rows: np.ndarray, crop_tokens: int, patch_samples: int, threshold: float,
                 min_rms: float, rng: np.random.Generator, device: torch.device):
    t = data.slots.shape[2]
    n_tok = min(t, data.mixture.shape[1] // patch_samples)  # whole tokens inside the waveform
    crop = min(crop_tokens, n_tok)
    mix, slots, lat, est_idx, refs = [], [], [], [], []
    for i, r in enumerate(rows):
        t0 = int(rng.integers(0, n_tok - crop + 1))
        a, b = t0 * patch_samples, (t0 + crop) * patch_samples
        mix.append(data.mixture[r, a:b])
        slots.append(data.slots[r, :, t0:t0 + crop])
        lat.append(data.latent[r, t0:t0 + crop])
        for q, s in enumerate(data.slot_of[r]):
            ref = data.sources[r][q, a:b]
            if s >= 0 and float(np.sqrt(np.mean(ref ** 2))) >= min_rms:
                est_idx.append((i, int(s)))
                refs.append(ref)
    active = _rendered(data, rows, threshold, with_matched=True)
    return (torch.from_numpy(np.stack(mix)).to(device), torch.stack(slots).float().to(device),
            torch.stack(lat).float().to(device), active.to(device), est_idx,
            torch.from_numpy(np.stack(refs)).to(device) if refs else None)


@torch.no_grad()
def evaluate_dev(separator: SlotSeparator, data: RoutedMixtures, threshold: float, device: torch.device,
                 batch_size: int = 16) -> dict[str, float]:
    """Dev waveform separation as the evaluation scores it: SI-SDRi over matched sources, by K too."""
    separator.eval()
    per_k: dict[int, list[float]] = {}
    missed = extra = 0
    for a in range(0, len(data.mixture), batch_size):
        rows = np.arange(a, min(len(data.mixture), a + batch_size))
        act = _rendered(data, rows, threshold, with_matched=False)
        waves = separator(torch.from_numpy(data.mixture[rows]).to(device), data.slots[rows].float().to(device),
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
                           out_dir: str | Path, log_metrics: Callable | None = None, device: str = "cpu",
                           threshold: float | None = None) -> Path:
    """Train the slot separator on the frozen routing model; write ``bundle/`` (the input bundle plus
    the separator, stage ``separation``), ``curves.parquet``, ``dev.parquet``, ``summary.json``.

    Args:
        cfg: stage settings.
        bundle_dir: the routing-stage bundle.
        train_mixtures / dev_mixtures: :class:`~echo.simulate.mixtures.MixtureSet` of TRAIN / DEV speakers.
        out_dir: stage directory.
        log_metrics: ``log_metrics(metrics, step)`` callback.
        device: ``"cpu"`` or ``"cuda"``.
        threshold: existence probability of an active slot (default: the routing stage's
            ``exist_threshold`` recorded in the bundle).

    Raises:
        EchoError: the bundle has no router, or the dev and train mixtures share a speaker.
    """
    from echo.models.bundle import EchoModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev_t = torch.device(device)
    model = EchoModel.load(bundle_dir, map_location=dev_t)
    if model.router is None:
        raise EchoError(f"{bundle_dir}: no router; the separation stage needs the routing-stage bundle")
    if threshold is None:
        threshold = float(model.meta.get("stages", {}).get("routing", {}).get("config", {}).get("exist_threshold", 0.5))
    frozen = {"encoder": module_sha(model.encoder), "router": module_sha(model.router)}
    t0 = time.perf_counter()
    train = route_mixtures(model, train_mixtures, cfg.max_mixtures)
    dev = route_mixtures(model, dev_mixtures, cfg.dev_max_mixtures)
    shared = sorted(set(train.speakers) & set(dev.speakers))
    if shared:  # model selection must not see training speakers
        raise EchoError(f"separation stage: dev speaker {shared[0]!r} is also in the train mixtures; expected disjoint splits")
    route_s = time.perf_counter() - t0
    log.info("separation stage: routed %d train / %d dev mixtures in %.0f s", len(train.mixture), len(dev.mixture), route_s)

    fe, enc = model.frontend, model.encoder
    scfg = dataclasses.replace(cfg.separator, d_model=enc.cfg.dim, patch_frames=enc.cfg.patch_frames,
                               n_fft=fe.n_fft, win_length=fe.win_length, hop_length=fe.hop_length)
    torch.manual_seed(cfg.seed)
    sep = SlotSeparator(scfg).to(dev_t)
    patch_samples = enc.cfg.patch_frames * fe.hop_length
    crop_tokens = max(1, round(cfg.crop_s * fe.sample_rate / patch_samples))
    # mixtures with one source and one rendered slot teach nothing (the mask is 1): drawn from the rest
    pool = np.array([i for i in range(len(train.mixture))
                     if int(_rendered(train, [i], threshold, with_matched=True).sum()) >= 2])
    if len(pool) == 0:
        raise EchoError("separation stage: no training mixture renders two or more slots (sources or active "
                        "router slots); nothing to separate")
    opt = torch.optim.AdamW(param_groups(sep.named_parameters(), cfg.weight_decay), lr=cfg.lr)
    sched = WarmupCosine(0.0, cfg.lr, cfg.lr * cfg.final_lr_ratio, cfg.warmup_steps, cfg.steps)
    rng = np.random.default_rng(cfg.seed)

    def loss_of_step(step: int) -> torch.Tensor | None:
        rows = rng.choice(pool, size=cfg.batch_size)
        mix, slots, lat, active, est_idx, refs = _train_batch(train, rows, crop_tokens, patch_samples, threshold,
                                                              cfg.min_reference_rms, rng, dev_t)
        if refs is None:  # every source of the draw silent in its crop
            return None
        waves = sep(mix, slots, lat, active)
        est = torch.stack([waves[i, s] for i, s in est_idx])
        return si_sdr_loss(est, refs).clamp(min=-cfg.max_sdr_db).mean()

    def evaluate(step: int) -> dict:
        met = evaluate_dev(sep, dev, threshold, dev_t)
        log.info("separation stage: step %d dev SI-SDRi %.2f dB (%s)", step, met["si_sdri"],
                 ", ".join(f"{k} {v:.2f}" for k, v in met.items() if k.startswith("si_sdri_k")))
        return met

    fit = fit_head(sep, opt, sched, cfg.steps, cfg.grad_clip, loss_of_step, evaluate, eval_every=cfg.eval_every,
                   log_every=cfg.log_every, where=cfg.SECTION, metric="si_sdri", higher_is_better=True,
                   log_metrics=log_metrics)
    after = {"encoder": module_sha(model.encoder), "router": module_sha(model.router)}
    if after != frozen:  # the stage must not touch the shared latent or the slots
        raise EchoError("separation stage: the encoder or the router changed during training")
    meta = dict(model.meta)
    stages = dict(meta.get("stages", {}))
    stages["separation"] = {"config": dataclasses.asdict(cfg), "selected_step": fit.best_step, "dev": fit.best,
                            "trainable": "separator only (encoder and router frozen)", "threshold": threshold,
                            "sha256": frozen}
    meta["stages"] = stages
    bundle = EchoModel(model.encoder.cpu(), fe, "separation", speaker=model.speaker, arcface=model.arcface,
                       ctc=model.ctc, vq_ctc=model.vq_ctc, router=model.router.cpu(),
                       segmentation=model.segmentation, separator=sep.cpu(), meta=meta)
    bundle.save(out_dir / "bundle")
    write_rows(fit.curves, out_dir / "curves.parquet")
    write_rows(fit.dev_rows, out_dir / "dev.parquet")
    write_json(out_dir / "summary.json", {
        "stage": "separation", "config": dataclasses.asdict(cfg), "steps": cfg.steps,
        "trainable": "separator only (encoder and router frozen)", "sha256_before": frozen, "sha256_after": after,
        "selection": {"metric": "si_sdri", "higher_is_better": True}, "best_step": fit.best_step, "best": fit.best,
        "final": fit.dev_rows[-1] if fit.dev_rows else None, "step_time_s": fit.step_time_s,
        "route_s": route_s, "threshold": threshold, "train_mixtures": len(train.mixture),
        "train_pool": int(len(pool)), "dev_mixtures": len(dev.mixture), "device": dev_t.type,
        "parameters": int(sum(p.numel() for p in sep.parameters())),
    })
    return out_dir / "bundle"
