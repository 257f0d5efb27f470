"""Speaker diarization with one Echo model: local segmentation on the shared latent, then global
clustering of per-(chunk, local speaker) embeddings (the pyannote 3 / DiariZen recipe on Echo's
encoder).

For one recording (16 kHz mono), in one streamed pass whose memory does not grow with its length
beyond small per-chunk arrays:

1. the encoder runs in blocks of ``chunk_s`` seconds, each seen with ``context_s`` of extra
   context on both sides (:func:`echo.inference.iter_latents`); only each block's core tokens are kept;
2. segmentation chunks of ``segment_s`` seconds every ``segment_step_s`` go through the
   segmentation head (powerset, :mod:`echo.heads.segmentation`) as soon as their tokens are
   encoded: per token, which of the chunk's ``max_speakers`` local speakers talk (with overlap);
3. each (chunk, local speaker) gets one speaker-head embedding pooled over the tokens where that
   speaker talks alone (all its tokens if it never does); those with at least ``min_embed_s`` of
   such clean speech take part in the clustering;
4. LDA/PLDA (fitted on TRAINING speakers by :func:`echo.diarization.backend.fit_backend`), AHC
   initialisation and VBx (``Fa``, ``Fb``, ``loopP``) cluster the embeddings; then every
   (chunk, local speaker) is assigned to a global speaker with the constraint that two local
   speakers of one chunk are different people (Hungarian assignment per chunk, as pyannote's
   ``constrained_argmax``);
5. reconstruction: each global speaker's activity is the average of its local activities over the
   chunks covering a token; the number of speakers at a token is the rounded average of the
   chunks' local counts; the top-count speakers are active there. That is the overlapping output;
   the exclusive one keeps the single most active speaker wherever anyone speaks.

``Diarizer.from_pretrained(dir)`` / ``save(dir)`` read and write the deployable folder (model
bundle + ``plda.npz`` + ``diarizer.json``); ``diarizer(audio, num_speakers=..., hook=...)``
returns a :class:`DiarizeOutput` with pyannote.core Annotations. Scoring and dev tuning live in
:mod:`echo.evaluate.diarize`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from pyannote.core import Annotation, Segment
from scipy.optimize import linear_sum_assignment

from echo.config import check_fields, need, rule
from echo.diarization.ahc import AHCConfig
from echo.diarization.plda import PLDA
from echo.diarization.vbx import VBxConfig, vbx_cluster
from echo.errors import ConfigError, EchoError
from echo.features import FrontEnd
from echo.inference import iter_latents, token_count
from echo.progress import Hook

__all__ = ["DiarizerConfig", "DiarizeOutput", "Prepared", "Diarizer", "BlockReader", "activity_annotation",
           "reference_activity", "constrained_assignment", "check_speaker_counts", "MODEL_FILES"]

log = logging.getLogger(__name__)

# the deployable folder: the model bundle's files (echo.models.bundle.BUNDLE_FILE, component_file) plus these two
MODEL_FILES = {"plda": "plda.npz", "config": "diarizer.json"}


@dataclass(frozen=True)
class DiarizerConfig:
    """Diarization settings (params.yaml ``evaluation.diarizer``).

    Attributes:
        chunk_s: seconds of tokens kept per encoder pass (> 0, finite); bounds memory.
        context_s: extra seconds encoded on each side of an encoder pass and dropped (>= 0).
        segment_s: segmentation chunk length (> 0): the segmentation stage's training chunks.
        segment_step_s: hop between segmentation chunks, in (0, segment_s].
        min_embed_s: a local speaker needs this much speech where it talks alone to take part in
            the clustering (>= 0); shorter ones are assigned to the clusters afterwards.
        ahc: AHC initialisation of VBx.
        vbx: VBx settings (``Fa``, ``Fb``, ``loopP`` are what dev tuning searches).
        batch_chunks: segmentation chunks per head batch (>= 1).
    """

    chunk_s: float = field(default=30.0, metadata=rule(gt=0, finite=True))
    context_s: float = field(default=4.0, metadata=rule(ge=0, finite=True))
    segment_s: float = field(default=1.5, metadata=rule(gt=0, finite=True))
    segment_step_s: float = field(default=0.5, metadata=rule(gt=0, finite=True))
    min_embed_s: float = field(default=0.4, metadata=rule(ge=0, finite=True))
    ahc: AHCConfig = AHCConfig()
    vbx: VBxConfig = VBxConfig(loopP=0.0)
    batch_chunks: int = field(default=32, metadata=rule(ge=1))

    def __post_init__(self):
        check_fields(self)
        need(self, self.segment_step_s <= self.segment_s, "segment_step_s", f"seconds in (0, segment_s={self.segment_s}]",
             self.segment_step_s)


# --- audio and encoding ------------------------------------------------------------------------


class BlockReader:
    """A long signal read as consecutive blocks (e.g. :func:`echo.inference.stream`), sliced like
    an array by reads whose start never goes back, so that only the blocks under the current
    chunk are in memory (an hour at 16 kHz would be 230 MB). A read starting before what is still
    held starts a new pass over the blocks.

    Args:
        blocks: called once per pass; returns an iterable of consecutive 1-D float blocks.
        num_samples: the signal's exact length.
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


def reference_activity(annotation: Annotation, n_tokens: int, token_s: float) -> tuple[np.ndarray, list[str]]:
    """``(n_tokens, K)`` 0/1 activity of each labelled speaker (a token is active when its centre
    lies in one of the speaker's segments) and the labels, sorted."""
    labels = sorted(annotation.labels())
    act = np.zeros((n_tokens, len(labels)), dtype=np.uint8)
    centres = (np.arange(n_tokens) + 0.5) * token_s
    for j, lab in enumerate(labels):
        for seg in annotation.label_timeline(lab):
            a, b = np.searchsorted(centres, [seg.start, seg.end])
            act[a:b, j] = 1
    return act, labels


def activity_annotation(activity: np.ndarray, token_s: float, uri: str, duration: float | None = None,
                        labels: list[str] | None = None) -> Annotation:
    """``(N, K)`` bool activity at ``token_s`` resolution -> Annotation (runs become segments)."""
    ann = Annotation(uri=uri)
    act = np.asarray(activity, dtype=bool)
    end = act.shape[0] * token_s if duration is None else duration
    for k in range(act.shape[1]):
        d = np.diff(np.r_[False, act[:, k], False].astype(np.int8))
        for s, e in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
            seg = Segment(round(s * token_s, 3), round(min(e * token_s, end), 3))
            if seg.duration > 0:
                ann[seg, ann.new_track(seg)] = labels[k] if labels else f"spk{k}"
    return ann


# --- the diarizer ------------------------------------------------------------------------------


@dataclass
class Prepared:
    """Everything of one recording that does not depend on the clustering settings.

    Attributes:
        uri: recording id.
        duration: seconds.
        token_s: seconds per token.
        n_tokens: tokens of the recording.
        starts: (C,) first token of each segmentation chunk.
        length: tokens per chunk (the last chunks may extend past ``n_tokens``: those are padding).
        activity: (C, L, S) float16 local speaker activity probabilities.
        hard: (C, L, S) bool argmax powerset activity.
        embeddings: (C, S, E) float32 speaker embeddings (zeros where a local speaker is silent).
        valid: (C, S) bool, the local speaker talks in the chunk.
        clean: (C, S) bool, it has at least ``min_embed_s`` of speech alone (used for clustering).
        encode_s: seconds spent encoding, segmenting and embedding.
    """

    uri: str
    duration: float
    token_s: float
    n_tokens: int
    starts: np.ndarray
    length: int
    activity: np.ndarray
    hard: np.ndarray
    embeddings: np.ndarray
    valid: np.ndarray
    clean: np.ndarray
    encode_s: float = 0.0


@dataclass
class DiarizeOutput:
    """A recording's diarization (pyannote 4's names).

    Attributes:
        speaker_diarization: Annotation with overlap (labels ``spk0``, ``spk1``, ... by first appearance).
        exclusive_speaker_diarization: one speaker at a time (for aligning with a transcript).
        speaker_embeddings: (K, E) unit embedding per output speaker, rows in label order.
        labels: the output labels, in the order of ``speaker_embeddings``.
        warnings: requests that could not be met exactly (also logged).
    """

    speaker_diarization: Annotation
    exclusive_speaker_diarization: Annotation
    speaker_embeddings: np.ndarray
    labels: list[str]
    warnings: list[str] = field(default_factory=list)
    prepared: Prepared | None = field(default=None, repr=False)

    @property
    def num_speakers(self) -> int:
        return len(self.labels)


def _check_count(name: str, v) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
        raise ConfigError(f"{name}: expected an integer >= 1, got {v!r}")


def check_speaker_counts(num_speakers=None, min_speakers=None, max_speakers=None) -> None:
    """Raise a one-line :class:`ConfigError` for counts that are not integers >= 1 or contradict."""
    for name, v in (("num_speakers", num_speakers), ("min_speakers", min_speakers), ("max_speakers", max_speakers)):
        _check_count(name, v)
    if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
        raise ConfigError(f"min_speakers: expected <= max_speakers ({max_speakers}), got {min_speakers}")
    if num_speakers is not None:
        if min_speakers is not None and num_speakers < min_speakers:
            raise ConfigError(f"num_speakers: expected >= min_speakers ({min_speakers}), got {num_speakers}")
        if max_speakers is not None and num_speakers > max_speakers:
            raise ConfigError(f"num_speakers: expected <= max_speakers ({max_speakers}), got {num_speakers}")


class Diarizer:
    """Diarization of 16 kHz recordings with an Echo model (see the module docstring).

    Args:
        model: the model bundle (:class:`echo.models.bundle.EchoModel`) with the encoder, the
            speaker head and the segmentation head.
        plda: LDA/PLDA fitted on training speakers.
        config: :class:`DiarizerConfig`.

    Example::

        diarizer = Diarizer.from_pretrained("models/echo")
        out = diarizer("meeting.wav")                      # or {"waveform": x, "sample_rate": sr}
        out.speaker_diarization.write_rttm(sys.stdout)
    """

    def __init__(self, model: Any, plda: PLDA, config: DiarizerConfig = DiarizerConfig()):
        from echo.evaluate import model_parts

        self.model = model
        self.parts = model_parts(model)
        if self.parts.speaker is None:
            raise EchoError("diarize: the model has no speaker head; diarization needs the speaker stage")
        if self.parts.segmentation is None:
            raise EchoError("diarize: the model has no segmentation head; diarization needs the segmentation stage")
        self.plda = plda
        self.config = config
        self.frontend = getattr(model, "frontend", None) or FrontEnd()
        self.token_s = self.parts.encoder.cfg.patch_frames * self.frontend.hop_length / self.frontend.sample_rate
        self.powerset = self.parts.segmentation.powerset

    # -- persistence ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu", **overrides) -> "Diarizer":
        """Load the folder written by :meth:`save` (the default workflow writes ``models/echo``).

        Args:
            path: the folder.
            device: ``cpu`` or ``cuda``.
            overrides: :class:`DiarizerConfig` fields to change.

        Raises:
            EchoError: missing files; CacheMismatchError: written by another version.
        """
        from echo.io import read_json
        from echo.models.bundle import EchoModel

        path = Path(path)
        model = EchoModel.load(path, map_location=device)
        cfg_path = path / MODEL_FILES["config"]
        if not cfg_path.is_file():
            raise EchoError(f"{path}: no {MODEL_FILES['config']} (not a diarizer folder written by Diarizer.save)")
        cfg = config_from_json(read_json(cfg_path), str(cfg_path))
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        return cls(model, PLDA.load(path / MODEL_FILES["plda"]), cfg)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the deployable folder atomically: the model bundle, ``plda.npz``, ``diarizer.json``."""
        from echo.io import atomic_dir, write_json

        path = Path(path)
        with atomic_dir(path) as tmp:
            self.model.save(tmp)
            self.plda.save(tmp / MODEL_FILES["plda"])
            write_json(tmp / MODEL_FILES["config"], dataclasses.asdict(self.config))
        return path

    # -- public API ----------------------------------------------------------------------------
    def __call__(self, audio, num_speakers: int | None = None, min_speakers: int | None = None,
                 max_speakers: int | None = None, hook: Hook | None = None, uri: str | None = None) -> DiarizeOutput:
        """Diarize one recording.

        Args:
            audio: a file path, ``{"waveform": (samples,) or (channels, samples), "sample_rate": sr}``
                (optionally ``"uri"``), a 16 kHz mono array, or a :class:`BlockReader`.
            num_speakers: the number of speakers, if known.
            min_speakers, max_speakers: bounds on the estimated number.
            hook: progress callback ``hook(step_name, completed=i, total=n)``.
            uri: recording id (default: the file's stem, or ``"audio"``).

        Returns:
            :class:`DiarizeOutput`.
        """
        check_speaker_counts(num_speakers, min_speakers, max_speakers)
        wave, uri = self.read_audio(audio, uri)
        return self.cluster(self.prepare(wave, uri, hook), num_speakers, min_speakers, max_speakers)

    def read_audio(self, audio, uri: str | None = None):
        """``(wave, uri)``: what :meth:`__call__` takes as ``audio`` as 16 kHz mono samples (a
        :class:`BlockReader` is returned as it is) and the recording id it implies."""
        sr = self.frontend.sample_rate
        if isinstance(audio, (str, os.PathLike)):
            from echo.audio import load

            p = Path(audio)
            return load(p, sr), uri or p.stem
        if isinstance(audio, dict):
            if "waveform" not in audio or "sample_rate" not in audio:
                raise EchoError("diarize: expected {'waveform': array, 'sample_rate': int}")
            x = audio["waveform"]
            x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            x = x.astype(np.float32)
            if x.ndim == 2:
                x = x.mean(0)
            if int(audio["sample_rate"]) != sr:
                import torchaudio.functional as AF

                x = AF.resample(torch.from_numpy(x), int(audio["sample_rate"]), sr).numpy()
            return x, uri or audio.get("uri", "audio")
        if isinstance(audio, BlockReader):
            return audio, uri or "audio"
        return np.asarray(audio, dtype=np.float32).ravel(), uri or "audio"

    def latent_blocks(self, wave, hook: Hook | None = None) -> Iterator[np.ndarray]:
        """The recording's token latents, block by block, as :meth:`prepare` encodes them
        (:func:`~echo.inference.iter_latents` with this diarizer's ``chunk_s`` and ``context_s``);
        ``hook("diarize", completed=blocks done, total=blocks)`` after each block."""
        n = token_count(self.parts.encoder, self.frontend, len(wave))
        cfg = self.config
        chunk_tok, ctx_tok = round(cfg.chunk_s / self.token_s), round(cfg.context_s / self.token_s)
        total = -(-n // max(1, chunk_tok))
        for i, (_, lat) in enumerate(iter_latents(self.parts.encoder, self.frontend, wave, chunk_tok, ctx_tok)):
            yield lat
            if hook is not None:
                hook("diarize", completed=i + 1, total=total)

    def prepare(self, wave, uri: str, hook: Hook | None = None) -> Prepared:
        """Encode, segment and embed (the costly part that no clustering setting changes)."""
        if len(wave) == 0:
            raise EchoError(f"diarize {uri}: empty recording")
        n = token_count(self.parts.encoder, self.frontend, len(wave))
        return self._prepare_blocks(self.latent_blocks(wave, hook), n, len(wave) / self.frontend.sample_rate, uri)

    def prepare_latents(self, latents: np.ndarray | Sequence[np.ndarray], uri: str,
                        duration: float | None = None) -> Prepared:
        """:meth:`prepare` from precomputed token latents (tests, encodings shared by several models).

        Args:
            latents: ``(N, D)`` latents, or the blocks :meth:`latent_blocks` yields; given as those
                blocks, the result is the one :meth:`prepare` computes, number for number (the
                segmentation batches are the same).
            duration: seconds of audio (default: ``N`` tokens).
        """
        blocks = [np.asarray(b, dtype=np.float32) for b in ([latents] if isinstance(latents, np.ndarray) else latents)]
        n = sum(len(b) for b in blocks)
        if n == 0:
            raise EchoError(f"diarize {uri}: empty recording")
        return self._prepare_blocks(blocks, n, n * self.token_s if duration is None else duration, uri)

    @torch.inference_mode()
    def _prepare_blocks(self, blocks: Iterable[np.ndarray], n: int, duration: float, uri: str) -> Prepared:
        t0 = time.perf_counter()
        cfg, parts = self.config, self.parts
        length = max(1, round(cfg.segment_s / self.token_s))
        hop = max(1, round(cfg.segment_step_s / self.token_s))
        last = max(0, n - length)
        starts = np.unique(np.r_[np.arange(0, last + 1, hop), last]).astype(np.int64)
        s_max = self.powerset.num_speakers
        c = len(starts)
        act = np.zeros((c, length, s_max), np.float16)
        hard = np.zeros((c, length, s_max), bool)
        embs: np.ndarray | None = None
        valid = np.zeros((c, s_max), bool)
        clean = np.zeros((c, s_max), bool)
        min_tok = max(1, int(math.ceil(cfg.min_embed_s / self.token_s - 1e-9)))
        buf, buf0, nxt, end = np.zeros((0, parts.encoder.cfg.dim), np.float32), 0, 0, 0
        for lat in blocks:
            buf = np.concatenate([buf, lat])
            end += len(lat)
            ready = nxt
            while ready < c and (starts[ready] + length <= end or end >= n):
                ready += 1
            for b0 in range(nxt, ready, cfg.batch_chunks):
                idx = np.arange(b0, min(ready, b0 + cfg.batch_chunks))
                x = np.zeros((len(idx), length, buf.shape[1]), np.float32)
                m = np.zeros((len(idx), length), bool)
                for j, ci in enumerate(idx):
                    seg = buf[starts[ci] - buf0: starts[ci] - buf0 + length]
                    x[j, :len(seg)], m[j, :len(seg)] = seg, True
                e = self._segment_batch(x, m, idx, act, hard, valid, clean, min_tok)
                if embs is None:
                    embs = np.zeros((c, s_max, e.shape[-1]), np.float32)
                embs[idx] = e
            nxt = ready
            keep_from = int(starts[nxt]) if nxt < c else end
            if keep_from > buf0:  # latents no pending chunk needs are dropped
                buf, buf0 = buf[keep_from - buf0:], keep_from
        if end != n:
            raise EchoError(f"diarize {uri}: got latents for {end} tokens, expected {n}")
        if embs is None:
            embs = np.zeros((c, s_max, 1), np.float32)
        return Prepared(uri, duration, self.token_s, n, starts, length, act, hard, embs, valid, clean,
                        time.perf_counter() - t0)

    def _segment_batch(self, x, m, idx, act, hard, valid, clean, min_tok) -> np.ndarray:
        dev = self.parts.device
        xt, mt = torch.from_numpy(x).to(dev), torch.from_numpy(m).to(dev)
        logits = self.parts.segmentation(xt, mt).float()
        prob = self.powerset.to_multilabel(logits.softmax(-1)).cpu().numpy()  # (B, L, S)
        h = self.powerset.hard_multilabel(logits).astype(bool) & m[:, :, None]
        act[idx] = (prob * m[:, :, None]).astype(np.float16)
        hard[idx] = h
        alone = h & (h.sum(-1, keepdims=True) == 1)
        b, length, s = h.shape
        pool = np.where(alone.sum(1, keepdims=True) > 0, alone, h)  # (B, L, S): pool clean tokens if any
        valid[idx] = h.any(1)
        clean[idx] = alone.sum(1) >= min_tok
        mask = pool.transpose(0, 2, 1).reshape(b * s, length)  # (chunk, local speaker) rows
        mask = np.where(mask.any(1, keepdims=True), mask, np.repeat(m, s, 0))  # silent speakers: unused
        # the batch's chunks laid end to end: window (c, k) is chunk c's tokens, pooled for speaker k
        e = self.parts.speaker.embed_windows(x.reshape(b * length, -1), np.repeat(np.arange(b) * length, s), length,
                                             mask, batch_size=b * s).reshape(b, s, -1)
        return e * valid[idx][:, :, None]

    def cluster(self, p: Prepared, num_speakers: int | None = None, min_speakers: int | None = None,
                max_speakers: int | None = None, vbx: VBxConfig | None = None,
                ahc: AHCConfig | None = None) -> DiarizeOutput:
        """Cluster the prepared local speakers and reconstruct the recording's diarization.

        ``num_speakers`` / ``min_speakers`` / ``max_speakers`` are honoured exactly where the
        recording allows; a request that cannot be met at all (more speakers than detected local
        speaker segments) raises a one-line :class:`ConfigError`, and an output with fewer speakers
        than requested (a cluster that wins no token) is reported in ``warnings``.
        """
        check_speaker_counts(num_speakers, min_speakers, max_speakers)
        vbx = vbx or self.config.vbx
        ahc = ahc or self.config.ahc
        ci, si = np.nonzero(p.valid)
        warn: list[str] = []
        need = num_speakers or min_speakers
        if need is not None and need > len(ci):
            raise ConfigError(f"diarize {p.uri}: {need} speakers requested but only {len(ci)} local speaker "
                              f"segments were detected, so at most {len(ci)} speakers can be output")
        if len(ci) == 0:
            empty = Annotation(uri=p.uri)
            return DiarizeOutput(empty, Annotation(uri=p.uri), np.zeros((0, p.embeddings.shape[-1]), np.float32), [],
                                 warn, p)
        use = p.clean[ci, si]
        if use.sum() < max(2, need or 0):  # too few clean ones: cluster every local speaker
            use = np.ones(len(ci), bool)
        emb = p.embeddings[ci, si]
        centroids = self._centroids(emb[use], num_speakers, vbx, ahc)
        k = len(centroids)
        forced = None
        if num_speakers is None and max_speakers is not None and k > max_speakers:
            forced = max_speakers
        elif num_speakers is None and min_speakers is not None and k < min_speakers:
            forced = min_speakers
        if forced is not None:
            log.info("diarize %s: estimated %d speakers, outside [%s, %s]; re-clustering with %d",
                     p.uri, k, min_speakers, max_speakers, forced)
            centroids = self._centroids(emb[use], forced, vbx, ahc)
        assign = self._assign(p, ci, si, emb, centroids)
        over, excl = self._reconstruct(p, assign, len(centroids))
        order = _order_by_appearance(over)
        labels = [f"spk{j}" for j in range(len(order))]
        over_ann = activity_annotation(over[:, order], p.token_s, p.uri, p.duration, labels)
        excl_ann = activity_annotation(excl[:, order], p.token_s, p.uri, p.duration, labels)
        # one embedding per output speaker: mean of its assigned local embeddings
        out_emb = np.zeros((len(order), emb.shape[1]), np.float32)
        for new, old in enumerate(order):
            sel = assign == old
            v = emb[sel].mean(0) if sel.any() else centroids[old]
            out_emb[new] = v / max(float(np.linalg.norm(v)), 1e-12)
        want = num_speakers or (min_speakers if min_speakers and len(order) < min_speakers else None)
        if want is not None and len(order) < want:
            warn.append(f"diarize {p.uri}: {want} speakers requested, {len(order)} found: "
                        f"{want - len(order)} cluster(s) won no speech after reconstruction")
        for w in warn:
            log.warning(w)
        return DiarizeOutput(over_ann, excl_ann, out_emb, labels, warn, p)

    # -- internals -----------------------------------------------------------------------------
    def _centroids(self, emb: np.ndarray, k: int | None, vbx: VBxConfig, ahc: AHCConfig) -> np.ndarray:
        """(K, E) unit centroids (raw embedding space) of the VBx clusters of ``emb``."""
        if len(emb) == 1 or k == 1:
            v = emb.mean(0, keepdims=True)
            return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        clus = vbx_cluster(emb, self.plda, vbx, ahc, k)
        post = clus.posteriors  # (T, K)
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        cent = post.T @ unit
        return cent / np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)

    def _assign(self, p: Prepared, ci: np.ndarray, si: np.ndarray, emb: np.ndarray, cent: np.ndarray) -> np.ndarray:
        """Global speaker of every valid (chunk, local speaker), by cosine in the LDA space."""
        return constrained_assignment(self.plda.embed(emb) @ self.plda.embed(cent).T, ci)

    def _reconstruct(self, p: Prepared, assign: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, K) bool overlapping and exclusive activity from the chunks' local activities."""
        n, length = p.n_tokens, p.length
        score = np.zeros((n + length, k), np.float32)
        count = np.zeros(n + length, np.float32)
        cover = np.zeros(n + length, np.float32)
        ci, si = np.nonzero(p.valid)
        for c, s, g in zip(ci, si, assign):
            a = p.starts[c]
            score[a:a + length, g] += p.activity[c, :, s].astype(np.float32)
        for c, a in enumerate(p.starts):
            count[a:a + length] += p.hard[c].sum(-1)
            cover[a:a + length] += 1.0
        score, count, cover = score[:n], count[:n], np.maximum(cover[:n], 1.0)
        n_active = np.floor(count / cover + 0.5).astype(np.int64)  # rounded mean local count
        n_active = np.minimum(n_active, k)
        rank = np.argsort(-score, axis=1, kind="stable")
        over = np.zeros((n, k), bool)
        rows = np.arange(n)
        for r in range(int(n_active.max()) if n else 0):
            sel = n_active > r
            over[rows[sel], rank[sel, r]] = True
        over &= score > 0
        excl = np.zeros((n, k), bool)
        sel = n_active > 0
        excl[rows[sel], rank[sel, 0]] = True
        excl &= score > 0
        return over, excl


def constrained_assignment(score: np.ndarray, chunk: np.ndarray) -> np.ndarray:
    """Assign local speakers to global speakers so that two local speakers of one chunk never share
    one (cannot-link), maximising the total similarity per chunk (Hungarian; pyannote's
    ``constrained_argmax``). A chunk with more local speakers than global ones gives its extra
    local speakers their most similar global speaker.

    Args:
        score: ``(M, K)`` similarity of each local speaker to each global speaker.
        chunk: ``(M,)`` chunk index of each local speaker, non-decreasing.

    Returns:
        ``(M,)`` global speaker per local speaker.
    """
    score = np.asarray(score, dtype=np.float64)
    chunk = np.asarray(chunk)
    out = np.empty(len(chunk), np.int64)
    bounds = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1], True]) if len(chunk) else np.zeros(1, np.int64)
    for a, b in zip(bounds[:-1], bounds[1:]):
        s = score[a:b]
        rows, cols = linear_sum_assignment(-s)
        out[a + rows] = cols
        rest = np.setdiff1d(np.arange(b - a), rows)
        out[a + rest] = s[rest].argmax(1)
    return out


def _order_by_appearance(act: np.ndarray) -> list[int]:
    first = [(int(np.argmax(act[:, j])), j) for j in range(act.shape[1]) if act[:, j].any()]
    return [j for _, j in sorted(first)]


def config_from_json(d: dict, where: str) -> DiarizerConfig:
    """A :class:`DiarizerConfig` from its ``dataclasses.asdict`` form (``diarizer.json``)."""
    from echo.config import build

    try:
        return build(DiarizerConfig, d, "evaluation.diarizer")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
