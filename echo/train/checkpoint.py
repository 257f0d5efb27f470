"""Training-state checkpoints: written atomically, read back only into the run that made them.

A checkpoint holds everything a killed run needs to continue on the same trajectory: the step,
the modules' and the optimizer's state and what the trainer adds (schedules' positions, the
logged curves so far; see :func:`echo.train.trainer.save_state`). Data order, masks and dropout
are functions of the step, so no RNG state needs saving.

The run's *fingerprint* (the configs that shape the trajectory, the world size, the data's
shape) is stored too; resuming under a different fingerprint is refused instead of silently
mixing two runs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from echo.errors import CacheMismatchError, EchoError
from echo.heads import read_torch
from echo.io import atomic_path

__all__ = ["TRAIN_STATE_FORMAT", "TRAIN_STATE_VERSION", "save_train_state", "load_train_state"]

TRAIN_STATE_FORMAT = "echo.pretrain-state"
TRAIN_STATE_VERSION = 2  # 2: every trainer stores its modules under "modules"


def save_train_state(path: str | Path, state: dict[str, Any], fingerprint: dict) -> Path:
    """Write ``state`` (tensors, dicts, lists, numbers, strings only) with the run's fingerprint.

    Args:
        path: destination (replaced atomically).
        state: training state; must be loadable with ``weights_only=True``.
        fingerprint: JSON-serialisable description of the run (compared on load).
    """
    payload = {"format": TRAIN_STATE_FORMAT, "version": TRAIN_STATE_VERSION,
               "fingerprint": json.dumps(fingerprint, sort_keys=True), **state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_train_state(path: str | Path, fingerprint: dict, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_train_state` for the same run.

    Raises:
        EchoError: no file at ``path``.
        CacheMismatchError: one line naming the file: damaged, truncated or hostile (read by
            :func:`echo.heads.read_torch`, so no pickled code runs), wrong format/version, or the
            checkpoint belongs to a run with other settings (the message names the first differing key).
    """
    path = Path(path)
    if not path.is_file():
        raise EchoError(f"{path}: training checkpoint not found")
    try:
        payload = read_torch(path, "Echo training checkpoint", map_location)
    except CacheMismatchError as e:
        raise CacheMismatchError(f"{e}; delete it to restart") from None
    if not isinstance(payload, dict) or payload.get("format") != TRAIN_STATE_FORMAT:
        raise CacheMismatchError(f"{path}: not an Echo training checkpoint; delete it to restart")
    if payload.get("version") != TRAIN_STATE_VERSION:
        raise CacheMismatchError(f"{path}: checkpoint version {payload.get('version')}, this code reads "
                                 f"{TRAIN_STATE_VERSION}; delete it to restart")
    have = json.loads(payload["fingerprint"])
    want = json.loads(json.dumps(fingerprint, sort_keys=True))
    if have != want:
        key = _first_difference(have, want)
        raise CacheMismatchError(f"{path}: checkpoint was written by a run with different {key}; "
                                 f"delete it (or the output directory) to start over")
    return payload


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
    return f"{prefix or 'settings'} ({a!r} vs now {b!r})"
