"""BS-Conformer and Mel-Band Conformer (MSST's `bs_conformer` / `mel_band_conformer`).

They are the band-split RoFormers with each axial transformer replaced by a
Conformer: per layer, a half-step feed-forward, rotary self-attention, a
depthwise-convolution module, a second half-step feed-forward and an output
RMSNorm. The conformers run along time (one sequence of frames per band) and
then along frequency (one sequence of bands per frame), as the RoFormers do.
Everything around that core is the RoFormers' (`models/roformer.py`): the band
layouts (`FixedBands`, `MelBands`), the STFT front and ISTFT back
(`BandSplitModel`) and the shared config options.

The module tree, constructor arguments and parameter names are those of the
published checkpoints (Music-Source-Separation-Training's
`models/bs_roformer/bs_conformer.py` and `mel_band_conformer.py`), so their
state dicts load strictly, key for key; parameter-free modules of the
reference (einops rearranges, the attention kernel) sit in the same places as
`Identity` / `Dropout` placeholders so that the indices inside each
`Sequential` stay the same. The forward pass is ours, for inference only
(BatchNorm uses its running statistics).

Differences between the two types that the checkpoints depend on:
* BS-Conformer normalises the token grid once more after the last layer
  (`final_norm`); the Mel-Band Conformer does not have that norm.
* Both count `mask_estimator_depth` as the number of Linear layers of each
  band's mask MLP (the Mel-Band RoFormer counts hidden layers instead).
* The mel bands are the non-zero entries of a Slaney mel filterbank whose two
  corner bins are set to a quarter of their neighbour.

Shapes: B batch, S stems, C audio channels, T samples, F frequency bins,
N STFT frames, K bands, D model width, H heads, E head width, Q sequences,
L sequence length, I convolution width.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cpu_kernels import Linear, linear, linear_gelu
from .roformer import Attention as RoformerAttention
from .roformer import FeedForward as RoformerFeedForward
from .roformer import (BandSplitModel, FixedBands, MelBands, RMSNorm, RotaryEmbedding, band_split_options,
                       fixed_band_options, mel_band_membership, mel_band_options, takes_options)

# Tokens per group of sequences that one conformer layer processes at a time: every
# sequence is independent, and a bounded group keeps the widest temporaries (the
# feed-forward's 4 * D features, the convolution's 2 * I channels) at a few tens of MB.
_TOKENS_PER_GROUP = 16384


# --------------------------------------------------------------------------- layers


class FeedForward(RoformerFeedForward):
    """RMSNorm, Linear to `mult * D`, GELU, Linear back to D (the RoFormers' layers, run out of place)."""

    def forward(self, x: Tensor) -> Tensor:
        norm, up, _, _, down, _ = self.net
        return linear(linear_gelu(norm(x), up.weight, up.bias), down.weight, down.bias)


class MacaronFF(nn.Module):
    """The conformer's half-step feed-forward: `0.5 * FeedForward(x)`."""

    def __init__(self, dim: int, mult: float = 4, dropout: float = 0.0):
        super().__init__()
        self.ff = FeedForward(dim, mult=mult, dropout=dropout)
        self.scale = 0.5

    def forward(self, x: Tensor) -> Tensor:
        return self.ff(x) * self.scale


class Attention(RoformerAttention):
    """Multi-head self-attention with rotary positions and a sigmoid gate per head (the
    RoFormers' layers), over independent sequences."""

    def forward(self, x: Tensor) -> Tensor:
        """`[Q, L, D]` -> `[Q, L, D]` (attention within each of the Q sequences)."""
        seqs, length, _ = x.shape
        heads, width = self.heads, self.dim_head
        h = self.norm(x)
        qkv = self.to_qkv(h).view(seqs, length, 3, heads, width).permute(2, 0, 3, 1, 4)  # [3, Q, H, L, E]
        q, k, v = qkv.unbind(0)
        if self.rotary_embed is not None:
            q, k = self.rotary_embed.rotate(q), self.rotary_embed.rotate(k)
        out = F.scaled_dot_product_attention(q, k, v)  # [Q, H, L, E]
        gates = self.to_gates(h).sigmoid()  # [Q, L, H]
        out = out * gates.transpose(1, 2)[..., None]
        out = out.transpose(1, 2).reshape(seqs, length, heads * width)  # [Q, L, H*E]
        return self.to_out[0](out)


class ConformerConvModule(nn.Module):
    """RMSNorm, pointwise conv to 2I + GLU, depthwise conv, BatchNorm, SiLU, pointwise conv to D.

    The `net` indices are the reference's (its rearranges at 1 and 8 are placeholders
    here); the pointwise convolutions run as matmuls in the `[Q, L, *]` layout.
    """

    def __init__(self, dim: int, expansion_factor: int = 2, kernel_size: int = 31, dropout: float = 0.0):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"conv_kernel_size must be odd, got {kernel_size}")
        inner = dim * expansion_factor
        self.net = nn.Sequential(
            RMSNorm(dim),
            nn.Identity(),  # [Q, L, D] -> [Q, D, L] in the reference
            nn.Conv1d(dim, inner * 2, 1),
            nn.GLU(dim=1),
            nn.Conv1d(inner, inner, kernel_size, padding=(kernel_size - 1) // 2, groups=inner),
            nn.BatchNorm1d(inner),
            nn.SiLU(),
            nn.Conv1d(inner, dim, 1),
            nn.Identity(),  # and back
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """`[Q, L, D]` -> `[Q, L, D]` (the depthwise convolution runs along L, zero padded)."""
        norm, _, pointwise_in, _, depthwise, batchnorm, _, pointwise_out, _, _ = self.net
        u = linear(norm(x), pointwise_in.weight[..., 0], pointwise_in.bias)  # [Q, L, 2I]
        value, gate = u.chunk(2, dim=-1)
        u = (value * gate.sigmoid()).transpose(1, 2)  # GLU: [Q, I, L]
        u = F.conv1d(u, depthwise.weight, depthwise.bias, padding=depthwise.padding, groups=depthwise.groups)
        u = F.batch_norm(u, batchnorm.running_mean, batchnorm.running_var, batchnorm.weight, batchnorm.bias,
                         training=False, momentum=0.0, eps=batchnorm.eps)
        u = F.silu(u).transpose(1, 2)  # [Q, L, I]
        return linear(u, pointwise_out.weight[..., 0], pointwise_out.bias)


class ConformerBlock(nn.Module):
    """`x + ff1/2`, `+ attention`, `+ convolution`, `+ ff2/2`, then RMSNorm."""

    def __init__(self, *, dim: int, heads: int = 8, dim_head: int = 64, ff_mult: float = 4,
                 attn_dropout: float = 0.0, ff_dropout: float = 0.0, conv_dropout: Optional[float] = None,
                 conv_expansion_factor: int = 2, conv_kernel_size: int = 31,
                 rotary_embed: Optional[RotaryEmbedding] = None):
        super().__init__()
        self.ff1 = MacaronFF(dim, mult=ff_mult, dropout=ff_dropout)
        self.attn = Attention(dim, heads=heads, dim_head=dim_head, dropout=attn_dropout, rotary_embed=rotary_embed)
        self.conv = ConformerConvModule(dim, expansion_factor=conv_expansion_factor, kernel_size=conv_kernel_size,
                                        dropout=ff_dropout if conv_dropout is None else conv_dropout)
        self.ff2 = MacaronFF(dim, mult=ff_mult, dropout=ff_dropout)
        self.out_norm = RMSNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """`[Q, L, D]` -> `[Q, L, D]`."""
        x = x + self.ff1(x)
        x = x + self.attn(x)
        x = x + self.conv(x)
        x = x + self.ff2(x)
        return self.out_norm(x)


class Conformer(nn.Module):
    """A stack of conformer blocks over independent sequences `[Q, L, D]`."""

    def __init__(self, *, dim: int, depth: int, norm_output: bool = False, **block):
        super().__init__()
        self.layers = nn.ModuleList(ConformerBlock(dim=dim, **block) for _ in range(depth))
        self.norm = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        seqs, length, _ = x.shape
        group = max(1, _TOKENS_PER_GROUP // max(length, 1))
        outs = []
        for start in range(0, seqs, group):
            h = x[start:start + group]  # [q, L, D]
            for block in self.layers:
                h = block(h)
            outs.append(self.norm(h))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


class LinearAttention(nn.Module):
    """Cross-covariance ("linear") attention: heads attend between features, not tokens.

    Queries and keys are L2-normalised along the token axis, queries scaled by
    `exp(temperature)`, and attention runs over the E features of each head
    with the fixed scale 8, so its cost is linear in the number of tokens.
    """

    def __init__(self, *, dim: int, dim_head: int = 32, heads: int = 8, scale: float = 8.0, dropout: float = 0.0):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.dim_head = dim_head
        self.scale = scale
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Sequential(Linear(dim, inner * 3, bias=False), nn.Identity())
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.attend = nn.Dropout(dropout)  # the reference's attention kernel (no parameters)
        self.to_out = nn.Sequential(nn.Identity(), Linear(inner, dim, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        """`[B, M, D]` -> `[B, M, D]` (M tokens)."""
        bsz, tokens, _ = x.shape
        qkv = self.to_qkv[0](self.norm(x)).view(bsz, tokens, 3, self.heads, self.dim_head)
        q, k, v = qkv.permute(2, 0, 3, 4, 1).unbind(0)  # each [B, H, E, M]
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        q = q * self.temperature.exp()
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # [B, H, E, M]
        out = out.permute(0, 3, 1, 2).reshape(bsz, tokens, -1)  # [B, M, H*E]
        return self.to_out[1](out)


class LinearTransformer(nn.Module):
    """The optional layers before each time/frequency pair (`linear_conformer_depth`):
    linear attention and a feed-forward, both residual, over all N * K tokens."""

    def __init__(self, *, dim: int, depth: int, dim_head: int = 64, heads: int = 8, attn_dropout: float = 0.0,
                 ff_dropout: float = 0.0, ff_mult: float = 4):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([LinearAttention(dim=dim, dim_head=dim_head, heads=heads, dropout=attn_dropout),
                           FeedForward(dim, mult=ff_mult, dropout=ff_dropout)])
            for _ in range(depth)
        )
        self.norm = nn.Identity()  # the reference builds these without an output norm

    def forward(self, x: Tensor) -> Tensor:
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


# --------------------------------------------------------------------------- mel bands


def mel_conformer_bands(sample_rate: int, n_fft: int, num_bands: int) -> np.ndarray:
    """Which bins belong to which band, `[num_bands, n_fft // 2 + 1]` bool: the bins where a
    Slaney mel filter is positive, after the first filter's DC bin and the last filter's
    Nyquist bin (zero in the filterbank) are given a quarter of their neighbour's weight."""
    return mel_band_membership(sample_rate, n_fft, num_bands, corner_share=0.25)


# --------------------------------------------------------------------------- models


def conformer_options(
    *,
    time_conformer_depth: int = 2,
    freq_conformer_depth: int = 2,
    linear_conformer_depth: int = 0,
    conv_dropout: Optional[float] = None,
    ff_mult: float = 4,
    conv_expansion_factor: int = 2,
    conv_kernel_size: int = 31,
) -> None:
    """The options of the Conformers' core (`_ConformerBase`)."""


class _ConformerBase(BandSplitModel):
    """The Conformers' core: axial conformers over the band tokens."""

    def _common_init(self, *, dim, depth, time_conformer_depth, freq_conformer_depth, linear_conformer_depth,
                     dim_head, heads, attn_dropout, ff_dropout, conv_dropout, ff_mult, conv_expansion_factor,
                     conv_kernel_size, **options):
        if dim_head % 2:
            raise ValueError(f"dim_head must be even for rotary positions, got {dim_head}")
        self._setup(**options)
        block = dict(heads=heads, dim_head=dim_head, ff_mult=ff_mult, attn_dropout=attn_dropout,
                     ff_dropout=ff_dropout, conv_dropout=conv_dropout, conv_expansion_factor=conv_expansion_factor,
                     conv_kernel_size=conv_kernel_size)
        # One rotary module per axis, shared by every attention on that axis (its `freqs`
        # appear under each attention's key in the state dict, as in the checkpoints).
        time_rope = RotaryEmbedding(dim_head)
        freq_rope = RotaryEmbedding(dim_head)
        self.layers = nn.ModuleList()
        for _ in range(depth):
            modules: List[nn.Module] = []
            if linear_conformer_depth > 0:
                # The reference's FeedForward here keeps its default width (4 * D), whatever ff_mult says.
                modules.append(LinearTransformer(dim=dim, depth=linear_conformer_depth, dim_head=dim_head,
                                                 heads=heads, attn_dropout=attn_dropout, ff_dropout=ff_dropout))
            modules.append(Conformer(dim=dim, depth=time_conformer_depth, rotary_embed=time_rope, **block))
            modules.append(Conformer(dim=dim, depth=freq_conformer_depth, rotary_embed=freq_rope, **block))
            self.layers.append(nn.ModuleList(modules))

    def _trunk(self, x: Tensor) -> Tensor:
        """The axial conformers over the token grid `[B, N, K, D]`."""
        bsz, frames, bands, dim = x.shape
        saved: List[Tensor] = []
        for block in self.layers:
            if len(block) == 3:
                x = block[0](x.reshape(bsz, frames * bands, dim)).view(bsz, frames, bands, dim)
            time_conformer, freq_conformer = block[-2], block[-1]
            if self.skip_connection:
                for earlier in saved:  # each layer also gets every earlier layer's output
                    x = x + earlier
            seqs = x.transpose(1, 2).reshape(bsz * bands, frames, dim)  # one sequence per band: [B*K, N, D]
            x = time_conformer(seqs).view(bsz, bands, frames, dim).transpose(1, 2)  # [B, N, K, D]
            seqs = x.reshape(bsz * frames, bands, dim)  # one sequence per frame: [B*N, K, D]
            x = freq_conformer(seqs).view(bsz, frames, bands, dim)
            if self.skip_connection:
                saved.append(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x

    def forward(self, mix: Tensor) -> Tensor:
        """Separate `mix` `[B, C, T]` into stems `[B, S, C, T]` (inference only)."""
        with torch.no_grad():
            spec_ri, window = self._spectrogram(mix)  # [B, N, F * C, 2]
            x = self._trunk(self._tokens(spec_ri))  # [B, N, K, D]
            # The mask heads write into fp32 work buffers: they run in fp32 also under autocast.
            with torch.autocast(device_type=mix.device.type, enabled=False):
                x = x.float().contiguous()
                masks = torch.stack([self.mask_estimators[i](x) for i in self.active_stems], dim=1)  # [B, S, N, sum]
            return self._separate(spec_ri, masks, window, mix.shape[-1])


class BSConformer(FixedBands, _ConformerBase):
    """BS-Conformer: fixed contiguous bands given by `freqs_per_bands`.

    Constructor arguments are those of the checkpoints' configs; training-only
    ones (dropouts, losses, checkpointing, kernel choices such as
    `sage_attention`) are accepted and have no effect. Extra: `sources` (stem
    names, default stem0..), `segment` (seconds per chunk, default 8),
    `sample_rate` (default 44100), `active_stems` (indices of the mask heads
    the forward runs, in output order; default all, as MSST's `active_stem_ids`).
    """

    @takes_options(fixed_band_options, conformer_options, band_split_options)
    def __init__(self, dim: int, *, depth: int, **options):
        super().__init__()
        self._common_init(dim=dim, depth=depth, **options)
        self.final_norm = RMSNorm(dim)
        # Both Conformers count mask_estimator_depth as Linear layers.
        self._layout(dim, options["freqs_per_bands"], options["mask_estimator_depth"],
                     options["mlp_expansion_factor"])


class MelBandConformer(MelBands, _ConformerBase):
    """Mel-Band Conformer: overlapping mel bands; masks averaged where bands overlap.

    Same extra arguments as `BSConformer`; `match_input_audio_length` is accepted
    (the output always has the input's length, which is what the reference gives
    for chunks that are a whole number of hops).
    """

    @takes_options(mel_band_options, conformer_options, band_split_options)
    def __init__(self, dim: int, *, depth: int, **options):
        super().__init__()
        self._common_init(dim=dim, depth=depth, **options)
        self.final_norm = None  # the Mel-Band Conformer has no norm after its last layer
        # Unlike the Mel-Band RoFormer, mask_estimator_depth counts Linear layers here too.
        member = mel_conformer_bands(options["sample_rate"], options["stft_n_fft"], options["num_bands"])
        self._layout(dim, member, options["mask_estimator_depth"], options["mlp_expansion_factor"])


__all__ = ["BSConformer", "MelBandConformer", "mel_conformer_bands"]
