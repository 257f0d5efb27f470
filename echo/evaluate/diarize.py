"""Scoring and dev tuning of the :class:`~echo.diarization.diarizer.Diarizer` (the product lives in
:mod:`echo.diarization`): DER (primary and secondary), JER and speaker-count accuracy by K with
bootstrap CIs (:func:`evaluate_conditions`), and the small grid of clustering settings chosen on
DEV conversations (:func:`tune_on_dev`).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from echo.config import check_fields, rule, rule_of
from echo.diarization.backend import conversation_split
from echo.diarization.diarizer import Diarizer, DiarizerConfig
from echo.diarization.vbx import VBxConfig
from echo.errors import EchoError
from echo.metrics.bootstrap import BootstrapConfig, bootstrap_ci
from echo.metrics.der import PRIMARY, SECONDARY, score_diarization
from echo.metrics.separation import speaker_count_accuracy

__all__ = ["TuneConfig", "tune_on_dev", "score_conversations", "evaluate_diarization", "evaluate_conditions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneConfig:
    """Grid searched by :func:`tune_on_dev` (params.yaml ``evaluation.tune``): every combination.

    Attributes:
        Fa, Fb, loopP: candidate VBx values (each non-empty; validated by :class:`VBxConfig`).
        ahc_threshold: candidate AHC thresholds (VBx can merge AHC's clusters but never split
            one, so the initialisation bounds the blind K); empty = keep the configured one.
        max_recordings: tune on at most this many dev conversations (evenly spread); None = all.

    Selection (stated so that a tiny numeric difference cannot flip it): each grid point's score
    is its mean dev DER averaged with its neighbours along the AHC-threshold axis (a flat optimum
    beats a sharp one); scores within 1e-4 of the best are ties, broken by grid order.
    """

    Fa: tuple[float, ...] = field(default=(0.1, 0.3, 0.5), metadata=rule_of(VBxConfig, "Fa", nonempty=True))
    Fb: tuple[float, ...] = field(default=(5.0, 17.0, 40.0), metadata=rule_of(VBxConfig, "Fb", nonempty=True))
    loopP: tuple[float, ...] = field(default=(0.0,), metadata=rule_of(VBxConfig, "loopP", nonempty=True))
    ahc_threshold: tuple[float, ...] = field(default=(), metadata=rule(finite=True))
    max_recordings: int | None = field(default=None, metadata=rule(ge=1))

    def __post_init__(self):
        for name in ("Fa", "Fb", "loopP", "ahc_threshold"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # YAML gives lists
        check_fields(self)


# --- scoring ------------------------------------------------------------------------------------


def _ci_pair(num, den, bootstrap: BootstrapConfig) -> list[float]:
    ci = bootstrap_ci((np.asarray(num, float), np.asarray(den, float)), bootstrap.n_boot, bootstrap.seed, bootstrap.confidence)
    return [ci.low, ci.high]


def score_conversations(refs: dict, hyps: dict, uems: dict | None, k_of: dict,
                        bootstrap: BootstrapConfig = BootstrapConfig()) -> dict:
    """DER (primary and secondary), JER and speaker-count accuracy, overall and by K, with CIs.

    Args:
        refs, hyps, uems: reference / hypothesis annotations and scored regions per uri.
        k_of: true number of speakers per uri.
        bootstrap: resampling of recordings for the 95% intervals.

    Returns:
        ``{"n_recordings", "primary": {...}, "secondary": {...}, "count": {...}, "per_recording": [...]}``
        where each condition has ``der``, ``der_ci``, ``jer``, ``jer_ci``, ``missed``,
        ``false_alarm``, ``confusion``, ``total`` (seconds) and ``by_k`` (``{"2": {same keys}}``);
        ``count`` has ``accuracy``, ``accuracy_ci``, ``labels``, ``confusion`` (rows true K) and
        ``by_k``. Rates are fractions.
    """
    out: dict = {"n_recordings": len(refs)}
    rows = {}
    for name, cfg in (("primary", PRIMARY), ("secondary", SECONDARY)):
        s = score_diarization(refs, hyps, uems, k_of, cfg)
        per = s["per_recording"]
        cond = _condition(s, per, bootstrap)
        cond["collar"], cond["skip_overlap"] = cfg.collar, cfg.skip_overlap
        by_k = {}
        for k in sorted({r["k"] for r in per}):
            sub = [r for r in per if r["k"] == k]
            by_k[str(k)] = _condition(s["by_k"][k], sub, bootstrap)
        cond["by_k"] = by_k
        out[name] = cond
        for r in per:
            rows.setdefault(r["uri"], {"uri": r["uri"], "k": r["k"]})[f"der_{name}"] = r["der"]
            if name == "primary":
                rows[r["uri"]].update(jer=r["jer"], missed=r["missed"], false_alarm=r["false_alarm"],
                                      confusion=r["confusion"], total=r["total"])
    for uri, r in rows.items():
        h = hyps.get(uri)
        r["k_hat"] = len(h.labels()) if h is not None else 0
    per_rec = [rows[u] for u in sorted(rows)]
    out["count"] = _count_summary(per_rec, bootstrap)
    out["per_recording"] = per_rec
    return out


def _condition(agg: dict, per: list[dict], bootstrap: BootstrapConfig) -> dict:
    return {
        "n_recordings": agg["n_recordings"], "der": agg["der"],
        "der_ci": _ci_pair([r["error"] for r in per], [r["total"] for r in per], bootstrap),
        "jer": agg["jer"],
        "jer_ci": _ci_pair([r["jer_speaker_error"] for r in per], [r["jer_speaker_count"] for r in per], bootstrap),
        "missed": agg["missed"], "false_alarm": agg["false_alarm"], "confusion": agg["confusion"],
        "total": agg["total"], **_rates(agg),
    }


def _rates(agg: dict) -> dict:
    """Error components as fractions of the reference speech (the seconds stay under their names)."""
    t = agg["total"]
    return {f"{k}_rate": (agg[k] / t if t > 0 else math.nan) for k in ("missed", "false_alarm", "confusion")}


def _count_summary(per_rec: list[dict], bootstrap: BootstrapConfig) -> dict:
    t = [r["k"] for r in per_rec]
    e = [r["k_hat"] for r in per_rec]
    with warnings.catch_warnings():  # sklearn warns when only one K occurs; the matrix is still right
        warnings.simplefilter("ignore", UserWarning)
        c = speaker_count_accuracy(t, e)
    hits = (np.asarray(t) == np.asarray(e)).astype(float)
    out = {"accuracy": c["accuracy"], "accuracy_ci": _ci_pair(hits, np.ones_like(hits), bootstrap) if len(hits) else [math.nan] * 2,
           "labels": [int(v) for v in c["labels"]], "confusion": np.asarray(c["confusion"]).astype(int).tolist(), "by_k": {}}
    for k in sorted(set(t)):
        h = hits[np.asarray(t) == k]
        out["by_k"][str(k)] = {"accuracy": float(h.mean()), "accuracy_ci": _ci_pair(h, np.ones_like(h), bootstrap),
                               "n": int(h.size)}
    return out


def _pick(items: Sequence, max_n: int | None) -> list:
    if max_n is None or len(items) <= max_n:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, max_n).round().astype(int))
    return [items[i] for i in idx]


def _items(conversations: Iterable) -> list:
    if hasattr(conversations, "__len__") and hasattr(conversations, "__getitem__") and not isinstance(conversations, list):
        return [conversations[i] for i in range(len(conversations))]
    return list(conversations)


def tune_on_dev(diarizer: Diarizer, conversations, grid: TuneConfig = TuneConfig()) -> tuple[DiarizerConfig, list[dict]]:
    """Choose ``Fa``, ``Fb``, ``loopP`` and the AHC threshold on DEV conversations by blind primary DER.

    Each conversation is encoded, segmented and embedded once; only the clustering runs per grid
    point. The selection rule is in :class:`TuneConfig`.

    Returns:
        ``(best DiarizerConfig, rows)``; one row per grid point: ``Fa``, ``Fb``, ``loopP``,
        ``ahc_threshold``, ``der``, ``der_smoothed``, ``jer``, ``count_accuracy``, ``selected``.

    Raises:
        EchoError: the conversations are from the test split, or there are none.
    """
    if conversation_split(conversations) == "test":
        raise EchoError("tune_on_dev: got TEST conversations; tune on the dev split only")
    items = _pick(_items(conversations), grid.max_recordings)
    if not items:
        raise EchoError("tune_on_dev: no dev conversations")
    refs = {it.rec_id: it.annotation for it in items}
    uems = {it.rec_id: it.uem for it in items}
    k_of = {it.rec_id: int(it.k) for it in items}
    base = diarizer.config
    thresholds = grid.ahc_threshold or (base.ahc.threshold,)
    prepared = [diarizer.prepare(it.audio, it.rec_id) for it in items]
    rows = []
    for fa, fb, lp, th in itertools.product(grid.Fa, grid.Fb, grid.loopP, thresholds):
        vbx = dataclasses.replace(base.vbx, Fa=float(fa), Fb=float(fb), loopP=float(lp))
        ahc = dataclasses.replace(base.ahc, threshold=float(th))
        hyps = {p.uri: diarizer.cluster(p, vbx=vbx, ahc=ahc).speaker_diarization for p in prepared}
        s = score_diarization(refs, hyps, uems, k_of, PRIMARY)
        acc = float(np.mean([len(hyps[u].labels()) == k_of[u] for u in refs]))
        rows.append({"Fa": float(fa), "Fb": float(fb), "loopP": float(lp), "ahc_threshold": float(th),
                     "der": s["der"], "jer": s["jer"], "count_accuracy": acc})
    nt = len(thresholds)
    for i, r in enumerate(rows):  # neighbours along the threshold axis (the innermost grid axis)
        j = i % nt
        block = rows[i - j: i - j + nt]
        r["der_smoothed"] = float(np.mean([block[q]["der"] for q in range(max(0, j - 1), min(nt, j + 2))]))
    low = min(r["der_smoothed"] for r in rows)
    pick = next(i for i, r in enumerate(rows) if r["der_smoothed"] <= low + 1e-4)
    for i, r in enumerate(rows):
        r["selected"] = i == pick
    r = rows[pick]
    best = dataclasses.replace(base, vbx=dataclasses.replace(base.vbx, Fa=r["Fa"], Fb=r["Fb"], loopP=r["loopP"]),
                               ahc=dataclasses.replace(base.ahc, threshold=r["ahc_threshold"]))
    log.info("tune_on_dev: Fa=%s Fb=%s loopP=%s ahc=%s (dev DER %.4f, smoothed %.4f, on %d recordings)",
             r["Fa"], r["Fb"], r["loopP"], r["ahc_threshold"], r["der"], r["der_smoothed"], len(items))
    return best, rows


def evaluate_diarization(diarizer: Diarizer, conversations, oracle: bool = False,
                         bootstrap: BootstrapConfig = BootstrapConfig(), max_recordings: int | None = None,
                         min_speakers: int | None = None, max_speakers: int | None = None) -> tuple[dict, dict]:
    """Diarize test conversations and score them (see :func:`score_conversations`).

    Args:
        diarizer: the configured :class:`Diarizer` (tuned on dev).
        conversations: TEST :class:`~echo.simulate.conversations.ConversationSet` or item list.
        oracle: give the true K (the blind condition, the headline, is ``oracle=False``).
        bootstrap: CI settings.
        max_recordings: evaluate at most this many (evenly spread; None = all).
        min_speakers, max_speakers: bounds passed to the blind diarizer.

    Returns:
        ``(summary, hypotheses)``: the scores plus ``condition``, ``audio_s``, ``wall_s``,
        ``real_time_factor`` (wall / audio) and ``speech_source``; hypotheses per uri (write
        them with :func:`echo.metrics.der.write_rttm`).
    """
    return evaluate_conditions(diarizer, conversations, (oracle,), bootstrap, max_recordings,
                               min_speakers, max_speakers)[0]


def evaluate_conditions(diarizer: Diarizer, conversations, oracles: Sequence[bool] = (False, True),
                        bootstrap: BootstrapConfig = BootstrapConfig(), max_recordings: int | None = None,
                        min_speakers: int | None = None, max_speakers: int | None = None) -> list[tuple[dict, dict]]:
    """:func:`evaluate_diarization` for several conditions (blind, oracle K) from ONE encoding pass.

    Each recording is prepared (decoded, encoded, embedded) once and clustered per condition; a
    condition's ``wall_s`` is the shared preparation plus its own clustering, so its real-time
    factor is what diarizing in that condition alone costs.

    Returns:
        one ``(summary, hypotheses)`` per entry of ``oracles``, in order.
    """
    items = _pick(_items(conversations), max_recordings)
    hyps = [{} for _ in oracles]
    exclusive = [{} for _ in oracles]
    wall = [0.0 for _ in oracles]
    refs, uems, k_of = {}, {}, {}
    audio_s = 0.0
    for it in items:
        t0 = time.perf_counter()
        prep = diarizer.prepare(it.audio, it.rec_id)
        t_prep = time.perf_counter() - t0
        for i, oracle in enumerate(oracles):
            t1 = time.perf_counter()
            res = diarizer.cluster(prep, num_speakers=int(it.k) if oracle else None,
                                   min_speakers=min_speakers, max_speakers=max_speakers)
            wall[i] += t_prep + time.perf_counter() - t1
            hyps[i][it.rec_id] = res.speaker_diarization
            exclusive[i][it.rec_id] = res.exclusive_speaker_diarization
        audio_s += prep.duration
        refs[it.rec_id], uems[it.rec_id], k_of[it.rec_id] = it.annotation, it.uem, int(it.k)
    results = []
    for oracle, h, hx, wall_s in zip(oracles, hyps, exclusive, wall):
        out = score_conversations(refs, h, uems, k_of, bootstrap)
        ex = score_diarization(refs, hx, uems, k_of, PRIMARY)
        out["exclusive"] = {**{k: ex[k] for k in ("der", "missed", "false_alarm", "confusion", "total")}, **_rates(ex)}
        out.update(condition="oracle" if oracle else "blind", audio_s=audio_s, wall_s=wall_s,
                   real_time_factor=wall_s / audio_s if audio_s else math.nan,
                   vbx={"Fa": diarizer.config.vbx.Fa, "Fb": diarizer.config.vbx.Fb,
                        "loopP": diarizer.config.vbx.loopP, "ahc_threshold": diarizer.config.ahc.threshold})
        results.append((out, h))
    return results
