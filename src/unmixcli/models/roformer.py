"""Band-split RoFormer (BS-RoFormer) and Mel-Band RoFormer.

The module tree, constructor arguments and parameter names follow the layout
of the community checkpoints (Music-Source-Separation-Training, and
lucidrains' `bs-roformer` 0.3.x, which shares it), so their state dicts load
strictly, key for key. Where the two codes behave differently, MSST's is
followed (msst 0.1.0: the inference the community checkpoints are published
and scored with): the DC bin of the output is zeroed unless a config sets
`zero_dc: false`, and a config's target head alone can be run (`active_stems`).
The forward pass is ours and written for inference:

* the token grid stays in one `[B, N, K, D]` layout (N frames, K bands) the
  whole way through; the time and frequency transformers only differ in how
  queries, keys and values are gathered for attention, so the grid is never
  transposed back and forth between the two;
* residual updates, activations and norms run in place on reused work
  buffers (large temporaries otherwise cost a fresh zeroed mapping from the
  allocator on every layer);
* rotary tables are built once per forward and axis, and applied to queries
  and keys as one complex multiplication that also writes the layout
  attention wants;
* attention is `scaled_dot_product_attention`.

The pieces around the sequence core (`BandSplitModel`: options, STFT front,
masks and ISTFT back; the band layouts `FixedBands` and `MelBands`) are shared
with the BS-/Mel-Band Conformers (`models/conformer.py`).

Shapes: B batch, S stems, C audio channels, T samples, F frequency bins,
N STFT frames, K bands, D model width, H heads, E head width.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cpu_kernels import Linear

SAMPLERATE = 44100
DEFAULT_SEGMENT = 352800 / SAMPLERATE  # 8 s: audio.chunk_size of most released configs

# BS-RoFormer's default split of the 1025 bins of a 2048-point STFT into 62 bands.
DEFAULT_FREQS_PER_BANDS: Tuple[int, ...] = (
    (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)
)


# --------------------------------------------------------------------------- mel bands


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (float64)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear_step = 200.0 / 3.0
    knee_hz = 1000.0
    knee_mel = knee_hz / linear_step
    log_step = math.log(6.4) / 27.0
    mel = hz / linear_step
    above = hz >= knee_hz
    mel = np.where(above, knee_mel + np.log(np.where(above, hz, knee_hz) / knee_hz) / log_step, mel)
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of `_hz_to_mel` (float64)."""
    mel = np.asarray(mel, dtype=np.float64)
    linear_step = 200.0 / 3.0
    knee_hz = 1000.0
    knee_mel = knee_hz / linear_step
    log_step = math.log(6.4) / 27.0
    hz = linear_step * mel
    above = mel >= knee_mel
    return np.where(above, knee_hz * np.exp(log_step * (mel - knee_mel)), hz)


def slaney_mel_filterbank(
    sample_rate: float, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: Optional[float] = None
) -> np.ndarray:
    """Triangular mel filters with Slaney area normalisation, `[n_mels, n_fft // 2 + 1]` float32.

    Numerically the same filterbank as `librosa.filters.mel` with its defaults
    (slaney scale and norm), which Mel-Band RoFormer uses to define its bands:
    the triangles are computed in float64, stored as float32, then scaled.
    """
    if fmax is None:
        fmax = sample_rate / 2.0
    n_bins = n_fft // 2 + 1
    bin_hz = np.arange(n_bins, dtype=np.float64) * (float(sample_rate) / n_fft)
    # n_mels + 2 edges, evenly spaced on the mel axis.
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges_hz)
    offsets = edges_hz[:, None] - bin_hz[None, :]  # [n_mels + 2, n_bins]
    bank = np.zeros((n_mels, n_bins), dtype=np.float32)
    for m in range(n_mels):
        rising = -offsets[m] / widths[m]
        falling = offsets[m + 2] / widths[m + 1]
        bank[m] = np.maximum(0.0, np.minimum(rising, falling))
    bank *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return bank


def mel_band_membership(sample_rate: int, n_fft: int, num_bands: int,
                        corner_share: Optional[float] = None) -> np.ndarray:
    """Which bins belong to which mel band, `[num_bands, n_fft // 2 + 1]` bool.

    A bin belongs to every band whose filter is positive there. The lowest bin
    (weight 0 in the first filter) and the Nyquist bin (weight ~0, rounding to
    exactly 0 on some platforms) are put into the first and last band so that
    every bin is covered. How differs by model type, and matters where a corner
    weight of 0 stays 0: the Mel-Band RoFormer sets both weights to 1 (the
    default, `corner_share=None`); the Mel-Band Conformer sets each to
    `corner_share` (1/4) times its neighbour's weight.
    """
    bank = slaney_mel_filterbank(sample_rate, n_fft, num_bands)
    if corner_share is None:
        bank[0, 0] = 1.0
        bank[-1, -1] = 1.0
    else:
        bank[0, 0] = bank[0, 1] * corner_share
        bank[-1, -1] = bank[-1, -2] * corner_share
    member = bank > 0
    if not member.any(axis=0).all():
        raise ValueError("mel bands leave some frequency bins uncovered")
    return member


# --------------------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    """`x / ||x|| * sqrt(D) * gamma` over the last axis."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * (self.gamma * self.scale)

    def into(self, x: Tensor, out: Tensor) -> Tensor:
        """Normalise `x` into the preallocated `out` (may be `x` itself)."""
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(1e-12)
        torch.div(x, norm, out=out)
        return out.mul_(self.gamma * self.scale)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over interleaved pairs of head features.

    Only the per-pair frequencies are stored (`freqs`, `[E / 2]`, a
    non-trainable parameter as in the checkpoints); angle tables are built
    per forward for the sequence length at hand.
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def table(self, length: int, device, dtype) -> Tensor:
        """`cos + i sin` of the angle of pair j at position i, complex `[length, E / 2]`.

        Viewing each feature pair (2j, 2j+1) as one complex number, rotating
        it is a single complex multiplication by this table.
        """
        pos = torch.arange(length, device=device, dtype=self.freqs.dtype)
        angles = pos[:, None] * self.freqs[None, :]
        return torch.complex(angles.cos().to(dtype), angles.sin().to(dtype))

    def rotate(self, t: Tensor) -> Tensor:
        """Rotate `t` `[..., L, E]` by position along L; the result has `t`'s dtype.

        Angles and product are computed in the frequencies' precision (fp32), also
        when `t` comes from bf16 autocast (for the models that rotate per call
        instead of through `table`).
        """
        pairs = t.to(self.freqs.dtype).unflatten(-1, (-1, 2))  # [..., L, E/2, 2]
        if pairs.stride(-1) != 1 or pairs.storage_offset() % 2 or any(s % 2 for s in pairs.stride()[:-1]):
            pairs = pairs.contiguous()  # view_as_complex needs whole complex numbers in memory
        table = self.table(t.shape[-2], t.device, self.freqs.dtype)  # [L, E/2]
        return torch.view_as_real(torch.view_as_complex(pairs) * table).flatten(-2).to(t.dtype)


class FeedForward(nn.Module):
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

    # Tokens per block: each token is independent here, and a block's hidden
    # activations ([2048, 4 * D]) stay in cache between the two matmuls.
    block = 2048

    def residual_(self, x: Tensor, ws: "_Workspace", add: bool = True) -> None:
        """`x += net(x)` in place (`add=False`: `x = net(x)`); `x` is `[M, D]` contiguous."""
        norm, up, _, _, down, _ = self.net
        for start in range(0, x.shape[0], self.block):
            xb = x[start:start + self.block]  # [m, D], contiguous
            h = norm.into(xb, ws.get("ff_in", xb.shape, xb))
            u = ws.get("ff_hidden", (xb.shape[0], up.out_features), xb)
            torch.addmm(up.bias, h, up.weight.t(), out=u)
            torch.ops.aten.gelu_(u)
            if add:
                xb.add_(down.bias)
                xb.addmm_(u, down.weight.t())
            else:  # xb was only read through h
                torch.addmm(down.bias, u, down.weight.t(), out=xb)


class Attention(nn.Module):
    """Gated multi-head self-attention with rotary positions.

    `value_residual_mix` (MSST's experimental value residual learning): each token's
    values move towards given earlier values by a learned per-head share,
    `v + sigmoid(W x) * (v_earlier - v)`.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        rotary_embed: Optional[RotaryEmbedding] = None,
        flash: bool = True,
        value_residual_mix: bool = False,
    ):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head ** -0.5
        inner = heads * dim_head
        self.rotary_embed = rotary_embed
        self.attend = nn.Dropout(dropout)  # placeholder for the reference's (parameter-free) kernel
        self.norm = RMSNorm(dim)
        self.to_qkv = Linear(dim, inner * 3, bias=False)
        self.to_value_residual_mix = Linear(dim, heads) if value_residual_mix else None
        self.to_gates = Linear(dim, heads)
        self.to_out = nn.Sequential(Linear(inner, dim, bias=False), nn.Dropout(dropout))

    # Tokens per block for the per-token work around attention (norm, projections,
    # gating): a block's activations stay in cache from one step to the next.
    block = 2048

    def residual_(self, x: Tensor, axis: str, grid: Tuple[int, int, int], rope, ws: "_Workspace",
                  add: bool = True, value_residual: Optional[Tensor] = None,
                  keep_values: bool = False) -> Optional[Tensor]:
        """`x += attention(x)` in place (`add=False`: `x = attention(x)`), attending along one
        axis of the token grid.

        `value_residual`: earlier values (as returned with `keep_values`) that this layer's
        values are mixed with (`value_residual_mix`). Returns a copy of this layer's own
        values (time `[B, K, H, N, E]`, freq `[B, N, H, K, E]`) with `keep_values`, else None.

        Args:
            x: `[M, D]` contiguous, M = B * N * K tokens in (B, N, K) order.
            axis: "time" (sequences over N, one per band) or "freq" (over K, one per frame).
            grid: (B, N, K).
            rope: the rotary table (complex `[L, E/2]`) for the sequence length L, or None.
        """
        bsz, frames, bands = grid
        heads, width = self.heads, self.dim_head
        inner = heads * width
        time_axis = axis == "time"
        x4 = x.view(bsz, frames, bands, -1)
        step = max(1, self.block // bands)  # frames per block
        blocks = [(b, n0, min(frames, n0 + step)) for b in range(bsz) for n0 in range(0, frames, step)]

        # Queries, keys, values gathered per attention sequence:
        # time: [3, B, K, H, N, E] (one sequence of N frames per batch, band, head);
        # freq: [3, B, N, H, K, E] (one sequence of K bands per batch, frame, head).
        if time_axis:
            heads_shape = (3, bsz, bands, heads, frames, width)
        else:
            heads_shape = (3, bsz, frames, heads, bands, width)
        qkv_heads = ws.get("qkv_heads", heads_shape, x)
        gates = ws.get("gates", (bsz, frames, bands, heads), x)
        mixing = self.to_value_residual_mix is not None
        if mixing and value_residual is None:
            raise ValueError("this attention layer mixes in earlier values, and none were given")
        shares = ws.get("value_shares", (bsz, frames, bands, heads), x) if mixing else None
        for b, n0, n1 in blocks:
            xb = x4[b, n0:n1].reshape(-1, x.shape[1])  # [m, D] view, m = (n1 - n0) * K
            h = self.norm.into(xb, ws.get("attn_in", xb.shape, x))
            qkv = ws.get("qkv", (xb.shape[0], 3 * inner), x)
            torch.mm(h, self.to_qkv.weight.t(), out=qkv)
            torch.addmm(self.to_gates.bias, h, self.to_gates.weight.t(), out=gates[b, n0:n1].view(-1, heads))
            if mixing:
                mix = self.to_value_residual_mix
                torch.addmm(mix.bias, h, mix.weight.t(), out=shares[b, n0:n1].view(-1, heads))
            qkv5 = qkv.view(n1 - n0, bands, 3, heads, width)
            if time_axis:
                src = qkv5.permute(2, 1, 3, 0, 4)  # [3, K, H, n, E]
                dst = qkv_heads[:, b, :, :, n0:n1]
                table = rope[n0:n1] if rope is not None else None
            else:
                src = qkv5.permute(2, 0, 3, 1, 4)  # [3, n, H, K, E]
                dst = qkv_heads[:, b, n0:n1]
                table = rope
            if table is not None:
                # Rotate queries and keys while gathering them: each feature pair
                # (2j, 2j+1) as one complex number, times the table.
                qk = torch.view_as_complex(src[:2].unflatten(-1, (width // 2, 2)))
                torch.mul(qk, table, out=torch.view_as_complex(dst[:2].unflatten(-1, (width // 2, 2))))
                dst[2].copy_(src[2])
            else:
                dst.copy_(src)
        gates.sigmoid_()
        values = qkv_heads[2]  # time: [B, K, H, N, E]; freq: [B, N, H, K, E]
        kept = values.clone() if keep_values else None
        if mixing:
            # shares [B, N, K, H] laid out as the values, one per token and head
            share = shares.sigmoid_().permute(0, 2, 3, 1) if time_axis else shares.sigmoid_().permute(0, 1, 3, 2)
            values.lerp_(value_residual, share[..., None])

        seqs, length = (bsz * bands, frames) if time_axis else (bsz * frames, bands)
        q, k, v = (t.view(seqs, heads, length, width) for t in qkv_heads.unbind(0))
        out = F.scaled_dot_product_attention(q, k, v)  # [seqs, H, L, E]
        out = out.unflatten(0, (bsz, -1))  # time: [B, K, H, N, E]; freq: [B, N, H, K, E]

        for b, n0, n1 in blocks:
            # Gate each head and lay the heads out per token again: [n, K, H, E].
            merged = ws.get("attn_out", (n1 - n0, bands, heads, width), x)
            gate = gates[b, n0:n1, ..., None]  # [n, K, H, 1]
            if time_axis:
                torch.mul(out[b, :, :, n0:n1], gate.permute(1, 2, 0, 3), out=merged.permute(1, 2, 0, 3))
            else:
                torch.mul(out[b, n0:n1], gate.permute(0, 2, 1, 3), out=merged.permute(0, 2, 1, 3))
            xb = x4[b, n0:n1].reshape(-1, x.shape[1])
            if add:
                xb.addmm_(merged.view(xb.shape[0], inner), self.to_out[0].weight.t())
            else:  # queries, keys, values and gates were all taken from x above
                torch.mm(merged.view(xb.shape[0], inner), self.to_out[0].weight.t(), out=xb)
        return kept


class Transformer(nn.Module):
    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        dim_head: int = 64,
        heads: int = 8,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        ff_mult: float = 4,
        norm_output: bool = True,
        rotary_embed: Optional[RotaryEmbedding] = None,
        flash_attn: bool = True,
        value_residual_mix: bool = False,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    Attention(dim, heads=heads, dim_head=dim_head, dropout=attn_dropout,
                              rotary_embed=rotary_embed, flash=flash_attn, value_residual_mix=value_residual_mix),
                    FeedForward(dim, mult=ff_mult, dropout=ff_dropout),
                ]
            )
            for _ in range(depth)
        )
        self.norm = RMSNorm(dim) if norm_output else nn.Identity()
        # False: each layer replaces x instead of adding to it (see `experimental_residuals`).
        self.residual = True

    def run_(self, x: Tensor, axis: str, grid: Tuple[int, int, int], ropes: dict, ws: "_Workspace",
             value_residual: Optional[Tensor] = None, keep_values: bool = False) -> Optional[Tensor]:
        """Apply every layer to the token grid `x` (`[M, D]`) in place.

        `value_residual`: earlier values every layer mixes in (see `Attention`); with
        `keep_values`, returns the first layer's own values (else None).
        """
        kept = None
        for index, (attn, ff) in enumerate(self.layers):
            rope = None
            if attn.rotary_embed is not None:
                rope = ropes.get((axis, id(attn.rotary_embed)))
                if rope is None:
                    length = grid[1] if axis == "time" else grid[2]
                    rope = attn.rotary_embed.table(length, x.device, x.dtype)
                    ropes[(axis, id(attn.rotary_embed))] = rope
            values = attn.residual_(x, axis, grid, rope, ws, add=self.residual, value_residual=value_residual,
                                    keep_values=keep_values and index == 0)
            kept = values if index == 0 else kept
            ff.residual_(x, ws, add=self.residual)
        if isinstance(self.norm, RMSNorm):
            self.norm.into(x, x)
        return kept


class BandSplit(nn.Module):
    """Per-band RMSNorm + Linear from the band's bins to D features."""

    def __init__(self, dim: int, dim_inputs: Tuple[int, ...]):
        super().__init__()
        self.dim_inputs = tuple(dim_inputs)
        self.to_features = nn.ModuleList(
            nn.Sequential(RMSNorm(d), Linear(d, dim)) for d in self.dim_inputs
        )

    def forward(self, x: Tensor) -> Tensor:
        """`[B, N, sum(dim_inputs)]` -> `[B, N, K, D]`."""
        parts = [net(chunk) for chunk, net in zip(x.split(self.dim_inputs, dim=-1), self.to_features)]
        return torch.stack(parts, dim=-2)


def MLP(dim_in: int, dim_out: int, dim_hidden: Optional[int] = None, depth: int = 1,
        activation: Callable[[], nn.Module] = nn.Tanh) -> nn.Sequential:
    """Linear layers of widths `dim_in, hidden x (depth - 1), dim_out` with `activation` between."""
    hidden = dim_in if dim_hidden is None else dim_hidden
    widths = [dim_in] + [hidden] * (depth - 1) + [dim_out]
    layers: List[nn.Module] = []
    for i in range(len(widths) - 1):
        if i:
            layers.append(activation())
        layers.append(Linear(widths[i], widths[i + 1]))
    return nn.Sequential(*layers)


class MaskEstimator(nn.Module):
    """Per-band MLP + GLU from D features back to the band's (complex) bins.

    `depth` is the number of Linear layers of each band's MLP. The two
    families read their config's `mask_estimator_depth` differently (BS: the
    number of Linear layers; Mel: the number of hidden layers, one Linear
    more), so each model resolves it before building this.
    """

    def __init__(self, dim: int, dim_inputs: Tuple[int, ...], depth: int, mlp_expansion_factor: int = 4):
        super().__init__()
        self.dim_inputs = tuple(dim_inputs)
        hidden = dim * mlp_expansion_factor
        self.to_freqs = nn.ModuleList(
            nn.Sequential(MLP(dim, d * 2, dim_hidden=hidden, depth=depth), nn.GLU(dim=-1))
            for d in self.dim_inputs
        )

    def forward(self, x: Tensor, ws: Optional["_Workspace"] = None) -> Tensor:
        """`[B, N, K, D]` (contiguous) -> `[B, N, sum(dim_inputs)]`."""
        ws = ws if ws is not None else _Workspace()
        bsz, frames, bands, dim = x.shape
        rows = bsz * frames
        tokens = x.view(rows, bands, dim)
        out = x.new_empty(rows, sum(self.dim_inputs))
        offset = 0
        for band, (mlp_glu, width) in enumerate(zip(self.to_freqs, self.dim_inputs)):
            linears = [m for m in mlp_glu[0] if isinstance(m, nn.Linear)]
            h = tokens[:, band]  # [rows, D], rows strided by K * D
            for i, lin in enumerate(linears[:-1]):
                buf = ws.get(f"mask_hidden{i % 2}", (rows, lin.out_features), x)
                torch.addmm(lin.bias, h, lin.weight.t(), out=buf)
                h = buf.tanh_()
            last = linears[-1]
            y = torch.addmm(last.bias, h, last.weight.t())  # [rows, 2 * width]
            value, gate = y.split(width, dim=-1)
            torch.mul(value, gate.sigmoid_(), out=out[:, offset:offset + width])
            offset += width
        return out.view(bsz, frames, -1)


class _Workspace:
    """Named scratch memory reused across the layers of one forward.

    Each name owns one flat block, grown when needed and viewed in whatever
    shape the caller asks for (the time and frequency layers view the same
    block in different orders).
    """

    def __init__(self):
        self._bufs: Dict[str, Tensor] = {}

    def get(self, name: str, shape, like: Tensor) -> Tensor:
        shape = tuple(int(s) for s in shape)
        numel = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            buf = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._bufs[name] = buf
        return buf[:numel].view(shape)


# --------------------------------------------------------------------------- band-split models


def band_split_options(
    *,
    stereo: bool = False,
    num_stems: int = 1,
    dim_head: int = 64,
    heads: int = 8,
    flash_attn: bool = True,
    dim_freqs_in: int = 1025,
    stft_n_fft: int = 2048,
    stft_hop_length: int = 512,
    stft_win_length: int = 2048,
    stft_normalized: bool = False,
    stft_window_fn: Optional[Callable] = None,
    zero_dc: bool = True,
    multi_stft_resolution_loss_weight: float = 1.0,
    multi_stft_resolutions_window_sizes: Tuple[int, ...] = (4096, 2048, 1024, 512, 256),
    multi_stft_hop_size: int = 147,
    multi_stft_normalized: bool = False,
    multi_stft_window_fn: Callable = torch.hann_window,
    mlp_expansion_factor: int = 4,
    use_torch_checkpoint: bool = False,
    skip_connection: bool = False,
    sage_attention: bool = False,
    active_stems: Optional[Sequence[int]] = None,
    sources: Optional[Sequence[str]] = None,
    segment: Optional[float] = None,
    sample_rate: int = SAMPLERATE,
) -> None:
    """The config options (with MSST's defaults) of every band-split model here, whatever
    its band layout and core; see `BandSplitModel`."""


def fixed_band_options(
    *,
    freqs_per_bands: Tuple[int, ...] = DEFAULT_FREQS_PER_BANDS,
    attn_dropout: float = 0.0,
    ff_dropout: float = 0.0,
    mask_estimator_depth: int = 2,
) -> None:
    """The options of the BS- types' layout, and the defaults their MSST classes give the
    dropouts and the mask depth (`FixedBands`)."""


def mel_band_options(
    *,
    num_bands: int = 60,
    attn_dropout: float = 0.1,
    ff_dropout: float = 0.1,
    mask_estimator_depth: int = 1,
    match_input_audio_length: bool = False,
) -> None:
    """The options of the Mel- types' layout, and the defaults their MSST classes give the
    dropouts and the mask depth (`MelBands`). `match_input_audio_length` is accepted for
    compatibility: the output always has the input's length."""


def roformer_options(
    *,
    time_transformer_depth: int = 2,
    freq_transformer_depth: int = 2,
    linear_transformer_depth: int = 0,
    use_pope: bool = False,
    experimental_residuals: bool = False,
    value_residuals: bool = False,
) -> None:
    """The options of the RoFormers' core (`_RoformerBase`)."""


def takes_options(*groups: Callable[..., None]) -> Callable:
    """Decorator for a model's `__init__(self, dim, *, depth, **options)`: `options` are the
    keyword parameters of the `groups` (functions that only declare them).

    The signature it gets lists them all after its own (the loaders read it to refuse
    config keys a model does not have), an unknown keyword is a TypeError as usual, and
    `options` arrives complete, the defaults filled in. A model type is thus its band
    layout's, its core's and the shared option groups, each declared once.
    """

    def wrap(init: Callable) -> Callable:
        own = inspect.signature(init)
        params = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        params += [p for group in groups for p in inspect.signature(group).parameters.values()]
        signature = own.replace(parameters=params)  # ValueError if a name is declared twice

        @functools.wraps(init)
        def __init__(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return init(**bound.arguments)

        __init__.__signature__ = signature  # type: ignore[attr-defined]
        return __init__

    return wrap


class BandSplitModel(nn.Module):
    """What every band-split model here has around its sequence core.

    The RoFormers (axial transformers) and the Conformers (axial conformers) are
    this, one band layout (`FixedBands` or `MelBands`: which bins each band reads,
    the per-band `band_split` in and `mask_estimators` out) and a core (`layers`,
    `_trunk`). Here: the options they all have, the STFT front and the masks and
    ISTFT back.
    """

    final_norm: Optional[RMSNorm]
    band_split: BandSplit
    mask_estimators: nn.ModuleList

    def _setup(self, *, stereo, num_stems, active_stems, sources, segment, sample_rate, zero_dc,
               skip_connection, stft_n_fft, stft_hop_length, stft_win_length, stft_normalized, stft_window_fn,
               **_others) -> None:
        """Set the options every band-split model reads (the others are the core's, the
        layout's, or training-only)."""
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
        # Seconds per forward chunk for the engine; MSST configs say so in
        # audio.chunk_size (the loader passes it); 8 s is the common value.
        self.segment = float(segment) if segment is not None else DEFAULT_SEGMENT
        self.stft_kwargs = dict(n_fft=stft_n_fft, hop_length=stft_hop_length, win_length=stft_win_length,
                                normalized=stft_normalized)
        self.stft_window_fn = stft_window_fn if stft_window_fn is not None else torch.hann_window

    @property
    def num_bins(self) -> int:
        return self.stft_kwargs["n_fft"] // 2 + 1

    def _window(self, device) -> Tensor:
        return self.stft_window_fn(self.stft_kwargs["win_length"], device=device)

    def _bands_in(self, spec: Tensor) -> Tensor:
        """Pick the bins each band reads: `[B, N, F * C, 2]` -> `[B, N, sum(band bins * C), 2]`."""
        raise NotImplementedError

    def _masks_out(self, masks: Tensor) -> Tensor:
        """Per-band masks `[B, S, N, sum(band bins * C), 2]` -> per-bin `[B, S, N, F * C, 2]`."""
        raise NotImplementedError

    def _spectrogram(self, mix: Tensor) -> Tuple[Tensor, Tensor]:
        """`mix` `[B, C, T]` (or `[B, T]`) -> its spectrogram `[B, N, F * C, 2]` and the STFT window.

        Bins and channels interleave on one axis (bin f, channel c at f * C + c),
        real and imaginary parts innermost.
        """
        if mix.dim() == 2:
            mix = mix[:, None]
        bsz, channels, length = mix.shape
        if channels != self.audio_channels:
            raise ValueError(f"expected {self.audio_channels} audio channel(s), got {channels}")
        window = self._window(mix.device)
        spec = torch.stft(mix.reshape(bsz * channels, length).float(), **self.stft_kwargs, window=window,
                          return_complex=True)  # [B*C, F, N]
        bins, frames = spec.shape[-2:]
        spec_ri = torch.view_as_real(spec).view(bsz, channels, bins, frames, 2)
        return spec_ri.permute(0, 3, 2, 1, 4).reshape(bsz, frames, bins * channels, 2), window

    def _tokens(self, spec_ri: Tensor) -> Tensor:
        """The spectrogram `[B, N, F * C, 2]` as the band tokens `[B, N, K, D]`."""
        bsz, frames = spec_ri.shape[:2]
        return self.band_split(self._bands_in(spec_ri).reshape(bsz, frames, -1))

    def _separate(self, spec_ri: Tensor, masks: Tensor, window: Tensor, length: int) -> Tensor:
        """Apply the active heads' band masks `[B, S, N, sum(band bins * C * 2)]` to the
        spectrogram `[B, N, F * C, 2]`; the stems' audio `[B, S, C, T]`."""
        bsz, frames, width, _ = spec_ri.shape
        stems, channels = masks.shape[1], self.audio_channels
        bins = width // channels
        masks = self._masks_out(masks.view(bsz, stems, frames, -1, 2))  # [B, S, N, F*C, 2]
        out = torch.view_as_complex(spec_ri)[:, None] * torch.view_as_complex(masks.contiguous())  # [B, S, N, F*C]
        out = out.view(bsz, stems, frames, bins, channels).permute(0, 1, 4, 3, 2)
        out = out.reshape(-1, bins, frames)  # [B*S*C, F, N]
        if self.zero_dc:
            out[:, 0] = 0
        audio = torch.istft(out, **self.stft_kwargs, window=window, length=length)  # [B*S*C, T]
        return audio.view(bsz, stems, channels, length)


class FixedBands(BandSplitModel):
    """Band layout of the BS- types: contiguous bands of `freqs_per_bands` bins, in order."""

    def _layout(self, dim: int, freqs_per_bands: Sequence[int], mask_linears: int,
                mlp_expansion_factor: int) -> None:
        """Build `band_split` and `mask_estimators`; `mask_linears`: Linear layers per band's mask MLP."""
        freqs_per_bands = tuple(int(f) for f in freqs_per_bands)
        if len(freqs_per_bands) < 2:
            raise ValueError(f"{type(self).__name__} needs at least two bands")
        if sum(freqs_per_bands) != self.num_bins:
            raise ValueError(f"freqs_per_bands covers {sum(freqs_per_bands)} bins, the STFT has {self.num_bins}")
        self.freqs_per_bands = freqs_per_bands
        band_dims = tuple(2 * f * self.audio_channels for f in freqs_per_bands)
        self.band_split = BandSplit(dim, band_dims)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(dim, band_dims, depth=mask_linears, mlp_expansion_factor=mlp_expansion_factor)
            for _ in range(self.num_stems)
        )

    def _bands_in(self, spec: Tensor) -> Tensor:
        return spec  # the bands tile the bins in order

    def _masks_out(self, masks: Tensor) -> Tensor:
        return masks


class MelBands(BandSplitModel):
    """Band layout of the Mel- types: overlapping bands (which bins each mel filter
    covers); masks are averaged over the bands that share a bin."""

    def _layout(self, dim: int, member: np.ndarray, mask_linears: int, mlp_expansion_factor: int) -> None:
        """Build `band_split` and `mask_estimators` for the bands of `member` (`[K, F]` bool, see
        `mel_band_membership`); `mask_linears`: Linear layers per band's mask MLP."""
        member = torch.from_numpy(member)
        if member.shape[1] != self.num_bins:
            raise ValueError("mel filterbank and STFT disagree on the number of bins")
        # Bins of band 0, then band 1, ... (a bin may appear in several bands).
        bin_index = torch.arange(self.num_bins).expand(member.shape[0], -1)[member]
        channels = self.audio_channels
        # Each bin contributes all its channels, interleaved as on the spectrogram axis.
        index = (bin_index[:, None] * channels + torch.arange(channels)[None, :]).reshape(-1)
        self.register_buffer("freq_indices", index, persistent=False)
        self.register_buffer("freqs_per_band", member, persistent=False)
        self.register_buffer("num_freqs_per_band", member.sum(dim=1), persistent=False)
        self.register_buffer("num_bands_per_freq", member.sum(dim=0), persistent=False)
        band_dims = tuple(2 * int(n) * channels for n in member.sum(dim=1).tolist())
        self.band_split = BandSplit(dim, band_dims)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(dim, band_dims, depth=mask_linears, mlp_expansion_factor=mlp_expansion_factor)
            for _ in range(self.num_stems)
        )

    def _bands_in(self, spec: Tensor) -> Tensor:
        return spec.index_select(2, self.freq_indices)

    def _masks_out(self, masks: Tensor) -> Tensor:
        bsz, stems, frames, _, _ = masks.shape
        summed = masks.new_zeros(bsz, stems, frames, self.num_bins * self.audio_channels, 2)
        summed.index_add_(3, self.freq_indices, masks)
        counts = self.num_bands_per_freq.repeat_interleave(self.audio_channels).to(masks.dtype)  # [F*C]
        return summed.div_(counts[:, None])


# --------------------------------------------------------------------------- models


class _RoformerBase(BandSplitModel):
    """The RoFormers' core: axial transformers over the band tokens."""

    def _common_init(self, *, dim, depth, time_transformer_depth, freq_transformer_depth, dim_head, heads,
                     attn_dropout, ff_dropout, flash_attn, norm_output, linear_transformer_depth, use_pope,
                     experimental_residuals, value_residuals, **options):
        if linear_transformer_depth:
            raise ValueError("linear_transformer_depth > 0 (linear-attention layers) is not supported")
        if use_pope:
            raise ValueError("use_pope (PoPE positions instead of rotary ones) is not supported")
        self._setup(**options)
        self.layers = nn.ModuleList()
        kw = dict(dim=dim, heads=heads, dim_head=dim_head, attn_dropout=attn_dropout, ff_dropout=ff_dropout,
                  flash_attn=flash_attn, norm_output=norm_output)
        # One rotary module per axis, shared by every layer on that axis (so its
        # `freqs` appear under each attention's key in the state dict).
        time_rope = RotaryEmbedding(dim_head)
        freq_rope = RotaryEmbedding(dim_head)
        if value_residuals and not experimental_residuals:
            raise ValueError("value residuals exist only in MSST's experimental classes (experimental_residuals)")
        self.value_residuals = bool(value_residuals)
        for index in range(depth):
            # value residuals: every block after the first mixes in the first block's values
            mix = self.value_residuals and index > 0
            self.layers.append(nn.ModuleList([
                Transformer(depth=time_transformer_depth, rotary_embed=time_rope, value_residual_mix=mix, **kw),
                Transformer(depth=freq_transformer_depth, rotary_embed=freq_rope, value_residual_mix=mix, **kw),
            ]))
        # MSST's *_experimental classes hand the first block's attention values on to the
        # later blocks (for their optional value residuals), and a transformer given them
        # takes the path without residual additions even when no value residual is learned:
        # every block after the first computes x = attn(x); x = ff(x).
        self.experimental_residuals = bool(experimental_residuals)
        for later in list(self.layers)[1:] if experimental_residuals else []:
            for transformer in later:
                transformer.residual = False

    def _trunk(self, x: Tensor, ws: _Workspace) -> None:
        """Axial transformers over the token grid `x` `[B, N, K, D]`, in place."""
        bsz, frames, bands, dim = x.shape
        grid = (bsz, frames, bands)
        flat = x.view(-1, dim)
        ropes: dict = {}
        saved: List[Tensor] = []
        # value residuals: the first block's first-layer values per axis, for the later blocks
        values: Dict[str, Optional[Tensor]] = {"time": None, "freq": None}
        for time_tf, freq_tf in self.layers:
            if self.skip_connection:
                for earlier in saved:
                    flat.add_(earlier)
            for tf, axis in ((time_tf, "time"), (freq_tf, "freq")):
                first = values[axis] is None
                kept = tf.run_(flat, axis, grid, ropes, ws, value_residual=values[axis],
                               keep_values=self.value_residuals and first)
                if first:
                    values[axis] = kept
            if self.skip_connection:
                saved.append(flat.clone())
        if self.final_norm is not None:
            self.final_norm.into(flat, flat)

    def forward(self, mix: Tensor) -> Tensor:
        """Separate `mix` `[B, C, T]` into stems `[B, S, C, T]` (inference only)."""
        with torch.no_grad():
            spec_ri, window = self._spectrogram(mix)  # [B, N, F * C, 2]
            ws = _Workspace()
            x = self._tokens(spec_ri).contiguous()  # [B, N, K, D]
            self._trunk(x, ws)
            masks = torch.stack([self.mask_estimators[i](x, ws) for i in self.active_stems], dim=1)  # [B, S, N, sum]
            del ws, x
            return self._separate(spec_ri, masks, window, mix.shape[-1])


class BSRoformer(FixedBands, _RoformerBase):
    """BS-RoFormer: fixed contiguous bands given by `freqs_per_bands`.

    Constructor arguments are those of the checkpoints' configs; training-only
    ones (dropouts, losses, checkpointing, kernel choices) are accepted and
    have no effect. Extra: `sources` (stem names, default stem0..), `segment`
    (seconds per chunk, default 8), `sample_rate`, `active_stems` (indices of
    the mask heads the forward runs, in output order; default all, as MSST's
    `active_stem_ids`). Flags that differ between checkpoints: `zero_dc`
    (silence the DC bin of the output; on unless the config says otherwise, as
    in MSST's classes, whereas bs-roformer 0.3.x has no such step),
    `skip_connection` (each layer also gets the sum of all earlier layers'
    outputs), `mask_estimator_depth`, `mlp_expansion_factor`. `use_pope` is
    accepted only when false (PoPE positions are not implemented).
    `experimental_residuals`: compute what MSST's bs_/mel_band_roformer_experimental
    classes compute (blocks after the first without residual additions; those classes
    also have no zero_dc step); `value_residuals` (their use_value_residual_learning):
    the later blocks' attention mixes in the first block's values.
    """

    @takes_options(fixed_band_options, roformer_options, band_split_options)
    def __init__(self, dim: int, *, depth: int, **options):
        super().__init__()
        self._common_init(dim=dim, depth=depth, norm_output=False, **options)
        self.final_norm = RMSNorm(dim)
        # BS-RoFormer's MLP depth counts Linear layers.
        self._layout(dim, options["freqs_per_bands"], options["mask_estimator_depth"],
                     options["mlp_expansion_factor"])


class MelBandRoformer(MelBands, _RoformerBase):
    """Mel-Band RoFormer: overlapping bands from a mel filterbank; masks averaged where bands overlap.

    Same extra arguments as `BSRoformer`; `match_input_audio_length` is
    accepted for compatibility (the output always has the input's length).
    """

    @takes_options(mel_band_options, roformer_options, band_split_options)
    def __init__(self, dim: int, *, depth: int, **options):
        super().__init__()
        self._common_init(dim=dim, depth=depth, norm_output=True, **options)
        self.final_norm = None
        # Mel-Band RoFormer's MLP depth counts hidden layers: one more Linear than BS.
        member = mel_band_membership(options["sample_rate"], options["stft_n_fft"], options["num_bands"])
        self._layout(dim, member, options["mask_estimator_depth"] + 1, options["mlp_expansion_factor"])
