"""Spread across training seeds: the diarization chain re-run with other seeds (params ``seeds``).

A single run's bootstrap CI resamples test recordings; it says nothing about how much the numbers
move when the same recipe is trained again with another seed. This module measures that for the
part of the DAG that produces the diarization numbers and fits the default run's time budget:

- the encoder and every head before the segmentation stage (pretraining, speaker, phonetic and
  routing stages) are the primary run's, frozen: three seeds of those stages take about three times
  the default run's 40 minutes on 2 cores, so they are not varied here;
- per seed in ``seeds.diarization`` other than ``stages.segmentation.seed`` (the published model's,
  whose numbers are ``results/diarization.json``): the segmentation head is trained with that seed
  (:func:`~echo.stages.segmentation.fit_segmentation_head`, the same recipe and dev selection), the
  clustering is tuned on DEV with the same grid and rule (:func:`~echo.evaluate.diarize.tune_on_dev`),
  and the TEST conversations are diarized blind (:func:`~echo.evaluate.diarize.evaluate_conditions`);
- the PLDA is the primary run's: it is fitted on embeddings of reference single-speaker regions of
  the train conversations (:func:`~echo.diarization.backend.fit_backend`), which no segmentation seed
  changes.

Every conversation is encoded once for all seeds (the encoder is frozen), and the cached blocks are
exactly those :meth:`~echo.diarization.diarizer.Diarizer.prepare` encodes, so each seed's
diarization is the one the deployable diarizer would compute with that head.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from echo.config import check_fields, need, rule
from echo.errors import ConfigError, EchoError

__all__ = ["SeedsConfig", "check_primary_seed", "diarization_seed_runs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeedsConfig:
    """params.yaml ``seeds``: the training seeds whose spread the tables show.

    Attributes:
        diarization: seeds of the diarization chain (segmentation stage, dev tuning, blind test
            DER) on the primary run's frozen encoder and PLDA; distinct, and including
            ``stages.segmentation.seed`` (the published model's). One seed = no spread measured.
    """

    SECTION = "seeds"
    diarization: tuple[int, ...] = field(default=(0, 1, 2), metadata=rule(ge=0, nonempty=True))

    def __post_init__(self):
        object.__setattr__(self, "diarization", tuple(int(s) for s in self.diarization))  # YAML gives lists
        check_fields(self)
        need(self, len(set(self.diarization)) == len(self.diarization), "diarization", "distinct seeds",
             list(self.diarization))


def check_primary_seed(seeds: SeedsConfig, stage, source: str = "params.yaml") -> None:
    """The published model's seed (``stages.segmentation.seed``) must be one of ``seeds.diarization``
    (its run is the first of the spread). Checked with the params, before any job runs.

    Raises:
        ConfigError: one line naming both keys.
    """
    primary = stage.seed
    if primary not in seeds.diarization:
        raise ConfigError(f"{source}: seeds.diarization: expected a list that includes stages.segmentation.seed "
                          f"({primary}), got {list(seeds.diarization)}")


def _encode(diarizer, conversations, hook: Callable | None, what: str) -> dict:
    """rec_id -> (blocks of latents as the diarizer encodes them, reference activity of their concatenation)."""
    from echo.diarization.diarizer import reference_activity
    from echo.inference import iter_latents

    cfg, enc = diarizer.config, diarizer.parts.encoder
    chunk_tok, ctx_tok = round(cfg.chunk_s / diarizer.token_s), round(cfg.context_s / diarizer.token_s)
    out = {}
    for i in range(len(conversations)):
        it = conversations[i]
        blocks = [lat for _, lat in iter_latents(enc, diarizer.frontend, it.audio, chunk_tok, ctx_tok)]
        act, _ = reference_activity(it.annotation, sum(len(b) for b in blocks), diarizer.token_s)
        out[it.rec_id] = (blocks, act)
        if hook is not None:
            hook(f"encode {what} conversations", completed=i + 1, total=len(conversations))
    return out


def _cached_diarizer(model, plda, config, cache: dict):
    """A :class:`~echo.diarization.diarizer.Diarizer` whose ``prepare`` reads the cached blocks."""
    from echo.diarization.diarizer import Diarizer

    class CachedDiarizer(Diarizer):
        def prepare(self, wave, uri, hook=None):
            return self.prepare_latents(cache[uri][0], uri, len(wave) / self.frontend.sample_rate)

    return CachedDiarizer(model, plda, config)


def diarization_seed_runs(diarizer, seeds: SeedsConfig, stage, base, tune, bootstrap, train, dev, test,
                          hook: Callable | None = None, device: str = "cpu") -> dict:
    """Re-train, re-tune and re-score the diarization chain for every seed but the primary one.

    Args:
        diarizer: the primary run's deployable :class:`~echo.diarization.diarizer.Diarizer` (``models/echo``):
            its encoder, heads and PLDA are kept; its segmentation head and tuned settings are not.
        seeds: :class:`SeedsConfig`; stage: ``stages.segmentation``
            (:class:`~echo.stages.segmentation.SegmentationStageConfig`, its ``seed`` is the primary one).
        base: ``evaluation.diarizer`` (the settings tuning starts from); tune: ``evaluation.tune``;
        bootstrap: ``evaluation.bootstrap``.
        train, dev, test: the TRAIN, DEV and TEST :class:`~echo.simulate.conversations.ConversationSet`.
        hook: progress callback ``hook(what, completed=, total=)``.

    Returns:
        ``{"seeds", "primary_seed", "runs": [{"seed", "segmentation": {"best_step", "dev"}, "selected",
        "dev_der", "blind"}, ...], "encode_s", "wall_s"}``; ``blind`` is the
        :func:`~echo.evaluate.diarize.evaluate_conditions` summary, as in ``results/diarization.json``.
    """
    from echo.diarization.backend import conversation_split
    from echo.evaluate.diarize import evaluate_conditions, tune_on_dev
    from echo.models.bundle import EchoModel
    from echo.stages.segmentation import fit_segmentation_head

    check_primary_seed(seeds, stage)
    for sset, want in ((train, "train"), (dev, "dev"), (test, "test")):
        got = conversation_split(sset)
        if got is not None and got != want:
            raise EchoError(f"seed runs: expected {want} conversations, got {got}")
    extra = [s for s in seeds.diarization if s != stage.seed]
    out = {"seeds": list(seeds.diarization), "primary_seed": stage.seed, "runs": [], "encode_s": 0.0}
    t0 = time.perf_counter()
    if not extra:
        out["wall_s"] = time.perf_counter() - t0
        return out
    model = diarizer.model
    # the blocks the diarizer encodes with the settings tuning starts from (chunk_s and context_s are never tuned)
    enc_view = _cached_diarizer(model, diarizer.plda, base, {})
    cache = {}
    for sset, what in ((train, "train"), (dev, "dev"), (test, "test")):
        cache.update(_encode(enc_view, sset, hook, what))
    out["encode_s"] = time.perf_counter() - t0
    log.info("seed runs: encoded %d conversations once for seeds %s in %.0f s", len(cache), extra, out["encode_s"])

    def items(sset):
        return [(np.concatenate(cache[sset[i].rec_id][0]), cache[sset[i].rec_id][1]) for i in range(len(sset))]

    train_items, dev_items = items(train), items(dev)
    for n, seed in enumerate(extra):
        cfg = dataclasses.replace(stage, seed=seed)
        head, fit = fit_segmentation_head(cfg, train_items, dev_items, enc_view.token_s, model.encoder.cfg.dim,
                                          device=device)
        seeded = EchoModel(model.encoder, model.frontend, model.stage, speaker=model.speaker, arcface=model.arcface,
                           ctc=model.ctc, vq_ctc=model.vq_ctc, router=model.router, segmentation=head.eval(),
                           meta=model.meta)
        best, rows = tune_on_dev(_cached_diarizer(seeded, diarizer.plda, base, cache), dev, tune)
        ((blind, _),) = evaluate_conditions(_cached_diarizer(seeded, diarizer.plda, best, cache), test, (False,),
                                            bootstrap=bootstrap)
        sel = next(r for r in rows if r["selected"])
        out["runs"].append({"seed": seed, "segmentation": {"best_step": fit.best_step, "dev": fit.best},
                            "selected": {k: sel[k] for k in ("Fa", "Fb", "loopP", "ahc_threshold")},
                            "dev_der": sel["der"], "blind": blind})
        log.info("seed runs: seed %d: blind test DER %.4f (dev DER %.4f)", seed, blind["primary"]["der"],
                 out["runs"][-1]["dev_der"])
        if hook is not None:
            hook("seed runs", completed=n + 1, total=len(extra))
    out["wall_s"] = time.perf_counter() - t0
    return out
