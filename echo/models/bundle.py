"""The deployable Echo model: one encoder, its light heads, the phone inventory and the front-end.

A bundle is a directory::

    bundle.json   format, version, stage, front-end settings, phone inventory, components, provenance
    encoder.pt    the shared ViT encoder (input normalisation included; readable by Encoder.load)
    speaker.pt    SpeakerHead            (from stage 1, "speaker")
    arcface.pt    ArcFace class centres  (training only: later stages replay the ArcFace loss)
    ctc.pt        continuous CTC head    (from stage 2, "phonetic")
    vq_ctc.pt     VQ bottleneck + CTC    (from stage 2)
    router.pt     SourceRouter           (from stage 3, "routing")
    segmentation.pt SegmentationHead     (from stage 4, "segmentation": local speakers with overlap)
    separator.pt  SpeakerSeparator     (from stage 5, "separation": each speaker as a waveform)

Each specialisation stage writes the bundle of its state, so every stage (after pretraining,
+speaker, +phonetic, +routing; continuous vs VQ transcription) can be evaluated the same way.
Saving is deterministic: the same weights give the same bytes (``save -> load -> save`` is
byte-identical), which is what DVC needs to see an unchanged output as unchanged.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from echo.errors import CacheMismatchError, EchoError
from echo.features import FrontEnd
from echo.heads.arcface import ArcFaceLoss
from echo.heads.ctc import CTCHead, PhoneInventory, ctc_greedy_decode
from echo.heads.router import SourceRouter
from echo.heads.segmentation import SegmentationHead
from echo.heads.separator import SpeakerSeparator
from echo.heads.speaker import SpeakerHead
from echo.io import atomic_dir, read_json, write_json
from echo.models.vit import Encoder, EncoderOutput

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "STAGES", "HEADS", "BUNDLE_FILE", "ENCODER_FILE", "component_file",
           "EchoModel", "Transcript", "Routing"]

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "echo.bundle"
# Bump when the layout or the meaning of a component changes: old bundles then fail loudly.
BUNDLE_VERSION = 1
STAGES = ("pretrain", "speaker", "phonetic", "routing", "segmentation", "separation")
# the bundle's heads, each in its own checkpoint file (its class saves and loads itself)
HEADS = {"speaker": SpeakerHead, "arcface": ArcFaceLoss, "ctc": CTCHead, "vq_ctc": CTCHead,
         "router": SourceRouter, "segmentation": SegmentationHead, "separator": SpeakerSeparator}
# the bundle directory's file names (the one place they are spelled)
BUNDLE_FILE = "bundle.json"
ENCODER_FILE = "encoder.pt"


def component_file(name: str) -> str:
    """The file of a bundle component (``"encoder"`` or one of :data:`HEADS`)."""
    return ENCODER_FILE if name == "encoder" else f"{name}.pt"



class Transcript(NamedTuple):
    """Greedy CTC transcription of one sequence: phone symbols and their times (seconds), and the
    words of a :class:`~echo.lexicon.WordDecoder` when one was given."""

    phones: list[str]
    ids: list[int]
    start_s: list[float]
    end_s: list[float]
    words: list | tuple = ()  # echo.lexicon.Word items; empty without a word decoder


class Routing(NamedTuple):
    """Router output: ``slots`` ``(B, k_max, T, D)``, ``exist_prob`` ``(B, k_max)``, ``active``
    ``(B, k_max)`` bool (probability >= threshold) and ``count`` ``(B,)`` = estimated speakers."""

    slots: torch.Tensor
    exist_prob: torch.Tensor
    active: torch.Tensor
    count: torch.Tensor


class EchoModel(nn.Module):
    """One shared encoder plus whichever light heads the stages so far have trained.

    Args:
        encoder: the shared encoder.
        frontend: the log-mel front-end the encoder was trained on.
        stage: the last stage that shaped this model (one of :data:`STAGES`).
        speaker, arcface, ctc, vq_ctc, router, segmentation, separator: heads (None where not trained yet).
        meta: JSON-serialisable provenance (per-stage configs, selected step, dev metrics).
    """

    def __init__(self, encoder: Encoder, frontend: FrontEnd = FrontEnd(), stage: str = "pretrain", *,
                 speaker: SpeakerHead | None = None, arcface: ArcFaceLoss | None = None,
                 ctc: CTCHead | None = None, vq_ctc: CTCHead | None = None,
                 router: SourceRouter | None = None, segmentation: SegmentationHead | None = None,
                 separator: SpeakerSeparator | None = None, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        if stage not in STAGES:
            raise EchoError(f"bundle stage: expected one of {STAGES}, got {stage!r}")
        if vq_ctc is not None and vq_ctc.vq is None:
            raise EchoError("bundle vq_ctc: expected a CTC head built with a VQConfig")
        if ctc is not None and vq_ctc is not None and ctc.inventory != vq_ctc.inventory:
            raise EchoError("bundle: the continuous and VQ CTC heads have different phone inventories")
        self.encoder = encoder
        self.frontend = frontend
        self.stage = stage
        self.meta = dict(meta or {})
        for name, mod in (("speaker", speaker), ("arcface", arcface), ("ctc", ctc), ("vq_ctc", vq_ctc),
                          ("router", router), ("segmentation", segmentation), ("separator", separator)):
            self.add_module(name, mod)

    # -- properties ----------------------------------------------------------------------------
    @property
    def inventory(self) -> PhoneInventory | None:
        """The phone vocabulary of the CTC heads (None before the phonetic stage)."""
        head = self.ctc if self.ctc is not None else self.vq_ctc
        return head.inventory if head is not None else None

    @property
    def components(self) -> list[str]:
        return ["encoder"] + [h for h in HEADS if getattr(self, h) is not None]

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def latents(self, mels: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """Shared latents of raw log-mel frames ``(B, T, n_mels)`` (or ``(T, n_mels)``) at 100 frames/s.

        Returns:
            :class:`~echo.models.vit.EncoderOutput` (``features (B, N, D)``, ``mask (B, N)``), 40 ms per token.
        """
        dev = next(self.encoder.parameters()).device
        return self.encoder(mels.to(dev), None if lengths is None else lengths.to(dev))

    def _need(self, name: str) -> nn.Module:
        mod = getattr(self, name)
        if mod is None:
            raise EchoError(f"bundle ({self.stage}): has no {name} head; expected a bundle from a later stage")
        return mod

    @torch.no_grad()
    def embed_speaker(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, emb_dim)`` unit speaker embeddings of latent sequences ``(B, T, D)``."""
        return self._need("speaker")(latents, mask)

    @torch.no_grad()
    def transcribe(self, latents: torch.Tensor, mask: torch.Tensor | None = None, vq: bool = False,
                   words=None) -> list[Transcript]:
        """Greedy CTC transcription with token times, and words from the same posteriors.

        Args:
            latents: ``(B, T, D)``.
            mask: bool ``(B, T)`` (padding at the end), or None.
            vq: decode through the VQ bottleneck head instead of the continuous one.
            words: an :class:`echo.lexicon.WordDecoder` built on this head's inventory, or None.

        Returns:
            One :class:`Transcript` per sequence.
        """
        head: CTCHead = self._need("vq_ctc" if vq else "ctc")
        out = head(latents, mask)
        hyps = ctc_greedy_decode(out.log_probs, out.lengths, head.output_frame_shift)
        return [Transcript(head.inventory.decode(h.ids), h.ids, h.start_s, h.end_s,
                           words.decode(lp[:n], head.output_frame_shift) if words is not None else ())
                for h, lp, n in zip(hyps, out.log_probs, out.lengths.tolist())]

    @torch.no_grad()
    def route(self, latents: torch.Tensor, mask: torch.Tensor | None = None, threshold: float = 0.5) -> Routing:
        """Split mixture latents ``(B, T, D)`` into ``k_max`` slots with existence probabilities."""
        out = self._need("router")(latents, mask)
        prob = torch.sigmoid(out.exist_logits)
        active = prob >= threshold
        return Routing(out.slots, prob, active, active.sum(dim=1))

    @torch.no_grad()
    def separate(self, mixture: torch.Tensor, identities: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Separate mixture waveforms ``(B, samples)`` (at the front-end's rate, a few seconds each)
        into the speakers whose identities are given.

        Args:
            mixture: ``(B, samples)``.
            identities: ``(B, S, E)`` speaker embeddings (the speaker head's, e.g. a diarization's).
            active: bool ``(B, S)``, the speakers to render (>= 1 per row).

        Returns:
            ``(B, S, samples)``, zero for speakers not rendered, summing to the mixture.
        """
        sep = self._need("separator")
        dev = next(self.encoder.parameters()).device
        mels = torch.stack([torch.from_numpy(self.frontend.compute(m)) for m in mixture.float().cpu().numpy()])
        out = self.latents(mels)
        return sep(mixture.to(dev).float(), identities.to(dev).float(), out.features, active.to(dev))

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the bundle directory atomically (replacing an existing one).

        Returns:
            ``path`` as a Path.
        """
        path = Path(path)
        inventory = self.inventory
        with atomic_dir(path) as tmp:
            self.encoder.save(tmp / ENCODER_FILE)
            for name in HEADS:
                mod = getattr(self, name)
                if mod is not None:
                    mod.save(tmp / component_file(name))
            write_json(tmp / BUNDLE_FILE, {
                "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "stage": self.stage,
                "frontend": self.frontend.to_dict(), "components": self.components,
                "phones": list(inventory.phones) if inventory is not None else None,
                "meta": self.meta,
            })
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "EchoModel":
        """Read a bundle written by :meth:`save` (in eval mode).

        Raises:
            EchoError: the directory or a component file is missing.
            CacheMismatchError: not a bundle, or a bundle of another format version.
        """
        path = Path(path)
        meta_path = path / BUNDLE_FILE
        if not meta_path.is_file():
            raise EchoError(f"{path}: not an Echo model bundle (no {BUNDLE_FILE})")
        try:
            info = read_json(meta_path)
        except ValueError:
            raise CacheMismatchError(f"{meta_path}: unreadable bundle description (not JSON)") from None
        if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
            raise CacheMismatchError(f"{meta_path}: not an Echo model bundle (expected format {BUNDLE_FORMAT!r})")
        if info.get("version") != BUNDLE_VERSION:
            raise CacheMismatchError(f"{path}: bundle format version {info.get('version')!r}, this code reads "
                                     f"version {BUNDLE_VERSION}; re-run the stage that wrote it")
        try:
            frontend = FrontEnd(**info["frontend"])
        except TypeError:
            raise CacheMismatchError(f"{meta_path}: front-end settings written by another version") from None
        comps = list(info.get("components", []))
        unknown = [c for c in comps if c != "encoder" and c not in HEADS]
        if unknown:
            raise CacheMismatchError(f"{meta_path}: unknown component {unknown[0]!r}; written by another version")
        heads = {name: head.load(path / component_file(name)) for name, head in HEADS.items() if name in comps}
        model = cls(Encoder.load(path / ENCODER_FILE), frontend, info["stage"], meta=info.get("meta") or {}, **heads)
        if info.get("phones") is not None and model.inventory is not None \
                and list(model.inventory.phones) != list(info["phones"]):
            raise CacheMismatchError(f"{meta_path}: phone inventory differs from the CTC heads'")
        return model.to(map_location).eval()
