"""Open-Unmix (UMX): one BLSTM spectrogram network per target, and the separator around them.

`OpenUnmix` registers its parameters and buffers under the names, shapes and
order of the published networks (`fc1`, `bn1`, `lstm`, `fc2`, `bn2`, `fc3`,
`bn3`, `input_mean`, `input_scale`, `output_scale`, `output_mean`), so the
`<target>-<hash>.pth` state dicts load key for key.

`UmxSeparator` is the waveform model: STFT (periodic Hann window, centred,
reflection padding), magnitude, one network per target, the multichannel Wiener
post-filter (initial estimates from the mix phase or a soft mask, an optional
residual, then `niter` EM steps on independent windows of `wiener_win_len`
frames) and the inverse STFT. The maths is the reference's; the Wiener filter
is ours: planar real/imaginary planes with frames last, the closed-form inverse
of the Hermitian 1x1 / 2x2 mix covariance shared by all sources, products
accumulated in place, one window at a time for every batch item, instead of
loops over frame batches, channel index triples and interleaved pairs. Two
channels are filtered in float64 (see `expectation_maximization`).

Shapes: B batch, S sources (targets, then the residual), C audio channels,
Cm the networks' channels (1 or C), T samples, F frequency bins, N STFT
frames, L frames per Wiener window, H hidden size; a 2 after C is the
real/imaginary axis of a planar complex tensor.
"""

from __future__ import annotations

from typing import List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Energy of the white noise taken out by the Wiener filter (the reference's `eps`).
WIENER_EPS = 1e-10
#: Estimates are scaled so that the mix's largest STFT magnitude is at most this (reference's `scale_factor`).
WIENER_SCALE = 10.0
# sqrt(eps) as the reference computes it (in float32): the mix covariance's diagonal loading.
_REGULARIZATION = float(torch.sqrt(torch.as_tensor(WIENER_EPS)))


def bandwidth_to_max_bin(rate: float, n_fft: int, bandwidth: float) -> int:
    """Bins of an `n_fft`-point STFT at `rate` whose centre frequency is at most `bandwidth` Hz."""
    freqs = torch.linspace(0, rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    return int((freqs <= bandwidth).nonzero().max()) + 1


class OpenUnmix(nn.Module):
    """The spectrogram network of one target: magnitude mix in, magnitude estimate out.

    Args:
        nb_bins: STFT bins (n_fft // 2 + 1).
        nb_channels: spectrogram channels it was trained on (1 or 2).
        hidden_size: H, the width of the bottleneck and of the BLSTM output.
        nb_layers: LSTM layers.
        unidirectional: a causal LSTM (H per direction) instead of a BLSTM (H / 2 each way).
        max_bin: only the first `max_bin` bins go in (the model's bandwidth); all come out.
    """

    def __init__(self, nb_bins: int = 2049, nb_channels: int = 2, hidden_size: int = 512, nb_layers: int = 3,
                 unidirectional: bool = False, max_bin: Optional[int] = None):
        super().__init__()
        self.nb_output_bins = nb_bins
        self.nb_bins = max_bin if max_bin else nb_bins
        self.nb_channels = nb_channels
        self.hidden_size = hidden_size
        # Registration order matters to nothing but readability here (the state dict is by
        # name), but it is the reference's, so `state_dict().keys()` lists the same way.
        self.fc1 = nn.Linear(self.nb_bins * nb_channels, hidden_size, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden_size)
        lstm_hidden = hidden_size if unidirectional else hidden_size // 2
        self.lstm = nn.LSTM(input_size=hidden_size, hidden_size=lstm_hidden, num_layers=nb_layers,
                            bidirectional=not unidirectional, batch_first=False,
                            dropout=0.4 if nb_layers > 1 else 0.0)
        self.fc2 = nn.Linear(hidden_size * 2, hidden_size, bias=False)
        self.bn2 = nn.BatchNorm1d(hidden_size)
        self.fc3 = nn.Linear(hidden_size, self.nb_output_bins * nb_channels, bias=False)
        self.bn3 = nn.BatchNorm1d(self.nb_output_bins * nb_channels)
        # Trained statistics: the input is shifted by `input_mean` (the negated data mean) and
        # multiplied by `input_scale` (1 / data std); parameters, as in the published files.
        self.input_mean = nn.Parameter(torch.zeros(self.nb_bins))
        self.input_scale = nn.Parameter(torch.ones(self.nb_bins))
        self.output_scale = nn.Parameter(torch.ones(self.nb_output_bins))
        self.output_mean = nn.Parameter(torch.ones(self.nb_output_bins))

    def forward(self, mag: Tensor) -> Tensor:
        """[B, Cm, F, N] mix magnitude -> [B, Cm, F, N] target magnitude (a mask times the mix)."""
        batch, channels, bins, frames = mag.shape
        # The LSTM runs over frames: [B, Cm, F, N] -> [N, B, Cm, F'] with F' = the input bandwidth.
        x = mag[:, :, : self.nb_bins].permute(3, 0, 1, 2)
        x = (x + self.input_mean) * self.input_scale
        x = self.fc1(x.reshape(frames * batch, channels * self.nb_bins))  # [N*B, H]
        x = torch.tanh(self.bn1(x).reshape(frames, batch, self.hidden_size))  # [N, B, H]
        x = torch.cat([x, self.lstm(x)[0]], -1)  # skip connection: [N, B, 2H]
        x = F.relu(self.bn2(self.fc2(x.reshape(frames * batch, 2 * self.hidden_size))))  # [N*B, H]
        x = self.bn3(self.fc3(x))  # [N*B, Cm*F]
        x = x.reshape(frames, batch, channels, self.nb_output_bins)  # [N, B, Cm, F]
        # In place from here: at full length each of these tensors is tens of MB.
        x = x.mul_(self.output_scale).add_(self.output_mean).relu_()
        return x.permute(1, 2, 3, 0) * mag  # [B, Cm, F, N]


class UmxSeparator(nn.Module):
    """Waveform separator: mix [B, C, T] -> stems [B, S, C, T].

    Args:
        target_models: target name -> its `OpenUnmix` network (all on one STFT).
        samplerate: the rate the networks were trained at.
        n_fft, n_hop: the STFT.
        audio_channels: C, the mix channels (1 or 2). A mono network (Cm = 1) on a
            stereo mix sees the mean of the channels' magnitudes, and the Wiener
            filter separates both channels, as the reference does.
        niter: EM iterations of the Wiener post-filter (0: the initial estimates).
        softmask: initial estimates from ratio masks instead of magnitudes with the mix phase.
        residual: add a "residual" source, the mix minus the targets, before EM.
        wiener_win_len: frames per independent Wiener window (None: the whole input).
        segment: seconds per forward the engine should use (None: the caller decides).
    """

    def __init__(self, target_models: Mapping[str, OpenUnmix], *, samplerate: int, n_fft: int = 4096,
                 n_hop: int = 1024, audio_channels: int = 2, niter: int = 1, softmask: bool = False,
                 residual: bool = False, wiener_win_len: Optional[int] = 300, segment: Optional[float] = None):
        super().__init__()
        if not target_models:
            raise ValueError("a separator needs at least one target network")
        if audio_channels not in (1, 2):
            raise ValueError(f"audio_channels must be 1 or 2, got {audio_channels}")
        for name, net in target_models.items():
            if net.nb_channels not in (1, audio_channels):
                raise ValueError(f"target {name!r} takes {net.nb_channels} channels, the mix has {audio_channels}")
            if net.nb_output_bins != n_fft // 2 + 1:
                raise ValueError(f"target {name!r} has {net.nb_output_bins} bins, an {n_fft}-point STFT gives "
                                 f"{n_fft // 2 + 1}")
        if len(target_models) + int(residual) < 2 and niter > 0:
            raise ValueError("EM needs two sources at least: add the residual, or use niter=0")
        if wiener_win_len is not None and wiener_win_len <= 0:
            raise ValueError(f"wiener_win_len must be positive or None, got {wiener_win_len}")
        self.target_models = nn.ModuleDict(dict(target_models))  # the reference Separator's name
        self.targets: List[str] = list(target_models)
        self.sources: List[str] = self.targets + (["residual"] if residual else [])
        self.samplerate = int(samplerate)
        self.audio_channels = int(audio_channels)
        self.segment = segment
        self.n_fft = int(n_fft)
        self.n_hop = int(n_hop)
        self.niter = int(niter)
        self.softmask = bool(softmask)
        self.residual = bool(residual)
        self.wiener_win_len = wiener_win_len
        # Not part of the published state dicts: a fixed function of n_fft.
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    # ------------------------------------------------------------------ transforms

    def stft(self, audio: Tensor) -> Tensor:
        """[B, C, T] -> complex [B, C, F, N] (centred frames, reflection at the ends)."""
        batch, channels, length = audio.shape
        spec = torch.stft(audio.reshape(batch * channels, length), n_fft=self.n_fft, hop_length=self.n_hop,
                          window=self.window, center=True, normalized=False, onesided=True,
                          pad_mode="reflect", return_complex=True)  # [B*C, F, N]
        return spec.reshape(batch, channels, spec.shape[-2], spec.shape[-1])

    def istft(self, spec: Tensor, length: int) -> Tensor:
        """complex [..., F, N] -> [..., length]."""
        lead = spec.shape[:-2]
        wav = torch.istft(spec.reshape(-1, spec.shape[-2], spec.shape[-1]), n_fft=self.n_fft,
                          hop_length=self.n_hop, window=self.window, center=True, normalized=False,
                          onesided=True, length=length)  # [prod(lead), length]
        return wav.reshape(*lead, length)

    # ------------------------------------------------------------------ forward

    def forward(self, mix: Tensor) -> Tensor:
        """[B, C, T] float -> [B, S, C, T] float32."""
        length = mix.shape[-1]
        # Reflection padding needs more than n_fft // 2 samples; a shorter input (the last
        # sliver of a long track) gets zeros after it, cropped again below.
        short = self.n_fft // 2 + 1 - length
        audio = F.pad(mix.float(), (0, short)) if short > 0 else mix.float()
        # The spectral parts stay in float32 even under autocast: the Wiener filter divides
        # by small determinants. The networks follow the caller's precision.
        with torch.autocast(audio.device.type, enabled=False):
            spec = self.stft(audio)  # complex [B, C, F, N]
            mag = spec.abs()  # [B, C, F, N]
            # Planar from here (real and imaginary planes, frames last): see `wiener`.
            mix_stft = torch.view_as_real(spec).permute(0, 1, 4, 2, 3).contiguous()  # [B, C, 2, F, N]
            del spec
            # What a mono network sees of a stereo mix: the channels' mean magnitude.
            wants_mono = any(net.nb_channels == 1 for net in self.target_models.values())
            mono = mag.mean(1, keepdim=True) if wants_mono and self.audio_channels > 1 else mag  # [B, 1, F, N]
        estimates = []
        for name in self.targets:
            net = self.target_models[name]
            estimates.append(net(mono if net.nb_channels == 1 else mag).float())  # [B, Cm, F, N]
        del mono
        with torch.autocast(audio.device.type, enabled=False):
            stems = self.wiener(estimates, mix_stft, mag)  # [B, S, C, 2, F, N]; uses up its inputs
            del mix_stft, mag
            # One source at a time: torch.istft's frames take n_fft real values per bin pair,
            # twice the spectrum's memory, for every signal it is given at once.
            out = audio.new_empty((stems.shape[0], stems.shape[1], stems.shape[2], audio.shape[-1]))
            for j in range(stems.shape[1]):
                source = torch.complex(stems[:, j, :, 0], stems[:, j, :, 1])  # [B, C, F, N]
                out[:, j] = self.istft(source, audio.shape[-1])  # [B, C, T']
                del source
        return out[..., :length] if short > 0 else out

    # ------------------------------------------------------------------ Wiener post-filter

    def wiener(self, estimates: List[Tensor], mix: Tensor, mag: Tensor) -> Tensor:
        """Target magnitudes [B, Cm, F, N] each, the mix STFT [B, C, 2, F, N] (planar) and its
        magnitude [B, C, F, N] -> the sources' STFTs [B, S, C, 2, F, N] (planar).

        Planar tensors keep real and imaginary parts as separate planes, frames last: the
        EM reads and writes windows of them without gathering interleaved values. To keep
        one forward's memory down, every input is used up: `estimates` is emptied and all
        of them are overwritten in place.
        """
        batch, channels, _, bins, frames = mix.shape
        out = mix.new_empty((batch, len(self.sources), channels, 2, bins, frames))
        if self.softmask:
            # y_j = mix * est_j / sum_k est_k
            total = torch.stack(estimates).sum(0).add_(WIENER_EPS)  # [B, Cm, F, N]
        else:
            # y_j = est_j * mix / |mix|: the magnitude with the mix phase. The reference takes
            # the phase with its own atan2, which first sets the real part of exactly-zero bins
            # to 1 in the mix it goes on using (residual and EM); that changes the residual's
            # statistics over the whole Wiener window, so it is kept.
            silent = mag == 0
            if bool(silent.any()):
                mix[:, :, 0].masked_fill_(silent, 1)
                mag.masked_fill_(silent, 1)
            del silent
            total = mag
        for j in range(len(estimates)):
            est = estimates[j]
            estimates[j] = None
            # In place unless a mono network's estimate broadcasts over a stereo mix.
            gain = est.div_(total) if est.shape == total.shape else est / total  # [B, Cm or C, F, N]
            del est
            torch.mul(mix, gain[:, :, None], out=out[:, j])
            del gain
        del total
        if self.residual:
            torch.sub(mix, out[:, :-1].sum(1), out=out[:, -1])
        if self.niter > 0:
            win = self.wiener_win_len or frames
            for start in range(0, frames, win):
                frame = slice(start, min(frames, start + win))
                out[..., frame] = expectation_maximization(out[..., frame], mix[..., frame], self.niter)
        return out


def expectation_maximization(y: Tensor, x: Tensor, iterations: int) -> Tensor:
    """Refine source estimates by `iterations` EM steps of the local Gaussian model, on one window.

    Per source j: the power spectral density v_j (mean over channels of |y_j|^2), the
    spatial covariance R_j = sum_t y_j y_j^H / sum_t v_j (per bin, over the window),
    the mix covariance Cxx = sqrt(eps) I + sum_j v_j R_j, and then y_j = v_j R_j Cxx^-1 x.
    The window is first scaled so that its largest mix magnitude is at most WIENER_SCALE.

    Two channels run in float64: with nearly coherent channels (a mono recording in a
    stereo file) Cxx is close to singular next to sqrt(eps), and float32 gives errors of
    tens of percent, or NaN for identical channels (as the reference does, in float32).

    Args:
        y: [B, S, C, 2, F, L] planar initial estimates (real, imaginary).
        x: [B, C, 2, F, L] planar mix STFT.
    Returns:
        [B, S, C, 2, F, L] float32.
    """
    # Never scaled up; the scale is per batch item.
    peak = (x[:, :, 0].square() + x[:, :, 1].square()).amax(dim=(1, 2, 3)).sqrt()  # [B]
    scale = torch.clamp(peak / WIENER_SCALE, min=1.0)
    if x.shape[1] == 1:
        s = scale[:, None, None, None, None]
        y, x = y / s[:, None], x / s
        for _ in range(iterations):
            y = _em_step_mono(y, x)
        return y * s[:, None]
    s = scale.double()[:, None, None, None, None]
    ys = y.to(torch.float64).div_(s[:, None])  # a contiguous copy: y is a window of a longer tensor
    xs = x.to(torch.float64).div_(s)
    for _ in range(iterations):
        _em_step_stereo(ys, xs)
    return ys.mul_(s[:, None]).to(torch.float32)


def _em_step_mono(y: Tensor, x: Tensor) -> Tensor:
    """One EM step, one channel: y_j = v_j r_j x / (sqrt(eps) + sum_k v_k r_k). y [B, S, 1, 2, F, L], x [B, 1, 2, F, L].

    Well conditioned (a sum of non-negative terms), so float32 is enough.
    """
    v = y[:, :, :, 0].square() + y[:, :, :, 1].square()  # [B, S, 1, F, L]
    total = v.sum(-1, keepdim=True)
    weighted = v.mul_(total / (WIENER_EPS + total))  # v_j r_j
    gain = weighted.div_(_REGULARIZATION + weighted.sum(1, keepdim=True))
    return gain[:, :, :, None] * x[:, None]


def _em_step_stereo(y: Tensor, x: Tensor) -> None:
    """One EM step, two channels, in place on y [B, S, 2, 2, F, L] (float64) with x [B, 2, 2, F, L].

    R_j is Hermitian 2x2 per bin, so Cxx^-1 needs one real determinant, and Cxx^-1 x
    is shared by every source: y_j = v_j R_j (Cxx^-1 x). Products are accumulated in
    place (`addcmul_`): the step is bound by memory traffic, not arithmetic.
    """
    x0r, x0i, x1r, x1i = x[:, 0, 0], x[:, 0, 1], x[:, 1, 0], x[:, 1, 1]  # [B, F, L]
    a = torch.full_like(x0r, _REGULARIZATION)  # Cxx = [[a, br + i bi], [br - i bi, d]]
    d = a.clone()
    br = torch.zeros_like(x0r)
    bi = torch.zeros_like(x0r)
    stats = []
    for j in range(y.shape[1]):
        y0r, y0i, y1r, y1i = y[:, j, 0, 0], y[:, j, 0, 1], y[:, j, 1, 0], y[:, j, 1, 1]
        p0 = (y0r * y0r).addcmul_(y0i, y0i)  # |y_j0|^2
        p1 = (y1r * y1r).addcmul_(y1i, y1i)
        s0, s1 = p0.sum(-1, keepdim=True), p1.sum(-1, keepdim=True)  # [B, F, 1]
        v2 = p0.add_(p1)  # 2 v_j; the halves are folded into the per-bin factors below
        half = 0.5 / (WIENER_EPS + 0.5 * (s0 + s1))  # 1 / (2 sum_t v_j)
        r00, r11 = s0 * half, s1 * half  # R_j / 2
        cr = (torch.linalg.vecdot(y0r, y1r) + torch.linalg.vecdot(y0i, y1i))[..., None] * half  # Re R_j[0, 1] / 2
        ci = (torch.linalg.vecdot(y0i, y1r) - torch.linalg.vecdot(y0r, y1i))[..., None] * half  # Im R_j[0, 1] / 2
        a.addcmul_(v2, r00)
        d.addcmul_(v2, r11)
        br.addcmul_(v2, cr)
        bi.addcmul_(v2, ci)
        del p1
        stats.append((v2, r00, r11, cr, ci))
    det = (a * d).addcmul_(br, br, value=-1).addcmul_(bi, bi, value=-1)
    inv = det.reciprocal_()
    # z = Cxx^-1 x = [[d, -b], [-conj(b), a]] x / det
    z0r = (d * x0r).addcmul_(br, x1r, value=-1).addcmul_(bi, x1i).mul_(inv)
    z0i = (d * x0i).addcmul_(br, x1i, value=-1).addcmul_(bi, x1r, value=-1).mul_(inv)
    z1r = (a * x1r).addcmul_(br, x0r, value=-1).addcmul_(bi, x0i, value=-1).mul_(inv)
    z1i = (a * x1i).addcmul_(br, x0i, value=-1).addcmul_(bi, x0r).mul_(inv)
    del a, d, br, bi, det, inv
    for j, (v2, r00, r11, cr, ci) in enumerate(stats):
        # y_j = v_j [[r00, c], [conj(c), r11]] z, with 2 v_j and R_j / 2
        y0r, y0i, y1r, y1i = y[:, j, 0, 0], y[:, j, 0, 1], y[:, j, 1, 0], y[:, j, 1, 1]
        torch.mul(z0r, r00, out=y0r).addcmul_(z1r, cr).addcmul_(z1i, ci, value=-1).mul_(v2)
        torch.mul(z0i, r00, out=y0i).addcmul_(z1i, cr).addcmul_(z1r, ci).mul_(v2)
        torch.mul(z0r, cr, out=y1r).addcmul_(z0i, ci).addcmul_(z1r, r11).mul_(v2)
        torch.mul(z0i, cr, out=y1i).addcmul_(z0r, ci, value=-1).addcmul_(z1i, r11).mul_(v2)


__all__ = ["OpenUnmix", "UmxSeparator", "bandwidth_to_max_bin", "expectation_maximization",
           "WIENER_EPS", "WIENER_SCALE"]
