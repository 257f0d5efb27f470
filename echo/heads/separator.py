"""Waveform separation of known speakers: a time-frequency mask per speaker, from who they are.

For each speaker to render the head predicts a mask on the mixture's STFT from that speaker's
IDENTITY (one unit speaker-head embedding, the same for the whole mixture), the mixture's latent
and the mixture's own magnitude spectrum; the masked STFT is inverted with the mixture's phase
(the mask-based recipe of Conv-TasNet's STFT variants and of target-speaker extraction, e.g.
SpeakerBeam / VoiceFilter, here for every speaker of the mixture at once):

1. three inputs projected to ``width`` and summed per STFT frame: the log-magnitude spectrum
   (10 ms frames), the identity (broadcast over time) and the mixture latent (40 ms tokens,
   repeated onto the ``patch_frames`` STFT frames each token covers);
2. ``num_blocks`` residual temporal-convolution blocks per speaker (1x1 conv, depthwise dilated
   conv, 1x1 conv; dilation doubling, so the receptive field covers about a second), each output
   scaled and shifted per channel by the identity (FiLM, the multiplicative speaker adaptation of
   SpeakerBeam), with an attention across the rendered speakers at each frame every
   ``slot_attention_every`` blocks, so they agree who owns each time-frequency bin;
3. a per-frame linear map to one mask logit per frequency bin; the masks are a softmax over the
   rendered speakers, so the separated sources always sum to the mixture (an extra speaker of an
   over-count shares the rest, nothing is dropped).

Why identities and not the routing slots: on the dev mixtures, the same head conditioned on each
source's router slot reached +0.9 to +1.4 dB SI-SDRi, on the speaker-head embedding of that slot
+0.3, and on the speaker-head embedding of the mixture latent where the source talks alone +2.2
to +2.9 (README, issue 15): the slots do not carry who is who well enough to steer a mask, the
speaker head does. An identity per speaker also makes a long recording's chunks consistent for
free: the diarizer gives one embedding per speaker of the whole recording (:mod:`echo.separation`).

The STFT is ``torch.stft`` with the front-end's own window and hop (``n_fft`` 512, 25 ms Hann, 10
ms hop at the defaults), so an STFT frame is a log-mel frame and token ``i`` covers frames
``[i * patch_frames, (i + 1) * patch_frames)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from echo.config import check_fields, need, rule, wired
from echo.errors import EchoError
from echo.heads import Checkpointed

__all__ = ["SeparatorConfig", "SpeakerSeparator", "stft", "istft", "si_sdr_loss", "IDENTITY_SCALE"]

# the unit identity is scaled before its projection so that, at initialisation, it weighs about as
# much as the latent inputs in the summed features (the value the dev screen used)
IDENTITY_SCALE = 8.0


@dataclass(frozen=True)
class SeparatorConfig:
    """Speaker separator (params.yaml ``stages.separation.separator``).

    Attributes:
        d_model: encoder latent width (set from the encoder).
        identity_dim: speaker embedding width (set from the speaker head).
        patch_frames: STFT frames per latent token (set from the encoder).
        n_fft / win_length / hop_length: the STFT (set from the front-end, so frames align).
        width: channels of the temporal convolution (>= 1, divisible by ``num_heads``).
        hidden: channels inside each block (>= 1).
        num_blocks: residual blocks (>= 1); block ``j`` has dilation ``2 ** (j % 6)``.
        kernel_size: depthwise kernel (odd, >= 3).
        slot_attention_every: attention across the rendered speakers after every this many blocks (>= 1).
        num_heads: heads of that attention (>= 1).
    """

    d_model: int = field(default=512, metadata=wired(ge=1))
    identity_dim: int = field(default=192, metadata=wired(ge=1))
    patch_frames: int = field(default=4, metadata=wired(ge=1))
    n_fft: int = field(default=512, metadata=wired(ge=2))
    win_length: int = field(default=400, metadata=wired(ge=2))
    hop_length: int = field(default=160, metadata=wired(ge=1))
    width: int = field(default=128, metadata=rule(ge=1))
    hidden: int = field(default=256, metadata=rule(ge=1))
    num_blocks: int = field(default=6, metadata=rule(ge=1))
    kernel_size: int = field(default=3, metadata=rule(ge=3))
    slot_attention_every: int = field(default=3, metadata=rule(ge=1))
    num_heads: int = field(default=4, metadata=rule(ge=1))

    def __post_init__(self) -> None:
        check_fields(self)
        need(self, self.kernel_size % 2 == 1, "kernel_size", "an odd number", self.kernel_size)
        need(self, self.width % self.num_heads == 0, "width", f"a multiple of num_heads ({self.num_heads})", self.width)
        need(self, self.win_length <= self.n_fft, "win_length", f"<= n_fft ({self.n_fft})", self.win_length)

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1


def stft(wave: torch.Tensor, cfg: SeparatorConfig) -> torch.Tensor:
    """Complex STFT ``(..., frames, bins)`` of ``(..., samples)``: centred, Hann, the front-end's hop."""
    shape = wave.shape[:-1]
    window = torch.hann_window(cfg.win_length, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(wave.reshape(-1, wave.shape[-1]), cfg.n_fft, cfg.hop_length, cfg.win_length, window,
                      center=True, return_complex=True)  # (N, bins, frames)
    return spec.transpose(1, 2).reshape(*shape, spec.shape[2], spec.shape[1])


def istft(spec: torch.Tensor, cfg: SeparatorConfig, length: int) -> torch.Tensor:
    """Inverse of :func:`stft`: ``(..., frames, bins)`` complex -> ``(..., length)`` samples."""
    shape = spec.shape[:-2]
    window = torch.hann_window(cfg.win_length, device=spec.device, dtype=spec.real.dtype)
    x = spec.reshape(-1, *spec.shape[-2:]).transpose(1, 2)
    wave = torch.istft(x, cfg.n_fft, cfg.hop_length, cfg.win_length, window, center=True, length=length)
    return wave.reshape(*shape, length)


def si_sdr_loss(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Negative SI-SDR (dB) per row of ``(N, samples)`` tensors (zero-meaned, Le Roux et al. 2019).

    The training loss; :func:`echo.metrics.separation.si_sdr` is the evaluation metric (numpy,
    float64, capped), and a test checks that the two agree.
    """
    x = estimate - estimate.mean(dim=-1, keepdim=True)
    s = reference - reference.mean(dim=-1, keepdim=True)
    alpha = (x * s).sum(-1, keepdim=True) / ((s * s).sum(-1, keepdim=True) + eps)
    target = alpha * s
    ratio = (target * target).sum(-1) / ((x - target).pow(2).sum(-1) + eps)
    return -10.0 * torch.log10(ratio + eps)


class _Block(nn.Module):
    """Residual temporal block: 1x1 conv -> PReLU -> norm -> depthwise dilated conv -> PReLU -> norm -> 1x1."""

    def __init__(self, width: int, hidden: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(width, hidden, 1), nn.PReLU(), nn.GroupNorm(1, hidden),
            nn.Conv1d(hidden, hidden, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, groups=hidden),
            nn.PReLU(), nn.GroupNorm(1, hidden), nn.Conv1d(hidden, width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, width, frames)
        return x + self.net(x)


class SpeakerSeparator(Checkpointed, nn.Module):
    """Speaker identities + mixture -> one waveform per rendered speaker (see the module docstring)."""

    kind = "separator"
    config_class = SeparatorConfig

    def __init__(self, config: SeparatorConfig = SeparatorConfig()) -> None:
        super().__init__()
        self.config = c = config
        self.spec_in = nn.Linear(c.n_bins, c.width)
        self.identity_in = nn.Linear(c.identity_dim, c.width)
        self.mix_in = nn.Linear(c.d_model, c.width)
        self.in_norm = nn.LayerNorm(c.width)
        self.blocks = nn.ModuleList(_Block(c.width, c.hidden, c.kernel_size, 2 ** (j % 6)) for j in range(c.num_blocks))
        n_attn = c.num_blocks // c.slot_attention_every
        self.attn_norms = nn.ModuleList(nn.LayerNorm(c.width) for _ in range(n_attn))
        self.attns = nn.ModuleList(nn.MultiheadAttention(c.width, c.num_heads, batch_first=True) for _ in range(n_attn))
        self.out_norm = nn.LayerNorm(c.width)
        self.out = nn.Linear(c.width, c.n_bins)
        # per block, a scale and a shift of every channel from the identity (FiLM), zero at
        # initialisation so that training starts from the unconditioned blocks
        self.films = nn.ModuleList(nn.Linear(c.identity_dim, 2 * c.width) for _ in range(c.num_blocks))
        for f in self.films:
            nn.init.zeros_(f.weight)
            nn.init.zeros_(f.bias)

    def _tokens_to_frames(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = x.repeat_interleave(self.config.patch_frames, dim=-2)
        if x.shape[-2] < frames:  # the last token is partial when frames % patch_frames != 0
            x = torch.cat([x, x[..., -1:, :].expand(*x.shape[:-2], frames - x.shape[-2], x.shape[-1])], dim=-2)
        return x[..., :frames, :]

    def mask_logits(self, spec: torch.Tensor, identities: torch.Tensor, mixture_latent: torch.Tensor,
                    active: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(B, S, frames, bins)`` (-inf on speakers not rendered).

        Args:
            spec: the mixture's complex STFT ``(B, frames, bins)``.
            identities: speaker embeddings ``(B, S, identity_dim)`` (normalised here).
            mixture_latent: ``(B, T, d_model)``.
            active: bool ``(B, S)``, the speakers to render; every row needs at least one True.
        """
        c = self.config
        b, s, e = identities.shape if identities.dim() == 3 else (-1, -1, -1)
        t = mixture_latent.shape[1] if mixture_latent.dim() == 3 else -1
        if e != c.identity_dim or mixture_latent.shape != (b, t, c.d_model) or active.shape != (b, s):
            raise EchoError(f"separator: expected identities (B, S, {c.identity_dim}), mixture latent (B, T, {c.d_model}) "
                            f"and active (B, S), got {tuple(identities.shape)}, {tuple(mixture_latent.shape)}, "
                            f"{tuple(active.shape)}")
        if not bool(active.any(dim=1).all()):
            raise EchoError("separator: a mixture has no speaker to render; expected >= 1 per row")
        frames = spec.shape[1]
        logmag = torch.log1p(spec.abs() * 100.0)  # compressive: ~0 for silence, the same scale as levels vary
        unit = IDENTITY_SCALE * nn.functional.normalize(identities.float(), dim=-1)  # (B, S, E)
        who = self.identity_in(unit)  # (B, S, W)
        h = (self.spec_in(logmag)[:, None] + self._tokens_to_frames(self.mix_in(mixture_latent), frames)[:, None]
             + who[:, :, None])
        h = self.in_norm(h)  # (B, S, F, W)
        w = h.shape[-1]
        x = h.reshape(b * s, frames, w).transpose(1, 2)  # (B*S, W, F)
        a = 0
        for j, block in enumerate(self.blocks):
            gain, shift = self.films[j](unit).reshape(b * s, 2, w, 1).unbind(1)
            x = block(x) * (1.0 + gain) + shift
            if (j + 1) % c.slot_attention_every == 0 and a < len(self.attns):
                y = x.view(b, s, w, frames).permute(0, 3, 1, 2).reshape(b * frames, s, w)
                q = self.attn_norms[a](y)
                pad = (~active).repeat_interleave(frames, dim=0)
                y = y + self.attns[a](q, q, q, key_padding_mask=pad, need_weights=False)[0]
                x = y.view(b, frames, s, w).permute(0, 2, 3, 1).reshape(b * s, w, frames)
                a += 1
        logits = self.out(self.out_norm(x.transpose(1, 2))).view(b, s, frames, c.n_bins)
        return logits.masked_fill(~active[:, :, None, None], float("-inf"))

    def forward(self, mixture: torch.Tensor, identities: torch.Tensor, mixture_latent: torch.Tensor,
                active: torch.Tensor) -> torch.Tensor:
        """Separated waveforms ``(B, S, samples)`` (zeros for speakers not rendered); they sum to ``mixture``.

        Args:
            mixture: ``(B, samples)`` at the front-end's sample rate.
            identities: ``(B, S, identity_dim)`` one speaker embedding per speaker to render.
            mixture_latent: ``(B, T, d_model)`` the encoder's latent of the mixture.
            active: bool ``(B, S)`` the speakers to render in each mixture.
        """
        spec = stft(mixture.float(), self.config)
        # only the speakers rendered in some mixture of the batch are computed (the cost is per
        # speaker); the others are silent anyway
        keep = torch.nonzero(active.any(dim=0)).flatten()
        logits = self.mask_logits(spec, identities[:, keep].float(), mixture_latent.float(), active[:, keep])
        masks = torch.softmax(logits, dim=1).nan_to_num(0.0)  # rows are never all -inf (checked); guards rounding
        out = torch.zeros(*active.shape, mixture.shape[-1], device=mixture.device)
        out[:, keep] = istft(masks * spec[:, None], self.config, mixture.shape[-1])
        return out
