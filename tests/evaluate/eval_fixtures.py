"""Tiny real components and constructed data shared by the evaluation tests."""
from __future__ import annotations

import numpy as np
import torch
from pyannote.core import Annotation, Segment, Timeline

from echo.evaluate import ModelParts
from echo.heads.ctc import CTCConfig, CTCHead, PhoneInventory
from echo.heads.router import RouterConfig, SourceRouter
from echo.heads.speaker import SpeakerConfig, SpeakerHead
from echo.models.vit import Encoder, EncoderConfig

D = 32
TOKEN_S = 0.04


def tiny_parts(seed: int = 0, n_mels: int = 80, router: bool = True, ctc: bool = True, phones=("a", "b", "c")) -> ModelParts:
    torch.manual_seed(seed)
    enc = Encoder(EncoderConfig(n_mels=n_mels, dim=D, depth=1, heads=2, mlp_dim=64))
    spk = SpeakerHead(SpeakerConfig(d_model=D, emb_dim=16, attention_dim=8))
    head = CTCHead(CTCConfig(d_model=D, hidden_dim=16), PhoneInventory(tuple(phones))) if ctc else None
    rt = SourceRouter(RouterConfig(d_model=D, k_max=3, width=16, num_layers=1, num_heads=2)) if router else None
    return ModelParts(enc, spk, head, None, rt).eval()


def speaker_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, D))
    return 3.0 * v / np.linalg.norm(v, axis=1, keepdims=True) * np.sqrt(D) / 3


def training_latents(n_speakers: int = 10, n_utts: int = 4, seconds: float = 5.0, seed: int = 1):
    rng = np.random.default_rng(seed)
    vecs = speaker_vectors(n_speakers, seed + 100)
    lats, spks = [], []
    n = int(seconds / TOKEN_S)
    for s in range(n_speakers):
        for _ in range(n_utts):
            lats.append((vecs[s] + 0.5 * rng.standard_normal((n, D))).astype(np.float32))
            spks.append(f"train{s}")
    return lats, spks


def conversation_latents(turns, seed: int = 2):
    """turns: list of (speaker index or None for silence, seconds). Returns latents, speech, reference."""
    rng = np.random.default_rng(seed)
    vecs = speaker_vectors(5, seed + 200)
    parts, speech = [], []
    ref = Annotation(uri="conv")
    t = 0
    for spk, sec in turns:
        n = int(round(sec / TOKEN_S))
        if spk is None:
            parts.append(0.5 * rng.standard_normal((n, D)))
            speech.append(np.zeros(n, bool))
        else:
            parts.append(vecs[spk] + 0.5 * rng.standard_normal((n, D)))
            speech.append(np.ones(n, bool))
            ref[Segment(t * TOKEN_S, (t + n) * TOKEN_S)] = f"S{spk}"
        t += n
    lat = np.concatenate(parts).astype(np.float32)
    return lat, np.concatenate(speech), ref, Timeline([Segment(0, t * TOKEN_S)])
