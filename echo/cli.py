"""Echo on your own recordings: diarize, separate (latent streams), transcribe phones, embed speakers.

    python -m echo diarize meeting.m4a --rttm meeting.rttm           # who spoke when (blind K)
    python -m echo diarize a.wav b.flac --out-dir rttm/ --num-speakers 2
    python -m echo separate meeting.wav --out-dir sources/           # per-source activity + latents
    python -m echo transcribe talk.mp3 --out talk.tsv                # phones with times (CTC head)
    python -m echo embed voice.flac --out voice.npy [--per-window]   # speaker embedding(s)

(``echo-jepa`` is the same program as ``python -m echo``.) Without ``--checkpoint`` the model
the default workflow trains is used: ``models/echo`` under the current directory (or ``$ECHO_MODEL``),
a bundle directory (:class:`echo.models.bundle.EchoModel`) with the PLDA back end of the
diarizer in ``plda.npz``.

Inputs: WAV/FLAC/OGG/AIFF (soundfile) and MP3/M4A/anything FFmpeg reads (torchcodec), any sample
rate and channel count; everything is mixed to mono and resampled to 16 kHz while it is read in
blocks (:mod:`echo.inference`). ``diarize`` streams seekable files (WAV/FLAC/OGG/AIFF) through
the diarizer a chunk at a time, after a first pass that counts samples and checks for silence, so
its memory does not grow with the recording; otherwise the 16 kHz signal of the whole recording
is kept in memory (230 MB per hour) and the encoder sees it in chunks.

Errors: every problem with an input or a model is one line ``echo: error: <file>: <problem>`` on
stderr and exit status 1 (2 for bad command-line usage). With several inputs, all of them are
checked (headers) before any is processed, and results are written only after every input was
processed: one bad input means no output at all, never a partial set. Each output file is
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
PLDA_FILE = "plda.npz"
DIARIZER_FILE = "diarizer.json"


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
    env = os.environ.get("ECHO_MODEL")
    path = Path(env) if env else DEFAULT_MODEL
    if not (path / "bundle.json").is_file():
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


def load_plda(path: Path):
    """The diarizer's PLDA back end stored beside the bundle (``plda.npz``)."""
    from echo.diarization.plda import PLDA

    p = path / PLDA_FILE
    if not p.is_file():
        raise EchoError(f"{path}: bundle has no diarization back end ({PLDA_FILE}); use the bundle the "
                        f"workflow writes to {DEFAULT_MODEL} (`{TRAIN_COMMAND}`)")
    try:
        return PLDA.load(p)
    except EchoError:
        raise
    except Exception as e:
        raise CacheMismatchError(f"{p}: not a readable PLDA model ({_first_line(e)})") from None


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

        self.config = InferenceConfig() if args.chunk_seconds is None else InferenceConfig(chunk_seconds=args.chunk_seconds)
        self.device = _device(args.device)
        self.path = resolve_model(args.checkpoint)
        self.model = load_model(self.path, self.device)

    def require(self, head: str, command: str) -> None:
        """Fail early (before decoding any audio) when the bundle lacks the head a command needs."""
        if getattr(self.model, head, None) is None:
            raise EchoError(f"{self.path}: this bundle (stage {self.model.stage}) has no {head} head, which "
                            f"{command} needs; use the final bundle of `{TRAIN_COMMAND}`")

    def latents_of_chunk(self, wave: np.ndarray) -> np.ndarray:
        import torch

        mels = torch.from_numpy(self.model.frontend.compute(wave))
        return self.model.latents(mels).features[0].float().cpu().numpy()

    def latents(self, wave: np.ndarray, desc: str) -> np.ndarray:
        from echo.inference import encode_latents

        return encode_latents(self.latents_of_chunk, wave, self.config, desc=desc)

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


def _read(src, session: _Session) -> np.ndarray:
    from echo.inference import read_all

    return read_all(src, session.config)


def _read_streamed(src, session: _Session):
    """A :class:`~echo.evaluate.diarize.BlockReader` over a seekable file (WAV/FLAC/...), so the
    diarizer holds one chunk of samples, not the recording (230 MB per hour); None when silent.
    A first decoding pass counts the samples and finds the peak (the silence check)."""
    from echo.errors import AudioError
    from echo.evaluate.diarize import BlockReader
    from echo.inference import is_silent, stream

    block = session.config.block_seconds
    peak, count = 0.0, 0
    for x in stream(src, block):
        peak = max(peak, float(np.abs(x).max()) if x.size else 0.0)
        count += len(x)
    if count == 0:
        raise AudioError(f"{src.path}: contains no audio samples")
    if is_silent(np.array([peak], np.float32), session.config.silence_dbfs):
        print(f"echo: {src.path}: silent (peak below {session.config.silence_dbfs:g} dBFS)", file=sys.stderr)
        return None
    return BlockReader(lambda: stream(src, block), count)


def _silent(wave: np.ndarray, src, session: _Session) -> bool:
    from echo.inference import is_silent

    if is_silent(wave, session.config.silence_dbfs):
        print(f"echo: {src.path}: silent (peak below {session.config.silence_dbfs:g} dBFS)", file=sys.stderr)
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


def _check_out_dir(out_dir: str | None) -> Path | None:
    if out_dir is None:
        return None
    p = Path(out_dir)
    if p.exists() and not p.is_dir():
        raise EchoError(f"{p}: exists and is not a directory (--out-dir)")
    return p


# -- diarize -------------------------------------------------------------------------------------
def cmd_diarize(args: argparse.Namespace) -> int:
    from pyannote.core import Annotation

    from echo.metrics.der import format_rttm
    from echo.io import write_text

    out_dir = _check_out_dir(args.out_dir)
    _check_out_file(args.rttm, "--rttm")
    _check_speaker_counts(args)
    sources = _probe_all(args.inputs)
    session = _Session(args)
    diarizer = _make_diarizer(session, args)
    results: dict[str, Annotation] = {}
    for src in sources:
        uri = _uri(src.path)
        wave = _read_streamed(src, session) if src.backend == "soundfile" else _read(src, session)
        if wave is None or (isinstance(wave, np.ndarray) and _silent(wave, src, session)):
            results[uri] = Annotation(uri=uri)
            continue
        ann = diarizer.diarize(wave, uri, num_speakers=args.num_speakers,
                               min_speakers=args.min_speakers, max_speakers=args.max_speakers)
        del wave
        results[uri] = ann
        log.info("%s: %d speakers, %.1f s of speech", src.path, len(ann.labels()), ann.get_timeline().duration())
    # nothing is written until every input went through
    if out_dir is not None:
        for uri, ann in results.items():
            write_text(out_dir / f"{uri}.rttm", format_rttm({uri: ann}))
    elif args.rttm is not None:
        write_text(args.rttm, format_rttm(results))
    else:
        sys.stdout.write(format_rttm(results))
    return 0


def _check_speaker_counts(args: argparse.Namespace) -> None:
    for name in ("num_speakers", "min_speakers", "max_speakers"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {v}")
    if args.num_speakers is not None and (args.min_speakers is not None or args.max_speakers is not None):
        raise ConfigError("--num-speakers: expected either --num-speakers or --min/--max-speakers, not both")
    if args.min_speakers is not None and args.max_speakers is not None and args.min_speakers > args.max_speakers:
        raise ConfigError(f"--min-speakers: expected <= --max-speakers ({args.max_speakers}), got {args.min_speakers}")


def _make_diarizer(session: _Session, args: argparse.Namespace):
    overrides = {}
    if args.exclusive:
        overrides["exclusive"] = True
    if args.chunk_seconds is not None:
        overrides["chunk_s"] = args.chunk_seconds
    return load_diarizer(session.path, session.model, **overrides)


def load_diarizer(path: Path, model, **overrides):
    """The deployed diarizer of a bundle directory: its model, PLDA back end and evaluated settings.

    Args:
        path: bundle directory (``plda.npz`` and ``diarizer.json`` beside the weights).
        model: the bundle, already loaded (on the wanted device).
        overrides: :class:`~echo.evaluate.diarize.DiarizerConfig` fields to change (e.g. ``exclusive``).
    """
    import dataclasses

    from echo.evaluate.diarize import Diarizer

    cfg = diarizer_config(path)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return Diarizer(model, load_plda(path), cfg, frontend=model.frontend)


def diarizer_config(path: Path):
    """The diarizer settings the evaluation used (``diarizer.json`` beside the bundle: the params
    plus the dev-tuned VBx values), so the CLI reproduces the tables' DER; defaults otherwise."""
    from echo.config import build
    from echo.evaluate.diarize import DiarizerConfig
    from echo.io import read_json

    p = path / DIARIZER_FILE
    if not p.is_file():
        print(f"echo: {path}: no {DIARIZER_FILE} (the evaluated diarizer settings); using the defaults",
              file=sys.stderr)
        return DiarizerConfig()
    try:
        data = read_json(p)
    except ValueError:
        raise CacheMismatchError(f"{p}: not valid JSON") from None
    return build(DiarizerConfig, data, str(p))


# -- separate ------------------------------------------------------------------------------------
def cmd_separate(args: argparse.Namespace) -> int:
    from pyannote.core import Annotation

    from echo.io import write_json, write_text
    from echo.metrics.der import format_rttm

    out_dir = _check_out_dir(args.out_dir)
    if not -1.0 <= args.activity_threshold <= 1.0:
        raise ConfigError(f"--activity-threshold: expected a cosine in [-1, 1], got {args.activity_threshold}")
    if not args.route_seconds > 0:
        raise ConfigError(f"--route-seconds: expected seconds > 0, got {args.route_seconds}")
    (src,) = _probe_all([args.input])
    session = _Session(args)
    session.require("router", "separate")
    uri = _uri(src.path)
    wave = _read(src, session)
    ann, streams = Annotation(uri=uri), []
    if not _silent(wave, src, session):
        z = session.latents(wave, desc="encode")
        del wave
        streams, activity = route_sources(session, z, args.route_seconds, args.activity_threshold)
        ann = activity_annotation(activity, session.frame_shift, uri)
    shift = session.frame_shift
    for k, stream in enumerate(streams):
        _write_npy(out_dir / f"{uri}.src{k}.npy", stream)
    write_text(out_dir / f"{uri}.rttm", format_rttm({uri: ann}))
    write_json(out_dir / f"{uri}.json", {
        "uri": uri, "input": str(src.path), "frame_shift": shift, "num_sources": len(streams),
        "sources": [{"label": f"src{k}", "latents": f"{uri}.src{k}.npy", "shape": list(s.shape),
                     "speech_seconds": round(float(ann.label_duration(f"src{k}")), 3)}
                    for k, s in enumerate(streams)],
        "note": "latent streams only (25 frames/s, zero where the source is silent); Echo has no decoder to waveforms yet"})
    return 0


def route_sources(session: _Session, latents: np.ndarray, route_seconds: float = 4.0,
                  activity_threshold: float = 0.5):
    """Route a long latent sequence chunk by chunk and link the chunks' slots into sources.

    The router sees ``route_seconds`` at a time (mixture-length inputs, as in training; its
    attention is quadratic in time). Its slots are
    unordered, so active slots of consecutive chunks are linked to the sources found so far by
    the cosine similarity of their speaker embeddings (Hungarian matching, scipy); a slot that
    matches no source above 0.5 starts a new one. Frame activity of a source: its slot latent is
    far (cosine < ``activity_threshold``) from the encoder's latent of digital silence, which is
    what a slot is trained to produce where its source is silent (the target is the encoder
    applied to the isolated source). Hand-written heuristics: no library links K-set slots
    across chunks.

    Returns:
        ``(streams, activity)``: per source a ``(N, D)`` float32 latent stream (zero where the
        source is silent or absent) and ``(N, S)`` bool frame activity.
    """
    import torch
    from scipy.optimize import linear_sum_assignment

    model, dev = session.model, session.device
    n = len(latents)
    per_chunk = max(1, round(route_seconds / session.frame_shift))
    silence = session.latents_of_chunk(np.zeros(16000 * 2, np.float32))[2:-2].mean(0)
    silence = silence / max(np.linalg.norm(silence), 1e-12)
    streams: list[np.ndarray] = []
    signatures: list[np.ndarray] = []
    for lo in range(0, n, per_chunk):
        hi = min(n, lo + per_chunk)
        zc = torch.from_numpy(latents[lo:hi])[None].to(dev)
        r = model.route(zc)
        slots = r.slots[0][r.active[0]]  # (A, T, D)
        if len(slots) == 0:
            continue
        if model.speaker is not None:
            sig = model.embed_speaker(slots).float().cpu().numpy()
        else:
            sig = slots.mean(1).float().cpu().numpy()
        sig = sig / np.maximum(np.linalg.norm(sig, axis=1, keepdims=True), 1e-12)
        target = np.full(len(sig), -1)
        if signatures:
            cos = sig @ np.stack(signatures).T
            rows, cols = linear_sum_assignment(-cos)
            for i, j in zip(rows, cols):
                if cos[i, j] >= 0.5:
                    target[i] = j
        slots_np = slots.float().cpu().numpy()
        for i, j in enumerate(target):
            if j < 0:
                j = len(streams)
                streams.append(np.zeros((n, latents.shape[1]), np.float32))
                signatures.append(sig[i])
            else:  # running signature, so a source's voice is tracked as it drifts
                s = signatures[j] + sig[i]
                signatures[j] = s / max(np.linalg.norm(s), 1e-12)
            streams[j][lo:hi] = slots_np[i]
    activity = np.zeros((n, len(streams)), dtype=bool)
    for k, st in enumerate(streams):
        norm = np.linalg.norm(st, axis=1)
        cos = (st @ silence) / np.maximum(norm, 1e-12)
        activity[:, k] = (norm > 0) & (cos < activity_threshold)
        st[~activity[:, k]] = 0.0
    found = [k for k in range(len(streams)) if activity[:, k].any()]  # a source never active is not detected
    return [streams[k] for k in found], activity[:, found]


def activity_annotation(activity: np.ndarray, frame_shift: float, uri: str, prefix: str = "src"):
    """Frame activity ``(N, S)`` -> Annotation with one label per source (runs of frames merged)."""
    from pyannote.core import Annotation, Segment

    ann = Annotation(uri=uri)
    for k in range(activity.shape[1]):
        a = np.r_[False, activity[:, k], False].astype(np.int8)
        starts, ends = np.flatnonzero(np.diff(a) == 1), np.flatnonzero(np.diff(a) == -1)
        for s, e in zip(starts, ends):
            seg = Segment(round(s * frame_shift, 3), round(e * frame_shift, 3))
            ann[seg, ann.new_track(seg)] = f"{prefix}{k}"
    return ann


# -- transcribe ----------------------------------------------------------------------------------
def cmd_transcribe(args: argparse.Namespace) -> int:
    _check_out_file(args.out, "--out")
    (src,) = _probe_all([args.input])
    session = _Session(args)
    head = "vq_ctc" if args.vq else "ctc"
    session.require(head, "transcribe")  # fail before decoding an hour of audio
    wave = _read(src, session)
    rows: list[tuple[float, float, str]] = []
    if not _silent(wave, src, session):
        import torch

        z = session.latents(wave, desc="encode")
        (t,) = session.model.transcribe(torch.from_numpy(z)[None].to(session.device), vq=args.vq)
        rows = list(zip(t.start_s, t.end_s, t.phones))
    if args.out is not None and Path(args.out).suffix.lower() == ".json":
        from echo.io import write_json

        write_json(args.out, {"uri": _uri(src.path), "head": head,
                              "phones": [{"start": round(a, 3), "end": round(b, 3), "phone": p} for a, b, p in rows]})
        return 0
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
    wave = _read(src, session)
    if _silent(wave, src, session):
        raise AudioError(f"{src.path}: silent (peak below {session.config.silence_dbfs:g} dBFS), no speaker to embed")
    duration = len(wave) / 16000
    z = session.latents(wave, desc="encode")
    del wave
    model, dev = session.model, session.device
    if windows_cfg is None:
        emb = model.embed_speaker(torch.from_numpy(z)[None].to(dev))[0].float().cpu().numpy()
        _write_npy(Path(args.out), emb)
        return 0
    windows = sliding_windows(duration, windows_cfg)
    emb = window_embeddings(model, z, windows, session.frame_shift, dev)
    out = Path(args.out)
    _write_npy(out.with_name(out.stem + ".windows.npy"), windows.astype(np.float32))
    _write_npy(out, emb)
    return 0


def window_embeddings(model, latents: np.ndarray, windows: np.ndarray, frame_shift: float, device: str,
                      batch: int = 256) -> np.ndarray:
    """Speaker embeddings ``(N, E)`` of the latent frames inside each window (padded batches)."""
    import torch

    a = np.floor(windows[:, 0] / frame_shift + 1e-6).astype(np.int64)
    b = np.maximum(a + 1, np.ceil(windows[:, 1] / frame_shift - 1e-6).astype(np.int64))
    b = np.minimum(b, len(latents))
    out = []
    for i in range(0, len(windows), batch):
        lens = b[i:i + batch] - a[i:i + batch]
        x = np.zeros((len(lens), int(lens.max()), latents.shape[1]), np.float32)
        for j, (s, n) in enumerate(zip(a[i:i + batch], lens)):
            x[j, :n] = latents[s:s + n]
        mask = torch.arange(x.shape[1])[None] < torch.from_numpy(lens)[:, None]
        out.append(model.embed_speaker(torch.from_numpy(x).to(device), mask.to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# -- parser --------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", metavar="DIR",
                   help=f"model bundle directory (default: $ECHO_MODEL or ./{DEFAULT_MODEL}, written by `{TRAIN_COMMAND}`)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where the model runs (default: cuda when available, else cpu)")
    p.add_argument("--chunk-seconds", type=float, default=None, metavar="S",
                   help="audio the encoder sees at once (default 30, diarize: the model's setting); bounds memory")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m echo",
        description="Echo inference on your own recordings (WAV/FLAC/MP3/M4A, any rate and channel count).",
        epilog="Errors are one line 'echo: error: <file>: <problem>' with exit status 1.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("diarize", help="who spoke when: RTTM",
                       description="Speaker diarization (speaker-head embeddings + PLDA + VBx), blind by default. "
                                   "Silent recordings give an empty RTTM.")
    d.add_argument("inputs", nargs="+", metavar="IN", help="audio files")
    out = d.add_mutually_exclusive_group()
    out.add_argument("--rttm", metavar="FILE", help="one RTTM file for all inputs (default: stdout)")
    out.add_argument("--out-dir", metavar="DIR", help="one <input name>.rttm per input in DIR")
    d.add_argument("--num-speakers", type=int, metavar="K", help="the number of speakers, if known")
    d.add_argument("--min-speakers", type=int, metavar="K", help="at least K speakers")
    d.add_argument("--max-speakers", type=int, metavar="K", help="at most K speakers")
    d.add_argument("--exclusive", action="store_true",
                   help="no overlapping turns (one speaker at a time), e.g. to align with ASR words")
    _common(d)
    d.set_defaults(func=cmd_diarize)

    s = sub.add_parser("separate", help="per-source activity (RTTM) and latent streams (.npy)",
                       description="Route the recording's latents into sources (an unknown number). Writes, "
                                   "per detected source, its activity (<name>.rttm) and its latent stream "
                                   "(<name>.src<k>.npy, 25 frames/s), plus <name>.json. No waveforms: Echo has "
                                   "no decoder from latents back to audio yet.")
    s.add_argument("input", metavar="IN", help="audio file")
    s.add_argument("--out-dir", metavar="DIR", required=True, help="output directory")
    s.add_argument("--route-seconds", type=float, default=4.0, metavar="S",
                   help="audio the router splits at once (default 4 s, the training mixtures' length); "
                        "sources are linked across these chunks")
    s.add_argument("--activity-threshold", type=float, default=0.5, metavar="COS",
                   help="a source is active where its latent's cosine to the silence latent is below this (default 0.5)")
    _common(s)
    s.set_defaults(func=cmd_separate)

    t = sub.add_parser("transcribe", help="phones with times (CTC head)",
                       description="Greedy CTC phone transcription with start/end times (40 ms resolution). "
                                   "TSV on stdout, or --out FILE (.tsv or .json).")
    t.add_argument("input", metavar="IN", help="audio file")
    t.add_argument("--out", metavar="FILE", help="write TSV (or JSON if FILE ends in .json) instead of stdout")
    t.add_argument("--vq", action="store_true", help="decode through the VQ bottleneck head")
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
