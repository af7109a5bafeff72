"""Separation quality metrics: BSS Eval v4 (museval-compatible), the MDX "new SDR", SI-SDR(i),
and the speech scores PESQ and (e)STOI (optional `pesq` / `pystoi` packages, imported lazily).

All functions take numpy arrays laid out like the rest of the package: `[S, C, T]`
(S sources/stems, C channels, T samples) and return float64 arrays.

BSS Eval v4 (Vincent et al. 2006; Liutkus, Stoeter & Ito, SiSEC 2018) as museval
computes it for MUSDB18 (`museval.eval_mus_track`, mode "v4"):

* one set of distortion filters (512 taps) per estimate, fitted on the *whole* track
  by least squares: the estimate is projected on the delayed copies (lags 0..511) of
  all reference channels ("interference" filters) and, separately, of its own
  reference's channels only ("spatial" filters);
* those filters are applied to each window's references (1 s windows, 1 s hop at
  44.1 kHz), and the image-based ratios SDR, ISR, SIR, SAR are taken per window;
* a window in which any reference or any estimate is digitally silent (channel sum
  exactly zero throughout) yields NaN for every source, as museval does;
* a track's score is the median over its windows, ignoring NaN (museval also turns
  +-inf into NaN before aggregating; `track_median` does the same).

How this differs from museval in structure (not in results): the whole-track
correlations are accumulated block by block in the frequency domain for all channel
pairs at once instead of with one track-length FFT per pair; all estimates share one
LU solve; per-window projections and energies are computed for all sources and a
batch of windows at once in the frequency domain (Parseval) instead of by one
convolution per source, channel and window.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np

FILTER_LEN = 512
"""Distortion filter length (taps) used by BSS Eval v4 for MUSDB18."""

MDX_DELTA = 1e-7
"""Epsilon added to numerator and denominator of the MDX challenge SDR."""

METRICS = ("SDR", "SIR", "ISR", "SAR")

# museval regularises the Gram matrix with machine epsilon on the diagonal; we keep the
# same ridge so that (nearly) singular systems land on the same solution.
_RIDGE = np.finfo(np.float64).eps


@dataclass(frozen=True)
class BSSEvalResult:
    """Per-window BSS Eval v4 scores, each `[S, N]` (N windows), in dB.

    Values are as the ratios give them: +inf where an error energy is exactly zero,
    NaN for windows with a silent source. `medians()` aggregates as museval does.
    """

    sdr: np.ndarray
    isr: np.ndarray
    sir: np.ndarray
    sar: np.ndarray
    window: int
    hop: int

    def as_dict(self) -> Dict[str, np.ndarray]:
        return {"SDR": self.sdr, "SIR": self.sir, "ISR": self.isr, "SAR": self.sar}

    def medians(self) -> Dict[str, np.ndarray]:
        """Median over windows per source (`[S]` per metric), NaN and +-inf ignored."""
        return {name: track_median(values) for name, values in self.as_dict().items()}


def track_median(values: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN, after mapping +-inf to NaN.

    museval stores per-window values with inf replaced by NaN and aggregates with a
    NaN-ignoring median; a row with no finite value gives NaN.

    Args:
        values: `[..., N]` per-window scores.
    Returns:
        `[...]` medians.
    """
    values = np.where(np.isfinite(values), values, np.nan)
    out = np.full(values.shape[:-1], np.nan)
    valid = ~np.all(np.isnan(values), axis=-1)
    if np.any(valid):
        out[valid] = np.nanmedian(values[valid], axis=-1)
    return out


def frame_starts(length: int, window: int, hop: int) -> Tuple[np.ndarray, int]:
    """Window start samples and the common window length, museval's framing.

    A signal shorter than (or as long as) the window is one window covering all of
    it; otherwise windows of exactly `window` samples start every `hop` samples and
    the tail that does not fill a whole window is not scored.

    Returns:
        (starts `[N]` int64, window length in samples).
    """
    if window >= length:
        return np.zeros(1, dtype=np.int64), int(length)
    count = int(np.floor((length - window + hop) / hop))
    starts = np.floor(np.arange(count) * hop).astype(np.int64)
    return starts, int(window)


def _fast_fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (sizes pocketfft handles fastest)."""
    best = 1 << int(np.ceil(np.log2(max(n, 1))))
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def _lagged_correlations(
    left: np.ndarray, rights: Sequence[np.ndarray], max_lag: int, block_fft: int = 16384
) -> np.ndarray:
    """Linear cross-correlations for lags -max_lag..max_lag of every pair of channels.

    `out[p, q, max_lag + k] = sum_t left[p, t + k] * right[q, t]`, where `right` is the
    channels of all `rights` in order, and signals are zero outside [0, T). The track is
    cut into blocks of `right`; each is correlated with the stretch of `left` that reaches
    `max_lag` samples beyond it on both sides, so block sums add up to the exact
    track-long correlation without a track-length FFT or a padded copy of the track.

    Args:
        left: `[P, T]`; rights: arrays `[Q_i, T]`.
    Returns:
        `[P, sum Q_i, 2 * max_lag + 1]`.
    """
    n_left, length = left.shape
    n_right = sum(r.shape[0] for r in rights)
    span = 2 * max_lag
    fft_size = max(block_fft, _fast_fft_size(4 * span + 2))
    block = fft_size - span  # right-hand samples per block; the rest of the FFT holds the lags
    n_blocks = -(-length // block)
    group = max(1, int(2**24 // (fft_size * (n_left + n_right))))  # bounds memory per step

    acc = np.zeros((fft_size // 2 + 1, n_right, n_left), dtype=np.complex128)  # [F, Q, P]
    for first in range(0, n_blocks, group):
        count = min(group, n_blocks - first)
        # [P, b, block + span]: left from block start - max_lag to block end + max_lag;
        # [Q, b, block]: right blocks. Zeros past either end of the track.
        left_blocks = np.zeros((n_left, count, block + span))
        right_blocks = np.zeros((n_right, count, block))
        for i in range(count):
            start = (first + i) * block
            lo, hi = max(start - max_lag, 0), min(start + block + max_lag, length)
            left_blocks[:, i, lo - (start - max_lag) : hi - (start - max_lag)] = left[:, lo:hi]
            stop = min(start + block, length)
            row = 0
            for right in rights:
                right_blocks[row : row + right.shape[0], i, : stop - start] = right[:, start:stop]
                row += right.shape[0]
        lf = np.fft.rfft(left_blocks, n=fft_size, axis=-1)  # [P, b, F]
        rf = np.fft.rfft(right_blocks, n=fft_size, axis=-1)  # [Q, b, F]
        # Sum over blocks of rf * conj(lf) for all (q, p) pairs, one matmul per bin; this is
        # the conjugate of the cross-spectrum we want (conjugating the smaller operand).
        acc += np.matmul(rf.transpose(2, 0, 1), lf.conj().transpose(2, 1, 0))
    corr = np.fft.irfft(acc.conj(), n=fft_size, axis=0)[: span + 1]  # [2 max_lag + 1, Q, P]
    return np.ascontiguousarray(corr.transpose(2, 1, 0))


def _solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Batched least-squares filters: solve (gram + ridge I) x = rhs; `gram` is modified.

    Falls back to a minimum-norm least-squares solution for exactly singular systems,
    which is what museval does too.
    """
    diag = np.arange(gram.shape[-1])
    gram[..., diag, diag] += _RIDGE
    try:
        return np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:
        if gram.ndim == 2:
            return np.linalg.lstsq(gram, rhs, rcond=None)[0]
        return np.stack([np.linalg.lstsq(g, r, rcond=None)[0] for g, r in zip(gram, rhs)])


def _distortion_filters(refs: np.ndarray, ests: np.ndarray, filter_len: int) -> Tuple[np.ndarray, np.ndarray]:
    """Whole-track least-squares distortion filters of BSS Eval v4.

    Args:
        refs, ests: `[S, C, T]`.
    Returns:
        interference filters `[S_ref, C_ref, L, S_est, C_est]`: estimate channel
        (S_est, C_est) ~ sum over every reference channel of that channel filtered;
        spatial filters `[S, C_ref, L, C_est]`: each estimate from its own reference only.
    """
    n_src, n_chan, _ = refs.shape
    k = n_src * n_chan
    lag = filter_len - 1
    flat_refs = refs.reshape(k, -1)  # [S*C, T]
    flat_ests = ests.reshape(k, -1)
    corr = _lagged_correlations(flat_refs, [flat_refs, flat_ests], lag)  # [K, 2K, 2L-1]

    # Gram matrix of delayed reference channels, rows and columns indexed (source, channel, delay):
    # <ref_p delayed by a, ref_q delayed by b> = sum_t ref_p[t] ref_q[t + a - b] = corr[q, p, lag + a - b].
    # Each (p, q) block is Toeplitz: entry (a, b) reads lag a - b, i.e. row a is the window of
    # the lag-reversed correlation starting at lag - a. Views, then one copy into [p, a, q, b].
    ref_corr = corr[:, :k].transpose(1, 0, 2)[:, :, ::-1]  # [p, q, 2L-1], index lag - (a - b)
    toeplitz = np.lib.stride_tricks.sliding_window_view(ref_corr, filter_len, axis=-1)[:, :, ::-1]  # [p, q, a, b]
    gram = toeplitz.transpose(0, 2, 1, 3).reshape(k * filter_len, k * filter_len)
    delays = np.arange(filter_len)

    # Right-hand sides: <ref_p delayed by a, est channel e> = corr[p, K + e, lag - a].
    rhs = corr[:, k:, lag - delays]  # [K(p), K(e), L(a)]
    rhs = rhs.transpose(0, 2, 1).reshape(k * filter_len, k)  # rows (S, C, L), columns (S_est, C_est)

    # Spatial filters: the same normal equations restricted to each source's own block.
    blocks = gram.reshape(n_src, n_chan * filter_len, n_src, n_chan * filter_len)
    own_gram = blocks[np.arange(n_src), :, np.arange(n_src), :]  # [S, C*L, C*L] (a copy)
    own_rhs = rhs.reshape(n_src, n_chan * filter_len, n_src, n_chan)[np.arange(n_src), :, np.arange(n_src), :]  # [S, C*L, C]
    spatial = _solve(own_gram, own_rhs).reshape(n_src, n_chan, filter_len, n_chan)
    interference = _solve(gram, rhs).reshape(n_src, n_chan, filter_len, n_src, n_chan)
    return interference, spatial


def _ratio_db(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """10 log10(num / den); +inf where den is exactly zero, like museval's safe dB."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 10.0 * np.log10(num / den)
    return np.where(den == 0, np.inf, out)


def _has_silent_source(signals: np.ndarray) -> bool:
    """True if some source of `signals` `[S, C, T]` has a channel sum of exactly 0 throughout."""
    return bool(np.any(np.all(signals.sum(axis=1) == 0, axis=-1)))


def bss_eval_v4(
    references: np.ndarray,
    estimates: np.ndarray,
    window: int = 44100,
    hop: int = 44100,
    filter_len: int = FILTER_LEN,
    frames_per_step: int = 16,
) -> BSSEvalResult:
    """Image-based BSS Eval v4 per window, as museval's `bss_eval` (no permutation,
    whole-track filters) for MUSDB18 with `window = hop = 1 s`.

    Args:
        references: `[S, C, T]` true stems; estimates: `[S, C, T]`, same order.
        window, hop: in samples (44100 = 1 s at 44.1 kHz).
        filter_len: distortion filter taps.
        frames_per_step: windows processed together (memory vs. speed).
    Returns:
        `BSSEvalResult` with `[S, N]` arrays. If a whole reference or estimate is silent
        every window is NaN (museval refuses such input; every window would be NaN anyway).
    """
    refs = np.asarray(references, dtype=np.float64)
    ests = np.asarray(estimates, dtype=np.float64)
    if refs.ndim != 3 or refs.shape != ests.shape:
        raise ValueError(f"references and estimates must both be [S, C, T]; got {refs.shape} and {ests.shape}")
    n_src, n_chan, length = refs.shape
    window, hop = int(window), int(hop)
    starts, frame_len = frame_starts(length, window, hop)
    n_frames = len(starts)
    sdr, isr, sir, sar = (np.full((n_src, n_frames), np.nan) for _ in range(4))
    if _has_silent_source(refs) or _has_silent_source(ests):
        return BSSEvalResult(sdr, isr, sir, sar, window, hop)

    interference, spatial = _distortion_filters(refs, ests, filter_len)

    # Each window's projections are full linear convolutions of that window's references
    # (zero outside it) with the filters: length frame_len + L - 1, all done by rfft.
    fft_size = _fast_fft_size(frame_len + filter_len - 1)
    n_bins = fft_size // 2 + 1
    # Parseval weights: sum_t x[t]^2 = sum_f w_f |X_f|^2 for real x of length fft_size;
    # repeated twice to apply to the (real, imag) pairs of a complex array viewed as float.
    weight = np.full(n_bins, 2.0 / fft_size)
    weight[0] = 1.0 / fft_size
    if fft_size % 2 == 0:
        weight[-1] = 1.0 / fft_size
    weight = np.repeat(weight, 2)

    def energy(spec: np.ndarray) -> np.ndarray:  # [S, C, n, F] complex -> [S, n]
        flat = np.ascontiguousarray(spec).view(np.float64)
        return np.einsum("scnf,scnf,f->sn", flat, flat, weight)

    k = n_src * n_chan
    # [F, K_est, K_ref]: response of each reference channel into each estimate channel.
    interf_f = np.fft.rfft(interference.reshape(k, filter_len, k), n=fft_size, axis=1).transpose(1, 2, 0)
    spatial_f = np.fft.rfft(spatial, n=fft_size, axis=2)  # [S, C_ref, F, C_est]

    ref_frames = np.lib.stride_tricks.sliding_window_view(refs, frame_len, axis=-1)  # [S, C, T', frame_len]
    est_frames = np.lib.stride_tricks.sliding_window_view(ests, frame_len, axis=-1)
    for first in range(0, n_frames, frames_per_step):
        frames = np.arange(first, min(first + frames_per_step, n_frames))
        n = len(frames)
        ref_win = ref_frames[:, :, starts[frames]]  # [S, C, n, frame_len]
        est_win = est_frames[:, :, starts[frames]]
        ref_f = np.fft.rfft(ref_win, n=fft_size, axis=-1)  # [S, C, n, F]
        est_f = np.fft.rfft(est_win, n=fft_size, axis=-1)

        # Projection on all references: one [K_est, K_ref] @ [K_ref, n] product per bin.
        proj_all = np.matmul(interf_f, ref_f.reshape(k, n, n_bins).transpose(2, 0, 1))  # [F, K_est, n]
        proj_all = np.ascontiguousarray(proj_all.transpose(1, 2, 0)).reshape(n_src, n_chan, n, n_bins)
        # Projection on the estimate's own reference only: [S, C_est, n, F].
        proj_own = np.zeros_like(ref_f)
        for c_ref in range(n_chan):
            proj_own += spatial_f[:, c_ref].transpose(0, 2, 1)[:, :, None, :] * ref_f[:, c_ref, None]

        # Time-domain energies where no projection is involved (exact, as museval).
        ref_energy = np.einsum("scnt,scnt->sn", ref_win, ref_win)
        diff = est_win - ref_win
        sdr[:, frames] = _ratio_db(ref_energy, np.einsum("scnt,scnt->sn", diff, diff))
        isr[:, frames] = _ratio_db(ref_energy, energy(proj_own - ref_f))
        sir[:, frames] = _ratio_db(energy(proj_own), energy(proj_all - proj_own))
        sar[:, frames] = _ratio_db(energy(proj_all), energy(est_f - proj_all))

        # A window where any reference or estimate is digitally silent is not scored.
        silent = np.any(np.all(ref_win.sum(axis=1) == 0, axis=-1), axis=0)  # [n]
        silent |= np.any(np.all(est_win.sum(axis=1) == 0, axis=-1), axis=0)
        for values in (sdr, isr, sir, sar):
            values[:, frames[silent]] = np.nan
    return BSSEvalResult(sdr, isr, sir, sar, window, hop)


def mdx_sdr(references: np.ndarray, estimates: np.ndarray, delta: float = MDX_DELTA) -> np.ndarray:
    """The MDX challenges' "new SDR" (uSDR) of each source over the whole track.

    `10 log10((sum ref^2 + delta) / (sum (ref - est)^2 + delta))`, sums over channels
    and samples (Music Demixing Challenge 2021 definition, delta = 1e-7).

    Args:
        references, estimates: `[S, C, T]` (or `[..., C, T]`).
    Returns:
        `[S]` (the leading axes) in dB.
    """
    refs = np.asarray(references, dtype=np.float64)
    ests = np.asarray(estimates, dtype=np.float64)
    num = np.sum(refs**2, axis=(-2, -1)) + delta
    den = np.sum((refs - ests) ** 2, axis=(-2, -1)) + delta
    return 10.0 * np.log10(num / den)


def chunk_mdx_sdr(
    references: np.ndarray, estimates: np.ndarray, chunk: int = 44100, delta: float = MDX_DELTA
) -> np.ndarray:
    """The MDX "new SDR" per chunk of `chunk` samples (the incomplete tail is dropped).

    The median of these over a track is the chunk-level SDR (cSDR) of the Sound
    Demixing Challenge 2023; it differs from BSS Eval v4's framewise SDR only by
    delta and by scoring silent chunks instead of dropping them.

    Args:
        references, estimates: `[S, C, T]`.
    Returns:
        `[S, N]` in dB (N = T // chunk, at least 1 if T > 0).
    """
    refs = np.asarray(references, dtype=np.float64)
    ests = np.asarray(estimates, dtype=np.float64)
    n_src, n_chan, length = refs.shape
    starts, frame_len = frame_starts(length, chunk, chunk)
    n = len(starts)
    # [S, C, N, chunk]: non-overlapping chunks from the start.
    ref_chunks = refs[:, :, : n * frame_len].reshape(n_src, n_chan, n, frame_len)
    est_chunks = ests[:, :, : n * frame_len].reshape(n_src, n_chan, n, frame_len)
    return mdx_sdr(ref_chunks.transpose(0, 2, 1, 3), est_chunks.transpose(0, 2, 1, 3), delta)


def si_sdr(references: np.ndarray, estimates: np.ndarray, zero_mean: bool = True, eps: float = 1e-12) -> np.ndarray:
    """Scale-invariant SDR (Le Roux et al. 2019) per source, channels taken together.

    The estimate is projected on the reference (one gain for all channels); the ratio
    of that target's energy to the residual's is the score.

    Args:
        references, estimates: `[S, C, T]` (or `[..., C, T]`).
        zero_mean: remove each channel's mean first (the usual convention).
        eps: guards the divisions for silent references or perfect estimates.
    Returns:
        `[S]` (the leading axes) in dB.
    """
    refs = np.asarray(references, dtype=np.float64)
    ests = np.asarray(estimates, dtype=np.float64)
    if zero_mean:
        refs = refs - refs.mean(axis=-1, keepdims=True)
        ests = ests - ests.mean(axis=-1, keepdims=True)
    gain = np.sum(refs * ests, axis=(-2, -1)) / (np.sum(refs**2, axis=(-2, -1)) + eps)
    target = gain[..., None, None] * refs
    residual = ests - target
    return 10.0 * np.log10((np.sum(target**2, axis=(-2, -1)) + eps) / (np.sum(residual**2, axis=(-2, -1)) + eps))


def si_sdr_improvement(
    references: np.ndarray, estimates: np.ndarray, mixture: np.ndarray, zero_mean: bool = True, eps: float = 1e-12
) -> np.ndarray:
    """SI-SDR improvement: SI-SDR of each estimate minus SI-SDR of the unprocessed mixture.

    Args:
        references, estimates: `[S, C, T]` (or `[..., C, T]`).
        mixture: `[C, T]`, the input every estimate was made from (scored against each reference).
    Returns:
        `[S]` (the leading axes) in dB.
    """
    refs = np.asarray(references, dtype=np.float64)
    mix = np.broadcast_to(np.asarray(mixture, dtype=np.float64), refs.shape)
    return si_sdr(refs, estimates, zero_mean, eps) - si_sdr(refs, mix, zero_mean, eps)


# --- perceptual speech metrics: PESQ (ITU-T P.862) and (e)STOI, from the `pesq` and `pystoi` packages

PESQ_RATES = {"wb": 16000, "nb": 8000}
"""The rate each PESQ mode scores at: wide band (P.862.2) at 16 kHz, narrow band (P.862) at 8 kHz."""

SPEECH_HINT = "pip install 'unmixcli[speech]' (or pip install pesq==0.0.4 pystoi==0.4.1)"


def _import_speech_metric(module: str):
    """`pesq` or `pystoi`, imported only when a perceptual score is asked for (optional extra)."""
    import importlib

    from .errors import UsageError

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"PESQ and STOI scores need the `{module}` package", hint=SPEECH_HINT) from exc


def _mono(signal: np.ndarray, what: str) -> np.ndarray:
    """`[T]` or `[C, T]` -> `[T]` float64: channels averaged (the speech metrics are defined on mono)."""
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim == 2:
        signal = signal.mean(axis=0)
    if signal.ndim != 1:
        raise ValueError(f"{what} must be [T] or [C, T]; got shape {signal.shape}")
    return signal


def _pair(reference: np.ndarray, estimate: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    ref, est = _mono(reference, "reference"), _mono(estimate, "estimate")
    if ref.shape != est.shape:
        raise ValueError(f"reference and estimate lengths differ ({ref.shape[0]} and {est.shape[0]} samples)")
    return ref, est


def pesq_score(reference: np.ndarray, estimate: np.ndarray, sample_rate: int, mode: str = "wb") -> float:
    """PESQ MOS-LQO of `estimate` (the degraded or enhanced signal) against the clean `reference`.

    Both are mixed down to mono and resampled to the mode's rate (`PESQ_RATES`: 16 kHz for "wb",
    8 kHz for "nb") with our band-limited resampler, then scored by the `pesq` package (the ITU
    reference code). A signal PESQ cannot score (no speech found, too short) gives NaN, so one bad
    file does not stop an evaluation.

    Args:
        reference, estimate: `[T]` or `[C, T]` at `sample_rate`.
        mode: "wb" (P.862.2 wide band) or "nb" (P.862 narrow band).
    Raises:
        UsageError: the `pesq` package is not installed (optional extra).
    """
    if mode not in PESQ_RATES:
        raise ValueError(f"PESQ mode must be 'wb' or 'nb', got {mode!r}")
    pesq = _import_speech_metric("pesq")
    ref, est = _pair(reference, estimate)
    rate = PESQ_RATES[mode]
    if int(sample_rate) != rate:
        from .audio import resample

        ref = resample(ref[None], int(sample_rate), rate)[0].astype(np.float64)
        est = resample(est[None], int(sample_rate), rate)[0].astype(np.float64)
    if not np.any(ref) or not np.any(est):
        return float("nan")  # the ITU code divides by the peak: silence has no score
    try:
        return float(pesq.pesq(rate, ref, est, mode))
    except pesq.PesqError:
        return float("nan")


def stoi_score(reference: np.ndarray, estimate: np.ndarray, sample_rate: int, extended: bool = False) -> float:
    """STOI (Taal et al. 2011) or, with `extended`, eSTOI (Jensen & Taal 2016) of `estimate`
    against the clean `reference`, from the `pystoi` package.

    Both are mixed down to mono; pystoi resamples to its 10 kHz itself. Returns a value in
    about [0, 1] (higher is more intelligible), NaN when too little speech is left after
    pystoi's silence removal (under 30 frames, about 0.4 s).

    Raises:
        UsageError: the `pystoi` package is not installed (optional extra).
    """
    pystoi = _import_speech_metric("pystoi")
    ref, est = _pair(reference, estimate)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        value = float(pystoi.stoi(ref, est, int(sample_rate), extended=extended))
    # Too little speech left after pystoi's silence removal: it warns and returns a placeholder
    # (1e-5); that is no score, and averaging it in would drag a table down.
    if any(issubclass(w.category, RuntimeWarning) for w in caught):
        return float("nan")
    return value


def bss_eval_medians(
    references: np.ndarray, estimates: np.ndarray, sample_rate: int = 44100, window_s: float = 1.0, hop_s: float = 1.0
) -> Dict[str, np.ndarray]:
    """Convenience: BSS Eval v4 track scores (median over windows), `[S]` per metric."""
    return bss_eval_v4(references, estimates, int(window_s * sample_rate), int(hop_s * sample_rate)).medians()


__all__ = [
    "BSSEvalResult",
    "FILTER_LEN",
    "MDX_DELTA",
    "METRICS",
    "bss_eval_medians",
    "bss_eval_v4",
    "chunk_mdx_sdr",
    "frame_starts",
    "mdx_sdr",
    "PESQ_RATES",
    "pesq_score",
    "si_sdr",
    "si_sdr_improvement",
    "stoi_score",
    "track_median",
]
