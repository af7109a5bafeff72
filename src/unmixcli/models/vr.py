"""UVR's VR-architecture networks and their band-split spectrogram processing, in torch.

Two generations of mask networks, both mapping a magnitude window [B, 2, F, W]
(F = bins + 1, the combined spectrogram's rows) to a mask in [0, 1] of the same
size less `offset` frames at each side:

* `CascadedASPPNet` (UVR's `nets.py`, the v5 "HP"/"SP" models): three cascaded
  U-Nets with an ASPP bottleneck; its width `ch`, a fifth encoder level and the
  number of extra dilated ASPP branches vary per published size.
* `CascadedNet` (`nets_new.py`, the "v5.1" models: De-Echo, DeNoise, BVE): U-Nets
  with a BiLSTM over frequency in the decoder; width `nout`, LSTM width `nout_lstm`.

The parameter names follow the published state dicts (`enc1.conv1.conv.0.weight`,
...) so a file's tensors load by name.

`VRSeparator` is the waveform model the engine runs: the processing of
audio-separator's VR separator (and UVR's `spec_utils`), reimplemented: per band
a resampled copy of the mix and its STFT, the bands' bins cut out and stacked,
the pre-filter, windows of `window_size` frames through the network, optional
test-time augmentation, the aggression exponent, optional artifact merging, and
the inverse: per band iSTFT, filters, and resampling up band by band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------
# Layers.
# --------------------------------------------------------------------------------------


class ConvBNAct(nn.Module):
    """conv (no bias) -> BatchNorm -> activation; `conv` is a Sequential as in the published files."""

    def __init__(self, nin: int, nout: int, k: int = 3, stride: int = 1, pad: Any = 1, dilation: Any = 1,
                 act: type = nn.ReLU) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(nin, nout, k, stride, pad, dilation, bias=False), nn.BatchNorm2d(nout),
                                  act())

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class SepConvBNAct(nn.Module):
    """Depthwise dilated conv -> pointwise conv -> BatchNorm -> activation."""

    def __init__(self, nin: int, nout: int, k: int = 3, stride: int = 1, pad: int = 1, dilation: int = 1,
                 act: type = nn.ReLU) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(nin, nin, k, stride, pad, dilation, groups=nin, bias=False),
                                  nn.Conv2d(nin, nout, 1, bias=False), nn.BatchNorm2d(nout), act())

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def _center_crop(skip: Tensor, like: Tensor) -> Tensor:
    """The skip connection's centre frames, as many as `like` has."""
    w, target = skip.shape[3], like.shape[3]
    if w == target:
        return skip
    if w < target:
        raise ValueError("the window is too short for the network (fewer frames in a skip than upsampled)")
    start = (w - target) // 2
    return skip[:, :, :, start:start + target]


def _up_and_join(x: Tensor, skip: Optional[Tensor]) -> Tensor:
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    return x if skip is None else torch.cat([x, _center_crop(skip, x)], dim=1)


# ---- v5 (nets.py) ----


class Encoder(nn.Module):
    """v5: conv1 keeps the size (its output is the skip), conv2 strides."""

    def __init__(self, nin: int, nout: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(nin, nout, 3, 1, 1, act=nn.LeakyReLU)
        self.conv2 = ConvBNAct(nout, nout, 3, stride, 1, act=nn.LeakyReLU)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        skip = self.conv1(x)
        return self.conv2(skip), skip


class Decoder(nn.Module):
    def __init__(self, nin: int, nout: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(nin, nout, 3, 1, 1)

    def forward(self, x: Tensor, skip: Optional[Tensor] = None) -> Tensor:
        return self.conv(_up_and_join(x, skip))


class ASPP(nn.Module):
    """v5 ASPP: pooled context, 1x1, three dilated separable convs (4, 8, 16), and `extra`
    further branches at dilation 16. As in UVR, the extra branches are ONE module
    (conv6, and conv7 the same module): a seven-branch file's conv6 and conv7 tensors
    load into it in that order, so conv7's are the ones used."""

    def __init__(self, nin: int, nout: int, extra: int = 0, dilations: Sequence[int] = (4, 8, 16)) -> None:
        super().__init__()
        if extra not in (0, 1, 2):
            raise ValueError(f"0, 1 or 2 extra ASPP branches, not {extra}")
        self.extra = extra
        self.conv1 = nn.Sequential(nn.AdaptiveAvgPool2d((1, None)), ConvBNAct(nin, nin, 1, 1, 0))
        self.conv2 = ConvBNAct(nin, nin, 1, 1, 0)
        self.conv3 = SepConvBNAct(nin, nin, 3, 1, dilations[0], dilations[0])
        self.conv4 = SepConvBNAct(nin, nin, 3, 1, dilations[1], dilations[1])
        self.conv5 = SepConvBNAct(nin, nin, 3, 1, dilations[2], dilations[2])
        if extra:
            self.conv6 = SepConvBNAct(nin, nin, 3, 1, dilations[2], dilations[2])
        if extra == 2:
            self.conv7 = self.conv6
        # Dropout2d(0.1) after it in the published layout: index 1, no parameters, identity in eval.
        self.bottleneck = nn.Sequential(ConvBNAct(nin * (5 + extra), nout, 1, 1, 0), nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[2:]
        feats = [F.interpolate(self.conv1(x), size=(h, w), mode="bilinear", align_corners=True),
                 self.conv2(x), self.conv3(x), self.conv4(x), self.conv5(x)]
        if self.extra:
            extra = self.conv6(x)
            feats.extend([extra] * self.extra)
        return self.bottleneck(torch.cat(feats, dim=1))


class ASPPUNet(nn.Module):
    """v5 U-Net (BaseASPPNet): four (or five) encoder levels, ASPP, decoders back up."""

    def __init__(self, nin: int, ch: int, *, deep: bool = False, extra: int = 0) -> None:
        super().__init__()
        self.deep = deep
        self.enc1 = Encoder(nin, ch)
        self.enc2 = Encoder(ch, ch * 2)
        self.enc3 = Encoder(ch * 2, ch * 4)
        self.enc4 = Encoder(ch * 4, ch * 8)
        if deep:
            self.enc5 = Encoder(ch * 8, ch * 16)
            self.aspp = ASPP(ch * 16, ch * 32, extra)
            self.dec5 = Decoder(ch * (16 + 32), ch * 16)
        else:
            self.aspp = ASPP(ch * 8, ch * 16, extra)
        self.dec4 = Decoder(ch * (8 + 16), ch * 8)
        self.dec3 = Decoder(ch * (4 + 8), ch * 4)
        self.dec2 = Decoder(ch * (2 + 4), ch * 2)
        self.dec1 = Decoder(ch * (1 + 2), ch)

    def forward(self, x: Tensor) -> Tensor:
        h, s1 = self.enc1(x)
        h, s2 = self.enc2(h)
        h, s3 = self.enc3(h)
        h, s4 = self.enc4(h)
        if self.deep:
            h, s5 = self.enc5(h)
            h = self.dec5(self.aspp(h), s5)
        else:
            h = self.aspp(h)
        return self.dec1(self.dec2(self.dec3(self.dec4(h, s4), s3), s2), s1)


class CascadedASPPNet(nn.Module):
    """UVR v5's mask network (nets.py).

    Args:
        bins: the combined spectrogram's bins (the model parameters' `bins`); the
            network sees the lowest `bins` rows and repeats its last row for the top one.
        ch: the first U-Nets' width (16 "SP", 32 "HP", 64 "HP2"); the third's is 2 ch.
        deep: a fifth encoder level (the 129605 KB size).
        extra: extra ASPP branches (0; 1 for 129605; 2 for 33966 / 537238 / 537227).
    """

    offset = 128

    def __init__(self, bins: int, ch: int, *, deep: bool = False, extra: int = 0) -> None:
        super().__init__()
        self.max_bin = bins
        self.output_bin = bins + 1
        self.stg1_low_band_net = ASPPUNet(2, ch, deep=deep, extra=extra)
        self.stg1_high_band_net = ASPPUNet(2, ch, deep=deep, extra=extra)
        self.stg2_bridge = ConvBNAct(ch + 2, ch // 2, 1, 1, 0)
        self.stg2_full_band_net = ASPPUNet(ch // 2, ch, deep=deep, extra=extra)
        self.stg3_bridge = ConvBNAct(2 * ch + 2, ch, 1, 1, 0)
        self.stg3_full_band_net = ASPPUNet(ch, 2 * ch, deep=deep, extra=extra)
        self.out = nn.Conv2d(2 * ch, 2, 1, bias=False)
        # Training-only heads, kept so the published files load whole.
        self.aux1_out = nn.Conv2d(ch, 2, 1, bias=False)
        self.aux2_out = nn.Conv2d(ch, 2, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """[B, 2, F, W] -> mask [B, 2, F, W]."""
        x = x[:, :, :self.max_bin]
        half = x.shape[2] // 2
        aux1 = torch.cat([self.stg1_low_band_net(x[:, :, :half]), self.stg1_high_band_net(x[:, :, half:])], dim=2)
        aux2 = self.stg2_full_band_net(self.stg2_bridge(torch.cat([x, aux1], dim=1)))
        h = self.stg3_full_band_net(self.stg3_bridge(torch.cat([x, aux1, aux2], dim=1)))
        mask = torch.sigmoid(self.out(h))
        return F.pad(mask, (0, 0, 0, self.output_bin - mask.shape[2]), mode="replicate")

    def predict_mask(self, x: Tensor) -> Tensor:
        return self.forward(x)[:, :, :, self.offset:-self.offset]


# ---- v5.1 (nets_new.py) ----


class EncoderNew(nn.Module):
    """v5.1: conv1 strides, conv2 keeps the size; no separate skip."""

    def __init__(self, nin: int, nout: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(nin, nout, 3, stride, 1, act=nn.LeakyReLU)
        self.conv2 = ConvBNAct(nout, nout, 3, 1, 1, act=nn.LeakyReLU)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class DecoderNew(nn.Module):
    def __init__(self, nin: int, nout: int) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(nin, nout, 3, 1, 1)

    def forward(self, x: Tensor, skip: Optional[Tensor] = None) -> Tensor:
        return self.conv1(_up_and_join(x, skip))


class ASPPNew(nn.Module):
    """v5.1 ASPP: plain (not separable) dilated convs with (frequency, time) dilations."""

    def __init__(self, nin: int, nout: int, dilations=((4, 2), (8, 4), (12, 6))) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.AdaptiveAvgPool2d((1, None)), ConvBNAct(nin, nout, 1, 1, 0))
        self.conv2 = ConvBNAct(nin, nout, 1, 1, 0)
        self.conv3 = ConvBNAct(nin, nout, 3, 1, dilations[0], dilations[0])
        self.conv4 = ConvBNAct(nin, nout, 3, 1, dilations[1], dilations[1])
        self.conv5 = ConvBNAct(nin, nout, 3, 1, dilations[2], dilations[2])
        self.bottleneck = ConvBNAct(nout * 5, nout, 1, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[2:]
        feats = [F.interpolate(self.conv1(x), size=(h, w), mode="bilinear", align_corners=True),
                 self.conv2(x), self.conv3(x), self.conv4(x), self.conv5(x)]
        return self.bottleneck(torch.cat(feats, dim=1))


class LSTMModule(nn.Module):
    """One channel out of a 1x1 conv, a BiLSTM along frames over its bins, back to bins."""

    def __init__(self, nin_conv: int, nin_lstm: int, nout_lstm: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(nin_conv, 1, 1, 1, 0)
        self.lstm = nn.LSTM(input_size=nin_lstm, hidden_size=nout_lstm // 2, bidirectional=True)
        self.dense = nn.Sequential(nn.Linear(nout_lstm, nin_lstm), nn.BatchNorm1d(nin_lstm), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        b, _, f, w = x.shape
        h = self.conv(x)[:, 0].permute(2, 0, 1)  # [W, B, F]
        h, _ = self.lstm(h)  # [W, B, nout_lstm]
        h = self.dense(h.reshape(w * b, -1))  # [W B, F]
        return h.reshape(w, b, 1, f).permute(1, 2, 3, 0)  # [B, 1, F, W]


class LSTMUNet(nn.Module):
    """v5.1 U-Net (BaseNet)."""

    def __init__(self, nin: int, nout: int, nin_lstm: int, nout_lstm: int) -> None:
        super().__init__()
        self.enc1 = ConvBNAct(nin, nout, 3, 1, 1)
        self.enc2 = EncoderNew(nout, nout * 2)
        self.enc3 = EncoderNew(nout * 2, nout * 4)
        self.enc4 = EncoderNew(nout * 4, nout * 6)
        self.enc5 = EncoderNew(nout * 6, nout * 8)
        self.aspp = ASPPNew(nout * 8, nout * 8)
        self.dec4 = DecoderNew(nout * (6 + 8), nout * 6)
        self.dec3 = DecoderNew(nout * (4 + 6), nout * 4)
        self.dec2 = DecoderNew(nout * (2 + 4), nout * 2)
        self.lstm_dec2 = LSTMModule(nout * 2, nin_lstm, nout_lstm)
        self.dec1 = DecoderNew(nout * (1 + 2) + 1, nout)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e4 = self.enc4(e3)
        h = self.aspp(self.enc5(e4))
        h = self.dec2(self.dec3(self.dec4(h, e4), e3), e2)
        h = torch.cat([h, self.lstm_dec2(h)], dim=1)
        return self.dec1(h, e1)


class CascadedNet(nn.Module):
    """UVR v5.1's mask network (nets_new.py).

    Args:
        bins: the combined spectrogram's bins (model parameters' `bins`).
        nout: the width (16, 32, 48, 64 in the published files).
        nout_lstm: the BiLSTMs' output width (128).
    """

    offset = 64

    def __init__(self, bins: int, nout: int = 32, nout_lstm: int = 128) -> None:
        super().__init__()
        self.max_bin = bins
        self.output_bin = bins + 1
        nin_lstm = bins // 2
        self.stg1_low_band_net = nn.Sequential(LSTMUNet(2, nout // 2, nin_lstm // 2, nout_lstm),
                                               ConvBNAct(nout // 2, nout // 4, 1, 1, 0))
        self.stg1_high_band_net = LSTMUNet(2, nout // 4, nin_lstm // 2, nout_lstm // 2)
        self.stg2_low_band_net = nn.Sequential(LSTMUNet(nout // 4 + 2, nout, nin_lstm // 2, nout_lstm),
                                               ConvBNAct(nout, nout // 2, 1, 1, 0))
        self.stg2_high_band_net = LSTMUNet(nout // 4 + 2, nout // 2, nin_lstm // 2, nout_lstm // 2)
        self.stg3_full_band_net = LSTMUNet(3 * nout // 4 + 2, nout, nin_lstm, nout_lstm)
        self.out = nn.Conv2d(nout, 2, 1, bias=False)
        self.aux_out = nn.Conv2d(3 * nout // 4, 2, 1, bias=False)  # training only

    def forward(self, x: Tensor) -> Tensor:
        """[B, 2, F, W] -> mask [B, 2, F, W]."""
        x = x[:, :, :self.max_bin]
        half = x.shape[2] // 2
        l1_in, h1_in = x[:, :, :half], x[:, :, half:]
        l1, h1 = self.stg1_low_band_net(l1_in), self.stg1_high_band_net(h1_in)
        l2 = self.stg2_low_band_net(torch.cat([l1_in, l1], dim=1))
        h2 = self.stg2_high_band_net(torch.cat([h1_in, h1], dim=1))
        f3 = self.stg3_full_band_net(torch.cat([x, torch.cat([l1, h1], dim=2), torch.cat([l2, h2], dim=2)], dim=1))
        mask = torch.sigmoid(self.out(f3))
        return F.pad(mask, (0, 0, 0, self.output_bin - mask.shape[2]), mode="replicate")

    def predict_mask(self, x: Tensor) -> Tensor:
        return self.forward(x)[:, :, :, self.offset:-self.offset]


# --------------------------------------------------------------------------------------
# Model parameters (UVR's modelparams JSON) and the signal processing.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Band:
    sr: int
    hl: int
    n_fft: int
    crop_start: int
    crop_stop: int
    lpf_start: int = -1
    lpf_stop: int = -1
    hpf_start: int = -1
    hpf_stop: int = -1
    res_type: str = "polyphase"
    convert_channels: Optional[str] = None


@dataclass(frozen=True)
class ModelParams:
    """One of UVR's `modelparams/*.json` files, bands in order (lowest first)."""

    bins: int
    sr: int
    pre_filter_start: int
    pre_filter_stop: int
    bands: Tuple[Band, ...]
    mid_side: bool = False
    mid_side_b2: bool = False
    reverse: bool = False
    aggr_correction: Optional[Dict[str, float]] = None
    name: str = ""

    @classmethod
    def from_dict(cls, raw: Dict[str, Any], name: str = "") -> "ModelParams":
        """Raise KeyError / TypeError / ValueError on a malformed mapping (the family words it)."""
        bands_raw = raw["band"]
        keys = sorted(bands_raw, key=lambda k: int(k))
        if [int(k) for k in keys] != list(range(1, len(keys) + 1)):
            raise ValueError("bands must be numbered 1..n")
        fields = {f for f in Band.__dataclass_fields__}
        bands = []
        for k in keys:
            b = bands_raw[k]
            bands.append(Band(**{name_: (b[name_] if name_ in ("res_type", "convert_channels") else int(b[name_]))
                                 for name_ in fields if name_ in b}))
        bins = int(raw["n_bins"] if "n_bins" in raw else raw["bins"])
        corr = raw.get("aggr_correction")
        return cls(bins=bins, sr=int(raw["sr"]), pre_filter_start=int(raw["pre_filter_start"]),
                   pre_filter_stop=int(raw["pre_filter_stop"]), bands=tuple(bands),
                   mid_side=bool(raw.get("mid_side", False)), mid_side_b2=bool(raw.get("mid_side_b2", False)),
                   reverse=bool(raw.get("reverse", False)),
                   aggr_correction=None if corr is None else {"left": float(corr["left"]),
                                                              "right": float(corr["right"])},
                   name=name)

    def check(self) -> None:
        """ValueError when the bands do not fit together."""
        if not self.bands:
            raise ValueError("no bands")
        if self.bands[-1].sr != self.sr:
            raise ValueError(f"the top band's rate {self.bands[-1].sr} differs from sr {self.sr}")
        total = sum(b.crop_stop - b.crop_start for b in self.bands)
        if total > self.bins:
            raise ValueError(f"the bands' crops give {total} bins, more than bins {self.bins}")
        for b in self.bands:
            if not 0 <= b.crop_start < b.crop_stop <= b.n_fft // 2 + 1 or b.hl <= 0:
                raise ValueError(f"band crop {b.crop_start}..{b.crop_stop} does not fit n_fft {b.n_fft}")


# -- resampling: scipy.signal.resample_poly's method (Kaiser-windowed sinc, beta 5), as librosa's
#    'polyphase' calls it.


def _poly_filter(up: int, down: int) -> np.ndarray:
    rate = max(up, down)
    half = 10 * rate
    m = np.arange(2 * half + 1) - half
    cutoff = 1.0 / rate
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(2 * half + 1, 5.0)
    return h / h.sum() * up


def resample(x: Tensor, orig: int, target: int) -> Tensor:
    """[..., T] at `orig` Hz -> [..., ceil(T target / orig)] at `target` Hz (resample_poly)."""
    if orig == target:
        return x
    g = math.gcd(orig, target)
    up, down = target // g, orig // g
    n_in = x.shape[-1]
    n_out = -(-n_in * up // down)
    h = _poly_filter(up, down)
    half = (len(h) - 1) // 2
    pre = down - half % down
    drop = (half + pre) // down
    # upfirdn's output length for a filter of len(h) + pre + post taps; post pads until it covers n_out.
    post = 0
    while ((n_in - 1) * up + len(h) + pre + post - 1) // down + 1 < n_out + drop:
        post += 1
    taps = np.concatenate([np.zeros(pre), h, np.zeros(post)])
    lead = x.shape[:-1]
    flat = x.reshape(-1, 1, n_in)  # [R, 1, T]
    kernel = torch.from_numpy(taps[::-1].copy()).to(flat)  # conv1d correlates: flip for a convolution
    # Polyphase: output n = sum_k taps[k] * xu[n*down - k] over the zero-stuffed xu; done as a strided
    # transposed-free form: stuff zeros, pad, correlate, decimate.
    stuffed = flat.new_zeros(flat.shape[0], 1, (n_in - 1) * up + 1)
    stuffed[:, :, ::up] = flat
    stuffed = F.pad(stuffed, (len(taps) - 1, len(taps) - 1))
    y = F.conv1d(stuffed, kernel.view(1, 1, -1), stride=down)  # [R, 1, T']
    y = y[:, 0, drop:drop + n_out]
    if y.shape[-1] < n_out:
        y = F.pad(y, (0, n_out - y.shape[-1]))
    return y.reshape(*lead, n_out)


# -- STFT as librosa's defaults (periodic Hann, centred, zero padding).


def stft(wave: Tensor, n_fft: int, hop: int) -> Tensor:
    """[C, T] -> complex [C, n_fft/2 + 1, N]."""
    window = torch.hann_window(n_fft, periodic=True, dtype=wave.dtype, device=wave.device)
    return torch.stft(wave, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)


def istft(spec: Tensor, hop: int) -> Tensor:
    """complex [C, K, N] -> [C, hop (N - 1)], librosa's istft (window-square normalisation where
    it is non-zero, centred trim)."""
    c, k, n = spec.shape
    n_fft = 2 * (k - 1)
    window = torch.hann_window(n_fft, periodic=True, dtype=spec.real.dtype, device=spec.device)
    frames = torch.fft.irfft(spec, n=n_fft, dim=1) * window[None, :, None]  # [C, n_fft, N]
    total = n_fft + hop * (n - 1)
    out = F.fold(frames, (1, total), (1, n_fft), stride=(1, hop))[:, 0, 0]  # [C, total]
    env = F.fold((window ** 2)[None, :, None].expand(1, n_fft, n), (1, total), (1, n_fft), stride=(1, hop))[0, 0, 0]
    tiny = torch.finfo(out.dtype).tiny
    out = torch.where(env > tiny, out / torch.where(env > tiny, env, torch.ones_like(env)), out)
    return out[:, n_fft // 2: total - n_fft // 2]


def _lp_mask(n: int, start: int, stop: int, like: Tensor) -> Tensor:
    """v5.1's low-pass ramp (1 until start, linear to 0 at stop, 0 above), [n, 1]."""
    m = np.concatenate([np.ones(start - 1), np.linspace(1, 0, stop - start + 1), np.zeros(n - stop)])
    return torch.from_numpy(m[:, None]).to(like.device, like.real.dtype)


def _hp_mask(n: int, start: int, stop: int, like: Tensor) -> Tensor:
    m = np.concatenate([np.zeros(stop + 1), np.linspace(0, 1, 1 + start - stop), np.ones(n - start - 2)])
    return torch.from_numpy(m[:, None]).to(like.device, like.real.dtype)


def _lp_ramp(spec: Tensor, start: int, stop: int) -> Tensor:
    """v5's low-pass: bins start..stop-1 scaled down a linear ramp, stop and above zeroed."""
    gains = torch.ones(spec.shape[1], dtype=torch.float64)
    g = 1.0
    for b in range(start, stop):
        g -= 1 / (stop - start)
        gains[b] = g
    gains[stop:] = 0
    return spec * gains.to(spec.device, spec.real.dtype)[None, :, None]


def _hp_ramp(spec: Tensor, start: int, stop: int) -> Tensor:
    """v5's high-pass: bins start down to stop+1 scaled down a ramp, 0..stop zeroed."""
    gains = torch.ones(spec.shape[1], dtype=torch.float64)
    g = 1.0
    for b in range(start, stop, -1):
        g -= 1 / (start - stop)
        gains[b] = g
    gains[:stop + 1] = 0
    return spec * gains.to(spec.device, spec.real.dtype)[None, :, None]


#: Primary stems for which the aggression exponent is mirrored (audio-separator's NON_ACCOM_STEMS).
NON_ACCOMPANIMENT = ("Vocals", "Other", "Bass", "Drums", "Guitar", "Piano", "Synthesizer", "Strings", "Woodwinds",
                     "Brass", "Wind Inst")


def merge_artifacts(mask: Tensor, threshold: float, min_range: int = 64, fade: int = 32) -> Tensor:
    """UVR's post-process: where every bin's mask stays above `threshold` for more than
    `min_range` frames, pull the mask towards 1 (with `fade`-frame ramps). [2, F, N].

    Frame runs whose ramps would not fit are left as they are, as UVR leaves the mask
    whole when its slicing fails."""
    per_frame = mask.amin(dim=(0, 1)).cpu().numpy()
    idx = np.where(per_frame > threshold)[0]
    if len(idx) == 0:
        return mask
    breaks = np.where(np.diff(idx) != 1)[0]
    starts = np.insert(idx[breaks + 1], 0, idx[0])
    ends = np.append(idx[breaks], idx[-1])
    keep = np.where(ends - starts > min_range)[0]
    n = mask.shape[2]
    weight = np.zeros(n)
    try:
        old_e = None
        for s, e in zip(starts[keep], ends[keep]):
            if old_e is not None and s - old_e < fade:
                s = old_e - fade * 2
            if s != 0:
                weight[s:s + fade] = np.linspace(0, 1, fade)
            else:
                s -= fade
            if e != n:
                weight[e - fade:e] = np.linspace(1, 0, fade)
            else:
                e += fade
            weight[s + fade:e - fade] = 1
            old_e = e
    except ValueError:  # a ramp cut short by the track's edge: UVR keeps the mask unchanged
        return mask
    w = torch.from_numpy(weight).to(mask)[None, None, :]
    return mask + w * (1 - mask)


@dataclass
class VROptions:
    """audio-separator's VR options (its defaults)."""

    window_size: int = 512
    aggression: int = 5
    enable_tta: bool = False
    enable_post_process: bool = False
    post_process_threshold: float = 0.2
    high_end_process: bool = False
    batch_size: int = 1


class VRSeparator(nn.Module):
    """The waveform model the engine runs: a mix [B, 2, T] -> [B, 2, 2, T] (primary, secondary).

    Each item is processed whole, as audio-separator's VR separator processes a track.

    Attributes:
        net: a `CascadedASPPNet` or `CascadedNet`.
        params: the model parameters (bands, bins, filters, channel transforms).
        options: `VROptions`.
        primary_stem: UVR's name of what the mask keeps ("Vocals", "No Echo", ...).
        sources: (primary, secondary) stem names.
    """

    def __init__(self, net: nn.Module, params: ModelParams, options: VROptions, *, primary_stem: str,
                 sources: Sequence[str]) -> None:
        super().__init__()
        self.net = net
        self.params = params
        self.options = options
        self.primary_stem = primary_stem
        self.sources = list(sources)
        self.samplerate = params.sr
        self.audio_channels = 2
        self.v51 = isinstance(net, CascadedNet)

    # ---- analysis

    def _band_spec(self, wave: Tensor, band: Band) -> Tensor:
        """[2, T] at the band's rate -> complex [2, K, N], with the channel transform."""
        p = self.params
        left, right = wave[0], wave[1]
        if not self.v51:
            if p.reverse:
                left, right = left.flip(-1), right.flip(-1)
            elif p.mid_side:
                left, right = (left + right) / 2, left - right
            elif p.mid_side_b2:
                left, right = right + left * 0.5, left - right * 0.5
        spec = stft(torch.stack([left, right]), band.n_fft, band.hl)
        if self.v51:
            l_, r_ = spec[0], spec[1]
            cc = band.convert_channels
            if cc == "mid_side_c":
                spec = torch.stack([l_ + r_ * 0.25, r_ - l_ * 0.25])
            elif cc == "mid_side":
                spec = torch.stack([(l_ + r_) / 2, l_ - r_])
            elif cc == "stereo_n":
                spec = torch.stack([(l_ + r_ * 0.25) / 0.9375, (r_ + l_ * 0.25) / 0.9375])
        return spec

    def analyse(self, wave: Tensor) -> Tuple[Tensor, Optional[Tensor], int]:
        """[2, T] -> the combined spectrogram [2, bins + 1, N], the top band's high end (for
        high_end_process, else None) and its height."""
        p = self.params
        n_bands = len(p.bands)
        waves: Dict[int, Tensor] = {n_bands - 1: wave}
        specs: Dict[int, Tensor] = {}
        for d in range(n_bands - 1, -1, -1):
            band = p.bands[d]
            if d < n_bands - 1:
                waves[d] = resample(waves[d + 1], p.bands[d + 1].sr, band.sr)
            specs[d] = self._band_spec(waves[d], band)
        top = p.bands[-1]
        high_end, high_h = None, 0
        if self.options.high_end_process:
            high_h = (top.n_fft // 2 - top.crop_stop) + (p.pre_filter_stop - p.pre_filter_start)
            high_end = specs[n_bands - 1][:, top.n_fft // 2 - high_h: top.n_fft // 2, :]
        frames = min(s.shape[2] for s in specs.values())
        parts = [specs[d][:, b.crop_start:b.crop_stop, :frames] for d, b in enumerate(p.bands)]
        spec = torch.cat(parts, dim=1)
        spec = F.pad(spec, (0, 0, 0, p.bins + 1 - spec.shape[1]))  # [2, bins + 1, N]
        if p.pre_filter_start > 0:
            if self.v51:
                spec = spec * _lp_mask(spec.shape[1], p.pre_filter_start, p.pre_filter_stop, spec)
            elif n_bands == 1:
                spec = _lp_ramp(spec, p.pre_filter_start, p.pre_filter_stop)
            else:
                gains = torch.ones(spec.shape[1], dtype=torch.float64)
                gp = 1.0
                for b in range(p.pre_filter_start + 1, p.pre_filter_stop):
                    g = math.pow(10, -(b - p.pre_filter_start) * (3.5 - gp) / 20.0)
                    gp = g
                    gains[b] = g
                spec = spec * gains.to(spec.device, spec.real.dtype)[None, :, None]
        return spec, high_end, high_h

    # ---- the network over windows

    def _masks(self, mag: Tensor, pad_l: int, pad_r: int, roi: int) -> Tensor:
        """The network's mask over the padded magnitude, window by window: [2, F, patches roi]."""
        x = F.pad(mag, (pad_l, pad_r))
        peak = x.max()
        x = x / peak if peak > 0 else x
        offset = self.net.offset
        patches = (x.shape[2] - 2 * offset) // roi
        windows = [x[:, :, i * roi:i * roi + self.options.window_size] for i in range(patches)]
        outs = []
        for first in range(0, patches, self.options.batch_size):
            batch = torch.stack(windows[first:first + self.options.batch_size])  # [b, 2, F, window]
            pred = self.net.predict_mask(batch)  # [b, 2, F, roi]
            if pred.shape[3] <= 0:
                raise ValueError("the window is too short for the network")
            outs.append(pred.permute(1, 2, 0, 3).reshape(pred.shape[1], pred.shape[2], -1))
        return torch.cat(outs, dim=2)

    def mask(self, mag: Tensor) -> Tensor:
        """[2, F, N] magnitude -> [2, F, N] mask, after TTA, aggression and post-processing."""
        opts = self.options
        n = mag.shape[2]
        offset = self.net.offset
        roi = opts.window_size - 2 * offset
        if roi == 0:
            roi = opts.window_size
        pad_l = offset
        pad_r = roi - n % roi + pad_l
        mask = self._masks(mag, pad_l, pad_r, roi)
        if opts.enable_tta:
            tta = self._masks(mag, pad_l + roi // 2, pad_r + roi // 2, roi)[:, :, roi // 2:]
            mask = (mask[:, :, :n] + tta[:, :, :n]) * 0.5
        else:
            mask = mask[:, :, :n]
        aggr = float(int(opts.aggression) / 100) * 2
        if aggr != 0:
            if self.primary_stem in NON_ACCOMPANIMENT:
                aggr = 1 - aggr
            per_ch = [aggr, aggr]
            corr = self.params.aggr_correction
            if corr is not None:
                per_ch = [aggr + corr["left"], aggr + corr["right"]]
            split = self.params.bands[0].crop_stop
            rows = []
            for ch in range(2):
                rows.append(torch.cat([mask[ch, :split] ** (1 + per_ch[ch] / 3), mask[ch, split:] ** (1 + per_ch[ch])]))
            mask = torch.stack(rows)
        if opts.enable_post_process:
            mask = merge_artifacts(mask, opts.post_process_threshold)
        return mask

    # ---- synthesis

    def _band_wave(self, spec: Tensor, band: Band) -> Tensor:
        p = self.params
        wl, wr = istft(spec, band.hl)
        if self.v51:
            cc = band.convert_channels
            if cc == "mid_side_c":
                return torch.stack([wl / 1.0625 - wr / 4.25, wr / 1.0625 + wl / 4.25])
            if cc == "mid_side":
                return torch.stack([wl + wr / 2, wl - wr / 2])
            if cc == "stereo_n":
                return torch.stack([wl - wr * 0.25, wr - wl * 0.25])
        else:
            if p.reverse:
                return torch.stack([wl.flip(-1), wr.flip(-1)])
            if p.mid_side:
                return torch.stack([wl + wr / 2, wl - wr / 2])
            if p.mid_side_b2:
                return torch.stack([wr / 1.25 + 0.4 * wl, wl / 1.25 - 0.4 * wr])
        return torch.stack([wl, wr])

    def synthesise(self, spec: Tensor, high_end: Optional[Tensor] = None, high_h: int = 0) -> Tensor:
        """The combined spectrogram [2, bins + 1, N] -> [2, T'] at the top band's rate."""
        p = self.params
        n_bands = len(p.bands)
        n = spec.shape[2]
        offset = 0
        wave: Optional[Tensor] = None
        for d, band in enumerate(p.bands):
            h = band.crop_stop - band.crop_start
            part = spec.new_zeros(2, band.n_fft // 2 + 1, n)
            part[:, band.crop_start:band.crop_stop] = spec[:, offset:offset + h]
            offset += h
            if d == n_bands - 1:
                if high_h and high_end is not None:
                    top = band.n_fft // 2
                    extra = _fit_frames(high_end[:, :high_h], n)
                    part[:, top - high_h:top] = extra
                if band.hpf_start > 0:
                    part = (part * _hp_mask(part.shape[1], band.hpf_start, band.hpf_stop - 1, part) if self.v51
                            else _hp_ramp(part, band.hpf_start, band.hpf_stop - 1))
                out = self._band_wave(part, band)
                wave = out if wave is None else wave + out
            else:
                target = p.bands[d + 1].sr
                if d == 0:
                    part = (part * _lp_mask(part.shape[1], band.lpf_start, band.lpf_stop, part) if self.v51
                            else _lp_ramp(part, band.lpf_start, band.lpf_stop))
                    wave = resample(self._band_wave(part, band), band.sr, target)
                else:
                    if self.v51:
                        part = part * _hp_mask(part.shape[1], band.hpf_start, band.hpf_stop - 1, part)
                        part = part * _lp_mask(part.shape[1], band.lpf_start, band.lpf_stop, part)
                    else:
                        part = _lp_ramp(_hp_ramp(part, band.hpf_start, band.hpf_stop - 1), band.lpf_start,
                                        band.lpf_stop)
                    wave = resample(wave + self._band_wave(part, band), band.sr, target)
        assert wave is not None
        return wave

    def mirror_high_end(self, spec: Tensor, high_end: Tensor) -> Tensor:
        """UVR's 'mirroring': the bins just below the pre-filter, flipped, with the input's high-end
        phase, wherever they are quieter than the input's high end."""
        pfs = self.params.pre_filter_start
        h = high_end.shape[1]
        high_end = _fit_frames(high_end, spec.shape[2])
        mirror = spec[:, pfs - 10 - h:pfs - 10, :].abs().flip(1)
        mirror = mirror * torch.exp(1j * high_end.angle())
        return torch.where(high_end.abs() <= mirror.abs(), high_end, mirror)

    @torch.no_grad()
    def separate(self, wave: Tensor) -> Tuple[Tensor, Tensor]:
        """[2, T] -> (primary, secondary), each [2, T'] at the model's rate (T' from the STFTs)."""
        spec, high_end, high_h = self.analyse(wave)
        mag = spec.abs()
        rot = torch.exp(1j * spec.angle())
        del spec  # whole-track tensors are dropped as soon as they are used: the peak grows with the track
        mask = self.mask(mag)
        outs = []
        for primary in (True, False):  # the primary stem, then its complement, one at a time
            gain = mask if primary else 1 - mask
            stem = torch.nan_to_num(gain * mag * rot, nan=0.0, posinf=0.0, neginf=0.0)
            if high_end is not None and high_h:
                outs.append(self.synthesise(stem, self.mirror_high_end(stem, high_end), high_h))
            else:
                outs.append(self.synthesise(stem))
            del stem, gain
        return outs[0], outs[1]

    @torch.no_grad()
    def forward(self, mix: Tensor) -> Tensor:
        outs = []
        t = mix.shape[-1]
        for item in mix.float():  # [C, T]
            if item.shape[0] == 1:
                item = item.expand(2, -1)
            stems = []
            for stem in self.separate(item):
                stems.append(F.pad(stem, (0, max(0, t - stem.shape[-1])))[:, :t])
            outs.append(torch.stack(stems))  # [2, C, T]
        return torch.stack(outs).to(mix.dtype)  # [B, 2, C, T]


def _fit_frames(x: Tensor, n: int) -> Tensor:
    """[.., N'] cut or zero-filled to N frames (the top band can have one frame more or less
    than the combined spectrogram; UVR would fail on such a track)."""
    if x.shape[-1] >= n:
        return x[..., :n]
    return F.pad(x, (0, n - x.shape[-1]))
