"""espeak-ng synthesis through libespeak-ng's C API, with the synthesiser's own phone timings.

The ``espeak-ng`` command line can print phonemes but not *when* each phone is spoken; the library
reports that itself: initialised with ``espeakINITIALIZE_PHONEME_EVENTS`` it sends an
``espeakEVENT_PHONEME`` event, carrying the phone's name and its output sample index, through the
synth callback at the start of every phone. No maintained Python binding exposes these events
with sample positions, so this module binds the C API with ctypes; the structure layouts follow
``speak_lib.h`` of libespeak-ng 1.51 (API revision 12).

Phone symbols are IPA (``espeakINITIALIZE_PHONEME_IPA``), e.g. ``ð``, ``aʊ``, ``ɑː``, ``dʒ``: one
symbol per espeak phoneme, stress marks excluded, never containing spaces. In IPA mode both pauses
and a few linking phonemes (e.g. the West Midlands accent's dropped ``h``, espeak ``;``) have an
empty name, so every utterance is synthesised twice, once reporting espeak's ASCII mnemonics and
once IPA; the two runs are checked to give identical samples and event positions. A mnemonic
starting with ``_`` is a pause (:data:`echo.corpus.manifest.SILENCE` later); a non-pause phoneme
without an IPA name, or whose name is only a modifier letter (``ʲ``), is merged into the phone
before it. ASCII ``:`` in IPA names is normalised to ``ː``.

Determinism: libespeak-ng keeps synthesiser state between calls (the glottal-source phase,
flutter, the previous clause's pitch), so the same text gives slightly different samples
depending on what was spoken before, and ``espeak_Terminate`` followed by a new
``espeak_Initialize`` deadlocks in 1.51. Each utterance is therefore synthesised in a freshly
forked child that initialises the library, seeds the C ``rand()`` that espeak's noise sources
use, synthesises and exits: the output depends only on (voice, parameters, text, seed), never on
which process or in which order it ran. The children are forked from a small helper process
(started once per calling process; it imports neither torch nor pandas), because forking a
process holding torch costs ~40 ms and would be unsafe with its thread pools; from the helper
a fork costs a few milliseconds.
"""
from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import functools
import logging
import os
import pickle
import struct
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echo.errors import EchoError

__all__ = ["ESPEAK_SAMPLE_RATE", "Synthesis", "synthesize", "phone_segments", "list_voices", "espeak_available"]

log = logging.getLogger(__name__)

ESPEAK_SAMPLE_RATE = 22_050  # rate of espeak-ng's own (non-MBROLA) voices

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_RATE_MIN, _RATE_MAX = 80, 450


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """``espeak_EVENT`` (speak_lib.h)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds
        ("sample", ctypes.c_int),  # output sample index of the event
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    """``espeak_VOICE`` (speak_lib.h)."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),  # (priority byte, language string)* terminated by a zero byte
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Synthesis:
    """One synthesised utterance at espeak's native rate.

    Attributes:
        audio: int16 samples, mono, at ``sample_rate``.
        sample_rate: espeak's output rate (22050 Hz).
        events: ``(sample, phone)`` per phone start in time order; ``phone`` is an IPA symbol or
            ``""`` for a pause.
        mnemonics: ``(sample, name)`` of every phoneme event with espeak's ASCII names (pauses
            start with ``_``), for reference.
    """

    audio: np.ndarray
    sample_rate: int
    events: tuple[tuple[int, str], ...]
    mnemonics: tuple[tuple[int, str], ...] = ()


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as e:
        raise EchoError(f"libespeak-ng: cannot load {name} ({e}); install it with "
                        "`apt-get install -y espeak-ng libespeak-ng1`") from None
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
    ctypes.CDLL(None).srand.argtypes = [ctypes.c_uint]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
    return lib


def espeak_available() -> bool:
    """Whether libespeak-ng can be loaded (tests skip the corpus when it cannot)."""
    try:
        _library()
    except EchoError:
        return False
    return True


def list_voices(language: str | None = None) -> list[tuple[str, str]]:
    """List installed voices as ``(identifier, name)``.

    Args:
        language: ``None`` for all language voices, a language such as ``"en"``, or ``"variant"``
            for the ``+variant`` modifiers (identifiers ``!v/<file>``; the file name follows ``+``).
    """
    return _in_child(_list_voices_here, language)


def _list_voices_here(language: str | None) -> list[tuple[str, str]]:
    lib = _library()
    _initialize(lib)
    out = []
    spec = None
    if language is not None:
        spec = _Voice()
        spec.languages = language.encode("utf-8")
        spec = ctypes.byref(spec)
    arr = lib.espeak_ListVoices(spec)
    i = 0
    while arr[i]:
        v = arr[i].contents
        out.append((v.identifier.decode("utf-8"), v.name.decode("utf-8")))
        i += 1
    return out


def synthesize(text: str, voice: str, rate: int = 175, pitch: int = 50, pitch_range: int = 50,
               seed: int = 0) -> Synthesis:
    """Synthesise ``text`` with phone events, in a fresh child process (see the module docstring).

    Args:
        text: UTF-8 text (plain, no SSML).
        voice: espeak voice name, optionally with a variant, e.g. ``"en-gb-scotland+f3"``.
        rate: speaking rate in words per minute, 80..450.
        pitch: base pitch, 0..100 (50 = the voice's default).
        pitch_range: pitch range, 0..100 (0 = monotone, 50 = normal).
        seed: seed of the C library's ``rand()`` that espeak's noise sources draw from.

    Returns:
        The samples at 22.05 kHz and the phone events.

    Raises:
        EchoError: unknown voice, out-of-range parameter, or a synthesis failure.
    """
    if not _RATE_MIN <= rate <= _RATE_MAX:
        raise EchoError(f"espeak rate: expected {_RATE_MIN}..{_RATE_MAX} words/min, got {rate}")
    for key, v in (("pitch", pitch), ("pitch_range", pitch_range)):
        if not 0 <= v <= 100:
            raise EchoError(f"espeak {key}: expected 0..100, got {v}")
    args = (text, voice, int(rate), int(pitch), int(pitch_range), int(seed))
    audio, ipa = _in_child(_synthesize_here, *args, True)
    audio_ascii, ascii_ = _in_child(_synthesize_here, *args, False)
    if audio != audio_ascii or [s for s, _ in ipa] != [s for s, _ in ascii_]:
        raise EchoError(f"espeak voice {voice!r}: two syntheses of the same text differ; "
                        "libespeak-ng is not deterministic here")
    events: list[tuple[int, str]] = []
    for (sample, name_ipa), (_, name_ascii) in zip(ipa, ascii_):
        name = _normalise_ipa(name_ipa)
        if name_ascii.startswith("_"):
            events.append((sample, ""))
        elif name and not all(unicodedata.category(c) in ("Lm", "Mn", "Sk") for c in name):
            events.append((sample, name))
        # else: a linking phoneme with no segment of its own (no IPA name, or only a modifier
        # such as the palatalisation mark "ʲ"); the previous phone continues
    return Synthesis(audio=np.frombuffer(audio, dtype=np.int16).copy(), sample_rate=ESPEAK_SAMPLE_RATE,
                     events=tuple(events), mnemonics=tuple(ascii_))


def _normalise_ipa(name: str) -> str:
    # espeak writes a few long vowels with an ASCII colon (Scottish "a:"); IPA's length mark is "ː"
    return unicodedata.normalize("NFC", name).replace(":", "ː")


def _initialize(lib: ctypes.CDLL, ipa: bool = True) -> None:
    sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None,
                               _INITIALIZE_PHONEME_EVENTS | (_INITIALIZE_PHONEME_IPA if ipa else 0))
    if sr != ESPEAK_SAMPLE_RATE:
        raise EchoError(f"libespeak-ng: espeak_Initialize returned {sr}, expected sample rate {ESPEAK_SAMPLE_RATE} "
                        "(espeak-ng-data missing?)")


def _synthesize_here(text: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int,
                     ipa: bool) -> tuple[bytes, list[tuple[int, str]]]:
    lib = _library()
    _initialize(lib, ipa)
    chunks: list[bytes] = []
    events: list[tuple[int, str]] = []

    def on_synth(wav, n, ev):  # called synchronously from inside espeak_Synth
        if wav and n > 0:
            chunks.append(ctypes.string_at(wav, 2 * n))  # int16 samples, native byte order
        i = 0
        while ev[i].type != _EVENT_LIST_TERMINATED:
            if ev[i].type == _EVENT_PHONEME:
                # c_char*8 stops at the first zero byte; a name filling all 8 bytes has none
                events.append((int(ev[i].sample), ev[i].id.string.decode("utf-8", errors="strict")))
            i += 1
        return 0  # 0 = continue synthesis

    callback = _SynthCallback(on_synth)
    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(voice.encode("utf-8")) != 0:
        raise EchoError(f"espeak voice {voice!r}: not found (see `espeak-ng --voices=en` and `--voices=variant`)")
    for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range)):
        if lib.espeak_SetParameter(param, value, 0) != 0:
            raise EchoError(f"espeak parameter {param}={value}: rejected by libespeak-ng")
    ctypes.CDLL(None).srand(seed & 0xFFFFFFFF)
    data = text.encode("utf-8") + b"\0"
    err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if err != 0:
        raise EchoError(f"espeak_Synth failed with code {err} for text {text[:60]!r}")
    return b"".join(chunks), events


def _in_child(fn, *args):
    """Run ``fn(*args)`` in a freshly forked child of the helper process; return or re-raise its result.

    Hand-written because the point is a *fresh* libespeak-ng state per call, which no pool gives.
    """
    global _helper
    if _helper is None or _helper.owner != os.getpid() or _helper.proc.poll() is not None:
        _helper = _ForkHelper()
    ok, value = pickle.loads(_helper.call(pickle.dumps((fn.__name__, args), protocol=pickle.HIGHEST_PROTOCOL)))
    if not ok:
        raise value
    return value


def _write_message(fh, payload: bytes) -> None:
    fh.write(struct.pack("<Q", len(payload)))
    fh.write(payload)
    fh.flush()


def _read_message(fh) -> bytes | None:
    head = fh.read(8)
    if len(head) < 8:
        return None
    n = struct.unpack("<Q", head)[0]
    payload = fh.read(n)
    return payload if len(payload) == n else None


class _ForkHelper:
    """The helper process: reads pickled calls on stdin, runs each in a forked child, answers on stdout."""

    def __init__(self):
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # so the helper imports this very package
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, "-c", "from echo.corpus.espeak import _helper_main; _helper_main()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.owner = os.getpid()
        atexit.register(self.close)

    def close(self) -> None:
        if self.owner == os.getpid() and self.proc.poll() is None:
            self.proc.stdin.close()  # the helper exits at end of input
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()

    def call(self, request: bytes) -> bytes:
        try:
            _write_message(self.proc.stdin, request)
            answer = _read_message(self.proc.stdout)
        except (BrokenPipeError, OSError):
            answer = None
        if answer is None:
            raise EchoError(f"espeak helper process exited unexpectedly (code {self.proc.poll()})")
        return answer


_helper: _ForkHelper | None = None


def _helper_main() -> None:
    """Entry point of the helper process (see :class:`_ForkHelper`)."""
    requests, answers = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything the library prints must not corrupt the answer stream
    while (request := _read_message(requests)) is not None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into the helper's loop
            code = 0
            try:
                os.close(r)
                try:
                    name, args = pickle.loads(request)
                    payload = pickle.dumps((True, globals()[name](*args)), protocol=pickle.HIGHEST_PROTOCOL)
                except BaseException as e:  # noqa: BLE001 - every failure must reach the caller
                    code = 1
                    err = e if isinstance(e, EchoError) else EchoError(f"espeak child: {e!r}")
                    payload = pickle.dumps((False, err))
                with os.fdopen(w, "wb") as fh:
                    _write_message(fh, payload)
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as fh:
            payload = _read_message(fh)
        _, status = os.waitpid(pid, 0)
        if payload is None:
            payload = pickle.dumps((False, EchoError(f"espeak child process died without a result (wait status {status})")))
        _write_message(answers, payload)


def phone_segments(events: tuple[tuple[int, str], ...] | list[tuple[int, str]], num_samples: int,
                   scale: float = 1.0, offset: int = 0, total: int | None = None) -> list[tuple[str, int, int]]:
    """Turn phone-start events into contiguous ``(phone, start, end)`` segments.

    Each phone lasts until the next event; audio before the first event and pauses (empty names)
    are :data:`SILENCE`; adjacent silences merge; segments that vanish after rescaling are dropped.
    Positions are mapped as ``round(sample * scale) + offset``, which carries them through a
    resampling (``scale = new_rate / old_rate``) and a leading pad (``offset``).

    Args:
        events: ``(sample, phone)`` pairs from :class:`Synthesis`.
        num_samples: length of the synthesised audio the events refer to (before mapping).
        scale: factor mapping event samples to output samples.
        offset: samples added after scaling (leading padding).
        total: length of the output signal; the last segment (silence if there is trailing
            padding) ends there. Defaults to ``round(num_samples * scale) + offset``.

    Returns:
        Segments tiling ``[0, total)`` without gaps.

    Raises:
        EchoError: events out of order or beyond the audio, a phone symbol containing whitespace.
    """
    from echo.corpus.manifest import SILENCE  # here, not at the top: the helper process stays pandas-free

    end_mapped = round(num_samples * scale) + offset
    total = end_mapped if total is None else total
    if total < end_mapped - 1:  # one sample of slack for the resampler's length rounding
        raise EchoError(f"alignment: output has {total} samples, fewer than the {end_mapped} the audio maps to")
    marks: list[tuple[int, str]] = [(0, SILENCE)]
    if offset > 0:
        marks.append((offset, SILENCE))
    prev = -1
    for sample, phone in events:
        if sample < prev or sample > num_samples:
            raise EchoError(f"alignment: phone event at sample {sample} out of order or beyond {num_samples} samples")
        prev = sample
        if phone and any(c.isspace() for c in phone):
            raise EchoError(f"alignment: phone symbol {phone!r} contains whitespace")
        marks.append((min(round(sample * scale) + offset, total), phone or SILENCE))
    if end_mapped < total:
        marks.append((end_mapped, SILENCE))
    segs: list[tuple[str, int, int]] = []
    for i, (start, phone) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else total
        if end <= start:
            continue
        if segs and segs[-1][0] == SILENCE and phone == SILENCE:
            segs[-1] = (SILENCE, segs[-1][1], end)
        else:
            segs.append((phone, start, end))
    return segs
