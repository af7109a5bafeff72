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


def cac_padded(m: torch.Tensor, std: torch.Tensor, mean: torch.Tensor, edge_frames: int) -> torch.Tensor:
    """The stems' spectrograms of a hybrid Demucs under complex-as-channels, fused with
    the de-standardisation before and the padding its `_ispec` needs after: one pass over
    the largest output instead of four (scale, shift, interleave, pad).

    `m [B, S, 2C, F, N]` real (standardised), std / mean `[B, 1, 1, 1]` -> complex
    `[B, S, C, F + 1, N + 2 * edge_frames]`, zero on the Nyquist bin and on the
    `edge_frames` frames per side that `_spec` dropped.
    """
    B, S, C2, Fr, T = m.shape
    e = edge_frames
    # As `m * std + mean` would be: float32 when autocast left `m` in bf16 (which has no complex type).
    dtype = torch.promote_types(m.dtype, std.dtype)
    out = m.new_empty(B, S, C2 // 2, Fr + 1, T + 2 * e, 2, dtype=dtype)  # [B, S, C, F+1, N+2e, re/im]
    out[..., Fr, :, :] = 0
    out[..., :Fr, :e, :] = 0
    out[..., :Fr, T + e:, :] = 0
    parts = m.view(B, S, C2 // 2, 2, Fr, T).permute(0, 1, 2, 4, 5, 3)  # [B, S, C, F, N, 2]
    std, mean = std.view(B, 1, 1, 1, 1, 1), mean.view(B, 1, 1, 1, 1, 1)
    inner = out[..., :Fr, e:T + e, :]
    if torch.is_grad_enabled():  # out= has no autograd
        inner.copy_(parts * std + mean)
    else:
        torch.addcmul(mean, parts, std, out=inner)
    return torch.view_as_complex(out)
