"""Blind speaker diarization with the shared encoder, and its evaluation (DER/JER/count by K).

Pipeline of :class:`Diarizer` for one recording (16 kHz mono), one pass over the recording in
chunks so that memory does not grow with its length (beyond O(tokens) flags and the per-window
embeddings):

1. the encoder in chunks of ``chunk_s`` seconds, each seen with ``context_s`` of extra context on
   both sides; only each chunk's core tokens are kept, so every kept token saw at least
   ``context_s`` of context on each side (except at the recording's ends). The log-mel of a
   chunk is computed from the samples it needs (:func:`chunk_log_mel`), equal to the frames of
   the whole recording's log-mel;
2. speech activity per 40 ms token (``SpeechConfig.source``): ``ctc`` = a token is speech when a
   phone emission (CTC non-blank posterior >= ``ctc_threshold``; silence is not a CTC label, so it
   falls to the blank) lies within ``dilation_s``; ``energy`` = token power above the recording's
   noise floor (a low percentile) by ``energy_margin_db`` (a cheap first pass of log-mels finds
   the floor); ``none`` = all speech;
3. sliding windows (:class:`echo.diarization.segments.WindowConfig`); a window whose speech share
   is below ``min_window_speech`` is skipped; the others are embedded by the speaker head over
   their speech tokens as soon as the chunks covering them are encoded (the latents of the
   chunked pass, so a window's tokens keep their context); latents are then dropped;
4. LDA/PLDA (fitted on TRAINING speakers' window embeddings by :func:`fit_backend`), AHC
   initialisation (on at most ``ahc.max_windows`` evenly spaced windows, the others joining the
   nearest centroid) and VBx (``Fa``, ``Fb``, ``loopP``) -> per-window speaker posteriors; blind
   unless ``num_speakers`` is given; ``min_speakers``/``max_speakers`` re-run with K clamped;
5. overlap (unless ``exclusive``; then the router never runs): the router reads consecutive,
   non-overlapping blocks of ``router_s`` seconds (its training mixtures' length); a slot exists
   when its existence probability is >= ``overlap_threshold`` and is active at a token when its
   latent is not the encoder's latent of silence (cosine < ``activity_threshold``), which is what
   a slot is trained to output where its source is silent. A token with >= 2 active slots is
   overlap: there the second most likely VBx speaker of its window is added;
6. every speech token takes the speaker(s) of the kept window whose centre is nearest; runs of
   tokens become the Annotation's segments (40 ms resolution).

The CLI (``python -m echo diarize``) calls this same class. Scoring: :func:`evaluate_diarization`
(primary and secondary DER, JER, speaker-count accuracy, each by K with bootstrap CIs) and
:func:`tune_on_dev` (small Fa/Fb/loopP grid on DEV conversations, chosen by primary DER).
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
from typing import Any, Callable, Iterable, Sequence

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
    "Diarizer", "BlockReader", "encode_long", "chunk_log_mel", "slot_overlap", "speech_activity", "fit_backend", "backend_from_latents", "tune_on_dev",
    "score_conversations", "evaluate_diarization", "evaluate_conditions",
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
        overlap_threshold: router existence probability for a slot to exist, in (0, 1).
        activity_threshold: an existing slot is active at a token when the cosine of its latent
            to the encoder's latent of silence is below this, in [-1, 1] (1 = active wherever
            it exists).
        router_s: seconds per router block (> 0): the routing stage's mixture length (4 s).
        batch_windows: windows per speaker-head batch (>= 1).
        progress_s: show a progress bar over the chunks for recordings at least this long
            (seconds >= 0; only on a terminal).
    """

    chunk_s: float = 30.0
    context_s: float = 4.0
    windows: WindowConfig = WindowConfig()
    ahc: AHCConfig = AHCConfig()
    vbx: VBxConfig = VBxConfig()
    speech: SpeechConfig = SpeechConfig()
    exclusive: bool = False
    overlap_threshold: float = 0.5
    activity_threshold: float = 0.5
    router_s: float = 4.0
    batch_windows: int = 64
    progress_s: float = 120.0

    def __post_init__(self):
        _need(self.chunk_s > 0, "diarize.chunk_s", "seconds > 0", self.chunk_s)
        _need(self.context_s >= 0, "diarize.context_s", "seconds >= 0", self.context_s)
        _need(isinstance(self.exclusive, bool), "diarize.exclusive", "true or false", self.exclusive)
        _need(0.0 < self.overlap_threshold < 1.0, "diarize.overlap_threshold", "a number in (0, 1)",
              self.overlap_threshold)
        _need(isinstance(self.batch_windows, int) and self.batch_windows >= 1, "diarize.batch_windows",
              "an integer >= 1", self.batch_windows)
        _need(isinstance(self.activity_threshold, (int, float)) and -1.0 <= self.activity_threshold <= 1.0,
              "diarize.activity_threshold", "a cosine in [-1, 1]", self.activity_threshold)
        _need(isinstance(self.router_s, (int, float)) and self.router_s > 0, "diarize.router_s", "seconds > 0",
              self.router_s)
        _need(isinstance(self.progress_s, (int, float)) and self.progress_s >= 0, "diarize.progress_s",
              "seconds >= 0", self.progress_s)


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
        augmented: also embed the augmented (noisy, reverberant) copy of the same utterances, so
            LDA/PLDA model the within-speaker variability the test acoustics bring (the Kaldi
            x-vector recipes train PLDA on augmented data for the same reason).
    """

    plda: PLDAConfig = PLDAConfig()
    max_speakers: int | None = None
    max_utts_per_speaker: int = 20
    max_windows_per_utt: int = 4
    batch_size: int = 16
    seed: int = 0
    augmented: bool = False

    def __post_init__(self):
        _need(isinstance(self.augmented, bool), "diarize.backend.augmented", "true or false", self.augmented)
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
        dilation_s: candidate speech-detection dilations (``speech.dilation_s``); each value
            re-encodes the dev conversations once; empty = keep the configured one.
        max_recordings: tune on at most this many dev conversations (evenly spread); None = all.
    """

    Fa: tuple[float, ...] = (0.1, 0.3, 0.5)
    Fb: tuple[float, ...] = (5.0, 17.0, 40.0)
    loopP: tuple[float, ...] = (0.9, 0.99)
    ahc_threshold: tuple[float, ...] = ()
    exclusive: tuple[bool, ...] = ()
    dilation_s: tuple[float, ...] = ()
    max_recordings: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "ahc_threshold", tuple(self.ahc_threshold))
        object.__setattr__(self, "dilation_s", tuple(self.dilation_s))
        _need(all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in self.dilation_s),
              "diarize.tune.dilation_s", "a list of seconds >= 0", self.dilation_s)
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


class BlockReader:
    """A long signal read as consecutive blocks (e.g. :func:`echo.inference.stream`), sliced like
    an array by reads whose start never goes back, so that only the blocks under the current
    chunk are in memory (an hour at 16 kHz would be 230 MB). A read starting before what is still
    held starts a new pass over the blocks (the energy detector's first pass).

    Args:
        blocks: called once per pass; returns an iterable of consecutive 1-D float blocks.
        num_samples: the signal's exact length.

    Example::

        wave = BlockReader(lambda: stream(src), n)   # n from a counting pass
        Diarizer(model, plda).diarize(wave, "rec1")
    """

    def __init__(self, blocks: Callable[[], Iterable[np.ndarray]], num_samples: int):
        if num_samples < 0:
            raise EchoError(f"BlockReader: expected num_samples >= 0, got {num_samples}")
        self._open, self.num_samples = blocks, int(num_samples)
        self.passes = 0
        self._restart()

    def _restart(self) -> None:
        self._it = iter(self._open())
        self._buf, self._lo = np.zeros(0, np.float32), 0  # held samples [_lo, _lo + len(_buf))
        self.passes += 1

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise EchoError("BlockReader: only contiguous slices [lo:hi] can be read")
        lo = max(0, key.start or 0)
        hi = min(self.num_samples, self.num_samples if key.stop is None else key.stop)
        if lo < self._lo:
            self._restart()
        self._drop_before(lo)
        while self._lo + len(self._buf) < hi:
            x = next(self._it, None)
            if x is None:
                raise EchoError(f"BlockReader: the blocks end at sample {self._lo + len(self._buf)}, "
                                f"expected {self.num_samples}")
            self._buf = np.concatenate([self._buf, np.asarray(x, dtype=np.float32).ravel()])
            self._drop_before(lo)
        return self._buf[lo - self._lo: max(lo, hi) - self._lo]

    def _drop_before(self, lo: int) -> None:
        cut = min(max(0, lo - self._lo), len(self._buf))
        if cut:
            self._buf, self._lo = self._buf[cut:], self._lo + cut


def chunk_log_mel(frontend: FrontEnd, wave: np.ndarray, f0: int, f1: int) -> np.ndarray:
    """Frames ``f0 .. f1 - 1`` of ``frontend.compute(wave)``, computed from the samples they need.

    A centred STFT frame ``f`` reads samples ``f * hop +- n_fft / 2``; the slice read here starts
    a whole number of hops (>= n_fft / 2) before the first frame's centre, so its frames line up
    with the whole signal's, and its own edge padding (reflection) only touches frames that are
    dropped, except at the signal's true ends, where it is the whole signal's padding. The result
    equals slicing the whole recording's log-mel (to float rounding) at a cost of ``f1 - f0``
    frames.

    Args:
        frontend: the log-mel front-end.
        wave: the whole mono recording at ``frontend.sample_rate``.
        f0, f1: frame range (``f1`` is clipped to the recording's frame count).

    Returns:
        ``(f1 - f0, n_mels)`` float32 raw log-mel.
    """
    hop = frontend.hop_length
    f1 = min(f1, frontend.num_frames(len(wave)))
    if f1 <= f0:
        return np.zeros((0, frontend.n_mels), np.float32)
    margin = -(-(frontend.n_fft // 2) // hop) * hop
    lo = max(0, f0 * hop - margin)
    hi = min(len(wave), (f1 - 1) * hop + margin + 1)
    off = lo // hop
    return frontend.compute(wave[lo:hi])[f0 - off: f1 - off]


def _token_db(mels: np.ndarray, n_tokens: int, patch_frames: int) -> np.ndarray:
    """Mean mel power per token in dB; a partial last token repeats its last frame's power."""
    power = np.exp(np.asarray(mels, dtype=np.float64)).sum(1)  # mel power per 10 ms frame
    pad = n_tokens * patch_frames - len(power)
    power = np.r_[power, np.full(pad, power[-1])] if pad else power
    return 10.0 * np.log10(power.reshape(n_tokens, patch_frames).mean(1) + 1e-12)


def _energy_speech(db: np.ndarray, config: SpeechConfig) -> np.ndarray:
    floor = np.percentile(db, config.energy_floor_percentile)
    return db > floor + config.energy_margin_db


def _dilate_range(mask: np.ndarray, lo: int, hi: int, radius: int) -> np.ndarray:
    """``_dilate(mask, radius)[lo:hi]`` from ``mask[lo - radius: hi + radius]`` only."""
    if radius <= 0:
        return mask[lo:hi].copy()
    a, b = max(0, lo - radius), min(len(mask), hi + radius)
    c = np.r_[0, np.cumsum(mask[a:b], dtype=np.int64)]
    t = np.arange(lo, hi)
    left, right = np.maximum(t - radius, a) - a, np.minimum(t + radius + 1, b) - a
    return (c[right] - c[left]) > 0


def slot_overlap(slots: np.ndarray, exist_logits: np.ndarray, silence: np.ndarray, overlap_threshold: float = 0.5,
                 activity_threshold: float = 0.5) -> np.ndarray:
    """Tokens where two or more router slots are active at once.

    A slot exists when ``sigmoid(exist_logit) >= overlap_threshold``; an existing slot is active
    at a token when the cosine of its latent to ``silence`` (the encoder's latent of digital
    silence, which the router is trained to output for a source that is silent there) is below
    ``activity_threshold``. Hand-written: no library maps K-set slots to frame activity.

    Args:
        slots: ``(B, K, L, D)`` slot latents of ``B`` router blocks.
        exist_logits: ``(B, K)``.
        silence: ``(D,)`` silence latent (any norm).
        overlap_threshold: existence probability threshold, in (0, 1).
        activity_threshold: cosine threshold, in [-1, 1].

    Returns:
        ``(B, L)`` bool.
    """
    slots = np.asarray(slots, dtype=np.float32)
    sil = np.asarray(silence, dtype=np.float32)
    sil = sil / max(float(np.linalg.norm(sil)), 1e-12)
    exist = 1.0 / (1.0 + np.exp(-np.asarray(exist_logits, dtype=np.float64))) >= overlap_threshold
    cos = (slots @ sil) / np.maximum(np.linalg.norm(slots, axis=-1), 1e-12)
    active = (cos < activity_threshold) & exist[:, :, None]
    return active.sum(1) >= 2


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
    return _energy_speech(_token_db(mels, n, patch_frames), config), "energy"


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
        overlap: (N,) bool per token, the router sees >= 2 active slots (None: no router or
            exclusive).
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
            wave: mono float waveform at the front-end's sample rate (16 kHz), or a
                :class:`BlockReader` streaming it (memory then does not grow with its length).
            uri: recording id (the Annotation's uri and the RTTM's file id).
            num_speakers: oracle K (None = blind).
            min_speakers, max_speakers: bounds on the blind estimate.

        Returns:
            pyannote Annotation with labels ``spk0``, ``spk1``, ... (by first appearance).
        """
        return self.cluster(self.prepare(wave, uri), num_speakers=num_speakers, min_speakers=min_speakers,
                            max_speakers=max_speakers).annotation

    def prepare(self, wave: np.ndarray, uri: str) -> Prepared:
        """Encode, detect speech, embed windows and detect overlap (the costly, setting-free part).

        ``wave``: as in :meth:`diarize`. One pass over the recording in encoder chunks (:func:`chunk_log_mel` + encoder + CTC
        head per chunk); windows are embedded and router blocks routed as soon as their tokens
        are encoded, so only about one chunk of latents is held at a time.
        """
        t0 = time.perf_counter()
        if not isinstance(wave, BlockReader):
            wave = np.asarray(wave, dtype=np.float32).ravel()
        if len(wave) == 0:
            raise EchoError(f"diarize {uri}: empty recording")
        cfg, fe, parts = self.config, self.frontend, self.parts
        enc, p = parts.encoder, parts.encoder.cfg.patch_frames
        frames = fe.num_frames(len(wave))
        n = -(-frames // p)
        duration = len(wave) / fe.sample_rate
        chunk, ctx = max(1, round(cfg.chunk_s / self.token_s)), round(cfg.context_s / self.token_s)
        starts = range(0, n, chunk)
        ctc = parts.ctc if parts.ctc is not None else parts.ctc_vq
        source = cfg.speech.source
        if source == "auto":
            source = "ctc" if ctc is not None else "energy"
        if source == "ctc" and ctc is None:
            raise EchoError("diarize.speech.source: 'ctc' needs a model with a CTC head")
        speech = None
        if source == "energy":  # the floor is a percentile of the whole recording: a first, mel-only pass
            db = np.concatenate([_token_db(chunk_log_mel(fe, wave, c0 * p, min(n, c0 + chunk) * p),
                                           min(n, c0 + chunk) - c0, p) for c0 in starts])
            speech = _energy_speech(db, cfg.speech)
        elif source == "none":
            speech = np.ones(n, dtype=bool)
        radius = int(round(cfg.speech.dilation_s / self.token_s))
        stream = _WindowStream(self, n, duration, speech, radius)
        dev = parts.device
        bar = tqdm(starts, desc=f"diarize {uri}", unit="chunk", leave=False,
                   disable=None if duration >= cfg.progress_s else True)
        with torch.inference_mode():
            for c0 in bar:
                c1 = min(n, c0 + chunk)
                a, b = max(0, c0 - ctx), min(n, c1 + ctx)
                mels = torch.from_numpy(chunk_log_mel(fe, wave, a * p, b * p)).to(dev)
                feats = enc(mels.unsqueeze(0)).features[0, c0 - a: c1 - a]
                emit = None
                if source == "ctc":
                    log_probs = ctc(feats.unsqueeze(0)).log_probs[0]
                    emit = (1.0 - log_probs[:, 0].exp()).cpu().numpy() >= cfg.speech.ctc_threshold
                stream.push(feats.float().cpu().numpy(), emit)
        prep = stream.finish(uri)
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
        stream = _WindowStream(self, n, duration, speech, 0)
        stream.push(lat)
        return stream.finish(uri)

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
        over = p.overlap if (p.overlap is not None and not exclusive) else None
        ann = self._annotate(post, over, p)
        labels = post.argmax(1)
        return DiarizationResult(ann, len(ann.labels()), labels, post, p)

    # -- internals -----------------------------------------------------------------------------
    def _token_spans(self, windows: np.ndarray, n: int) -> np.ndarray:
        a = np.floor(windows[:, 0] / self.token_s + 1e-6).astype(np.int64)
        b = np.ceil(windows[:, 1] / self.token_s - 1e-6).astype(np.int64)
        return np.stack([np.clip(a, 0, n), np.clip(np.maximum(b, a + 1), 0, n)], 1).reshape(-1, 2)

    @torch.inference_mode()
    def _embed(self, lat: np.ndarray, speech: np.ndarray, spans: np.ndarray) -> np.ndarray:
        """Speaker-head embeddings of windows ``spans`` (token ranges into ``lat``/``speech``)."""
        dev = self.parts.device
        length = int((spans[:, 1] - spans[:, 0]).max())
        x = torch.zeros(len(spans), length, lat.shape[1])
        tok = torch.zeros(len(spans), length, dtype=torch.bool)
        sp = torch.zeros(len(spans), length, dtype=torch.bool)
        for j, (a, b) in enumerate(spans):
            x[j, : b - a] = torch.from_numpy(lat[a:b])
            tok[j, : b - a] = True
            sp[j, : b - a] = torch.from_numpy(speech[a:b])
        sp = torch.where(sp.any(1, keepdim=True), sp, tok)  # a window without speech pools all tokens
        return self.parts.speaker(x.to(dev), sp.to(dev)).float().cpu().numpy()

    @torch.inference_mode()
    def _silence(self) -> np.ndarray:
        """Unit-norm encoder latent of digital silence: what a router slot outputs where its
        source is silent (slots are trained on the encoder applied to the isolated source)."""
        if getattr(self, "_silence_latent", None) is None:
            mels = torch.from_numpy(self.frontend.compute(np.zeros(2 * self.frontend.sample_rate, np.float32)))
            z = self.parts.encoder(mels.to(self.parts.device).unsqueeze(0)).features[0].float().cpu().numpy()
            z = z[2:-2].mean(0) if len(z) > 4 else z.mean(0)
            self._silence_latent = z / max(float(np.linalg.norm(z)), 1e-12)
        return self._silence_latent

    @torch.inference_mode()
    def _route(self, blocks: np.ndarray) -> np.ndarray:
        """``(B, L, D)`` equal-length router blocks -> ``(B, L)`` bool: >= 2 slots active."""
        cfg = self.config
        out = self.parts.router(torch.from_numpy(np.ascontiguousarray(blocks)).to(self.parts.device))
        return slot_overlap(out.slots.float().cpu().numpy(), out.exist_logits.float().cpu().numpy(), self._silence(),
                            cfg.overlap_threshold, cfg.activity_threshold)

    def _annotate(self, post: np.ndarray, overlap: np.ndarray | None, p: Prepared) -> Annotation:
        n = len(p.speech)
        centres = p.windows.mean(1)
        tok_c = (np.arange(n) + 0.5) * p.token_s
        # nearest window centre = the window owning this token (midpoint split between neighbours)
        j = np.clip(np.searchsorted(centres, tok_c), 1, len(centres) - 1) if len(centres) > 1 else np.zeros(n, np.int64)
        if len(centres) > 1:
            j = np.where(np.abs(tok_c - centres[j - 1]) <= np.abs(centres[j] - tok_c), j - 1, j)
        # the window's best speaker everywhere, its second one at tokens the router calls overlap
        second = np.zeros(n, dtype=bool) if overlap is None else np.asarray(overlap, dtype=bool)
        tok_act = assign_overlap(post[j], second) & p.speech[:, None]
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


class _WindowStream:
    """Consumes a recording's token latents in consecutive blocks and embeds each window (and
    routes each router block) as soon as its tokens and their speech decisions are in, then drops
    the latents no pending window or block needs: only about one chunk of latents is held.

    Speech is either given for every token (``speech``), or decided on the way from per-token CTC
    emissions passed with each block (dilated by ``radius`` tokens, so a token's decision waits
    for ``radius`` tokens of look-ahead).
    """

    def __init__(self, diarizer: Diarizer, n: int, duration: float, speech: np.ndarray | None, radius: int):
        cfg = diarizer.config
        self.d, self.n, self.duration, self.radius = diarizer, n, duration, radius
        self.windows = sliding_windows(duration, cfg.windows)
        self.spans = diarizer._token_spans(self.windows, n)
        self.emit = None if speech is not None else np.zeros(n, dtype=bool)
        self.speech = np.asarray(speech, dtype=bool) if speech is not None else np.zeros(n, dtype=bool)
        self.known = n if speech is not None else 0  # speech decided for tokens < known
        self.end = 0  # latents received for tokens < end
        self.buf, self.buf0 = None, 0  # latents of tokens [buf0, end)
        self.next_win = 0  # windows before this one are decided (kept or skipped)
        self.pending: list[int] = []  # kept windows not embedded yet
        self.kept = np.zeros(len(self.spans), dtype=bool)
        # one array for all windows, allocated once: many small long-lived arrays between the
        # chunks' large temporaries fragment the heap, and RSS then grows with the recording
        self.embs: np.ndarray | None = None
        self.use_router = diarizer.parts.router is not None and not cfg.exclusive
        self.block = max(1, round(cfg.router_s / diarizer.token_s))
        self.next_block = 0
        self.overlap = np.zeros(n, dtype=bool) if self.use_router else None

    def push(self, latents: np.ndarray, emit: np.ndarray | None = None) -> None:
        """Append the latents (and, without a fixed speech mask, the CTC emissions) of the next tokens."""
        c0, c1 = self.end, self.end + len(latents)
        self.buf = latents if self.buf is None else np.concatenate([self.buf, latents])
        self.end = c1
        if self.emit is not None:
            self.emit[c0:c1] = emit
            new_known = c1 - self.radius if c1 < self.n else self.n
            if new_known > self.known:
                self.speech[self.known:new_known] = _dilate_range(self.emit, self.known, new_known, self.radius)
                self.known = new_known
        self._advance(final=False)

    def finish(self, uri: str) -> Prepared:
        if self.end != self.n:
            raise EchoError(f"diarize {uri}: got latents for {self.end} tokens, expected {self.n}")
        self._advance(final=True)
        emb = self.embs[self.kept] if self.embs is not None else np.zeros((0, 0), np.float32)
        return Prepared(uri, self.duration, self.d.token_s, self.speech, self.windows[self.kept].reshape(-1, 2), emb,
                        self.overlap)

    def _advance(self, final: bool) -> None:
        cfg = self.d.config
        w = len(self.spans)
        ready = min(self.known, self.end)  # speech decided and latents in
        while self.next_win < w and self.spans[self.next_win, 1] <= ready:
            a, b = self.spans[self.next_win]
            share = self.speech[a:b].mean() if b > a else 0.0
            if share >= cfg.speech.min_window_speech and share > 0:
                self.pending.append(self.next_win)
            self.next_win += 1
        while len(self.pending) >= cfg.batch_windows or (final and self.pending):
            batch, self.pending = self.pending[:cfg.batch_windows], self.pending[cfg.batch_windows:]
            emb = self.d._embed(self.buf, self.speech[self.buf0:], self.spans[batch] - self.buf0)
            if self.embs is None:
                self.embs = np.empty((len(self.spans), emb.shape[1]), dtype=np.float32)
            self.embs[batch] = emb
            self.kept[batch] = True
        if self.use_router:  # blocks without a speech token are skipped: overlap only matters on speech
            full = (ready - self.next_block) // self.block
            if full:
                starts = self.next_block + self.block * np.arange(full)
                live = [a for a in starts if self.speech[a:a + self.block].any()]
                if live:
                    blocks = np.stack([self.buf[a - self.buf0: a - self.buf0 + self.block] for a in live])
                    for a, flags in zip(live, self.d._route(blocks)):
                        self.overlap[a:a + self.block] = flags
                self.next_block += full * self.block
            if final and self.next_block < self.n:  # the shorter last block
                if self.speech[self.next_block:].any():
                    self.overlap[self.next_block:] = self.d._route(self.buf[self.next_block - self.buf0:][None])[0]
                self.next_block = self.n
        need = [self.end]
        if self.pending:
            need.append(int(self.spans[self.pending[0], 0]))
        elif self.next_win < w:
            need.append(int(self.spans[self.next_win, 0]))
        if self.use_router:
            need.append(self.next_block)
        start = min(need)
        if start > self.buf0:
            self.buf = self.buf[start - self.buf0:]
            self.buf0 = start


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
                config: BackendConfig = BackendConfig(), speech: SpeechConfig = SpeechConfig(),
                noisy_cache=None) -> PLDA:
    """Fit the diarization back end (LDA/PLDA) on TRAINING speakers' window embeddings.

    Args:
        model: model bundle (encoder + speaker head; CTC head used for speech masks if present).
        train_cache: :class:`echo.features.FeatureCache` of the training split.
        windows: the diarizer's window settings.
        config: speaker/utterance caps, PLDA settings, seed.
        speech: speech detection (as in the diarizer), so the head pools the same kind of tokens.
        noisy_cache: the augmented copy of ``train_cache``; with ``config.augmented`` the same
            utterances are embedded from it too (one more sample per utterance for its speaker).

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
    caches = [train_cache]
    if config.augmented:
        if noisy_cache is None:
            raise ConfigError("diarize.backend.augmented: true needs the augmented training cache "
                              "(data/features/train_noisy); set false to fit on clean utterances")
        caches.append(noisy_cache)
    labels = []
    for cache in caches:
        for i in tqdm(range(0, len(ids), config.batch_size), desc="backend embeddings", disable=None, leave=False):
            mels = [cache.get(u) for u in ids[i:i + config.batch_size]]
            lat, mask = encode_batch(parts.encoder, mels)
            for j, m in enumerate(mels):
                n = int(mask[j].sum())
                latj = lat[j, :n].cpu().numpy()
                lats.append(latj)
                masks.append(speech_activity(parts, latj, m, speech, token_s, parts.encoder.cfg.patch_frames)[0])
        labels += spks
    return backend_from_latents(parts, lats, labels, windows, config, token_s, masks)


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
    """Choose ``Fa``, ``Fb``, ``loopP`` (and optionally the AHC threshold, the output mode and
    the speech dilation) on DEV conversations by blind primary DER.

    Each conversation is encoded and embedded once per speech dilation; only the clustering runs
    per grid point. Ties keep the earlier grid point (grid order: dilation, Fa, Fb, loopP, AHC
    threshold, exclusive).

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
    refs = {it.rec_id: it.annotation for it in items}
    uems = {it.rec_id: it.uem for it in items}
    k_of = {it.rec_id: int(it.k) for it in items}
    base = diarizer.config
    thresholds = grid.ahc_threshold or (base.ahc.threshold,)
    modes = grid.exclusive or (base.exclusive,)
    rows, best, best_der = [], base, math.inf
    for dil in grid.dilation_s or (base.speech.dilation_s,):
        speech = dataclasses.replace(base.speech, dilation_s=float(dil))
        d = copy.copy(diarizer)  # the same model and back end; only the speech setting differs
        d.config = dataclasses.replace(base, speech=speech)
        prepared = [d.prepare(it.audio, it.rec_id) for it in tqdm(items, desc="tune: embed", disable=None, leave=False)]
        for fa, fb, lp, th, ex in itertools.product(grid.Fa, grid.Fb, grid.loopP, thresholds, modes):
            cfg = dataclasses.replace(d.config, vbx=dataclasses.replace(base.vbx, Fa=float(fa), Fb=float(fb), loopP=float(lp)),
                                      ahc=dataclasses.replace(base.ahc, threshold=float(th)), exclusive=bool(ex))
            hyps = {p.uri: d.cluster(p, cfg.vbx, ahc=cfg.ahc, exclusive=cfg.exclusive).annotation for p in prepared}
            s = score_diarization(refs, hyps, uems, k_of, PRIMARY)
            acc = float(np.mean([len(hyps[u].labels()) == k_of[u] for u in refs]))
            rows.append({"Fa": float(fa), "Fb": float(fb), "loopP": float(lp), "ahc_threshold": float(th),
                         "exclusive": bool(ex), "dilation_s": float(dil), "der": s["der"], "jer": s["jer"],
                         "count_accuracy": acc})
            if s["der"] < best_der:
                best, best_der = cfg, s["der"]
    log.info("tune_on_dev: best Fa=%s Fb=%s loopP=%s ahc=%s exclusive=%s dilation=%s s (dev DER %.4f on %d recordings)",
             best.vbx.Fa, best.vbx.Fb, best.vbx.loopP, best.ahc.threshold, best.exclusive, best.speech.dilation_s,
             best_der, len(items))
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
    wall = [0.0 for _ in oracles]
    refs, uems, k_of = {}, {}, {}
    audio_s = 0.0
    sources = set()
    for it in tqdm(items, desc="diarize", disable=None, leave=False):
        t0 = time.perf_counter()
        prep = diarizer.prepare(it.audio, it.rec_id)
        t_prep = time.perf_counter() - t0
        for i, oracle in enumerate(oracles):
            t1 = time.perf_counter()
            res = diarizer.cluster(prep, num_speakers=int(it.k) if oracle else None,
                                   min_speakers=min_speakers, max_speakers=max_speakers)
            wall[i] += t_prep + time.perf_counter() - t1
            hyps[i][it.rec_id] = res.annotation
        audio_s += prep.duration
        sources.add(prep.speech_source)
        refs[it.rec_id], uems[it.rec_id], k_of[it.rec_id] = it.annotation, it.uem, int(it.k)
    results = []
    for oracle, h, wall_s in zip(oracles, hyps, wall):
        out = score_conversations(refs, h, uems, k_of, bootstrap)
        out.update(condition="oracle" if oracle else "blind", audio_s=audio_s, wall_s=wall_s,
                   real_time_factor=wall_s / audio_s if audio_s else math.nan,
                   speech_source=",".join(sorted(sources)),
                   vbx={"Fa": diarizer.config.vbx.Fa, "Fb": diarizer.config.vbx.Fb,
                        "loopP": diarizer.config.vbx.loopP, "ahc_threshold": diarizer.config.ahc.threshold},
                   exclusive=diarizer.config.exclusive)
        results.append((out, h))
    return results
