"""Blind speaker diarization with the shared encoder, and its evaluation (DER/JER/count by K).

Pipeline of :class:`Diarizer` for one recording (16 kHz mono):

1. log-mel of the whole recording (:class:`echo.features.FrontEnd`), then the encoder in chunks of
   ``chunk_s`` seconds, each seen with ``context_s`` of extra context on both sides; only each
   chunk's core tokens are kept, so memory is bounded by one chunk and every kept token saw at
   least ``context_s`` of context on each side (except at the recording's ends);
2. speech activity per 40 ms token (``SpeechConfig.source``): ``ctc`` = a token is speech when a
   phone emission (CTC non-blank posterior >= ``ctc_threshold``; silence is not a CTC label, so it
   falls to the blank) lies within ``dilation_s``; ``energy`` = token power above the recording's
   noise floor (a low percentile) by ``energy_margin_db``; ``none`` = all speech;
3. sliding windows (:class:`echo.diarization.segments.WindowConfig`); a window whose speech share
   is below ``min_window_speech`` is skipped; the others are embedded by the speaker head over
   their speech tokens (the latents of the whole-recording pass, so a window's tokens keep their
   context);
4. LDA/PLDA (fitted on TRAINING speakers' window embeddings by :func:`fit_backend`), AHC
   initialisation and VBx (``Fa``, ``Fb``, ``loopP``) -> per-window speaker posteriors; blind unless
   ``num_speakers`` is given; ``min_speakers``/``max_speakers`` re-run with K clamped;
5. overlap (unless ``exclusive``): the router reads each window's latents; where it declares two
   or more slots active, the window's second most likely VBx speaker is added;
6. every speech token takes the speaker(s) of the kept window whose centre is nearest; runs of
   tokens become the Annotation's segments (40 ms resolution).

The CLI (``python -m echo diarize``) calls this same class. Scoring: :func:`evaluate_diarization`
(primary and secondary DER, JER, speaker-count accuracy, each by K with bootstrap CIs) and
:func:`tune_on_dev` (small Fa/Fb/loopP grid on DEV conversations, chosen by primary DER).
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from pyannote.core import Annotation, Segment
from tqdm import tqdm

from echo.diarization.ahc import AHCConfig
from echo.diarization.plda import PLDA, PLDAConfig
from echo.diarization.segments import WindowConfig, sliding_windows
from echo.diarization.vbx import VBxConfig, assign_overlap, vbx_cluster
from echo.errors import ConfigError, EchoError
from echo.evaluate import ModelParts, encode_batch, model_parts
from echo.features import FrontEnd
from echo.metrics.bootstrap import BootstrapConfig, bootstrap_ci
from echo.metrics.der import PRIMARY, SECONDARY, score_diarization
from echo.metrics.separation import speaker_count_accuracy

__all__ = [
    "SpeechConfig", "DiarizerConfig", "BackendConfig", "TuneConfig", "Prepared", "DiarizationResult",
    "Diarizer", "encode_long", "speech_activity", "fit_backend", "backend_from_latents", "tune_on_dev",
    "score_conversations", "evaluate_diarization",
]

log = logging.getLogger(__name__)
_SOURCES = ("auto", "ctc", "energy", "none")


def _need(ok: bool, key: str, expected: str, value) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


@dataclass(frozen=True)
class SpeechConfig:
    """Speech activity detection at token (40 ms) resolution.

    Attributes:
        source: ``auto`` (``ctc`` when the model has a CTC head, else ``energy``), ``ctc``,
            ``energy`` or ``none`` (every token is speech).
        ctc_threshold: non-blank posterior at or above which a token is a phone emission, in (0, 1).
        dilation_s: a token is speech when an emission lies within this many seconds (>= 0);
            bridges the blanks CTC puts between phone spikes.
        energy_margin_db: ``energy``: speech when token power exceeds the floor by this (> 0).
        energy_floor_percentile: ``energy``: the floor is this percentile of token power, in [0, 100).
        min_window_speech: windows with a smaller share of speech tokens are not embedded, in [0, 1].
    """

    source: str = "auto"
    ctc_threshold: float = 0.5
    dilation_s: float = 0.2
    energy_margin_db: float = 12.0
    energy_floor_percentile: float = 10.0
    min_window_speech: float = 0.3

    def __post_init__(self):
        _need(self.source in _SOURCES, "diarize.speech.source", f"one of {_SOURCES}", self.source)
        _need(0.0 < self.ctc_threshold < 1.0, "diarize.speech.ctc_threshold", "a number in (0, 1)", self.ctc_threshold)
        _need(self.dilation_s >= 0, "diarize.speech.dilation_s", "seconds >= 0", self.dilation_s)
        _need(self.energy_margin_db > 0, "diarize.speech.energy_margin_db", "dB > 0", self.energy_margin_db)
        _need(0 <= self.energy_floor_percentile < 100, "diarize.speech.energy_floor_percentile",
              "a percentile in [0, 100)", self.energy_floor_percentile)
        _need(0.0 <= self.min_window_speech <= 1.0, "diarize.speech.min_window_speech", "a share in [0, 1]",
              self.min_window_speech)


@dataclass(frozen=True)
class DiarizerConfig:
    """Diarization settings (params.yaml ``diarize``).

    Attributes:
        chunk_s: seconds of tokens kept per encoder pass (> 0); bounds memory on long recordings.
        context_s: extra seconds encoded on each side of a chunk and then dropped (>= 0).
        windows: embedding windows (1.5 s every 0.25 s by default, as in BUT's VBx recipe).
        ahc: AHC initialisation of VBx.
        vbx: VBx settings (``Fa``, ``Fb``, ``loopP`` are what :func:`tune_on_dev` searches).
        speech: speech activity detection.
        exclusive: one speaker at a time; False adds a second speaker where the router sees two
            or more active slots (falls back to exclusive when the model has no router).
        overlap_threshold: router existence probability for a slot to count as active, in (0, 1).
        batch_windows: windows per speaker-head / router batch (>= 1).
    """

    chunk_s: float = 30.0
    context_s: float = 4.0
    windows: WindowConfig = WindowConfig()
    ahc: AHCConfig = AHCConfig()
    vbx: VBxConfig = VBxConfig()
    speech: SpeechConfig = SpeechConfig()
    exclusive: bool = False
    overlap_threshold: float = 0.5
    batch_windows: int = 64

    def __post_init__(self):
        _need(self.chunk_s > 0, "diarize.chunk_s", "seconds > 0", self.chunk_s)
        _need(self.context_s >= 0, "diarize.context_s", "seconds >= 0", self.context_s)
        _need(isinstance(self.exclusive, bool), "diarize.exclusive", "true or false", self.exclusive)
        _need(0.0 < self.overlap_threshold < 1.0, "diarize.overlap_threshold", "a number in (0, 1)",
              self.overlap_threshold)
        _need(isinstance(self.batch_windows, int) and self.batch_windows >= 1, "diarize.batch_windows",
              "an integer >= 1", self.batch_windows)


@dataclass(frozen=True)
class BackendConfig:
    """Training-speaker window embeddings for LDA/PLDA (params.yaml ``diarize.backend``).

    Attributes:
        plda: LDA/PLDA settings.
        max_speakers: use at most this many training speakers (sorted, seeded draw); None = all.
        max_utts_per_speaker: utterances per speaker (>= 1).
        max_windows_per_utt: non-overlapping windows per utterance (>= 1).
        batch_size: utterances per encoder batch (>= 1).
        seed: seed of the speaker/utterance draws.
    """

    plda: PLDAConfig = PLDAConfig()
    max_speakers: int | None = None
    max_utts_per_speaker: int = 20
    max_windows_per_utt: int = 4
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        _need(self.max_speakers is None or (isinstance(self.max_speakers, int) and self.max_speakers >= 3),
              "diarize.backend.max_speakers", "an integer >= 3 or null", self.max_speakers)
        for name in ("max_utts_per_speaker", "max_windows_per_utt", "batch_size"):
            v = getattr(self, name)
            _need(isinstance(v, int) and v >= 1, f"diarize.backend.{name}", "an integer >= 1", v)


@dataclass(frozen=True)
class TuneConfig:
    """Grid searched by :func:`tune_on_dev` (params.yaml ``diarize.tune``): every combination.

    Attributes:
        Fa, Fb, loopP: candidate values (each non-empty; validated by :class:`VBxConfig`).
        ahc_threshold: candidate AHC thresholds (VBx can merge AHC's clusters but never split
            one, so the initialisation bounds the blind K); empty = keep the configured one.
        exclusive: candidate output modes, e.g. ``[false, true]`` to check on dev whether the
            router's overlap flags help DER; empty = keep the configured one.
        max_recordings: tune on at most this many dev conversations (evenly spread); None = all.
    """

    Fa: tuple[float, ...] = (0.1, 0.3, 0.5)
    Fb: tuple[float, ...] = (5.0, 17.0, 40.0)
    loopP: tuple[float, ...] = (0.9, 0.99)
    ahc_threshold: tuple[float, ...] = ()
    exclusive: tuple[bool, ...] = ()
    max_recordings: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "ahc_threshold", tuple(self.ahc_threshold))
        object.__setattr__(self, "exclusive", tuple(self.exclusive))
        _need(all(isinstance(v, bool) for v in self.exclusive), "diarize.tune.exclusive", "a list of true/false",
              self.exclusive)
        for th in self.ahc_threshold:
            _need(isinstance(th, (int, float)), "diarize.tune.ahc_threshold", "a list of numbers", self.ahc_threshold)
        for name in ("Fa", "Fb", "loopP"):
            v = tuple(getattr(self, name))
            object.__setattr__(self, name, v)  # YAML gives lists
            _need(len(v) >= 1, f"diarize.tune.{name}", "a non-empty list", v)
        for fa, fb, lp in itertools.product(self.Fa, self.Fb, self.loopP):
            VBxConfig(Fa=fa, Fb=fb, loopP=lp)
        _need(self.max_recordings is None or (isinstance(self.max_recordings, int) and self.max_recordings >= 1),
              "diarize.tune.max_recordings", "an integer >= 1 or null", self.max_recordings)


# --- encoding and speech activity ---------------------------------------------------------------


def _token_seconds(parts: ModelParts, frontend: FrontEnd) -> float:
    return parts.encoder.cfg.patch_frames * frontend.hop_length / frontend.sample_rate


@torch.no_grad()
def encode_long(encoder: torch.nn.Module, mels: np.ndarray, chunk_tokens: int, context_tokens: int) -> np.ndarray:
    """Encode a long log-mel sequence chunk by chunk and stitch the chunks' core tokens.

    Args:
        encoder: :class:`echo.models.vit.Encoder`.
        mels: ``(T, n_mels)`` raw log-mel of the whole recording.
        chunk_tokens: tokens kept per pass (>= 1).
        context_tokens: tokens of extra context encoded on each side and dropped (>= 0).

    Returns:
        ``(ceil(T / patch_frames), dim)`` float32 latents. With one chunk (``chunk_tokens`` >=
        tokens) this equals encoding the whole input at once.
    """
    p = encoder.cfg.patch_frames
    t = len(mels)
    n = -(-t // p)
    out = np.zeros((n, encoder.cfg.dim), dtype=np.float32)
    dev = next(encoder.parameters()).device
    for c0 in range(0, n, chunk_tokens):
        c1 = min(n, c0 + chunk_tokens)
        a, b = max(0, c0 - context_tokens), min(n, c1 + context_tokens)
        x = torch.as_tensor(np.ascontiguousarray(mels[a * p: min(t, b * p)], dtype=np.float32), device=dev)
        feats = encoder(x.unsqueeze(0)).features[0]
        out[c0:c1] = feats[c0 - a: c1 - a].float().cpu().numpy()
    return out


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0 or not mask.any():
        return mask.copy()
    c = np.convolve(mask.astype(np.float64), np.ones(2 * radius + 1), mode="same")
    return c > 0.5


@torch.no_grad()
def speech_activity(parts: ModelParts, latents: np.ndarray | None, mels: np.ndarray | None,
                    config: SpeechConfig, token_s: float, patch_frames: int) -> tuple[np.ndarray, str]:
    """Speech / non-speech per token.

    Args:
        parts: model parts (the CTC head is used by ``ctc``).
        latents: ``(N, D)`` token latents (needed by ``ctc``).
        mels: ``(T, n_mels)`` raw log-mel (needed by ``energy``).
        config: :class:`SpeechConfig`.
        token_s: seconds per token.
        patch_frames: frames per token.

    Returns:
        ``((N,) bool speech, source used)``.
    """
    source = config.source
    ctc = parts.ctc if parts.ctc is not None else parts.ctc_vq
    if source == "auto":
        source = "ctc" if ctc is not None and latents is not None else "energy"
    if source == "ctc":
        if ctc is None:
            raise EchoError("diarize.speech.source: 'ctc' needs a model with a CTC head")
        x = torch.as_tensor(latents, device=next(ctc.parameters()).device).unsqueeze(0)
        log_probs = ctc(x).log_probs[0]
        emit = (1.0 - log_probs[:, 0].exp()).cpu().numpy() >= config.ctc_threshold
        return _dilate(emit, int(round(config.dilation_s / token_s))), "ctc"
    if mels is None:
        n = len(latents)
        return np.ones(n, dtype=bool), "none"
    n = -(-len(mels) // patch_frames)
    if source == "none":
        return np.ones(n, dtype=bool), "none"
    power = np.exp(np.asarray(mels, dtype=np.float64)).sum(1)  # mel power per 10 ms frame
    pad = n * patch_frames - len(power)
    power = np.r_[power, np.full(pad, power[-1])] if pad else power
    db = 10.0 * np.log10(power.reshape(n, patch_frames).mean(1) + 1e-12)
    floor = np.percentile(db, config.energy_floor_percentile)
    return db > floor + config.energy_margin_db, "energy"


# --- the diarizer -------------------------------------------------------------------------------


@dataclass
class Prepared:
    """Everything of one recording that does not depend on the clustering settings.

    Attributes:
        uri: recording id.
        duration: seconds.
        token_s: seconds per token.
        speech: (N,) bool speech per token.
        windows: (W, 2) start/end seconds of the embedded (speech) windows.
        embeddings: (W, E) speaker embeddings of those windows.
        overlap: (W,) bool, the router sees >= 2 active slots (None: no router or exclusive).
        speech_source: which speech signal was used.
        encode_s: seconds spent encoding + embedding (for the real-time factor).
    """

    uri: str
    duration: float
    token_s: float
    speech: np.ndarray
    windows: np.ndarray
    embeddings: np.ndarray
    overlap: np.ndarray | None
    speech_source: str = "none"
    encode_s: float = 0.0


@dataclass
class DiarizationResult:
    """A recording's diarization: the annotation plus what produced it."""

    annotation: Annotation
    num_speakers: int
    window_labels: np.ndarray
    posteriors: np.ndarray
    prepared: Prepared = field(repr=False)


class Diarizer:
    """Blind diarization of 16 kHz recordings with an Echo model (see the module docstring).

    Args:
        model: the model bundle (needs the encoder and the speaker head; the CTC head is used for
            speech activity, the router for overlap), or a :class:`ModelParts`.
        plda: LDA/PLDA fitted on training speakers (:func:`fit_backend`).
        config: :class:`DiarizerConfig`.
        frontend: the log-mel front-end the encoder was trained with (default: the bundle's).

    Example::

        plda = fit_backend(model, FeatureCache("data/features/train"))
        hyp = Diarizer(model, plda).diarize(wave, "rec1")      # pyannote Annotation
    """

    def __init__(self, model: Any, plda: PLDA, config: DiarizerConfig = DiarizerConfig(),
                 frontend: FrontEnd | None = None):
        self.parts = model_parts(model)
        frontend = frontend or getattr(model, "frontend", None) or FrontEnd()
        if self.parts.speaker is None:
            raise EchoError("diarize: the model has no speaker head; diarization needs the speaker stage")
        self.plda = plda
        self.config = config
        self.frontend = frontend
        self.token_s = _token_seconds(self.parts, frontend)
        if not config.exclusive and self.parts.router is None:
            log.warning("diarize: exclusive=false but the model has no router: output is exclusive")

    # -- public API ----------------------------------------------------------------------------
    def diarize(self, wave: np.ndarray, uri: str, num_speakers: int | None = None,
                min_speakers: int | None = None, max_speakers: int | None = None) -> Annotation:
        """Diarize one recording.

        Args:
            wave: mono float waveform at the front-end's sample rate (16 kHz).
            uri: recording id (the Annotation's uri and the RTTM's file id).
            num_speakers: oracle K (None = blind).
            min_speakers, max_speakers: bounds on the blind estimate.

        Returns:
            pyannote Annotation with labels ``spk0``, ``spk1``, ... (by first appearance).
        """
        return self.cluster(self.prepare(wave, uri), num_speakers=num_speakers, min_speakers=min_speakers,
                            max_speakers=max_speakers).annotation

    def prepare(self, wave: np.ndarray, uri: str) -> Prepared:
        """Encode, detect speech, embed windows and detect overlap (the costly, setting-free part)."""
        t0 = time.perf_counter()
        wave = np.asarray(wave, dtype=np.float32).ravel()
        if wave.size == 0:
            raise EchoError(f"diarize {uri}: empty recording")
        mels = self.frontend.compute(wave)
        cfg = self.config
        latents = encode_long(self.parts.encoder, mels, max(1, round(cfg.chunk_s / self.token_s)),
                              round(cfg.context_s / self.token_s))
        speech, source = speech_activity(self.parts, latents, mels, cfg.speech, self.token_s,
                                         self.parts.encoder.cfg.patch_frames)
        prep = self.prepare_latents(latents, uri, wave.size / self.frontend.sample_rate, speech)
        prep.speech_source = source
        prep.encode_s = time.perf_counter() - t0
        return prep

    @torch.no_grad()
    def prepare_latents(self, latents: np.ndarray, uri: str, duration: float | None = None,
                        speech: np.ndarray | None = None) -> Prepared:
        """Windows, embeddings and overlap flags from precomputed token latents.

        Args:
            latents: ``(N, D)`` latents of the whole recording (e.g. :func:`encode_long`).
            uri: recording id.
            duration: seconds (default ``N * token_s``).
            speech: ``(N,)`` bool speech per token (default: the configured detector on the
                latents, or all speech when it needs the audio).
        """
        lat = np.asarray(latents, dtype=np.float32)
        n = len(lat)
        duration = n * self.token_s if duration is None else float(duration)
        if speech is None:
            speech, _ = speech_activity(self.parts, lat, None, self.config.speech, self.token_s,
                                        self.parts.encoder.cfg.patch_frames)
        speech = np.asarray(speech, dtype=bool)
        if speech.shape != (n,):
            raise EchoError(f"diarize {uri}: speech mask has shape {speech.shape}, expected ({n},)")
        windows = sliding_windows(duration, self.config.windows)
        spans = self._token_spans(windows, n)
        share = np.array([speech[a:b].mean() if b > a else 0.0 for a, b in spans])
        keep = (share >= self.config.speech.min_window_speech) & (share > 0)
        windows, spans = windows[keep], spans[keep]
        emb, over = self._embed_windows(lat, speech, spans)
        return Prepared(uri, duration, self.token_s, speech, windows, emb, over)

    def cluster(self, prepared: Prepared, vbx: VBxConfig | None = None, num_speakers: int | None = None,
                min_speakers: int | None = None, max_speakers: int | None = None,
                ahc: AHCConfig | None = None, exclusive: bool | None = None) -> DiarizationResult:
        """VBx clustering of prepared windows and the token-level annotation.

        Args:
            prepared: output of :meth:`prepare` / :meth:`prepare_latents`.
            vbx: VBx settings (default ``config.vbx``), e.g. a grid point of :func:`tune_on_dev`.
            ahc: AHC settings (default ``config.ahc``).
            exclusive: output mode (default ``config.exclusive``); overlap needs the router's
                flags, computed by :meth:`prepare` unless the config is exclusive.
            num_speakers: oracle K; min_speakers / max_speakers: bounds on the blind K.
        """
        for name, v in (("num_speakers", num_speakers), ("min_speakers", min_speakers), ("max_speakers", max_speakers)):
            if v is not None and not (isinstance(v, (int, np.integer)) and v >= 1):
                raise ConfigError(f"diarize.{name}: expected an integer >= 1, got {v!r}")
        if min_speakers and max_speakers and min_speakers > max_speakers:
            raise ConfigError(f"diarize.min_speakers: expected <= max_speakers ({max_speakers}), got {min_speakers}")
        vbx = vbx or self.config.vbx
        ahc = ahc or self.config.ahc
        p = prepared
        w = len(p.windows)
        if w == 0:
            return DiarizationResult(Annotation(uri=p.uri), 0, np.zeros(0, np.int64), np.zeros((0, 0)), p)
        if w == 1:
            post = np.ones((1, 1))
        else:
            clus = vbx_cluster(p.embeddings, self.plda, vbx, ahc, num_speakers)
            k = clus.num_speakers
            forced = None
            if num_speakers is None and max_speakers is not None and k > max_speakers:
                forced = max_speakers
            elif num_speakers is None and min_speakers is not None and k < min_speakers:
                forced = min_speakers
            if forced is not None:
                log.info("diarize %s: blind K=%d outside [%s, %s]; re-clustering with K=%d",
                         p.uri, k, min_speakers, max_speakers, forced)
                clus = vbx_cluster(p.embeddings, self.plda, vbx, ahc, forced)
            post = clus.posteriors
        exclusive = self.config.exclusive if exclusive is None else exclusive
        second = p.overlap if (p.overlap is not None and not exclusive) else np.zeros(w, dtype=bool)
        act = assign_overlap(post, second)
        ann = self._annotate(act, p)
        labels = post.argmax(1)
        return DiarizationResult(ann, len(ann.labels()), labels, post, p)

    # -- internals -----------------------------------------------------------------------------
    def _token_spans(self, windows: np.ndarray, n: int) -> np.ndarray:
        a = np.floor(windows[:, 0] / self.token_s + 1e-6).astype(np.int64)
        b = np.ceil(windows[:, 1] / self.token_s - 1e-6).astype(np.int64)
        return np.stack([np.clip(a, 0, n), np.clip(np.maximum(b, a + 1), 0, n)], 1).reshape(-1, 2)

    def _embed_windows(self, lat: np.ndarray, speech: np.ndarray, spans: np.ndarray):
        parts, cfg = self.parts, self.config
        dev = parts.device
        use_router = parts.router is not None and not cfg.exclusive
        embs, overs = [], []
        for i in range(0, len(spans), cfg.batch_windows):
            batch = spans[i:i + cfg.batch_windows]
            length = int((batch[:, 1] - batch[:, 0]).max())
            x = torch.zeros(len(batch), length, lat.shape[1])
            tok = torch.zeros(len(batch), length, dtype=torch.bool)
            sp = torch.zeros(len(batch), length, dtype=torch.bool)
            for j, (a, b) in enumerate(batch):
                x[j, : b - a] = torch.from_numpy(lat[a:b])
                tok[j, : b - a] = True
                sp[j, : b - a] = torch.from_numpy(speech[a:b])
            sp = torch.where(sp.any(1, keepdim=True), sp, tok)  # a window without speech pools all tokens
            x, tok, sp = x.to(dev), tok.to(dev), sp.to(dev)
            embs.append(parts.speaker(x, sp).float().cpu().numpy())
            if use_router:
                logits = parts.router(x, tok).exist_logits
                overs.append((torch.sigmoid(logits) >= cfg.overlap_threshold).sum(1).cpu().numpy() >= 2)
        if not embs:
            return np.zeros((0, 0), np.float32), (np.zeros(0, bool) if use_router else None)
        return np.concatenate(embs), (np.concatenate(overs) if use_router else None)

    def _annotate(self, act: np.ndarray, p: Prepared) -> Annotation:
        n = len(p.speech)
        centres = p.windows.mean(1)
        tok_c = (np.arange(n) + 0.5) * p.token_s
        # nearest window centre = the window owning this token (midpoint split between neighbours)
        j = np.clip(np.searchsorted(centres, tok_c), 1, len(centres) - 1) if len(centres) > 1 else np.zeros(n, np.int64)
        if len(centres) > 1:
            j = np.where(np.abs(tok_c - centres[j - 1]) <= np.abs(centres[j] - tok_c), j - 1, j)
        tok_act = act[j] & p.speech[:, None]
        ann = Annotation(uri=p.uri)
        order = self._label_order(tok_act)
        for new, k in enumerate(order):
            col = np.r_[False, tok_act[:, k], False]
            d = np.diff(col.astype(np.int8))
            for s, e in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
                seg = Segment(round(s * p.token_s, 3), round(min(e * p.token_s, p.duration), 3))
                if seg.duration > 0:
                    ann[seg, ann.new_track(seg)] = f"spk{new}"
        return ann

    @staticmethod
    def _label_order(tok_act: np.ndarray) -> list[int]:
        first = [(int(np.argmax(tok_act[:, k])), k) for k in range(tok_act.shape[1]) if tok_act[:, k].any()]
        return [k for _, k in sorted(first)]


# --- back end fitting ---------------------------------------------------------------------------


@torch.no_grad()
def backend_from_latents(model: Any, utterance_latents: Sequence[np.ndarray], speakers: Sequence[str],
                         windows: WindowConfig = WindowConfig(), config: BackendConfig = BackendConfig(),
                         token_s: float = 0.04, speech: Sequence[np.ndarray] | None = None) -> PLDA:
    """Fit LDA/PLDA on speaker-head embeddings of training-speaker windows, from token latents.

    Each utterance contributes up to ``max_windows_per_utt`` non-overlapping windows of
    ``windows.window`` seconds (the whole utterance when shorter), evenly spread.

    Args:
        model: model bundle or :class:`ModelParts` with a speaker head.
        utterance_latents: ``(N_i, D)`` latents per training utterance.
        speakers: speaker of each utterance (training speakers only).
        windows: the diarizer's window settings (only the length is used).
        config: :class:`BackendConfig`.
        token_s: seconds per token.
        speech: optional ``(N_i,)`` bool speech masks; the head pools speech tokens only, as in
            :class:`Diarizer`.
    """
    parts = model_parts(model)
    if parts.speaker is None:
        raise EchoError("fit_backend: the model has no speaker head")
    win = max(1, round(windows.window / token_s))
    dev = parts.device
    embs, labels = [], []
    chunks, chunk_masks, chunk_spk = [], [], []
    for i, (lat, spk) in enumerate(zip(utterance_latents, speakers)):
        n = len(lat)
        sp = np.ones(n, bool) if speech is None else np.asarray(speech[i], bool)
        starts = [0] if n <= win else np.unique(np.linspace(0, n - win, min(config.max_windows_per_utt, n // win)).astype(int))
        for s in starts:
            chunks.append(lat[s:s + win])
            m = sp[s:s + win]
            chunk_masks.append(m if m.any() else np.ones_like(m))
            chunk_spk.append(spk)
    for i in range(0, len(chunks), 256):
        part = chunks[i:i + 256]
        length = max(len(c) for c in part)
        x = torch.zeros(len(part), length, part[0].shape[1])
        m = torch.zeros(len(part), length, dtype=torch.bool)
        for j, c in enumerate(part):
            x[j, : len(c)] = torch.as_tensor(c)
            m[j, : len(c)] = torch.as_tensor(chunk_masks[i + j])
        embs.append(parts.speaker(x.to(dev), m.to(dev)).float().cpu().numpy())
        labels += chunk_spk[i:i + 256]
    if not embs:
        raise EchoError("fit_backend: no training windows")
    x = np.concatenate(embs)
    log.info("fit_backend: %d windows of %d training speakers", len(x), len(set(labels)))
    return PLDA.fit(x, np.asarray(labels), config.plda)


def fit_backend(model: Any, train_cache, windows: WindowConfig = WindowConfig(),
                config: BackendConfig = BackendConfig(), speech: SpeechConfig = SpeechConfig()) -> PLDA:
    """Fit the diarization back end (LDA/PLDA) on TRAINING speakers' window embeddings.

    Args:
        model: model bundle (encoder + speaker head; CTC head used for speech masks if present).
        train_cache: :class:`echo.features.FeatureCache` of the training split.
        windows: the diarizer's window settings.
        config: speaker/utterance caps, PLDA settings, seed.
        speech: speech detection (as in the diarizer), so the head pools the same kind of tokens.

    Returns:
        fitted :class:`echo.diarization.plda.PLDA` (save it with ``plda.save(path)``).
    """
    parts = model_parts(model)
    index = train_cache.index
    rng = np.random.default_rng(config.seed)
    spk_all = np.array(sorted(index["speaker"].unique()), dtype=object)
    if config.max_speakers is not None and len(spk_all) > config.max_speakers:
        spk_all = np.sort(rng.choice(spk_all, config.max_speakers, replace=False))
    ids, spks = [], []
    for s in spk_all:
        utts = index.loc[index["speaker"] == s, "utt_id"].to_numpy()
        if len(utts) > config.max_utts_per_speaker:
            utts = np.sort(rng.choice(utts, config.max_utts_per_speaker, replace=False))
        ids += list(utts)
        spks += [s] * len(utts)
    token_s = _token_seconds(parts, train_cache.frontend)
    lats, masks = [], []
    frames = dict(zip(index["utt_id"], index["num_frames"]))
    order = np.argsort([int(frames[u]) for u in ids], kind="stable")
    ids, spks = [ids[i] for i in order], [spks[i] for i in order]  # similar lengths batch together
    for i in tqdm(range(0, len(ids), config.batch_size), desc="backend embeddings", disable=None, leave=False):
        mels = [train_cache.get(u) for u in ids[i:i + config.batch_size]]
        lat, mask = encode_batch(parts.encoder, mels)
        for j, m in enumerate(mels):
            n = int(mask[j].sum())
            latj = lat[j, :n].cpu().numpy()
            lats.append(latj)
            masks.append(speech_activity(parts, latj, m, speech, token_s, parts.encoder.cfg.patch_frames)[0])
    return backend_from_latents(parts, lats, spks, windows, config, token_s, masks)


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
        "total": agg["total"],
    }


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


def _split_of(conversations) -> str | None:
    table = getattr(conversations, "table", None)
    if table is not None and "split" in table.columns and len(table):
        return str(table["split"].iloc[0])
    return None


def tune_on_dev(diarizer: Diarizer, conversations, grid: TuneConfig = TuneConfig()) -> tuple[DiarizerConfig, list[dict]]:
    """Choose ``Fa``, ``Fb``, ``loopP`` (and optionally the AHC threshold) on DEV conversations
    by blind primary DER.

    Each conversation is encoded and embedded once; only the clustering runs per grid point.
    Ties keep the earlier grid point (grid order: Fa, Fb, loopP, AHC threshold, exclusive).

    Args:
        diarizer: the :class:`Diarizer` (its other settings stay fixed).
        conversations: a :class:`echo.simulate.conversations.ConversationSet` of the DEV split,
            or a list of items with ``rec_id``, ``audio``, ``annotation``, ``uem``, ``k``.
        grid: candidate values.

    Returns:
        ``(best DiarizerConfig, rows)``; one row per grid point: ``Fa``, ``Fb``, ``loopP``,
        ``ahc_threshold``, ``exclusive``, ``der``, ``jer``, ``count_accuracy``. Write
        ``dataclasses.asdict(best)`` as the bundle's ``diarizer.json`` so the CLI uses it.

    Raises:
        EchoError: the conversations are from the test split.
    """
    if _split_of(conversations) == "test":
        raise EchoError("tune_on_dev: got TEST conversations; tune on the dev split only")
    items = _pick(_items(conversations), grid.max_recordings)
    if not items:
        raise EchoError("tune_on_dev: no dev conversations")
    prepared = [diarizer.prepare(it.audio, it.rec_id) for it in tqdm(items, desc="tune: embed", disable=None, leave=False)]
    refs = {it.rec_id: it.annotation for it in items}
    uems = {it.rec_id: it.uem for it in items}
    k_of = {it.rec_id: int(it.k) for it in items}
    base = diarizer.config
    thresholds = grid.ahc_threshold or (base.ahc.threshold,)
    modes = grid.exclusive or (base.exclusive,)
    rows, best, best_der = [], base, math.inf
    for fa, fb, lp, th, ex in itertools.product(grid.Fa, grid.Fb, grid.loopP, thresholds, modes):
        cfg = dataclasses.replace(base, vbx=dataclasses.replace(base.vbx, Fa=float(fa), Fb=float(fb), loopP=float(lp)),
                                  ahc=dataclasses.replace(base.ahc, threshold=float(th)), exclusive=bool(ex))
        hyps = {p.uri: diarizer.cluster(p, cfg.vbx, ahc=cfg.ahc, exclusive=cfg.exclusive).annotation for p in prepared}
        s = score_diarization(refs, hyps, uems, k_of, PRIMARY)
        acc = float(np.mean([len(hyps[u].labels()) == k_of[u] for u in refs]))
        rows.append({"Fa": float(fa), "Fb": float(fb), "loopP": float(lp), "ahc_threshold": float(th),
                     "exclusive": bool(ex), "der": s["der"], "jer": s["jer"], "count_accuracy": acc})
        if s["der"] < best_der:
            best, best_der = cfg, s["der"]
    log.info("tune_on_dev: best Fa=%s Fb=%s loopP=%s ahc=%s exclusive=%s (dev DER %.4f on %d recordings)",
             best.vbx.Fa, best.vbx.Fb, best.vbx.loopP, best.ahc.threshold, best.exclusive, best_der, len(items))
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
    items = _pick(_items(conversations), max_recordings)
    hyps, refs, uems, k_of = {}, {}, {}, {}
    audio_s = wall_s = 0.0
    sources = set()
    for it in tqdm(items, desc="diarize", disable=None, leave=False):
        t0 = time.perf_counter()
        prep = diarizer.prepare(it.audio, it.rec_id)
        res = diarizer.cluster(prep, num_speakers=int(it.k) if oracle else None,
                               min_speakers=min_speakers, max_speakers=max_speakers)
        wall_s += time.perf_counter() - t0
        audio_s += prep.duration
        sources.add(prep.speech_source)
        hyps[it.rec_id] = res.annotation
        refs[it.rec_id], uems[it.rec_id], k_of[it.rec_id] = it.annotation, it.uem, int(it.k)
    out = score_conversations(refs, hyps, uems, k_of, bootstrap)
    out.update(condition="oracle" if oracle else "blind", audio_s=audio_s, wall_s=wall_s,
               real_time_factor=wall_s / audio_s if audio_s else math.nan, speech_source=",".join(sorted(sources)),
               vbx={"Fa": diarizer.config.vbx.Fa, "Fb": diarizer.config.vbx.Fb, "loopP": diarizer.config.vbx.loopP,
                    "ahc_threshold": diarizer.config.ahc.threshold}, exclusive=diarizer.config.exclusive)
    return out, hyps
