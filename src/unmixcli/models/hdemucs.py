"""Hybrid Demucs (v3, `HDemucs`) and the layers that Hybrid Transformer Demucs (v4)
reuses: `ScaledEmbedding`, `HEncLayer`, `HDecLayer`, `MultiWrap`. The spectrogram front
and back end of both models is `hybrid.HybridSpectrogram`.

The model runs two U-Nets side by side: one over the complex spectrogram (complex as
channels, convolutions along frequency) and one over the waveform; they are merged
where both have the same time resolution and split again in the decoder, and the two
outputs are summed. Numerics, module names and registration order follow
`demucs.hdemucs` of demucs 4.1.0, so published checkpoints load unchanged (by key, and
by position for diffq-packed ones).
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .cpu_kernels import conv_transpose_gemm, cpu_fp32_inference
from .demucs import DConv, rescale_module
# pad1d and wiener moved to hybrid.py with the spectral code; still importable from here.
from .hybrid import HybridSpectrogram, pad1d, wiener

__all__ = [
    "HDecLayer",
    "HDemucs",
    "HEncLayer",
    "MultiWrap",
    "ScaledEmbedding",
    "pad1d",
    "wiener",
]


class ScaledEmbedding(nn.Module):
    """Embedding whose output is multiplied by `scale` (the stored table is divided by
    it), which amounts to a larger learning rate for it. With `smooth`, the initial
    table is a normalised running sum over positions, so neighbouring frequencies start
    with similar embeddings.

    Shapes: forward `[*]` (int64 indices) -> `[*, D]`.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, scale: float = 10.,
                 smooth: bool = False):
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        with torch.no_grad():
            if smooth:
                table = torch.cumsum(self.embedding.weight, dim=0)
                # A sum of n Gaussian rows has std sqrt(n): divide it back out.
                counts = torch.arange(1, num_embeddings + 1).to(table)
                self.embedding.weight[:] = table / counts.sqrt()[:, None]
            self.embedding.weight /= scale
        self.scale = scale

    @property
    def weight(self) -> torch.Tensor:
        """The effective table `[num_embeddings, D]`."""
        return self.embedding.weight * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x) * self.scale


class HEncLayer(nn.Module):
    """One encoder layer of the hybrid U-Net, for the frequency branch (`freq=True`:
    2-D convs with kernel `[K, 1]` striding along frequency) or the time branch (1-D
    convs). Strided conv -> norm -> GELU -> optional DConv -> optional 1x1 "rewrite"
    conv with GLU.

    Args:
        chin, chout: input/output channels.
        kernel_size, stride: of the strided conv (along frequency or time).
        norm_groups: GroupNorm groups when `norm`.
        empty: only the strided conv (used just before the two branches merge).
        freq: frequency-branch layer.
        dconv: add a DConv residual branch (with `dconv_kw`).
        norm: use GroupNorm (Identity otherwise).
        context: half-width of the rewrite conv's kernel.
        pad: pad by kernel_size // 4 so the output length is input / stride.
        rewrite: add the 1x1 conv + GLU.

    Shapes: freq `[B, Cin, F, T]` -> `[B, Cout, F / stride, T]`;
    time `[B, Cin, T]` -> `[B, Cout, ceil(T / stride)]`.
    """

    def __init__(self, chin: int, chout: int, kernel_size: int = 8, stride: int = 4,
                 norm_groups: int = 1, empty: bool = False, freq: bool = True,
                 dconv: bool = True, norm: bool = True, context: int = 0,
                 dconv_kw: Optional[Dict] = None, pad: bool = True, rewrite: bool = True):
        super().__init__()
        dconv_kw = {} if dconv_kw is None else dconv_kw

        def make_norm(dim: int) -> nn.Module:
            return nn.GroupNorm(norm_groups, dim) if norm else nn.Identity()

        pad_size = kernel_size // 4 if pad else 0
        self.freq = freq
        self.kernel_size = kernel_size
        self.stride = stride
        self.empty = empty
        self.norm = norm
        self.pad = pad_size
        if freq:
            conv_cls = nn.Conv2d
            conv_args = ([kernel_size, 1], [stride, 1], [pad_size, 0])
        else:
            conv_cls = nn.Conv1d
            conv_args = (kernel_size, stride, pad_size)
        self.conv = conv_cls(chin, chout, *conv_args)
        if empty:
            return
        self.norm1 = make_norm(chout)
        self.rewrite = None
        if rewrite:
            self.rewrite = conv_cls(chout, 2 * chout, 1 + 2 * context, 1, context)
            self.norm2 = make_norm(2 * chout)
        self.dconv = None
        if dconv:
            self.dconv = DConv(chout, **dconv_kw)

    def forward(self, x: torch.Tensor, inject: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`inject`: time-branch output added after the conv, where both branches reach
        the same time resolution (`[B, Cout, T]` or `[B, Cout, F, T]`)."""
        if not self.freq:
            if x.dim() == 4:
                batch, _, _, frames = x.shape
                x = x.view(batch, -1, frames)  # [B, C, F, T] -> [B, C*F, T]
            rest = x.shape[-1] % self.stride
            if rest:
                x = F.pad(x, (0, self.stride - rest))
        y = self.conv(x)
        if self.empty:
            return y
        if inject is not None:
            if inject.shape[-1] != y.shape[-1]:
                raise RuntimeError(f"cannot inject {tuple(inject.shape)} into {tuple(y.shape)}")
            if inject.dim() == 3 and y.dim() == 4:
                inject = inject[:, :, None]  # broadcast over the single frequency row
            y = y + inject
        y = F.gelu(self.norm1(y))
        if self.dconv is not None:
            y = _dconv_any(self.dconv, y, self.freq)
        if self.rewrite is not None:
            return F.glu(self.norm2(self.rewrite(y)), dim=1)
        return y


def _dconv_any(dconv: nn.Module, y: torch.Tensor, freq: bool) -> torch.Tensor:
    """Run a (1-D, over time) DConv; frequency rows are treated as a batch."""
    return dconv.forward_rows(y) if freq else dconv(y)


class HDecLayer(nn.Module):
    """One decoder layer, mirror of `HEncLayer`: add skip -> optional rewrite conv with
    GLU -> optional DConv -> transposed strided conv -> norm -> GELU (unless `last`).

    `context_freq=False` makes the rewrite conv see context along time only (used inside
    `MultiWrap`, where frequency bands are processed separately).

    Forward returns `(output, pre)`, `pre` being the input of the transposed conv (the
    hybrid model hands it to the time branch when the branches split).

    Shapes: freq `[B, Cin, F, T]` -> `[B, Cout, F * stride, T]`;
    time `[B, Cin, T]` -> `[B, Cout, length]`.
    """

    def __init__(self, chin: int, chout: int, last: bool = False, kernel_size: int = 8,
                 stride: int = 4, norm_groups: int = 1, empty: bool = False,
                 freq: bool = True, dconv: bool = True, norm: bool = True, context: int = 1,
                 dconv_kw: Optional[Dict] = None, pad: bool = True, context_freq: bool = True,
                 rewrite: bool = True):
        super().__init__()
        dconv_kw = {} if dconv_kw is None else dconv_kw

        def make_norm(dim: int) -> nn.Module:
            return nn.GroupNorm(norm_groups, dim) if norm else nn.Identity()

        self.pad = kernel_size // 4 if pad else 0
        self.last = last
        self.freq = freq
        self.chin = chin
        self.empty = empty
        self.stride = stride
        self.kernel_size = kernel_size
        self.norm = norm
        self.context_freq = context_freq
        if freq:
            conv_cls, convtr_cls = nn.Conv2d, nn.ConvTranspose2d
            self.conv_tr = convtr_cls(chin, chout, [kernel_size, 1], [stride, 1])
        else:
            conv_cls, convtr_cls = nn.Conv1d, nn.ConvTranspose1d
            self.conv_tr = convtr_cls(chin, chout, kernel_size, stride)
        self.norm2 = make_norm(chout)
        if empty:
            return
        self.rewrite = None
        if rewrite:
            if context_freq:
                self.rewrite = conv_cls(chin, 2 * chin, 1 + 2 * context, 1, context)
            else:
                self.rewrite = conv_cls(chin, 2 * chin, [1, 1 + 2 * context], 1, [0, context])
            self.norm1 = make_norm(2 * chin)
        self.dconv = None
        if dconv:
            self.dconv = DConv(chin, **dconv_kw)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor],
                length: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.freq and x.dim() == 3:
            batch, _, frames = x.shape
            x = x.view(batch, self.chin, -1, frames)  # [B, C, T] -> [B, C, 1, T]

        if self.empty:
            if skip is not None:
                raise RuntimeError("an empty decoder layer takes no skip connection")
            y = x
        else:
            x = x + skip
            if self.rewrite is not None:
                y = F.glu(self.norm1(self.rewrite(x)), dim=1)
            else:
                y = x
            if self.dconv is not None:
                y = _dconv_any(self.dconv, y, self.freq)

        z = self.norm2(_transposed_conv(self.conv_tr, y, self.freq))
        if self.freq:
            if self.pad:
                z = z[..., self.pad:-self.pad, :]
        else:
            z = z[..., self.pad:self.pad + length]
            if z.shape[-1] != length:
                raise RuntimeError(f"decoder output has {z.shape[-1]} steps, wanted {length}")
        if not self.last:
            z = F.gelu(z)
        return z, y


def _transposed_conv(conv_tr: nn.Module, y: torch.Tensor, freq: bool) -> torch.Tensor:
    """`conv_tr(y)`, with the 2-D (frequency) case on a faster CPU route.

    torch sends a contiguous NCHW ConvTranspose2d on CPU down its slow path. For fp32
    inference the layer runs as GEMMs (`cpu_kernels.conv_transpose_gemm`, ~1.2-1.5x
    faster on this model's decoder shapes than the channels-last route, which needs two
    layout copies of the largest activations); otherwise on channels-last memory, where
    oneDNN gives the same values bit for bit about 3x faster than NCHW.
    """
    if freq and y.dim() == 4 and y.device.type == "cpu":
        if cpu_fp32_inference(y) and _upsamples_rows(conv_tr):
            return conv_transpose_gemm(y, conv_tr.weight, conv_tr.bias, conv_tr.stride[0])
        return conv_tr(y.contiguous(memory_format=torch.channels_last)).contiguous()
    return conv_tr(y)


def _upsamples_rows(conv_tr: nn.Module) -> bool:
    """A ConvTranspose2d with kernel [K, 1], stride [s, 1], K a multiple of s, and no
    padding, dilation or groups: what `conv_transpose_gemm` computes."""
    (taps, width), (stride, stride_w) = conv_tr.kernel_size, conv_tr.stride
    return (width == 1 and stride_w == 1 and taps % stride == 0 and conv_tr.groups == 1
            and tuple(conv_tr.padding) == (0, 0) and tuple(conv_tr.dilation) == (1, 1)
            and tuple(conv_tr.output_padding) == (0, 0))


class MultiWrap(nn.Module):
    """Split the frequency axis into bands (at `split_ratios` of the height) and give
    each band its own copy of an `HEncLayer`/`HDecLayer`. The band edges are chosen so
    that, if all copies had the same weights, the result would equal the wrapped layer
    on the whole axis (the transposed-conv overlaps are summed across band borders).

    Args:
        layer: the (freq, padded, un-normalised) layer to replicate.
        split_ratios: increasing fractions of the frequency axis where bands end; one
            more band runs to the top.

    Shapes: as the wrapped layer. Decoder forward returns `(output, None)`.
    """

    def __init__(self, layer: nn.Module, split_ratios: Sequence[float]):
        super().__init__()
        self.split_ratios = split_ratios
        self.layers = nn.ModuleList()
        self.conv = isinstance(layer, HEncLayer)
        if layer.norm or not layer.freq or not layer.pad:
            raise ValueError("MultiWrap needs a padded frequency layer without norm")
        if not self.conv and layer.context_freq:
            raise ValueError("MultiWrap needs a decoder layer with context_freq=False")
        for _ in range(len(split_ratios) + 1):
            band_layer = copy.deepcopy(layer)
            # Padding is applied by hand at the outer edges only (see forward).
            if self.conv:
                band_layer.conv.padding = (0, 0)
            else:
                band_layer.pad = False
            # Fresh random weights for every copy.
            for mod in band_layer.modules():
                if hasattr(mod, "reset_parameters"):
                    mod.reset_parameters()
            self.layers.append(band_layer)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None,
                length: Optional[int] = None):
        bins = x.shape[2]  # x: [B, C, F, T]
        ratios = list(self.split_ratios) + [1]
        start = 0
        outs: List[torch.Tensor] = []
        if self.conv:
            for ratio, layer in zip(ratios, self.layers):
                pad = layer.kernel_size // 4
                if ratio == 1:
                    limit = bins
                else:
                    # Snap the band's end so that it holds a whole number of conv steps,
                    # counting the virtual padding at the bottom edge.
                    limit = int(round(bins * ratio))
                    span = limit - start
                    if start == 0:
                        span += pad
                    steps = round((span - layer.kernel_size) / layer.stride + 1)
                    limit = start + (steps - 1) * layer.stride + layer.kernel_size
                    if start == 0:
                        limit -= pad
                if not (0 < limit - start and limit <= bins):
                    raise RuntimeError(f"bad MultiWrap band [{start}, {limit}) of {bins}")
                band = x[:, :, start:limit, :]
                if start == 0:
                    band = F.pad(band, (0, 0, pad, 0))
                if ratio == 1:
                    band = F.pad(band, (0, 0, 0, pad))
                outs.append(layer(band))
                # Next band starts where the next conv window would have started.
                start = limit - layer.kernel_size + layer.stride
            return torch.cat(outs, dim=2)

        last = False
        for ratio, layer in zip(ratios, self.layers):
            limit = bins if ratio == 1 else int(round(bins * ratio))
            last = layer.last
            # Bands are combined before the final activation: run them as "last" and
            # apply the GELU once on the assembled output.
            layer.last = True
            try:
                out, _ = layer(x[:, :, start:limit], skip[:, :, start:limit], None)
            finally:
                layer.last = last
            stride = layer.stride
            if outs:
                # Overlap of the transposed convs across the border: add this band's
                # head into the previous band's tail (counting the bias only once).
                outs[-1][:, :, -stride:] += out[:, :, :stride] - layer.conv_tr.bias.view(1, -1, 1, 1)
                out = out[:, :, stride:]
            if ratio == 1:
                out = out[:, :, :-stride // 2, :]
            if start == 0:
                out = out[:, :, stride // 2:, :]
            outs.append(out)
            start = limit
        out = torch.cat(outs, dim=2)
        if not last:
            out = F.gelu(out)
        return out, None


# --------------------------------------------------------------------------- model


class HDemucs(HybridSpectrogram, nn.Module):
    """Hybrid (spectrogram + waveform) Demucs, v3.

    The frequency branch works on the STFT (`nfft`, hop `nfft // 4`), by default with
    complex-as-channels (`cac`): real and imaginary parts are channels in and out, the
    output spectrogram is used as is. The first layers stride along frequency until one
    bin is left (optionally with per-band weights, `multi_freqs`); the time branch runs
    in parallel until its resolution matches and is then injected into the frequency
    branch; the decoder splits them again and the two outputs are summed.

    Constructor arguments are those of `demucs.hdemucs.HDemucs` (4.1.0).
    Without `cac`, the branch outputs magnitudes that are combined with the mixture
    phase (`wiener_iters < 0`) or Wiener filtered (`wiener_iters >= 0`).

    Shapes: forward `[B, C, T]` -> `[B, S, C, T]`.
    """

    def __init__(self,
                 sources: Sequence[str],
                 audio_channels: int = 2,
                 channels: int = 48,
                 channels_time: Optional[int] = None,
                 growth: int = 2,
                 nfft: int = 4096,
                 wiener_iters: int = 0,
                 end_iters: int = 0,
                 wiener_residual: bool = False,
                 cac: bool = True,
                 depth: int = 6,
                 rewrite: bool = True,
                 hybrid: bool = True,
                 hybrid_old: bool = False,
                 multi_freqs: Optional[Sequence[float]] = None,
                 multi_freqs_depth: int = 2,
                 freq_emb: float = 0.2,
                 emb_scale: float = 10,
                 emb_smooth: bool = True,
                 kernel_size: int = 8,
                 time_stride: int = 2,
                 stride: int = 4,
                 context: int = 1,
                 context_enc: int = 0,
                 norm_starts: int = 4,
                 norm_groups: int = 4,
                 dconv_mode: int = 1,
                 dconv_depth: int = 2,
                 dconv_comp: float = 4,
                 dconv_attn: int = 4,
                 dconv_lstm: int = 4,
                 dconv_init: float = 1e-4,
                 rescale: float = 0.1,
                 samplerate: int = 44100,
                 segment: float = 4 * 10):
        super().__init__()
        if hybrid_old and not hybrid:
            raise ValueError("hybrid_old requires hybrid=True")
        if hybrid and wiener_iters != end_iters:
            raise ValueError("a hybrid model needs wiener_iters == end_iters")
        self.cac = cac
        self.wiener_residual = wiener_residual
        self.audio_channels = audio_channels
        self.sources = list(sources)
        self.kernel_size = kernel_size
        self.context = context
        self.stride = stride
        self.depth = depth
        self.channels = channels
        self.samplerate = samplerate
        self.segment = segment

        self.nfft = nfft
        self.hop_length = nfft // 4
        self.wiener_iters = wiener_iters
        self.end_iters = end_iters
        self.freq_emb = None
        self.hybrid = hybrid
        self.hybrid_old = hybrid_old

        # Registration order (encoder, decoder, tencoder, tdecoder, freq_emb) is that of
        # the reference: diffq-packed checkpoints are positional.
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        if hybrid:
            self.tencoder = nn.ModuleList()
            self.tdecoder = nn.ModuleList()

        chin = audio_channels                  # time-branch input channels
        chin_z = chin * 2 if cac else chin     # freq-branch input channels
        chout = channels_time or channels
        chout_z = channels
        freqs = nfft // 2                      # bins left at this depth (Nyquist dropped)

        decoders: List[nn.Module] = []
        tdecoders: List[nn.Module] = []
        for index in range(depth):
            is_freq = freqs > 1
            ker, stri = kernel_size, stride
            if not is_freq:
                # Below the merge: plain time layers with their own stride.
                ker, stri = time_stride * 2, time_stride
            pad = True
            last_freq = False
            if is_freq and freqs <= kernel_size:
                # Last frequency layer: one unpadded conv covers all remaining bins.
                ker, pad, last_freq = freqs, False, True

            kw = {
                "kernel_size": ker,
                "stride": stri,
                "freq": is_freq,
                "pad": pad,
                "norm": index >= norm_starts,
                "rewrite": rewrite,
                "norm_groups": norm_groups,
                "dconv_kw": {
                    "lstm": index >= dconv_lstm,
                    "attn": index >= dconv_attn,
                    "depth": dconv_depth,
                    "compress": dconv_comp,
                    "init": dconv_init,
                    "gelu": True,
                },
            }
            kw_time = dict(kw, freq=False, kernel_size=kernel_size, stride=stride, pad=True)
            kw_dec = dict(kw)
            multi = bool(multi_freqs) and index < multi_freqs_depth
            if multi:
                kw_dec["context_freq"] = False

            if last_freq:
                # Both branches must have the same width where they merge.
                chout_z = max(chout, chout_z)
                chout = chout_z

            enc = HEncLayer(chin_z, chout_z, dconv=dconv_mode & 1, context=context_enc, **kw)
            if hybrid and is_freq:
                tenc = HEncLayer(chin, chout, dconv=dconv_mode & 1, context=context_enc,
                                 empty=last_freq, **kw_time)
                self.tencoder.append(tenc)
            if multi:
                enc = MultiWrap(enc, multi_freqs)
            self.encoder.append(enc)

            if index == 0:
                # The outermost decoders output all stems at once.
                chin = audio_channels * len(self.sources)
                chin_z = chin * 2 if cac else chin
            dec = HDecLayer(chout_z, chin_z, dconv=dconv_mode & 2, last=index == 0,
                            context=context, **kw_dec)
            if multi:
                dec = MultiWrap(dec, multi_freqs)
            if hybrid and is_freq:
                tdec = HDecLayer(chout, chin, dconv=dconv_mode & 2, empty=last_freq,
                                 last=index == 0, context=context, **kw_time)
                tdecoders.append(tdec)
            decoders.append(dec)

            chin, chin_z = chout, chout_z
            chout, chout_z = int(growth * chout), int(growth * chout_z)
            if is_freq:
                freqs = 1 if freqs <= kernel_size else freqs // stride
            if index == 0 and freq_emb:
                self.freq_emb = ScaledEmbedding(freqs, chin_z, smooth=emb_smooth,
                                                scale=emb_scale)
                self.freq_emb_scale = freq_emb

        # Decoders run innermost first.
        for dec in reversed(decoders):
            self.decoder.append(dec)
        if hybrid:
            for tdec in reversed(tdecoders):
                self.tdecoder.append(tdec)

        if rescale:
            rescale_module(self, reference=rescale)

    # ------------------------------------------------------------------ forward

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """`[B, C, T]` -> `[B, S, C, T]`."""
        length = mix.shape[-1]

        # Both branches are normalised per item (and scaled back at the end).
        z, x, mean, std = self._spectral_input(mix)
        batch, _, bins, frames = x.shape
        if self.hybrid:
            xt = mix
            meant = xt.mean(dim=(1, 2), keepdim=True)
            stdt = xt.std(dim=(1, 2), keepdim=True)
            xt = (xt - meant) / (1e-5 + stdt)

        saved: List[torch.Tensor] = []     # skips, frequency branch
        saved_t: List[torch.Tensor] = []   # skips, time branch
        lengths: List[int] = []            # input lengths, frequency branch
        lengths_t: List[int] = []          # input lengths, time branch
        for idx, encode in enumerate(self.encoder):
            lengths.append(x.shape[-1])
            inject = None
            if self.hybrid and idx < len(self.tencoder):
                lengths_t.append(xt.shape[-1])
                tenc = self.tencoder[idx]
                xt = tenc(xt)
                if tenc.empty:
                    # Time branch now has the frequency branch's shape: merge.
                    inject = xt
                else:
                    saved_t.append(xt)
            x = encode(x, inject)
            if idx == 0 and self.freq_emb is not None:
                # Frequency embedding: lets the (translation-equivariant) freq convs
                # know where they are on the frequency axis.
                positions = torch.arange(x.shape[-2], device=x.device)
                emb = self.freq_emb(positions).t()[None, :, :, None].expand_as(x)  # [B, C, F, T]
                x = x + self.freq_emb_scale * emb
            saved.append(x)

        # The decoders start from zeros: everything comes through the skips.
        x = torch.zeros_like(x)
        if self.hybrid:
            xt = torch.zeros_like(x)
            offset = self.depth - len(self.tdecoder)

        for idx, decode in enumerate(self.decoder):
            x, pre = decode(x, saved.pop(), lengths.pop())
            if self.hybrid and idx >= offset:
                tdec = self.tdecoder[idx - offset]
                length_t = lengths_t.pop()
                if tdec.empty:
                    # Split: the time branch starts from the pre-conv features.
                    xt, _ = tdec(pre[:, :, 0], None, length_t)  # [B, C, 1, T] -> [B, C, T]
                else:
                    xt, _ = tdec(xt, saved_t.pop(), length_t)

        n_src = len(self.sources)
        x = x.view(batch, n_src, -1, bins, frames)  # [B, S, C', F, N]
        x = self._spectral_output(x, z, mean, std, length)  # [B, S, C, length]

        if self.hybrid:
            xt = xt.view(batch, n_src, -1, length)
            xt = xt * stdt[:, None] + meant[:, None]
            x = xt + x
        return x
