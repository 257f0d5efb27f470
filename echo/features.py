"""Log-mel filterbank front-end and the sharded per-split feature cache.

The cache stores raw (unnormalised) log-mel frames as float16 shards plus an index; the exact
front-end is written next to them (``frontend.json``) and checked when the cache is opened, so a
cache made with another window/hop/mel setting is an error rather than a silent mix. Normalisation
statistics of the split are stored too; the encoder owns the normalisation it was trained with.

Frame-level phone labels are derived from the manifest's synthesiser alignment: frame ``i`` is
centred on sample ``i * hop_length`` (``center=True``) and takes the phone segment containing it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from echo.config import check_fields, need, rule
from echo.errors import CacheMismatchError, EchoError
from echo.progress import Hook, track

__all__ = ["FrontEnd", "FeatureCache", "build_feature_cache", "frame_labels", "phone_inventory"]

log = logging.getLogger(__name__)
CACHE_VERSION = 1


@dataclass(frozen=True)
class FrontEnd:
    """Log-mel front-end: power mel spectrogram (torchaudio), natural log with a floor.

    Defaults: 25 ms Hann window, 10 ms hop (100 frames/s), 80 mel bins over 20-7600 Hz.
    """

    sample_rate: int = field(default=16_000, metadata=rule(ge=1))
    n_fft: int = field(default=512, metadata=rule(ge=1))
    win_length: int = field(default=400, metadata=rule(ge=1))
    hop_length: int = field(default=160, metadata=rule(ge=1))
    n_mels: int = field(default=80, metadata=rule(ge=1))
    f_min: float = field(default=20.0, metadata=rule(ge=0))
    f_max: float = 7600.0
    log_floor: float = field(default=1e-6, metadata=rule(gt=0))

    def __post_init__(self) -> None:
        check_fields(self)
        need(self, self.win_length <= self.n_fft, "win_length", f"<= n_fft ({self.n_fft})", self.win_length)
        need(self, self.f_min < self.f_max <= self.sample_rate / 2, "f_max",
             f"f_min < f_max <= {self.sample_rate / 2}", (self.f_min, self.f_max))

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples (centred STFT)."""
        return 1 + num_samples // self.hop_length

    @cached_property
    def _transform(self):
        import torchaudio

        return torchaudio.transforms.MelSpectrogram(
            sample_rate=self.sample_rate, n_fft=self.n_fft, win_length=self.win_length,
            hop_length=self.hop_length, f_min=self.f_min, f_max=self.f_max, n_mels=self.n_mels,
            power=2.0, center=True, norm="slaney", mel_scale="slaney")

    def compute(self, wave: np.ndarray) -> np.ndarray:
        """Log-mel features ``(T, n_mels)`` float32 of a mono signal at ``sample_rate``."""
        import torch

        with torch.no_grad():
            x = torch.as_tensor(np.ascontiguousarray(wave, dtype=np.float32))
            m = self._transform(x)  # (n_mels, T)
            return torch.log(m + self.log_floor).T.contiguous().numpy()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def phone_inventory(manifest: pd.DataFrame) -> list[str]:
    """Sorted phone set of a manifest's alignments (the silence label included)."""
    phones: set[str] = set()
    for seq in manifest["align_phone"]:
        phones.update(seq)
    return sorted(phones)


def frame_labels(align_phone, align_start, align_end, num_frames: int, hop_length: int,
                 inventory: list[str]) -> np.ndarray:
    """Phone id per frame (``-1`` where no segment covers the frame centre, e.g. no alignment)."""
    labels = np.full(num_frames, -1, dtype=np.int16)
    if len(align_phone) == 0:
        return labels
    ids = {p: i for i, p in enumerate(inventory)}
    centres = np.arange(num_frames) * hop_length
    starts = np.asarray(align_start)
    seg = np.searchsorted(starts, centres, side="right") - 1
    ends = np.asarray(align_end)
    ok = (seg >= 0) & (centres < ends[np.clip(seg, 0, None)])
    phone_ids = np.array([ids.get(p, -1) for p in align_phone], dtype=np.int16)
    labels[ok] = phone_ids[seg[ok]]
    return labels


def build_feature_cache(manifest: pd.DataFrame, frontend: FrontEnd, out_dir: Path,
                        inventory: list[str], shard_frames: int = 2_000_000,
                        transform: Callable[[np.ndarray, Any], np.ndarray] | None = None,
                        hook: Hook | None = None) -> "FeatureCache":
    """Compute log-mel features for every row of ``manifest`` into a sharded cache at ``out_dir``.

    Args:
        manifest: rows from :func:`echo.corpus.manifest.read` (needs ``abs_path``).
        frontend: the front-end; recorded in ``frontend.json``.
        out_dir: cache directory, built atomically.
        inventory: phone inventory used for frame labels (shared by all splits).
        shard_frames: frames per shard file (float16, 80 bins: 2M frames = 320 MB).
        transform: ``transform(wave, row) -> wave`` applied to each utterance before the front-end
            (e.g. :class:`echo.simulate.augment.Augmenter`); it must keep the length, so the frame
            labels stay those of the alignment.
        hook: progress callback ``hook("features <split>", completed=utterances, total=utterances)``
            (see :mod:`echo.progress`).
    """
    from echo.audio import read_segment
    from echo.io import atomic_dir, write_json, write_parquet

    out_dir = Path(out_dir)
    rows, feats, labs, n_in_shard, shard = [], [], [], 0, 0
    total = np.zeros(frontend.n_mels, np.float64)
    total_sq = np.zeros(frontend.n_mels, np.float64)
    n_total = 0
    with atomic_dir(out_dir) as tmp:
        def flush() -> None:
            nonlocal feats, labs, n_in_shard, shard
            if not feats:
                return
            np.save(tmp / f"feats-{shard:05d}.npy", np.concatenate(feats).astype(np.float16))
            np.save(tmp / f"labels-{shard:05d}.npy", np.concatenate(labs))
            feats, labs, n_in_shard, shard = [], [], 0, shard + 1

        for r in track(manifest.itertuples(index=False), hook, f"features {out_dir.name}", len(manifest)):
            wave = read_segment(r.abs_path, int(r.start), int(r.num_samples), frontend.sample_rate)
            if transform is not None:
                n = wave.shape[0]
                wave = transform(wave, r)
                if wave.shape[0] != n:
                    raise EchoError(f"{out_dir}: the transform changed the length of {r.utt_id} ({n} -> {wave.shape[0]})")
            f = frontend.compute(wave)
            lab = frame_labels(r.align_phone, r.align_start, r.align_end, len(f), frontend.hop_length, inventory)
            rows.append((r.utt_id, r.speaker, shard, n_in_shard, len(f)))
            feats.append(f), labs.append(lab)
            total += f.sum(0)
            total_sq += (f.astype(np.float64) ** 2).sum(0)
            n_total += len(f)
            n_in_shard += len(f)
            if n_in_shard >= shard_frames:
                flush()
        flush()
        if n_total == 0:
            raise EchoError(f"{out_dir}: no utterances to featurise")
        mean = total / n_total
        std = np.sqrt(np.maximum(total_sq / n_total - mean**2, 1e-10))
        index = pd.DataFrame(rows, columns=["utt_id", "speaker", "shard", "offset", "num_frames"])
        write_parquet(index, tmp / "index.parquet")
        write_json(tmp / "frontend.json", {
            "version": CACHE_VERSION, "frontend": frontend.to_dict(), "inventory": inventory,
            "stats": {"mean": mean.tolist(), "std": std.tolist(), "frames": n_total}})
    return FeatureCache(out_dir, expected=frontend)


class FeatureCache:
    """Read side of a feature cache; checks the recorded front-end against ``expected``.

    Raises:
        CacheMismatchError: the cache was made with a different front-end or cache version.
    """

    def __init__(self, path: str | Path, expected: FrontEnd | None = None):
        self.path = Path(path)
        meta_path = self.path / "frontend.json"
        if not meta_path.exists():
            raise EchoError(f"{self.path}: not a feature cache (no frontend.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != CACHE_VERSION:
            raise CacheMismatchError(f"{self.path}: cache version {meta.get('version')}, expected {CACHE_VERSION}; rebuild it")
        self.frontend = FrontEnd(**meta["frontend"])
        if expected is not None and self.frontend != expected:
            diff = {k: (v, getattr(expected, k)) for k, v in self.frontend.to_dict().items() if getattr(expected, k) != v}
            key, (have, want) = next(iter(diff.items()))
            raise CacheMismatchError(f"{self.path}: made with features.{key}={have}, but params ask for {want}; rebuild the cache")
        self.inventory: list[str] = meta["inventory"]
        self.stats: dict = meta["stats"]
        self.index = pd.read_parquet(self.path / "index.parquet")
        self._pos = {u: i for i, u in enumerate(self.index["utt_id"])}
        self._shards: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _shard(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in self._shards:
            self._shards[k] = (np.load(self.path / f"feats-{k:05d}.npy", mmap_mode="r"),
                               np.load(self.path / f"labels-{k:05d}.npy", mmap_mode="r"))
        return self._shards[k]

    def _row(self, utt_id: str):
        try:
            return self.index.iloc[self._pos[utt_id]]
        except KeyError:
            raise EchoError(f"{self.path}: no utterance {utt_id!r} in this cache") from None

    def get(self, utt_id: str) -> np.ndarray:
        """Log-mel frames ``(T, n_mels)`` float32 of one utterance."""
        r = self._row(utt_id)
        f, _ = self._shard(int(r.shard))
        return np.asarray(f[r.offset:r.offset + r.num_frames], dtype=np.float32)

    def labels(self, utt_id: str) -> np.ndarray:
        """Phone id per frame ``(T,)`` int64 (``-1`` = unknown)."""
        r = self._row(utt_id)
        _, lab = self._shard(int(r.shard))
        return np.asarray(lab[r.offset:r.offset + r.num_frames], dtype=np.int64)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All frames concatenated for fast random cropping.

        Returns:
            ``(feats (N, n_mels) float16, labels (N,) int16, offsets (U,), lengths (U,))`` in index order.
        """
        feats, labs = [], []
        n_shards = int(self.index["shard"].max()) + 1 if len(self.index) else 0
        for k in range(n_shards):
            f, lab = self._shard(k)
            feats.append(np.asarray(f)), labs.append(np.asarray(lab))
        lengths = self.index["num_frames"].to_numpy(np.int64)
        # shards are consecutive in index order, so the global offset is a cumulative sum
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return np.concatenate(feats), np.concatenate(labs), offsets, lengths
