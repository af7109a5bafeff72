"""Ensembles: one stem as estimated by several models, combined into one.

The algorithms and their names are those of the two tools people ensemble with:

* MSST's ``ensemble.py`` (msst 0.1.0, ``msst/_ensemble.py``, ``average_waveforms``):
  avg_wave, median_wave, min_wave, max_wave, avg_fft, median_fft, min_fft, max_fft;
* audio-separator's ``Ensembler`` (0.47.1, ``audio_separator/separator/ensembler.py``):
  the same eight, plus uvr_max_spec and uvr_min_spec (UVR's "Max Spec" / "Min Spec",
  ``uvr_lib_v5/spec_utils.ensembling``).

Definitions (M members, each a ``[C, T]`` waveform of the same stem):

* ``*_wave`` work per sample, ``*_fft`` and ``uvr_*`` per time-frequency bin of the
  STFT both tools use (librosa defaults: periodic Hann window, n_fft 2048, hop 1024,
  centred frames zero-padded by n_fft // 2 at both ends), then go back by the inverse
  STFT (windowed overlap-add divided by the summed squared window, as librosa does).
* avg: ``sum_i w_i x_i / sum_i w_i`` (weights default to 1).
* median: real values: the middle value, or the mean of the two middle ones for even M
  (numpy's median). Complex bins (median_fft): the tools differ; MSST runs numpy's
  median on the complex array, which orders complex numbers lexicographically (real
  part, then imaginary part), while audio-separator takes the median of the real parts
  and of the imaginary parts separately. We follow MSST by default
  (``complex_median="lexicographic"``); ``complex_median="componentwise"`` gives
  audio-separator's.
* min / max: the member value of smallest / largest magnitude, sign (phase) kept;
  on ties the first member wins (numpy's argmin / argmax).
* uvr_min_spec / uvr_max_spec: the same selection per bin, but UVR folds the members
  left to right with ``<=`` / ``>=``, so on ties the *last* member wins.

Where we differ from the tools, on purpose:

* Weights only mean something for avg_wave and avg_fft. The tools ignore (MSST) or warn
  about and ignore (audio-separator) weights given to the others; here that is a
  UsageError, as are a wrong number of weights, non-finite weights and a zero sum
  (audio-separator falls back to equal weights for the last three).
* Any channel count works (MSST's STFT handles exactly two channels; audio-separator
  duplicates mono to stereo and back, which gives the same numbers as here).
* Output length is always T. audio-separator's uvr_* inverse STFT is called without a
  length, so it returns only the first ``hop * (T // hop)`` samples; ours agree with it
  there and carry on to T the way the *_fft algorithms do.
* Stems of different lengths are zero-padded at the end to the longest (as
  audio-separator does; MSST cannot stack them). One member is returned as it is (as
  audio-separator does; MSST would round-trip it through the STFT, which changes it
  only by rounding).

Two forms: `combine` for whole tracks, and `StreamingEnsemble` that takes aligned
blocks of each member and returns finished output blocks, equal to `combine` (the
STFT algorithms hold back ``n_fft - hop`` samples until the frames over them are in).

Shapes: M members, C channels, T samples, N frames, F = n_fft // 2 + 1 bins.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from .ensemble_rules import (ALGORITHMS, SPEC_ALGORITHMS, WAVE_ALGORITHMS, WEIGHTED_ALGORITHMS,
                             check_algorithm as _check_algorithm, check_weights)
from .errors import UsageError

COMPLEX_MEDIANS = ("lexicographic", "componentwise")
"""median_fft on complex bins: MSST's (numpy's complex order) or audio-separator's."""

N_FFT = 2048
HOP_LENGTH = 1024


# ----------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------


def _check_options(complex_median: str, n_fft: int, hop_length: int) -> None:
    if complex_median not in COMPLEX_MEDIANS:
        raise UsageError(f"unknown complex median {complex_median!r}",
                         hint="use one of " + ", ".join(COMPLEX_MEDIANS))
    if not (isinstance(n_fft, int) and n_fft >= 2 and n_fft % 2 == 0):
        raise UsageError(f"ensemble n_fft must be an even integer >= 2, got {n_fft!r}")
    if not (isinstance(hop_length, int) and 1 <= hop_length <= n_fft):
        raise UsageError(f"ensemble hop length must be an integer in 1..n_fft ({n_fft}), got {hop_length!r}")


def _check_stems(stems: Sequence[torch.Tensor], members: Optional[int] = None) -> None:
    if len(stems) == 0:
        raise UsageError("an ensemble needs at least one stem")
    if members is not None and len(stems) != members:
        raise UsageError(f"{len(stems)} blocks given to an ensemble of {members} models")
    for i, s in enumerate(stems):
        if not isinstance(s, torch.Tensor) or s.dim() != 2:
            shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise UsageError(f"ensemble stem {i} must be a [channels, samples] tensor, got {shape}")
        if not s.is_floating_point():
            raise UsageError(f"ensemble stem {i} must be floating point, got {s.dtype}")
    channels = {s.shape[0] for s in stems}
    if len(channels) != 1:
        raise UsageError(f"ensemble stems have different channel counts: {[s.shape[0] for s in stems]}")


# ----------------------------------------------------------------------------
# Combining M values per sample or per bin: x [M, ...] -> [...]
# ----------------------------------------------------------------------------


def _real_median(x: torch.Tensor) -> torch.Tensor:
    """numpy's median along dim 0: the middle value, or the mean of the two middle ones."""
    # torch.median returns the lower middle value for even M; numpy averages the two.
    m = x.shape[0]
    s = x.sort(dim=0).values
    if m % 2:
        return s[m // 2]
    return (s[m // 2 - 1] + s[m // 2]) / 2


def _lexicographic_median(z: torch.Tensor) -> torch.Tensor:
    """numpy's median of complex values along dim 0 (order: real part, then imaginary)."""
    # torch cannot sort complex tensors; two stable sorts (minor key first) give the
    # lexicographic order.
    m = z.shape[0]
    by_imag = z.imag.argsort(dim=0, stable=True)                       # [M, ...]
    by_real = z.real.gather(0, by_imag).argsort(dim=0, stable=True)    # [M, ...]
    order = by_imag.gather(0, by_real)                                 # [M, ...]
    mid = order[(m - 1) // 2: m // 2 + 1]                              # [1 or 2, ...]
    picked = torch.complex(z.real.gather(0, mid), z.imag.gather(0, mid))
    return picked.mean(dim=0) if m % 2 == 0 else picked[0]


def _select(x: torch.Tensor, smallest: bool, last_on_ties: bool) -> torch.Tensor:
    """Per element, the member value of smallest / largest magnitude (sign or phase kept)."""
    mag = x.abs()                                                      # [M, ...]
    if last_on_ties:
        # argmin/argmax return the first extreme; on the reversed stack that is the last.
        mag = mag.flip(0)
    idx = mag.argmin(dim=0, keepdim=True) if smallest else mag.argmax(dim=0, keepdim=True)  # [1, ...]
    if last_on_ties:
        idx = x.shape[0] - 1 - idx
    if x.is_complex():
        return torch.complex(x.real.gather(0, idx), x.imag.gather(0, idx))[0]
    return x.gather(0, idx)[0]


def _reduce(algorithm: str, x: torch.Tensor, weights: Optional[List[float]], complex_median: str) -> torch.Tensor:
    """Combine the members of ``x`` [M, ...] (real samples or complex bins) into [...]."""
    kind = algorithm.split("_")[0]                                     # avg, median, min, max or uvr
    if kind == "avg":
        real_dtype = x.real.dtype if x.is_complex() else x.dtype
        w = torch.tensor(weights if weights is not None else [1.0] * x.shape[0], dtype=real_dtype, device=x.device)
        w = w.reshape((-1,) + (1,) * (x.dim() - 1))                    # [M, 1, ...]
        return (x * w).sum(dim=0) / w.sum()
    if kind == "median":
        if not x.is_complex():
            return _real_median(x)
        if complex_median == "lexicographic":
            return _lexicographic_median(x)
        return torch.complex(_real_median(x.real), _real_median(x.imag))
    if kind in ("min", "max"):
        return _select(x, smallest=kind == "min", last_on_ties=False)
    if algorithm == "uvr_min_spec":
        return _select(x, smallest=True, last_on_ties=True)
    if algorithm == "uvr_max_spec":
        return _select(x, smallest=False, last_on_ties=True)
    raise AssertionError(algorithm)  # unreachable: names are checked on entry


# ----------------------------------------------------------------------------
# STFT pieces shared by the whole-track and streaming forms
# ----------------------------------------------------------------------------


def _window(n_fft: int, like: torch.Tensor) -> torch.Tensor:
    # librosa's get_window("hann", n_fft, fftbins=True) is the periodic Hann window.
    return torch.hann_window(n_fft, periodic=True, dtype=like.dtype, device=like.device)


def _frames_to_bins(frames: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Windowed frames [..., N, n_fft] (real) -> their spectra [..., N, F] (complex)."""
    return torch.fft.rfft(frames * window, dim=-1)


def _bins_to_frames(spec: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Spectra [..., N, F] -> windowed time frames [..., N, n_fft], ready to overlap-add."""
    return torch.fft.irfft(spec, n=window.shape[0], dim=-1) * window


def _overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """Frames [C, K, n_fft] laid ``hop`` apart and summed -> [C, (K - 1) * hop + n_fft]."""
    c, k, n_fft = frames.shape
    length = (k - 1) * hop + n_fft
    out = F.fold(frames.transpose(1, 2), output_size=(1, length), kernel_size=(1, n_fft), stride=(1, hop))
    return out.reshape(c, length)                                      # [C, 1, 1, L] -> [C, L]


def _normalise(acc: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
    """Divide the overlap-added frames [C, L] by the summed squared window [L].

    Like librosa, only where the envelope is above the dtype's smallest normal number
    (elsewhere the sum is left as it is, and is ~0 there anyway).
    """
    ok = env > torch.finfo(env.dtype).tiny
    return torch.where(ok, acc / torch.where(ok, env, torch.ones_like(env)), acc)


def _spec_combine(algorithm: str, x: torch.Tensor, weights: Optional[List[float]], complex_median: str,
                  n_fft: int, hop: int) -> torch.Tensor:
    """Whole-track STFT algorithm: members x [M, C, T] -> [C, T]."""
    m, c, t = x.shape
    pad = n_fft // 2
    window = _window(n_fft, x)
    xp = F.pad(x, (pad, pad))                                          # [M, C, T + n_fft]
    frames = xp.unfold(-1, n_fft, hop)                                 # [M, C, N, n_fft], N = 1 + T // hop
    spec = _frames_to_bins(frames, window)                             # [M, C, N, F]
    out_spec = _reduce(algorithm, spec, weights, complex_median)       # [C, N, F]
    n = out_spec.shape[1]
    acc = _overlap_add(_bins_to_frames(out_spec, window), hop)         # [C, (N - 1) * hop + n_fft]
    env = _overlap_add((window * window).expand(1, n, n_fft), hop)[0]  # [(N - 1) * hop + n_fft]
    y = _normalise(acc, env)[:, pad: pad + t]                          # [C, <= T]
    if y.shape[1] < t:
        # Only when hop > n_fft // 2: the last frames do not reach T (librosa pads zeros).
        y = F.pad(y, (0, t - y.shape[1]))
    return y


# ----------------------------------------------------------------------------
# Whole tracks
# ----------------------------------------------------------------------------


def combine(algorithm: str, stems: Sequence[torch.Tensor], weights: Optional[Sequence[float]] = None, *,
            complex_median: str = "lexicographic", n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> torch.Tensor:
    """Combine M estimates of one stem, each [C, T], into one [C, T].

    Args:
        algorithm: one of `ALGORITHMS` (see the module docstring for definitions).
        stems: the members' waveforms, same channel count; shorter ones are
            zero-padded at the end to the longest. Computed in the first stem's dtype.
        weights: one per member, for avg_wave and avg_fft only.
        complex_median: median_fft only: "lexicographic" (MSST) or "componentwise"
            (audio-separator).
        n_fft, hop_length: the STFT of the *_fft and uvr_* algorithms (both tools
            use 2048 / 1024).

    Raises:
        UsageError: unknown algorithm or option, bad weights (`check_weights`), no
            stems, stems not [C, T] floating-point tensors or with different C.
    """
    _check_algorithm(algorithm)
    _check_options(complex_median, n_fft, hop_length)
    _check_stems(stems)
    w = check_weights(algorithm, len(stems), weights)
    dtype, device = stems[0].dtype, stems[0].device
    if len(stems) == 1:
        return stems[0].clone()
    t = max(s.shape[1] for s in stems)
    x = torch.stack([F.pad(s.to(device=device, dtype=dtype), (0, t - s.shape[1])) for s in stems])  # [M, C, T]
    if algorithm in WAVE_ALGORITHMS:
        return _reduce(algorithm, x, w, complex_median)
    return _spec_combine(algorithm, x, w, complex_median, n_fft, hop_length)


# ----------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------


class StreamingEnsemble:
    """Combine aligned blocks of M members' stems as they come; output equals `combine`.

    ``push(blocks)`` takes one [C, t] block per member (same C and t for all, t may be
    0 and may change from call to call) and returns the output samples finished so
    far, [C, t_out]; ``finish()`` returns the rest. Concatenated, the outputs are
    ``combine(algorithm, whole_stems, ...)`` for stems of equal length.

    Wave algorithms (and a single member) return each block at once. The STFT
    algorithms hold back between ``n_fft - hop`` and ``n_fft - 1`` samples: an output
    sample is final once every frame over it has been combined, and frame k needs the
    input up to sample ``k * hop + n_fft // 2``. The end of the track (the last,
    zero-padded frames) is only known at ``finish()``.

    Memory is O(n_fft + block) per member, whatever the track length.
    """

    def __init__(self, algorithm: str, members: int, weights: Optional[Sequence[float]] = None, *,
                 complex_median: str = "lexicographic", n_fft: int = N_FFT, hop_length: int = HOP_LENGTH):
        _check_algorithm(algorithm)
        _check_options(complex_median, n_fft, hop_length)
        if not (isinstance(members, int) and members >= 1):
            raise UsageError(f"an ensemble needs at least one model, got {members!r}")
        self.algorithm = algorithm
        self.members = members
        self.weights = check_weights(algorithm, members, weights)
        self.complex_median = complex_median
        self.n_fft = n_fft
        self.hop = hop_length
        self._spectral = algorithm in SPEC_ALGORITHMS and members > 1
        self._finished = False
        self._channels: Optional[int] = None      # C, dtype and device: from the first push
        self._dtype = torch.float32
        self._device = torch.device("cpu")
        self._total = 0                      # input samples pushed per member
        # Positions below are in padded coordinates: sample t of the track is at
        # t + n_fft // 2, as in the whole-track STFT's zero-padded signal.
        self._pad = n_fft // 2
        self._inp: Optional[torch.Tensor] = None   # [M, C, L] unconsumed input, from _inp_pos
        self._inp_pos = 0
        self._next_frame = 0                 # first frame not yet combined
        self._acc: Optional[torch.Tensor] = None   # [C, L] overlap-added output, from _acc_pos
        self._env: Optional[torch.Tensor] = None   # [L] summed squared window, same span
        self._acc_pos = 0
        self._emitted = self._pad            # first output position not yet returned
        self._window: Optional[torch.Tensor] = None

    @property
    def latency(self) -> int:
        """The most samples `push` may hold back (0 for wave algorithms)."""
        return self.n_fft - 1 if self._spectral else 0

    def push(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """One aligned [C, t] block per member -> the output samples now final, [C, t_out]."""
        if self._finished:
            raise UsageError("ensemble stream already finished")
        _check_stems(blocks, self.members)
        shapes = {tuple(b.shape) for b in blocks}
        if len(shapes) != 1:
            raise UsageError(f"ensemble blocks must be aligned (same shape), got {[tuple(b.shape) for b in blocks]}")
        c, t = blocks[0].shape
        if self._channels is None:
            self._channels = c
            self._dtype, self._device = blocks[0].dtype, blocks[0].device
        elif c != self._channels:
            raise UsageError(f"ensemble block has {c} channels, the stream has {self._channels}")
        x = torch.stack([b.to(device=self._device, dtype=self._dtype) for b in blocks])  # [M, C, t]
        self._total += t
        if self.members == 1:
            return x[0].clone()
        if not self._spectral:
            return _reduce(self.algorithm, x, self.weights, self.complex_median)
        if self._inp is None:
            self._window = _window(self.n_fft, x)
            self._inp = x.new_zeros(self.members, c, self._pad)       # the left zero padding
            self._acc = x.new_zeros(c, 0)
            self._env = x.new_zeros(0)
        self._inp = torch.cat([self._inp, x], dim=2)                   # [M, C, L + t]
        # Frame k spans padded positions [k * hop, k * hop + n_fft): all frames whose
        # input is complete can be combined now.
        avail = self._pad + self._total
        if avail < self.n_fft:
            return x.new_zeros(c, 0)
        self._combine_frames_until((avail - self.n_fft) // self.hop + 1)
        return self._emit(self._next_frame * self.hop)

    def finish(self) -> torch.Tensor:
        """The rest of the output, [C, t_rest]; the stream takes no more blocks after this."""
        if self._finished:
            raise UsageError("ensemble stream already finished")
        self._finished = True
        if self._channels is None:
            return torch.zeros(0, 0)
        if not self._spectral:
            return torch.zeros(self._channels, 0, dtype=self._dtype, device=self._device)
        # The whole-track STFT has 1 + T // hop frames over the signal zero-padded by
        # n_fft // 2 on both sides (and a little more when hop does not divide it).
        n_frames = 1 + self._total // self.hop
        need = (n_frames - 1) * self.hop + self.n_fft - self._inp_pos
        if need > self._inp.shape[2]:
            self._inp = F.pad(self._inp, (0, need - self._inp.shape[2]))
        self._combine_frames_until(n_frames)
        out = self._emit(self._pad + self._total)
        short = self._pad + self._total - self._emitted
        if short > 0:
            # hop > n_fft // 2 only: the frames end before T; zeros, as in `combine`.
            out = F.pad(out, (0, short))
            self._emitted += short
        self._inp = self._acc = self._env = None
        return out

    def _combine_frames_until(self, stop: int) -> None:
        """Combine frames self._next_frame .. stop - 1 and overlap-add them into the output."""
        start = self._next_frame
        if stop <= start:
            return
        hop, n_fft = self.hop, self.n_fft
        k = stop - start
        off = start * hop - self._inp_pos
        seg = self._inp[:, :, off: off + (k - 1) * hop + n_fft]       # [M, C, (K - 1) * hop + n_fft]
        frames = seg.unfold(-1, n_fft, hop)                            # [M, C, K, n_fft]
        out_spec = _reduce(self.algorithm, _frames_to_bins(frames, self._window),
                           self.weights, self.complex_median)          # [C, K, F]
        acc = _overlap_add(_bins_to_frames(out_spec, self._window), hop)          # [C, (K - 1) * hop + n_fft]
        env = _overlap_add((self._window * self._window).expand(1, k, n_fft), hop)[0]
        # Add into the running sums, which start at _acc_pos <= start * hop.
        lo = start * hop - self._acc_pos
        hi = lo + acc.shape[1]
        if hi > self._acc.shape[1]:
            self._acc = F.pad(self._acc, (0, hi - self._acc.shape[1]))
            self._env = F.pad(self._env, (0, hi - self._env.shape[0]))
        self._acc[:, lo:hi] += acc
        self._env[lo:hi] += env
        self._next_frame = stop
        # Input before the next frame's start is never read again.
        drop = stop * hop - self._inp_pos
        if drop > 0:
            self._inp = self._inp[:, :, drop:]
            self._inp_pos += drop

    def _emit(self, final_end: int) -> torch.Tensor:
        """Return positions [_emitted, final_end) (all frames over them combined), [C, t_out]."""
        end = min(final_end, self._pad + self._total)
        if end <= self._emitted:
            return self._acc.new_zeros(self._acc.shape[0], 0)
        lo, hi = self._emitted - self._acc_pos, end - self._acc_pos
        hi_avail = min(hi, self._acc.shape[1])
        out = _normalise(self._acc[:, lo:hi_avail], self._env[lo:hi_avail])
        self._acc = self._acc[:, hi_avail:]
        self._env = self._env[hi_avail:]
        self._acc_pos += hi_avail
        self._emitted += hi_avail - lo
        return out.clone()
