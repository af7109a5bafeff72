"""Demucs v2/v3-time waveform U-Net (`Demucs`) and the small layers the later Demucs
generations reuse (`DConv`, `LayerScale`, `LocalState`, `BLSTM`, `rescale_module`).

Everything here reproduces `demucs.demucs` of demucs 4.1.0 numerically, and registers
modules in the same order with the same attribute names: published checkpoints are
loaded by key and diffq-packed ones by parameter position.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F

from .cpu_kernels import conv1d_same_gemm, conv1x1_gemm, cpu_fp32_inference, rows_per_chunk

__all__ = [
    "BLSTM",
    "DConv",
    "Demucs",
    "LayerScale",
    "LocalState",
    "center_trim",
    "rescale_conv",
    "rescale_module",
    "resample_frac",
    "unfold",
]


# --------------------------------------------------------------------------- helpers


def center_trim(tensor: torch.Tensor, reference: Union[torch.Tensor, int]) -> torch.Tensor:
    """Crop the last axis of `tensor` to the length of `reference` (a tensor or an int),
    removing as much on both sides; an odd surplus sample goes from the right.

    Shapes: `[*, T]` -> `[*, T_ref]`.
    """
    target = reference.size(-1) if isinstance(reference, torch.Tensor) else int(reference)
    surplus = tensor.size(-1) - target
    if surplus < 0:
        raise ValueError(f"cannot trim a tensor of length {tensor.size(-1)} to {target}")
    if surplus:
        left = surplus // 2
        tensor = tensor[..., left:left + target]
    return tensor


def unfold(a: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Cut `[*, T]` into `ceil(T / stride)` windows of `kernel_size` samples taken every
    `stride` samples, zero padding the end so the last window is complete.

    Shapes: `[*, T]` -> `[*, N, K]`.
    """
    length = a.shape[-1]
    n_frames = math.ceil(length / stride)
    needed = (n_frames - 1) * stride + kernel_size
    a = F.pad(a, (0, needed - length))
    return a.unfold(-1, kernel_size, stride)


def _sinc(x: torch.Tensor) -> torch.Tensor:
    """sin(x) / x with the removable singularity at 0 filled in (x is not scaled by pi)."""
    one = torch.ones((), device=x.device, dtype=x.dtype)
    return torch.where(x == 0, one, torch.sin(x) / x)


def _resample_kernels(old_sr: int, new_sr: int, zeros: int, rolloff: float):
    """Windowed-sinc polyphase filters for resampling by new_sr / old_sr (reduced).

    Returns `(kernels [new_sr, 1, K], half_width)`. Built in float32 like the
    reference (julius), so that the filters are the same numbers.
    """
    cutoff = min(new_sr, old_sr) * rolloff
    half_width = math.ceil(zeros * old_sr / cutoff)
    taps = torch.arange(-half_width, half_width + old_sr).float()
    phases = []
    for phase in range(new_sr):
        # Time of each input tap relative to output sample `phase`, in units of the
        # lowpass's zero crossings; the filter is cut after `zeros` crossings.
        t = (-phase / new_sr + taps / old_sr) * cutoff
        t = t.clamp_(-zeros, zeros)
        t *= math.pi
        window = torch.cos(t / zeros / 2) ** 2  # Hann taper over [-zeros, zeros]
        kernel = _sinc(t) * window
        kernel.div_(kernel.sum())  # unit DC gain
        phases.append(kernel)
    return torch.stack(phases).view(new_sr, 1, -1), half_width


def resample_frac(x: torch.Tensor, old_sr: int, new_sr: int, zeros: int = 24,
                  rolloff: float = 0.945) -> torch.Tensor:
    """Band-limited resampling of the last axis by the ratio `new_sr / old_sr`.

    Same algorithm and numbers as `julius.resample_frac` (J. O. Smith's windowed sinc,
    replicate padding at the edges, output length `floor(T * new_sr / old_sr)`).

    Shapes: `[*, T]` -> `[*, floor(T * new_sr / old_sr)]`.
    """
    gcd = math.gcd(old_sr, new_sr)
    old_sr, new_sr = old_sr // gcd, new_sr // gcd
    if old_sr == new_sr:
        return x
    kernels, half_width = _resample_kernels(old_sr, new_sr, zeros, rolloff)
    kernels = kernels.to(x)
    *lead, length = x.shape
    flat = x.reshape(-1, 1, length)  # [*, T] -> [B', 1, T]
    flat = F.pad(flat, (half_width, half_width + old_sr), mode="replicate")
    # One output channel per polyphase branch; the stride walks the input `old_sr` at a
    # time, so interleaving the branches gives `new_sr` outputs per `old_sr` inputs.
    phases = F.conv1d(flat, kernels, stride=old_sr)  # [B', new_sr, L]
    out = phases.transpose(1, 2).reshape(*lead, -1)  # [*, L * new_sr]
    out_len = int(math.floor(new_sr * length / old_sr))
    return out[..., :out_len]


# --------------------------------------------------------------------------- layers


class LayerScale(nn.Module):
    """Per-channel learnt gain on a residual branch, initialised small so that each
    branch starts close to the identity (Touvron et al. 2021).

    Args:
        channels: number of channels C.
        init: initial value of every gain.
        channel_last: False for `[B, C, T]` inputs, True for `[T, B, C]` (or `[..., C]`).
    """

    def __init__(self, channels: int, init: float = 0, channel_last: bool = False):
        super().__init__()
        self.channel_last = channel_last
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_last:
            return self.scale * x
        return self.scale[:, None] * x


class BLSTM(nn.Module):
    """Bidirectional LSTM over time whose two directions are projected back to `dim`.

    With `max_steps`, long inputs are cut into half-overlapping windows of `max_steps`
    frames that are processed independently (bounded memory and context), and the
    centre half of each window is kept.

    Shapes: `[B, C, T]` -> `[B, C, T]` (C = dim).
    """

    def __init__(self, dim: int, layers: int = 1, max_steps: Optional[int] = None,
                 skip: bool = False):
        super().__init__()
        if max_steps is not None and max_steps % 4:
            raise ValueError("max_steps must be a multiple of 4")
        self.max_steps = max_steps
        self.lstm = nn.LSTM(bidirectional=True, num_layers=layers, hidden_size=dim, input_size=dim)
        self.linear = nn.Linear(2 * dim, dim)
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, length = x.shape
        residual = x
        windowed = self.max_steps is not None and length > self.max_steps
        if windowed:
            width = self.max_steps
            hop = width // 2
            frames = unfold(x, width, hop)  # [B, C, N, W]
            n_windows = frames.shape[2]
            x = frames.permute(0, 2, 1, 3).reshape(-1, channels, width)  # [B*N, C, W]

        seq = x.permute(2, 0, 1)  # [T, B, C]: nn.LSTM is time-first here
        seq = self.linear(self.lstm(seq)[0])
        x = seq.permute(1, 2, 0)  # [B, C, T]

        if windowed:
            frames = x.reshape(batch, -1, channels, width)  # [B, N, C, W]
            margin = hop // 2
            pieces = []
            for k in range(n_windows):
                # Keep each window's centre; the outer edges of the first and last
                # windows have no neighbour to take over, so they are kept too.
                start = 0 if k == 0 else margin
                stop = width if k == n_windows - 1 else width - margin
                pieces.append(frames[:, k, :, start:stop])
            x = torch.cat(pieces, -1)[..., :length]
        if self.skip:
            x = x + residual
        return x


class LocalState(nn.Module):
    """Self-attention over time with content-only queries/keys (no positional
    embedding) and a learnt, per-position penalty that grows with the time distance,
    so each head can choose how local it is.

    Args:
        channels: C, divisible by `heads`.
        heads: number of attention heads.
        nfreqs: number of cosine "frequency" kernels (an unused experiment; 0 in every
            released model, kept for completeness).
        ndecay: number of distance-decay kernels.

    Shapes: `[B, C, T]` -> `[B, C, T]` (residual included).
    """

    def __init__(self, channels: int, heads: int = 4, nfreqs: int = 0, ndecay: int = 4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.nfreqs = nfreqs
        self.ndecay = ndecay
        self.content = nn.Conv1d(channels, channels, 1)
        self.query = nn.Conv1d(channels, channels, 1)
        self.key = nn.Conv1d(channels, channels, 1)
        if nfreqs:
            self.query_freqs = nn.Conv1d(channels, heads * nfreqs, 1)
        if ndecay:
            self.query_decay = nn.Conv1d(channels, heads * ndecay, 1)
            # The decay weights go through a sigmoid: start near zero penalty so that the
            # attention window is as wide as possible at the beginning of training.
            with torch.no_grad():
                self.query_decay.weight.mul_(0.01)
                self.query_decay.bias.fill_(-2.0)
        self.proj = nn.Conv1d(channels + heads * nfreqs, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, length = x.shape
        heads = self.heads
        pos = torch.arange(length, device=x.device, dtype=x.dtype)
        delta = pos[:, None] - pos[None, :]  # [T_key, T_query]

        queries = self.query(x).view(batch, heads, -1, length)  # [B, H, C/H, T]
        keys = self.key(x).view(batch, heads, -1, length)
        scores = torch.einsum("bhct,bhcs->bhts", keys, queries)  # [B, H, T_key, T_query]
        scores /= keys.shape[2] ** 0.5
        if self.nfreqs:
            periods = torch.arange(1, self.nfreqs + 1, device=x.device, dtype=x.dtype)
            freq_kernel = torch.cos(2 * math.pi * delta / periods.view(-1, 1, 1))  # [F, T, T]
            freq_q = self.query_freqs(x).view(batch, heads, -1, length) / self.nfreqs ** 0.5
            scores += torch.einsum("fts,bhfs->bhts", freq_kernel, freq_q)
        if self.ndecay:
            rates = torch.arange(1, self.ndecay + 1, device=x.device, dtype=x.dtype)
            decay_q = torch.sigmoid(self.query_decay(x).view(batch, heads, -1, length)) / 2
            decay_kernel = -rates.view(-1, 1, 1) * delta.abs() / self.ndecay ** 0.5  # [D, T, T]
            scores += torch.einsum("fts,bhfs->bhts", decay_kernel, decay_q)

        # A position may not attend to itself (it is already in the residual).
        eye = torch.eye(length, device=scores.device, dtype=torch.bool)
        scores.masked_fill_(eye, -100)
        weights = torch.softmax(scores, dim=2)  # normalised over keys

        content = self.content(x).view(batch, heads, -1, length)
        result = torch.einsum("bhts,bhct->bhcs", weights, content)  # [B, H, C/H, T]
        if self.nfreqs:
            time_sig = torch.einsum("bhts,fts->bhfs", weights, freq_kernel)
            result = torch.cat([result, time_sig], 2)
        result = result.reshape(batch, -1, length)  # [B, C (+H*F), T]
        return x + self.proj(result)


class DConv(nn.Module):
    """Residual stack of dilated 1-D convolutions placed in each Demucs encoder/decoder
    layer. Each of the `|depth|` sub-layers projects to `channels / compress` channels,
    optionally runs a windowed BiLSTM and local attention there, projects back with a
    GLU, and is added to its input through a small `LayerScale`.

    Args:
        channels: C, input and output channels.
        compress: channel reduction inside the branch.
        depth: number of sub-layers; dilation 2**d is used when depth > 0, none when
            depth < 0. (`dilate` is accepted for compatibility, but, as in the
            reference, the sign of `depth` decides.)
        init: initial LayerScale value.
        norm: GroupNorm(1, .) after each conv (Identity otherwise).
        attn, heads, ndecay: add a `LocalState` with these settings.
        lstm: add a `BLSTM` (2 layers, windows of 200 steps, residual).
        gelu: GELU activation, else ReLU.
        kernel: odd kernel size of the dilated convolutions.

    Shapes: `[B, C, T]` -> `[B, C, T]`.
    """

    def __init__(self, channels: int, compress: float = 4, depth: int = 2, init: float = 1e-4,
                 norm: bool = True, attn: bool = False, heads: int = 4, ndecay: int = 4,
                 lstm: bool = False, gelu: bool = True, kernel: int = 3, dilate: bool = True):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError("DConv kernel size must be odd")
        self.channels = channels
        self.compress = compress
        self.depth = abs(depth)
        use_dilation = depth > 0
        hidden = int(channels / compress)
        act = nn.GELU if gelu else nn.ReLU

        def make_norm(dim: int) -> nn.Module:
            return nn.GroupNorm(1, dim) if norm else nn.Identity()

        self.layers = nn.ModuleList()
        for d in range(self.depth):
            dilation = 2 ** d if use_dilation else 1
            # Sequential indices are part of the checkpoint keys: the optional recurrent
            # and attention blocks sit right after the first activation (index 3), the
            # LSTM before the attention.
            mods: List[nn.Module] = [
                nn.Conv1d(channels, hidden, kernel, dilation=dilation,
                          padding=dilation * (kernel // 2)),
                make_norm(hidden),
                act(),
            ]
            if lstm:
                mods.append(BLSTM(hidden, layers=2, max_steps=200, skip=True))
            if attn:
                mods.append(LocalState(hidden, heads=heads, ndecay=ndecay))
            mods += [
                nn.Conv1d(hidden, 2 * channels, 1),
                make_norm(2 * channels),
                nn.GLU(1),
                LayerScale(channels, init),
            ]
            self.layers.append(nn.Sequential(*mods))
        # Without the recurrent / attention blocks a sub-layer is two convs around
        # norms and activations, which `_dconv_branch_gemm` runs faster on the CPU.
        self._plain = not (lstm or attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gemm = self._plain and cpu_fp32_inference(x)
        for layer in self.layers:
            x = _dconv_branch_gemm(layer, x) if gemm else x + layer(x)
        return x

    def forward_rows(self, y: torch.Tensor) -> torch.Tensor:
        """Run over time on every frequency row of `y`, as if the rows were a batch.

        Shapes: `[B, C, F, T]` -> `[B, C, F, T]`.
        """
        batch, channels, bins, frames = y.shape
        if not (self._plain and cpu_fp32_inference(y)):
            rows = y.permute(0, 2, 1, 3).reshape(-1, channels, frames)  # [B*F, C, T]
            out = self(rows)
            return out.view(batch, bins, channels, frames).permute(0, 2, 1, 3)
        # Rows are independent (each is normalised on its own), so the fast path takes a
        # few at a time: every temporary then stays in the CPU cache, and the heap sees
        # a few small buffers instead of [B*F, 2C, T] ones of up to 66 MB per op, which
        # fragment it (peak RSS) and make each elementwise pass a trip to DRAM.
        widest = max(2 * channels, max(layer[0].out_channels * layer[0].kernel_size[0]
                                       for layer in self.layers))
        step = rows_per_chunk(batch * widest * frames)
        out = torch.empty_like(y)
        for lo in range(0, bins, step):
            hi = min(bins, lo + step)
            x = y[:, :, lo:hi].permute(0, 2, 1, 3).reshape(-1, channels, frames)  # [B*f, C, T]
            for layer in self.layers:
                x = _dconv_branch_gemm(layer, x)
            out[:, :, lo:hi] = x.view(batch, hi - lo, channels, frames).permute(0, 2, 1, 3)
        return out


def _dconv_branch_gemm(layer: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """`x + layer(x)` for a plain DConv sub-layer [conv, norm, act, conv 1x1, norm, GLU,
    LayerScale], with both convs as GEMMs and the gain and residual sum in one op.

    Shapes: `[N, C, T]` -> `[N, C, T]`.
    """
    conv, norm1, act, proj, norm2, glu, scale = layer
    y = act(norm1(conv1d_same_gemm(x, conv.weight, conv.bias, conv.dilation[0])))
    y = glu(norm2(conv1x1_gemm(y, proj.weight, proj.bias)))
    return torch.addcmul(x, y, scale.scale[:, None])


_CONV_TYPES = (nn.Conv1d, nn.ConvTranspose1d, nn.Conv2d, nn.ConvTranspose2d)


def rescale_conv(conv: nn.Module, reference: float) -> None:
    """Divide a conv's weight and bias by sqrt(std(weight) / reference): an init trick of
    Demucs that brings the initial weight scale closer to `reference`."""
    std = conv.weight.std().detach()
    scale = (std / reference) ** 0.5
    conv.weight.data /= scale
    if conv.bias is not None:
        conv.bias.data /= scale


def rescale_module(module: nn.Module, reference: float) -> None:
    """Apply `rescale_conv` to every (transposed) 1-D/2-D convolution inside `module`."""
    for sub in module.modules():
        if isinstance(sub, _CONV_TYPES):
            rescale_conv(sub, reference)


# --------------------------------------------------------------------------- model


class Demucs(nn.Module):
    """Waveform U-Net (Demucs v2, and the time-only models of the v3 MDX bags).

    Encoder: `depth` strided convolutions (kernel `kernel_size`, stride `stride`), each
    followed by an optional `DConv` branch and a 1x1 "rewrite" conv with GLU; decoder:
    the mirror image with transposed convolutions and U-Net skips. The input can be
    upsampled x2 before (and downsampled after), and is zero padded to a length the
    strides divide (`valid_length`).

    Constructor arguments are those of `demucs.demucs.Demucs` (4.1.0).

    Shapes: forward `[B, C, T]` -> `[B, S, C, T]` (S = len(sources), C = audio_channels).
    """

    def __init__(self,
                 sources: Sequence[str],
                 audio_channels: int = 2,
                 channels: int = 64,
                 growth: float = 2.,
                 depth: int = 6,
                 rewrite: bool = True,
                 lstm_layers: int = 0,
                 kernel_size: int = 8,
                 stride: int = 4,
                 context: int = 1,
                 gelu: bool = True,
                 glu: bool = True,
                 norm_starts: int = 4,
                 norm_groups: int = 4,
                 dconv_mode: int = 1,
                 dconv_depth: int = 2,
                 dconv_comp: float = 4,
                 dconv_attn: int = 4,
                 dconv_lstm: int = 4,
                 dconv_init: float = 1e-4,
                 normalize: bool = True,
                 resample: bool = True,
                 rescale: float = 0.1,
                 samplerate: int = 44100,
                 segment: float = 4 * 10):
        super().__init__()
        self.audio_channels = audio_channels
        self.sources = list(sources)
        self.kernel_size = kernel_size
        self.context = context
        self.stride = stride
        self.depth = depth
        self.resample = resample
        self.channels = channels
        self.normalize = normalize
        self.samplerate = samplerate
        self.segment = segment
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        # Present (empty) in the reference; kept so the module tree is the same.
        self.skip_scales = nn.ModuleList()

        # The gate and the activation modules hold no parameters: one shared instance
        # each is enough (as in the reference).
        if glu:
            gate: nn.Module = nn.GLU(dim=1)
            widen = 2
        else:
            gate = nn.ReLU()
            widen = 1
        act: Callable[[], nn.Module] = nn.GELU if gelu else nn.ReLU

        decoders: List[nn.Module] = []
        in_channels = audio_channels
        for index in range(depth):
            use_norm = index >= norm_starts

            def make_norm(dim: int, _use=use_norm) -> nn.Module:
                return nn.GroupNorm(norm_groups, dim) if _use else nn.Identity()

            dconv_kw = dict(depth=dconv_depth, init=dconv_init, compress=dconv_comp,
                            attn=index >= dconv_attn, lstm=index >= dconv_lstm)

            enc: List[nn.Module] = [
                nn.Conv1d(in_channels, channels, kernel_size, stride),
                make_norm(channels),
                act(),
            ]
            if dconv_mode & 1:
                enc.append(DConv(channels, **dconv_kw))
            if rewrite:
                enc += [nn.Conv1d(channels, widen * channels, 1),
                        make_norm(widen * channels), gate]
            self.encoder.append(nn.Sequential(*enc))

            # The outermost decoder produces every stem's channels at once.
            out_channels = in_channels if index > 0 else len(self.sources) * audio_channels
            dec: List[nn.Module] = []
            if rewrite:
                dec += [nn.Conv1d(channels, widen * channels, 2 * context + 1, padding=context),
                        make_norm(widen * channels), gate]
            if dconv_mode & 2:
                dec.append(DConv(channels, **dconv_kw))
            dec.append(nn.ConvTranspose1d(channels, out_channels, kernel_size, stride, padding=0))
            if index > 0:
                dec += [make_norm(out_channels), act()]
            decoders.append(nn.Sequential(*dec))

            in_channels = channels
            channels = int(growth * channels)

        # decoder[0] is the innermost layer: it runs first.
        for dec_layer in reversed(decoders):
            self.decoder.append(dec_layer)

        if lstm_layers:
            self.lstm: Optional[BLSTM] = BLSTM(in_channels, lstm_layers)
        else:
            self.lstm = None

        if rescale:
            rescale_module(self, reference=rescale)

    def valid_length(self, length: int) -> int:
        """Smallest input length >= `length` for which every strided conv consumes its
        input exactly (no samples dropped); `forward` pads to it and trims back."""
        if self.resample:
            length *= 2
        for _ in range(self.depth):
            length = max(1, math.ceil((length - self.kernel_size) / self.stride) + 1)
        for _ in range(self.depth):
            length = (length - 1) * self.stride + self.kernel_size
        if self.resample:
            length = math.ceil(length / 2)
        return int(length)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """`[B, C, T]` -> `[B, S, C, T]`."""
        x = mix
        length = x.shape[-1]

        if self.normalize:
            mono = mix.mean(dim=1, keepdim=True)  # [B, 1, T]
            mean = mono.mean(dim=-1, keepdim=True)
            std = mono.std(dim=-1, keepdim=True)
            x = (x - mean) / (1e-5 + std)
        else:
            mean, std = 0, 1

        delta = self.valid_length(length) - length
        x = F.pad(x, (delta // 2, delta - delta // 2))

        if self.resample:
            x = resample_frac(x, 1, 2)

        skips = []
        for encode in self.encoder:
            x = encode(x)
            skips.append(x)

        if self.lstm is not None:
            x = self.lstm(x)

        for decode in self.decoder:
            skip = center_trim(skips.pop(), x)
            x = decode(x + skip)

        if self.resample:
            x = resample_frac(x, 2, 1)
        x = x * std + mean
        x = center_trim(x, length)
        return x.view(x.size(0), len(self.sources), self.audio_channels, x.size(-1))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load weights, accepting checkpoints of the earliest Demucs generation whose
        layers had no norm slot (their `<enc|dec>.<i>.2.*` keys are now `.3.*`)."""
        state = dict(state_dict)
        for idx in range(self.depth):
            for part in ("encoder", "decoder"):
                for kind in ("bias", "weight"):
                    new = f"{part}.{idx}.3.{kind}"
                    old = f"{part}.{idx}.2.{kind}"
                    if old in state and new not in state:
                        state[new] = state.pop(old)
        return super().load_state_dict(state, strict=strict, assign=assign)
