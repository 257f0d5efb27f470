"""Echo on your own recordings: diarize, separate speakers into WAVs, transcribe phones, embed speakers.

    python -m echo diarize meeting.m4a --rttm meeting.rttm           # who spoke when (blind K)
    python -m echo diarize a.wav calls/ --out-dir out/ --num-speakers 2 [--embeddings]
    python -m echo separate meeting.wav --out-dir sources/           # one WAV per speaker
    python -m echo transcribe talk.mp3 --out talk.tsv                # phones with times (CTC head)
    python -m echo transcribe talk.mp3 --words words.txt --out talk.json  # + words from a word list
    python -m echo embed voice.flac --out voice.npy [--per-window]   # speaker embedding(s)

(``echo-jepa`` is the same program as ``python -m echo``.) Without ``--checkpoint`` the model
the default workflow trains is used: ``models/echo`` under the current directory (or ``$ECHO_MODEL``),
the folder :meth:`echo.diarization.diarizer.Diarizer.save` writes (the model bundle,
:class:`echo.models.bundle.EchoModel`, plus the diarizer's PLDA back end ``plda.npz`` and its
settings ``diarizer.json``); ``diarize`` loads it with ``Diarizer.from_pretrained``, ``separate``
with :meth:`echo.separation.Separator.from_pretrained` (the same diarizer, plus the model's separator).

Inputs: WAV/FLAC/OGG/AIFF (soundfile) and MP3/M4A/anything FFmpeg reads (torchcodec), any sample
rate and channel count; everything is mixed to mono and resampled to 16 kHz while it is read in
blocks (:mod:`echo.inference`). ``diarize`` also takes folders (their audio files, sorted, not
recursive) and streams seekable files (WAV/FLAC/OGG/AIFF) through the diarizer a chunk at a time
(:class:`~echo.diarization.diarizer.BlockReader`), after a first pass that counts samples and
checks for silence, so its memory does not grow with the recording; otherwise the 16 kHz signal of
the whole recording is kept in memory (230 MB per hour) and the encoder sees it in chunks.

``diarize`` outputs: the overlapping RTTM (``--exclusive``: the exclusive one) on stdout, in
``--rttm FILE``, or with ``--out-dir DIR`` per input ``<name>.rttm`` and ``<name>.json`` (both
diarizations, the duration, the speaker count, the diarizer's warnings) and with ``--embeddings``
``<name>.npy`` (one embedding per speaker, rows in the JSON's ``labels`` order).
``--num-speakers``/``--min-speakers``/``--max-speakers`` are honoured exactly; a request the
recording cannot meet at all is an error, one met only in part is an ``echo: warning:`` line (and
in the JSON).

``separate`` outputs, in ``--out-dir``: ``<name>.<label>.wav`` per speaker (16 kHz mono 16-bit PCM,
the input's length, summing to the input), ``<name>.rttm`` (the diarization the speakers come
from) and ``<name>.json`` (``uri``, ``input``, ``sample_rate``, ``duration``, ``speakers`` with
their ``wav`` and ``speech_seconds``, ``warnings``); ``--chunk-seconds`` is the separation chunk
(default 4 s). A silent recording writes the empty RTTM and the JSON, no WAV.

Errors: every problem with an input, an output path or a model is one line ``echo: error: <file>:
<problem>`` on stderr and exit status 1 (2 for bad command-line usage). Options and output paths
(an existing writable folder, or one that can be created) are checked before any audio is decoded
or the model is loaded; with several inputs, all of them are checked (headers) before any is
processed, and results are written only after every input was processed: one bad input means no
output at all, never a partial set. Each output file is
written atomically (a temporary sibling renamed into place).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

from echo.errors import CacheMismatchError, ConfigError, EchoError

__all__ = ["DEFAULT_MODEL", "main", "build_parser", "resolve_model", "load_model"]

log = logging.getLogger(__name__)

# Where the default workflow writes the final bundle; relative, so resolved against the current
# directory at run time. $ECHO_MODEL overrides it.
DEFAULT_MODEL = Path("models/echo")
TRAIN_COMMAND = "snakemake --cores all results/tables.md"


# -- model ---------------------------------------------------------------------------------------
def resolve_model(checkpoint: str | os.PathLike | None) -> Path:
    """The bundle directory to use: ``--checkpoint``, else ``$ECHO_MODEL``, else :data:`DEFAULT_MODEL`.

    Raises:
        EchoError: the directory does not exist (for the default: says how to train one).
    """
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.exists():
            raise EchoError(f"{path}: no such model bundle (--checkpoint)")
        return path
    from echo.models.bundle import BUNDLE_FILE

    env = os.environ.get("ECHO_MODEL")
    path = Path(env) if env else DEFAULT_MODEL
    if not (path / BUNDLE_FILE).is_file():
        raise EchoError(f"{path}: no trained model yet; run `{TRAIN_COMMAND}` first, or pass --checkpoint DIR")
    print(f"echo: using the default model {path}{' ($ECHO_MODEL)' if env else ''}; --checkpoint DIR picks another",
          file=sys.stderr)
    return path


def load_model(path: Path, device: str = "cpu"):
    """Load an :class:`~echo.models.bundle.EchoModel` bundle onto ``device``.

    Raises:
        EchoError: not a bundle directory; CacheMismatchError: written by another model version
            or unreadable.
    """
    from echo.models.bundle import EchoModel

    if not path.is_dir():
        raise EchoError(f"{path}: expected a model bundle directory (with bundle.json), got a file")
    try:
        return EchoModel.load(path, map_location=device)
    except EchoError:
        raise
    except Exception as e:  # torch raises assorted types for foreign or corrupt weight files
        raise CacheMismatchError(f"{path}: not a readable Echo model bundle ({_first_line(e)}); "
                                 f"written by another model version?") from None


def _device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise EchoError("--device cuda: no CUDA device is available to torch on this machine; use --device cpu")
    return name


class _Session:
    """A loaded model with the helpers every command shares (latents of long audio, silence)."""

    def __init__(self, args: argparse.Namespace):
        from echo.inference import InferenceConfig

        self.config = InferenceConfig() if args.chunk_seconds is None else InferenceConfig(chunk_s=args.chunk_seconds)
        self.device = _device(args.device)
        self.path = resolve_model(args.checkpoint)
        self.model = load_model(self.path, self.device)

    def require(self, head: str, command: str) -> None:
        """Fail early (before decoding any audio) when the bundle lacks the head a command needs."""
        if getattr(self.model, head, None) is None:
            raise EchoError(f"{self.path}: this bundle (stage {self.model.stage}) has no {head} head, which "
                            f"{command} needs; use the final bundle of `{TRAIN_COMMAND}`")

    def latents(self, wave: np.ndarray, name: str = "") -> np.ndarray:
        """``(N, D)`` latents of a 16 kHz recording, encoded in ``--chunk-seconds`` blocks (a bar
        named ``name`` on a terminal)."""
        from echo.inference import encode_long

        progress = _Progress(name, len(wave) / 16000, self.config)
        try:
            return encode_long(self.model.encoder, self.model.frontend, wave, self.config.chunk_s,
                               self.config.context_s, hook=progress)
        finally:
            progress.close()

    @property
    def frame_shift(self) -> float:
        fe = self.model.frontend
        return self.model.encoder.cfg.patch_frames * fe.hop_length / fe.sample_rate


# -- inputs and outputs ----------------------------------------------------------------------------
def _uri(path: Path) -> str:
    # RTTM fields are whitespace-separated: a file name with spaces must not break the line
    return "_".join(path.stem.split()) or "recording"


def _probe_all(paths: list[str]) -> list:
    """Check every input's header first; report each bad one (one line each) before any work."""
    from echo.inference import probe

    sources, errors = [], []
    for p in paths:
        try:
            sources.append(probe(p))
        except EchoError as e:
            errors.append(str(e))
    uris: dict[str, Path] = {}
    for s in sources:
        u = _uri(s.path)
        if u in uris:
            errors.append(f"{s.path}: has the same name ({u}) as {uris[u]}; outputs would collide, rename one")
        uris[u] = s.path
    if errors:
        for e in errors[:-1]:
            print(f"echo: error: {e}", file=sys.stderr)
        raise EchoError(errors[-1])
    return sources


def _read(src, config) -> np.ndarray:
    from echo.inference import read_all

    progress = _Progress(src.path.name, src.duration, config)
    try:
        return read_all(src, config, hook=progress)
    finally:
        progress.close()


def _read_streamed(src, config):
    """``(reader, samples)``: a :class:`~echo.diarization.diarizer.BlockReader` over a seekable file
    (WAV/FLAC/...), so the diarizer holds one chunk of samples, not the recording (230 MB per hour),
    or None when the file is silent. A first decoding pass counts the samples and finds the peak
    (the silence check)."""
    from echo.diarization.diarizer import BlockReader
    from echo.errors import AudioError
    from echo.inference import stream

    block = config.block_s
    peak, count = 0.0, 0
    for x in stream(src, block):
        peak = max(peak, float(np.abs(x).max()) if x.size else 0.0)
        count += len(x)
    if count == 0:
        raise AudioError(f"{src.path}: contains no audio samples")
    if _silent(np.array([peak], np.float32), src, config):
        return None, count
    return BlockReader(lambda: stream(src, block), count), count


def _decode(src, config):
    """``(wave, samples)`` for the diarizer: streamed (:func:`_read_streamed`) where the file is
    seekable, else decoded whole (MP3/M4A/...: FFmpeg, 230 MB per hour); ``wave`` is None for a
    silent recording (said on stderr)."""
    if src.backend == "soundfile":
        return _read_streamed(src, config)
    wave = _read(src, config)
    return (None if _silent(wave, src, config) else wave), len(wave)


def _silent(wave: np.ndarray, src, config) -> bool:
    """Whether ``wave`` is silent under ``config`` (:class:`~echo.inference.InferenceConfig`), said on stderr."""
    from echo.inference import is_silent

    if is_silent(wave, config.silence_dbfs):
        print(f"echo: {src.path}: silent (peak below {config.silence_dbfs:g} dBFS)", file=sys.stderr)
        return True
    return False


def _write_npy(path: Path, array: np.ndarray) -> None:
    from echo.io import atomic_path

    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:  # an open handle: np.save would append .npy to a name
            np.save(fh, np.ascontiguousarray(array))


def _check_out_file(path: str | None, flag: str) -> None:
    if path is not None and Path(path).is_dir():
        raise EchoError(f"{path}: is a directory, expected a file name ({flag})")


def _can_write_in(d: Path) -> bool:
    """Whether files can be created in the existing directory ``d``: the permission bits
    (``os.access``) and a real probe (create and remove a temporary file), since neither alone
    is reliable (root ignores the bits; a read-only mount or ACLs can refuse what they allow)."""
    import tempfile

    if not os.access(d, os.W_OK | os.X_OK):
        return False
    try:
        fd, tmp = tempfile.mkstemp(prefix=".echo-write-probe.", dir=d)
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def _check_rttm_path(path: str | None) -> None:
    """``--rttm FILE``: fail before any work when FILE cannot be written (one line)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise EchoError(f"{p}: is a directory, expected a file name (--rttm)")
    parent = p.parent
    if not parent.exists():
        raise EchoError(f"{p}: directory {parent} does not exist (--rttm)")
    if not parent.is_dir():
        raise EchoError(f"{p}: {parent} is not a directory (--rttm)")
    if not _can_write_in(parent):
        raise EchoError(f"{p}: directory {parent} is not writable (--rttm)")


def _check_out_dir_writable(out_dir: str | None) -> Path | None:
    """``--out-dir DIR``: an existing writable directory, or one that can be created (its nearest
    existing ancestor is a writable directory); checked before any work (one line)."""
    if out_dir is None:
        return None
    p = Path(out_dir)
    if p.exists():
        if not p.is_dir():
            raise EchoError(f"{p}: exists and is not a directory (--out-dir)")
        if not _can_write_in(p):
            raise EchoError(f"{p}: directory is not writable (--out-dir)")
        return p
    anc = p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise EchoError(f"{p}: cannot create it, {anc} is a file, not a directory (--out-dir)")
    if not _can_write_in(anc):
        raise EchoError(f"{p}: cannot create it, directory {anc} is not writable (--out-dir)")
    return p


# -- diarize -------------------------------------------------------------------------------------
AUDIO_EXT = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac")


def _expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given; a folder stands for its audio files (:data:`AUDIO_EXT`), sorted, not recursive.
    Two inputs with the same name (their outputs would collide) are one error, before any work."""
    paths: list[Path] = []
    for a in inputs:
        p = Path(a)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in AUDIO_EXT and not q.is_dir())
            if not found:
                raise EchoError(f"{p}: is a directory with no audio files ({' '.join(AUDIO_EXT)})")
            paths.extend(found)
        else:
            paths.append(p)
    seen: dict[str, Path] = {}
    for p in paths:
        u = _uri(p)
        if u in seen:
            raise EchoError(f"{p}: has the same name ({u}) as {seen[u]}; outputs would collide, rename one")
        seen[u] = p
    return [str(p) for p in paths]


def _check_speaker_counts(args: argparse.Namespace) -> None:
    """The three counts, validated before any work; errors name the command-line flags."""
    from echo.diarization.diarizer import check_speaker_counts

    try:
        check_speaker_counts(args.num_speakers, args.min_speakers, args.max_speakers)
    except ConfigError as e:
        msg = str(e)
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            msg = msg.replace(name, "--" + name.replace("_", "-"))
        raise ConfigError(msg) from None


def _check_seconds(value: float | None, flag: str) -> None:
    import math

    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{flag}: expected finite seconds > 0, got {value:g}")


def _load_pretrained(cls, path: Path, device: str = "cpu", **overrides):
    """``cls.from_pretrained(path)`` (the :class:`~echo.diarization.diarizer.Diarizer` or the
    :class:`~echo.separation.Separator`) with the CLI's one-line errors (a file instead of a
    folder, foreign or corrupt files)."""
    if not path.is_dir():
        raise EchoError(f"{path}: expected a model directory (with bundle.json), got a file")
    try:
        return cls.from_pretrained(path, device=device, **overrides)
    except EchoError:
        raise
    except Exception as e:  # torch / numpy / json raise assorted types for foreign or corrupt files
        raise CacheMismatchError(f"{path}: not a readable Echo {cls.__name__.lower()} ({_first_line(e)}); "
                                 f"written by another model version?") from None


class _Progress:
    """The library's progress ``hook`` (decoding, encoding, the diarizer): a tqdm bar per step,
    shown only when stderr is a terminal and the input lasts at least ``progress_s``."""

    def __init__(self, name: str, seconds: float | None = None, config=None):
        self.name, self.bar, self.step = name, None, None
        short = seconds is not None and config is not None and seconds < config.progress_s
        self.enabled = sys.stderr.isatty() and not short

    def __call__(self, step: str, completed: int | None = None, total: int | None = None, **_) -> None:
        if not self.enabled or completed is None:
            return
        if self.bar is None or step != self.step:
            from tqdm import tqdm

            self.close()
            self.step = step
            self.bar = tqdm(total=total, desc=f"{step} {self.name}".strip(), leave=False,
                            unit="s" if step == "decode" else "block")
        self.bar.n = completed
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _HoldWarnings(logging.Filter):
    """Keeps the diarizer's logged warnings off stderr while it runs: the CLI prints
    ``DiarizeOutput.warnings`` itself, as ``echo: warning: ...``."""

    def __init__(self):
        super().__init__()
        self.held: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING:
            self.held.append(record.getMessage())
            return False
        return True


def _run_reported(name: str, work):
    """``work(hook)`` with a progress bar named ``name``, then ``(its output, warnings)``: the
    output's ``warnings`` plus any others the diarizer logged meanwhile (held back so each is
    printed once), each printed as ``echo: warning: ...``."""
    progress, hold = _Progress(name), _HoldWarnings()
    dlog = logging.getLogger("echo.diarization.diarizer")
    dlog.addFilter(hold)
    try:
        out = work(progress)
    finally:
        dlog.removeFilter(hold)
        progress.close()
    warnings = list(out.warnings) + [w for w in hold.held if w not in out.warnings]
    for w in warnings:
        print(f"echo: warning: {w}", file=sys.stderr)
    return out, warnings


def _segments(ann) -> list[dict]:
    rows = sorted((s.start, s.end, str(lab)) for s, _, lab in ann.itertracks(yield_label=True))
    return [{"start": round(a, 3), "end": round(b, 3), "speaker": lab} for a, b, lab in rows]


def cmd_diarize(args: argparse.Namespace) -> int:
    from pyannote.core import Annotation

    from echo.audio import SAMPLE_RATE
    from echo.diarization.diarizer import Diarizer
    from echo.inference import InferenceConfig
    from echo.io import write_json, write_text
    from echo.metrics.der import format_rttm

    # everything that can be checked without audio or model, first: options, then output paths
    _check_speaker_counts(args)
    if args.embeddings and args.out_dir is None:
        raise ConfigError("--embeddings: needs --out-dir DIR (where <name>.npy is written)")
    out_dir = _check_out_dir_writable(args.out_dir)
    _check_rttm_path(args.rttm)
    inputs = _expand_inputs(args.inputs)
    sources = _probe_all(inputs)
    config = InferenceConfig()
    device = _device(args.device)
    overrides = {} if args.chunk_seconds is None else {"chunk_s": args.chunk_seconds}
    diarizer = _load_pretrained(Diarizer, resolve_model(args.checkpoint), device, **overrides)
    emb_dim = diarizer.parts.speaker.config.emb_dim
    results: list[dict] = []
    for src in sources:
        uri = _uri(src.path)
        wave, count = _decode(src, config)
        duration = count / SAMPLE_RATE
        if wave is None:  # silent: no speakers
            results.append({"uri": uri, "duration": duration, "over": Annotation(uri=uri), "excl": Annotation(uri=uri),
                            "emb": np.zeros((0, emb_dim), np.float32), "labels": [], "warnings": []})
            continue
        out, warnings = _run_reported(src.path.name, lambda hook: diarizer(
            wave, num_speakers=args.num_speakers, min_speakers=args.min_speakers,
            max_speakers=args.max_speakers, hook=hook, uri=uri))
        del wave
        results.append({"uri": uri, "duration": duration, "over": out.speaker_diarization,
                        "excl": out.exclusive_speaker_diarization, "emb": out.speaker_embeddings,
                        "labels": list(out.labels), "warnings": warnings})
        log.info("%s: %d speakers, %.1f s of speech", src.path, out.num_speakers,
                 out.speaker_diarization.get_timeline().support().duration())
    # nothing is written until every input went through
    key = "excl" if args.exclusive else "over"
    if out_dir is not None:
        for r in results:
            uri = r["uri"]
            doc = {"uri": uri, "duration": round(r["duration"], 3), "num_speakers": len(r["labels"]),
                   "diarization": _segments(r["over"]), "exclusive_diarization": _segments(r["excl"]),
                   "warnings": r["warnings"]}
            if args.embeddings:
                doc["labels"] = r["labels"]
                doc["embeddings"] = f"{uri}.npy"
                _write_npy(out_dir / f"{uri}.npy", r["emb"].astype(np.float32))
            write_text(out_dir / f"{uri}.rttm", format_rttm({uri: r[key]}))
            write_json(out_dir / f"{uri}.json", doc)
    elif args.rttm is not None:
        write_text(args.rttm, format_rttm({r["uri"]: r[key] for r in results}))
    else:
        sys.stdout.write(format_rttm({r["uri"]: r[key] for r in results}))
    return 0


# -- separate ------------------------------------------------------------------------------------
def cmd_separate(args: argparse.Namespace) -> int:
    from pyannote.core import Annotation

    from echo.audio import SAMPLE_RATE
    from echo.inference import InferenceConfig
    from echo.io import write_json, write_text
    from echo.metrics.der import format_rttm
    from echo.separation import Separator

    # options and the output folder first, then the input's header, then the model, then audio
    _check_speaker_counts(args)
    out_dir = _check_out_dir_writable(args.out_dir)
    (src,) = _probe_all([args.input])
    config = InferenceConfig()
    chunk = {} if args.chunk_seconds is None else {"chunk_s": args.chunk_seconds}
    separator = _load_pretrained(Separator, resolve_model(args.checkpoint), _device(args.device), **chunk)
    uri = _uri(src.path)
    wave, count = _decode(src, config)
    speakers, warnings, diarization = [], [], Annotation(uri=uri)
    if wave is None:
        warnings.append(f"separate {uri}: silent (peak below {config.silence_dbfs:g} dBFS); no speakers, no WAV written")
    else:
        out, warnings = _run_reported(src.path.name, lambda hook: separator(
            wave, num_speakers=args.num_speakers, min_speakers=args.min_speakers,
            max_speakers=args.max_speakers, hook=hook, uri=uri))
        del wave
        diarization = out.diarization.speaker_diarization
        for label, source in zip(out.labels, out.sources):
            name = f"{uri}.{label}.wav"
            _write_wav(out_dir / name, source, out.sample_rate)
            speakers.append({"label": label, "wav": name,
                             "speech_seconds": round(float(diarization.label_duration(label)), 3)})
    write_text(out_dir / f"{uri}.rttm", format_rttm({uri: diarization}))
    write_json(out_dir / f"{uri}.json", {
        "uri": uri, "input": str(src.path), "sample_rate": SAMPLE_RATE, "duration": round(count / SAMPLE_RATE, 3),
        "num_speakers": len(speakers), "speakers": speakers, "warnings": warnings})
    return 0


def _write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    """Mono 16-bit PCM WAV, written atomically; samples beyond full scale are clipped."""
    import soundfile as sf

    from echo.io import atomic_path

    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")


# -- transcribe ----------------------------------------------------------------------------------
def cmd_transcribe(args: argparse.Namespace) -> int:
    _check_out_file(args.out, "--out")
    (src,) = _probe_all([args.input])
    session = _Session(args)
    head = "vq_ctc" if args.vq else "ctc"
    session.require(head, "transcribe")  # fail before decoding an hour of audio
    decoder = None
    if args.words is not None:  # spell the word list before any audio is decoded
        from echo.lexicon import Lexicon, WordDecoder, read_word_list

        inventory = getattr(session.model, head).inventory
        decoder = WordDecoder(Lexicon.from_words(read_word_list(args.words), inventory, voice=args.voice), inventory)
    wave = _read(src, session.config)
    rows: list[tuple[float, float, str]] = []
    words = []
    if not _silent(wave, src, session.config):
        import torch

        z = session.latents(wave, src.path.name)
        (t,) = session.model.transcribe(torch.from_numpy(z)[None].to(session.device), vq=args.vq, words=decoder)
        rows, words = list(zip(t.start_s, t.end_s, t.phones)), t.words
    if args.out is not None and Path(args.out).suffix.lower() == ".json":
        from echo.io import write_json

        doc = {"uri": _uri(src.path), "head": head,
               "phones": [{"start": round(a, 3), "end": round(b, 3), "phone": p} for a, b, p in rows]}
        if decoder is not None:
            doc["words"] = [{"start": round(w.start_s, 3), "end": round(w.end_s, 3), "word": w.word,
                             "phones": " ".join(w.phones)} for w in words]
        write_json(args.out, doc)
        return 0
    if decoder is not None:
        text = "start\tend\tword\tphones\n" + "".join(
            f"{w.start_s:.3f}\t{w.end_s:.3f}\t{w.word}\t{' '.join(w.phones)}\n" for w in words)
    else:
        text = "start\tend\tphone\n" + "".join(f"{a:.3f}\t{b:.3f}\t{p}\n" for a, b, p in rows)
    if args.out is not None:
        from echo.io import write_text

        write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


# -- embed ---------------------------------------------------------------------------------------
def cmd_embed(args: argparse.Namespace) -> int:
    import torch

    from echo.diarization.segments import WindowConfig, sliding_windows
    from echo.errors import AudioError

    windows_cfg = WindowConfig(args.window, args.step) if args.per_window else None
    _check_out_file(args.out, "--out")
    (src,) = _probe_all([args.input])
    session = _Session(args)
    session.require("speaker", "embed")
    wave = _read(src, session.config)
    if _silent(wave, src, session.config):
        raise AudioError(f"{src.path}: silent (peak below {session.config.silence_dbfs:g} dBFS), no speaker to embed")
    duration = len(wave) / 16000
    z = session.latents(wave, src.path.name)
    del wave
    model, dev = session.model, session.device
    if windows_cfg is None:
        emb = model.embed_speaker(torch.from_numpy(z)[None].to(dev))[0].float().cpu().numpy()
        _write_npy(Path(args.out), emb)
        return 0
    windows = sliding_windows(duration, windows_cfg)
    emb = window_embeddings(model, z, windows, session.frame_shift)
    out = Path(args.out)
    _write_npy(out.with_name(out.stem + ".windows.npy"), windows.astype(np.float32))
    _write_npy(out, emb)
    return 0


def window_embeddings(model, latents: np.ndarray, windows: np.ndarray, frame_shift: float) -> np.ndarray:
    """Speaker embeddings ``(N, E)`` of the latent frames inside each window (seconds)."""
    a = np.floor(windows[:, 0] / frame_shift + 1e-6).astype(np.int64)
    b = np.maximum(a + 1, np.ceil(windows[:, 1] / frame_shift - 1e-6).astype(np.int64))
    lens = np.minimum(b, len(latents)) - a
    width = int(lens.max()) if len(lens) else 1
    masks = np.arange(width)[None] < lens[:, None]
    return model.speaker.embed_windows(latents, a, width, masks, batch_size=256)


# -- parser --------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, chunk_help: str = "audio the encoder sees at once (finite, > 0; default 30, "
                                                          "diarize: the model's setting); bounds memory") -> None:
    p.add_argument("--checkpoint", metavar="DIR",
                   help=f"model bundle directory (default: $ECHO_MODEL or ./{DEFAULT_MODEL}, written by `{TRAIN_COMMAND}`)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where the model runs (default: cuda when available, else cpu)")
    p.add_argument("--chunk-seconds", type=float, default=None, metavar="S", help=chunk_help)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")


def _speaker_counts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-speakers", type=int, metavar="K", help="exactly K speakers")
    p.add_argument("--min-speakers", type=int, metavar="K", help="at least K speakers")
    p.add_argument("--max-speakers", type=int, metavar="K", help="at most K speakers")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m echo",
        description="Echo inference on your own recordings (WAV/FLAC/MP3/M4A, any rate and channel count).",
        epilog="Errors are one line 'echo: error: <file>: <problem>' with exit status 1.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("diarize", help="who spoke when: RTTM (+ JSON, embeddings)",
                       description="Speaker diarization (segmentation head + speaker-head embeddings + PLDA/VBx), "
                                   "with overlapping speech; blind by default. Silent recordings give an empty RTTM.")
    d.add_argument("inputs", nargs="+", metavar="IN",
                   help=f"audio files and/or folders (a folder: its {'/'.join(e[1:] for e in AUDIO_EXT)} files, "
                        "sorted, not recursive)")
    out = d.add_mutually_exclusive_group()
    out.add_argument("--rttm", metavar="FILE", help="one RTTM file for all inputs (default: stdout)")
    out.add_argument("--out-dir", metavar="DIR",
                     help="per input <name>.rttm and <name>.json (both the overlapping and the exclusive "
                          "diarization, duration, warnings) in DIR")
    _speaker_counts(d)
    d.add_argument("--exclusive", action="store_true",
                   help="the RTTM written is the exclusive diarization (one speaker at a time, e.g. to align "
                        "with ASR words); the JSON always has both")
    d.add_argument("--embeddings", action="store_true",
                   help="also write <name>.npy in --out-dir: one speaker embedding per output speaker (K x E, "
                        "rows in the order of the JSON's labels)")
    _common(d)
    d.set_defaults(func=cmd_diarize)

    s = sub.add_parser("separate", help="one WAV per speaker (+ RTTM, JSON)",
                       description="Separate a recording into its speakers: diarize it (as `diarize` does), "
                                   "separate it in --chunk-seconds chunks with the separation stage's model and "
                                   "give each chunk's sources to the diarization's speakers. Writes in --out-dir "
                                   "<name>.<label>.wav per speaker (16 kHz mono, 16-bit PCM, the input's length; "
                                   "they sum to the input), <name>.rttm (the diarization) and <name>.json (the "
                                   "speakers with their WAV files and speech seconds, duration, warnings). A silent "
                                   "recording writes no WAV and says so in the JSON.")
    s.add_argument("input", metavar="IN", help="audio file")
    s.add_argument("--out-dir", metavar="DIR", required=True, help="output directory")
    _speaker_counts(s)
    _common(s, chunk_help="audio separated at once (finite, > 0; default 4, the training mixtures' length); "
                          "the diarization keeps the model's setting")
    s.set_defaults(func=cmd_separate)

    t = sub.add_parser("transcribe", help="phones with times (CTC head)",
                       description="Greedy CTC phone transcription with start/end times (40 ms resolution). "
                                   "TSV on stdout, or --out FILE (.tsv or .json).")
    t.add_argument("input", metavar="IN", help="audio file")
    t.add_argument("--out", metavar="FILE", help="write TSV (or JSON if FILE ends in .json) instead of stdout")
    t.add_argument("--vq", action="store_true", help="decode through the VQ bottleneck head")
    t.add_argument("--words", metavar="FILE", help="word list (one word per line): decode words from it with "
                   "espeak-ng's pronunciations and a lexicon-constrained CTC beam search; TSV rows become words "
                   "(start, end, word, phones), JSON gets a 'words' list beside the phones")
    t.add_argument("--voice", default="en-us", help="espeak-ng voice for the word list's pronunciations (default en-us)")
    _common(t)
    t.set_defaults(func=cmd_transcribe)

    e = sub.add_parser("embed", help="speaker embedding(s) as .npy",
                       description="Speaker-head embedding of the whole recording ((E,) float32), or with "
                                   "--per-window one per sliding window ((N, E)) plus the windows' start/end "
                                   "seconds in <out>.windows.npy ((N, 2)).")
    e.add_argument("input", metavar="IN", help="audio file")
    e.add_argument("--out", metavar="FILE", required=True, help="output .npy")
    e.add_argument("--per-window", action="store_true", help="one embedding per sliding window")
    e.add_argument("--window", type=float, default=1.5, metavar="S", help="window length (default 1.5 s)")
    e.add_argument("--step", type=float, default=0.25, metavar="S", help="window step (default 0.25 s)")
    _common(e)
    e.set_defaults(func=cmd_embed)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 usage)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="echo: %(message)s", stream=sys.stderr)
    try:
        _check_seconds(getattr(args, "chunk_seconds", None), "--chunk-seconds")
        return int(args.func(args) or 0)
    except EchoError as e:
        print(f"echo: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("echo: interrupted; no output written", file=sys.stderr)
        return 130


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__
