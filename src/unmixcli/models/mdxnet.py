"""UVR's MDX-Net (ConvTDFNet, KUIELab's MDX 2021 network): the spectrogram U-Net and its STFT.

The network UVR ships as ONNX maps a spectrogram to a spectrogram, both
`[B, Cs, F, N]` with Cs = 4 planes (left re, left im, right re, right im), F =
`dim_f` bins (the lowest `dim_f` of the STFT's n_fft/2 + 1) and N = `dim_t`
frames. `ConvTDFNet` is that network:

    1x1 conv to g channels -> (time, frequency) axes swapped ->
    n encoder levels: TFC-TDF block, 2x2 strided conv adding g channels ->
    bottleneck TFC-TDF -> n decoder levels: 2x2 transposed conv removing g
    channels, product with the skip, TFC-TDF -> axes swapped back -> 1x1 conv to Cs.

A TFC-TDF block is `l` k x k conv/norm/ReLU layers (TFC) followed by a residual
TDF: one or two linear maps along frequency (f -> f // bn -> f; bn = 0: one
f -> f map), each followed by a norm over channels and a ReLU.

In the trained network every conv and linear map is followed by an eval-mode
BatchNorm, an affine map per channel (x s + t). Here the one after a conv or a
transposed conv is folded into its weights at load (W s, b s + t: exports fold
some and not others, the loader folds the rest), and the one after a linear map,
whose weights every channel shares, is kept as a per-channel scale and a shift
that also carries the map's bias (`LinearNormReLU`).

On the CPU the U-Net runs in channels-last layout ([B, N, F, c] in memory):
oneDNN's convs take it without reordering their input and output, 1.2-1.5x
faster than the plain layout at the top levels (measured per conv on an AVX-512
Zen 4 machine), and the TDF maps then contract F as a batched matmul that needs
no copy. Elsewhere (CUDA, MPS) the plain layout is kept; `ConvTDFNet.channels_last`
overrides the choice.

`MDXNet` wraps the network with the STFT front end as audio-separator's MDX
separator runs it (periodic Hann window, centred, zero-padded above dim_f,
the three lowest bins zeroed) and its whole-track chunking (`demix`).

Shapes: B batch, C audio channels (2), Cs spectrogram planes (2 C), T samples,
F frequency bins (dim_f), N frames, K bins of the full STFT (n_fft/2 + 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ConvTDFConfig:
    """The network's shape. What UVR's table does not say is read from the ONNX graph.

    Attributes:
        dim_c: spectrogram planes in and out (4: stereo re/im).
        dim_f: frequency bins the network sees.
        g: channels added per encoder level (and of the first conv).
        n: encoder (and decoder) levels; KUIELab's `num_blocks` is 2 n + 1.
        l: conv layers per TFC.
        k: TFC kernel size (odd).
        bn: TDF bottleneck factor (0: a single f -> f map).
        bias: the TDF linear maps have a bias.
    """

    dim_c: int
    dim_f: int
    g: int
    n: int
    l: int
    k: int
    bn: int
    bias: bool

    def __post_init__(self) -> None:
        if self.dim_f % (2 ** self.n):
            raise ValueError(f"dim_f {self.dim_f} is not divisible by 2**{self.n}")
        if self.k % 2 != 1:
            raise ValueError(f"kernel size must be odd, got {self.k}")


class ConvReLU(nn.Module):
    """conv (or transposed conv, its BatchNorm folded in) -> ReLU."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu_(self.conv(x))  # in place: the conv's output is a fresh tensor


class LinearNormReLU(nn.Module):
    """linear map along the last (frequency) axis -> BatchNorm over channels -> ReLU, for
    [B, c, N, f] in either layout. The norm is `scale` [c] and `shift_t` [f_out, c] (its shift
    plus scale times the map's bias, stored transposed as the channels-last path reads it):
    relu(W x * scale + shift)."""

    def __init__(self, f_in: int, f_out: int, channels: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(f_out, f_in))  # [f_out, f_in], as nn.Linear
        self.has_bias = bias  # the file's map has a bias (folded into `shift` at load)
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("shift_t", torch.zeros(f_out, channels))

    def forward(self, x: Tensor) -> Tensor:
        if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
            y = torch.nn.functional.linear(x, self.weight)  # [B, c, N, f_out]
            y = torch.addcmul(self.shift_t.t()[:, None, :], y, self.scale[:, None, None], out=y)
            return torch.relu_(y)
        # Channels-last: the memory is [B, N, f, c], so W [f_out, f] @ x [B N, f, c] contracts f
        # with no copy and leaves [B N, f_out, c], the channels-last memory of [B, c, N, f_out].
        # (bmm with the weight expanded, not matmul: matmul would transpose both and copy.)
        b, c, n, f = x.shape
        xs = x.permute(0, 2, 3, 1).reshape(b * n, f, c)  # a view
        y = torch.bmm(self.weight.expand(b * n, -1, -1), xs)  # [B N, f_out, c]
        y = torch.relu_(torch.addcmul(self.shift_t, y, self.scale, out=y))
        y = y.view(b, n, -1, c)  # [B, N, f_out, c]
        return y.permute(0, 3, 1, 2)  # [B, c, N, f_out], channels-last


class TFCTDF(nn.Module):
    """`l` conv layers, then x + TDF(x). Input and output [B, c, N, f]."""

    def __init__(self, c: int, f: int, cfg: ConvTDFConfig) -> None:
        super().__init__()
        self.tfc = nn.ModuleList(
            ConvReLU(nn.Conv2d(c, c, cfg.k, stride=1, padding=cfg.k // 2)) for _ in range(cfg.l))
        if cfg.bn == 0:
            self.tdf = nn.ModuleList([LinearNormReLU(f, f, c, cfg.bias)])
        else:
            self.tdf = nn.ModuleList([LinearNormReLU(f, f // cfg.bn, c, cfg.bias),
                                      LinearNormReLU(f // cfg.bn, f, c, cfg.bias)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.tfc:
            x = layer(x)
        y = x
        for layer in self.tdf:
            y = layer(y)
        return y.add_(x)  # x + y; in place: y is the TDF's fresh output


class ConvTDFNet(nn.Module):
    """The MDX-Net spectrogram U-Net: [B, Cs, F, N] -> [B, Cs, F, N]."""

    def __init__(self, cfg: ConvTDFConfig, channels_last: Optional[bool] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.channels_last = channels_last  # None: on the CPU only (see the module docstring)
        g = cfg.g
        self.first = ConvReLU(nn.Conv2d(cfg.dim_c, g, 1))
        f, c = cfg.dim_f, g
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        for _ in range(cfg.n):
            self.encoders.append(TFCTDF(c, f, cfg))
            self.downs.append(ConvReLU(nn.Conv2d(c, c + g, 2, stride=2)))
            f, c = f // 2, c + g
        self.bottleneck = TFCTDF(c, f, cfg)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for _ in range(cfg.n):
            self.ups.append(ConvReLU(nn.ConvTranspose2d(c, c - g, 2, stride=2)))
            f, c = f * 2, c - g
            self.decoders.append(TFCTDF(c, f, cfg))
        self.final = nn.Conv2d(c, cfg.dim_c, 1)

    def layers(self) -> List[nn.Module]:
        """The weighted layers in the order the forward runs them (what an ONNX graph lists)."""
        order: List[nn.Module] = [self.first]

        def block(b: TFCTDF) -> None:
            order.extend(b.tfc)
            order.extend(b.tdf)

        for enc, down in zip(self.encoders, self.downs):
            block(enc)
            order.append(down)
        block(self.bottleneck)
        for up, dec in zip(self.ups, self.decoders):
            order.append(up)
            block(dec)
        order.append(self.final)
        return order

    def forward(self, x: Tensor) -> Tensor:
        last = x.device.type == "cpu" if self.channels_last is None else self.channels_last
        if last:
            x = self._first_channels_last(x)
        else:
            x = self.first(x).transpose(-1, -2).contiguous()  # [B, g, N, F]: the TDF maps act on the last axis
        skips = []
        for enc, down in zip(self.encoders, self.downs):
            x = enc(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec(up(x).mul_(skip))  # in place: the up conv's output is fresh
        if last:
            return self._final_channels_last(x)
        return self.final(x.transpose(-1, -2))  # [B, Cs, F, N]

    # The 1x1 convs at both ends, as matmuls over the planes, so that the axis swap (F, N) and
    # the channels-last layout cost no copy of the g-channel tensors.
    def _first_channels_last(self, x: Tensor) -> Tensor:
        """[B, Cs, F, N] -> relu(first conv), [B, g, N, F] in channels-last memory [B, N, F, g]."""
        b, cs, f, n = x.shape
        w = self.first.conv.weight[:, :, 0, 0]  # [g, Cs]
        planes = x.permute(0, 3, 2, 1).reshape(b * n * f, cs)  # [B N F, Cs]: a copy of the small input
        y = torch.addmm(self.first.conv.bias, planes, w.t())  # [B N F, g]
        return torch.relu_(y).view(b, n, f, -1).permute(0, 3, 1, 2)

    def _final_channels_last(self, x: Tensor) -> Tensor:
        """[B, c, N, F] in channels-last memory -> the final conv's [B, Cs, F, N]."""
        b, c, n, f = x.shape
        w = self.final.weight[:, :, 0, 0]  # [Cs, c]
        y = torch.addmm(self.final.bias, x.permute(0, 2, 3, 1).reshape(b * n * f, c), w.t())  # [B N F, Cs]
        return y.view(b, n, f, -1).permute(0, 3, 2, 1).contiguous()  # [B, Cs, F, N]


class MDXNet(nn.Module):
    """A ConvTDFNet with its STFT: a waveform chunk [B, C, T] -> the primary stem [B, C, T].

    T must be hop * (dim_t - 1) for the network's N = dim_t frames (`chunk_size`).

    Attributes:
        net: the spectrogram network.
        n_fft, hop, dim_f, dim_t: the STFT and the network's input size.
        denoise: run the network on the spectrogram and its negation and average
            f(x) and -f(-x), as audio-separator's `enable_denoise`.
    """

    def __init__(self, net: nn.Module, *, n_fft: int, hop: int, dim_f: int, dim_t: int,
                 channels: int = 2, denoise: bool = False) -> None:
        super().__init__()
        if dim_f > n_fft // 2 + 1:
            raise ValueError(f"dim_f {dim_f} exceeds the {n_fft // 2 + 1} bins of an {n_fft}-point STFT")
        if n_fft <= hop:
            # The Hann windows would leave a sample of each frame uncovered: no inverse STFT.
            raise ValueError(f"n_fft {n_fft} must exceed the hop of {hop} samples")
        self.net = net
        self.n_fft, self.hop, self.dim_f, self.dim_t = n_fft, hop, dim_f, dim_t
        self.channels = channels
        self.denoise = denoise
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)

    @property
    def chunk_size(self) -> int:
        return self.hop * (self.dim_t - 1)

    @property
    def trim(self) -> int:
        return self.n_fft // 2

    def spectrogram(self, wave: Tensor) -> Tensor:
        """[B, C, T] -> [B, 2 C, F, N] (per channel: re, im; lowest dim_f bins)."""
        b, c, t = wave.shape
        z = torch.stft(wave.reshape(b * c, t), self.n_fft, self.hop, window=self.window,
                       center=True, return_complex=True)  # [B C, K, N]
        z = torch.view_as_real(z).permute(0, 3, 1, 2)  # [B C, 2, K, N]
        return z.reshape(b, c * 2, z.shape[-2], z.shape[-1])[:, :, :self.dim_f]

    def waveform(self, spec: Tensor) -> Tensor:
        """[B, 2 C, F, N] -> [B, C, hop (N - 1)]; bins above dim_f are zero."""
        b, cs, f, n = spec.shape
        bins = self.n_fft // 2 + 1
        full = torch.nn.functional.pad(spec, (0, 0, 0, bins - f))  # [B, 2 C, K, N]
        full = full.reshape(b * cs // 2, 2, bins, n).permute(0, 2, 3, 1).contiguous()  # [B C, K, N, 2]
        wave = torch.istft(torch.view_as_complex(full), self.n_fft, self.hop, window=self.window, center=True)
        return wave.reshape(b, cs // 2, -1)

    def forward(self, chunk: Tensor) -> Tensor:
        spec = self.spectrogram(chunk)
        # audio-separator's run_model zeroes the three lowest bins before the network.
        spec = torch.cat([torch.zeros_like(spec[:, :, :3]), spec[:, :, 3:]], dim=2)
        # .float(): under bf16 autocast (--precision bf16) the network's output is bf16, and the
        # inverse STFT and the overlap-add run in float32 whatever the network ran in.
        if self.denoise:
            pred = 0.5 * self.net(spec).float() - 0.5 * self.net(-spec).float()
        else:
            pred = self.net(spec).float()
        return self.waveform(pred)

    @torch.no_grad()
    def demix(self, mix: Tensor, *, overlap: float = 0.25, batch_size: int = 1) -> Tensor:
        """The primary stem of a whole track [C, T] -> [C, T], chunked as audio-separator's
        MDX separator: `trim` zeros before, zeros after up to whole steps, chunks of
        `chunk_size` every (1 - overlap) chunk_size samples (the last ones zero-filled),
        each weighted by a symmetric Hann window of its real length, then divided by
        the summed windows and trimmed."""
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        c, t = mix.shape
        chunk, trim = self.chunk_size, self.trim
        gen = chunk - 2 * trim
        pad = gen + trim - t % gen
        mixture = torch.cat([mix.new_zeros(c, trim), mix, mix.new_zeros(c, pad)], dim=1)  # [C, T']
        total = mixture.shape[-1]
        step = int((1 - overlap) * chunk)
        result = mix.new_zeros(c, total)
        divider = mix.new_zeros(1, total)  # the same for every channel
        starts = list(range(0, total, step))
        for first in range(0, len(starts), batch_size):
            group = starts[first:first + batch_size]
            parts = []
            for start in group:
                part = mixture[:, start:start + chunk]
                parts.append(torch.nn.functional.pad(part, (0, chunk - part.shape[-1])))
            out = self(torch.stack(parts))  # [b, C, chunk]
            for j, start in enumerate(group):
                length = min(chunk, total - start)
                w = _symmetric_hann(length, mix) if overlap != 0 else mix.new_ones(length)
                result[:, start:start + length] += out[j, :, :length] * w
                divider[:, start:start + length] += w
        # The first and last samples have zero weight (0 / 0); both lie in the trimmed margins.
        return (result / divider)[:, trim:-trim][:, :t]


def _symmetric_hann(length: int, like: Tensor) -> Tensor:
    """numpy's `hanning(length)`: symmetric, zero at both ends."""
    if length == 1:
        return like.new_ones(1)
    n = torch.arange(length, dtype=torch.float64)
    return (0.5 - 0.5 * torch.cos(2 * math.pi * n / (length - 1))).to(like.dtype)


class MDXNetSeparator(nn.Module):
    """The waveform model the engine runs: a mix [B, C, T] -> [B, 2, C, T] (primary, secondary).

    Each item is demixed whole (`MDXNet.demix`, audio-separator's chunking), so a mix the
    engine hands over in one segment gives exactly the reference's result. The stems are
    UVR's (separate.py, SeperateMDX): primary = compensate * demix(mix), secondary =
    mix - primary.

    Attributes:
        sources: (primary, secondary) stem names.
        samplerate, audio_channels: 44100 and 2, as UVR runs every MDX-Net model.
        overlap: the fraction of a chunk shared with the next one inside `demix`.
    """

    def __init__(self, model: MDXNet, *, compensate: float, sources, overlap: float = 0.25,
                 samplerate: int = 44100, batch_size: int = 1) -> None:
        super().__init__()
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.model = model
        self.compensate = float(compensate)
        self.sources = list(sources)
        self.overlap = overlap
        self.batch_size = batch_size
        self.samplerate = samplerate
        self.audio_channels = model.channels

    @torch.no_grad()
    def forward(self, mix: Tensor) -> Tensor:
        outs = []
        for item in mix.float():  # [C, T]
            primary = self.compensate * self.model.demix(item, overlap=self.overlap, batch_size=self.batch_size)
            outs.append(torch.stack([primary, item - primary]))  # [2, C, T]
        return torch.stack(outs).to(mix.dtype)  # [B, 2, C, T]
