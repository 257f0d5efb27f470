"""Light heads on the shared 512-d encoder latent, and the losses that specialise it stage by stage.

Every head reads the encoder's output: latents ``(B, T, D)`` (float, 25 tokens/s, 40 ms each) and a
boolean padding mask ``(B, T)`` (True = valid frame).

- :mod:`echo.heads.pooling`: attentive statistics pooling (masked).
- :mod:`echo.heads.arcface`: additive angular margin softmax (ArcFace).
- :mod:`echo.heads.speaker`: :class:`~echo.heads.speaker.SpeakerHead`, L2-normalised embeddings.
- :mod:`echo.heads.vq`: vector-quantisation bottleneck on frame latents.
- :mod:`echo.heads.ctc`: CTC phoneme head (continuous or through the VQ bottleneck), greedy decode.
- :mod:`echo.heads.router`: null-target K-set prediction (slots + existence logits).
- :mod:`echo.heads.pit`: Hungarian permutation-invariant matching and the K-set loss.
- :mod:`echo.heads.separator`: each speaker of a mixture as a waveform from its identity (STFT masks, softmax over speakers).
- :mod:`echo.heads.guard`: non-interference guards (freezing, latent distillation, L2-SP anchor).

This package module only holds the checkpoint format shared by the heads (:class:`Checkpointed`,
the one save/load of every head, and :func:`read_torch`, the one reader of Echo's weight files);
submodules are not imported here so that ``import echo.heads.pit`` does not pull in every head.
"""
from __future__ import annotations

import dataclasses
import io
import os
import pickle
import re
import warnings
import zipfile
from typing import Any

import torch

from echo.errors import CacheMismatchError, ConfigError, EchoError
from echo.io import atomic_path

__all__ = ["CHECKPOINT_VERSION", "Checkpointed", "save_checkpoint", "load_checkpoint", "write_torch", "read_torch",
           "config_from_dict"]

CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, kind: str, config: Any, state_dict: dict[str, torch.Tensor],
                    extra: dict[str, Any] | None = None) -> None:
    """Write a head checkpoint atomically: ``{kind, version, config, extra, state_dict}``.

    Only plain Python values and tensors are stored, so :func:`load_checkpoint` can use
    ``torch.load(weights_only=True)`` (no pickled code is executed on load).

    Args:
        path: destination file (conventionally ``*.pt``).
        kind: the head's name, checked on load (e.g. ``"speaker"``).
        config: a dataclass instance (stored as a dict) or a dict of dataclass dicts.
        state_dict: the module's ``state_dict()``; tensors are moved to CPU.
        extra: other plain values the head needs to rebuild itself (e.g. the phone inventory).
    """
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    payload = {
        "kind": kind,
        "version": CHECKPOINT_VERSION,
        "config": cfg,
        "extra": extra or {},
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
    }
    write_torch(path, payload)


def write_torch(path: str | os.PathLike, payload: Any) -> None:
    """``torch.save(payload)`` to ``path`` atomically, the same bytes for the same payload.

    The one writer of Echo's weight files (:func:`read_torch` reads them back). Serialised to
    memory first: torch.save into a named file embeds that (random temporary) name in the zip
    archive, and identical weights must give identical bytes (DVC sees an unchanged output).
    """
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def load_checkpoint(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` and check its kind and version.

    Raises:
        EchoError: the file is missing.
        CacheMismatchError: the file is damaged or not a torch checkpoint (one line naming the file,
            see :func:`read_torch`), holds another head or an unknown format version.
    """
    if not os.path.exists(path):
        raise EchoError(f"{path}: head checkpoint not found")
    payload = read_torch(path, f"Echo {kind} head")
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        got = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise CacheMismatchError(f"{path}: expected a '{kind}' head checkpoint, got {got!r}")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CacheMismatchError(
            f"{path}: checkpoint version {payload.get('version')!r}, expected {CHECKPOINT_VERSION}")
    return payload


def read_torch(path: str | os.PathLike, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one error for every way the file can be damaged.

    The one reader of Echo's weight files (the heads here, the encoder in
    :meth:`echo.models.vit.Encoder.load`). Only tensors and plain values are accepted, so no pickled
    code runs; torch's warnings and its advice to retry with ``weights_only=False`` never reach the user.

    Args:
        path: the file (check that it exists first: a missing file has its own message).
        what: what the file should hold, for the message (e.g. ``"Echo speaker head"``).
        map_location: passed to ``torch.load``.

    Raises:
        CacheMismatchError: one line ``<path>: not a readable <what> (<short reason>)``.
    """
    head = b""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4 in the checkpoint"
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises assorted types for foreign, truncated or hostile files
        if isinstance(e, OSError) and e.strerror:
            reason = e.strerror.lower()
        elif not head:
            reason = "empty file"
        elif head != b"PK\x03\x04":  # torch.save writes a zip archive
            reason = "a plain pickle, not a torch checkpoint" if head[:1] == b"\x80" else "not a torch checkpoint"
        elif isinstance(e, pickle.UnpicklingError):
            m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
            reason = f"holds a pickled Python object{f' {m.group(1)}' if m else ''}, refused"
        elif isinstance(e, (RuntimeError, EOFError, zipfile.BadZipFile)):
            reason = "truncated or corrupt archive"
        else:
            reason = type(e).__name__
        raise CacheMismatchError(f"{path}: not a readable {what} ({reason})") from None


class Checkpointed:
    """Save/load for a head (an ``nn.Module`` with a frozen config dataclass in ``self.config``).

    A head sets ``kind`` (the checkpoint's name, checked on load) and ``config_class``; one that
    needs more than its config to be rebuilt (the phone inventory, sizes) overrides
    :meth:`checkpoint_config`, :meth:`checkpoint_extra` and :meth:`from_checkpoint` together.
    ``load(save(x))`` gives the same state and outputs (tests/heads/test_serialization.py).
    """

    kind: str
    config_class: type

    def checkpoint_config(self) -> Any:
        """What is stored as the checkpoint's ``config`` (a dataclass or a dict of plain values)."""
        return self.config

    def checkpoint_extra(self) -> dict[str, Any]:
        """Other plain values the head needs to be rebuilt."""
        return {}

    @classmethod
    def from_checkpoint(cls, config: Any, extra: dict[str, Any]) -> Any:
        """A new, untrained head from a checkpoint's ``config`` and ``extra``."""
        return cls(config_from_dict(cls.config_class, config, cls.kind))

    def save(self, path: str | os.PathLike) -> None:
        """Write config, extra values and weights (see :func:`save_checkpoint`)."""
        save_checkpoint(path, self.kind, self.checkpoint_config(), self.state_dict(), self.checkpoint_extra())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Any:
        """Rebuild a head written by :meth:`save` (on CPU, in eval mode).

        Raises:
            EchoError / CacheMismatchError: see :func:`load_checkpoint`; CacheMismatchError also when
                the weights do not fit the head (written by a version with another architecture).
        """
        ck = load_checkpoint(path, cls.kind)
        head = cls.from_checkpoint(ck["config"], ck["extra"])
        try:
            missing, unexpected = head.load_state_dict(ck["state_dict"], strict=False)
        except RuntimeError:  # a tensor of another shape
            missing, unexpected = ["(tensor shapes)"], []
        if missing or unexpected:
            raise CacheMismatchError(
                f"{path}: {cls.kind} weights do not fit this version's {cls.__name__} (missing: "
                f"{', '.join(missing[:3]) or 'none'}; unexpected: {', '.join(unexpected[:3]) or 'none'}); "
                "written by another version of Echo, train it again") from None
        return head.eval()


def config_from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Rebuild a frozen config dataclass from a dict, converting lists back to tuples.

    Raises:
        ConfigError: unknown keys (names the first one).
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key, expected one of {sorted(fields)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
