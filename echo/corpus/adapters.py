"""Real-corpus adapters: VoxCeleb2, VoxCeleb1 and LibriSpeech as utterance manifests.

The output has exactly the columns of :mod:`echo.corpus.manifest` (the embedded corpus's format), so
every later stage reads real and synthetic speech the same way. Audio is not copied: ``path`` is
absolute, into the user's corpus root. Entry point::

    from echo.corpus.adapters import RealCorpusConfig, build_real_corpus
    build_real_corpus(RealCorpusConfig(source="librispeech", root="/data/LibriSpeech"), "data/real")

Per utterance (one file each): ``start=0``, ``num_samples``/``sample_rate`` from the file,
``duration``, ``text``/``phonemes`` where known (LibriSpeech transcripts; phonemes from espeak-ng's
G2P, see :mod:`echo.corpus.g2p`), empty alignment lists, and ``speech_start``/``speech_end``.

Speech extent (energy trim): the file is decoded at 16 kHz and cut into 25 ms frames with a 10 ms
hop; a frame is speech when its energy (dBFS, mean square) is within ``trim_top_db`` of the
loudest frame and above ``trim_floor_db``. ``speech_start`` is the first sample of the first such
frame, ``speech_end`` the last sample (exclusive) of the last one. A file with no frame above the
floor is skipped as silent. (librosa.effects.trim does the same but is not a dependency.)

Splits (speaker-disjoint, checked with :func:`echo.corpus.manifest.validate`):

- LibriSpeech: by subset name, ``subset_splits`` maps glob patterns to splits
  (``train-*`` -> train, ``dev-*`` -> dev, ``test-*`` -> test by default).
- VoxCeleb: the official test speakers (``test/`` directory level; for VoxCeleb1 also the official
  test identities id10270-id10309) go to ``test``; the other speakers go to ``dev`` when
  ``hash(split_salt, speaker) < dev_fraction`` and to ``train`` otherwise. When no official test
  speakers exist (a flat VoxCeleb2 layout) the next ``test_fraction`` of hash space is ``test``.
  The hash makes a speaker's split independent of which other speakers are present; only when
  the rule leaves ``dev`` empty (tiny slices) the speaker with the smallest hash is moved there.

Unreadable files (random bytes, truncated, empty, silent) are skipped: one warning line with the
count, one info line per file, and the list is returned and written to ``skipped.tsv``.
"""
from __future__ import annotations

import collections
import concurrent.futures
import fnmatch
import hashlib
import logging
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd

from echo import audio
from echo.config import check_fields, need, rule
from echo.corpus import manifest
from echo.corpus.acquire import SOURCES, AcquireConfig, acquire
from echo.errors import AudioError, ConfigError, EchoError
from echo.io import atomic_path, write_json, write_text
from echo.progress import Hook, track

__all__ = ["RealCorpusConfig", "build_real_corpus", "scan_corpus", "hash_split", "speech_extent", "VOX1_TEST_IDS"]

log = logging.getLogger(__name__)

# Speaker prefixes keep ids of different corpora apart (LibriSpeech "19" vs embedded speakers)
# and stay file-name safe, since later stages name caches after utt_id.
_PREFIX = {"voxceleb2": "vox2", "voxceleb1": "vox1", "librispeech": "ls"}
_EXT = {"voxceleb2": ".m4a", "voxceleb1": ".wav", "librispeech": ".flac"}
_VOX_DIR = {"voxceleb2": "aac", "voxceleb1": "wav"}
VOX1_TEST_IDS = frozenset(f"id{n}" for n in range(10270, 10310))  # VoxCeleb1 official test identities
_FRAME, _HOP = 400, 160  # 25 ms / 10 ms at 16 kHz
_SPK_ID = re.compile(r"^id\d+$")


@dataclass(frozen=True)
class RealCorpusConfig:
    """Which real corpus to index and how.

    Attributes:
        source: ``voxceleb2`` | ``voxceleb1`` | ``librispeech``.
        root: local corpus directory (see :mod:`echo.corpus.acquire` for the accepted layouts).
        dev_fraction: VoxCeleb: share of non-test speakers held out as ``dev``, in [0, 0.5].
        test_fraction: VoxCeleb without official test speakers: share hashed to ``test``, [0, 0.5].
        split_salt: salt of the speaker hash; change it to draw another train/dev partition.
        official_splits: use the corpus's official test speakers (VoxCeleb).
        subset_splits: LibriSpeech ``(glob, split)`` pairs, first match wins; unmatched subsets
            are ignored with a log line.
        subsets: LibriSpeech subsets to index (names); empty = all present.
        max_speakers: keep at most this many speakers per split (chosen by hash), None = all.
        max_utts_per_speaker: keep at most this many files per speaker (by hash), None = all.
        phonemes: G2P backend for transcripts: ``auto`` | ``library`` | ``cli`` | ``none``.
        g2p_voice: espeak-ng voice for the G2P.
        trim_top_db: speech frames are within this many dB of the loudest frame, (0, 120].
        trim_floor_db: and above this absolute level in dBFS, [-120, 0).
        workers: decoding threads, [1, 64].
        acquire: download settings (none: the root must already hold the corpus).
    """

    source: Literal[SOURCES] = "librispeech"
    root: str = ""
    dev_fraction: float = field(default=0.05, metadata=rule(ge=0.0, le=0.5))
    test_fraction: float = field(default=0.05, metadata=rule(ge=0.0, le=0.5))
    split_salt: str = "echo"
    official_splits: bool = True
    subset_splits: tuple[tuple[str, str], ...] = (("train-*", "train"), ("dev-*", "dev"), ("test-*", "test"))
    subsets: tuple[str, ...] = ()
    max_speakers: int | None = field(default=None, metadata=rule(ge=1))
    max_utts_per_speaker: int | None = field(default=None, metadata=rule(ge=1))
    phonemes: Literal["auto", "library", "cli", "none"] = "auto"
    g2p_voice: str = "en-us"
    trim_top_db: float = field(default=40.0, metadata=rule(gt=0, le=120))
    trim_floor_db: float = field(default=-60.0, metadata=rule(ge=-120, lt=0))
    workers: int = field(default=1, metadata=rule(ge=1, le=64))
    acquire: AcquireConfig = field(default_factory=AcquireConfig)

    def __post_init__(self) -> None:
        pairs = self.subset_splits.items() if isinstance(self.subset_splits, dict) else self.subset_splits
        pairs = tuple((str(p), str(s)) for p, s in pairs)
        bad = [s for _, s in pairs if s not in manifest.SPLITS]
        need(self, not bad, "subset_splits", f"splits in {manifest.SPLITS}", bad[0] if bad else None)
        object.__setattr__(self, "subset_splits", pairs)
        object.__setattr__(self, "subsets", tuple(self.subsets))
        if isinstance(self.acquire, dict):
            object.__setattr__(self, "acquire", AcquireConfig(**self.acquire))
        check_fields(self)


class _File(NamedTuple):
    speaker: str  # corpus-native id, e.g. "id00012" or "19"
    utt: str      # id unique within the corpus, e.g. "id00012_21Uxsk56VDQ_00001"
    path: Path
    split: str | None  # official/subset split if known, None = to be hashed
    text: str


def hash_split(speaker: str, salt: str, dev_fraction: float, test_fraction: float = 0.0) -> str:
    """Deterministic split of one speaker: ``test`` / ``dev`` / ``train`` by a sha256 of the id.

    The same speaker gets the same split whatever else is in the corpus.
    """
    u = _unit_hash(salt, "split", speaker)
    if u < test_fraction:
        return "test"
    if u < test_fraction + dev_fraction:
        return "dev"
    return "train"


def _unit_hash(*parts: str) -> float:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def speech_extent(x: np.ndarray, top_db: float = 40.0, floor_db: float = -60.0) -> tuple[int, int] | None:
    """Energy trim of a 16 kHz signal: ``(first, end)`` sample of speech, or None if silent.

    Frames of 25 ms every 10 ms; speech frames are within ``top_db`` of the loudest frame and
    above ``floor_db`` dBFS.
    """
    n = len(x)
    if n == 0:
        return None
    if n <= _FRAME:
        starts, frames = np.array([0]), x[None, :]
    else:
        starts = np.arange(0, n - _FRAME + 1, _HOP)
        if starts[-1] + _FRAME < n:  # cover the tail too
            starts = np.append(starts, n - _FRAME)
        frames = np.lib.stride_tricks.sliding_window_view(x, _FRAME)[starts]
    db = 10.0 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    if db.max() < floor_db:
        return None
    active = np.flatnonzero(db >= max(db.max() - top_db, floor_db))
    return int(starts[active[0]]), int(min(starts[active[-1]] + _FRAME, n))


# ----------------------------------------------------------------------------------------------
# Discovery: walk the layout, no decoding.


def _vox_files(cfg: RealCorpusConfig, root: Path) -> list[_File]:
    sub = _VOX_DIR[cfg.source]
    # (directory holding idNNNNN folders, official split or None)
    containers = [(root / "dev" / sub, "dev"), (root / "test" / sub, "test"), (root / sub, None), (root, None)]
    official: dict[str, str | None] = {}
    dirs: dict[str, list[Path]] = collections.defaultdict(list)
    for cdir, split in containers:
        if not cdir.is_dir():
            continue
        for spk_dir in sorted(p for p in cdir.iterdir() if p.is_dir() and _SPK_ID.match(p.name)):
            spk = spk_dir.name
            spk_split = split
            if cfg.source == "voxceleb1" and spk in VOX1_TEST_IDS:
                spk_split = "test"
            if not cfg.official_splits:
                spk_split = None
            # a speaker seen under test/ anywhere is a test speaker: never let it reach training
            if official.get(spk) != "test":
                official[spk] = spk_split
            dirs[spk].append(spk_dir)
    files = []
    ext = _EXT[cfg.source]
    for spk in sorted(dirs):
        for spk_dir in dirs[spk]:
            for video in sorted(p for p in spk_dir.iterdir() if p.is_dir()):
                for f in sorted(video.glob(f"*{ext}")):
                    files.append(_File(spk, f"{spk}_{video.name}_{f.stem}", f, official[spk], ""))
    return files


def _librispeech_subsets(root: Path) -> list[Path]:
    if (root / "LibriSpeech").is_dir():
        root = root / "LibriSpeech"
    if any(p.is_dir() and p.name.isdigit() for p in root.iterdir()):
        return [root]  # root is one subset directory (e.g. .../train-clean-100)
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _librispeech_files(cfg: RealCorpusConfig, root: Path) -> list[_File]:
    files = []
    for subset in _librispeech_subsets(root):
        if cfg.subsets and subset.name not in cfg.subsets:
            continue
        split = next((s for pat, s in cfg.subset_splits if fnmatch.fnmatch(subset.name, pat)), None)
        if split is None:
            log.info("%s: subset matches no pattern of subset_splits, ignored", subset)
            continue
        for spk_dir in sorted(p for p in subset.iterdir() if p.is_dir() and p.name.isdigit()):
            for chap in sorted(p for p in spk_dir.iterdir() if p.is_dir()):
                texts = _read_transcripts(chap / f"{spk_dir.name}-{chap.name}.trans.txt")
                for f in sorted(chap.glob("*.flac")):
                    files.append(_File(spk_dir.name, f.stem, f, split, texts.get(f.stem, "")))
    return files


def _read_transcripts(path: Path) -> dict[str, str]:
    if not path.exists():
        log.info("%s: no transcript file, texts left empty", path)
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        utt, _, text = line.strip().partition(" ")
        if utt:
            out[utt] = " ".join(text.split())
    return out


def _assign_splits(cfg: RealCorpusConfig, files: list[_File]) -> dict[str, str]:
    speakers = sorted({f.speaker for f in files})
    official = {f.speaker: f.split for f in files}
    if cfg.source == "librispeech":
        return dict(official)
    has_test = any(s == "test" for s in official.values())
    test_frac = 0.0 if has_test else cfg.test_fraction
    split = {}
    for spk in speakers:
        split[spk] = "test" if official[spk] == "test" else hash_split(spk, cfg.split_salt, cfg.dev_fraction, test_frac)
    pool = [s for s in speakers if official[s] != "test"]
    if cfg.dev_fraction > 0 and len(pool) >= 2 and not any(split[s] == "dev" for s in pool):
        cand = [s for s in pool if split[s] == "train"] or pool
        split[min(cand, key=lambda s: _unit_hash(cfg.split_salt, "split", s))] = "dev"
    return split


def _apply_caps(cfg: RealCorpusConfig, files: list[_File], split: dict[str, str]) -> list[_File]:
    if cfg.max_speakers is not None:
        by_split = collections.defaultdict(list)
        for spk in sorted(split):
            by_split[split[spk]].append(spk)
        keep = {s for spks in by_split.values()
                for s in sorted(spks, key=lambda s: _unit_hash(cfg.split_salt, "cap", s))[: cfg.max_speakers]}
        files = [f for f in files if f.speaker in keep]
    if cfg.max_utts_per_speaker is not None:
        per_spk = collections.defaultdict(list)
        for f in files:
            per_spk[f.speaker].append(f)
        keep_utt = {f.utt for fs in per_spk.values()
                    for f in sorted(fs, key=lambda f: _unit_hash(cfg.split_salt, "utt", f.utt))[: cfg.max_utts_per_speaker]}
        files = [f for f in files if f.utt in keep_utt]
    return files


# ----------------------------------------------------------------------------------------------
# Probing: decode each file once (twice for m4a: info needs a full decode), reject what is broken.


def _wav_truncated(path: Path) -> str | None:
    """libsndfile silently shortens a WAV whose data chunk is cut off; compare the header with
    the file size (hand-written: no library reports it)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None  # not RIFF/WAVE: let the decoder judge it
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            cid, csize = struct.unpack("<4sI", fh.read(8))
            if cid == b"data":
                # 0 and 0xFFFFFFFF mark streamed WAVs of unknown length
                if csize not in (0, 0xFFFFFFFF) and pos + 8 + csize > size:
                    return f"truncated: data chunk declares {csize} bytes, file holds {size - pos - 8}"
                return None
            pos += 8 + csize + (csize & 1)
    return "truncated: no data chunk"


def _probe(f: _File, cfg: RealCorpusConfig) -> tuple[int, int, int, int] | str:
    """Return ``(sample_rate, num_samples, speech_start, speech_end)`` or a reason to skip."""
    try:
        if f.path.suffix.lower() == ".wav":
            reason = _wav_truncated(f.path) if f.path.stat().st_size else None
            if reason:
                return reason
        sr, n = audio.info(f.path)
        x = audio.load(f.path, audio.SAMPLE_RATE)
    except AudioError as e:
        return str(e).removeprefix(f"{f.path}: ")
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    expected = int(np.ceil(n * audio.SAMPLE_RATE / sr))
    if n <= 0 or len(x) + 1 < expected:  # a frame count in the header that decoding cannot meet
        return f"truncated: header says {n} samples at {sr} Hz, decoded {len(x)} at 16 kHz"
    extent = speech_extent(x, cfg.trim_top_db, cfg.trim_floor_db)
    if extent is None:
        return f"silent: no 25 ms frame above {cfg.trim_floor_db:g} dBFS"
    return sr, n, extent[0], extent[1]


def scan_corpus(cfg: RealCorpusConfig, hook: Hook | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Index a local corpus root into a manifest, without writing anything (``hook``: progress,
    ``hook("scan <source>", completed=files, total=files)``).

    Returns:
        ``(manifest, skipped)``: the validated manifest (sorted by ``utt_id``) and a DataFrame of
        skipped files with columns ``path`` and ``reason``.

    Raises:
        EchoError: the root is missing or not laid out as ``cfg.source``; a split rule left a
            speaker in two splits.
    """
    if not cfg.root:
        raise ConfigError("real_corpus.root: expected a local directory path, got ''")
    root = acquire(cfg.source, cfg.root, cfg.acquire)
    files = _librispeech_files(cfg, root) if cfg.source == "librispeech" else _vox_files(cfg, root)
    if not files:
        raise EchoError(f"{root}: no {_EXT[cfg.source]} files found for {cfg.source} with the configured subsets")
    split = _assign_splits(cfg, files)
    files = _apply_caps(cfg, files, split)

    def probe(f: _File):
        return _probe(f, cfg)

    with concurrent.futures.ThreadPoolExecutor(cfg.workers) as pool:
        results = list(track(pool.map(probe, files), hook, f"scan {cfg.source}", len(files)))
    rows, skipped = [], []
    for f, res in zip(files, results):
        if isinstance(res, str):
            log.info("skip %s: %s", f.path, res)
            skipped.append((str(f.path), res))
            continue
        sr, n, s0, s1 = res
        rows.append((f, sr, n, s0, s1))
    if skipped:
        kinds = collections.Counter(r.split(":")[0].split(" (")[0] for _, r in skipped)
        log.warning("%s: skipped %d of %d files (%s); details at INFO level and in skipped.tsv",
                    cfg.source, len(skipped), len(files), ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())))

    texts = [f.text for f, *_ in rows]
    backend = cfg.phonemes if any(texts) else "none"
    phones = _phonemize(texts, cfg, backend)
    prefix = _PREFIX[cfg.source]
    df = pd.DataFrame({
        "utt_id": [f"{prefix}_{f.utt}" for f, *_ in rows],
        "speaker": [f"{prefix}_{f.speaker}" for f, *_ in rows],
        "split": [split[f.speaker] for f, *_ in rows],
        "source": cfg.source,
        "path": [str(f.path) for f, *_ in rows],
        "start": np.zeros(len(rows), dtype=np.int64),
        "num_samples": np.array([r[2] for r in rows], dtype=np.int64),
        "sample_rate": np.array([r[1] for r in rows], dtype=np.int64),
        "duration": np.array([r[2] / r[1] for r in rows], dtype=np.float64),
        "text": texts,
        "phonemes": phones,
        "align_phone": [[] for _ in rows],
        "align_start": [[] for _ in rows],
        "align_end": [[] for _ in rows],
        "speech_start": np.array([r[3] for r in rows], dtype=np.int64),
        "speech_end": np.array([r[4] for r in rows], dtype=np.int64),
    }, columns=list(manifest.COLUMNS))
    df = df.sort_values("utt_id", kind="stable").reset_index(drop=True)
    df = manifest.validate(df, f"{cfg.source} manifest")
    return df, pd.DataFrame(sorted(skipped), columns=["path", "reason"])


def _phonemize(texts: list[str], cfg: RealCorpusConfig, backend: str) -> list[str]:
    from echo.corpus import g2p

    resolved = g2p.available_backend(backend)
    if backend == "auto" and resolved == "none" and any(texts):
        log.warning("%s: espeak-ng not found, phonemes left empty (PER cannot be measured)", cfg.source)
    return g2p.phonemize(texts, cfg.g2p_voice, resolved)


_SCHEMA = None


def _arrow_schema():
    # Explicit list types: all-empty alignment lists would otherwise be stored as list<null>,
    # which does not concatenate with the embedded corpus's list<string>/list<int64>.
    import pyarrow as pa

    global _SCHEMA
    if _SCHEMA is None:
        types = {"object": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
        lists = {"align_phone": pa.list_(pa.string()), "align_start": pa.list_(pa.int64()),
                 "align_end": pa.list_(pa.int64())}
        _SCHEMA = pa.schema([(c, lists.get(c, types[t])) for c, t in manifest.COLUMNS.items()])
    return _SCHEMA


def build_real_corpus(cfg: RealCorpusConfig, out_dir: str | os.PathLike, hook: Hook | None = None) -> pd.DataFrame:
    """Index ``cfg.root`` (downloading first if ``cfg.acquire`` says so) and write the manifest.

    Writes, atomically, into ``out_dir``: ``manifest.parquet`` (paths absolute into the root; no
    audio is copied), ``skipped.tsv`` (path, reason) and ``summary.json`` (counts per split).

    Args:
        cfg: corpus settings.
        out_dir: output directory (created).
        hook: progress callback (see :func:`scan_corpus`).

    Returns:
        The manifest DataFrame (as validated, in column order).
    """
    df, skipped = scan_corpus(cfg, hook)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "manifest.parquet") as tmp:
        df.to_parquet(tmp, index=False, schema=_arrow_schema())
    write_text(out_dir / "skipped.tsv", skipped.replace({r"[\t\n]": " "}, regex=True).to_csv(sep="\t", index=False))
    summary = {"source": cfg.source, "root": str(Path(cfg.root).expanduser().resolve()),
               "skipped": int(len(skipped)), "utterances": int(len(df)),
               "splits": {s: {"utterances": int((df["split"] == s).sum()),
                              "speakers": int(df.loc[df["split"] == s, "speaker"].nunique()),
                              "hours": round(float(df.loc[df["split"] == s, "duration"].sum()) / 3600, 4)}
                          for s in manifest.SPLITS},
               "with_phonemes": int((df["phonemes"] != "").sum())}
    write_json(out_dir / "summary.json", summary)
    log.info("%s: %d utterances, %d speakers, %d skipped -> %s", cfg.source, len(df),
             df["speaker"].nunique(), len(skipped), out_dir / "manifest.parquet")
    return df
