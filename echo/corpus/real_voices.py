"""Real recorded voices from Debian packages: the real-voice dev and evaluation speakers.

The embedded corpus is synthetic; these are people. Debian ships recorded human speech in a few
packages, one voice per package or per role (measured 2026-12, Debian 12):

=============================  ==============================  ========  ==============  =========
package                        voice                            language  recorded at     licence
=============================  ==============================  ========  ==============  =========
asterisk-prompt-es-co          July E. Jimenez (female)         es (CO)   8 kHz, GSM      GPL-2
asterisk-prompt-fr-armelle     Armelle Desjardins (female)      fr        8 kHz, GSM      BSD-style
asterisk-prompt-it-menardi-wav Paola Dal Zot (female)           it        8 kHz, PCM      CC-BY-SA-3.0-IT
asterisk-core-sounds-it-wav    Carlo Flora (male)               it        8 kHz, PCM      CC-BY-SA-3.0
asterisk-core-sounds-ru-wav    IvrvoiceRU (female)              ru        8 kHz, PCM      CC-BY-3.0
fillets-ng-data-cs             the small and the big fish       cs        22.05 kHz, Vorbis  GPL-2
fillets-ng-data-nl             the small and the big fish       nl        22.05 kHz, Vorbis  GPL-2
=============================  ==============================  ========  ==============  =========

The two Fish Fillets packages are the game's dubbed dialogue; each language's two fish are voiced by
one actor each (the clip's role comes from ``fillets-ng-data``'s ``dialogs_<language>.lua``); the minor roles
are left out because which actor voices them is not documented. Reserved for an outside evaluation
and never read here: asterisk-core-sounds-en*/es*/fr* and the pyannote.audio sample
(:data:`RESERVED`; :func:`package_files` refuses them).

Splits (speaker-disjoint by construction: a voice belongs to one split):

- ``dev`` (decisions only): the Czech fish and Paola Dal Zot: 3 voices, conversations of K = 1..3;
- ``test`` (the real-voice evaluation): the Dutch fish, July E. Jimenez, Armelle Desjardins, Carlo
  Flora and IvrvoiceRU: 6 voices, conversations of K = 1..4.

Nothing here is used for training. Files are enumerated with ``dpkg-query -L`` (exactly the
package's own files, never a shared sounds directory), decoded (soundfile; the raw GSM prompts
through FFmpeg), resampled to 16 kHz and given a speech/pause segmentation by frame energy
(:func:`speech_segments`): the prompts and dialogue are studio recordings without background, where
an energy threshold relative to the clip's own loud frames is exact enough and no maintained VAD
without downloaded weights does better. The result is an ordinary manifest
(:mod:`echo.corpus.manifest`) that the conversation simulator reads like any other.
"""
from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from echo.audio import SAMPLE_RATE, resample, write_flac
from echo.config import check_fields, rule
from echo.corpus import manifest
from echo.corpus.manifest import SILENCE
from echo.errors import EchoError
from echo.io import atomic_dir, write_json, write_parquet
from echo.progress import Hook, track

__all__ = ["Voice", "VOICES", "RESERVED", "PACKAGES", "RealVoicesConfig", "package_files", "speech_segments",
           "build_real_voices"]

log = logging.getLogger(__name__)

RESERVED = ("asterisk-core-sounds-en", "asterisk-core-sounds-es", "asterisk-core-sounds-fr", "pyannote.audio")
SPEECH = "speech"  # alignment label of an energy-detected speech region (no phone labels exist)
_FILLETS_SCRIPTS = "fillets-ng-data"


@dataclass(frozen=True)
class Voice:
    """One real voice: where its recordings are and which split it belongs to.

    Attributes:
        speaker: the speaker id in the manifest.
        package: the Debian package holding the recordings.
        split: ``dev`` or ``test``.
        language, licence, person: documentation (shown in docs/data.md and ``sources.json``).
        role: Fish Fillets role (``font_small`` / ``font_big``) whose clips are this voice; None = all
            audio files of the package.
        exclude: regular expression of file paths to skip (the prompt sets' silence files).
    """

    speaker: str
    package: str
    split: str
    language: str
    licence: str
    person: str
    role: str | None = None
    exclude: str = r"/silence/"


VOICES: tuple[Voice, ...] = (
    Voice("real-cs-fish-small", "fillets-ng-data-cs", "dev", "cs", "GPL-2", "small fish (Czech dub)", "font_small"),
    Voice("real-cs-fish-big", "fillets-ng-data-cs", "dev", "cs", "GPL-2", "big fish (Czech dub)", "font_big"),
    Voice("real-it-menardi", "asterisk-prompt-it-menardi-wav", "dev", "it", "CC-BY-SA-3.0-IT", "Paola Dal Zot"),
    Voice("real-nl-fish-small", "fillets-ng-data-nl", "test", "nl", "GPL-2", "small fish (Dutch dub)", "font_small"),
    Voice("real-nl-fish-big", "fillets-ng-data-nl", "test", "nl", "GPL-2", "big fish (Dutch dub)", "font_big"),
    Voice("real-es-co", "asterisk-prompt-es-co", "test", "es", "GPL-2", "July E. Jimenez"),
    Voice("real-fr-armelle", "asterisk-prompt-fr-armelle", "test", "fr", "BSD-style", "Armelle Desjardins"),
    Voice("real-it-carlo", "asterisk-core-sounds-it-wav", "test", "it", "CC-BY-SA-3.0", "Carlo Flora"),
    Voice("real-ru-ivrvoice", "asterisk-core-sounds-ru-wav", "test", "ru", "CC-BY-3.0", "IvrvoiceRU"),
)
PACKAGES = tuple(sorted({v.package for v in VOICES} | {_FILLETS_SCRIPTS}))


@dataclass(frozen=True)
class RealVoicesConfig:
    """params.yaml ``evaluation.real_voices``.

    Attributes:
        max_utts_per_voice: decode the first this many files of each voice (sorted by path), so no
            voice dominates a conversation's turns and the step stays short.
    """

    SECTION = "evaluation.real_voices"
    max_utts_per_voice: int = field(default=120, metadata=rule(ge=2))

    def __post_init__(self):
        check_fields(self)
_AUDIO_EXT = (".wav", ".gsm", ".ogg")


def package_files(package: str) -> list[str]:
    """The files a Debian package installed (``dpkg-query -L``), sorted.

    Raises:
        EchoError: a reserved package, or one that is not installed (one line naming it).
    """
    if any(package.startswith(r) for r in RESERVED):
        raise EchoError(f"{package}: reserved for an outside evaluation; Echo never reads it")
    p = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True)
    if p.returncode != 0:
        raise EchoError(f"Debian package {package!r} is not installed (the real-voice sets need it; "
                        "workflow/install.sh installs it)")
    return sorted(line for line in p.stdout.splitlines() if line.strip())


def _fillets_roles(language: str) -> dict[str, str]:
    """Fish Fillets clip id -> role in one language's dub, from every level's ``dialogs_<language>.lua``."""
    roles: dict[str, str] = {}
    pat = re.compile(r'dialogId\("([^"]+)",\s*"([^"]*)"')
    for f in package_files(_FILLETS_SCRIPTS):
        if f.endswith(f"/dialogs_{language}.lua"):
            roles.update(pat.findall(Path(f).read_text(encoding="utf-8", errors="replace")))
    return roles


def _voice_files(voice: Voice) -> list[str]:
    files = [f for f in package_files(voice.package) if f.endswith(_AUDIO_EXT) and not re.search(voice.exclude, f)]
    if voice.role is None:
        return files
    roles = _fillets_roles(voice.language)
    out = []
    for f in files:
        stem = Path(f).stem
        key = stem if stem in roles else re.sub(r"\d+$", "", stem)
        if roles.get(key) == voice.role:
            out.append(f)
    return out


def _decode(path: str) -> np.ndarray:
    """Mono float32 at 16 kHz."""
    if path.endswith(".gsm"):  # raw GSM 06.10 at 8 kHz: only FFmpeg reads it
        from echo.simulate.channels import ffmpeg_binary

        p = subprocess.run([ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-f", "gsm", "-i", path,
                            "-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE), "pipe:1"], capture_output=True)
        if p.returncode != 0:
            raise EchoError(f"{path}: FFmpeg could not decode it: {p.stderr.decode(errors='replace').strip()[-200:]}")
        return np.frombuffer(p.stdout, np.float32).copy()
    import soundfile as sf

    x, sr = sf.read(path, dtype="float32", always_2d=True)
    return resample(x.mean(axis=1), sr, SAMPLE_RATE)


def speech_segments(x: np.ndarray, sample_rate: int = SAMPLE_RATE, frame_s: float = 0.01,
                    below_db: float = 35.0, min_gap_s: float = 0.15, min_speech_s: float = 0.08) -> list[tuple[str, int, int]]:
    """Speech and pause segments tiling ``x``: ``[(label, start, end), ...]`` with ``speech`` / ``sil``.

    A frame is speech when its energy is within ``below_db`` of the clip's 95th-percentile frame
    energy; pauses shorter than ``min_gap_s`` are bridged and speech runs shorter than
    ``min_speech_s`` dropped. For clean studio recordings only (see the module docstring).
    """
    n = x.shape[0]
    hop = max(1, int(frame_s * sample_rate))
    m = n // hop
    if m == 0:
        return [(SILENCE, 0, n)] if n else []
    e = 10 * np.log10(np.mean(np.square(x[: m * hop].reshape(m, hop), dtype=np.float64), axis=1) + 1e-12)
    active = e > np.percentile(e, 95) - below_db
    # bridge short gaps, then drop short runs
    idx = np.flatnonzero(np.diff(np.r_[0, active.astype(np.int8), 0]))
    runs = [[a, b] for a, b in zip(idx[::2], idx[1::2])]
    merged: list[list[int]] = []
    for a, b in runs:
        if merged and (a - merged[-1][1]) * frame_s < min_gap_s:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    merged = [[a, b] for a, b in merged if (b - a) * frame_s >= min_speech_s]
    segs, pos = [], 0
    for a, b in merged:
        s, t = a * hop, min(n, b * hop)
        if s > pos:
            segs.append((SILENCE, pos, s))
        segs.append((SPEECH, s, t))
        pos = t
    if pos < n:
        segs.append((SILENCE, pos, n))
    return segs


def _voice_rows(voice: Voice, files: list[str], out_dir: Path, rel_path: str, max_utts: int) -> list[dict]:
    rows, chunks, offset = [], [], 0
    for f in files[:max_utts]:
        x = _decode(f)
        segs = speech_segments(x)
        speech = [(a, b) for lab, a, b in segs if lab == SPEECH]
        if not speech:
            continue
        rows.append({
            "utt_id": f"{voice.speaker}-{len(rows):04d}", "speaker": voice.speaker, "split": voice.split,
            "source": "real_voices", "path": rel_path, "start": offset, "num_samples": x.size,
            "sample_rate": SAMPLE_RATE, "duration": x.size / SAMPLE_RATE, "text": "", "phonemes": "",
            "align_phone": [lab for lab, _, _ in segs], "align_start": [int(a) for _, a, _ in segs],
            "align_end": [int(b) for _, _, b in segs], "speech_start": int(speech[0][0]), "speech_end": int(speech[-1][1]),
            "origin": f,
        })
        chunks.append(x)
        offset += x.size
    if not rows:
        raise EchoError(f"{voice.package}: no speech found in the files of voice {voice.speaker!r}")
    write_flac(out_dir / rel_path, np.concatenate(chunks), SAMPLE_RATE)
    return rows


def build_real_voices(out_dir: Path, cfg: RealVoicesConfig = RealVoicesConfig(), hook: Hook | None = None) -> pd.DataFrame:
    """Decode every voice of :data:`VOICES` into ``out_dir`` (replaced atomically); return the manifest.

    Output: ``manifest.parquet`` (splits ``dev`` and ``test``; an extra column ``origin`` names each
    utterance's packaged file), ``audio/<speaker>.flac`` (16 kHz) and ``sources.json`` (the voices,
    packages, licences, utterance counts and hours).

    Args:
        cfg: how much of each voice is decoded.
        hook: progress callback ``hook("real voices", completed=voices, total=voices)``.

    Raises:
        EchoError: a package is missing (named), or a voice has no speech.
    """
    out_dir = Path(out_dir)
    for pkg in PACKAGES:  # every missing package is named before anything is decoded
        package_files(pkg)
    with atomic_dir(out_dir) as tmp:
        (tmp / "audio").mkdir()
        rows: list[dict] = []
        for v in track(VOICES, hook, "real voices", len(VOICES)):
            files = _voice_files(v)
            rows += _voice_rows(v, files, tmp, f"audio/{v.speaker}.flac", cfg.max_utts_per_voice)
        df = pd.DataFrame(rows)
        for col, dtype in manifest.COLUMNS.items():
            if dtype != "object":
                df[col] = df[col].astype(dtype)
        df = manifest.validate(df, str(out_dir / "manifest.parquet"))
        write_parquet(df, tmp / "manifest.parquet")
        per = df.groupby("speaker").agg(utterances=("utt_id", "size"), hours=("duration", lambda d: d.sum() / 3600))
        write_json(tmp / "sources.json", [
            {"speaker": v.speaker, "package": v.package, "split": v.split, "language": v.language,
             "licence": v.licence, "person": v.person, "role": v.role,
             "utterances": int(per.loc[v.speaker, "utterances"]), "hours": float(per.loc[v.speaker, "hours"])}
            for v in VOICES])
    log.info("real voices: %d utterances of %d voices, %.2f h", len(df), df["speaker"].nunique(),
             df["duration"].sum() / 3600)
    return df
