"""SepFormer (SpeechBrain's dual-path transformer separator): pure modules, no I/O.

Three networks, as SpeechBrain publishes them: an encoder (a strided 1-d
convolution and ReLU), a mask network (the dual-path model: chunks of the
encoded signal through alternating intra-chunk and inter-chunk transformer
blocks) and a decoder (a transposed convolution). Parameter names follow
speechbrain 1.1's modules (`dual_mdl.0.intra_mdl.mdl.layers.0.self_att.att.in_proj_weight`,
...), so the published `encoder.ckpt`, `masknet.ckpt` and `decoder.ckpt` load
strictly.

`SepFormer.forward` maps a mono mix `[B, 1, T]` to `[B, S, 1, T]`; an
enhancement model (one source) gets a second stem, the mix minus the speech.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Rows of SpeechBrain's sinusoidal position table: the longest sequence a block can take.
POS_MAX_LEN = 2500


@dataclass(frozen=True)
class TransformerArgs:
    """An `SBTransformerBlock` (intra or inter model)."""

    num_layers: int
    d_model: int
    nhead: int
    d_ffn: int = 2048
    activation: str = "relu"
    use_positional_encoding: bool = False
    norm_before: bool = False


@dataclass(frozen=True)
class MaskNetArgs:
    """A `Dual_Path_Model`."""

    in_channels: int
    out_channels: int
    intra: TransformerArgs
    inter: TransformerArgs
    num_layers: int = 1
    K: int = 200
    num_spks: int = 2
    skip_around_intra: bool = True
    linear_layer_after_inter_intra: bool = True


def sinusoid_table(length: int, size: int) -> torch.Tensor:
    """`[1, length, size]`: sin on even, cos on odd channels, wavelengths up to 10000 * 2 pi."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, size, 2, dtype=torch.float32) * -(math.log(10000.0) / size))
    table = torch.zeros(length, size)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table.unsqueeze(0)


class _Norm(nn.Module):
    """SpeechBrain's LayerNorm wrapper: the torch LayerNorm sits at `.norm`."""

    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(size, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class _Attention(nn.Module):
    """Self-attention; the torch module sits at `.att` (SpeechBrain's MultiheadAttention wrapper)."""

    def __init__(self, d_model: int, nhead: int):
        super().__init__()
        self.att = nn.MultiheadAttention(d_model, nhead, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D]
        return self.att(x, x, x, need_weights=False)[0]


class _FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, activation: str):
        super().__init__()
        act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ffn), act, nn.Dropout(0.0), nn.Linear(d_ffn, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(x)


class _EncoderLayer(nn.Module):
    """One transformer layer, pre-norm (`norm_before`) or post-norm."""

    def __init__(self, a: TransformerArgs):
        super().__init__()
        self.self_att = _Attention(a.d_model, a.nhead)
        self.pos_ffn = _FeedForward(a.d_model, a.d_ffn, a.activation)
        self.norm1 = _Norm(a.d_model)
        self.norm2 = _Norm(a.d_model)
        self.pre = a.norm_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre:
            x = x + self.self_att(self.norm1(x))
            return x + self.pos_ffn(self.norm2(x))
        x = self.norm1(x + self.self_att(x))
        return self.norm2(x + self.pos_ffn(x))


class _TransformerEncoder(nn.Module):
    def __init__(self, a: TransformerArgs):
        super().__init__()
        self.layers = nn.ModuleList(_EncoderLayer(a) for _ in range(a.num_layers))
        self.norm = _Norm(a.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class _PositionalEncoding(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(POS_MAX_LEN, size))


class TransformerBlock(nn.Module):
    """`SBTransformerBlock`: optional sinusoidal positions added, then the transformer encoder."""

    def __init__(self, a: TransformerArgs):
        super().__init__()
        self.mdl = _TransformerEncoder(a)
        self.use_pos = a.use_positional_encoding
        if self.use_pos:
            self.pos_enc = _PositionalEncoding(a.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D]
        if self.use_pos:
            if x.shape[1] > self.pos_enc.pe.shape[1]:
                raise ValueError(f"a sequence of {x.shape[1]} steps is longer than the position table "
                                 f"({self.pos_enc.pe.shape[1]}); use a shorter segment")
            x = x + self.pos_enc.pe[:, :x.shape[1]]
        return self.mdl(x)


class _Linear(nn.Module):
    """SpeechBrain's Linear wrapper: the torch Linear sits at `.w`."""

    def __init__(self, size: int):
        super().__init__()
        self.w = nn.Linear(size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w(x)


class _DualBlock(nn.Module):
    """Intra-chunk then inter-chunk transformer, each followed by a one-group GroupNorm."""

    def __init__(self, a: MaskNetArgs):
        super().__init__()
        n = a.out_channels
        self.intra_mdl = TransformerBlock(a.intra)
        self.inter_mdl = TransformerBlock(a.inter)
        self.intra_norm = nn.GroupNorm(1, n, eps=1e-8)
        self.inter_norm = nn.GroupNorm(1, n, eps=1e-8)
        self.linear = a.linear_layer_after_inter_intra
        if self.linear:
            self.intra_linear = _Linear(n)
            self.inter_linear = _Linear(n)
        self.skip_around_intra = a.skip_around_intra

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, K chunk, S chunks]
        b, n, k, s = x.shape
        intra = self.intra_mdl(x.permute(0, 3, 2, 1).reshape(b * s, k, n))  # [B*S, K, N]
        if self.linear:
            intra = self.intra_linear(intra)
        intra = self.intra_norm(intra.view(b, s, k, n).permute(0, 3, 2, 1))  # [B, N, K, S]
        if self.skip_around_intra:
            intra = intra + x
        inter = self.inter_mdl(intra.permute(0, 2, 3, 1).reshape(b * k, s, n))  # [B*K, S, N]
        if self.linear:
            inter = self.inter_linear(inter)
        inter = self.inter_norm(inter.view(b, k, s, n).permute(0, 3, 1, 2))  # [B, N, K, S]
        return inter + intra


class MaskNet(nn.Module):
    """`Dual_Path_Model`: `[B, N, L]` encoded mix -> masks `[num_spks, B, N, L]`."""

    def __init__(self, a: MaskNetArgs):
        super().__init__()
        self.a = a
        self.norm = nn.GroupNorm(1, a.in_channels, eps=1e-8)
        self.conv1d = nn.Conv1d(a.in_channels, a.out_channels, 1, bias=False)
        self.dual_mdl = nn.ModuleList(_DualBlock(a) for _ in range(a.num_layers))
        self.conv2d = nn.Conv2d(a.out_channels, a.out_channels * a.num_spks, kernel_size=1)
        self.end_conv1x1 = nn.Conv1d(a.out_channels, a.in_channels, 1, bias=False)
        self.prelu = nn.PReLU()
        self.output = nn.Sequential(nn.Conv1d(a.out_channels, a.out_channels, 1), nn.Tanh())
        self.output_gate = nn.Sequential(nn.Conv1d(a.out_channels, a.out_channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, spks = self.a.K, self.a.num_spks
        x = self.conv1d(self.norm(x))
        chunks, gap = segment(x, k)
        for block in self.dual_mdl:
            chunks = block(chunks)
        y = self.conv2d(self.prelu(chunks))  # [B, N*spks, K, S]
        b, _, _, s = y.shape
        y = overlap_add(y.reshape(b * spks, -1, k, s), gap)  # [B*spks, N, L]
        y = self.end_conv1x1(self.output(y) * self.output_gate(y))
        y = F.relu(y.view(b, spks, y.shape[1], y.shape[2]))
        return y.transpose(0, 1)


def segment(x: torch.Tensor, k: int):
    """`[B, N, L]` -> half-overlapping chunks `[B, N, K, S]` and the zeros added at the end.

    The signal is zero-padded so that chunks of K frames every K/2 cover it with half a
    chunk of zeros at each end (SpeechBrain's `_Segmentation`).
    """
    b, n, length = x.shape
    hop = k // 2
    gap = k - (hop + length % k) % k
    x = F.pad(x, (hop, gap + hop))
    first = x[:, :, :-hop].reshape(b, n, -1, k)  # chunks starting at 0, K, 2K, ...
    second = x[:, :, hop:].reshape(b, n, -1, k)  # chunks starting at K/2, 3K/2, ...
    # interleave the two sets: [B, N, 2*C, K] in time order, chunk axis last
    chunks = torch.cat([first, second], dim=3).view(b, n, -1, k).transpose(2, 3)
    return chunks.contiguous(), gap


def overlap_add(y: torch.Tensor, gap: int) -> torch.Tensor:
    """Inverse of `segment`: `[B, N, K, S]` chunks summed back to `[B, N, L]`."""
    b, n, k, s = y.shape
    hop = k // 2
    y = y.transpose(2, 3).contiguous().view(b, n, -1, 2 * k)
    first = y[:, :, :, :k].contiguous().view(b, n, -1)[:, :, hop:]
    second = y[:, :, :, k:].contiguous().view(b, n, -1)[:, :, :-hop]
    out = first + second
    return out[:, :, :-gap] if gap > 0 else out


class SepEncoder(nn.Module):
    """Strided convolution (stride kernel_size // 2, no bias) and ReLU: `[B, T]` -> `[B, N, L]`."""

    def __init__(self, kernel_size: int, out_channels: int):
        super().__init__()
        self.conv1d = nn.Conv1d(1, out_channels, kernel_size, stride=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv1d(x.unsqueeze(1)))


class SepDecoder(nn.ConvTranspose1d):
    """A transposed convolution (weights at `weight`, `bias`): `[B, N, L]` -> `[B, T']`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)[:, 0]


class SepFormer(nn.Module):
    """Encoder, mask network, decoder: `[B, 1, T]` -> `[B, S, 1, T]`."""

    def __init__(self, encoder: SepEncoder, masknet: MaskNet, decoder: SepDecoder, sources: Sequence[str]):
        super().__init__()
        self.encoder, self.masknet, self.decoder = encoder, masknet, decoder
        self.num_spks = masknet.a.num_spks
        self.sources: List[str] = list(sources)

    def separate(self, mix: torch.Tensor) -> torch.Tensor:
        """The networks' own output, as SpeechBrain's `separate_batch`: `[B, T]` -> `[B, spks, T]`."""
        w = self.encoder(mix)  # [B, N, L]
        masks = self.masknet(w)  # [spks, B, N, L]
        est = torch.stack([self.decoder(w * m) for m in masks], dim=1)  # [B, spks, T']
        return F.pad(est, (0, mix.shape[-1] - est.shape[-1]))  # zero-filled or trimmed to T

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        n = mix.shape[-1]
        # An input shorter than one encoder frame (a very short file, or the engine's last
        # sliver of a segment) is zero-filled to one frame and the output trimmed back.
        short = self.encoder.conv1d.kernel_size[0] - n
        est = self.separate(F.pad(mix[:, 0], (0, short)))[..., :n] if short > 0 else self.separate(mix[:, 0])
        if self.num_spks == 1:
            est = torch.cat([est, mix[:, :1] - est], dim=1)  # speech, noise = mix - speech
        return est.unsqueeze(2)
