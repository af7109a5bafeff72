"""The cross-domain transformer at the bottom of Hybrid Transformer Demucs (v4).

Two token sequences meet here: the spectrogram branch, whose `[B, C, F, N]`
feature map is read as `N * F` tokens (time-major, frequency inside), and the
waveform branch, `[B, C, T]` read as `T` tokens. Layers alternate between
self-attention within each branch and cross-attention from each branch into
the other.

Parameter names, shapes and registration order follow `demucs.transformer`
(demucs 4.1.0) exactly, because checkpoints (and diffq-packed states, which are
positional) are keyed on them. The computation is our own: every attention goes
through `torch.nn.functional.scaled_dot_product_attention`, which on CPU is
faster than `nn.MultiheadAttention`'s fused self-attention path and agrees with
it to float32 rounding.

Tensor layout inside the layers is batch-first, `[B, L, C]` (L tokens).
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cpu_kernels import Linear, linear, linear_gelu

__all__ = [
    "create_sin_embedding",
    "create_2d_sin_embedding",
    "create_sin_embedding_cape",
    "get_elementary_mask",
    "get_mask",
    "ScaledEmbedding",
    "LayerScale",
    "MyGroupNorm",
    "MultiheadAttention",
    "MyTransformerEncoderLayer",
    "CrossTransformerEncoderLayer",
    "CrossTransformerEncoder",
]


# --------------------------------------------------------------------------------------
# Positional embeddings
# --------------------------------------------------------------------------------------


def create_sin_embedding(
    length: int, dim: int, shift: int = 0, device="cpu", max_period: float = 10000
) -> Tensor:
    """1D sinusoidal embedding, `[length, 1, dim]` (time-first; cosines then sines).

    Channel `i < dim/2` has period `max_period ** (i / (dim/2 - 1))`; positions
    start at `shift`. The arithmetic (integer positions divided by a float
    tensor) is kept as in the reference so that the values agree bit for bit.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal embedding needs an even dimension, got {dim}")
    half = dim // 2
    positions = shift + torch.arange(length, device=device).view(-1, 1, 1)  # [L, 1, 1]
    exponent = torch.arange(half, device=device).view(1, 1, -1) / (half - 1)  # [1, 1, D/2]
    phase = positions / (max_period ** exponent)  # [L, 1, D/2]
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def create_2d_sin_embedding(
    d_model: int, height: int, width: int, device="cpu", max_period: float = 10000
) -> Tensor:
    """2D sinusoidal embedding for a `[height (F), width (N)]` grid: `[1, d_model, F, N]`.

    The first half of the channels encodes the width (time) position and the
    second half the height (frequency) position; inside each half, even
    channels hold sines and odd channels cosines.
    """
    if d_model % 4:
        raise ValueError(f"2D sinusoidal embedding needs a dimension divisible by 4, got {d_model}")
    half = d_model // 2
    # One frequency per (sin, cos) pair: exp(-2k * ln(max_period) / half).
    inv_freq = torch.exp(torch.arange(0.0, half, 2) * -(math.log(max_period) / half))  # [half/2]
    along_w = torch.arange(0.0, width).unsqueeze(1) * inv_freq  # [N, half/2]
    along_h = torch.arange(0.0, height).unsqueeze(1) * inv_freq  # [F, half/2]
    pe = torch.empty(d_model, height, width)
    # [half/2, N] broadcast over F, and [half/2, F] broadcast over N.
    pe[0:half:2] = torch.sin(along_w).t()[:, None, :]
    pe[1:half:2] = torch.cos(along_w).t()[:, None, :]
    pe[half::2] = torch.sin(along_h).t()[:, :, None]
    pe[half + 1 :: 2] = torch.cos(along_h).t()[:, :, None]
    return pe[None].to(device)


def create_sin_embedding_cape(
    length: int,
    dim: int,
    batch_size: int,
    mean_normalize: bool,
    augment: bool,
    max_global_shift: float = 0.0,
    max_local_shift: float = 0.0,
    max_scale: float = 1.0,
    device="cpu",
    max_period: float = 10000.0,
) -> Tensor:
    """CAPE sinusoidal embedding (arXiv:2106.03143), `[length, batch_size, dim]`.

    Positions are optionally centred (`mean_normalize`) and, when `augment` is
    set (training), shifted globally and locally and rescaled at random with
    numpy's global generator, as the reference does.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal embedding needs an even dimension, got {dim}")
    pos = torch.arange(length).view(-1, 1, 1) * 1.0  # [L, 1, 1] float
    pos = pos.repeat(1, batch_size, 1)  # [L, B, 1]
    if mean_normalize:
        pos -= torch.nanmean(pos, dim=0, keepdim=True)
    if augment:
        glob = np.random.uniform(-max_global_shift, max_global_shift, size=[1, batch_size, 1])
        local = np.random.uniform(-max_local_shift, max_local_shift, size=[length, batch_size, 1])
        log_scale = np.random.uniform(-np.log(max_scale), np.log(max_scale), size=[1, batch_size, 1])
        pos = (pos + glob + local) * np.exp(log_scale)
    pos = pos.to(device)
    half = dim // 2
    exponent = torch.arange(half, device=device).view(1, 1, -1) / (half - 1)
    phase = pos / (max_period ** exponent)  # [L, B, D/2]
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1).float()


# --------------------------------------------------------------------------------------
# Fixed sparse attention patterns (dense boolean masks; True = may attend)
# --------------------------------------------------------------------------------------


def get_elementary_mask(
    T1: int,
    T2: int,
    mask_type: str,
    sparse_attn_window: int,
    global_window: int,
    mask_random_seed: int,
    sparsity: float,
    device,
) -> Tensor:
    """One attention pattern, `[T2 (queries), T1 (keys)]` bool.

    "global": the first `global_window` keys and the matching first query rows;
    "diag": a band of +-`sparse_attn_window` around the (rescaled) diagonal;
    "jmask": a band whose offsets grow as triangular numbers;
    "random": a seeded random pattern keeping about `1 - sparsity` of the pairs.
    """
    if mask_type == "global":
        mask = torch.zeros(T2, T1, dtype=torch.bool)
        mask[:, :global_window] = True
        mask[: int(global_window * T2 / T1), :] = True
    elif mask_type == "diag":
        mask = torch.zeros(T2, T1, dtype=torch.bool)
        rows = torch.arange(T2)[:, None]
        offsets = torch.arange(-sparse_attn_window, sparse_attn_window + 1)
        cols = (T1 / T2 * rows + offsets).long().clamp(0, T1 - 1)
        mask.scatter_(1, cols, torch.ones(1, dtype=torch.bool).expand_as(cols))
    elif mask_type == "jmask":
        # Built on a grid padded by one on each side, then cropped, as the reference does.
        mask = torch.zeros(T2 + 2, T1 + 2, dtype=torch.bool)
        rows = torch.arange(T2 + 2)[:, None]
        steps = torch.arange(0, int((2 * T1) ** 0.5 + 1))
        steps = (steps * (steps + 1) / 2).int()
        steps = torch.cat([-steps.flip(0)[:-1], steps])
        cols = (T1 / T2 * rows + steps).long().clamp(0, T1 + 1)
        mask.scatter_(1, cols, torch.ones(1, dtype=torch.bool).expand_as(cols))
        mask = mask[1:-1, 1:-1]
    elif mask_type == "random":
        gen = torch.Generator(device=device)
        gen.manual_seed(mask_random_seed)
        mask = torch.rand(T1 * T2, generator=gen, device=device).reshape(T2, T1) > sparsity
    else:
        raise ValueError(f"unknown attention mask type {mask_type!r}")
    return mask.to(device)


def get_mask(
    T1: int,
    T2: int,
    mask_type: str,
    sparse_attn_window: int,
    global_window: int,
    mask_random_seed: int,
    sparsity: float,
    device,
) -> Tensor:
    """Union of the patterns named in `mask_type` ("diag_jmask_random"...), `[T2, T1]` bool.

    The reference hands the union to xformers as a sparse CSR matrix; a dense
    boolean mask given to SDPA computes the same attention.
    """
    masks = [
        get_elementary_mask(
            T1, T2, kind, sparse_attn_window, global_window, mask_random_seed, sparsity, device
        )
        for kind in mask_type.split("_")
    ]
    return torch.stack(masks).any(dim=0)


# --------------------------------------------------------------------------------------
# Small building blocks
# --------------------------------------------------------------------------------------


class ScaledEmbedding(nn.Module):
    """Learnt position table whose effective learning rate is multiplied by `boost`.

    The stored weight is the used weight divided by `boost` (and initialised at
    `scale / boost` of nn.Embedding's default).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, scale: float = 1.0, boost: float = 3.0):
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        with torch.no_grad():
            self.embedding.weight.mul_(scale / boost)
        self.boost = boost

    @property
    def weight(self) -> Tensor:
        return self.embedding.weight * self.boost

    def forward(self, x: Tensor) -> Tensor:
        """`x` integer positions `[...]` -> `[..., embedding_dim]`."""
        return self.embedding(x) * self.boost


class LayerScale(nn.Module):
    """Learnt per-channel gain on a residual branch (Touvron et al. 2021), starting small.

    `channel_last=True` scales `[..., C]` tensors, otherwise `[B, C, T]`.
    """

    def __init__(self, channels: int, init: float = 0, channel_last: bool = False):
        super().__init__()
        self.channel_last = channel_last
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x if self.channel_last else self.scale[:, None] * x


class MyGroupNorm(nn.GroupNorm):
    """GroupNorm over a token sequence `[B, L, C]`: with one group it normalises
    every (token, channel) value of an item together."""

    def forward(self, x: Tensor) -> Tensor:
        """`x [B, L, C]` -> `[B, L, C]`."""
        if self.num_groups == 1 and self.affine:
            # One group = statistics over all of (L, C): a layer norm over the last two
            # dims followed by the per-channel affine. Same maths as GroupNorm on the
            # transposed tensor, without its two transposing copies (~3x faster).
            y = F.layer_norm(x, x.shape[1:], eps=self.eps)
            return torch.addcmul(self.bias, y, self.weight)
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def _make_norm(group_norm, d_model: int, eps: float) -> nn.Module:
    if group_norm:
        return MyGroupNorm(int(group_norm), d_model, eps=eps)
    return nn.LayerNorm(d_model, eps=eps)


def _activation(activation) -> Callable[[Tensor], Tensor]:
    if not isinstance(activation, str):
        return activation
    if activation == "relu":
        return F.relu
    if activation == "gelu":
        return F.gelu
    raise ValueError(f"activation should be relu or gelu, not {activation!r}")


def _feed_forward(layer: nn.Module, x: Tensor) -> Tensor:
    """The feed-forward block of either encoder layer: linear1 -> activation -> dropout ->
    linear2 -> dropout2. Exact GELU at inference goes through the fused `linear_gelu`."""
    if layer.activation is F.gelu and not layer.training:
        hidden = linear_gelu(x, layer.linear1.weight, layer.linear1.bias)
    else:
        hidden = layer.dropout(layer.activation(layer.linear1(x)))
    return layer.dropout2(layer.linear2(hidden))


# --------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------


class _PackedAttention(nn.Module):
    """Multi-head attention stored like `nn.MultiheadAttention` (batch-first).

    Parameters: `in_proj_weight [3C, C]` (query, key, value rows stacked),
    `in_proj_bias [3C]`, `out_proj` (Linear C -> C). These are the names
    checkpoints use. The attention itself is one SDPA call.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = Linear(embed_dim, embed_dim)
        # Same initialisation as nn.MultiheadAttention (only matters for training).
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: Tensor) -> Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, -1).transpose(1, 2)  # [B, H, L, C/H]

    def forward(self, query: Tensor, key: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """`query [B, Lq, C]`, `key [B, Lk, C]` (also the values) -> `[B, Lq, C]`.

        `mask` is an optional bool `[Lq, Lk]` (True = may attend).
        """
        C = self.embed_dim
        if query is key:
            # One GEMM for the three projections.
            q, k, v = linear(query, self.in_proj_weight, self.in_proj_bias).split(C, dim=-1)
        else:
            q = linear(query, self.in_proj_weight[:C], self.in_proj_bias[:C])
            k, v = linear(key, self.in_proj_weight[C:], self.in_proj_bias[C:]).split(C, dim=-1)
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            self._heads(q), self._heads(k), self._heads(v), attn_mask=mask, dropout_p=drop
        )  # [B, H, Lq, C/H]
        B, _, Lq, _ = out.shape
        out = out.transpose(1, 2).reshape(B, Lq, C)
        return self.out_proj(out)


class MultiheadAttention(nn.Module):
    """The separate-projection attention of the reference's sparse layers.

    Parameters `q`, `k`, `v`, `proj` (Linear C -> C each). With a fixed
    pattern the reference computes masked softmax attention through xformers;
    here the same pattern is a dense mask given to SDPA. The data-dependent
    ("auto") sparsity relies on a custom xformers kernel and is not provided: such a
    configuration is refused here, when the model is built, rather than on its first
    forward (where a batch would fail track by track, as if the audio were at fault).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim=None,
        vdim=None,
        batch_first: bool = False,
        auto_sparsity=None,
    ):
        super().__init__()
        if auto_sparsity:
            raise ValueError(
                "dynamic sparse attention (t_auto_sparsity) needs a custom xformers kernel "
                "that unmix does not provide; use a model trained without t_auto_sparsity"
            )
        self.num_heads = num_heads
        self.q = Linear(embed_dim, embed_dim, bias=bias)
        self.k = Linear(embed_dim, embed_dim, bias=bias)
        self.v = Linear(embed_dim, embed_dim, bias=bias)
        self.attn_drop = nn.Dropout(dropout)
        self.proj = Linear(embed_dim, embed_dim, bias)
        self.proj_drop = nn.Dropout(dropout)
        self.batch_first = batch_first
        self.dropout = dropout

    def forward(self, query: Tensor, key: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """`query [B, Lq, C]`, `key [B, Lk, C]` -> `[B, Lq, C]` (batch-first, as used here)."""
        B, Lq, C = query.shape
        Lk = key.shape[1]
        H = self.num_heads
        q = self.q(query).view(B, Lq, H, -1).transpose(1, 2)  # [B, H, Lq, C/H]
        k = self.k(key).view(B, Lk, H, -1).transpose(1, 2)
        v = self.v(key).view(B, Lk, H, -1).transpose(1, 2)
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        out = out.transpose(1, 2).reshape(B, Lq, C)
        return self.proj_drop(self.proj(out))


# --------------------------------------------------------------------------------------
# Encoder layers
# --------------------------------------------------------------------------------------


class _SparseConfig:
    """Mixin holding the fixed-sparsity settings shared by both layer kinds."""

    def _init_sparse(self, sparse, auto_sparsity, mask_type, sparse_attn_window, global_window, sparsity):
        self.sparse = sparse
        self.auto_sparsity = auto_sparsity
        if sparse:
            if not auto_sparsity:
                self.mask_type = mask_type
                self.sparse_attn_window = sparse_attn_window
                self.global_window = global_window
            self.sparsity = sparsity
        # Cached dense pattern (plain attribute, not a buffer: not part of the state).
        self._pattern: Optional[Tensor] = None

    def _sparse_mask(self, n_keys: int, n_queries: int, device) -> Optional[Tensor]:
        if not self.sparse or self.auto_sparsity:
            return None
        cached = self._pattern
        if cached is None or cached.shape != (n_queries, n_keys) or cached.device != torch.device(device):
            cached = get_mask(
                n_keys, n_queries, self.mask_type, self.sparse_attn_window, self.global_window,
                self.mask_random_seed, self.sparsity, device,
            )
            self._pattern = cached
        return cached


class MyTransformerEncoderLayer(nn.Module, _SparseConfig):
    """Self-attention + feed-forward block on `[B, L, C]` tokens.

    Registers, in order: `self_attn`, `linear1`, `dropout`, `linear2`, `norm1`,
    `norm2`, `dropout1`, `dropout2`, then `norm_out` (only with `norm_first`
    and `norm_out`), `gamma_1`, `gamma_2` (LayerScale or Identity), the layout
    of the reference (a `torch.nn.TransformerEncoderLayer` subclass).
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Any = F.relu,
        group_norm=0,
        norm_first: bool = False,
        norm_out=False,
        layer_norm_eps: float = 1e-5,
        layer_scale: bool = False,
        init_values: float = 1e-4,
        device=None,
        dtype=None,
        sparse: bool = False,
        mask_type: str = "diag",
        mask_random_seed: int = 42,
        sparse_attn_window: int = 500,
        global_window: int = 50,
        auto_sparsity: bool = False,
        sparsity: float = 0.95,
        batch_first: bool = False,
    ):
        super().__init__()
        if not batch_first:
            # The reference builds these layers batch-first only (its non-batch-first
            # forward is documented as unsupported); so do we.
            raise ValueError("MyTransformerEncoderLayer supports batch_first=True only")
        if sparse:
            self.self_attn = MultiheadAttention(
                d_model, nhead, dropout=dropout, batch_first=batch_first,
                auto_sparsity=sparsity if auto_sparsity else 0,
            )
            self.mask_random_seed = mask_random_seed
        else:
            self.self_attn = _PackedAttention(d_model, nhead, dropout=dropout)
        self.linear1 = Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model)
        self.norm_first = norm_first
        self.norm1 = _make_norm(group_norm, d_model, layer_norm_eps)
        self.norm2 = _make_norm(group_norm, d_model, layer_norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = _activation(activation)
        self._init_sparse(sparse, auto_sparsity, mask_type, sparse_attn_window, global_window, sparsity)

        # `&` rather than `and`, as the reference: an int norm_out acts bitwise.
        self.norm_out = MyGroupNorm(num_groups=int(norm_out), num_channels=d_model) if norm_first & norm_out else None
        self.gamma_1 = LayerScale(d_model, init_values, True) if layer_scale else nn.Identity()
        self.gamma_2 = LayerScale(d_model, init_values, True) if layer_scale else nn.Identity()
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def _sa_block(self, x: Tensor) -> Tensor:
        mask = self._sparse_mask(x.shape[1], x.shape[1], x.device)
        return self.dropout1(self.self_attn(x, x, mask))

    def _ff_block(self, x: Tensor) -> Tensor:
        return _feed_forward(self, x)

    def forward(self, src: Tensor, src_mask=None, src_key_padding_mask=None) -> Tensor:
        """`src [B, L, C]` -> `[B, L, C]`. Masks are not supported (never used by HTDemucs)."""
        if src_mask is not None or src_key_padding_mask is not None:
            raise ValueError("external attention masks are not supported")
        x = src
        if self.norm_first:
            x = x + self.gamma_1(self._sa_block(self.norm1(x)))
            x = x + self.gamma_2(self._ff_block(self.norm2(x)))
            if self.norm_out is not None:
                x = self.norm_out(x)
        else:
            x = self.norm1(x + self.gamma_1(self._sa_block(x)))
            x = self.norm2(x + self.gamma_2(self._ff_block(x)))
        return x


class CrossTransformerEncoderLayer(nn.Module, _SparseConfig):
    """Cross-attention (queries from this branch, keys/values from the other) + feed-forward.

    Registers, in order: `cross_attn`, `linear1`, `dropout`, `linear2`,
    `norm1`, `norm2`, `norm3`, `norm_out` (only with `norm_first` and
    `norm_out`), `gamma_1`, `gamma_2`, `dropout1`, `dropout2`.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Any = F.relu,
        layer_norm_eps: float = 1e-5,
        layer_scale: bool = False,
        init_values: float = 1e-4,
        norm_first: bool = False,
        group_norm=False,
        norm_out=False,
        sparse: bool = False,
        mask_type: str = "diag",
        mask_random_seed: int = 42,
        sparse_attn_window: int = 500,
        global_window: int = 50,
        sparsity: float = 0.95,
        auto_sparsity=None,
        device=None,
        dtype=None,
        batch_first: bool = False,
    ):
        super().__init__()
        if not batch_first:
            raise ValueError("CrossTransformerEncoderLayer supports batch_first=True only")
        self._init_sparse(sparse, auto_sparsity, mask_type, sparse_attn_window, global_window, sparsity)
        if sparse:
            self.cross_attn = MultiheadAttention(
                d_model, nhead, dropout=dropout, batch_first=batch_first,
                auto_sparsity=sparsity if auto_sparsity else 0,
            )
            if not auto_sparsity:
                self.mask_random_seed = mask_random_seed
        else:
            self.cross_attn = _PackedAttention(d_model, nhead, dropout=dropout)
        self.linear1 = Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model)
        self.norm_first = norm_first
        # norm1 acts on the queries, norm2 on the keys, norm3 before the feed-forward
        # (in post-norm mode only norm1 and norm2 are used).
        self.norm1 = _make_norm(group_norm, d_model, layer_norm_eps)
        self.norm2 = _make_norm(group_norm, d_model, layer_norm_eps)
        self.norm3 = _make_norm(group_norm, d_model, layer_norm_eps)
        self.norm_out = MyGroupNorm(num_groups=int(norm_out), num_channels=d_model) if norm_first & norm_out else None
        self.gamma_1 = LayerScale(d_model, init_values, True) if layer_scale else nn.Identity()
        self.gamma_2 = LayerScale(d_model, init_values, True) if layer_scale else nn.Identity()
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = _activation(activation)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def _ca_block(self, q: Tensor, k: Tensor) -> Tensor:
        mask = self._sparse_mask(k.shape[1], q.shape[1], q.device)
        return self.dropout1(self.cross_attn(q, k, mask))

    def _ff_block(self, x: Tensor) -> Tensor:
        return _feed_forward(self, x)

    def forward(self, q: Tensor, k: Tensor, mask=None) -> Tensor:
        """`q [B, Lq, C]` (this branch), `k [B, Lk, C]` (other branch) -> `[B, Lq, C]`."""
        if mask is not None:
            raise ValueError("external attention masks are not supported")
        if self.norm_first:
            x = q + self.gamma_1(self._ca_block(self.norm1(q), self.norm2(k)))
            x = x + self.gamma_2(self._ff_block(self.norm3(x)))
            if self.norm_out is not None:
                x = self.norm_out(x)
        else:
            x = self.norm1(q + self.gamma_1(self._ca_block(q, k)))
            x = self.norm2(x + self.gamma_2(self._ff_block(x)))
        return x


# --------------------------------------------------------------------------------------
# The two-branch transformer
# --------------------------------------------------------------------------------------


class CrossTransformerEncoder(nn.Module):
    """`num_layers` layers per branch; even layers (odd with `cross_first`) are
    self-attention, the others cross-attention between the two branches.

    Registers, in order: `position_embeddings` (only for `emb="scaled"`),
    `norm_in`, `norm_in_t`, `layers` (spectral branch), `layers_t` (waveform branch).
    """

    def __init__(
        self,
        dim: int,
        emb: str = "sin",
        hidden_scale: float = 4.0,
        num_heads: int = 8,
        num_layers: int = 6,
        cross_first: bool = False,
        dropout: float = 0.0,
        max_positions: int = 1000,
        norm_in: bool = True,
        norm_in_group: bool = False,
        group_norm=False,
        norm_first: bool = False,
        norm_out: bool = False,
        max_period: float = 10000.0,
        weight_decay: float = 0.0,
        lr: Optional[float] = None,
        layer_scale: bool = False,
        gelu: bool = True,
        sin_random_shift: int = 0,
        weight_pos_embed: float = 1.0,
        cape_mean_normalize: bool = True,
        cape_augment: bool = True,
        cape_glob_loc_scale: Sequence[float] = (5000.0, 1.0, 1.4),
        sparse_self_attn: bool = False,
        sparse_cross_attn: bool = False,
        mask_type: str = "diag",
        mask_random_seed: int = 42,
        sparse_attn_window: int = 500,
        global_window: int = 50,
        auto_sparsity: bool = False,
        sparsity: float = 0.95,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"transformer width {dim} is not divisible by {num_heads} heads")
        self.num_layers = num_layers
        # Layers with index % 2 == classic_parity are self-attention layers.
        self.classic_parity = 1 if cross_first else 0
        self.emb = emb
        self.max_period = max_period
        self.weight_decay = weight_decay
        self.weight_pos_embed = weight_pos_embed
        self.sin_random_shift = sin_random_shift
        if emb == "cape":
            self.cape_mean_normalize = cape_mean_normalize
            self.cape_augment = cape_augment
            self.cape_glob_loc_scale = list(cape_glob_loc_scale)
        if emb == "scaled":
            self.position_embeddings = ScaledEmbedding(max_positions, dim, scale=0.2)
        self.lr = lr

        if norm_in:
            self.norm_in = nn.LayerNorm(dim)
            self.norm_in_t = nn.LayerNorm(dim)
        elif norm_in_group:
            self.norm_in = MyGroupNorm(int(norm_in_group), dim)
            self.norm_in_t = MyGroupNorm(int(norm_in_group), dim)
        else:
            self.norm_in = nn.Identity()
            self.norm_in_t = nn.Identity()

        common = dict(
            d_model=dim,
            nhead=num_heads,
            dim_feedforward=int(dim * hidden_scale),
            dropout=dropout,
            activation=F.gelu if gelu else F.relu,
            group_norm=group_norm,
            norm_first=norm_first,
            norm_out=norm_out,
            layer_scale=layer_scale,
            mask_type=mask_type,
            mask_random_seed=mask_random_seed,
            sparse_attn_window=sparse_attn_window,
            global_window=global_window,
            sparsity=sparsity,
            auto_sparsity=auto_sparsity,
            batch_first=True,
        )
        self.layers = nn.ModuleList()  # spectral branch
        self.layers_t = nn.ModuleList()  # waveform branch
        for idx in range(num_layers):
            if idx % 2 == self.classic_parity:
                kind, sparse = MyTransformerEncoderLayer, sparse_self_attn
            else:
                kind, sparse = CrossTransformerEncoderLayer, sparse_cross_attn
            self.layers.append(kind(sparse=sparse, **common))
            self.layers_t.append(kind(sparse=sparse, **common))

    def _get_pos_embedding(self, T: int, B: int, C: int, device) -> Tensor:
        """Waveform-branch positions, `[T, 1 or B, C]`."""
        if self.emb == "sin":
            # The reference draws a random start offset (0 when sin_random_shift is 0).
            shift = random.randrange(self.sin_random_shift + 1) if self.sin_random_shift else 0
            return create_sin_embedding(T, C, shift=shift, device=device, max_period=self.max_period)
        if self.emb == "cape":
            augment = self.training and self.cape_augment
            glob, loc, scale = self.cape_glob_loc_scale if self.training else (0.0, 0.0, 1.0)
            return create_sin_embedding_cape(
                T, C, B, device=device, max_period=self.max_period,
                mean_normalize=self.cape_mean_normalize, augment=augment,
                max_global_shift=glob, max_local_shift=loc, max_scale=scale,
            )
        if self.emb == "scaled":
            return self.position_embeddings(torch.arange(T, device=device))[:, None]
        raise ValueError(f"unknown positional embedding {self.emb!r}")

    def forward(self, x: Tensor, xt: Tensor) -> tuple[Tensor, Tensor]:
        """`x [B, C, F, N]` (spectral features), `xt [B, C, T]` (waveform features)
        -> the same two shapes."""
        B, C, Fr, T1 = x.shape
        # [B, C, F, N] -> [B, N*F, C]: tokens ordered time-major, frequency inside.
        pos_2d = create_2d_sin_embedding(C, Fr, T1, x.device, self.max_period)
        pos_2d = pos_2d.permute(0, 3, 2, 1).reshape(1, T1 * Fr, C)
        x = x.permute(0, 3, 2, 1).reshape(B, T1 * Fr, C)
        x = self.norm_in(x)
        x = x + self.weight_pos_embed * pos_2d

        T2 = xt.shape[-1]
        xt = xt.transpose(1, 2)  # [B, T, C]
        pos_1d = self._get_pos_embedding(T2, B, C, x.device).transpose(0, 1)  # [1 or B, T, C]
        xt = self.norm_in_t(xt)
        xt = xt + self.weight_pos_embed * pos_1d

        for idx in range(self.num_layers):
            if idx % 2 == self.classic_parity:
                x = self.layers[idx](x)
                xt = self.layers_t[idx](xt)
            else:
                # Both cross layers read the other branch as it was before this step.
                x, xt = self.layers[idx](x, xt), self.layers_t[idx](xt, x)

        x = x.view(B, T1, Fr, C).permute(0, 3, 2, 1)  # [B, C, F, N]
        xt = xt.transpose(1, 2)  # [B, C, T]
        return x, xt

    def make_optim_group(self) -> dict:
        group = {"params": list(self.parameters()), "weight_decay": self.weight_decay}
        if self.lr is not None:
            group["lr"] = self.lr
        return group
