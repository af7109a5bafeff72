"""metrics.py against museval (the oracle, loaded from its file: `import museval` needs ffmpeg)
and against the definitions of the MDX SDR and SI-SDR."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from unmixcli import metrics

SR = 44100


@pytest.fixture(scope="module")
def museval_metrics():
    spec = importlib.util.find_spec("museval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("museval (test oracle) not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "metrics.py"
    mod_spec = importlib.util.spec_from_file_location("museval_metrics_oracle", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def music_like(rng: np.random.Generator, n_src: int, seconds: float, sr: int = SR) -> np.ndarray:
    """`[S, 2, T]` stems: harmonic tones with vibrato and envelopes over coloured noise,
    each panned differently, so that every stem is broadband but distinct."""
    t = np.arange(int(seconds * sr)) / sr
    out = np.empty((n_src, 2, len(t)))
    for s in range(n_src):
        f0 = 80.0 * (1.7**s) * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        tone = sum(np.sin(h * phase) / h for h in range(1, 6))
        noise = rng.standard_normal(len(t))
        spectrum = np.fft.rfft(noise) / (1 + np.fft.rfftfreq(len(t), 1 / sr) / (300.0 * (s + 1)))
        noise = np.fft.irfft(spectrum, n=len(t))
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * (0.3 + 0.2 * s) * t + s) ** 2
        mono = envelope * (tone + 0.5 * noise / noise.std())
        pan = 0.2 + 0.6 * s / max(n_src - 1, 1)
        out[s, 0] = np.sqrt(1 - pan) * mono + 0.05 * rng.standard_normal(len(t))
        out[s, 1] = np.sqrt(pan) * mono + 0.05 * rng.standard_normal(len(t))
    return out


def museval_bss(module, refs: np.ndarray, ests: np.ndarray, window: int, hop: int):
    """museval's v4 call as eval_mus_track makes it; inputs `[S, C, T]` -> museval's `[S, T, C]`."""
    sdr, isr, sir, sar, _ = module.bss_eval(
        refs.transpose(0, 2, 1),
        ests.transpose(0, 2, 1),
        window=window,
        hop=hop,
        compute_permutation=False,
        framewise_filters=False,
        bsseval_sources_version=False,
    )
    return {"SDR": sdr, "ISR": isr, "SIR": sir, "SAR": sar}


def assert_parity(ours: metrics.BSSEvalResult, theirs: dict, tol: float = 0.01) -> float:
    """Same NaN/inf pattern, finite values within `tol` dB, museval-style medians within `tol`."""
    worst = 0.0
    for name, expected in theirs.items():
        got = ours.as_dict()[name]
        assert got.shape == expected.shape, name
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=name)
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(expected), err_msg=name)
        finite = np.isfinite(expected)
        diff = np.abs(got[finite] - expected[finite])
        assert diff.max() < tol, (name, diff.max())
        worst = max(worst, float(diff.max()))
        # museval's TrackStore turns inf into NaN and takes nanmedian per source.
        reference_median = np.nanmedian(np.where(np.isfinite(expected), expected, np.nan), axis=1)
        np.testing.assert_allclose(metrics.track_median(got), reference_median, atol=tol, err_msg=name)
    return worst


@pytest.mark.slow
def test_parity_four_stems_with_silence_and_near_perfect_estimate(museval_metrics):
    rng = np.random.default_rng(1)
    refs = music_like(rng, 4, 10.0)
    # Stem 0 silent from 2.0 s to 4.3 s: windows 2 and 3 have a silent reference.
    refs[0, :, 2 * SR : int(4.3 * SR)] = 0.0
    ests = np.empty_like(refs)
    # Stem 0: crosstalk from the others plus noise (low SIR, moderate SAR).
    ests[0] = 0.9 * refs[0] + 0.3 * refs[1] + 0.1 * refs[2] + 0.05 * rng.standard_normal(refs[0].shape)
    # Stem 1: near-perfect (about 60 dB).
    ests[1] = refs[1] + 1e-3 * rng.standard_normal(refs[1].shape)
    # Stem 2: delayed, filtered and channel-mixed (spatial distortion, ISR) and silent in window 7.
    shifted = np.roll(refs[2], 3, axis=1)
    ests[2] = 0.8 * shifted + 0.2 * shifted[::-1] + 0.1 * np.roll(refs[2], 40, axis=1)
    ests[2, :, 7 * SR : 8 * SR + 100] = 0.0
    # Stem 3: unbalanced channels, a little of stem 0, noise.
    ests[3] = np.array([[1.2], [0.7]]) * refs[3] + 0.05 * refs[0] + 0.02 * rng.standard_normal(refs[3].shape)

    ours = metrics.bss_eval_v4(refs, ests)
    theirs = museval_bss(museval_metrics, refs, ests, SR, SR)
    worst = assert_parity(ours, theirs)
    assert worst < 0.01
    # Silent windows are NaN for every source, the others are scored.
    nan_windows = np.flatnonzero(np.isnan(ours.sdr).all(axis=0))
    np.testing.assert_array_equal(nan_windows, [2, 3, 7])
    assert ours.sdr.shape == (4, 10)
    assert np.isfinite(ours.sdr[:, [0, 1, 4, 5, 6, 8, 9]]).all()
    assert np.nanmedian(ours.sdr[1]) > 55.0
    assert np.nanmedian(ours.sir[0]) < np.nanmedian(ours.sir[2])


@pytest.mark.slow
def test_parity_overlapping_windows_partial_tail_and_an_exact_window(museval_metrics):
    rng = np.random.default_rng(2)
    refs = music_like(rng, 2, 3.7)  # 3.7 s: a tail that fills no whole window
    ests = np.stack([0.7 * refs[0] + 0.2 * refs[1], refs[1] + 0.2 * refs[0]])
    ests += 0.02 * rng.standard_normal(ests.shape)
    # Window 2 (1.0 s to 2.0 s) of stem 1 estimated exactly: its error energy is zero.
    ests[1, :, SR : 2 * SR] = refs[1, :, SR : 2 * SR]
    window, hop = SR, SR // 2
    ours = metrics.bss_eval_v4(refs, ests, window=window, hop=hop)
    theirs = museval_bss(museval_metrics, refs, ests, window, hop)
    assert ours.sdr.shape == (2, 6)
    # museval's rounding leaves a meaningless ~300 dB there; we keep +inf, which museval's
    # score store (and track_median) turns into NaN, so the window is left out of the median.
    assert np.isposinf(ours.sdr[1, 2]) and theirs["SDR"][1, 2] > 200
    theirs["SDR"][1, 2] = np.inf
    assert_parity(ours, theirs)
    assert metrics.track_median(ours.sdr)[1] == pytest.approx(np.median(np.delete(ours.sdr[1], 2)))


def test_parity_signal_shorter_than_window(museval_metrics):
    rng = np.random.default_rng(3)
    refs = music_like(rng, 2, 0.4)
    ests = refs[::-1] * 0.3 + refs * 0.7 + 0.01 * rng.standard_normal(refs.shape)
    ours = metrics.bss_eval_v4(refs, ests)
    assert ours.sdr.shape == (2, 1)
    assert_parity(ours, museval_bss(museval_metrics, refs, ests, SR, SR))


def test_whole_silent_source_gives_nan_instead_of_failing():
    rng = np.random.default_rng(4)
    refs = music_like(rng, 2, 2.0)
    ests = refs.copy()
    ests[1] = 0.0  # museval refuses this input; every window would be NaN anyway
    result = metrics.bss_eval_v4(refs, ests)
    assert result.sdr.shape == (2, 2)
    for values in result.as_dict().values():
        assert np.isnan(values).all()
    assert np.isnan(result.medians()["SDR"]).all()


def test_track_median_ignores_nan_and_inf():
    values = np.array([[1.0, np.nan, 3.0, np.inf, 2.0], [np.nan, np.nan, np.inf, -np.inf, np.nan]])
    np.testing.assert_array_equal(metrics.track_median(values), [2.0, np.nan])


def test_chunk_mdx_sdr_matches_bss_eval_sdr_on_busy_windows_and_scores_silence():
    """BSS Eval v4's image SDR of a window is the SNR of that window: two independent code
    paths must agree (up to the MDX delta) where nothing is silent."""
    rng = np.random.default_rng(5)
    refs = music_like(rng, 2, 4.0, sr=8000)
    ests = refs + 0.1 * rng.standard_normal(refs.shape)
    refs[1, :, 8000:16000] = 0.0
    ests[1, :, 8000:16000] = 0.0
    chunks = metrics.chunk_mdx_sdr(refs, ests, chunk=8000)
    bss = metrics.bss_eval_v4(refs, ests, window=8000, hop=8000)
    assert chunks.shape == bss.sdr.shape == (2, 4)
    busy = [0, 2, 3]
    np.testing.assert_allclose(chunks[:, busy], bss.sdr[:, busy], atol=1e-6)
    # Silent reference and estimate: BSS Eval drops the window, the MDX SDR gives delta/delta = 0 dB.
    assert np.isnan(bss.sdr[:, 1]).all()
    assert chunks[1, 1] == pytest.approx(0.0, abs=1e-9)


def test_mdx_sdr_definition():
    rng = np.random.default_rng(6)
    refs = np.repeat(rng.standard_normal((1, 2, 5000)), 3, axis=0)
    noise = np.repeat(rng.standard_normal((1, 2, 5000)), 3, axis=0)
    gains = np.array([1.0, 0.1, 0.01])
    ests = refs + gains[:, None, None] * noise
    got = metrics.mdx_sdr(refs, ests)
    expected = 10 * np.log10(np.sum(refs**2, axis=(1, 2)) / np.sum((gains[:, None, None] * noise) ** 2, axis=(1, 2)))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # Ten times less error is 20 dB more.
    assert got[2] - got[1] == pytest.approx(20.0, abs=1e-6)
    # delta keeps a perfect estimate finite: (E + 1e-7) / 1e-7.
    perfect = metrics.mdx_sdr(refs, refs)
    np.testing.assert_allclose(perfect, 10 * np.log10((np.sum(refs**2, axis=(1, 2)) + 1e-7) / 1e-7))


def test_si_sdr_scale_invariance_and_known_value():
    rng = np.random.default_rng(7)
    ref = rng.standard_normal((1, 2, 20000))
    ref -= ref.mean(axis=-1, keepdims=True)
    noise = rng.standard_normal((1, 2, 20000))
    noise -= noise.mean(axis=-1, keepdims=True)
    noise -= np.sum(noise * ref) / np.sum(ref**2) * ref  # orthogonal to the reference
    noise *= np.sqrt(np.sum(ref**2) / np.sum(noise**2)) / 10  # 20 dB below
    est = ref + noise
    assert metrics.si_sdr(ref, est)[0] == pytest.approx(20.0, abs=1e-6)
    assert metrics.si_sdr(ref, 3.7 * est)[0] == pytest.approx(20.0, abs=1e-6)
    # Plain SDR is not scale invariant; SI-SDR is.
    assert metrics.mdx_sdr(ref, 3.7 * est)[0] < 0
    # A constant offset does not matter with zero_mean, it does without.
    assert metrics.si_sdr(ref, est + 0.5)[0] == pytest.approx(20.0, abs=1e-6)
    assert metrics.si_sdr(ref, est + 0.5, zero_mean=False)[0] < 10.0
