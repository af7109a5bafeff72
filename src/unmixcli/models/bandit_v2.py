"""BandIt v2 (Watcharasupat & Lerch): dialogue / music / effects separation of soundtracks.

The network as Music-Source-Separation-Training (MSST) runs it (model type
"bandit_v2"), for inference:

    mix [B, C, T] -> every channel on its own: [B*C, 1, T]
      -> STFT (torchaudio-style `Spectrogram`, complex, window-energy normalised) [B*C, 1, F, N]
      -> band split: each of K overlapping "musical" bands (bins [start, end)) is
         flattened, layer-normalised and projected to D features       [B*C, K, N, D]
      -> 2 * n_sqm_modules residual RNN layers, alternately across time and across bands
      -> per stem, per band: norm + MLP + GLU -> a complex mask over the band's bins,
         weighted by how many bands share each bin and summed into [B*C, 1, F, N]
      -> masked mixture spectrogram -> iSTFT                             [B*C, 1, T]
    -> stems [B, S, C, T]

Parameter and buffer names are MSST's (`stft.window`, `band_split.norm_fc_modules.*`,
`tf_model.seqband.*`, `mask_estim.<stem>.norm_mlp.*`, `mask_estim.<stem>.freq_weights/<i>`),
so a published state dict loads strictly. The mask MLP's layers are reachable both as
`norm` / `hidden` / `output` and through `combined` (one Sequential of the same
modules), exactly as in MSST, so each of their tensors appears under two keys.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

# Names a config may give; each maps to a torch callable we chose (nothing named in a
# file is looked up dynamically).
WINDOWS = {
    "hann_window": torch.hann_window,
    "hamming_window": torch.hamming_window,
    "blackman_window": torch.blackman_window,
    "bartlett_window": torch.bartlett_window,
    "kaiser_window": torch.kaiser_window,
}
RNNS = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}
ACTIVATIONS = {
    "Tanh": nn.Tanh, "ReLU": nn.ReLU, "GELU": nn.GELU, "ELU": nn.ELU, "SiLU": nn.SiLU,
    "LeakyReLU": nn.LeakyReLU, "Sigmoid": nn.Sigmoid, "Softplus": nn.Softplus, "Mish": nn.Mish,
    "Hardtanh": nn.Hardtanh, "CELU": nn.CELU, "SELU": nn.SELU,
}
PAD_MODES = ("constant", "reflect", "replicate", "circular")


# --------------------------------------------------------------------------- bands


def _hz_to_midi(hz):
    return 12 * (np.log2(np.asanyarray(hz)) - np.log2(440.0)) + 69


def _midi_to_hz(midi):
    return 440.0 * (2.0 ** ((np.asanyarray(midi) - 69.0) / 12.0))


def musical_filterbank(n_bands: int, fs: float, n_freqs: int) -> np.ndarray:
    """Rectangular bands equally spaced in pitch, each a fixed number of octaves wide.

    Band centres run evenly in MIDI pitch from the first bin's frequency (fs / nfft)
    to Nyquist; each band spans centre / m .. centre * m with m = 2 ** (octaves / n_bands),
    widened outward to whole bins. The first band also takes every bin below it and the
    last every bin above it, so that no bin is left out. Float64 throughout, operation for
    operation as MSST (librosa's pitch conversions), so the integer edges are the same.

    Returns:
        `[n_bands, n_freqs]` of 0.0 / 1.0 (float64).
    """
    nfft = 2 * (n_freqs - 1)
    df = fs / nfft
    f_max = fs / 2
    f_min = fs / nfft
    mult = np.power(2.0, np.log2(f_max / f_min) / n_bands)
    centres = _midi_to_hz(np.linspace(max(0, _hz_to_midi(f_min)), _hz_to_midi(f_max), n_bands))
    low = np.floor(centres / mult / df).astype(int)
    high = np.ceil(centres * mult / df).astype(int)
    bank = np.zeros((n_bands, n_freqs))
    for i in range(n_bands):
        bank[i, low[i]:high[i] + 1] = 1.0
    bank[0, :low[0]] = 1.0
    bank[-1, high[-1] + 1:] = 1.0
    return bank


def musical_bands(n_fft: int, fs: float, n_bands: int) -> Tuple[List[Tuple[int, int]], List[Tensor]]:
    """The bands of a musical filterbank as bin ranges, and each band's per-bin weights.

    Returns:
        (band_specs: [(start, end)] with `end` exclusive, from each band's first to last
        active bin; freq_weights: per band a float64 tensor `[end - start]`, the band's
        share of each bin (1 / number of bands covering it), which makes overlapping
        masks average instead of add up). Bands without any bin are dropped.
    """
    n_freqs = n_fft // 2 + 1
    bank = musical_filterbank(n_bands, float(fs), n_freqs)
    shares = bank / bank.sum(axis=0, keepdims=True)  # [n_bands, F]
    specs: List[Tuple[int, int]] = []
    weights: List[Tensor] = []
    for row, share in zip(bank, shares):
        active = np.flatnonzero(row)
        if active.size == 0:
            continue
        start, end = int(active[0]), int(active[-1]) + 1
        specs.append((start, end))
        weights.append(torch.from_numpy(share[start:end].copy()))
    return specs, weights


def check_bands(specs: Sequence[Tuple[int, int]], *, no_gap: bool = True, no_overlap: bool = False) -> None:
    """MSST's sanity checks of a band layout (ValueError when one fails)."""
    if any(end - start <= 0 for start, end in specs):
        raise ValueError("bands cannot be zero-width")
    if no_gap:
        if specs[0][0] != 0:
            raise ValueError("the first band must start at bin 0")
        prev_end = -1
        for start, end in specs:
            if start - prev_end > 1:
                raise ValueError("bands cannot leave a gap")
            prev_end = end
    if no_overlap:
        # MSST's check never advances its previous end, so it only refuses a band that
        # starts below bin 0; kept as is.
        if any(start <= -1 for start, _ in specs):
            raise ValueError("bands cannot overlap")


# --------------------------------------------------------------------------- spectrograms


def _norm_flags(normalized: Union[bool, str]) -> Tuple[bool, bool]:
    """(torch.stft's own 1/sqrt(frame) scaling, division by the window's L2 norm), as
    torchaudio reads `normalized`: True or "window" -> the latter; "frame_length" -> the former."""
    if isinstance(normalized, str):
        if normalized not in ("frame_length", "window"):
            raise ValueError(f"normalized must be a bool, 'window' or 'frame_length', not {normalized!r}")
        return normalized == "frame_length", normalized == "window"
    return False, bool(normalized)


class Spectrogram(nn.Module):
    """Complex STFT with torchaudio's `Spectrogram(power=None, pad=0)` numbers and buffer (`window`)."""

    def __init__(self, n_fft: int, win_length: int, hop_length: int, window: Tensor, *,
                 normalized: Union[bool, str], center: bool, pad_mode: str, onesided: bool):
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.center, self.pad_mode, self.onesided = center, pad_mode, onesided
        self.frame_norm, self.window_norm = _norm_flags(normalized)
        self.register_buffer("window", window)

    def forward(self, x: Tensor) -> Tensor:
        lead, length = x.shape[:-1], x.shape[-1]
        spec = torch.stft(x.reshape(-1, length), n_fft=self.n_fft, hop_length=self.hop_length,
                          win_length=self.win_length, window=self.window, center=self.center,
                          pad_mode=self.pad_mode, normalized=self.frame_norm, onesided=self.onesided,
                          return_complex=True)  # [*, T] -> [*', F, N]
        spec = spec.reshape(lead + spec.shape[-2:])  # [*, F, N]
        if self.window_norm:
            spec = spec / self.window.pow(2.0).sum().sqrt()
        return spec


class InverseSpectrogram(nn.Module):
    """torchaudio's `InverseSpectrogram(pad=0)`: undoes `Spectrogram`'s scaling, then iSTFT."""

    def __init__(self, n_fft: int, win_length: int, hop_length: int, window: Tensor, *,
                 normalized: Union[bool, str], center: bool, onesided: bool):
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.center, self.onesided = center, onesided
        self.frame_norm, self.window_norm = _norm_flags(normalized)
        self.register_buffer("window", window)

    def forward(self, spec: Tensor, length: Optional[int] = None) -> Tensor:
        if self.window_norm:
            spec = spec * self.window.pow(2.0).sum().sqrt()
        lead = spec.shape[:-2]
        wave = torch.istft(spec.reshape((-1,) + spec.shape[-2:]), n_fft=self.n_fft, hop_length=self.hop_length,
                           win_length=self.win_length, window=self.window, center=self.center,
                           normalized=self.frame_norm, onesided=self.onesided, length=length,
                           return_complex=False)  # [*, F, N] -> [*', T]
        return wave.reshape(lead + wave.shape[-1:])  # [*, T]


# --------------------------------------------------------------------------- band split


class _NormFC(nn.Module):
    """One band's bins (all channels, real and imaginary) -> layer norm -> D features."""

    def __init__(self, emb_dim: int, bandwidth: int, in_channels: int):
        super().__init__()
        features = in_channels * bandwidth * 2
        self.combined = nn.Sequential(nn.LayerNorm(features), nn.Linear(features, emb_dim))

    def forward(self, xb: Tensor) -> Tensor:
        return self.combined(xb)


class BandSplit(nn.Module):
    def __init__(self, band_specs: Sequence[Tuple[int, int]], emb_dim: int, in_channels: int):
        super().__init__()
        self.band_specs = [tuple(b) for b in band_specs]
        self.norm_fc_modules = nn.ModuleList(
            _NormFC(emb_dim, end - start, in_channels) for start, end in self.band_specs)

    def forward(self, x: Tensor) -> Tensor:
        """Complex spectrogram `[B, C, F, N]` -> band features `[B, K, N, D]`."""
        batch, _, _, frames = x.shape
        x = x.permute(0, 3, 1, 2)  # [B, N, C, F]
        bands = []
        for (start, end), fc in zip(self.band_specs, self.norm_fc_modules):
            xb = torch.view_as_real(x[..., start:end])  # [B, N, C, w, 2]
            bands.append(fc(xb.reshape(batch, frames, -1)))  # [B, N, C*w*2] -> [B, N, D]
        return torch.stack(bands, dim=1)  # [B, K, N, D]


# --------------------------------------------------------------------------- sequence modelling


class _ResidualRNN(nn.Module):
    """z + fc(rnn(norm(z))), the RNN running along axis 2 of `[B, U, A, D]`."""

    def __init__(self, emb_dim: int, rnn_dim: int, bidirectional: bool, rnn_type: str):
        super().__init__()
        self.norm = nn.LayerNorm(emb_dim)
        self.rnn = RNNS[rnn_type](input_size=emb_dim, hidden_size=rnn_dim, num_layers=1, batch_first=True,
                                  bidirectional=bidirectional)
        self.fc = nn.Linear(rnn_dim * (2 if bidirectional else 1), emb_dim)

    def forward(self, z: Tensor) -> Tensor:
        batch, outer, along, dim = z.shape
        y = self.norm(z).reshape(batch * outer, along, dim)  # [B*U, A, D]
        y = self.rnn(y)[0].reshape(batch, outer, along, -1)  # [B, U, A, H]
        return self.fc(y) + z


class _SwapAxes(nn.Module):
    """Bands <-> frames (axes 1 and 2); holds no weights but takes its place in `seqband`."""

    def forward(self, z: Tensor) -> Tensor:
        return z.transpose(1, 2)


class SeqBandModelling(nn.Module):
    """2 * n_modules residual RNNs, alternately over time (within a band) and over bands
    (within a frame); `seqband` interleaves them with the axis swaps, as MSST's indices do
    (RNNs at even positions)."""

    def __init__(self, n_modules: int, emb_dim: int, rnn_dim: int, bidirectional: bool, rnn_type: str):
        super().__init__()
        layers: List[nn.Module] = []
        for _ in range(2 * n_modules):
            layers += [_ResidualRNN(emb_dim, rnn_dim, bidirectional, rnn_type), _SwapAxes()]
        self.seqband = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.seqband(z)  # [B, K, N, D] (an even number of swaps)


# --------------------------------------------------------------------------- masks


class _NormMLP(nn.Module):
    """One band's features -> its mask: norm, Linear + activation, Linear + GLU."""

    def __init__(self, emb_dim: int, mlp_dim: int, bandwidth: int, in_channels: int, activation: nn.Module,
                 complex_mask: bool):
        super().__init__()
        self.bandwidth, self.in_channels, self.complex_mask = bandwidth, in_channels, complex_mask
        reim = 2 if complex_mask else 1
        self.norm = nn.LayerNorm(emb_dim)
        self.hidden = nn.Sequential(nn.Linear(emb_dim, mlp_dim), activation)
        # The GLU halves the last axis, hence twice the mask's values.
        self.output = nn.Sequential(nn.Linear(mlp_dim, bandwidth * in_channels * reim * 2), nn.GLU(dim=-1))
        self.combined = nn.Sequential(self.norm, self.hidden, self.output)  # the same modules, MSST's keys

    def forward(self, qb: Tensor) -> Tensor:
        """`[B, N, D]` -> mask `[B, C, w, N]` (complex when `complex_mask`)."""
        batch, frames, _ = qb.shape
        mb = self.combined(qb)  # [B, N, C*w*reim]
        if self.complex_mask:
            mb = torch.view_as_complex(mb.reshape(batch, frames, self.in_channels, self.bandwidth, 2))
        else:
            mb = mb.reshape(batch, frames, self.in_channels, self.bandwidth)
        return mb.permute(0, 2, 3, 1)  # [B, N, C, w] -> [B, C, w, N]


class MaskEstimation(nn.Module):
    """One stem's masks: per band, summed into the full spectrum where bands overlap."""

    def __init__(self, band_specs: Sequence[Tuple[int, int]], freq_weights: Optional[Sequence[Tensor]],
                 n_freq: int, emb_dim: int, mlp_dim: int, in_channels: int, activation: Any,
                 complex_mask: bool):
        super().__init__()
        self.band_specs = [tuple(b) for b in band_specs]
        self.n_freq, self.in_channels = n_freq, in_channels
        self.norm_mlp = nn.ModuleList(
            _NormMLP(emb_dim, mlp_dim, end - start, in_channels, activation(), complex_mask)
            for start, end in self.band_specs)
        self.use_freq_weights = freq_weights is not None
        for i, weights in enumerate(freq_weights or ()):
            self.register_buffer(f"freq_weights/{i}", weights.clone())

    def forward(self, q: Tensor) -> Tensor:
        """Band features `[B, K, N, D]` -> complex mask `[B, C, F, N]`."""
        batch, _, frames, _ = q.shape
        masks = torch.zeros((batch, self.in_channels, self.n_freq, frames), device=q.device, dtype=torch.complex64)
        for i, ((start, end), mlp) in enumerate(zip(self.band_specs, self.norm_mlp)):
            mask = mlp(q[:, i])  # [B, C, w, N]
            if self.use_freq_weights:
                # The weights stay in their own dtype (float64 as built): MSST multiplies so,
                # then rounds into the complex64 sum.
                mask = mask * self.get_buffer(f"freq_weights/{i}")[:, None]
            masks[:, :, start:end, :] += mask
        return masks


# --------------------------------------------------------------------------- the model


class BanditV2(nn.Module):
    """BandIt v2 for inference. Arguments are MSST's `kwargs` section (see `families.bandit_v2`).

    Attributes:
        sources: output stem names (default: `stems`).
        audio_channels: channels of the input it is run on (each is separated on its own).
    """

    def __init__(self, *, stems: Sequence[str], in_channels: int = 1, n_bands: int = 64, fs: float = 44100,
                 require_no_overlap: bool = False, require_no_gap: bool = True, n_sqm_modules: int = 12,
                 emb_dim: int = 128, rnn_dim: int = 256, bidirectional: bool = True, rnn_type: str = "LSTM",
                 mlp_dim: int = 512, hidden_activation: str = "Tanh",
                 hidden_activation_kwargs: Optional[Mapping[str, Any]] = None, complex_mask: bool = True,
                 use_freq_weights: bool = True, n_fft: int = 2048, win_length: Optional[int] = 2048,
                 hop_length: Optional[int] = 512, window_fn: str = "hann_window",
                 wkwargs: Optional[Mapping[str, Any]] = None, center: bool = True,
                 normalized: Union[bool, str] = True, pad_mode: str = "constant", onesided: bool = True,
                 sources: Optional[Sequence[str]] = None, audio_channels: int = 2):
        super().__init__()
        if in_channels != 1:
            raise ValueError(f"in_channels={in_channels}: the network sees one channel at a time (MSST feeds "
                             "each channel of the mix separately), so only 1 can run")
        if not onesided:
            raise ValueError("onesided=false: the masks cover the n_fft // 2 + 1 bins of a onesided STFT")
        self.stems = [str(s) for s in stems]
        self.sources = list(sources) if sources is not None else list(self.stems)
        if len(self.sources) != len(self.stems):
            raise ValueError(f"{len(self.stems)} stems but {len(self.sources)} source names")
        self.audio_channels = int(audio_channels)
        self.in_channels = in_channels

        win_length = win_length if win_length is not None else n_fft
        hop_length = hop_length if hop_length is not None else win_length // 2
        window = WINDOWS[window_fn](win_length, **dict(wkwargs or {}))
        spectral = dict(normalized=normalized, center=center, onesided=onesided)
        self.stft = Spectrogram(n_fft, win_length, hop_length, window, pad_mode=pad_mode, **spectral)
        self.istft = InverseSpectrogram(n_fft, win_length, hop_length, window.clone(), **spectral)

        band_specs, freq_weights = musical_bands(n_fft, fs, n_bands)
        check_bands(band_specs, no_gap=require_no_gap, no_overlap=require_no_overlap)
        self.band_specs = band_specs
        self.band_split = BandSplit(band_specs, emb_dim, in_channels)
        self.tf_model = SeqBandModelling(n_sqm_modules, emb_dim, rnn_dim, bidirectional, rnn_type)

        act_cls, act_kwargs = ACTIVATIONS[hidden_activation], dict(hidden_activation_kwargs or {})
        self.mask_estim = nn.ModuleDict({
            stem: MaskEstimation(band_specs, freq_weights if use_freq_weights else None, n_fft // 2 + 1, emb_dim,
                                 mlp_dim, in_channels, lambda: act_cls(**act_kwargs), complex_mask)
            for stem in self.stems
        })

    def forward(self, mix: Tensor) -> Tensor:
        """Separate `mix` `[B, C, T]` into stems `[B, S, C, T]` (S = len(sources))."""
        if mix.dim() == 2:
            mix = mix[:, None]
        batch, channels, length = mix.shape
        mono = mix.reshape(batch * channels, 1, length)  # [B*C, 1, T]
        spec = self.stft(mono)  # [B*C, 1, F, N]
        q = self.tf_model(self.band_split(spec))  # [B*C, K, N, D]
        outs = []
        for estimator in self.mask_estim.values():
            masked = spec * estimator(q).to(spec.dtype)  # [B*C, 1, F, N]
            outs.append(self.istft(masked, length).reshape(batch, channels, length))  # [B, C, T]
        return torch.stack(outs, dim=1)  # [B, S, C, T]
