"""Sharded audio storage: many simulated signals concatenated into a few large files, and the
directory of a simulated set built on them.

A shard is one mono 16-bit file (``audio/shard-00000.flac`` or ``.npy``); a signal is addressed by
``(shard, offset, num_samples)``. FLAC is compact and what the corpus uses; ``.npy`` (int16) can be
memory-mapped, which is faster for random access by data loaders. Samples are stored as
``round(x * 32768)`` clipped to int16 and read back as ``int16 / 32768``.

A simulated set (conversations, mixtures) is one directory written atomically: the shards, its
Parquet tables, ``stats.json``, ``stats.png`` and ``config.json``; :func:`open_set` does what the
two kinds share (K checks, one generator per recording, the job loop, the summary files).
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from echo.config import check_fields, rule
from echo.audio import SAMPLE_RATE
from echo.errors import AudioError, EchoError
from echo.io import atomic_dir, read_json, write_json, write_parquet
from echo.simulate.room import check_ranges, normalise_fields, room_config
from echo.simulate.utterances import UtterancePool
from echo.progress import Hook, track

__all__ = ["AUDIO_FORMATS", "ShardWriter", "read_shard", "to_int16", "check_set_fields", "generator", "SetRun",
           "open_set", "read_set"]

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


# -- a simulated set's directory ------------------------------------------------------------------
# value rules of the fields every simulation config has, declared once for all of them
SET_RULES = {"seed": rule(ge=0, le=2**32 - 1), "k_max": rule(ge=1, le=20), "gain_db": rule(ge=-40.0, le=20.0),
             "snr_db": rule(ge=-10.0, le=80.0), "noise_exponent": rule(ge=0.0, le=3.0),
             "reverb_prob": rule(ge=0.0, le=1.0), "min_pause_s": rule(ge=0.0, le=10.0),
             "shard_hours": rule(ge=0.001, le=100.0)}


def check_set_fields(cfg: Any) -> None:
    """Normalise and check a simulation config (lists -> tuples, a room mapping -> RoomConfig, the
    field rules, low <= high in its ranges); call first in ``__post_init__``.

    Raises:
        FieldError: a value breaks its rule.
    """
    normalise_fields(cfg)
    object.__setattr__(cfg, "room", room_config(cfg.room, type(cfg).__name__))
    check_fields(cfg)
    check_ranges(cfg, "gain_db", "snr_db", "noise_exponent")


def generator(seed: int, split: str, *stream: int) -> np.random.Generator:
    """The generator of one recording, seeded by ``(seed, split, *stream)`` (e.g. ``stream = (K, index)``)."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()), *stream]))


@dataclass
class SetRun:
    """A simulated set being written (see :func:`open_set`).

    Attributes:
        kind: ``conversations`` or ``mixtures`` (progress bar, messages, plot title).
        cfg: the simulation config (stored in ``config.json``).
        pool: the split's utterances.
        k_values, n_per_k: what is simulated: ``n_per_k`` recordings for each K.
        tmp: the temporary directory that becomes the set's directory.
        shards: the audio shards under ``tmp/audio``.
        hook: progress callback (``hook("<kind> <split>", completed=recordings, total=recordings)``).
    """

    kind: str
    cfg: Any
    pool: UtterancePool
    k_values: tuple[int, ...]
    n_per_k: int
    tmp: Path
    shards: ShardWriter
    hook: Hook | None = None

    def jobs(self) -> Iterator[tuple[int, int]]:
        """``(K, index)`` of every recording, K by K (reported to ``hook`` as they are done)."""
        jobs = [(k, i) for k in self.k_values for i in range(self.n_per_k)]
        return track(jobs, self.hook, f"{self.kind} {self.pool.split}", len(jobs))

    def finish(self, tables: dict[str, pd.DataFrame], stats: Callable[[pd.DataFrame], dict]) -> None:
        """Close the shards and write ``<name>.parquet`` per table, ``stats.json`` + ``stats.png``
        (``stats`` of the FIRST table, one row per recording) and ``config.json``."""
        from echo.simulate.stats import plot_stats

        self.shards.close()
        for name, table in tables.items():
            write_parquet(table, self.tmp / f"{name}.parquet")
        table = next(iter(tables.values()))
        write_json(self.tmp / "stats.json", stats(table))
        plot_stats(table, self.tmp / "stats.png", title=f"{self.kind} ({self.pool.split})")
        write_json(self.tmp / "config.json", {"config": asdict(self.cfg), "k_values": list(self.k_values),
                                              "n_per_k": self.n_per_k, "split": self.pool.split})


@contextmanager
def open_set(kind: str, manifest_df: pd.DataFrame, cfg: Any, out_dir: str | Path,
             k_values: tuple[int, ...] | None = None, n_per_k: int | None = None,
             hook: Hook | None = None) -> Iterator[SetRun]:
    """Check what is asked of a split and open its set directory for writing (atomically: ``out_dir``
    is replaced when the block ends without error; call :meth:`SetRun.finish` inside it).

    Args:
        kind: ``conversations`` or ``mixtures``.
        manifest_df: the rows of ONE split.
        cfg: the simulation config (``k_max``, ``n_per_k``, ``min_pause_s``, ``shard_hours``, ``audio_format``).
        out_dir: the set's directory.
        k_values: speaker counts (default ``1..cfg.k_max``).
        n_per_k: recordings per speaker count (default ``cfg.n_per_k``).
        hook: progress callback (see :mod:`echo.progress`).

    Raises:
        EchoError: a table with several splits, or a K larger than the split's number of speakers.
    """
    k_values = tuple(range(1, cfg.k_max + 1)) if k_values is None else tuple(int(k) for k in k_values)
    n_per_k = cfg.n_per_k if n_per_k is None else int(n_per_k)
    pool = UtterancePool(manifest_df, int(round(cfg.min_pause_s * SAMPLE_RATE)))
    if not k_values or min(k_values) < 1 or max(k_values) > len(pool.speakers):
        raise EchoError(f"simulate {kind} ({pool.split}): K values {list(k_values)} need 1 <= K <= "
                        f"{len(pool.speakers)} (the split's number of speakers)")
    with atomic_dir(Path(out_dir)) as tmp:
        shards = ShardWriter(tmp, int(cfg.shard_hours * 3600 * SAMPLE_RATE), cfg.audio_format)
        yield SetRun(kind, cfg, pool, k_values, n_per_k, tmp, shards, hook)


def read_set(out_dir: str | Path, table: str, writer: str) -> tuple[Path, pd.DataFrame, dict]:
    """``(root, <table>.parquet, config.json)`` of a set directory written by ``writer``.

    Raises:
        EchoError: the table is not there.
    """
    root = Path(out_dir)
    path = root / f"{table}.parquet"
    if not path.exists():
        raise EchoError(f"{path}: not found; expected the output directory of {writer}")
    return root, pd.read_parquet(path), read_json(root / "config.json")
