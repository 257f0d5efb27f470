"""The diarization back end: LDA/PLDA fitted on TRAINING speakers' embeddings, taken the way the
:class:`~echo.diarization.diarizer.Diarizer` takes them at test time.

Each training conversation (:mod:`echo.simulate.conversations`, train speakers only: noise, rooms,
overlap) is encoded as the diarizer encodes a recording; it is cut into the diarizer's
segmentation chunks, and every reference speaker with at least ``min_embed_s`` of speech alone in
a chunk gives one speaker-head embedding over those tokens, labelled with the speaker. So the PLDA
models the within-speaker variability of chunk embeddings across rooms, noise and conversations,
which is what the clustering compares.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from echo.config import check_fields, rule
from echo.diarization.diarizer import DiarizerConfig, reference_activity
from echo.diarization.plda import PLDA, PLDAConfig
from echo.errors import EchoError
from echo.inference import encode_long

__all__ = ["BackendConfig", "conversation_latents", "conversation_split", "fit_backend"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendConfig:
    """PLDA training data (params.yaml ``evaluation.backend``).

    Attributes:
        plda: LDA/PLDA settings.
        step_s: hop between the chunks embedded per training conversation (> 0).
        max_per_speaker: at most this many embeddings per speaker (evenly spread; >= 2).
        batch_size: embeddings per speaker-head batch (>= 1).
    """

    plda: PLDAConfig = PLDAConfig()
    step_s: float = field(default=2.5, metadata=rule(gt=0, finite=True))
    max_per_speaker: int = field(default=100, metadata=rule(ge=2))
    batch_size: int = field(default=64, metadata=rule(ge=1))

    def __post_init__(self):
        check_fields(self)


def conversation_latents(encoder, frontend, conversations, diarizer: DiarizerConfig = DiarizerConfig(),
                         hook: Callable | None = None) -> Iterator[tuple[Any, np.ndarray, np.ndarray, list[str]]]:
    """Yield ``(item, (N, D) latents, (N, K) reference activity, labels)`` per conversation,
    encoded exactly as the diarizer encodes a recording (same blocks and context)."""
    token_s = encoder.cfg.patch_frames * frontend.hop_length / frontend.sample_rate
    n = len(conversations)
    for i in range(n):
        it = conversations[i]
        lat = encode_long(encoder, frontend, it.audio, diarizer.chunk_s, diarizer.context_s)
        act, labels = reference_activity(it.annotation, len(lat), token_s)
        if hook is not None:
            hook("encode conversations", completed=i + 1, total=n)
        yield it, lat, act, labels


@torch.inference_mode()
def fit_backend(model: Any, conversations, diarizer: DiarizerConfig = DiarizerConfig(),
                config: BackendConfig = BackendConfig(), hook: Callable | None = None) -> PLDA:
    """Fit LDA/PLDA on chunk embeddings of the speakers of TRAINING conversations.

    Args:
        model: the model bundle (encoder + speaker head).
        conversations: :class:`echo.simulate.conversations.ConversationSet` of the TRAIN split.
        diarizer: the diarizer settings (encoder blocks, chunk length, ``min_embed_s``).
        config: :class:`BackendConfig`.
        hook: progress callback.

    Raises:
        EchoError: test or dev conversations, no speaker head, or too few speakers.
    """
    from echo.evaluate import model_parts

    split = conversation_split(conversations)
    if split not in (None, "train"):
        raise EchoError(f"fit_backend: got {split.upper()} conversations; the back end is fitted on train speakers only")
    parts = model_parts(model)
    if parts.speaker is None:
        raise EchoError("fit_backend: the model has no speaker head")
    frontend = model.frontend
    token_s = parts.encoder.cfg.patch_frames * frontend.hop_length / frontend.sample_rate
    length = max(1, round(diarizer.segment_s / token_s))
    hop = max(1, round(config.step_s / token_s))
    min_tok = max(1, int(math.ceil(diarizer.min_embed_s / token_s - 1e-9)))
    embs: list[np.ndarray] = []
    speakers: list[str] = []
    for _, lat, act, labels in conversation_latents(parts.encoder, frontend, conversations, diarizer, hook):
        alone = act.astype(bool) & (act.sum(1, keepdims=True) == 1)
        picks = [(a, j) for a in range(0, max(1, len(lat) - length + 1), hop) for j in range(len(labels))
                 if alone[a:a + length, j].sum() >= min_tok]
        if not picks:
            continue
        starts = np.array([a for a, _ in picks])
        masks = np.zeros((len(picks), length), bool)  # each speaker's tokens where it talks alone
        for r, (a, j) in enumerate(picks):
            seg = alone[a:a + length, j]
            masks[r, :len(seg)] = seg
        # embedded per conversation: latents are not kept
        embs.append(parts.speaker.embed_windows(lat, starts, length, masks, config.batch_size))
        speakers += [labels[j] for _, j in picks]
    if len(set(speakers)) < 3:
        raise EchoError(f"fit_backend: embeddings of {len(set(speakers))} speakers; expected at least 3")
    spk = np.asarray(speakers)
    keep = []
    for s in np.unique(spk):
        idx = np.flatnonzero(spk == s)
        if len(idx) > config.max_per_speaker:
            idx = idx[np.unique(np.linspace(0, len(idx) - 1, config.max_per_speaker).round().astype(int))]
        keep.extend(idx.tolist())
    keep = np.asarray(sorted(keep))
    x = np.concatenate(embs)[keep]
    log.info("fit_backend: %d chunk embeddings of %d training speakers", len(x), len(np.unique(spk[keep])))
    return PLDA.fit(x, spk[keep], config.plda)


def conversation_split(conversations) -> str | None:
    """The split of a :class:`~echo.simulate.conversations.ConversationSet` (None for a plain list)."""
    table = getattr(conversations, "table", None)
    if table is not None and "split" in table.columns and len(table):
        return str(table["split"].iloc[0])
    return None
