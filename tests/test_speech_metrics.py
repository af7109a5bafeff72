"""Speech metrics (metrics.py): SI-SDR and SI-SDRi against running references (fast_bss_eval,
asteroid), and our PESQ / STOI wrappers against the `pesq` / `pystoi` packages called directly."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from unmixcli import metrics
from unmixcli.errors import UsageError


def speech_like(rate: int, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """`[T]` voiced bursts (harmonics of a gliding pitch, syllable-rate envelope) with pauses:
    enough like speech for PESQ's utterance detection and STOI's silence removal."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase + rng.uniform(0, 6)) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 2
    pauses = (np.floor(t / 0.6) % 3 != 2).astype(float)  # every third 0.6 s is silent
    return 0.3 * voiced * syllables * pauses + 1e-4 * rng.standard_normal(t.size)


def noisy(clean: np.ndarray, snr_db: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(clean.shape)
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return clean + noise


# --------------------------------------------------------------------------- SI-SDR


@pytest.mark.parametrize("zero_mean", [True, False])
def test_si_sdr_matches_fast_bss_eval(zero_mean):
    fbe = pytest.importorskip("fast_bss_eval")
    rng = np.random.default_rng(3)
    refs = rng.standard_normal((3, 1, 8000))  # [S, C=1, T]
    ests = np.stack([refs[i] * g + s * rng.standard_normal((1, 8000)) + 0.05
                     for i, (g, s) in enumerate([(1.0, 0.1), (0.4, 0.5), (2.5, 1.5)])])
    ours = metrics.si_sdr(refs, ests, zero_mean=zero_mean, eps=0.0)
    theirs = fbe.si_sdr(refs[:, 0], ests[:, 0], zero_mean=zero_mean)
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
    assert len(set(np.round(ours, 3))) == 3  # three different scores, not a constant


def test_si_sdr_and_improvement_match_asteroid():
    torch = pytest.importorskip("torch")
    sdr = pytest.importorskip("asteroid.losses.sdr")
    rng = np.random.default_rng(4)
    refs = rng.standard_normal((2, 1, 8000))
    mixture = refs.sum(axis=0) + 0.3 * rng.standard_normal((1, 8000))  # [C, T]
    ests = refs + np.array([0.2, 0.6])[:, None, None] * rng.standard_normal(refs.shape)
    loss = sdr.SingleSrcNegSDR("sisdr", zero_mean=True, reduction=None)

    def theirs(est):
        return -loss(torch.from_numpy(np.ascontiguousarray(est[:, 0])), torch.from_numpy(refs[:, 0])).numpy()

    np.testing.assert_allclose(metrics.si_sdr(refs, ests), theirs(ests), atol=1e-6, rtol=0)
    mix = np.broadcast_to(mixture, refs.shape)
    np.testing.assert_allclose(metrics.si_sdr_improvement(refs, ests, mixture), theirs(ests) - theirs(mix),
                               atol=1e-6, rtol=0)
    assert np.all(metrics.si_sdr_improvement(refs, ests, mixture) > 0)  # estimates beat the mixture


def test_si_sdr_is_scale_invariant():
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((1, 1, 4000))
    est = ref + 0.5 * rng.standard_normal(ref.shape)
    np.testing.assert_allclose(metrics.si_sdr(ref, 7.0 * est), metrics.si_sdr(ref, est), atol=1e-9)


# --------------------------------------------------------------------------- PESQ


@pytest.mark.parametrize("mode,rate", [("wb", 16000), ("nb", 8000)])
def test_pesq_at_its_own_rate_is_the_package(mode, rate):
    pesq = pytest.importorskip("pesq")
    clean = speech_like(rate)
    degraded = noisy(clean, 20.0)  # PESQ finds no utterance in a reference buried in noise
    ours = metrics.pesq_score(clean, degraded, rate, mode)
    assert ours == pesq.pesq(rate, clean, degraded, mode)
    # clean vs degraded order: PESQ is not symmetric, and swapping must show.
    assert ours != pesq.pesq(rate, degraded, clean, mode)
    assert metrics.pesq_score(clean, clean, rate, mode) > ours


def test_pesq_resamples_and_mixes_down():
    pesq = pytest.importorskip("pesq")
    signal = pytest.importorskip("scipy.signal")
    clean48 = speech_like(48000, seed=2)
    degraded48 = noisy(clean48, 20.0, seed=3)
    for mode, rate in (("wb", 16000), ("nb", 8000)):
        # An independent resampler (scipy's polyphase) for the expected value.
        ref = signal.resample_poly(clean48, rate, 48000)
        deg = signal.resample_poly(degraded48, rate, 48000)
        expected = pesq.pesq(rate, ref, deg, mode)
        assert metrics.pesq_score(clean48, degraded48, 48000, mode) == pytest.approx(expected, abs=0.1)
    # [C, T]: the channels are averaged before scoring.
    stereo_clean = np.stack([clean48, clean48])
    stereo_deg = np.stack([degraded48 + 0.01, degraded48 - 0.01])
    assert metrics.pesq_score(stereo_clean, stereo_deg, 48000) == metrics.pesq_score(clean48, degraded48, 48000)


def test_pesq_of_silence_is_nan():
    pytest.importorskip("pesq")
    silence = np.zeros(16000)
    assert np.isnan(metrics.pesq_score(silence, silence, 16000))


# --------------------------------------------------------------------------- STOI


@pytest.mark.parametrize("rate", [16000, 44100])
def test_stoi_and_estoi_are_pystoi(rate):
    pystoi = pytest.importorskip("pystoi")
    clean = speech_like(rate, seed=6)
    degraded = noisy(clean, 0.0, seed=7)
    for extended in (False, True):
        ours = metrics.stoi_score(clean, degraded, rate, extended=extended)
        # (the last bits of pystoi's own result vary between calls: BLAS summation order)
        assert ours == pytest.approx(pystoi.stoi(clean, degraded, rate, extended=extended), rel=1e-9)
        assert ours != pytest.approx(pystoi.stoi(degraded, clean, rate, extended=extended), rel=1e-6)
    assert metrics.stoi_score(clean, degraded, rate) != metrics.stoi_score(clean, degraded, rate, extended=True)
    assert metrics.stoi_score(clean, clean, rate) == pytest.approx(1.0, abs=1e-6)


def test_stoi_too_short_is_nan():
    pytest.importorskip("pystoi")
    short = speech_like(16000, seconds=0.2)
    assert np.isnan(metrics.stoi_score(short, short, 16000))


# --------------------------------------------------------------------------- missing extra


@pytest.mark.parametrize("module,call", [
    ("pesq", lambda x: metrics.pesq_score(x, x, 16000)),
    ("pystoi", lambda x: metrics.stoi_score(x, x, 16000)),
])
def test_missing_package_is_a_usage_error_with_the_pip_hint(monkeypatch, module, call):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(UsageError) as info:
        call(speech_like(16000, seconds=1.0))
    assert module in info.value.message
    assert "pip install" in info.value.hint and "unmixcli[speech]" in info.value.hint


def test_length_mismatch_is_refused():
    with pytest.raises(ValueError, match="lengths differ"):
        metrics.stoi_score(np.zeros(100), np.zeros(90), 16000)
