"""Spread across training seeds: the diarization chain re-run with other seeds (params ``seeds``).

A single run's bootstrap CI resamples test recordings; it says nothing about how much the numbers
move when the same recipe is trained again with another seed. This module measures that for the
part of the DAG that produces the diarization numbers and fits the default run's time budget:

- the encoder and every head before the segmentation stage (pretraining, speaker, phonetic and
  routing stages) are the primary run's, frozen: two more seeds of the stages would add about 45
  minutes to the default run's 40 on 2 cores, so they are not varied here;
- per seed in ``seeds.diarization`` other than ``stages.segmentation.seed`` (the published model's,
  whose numbers are ``results/diarization.json``): the segmentation stage trains a head with that seed
  beside the published one, on the same encoded conversations
  (:func:`~echo.stages.segmentation.fit_segmentation_head`, the same recipe and dev selection); here
  the clustering is tuned on DEV with the same grid and rule (:func:`~echo.evaluate.diarize.tune_on_dev`),
  and the TEST conversations are diarized blind (:func:`~echo.evaluate.diarize.evaluate_conditions`);
- the PLDA is the primary run's: it is fitted on embeddings of reference single-speaker regions of
  the train conversations (:func:`~echo.diarization.backend.fit_backend`), which no segmentation seed
  changes.

Each dev and test conversation is encoded once for all seeds (the encoder is frozen), and the cached
blocks are exactly those :meth:`~echo.diarization.diarizer.Diarizer.prepare` encodes, so each seed's
diarization is the one the deployable diarizer would compute with that head.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from echo.config import check_fields, need, rule
from echo.diarization.diarizer import Diarizer
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
    """rec_id -> the blocks of latents the diarizer's ``prepare`` encodes for that conversation."""
    out = {}
    for i in range(len(conversations)):
        it = conversations[i]
        out[it.rec_id] = list(diarizer.latent_blocks(it.audio))
        if hook is not None:
            hook(f"encode {what} conversations", completed=i + 1, total=len(conversations))
    return out


class _CachedDiarizer(Diarizer):
    """A :class:`~echo.diarization.diarizer.Diarizer` whose ``prepare`` reads the recording's cached
    :meth:`~echo.diarization.diarizer.Diarizer.latent_blocks` (rec_id -> blocks) instead of encoding."""

    def __init__(self, model, plda, config, cache: dict):
        super().__init__(model, plda, config)
        self.cache = cache

    def prepare(self, wave, uri, hook=None):
        return self.prepare_latents(self.cache[uri], uri, len(wave) / self.frontend.sample_rate)


def diarization_seed_runs(diarizer, segmentation_dir, base, tune, bootstrap, dev, test,
                          hook: Callable | None = None) -> dict:
    """Tune and score the diarization chain for every seed but the published one.

    Args:
        diarizer: the published run's deployable :class:`~echo.diarization.diarizer.Diarizer` (``models/echo``):
            its encoder, heads and PLDA are kept; its segmentation head and tuned settings are not.
        segmentation_dir: the segmentation stage's output (``models/stages/segmentation``): its
            ``summary.json`` (the published seed, the other seeds' dev selection) and ``seeds/seed<N>.pt``,
            the heads the stage trained with the other seeds on the same encoded conversations.
        base: ``evaluation.diarizer`` (the settings tuning starts from); tune: ``evaluation.tune``;
        bootstrap: ``evaluation.bootstrap``.
        dev, test: the DEV and TEST :class:`~echo.simulate.conversations.ConversationSet`.
        hook: progress callback ``hook(what, completed=, total=)``.

    Returns:
        ``{"seeds", "primary_seed", "runs": [{"seed", "segmentation": {"best_step", "dev"}, "selected",
        "dev_der", "blind"}, ...], "encode_s", "wall_s"}``; ``blind`` is the
        :func:`~echo.evaluate.diarize.evaluate_conditions` summary, as in ``results/diarization.json``.

    Raises:
        EchoError: a split mismatch, or a seed head the summary lists is missing.
    """
    from pathlib import Path

    from echo.diarization.backend import conversation_split
    from echo.evaluate.diarize import evaluate_conditions, tune_on_dev
    from echo.heads.segmentation import SegmentationHead
    from echo.io import read_json
    from echo.models.bundle import EchoModel

    for sset, want in ((dev, "dev"), (test, "test")):
        got = conversation_split(sset)
        if got is not None and got != want:
            raise EchoError(f"seed runs: expected {want} conversations, got {got}")
    segmentation_dir = Path(segmentation_dir)
    summary = read_json(segmentation_dir / "summary.json")
    extra = summary.get("seeds", [])
    primary = summary["config"]["seed"]
    out = {"seeds": [primary] + [r["seed"] for r in extra], "primary_seed": primary, "runs": [], "encode_s": 0.0}
    t0 = time.perf_counter()
    if not extra:
        out["wall_s"] = time.perf_counter() - t0
        return out
    heads = {r["seed"]: segmentation_dir / "seeds" / f"seed{r['seed']}.pt" for r in extra}
    for seed, path in heads.items():  # before any encoding
        if not path.is_file():
            raise EchoError(f"{path}: missing (the segmentation stage's summary lists seed {seed})")
    model = diarizer.model
    # the blocks the diarizer encodes with the settings tuning starts from (chunk_s and context_s are never tuned)
    encoder = Diarizer(model, diarizer.plda, base)
    cache = {}
    for sset, what in ((dev, "dev"), (test, "test")):
        cache.update(_encode(encoder, sset, hook, what))
    out["encode_s"] = time.perf_counter() - t0
    log.info("seed runs: encoded %d conversations once for seeds %s in %.0f s", len(cache),
             [r["seed"] for r in extra], out["encode_s"])
    for n, rep in enumerate(extra):
        seeded = EchoModel(model.encoder, model.frontend, model.stage, speaker=model.speaker, arcface=model.arcface,
                           ctc=model.ctc, vq_ctc=model.vq_ctc, router=model.router,
                           segmentation=SegmentationHead.load(heads[rep["seed"]]), meta=model.meta)
        best, rows = tune_on_dev(_CachedDiarizer(seeded, diarizer.plda, base, cache), dev, tune)
        ((blind, _),) = evaluate_conditions(_CachedDiarizer(seeded, diarizer.plda, best, cache), test, (False,),
                                            bootstrap=bootstrap)
        sel = next(r for r in rows if r["selected"])
        out["runs"].append({"seed": rep["seed"], "segmentation": {"best_step": rep["best_step"], "dev": rep["best"]},
                            "selected": {k: sel[k] for k in ("Fa", "Fb", "loopP", "ahc_threshold")},
                            "dev_der": sel["der"], "blind": blind})
        log.info("seed runs: seed %d: blind test DER %.4f (dev DER %.4f)", rep["seed"], blind["primary"]["der"], sel["der"])
        if hook is not None:
            hook("seed runs", completed=n + 1, total=len(extra))
    out["wall_s"] = time.perf_counter() - t0
    return out
