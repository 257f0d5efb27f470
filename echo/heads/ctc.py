"""CTC phoneme head on the encoder latent, continuous or through the VQ bottleneck.

The head is deliberately small (a linear layer, or one/two hidden layers) so that phone error rate
measures what the shared latent carries, not what the head can compute. With a
:class:`~echo.heads.vq.VQConfig` the latents pass through a :class:`~echo.heads.vq.VectorQuantizer`
first, so PER can be reported both ways (continuous vs through the paper's VQ bottleneck).

Label 0 is the CTC blank; phones are 1..P in the order of the :class:`PhoneInventory`. One output
frame = one encoder token (40 ms), which gives greedy-decode timestamps.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from echo.corpus.manifest import SILENCE
from echo.config import check_fields, rule
from echo.errors import ConfigError, EchoError
from echo.heads import Checkpointed, config_from_dict
from echo.heads.vq import VectorQuantizer, VQConfig, VQOutput
from echo.io import write_text

__all__ = ["BLANK", "PhoneInventory", "CTCConfig", "CTCOutput", "CTCLoss", "CTCHead", "CTCHypothesis",
           "ctc_greedy_decode", "pad_targets"]

BLANK = 0
BLANK_SYMBOL = "<blank>"


@dataclass(frozen=True)
class PhoneInventory:
    """The phone vocabulary; id 0 is the blank, phone ``phones[i]`` has id ``i + 1``.

    Attributes:
        phones: distinct phone symbols, without the blank.
    """

    phones: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.phones:
            raise ConfigError("ctc.phones: expected at least one phone, got none")
        if len(set(self.phones)) != len(self.phones) or BLANK_SYMBOL in self.phones:
            raise ConfigError(f"ctc.phones: expected distinct symbols other than {BLANK_SYMBOL!r}")

    def __len__(self) -> int:
        """Vocabulary size including the blank."""
        return len(self.phones) + 1

    @property
    def symbols(self) -> tuple[str, ...]:
        return (BLANK_SYMBOL,) + self.phones

    @classmethod
    def from_sequences(cls, sequences: Iterable[str], ignore: Sequence[str] = (SILENCE,)) -> "PhoneInventory":
        """Collect the sorted distinct phones of space-separated sequences (e.g. the manifest's
        ``phonemes`` column), leaving out ``ignore`` (silence)."""
        found = {p for s in sequences for p in s.split()} - set(ignore)
        return cls(tuple(sorted(found)))

    def encode(self, sequence: str | Sequence[str], ignore: Sequence[str] = (SILENCE,)) -> list[int]:
        """Phone symbols (a space-separated string or a list) -> ids, dropping ``ignore``.

        Raises:
            EchoError: a symbol is not in the inventory.
        """
        index = {p: i + 1 for i, p in enumerate(self.phones)}
        seq = sequence.split() if isinstance(sequence, str) else sequence
        try:
            return [index[p] for p in seq if p not in ignore]
        except KeyError as e:
            raise EchoError(f"ctc: phone {e.args[0]!r} is not in the inventory of {len(self.phones)} phones") from None

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> phone symbols (blanks dropped)."""
        return [self.phones[i - 1] for i in ids if i != BLANK]

    def write(self, path: str | os.PathLike) -> None:
        """One phone per line (no blank), atomically."""
        write_text(path, "".join(p + "\n" for p in self.phones))

    @classmethod
    def read(cls, path: str | os.PathLike) -> "PhoneInventory":
        if not os.path.exists(path):
            raise EchoError(f"{path}: phone inventory not found")
        with open(path) as fh:
            return cls(tuple(line.strip() for line in fh if line.strip()))


@dataclass(frozen=True)
class CTCConfig:
    """CTC phoneme head.

    Attributes:
        d_model: encoder latent width (>= 1).
        hidden_dim: width of the hidden layers (>= 1; unused when ``num_layers == 0``).
        num_layers: hidden layers before the output projection (0 = linear probe; 0..4).
        dropout: dropout on the head's input and hidden layers (0 <= p < 1).
        frame_shift: seconds per latent frame (> 0), for decode timestamps.
        upsample: output frames per latent frame (1..4). A 40 ms token often holds two short phones
            (one in ten phones of the embedded corpus is under 40 ms) and CTC needs a blank between
            repeated phones, so with 1 output per token such phones are deleted; ``upsample = 2``
            emits two 20 ms outputs per token from the same hidden layer.
    """

    d_model: int = field(default=512, metadata=rule(ge=1))
    hidden_dim: int = field(default=256, metadata=rule(ge=1))
    num_layers: int = field(default=1, metadata=rule(ge=0, le=4))
    dropout: float = field(default=0.1, metadata=rule(ge=0, lt=1))
    frame_shift: float = field(default=0.04, metadata=rule(gt=0))
    upsample: int = field(default=1, metadata=rule(ge=1, le=4))

    def __post_init__(self) -> None:
        check_fields(self)

class CTCOutput(NamedTuple):
    log_probs: torch.Tensor  # (B, T * upsample, V) log-softmax over blank + phones
    lengths: torch.Tensor  # (B,) int64 valid output frames per sequence
    vq: VQOutput | None  # the bottleneck's output when the head runs through VQ


class CTCLoss(NamedTuple):
    total: torch.Tensor  # ctc + vq
    ctc: torch.Tensor
    vq: torch.Tensor  # 0 without a bottleneck
    output: CTCOutput


class CTCHypothesis(NamedTuple):
    ids: list[int]  # phone ids (no blanks, repeats collapsed)
    start_frames: list[int]  # first frame of each emitted phone's run
    end_frames: list[int]  # last frame (inclusive) of that run
    start_s: list[float]  # start_frames * frame_shift
    end_s: list[float]  # (end_frames + 1) * frame_shift


def pad_targets(sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Id lists -> ``(targets (B, L_max) int64 zero-padded, target_lengths (B,))``."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    out = torch.zeros(len(sequences), max(1, int(lengths.max()) if len(sequences) else 1), dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out, lengths


class CTCHead(Checkpointed, nn.Module):
    """Small CTC classifier over latent frames, optionally behind a VQ bottleneck.

    Args:
        config: :class:`CTCConfig`.
        inventory: the phone vocabulary (stored in the checkpoint).
        vq: a :class:`VQConfig` to quantise the latents first (its ``d_model`` must match).
    """

    kind = "ctc"
    config_class = CTCConfig

    def __init__(self, config: CTCConfig, inventory: PhoneInventory, vq: VQConfig | None = None) -> None:
        super().__init__()
        self.config, self.inventory, self.vq_config = config, inventory, vq
        if vq is not None and vq.d_model != config.d_model:
            raise ConfigError(f"ctc.vq.d_model: expected {config.d_model} (ctc.d_model), got {vq.d_model}")
        self.vq = VectorQuantizer(vq) if vq is not None else None
        layers: list[nn.Module] = [nn.Dropout(config.dropout)]
        width = config.d_model
        for _ in range(config.num_layers):
            layers += [nn.Linear(width, config.hidden_dim), nn.GELU(), nn.Dropout(config.dropout)]
            width = config.hidden_dim
        layers.append(nn.Linear(width, len(inventory) * config.upsample))
        self.classifier = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> CTCOutput:
        """Frame log-probabilities.

        Args:
            latents: ``(B, T, d_model)``.
            mask: bool ``(B, T)``, True = valid; padding must be at the end of each row.

        Returns:
            :class:`CTCOutput`, ``upsample`` output frames per latent frame.
        """
        b, t, _ = latents.shape
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=latents.device)
        vq_out = None
        if self.vq is not None:
            vq_out = self.vq(latents, mask)
            latents = vq_out.quantized
        u = self.config.upsample
        logits = self.classifier(latents).float().reshape(b, t * u, len(self.inventory))  # token-major
        return CTCOutput(F.log_softmax(logits, dim=-1), mask.sum(dim=1) * u, vq_out)

    @property
    def output_frame_shift(self) -> float:
        """Seconds per output frame (``frame_shift / upsample``)."""
        return self.config.frame_shift / self.config.upsample

    def loss(self, latents: torch.Tensor, mask: torch.Tensor | None, targets: torch.Tensor,
             target_lengths: torch.Tensor) -> CTCLoss:
        """CTC loss (mean over the batch of per-sequence loss / target length) plus the VQ loss.

        Args:
            latents: ``(B, T, d_model)``.
            mask: bool ``(B, T)`` or None.
            targets: ``(B, L)`` int64 phone ids in ``1..P`` (padding ignored past the length).
            target_lengths: ``(B,)`` int64.

        Returns:
            :class:`CTCLoss`. Infeasible alignments (target longer than the input) give 0 loss
            and no gradient (``zero_infinity``) rather than inf.
        """
        out = self.forward(latents, mask)
        ctc = F.ctc_loss(out.log_probs.transpose(0, 1), targets, out.lengths, target_lengths,
                         blank=BLANK, reduction="mean", zero_infinity=True)
        vq = out.vq.loss if out.vq is not None else ctc.new_zeros(())
        return CTCLoss(ctc + vq, ctc, vq, out)

    def decode(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> list[CTCHypothesis]:
        """Greedy transcription with timestamps (see :func:`ctc_greedy_decode`)."""
        out = self.forward(latents, mask)
        return ctc_greedy_decode(out.log_probs, out.lengths, self.output_frame_shift)

    def checkpoint_config(self) -> dict:
        return {"ctc": asdict(self.config), "vq": asdict(self.vq_config) if self.vq_config else None}

    def checkpoint_extra(self) -> dict:
        return {"phones": list(self.inventory.phones)}

    @classmethod
    def from_checkpoint(cls, config: dict, extra: dict) -> "CTCHead":
        vq = config_from_dict(VQConfig, config["vq"], "vq") if config["vq"] else None
        return cls(config_from_dict(CTCConfig, config["ctc"], "ctc"), PhoneInventory(tuple(extra["phones"])), vq)


def ctc_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor | None = None,
                      frame_shift: float = 0.04, blank: int = BLANK) -> list[CTCHypothesis]:
    """Best-path decoding: per-frame argmax, collapse repeats, drop blanks.

    Args:
        log_probs: ``(B, T, V)`` (any monotone scores work).
        lengths: ``(B,)`` valid frames; None = all T.
        frame_shift: seconds per frame.
        blank: blank id.

    Returns:
        One :class:`CTCHypothesis` per sequence, with the frame run (and seconds) of each phone.
    """
    best = log_probs.argmax(dim=-1).cpu().numpy()
    lens = [best.shape[1]] * best.shape[0] if lengths is None else lengths.cpu().tolist()
    hyps = []
    for row, n in zip(best, lens):
        row = row[: int(n)]
        if row.size == 0:
            hyps.append(CTCHypothesis([], [], [], [], []))
            continue
        starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
        ends = np.r_[starts[1:] - 1, row.size - 1]
        keep = row[starts] != blank
        s, e = starts[keep], ends[keep]
        hyps.append(CTCHypothesis(row[s].tolist(), s.tolist(), e.tolist(),
                                  (s * frame_shift).tolist(), ((e + 1) * frame_shift).tolist()))
    return hyps
