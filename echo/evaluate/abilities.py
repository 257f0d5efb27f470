"""What the shared latent can do after a stage: the probes of the stage ablation.

Measured identically after every stage (pretraining, +speaker, +phonetic, +routing, with or
without VQ) on the TEST split's held-out speakers, from a model and a
:class:`echo.features.FeatureCache`:

- **views** (written out in ``docs/metrics.md``):

  - *latent view*: the shared encoder latent; utterance = mean over valid tokens, frame = token.
  - *speaker view*: utterance = the speaker head's embedding of the whole utterance; frame = the
    speaker head applied to that single token (a one-token sequence: its mean/std statistics
    pass through the head's projection). Without a speaker head: the latent view.
  - *content views*: frame = one of the phonetic heads' frame representations; utterance = mean
    over valid tokens. ``hidden``: the input of the CTC head's output layer (its last hidden
    layer, or the latent itself for a linear head), the only content view before issue 12;
    ``posterior``: the CTC posteriors (blank included); ``phones``: the posteriors over phones
    alone (blank removed, renormalised: a phone posteriorgram); ``codes``: the VQ head's code
    vectors (the paper's bottleneck). The continuous CTC head gives the first three (the VQ one
    when it is the only one). Every available view is probed and reported; the headline one is
    ``content_layer``, or with ``auto`` the one :func:`choose_content_view` picks on DEV
    speakers. Without a CTC head: the latent view.

  So for the pretrained encoder both views are the latent and the gap is 0 by construction; the
  row's information is the raw latent probes (``latent_*``).
- **probes** (:mod:`echo.metrics.probe`): k-NN speaker identification (enrol/probe split of every
  test speaker's utterances) and k-NN frame phoneme classification (speaker-disjoint halves of
  the test speakers); the factorisation gap in points, both directions;
- **PER** of greedy CTC decoding, continuous head and VQ head when present (corpus rate, with a
  bootstrap CI over utterances);
- **EER** of cosine scoring of speaker-view utterance embeddings on test-speaker trials.

A token's phone label is the cache's frame label at the token's centre frame.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Mapping

import numpy as np
import torch

from echo.config import check_fields, rule
from echo.corpus.manifest import SILENCE
from echo.errors import EchoError
from echo.evaluate import ModelParts, encode_batch, model_parts
from echo.heads.ctc import ctc_greedy_decode
from echo.metrics.asr import phoneme_error_rate
from echo.metrics.bootstrap import BootstrapConfig, bootstrap_ci
from echo.metrics.probe import ProbeConfig, factorisation_gap, phone_accuracy, speaker_id_accuracy
from echo.metrics.verification import TrialsConfig, build_trials, cosine_scores, equal_error_rate
from echo.progress import Hook

__all__ = ["AbilityConfig", "CONTENT_VIEWS", "Views", "extract_views", "content_representations", "content_view_scores",
           "choose_content_view", "measure_abilities", "abilities_from_views"]

log = logging.getLogger(__name__)
CONTENT_VIEWS = ("hidden", "posterior", "phones", "codes")  # in tie-break order
_CONTENT_LAYERS = CONTENT_VIEWS + ("auto",)


@dataclass(frozen=True)
class AbilityConfig:
    """Ability probes (params.yaml ``evaluate.abilities``).

    Attributes:
        probe: k-NN probe settings (k, splits, frame caps, ignored phones, seed).
        trials: verification trial list size and seed.
        max_speakers: at most this many test speakers (seeded draw); None = all.
        max_utts_per_speaker: utterances per test speaker (>= 2: speaker ID needs enrol + probe).
        max_tokens_per_utt: labelled tokens drawn per utterance for the frame probes (>= 1).
        batch_size: utterances per encoder batch (>= 1).
        content_layer: the headline content view: one of :data:`CONTENT_VIEWS`, or ``auto`` = chosen
            on dev speakers by :func:`choose_content_view` (see the module docstring).
        bootstrap: CI settings for PER.
        seed: seed of the utterance and token draws.
    """

    probe: ProbeConfig = ProbeConfig()
    trials: TrialsConfig = TrialsConfig()
    max_speakers: int | None = field(default=None, metadata=rule(ge=2))
    max_utts_per_speaker: int = field(default=20, metadata=rule(ge=2))
    max_tokens_per_utt: int = field(default=40, metadata=rule(ge=1))
    batch_size: int = field(default=16, metadata=rule(ge=1))
    content_layer: Literal[_CONTENT_LAYERS] = "auto"
    bootstrap: BootstrapConfig = BootstrapConfig()
    seed: int = 0

    def __post_init__(self):
        check_fields(self)


@dataclass
class Views:
    """Per-utterance and per-frame representations of the test set under each view.

    Utterance arrays are ``(U, ·)`` aligned with ``utt_ids``/``utt_speakers``; frame arrays are
    ``(M, ·)`` aligned with ``frame_phones``/``frame_speakers``. ``speaker_*`` are the same objects
    as ``latent_*`` when the model lacks a speaker head; ``content`` holds every content view the
    model's heads give (empty without a CTC head), ``content_view`` names the headline one.
    """

    utt_ids: list[str]
    utt_speakers: np.ndarray
    latent_utts: np.ndarray
    speaker_utts: np.ndarray
    frame_phones: np.ndarray
    frame_speakers: np.ndarray
    latent_frames: np.ndarray
    speaker_frames: np.ndarray
    content: dict[str, tuple[np.ndarray, np.ndarray]]  # view name -> (utterance array, frame array)
    hyps: dict[str, dict[str, list[str]]]  # head name ("ctc", "vq_ctc") -> utt_id -> decoded phones
    content_view: str = "latent"  # a key of ``content``, or "latent" when it is empty

    @property
    def content_utts(self) -> np.ndarray:
        return self.content[self.content_view][0] if self.content else self.latent_utts

    @property
    def content_frames(self) -> np.ndarray:
        return self.content[self.content_view][1] if self.content else self.latent_frames

    def with_content_view(self, name: str) -> "Views":
        """The same views with ``name`` as the headline content view (``latent`` without a CTC head)."""
        if not self.content:
            return replace(self, content_view="latent")
        if name not in self.content:
            raise EchoError(f"abilities: content view {name!r} is not available; the heads give {sorted(self.content)}")
        return replace(self, content_view=name)


def _select(index, config: AbilityConfig) -> list[str]:
    rng = np.random.default_rng(config.seed)
    speakers = np.array(sorted(index["speaker"].unique()), dtype=object)
    if config.max_speakers is not None and len(speakers) > config.max_speakers:
        speakers = np.sort(rng.choice(speakers, config.max_speakers, replace=False))
    ids = []
    for s in speakers:
        utts = index.loc[index["speaker"] == s, "utt_id"].to_numpy()
        if len(utts) > config.max_utts_per_speaker:
            utts = np.sort(rng.choice(utts, config.max_utts_per_speaker, replace=False))
        ids += list(utts)
    return ids


def content_representations(ctc, vq_ctc, lat: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every content view's frame representation ``(B, T, ·)`` that the phonetic heads give.

    Args:
        ctc: the continuous CTC head, or None.
        vq_ctc: the VQ-CTC head, or None.
        lat: ``(B, T, D)`` encoder latents; mask: bool ``(B, T)``.

    Returns:
        ``hidden``, ``posterior`` and ``phones`` from the continuous head (the VQ head when it is the
        only one), ``codes`` from the VQ head; ``{}`` without either head.
    """
    head = ctc if ctc is not None else vq_ctc
    out: dict[str, torch.Tensor] = {}
    if head is None:
        return out
    x = head.vq(lat, mask).quantized if head.vq is not None else lat
    for m in list(head.classifier)[:-1]:  # everything before the output projection
        x = m(x)
    out["hidden"] = x
    b, t = lat.shape[:2]
    # one row per token: an upsampling head's outputs of a token are averaged
    logits = head.classifier[-1](x).float().reshape(b, t, head.config.upsample, -1)
    out["posterior"] = torch.softmax(logits, dim=-1).mean(2)
    out["phones"] = torch.softmax(logits[..., 1:], dim=-1).mean(2)  # P(phone | not blank): the blank id is 0
    if vq_ctc is not None:
        out["codes"] = vq_ctc.vq(lat, mask).quantized
    return out


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.unsqueeze(-1).to(x.dtype)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


@torch.no_grad()
def extract_views(model: Any, cache, config: AbilityConfig = AbilityConfig(),
                  hook: Hook | None = None) -> Views:
    """Encode the selected test utterances once and collect every view (see module docstring).

    Args:
        model: a bare :class:`~echo.models.vit.Encoder`, the stage bundle, or :class:`ModelParts`.
        cache: :class:`echo.features.FeatureCache` of the TEST split.
        config: :class:`AbilityConfig`.
        hook: progress callback ``hook("abilities", completed=batches done, total=batches)``.
    """
    parts: ModelParts = model_parts(model)
    ids = _select(cache.index, config)
    spk_of = dict(zip(cache.index["utt_id"], cache.index["speaker"]))
    frames_of = dict(zip(cache.index["utt_id"], cache.index["num_frames"]))
    ids = sorted(ids, key=lambda u: (frames_of[u], u))  # batches of similar length
    inv = np.array(list(cache.inventory) + ["<unk>"], dtype=object)  # label -1 -> "<unk>"
    p = parts.encoder.cfg.patch_frames
    rng = np.random.default_rng(config.seed)
    acc = {k: [] for k in ("lu", "su", "lf", "sf", "ph", "fs")}
    cont_u: dict[str, list] = {}
    cont_f: dict[str, list] = {}
    hyps: dict[str, dict[str, list[str]]] = {}
    starts = range(0, len(ids), config.batch_size)
    for done, i in enumerate(starts, 1):
        batch = ids[i:i + config.batch_size]
        mels = [cache.get(u) for u in batch]
        lat, mask = encode_batch(parts.encoder, mels)
        acc["lu"].append(_masked_mean(lat, mask).cpu())
        if parts.speaker is not None:
            acc["su"].append(parts.speaker(lat, mask).float().cpu())
        cont = {k: x.float() for k, x in content_representations(parts.ctc, parts.vq_ctc, lat, mask).items()}
        for k, x in cont.items():
            cont_u.setdefault(k, []).append(_masked_mean(x, mask).cpu())
        for name, head in (("ctc", parts.ctc), ("vq_ctc", parts.vq_ctc)):
            if head is not None:
                out = head(lat, mask)
                for u, h in zip(batch, ctc_greedy_decode(out.log_probs, out.lengths)):
                    hyps.setdefault(name, {})[u] = head.inventory.decode(h.ids)
        for j, u in enumerate(batch):
            n = int(mask[j].sum())
            lab = cache.labels(u)
            centre = np.minimum(np.arange(n) * p + p // 2, len(lab) - 1)
            tok_lab = lab[centre]
            sel = np.flatnonzero(tok_lab >= 0)
            if len(sel) > config.max_tokens_per_utt:
                sel = np.sort(rng.choice(sel, config.max_tokens_per_utt, replace=False))
            sel_t = torch.as_tensor(sel, device=lat.device)
            tok = lat[j, sel_t]
            acc["lf"].append(tok.cpu())
            if parts.speaker is not None and len(sel):
                acc["sf"].append(parts.speaker(tok.unsqueeze(1), None).float().cpu())
            for k, x in cont.items():
                cont_f.setdefault(k, []).append(x[j, sel_t].cpu())
            acc["ph"].append(inv[tok_lab[sel]])
            acc["fs"].append(np.full(len(sel), spk_of[u], dtype=object))
        if hook is not None:
            hook("abilities", completed=done, total=len(starts))

    def cat(key):
        return torch.cat(acc[key]).numpy() if acc[key] else None

    lu, lf = cat("lu"), cat("lf")
    su, sf = cat("su"), cat("sf")
    content = {k: (torch.cat(cont_u[k]).numpy(), torch.cat(cont_f[k]).numpy()) for k in CONTENT_VIEWS if k in cont_u}
    views = Views(
        utt_ids=ids, utt_speakers=np.array([spk_of[u] for u in ids], dtype=object),
        latent_utts=lu, speaker_utts=su if su is not None else lu,
        frame_phones=np.concatenate(acc["ph"]) if acc["ph"] else np.zeros(0, object),
        frame_speakers=np.concatenate(acc["fs"]) if acc["fs"] else np.zeros(0, object),
        latent_frames=lf, speaker_frames=sf if sf is not None else lf, content=content, hyps=hyps,
    )
    # the fixed headline view, or "hidden" until choose_content_view has seen the dev speakers
    return views.with_content_view("hidden" if config.content_layer == "auto" else config.content_layer)


def _reference_phones(cache, utt_id: str, references: Mapping[str, str] | None) -> list[str]:
    if references is not None:
        if utt_id not in references:
            raise EchoError(f"abilities: no reference phonemes for utterance {utt_id!r}")
        return [x for x in str(references[utt_id]).split() if x != SILENCE]
    # fallback: runs of the frame alignment (merges a phone repeated across a boundary)
    lab = cache.labels(utt_id)
    lab = lab[lab >= 0]
    runs = lab[np.r_[True, lab[1:] != lab[:-1]]] if lab.size else lab
    return [cache.inventory[i] for i in runs if cache.inventory[i] != SILENCE]


def _per(hyps: Mapping[str, list[str]], cache, references, bootstrap: BootstrapConfig) -> dict:
    errors, lengths = [], []
    for u in sorted(hyps):
        r = phoneme_error_rate([_reference_phones(cache, u, references)], [hyps[u]])
        errors.append(r["errors"])
        lengths.append(r["ref_length"])
    total = sum(lengths)
    per = sum(errors) / total if total else math.nan
    ci = bootstrap_ci((np.asarray(errors, float), np.asarray(lengths, float)), bootstrap.n_boot, bootstrap.seed,
                      bootstrap.confidence) if total else None
    return {"per": per, "ci_low": ci.low if ci else math.nan, "ci_high": ci.high if ci else math.nan}


def _gaps(views: Views, config: AbilityConfig) -> tuple[np.ndarray, dict[str, dict]]:
    """``(labelled-frame mask, factorisation_gap per content view)``: every probe run once; without
    a CTC head the one content view is the latent, keyed ``latent``."""
    v = views
    keep = ~np.isin(v.frame_phones.astype(str), ["<unk>"])
    fp, fs = v.frame_phones[keep].astype(str), v.frame_speakers[keep]
    sliced: dict[int, np.ndarray] = {}  # one labelled-frame slice per array, so shared views stay shared

    def frames(x):
        return sliced.setdefault(id(x), x[keep])

    content = v.content or {"latent": (v.latent_utts, v.latent_frames)}
    return keep, factorisation_gap(v.speaker_utts, {n: (u, frames(f)) for n, (u, f) in content.items()}, v.utt_speakers,
                                   frames(v.speaker_frames), fp, fs, config.probe)


def _scores(gaps: Mapping[str, dict]) -> dict[str, dict[str, float]]:
    return {n: {"speaker_id_acc": g["speaker_id"]["content_view"], "phone_acc": g["phone"]["content_view"],
                "gap_speaker_points": g["speaker_id"]["gap_points"], "gap_phone_points": g["phone"]["gap_points"]}
            for n, g in gaps.items()}


def content_view_scores(views: Views, config: AbilityConfig = AbilityConfig()) -> dict[str, dict[str, float]]:
    """Both probes on every available content view (the speaker view as the other side of each gap).

    Returns:
        view name -> ``{"speaker_id_acc", "phone_acc", "gap_speaker_points", "gap_phone_points"}``
        (fractions and points, as in :func:`abilities_from_views`); ``{}`` without a CTC head.
    """
    return _scores(_gaps(views, config)[1]) if views.content else {}


def choose_content_view(dev_scores: Mapping[str, Mapping[str, float]]) -> str:
    """The headline content view, from :func:`content_view_scores` on DEV speakers.

    Rule: the largest speaker-direction gap among the views whose dev frame phone accuracy is at
    least the ``hidden`` view's (the old content view: a view may drop the voice but not the
    phones); ties (within 1e-9) go to the earlier view of :data:`CONTENT_VIEWS`. ``hidden`` itself
    always qualifies, so there is always a choice; ``latent`` without a CTC head.
    """
    if not dev_scores:
        return "latent"
    floor = dev_scores["hidden"]["phone_acc"] if "hidden" in dev_scores else -math.inf
    ok = [n for n in CONTENT_VIEWS if n in dev_scores and dev_scores[n]["phone_acc"] >= floor - 1e-12]
    best = max(dev_scores[n]["gap_speaker_points"] for n in ok)
    return next(n for n in ok if dev_scores[n]["gap_speaker_points"] >= best - 1e-9)


def abilities_from_views(views: Views, config: AbilityConfig = AbilityConfig()) -> dict:
    """Probe results from extracted views (PER excluded: see :func:`measure_abilities`).

    Returns:
        flat dict: ``latent_speaker_id_acc``, ``latent_phone_acc``,
        ``speaker_id_acc_speaker_view``, ``speaker_id_acc_content_view``, ``gap_speaker_points``,
        ``phone_acc_content_view``, ``phone_acc_speaker_view``, ``gap_phone_points``,
        ``factorisation_gap`` (= ``gap_speaker_points``, the headline), ``eer``,
        ``n_speakers``, ``n_utterances``, ``n_frames``; accuracies and EER are fractions, gaps points.
        The content-view keys are the headline view's (named by ``content_view``);
        ``content_views`` holds :func:`content_view_scores` of every available view.
    """
    v, pc = views, config.probe
    keep, gaps = _gaps(v, config)
    gap = gaps[v.content_view]  # "latent" without a CTC head
    if not v.content:  # the content view is the latent: its probes are the latent's
        latent_sid, latent_ph = gap["speaker_id"]["content_view"], gap["phone"]["content_view"]
    else:
        latent_sid = gap["speaker_id"]["speaker_view"] if v.speaker_utts is v.latent_utts else \
            speaker_id_accuracy(v.latent_utts, v.utt_speakers, pc)
        latent_ph = phone_accuracy(v.latent_frames[keep], v.frame_phones[keep].astype(str), v.frame_speakers[keep], pc)
    out = {
        "n_speakers": int(len(set(v.utt_speakers.tolist()))), "n_utterances": len(v.utt_ids), "n_frames": int(keep.sum()),
        "latent_speaker_id_acc": latent_sid, "latent_phone_acc": latent_ph,
        "speaker_id_acc_speaker_view": gap["speaker_id"]["speaker_view"],
        "speaker_id_acc_content_view": gap["speaker_id"]["content_view"],
        "gap_speaker_points": gap["speaker_id"]["gap_points"],
        "phone_acc_content_view": gap["phone"]["content_view"],
        "phone_acc_speaker_view": gap["phone"]["speaker_view"],
        "gap_phone_points": gap["phone"]["gap_points"],
    }
    out["factorisation_gap"] = out["gap_speaker_points"]
    out["content_view"] = v.content_view
    out["content_views"] = _scores(gaps) if v.content else {}
    trials = build_trials(v.utt_ids, v.utt_speakers.astype(str), config.trials)
    scores = cosine_scores(v.speaker_utts, v.utt_ids, trials)
    out["eer"] = equal_error_rate(scores, trials["target"].to_numpy())[0]
    return out


def measure_abilities(model: Any, cache, config: AbilityConfig = AbilityConfig(),
                      references: Mapping[str, str] | None = None, views: Views | None = None,
                      dev_views: Views | None = None) -> dict:
    """All ability numbers of one model on the TEST split, as one flat dict.

    Args:
        model: bare encoder (after pretraining), stage bundle, or :class:`ModelParts`.
        cache: :class:`echo.features.FeatureCache` of the test split (held-out speakers).
        config: :class:`AbilityConfig`.
        references: utterance id -> space-separated reference phones (the manifest's
            ``phonemes`` column) for PER; default: phone runs of the cache's frame alignment.
        views: :func:`extract_views` of the same model, cache and config, when the caller already
            has them (e.g. to also plot the latent); None extracts them here.
        dev_views: :func:`extract_views` of the same model on the DEV split; needed when
            ``config.content_layer`` is ``auto`` and the model has a CTC head (the headline content
            view is chosen on them by :func:`choose_content_view`, never on test).

    Returns:
        :func:`abilities_from_views`'s keys plus ``per``/``per_ci_low``/``per_ci_high`` and
        ``per_vq``/``per_vq_ci_low``/``per_vq_ci_high`` (NaN without that head),
        ``has_speaker_head``, ``has_ctc_head``, ``has_vq_head``, ``has_router`` (0/1) and
        ``wall_s``; with ``dev_views``, ``content_views_dev`` (the dev scores the choice saw).

    Raises:
        EchoError: ``content_layer: auto`` with a CTC head and no ``dev_views``.
    """
    t0 = time.perf_counter()
    parts = model_parts(model)
    if views is None:
        views = extract_views(parts, cache, config)
    dev_scores = content_view_scores(dev_views, config) if dev_views is not None else None
    if config.content_layer == "auto" and views.content:
        if dev_scores is None:
            raise EchoError("abilities: content_layer 'auto' chooses the content view on dev speakers; "
                            "pass dev_views (extract_views of the dev split)")
        views = views.with_content_view(choose_content_view(dev_scores))
    out = abilities_from_views(views, config)
    if dev_scores is not None:
        out["content_views_dev"] = dev_scores
    for name, key in (("ctc", "per"), ("vq_ctc", "per_vq")):
        r = _per(views.hyps[name], cache, references, config.bootstrap) if name in views.hyps else \
            {"per": math.nan, "ci_low": math.nan, "ci_high": math.nan}
        out[key], out[f"{key}_ci_low"], out[f"{key}_ci_high"] = r["per"], r["ci_low"], r["ci_high"]
    out.update(has_speaker_head=int(parts.speaker is not None), has_ctc_head=int(parts.ctc is not None),
               has_vq_head=int(parts.vq_ctc is not None), has_router=int(parts.router is not None),
               wall_s=time.perf_counter() - t0)
    log.info("abilities: speaker-ID %.3f/%.3f, phone %.3f/%.3f (content view %s), gap %.1f pts, EER %.3f, PER %.3f",
             out["speaker_id_acc_speaker_view"], out["speaker_id_acc_content_view"], out["phone_acc_content_view"],
             out["content_view"],
             out["phone_acc_speaker_view"], out["factorisation_gap"], out["eer"], out["per"])
    return out
