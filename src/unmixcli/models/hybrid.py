"""The spectrogram front and back end shared by the hybrid Demucs models, v3 (`HDemucs`)
and v4 (`HTDemucs`): one copy, so that the two cannot drift apart.

`HybridSpectrogram` is a mixin for those `nn.Module`s. It turns the mix into the
spectral branch's standardised input and the branch's output back into a waveform,
in every configuration the reference (demucs 4.1.0) has:

* `hybrid` (v4 always; v3 by default): the STFT is cropped to exactly `T / hop`
  frames so that it lines up with the waveform branch, whose layers all divide
  lengths by their stride. `hybrid_old` (some MDX-era v3 models) pads with zeros
  instead of reflecting, and crops the inverse differently, as those were trained.
* spectrogram-only v3 (`hybrid=False`): the plain STFT, nothing cropped.
* `cac` (complex as channels, every released model): real and imaginary parts are
  channels in and out. Otherwise the network outputs magnitudes, given the mix's
  phase (`wiener_iters < 0`) or Wiener filtered (`wiener_iters >= 0`).

The models set, in their constructors: `nfft`, `hop_length`, `cac`, `wiener_iters`,
`end_iters`, `wiener_residual` (and v3 `hybrid`, `hybrid_old`).

Shapes: B batch, S stems, C audio channels, T samples, F bins, N frames.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch.nn import functional as F

from .spec import cac_padded, ispectro, spectro

__all__ = ["HybridSpectrogram", "pad1d", "wiener"]

# Frames per side that the hybrid `_spec` drops (and `_ispec` restores as zeros): with
# 1.5 hops of padding per side, the outer two frames mostly see padding.
EDGE_FRAMES = 2

# Frames per Wiener filtering call: bounds the memory of its covariance estimates, and
# the windows change the result, so it must be the reference's value.
WIENER_WINDOW = 300

# Backends without complex kernels: the spectral tail runs on the CPU there.
_NO_COMPLEX = ("mps", "xpu")


def pad1d(x: torch.Tensor, paddings: Tuple[int, int], mode: str = "constant",
          value: float = 0.) -> torch.Tensor:
    """`F.pad` on the last axis that also allows reflect padding wider than the input.

    Reflection needs `pad < length`; when the input is too short, zeros are first
    added on the side(s) being padded (right first), so that the original samples stay
    where they were and the output has exactly `length + left + right` samples.

    Shapes: `[*, T]` -> `[*, left + T + right]`.
    """
    length = x.shape[-1]
    left, right = paddings
    if mode == "reflect":
        widest = max(left, right)
        if length <= widest:
            missing = widest - length + 1
            extra_right = min(right, missing)
            extra_left = missing - extra_right
            x = F.pad(x, (extra_left, extra_right))
            left, right = left - extra_left, right - extra_right
    out = F.pad(x, (left, right), mode, value)
    if out.shape[-1] != length + paddings[0] + paddings[1]:  # pragma: no cover - invariant
        raise RuntimeError("pad1d produced an unexpected length")
    return out


def wiener(mag: torch.Tensor, mix: torch.Tensor, iterations: int = 1, residual: bool = False,
           scale_factor: float = 10.0, eps: float = 1e-10, batch_size: int = 200) -> torch.Tensor:
    """Multichannel Wiener filtering of magnitude estimates (Open-Unmix's method).

    The initial estimate of each source is its magnitude with the mixture's phase
    (plus, with `residual`, the mixture minus all of them as an extra source). Then
    `iterations` rounds of expectation-maximisation re-estimate per-source power
    spectra and spatial covariances and re-separate the mixture with multichannel
    Wiener gains.

    Args:
        mag: non-negative magnitudes `[N, F, C, S]`.
        mix: complex mixture STFT `[N, F, C]`.

    Returns:
        complex source STFTs `[N, F, C, S]` (`S + 1` sources with `residual`).
    """
    angle = torch.atan2(mix.imag, mix.real)[..., None]
    y = torch.complex(mag * torch.cos(angle), mag * torch.sin(angle))  # [N, F, C, S]
    if residual:
        y = torch.cat([y, mix[..., None] - y.sum(dim=-1, keepdim=True)], dim=-1)
    if iterations == 0:
        return y

    # Work on a scaled-down copy for numerical stability, as the reference does.
    max_abs = torch.clamp(mix.abs().max() / scale_factor, min=1.0)
    mix = mix / max_abs
    y = y / max_abs

    frames, bins, channels = mix.shape
    n_src = y.shape[-1]
    eye = torch.eye(channels, dtype=mix.dtype, device=mix.device)
    reg = math.sqrt(eps) * eye  # [C, C]
    for _ in range(iterations):
        power = (y.abs() ** 2).mean(dim=-2)  # [N, F, S] power spectral densities
        # Spatial covariances: power-weighted average over time of y y^H.   [S, F, C, C]
        cov = torch.einsum("nfcs,nfds->sfcd", y, y.conj())
        covs = cov / (eps + power.sum(dim=0)).transpose(0, 1)[..., None, None]
        out = torch.zeros_like(y)
        for pos in range(0, frames, batch_size):
            sl = slice(pos, pos + batch_size)
            v = power[sl]  # [n, F, S]
            mix_cov = reg + torch.einsum("nfs,sfcd->nfcd", v.to(mix.dtype), covs)
            inv = torch.linalg.inv(mix_cov)  # [n, F, C, C]
            for j in range(n_src):
                gain = v[..., j, None, None] * torch.matmul(covs[j][None], inv)  # [n, F, C, C]
                out[sl, ..., j] = torch.einsum("nfcd,nfd->nfc", gain, mix[sl])
        y = out
    return y * max_abs


class HybridSpectrogram:
    """Spectral front end (`_spectral_input`) and back end (`_spectral_output`) of the
    hybrid Demucs models, with the steps in between (`_spec`, `_ispec`, `_magnitude`,
    `_mask`, `_wiener`) under the reference's names. Mixed into an `nn.Module`.
    """

    # v4 is always hybrid with reflect padding; v3 sets both per instance.
    hybrid: bool = True
    hybrid_old: bool = False

    nfft: int
    hop_length: int
    cac: bool
    wiener_iters: int
    end_iters: int
    wiener_residual: bool
    training: bool

    # ---------------------------------------------------------------- front end

    def _spectral_input(self, mix: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`mix [B, C, T]` -> `(z, x, mean, std)`: the mix spectrogram `z` (complex
        `[B, C, F, N]`, kept for masking), the spectral branch's input `x` (real
        `[B, C', F, N]`, standardised per item) and the statistics `[B, 1, 1, 1]` that
        `_spectral_output` puts back."""
        z = self._spec(mix)
        x = self._magnitude(z).to(mix.device)  # z is on the CPU on MPS / XPU
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        return z, (x - mean) / (1e-5 + std), mean, std

    def _spec(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C, T]` -> complex `[B, C, F, N]`, F = nfft // 2 (the Nyquist bin dropped).

        Hybrid: N = ceil(T / hop) exactly. The signal is padded by 1.5 hops on each side
        (plus up to a hop on the right, to a whole number of hops) and the
        `EDGE_FRAMES` outer frames on each side are dropped. Otherwise N = T // hop + 1.
        """
        hop = self.hop_length
        if self.hybrid:
            if hop != self.nfft // 4:  # pragma: no cover - set so by the constructors
                raise RuntimeError("hybrid models need hop == nfft // 4")
            frames = int(math.ceil(x.shape[-1] / hop))
            pad = hop // 2 * 3
            # hybrid_old keeps the zero padding (not reflection) those models were trained with.
            mode = "constant" if self.hybrid_old else "reflect"
            x = pad1d(x, (pad, pad + frames * hop - x.shape[-1]), mode=mode)
        z = spectro(x, self.nfft, hop)[..., :-1, :]
        if self.hybrid:
            if z.shape[-1] != frames + 2 * EDGE_FRAMES:  # pragma: no cover - invariant
                raise RuntimeError("unexpected number of STFT frames")
            z = z[..., EDGE_FRAMES:EDGE_FRAMES + frames]
        return z

    def _magnitude(self, z: torch.Tensor) -> torch.Tensor:
        """Network input from the complex spectrogram `[B, C, F, N]`: with cac,
        `[B, 2C, F, N]` (channel 2c / 2c+1 = real / imaginary part of audio channel c),
        else `|z|` `[B, C, F, N]`."""
        if not self.cac:
            return z.abs()
        B, C, Fr, N = z.shape
        m = torch.view_as_real(z).permute(0, 1, 4, 2, 3)  # [B, C, 2, F, N]
        return m.reshape(B, C * 2, Fr, N)

    # ---------------------------------------------------------------- back end

    def _spectral_output(self, x: torch.Tensor, z: torch.Tensor, mean: torch.Tensor,
                         std: torch.Tensor, length: int) -> torch.Tensor:
        """The spectral branch's output `x [B, S, C', F, N]` (standardised) -> stems
        `[B, S, C, length]` on x's device, given `_spectral_input`'s `z`, `mean`, `std`."""
        device = x.device
        off_device = device.type in _NO_COMPLEX
        if off_device:
            x, std, mean = x.cpu(), std.cpu(), mean.cpu()
        if self.cac:
            edge = EDGE_FRAMES if self.hybrid else 0
            out = self._ispec(cac_padded(x, std, mean, edge_frames=edge), length, padded=True)
        else:
            out = self._ispec(self._mask(z, x * std[:, None] + mean[:, None]), length)
        return out.to(device) if off_device else out

    def _ispec(self, z: torch.Tensor, length: int, padded: bool = False) -> torch.Tensor:
        """Inverse of `_spec`: complex `[..., F, N]` -> `[..., length]`.

        `padded`: z already holds the Nyquist bin and, for the hybrid model, the
        `EDGE_FRAMES` per side that `_spec` dropped (see `spec.cac_padded`)."""
        hop = self.hop_length
        if not padded:
            z = F.pad(z, (0, 0, 0, 1))  # the Nyquist bin, as zeros
        if not self.hybrid:
            return ispectro(z, hop, length)
        if not padded:
            z = F.pad(z, (EDGE_FRAMES, EDGE_FRAMES))  # the dropped frames, as zeros
        pad = hop // 2 * 3
        covered = hop * int(math.ceil(length / hop))
        if self.hybrid_old:
            # As those models were trained: the inverse is not re-aligned by the padding.
            return ispectro(z, hop, length=covered)[..., :length]
        x = ispectro(z, hop, length=covered + 2 * pad)
        return x[..., pad:pad + length]

    def _mask(self, z: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Stem spectrograms from magnitudes `m [B, S, C, F, N]` (without cac; that output
        goes through `spec.cac_padded`) and the mix spectrogram `z [B, C, F, N]`: the mix
        phase (`wiener_iters < 0`) or Wiener filtering. Complex `[B, S, C, F, N]`."""
        niters = self.end_iters if self.training else self.wiener_iters
        if niters < 0:
            z = z[:, None]
            return z / (1e-8 + z.abs()) * m
        return self._wiener(m, z, niters)

    def _wiener(self, mag_out: torch.Tensor, mix_stft: torch.Tensor, niters: int) -> torch.Tensor:
        """Multichannel Wiener filtering, per item and per `WIENER_WINDOW` frames.

        `mag_out [B, S, C, F, N]` magnitudes, `mix_stft [B, C, F, N]` complex
        -> `[B, S, C, F, N]` complex.
        """
        dtype = mix_stft.dtype
        B, S, C, Fr, N = mag_out.shape
        mags = mag_out.permute(0, 4, 3, 2, 1)  # [B, N, F, C, S]
        mix = mix_stft.permute(0, 3, 2, 1)  # [B, N, F, C] complex
        # The reference's phase helper (Open-Unmix's atan2) sets the real part of exactly
        # zero bins to 1, in place, and the filtering then runs on that modified mixture.
        # Zero bins are common (digital silence, zero padding up to the segment), so we
        # do the same, explicitly and on a copy, to compute what it computes.
        mix = torch.where(mix == 0, torch.ones((), dtype=mix.dtype, device=mix.device), mix)
        items = []
        for b in range(B):
            parts = [wiener(mags[b, pos:pos + WIENER_WINDOW], mix[b, pos:pos + WIENER_WINDOW], niters,
                            residual=self.wiener_residual)
                     for pos in range(0, N, WIENER_WINDOW)]  # each [n, F, C, S(+1)] complex
            items.append(torch.cat(parts, dim=0))
        out = torch.stack(items, 0).permute(0, 4, 3, 2, 1).contiguous()  # [B, S(+1), C, F, N]
        if self.wiener_residual:
            out = out[:, :-1]  # drop the residual "source"
        return out.to(dtype)
