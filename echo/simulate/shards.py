"""Sharded audio storage: many simulated signals concatenated into a few large files.

A shard is one mono 16-bit file (``audio/shard-00000.flac`` or ``.npy``); a signal is addressed by
``(shard, offset, num_samples)``. FLAC is compact and what the corpus uses; ``.npy`` (int16) can be
memory-mapped, which is faster for random access by data loaders. Samples are stored as
``round(x * 32768)`` clipped to int16 and read back as ``int16 / 32768``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from echo.audio import SAMPLE_RATE
from echo.errors import AudioError

__all__ = ["AUDIO_FORMATS", "ShardWriter", "read_shard", "to_int16"]

AUDIO_FORMATS = ("flac", "npy")


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


class ShardWriter:
    """Append signals to shards of about ``shard_samples`` samples under ``root/audio``.

    Args:
        root: output directory (the shard paths returned are relative to it).
        shard_samples: a shard is closed once it holds at least this many samples.
        audio_format: ``"flac"`` or ``"npy"``.
    """

    def __init__(self, root: str | Path, shard_samples: int, audio_format: str = "flac"):
        self.root, self.shard_samples, self.format = Path(root), int(shard_samples), audio_format
        (self.root / "audio").mkdir(parents=True, exist_ok=True)
        self._parts: list[np.ndarray] = []
        self._fill = 0
        self._index = 0

    @property
    def _name(self) -> str:
        return f"audio/shard-{self._index:05d}.{self.format}"

    def add(self, *signals: np.ndarray) -> tuple[str, int]:
        """Store ``signals`` consecutively in one shard; return ``(shard, offset of the first)``."""
        offset = self._fill
        for s in signals:
            self._parts.append(to_int16(s))
            self._fill += s.shape[0]
        name = self._name
        if self._fill >= self.shard_samples:
            self.close()
        return name, offset

    def close(self) -> None:
        """Write the open shard (if it holds anything)."""
        if not self._parts:
            return
        data = np.concatenate(self._parts)
        path = self.root / self._name
        if self.format == "npy":
            np.save(path, data)
        else:
            import soundfile as sf

            sf.write(str(path), data, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
        self._parts, self._fill = [], 0
        self._index += 1


def read_shard(root: str | Path, shard: str, offset: int, num_samples: int) -> np.ndarray:
    """Read ``num_samples`` float32 samples at ``offset`` of a shard (``int16 / 32768``)."""
    path = Path(root) / shard
    if not path.exists():
        raise AudioError(f"{path}: shard not found")
    if path.suffix == ".npy":
        data = np.load(path, mmap_mode="r")
        x = np.asarray(data[offset:offset + num_samples])
    else:
        import soundfile as sf

        with sf.SoundFile(str(path)) as f:
            f.seek(offset)
            x = f.read(frames=num_samples, dtype="int16")
    if x.shape[0] != num_samples:
        raise AudioError(f"{path}: truncated, expected {num_samples} samples at {offset}, got {x.shape[0]}")
    return x.astype(np.float32) / np.float32(32768.0)
