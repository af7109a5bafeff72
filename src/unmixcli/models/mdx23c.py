"""MDX23C: the TFC-TDF v3 U-Net of Music-Source-Separation-Training (model type "mdx23c").

A re-implementation for inference of MSST's `models/mdx23c_tfc_tdf_v3.py`
(`TFC_TDF_net`): the module tree and parameter names are MSST's, so a published
`.ckpt` (a plain `state_dict`) loads strictly, key for key, and the numbers are
the same operations in the same order.

The network works on the complex spectrogram "as channels" (CaC: real and
imaginary parts of each audio channel are separate image channels), split
into `num_subbands` equal frequency bands stacked as further channels. A
U-Net of TFC-TDF blocks (3x3 convolutions across time and frequency, plus a
bottlenecked linear map across the frequency axis) runs on it with time and
frequency down- and upsampled by `scale` per level; its output, multiplied by
the first convolution's output, is mixed with the input spectrogram by two
1x1 convolutions into one CaC spectrogram per stem, which the inverse STFT
turns back into audio.

Differences from MSST, none of which changes a number:

* MSST's output is `[B, S, 2, T]` (it hard-codes two channels), also for one
  stem (S = 1, e.g. a `target_instrument` model); ours is `[B, S, C, T]` with
  C = `audio_channels`, which the family requires to be 2, as MSST's does.
* The STFT window is a non-persistent buffer (it follows `.to(device)` and
  stays out of the state dict, as MSST's plain attribute does).
* Under autocast the STFT and its inverse run in float32 (the network in
  between may run in bf16); MSST runs them in whatever dtype they get.

Shapes: B batch, S stems, C audio channels, T samples, F frequency bins
(`dim_f` kept of n_fft // 2 + 1), N STFT frames, K subbands, D feature
channels, F' = F / K bins per subband.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

# --------------------------------------------------------------------------- norms and activations


def make_norm(kind: str, groups: Optional[int] = None) -> Callable[[int], nn.Module]:
    """A factory `channels -> norm module` for a parsed norm kind.

    kinds: "batch" (BatchNorm2d), "instance" (InstanceNorm2d with affine gains, no
    running statistics), "group" (GroupNorm with `groups` groups).
    """
    if kind == "batch":
        return lambda c: nn.BatchNorm2d(c)
    if kind == "instance":
        return lambda c: nn.InstanceNorm2d(c, affine=True)
    if kind == "group":
        if not groups or groups < 1:
            raise ValueError(f"GroupNorm needs a positive number of groups, got {groups!r}")
        return lambda c: nn.GroupNorm(num_groups=groups, num_channels=c)
    raise ValueError(f"unknown norm kind {kind!r}")


def make_act(kind: str, alpha: float = 1.0) -> Callable[[], nn.Module]:
    """A factory of the activation: "gelu" (exact erf form), "relu", or "elu" with `alpha`."""
    if kind == "gelu":
        return nn.GELU
    if kind == "relu":
        return nn.ReLU
    if kind == "elu":
        return lambda: nn.ELU(alpha)
    raise ValueError(f"unknown activation {kind!r}")


# --------------------------------------------------------------------------- blocks


class _Resample(nn.Module):
    """norm, activation, then a strided (transposed) convolution with kernel = stride = `scale`:
    `[B, D_in, N, F'] -> [B, D_out, N / s0, F' / s1]` (down) or `[B, D_out, N * s0, F' * s1]` (up)."""

    def __init__(self, in_c: int, out_c: int, scale: Tuple[int, int], norm, act, *, up: bool):
        super().__init__()
        conv = nn.ConvTranspose2d if up else nn.Conv2d
        self.conv = nn.Sequential(norm(in_c), act(), conv(in_c, out_c, kernel_size=scale, stride=scale, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _TFCTDFLayer(nn.Module):
    """One TFC-TDF layer on `[B, D_in, N, F'] -> [B, D, N, F']`.

    tfc1 (3x3 conv), plus tdf (a residual two-Linear bottleneck across the F' bins),
    then tfc2 (3x3 conv), plus a 1x1 shortcut of the layer's input. Each conv and
    Linear is preceded by norm and activation; the Sequential indices are MSST's
    (norm 0, act 1, weight 2, ...), which the state dict keys carry.
    """

    def __init__(self, in_c: int, c: int, bins: int, bottleneck: int, norm, act):
        super().__init__()
        self.tfc1 = nn.Sequential(norm(in_c), act(), nn.Conv2d(in_c, c, 3, 1, 1, bias=False))
        self.tdf = nn.Sequential(norm(c), act(), nn.Linear(bins, bins // bottleneck, bias=False),
                                 norm(c), act(), nn.Linear(bins // bottleneck, bins, bias=False))
        self.tfc2 = nn.Sequential(norm(c), act(), nn.Conv2d(c, c, 3, 1, 1, bias=False))
        self.shortcut = nn.Conv2d(in_c, c, 1, 1, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.shortcut(x)
        x = self.tfc1(x)
        x = x + self.tdf(x)  # Linear over the last axis: the F' bins
        return self.tfc2(x) + skip


class _TFCTDF(nn.Module):
    """`layers` TFC-TDF layers in a row (the first takes `in_c` channels, the rest `c`)."""

    def __init__(self, in_c: int, c: int, layers: int, bins: int, bottleneck: int, norm, act):
        super().__init__()
        self.blocks = nn.ModuleList(
            _TFCTDFLayer(in_c if i == 0 else c, c, bins, bottleneck, norm, act) for i in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class _EncoderBlock(nn.Module):
    def __init__(self, c: int, growth: int, layers: int, bins: int, bottleneck: int, scale, norm, act):
        super().__init__()
        self.tfc_tdf = _TFCTDF(c, c, layers, bins, bottleneck, norm, act)
        self.downscale = _Resample(c, c + growth, scale, norm, act, up=False)


class _DecoderBlock(nn.Module):
    def __init__(self, c: int, growth: int, layers: int, bins: int, bottleneck: int, scale, norm, act):
        super().__init__()
        self.upscale = _Resample(c, c - growth, scale, norm, act, up=True)
        # Its input is the upsampled features beside the encoder's skip: 2 * (c - growth) channels.
        self.tfc_tdf = _TFCTDF(2 * (c - growth), c - growth, layers, bins, bottleneck, norm, act)


# --------------------------------------------------------------------------- the network


class MDX23C(nn.Module):
    """MSST's TFC_TDF_net for inference: `[B, C, T] -> [B, S, C, T]`.

    Args:
        sources: stem names, in output order (S = len(sources)).
        audio_channels: C (audio.num_channels).
        n_fft, hop_length: the STFT (periodic Hann window, centred).
        dim_f: the lowest bins kept of n_fft // 2 + 1 (the rest are zero on output).
        num_subbands: K, the bands the kept bins are split into (stacked as channels).
        num_scales: U-Net levels.
        scale: (time, frequency) down/upsampling factor per level.
        num_blocks_per_scale: TFC-TDF layers per block.
        num_channels: D of the first level; each level adds `growth`.
        bottleneck_factor: the TDF bottleneck divides the bins by it.
        norm: (kind, groups) for `make_norm`; act: (kind, alpha) for `make_act`.
    """

    def __init__(self, *, sources: Sequence[str], audio_channels: int = 2, n_fft: int, hop_length: int,
                 dim_f: int, num_subbands: int, num_scales: int, scale: Sequence[int],
                 num_blocks_per_scale: int, num_channels: int, growth: int, bottleneck_factor: int,
                 norm: Tuple[str, Optional[int]] = ("instance", None), act: Tuple[str, float] = ("gelu", 1.0)):
        super().__init__()
        self.sources: List[str] = list(sources)
        self.audio_channels = int(audio_channels)
        self.n_fft, self.hop_length, self.dim_f = int(n_fft), int(hop_length), int(dim_f)
        self.num_subbands = int(num_subbands)
        scale = (int(scale[0]), int(scale[1]))
        if self.dim_f > self.n_fft // 2 + 1 or self.dim_f % self.num_subbands:
            raise ValueError(f"dim_f {dim_f} must be at most n_fft // 2 + 1 and a multiple of num_subbands")
        norm_of = make_norm(*norm)
        act_of = make_act(*act)

        # CaC channels with the subbands stacked: C audio channels x (re, im) x K.
        self.dim_c = self.num_subbands * self.audio_channels * 2
        c, bins = int(num_channels), self.dim_f // self.num_subbands
        self.first_conv = nn.Conv2d(self.dim_c, c, 1, 1, 0, bias=False)
        self.encoder_blocks = nn.ModuleList()
        for _ in range(num_scales):
            self.encoder_blocks.append(
                _EncoderBlock(c, growth, num_blocks_per_scale, bins, bottleneck_factor, scale, norm_of, act_of))
            bins //= scale[1]
            c += growth
        self.bottleneck_block = _TFCTDF(c, c, num_blocks_per_scale, bins, bottleneck_factor, norm_of, act_of)
        self.decoder_blocks = nn.ModuleList()
        for _ in range(num_scales):
            bins *= scale[1]
            self.decoder_blocks.append(
                _DecoderBlock(c, growth, num_blocks_per_scale, bins, bottleneck_factor, scale, norm_of, act_of))
            c -= growth
        self.final_conv = nn.Sequential(
            nn.Conv2d(c + self.dim_c, c, 1, 1, 0, bias=False),
            act_of(),
            nn.Conv2d(c, len(self.sources) * self.dim_c, 1, 1, 0, bias=False),
        )
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True), persistent=False)

    # ----------------------------------------------------------------------- spectrograms

    def _spectrogram(self, x: Tensor) -> Tensor:
        """[B, C, T] -> CaC [B, 2C, F, N] (channel-major: c0 re, c0 im, c1 re, ...), F = dim_f."""
        b, c, t = x.shape
        with torch.autocast(x.device.type, enabled=False):
            z = torch.stft(x.float().reshape(b * c, t), n_fft=self.n_fft, hop_length=self.hop_length,
                           window=self.window, center=True, return_complex=True)  # [B*C, n_fft/2+1, N]
        z = torch.view_as_real(z).permute(0, 3, 1, 2)  # [B*C, 2, n_fft/2+1, N]
        z = z.reshape(b, c * 2, z.shape[-2], z.shape[-1])  # [B, 2C, n_fft/2+1, N]
        return z[:, :, :self.dim_f]

    def _waveform(self, z: Tensor) -> Tensor:
        """CaC [B, S, 2C, F, N] -> [B, S, C, T] (bins above F are zero)."""
        b, s, cc, f, n = z.shape
        full = self.n_fft // 2 + 1
        with torch.autocast(z.device.type, enabled=False):
            z = torch.cat([z.float(), z.new_zeros(b, s, cc, full - f, n, dtype=torch.float32)], dim=3)
            z = z.reshape(b * s * (cc // 2), 2, full, n).permute(0, 2, 3, 1)  # [B*S*C, full, N, 2]
            spec = torch.complex(z[..., 0], z[..., 1])  # [B*S*C, full, N]
            wav = torch.istft(spec, n_fft=self.n_fft, hop_length=self.hop_length, window=self.window,
                              center=True)  # [B*S*C, hop * (N - 1)]
        return wav.reshape(b, s, cc // 2, -1)

    # ----------------------------------------------------------------------- forward

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, T] -> [B, S, C, T'] with T' = hop * (T // hop) (T itself when the chunk is a
        multiple of the hop, as every MSST chunk size is)."""
        k = self.num_subbands
        spec = self._spectrogram(x)  # [B, 2C, F, N]
        b, cc, f, n = spec.shape
        mix = spec.reshape(b, cc * k, f // k, n)  # [B, 2C*K, F', N]: subbands as channels
        first = self.first_conv(mix)  # [B, D, F', N]
        h = first.transpose(-1, -2)  # [B, D, N, F']: the blocks' Linear runs over F'
        skips = []
        for block in self.encoder_blocks:
            h = block.tfc_tdf(h)
            skips.append(h)
            h = block.downscale(h)  # [B, D + growth, N / s0, F' / s1]
        h = self.bottleneck_block(h)
        for block in self.decoder_blocks:
            h = block.upscale(h)  # [B, D - growth, N * s0, F' * s1]
            h = block.tfc_tdf(torch.cat([h, skips.pop()], dim=1))
        h = h.transpose(-1, -2) * first  # [B, D, F', N]
        out = self.final_conv(torch.cat([mix, h], dim=1))  # [B, S*2C*K, F', N]
        out = out.reshape(b, len(self.sources), cc, f, n)  # [B, S, 2C, F, N]: subbands back into bins
        return self._waveform(out)
