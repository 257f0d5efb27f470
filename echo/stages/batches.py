"""Training and dev batches of the specialisation stages.

- :class:`LabelledFrames`: a split's log-mel frames with per-frame phone labels and per-utterance
  speakers (from a :class:`echo.features.FeatureCache`).
- :class:`CropSampler`: random crops with speaker labels and CTC phone targets; the crops of step
  ``s`` depend only on ``(seed, s, stream)``, so a resumed stage sees exactly the same batches.
- :class:`SpecAugmentConfig` / :func:`spec_augment`: frequency and time masks on the training
  crops (SpecAugment), drawn from the same per-step generator family.
- :func:`dev_batches`: a fixed, ordered set of whole dev utterances (capped in length).
- :class:`MixtureFeatures`: log-mels of a :class:`echo.simulate.mixtures.MixtureSet`'s mixtures
  and of each isolated source, computed once.

CTC targets of a crop are its frame labels with consecutive repeats collapsed, then silence and
unknown (-1) frames dropped (collapsing first keeps a phone repeated across a pause twice).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
import torch

from echo.config import check_fields, need, rule
from echo.corpus.manifest import SILENCE
from echo.errors import CacheMismatchError, EchoError
from echo.heads.ctc import PhoneInventory, pad_targets
from echo.models.masks import step_rng
from echo.simulate.mixtures import spread_indices

__all__ = ["LabelledFrames", "CropBatch", "CropSampler", "SpecAugmentConfig", "spec_augment", "dev_batches",
           "phone_lookup", "ctc_targets", "MixtureFeatures", "mixture_indices"]

log = logging.getLogger(__name__)

SPEC_AUGMENT_STREAM = 0x73706563  # "spec": the masks' own draws, so crops do not change when masks are on


@dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment (Park et al., 2019) on a stage's training crops (``stages.<stage>.spec_augment``).

    Each crop gets ``freq_masks`` bands of 0..``freq_width`` mel bins and ``time_masks`` spans of
    0..``time_width`` frames (inside its valid frames) set to the encoder's mean log-mel of each bin,
    i.e. to zero after the encoder's input normalisation. Dev batches are never masked.

    Attributes:
        freq_masks: frequency masks per crop (0 = none; 0..8).
        freq_width: widest frequency mask in mel bins (>= 1 when ``freq_masks`` > 0).
        time_masks: time masks per crop (0 = none; 0..8).
        time_width: widest time mask in 10 ms frames (>= 1 when ``time_masks`` > 0).
    """

    freq_masks: int = field(default=0, metadata=rule(ge=0, le=8))
    freq_width: int = field(default=0, metadata=rule(ge=0))
    time_masks: int = field(default=0, metadata=rule(ge=0, le=8))
    time_width: int = field(default=0, metadata=rule(ge=0))

    def __post_init__(self) -> None:
        check_fields(self)
        need(self, self.freq_masks == 0 or self.freq_width >= 1, "freq_width", "an integer >= 1 with freq_masks > 0",
             self.freq_width)
        need(self, self.time_masks == 0 or self.time_width >= 1, "time_width", "an integer >= 1 with time_masks > 0",
             self.time_width)

    @property
    def active(self) -> bool:
        return self.freq_masks > 0 or self.time_masks > 0


def spec_augment(mels: np.ndarray, lengths: np.ndarray, fill: np.ndarray, cfg: SpecAugmentConfig,
                 rng: np.random.Generator) -> np.ndarray:
    """Mask ``mels`` ``(B, T, n_mels)`` in place with SpecAugment's frequency and time masks.

    Written here rather than with ``torchaudio.functional.mask_along_axis_iid`` because the masks
    must come from the sampler's per-step generator (a resumed stage sees the same batches), stay
    inside each crop's ``lengths`` (torchaudio's span the padding too) and fill each bin with its
    own value ``fill`` ``(n_mels,)`` (torchaudio fills one scalar).

    Returns:
        ``mels``.
    """
    b, _, n_mels = mels.shape
    for i in range(b):
        n = int(lengths[i])
        for _ in range(cfg.freq_masks):
            w = int(rng.integers(0, min(cfg.freq_width, n_mels) + 1))
            f0 = int(rng.integers(0, n_mels - w + 1))
            mels[i, :n, f0:f0 + w] = fill[f0:f0 + w]
        for _ in range(cfg.time_masks):
            w = int(rng.integers(0, min(cfg.time_width, n) + 1))
            t0 = int(rng.integers(0, n - w + 1))
            mels[i, t0:t0 + w] = fill
    return mels


def phone_lookup(cache_inventory: Sequence[str]) -> tuple[PhoneInventory, np.ndarray]:
    """CTC vocabulary of a cache's phone inventory and the map from cache label ids to CTC ids.

    Returns:
        ``(inventory without silence, lookup)`` where ``lookup[cache_id]`` is the CTC id (1..P) or
        -1 for silence.
    """
    phones = tuple(p for p in cache_inventory if p != SILENCE)
    inv = PhoneInventory(phones)
    index = {p: i + 1 for i, p in enumerate(phones)}
    lookup = np.array([index.get(p, -1) for p in cache_inventory], dtype=np.int64)
    return inv, lookup


def ctc_targets(frame_labels: np.ndarray, lookup: np.ndarray) -> list[int]:
    """Phone id sequence of a run of frame labels (collapse repeats, then drop silence and -1)."""
    lab = np.asarray(frame_labels, dtype=np.int64)
    if lab.size == 0:
        return []
    runs = lab[np.r_[True, lab[1:] != lab[:-1]]]
    ids = np.where(runs >= 0, lookup[np.clip(runs, 0, None)], -1)
    return ids[ids > 0].tolist()


@dataclass
class LabelledFrames:
    """A split's frames, phone labels and speakers, concatenated for fast cropping.

    Attributes:
        frames: ``(N, n_mels)`` raw log-mel (float16 as cached).
        labels: ``(N,)`` cache phone ids (-1 unknown).
        offsets, lengths: ``(U,)`` per utterance.
        speakers: ``(U,)`` speaker names.
        utt_ids: ``(U,)`` utterance ids.
        cache_inventory: the cache's phone list (silence included).
        frame_rate: frames per second.
    """

    frames: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    speakers: np.ndarray
    utt_ids: np.ndarray
    cache_inventory: list[str]
    frame_rate: float

    @classmethod
    def from_cache(cls, cache) -> "LabelledFrames":
        """From an :class:`echo.features.FeatureCache`."""
        frames, labels, offsets, lengths = cache.arrays()
        return cls(frames, np.asarray(labels), np.asarray(offsets, np.int64), np.asarray(lengths, np.int64),
                   cache.index["speaker"].astype(str).to_numpy(), cache.index["utt_id"].astype(str).to_numpy(),
                   list(cache.inventory), float(cache.frontend.frame_rate))

    @property
    def speaker_names(self) -> list[str]:
        return sorted(set(self.speakers.tolist()))

    def check_compatible(self, other: "LabelledFrames", where: str) -> None:
        """Raise :class:`CacheMismatchError` if ``other`` has another phone inventory or mel count,
        and :class:`EchoError` if it shares a speaker with this split."""
        self.check_compatible_features(other, where)
        shared = sorted(set(self.speaker_names) & set(other.speaker_names))
        if shared:  # model selection must not see training speakers
            raise EchoError(f"{where}: speaker {shared[0]!r} is also in the train cache; expected disjoint speaker splits")

    def check_same_utterances(self, other: "LabelledFrames", where: str) -> None:
        """Raise :class:`CacheMismatchError` unless ``other`` holds the same utterances, in the same
        order and with the same lengths (an augmented copy of this split)."""
        self.check_compatible_features(other, where)
        if not (np.array_equal(other.utt_ids, self.utt_ids) and np.array_equal(other.lengths, self.lengths)):
            raise CacheMismatchError(f"{where}: not a copy of the train cache (other utterances or lengths); "
                                     "rebuild both from the same corpus")

    def check_compatible_features(self, other: "LabelledFrames", where: str) -> None:
        """Raise :class:`CacheMismatchError` if ``other`` has another phone inventory or mel count."""
        if other.cache_inventory != self.cache_inventory:
            raise CacheMismatchError(f"{where}: phone inventory differs from the train cache's; rebuild the caches together")
        if other.frames.shape[1] != self.frames.shape[1]:
            raise CacheMismatchError(f"{where}: {other.frames.shape[1]} mel bins, the train cache has {self.frames.shape[1]}")

    def fingerprint(self) -> dict:
        return {"frames": int(self.frames.shape[0]), "utterances": int(len(self.lengths)),
                "speakers": len(self.speaker_names)}


class CropBatch(NamedTuple):
    """Crops ``mels`` ``(B, T, n_mels)`` float32 with valid ``lengths`` ``(B,)``, ``speakers``
    ``(B,)`` int64 (index into the sampler's speaker list, -1 if unknown), CTC ``targets``
    ``(B, L)`` and ``target_lengths`` ``(B,)``; ``utt`` ``(B,)`` utterance rows; ``step``."""

    mels: torch.Tensor
    lengths: torch.Tensor
    speakers: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor
    utt: torch.Tensor
    step: int

    def to(self, device) -> "CropBatch":
        return CropBatch(*(t.to(device) if isinstance(t, torch.Tensor) else t for t in self))


def _assemble(data: LabelledFrames, rows: np.ndarray, starts: np.ndarray, sizes: np.ndarray, width: int,
              speaker_index: dict[str, int], lookup: np.ndarray, step: int,
              frames_of: Sequence[np.ndarray] | None = None) -> CropBatch:
    """``frames_of[i]``: the frame array crop ``i`` is cut from (default ``data.frames``; an
    augmented copy shares ``data``'s offsets and labels)."""
    b = len(rows)
    mels = np.zeros((b, width, data.frames.shape[1]), np.float32)
    seqs = []
    for i, (s, n) in enumerate(zip(starts, sizes)):
        src = data.frames if frames_of is None else frames_of[i]
        mels[i, :n] = src[s:s + n]
        seqs.append(ctc_targets(data.labels[s:s + n], lookup))
    targets, target_lengths = pad_targets(seqs)
    spk = [speaker_index.get(str(data.speakers[r]), -1) for r in rows]
    return CropBatch(torch.from_numpy(mels), torch.as_tensor(sizes, dtype=torch.long),
                     torch.as_tensor(spk, dtype=torch.long), targets, target_lengths,
                     torch.as_tensor(rows, dtype=torch.long), step)


class CropSampler:
    """Random crops of up to ``crop_frames`` frames from the utterances of a split.

    An utterance is drawn uniformly (so speakers with long utterances are not favoured), then a
    crop start uniformly inside it; utterances shorter than the crop are used whole (padded, with
    ``lengths``). Utterances shorter than ``min_frames`` are skipped.

    Args:
        data: the split.
        crop_frames: crop length (frames).
        batch_size: crops per step.
        seed: run seed.
        stream: tag separating this sampler's draws from other samplers of the same run.
        speakers: speaker names defining the label indices (default: the split's, sorted).
        min_frames: shortest usable utterance.
        noisy: an augmented copy of ``data`` (same utterances, lengths and labels; see
            :mod:`echo.simulate.augment`), or None.
        noisy_prob: share of crops cut from ``noisy`` instead of ``data`` (labels stay ``data``'s).
        spec_augment: masks applied to every crop (see :func:`spec_augment`); None or inactive = none.
        fill: ``(n_mels,)`` value of a masked bin (the encoder's ``mel_mean``); needed with masks.
    """

    def __init__(self, data: LabelledFrames, crop_frames: int, batch_size: int, seed: int, stream: int,
                 speakers: Sequence[str] | None = None, min_frames: int = 8,
                 noisy: LabelledFrames | None = None, noisy_prob: float = 0.0,
                 spec_augment: SpecAugmentConfig | None = None, fill: np.ndarray | None = None) -> None:
        self.data, self.crop, self.batch_size, self.seed, self.stream = data, int(crop_frames), int(batch_size), int(seed), int(stream)
        if noisy_prob > 0 and noisy is None:
            raise EchoError("stage data: noisy_prob > 0 needs the augmented copy of the training cache")
        if noisy is not None:
            data.check_same_utterances(noisy, "augmented training cache")
        self.noisy, self.noisy_prob = noisy, float(noisy_prob)
        self.spec_augment = spec_augment if spec_augment is not None and spec_augment.active else None
        if self.spec_augment is not None:
            if fill is None or np.shape(fill) != (data.frames.shape[1],):
                raise EchoError(f"stage data: spec_augment needs a fill value per mel bin ({data.frames.shape[1]})")
            self.fill = np.asarray(fill, np.float32)
        self.speakers = list(speakers) if speakers is not None else data.speaker_names
        self.speaker_index = {s: i for i, s in enumerate(self.speakers)}
        self.inventory, self.lookup = phone_lookup(data.cache_inventory)
        self.rows = np.flatnonzero(data.lengths >= min_frames)
        if self.rows.size == 0:
            raise EchoError(f"stage data: no utterance has >= {min_frames} frames")
        if self.rows.size < len(data.lengths):
            log.info("crops skip %d utterances shorter than %d frames", len(data.lengths) - self.rows.size, min_frames)

    def batch(self, step: int) -> CropBatch:
        """The crops of ``step``."""
        rng = step_rng(self.seed, step, self.stream)
        rows = self.rows[rng.integers(0, self.rows.size, size=self.batch_size)]
        lengths = self.data.lengths[rows]
        sizes = np.minimum(lengths, self.crop)
        within = np.floor(rng.random(self.batch_size) * (lengths - sizes + 1)).astype(np.int64)
        frames_of = None
        if self.noisy is not None and self.noisy_prob > 0:  # drawn last: clean-only runs keep their crops
            use = rng.random(self.batch_size) < self.noisy_prob
            frames_of = [self.noisy.frames if u else self.data.frames for u in use]
        out = _assemble(self.data, rows, self.data.offsets[rows] + within, sizes, int(sizes.max()),
                        self.speaker_index, self.lookup, step, frames_of)
        if self.spec_augment is not None:
            spec_augment(out.mels.numpy(), sizes, self.fill, self.spec_augment,
                         step_rng(self.seed, step, self.stream ^ SPEC_AUGMENT_STREAM))
        return out


def dev_batches(data: LabelledFrames, max_utts: int, max_frames: int, batch_size: int,
                min_frames: int = 8) -> list[CropBatch]:
    """Fixed dev batches: the first ``max_frames`` frames of up to ``max_utts`` utterances.

    Utterances are taken in a seed-free, evenly spread order over the index (so every speaker is
    represented when capped), and batched by length to limit padding. ``speakers`` index
    ``data.speaker_names``.
    """
    rows = np.flatnonzero(data.lengths >= min_frames)
    if rows.size == 0:
        raise EchoError(f"dev data: no utterance has >= {min_frames} frames")
    if max_utts and rows.size > max_utts:
        rows = rows[np.linspace(0, rows.size - 1, max_utts).round().astype(np.int64)]
    sizes = np.minimum(data.lengths[rows], max_frames)
    order = np.argsort(-sizes, kind="stable")
    rows, sizes = rows[order], sizes[order]
    _, lookup = phone_lookup(data.cache_inventory)
    index = {s: i for i, s in enumerate(data.speaker_names)}
    out = []
    for a in range(0, rows.size, batch_size):
        r, n = rows[a:a + batch_size], sizes[a:a + batch_size]
        out.append(_assemble(data, r, data.offsets[r], n, int(n.max()), index, lookup, -1))
    return out


class MixtureFeatures:
    """Log-mels of every mixture and of each of its isolated sources (float16, computed once).

    Args:
        mixtures: a :class:`echo.simulate.mixtures.MixtureSet`.
        frontend: the encoder's :class:`echo.features.FrontEnd`.
        max_mixtures: use at most this many (evenly spread over the set; 0 = all).

    Attributes:
        mels: ``(M, T, n_mels)`` float16 mixture log-mels (all mixtures of a set have one length).
        source_mels: ``(S, T, n_mels)`` float16 source log-mels, mixture by mixture.
        first: ``(M,)`` index of each mixture's first source in ``source_mels``; ``k``: ``(M,)`` sources.
        mix_ids: ``(M,)``; speakers: the distinct speakers of the used mixtures.
    """

    def __init__(self, mixtures, frontend, max_mixtures: int = 0) -> None:
        n = len(mixtures)
        if n == 0:
            raise EchoError(f"{getattr(mixtures, 'root', 'mixtures')}: no mixtures")
        idx = spread_indices(n, max_mixtures)
        mels, srcs, ks, ids, speakers = [], [], [], [], set()
        log.info("mixture features: %d mixtures", len(idx))  # progress in the node's log
        for i in idx.tolist():
            item = mixtures[i]
            m = frontend.compute(item.mixture)
            if mels and m.shape != mels[0].shape:
                raise EchoError(f"{getattr(mixtures, 'root', 'mixtures')}: mixture {item.mix_id} has {m.shape[0]} "
                                f"frames, expected {mels[0].shape[0]} (one window length per set)")
            mels.append(m.astype(np.float16))
            srcs.extend(frontend.compute(s).astype(np.float16) for s in item.sources)
            ks.append(len(item.sources))
            ids.append(item.mix_id)
            speakers.update(item.speakers)
        self.mels = torch.from_numpy(np.stack(mels))
        self.source_mels = torch.from_numpy(np.stack(srcs))
        self.k = np.asarray(ks, np.int64)
        self.first = np.concatenate([[0], np.cumsum(self.k)[:-1]]).astype(np.int64)
        self.mix_ids = ids
        self.speakers = sorted(speakers)

    def __len__(self) -> int:
        return len(self.k)

    def fingerprint(self) -> dict:
        return {"mixtures": len(self), "sources": int(self.k.sum()), "frames": int(self.mels.shape[1])}


def mixture_indices(n: int, batch_size: int, seed: int, step: int, stream: int) -> np.ndarray:
    """Mixture rows of ``step``: distinct within a batch when ``batch_size <= n``."""
    rng = step_rng(seed, step, stream)
    if batch_size <= n:
        return np.sort(rng.choice(n, size=batch_size, replace=False))
    return np.sort(rng.integers(0, n, size=batch_size))
