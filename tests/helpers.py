"""Builders shared by the top-level tests: bad input paths (audio decoding, streaming inference), a
tiny random-weight model folder with every head (the CLI, the separator) and a two-voice signal."""
from __future__ import annotations

from pathlib import Path

import numpy as np

D, E = 32, 16  # the tiny model's latent and speaker-embedding widths


def write_bad_input(path: Path, case: str) -> Path:
    """Make ``path`` a bad audio input: ``missing`` (nothing there), ``empty`` (0 bytes), ``directory``
    or ``text`` (a text file with an audio name); return it."""
    if case == "empty":
        path.write_bytes(b"")
    elif case == "directory":
        path.mkdir()
    elif case == "text":
        path.write_text("this is not audio\n" * 10)
    elif case != "missing":
        raise ValueError(f"unknown bad-input case {case!r}")
    return path


def tiny_diarizer(phones=("a", "b", "c")):
    """A random-weight model with every head the CLI uses (segmentation for diarize, the separator
    for separate) and a PLDA fitted on random embeddings, as a
    :class:`~echo.diarization.diarizer.Diarizer`."""
    import torch

    from echo.diarization.diarizer import Diarizer, DiarizerConfig
    from echo.diarization.plda import PLDA, PLDAConfig
    from echo.heads.ctc import CTCConfig, CTCHead, PhoneInventory
    from echo.heads.router import RouterConfig, SourceRouter
    from echo.heads.segmentation import SegmentationConfig, SegmentationHead
    from echo.heads.separator import SeparatorConfig, SpeakerSeparator
    from echo.heads.speaker import SpeakerConfig, SpeakerHead
    from echo.models.bundle import EchoModel
    from echo.models.vit import Encoder, EncoderConfig

    torch.manual_seed(0)
    model = EchoModel(
        Encoder(EncoderConfig(dim=D, depth=1, heads=2, mlp_dim=64)), stage="separation",
        speaker=SpeakerHead(SpeakerConfig(d_model=D, emb_dim=E, attention_dim=8)),
        ctc=CTCHead(CTCConfig(d_model=D, hidden_dim=16, num_layers=0), PhoneInventory(tuple(phones))),
        router=SourceRouter(RouterConfig(d_model=D, k_max=3, width=16, num_layers=1, num_heads=2)),
        segmentation=SegmentationHead(SegmentationConfig(d_model=D, width=16, num_layers=1)),
        separator=SpeakerSeparator(SeparatorConfig(d_model=D, identity_dim=E, width=16, hidden=16, num_blocks=2, slot_attention_every=1,
                                                num_heads=2)))
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, E))
    x = np.repeat(centres, 12, 0) + 0.3 * rng.normal(size=(96, E))
    plda = PLDA.fit(x, np.repeat(np.arange(8), 12), PLDAConfig(lda_dim=6))
    return Diarizer(model.eval(), plda, DiarizerConfig(segment_s=2.0, segment_step_s=1.0))


def talk(seconds: float = 6.0, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Two 'voices' (a tone and a noise burst) taking turns, with pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    phase = (t % 3.0)
    x = np.where(phase < 1.2, 0.3 * np.sin(2 * np.pi * 180 * t), 0.0)
    x = np.where((phase >= 1.5) & (phase < 2.7), 0.2 * rng.standard_normal(t.size), x)
    return (x + 1e-3 * rng.standard_normal(t.size)).astype(np.float32)
