"""Tiny real components and constructed data shared by the evaluation tests."""
from __future__ import annotations

import torch

from echo.evaluate import ModelParts
from echo.heads.ctc import CTCConfig, CTCHead, PhoneInventory
from echo.heads.router import RouterConfig, SourceRouter
from echo.heads.speaker import SpeakerConfig, SpeakerHead
from echo.models.vit import Encoder, EncoderConfig

D = 32


def tiny_parts(seed: int = 0, n_mels: int = 80, router: bool = True, ctc: bool = True, phones=("a", "b", "c")) -> ModelParts:
    torch.manual_seed(seed)
    enc = Encoder(EncoderConfig(n_mels=n_mels, dim=D, depth=1, heads=2, mlp_dim=64))
    spk = SpeakerHead(SpeakerConfig(d_model=D, emb_dim=16, attention_dim=8))
    head = CTCHead(CTCConfig(d_model=D, hidden_dim=16), PhoneInventory(tuple(phones))) if ctc else None
    rt = SourceRouter(RouterConfig(d_model=D, k_max=3, width=16, num_layers=1, num_heads=2)) if router else None
    return ModelParts(enc, spk, head, None, rt).eval()
