"""Routing / separation on TEST mixtures: speaker count, PIT accuracy, latent SI-SDR(i), by K.

For each mixture (:class:`echo.simulate.mixtures.MixtureSet`, all of one length):

- the evaluated model's encoder reads the mixture's log-mel; the router turns the latent into
  ``k_max`` slot sequences and existence probabilities; slots with probability >= ``threshold``
  are active, their number is the estimated K (the model is never told K);
- references: the FROZEN TARGET ENCODER's latent of each isolated source (exactly the routing
  stage's target, :mod:`echo.stages.routing`: with ``target: stage2`` a frozen copy of the
  stage-2 encoder, i.e. the encoder of the phonetic-stage bundle; with ``target: pretrain`` the
  pretraining ``encoder.pt``), ``Encoder(mels).features`` of the source's log-mel;
- the mixture baseline for SI-SDRi is the evaluated encoder's latent of the mixture, the output of
  a router that copies its input (what the routing stage's dev metric calls
  ``slot_cosine_mixture``);
- :func:`echo.metrics.separation.evaluate_separation` does the Hungarian matching by cosine,
  PIT accuracy and SI-SDR on the flattened (time x dims) sequences.

Corpus numbers: count accuracy (+ confusion matrix, rows true K), PIT accuracy = correct sources /
reference sources, mean SI-SDR / SI-SDRi over matched sources; each overall and by K, with 95%
bootstrap intervals over mixtures (ratios of per-mixture sums, so every source weighs the same).

Waveform separation (a model with the separation stage's speaker separator), two ways, each
scored by :func:`echo.metrics.separation.evaluate_waveforms` (Hungarian matching on waveform
SI-SDR, missed and extra sources counted):

- ``waveform`` (the blind figure): the deployable diarizer diarizes the mixture (K never given);
  each speaker it finds is rendered from its speaker embedding, as ``echo separate`` does; with
  no speaker found the whole mixture is one source;
- ``waveform_clean_activity`` (a diagnostic, never used to choose anything): each true source is
  rendered from its identity pooled where the CLEAN sources say it talks alone (the separation
  stage's training condition), so the gap between the two is what the blind identity costs.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from echo.config import check_fields, rule
from echo.errors import EchoError
from echo.evaluate import model_parts
from echo.features import FrontEnd
from echo.metrics.bootstrap import BootstrapConfig, bootstrap_ci
from echo.metrics.separation import evaluate_separation, evaluate_waveforms, speaker_count_accuracy
from echo.progress import Hook
from echo.simulate.mixtures import spread_indices
from echo.stages.separation import SeparationStageConfig, padded_identities, solo_identities, token_activity

__all__ = ["SeparationConfig", "score_mixture", "summarise_separation", "evaluate_routing"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeparationConfig:
    """Routing evaluation (params.yaml ``evaluate.separation``).

    Attributes:
        threshold: existence probability at or above which a slot is active, in (0, 1) (use the
            routing stage's ``exist_threshold``).
        max_mixtures: evaluate at most this many (evenly spread over the set); None = all.
        batch_size: mixtures per forward pass (>= 1).
        bootstrap: CI settings.
    """

    threshold: float = field(default=0.5, metadata=rule(gt=0, lt=1))
    max_mixtures: int | None = field(default=None, metadata=rule(ge=1))
    batch_size: int = field(default=16, metadata=rule(ge=1))
    bootstrap: BootstrapConfig = BootstrapConfig()

    def __post_init__(self):
        check_fields(self)


WAVE_BLOCKS = {"wave": "waveform", "wave_clean": "waveform_clean_activity"}  # row key -> summary key


def score_mixture(slots: np.ndarray, active: np.ndarray, references: np.ndarray, mixture: np.ndarray,
                  mix_id: str = "", waves: dict[str, tuple] | None = None) -> dict:
    """One mixture's row: matching, correctness and SI-SDR(i) of its matched sources.

    Args:
        slots: ``(S, T, D)`` slot latents; active: ``(S,)`` bool; references: ``(K, T, D)``;
        mixture: ``(T, D)`` the mixture's own latent (the SI-SDRi baseline).
        waves: ``{"wave" | "wave_clean": (estimates (S, N), rendered (S,) bool, clean sources
            (K, N), mixture (N,))}`` when the model has a separator: each scored by
            :func:`~echo.metrics.separation.evaluate_waveforms` (its own matching on waveform
            SI-SDR) under its key.

    Returns:
        ``{"mix_id", "k", "k_hat", "n_correct", "n_unmatched", "n_extra", "si_sdr", "si_sdri"}``
        (the last two: lists over matched sources, in reference order), plus each ``waves`` key
        (``k_hat``: the rendered sources).
    """
    r = evaluate_separation(slots, active, references, mixture)
    row = {"mix_id": mix_id, "k": r["k"], "k_hat": r["n_active"], "n_correct": r["n_correct"],
           "n_unmatched": r["n_unmatched"], "n_extra": r["n_extra"], "si_sdr": list(r["si_sdr"]),
           "si_sdri": list(r["si_sdri"])}
    for name, args in (waves or {}).items():
        w = evaluate_waveforms(*args)
        row[name] = {key: w[key] for key in ("n_unmatched", "n_extra", "si_sdr", "si_sdri")}
        row[name]["k_hat"] = int(np.sum(args[1]))
    return row


def _ci(num, den, b: BootstrapConfig) -> list[float]:
    num, den = np.asarray(num, float), np.asarray(den, float)
    if den.sum() <= 0:
        return [math.nan, math.nan]
    ci = bootstrap_ci((num, den), b.n_boot, b.seed, b.confidence)
    return [ci.low, ci.high]


def _ratio(num: np.ndarray, den: np.ndarray) -> float:
    return float(num.sum() / den.sum()) if den.sum() else math.nan


def _block(rows: list[dict], b: BootstrapConfig) -> dict:
    k = np.array([r["k"] for r in rows], float)
    hit = np.array([r["k"] == r["k_hat"] for r in rows], float)
    corr = np.array([r["n_correct"] for r in rows], float)
    sdr = np.array([sum(r["si_sdr"]) for r in rows], float)
    sdri = np.array([sum(r["si_sdri"]) for r in rows], float)
    nm = np.array([len(r["si_sdr"]) for r in rows], float)
    ones = np.ones_like(hit)
    out = {
        "n_mixtures": len(rows), "n_sources": int(k.sum()), "n_matched": int(nm.sum()),
        "n_unmatched": int(sum(r["n_unmatched"] for r in rows)), "n_extra": int(sum(r["n_extra"] for r in rows)),
        "count_accuracy": float(hit.mean()) if len(rows) else math.nan, "count_accuracy_ci": _ci(hit, ones, b),
        "pit_accuracy": _ratio(corr, k), "pit_accuracy_ci": _ci(corr, k, b),
        "si_sdr": _ratio(sdr, nm), "si_sdr_ci": _ci(sdr, nm, b),
        "si_sdri": _ratio(sdri, nm), "si_sdri_ci": _ci(sdri, nm, b),
    }
    for name, key in WAVE_BLOCKS.items():
        if not rows or name not in rows[0]:
            continue
        w = [r[name] for r in rows]
        wsdr = np.array([sum(x["si_sdr"]) for x in w], float)
        wsdri = np.array([sum(x["si_sdri"]) for x in w], float)
        wn = np.array([len(x["si_sdr"]) for x in w], float)
        whit = np.array([x["k_hat"] == r["k"] for x, r in zip(w, rows)], float)
        out[key] = {
            "n_matched": int(wn.sum()), "n_missed": int(sum(x["n_unmatched"] for x in w)),
            "n_extra": int(sum(x["n_extra"] for x in w)),
            "count_accuracy": float(whit.mean()), "count_accuracy_ci": _ci(whit, ones, b),
            "si_sdr": _ratio(wsdr, wn), "si_sdr_ci": _ci(wsdr, wn, b),
            "si_sdri": _ratio(wsdri, wn), "si_sdri_ci": _ci(wsdri, wn, b),
            # every reference source, a missed one scored as the mixture itself (0 dB improvement)
            "si_sdri_all_sources": _ratio(wsdri, k), "si_sdri_all_sources_ci": _ci(wsdri, k, b),
        }
    return out


def summarise_separation(rows: Sequence[dict], bootstrap: BootstrapConfig = BootstrapConfig()) -> dict:
    """Corpus numbers from :func:`score_mixture` rows (see the module docstring).

    Returns:
        ``_block`` keys overall (``count_accuracy``, ``pit_accuracy``, ``si_sdr``, ``si_sdri`` with
        ``*_ci``; counts of sources/matched/unmatched/extra), plus ``count`` (``labels``,
        ``confusion`` rows = true K), ``by_k`` (``{"2": block}``), ``multi_speaker`` (the block of
        every mixture with K >= 2) and ``per_mixture`` (rows with per-mixture mean SI-SDR/SI-SDRi).
        With waveform rows each block has ``waveform`` (and ``waveform_clean_activity``):
        matched/missed/extra counts, the rendered count's accuracy, waveform ``si_sdr``/``si_sdri``
        over matched sources and ``si_sdri_all_sources`` (a missed source scored as the mixture,
        0 dB). Rates are fractions, SI-SDR in dB.
    """
    rows = list(rows)
    out = _block(rows, bootstrap)
    with warnings.catch_warnings():  # sklearn warns when a single K occurs; the matrix is still right
        warnings.simplefilter("ignore", UserWarning)
        c = speaker_count_accuracy([r["k"] for r in rows], [r["k_hat"] for r in rows])
    out["count"] = {"labels": [int(v) for v in c["labels"]], "confusion": np.asarray(c["confusion"]).astype(int).tolist()}
    out["by_k"] = {str(k): _block([r for r in rows if r["k"] == k], bootstrap) for k in sorted({r["k"] for r in rows})}
    out["per_mixture"] = [
        {key: r[key] for key in ("mix_id", "k", "k_hat", "n_correct", "n_unmatched", "n_extra")}
        | {"si_sdr_mean": float(np.mean(r["si_sdr"])) if r["si_sdr"] else math.nan,
           "si_sdri_mean": float(np.mean(r["si_sdri"])) if r["si_sdri"] else math.nan}
        | ({"wave_k_hat": r["wave"]["k_hat"],
            "wave_si_sdri_mean": float(np.mean(r["wave"]["si_sdri"])) if r["wave"]["si_sdri"] else math.nan}
           if "wave" in r else {})
        for r in rows]
    # the "K = 2..4" figure: every mixture with more than one source
    out["multi_speaker"] = _block([r for r in rows if r["k"] >= 2], bootstrap)
    return out


def _render(separator, mixture: torch.Tensor, latent: torch.Tensor, identities: list[np.ndarray]):
    """Each mixture's speakers rendered from their identities ``(K_i, E)`` (K_i >= 1):
    ``(B, S, N)`` waveforms and the ``(B, S)`` rendered mask."""
    ident, render = padded_identities(identities, separator.config.identity_dim)
    dev = mixture.device
    waves = separator(mixture, ident.to(dev), latent, render.to(dev)).float().cpu().numpy()
    return waves, render.numpy()


def _blind_identities(diarizer, item) -> np.ndarray:
    """The speaker embeddings the diarizer finds in one mixture; one zero identity (the whole
    mixture is one source) when it finds nobody."""
    out = diarizer(np.asarray(item.mixture, np.float32), uri=str(item.mix_id))
    emb = np.asarray(out.speaker_embeddings, np.float32)
    return emb if len(emb) else np.zeros((1, diarizer.model.separator.config.identity_dim), np.float32)


@torch.no_grad()
def evaluate_routing(model: Any, mixtures, target_encoder: torch.nn.Module | None = None,
                     config: SeparationConfig = SeparationConfig(), frontend: FrontEnd | None = None,
                     hook: Hook | None = None, figure: str | None = None, diarizer: Any = None) -> dict:
    """Route every test mixture and score it (see the module docstring for the exact targets).

    Args:
        model: the routing-stage bundle (encoder + router), or :class:`~echo.evaluate.ModelParts`.
        mixtures: TEST :class:`~echo.simulate.mixtures.MixtureSet`, or a list of items with
            ``mix_id``, ``mixture`` ``(n,)`` and ``sources`` ``(K, n)``.
        target_encoder: the frozen target encoder the routing stage regressed onto (stage-2
            bundle's encoder, or the pretraining ``encoder.pt``, per the bundle's
            ``meta["routing_target"]``). None: the evaluated encoder itself (exact only when the
            routing stage kept the encoder frozen; logged).
        config: :class:`SeparationConfig`.
        frontend: log-mel front-end (default: the bundle's, else the default one).
        hook: progress callback ``hook("routing", completed=batches done, total=batches)``.
        figure: with a separator and a diarizer, write the spectrograms of the first two-source
            mixture (mixture, blindly separated, clean) to this PNG.
        diarizer: the deployable :class:`~echo.diarization.diarizer.Diarizer` (its model has the
            separator): gives the blind ``waveform`` block. Without it only
            ``waveform_clean_activity`` is scored.

    Returns:
        :func:`summarise_separation`'s dict plus ``threshold``, ``wall_s`` and ``target``.
    """
    parts = model_parts(model)
    if parts.router is None:
        raise EchoError("evaluate separation: the model has no router; expected the routing-stage bundle")
    separator = parts.separator
    if separator is not None and parts.speaker is None:
        raise EchoError("evaluate separation: the model has a separator but no speaker head to give identities")
    frontend = frontend or getattr(model, "frontend", None) or FrontEnd()
    target = target_encoder if target_encoder is not None else parts.encoder
    if target_encoder is None:
        log.warning("evaluate separation: no target encoder given; using the evaluated encoder as the reference")
    target.eval()
    # the separation stage's activity settings (how its training identities were pooled)
    stage = SeparationStageConfig(**{k: v for k, v in getattr(model, "meta", {}).get("stages", {}).get(
        "separation", {}).get("config", {}).items() if k in ("active_rms", "min_solo_tokens")})
    dev = parts.device
    n = len(mixtures)
    idx = spread_indices(n, config.max_mixtures).tolist()
    t0 = time.perf_counter()
    rows = []
    figure_item = None
    starts = range(0, len(idx), config.batch_size)
    for done, a in enumerate(starts, 1):
        items = [mixtures[i] for i in idx[a:a + config.batch_size]]
        mix = torch.from_numpy(np.stack([frontend.compute(it.mixture) for it in items])).to(dev)
        srcs = torch.from_numpy(np.stack([frontend.compute(s) for it in items for s in it.sources])).to(dev)
        out = parts.encoder(mix)
        routed = parts.router(out.features, out.mask)
        active = (torch.sigmoid(routed.exist_logits.float()) >= config.threshold).cpu().numpy()
        slots = routed.slots.float().cpu().numpy()
        mix_lat = out.features.float().cpu().numpy()
        refs = target(srcs).features.float().cpu().numpy()
        waves: list[dict] = [{} for _ in items]
        if separator is not None:
            mix_wave = torch.from_numpy(np.stack([it.mixture for it in items])).to(dev)
            patch = parts.encoder.cfg.patch_frames * frontend.hop_length
            clean = [solo_identities(parts.speaker, out.features[j],
                                     token_activity(it.sources, patch, out.features.shape[1], stage.active_rms),
                                     stage.min_solo_tokens).numpy() for j, it in enumerate(items)]
            est, render = _render(separator, mix_wave, out.features, clean)
            for j, it in enumerate(items):
                waves[j]["wave_clean"] = (est[j], render[j], it.sources, it.mixture)
            if diarizer is not None:
                est, render = _render(separator, mix_wave, out.features, [_blind_identities(diarizer, it) for it in items])
                for j, it in enumerate(items):
                    waves[j]["wave"] = (est[j], render[j], it.sources, it.mixture)
                if figure_item is None:
                    figure_item = next(((it, est[j], render[j]) for j, it in enumerate(items) if len(it.sources) == 2),
                                       None)
        first = 0
        for j, it in enumerate(items):
            k = len(it.sources)
            rows.append(score_mixture(slots[j], active[j], refs[first:first + k], mix_lat[j], str(it.mix_id),
                                      waves[j] or None))
            first += k
        if hook is not None:
            hook("routing", completed=done, total=len(starts))
    summary = summarise_separation(rows, config.bootstrap)
    summary.update(threshold=config.threshold, wall_s=time.perf_counter() - t0,
                   target="given" if target_encoder is not None else "evaluated encoder")
    if figure is not None and figure_item is not None:
        from echo.evaluate.figures import plot_separation

        it, est, render = figure_item
        plot_separation(it.mixture, est[render], it.sources, figure, frontend, title=str(it.mix_id))
        summary["figure_mixture"] = str(it.mix_id)
    log.info("routing: count acc %.3f, PIT %.3f, SI-SDR %.2f dB, SI-SDRi %.2f dB on %d mixtures",
             summary["count_accuracy"], summary["pit_accuracy"], summary["si_sdr"], summary["si_sdri"], len(rows))
    for key in WAVE_BLOCKS.values():
        if key in summary:
            log.info("separation (%s): waveform SI-SDRi %.2f dB over %d matched sources (%d missed, %d extra)", key,
                     summary[key]["si_sdri"], summary[key]["n_matched"], summary[key]["n_missed"],
                     summary[key]["n_extra"])
    return summary
