"""Waveform separation from the routing slots: a time-frequency mask per active slot.

The router (:mod:`echo.heads.router`) turns a mixture's latent into slot sequences, each meant to be
one source's latent. This head renders them as audio: for every active slot it predicts a mask on
the mixture's STFT from that slot's latent, the mixture's latent and the mixture's own magnitude
spectrum, and the masked STFT is inverted with the mixture's phase (the usual mask-based recipe of
Conv-TasNet's STFT variants and of the K-set separators):

1. three inputs projected to ``width`` and summed per STFT frame: the log-magnitude spectrum
   (10 ms frames), the slot latent and the mixture latent (40 ms tokens, repeated onto the
   ``patch_frames`` STFT frames each token covers);
2. ``num_blocks`` residual temporal-convolution blocks per slot (1x1 conv, depthwise dilated conv,
   1x1 conv; dilation doubling, so the receptive field covers about a second), with an attention
   across the active slots at each frame every ``slot_attention_every`` blocks, so the slots agree
   who owns each time-frequency bin;
3. a per-frame linear map to one mask logit per frequency bin; the masks are a softmax over the
   active slots, so the separated sources always sum to the mixture (the "rest" of a K-set with an
   over-count is shared, not dropped).

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

__all__ = ["SeparatorConfig", "SlotSeparator", "stft", "istft", "si_sdr_loss"]


@dataclass(frozen=True)
class SeparatorConfig:
    """Slot separator (params.yaml ``stages.separation.separator``).

    Attributes:
        d_model: encoder latent width (set from the encoder).
        patch_frames: STFT frames per latent token (set from the encoder).
        n_fft / win_length / hop_length: the STFT (set from the front-end, so frames align).
        width: channels of the temporal convolution (>= 1, divisible by ``num_heads``).
        hidden: channels inside each block (>= 1).
        num_blocks: residual blocks (>= 1); block ``j`` has dilation ``2 ** (j % 6)``.
        kernel_size: depthwise kernel (odd, >= 3).
        slot_attention_every: attention across slots after every this many blocks (>= 1).
        num_heads: heads of that attention (>= 1).
    """

    d_model: int = field(default=512, metadata=wired(ge=1))
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


class SlotSeparator(Checkpointed, nn.Module):
    """Slots + mixture -> one waveform per active slot (see the module docstring)."""

    kind = "separator"
    config_class = SeparatorConfig

    def __init__(self, config: SeparatorConfig = SeparatorConfig()) -> None:
        super().__init__()
        self.config = c = config
        self.spec_in = nn.Linear(c.n_bins, c.width)
        self.slot_in = nn.Linear(c.d_model, c.width)
        self.mix_in = nn.Linear(c.d_model, c.width)
        self.in_norm = nn.LayerNorm(c.width)
        self.blocks = nn.ModuleList(_Block(c.width, c.hidden, c.kernel_size, 2 ** (j % 6)) for j in range(c.num_blocks))
        n_attn = c.num_blocks // c.slot_attention_every
        self.attn_norms = nn.ModuleList(nn.LayerNorm(c.width) for _ in range(n_attn))
        self.attns = nn.ModuleList(nn.MultiheadAttention(c.width, c.num_heads, batch_first=True) for _ in range(n_attn))
        self.out_norm = nn.LayerNorm(c.width)
        self.out = nn.Linear(c.width, c.n_bins)

    def _tokens_to_frames(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = x.repeat_interleave(self.config.patch_frames, dim=-2)
        if x.shape[-2] < frames:  # the last token is partial when frames % patch_frames != 0
            x = torch.cat([x, x[..., -1:, :].expand(*x.shape[:-2], frames - x.shape[-2], x.shape[-1])], dim=-2)
        return x[..., :frames, :]

    def mask_logits(self, spec: torch.Tensor, slots: torch.Tensor, mixture_latent: torch.Tensor,
                    active: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(B, S, frames, bins)`` (-inf on inactive slots).

        Args:
            spec: the mixture's complex STFT ``(B, frames, bins)``.
            slots: slot latents ``(B, S, T, d_model)``.
            mixture_latent: ``(B, T, d_model)``.
            active: bool ``(B, S)``; every row needs at least one True.
        """
        c = self.config
        b, s, t, d = slots.shape
        if d != c.d_model or mixture_latent.shape != (b, t, d) or active.shape != (b, s):
            raise EchoError(f"separator: expected slots (B, S, T, {c.d_model}), mixture latent (B, T, {c.d_model}) and "
                            f"active (B, S), got {tuple(slots.shape)}, {tuple(mixture_latent.shape)}, {tuple(active.shape)}")
        if not bool(active.any(dim=1).all()):
            raise EchoError("separator: a mixture has no active slot; expected >= 1 per row")
        frames = spec.shape[1]
        logmag = torch.log1p(spec.abs() * 100.0)  # compressive: ~0 for silence, the same scale as levels vary
        h = self.spec_in(logmag)[:, None] + self._tokens_to_frames(self.slot_in(slots) + self.mix_in(mixture_latent)[:, None], frames)
        h = self.in_norm(h)  # (B, S, F, W)
        w = h.shape[-1]
        x = h.reshape(b * s, frames, w).transpose(1, 2)  # (B*S, W, F)
        a = 0
        for j, block in enumerate(self.blocks):
            x = block(x)
            if (j + 1) % c.slot_attention_every == 0 and a < len(self.attns):
                y = x.view(b, s, w, frames).permute(0, 3, 1, 2).reshape(b * frames, s, w)
                q = self.attn_norms[a](y)
                pad = (~active).repeat_interleave(frames, dim=0)
                y = y + self.attns[a](q, q, q, key_padding_mask=pad, need_weights=False)[0]
                x = y.view(b, frames, s, w).permute(0, 2, 3, 1).reshape(b * s, w, frames)
                a += 1
        logits = self.out(self.out_norm(x.transpose(1, 2))).view(b, s, frames, c.n_bins)
        return logits.masked_fill(~active[:, :, None, None], float("-inf"))

    def forward(self, mixture: torch.Tensor, slots: torch.Tensor, mixture_latent: torch.Tensor,
                active: torch.Tensor) -> torch.Tensor:
        """Separated waveforms ``(B, S, samples)`` (zeros on inactive slots); they sum to ``mixture``.

        Args:
            mixture: ``(B, samples)`` at the front-end's sample rate.
            slots: ``(B, S, T, d_model)`` router slots; mixture_latent: ``(B, T, d_model)``.
            active: bool ``(B, S)`` slots to render (the router's existence decision).
        """
        spec = stft(mixture.float(), self.config)
        # only the slots active in some mixture of the batch are computed (the cost is per slot; at
        # inference a chunk has 1-2 active of k_max): the others are silent anyway
        keep = torch.nonzero(active.any(dim=0)).flatten()
        logits = self.mask_logits(spec, slots[:, keep].float(), mixture_latent.float(), active[:, keep])
        masks = torch.softmax(logits, dim=1).nan_to_num(0.0)  # rows are never all -inf (checked); guards rounding
        out = torch.zeros(*active.shape, mixture.shape[-1], device=mixture.device)
        out[:, keep] = istft(masks * spec[:, None], self.config, mixture.shape[-1])
        return out
