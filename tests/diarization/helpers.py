"""Constructed latents and tiny real components for the diarizer tests.

A constructed recording's token latent carries the active speakers' voice vectors (dims 3..) and,
in dims 0..2, a flag per speaker; :class:`FlagSegmentation` reads those flags as a perfect local
segmentation (powerset logits), so the tests check the clustering, the cannot-link assignment and
the reconstruction with overlap without training a segmentation model.
"""
from __future__ import annotations

import numpy as np
import torch
from pyannote.core import Annotation, Segment, Timeline
from torch import nn

from echo.diarization.plda import PLDA, PLDAConfig
from echo.evaluate import ModelParts
from echo.heads.segmentation import Powerset
from echo.heads.speaker import SpeakerConfig, SpeakerHead
from echo.models.vit import Encoder, EncoderConfig

D = 32
TOKEN_S = 0.04
FLAGS = 3


class FlagSegmentation(nn.Module):
    """Powerset logits from the flags in dims 0..2 (a perfect segmentation of constructed latents)."""

    def __init__(self):
        super().__init__()
        self.powerset = Powerset(FLAGS, 2)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, latents, mask=None):
        cls = self.powerset.to_powerset((latents[..., :FLAGS] > 0.5).long())
        return 20.0 * nn.functional.one_hot(cls.clamp_min(0), self.powerset.num_classes).float()


def speaker_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, D - FLAGS))
    return 3.0 * v / np.linalg.norm(v, axis=1, keepdims=True)


def parts(seed: int = 0) -> ModelParts:
    torch.manual_seed(seed)
    enc = Encoder(EncoderConfig(n_mels=80, dim=D, depth=1, heads=2, mlp_dim=64))
    spk = SpeakerHead(SpeakerConfig(d_model=D, emb_dim=16, attention_dim=8))
    return ModelParts(enc, spk, segmentation=FlagSegmentation()).eval()


def latents(active: np.ndarray, vecs: np.ndarray, seed: int = 0, flags: bool = True) -> np.ndarray:
    """``(N, K)`` 0/1 activity -> ``(N, D)`` latents (flags for speaker j go to dim j % 3)."""
    rng = np.random.default_rng(seed)
    n, k = active.shape
    x = np.zeros((n, D), np.float32)
    for j in range(k):
        x[:, FLAGS:] += active[:, j:j + 1] * vecs[j]
        if flags:
            x[:, j % FLAGS] = np.maximum(x[:, j % FLAGS], active[:, j])
    x[:, FLAGS:] += 0.3 * rng.standard_normal((n, D - FLAGS))
    return x


def fit_plda(p: ModelParts, n_speakers: int = 30, seed: int = 1) -> PLDA:
    """PLDA fitted on the speaker head's embeddings of constructed training speakers."""
    vecs = speaker_vectors(n_speakers, seed + 100)
    xs, labels = [], []
    for s in range(n_speakers):
        for u in range(4):
            act = np.ones((60, 1), np.float32)
            lat = latents(act, vecs[s:s + 1], seed=seed * 1000 + s * 10 + u, flags=False)
            with torch.no_grad():
                xs.append(p.speaker(torch.from_numpy(lat)[None], torch.ones(1, 60, dtype=torch.bool)).numpy())
            labels.append(f"train{s}")
    return PLDA.fit(np.concatenate(xs), np.array(labels), PLDAConfig(lda_dim=12))


def conversation(turns, vecs, seed: int = 2):
    """turns: (speaker indices tuple, seconds). Returns (N, K) activity, reference, uem."""
    k = vecs.shape[0]
    rows, ref, t = [], Annotation(uri="conv"), 0
    for spks, sec in turns:
        n = int(round(sec / TOKEN_S))
        a = np.zeros((n, k), np.float32)
        for s in spks:
            a[:, s] = 1.0
            ref[Segment(round(t * TOKEN_S, 3), round((t + n) * TOKEN_S, 3)), f"{s}_{t}"] = f"S{s}"
        rows.append(a)
        t += n
    return np.concatenate(rows), ref, Timeline([Segment(0, round(t * TOKEN_S, 3))])
