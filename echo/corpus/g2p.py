"""Grapheme-to-phoneme conversion with espeak-ng, so PER can be measured on transcribed corpora.

Output is IPA, one space between phones, stress marks removed, word boundaries dropped:
``"hello world" -> "h ə l oʊ w ɜː l d"`` (voice ``en-us``). Length marks stay attached (``ɜː``)
and diphthongs/affricates stay one phone (``oʊ``, ``tʃ``), as espeak-ng's own phoneme list has them.

Two backends give the same phones:

- ``library``: libespeak-ng's ``espeak_TextToPhonemes`` through ctypes (about 0.2 ms per
  utterance; LibriSpeech's 281k utterances take about a minute);
- ``cli``: the ``espeak-ng -q -x --ipa --sep=" "`` command, one process per utterance (about 15 ms
  each), used when the shared library cannot be loaded.

There is no maintained Python G2P binding for espeak-ng among our dependencies (``phonemizer``
would be a new one), hence the thin hand-written wrapper.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import shutil
import subprocess
import threading
from typing import Sequence

from echo.errors import EchoError

__all__ = ["BACKENDS", "available_backend", "phonemize", "clean_phones"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "library", "cli", "none")
_STRESS = str.maketrans("", "", "ˈˌ\u200d\u0361")  # primary/secondary stress, joiners, tie bar
_LOCK = threading.Lock()  # libespeak-ng keeps global state (current voice): one caller at a time
_CHARS_UTF8 = 1
_PHONEMES_IPA = 0x02
_SEP_SHIFT = 8  # bits 8-23 of phonememode carry the separator character


def clean_phones(ipa: str) -> str:
    """Normalise espeak-ng's separated IPA: drop stress marks, collapse word gaps to one space."""
    return " ".join(p for p in ipa.translate(_STRESS).split() if p)


@functools.lru_cache(maxsize=1)
def _library():
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
    # AUDIO_OUTPUT_SYNCHRONOUS (2): no audio device is opened; returns the voice rate or -1.
    if lib.espeak_Initialize(2, 0, None, 0) <= 0:
        return None
    return lib


def available_backend(backend: str = "auto") -> str:
    """Resolve ``backend`` to one that works here: ``library``, ``cli`` or ``none``.

    Raises:
        EchoError: an explicitly requested backend is not available.
    """
    if backend not in BACKENDS:
        raise EchoError(f"g2p backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "none":
        return "none"
    if backend in ("auto", "library") and _library() is not None:
        return "library"
    if backend in ("auto", "cli") and shutil.which("espeak-ng"):
        return "cli"
    if backend == "auto":
        return "none"
    raise EchoError(f"g2p backend {backend!r}: espeak-ng not found; install it (apt-get install espeak-ng) "
                    "or set phonemes: auto")


def phonemize(texts: Sequence[str], voice: str = "en-us", backend: str = "auto") -> list[str]:
    """Convert each text to space-separated IPA phones.

    Args:
        texts: orthographic transcripts (case is ignored: upper-case words would be spelled out
            as acronyms by espeak-ng, so texts are lower-cased first).
        voice: espeak-ng voice, e.g. ``en-us`` for LibriSpeech.
        backend: ``auto`` | ``library`` | ``cli`` | ``none`` (``none`` returns empty strings).

    Returns:
        One phone string per text, ``""`` for empty texts or when no backend is available.
    """
    backend = available_backend(backend)
    if backend == "none":
        return ["" for _ in texts]
    if backend == "library":
        return _phonemize_library(texts, voice)
    return [_phonemize_cli(t, voice) for t in texts]


def _phonemize_library(texts: Sequence[str], voice: str) -> list[str]:
    lib = _library()
    mode = _PHONEMES_IPA | (ord(" ") << _SEP_SHIFT)
    out = []
    with _LOCK:
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EchoError(f"g2p voice {voice!r}: not an espeak-ng voice (see `espeak-ng --voices`)")
        for text in texts:
            buf = ctypes.create_string_buffer(text.lower().encode("utf-8"))
            ptr = ctypes.c_void_p(ctypes.addressof(buf))
            clauses = []
            # espeak returns one clause per call and advances ptr; NULL when the text is consumed.
            for _ in range(len(buf.raw) + 1):
                if not ptr.value:
                    break
                res = lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, mode)
                clauses.append(res.decode("utf-8", "replace") if res else "")
            out.append(clean_phones(" ".join(clauses)))
    return out


def _phonemize_cli(text: str, voice: str) -> str:
    if not text.strip():
        return ""
    proc = subprocess.run(["espeak-ng", "-q", "-x", "--ipa", "--sep= ", "-v", voice],
                          input=text.lower(), capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise EchoError(f"espeak-ng -v {voice}: failed ({proc.stderr.strip()[:200] or proc.returncode})")
    return clean_phones(proc.stdout)
