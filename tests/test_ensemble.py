"""Ensemble algorithms (issue 19): parity with MSST's and audio-separator's own functions.

Oracles, run side by side on the same random stems:

* MSST: `msst._ensemble.average_waveforms` (msst 0.1.0).
* audio-separator: `audio_separator.separator.ensembler.Ensembler` (0.47.1). The
  `audio_separator.separator` package's `__init__` imports the whole Separator
  (onnxruntime, model code); the module under test only needs `uvr_lib_v5.spec_utils`, so
  that package is replaced by an empty stand-in while it is imported (see `as_module`),
  then removed again.

Parity runs in float64, where the references and we agree to ~1e-11 of peak: in float32
the inverse STFT divides the last samples (past the last full hop) by a squared window
that falls to ~5e-12, so rounding there is amplified alike on both sides, and a magnitude
tie can flip which member min/max picks. One float32 test keeps away from that tail.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from unmixcli import ensemble
from unmixcli.ensemble import ALGORITHMS, SPEC_ALGORITHMS, WEIGHTED_ALGORITHMS, StreamingEnsemble, combine
from unmixcli.errors import UsageError

TOL = 1e-5          # of the reference's peak (the brief's bound); measured <= 1e-11 in float64
STREAM_TOL = 1e-6   # streamed vs whole track, of peak
HOP = ensemble.HOP_LENGTH

MSST_ALGORITHMS = [a for a in ALGORITHMS if not a.startswith("uvr_")]
# T: whole hops; a tail of 1023 samples (worst conditioned); short of one frame; odd.
LENGTHS = [5 * HOP, 5 * HOP + 1023, 700, 3 * HOP + 333]


def _stems(m, t, c=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(c, t, generator=g, dtype=dtype) * (0.5 + i) for i in range(m)]


def _weights(algorithm, m):
    return [0.5 + 0.75 * i for i in range(m)] if algorithm in WEIGHTED_ALGORITHMS else None


def _rel(ours, ref):
    ours = ours.numpy() if isinstance(ours, torch.Tensor) else ours
    assert ours.shape == ref.shape
    peak = float(np.abs(ref).max())
    return float(np.abs(ours - ref).max()) / peak


# ----------------------------------------------------------------------------
# The oracles
# ----------------------------------------------------------------------------


class _NumpyOgridAsList:
    """numpy, except that `ogrid[...]` returns a list.

    MSST's `absmax` (its max_fft) calls `.insert` on `np.ogrid[...]`, which numpy >= 2
    returns as a tuple; everything else is numpy itself.
    """

    class _Ogrid:
        def __getitem__(self, key):
            return list(np.ogrid[key])

    ogrid = _Ogrid()

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.fixture
def msst_average(monkeypatch):
    mod = importlib.import_module("msst._ensemble")  # a hard import: CI must not skip the oracle
    monkeypatch.setattr(mod, "np", _NumpyOgridAsList())

    def run(stems, algorithm, weights=None):
        arr = np.stack([s.numpy() for s in stems])                 # [M, C, T]
        w = np.ones(len(stems)) if weights is None else np.array(weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                         # librosa: n_fft > length
            return mod.average_waveforms(arr, w, algorithm)
    return run


@pytest.fixture(scope="module")
def as_module():
    """audio_separator.separator.ensembler, imported without its packages' heavy __init__s."""
    name = "audio_separator.separator.ensembler"
    if "audio_separator.separator" in sys.modules:
        return importlib.import_module(name)
    root = importlib.import_module("audio_separator")          # its __init__ is empty
    before = set(sys.modules)
    stand_in = types.ModuleType("audio_separator.separator")
    stand_in.__path__ = [str(Path(list(root.__path__)[0]) / "separator")]
    sys.modules[stand_in.__name__] = stand_in
    try:
        return importlib.import_module(name)
    finally:
        # Leave no trace: a later real `import audio_separator.separator` starts afresh.
        for key in set(sys.modules) - before:
            if key.startswith("audio_separator.separator"):
                del sys.modules[key]
        if getattr(root, "separator", None) is stand_in:
            del root.separator


@pytest.fixture
def as_ensemble(as_module):
    def run(stems, algorithm, weights=None):
        ens = as_module.Ensembler(logging.getLogger("audio-separator-oracle"), algorithm, weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ens.ensemble([s.numpy() for s in stems])
    return run


# ----------------------------------------------------------------------------
# Whole-track parity
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("algorithm", MSST_ALGORITHMS)
def test_matches_msst(algorithm, m, t, msst_average):
    stems = _stems(m, t, seed=m * 100 + t)
    w = _weights(algorithm, m)
    ref = msst_average(stems, algorithm, w)
    assert _rel(combine(algorithm, stems, w), ref) <= TOL


@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_matches_audio_separator(algorithm, m, t, as_ensemble):
    stems = _stems(m, t, seed=m * 100 + t + 1)
    w = _weights(algorithm, m)
    ref = as_ensemble(stems, algorithm, w)
    ours = combine(algorithm, stems, w, complex_median="componentwise")
    assert ours.shape == (2, t)
    if algorithm.startswith("uvr_"):
        # Its inverse STFT runs without a length: only the whole hops come back.
        assert ref.shape == (2, HOP * (t // HOP))
        ours = ours[:, : ref.shape[1]]
        if ref.size == 0:
            return
    assert _rel(ours, ref) <= TOL


@pytest.mark.parametrize("algorithm", MSST_ALGORITHMS)
def test_float32_matches_msst(algorithm, msst_average):
    # T % hop small: the inverse STFT's last samples are well conditioned.
    stems = _stems(3, 6 * HOP + 200, seed=7, dtype=torch.float32)
    w = _weights(algorithm, 3)
    ours = combine(algorithm, stems, w)
    assert ours.dtype == torch.float32
    assert _rel(ours, msst_average(stems, algorithm, w)) <= TOL


def test_median_fft_follows_msst_by_default_and_audio_separator_on_request(msst_average, as_ensemble):
    stems = _stems(3, 4 * HOP + 10, seed=11)
    lexi = combine("median_fft", stems)
    comp = combine("median_fft", stems, complex_median="componentwise")
    assert _rel(lexi, msst_average(stems, "median_fft")) <= TOL
    assert _rel(comp, as_ensemble(stems, "median_fft")) <= TOL
    # The two definitions really differ (else the parameter would be pointless).
    assert float((lexi - comp).abs().max()) > 1e-2 * float(comp.abs().max())


@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_complex_median_orders_like_numpy_on_ties(m):
    # Real parts tie often here, so the imaginary part decides the order (numpy's rule);
    # random STFT bins never tie, which the parity tests cannot show.
    g = np.random.default_rng(m)
    z = g.integers(-2, 3, (m, 400)) + 1j * g.integers(-2, 3, (m, 400))
    ours = ensemble._lexicographic_median(torch.from_numpy(z))
    np.testing.assert_array_equal(ours.numpy(), np.median(z, axis=0))


@pytest.mark.parametrize("m", [2, 4])
def test_median_wave_even_count_averages_the_two_middle_values(m):
    stems = _stems(m, 50, seed=3)
    x = torch.stack(stems).sort(dim=0).values
    want = (x[m // 2 - 1] + x[m // 2]) / 2
    assert torch.equal(combine("median_wave", stems), want)


def test_magnitude_ties_first_member_wins_but_uvr_takes_the_last(as_ensemble, msst_average):
    # a and -a tie in magnitude in every sample and every bin (the STFT negates exactly).
    a = _stems(1, 4 * HOP + 5, seed=5)[0]
    stems = [a, -a]
    for algorithm in ("min_wave", "max_wave"):
        assert torch.equal(combine(algorithm, stems), a)
    for algorithm in ("min_fft", "max_fft"):
        ours = combine(algorithm, stems)
        assert _rel(ours, a.numpy()) <= TOL
        assert _rel(ours, msst_average(stems, algorithm)) <= TOL
    for algorithm in ("uvr_min_spec", "uvr_max_spec"):
        ours = combine(algorithm, stems)
        assert _rel(ours, -a.numpy()) <= TOL
        ref = as_ensemble(stems, algorithm)
        assert _rel(ours[:, : ref.shape[1]], ref) <= TOL


def test_min_and_max_keep_the_sign():
    x = torch.tensor([[1.0, -5.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([[-3.0, 4.0, -0.5]], dtype=torch.float64)
    assert combine("max_wave", [x, y]).tolist() == [[-3.0, -5.0, 2.0]]
    assert combine("min_wave", [x, y]).tolist() == [[1.0, 4.0, -0.5]]


# ----------------------------------------------------------------------------
# Weights, shapes, edge cases
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", WEIGHTED_ALGORITHMS)
def test_weights_are_a_normalised_weighted_mean(algorithm, msst_average, as_ensemble):
    stems = _stems(3, 3 * HOP + 17, seed=9)
    w = [2.0, 0.0, 1.0]
    want = (2 * stems[0] + stems[2]) / 3
    ours = combine(algorithm, stems, w)
    assert _rel(ours, want.numpy()) <= TOL
    assert _rel(ours, msst_average(stems, algorithm, w)) <= TOL
    assert _rel(ours, as_ensemble(stems, algorithm, w)) <= TOL
    # Scaling all weights changes nothing.
    assert _rel(combine(algorithm, stems, [20.0, 0.0, 10.0]), ours.numpy()) <= 1e-12


@pytest.mark.parametrize("algorithm", ["avg_wave", "max_wave", "avg_fft", "median_fft", "uvr_max_spec"])
def test_unequal_lengths_are_zero_padded_like_audio_separator(algorithm, as_ensemble):
    g = torch.Generator().manual_seed(2)
    stems = [torch.randn(2, n, generator=g, dtype=torch.float64) for n in (3 * HOP + 100, 3 * HOP + 900, 2 * HOP)]
    ours = combine(algorithm, stems, complex_median="componentwise")
    assert ours.shape == (2, 3 * HOP + 900)
    ref = as_ensemble(stems, algorithm)
    assert _rel(ours[:, : ref.shape[1]], ref) <= TOL


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_one_member_is_returned_as_is(algorithm, msst_average):
    (s,) = _stems(1, 2 * HOP + 3, seed=4)
    out = combine(algorithm, [s])
    assert torch.equal(out, s) and out is not s
    if not algorithm.startswith("uvr_"):
        # MSST round-trips it through the STFT: the same up to rounding.
        assert _rel(out, msst_average([s], algorithm)) <= TOL


@pytest.mark.parametrize("algorithm", ["avg_fft", "median_fft", "max_fft", "uvr_min_spec", "min_wave"])
def test_any_channel_count(algorithm, as_ensemble):
    mono = _stems(3, 3 * HOP + 50, c=1, seed=6)
    ours = combine(algorithm, mono, complex_median="componentwise")
    ref = as_ensemble(mono, algorithm)                 # duplicates mono to stereo and back
    assert ref.shape[0] == 1
    assert _rel(ours[:, : ref.shape[1]], ref) <= TOL
    # Channels are independent: three channels == each channel on its own.
    multi = _stems(3, 3 * HOP + 50, c=3, seed=8)
    whole = combine(algorithm, multi)
    for ch in range(3):
        alone = combine(algorithm, [s[ch: ch + 1] for s in multi])
        assert _rel(whole[ch: ch + 1], alone.numpy()) <= 1e-12


def test_stft_parameters_match_librosa(msst_average):
    # MSST's own stft/istft helpers, with other sizes than 2048/1024.
    mod = importlib.import_module("msst._ensemble")  # a hard import: CI must not skip the oracle
    stems = _stems(3, 301, seed=12)
    for n_fft, hop in [(16, 4), (16, 5), (16, 8), (16, 12), (64, 16)]:
        specs = [mod.stft(s.numpy(), n_fft, hop) for s in stems]
        ref = mod.istft(sum(w * sp for w, sp in zip([1.0, 2.0, 3.0], specs)) / 6, hop, 301)
        ours = combine("avg_fft", stems, [1.0, 2.0, 3.0], n_fft=n_fft, hop_length=hop)
        assert _rel(ours, ref) <= TOL, (n_fft, hop)


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a not in WEIGHTED_ALGORITHMS])
def test_weights_for_an_algorithm_without_weights_is_a_usage_error(algorithm):
    stems = _stems(2, 100)
    with pytest.raises(UsageError, match="takes no weights"):
        combine(algorithm, stems, [1.0, 1.0])
    with pytest.raises(UsageError, match="takes no weights"):
        StreamingEnsemble(algorithm, 2, [1.0, 2.0])


@pytest.mark.parametrize("weights, message", [
    ([1.0], "1 ensemble weights for 2 models"),
    ([1.0, 2.0, 3.0], "3 ensemble weights for 2 models"),
    ([1.0, float("nan")], "finite"),
    ([1.0, float("inf")], "finite"),
    ([1.0, -1.0], "sum to zero"),
    (["a", 1.0], "numbers"),
])
def test_bad_weights_are_usage_errors(weights, message):
    with pytest.raises(UsageError, match=message):
        combine("avg_wave", _stems(2, 100), weights)


def test_bad_calls_are_usage_errors():
    stems = _stems(2, 100)
    with pytest.raises(UsageError, match="unknown ensemble algorithm 'mean'"):
        combine("mean", stems)
    with pytest.raises(UsageError, match="at least one stem"):
        combine("avg_wave", [])
    with pytest.raises(UsageError, match="channel counts"):
        combine("avg_fft", [stems[0], stems[1][:1]])
    with pytest.raises(UsageError, match=r"\[channels, samples\]"):
        combine("avg_wave", [stems[0], stems[1][0]])
    with pytest.raises(UsageError, match="floating point"):
        combine("avg_wave", [stems[0], stems[1].to(torch.int16)])
    with pytest.raises(UsageError, match="unknown complex median"):
        combine("median_fft", stems, complex_median="magnitude")
    with pytest.raises(UsageError, match="n_fft"):
        combine("avg_fft", stems, n_fft=1023)
    with pytest.raises(UsageError, match="hop length"):
        combine("avg_fft", stems, hop_length=4096)
    with pytest.raises(UsageError, match="at least one model"):
        StreamingEnsemble("avg_fft", 0)


def test_stream_misuse_is_a_usage_error():
    a, b = _stems(2, 100)
    st = StreamingEnsemble("avg_fft", 2)
    with pytest.raises(UsageError, match="1 blocks given to an ensemble of 2"):
        st.push([a])
    with pytest.raises(UsageError, match="aligned"):
        st.push([a, b[:, :50]])
    st.push([a, b])
    with pytest.raises(UsageError, match="has 1 channels, the stream has 2"):
        st.push([a[:1], b[:1]])
    st.finish()
    with pytest.raises(UsageError, match="already finished"):
        st.push([a, b])
    with pytest.raises(UsageError, match="already finished"):
        st.finish()


# ----------------------------------------------------------------------------
# Streaming == whole track
# ----------------------------------------------------------------------------


def _stream(st, stems, sizes):
    outs, pos, t = [], 0, stems[0].shape[1]
    for n in sizes:
        if pos >= t and outs:   # at least one push, so the stream knows C even when T == 0
            break
        out = st.push([s[:, pos: pos + n] for s in stems])
        pos += min(n, t - pos)
        assert out.shape[0] == stems[0].shape[0]
        # Never more than latency samples held back.
        outs.append(out)
        assert sum(o.shape[1] for o in outs) >= pos - st.latency
    assert pos == t
    outs.append(st.finish())
    return torch.cat(outs, dim=1)


def _random_sizes(seed, t, high):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, high, (t + 1,), generator=g).tolist()   # zeros included
    return sizes + [t]


@pytest.mark.parametrize("t", [0, 1, 1023, 2048, 5 * HOP + 1023, 9 * HOP + 77])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_streamed_in_random_blocks_equals_whole_track(algorithm, t):
    stems = _stems(3, t, seed=t + 13)
    w = _weights(algorithm, 3)
    whole = combine(algorithm, stems, w)
    for seed, high in [(1, 700), (2, 3000)]:
        st = StreamingEnsemble(algorithm, 3, w)
        got = _stream(st, stems, _random_sizes(seed, t, high))
        assert got.shape == whole.shape
        if t:
            assert float((got - whole).abs().max()) <= STREAM_TOL * float(whole.abs().max())


@pytest.mark.parametrize("algorithm", ["avg_fft", "avg_wave"])
def test_streamed_float32_equals_whole_track(algorithm):
    stems = _stems(3, 20 * HOP + 500, seed=21, dtype=torch.float32)
    whole = combine(algorithm, stems)
    got = _stream(StreamingEnsemble(algorithm, 3), stems, _random_sizes(4, 20 * HOP, 5000))
    assert got.dtype == torch.float32
    assert float((got - whole).abs().max()) <= STREAM_TOL * float(whole.abs().max())


@pytest.mark.parametrize("n_fft, hop", [(16, 4), (16, 5), (16, 8), (16, 12), (16, 16)])
@pytest.mark.parametrize("algorithm", ["avg_fft", "median_fft", "uvr_max_spec"])
def test_streaming_with_other_stft_sizes(algorithm, n_fft, hop):
    stems = _stems(3, 157, seed=hop)
    whole = combine(algorithm, stems, n_fft=n_fft, hop_length=hop)
    st = StreamingEnsemble(algorithm, 3, n_fft=n_fft, hop_length=hop)
    got = _stream(st, stems, _random_sizes(hop, 157, 9))
    assert float((got - whole).abs().max()) <= STREAM_TOL * float(whole.abs().max())


@pytest.mark.parametrize("algorithm", ["max_wave", "avg_fft"])
def test_stream_latency_and_bounded_buffers(algorithm):
    stems = _stems(2, 40 * HOP, seed=1, dtype=torch.float32)
    st = StreamingEnsemble(algorithm, 2)
    assert st.latency == (0 if algorithm in ensemble.WAVE_ALGORITHMS else ensemble.N_FFT - 1)
    emitted = 0
    for i in range(0, 40 * HOP, 1000):
        out = st.push([s[:, i: i + 1000] for s in stems])
        emitted += out.shape[1]
        pushed = min(i + 1000, 40 * HOP)
        assert pushed - st.latency <= emitted <= pushed
        if algorithm in SPEC_ALGORITHMS:
            # Held state stays about one frame plus one block, whatever has been pushed.
            assert st._inp.shape[2] <= ensemble.N_FFT + 1000
            assert st._acc.shape[1] <= ensemble.N_FFT + 1000
    assert emitted + st.finish().shape[1] == 40 * HOP


def test_single_member_stream_passes_blocks_through():
    (s,) = _stems(1, 5000, seed=2)
    st = StreamingEnsemble("median_fft", 1)
    assert torch.equal(st.push([s[:, :3000]]), s[:, :3000])
    assert torch.equal(st.push([s[:, 3000:]]), s[:, 3000:])
    assert st.finish().shape == (2, 0)
