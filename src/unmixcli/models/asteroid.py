"""Asteroid's separators: Conv-TasNet, DPRNN-TasNet and DCCRNet (pure modules, no I/O).

Conv-TasNet and DPRNN-TasNet are encoder / masker / decoder networks on a
learned ("free") filterbank: the encoder is a strided 1-d convolution of the
waveform with `n_filters` learned kernels, the masker estimates one mask per
source over those features, and the decoder is the transposed convolution with
a second learned bank. DCCRNet masks an STFT (asteroid's fixed `stft`
filterbank, its kernels stored in the checkpoint) with a complex convolutional
U-Net around a complex LSTM. The parameter names follow asteroid 0.7.0's modules
(`encoder.filterbank._filters`, `masker.TCN.3.shared_block.0.weight`,
`masker.encoders.0.conv.re_module.weight`, ...), so its published state dicts
load strictly.

Each separator's forward maps a mono mix `[B, 1, T]` to `[B, S, 1, T]`; an
enhancement model (one source) gets a second stem, the mix minus the speech.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-8
NORMS = ("gLN", "cLN", "cgLN", "fgLN")
MASK_ACTS = ("sigmoid", "relu", "softmax", "tanh", "linear")
ENCODER_ACTS = (None, "linear", "relu")
RNN_TYPES = ("LSTM", "GRU", "RNN")


class _Norm(nn.Module):
    """Asteroid's layer norms over `[B, N, ...]`, parameters `gamma`/`beta` on the channel axis.

    gLN: over all but the batch; fgLN: over all but batch and channel; cLN: over the channel
    axis only; cgLN: cumulative over channels and time (causal).
    """

    def __init__(self, kind: str, channels: int):
        super().__init__()
        self.kind = kind
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "cgLN":
            b, c, t = x.shape
            count = torch.arange(c, c * (t + 1), c, dtype=x.dtype, device=x.device).view(1, 1, -1)
            mean = torch.cumsum(x.sum(1, keepdim=True), -1) / count
            var = torch.cumsum(x.pow(2).sum(1, keepdim=True), -1) / count - mean.pow(2)
            normed = (x - mean) / (var + EPS).sqrt()
        else:
            dims = {"gLN": list(range(1, x.ndim)), "fgLN": list(range(2, x.ndim)), "cLN": [1]}[self.kind]
            mean = x.mean(dim=dims, keepdim=True)
            var = x.var(dim=dims, keepdim=True, unbiased=False)
            normed = (x - mean) / torch.sqrt(var + EPS)
        # gain and bias broadcast on the channel axis (moved last and back)
        return (self.gamma * normed.transpose(1, -1) + self.beta).transpose(1, -1)


def _mask_activation(name: str) -> nn.Module:
    return {"sigmoid": nn.Sigmoid(), "relu": nn.ReLU(), "softmax": nn.Softmax(dim=1), "tanh": nn.Tanh(),
            "linear": nn.Identity()}[name]


class FreeFilterbank(nn.Module):
    """A learned filterbank: `_filters` [n_filters, 1, kernel_size]."""

    def __init__(self, n_filters: int, kernel_size: int):
        super().__init__()
        self._filters = nn.Parameter(torch.zeros(n_filters, 1, kernel_size))


class _Encoder(nn.Module):
    def __init__(self, n_filters: int, kernel_size: int, stride: int):
        super().__init__()
        self.filterbank = FreeFilterbank(n_filters, kernel_size)
        self.stride = stride

    def forward(self, wav: torch.Tensor) -> torch.Tensor:  # [B, 1, T] -> [B, F, N]
        return F.conv1d(wav, self.filterbank._filters, stride=self.stride)


class _Decoder(_Encoder):
    def forward(self, spec: torch.Tensor) -> torch.Tensor:  # [B, S, F, N] -> [B, S, T']
        b, s = spec.shape[:2]
        wav = F.conv_transpose1d(spec.reshape(b * s, *spec.shape[2:]), self.filterbank._filters, stride=self.stride)
        return wav.view(b, s, -1)


class _Chop(nn.Module):
    """Drops the last `n` frames: a causal convolution's look-ahead padding."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., :-self.n].contiguous()


class _ConvBlock(nn.Module):
    """One Conv-TasNet block: 1x1 conv, PReLU, norm, dilated depthwise conv, PReLU, norm; residual and skip."""

    def __init__(self, in_chan: int, hid_chan: int, skip_chan: int, kernel: int, dilation: int, norm: str,
                 causal: bool):
        super().__init__()
        padding = (kernel - 1) * dilation if causal else (kernel - 1) * dilation // 2
        depth: nn.Module = nn.Conv1d(hid_chan, hid_chan, kernel, padding=padding, dilation=dilation, groups=hid_chan)
        if causal:
            depth = nn.Sequential(depth, _Chop(padding))
        self.skip_chan = skip_chan
        self.shared_block = nn.Sequential(nn.Conv1d(in_chan, hid_chan, 1), nn.PReLU(), _Norm(norm, hid_chan),
                                          depth, nn.PReLU(), _Norm(norm, hid_chan))
        self.res_conv = nn.Conv1d(hid_chan, in_chan, 1)
        if skip_chan:
            self.skip_conv = nn.Conv1d(hid_chan, skip_chan, 1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        shared = self.shared_block(x)
        return self.res_conv(shared), (self.skip_conv(shared) if self.skip_chan else None)


@dataclass(frozen=True)
class TDConvNetArgs:
    in_chan: int
    n_src: int
    out_chan: int
    n_blocks: int = 8
    n_repeats: int = 3
    bn_chan: int = 128
    hid_chan: int = 512
    skip_chan: int = 128
    conv_kernel_size: int = 3
    norm_type: str = "gLN"
    mask_act: str = "sigmoid"
    causal: bool = False


class TDConvNet(nn.Module):
    """Conv-TasNet's masker: stacked dilated convolution blocks; masks `[B, S, out_chan, N]`."""

    def __init__(self, a: TDConvNetArgs):
        super().__init__()
        self.a = a
        self.bottleneck = nn.Sequential(_Norm(a.norm_type, a.in_chan), nn.Conv1d(a.in_chan, a.bn_chan, 1))
        self.TCN = nn.ModuleList(
            _ConvBlock(a.bn_chan, a.hid_chan, a.skip_chan, a.conv_kernel_size, 2 ** x, a.norm_type, a.causal)
            for _ in range(a.n_repeats) for x in range(a.n_blocks))
        self.mask_net = nn.Sequential(nn.PReLU(), nn.Conv1d(a.skip_chan or a.bn_chan, a.n_src * a.out_chan, 1))
        self.output_act = _mask_activation(a.mask_act)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        b, _, n = w.shape
        out = self.bottleneck(w)
        skip = torch.zeros((), dtype=out.dtype, device=out.device)
        for layer in self.TCN:
            residual, s = layer(out)
            if s is not None:
                skip = skip + s
            out = out + residual
        score = self.mask_net(skip if self.a.skip_chan else out)
        return self.output_act(score.view(b, self.a.n_src, self.a.out_chan, n))


class _RNN(nn.Module):
    def __init__(self, rnn_type: str, size: int, hidden: int, layers: int, bidirectional: bool):
        super().__init__()
        self.rnn = getattr(nn, rnn_type)(size, hidden, num_layers=layers, batch_first=True,
                                         bidirectional=bidirectional)
        self.output_size = hidden * (2 if bidirectional else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


class _MulCatRNN(nn.Module):
    """Two RNNs whose outputs are multiplied, concatenated with the input."""

    def __init__(self, rnn_type: str, size: int, hidden: int, layers: int, bidirectional: bool):
        super().__init__()
        make = lambda: getattr(nn, rnn_type)(size, hidden, num_layers=layers, batch_first=True,  # noqa: E731
                                             bidirectional=bidirectional)
        self.rnn1, self.rnn2 = make(), make()
        self.output_size = hidden * (2 if bidirectional else 1) + size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.rnn1(x)[0] * self.rnn2(x)[0], x), 2)


class _DPRNNBlock(nn.Module):
    """Intra-chunk (always bidirectional) then inter-chunk RNN, each with a linear map, norm and residual."""

    def __init__(self, chan: int, hidden: int, norm: str, bidirectional: bool, rnn_type: str, mulcat: bool,
                 layers: int):
        super().__init__()
        rnn = _MulCatRNN if mulcat else _RNN
        self.intra_RNN = rnn(rnn_type, chan, hidden, layers, True)
        self.inter_RNN = rnn(rnn_type, chan, hidden, layers, bidirectional)
        self.intra_linear = nn.Linear(self.intra_RNN.output_size, chan)
        self.intra_norm = _Norm(norm, chan)
        self.inter_linear = nn.Linear(self.inter_RNN.output_size, chan)
        self.inter_norm = _Norm(norm, chan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, K chunk, L chunks]
        b, n, k, l = x.shape
        intra = self.intra_linear(self.intra_RNN(x.transpose(1, -1).reshape(b * l, k, n)))
        out = x + self.intra_norm(intra.reshape(b, l, k, n).transpose(1, -1))
        inter = self.inter_linear(self.inter_RNN(out.permute(0, 2, 3, 1).reshape(b * k, l, n)))
        return out + self.inter_norm(inter.reshape(b, k, l, n).permute(0, 3, 1, 2).contiguous())


@dataclass(frozen=True)
class DPRNNArgs:
    in_chan: int
    n_src: int
    out_chan: int
    bn_chan: int = 128
    hid_size: int = 128
    chunk_size: int = 100
    hop_size: int = 50
    n_repeats: int = 6
    norm_type: str = "gLN"
    mask_act: str = "sigmoid"
    bidirectional: bool = True
    rnn_type: str = "LSTM"
    num_layers: int = 1
    use_mulcat: bool = False


class DPRNN(nn.Module):
    """DPRNN's masker: overlapping chunks of the bottleneck features through dual-path RNN blocks."""

    def __init__(self, a: DPRNNArgs):
        super().__init__()
        self.a = a
        self.bottleneck = nn.Sequential(_Norm(a.norm_type, a.in_chan), nn.Conv1d(a.in_chan, a.bn_chan, 1))
        self.net = nn.Sequential(*[
            _DPRNNBlock(a.bn_chan, a.hid_size, a.norm_type, a.bidirectional, a.rnn_type, a.use_mulcat, a.num_layers)
            for _ in range(a.n_repeats)])
        self.first_out = nn.Sequential(nn.PReLU(), nn.Conv2d(a.bn_chan, a.n_src * a.bn_chan, 1))
        self.net_out = nn.Sequential(nn.Conv1d(a.bn_chan, a.bn_chan, 1), nn.Tanh())
        self.net_gate = nn.Sequential(nn.Conv1d(a.bn_chan, a.bn_chan, 1), nn.Sigmoid())
        self.mask_net = nn.Conv1d(a.bn_chan, a.out_chan, 1, bias=False)
        self.output_act = _mask_activation(a.mask_act)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        a = self.a
        b, _, n = w.shape
        out = self.bottleneck(w)  # [B, bn, N]
        geometry = dict(kernel_size=(a.chunk_size, 1), padding=(a.chunk_size, 0), stride=(a.hop_size, 1))
        # chunks of chunk_size frames every hop_size, the features padded by a chunk on each side
        chunks = F.unfold(out.unsqueeze(-1), **geometry)  # [B, bn * K, L]
        n_chunks = chunks.shape[-1]
        out = self.net(chunks.reshape(b, a.bn_chan, a.chunk_size, n_chunks))
        out = self.first_out(out).reshape(b * a.n_src, a.bn_chan * a.chunk_size, n_chunks)
        out = F.fold(out, (n, 1), **geometry).reshape(b * a.n_src, a.bn_chan, -1)  # overlap-add: [B*S, bn, N]
        out = self.net_out(out) * self.net_gate(out)
        mask = self.output_act(self.mask_net(out))
        return mask.view(b, a.n_src, a.out_chan, n)


def run_padded(separate, mix: torch.Tensor, min_length: int) -> torch.Tensor:
    """`separate(mix)` for any length: an input shorter than the network's shortest (a very short
    file, or the engine's last sliver of a segment) is zero-filled to it and the output trimmed
    back; longer inputs go in as they are. `[B, 1, T]` -> `[B, S, T]`."""
    n = mix.shape[-1]
    if n >= min_length:
        return separate(mix)
    return separate(F.pad(mix, (0, min_length - n)))[..., :n]


class AsteroidSeparator(nn.Module):
    """Encoder, masker, decoder: `[B, 1, T]` -> `[B, S, 1, T]` (S = n_src, or 2 for enhancement)."""

    def __init__(self, masker: nn.Module, n_filters: int, kernel_size: int, stride: int, n_src: int,
                 encoder_activation: Optional[str], sources: Sequence[str]):
        super().__init__()
        self.encoder = _Encoder(n_filters, kernel_size, stride)
        self.masker = masker
        self.decoder = _Decoder(n_filters, kernel_size, stride)
        self.enc_activation: nn.Module = nn.ReLU() if encoder_activation == "relu" else nn.Identity()
        self.n_src = n_src
        self.sources = list(sources)
        self.min_length = kernel_size  # one encoder frame

    def separate(self, wav: torch.Tensor) -> torch.Tensor:
        """The network's own output, as asteroid's forward: `[B, 1, T]` -> `[B, n_src, T]`."""
        tf = self.enc_activation(self.encoder(wav))  # [B, F, N]
        masked = self.masker(tf) * tf.unsqueeze(1)  # [B, S, F, N]
        decoded = self.decoder(masked)  # [B, S, T']
        return F.pad(decoded, [0, wav.shape[-1] - decoded.shape[-1]])  # trimmed or zero-filled to T

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        est = run_padded(self.separate, mix, self.min_length)
        if self.n_src == 1:
            est = torch.cat([est, mix - est], dim=1)  # speech, noise = mix - speech
        return est.unsqueeze(2)  # [B, S, 1, T]


# --------------------------------------------------------------------------------------
# DCCRNet: a complex convolution-recurrent U-Net masking the STFT.
# Complex values are carried as (real, imaginary) pairs of real tensors rather than a
# complex dtype, so the network runs wherever real convolutions do.
# --------------------------------------------------------------------------------------

#: Asteroid's named DCCRN layouts: encoders (in, out, kernel, stride, padding), then decoders
#: (in, out, kernel, stride, padding, output_padding); the last decoder's `out` becomes n_src.
_K, _S, _P, _OP = (5, 2), (2, 1), (2, 0), (1, 0)
DCCRN_ARCHITECTURES = {
    "DCCRN-CL": (
        tuple((i, o, _K, _S, _P) for i, o in ((1, 16), (16, 32), (32, 64), (64, 128), (128, 128), (128, 128))),
        tuple((i, o, _K, _S, _P, _OP) for i, o in ((256, 128), (256, 128), (256, 64), (128, 32), (64, 16), (32, 1))),
    ),
    "mini": (
        tuple((i, o, _K, _S, _P) for i, o in ((1, 4), (4, 8))),
        tuple((i, o, _K, _S, _P, _OP) for i, o in ((16, 4), (8, 1))),
    ),
}
MASK_BOUNDS = ("tanh", "BDT", "sigmoid", "BDSS", "UBD", None)

Complex = Tuple[torch.Tensor, torch.Tensor]


class _ComplexPair(nn.Module):
    """Two real modules `re_module`, `im_module` (asteroid's complex wrappers' names).

    `multiply`: complex multiplication rules, F(a + ib) = f1(a) - f2(b) + i(f1(b) + f2(a));
    otherwise each applies to its own part (asteroid's `OnReIm`: norms, activations).
    """

    def __init__(self, make, multiply: bool):
        super().__init__()
        self.re_module = make()
        self.im_module = make()
        self.multiply = multiply

    def forward(self, x: Complex) -> Complex:
        re, im = x
        if self.multiply:
            return self.re_module(re) - self.im_module(im), self.re_module(im) + self.im_module(re)
        return self.re_module(re), self.im_module(im)


class _LSTM(nn.Module):
    """asteroid's `SingleRNN` (the torch LSTM at `.rnn`), unidirectional, batch first."""

    def __init__(self, size: int, hidden: int):
        super().__init__()
        self.rnn = nn.LSTM(size, hidden, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


class _ComplexRNN(nn.Module):
    """Complex LSTM layers, then a complex linear map back to the input size (`DCCRMaskNetRNN`)."""

    def __init__(self, size: int, hidden: int = 128, layers: int = 2):
        super().__init__()
        self.rnn = nn.Module()
        self.rnn.rnns = nn.ModuleList(
            _ComplexPair(lambda i=i: _LSTM(size if i == 0 else hidden, hidden), True) for i in range(layers))
        self.linear = _ComplexPair(lambda: nn.Linear(hidden, size), True)

    def forward(self, x: Complex) -> Complex:  # [B, C, F, N] each part
        b, c, f, n = x[0].shape
        # time first, channels and bins flattened: [B, N, C*F]
        h = tuple(p.permute(0, 3, 1, 2).reshape(b, n, c * f) for p in x)
        for layer in self.rnn.rnns:
            h = layer(h)
        h = self.linear(h)
        return tuple(p.reshape(b, n, c, f).permute(0, 2, 3, 1) for p in h)  # type: ignore[return-value]


class _ComplexEncoderBlock(nn.Module):
    """Complex conv (no bias), batch norm on each part, PReLU on each part."""

    def __init__(self, i: int, o: int, kernel, stride, padding):
        super().__init__()
        self.conv = _ComplexPair(lambda: nn.Conv2d(i, o, kernel, stride, padding, bias=False), True)
        self.norm = _ComplexPair(lambda: nn.BatchNorm2d(o), False)
        self.activation = _ComplexPair(nn.PReLU, False)

    def forward(self, x: Complex) -> Complex:
        return self.activation(self.norm(self.conv(x)))


class _ComplexDecoderBlock(nn.Module):
    def __init__(self, i: int, o: int, kernel, stride, padding, output_padding):
        super().__init__()
        self.deconv = _ComplexPair(
            lambda: nn.ConvTranspose2d(i, o, kernel, stride, padding, output_padding, bias=False), True)
        self.norm = _ComplexPair(lambda: nn.BatchNorm2d(o), False)
        self.activation = _ComplexPair(nn.PReLU, False)

    def forward(self, x: Complex) -> Complex:
        return self.activation(self.norm(self.deconv(x)))


class _Skip(nn.Module):
    """The first decoder slot: the recurrent output passes on unchanged (asteroid's Identity)."""

    def forward(self, x: Complex) -> Complex:
        return x


class DCCRMaskNet(nn.Module):
    """Complex U-Net with an LSTM at the bottom: STFT `[B, F, N]` (re, im) -> masks `[B, S, F, N]`."""

    def __init__(self, architecture: str, n_freqs: int, n_src: int = 1, mask_bound: Optional[str] = "tanh"):
        super().__init__()
        encoders, decoders = DCCRN_ARCHITECTURES[architecture]
        *decoders, last = decoders
        last = (last[0], n_src, *last[2:])
        self.freq_stride = 1
        for enc in encoders:
            self.freq_stride *= enc[3][0]
        bottom = (encoders[-1][1], -(-n_freqs // self.freq_stride))  # channels, bins after the encoders
        self.encoders = nn.ModuleList([*(_ComplexEncoderBlock(*a) for a in encoders),
                                       _ComplexRNN(bottom[0] * bottom[1])])
        self.decoders = nn.ModuleList([_Skip(), *(_ComplexDecoderBlock(*a) for a in decoders)])
        self.output_layer = nn.Sequential(_ComplexPair(lambda: nn.ConvTranspose2d(*last), True))
        self.mask_bound = mask_bound

    def forward(self, x: Complex) -> Complex:
        h: Complex = tuple(p.unsqueeze(1) for p in x)  # type: ignore[assignment]  # [B, 1, F, N]
        skips = []
        for enc in self.encoders:
            h = enc(h)
            skips.append(h)
        for skip, dec in zip(reversed(skips[:-1]), self.decoders):
            h = dec(h)
            h = (torch.cat([h[0], skip[0]], 1), torch.cat([h[1], skip[1]], 1))
        re, im = self.output_layer[0](h)  # [B, S, F, N]
        return bound_mask(re, im, self.mask_bound)


def bound_mask(re: torch.Tensor, im: torch.Tensor, bound: Optional[str]) -> Complex:
    """Asteroid's mask bounds: sigmoid on each part (BDSS), or tanh of the magnitude (BDT) / none
    (UBD), the phase kept; the magnitude carries asteroid's 1e-8 floor under the square root."""
    if bound in ("sigmoid", "BDSS"):
        return torch.sigmoid(re), torch.sigmoid(im)
    mag = (re.pow(2) + im.pow(2) + EPS).sqrt()
    phase = torch.atan2(im, re)
    if bound in ("tanh", "BDT"):
        mag = torch.tanh(mag)
    return mag * torch.cos(phase), mag * torch.sin(phase)


class _FixedFilterbank(nn.Module):
    """The STFT filterbank's kernels `_filters` [2 * (n_filters/2 + 1), 1, kernel]: real parts, then
    imaginary parts, windowed; they come from the checkpoint."""

    def __init__(self, n_filters: int, kernel_size: int):
        super().__init__()
        self.register_buffer("_filters", torch.zeros(2 * (n_filters // 2 + 1), 1, kernel_size))


class _STFTCodec(nn.Module):
    def __init__(self, n_filters: int, kernel_size: int, stride: int):
        super().__init__()
        self.filterbank = _FixedFilterbank(n_filters, kernel_size)
        self.stride = stride


class DCCRNetSeparator(nn.Module):
    """STFT encoder, DCCRN mask network, inverse-STFT decoder: `[B, 1, T]` -> `[B, S, 1, T]`."""

    def __init__(self, architecture: str, n_filters: int, kernel_size: int, stride: int, n_freqs: int,
                 n_src: int, mask_bound: Optional[str], sources: Sequence[str]):
        super().__init__()
        self.encoder = _STFTCodec(n_filters, kernel_size, stride)
        self.masker = DCCRMaskNet(architecture, n_freqs, n_src, mask_bound)
        self.decoder = _STFTCodec(n_filters, kernel_size, stride)
        self.n_src = n_src
        self.sources = list(sources)
        # Each encoder's time kernel (2, unpadded) takes one frame: the bottom needs one left.
        frames = 1 + sum(enc[2][1] - 1 for enc in DCCRN_ARCHITECTURES[architecture][0])
        self.min_length = kernel_size + (frames - 1) * stride

    def separate(self, wav: torch.Tensor) -> torch.Tensor:
        """asteroid's DCCRNet forward: `[B, 1, T]` -> `[B, n_src, T]`."""
        spec = F.conv1d(wav, self.encoder.filterbank._filters, stride=self.encoder.stride)  # [B, 2*(F+1), N]
        re, im = spec.chunk(2, dim=1)
        re, im = re[:, :-1], im[:, :-1]  # the Nyquist bin is left out of the network: [B, F, N]
        if re.shape[1] % self.masker.freq_stride:
            raise ValueError(f"{re.shape[1]} STFT bins are not divisible by the encoders' frequency stride "
                             f"{self.masker.freq_stride}")
        m_re, m_im = self.masker((re, im))  # [B, S, F, N]
        re, im = re.unsqueeze(1), im.unsqueeze(1)
        out_re, out_im = m_re * re - m_im * im, m_re * im + m_im * re
        # back in with a zero Nyquist bin: [B, S, 2*(F+1), N]
        masked = torch.cat([F.pad(out_re, (0, 0, 0, 1)), F.pad(out_im, (0, 0, 0, 1))], dim=2)
        b, s = masked.shape[:2]
        wav_out = F.conv_transpose1d(masked.reshape(b * s, *masked.shape[2:]), self.decoder.filterbank._filters,
                                     stride=self.decoder.stride).view(b, s, -1)
        return F.pad(wav_out, [0, wav.shape[-1] - wav_out.shape[-1]])  # trimmed or zero-filled to T

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        est = run_padded(self.separate, mix, self.min_length)
        if self.n_src == 1:
            est = torch.cat([est, mix - est], dim=1)  # speech, noise = mix - speech
        return est.unsqueeze(2)  # [B, S, 1, T]
