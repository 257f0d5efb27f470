"""Random fixed-length crops from the concatenated feature array, fast enough to keep a GPU fed.

All frames of the training split live in one ``(N, n_mels)`` float16 array (in RAM or
memory-mapped) with per-utterance offsets/lengths, so a batch is one vectorised draw of crop
starts and one gather: no per-utterance file I/O in the hot loop. Crops stay inside one
utterance and every valid crop start is equally likely (longer utterances give more crops).

Determinism: the crops of step ``s`` depend only on ``(seed, s)``. The global batch
(``batch_size * world_size`` crops) is drawn and each rank takes its own contiguous slice, so the
data seen by the job is the same whatever the number of ranks, and a resumed run sees exactly
the batches it would have seen.
"""
from __future__ import annotations

import logging
import queue
import threading
import warnings
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np
import torch

from echo.errors import ConfigError, EchoError
from echo.models.masks import JepaMasks, MaskCollator, step_rng

__all__ = ["FeatureArrays", "Batch", "CropLoader"]

log = logging.getLogger(__name__)


@dataclass
class FeatureArrays:
    """Concatenated log-mel frames of a split.

    Attributes:
        frames: ``(N, n_mels)`` raw log-mel (float16 in caches; any float dtype works).
        offsets: ``(U,)`` first frame of each utterance.
        lengths: ``(U,)`` frames of each utterance.
        mean: ``(n_mels,)`` per-bin mean of the split (for the encoder's normalisation).
        std: ``(n_mels,)`` per-bin std.
    """

    frames: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_cache(cls, cache) -> "FeatureArrays":
        """From an :class:`echo.features.FeatureCache` (or anything with ``.arrays()`` and ``.stats``)."""
        arrays = cache.arrays()
        if len(arrays) == 4:  # (feats, labels, offsets, lengths)
            frames, _, offsets, lengths = arrays
        else:
            frames, offsets, lengths = arrays
        stats = cache.stats
        return cls(frames, np.asarray(offsets, np.int64), np.asarray(lengths, np.int64),
                   np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32))

    @classmethod
    def coerce(cls, data) -> "FeatureArrays":
        return data if isinstance(data, cls) else cls.from_cache(data)

    def fingerprint(self) -> dict:
        """Cheap identity of the data (shape and utterance count), recorded in checkpoints."""
        return {"frames": int(self.frames.shape[0]), "n_mels": int(self.frames.shape[1]),
                "utterances": int(len(self.lengths))}


class Batch(NamedTuple):
    """One training batch: ``mels`` ``(B, crop_frames, n_mels)`` (float16 as stored), masks, step."""

    mels: torch.Tensor
    masks: JepaMasks
    step: int


class CropLoader:
    """Deterministic random-crop batches with JEPA masks built at collation.

    Args:
        data: the split's frames.
        crop_frames: frames per crop.
        batch_size: crops per rank per step.
        masks: builds the context/target indices of each batch (None: no masks).
        seed: run seed.
        rank, world_size: this process's slice of the global batch.
        pin_memory: return page-locked tensors (faster, asynchronous host-to-GPU copies).
        prefetch: batches prepared ahead by the background thread in :meth:`iterate`.
    """

    STREAM = 0x64617461  # "data"

    def __init__(self, data: FeatureArrays, crop_frames: int, batch_size: int, masks: MaskCollator | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1, pin_memory: bool = False, prefetch: int = 4):
        self.data, self.crop, self.batch_size = data, int(crop_frames), int(batch_size)
        self.masks, self.seed, self.rank, self.world_size = masks, int(seed), int(rank), int(world_size)
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.prefetch = max(1, int(prefetch))
        if self.crop < 1 or self.batch_size < 1:
            raise ConfigError(f"pretrain: expected crop_frames >= 1 and batch_size >= 1, got {crop_frames}, {batch_size}")
        lengths = np.asarray(data.lengths, np.int64)
        ok = lengths >= self.crop
        if not ok.any():
            raise EchoError(f"training features: no utterance has >= {self.crop} frames (longest {int(lengths.max(initial=0))}); "
                            f"use a shorter pretrain.crop_frames")
        if (~ok).any():
            log.info("crops skip %d of %d utterances shorter than %d frames", int((~ok).sum()), len(lengths), self.crop)
        self._utt_offsets = np.asarray(data.offsets, np.int64)[ok]
        self._n_starts = lengths[ok] - self.crop + 1  # valid crop starts per utterance
        self._cum = np.cumsum(self._n_starts)
        with warnings.catch_warnings():  # read-only memmaps: the loader never writes to them
            warnings.simplefilter("ignore", UserWarning)
            self._frames = torch.from_numpy(np.asarray(data.frames))  # shares memory (memmap too)

    def crop_starts(self, step: int) -> np.ndarray:
        """Global frame index of each of this rank's crops at ``step`` ``(batch_size,)``."""
        rng = step_rng(self.seed, step, self.STREAM)
        r = rng.integers(0, int(self._cum[-1]), size=self.batch_size * self.world_size)
        u = np.searchsorted(self._cum, r, side="right")
        within = r - (self._cum[u] - self._n_starts[u])
        starts = self._utt_offsets[u] + within
        return starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def batch(self, step: int) -> Batch:
        """The batch of global step ``step`` (0-based) for this rank."""
        starts = self.crop_starts(step).tolist()
        out = torch.empty((self.batch_size, self.crop, self._frames.shape[1]), dtype=self._frames.dtype,
                          pin_memory=self.pin_memory)
        # one contiguous memcpy per crop: measured ~6x faster than index_select over a window view
        # and ~2x faster than numpy fancy indexing (65 MB batches)
        torch.stack([self._frames[s:s + self.crop] for s in starts], out=out)
        masks = None
        if self.masks is not None:
            full = self.masks(self.batch_size * self.world_size, step)
            sl = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
            masks = JepaMasks(full.context[sl], full.target[sl])
            if self.pin_memory:
                masks = JepaMasks(masks.context.pin_memory(), masks.target.pin_memory())
        return Batch(out, masks, step)

    def iterate(self, start: int, stop: int) -> Iterator[Batch]:
        """Batches of steps ``start .. stop-1``, built ahead in a background thread."""
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        halt = threading.Event()

        def produce() -> None:
            try:
                for s in range(start, stop):
                    if halt.is_set():
                        return
                    q.put(self.batch(s))
            except BaseException as e:  # surface loader errors in the training thread
                q.put(e)

        worker = threading.Thread(target=produce, name="crop-loader", daemon=True)
        worker.start()
        try:
            for _ in range(start, stop):
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            halt.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)
