"""SCNet: the sparse compression network of Music-Source-Separation-Training (MSST).

An inference re-implementation of MSST's three SCNet model types:

* "scnet" (`SCNet`): the network of Tong et al. (arXiv:2401.13276), with a
  dual-path LSTM separation net; the model type of most published checkpoints
  (SCNet Small/Large/XL/XL IHF).
* "scnet_masked" (`SCNetMasked`): the same trunk plus a learned frequency
  embedding on the input and a complex mask (a small conv head with tanh) that
  multiplies the mixture spectrogram instead of predicting it.
* "scnet_tran" (`SCNetTran`): the dual-path LSTMs replaced by small RoFormer-style
  transformers (RMSNorm, rotary positions, sigmoid head gates).

Module tree, constructor arguments and parameter names are MSST's, so a published
`.ckpt` (a plain state dict) loads strictly, key for key; the numbers are the same
operations in the same order. Things MSST has that change no number are left out
(dropout, the training-only `active_stem_ids` path).

Data flow: the mix is padded at the end so the STFT has an even number of frames
(the separation net's irfft then gives back as many frames as its rfft took); its
complex spectrogram is laid out "as channels" (2 per audio channel: real,
imaginary); an encoder of sparse down-sampling blocks splits the bins into a low,
mid and high band, each strided by its own factor; the separation net alternates
dual-path layers with an rfft/irfft over the frame axis; a mirrored decoder with
skip fusions brings it back to one CaC spectrogram per stem, which the inverse
STFT turns into audio.

Quirks kept because the weights were trained with them:

* "scnet" and "scnet_tran" call `torch.stft` without a window (a rectangular
  window of `win_size` samples); "scnet_masked" uses a periodic Hann window.
* "scnet_tran" has a 1x1 convolution `first_conv` that its forward never uses; it
  is in the state dict, so it is built (and never called).
* "scnet_masked" hard-codes its mask head to 4 channels per stem: stereo, dims[0] = 4.

Shapes: B batch, S stems, C audio channels, T samples, F frequency bins,
N STFT frames, D feature channels, f bins of one band, H heads, E head width.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .roformer import RMSNorm as RoformerRMSNorm
from .roformer import RotaryEmbedding as RoformerRotaryEmbedding


# --------------------------------------------------------------------------- encoder / decoder pieces


class _SiLU(nn.Module):
    """x * sigmoid(x), at the index MSST's `Swish` has in its Sequential (no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


class ConvolutionModule(nn.Module):
    """`depth` residual 1-D conv layers over frames: norm, GLU conv, depthwise conv, norm, SiLU, 1x1 conv."""

    def __init__(self, channels: int, depth: int, compress: float, kernel: int):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd, got {kernel}")
        hidden = int(channels / compress)
        pad = kernel // 2
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.GroupNorm(1, channels),
                nn.Conv1d(channels, 2 * hidden, kernel, padding=pad),
                nn.GLU(1),
                nn.Conv1d(hidden, hidden, kernel, padding=pad, groups=hidden),
                nn.GroupNorm(1, hidden),
                _SiLU(),
                nn.Conv1d(hidden, channels, 1),
            )
            for _ in range(abs(depth))
        )

    def forward(self, x: Tensor) -> Tensor:  # [B', D, N] -> [B', D, N]
        for layer in self.layers:
            x = x + layer(x)
        return x


class SDlayer(nn.Module):
    """Sparse down-sampling: the bins split into three bands by `SR` fractions, each band
    convolved along frequency with its own kernel and stride."""

    def __init__(self, channels_in: int, channels_out: int, bands: Sequence[dict]):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels_in, channels_out, (b["kernel"], 1), (b["stride"], 1)) for b in bands
        )
        self.strides = [b["stride"] for b in bands]
        self.kernels = [b["kernel"] for b in bands]
        self.sr_low, self.sr_mid = bands[0]["SR"], bands[1]["SR"]

    def edges(self, bins: int) -> List[Tuple[int, int]]:
        # Computed as MSST does (low + mid summed before scaling): the float rounding decides the edges.
        low = math.ceil(bins * self.sr_low)
        mid = math.ceil(bins * (self.sr_low + self.sr_mid))
        return [(0, low), (low, mid), (mid, bins)]

    def forward(self, x: Tensor) -> Tuple[List[Tensor], List[int]]:  # [B, D, F, N]
        outputs, widths = [], []
        for conv, stride, kernel, (start, end) in zip(self.convs, self.strides, self.kernels, self.edges(x.shape[2])):
            band = x[:, :, start:end]  # [B, D, f, N]
            widths.append(end - start)
            # A stride-1 band keeps its width; a strided one is padded up to a multiple of its stride.
            total = kernel - 1 if stride == 1 else (stride - band.shape[2] % stride) % stride
            band = F.pad(band, (0, 0, total // 2, total - total // 2))
            outputs.append(conv(band))  # [B, D', f', N]
        return outputs, widths


class SUlayer(nn.Module):
    """Sparse up-sampling: each band's transposed conv, trimmed symmetrically to the band's
    width before down-sampling, the three bands joined again."""

    def __init__(self, channels_in: int, channels_out: int, bands: Sequence[dict]):
        super().__init__()
        self.convtrs = nn.ModuleList(
            nn.ConvTranspose2d(channels_in, channels_out, (b["kernel"], 1), (b["stride"], 1)) for b in bands
        )

    def forward(self, x: Tensor, lengths: Sequence[int], widths: Sequence[int]) -> Tensor:  # [B, D, f', N]
        starts = (0, lengths[0], lengths[0] + lengths[1])
        ends = (lengths[0], lengths[0] + lengths[1], x.shape[2])
        out = []
        for convtr, start, end, width in zip(self.convtrs, starts, ends, widths):
            band = convtr(x[:, :, start:end])  # [B, D', >= width, N]
            cut = abs(width - band.shape[2]) // 2
            out.append(band[:, :, cut:cut + width])
        return torch.cat(out, dim=2)  # [B, D', F_in, N]


class SDblock(nn.Module):
    """One encoder level: sparse down-sampling, a convolution module per band (over frames,
    each bin on its own), GELU, then a 3x3 conv across the joined bands."""

    def __init__(self, channels_in: int, channels_out: int, bands: Sequence[dict], depths: Sequence[int],
                 compress: float, kernel: int):
        super().__init__()
        self.SDlayer = SDlayer(channels_in, channels_out, bands)
        self.conv_modules = nn.ModuleList(ConvolutionModule(channels_out, d, compress, kernel) for d in depths)
        self.globalconv = nn.Conv2d(channels_out, channels_out, 3, 1, 1)

    def forward(self, x: Tensor):
        bands, widths = self.SDlayer(x)
        done = []
        for conv, band in zip(self.conv_modules, bands):
            b, d, f, n = band.shape
            y = conv(band.permute(0, 2, 1, 3).reshape(b * f, d, n))  # [B*f, D, N]
            done.append(F.gelu(y.view(b, f, d, n).permute(0, 2, 1, 3)))  # [B, D, f, N]
        lengths = [band.shape[2] for band in done]
        skip = torch.cat(done, dim=2)  # [B, D, F', N]
        return self.globalconv(skip), skip, lengths, widths


class FusionLayer(nn.Module):
    """Decoder skip fusion: add the skip, duplicate the channels, 3x3 conv, GLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, 2 * channels, 3, 1, 1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:  # [B, D, F', N]
        x = (x + skip).repeat(1, 2, 1, 1)  # [B, 2D, F', N]
        return F.glu(self.conv(x), dim=1)


# --------------------------------------------------------------------------- separation net


def _over_frequency(x: Tensor) -> Tensor:  # [B, D, F, N] -> [B*N, F, D]
    b, d, f, n = x.shape
    return x.transpose(1, 3).reshape(b * n, f, d)


def _from_frequency(y: Tensor, shape) -> Tensor:  # [B*N, F, D] -> [B, D, F, N]
    b, d, f, n = shape
    return y.view(b, n, f, d).transpose(1, 3)


def _over_time(x: Tensor) -> Tensor:  # [B, D, F, N] -> [B*F, N, D]
    b, d, f, n = x.shape
    return x.permute(0, 2, 3, 1).reshape(b * f, n, d)


def _from_time(y: Tensor, shape) -> Tensor:  # [B*F, N, D] -> [B, D, F, N]
    b, d, f, n = shape
    return y.view(b, f, n, d).permute(0, 3, 1, 2)


class DualPathRNN(nn.Module):
    """A bidirectional LSTM across frequency, then one across time, each pre-normed and residual."""

    def __init__(self, d_model: int, expand: int):
        super().__init__()
        hidden = d_model * expand
        self.lstm_layers = nn.ModuleList(
            nn.LSTM(d_model, hidden, num_layers=1, bidirectional=True, batch_first=True) for _ in range(2)
        )
        self.linear_layers = nn.ModuleList(nn.Linear(2 * hidden, d_model) for _ in range(2))
        self.norm_layers = nn.ModuleList(nn.GroupNorm(1, d_model) for _ in range(2))

    def forward(self, x: Tensor) -> Tensor:  # [B, D, F, N]
        shape = x.shape
        y, _ = self.lstm_layers[0](_over_frequency(self.norm_layers[0](x)))
        x = x + _from_frequency(self.linear_layers[0](y), shape)
        y, _ = self.lstm_layers[1](_over_time(self.norm_layers[1](x)))
        return x + _from_time(self.linear_layers[1](y), shape)


class RMSNorm(RoformerRMSNorm):
    """The RoFormers' RMSNorm, with MSST's SCNet-Tran order of the two scalings
    (the RoFormers fold `gamma * scale` first), so the numbers stay MSST's."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class RotaryEmbedding(RoformerRotaryEmbedding):
    """Rotary positions on the first `dim` features of each head, pairs interleaved.

    The RoFormers' `freqs` (dim / 2 inverse wavelengths, a parameter because MSST's
    checkpoints store it as one; the loaded values are the ones used). The rotation
    is SCNet-Tran's own: it may cover only part of a head (tran_rotary_embedding_dim
    < tran_dim_head, the rest passes through), and it is computed in `t`'s dtype.
    """

    def rotate(self, t: Tensor) -> Tensor:  # [B, H, L, E] -> [B, H, L, E]
        length = t.shape[-2]
        pos = torch.arange(length, device=t.device, dtype=t.dtype)
        angles = (pos[:, None] * self.freqs.to(t.dtype)[None, :]).repeat_interleave(2, dim=-1)  # [L, R]
        rot = angles.shape[-1]
        head, rest = t[..., :rot], t[..., rot:]
        pairs = head.unflatten(-1, (-1, 2))  # [B, H, L, R/2, 2]
        turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (a, b) -> (-b, a)
        out = head * angles.cos() + turned * angles.sin()
        return torch.cat((out, rest), dim=-1)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = int(dim * mult)
        # Indices as MSST's (norm, linear, gelu, dropout, linear, dropout): dropouts are identities here.
        self.net = nn.Sequential(RMSNorm(dim), nn.Linear(dim, inner), nn.GELU(), nn.Identity(),
                                 nn.Linear(inner, dim), nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Pre-normed multi-head self-attention with rotary positions and a sigmoid gate per head."""

    def __init__(self, dim: int, heads: int, dim_head: int, rotary_embed: RotaryEmbedding):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.rotary_embed = rotary_embed  # shared by every layer of one axis, as in MSST
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False), nn.Identity())

    def forward(self, x: Tensor) -> Tensor:  # [B, L, D]
        x = self.norm(x)
        b, length, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # 3 x [B, H, L, E]
        q, k = self.rotary_embed.rotate(q), self.rotary_embed.rotate(k)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, L, E], scale E ** -0.5
        out = out * torch.sigmoid(self.to_gates(x)).transpose(1, 2)[..., None]  # gates [B, L, H] -> [B, H, L, 1]
        return self.to_out(out.transpose(1, 2).reshape(b, length, -1))  # [B, L, H*E] -> [B, L, D]


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, rotary_embed: RotaryEmbedding):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head, rotary_embed), FeedForward(dim)]) for _ in range(depth)
        )
        self.norm = RMSNorm(dim)

    def forward(self, x: Tensor) -> Tensor:  # [B, L, D]
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


class DualPathTran(nn.Module):
    """`DualPathRNN` with a transformer across frequency, then one across time."""

    def __init__(self, d_model: int, time_rotary: RotaryEmbedding, freq_rotary: RotaryEmbedding,
                 depth: int, heads: int, dim_head: int):
        super().__init__()
        self.norm_layers = nn.ModuleList(nn.GroupNorm(1, d_model) for _ in range(2))
        self.time_layer = Transformer(d_model, depth, heads, dim_head, time_rotary)
        self.freq_layer = Transformer(d_model, depth, heads, dim_head, freq_rotary)

    def forward(self, x: Tensor) -> Tensor:  # [B, D, F, N]
        shape = x.shape
        x = x + _from_frequency(self.freq_layer(_over_frequency(self.norm_layers[0](x))), shape)
        return x + _from_time(self.time_layer(_over_time(self.norm_layers[1](x))), shape)


class SeparationNet(nn.Module):
    """Dual-path layers; after each, an orthonormal rfft over frames (even layers: D -> 2D
    channels, real then imaginary parts) or its inverse (odd layers: 2D -> D)."""

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        self.dp_modules = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:  # [B, D, F', N] -> [B, D, F', N]
        for i, layer in enumerate(self.dp_modules):
            x = layer(x).float()
            if i % 2 == 0:
                spec = torch.fft.rfft(x, dim=3, norm="ortho")  # [B, D, F', N//2+1]
                x = torch.cat([spec.real, spec.imag], dim=1)  # [B, 2D, F', N//2+1]
            else:
                half = x.shape[1] // 2
                x = torch.fft.irfft(torch.complex(x[:, :half], x[:, half:]), dim=3, norm="ortho")  # [B, D, F', N]
        return x


# --------------------------------------------------------------------------- the networks


def _complex_pairs(x: Tensor) -> Tensor:
    """CaC channels to complex: [B, 2K, F, N] (channel 2k real, 2k + 1 imaginary) -> [B, K, F, N]."""
    b, ch, f, n = x.shape
    return torch.view_as_complex(x.reshape(b, ch // 2, 2, f, n).permute(0, 1, 3, 4, 2).contiguous())


class SCNet(nn.Module):
    """MSST's "scnet": [B, C, T] -> [B, S, C, T].

    Constructor arguments are the `model` keys of an MSST config (same names and defaults).
    """

    def __init__(self, sources: Sequence[str] = ("drums", "bass", "other", "vocals"), audio_channels: int = 2,
                 dims: Sequence[int] = (4, 32, 64, 128), nfft: int = 4096, hop_size: int = 1024,
                 win_size: int = 4096, normalized: bool = True,
                 band_SR: Sequence[float] = (0.175, 0.392, 0.433), band_stride: Sequence[int] = (1, 4, 16),
                 band_kernel: Sequence[int] = (3, 4, 16), conv_depths: Sequence[int] = (3, 2, 1),
                 compress: float = 4, conv_kernel: int = 3, num_dplayer: int = 6, expand: int = 1):
        super().__init__()
        if len(band_SR) != 3 or len(band_stride) != 3 or len(band_kernel) != 3:
            raise ValueError("band_SR, band_stride and band_kernel need three values (low, mid, high)")
        if len(dims) < 2:
            raise ValueError(f"dims needs at least two values, got {list(dims)}")
        if dims[0] != 2 * audio_channels:
            raise ValueError(f"dims[0] must be 2 * audio_channels = {2 * audio_channels} (real and imaginary "
                             f"part per channel), got {dims[0]}")
        self.outputs = list(sources)  # what the network computes; `sources`: what forward returns
        self.sources = list(self.outputs)
        self.audio_channels = int(audio_channels)
        self.dims = list(dims)
        self.hop_length = int(hop_size)
        self.stft_args = dict(n_fft=int(nfft), hop_length=int(hop_size), win_length=int(win_size), center=True,
                              normalized=bool(normalized))
        bands = [dict(SR=band_SR[i], stride=int(band_stride[i]), kernel=int(band_kernel[i])) for i in range(3)]
        self._keep: Optional[List[int]] = None
        # MSST's "scnet" passes no window: torch.stft's default, ones over win_size (given here, the
        # same numbers, so that torch does not warn about it on every chunk).
        self.register_buffer("window", torch.ones(int(win_size)), persistent=False)

        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(len(dims) - 1):
            self.encoder.append(SDblock(dims[i], dims[i + 1], bands, conv_depths, compress, conv_kernel))
            out = dims[i] * len(self.outputs) if i == 0 else dims[i]
            # The decoder runs deepest level first: MSST prepends each level, so index 0 is the deepest.
            self.decoder.insert(0, nn.Sequential(FusionLayer(dims[i + 1]), SUlayer(dims[i + 1], out, bands)))
        self.separation_net = SeparationNet(self._dual_path_layers(dims[-1], num_dplayer, expand))

    def _dual_path_layers(self, channels: int, count: int, expand: int) -> List[nn.Module]:
        # Odd layers run on the rfft's 2D channels.
        return [DualPathRNN(channels * (2 if i % 2 else 1), expand) for i in range(count)]

    def keep_only(self, indices: Sequence[int]) -> None:
        """Return only these of the network's outputs (MSST keeps `training.target_instrument`'s)."""
        self._keep = [int(i) for i in indices]
        self.sources = [self.outputs[i] for i in self._keep]

    def _trunk(self, x: Tensor) -> Tensor:  # [B, 2C, F, N] -> [B, S*2C, F, N]
        skips, lengths, widths = [], [], []
        for block in self.encoder:
            x, skip, length, width = block(x)
            skips.append(skip)
            lengths.append(length)
            widths.append(width)
        x = self.separation_net(x)
        for fusion, up in self.decoder:
            x = up(fusion(x, skips.pop()), lengths.pop(), widths.pop())
        return x

    def _stems(self, spec: Tensor) -> Tensor:
        """The stems' complex spectrograms from the mix's CaC one: [B, 2C, F, N] -> complex [B, S*C, F, N]."""
        return _complex_pairs(self._trunk(spec))

    def forward(self, mix: Tensor) -> Tensor:  # [B, C, T] -> [B, S, C, T]
        b, c, length = mix.shape
        # Pad to an odd number of hops, so that the centred STFT has an even frame count N: the
        # separation net's irfft of the N // 2 + 1 bins of its rfft over frames gives N frames again.
        pad = self.hop_length - length % self.hop_length
        if (length + pad) // self.hop_length % 2 == 0:
            pad += self.hop_length
        x = F.pad(mix, (0, pad))
        padded = x.shape[-1]
        window = self.window.to(x.device)
        spec = torch.stft(x.reshape(b * c, padded), window=window, return_complex=True, **self.stft_args)
        bins, frames = spec.shape[-2:]
        spec = torch.view_as_real(spec).permute(0, 3, 1, 2).reshape(b, 2 * c, bins, frames)  # [B, 2C, F, N]
        stems = self._stems(spec).reshape(-1, bins, frames)  # [B*S*C, F, N]
        audio = torch.istft(stems, window=window, **self.stft_args)  # [B*S*C, padded]
        audio = audio.reshape(b, -1, c, audio.shape[-1])[..., :length]  # [B, S, C, T]
        if self._keep is not None:
            audio = audio[:, self._keep]
        return audio


class SCNetMasked(SCNet):
    """MSST's "scnet_masked": the trunk's output, through a conv head with tanh, is a complex
    mask on the mixture's spectrogram (repeated per stem); a learned embedding per bin is
    added to the input; the STFT has a periodic Hann window."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        nfft = self.stft_args["n_fft"]
        if self.dims[0] != 4:
            raise ValueError(f"scnet_masked's mask head takes 4 channels per stem (stereo, dims[0] = 4), "
                             f"got dims[0] = {self.dims[0]}")
        if self.stft_args["win_length"] != nfft:
            raise ValueError(f"scnet_masked's Hann window has nfft = {nfft} samples, so win_size must be {nfft}")
        self.pos_embed_f = nn.Parameter(torch.zeros(1, self.dims[0], nfft // 2 + 1, 1))
        self.window = torch.hann_window(nfft, periodic=True)  # replaces the rectangular one (not in the state dict)
        width = 4 * len(self.outputs)
        self.mask_layer = nn.Sequential(nn.Conv2d(width, 64, 3, padding="same"), nn.GELU(),
                                        nn.Conv2d(64, width, 1, padding="same"), nn.Tanh())

    def _stems(self, spec: Tensor) -> Tensor:  # [B, 2C, F, N] -> complex [B, S*C, F, N]
        bins = spec.shape[2]
        mask = self.mask_layer(self._trunk(spec + self.pos_embed_f[:, :, :bins]))  # [B, S*2C, F, N] in (-1, 1)
        mixture = spec.repeat(1, len(self.outputs), 1, 1)  # [B, S*2C, F, N]
        return _complex_pairs(mixture) * _complex_pairs(mask)


class SCNetTran(SCNet):
    """MSST's "scnet_tran": dual-path transformers instead of LSTMs (`tran_*` arguments;
    dropouts and the flash switch change no number at inference)."""

    def __init__(self, *args, tran_rotary_embedding_dim: int = 64, tran_depth: int = 1, tran_heads: int = 8,
                 tran_dim_head: int = 64, tran_attn_dropout: float = 0.0, tran_ff_dropout: float = 0.0,
                 tran_flash_attn: bool = False, **kwargs):
        del tran_attn_dropout, tran_ff_dropout, tran_flash_attn  # inference: no dropout; attention is exact either way
        if tran_rotary_embedding_dim > tran_dim_head:
            raise ValueError(f"tran_rotary_embedding_dim {tran_rotary_embedding_dim} exceeds tran_dim_head "
                             f"{tran_dim_head}")
        self._tran = dict(rotary=int(tran_rotary_embedding_dim), depth=int(tran_depth), heads=int(tran_heads),
                          dim_head=int(tran_dim_head))
        super().__init__(*args, **kwargs)
        # In the state dict, never used by MSST's forward.
        self.first_conv = nn.Conv2d(self.dims[0], self.dims[0], 1, 1, 0, bias=False)

    def _dual_path_layers(self, channels: int, count: int, expand: int) -> List[nn.Module]:
        del expand  # an LSTM width; the transformers have none
        t = self._tran
        time_rotary, freq_rotary = RotaryEmbedding(t["rotary"]), RotaryEmbedding(t["rotary"])
        return [DualPathTran(channels * (2 if i % 2 else 1), time_rotary, freq_rotary, t["depth"], t["heads"],
                             t["dim_head"]) for i in range(count)]


#: MSST model type -> class.
MODEL_TYPES = {"scnet": SCNet, "scnet_masked": SCNetMasked, "scnet_tran": SCNetTran}
