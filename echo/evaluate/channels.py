"""Channel robustness: blind DER of the SAME test conversations through each transmission channel.

The test conversations are 16 kHz full band; people's recordings arrive through phone lines,
codecs and clipping input stages. Each condition of ``evaluation.channels.conditions`` (names of
:data:`echo.simulate.channels.CONDITIONS`) passes every test conversation through that channel
(:func:`~echo.simulate.channels.apply_channel`: same length, same alignment, so the reference RTTM
still holds) and diarizes it blind with the published, dev-tuned diarizer. Nothing is re-tuned per
condition: a user's file does not say which channel it came through.

Each condition reports what the main table reports (DER with its CI, components, count accuracy,
DER by K) and its difference to the clean condition with a PAIRED bootstrap interval: both
conditions score the same recordings against the same reference, so resampling recordings and
recomputing ``sum(error_c - error_clean) / sum(reference)`` gives the interval of the difference
itself, much narrower than the two separate intervals suggest.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from echo.config import check_fields, need, rule
from echo.diarization.diarizer import Diarizer
from echo.evaluate.diarize import _items, _pick, evaluate_conditions
from echo.metrics.bootstrap import BootstrapConfig, bootstrap_ci
from echo.progress import Hook
from echo.simulate.channels import CONDITIONS, apply_channel
from echo.simulate.conversations import ConversationItem

__all__ = ["ChannelEvalConfig", "evaluate_channels"]

log = logging.getLogger(__name__)
Condition = Literal[tuple(CONDITIONS)]


@dataclass(frozen=True)
class ChannelEvalConfig:
    """params.yaml ``evaluation.channels``.

    Attributes:
        conditions: channel names (keys of :data:`echo.simulate.channels.CONDITIONS`); must start
            with ``clean``, the reference every difference is taken against.
        max_recordings: score at most this many test conversations (evenly spread); None = all.
    """

    SECTION = "evaluation.channels"

    conditions: tuple[Condition, ...] = field(
        default=("clean", "telephone", "g711_mulaw", "gsm", "mp3_24k", "opus_12k", "clipped", "quiet"),
        metadata=rule(nonempty=True))
    max_recordings: int | None = field(default=None, metadata=rule(ge=1))

    def __post_init__(self):
        object.__setattr__(self, "conditions", tuple(self.conditions))  # YAML gives lists
        check_fields(self)
        for i, c in enumerate(self.conditions):
            need(self, c in CONDITIONS, f"conditions[{i}]", f"one of {list(CONDITIONS)}", c)
        need(self, self.conditions[0] == "clean", "conditions", "a list that starts with 'clean' (the reference)",
             list(self.conditions))
        need(self, len(set(self.conditions)) == len(self.conditions), "conditions", "distinct names",
             list(self.conditions))


def _summary(res: dict) -> dict:
    p = res["primary"]
    keep = ("der", "der_ci", "jer", "missed_rate", "false_alarm_rate", "confusion_rate")
    return {**{k: p[k] for k in keep},
            "by_k": {k: {"der": v["der"], "der_ci": v["der_ci"]} for k, v in p["by_k"].items()},
            "count_accuracy": res["count"]["accuracy"], "count_accuracy_ci": res["count"]["accuracy_ci"],
            "n_recordings": res["n_recordings"], "real_time_factor": res["real_time_factor"]}


def _errors(res: dict) -> tuple[dict, dict]:
    rows = res["per_recording"]
    return ({r["uri"]: r["der_primary"] * r["total"] for r in rows}, {r["uri"]: r["total"] for r in rows})


def evaluate_channels(diarizer: Diarizer, conversations, cfg: ChannelEvalConfig = ChannelEvalConfig(),
                      bootstrap: BootstrapConfig = BootstrapConfig(), hook: Hook | None = None) -> dict:
    """Blind diarization of ``conversations`` through each channel of ``cfg.conditions``.

    Returns:
        ``{"conditions": {name: {der, der_ci, jer, *_rate, by_k, count_accuracy(_ci), n_recordings,
        real_time_factor, delta_der, delta_der_ci}}, "order": [...], "reference": "clean"}``; rates are
        fractions, ``delta_der`` is the condition's DER minus the clean one's (paired CI).
    """
    items = _pick(_items(conversations), cfg.max_recordings)
    out, base = {}, None
    # the channels are mostly one FFmpeg subprocess per recording, which waits on a pipe: threads
    # run them side by side (same outputs, in order; about half the encode time on 2 cores)
    workers = max(1, min(4, os.cpu_count() or 1))
    for ci, name in enumerate(cfg.conditions):
        moved = []
        with ThreadPoolExecutor(workers) as pool:
            for i, (it, audio) in enumerate(zip(items, pool.map(lambda it: apply_channel(it.audio, name), items))):
                moved.append(ConversationItem(it.rec_id, audio, it.annotation, it.uem, it.k))
                if hook is not None:
                    hook(f"channel {name} ({ci + 1}/{len(cfg.conditions)})", completed=i + 1, total=len(items))
        (res, _), = evaluate_conditions(diarizer, moved, (False,), bootstrap=bootstrap)
        errors, totals = _errors(res)
        if base is None:
            base = errors
        uris = sorted(totals)
        diff = np.array([errors[u] - base[u] for u in uris])
        tot = np.array([totals[u] for u in uris])
        d = bootstrap_ci((diff, tot), bootstrap.n_boot, bootstrap.seed, bootstrap.confidence)
        out[name] = {**_summary(res), "delta_der": d.point, "delta_der_ci": [d.low, d.high]}
        log.info("channel %s: blind DER %.4f (%+.4f vs clean), count accuracy %.3f",
                 name, out[name]["der"], d.point, out[name]["count_accuracy"])
    return {"conditions": out, "order": list(cfg.conditions), "reference": "clean"}
