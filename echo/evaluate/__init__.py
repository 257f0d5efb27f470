"""Evaluation of a trained Echo model: what fills ``results/tables.md``.

- :mod:`echo.evaluate.diarize`: the blind :class:`~echo.evaluate.diarize.Diarizer` (chunked
  encoding, speaker-head window embeddings, PLDA + AHC + VBx, speech activity, overlap from the
  router), its back-end fitting, the dev-set grid search and DER/JER/count scoring by K.
- :mod:`echo.evaluate.separation`: routing/separation on test mixtures (count accuracy, PIT
  accuracy, latent and waveform SI-SDR/SI-SDRi by K).
- :mod:`echo.evaluate.abilities`: the per-stage ability probes (speaker k-NN, phone k-NN,
  factorisation gap, PER, EER) measured identically after every stage.
- :mod:`echo.evaluate.figures`, :mod:`echo.evaluate.sections`: PNG figures and markdown tables.

Exact definitions: ``docs/metrics.md``.

This module holds :class:`ModelParts`, the one place that knows how to find the encoder and the
heads inside whatever model object is evaluated (a bare :class:`~echo.models.vit.Encoder` after
pretraining, or the stage bundle with its heads), so every evaluation reads them the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from echo.errors import EchoError

__all__ = ["ModelParts", "model_parts", "encode_batch", "device_of"]

@dataclass
class ModelParts:
    """The pieces of a model that evaluation uses (absent heads are None).

    Attributes:
        encoder: the shared encoder: raw log-mel ``(B, T, n_mels)`` -> ``EncoderOutput``.
        speaker: speaker head ``(latents, mask) -> (B, E)`` unit-norm embeddings, or None.
        ctc: continuous CTC head ``(latents, mask) -> CTCOutput``, or None.
        vq_ctc: CTC head through the VQ bottleneck, or None.
        router: source router ``(latents, mask) -> RouterOutput``, or None.
        segmentation: local speaker segmentation ``(latents, mask) -> powerset logits``, or None.
        separator: speaker separator ``(mixture, identities, mixture latent, active) -> waveforms``, or None.
    """

    encoder: nn.Module
    speaker: nn.Module | None = None
    ctc: nn.Module | None = None
    vq_ctc: nn.Module | None = None
    router: nn.Module | None = None
    segmentation: nn.Module | None = None
    separator: nn.Module | None = None

    @property
    def device(self) -> torch.device:
        return device_of(self.encoder)

    def eval(self) -> "ModelParts":
        for m in (self.encoder, self.speaker, self.ctc, self.vq_ctc, self.router, self.segmentation, self.separator):
            if m is not None:
                m.eval()
        return self


def _find(model: Any, name: str):
    # ModelParts' fields are the bundle's component names, so one getattr finds each part
    m = getattr(model, name, None)
    return m if isinstance(m, nn.Module) else None


def model_parts(model: Any) -> ModelParts:
    """Find the encoder and heads of ``model`` (a bare encoder, a bundle, or a ModelParts).

    A CTC head whose ``vq`` is set counts as the VQ variant when the bundle has no separate
    continuous head under ``ctc``.

    Raises:
        EchoError: no encoder is found.
    """
    if isinstance(model, ModelParts):
        return model.eval()
    from echo.models.vit import Encoder

    if isinstance(model, Encoder):
        return ModelParts(model).eval()
    enc = _find(model, "encoder")
    if enc is None:
        raise EchoError(f"evaluate: {type(model).__name__} has no 'encoder' module; expected an Encoder or a model bundle")
    ctc, vq_ctc = _find(model, "ctc"), _find(model, "vq_ctc")
    if ctc is not None and vq_ctc is None and getattr(ctc, "vq", None) is not None:
        ctc, vq_ctc = None, ctc
    return ModelParts(enc, _find(model, "speaker"), ctc, vq_ctc, _find(model, "router"),
                      _find(model, "segmentation"), _find(model, "separator")).eval()


def device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def encode_batch(encoder: nn.Module, mels: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode a list of raw log-mel arrays ``(T_i, n_mels)`` as one padded batch.

    Returns:
        ``(latents (B, N, D) float32, mask (B, N) bool)`` on the encoder's device.
    """
    dev = device_of(encoder)
    lengths = torch.tensor([len(m) for m in mels], dtype=torch.long)
    x = torch.zeros(len(mels), int(lengths.max()), mels[0].shape[1], dtype=torch.float32)
    for i, m in enumerate(mels):
        x[i, : len(m)] = torch.as_tensor(np.asarray(m, dtype=np.float32))
    out = encoder(x.to(dev), lengths.to(dev))
    return out.features.float(), out.mask
