"""DeepFilterNet3 (Schröter et al., 2023): a two-stage speech enhancer, with libDF's signal path.

The published model is three networks (`enc`, `erb_dec`, `df_dec`) that libDF's
runtime (`libDF/src/tract.rs`, `DfTract`) steps one 10 ms frame at a time. This
module is those networks in torch and that runtime's processing, vectorised
over frames where that is the same computation:

* analysis: Vorbis window sin(pi/2 sin^2(pi (n + 1/2) / N)), N = fft_size, hop
  `hop_size`; frame t is the window times the samples [(t - 1) hop, (t + 1) hop)
  (zeros before the start), its real FFT scaled by libDF's wnorm = 2 hop / N^2
  (the whole normalisation sits in the analysis; the synthesis is the unscaled
  inverse FFT, windowed and overlap-added).
* features: the ERB band powers (mean |X|^2 over each band of libDF's `erb_fb`),
  10 log10(p + 1e-10), minus their running mean s = (1 - a) x + a s (started at
  linspace(-60, -90)), divided by 40; and the lowest `nb_df` bins divided by the
  square root of the running mean of |X| (started at linspace(1e-3, 1e-4)).
  a = `norm_alpha` (from norm_tau as libDF's calc_norm_alpha rounds it).
* the encoder (causal convolutions, a squeezed GRU) gives the ERB decoder's
  gains m_t (sigmoid, one per band) and the DF decoder's complex filter c_t
  (`df_order` taps per bin of the lowest `nb_df`).
* as the runtime applies them at frame t: the spectrum of frame t - L (L =
  max(conv_lookahead, df_lookahead), the runtime's lookahead) times the gains
  of its band; its lowest nb_df bins replaced by sum_k c_t[k] X_{t - df_order + 1 + k}
  (the deep filter over frames t - 4 .. t for order 5); optionally libDF's post
  filter; with an attenuation limit lim = 10^(-dB/20) the enhanced spectrum is
  (1 - lim) Y + lim X_{t-L}; inverse FFT, window, overlap-add.

So the output is the input delayed by (fft_size - hop_size) + L hop samples
(1440 at 48 kHz): `DeepFilterNet3.delay`. `forward` hands back the speech
estimate aligned with the mix (the delay removed, the tail flushed with zeros
as the runtime would be) and the noise as mix - speech.

The C API (`capi.rs`) creates its runtime with the thresholds -15 / 35 / 35 dB:
every frame then runs both stages (the local SNR estimate lies in [-15, 35]),
so no frame-skipping logic is needed here; the estimate itself is not used.

Long inputs are processed `chunk_frames` frames at a time with every state
carried over (convolution context, GRU states, running means, the spectra the
deep filter and the gains still need, the overlap-add tail), which is the same
computation as one pass over the whole input, in memory bounded by the chunk.

Shapes: B batch, T samples, N frames, F bins (fft_size/2 + 1), E ERB bands,
D deep-filter bins (nb_df), K filter taps (df_order), H hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

#: libDF's initial running means (MEAN_NORM_INIT, UNIT_NORM_INIT): first and last band.
MEAN_NORM_INIT = (-60.0, -90.0)
UNIT_NORM_INIT = (0.001, 0.0001)
#: libDF's default attenuation limit (RuntimeParams): 100 dB or more means no limit.
NO_LIMIT_DB = 100.0


@dataclass(frozen=True)
class DfConfig:
    """What config.ini's [df] and [deepfilternet] sections say (only what inference needs)."""

    sr: int = 48000
    fft_size: int = 960
    hop_size: int = 480
    nb_erb: int = 32
    nb_df: int = 96
    min_nb_erb_freqs: int = 2
    norm_alpha: float = 0.99
    df_order: int = 5
    df_lookahead: int = 2
    conv_lookahead: int = 2
    conv_ch: int = 64
    conv_kernel_inp: Tuple[int, int] = (3, 3)
    conv_kernel: Tuple[int, int] = (1, 3)
    convt_kernel: Tuple[int, int] = (1, 3)
    emb_hidden_dim: int = 256
    emb_num_layers: int = 3
    df_hidden_dim: int = 256
    df_num_layers: int = 2
    df_pathway_kernel_size_t: int = 5
    enc_linear_groups: int = 32
    linear_groups: int = 16
    lsnr_min: float = -15.0
    lsnr_max: float = 35.0

    def __post_init__(self) -> None:
        if self.fft_size < 2 * self.hop_size or self.hop_size <= 0:
            raise ValueError(f"fft_size {self.fft_size} must be at least twice hop_size {self.hop_size}")
        if self.fft_size != 2 * self.hop_size:
            # libDF's analysis memory is fft - hop samples; the frame layout below assumes one hop.
            raise ValueError("only fft_size = 2 hop_size is supported (DeepFilterNet's published models)")
        if self.nb_erb % 4 or self.nb_df % 2 or not 0 < self.nb_df <= self.fft_size // 2 + 1:
            raise ValueError(f"nb_erb {self.nb_erb} must be a multiple of 4 and nb_df {self.nb_df} even")
        if self.df_order < 1 or not 0 <= self.df_lookahead < self.df_order or self.conv_lookahead < 0:
            raise ValueError("df_order, df_lookahead or conv_lookahead out of range")
        if not 0 < self.norm_alpha < 1:
            raise ValueError(f"norm_alpha must be in (0, 1), got {self.norm_alpha}")
        if self.emb_num_layers < 2 or self.df_num_layers < 1:
            raise ValueError("emb_num_layers must be at least 2 and df_num_layers at least 1")

    @property
    def n_freqs(self) -> int:
        return self.fft_size // 2 + 1

    @property
    def lookahead(self) -> int:
        """The runtime's lookahead in frames (deepfilternet3: max of the two)."""
        return max(self.conv_lookahead, self.df_lookahead)

    @property
    def emb_dim(self) -> int:
        """Width of the embedding the decoders take: conv_ch channels x nb_erb / 4 bands."""
        return self.conv_ch * self.nb_erb // 4


def norm_alpha(sr: int, hop_size: int, tau: float) -> float:
    """libDF's calc_norm_alpha: exp(-hop / sr / tau) rounded to the fewest decimals (from 3) below 1."""
    alpha = np.float32(math.exp(-float(np.float32(hop_size) / np.float32(sr)) / tau))
    precision = 3
    a = np.float32(1.0)
    while a >= 1.0:
        scale = np.float32(10 ** precision)
        a = np.float32(np.floor(np.float32(alpha * scale) + np.float32(0.5)) / scale)
        precision += 1
    return float(a)


def erb_widths(sr: int, fft_size: int, nb_bands: int, min_nb_freqs: int) -> List[int]:
    """FFT bins per ERB band, as libDF's `erb_fb` (float32 arithmetic, rounding half away from 0)."""
    f32 = np.float32

    def freq2erb(hz):
        return f32(9.265) * f32(np.log1p(f32(hz) / f32(f32(24.7) * f32(9.265))))

    def erb2freq(n):
        return f32(24.7) * f32(9.265) * f32(np.exp(f32(n) / f32(9.265)) - f32(1.0))

    freq_width = f32(sr) / f32(fft_size)
    erb_low, erb_high = freq2erb(0.0), freq2erb(f32(sr // 2))
    step = f32(erb_high - erb_low) / f32(nb_bands)
    widths: List[int] = []
    prev, over = 0, 0
    for i in range(1, nb_bands + 1):
        f = erb2freq(f32(erb_low + f32(i) * step))
        fb = int(np.floor(f32(f / freq_width) + f32(0.5)))
        n = fb - prev - over
        if n < min_nb_freqs:
            over = min_nb_freqs - n
            n = min_nb_freqs
        else:
            over = 0
        widths.append(n)
        prev = fb
    widths[-1] += 1
    too_large = sum(widths) - (fft_size // 2 + 1)
    if too_large > 0:
        widths[-1] -= too_large
    if sum(widths) != fft_size // 2 + 1 or min(widths) <= 0:
        raise ValueError(f"no ERB filter bank of {nb_bands} bands for an FFT of {fft_size}")
    return widths


def vorbis_window(size: int) -> Tensor:
    """libDF's window, computed in float64 and stored as float32. Shape [size]."""
    n = torch.arange(size, dtype=torch.float64)
    s = torch.sin(0.5 * math.pi * (n + 0.5) / (size // 2))
    return torch.sin(0.5 * math.pi * s * s).to(torch.float32)


def running_mean(x: Tensor, state: Tensor, alpha: float, block: int = 128) -> Tuple[Tensor, Tensor]:
    """s_n = (1 - alpha) x_n + alpha s_{n-1} along dim 1 of x [B, N, K]; state [B, K] is s_{-1}.

    Blocks of frames at once: within a block s = A^(j+1) s0 + (1 - alpha) sum_k A^(j-k) x_k, a
    triangular matrix product in float64 (as exact as libDF's float32 recursion, and fast).

    Returns:
        (s [B, N, K], the last s [B, K]).
    """
    b, n, k = x.shape
    out = torch.empty_like(x)
    s = state.to(torch.float64)
    j = torch.arange(block, dtype=torch.float64)
    expo = j[:, None] - j[None, :]  # [L, L]: j - k
    tri = torch.where(expo >= 0, alpha ** expo.clamp(min=0), torch.zeros(()).double()) * (1 - alpha)
    decay = alpha ** (j + 1)  # [L]
    for start in range(0, n, block):
        xb = x[:, start:start + block].to(torch.float64)  # [B, L, K]
        length = xb.shape[1]
        sb = tri[:length, :length] @ xb + decay[:length, None] * s[:, None, :]
        out[:, start:start + length] = sb.to(x.dtype)
        s = sb[:, -1]
    return out, s.to(x.dtype)


# --------------------------------------------------------------------------------------
# The networks.
# --------------------------------------------------------------------------------------


class GroupedLinear(nn.Module):
    """Input [..., G I] split into G groups, each mapped by its own [I, H] matrix: [..., G H]."""

    def __init__(self, in_features: int, out_features: int, groups: int) -> None:
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"{in_features} -> {out_features} cannot be split into {groups} groups")
        self.groups = groups
        self.weight = nn.Parameter(torch.zeros(groups, in_features // groups, out_features // groups))

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x = x.reshape(*lead, self.groups, -1)  # [..., G, I]
        y = torch.einsum("...gi,gih->...gh", x, self.weight)
        return y.reshape(*lead, -1)


class SqueezedGRU(nn.Module):
    """Grouped linear in (ReLU), a GRU stack, optional grouped linear out (ReLU), batch first."""

    def __init__(self, in_features: int, hidden: int, layers: int, groups: int,
                 out_features: Optional[int] = None) -> None:
        super().__init__()
        self.linear_in = GroupedLinear(in_features, hidden, groups)
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True)
        self.linear_out = None if out_features is None else GroupedLinear(hidden, out_features, groups)

    def forward(self, x: Tensor, h: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        y, h = self.gru(F.relu(self.linear_in(x)), h)  # [B, N, H], h [layers, B, H]
        if self.linear_out is not None:
            y = F.relu(self.linear_out(y))
        return y, h


def _separable(channels: int, kernel: Tuple[int, int], stride: int) -> nn.ModuleList:
    """A depthwise (1, k) conv along frequency without bias, then a 1x1 conv with the folded norm's bias."""
    return nn.ModuleList([
        nn.Conv2d(channels, channels, kernel, stride=(1, stride), padding=(0, kernel[1] // 2), groups=channels,
                  bias=False),
        nn.Conv2d(channels, channels, 1)])


def _causal(x: Tensor, past: Tensor) -> Tensor:
    """x [B, C, N, F] with the past frames [B, C, P, F] in front (zeros at the start: a causal pad)."""
    return torch.cat([past, x], dim=2)


@dataclass
class NetState:
    """What the networks carry from one chunk of frames to the next (None: the start)."""

    erb_past: Optional[Tensor] = None  # [B, 1, kt - 1, E] last ERB features
    spec_past: Optional[Tensor] = None  # [B, 2, kt - 1, D] last complex features
    c0_past: Optional[Tensor] = None  # [B, conv_ch, kdf - 1, D]
    h_enc: Optional[Tensor] = None
    h_erb: Optional[Tensor] = None
    h_df: Optional[Tensor] = None


class Encoder(nn.Module):
    """enc.onnx: ERB and complex features -> skips e0..e3, embedding, c0, local SNR."""

    def __init__(self, cfg: DfConfig) -> None:
        super().__init__()
        ch, kt = cfg.conv_ch, cfg.conv_kernel_inp
        self.cfg = cfg
        self.erb_conv0 = nn.Conv2d(1, ch, kt, padding=(0, kt[1] // 2))
        self.erb_conv1 = _separable(ch, cfg.conv_kernel, 2)
        self.erb_conv2 = _separable(ch, cfg.conv_kernel, 2)
        self.erb_conv3 = _separable(ch, cfg.conv_kernel, 1)
        self.df_conv0 = nn.ModuleList([nn.Conv2d(2, ch, kt, padding=(0, kt[1] // 2), groups=2, bias=False),
                                       nn.Conv2d(ch, ch, 1)])
        self.df_conv1 = _separable(ch, cfg.conv_kernel, 2)
        self.df_fc_emb = GroupedLinear(ch * cfg.nb_df // 2, cfg.emb_dim, cfg.enc_linear_groups)
        self.emb_gru = SqueezedGRU(cfg.emb_dim, cfg.emb_hidden_dim, 1, cfg.linear_groups, out_features=cfg.emb_dim)
        self.lsnr_fc = nn.Linear(cfg.emb_dim, 1)

    def slots(self) -> List[Tuple[str, nn.Module]]:
        """The weighted layers in the order enc.onnx computes them."""
        return [("conv", self.erb_conv0), ("conv", self.erb_conv1[0]), ("conv", self.erb_conv1[1]),
                ("conv", self.erb_conv2[0]), ("conv", self.erb_conv2[1]), ("conv", self.erb_conv3[0]),
                ("conv", self.erb_conv3[1]), ("conv", self.df_conv0[0]), ("conv", self.df_conv0[1]),
                ("conv", self.df_conv1[0]), ("conv", self.df_conv1[1]), ("grouped", self.df_fc_emb),
                ("grouped", self.emb_gru.linear_in), ("gru", self.emb_gru.gru),
                ("grouped", self.emb_gru.linear_out), ("linear", self.lsnr_fc)]

    def forward(self, feat_erb: Tensor, feat_spec: Tensor, state: NetState):
        """feat_erb [B, 1, N, E], feat_spec [B, 2, N, D] -> (e0, e1, e2, e3, emb [B, N, H'], c0, lsnr [B, N])."""
        past = self.cfg.conv_kernel_inp[0] - 1
        erb_in = _causal(feat_erb, state.erb_past)
        spec_in = _causal(feat_spec, state.spec_past)
        state.erb_past, state.spec_past = erb_in[:, :, erb_in.shape[2] - past:], spec_in[:, :, spec_in.shape[2] - past:]
        e0 = F.relu(self.erb_conv0(erb_in))  # [B, ch, N, E]
        e1 = F.relu(self.erb_conv1[1](self.erb_conv1[0](e0)))  # [B, ch, N, E/2]
        e2 = F.relu(self.erb_conv2[1](self.erb_conv2[0](e1)))  # [B, ch, N, E/4]
        e3 = F.relu(self.erb_conv3[1](self.erb_conv3[0](e2)))  # [B, ch, N, E/4]
        c0 = F.relu(self.df_conv0[1](self.df_conv0[0](spec_in)))  # [B, ch, N, D]
        c1 = F.relu(self.df_conv1[1](self.df_conv1[0](c0)))  # [B, ch, N, D/2]
        b, _, n, _ = c1.shape
        cemb = F.relu(self.df_fc_emb(c1.permute(0, 2, 3, 1).reshape(b, n, -1)))  # [B, N, H']
        emb = e3.permute(0, 2, 3, 1).reshape(b, n, -1) + cemb  # [B, N, H']
        emb, state.h_enc = self.emb_gru(emb, state.h_enc)
        lsnr = torch.sigmoid(self.lsnr_fc(emb)).squeeze(-1) * (self.cfg.lsnr_max - self.cfg.lsnr_min) \
            + self.cfg.lsnr_min
        return e0, e1, e2, e3, emb, c0, lsnr


class ErbDecoder(nn.Module):
    """erb_dec.onnx: embedding and skips -> ERB gains [B, 1, N, E]."""

    def __init__(self, cfg: DfConfig) -> None:
        super().__init__()
        ch, k = cfg.conv_ch, cfg.convt_kernel
        self.emb_gru = SqueezedGRU(cfg.emb_dim, cfg.emb_hidden_dim, cfg.emb_num_layers - 1, cfg.linear_groups,
                                   out_features=cfg.emb_dim)
        self.conv3p = nn.Conv2d(ch, ch, 1, groups=ch)
        self.convt3 = _separable(ch, k, 1)
        self.conv2p = nn.Conv2d(ch, ch, 1, groups=ch)
        self.convt2 = nn.ModuleList([
            nn.ConvTranspose2d(ch, ch, k, stride=(1, 2), padding=(0, k[1] // 2), output_padding=(0, 1),
                               groups=ch, bias=False), nn.Conv2d(ch, ch, 1)])
        self.conv1p = nn.Conv2d(ch, ch, 1, groups=ch)
        self.convt1 = nn.ModuleList([
            nn.ConvTranspose2d(ch, ch, k, stride=(1, 2), padding=(0, k[1] // 2), output_padding=(0, 1),
                               groups=ch, bias=False), nn.Conv2d(ch, ch, 1)])
        self.conv0p = nn.Conv2d(ch, ch, 1, groups=ch)
        self.conv0_out = nn.Conv2d(ch, 1, k, padding=(0, k[1] // 2))

    def slots(self) -> List[Tuple[str, nn.Module]]:
        return [("grouped", self.emb_gru.linear_in), ("gru", self.emb_gru.gru),
                ("grouped", self.emb_gru.linear_out), ("conv", self.conv3p), ("conv", self.convt3[0]),
                ("conv", self.convt3[1]), ("conv", self.conv2p), ("convT", self.convt2[0]), ("conv", self.convt2[1]),
                ("conv", self.conv1p), ("convT", self.convt1[0]), ("conv", self.convt1[1]), ("conv", self.conv0p),
                ("conv", self.conv0_out)]

    def forward(self, emb: Tensor, e3: Tensor, e2: Tensor, e1: Tensor, e0: Tensor, state: NetState) -> Tensor:
        b, ch, n, f8 = e3.shape
        y, state.h_erb = self.emb_gru(emb, state.h_erb)  # [B, N, H']
        y = y.reshape(b, n, f8, -1).permute(0, 3, 1, 2)  # [B, ch, N, E/4]
        y = F.relu(self.conv3p(e3)) + y
        y = F.relu(self.convt3[1](self.convt3[0](y)))
        y = F.relu(self.conv2p(e2)) + y
        y = F.relu(self.convt2[1](self.convt2[0](y)))  # [B, ch, N, E/2]
        y = F.relu(self.conv1p(e1)) + y
        y = F.relu(self.convt1[1](self.convt1[0](y)))  # [B, ch, N, E]
        y = F.relu(self.conv0p(e0)) + y
        return torch.sigmoid(self.conv0_out(y))  # [B, 1, N, E]


class DfDecoder(nn.Module):
    """df_dec.onnx: embedding and c0 -> deep-filter taps [B, N, D, K, 2] (re, im)."""

    def __init__(self, cfg: DfConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch, out = cfg.conv_ch, 2 * cfg.df_order
        self.df_gru = SqueezedGRU(cfg.emb_dim, cfg.df_hidden_dim, cfg.df_num_layers, cfg.linear_groups // 2)
        self.df_skip = GroupedLinear(cfg.emb_dim, cfg.df_hidden_dim, cfg.linear_groups)
        self.df_convp = nn.ModuleList([
            nn.Conv2d(ch, out, (cfg.df_pathway_kernel_size_t, 1), groups=2, bias=False), nn.Conv2d(out, out, 1)])
        self.df_fc_a = nn.Linear(cfg.df_hidden_dim, 1)  # the export's unused "alpha" output
        self.df_out = GroupedLinear(cfg.df_hidden_dim, cfg.nb_df * out, cfg.linear_groups)

    def slots(self) -> List[Tuple[str, nn.Module]]:
        return [("grouped", self.df_gru.linear_in), ("gru", self.df_gru.gru), ("grouped", self.df_skip),
                ("conv", self.df_convp[0]), ("conv", self.df_convp[1]), ("linear", self.df_fc_a),
                ("grouped", self.df_out)]

    def forward(self, emb: Tensor, c0: Tensor, state: NetState) -> Tensor:
        past = self.cfg.df_pathway_kernel_size_t - 1
        c0_in = _causal(c0, state.c0_past)
        state.c0_past = c0_in[:, :, c0_in.shape[2] - past:]
        b, n, _ = emb.shape
        y, state.h_df = self.df_gru(emb, state.h_df)
        y = y + self.df_skip(emb)
        coefs = torch.tanh(self.df_out(y)).reshape(b, n, self.cfg.nb_df, -1)  # [B, N, D, 2K]
        path = F.relu(self.df_convp[1](self.df_convp[0](c0_in))).permute(0, 2, 3, 1)  # [B, N, D, 2K]
        return (coefs + path).reshape(b, n, self.cfg.nb_df, self.cfg.df_order, 2)


# --------------------------------------------------------------------------------------
# The runtime's signal path.
# --------------------------------------------------------------------------------------


@dataclass
class _Stream:
    """Everything carried from one chunk of frames to the next, per batch row."""

    prev: Tensor  # [B, hop] the last input samples (first half of the next analysis window)
    mean_erb: Tensor  # [B, E] running mean of the ERB features
    mean_cplx: Tensor  # [B, D] running mean of |X| over the DF bins
    spec_past: Tensor  # [B, K - 1, F] the last spectra (complex): the filter's and the gains' past
    ola: Tensor  # [B, fft - hop] the overlap-add tail
    net: NetState = field(default_factory=NetState)


def post_filter(noisy: Tensor, enh: Tensor, beta: float) -> Tensor:
    """libDF's post filter (Valin's PercepNet-style gain sharpening) on complex spectra [..., F]."""
    eps = 1e-12
    g = (enh.abs() / (noisy.abs() + eps)).clamp(max=1.0).clamp(min=eps)
    g_sin = g * torch.sin(g * math.pi / 2)
    pf = ((1 + beta) * g / (1 + beta * (g / g_sin) ** 2)) / g
    return enh * pf


class DeepFilterNet3(nn.Module):
    """The three networks with libDF's processing: a mono mix [B, 1, T] -> [B, 2, 1, T] (speech, noise).

    Args:
        cfg: the model's configuration.
        atten_lim_db: the attenuation limit in dB (libDF: its absolute value; >= 100: none;
            below 0.01: no noise reduction at all, speech = mix).
        post_filter_beta: libDF's post filter strength (0: off, as the C API starts).
        chunk_frames: frames per pass of the networks (memory bound; any value gives the same result).
        sources: the stem names (speech, then noise).
    """

    def __init__(self, cfg: DfConfig, *, atten_lim_db: float = NO_LIMIT_DB, post_filter_beta: float = 0.0,
                 chunk_frames: int = 200, sources=("speech", "noise")) -> None:
        super().__init__()
        if not math.isfinite(atten_lim_db):
            raise ValueError(f"atten_lim_db must be a finite number of dB, got {atten_lim_db}")
        if not (math.isfinite(post_filter_beta) and post_filter_beta >= 0):
            raise ValueError(f"post_filter_beta must be >= 0, got {post_filter_beta}")
        if chunk_frames < 1:
            raise ValueError("chunk_frames must be positive")
        self.cfg = cfg
        self.enc = Encoder(cfg)
        self.erb_dec = ErbDecoder(cfg)
        self.df_dec = DfDecoder(cfg)
        self.atten_lim_db = float(atten_lim_db)
        self.post_filter_beta = float(post_filter_beta)
        self.chunk_frames = int(chunk_frames)
        self.sources = list(sources)
        self.samplerate = cfg.sr
        self.audio_channels = 1
        widths = erb_widths(cfg.sr, cfg.fft_size, cfg.nb_erb, cfg.min_nb_erb_freqs)
        band = torch.repeat_interleave(torch.arange(cfg.nb_erb), torch.tensor(widths))  # [F] bin -> band
        self.register_buffer("band_of_bin", band, persistent=False)
        self.register_buffer("band_width", torch.tensor(widths, dtype=torch.float32), persistent=False)
        self.register_buffer("window", vorbis_window(cfg.fft_size), persistent=False)

    @property
    def delay(self) -> int:
        """Samples by which the runtime's output lags its input."""
        return self.cfg.fft_size - self.cfg.hop_size + self.cfg.lookahead * self.cfg.hop_size

    def limit(self) -> Optional[float]:
        """The runtime's mixing factor for the attenuation limit (None: no limit; 1: pass through)."""
        lim = abs(self.atten_lim_db)
        if lim >= NO_LIMIT_DB:
            return None
        if lim < 0.01:
            return 1.0
        return float(np.float32(10.0) ** np.float32(-lim / 20.0))

    def _start(self, batch: int, like: Tensor) -> _Stream:
        cfg = self.cfg
        zeros = dict(dtype=torch.float32, device=like.device)
        mean_erb = torch.linspace(*MEAN_NORM_INIT, cfg.nb_erb, **zeros)
        mean_cplx = torch.linspace(*UNIT_NORM_INIT, cfg.nb_df, **zeros)
        past = max(cfg.df_order - 1, cfg.lookahead)
        return _Stream(prev=torch.zeros(batch, cfg.hop_size, **zeros),
                       mean_erb=mean_erb.expand(batch, -1).clone(), mean_cplx=mean_cplx.expand(batch, -1).clone(),
                       spec_past=torch.zeros(batch, past, cfg.n_freqs, dtype=torch.complex64, device=like.device),
                       ola=torch.zeros(batch, cfg.fft_size - cfg.hop_size, **zeros),
                       net=NetState(erb_past=torch.zeros(batch, 1, cfg.conv_kernel_inp[0] - 1, cfg.nb_erb, **zeros),
                                    spec_past=torch.zeros(batch, 2, cfg.conv_kernel_inp[0] - 1, cfg.nb_df, **zeros),
                                    c0_past=torch.zeros(batch, cfg.conv_ch, cfg.df_pathway_kernel_size_t - 1,
                                                        cfg.nb_df, **zeros)))

    def _chunk(self, frames: Tensor, st: _Stream) -> Tensor:
        """Input frames [B, N, hop] (hop new samples each) -> output frames [B, N, hop]; `st` advanced."""
        cfg = self.cfg
        b, n, hop = frames.shape
        # Analysis: window t = [previous hop, this hop].
        flat = torch.cat([st.prev, frames.reshape(b, n * hop)], dim=1)  # [B, (N + 1) hop]
        st.prev = flat[:, flat.shape[1] - hop:]
        windows = flat.unfold(1, cfg.fft_size, hop) * self.window  # [B, N, fft]
        spec = torch.fft.rfft(windows, dim=-1) * (2.0 * hop / cfg.fft_size ** 2)  # [B, N, F] complex
        # ERB features with the running mean normalisation.
        power = spec.real ** 2 + spec.imag ** 2  # [B, N, F]
        band_power = torch.zeros(b, n, cfg.nb_erb, dtype=power.dtype, device=power.device)
        band_power.index_add_(2, self.band_of_bin, power)
        erb = torch.log10(band_power / self.band_width + 1e-10) * 10.0  # [B, N, E]
        mean, st.mean_erb = running_mean(erb, st.mean_erb, cfg.norm_alpha)
        feat_erb = ((erb - mean) / 40.0).unsqueeze(1)  # [B, 1, N, E]
        # Complex features: the lowest bins over the root of their running mean magnitude.
        low = spec[..., :cfg.nb_df]  # [B, N, D]
        mag_mean, st.mean_cplx = running_mean(low.abs(), st.mean_cplx, cfg.norm_alpha)
        unit = low / mag_mean.sqrt()
        feat_spec = torch.stack([unit.real, unit.imag], dim=1)  # [B, 2, N, D]
        # The networks.
        e0, e1, e2, e3, emb, c0, _lsnr = self.enc(feat_erb, feat_spec, st.net)
        gains = self.erb_dec(emb, e3, e2, e1, e0, st.net)[:, 0]  # [B, N, E]
        taps = self.df_dec(emb, c0, st.net)  # [B, N, D, K, 2]
        taps = torch.complex(taps[..., 0], taps[..., 1])  # [B, N, D, K]
        # Frame t enhances the spectrum of frame t - L with the outputs of frame t.
        spec_all = torch.cat([st.spec_past, spec], dim=1)  # [B, P + N, F], P past frames
        p = st.spec_past.shape[1]
        st.spec_past = spec_all[:, spec_all.shape[1] - p:]
        look = cfg.lookahead
        noisy = spec_all[:, p - look:p - look + n]  # [B, N, F]: X_{t - L}
        enh = noisy * gains[..., self.band_of_bin]
        k = cfg.df_order
        filtered = torch.zeros(b, n, cfg.nb_df, dtype=spec.dtype, device=spec.device)
        for i in range(k):  # tap i sees frame t - (K - 1) + i
            start = p - (k - 1) + i
            filtered = filtered + spec_all[:, start:start + n, :cfg.nb_df] * taps[..., i]
        enh = torch.cat([filtered, enh[..., cfg.nb_df:]], dim=-1)
        if self.post_filter_beta > 0:
            enh = post_filter(noisy, enh, self.post_filter_beta)
        lim = self.limit()
        if lim is not None:
            enh = enh * (1.0 - lim) + noisy * lim
        # Synthesis: unscaled inverse FFT (the imaginary parts of DC and Nyquist ignored), window, overlap-add.
        wave = torch.fft.irfft(enh, n=cfg.fft_size, dim=-1, norm="forward") * self.window  # [B, N, fft]
        head, tail = wave[..., :hop], wave[..., hop:]  # [B, N, hop] each
        shifted = torch.cat([st.ola.unsqueeze(1), tail[:, :-1]], dim=1)  # the previous frame's second half
        st.ola = tail[:, -1]
        return head + shifted

    def enhance(self, mix: Tensor) -> Tensor:
        """The runtime's output for mono audio [B, T] fed frame by frame: [B, T'] with T' = T rounded
        up to whole frames (the runtime's delay included, zeros after the end)."""
        cfg = self.cfg
        b, t = mix.shape
        n = -(-t // cfg.hop_size)
        x = F.pad(mix.to(torch.float32), (0, n * cfg.hop_size - t)).reshape(b, n, cfg.hop_size)  # [B, N, hop]
        st = self._start(b, x)
        out = []
        for start in range(0, n, self.chunk_frames):
            out.append(self._chunk(x[:, start:start + self.chunk_frames], st))
        return torch.cat(out, dim=1).reshape(b, n * cfg.hop_size)

    def forward(self, mix: Tensor) -> Tensor:
        """mix [B, 1, T] -> [B, 2, 1, T]: speech aligned with the mix, noise = mix - speech."""
        if mix.dim() != 3 or mix.shape[1] != 1:
            raise ValueError(f"DeepFilterNet3 takes mono audio [B, 1, T], got {tuple(mix.shape)}")
        b, _, t = mix.shape
        x = mix[:, 0].to(torch.float32)
        if self.limit() == 1.0:
            speech = x.clone()  # the runtime passes the input through (no reduction)
        else:
            # Flush the delay with zeros, as a caller of the runtime feeding silence after the end.
            speech = self.enhance(F.pad(x, (0, self.delay)))[:, self.delay:self.delay + t]
        stems = torch.stack([speech, x - speech], dim=1)  # [B, 2, T]
        return stems.unsqueeze(2).to(mix.dtype)
