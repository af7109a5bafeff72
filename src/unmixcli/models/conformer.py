"""BS-Conformer and Mel-Band Conformer (MSST's `bs_conformer` / `mel_band_conformer`).

They are the band-split RoFormers with each axial transformer replaced by a
Conformer: per layer, a half-step feed-forward, rotary self-attention, a
depthwise-convolution module, a second half-step feed-forward and an output
RMSNorm. The conformers run along time (one sequence of frames per band) and
then along frequency (one sequence of bands per frame), as the RoFormers do.

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

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cpu_kernels import Linear, linear, linear_gelu
from .roformer import DEFAULT_FREQS_PER_BANDS, BandSplit, MaskEstimator, RMSNorm, slaney_mel_filterbank

SAMPLERATE = 44100
DEFAULT_SEGMENT = 352800 / SAMPLERATE  # 8 s: audio.chunk_size of the published configs

# Tokens per group of sequences that one conformer layer processes at a time: every
# sequence is independent, and a bounded group keeps the widest temporaries (the
# feed-forward's 4 * D features, the convolution's 2 * I channels) at a few tens of MB.
_TOKENS_PER_GROUP = 16384


# --------------------------------------------------------------------------- layers


class RotaryEmbedding(nn.Module):
    """Rotary positions over interleaved feature pairs (2j, 2j + 1) of each head.

    Only the per-pair frequencies are stored (`freqs`, `[E // 2]`, non-trainable,
    as in the checkpoints); angles are computed per call for the length at hand.
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim_head must be even for rotary positions, got {dim}")
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def rotate(self, t: Tensor) -> Tensor:
        """Rotate `t` `[..., L, E]` by position along L; the result has `t`'s dtype.

        Each feature pair is one complex number, multiplied by `cos + i sin` of its
        angle. Angles and product are computed in the frequencies' precision (fp32),
        as the reference does, also when `t` comes from bf16 autocast.
        """
        pos = torch.arange(t.shape[-2], device=t.device, dtype=self.freqs.dtype)
        angles = pos[:, None] * self.freqs[None, :]  # [L, E/2]
        pairs = t.to(self.freqs.dtype).unflatten(-1, (-1, 2))  # [..., L, E/2, 2]
        if pairs.stride(-1) != 1 or pairs.storage_offset() % 2 or any(s % 2 for s in pairs.stride()[:-1]):
            pairs = pairs.contiguous()  # view_as_complex needs whole complex numbers in memory
        out = torch.view_as_real(torch.view_as_complex(pairs) * torch.complex(angles.cos(), angles.sin()))
        return out.flatten(-2).to(t.dtype)


class FeedForward(nn.Module):
    """RMSNorm, Linear to `mult * D`, GELU, Linear back to D."""

    def __init__(self, dim: int, mult: float = 4, dropout: float = 0.0):
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(
            RMSNorm(dim),
            Linear(dim, inner),
            nn.GELU(),
            nn.Dropout(dropout),
            Linear(inner, dim),
            nn.Dropout(dropout),
        )

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


class Attention(nn.Module):
    """Multi-head self-attention with rotary positions and a sigmoid gate per head."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0,
                 rotary_embed: Optional[RotaryEmbedding] = None):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        inner = heads * dim_head
        self.rotary_embed = rotary_embed
        self.attend = nn.Dropout(dropout)  # where the reference keeps its (parameter-free) kernel
        self.norm = RMSNorm(dim)
        self.to_qkv = Linear(dim, inner * 3, bias=False)
        self.to_gates = Linear(dim, heads)
        self.to_out = nn.Sequential(Linear(inner, dim, bias=False), nn.Dropout(dropout))

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
    """Which bins belong to which band, `[num_bands, n_fft // 2 + 1]` bool.

    A bin belongs to every band whose Slaney mel filter is positive there; the
    first filter's DC bin and the last filter's Nyquist bin (zero in the
    filterbank) are given a quarter of their neighbour's weight first, which
    puts them in those bands.
    """
    bank = slaney_mel_filterbank(sample_rate, n_fft, num_bands)
    bank[0, 0] = bank[0, 1] * 0.25
    bank[-1, -1] = bank[-1, -2] * 0.25
    member = bank > 0
    if not member.any(axis=0).all():
        raise ValueError("the mel bands leave some frequency bins uncovered")
    return member


# --------------------------------------------------------------------------- models


class _ConformerBase(nn.Module):
    """What the two types share: STFT front, axial conformers, masks, ISTFT back."""

    final_norm: Optional[RMSNorm]
    band_split: BandSplit
    mask_estimators: nn.ModuleList

    def _common_init(self, *, dim, depth, stereo, num_stems, time_conformer_depth, freq_conformer_depth,
                     linear_conformer_depth, dim_head, heads, attn_dropout, ff_dropout, conv_dropout,
                     stft_n_fft, stft_hop_length, stft_win_length, stft_normalized, stft_window_fn, zero_dc,
                     skip_connection, ff_mult, conv_expansion_factor, conv_kernel_size, active_stems, sources,
                     segment, sample_rate):
        self.stereo = bool(stereo)
        self.audio_channels = 2 if stereo else 1
        self.num_stems = int(num_stems)
        self.skip_connection = bool(skip_connection)
        self.zero_dc = bool(zero_dc)
        self.samplerate = int(sample_rate)
        # The mask heads the forward runs, in output order: all of them, or (MSST's
        # active_stem_ids) only the target's of a config with target_instrument.
        active = list(range(self.num_stems)) if active_stems is None else [int(i) for i in active_stems]
        if not active or any(not 0 <= i < self.num_stems for i in active):
            raise ValueError(f"active stems {active} are not among the model's {num_stems} heads")
        self.active_stems = active
        self.sources = list(sources) if sources is not None else [f"stem{i}" for i in active]
        if len(self.sources) != len(active):
            raise ValueError(f"{len(active)} output stems but {len(self.sources)} source names")
        # Seconds per forward chunk for the engine (audio.chunk_size; the loader passes it).
        self.segment = float(segment) if segment is not None else DEFAULT_SEGMENT
        self.stft_kwargs = dict(n_fft=stft_n_fft, hop_length=stft_hop_length, win_length=stft_win_length,
                                normalized=stft_normalized)
        self.stft_window_fn = stft_window_fn if stft_window_fn is not None else torch.hann_window
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

    @property
    def num_bins(self) -> int:
        return self.stft_kwargs["n_fft"] // 2 + 1

    def _bands_in(self, spec: Tensor) -> Tensor:
        """The bins each band reads: `[B, N, F * C, 2]` -> `[B, N, sum(band bins * C), 2]`."""
        raise NotImplementedError

    def _masks_out(self, masks: Tensor) -> Tensor:
        """Per-band masks `[B, S, N, sum(band bins * C), 2]` -> per-bin `[B, S, N, F * C, 2]`."""
        raise NotImplementedError

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
        if mix.dim() == 2:
            mix = mix[:, None]
        bsz, channels, length = mix.shape
        if channels != self.audio_channels:
            raise ValueError(f"expected {self.audio_channels} audio channel(s), got {channels}")
        with torch.no_grad():
            window = self.stft_window_fn(self.stft_kwargs["win_length"], device=mix.device)
            spec = torch.stft(mix.reshape(bsz * channels, length).float(), **self.stft_kwargs, window=window,
                              return_complex=True)  # [B*C, F, N]
            bins, frames = spec.shape[-2:]
            # Bins and channels interleave on one axis (bin f, channel c at f * C + c),
            # real and imaginary parts innermost: [B, N, F * C, 2].
            spec_ri = torch.view_as_real(spec).view(bsz, channels, bins, frames, 2)
            spec_ri = spec_ri.permute(0, 3, 2, 1, 4).reshape(bsz, frames, bins * channels, 2)

            x = self.band_split(self._bands_in(spec_ri).reshape(bsz, frames, -1))  # [B, N, K, D]
            x = self._trunk(x)
            # The mask heads write into fp32 work buffers: they run in fp32 also under autocast.
            with torch.autocast(device_type=mix.device.type, enabled=False):
                x = x.float().contiguous()
                masks = torch.stack([self.mask_estimators[i](x) for i in self.active_stems], dim=1)  # [B, S, N, sum]
            stems = len(self.active_stems)
            masks = self._masks_out(masks.view(bsz, stems, frames, -1, 2))  # [B, S, N, F*C, 2]

            out = torch.view_as_complex(spec_ri)[:, None] * torch.view_as_complex(masks.contiguous())  # [B, S, N, F*C]
            out = out.view(bsz, stems, frames, bins, channels).permute(0, 1, 4, 3, 2)
            out = out.reshape(-1, bins, frames)  # [B*S*C, F, N]
            if self.zero_dc:
                out[:, 0] = 0
            audio = torch.istft(out, **self.stft_kwargs, window=window, length=length)  # [B*S*C, T]
            return audio.view(bsz, stems, channels, length)


class BSConformer(_ConformerBase):
    """BS-Conformer: fixed contiguous bands given by `freqs_per_bands`.

    Constructor arguments are those of the checkpoints' configs; training-only
    ones (dropouts, losses, checkpointing, kernel choices such as
    `sage_attention`) are accepted and have no effect. Extra: `sources` (stem
    names, default stem0..), `segment` (seconds per chunk, default 8),
    `sample_rate` (default 44100), `active_stems` (indices of the mask heads
    the forward runs, in output order; default all, as MSST's `active_stem_ids`).
    """

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        stereo: bool = False,
        num_stems: int = 1,
        time_conformer_depth: int = 2,
        freq_conformer_depth: int = 2,
        linear_conformer_depth: int = 0,
        freqs_per_bands: Tuple[int, ...] = DEFAULT_FREQS_PER_BANDS,
        dim_head: int = 64,
        heads: int = 8,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        conv_dropout: Optional[float] = None,
        flash_attn: bool = True,
        dim_freqs_in: int = 1025,
        stft_n_fft: int = 2048,
        stft_hop_length: int = 512,
        stft_win_length: int = 2048,
        stft_normalized: bool = False,
        stft_window_fn: Optional[Callable] = None,
        zero_dc: bool = True,
        mask_estimator_depth: int = 2,
        multi_stft_resolution_loss_weight: float = 1.0,
        multi_stft_resolutions_window_sizes: Tuple[int, ...] = (4096, 2048, 1024, 512, 256),
        multi_stft_hop_size: int = 147,
        multi_stft_normalized: bool = False,
        multi_stft_window_fn: Callable = torch.hann_window,
        mlp_expansion_factor: int = 4,
        use_torch_checkpoint: bool = False,
        skip_connection: bool = False,
        ff_mult: float = 4,
        conv_expansion_factor: int = 2,
        conv_kernel_size: int = 31,
        sage_attention: bool = False,
        active_stems: Optional[Sequence[int]] = None,
        sources: Optional[Sequence[str]] = None,
        segment: Optional[float] = None,
        sample_rate: int = SAMPLERATE,
    ):
        super().__init__()
        self._common_init(
            dim=dim, depth=depth, stereo=stereo, num_stems=num_stems, time_conformer_depth=time_conformer_depth,
            freq_conformer_depth=freq_conformer_depth, linear_conformer_depth=linear_conformer_depth,
            dim_head=dim_head, heads=heads, attn_dropout=attn_dropout, ff_dropout=ff_dropout,
            conv_dropout=conv_dropout, stft_n_fft=stft_n_fft, stft_hop_length=stft_hop_length,
            stft_win_length=stft_win_length, stft_normalized=stft_normalized, stft_window_fn=stft_window_fn,
            zero_dc=zero_dc, skip_connection=skip_connection, ff_mult=ff_mult,
            conv_expansion_factor=conv_expansion_factor, conv_kernel_size=conv_kernel_size,
            active_stems=active_stems, sources=sources, segment=segment, sample_rate=sample_rate,
        )
        self.final_norm = RMSNorm(dim)
        freqs_per_bands = tuple(int(f) for f in freqs_per_bands)
        if len(freqs_per_bands) < 2:
            raise ValueError("BS-Conformer needs at least two bands")
        if sum(freqs_per_bands) != self.num_bins:
            raise ValueError(f"freqs_per_bands covers {sum(freqs_per_bands)} bins, the STFT has {self.num_bins}")
        self.freqs_per_bands = freqs_per_bands
        band_dims = tuple(2 * f * self.audio_channels for f in freqs_per_bands)
        self.band_split = BandSplit(dim, band_dims)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(dim, band_dims, depth=mask_estimator_depth, mlp_expansion_factor=mlp_expansion_factor)
            for _ in range(num_stems)
        )

    def _bands_in(self, spec: Tensor) -> Tensor:
        return spec  # the bands tile the bins in order

    def _masks_out(self, masks: Tensor) -> Tensor:
        return masks


class MelBandConformer(_ConformerBase):
    """Mel-Band Conformer: overlapping mel bands; masks averaged where bands overlap.

    Same extra arguments as `BSConformer`; `match_input_audio_length` is accepted
    (the output always has the input's length, which is what the reference gives
    for chunks that are a whole number of hops).
    """

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        stereo: bool = False,
        num_stems: int = 1,
        time_conformer_depth: int = 2,
        freq_conformer_depth: int = 2,
        linear_conformer_depth: int = 0,
        num_bands: int = 60,
        dim_head: int = 64,
        heads: int = 8,
        attn_dropout: float = 0.1,
        ff_dropout: float = 0.1,
        conv_dropout: Optional[float] = None,
        flash_attn: bool = True,
        dim_freqs_in: int = 1025,
        sample_rate: int = SAMPLERATE,
        stft_n_fft: int = 2048,
        stft_hop_length: int = 512,
        stft_win_length: int = 2048,
        stft_normalized: bool = False,
        stft_window_fn: Optional[Callable] = None,
        zero_dc: bool = True,
        mask_estimator_depth: int = 1,
        multi_stft_resolution_loss_weight: float = 1.0,
        multi_stft_resolutions_window_sizes: Tuple[int, ...] = (4096, 2048, 1024, 512, 256),
        multi_stft_hop_size: int = 147,
        multi_stft_normalized: bool = False,
        multi_stft_window_fn: Callable = torch.hann_window,
        match_input_audio_length: bool = False,
        mlp_expansion_factor: int = 4,
        use_torch_checkpoint: bool = False,
        skip_connection: bool = False,
        ff_mult: float = 4,
        conv_expansion_factor: int = 2,
        conv_kernel_size: int = 31,
        sage_attention: bool = False,
        active_stems: Optional[Sequence[int]] = None,
        sources: Optional[Sequence[str]] = None,
        segment: Optional[float] = None,
    ):
        super().__init__()
        self._common_init(
            dim=dim, depth=depth, stereo=stereo, num_stems=num_stems, time_conformer_depth=time_conformer_depth,
            freq_conformer_depth=freq_conformer_depth, linear_conformer_depth=linear_conformer_depth,
            dim_head=dim_head, heads=heads, attn_dropout=attn_dropout, ff_dropout=ff_dropout,
            conv_dropout=conv_dropout, stft_n_fft=stft_n_fft, stft_hop_length=stft_hop_length,
            stft_win_length=stft_win_length, stft_normalized=stft_normalized, stft_window_fn=stft_window_fn,
            zero_dc=zero_dc, skip_connection=skip_connection, ff_mult=ff_mult,
            conv_expansion_factor=conv_expansion_factor, conv_kernel_size=conv_kernel_size,
            active_stems=active_stems, sources=sources, segment=segment, sample_rate=sample_rate,
        )
        self.final_norm = None
        member = torch.from_numpy(mel_conformer_bands(sample_rate, stft_n_fft, num_bands))  # [K, F]
        if member.shape[1] != self.num_bins:
            raise ValueError("mel filterbank and STFT disagree on the number of bins")
        # Bins of band 0, then band 1, ... (a bin may appear in several bands); each bin
        # brings all its channels, interleaved as on the spectrogram's F * C axis.
        bin_index = torch.arange(self.num_bins).expand(num_bands, -1)[member]
        channels = self.audio_channels
        index = (bin_index[:, None] * channels + torch.arange(channels)[None, :]).reshape(-1)
        self.register_buffer("freq_indices", index, persistent=False)
        self.register_buffer("freqs_per_band", member, persistent=False)
        self.register_buffer("num_freqs_per_band", member.sum(dim=1), persistent=False)
        self.register_buffer("num_bands_per_freq", member.sum(dim=0), persistent=False)
        band_dims = tuple(2 * int(n) * channels for n in member.sum(dim=1).tolist())
        self.band_split = BandSplit(dim, band_dims)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(dim, band_dims, depth=mask_estimator_depth, mlp_expansion_factor=mlp_expansion_factor)
            for _ in range(num_stems)
        )

    def _bands_in(self, spec: Tensor) -> Tensor:
        return spec.index_select(2, self.freq_indices)

    def _masks_out(self, masks: Tensor) -> Tensor:
        bsz, stems, frames, _, _ = masks.shape
        summed = masks.new_zeros(bsz, stems, frames, self.num_bins * self.audio_channels, 2)
        summed.index_add_(3, self.freq_indices, masks)
        counts = self.num_bands_per_freq.repeat_interleave(self.audio_channels).to(masks.dtype)  # [F*C]
        return summed.div_(counts[:, None])


__all__ = ["BSConformer", "MelBandConformer", "mel_conformer_bands"]
