"""Short-time Fourier transform helpers shared by the hybrid Demucs models (v3, v4).

Both directions use a Hann window, `center=True` with reflect padding and the
orthonormal ("normalized") scaling of `torch.stft`, so that the spectrograms, and
therefore the network inputs, are bit-for-bit those of the reference Demucs.
"""

from __future__ import annotations

from typing import Optional

import torch

# Backends without complex FFT kernels: the transform runs on the CPU there and the
# caller moves the result back if it needs to.
_NO_COMPLEX_FFT = ("mps", "xpu")


def spectro(x: torch.Tensor, n_fft: int = 512, hop_length: Optional[int] = None,
            pad: int = 0) -> torch.Tensor:
    """Complex STFT over the last axis.

    Args:
        x: real signal `[*, T]`.
        n_fft: window length; the FFT size is `n_fft * (1 + pad)` (zero padding of the
            window, i.e. frequency oversampling).
        hop_length: hop in samples, `n_fft // 4` when None.
        pad: oversampling factor minus one (0 = none).

    Returns:
        complex tensor `[*, F, N]` with `F = n_fft * (1 + pad) // 2 + 1` bins and
        `N = T // hop + 1` frames.
    """
    *lead, length = x.shape
    flat = x.reshape(-1, length)  # [*, T] -> [B', T]
    if flat.device.type in _NO_COMPLEX_FFT:
        flat = flat.cpu()
    window = torch.hann_window(n_fft).to(flat)
    z = torch.stft(
        flat,
        n_fft * (1 + pad),
        hop_length or n_fft // 4,
        window=window,
        win_length=n_fft,
        normalized=True,
        center=True,
        return_complex=True,
        pad_mode="reflect",
    )
    _, bins, frames = z.shape
    return z.view(*lead, bins, frames)  # [B', F, N] -> [*, F, N]


def ispectro(z: torch.Tensor, hop_length: Optional[int] = None, length: Optional[int] = None,
             pad: int = 0) -> torch.Tensor:
    """Inverse of `spectro` (overlap-add with the same window and scaling).

    Args:
        z: complex spectrogram `[*, F, N]`; the FFT size is taken as `2 * F - 2`.
        hop_length: hop in samples (None = a quarter of the window, as torch does).
        length: exact number of output samples (None = what the frames cover).
        pad: the oversampling used in `spectro`; the window is `n_fft // (1 + pad)`.

    Returns:
        real signal `[*, T]`.
    """
    *lead, bins, frames = z.shape
    n_fft = 2 * bins - 2
    win_length = n_fft // (1 + pad)
    flat = z.view(-1, bins, frames)  # [*, F, N] -> [B', F, N]
    if flat.device.type in _NO_COMPLEX_FFT:
        flat = flat.cpu()
    # `.real` gives the real dtype matching the complex one (complex64 -> float32).
    window = torch.hann_window(win_length).to(flat.real)
    x = torch.istft(
        flat,
        n_fft,
        hop_length,
        window=window,
        win_length=win_length,
        normalized=True,
        length=length,
        center=True,
    )
    _, out_len = x.shape
    return x.view(*lead, out_len)  # [B', T] -> [*, T]
