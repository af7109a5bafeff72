"""Demucs v2 (`Demucs`), Hybrid Demucs v3 (`HDemucs`) and the STFT helpers.

Parity with the reference (`demucs==4.1.0`, test-only oracle): the reference model is
built with a fixed seed, its state dict is loaded strictly into ours, and both run on
the same input. Parameter names, shapes and order must be identical too, because
diffq-packed checkpoints are positional.
"""

import math
import re

import pytest
import torch

pytest.importorskip("demucs")
from demucs import demucs as ref_demucs  # noqa: E402
from demucs import hdemucs as ref_hdemucs  # noqa: E402
from demucs import spec as ref_spec  # noqa: E402

from unmixcli.models import demucs as our_demucs  # noqa: E402
from unmixcli.models import hdemucs as our_hdemucs  # noqa: E402
from unmixcli.models.spec import ispectro, spectro  # noqa: E402

SOURCES = ["drums", "bass", "other", "vocals"]
REL_TOL = 1e-5


def _param_layout(model):
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def _assert_parity(ref_cls, our_cls, kwargs, length, channels=2, batch=1, seed=0):
    """Build both, copy the weights, compare layout and outputs; return max rel diff."""
    torch.manual_seed(seed)
    ref = ref_cls(SOURCES, audio_channels=channels, **kwargs).eval()
    ours = our_cls(SOURCES, audio_channels=channels, **kwargs).eval()
    assert _param_layout(ours) == _param_layout(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())  # buffers too
    ours.load_state_dict(ref.state_dict(), strict=True)

    mix = torch.randn(batch, channels, length, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        expected = ref(mix)
        got = ours(mix)
    assert got.shape == expected.shape == (batch, len(SOURCES), channels, length)
    rel = ((got - expected).abs().max() / expected.abs().max()).item()
    assert rel <= REL_TOL, rel
    for attr in ("sources", "samplerate", "audio_channels", "segment"):
        assert getattr(ours, attr) == getattr(ref, attr)
    return rel


# ---------------------------------------------------------------------------- STFT


@pytest.mark.parametrize("n_fft, hop, pad", [(4096, 1024, 0), (256, 64, 0), (512, 100, 1)])
def test_spectro_equals_reference_and_round_trips(n_fft, hop, pad):
    x = torch.randn(2, 3, 9000, generator=torch.Generator().manual_seed(0))
    z = spectro(x, n_fft, hop, pad)
    assert z.shape == (2, 3, n_fft * (1 + pad) // 2 + 1, 9000 // hop + 1)
    assert torch.equal(z, ref_spec.spectro(x, n_fft, hop, pad))
    back = ispectro(z, hop, length=x.shape[-1], pad=pad)
    assert back.shape == x.shape
    assert torch.allclose(back, ref_spec.ispectro(z, hop, length=x.shape[-1], pad=pad))
    assert (back - x).abs().max() < 1e-5 * x.abs().max()


def test_spectro_of_a_tone_peaks_at_its_bin():
    sr, n_fft = 8000, 512
    t = torch.arange(sr) / sr
    bin_idx = 40
    tone = torch.sin(2 * math.pi * bin_idx * sr / n_fft * t)
    mag = spectro(tone, n_fft).abs()  # [F, N]
    assert mag[:, 5:-5].argmax(dim=0).eq(bin_idx).all()


# ---------------------------------------------------------------------------- layers


@pytest.mark.parametrize("length, paddings, mode", [
    (10, (3, 5), "reflect"), (3, (6, 2), "reflect"), (2, (1, 7), "reflect"),
    (1, (4, 4), "reflect"), (5, (2, 3), "constant"),
])
def test_pad1d_matches_reference(length, paddings, mode):
    x = torch.randn(2, length)
    out = our_hdemucs.pad1d(x, paddings, mode=mode)
    assert out.shape[-1] == length + sum(paddings)
    assert torch.equal(out, ref_hdemucs.pad1d(x, paddings, mode=mode))
    assert torch.equal(out[..., paddings[0]:paddings[0] + length], x)


def test_resample_matches_julius_and_keeps_a_low_tone():
    julius = pytest.importorskip("julius")
    x = torch.randn(2, 1001, generator=torch.Generator().manual_seed(3))
    for old, new in [(1, 2), (2, 1), (4, 5)]:
        ours = our_demucs.resample_frac(x, old, new)
        assert torch.allclose(ours, julius.resample_frac(x, old, new), atol=1e-6)
    # A band-limited tone survives an up/down round trip (away from the edges).
    t = torch.arange(4000) / 4000
    tone = torch.sin(2 * math.pi * 200 * t)
    back = our_demucs.resample_frac(our_demucs.resample_frac(tone, 1, 2), 2, 1)
    assert (back - tone)[200:-200].abs().max() < 1e-3


def test_blstm_windows_long_inputs_like_the_reference():
    torch.manual_seed(0)
    ref = ref_demucs.BLSTM(8, layers=2, max_steps=40, skip=True)
    ours = our_demucs.BLSTM(8, layers=2, max_steps=40, skip=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    for length in (30, 40, 97, 161):  # shorter than a window, exact, ragged ends
        x = torch.randn(2, 8, length)
        with torch.no_grad():
            assert torch.allclose(ours(x), ref(x), atol=1e-6)


def test_local_state_with_frequency_kernels_matches_reference():
    torch.manual_seed(0)
    ref = ref_demucs.LocalState(16, heads=4, nfreqs=3, ndecay=2)
    ours = our_demucs.LocalState(16, heads=4, nfreqs=3, ndecay=2)
    assert _param_layout(ours) == _param_layout(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 16, 33)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)


def test_scaled_embedding_scales_and_smooths():
    torch.manual_seed(0)
    emb = our_hdemucs.ScaledEmbedding(64, 8, scale=10., smooth=True)
    idx = torch.arange(64)
    assert torch.allclose(emb(idx), emb.weight)
    # Smoothed init: neighbouring rows are much closer than unrelated random rows.
    w = emb.weight.detach()
    assert (w[1:] - w[:-1]).norm(dim=1).mean() < 0.5 * (w[1:] - w[:-1].roll(7, 0)).norm(dim=1).mean()


# ---------------------------------------------------------------------------- Demucs v2


@pytest.mark.parametrize("kwargs, length", [
    # DConv with attention and windowed LSTM at the outer layers (T > 200 steps there).
    (dict(channels=8, depth=4, dconv_attn=1, dconv_lstm=1), 5000),
    # ReLU/no GLU, DConv in both, central BLSTM, no input normalisation, mono.
    (dict(channels=8, depth=4, dconv_attn=2, dconv_lstm=3, normalize=False, glu=False,
          gelu=False, lstm_layers=2, dconv_mode=3), 3001),
    # No resampling, no rewrite, no DConv, odd kernel/stride.
    (dict(channels=6, depth=3, resample=False, rewrite=False, dconv_mode=0,
          kernel_size=5, stride=3, context=0, norm_starts=1, norm_groups=2), 2222),
])
def test_demucs_tiny_parity(kwargs, length):
    channels = 1 if kwargs.get("normalize") is False else 2
    _assert_parity(ref_demucs.Demucs, our_demucs.Demucs, kwargs, length,
                   channels=channels, batch=2)


def test_demucs_valid_length_matches_reference():
    torch.manual_seed(0)
    for kwargs in (dict(channels=4, depth=6), dict(channels=4, depth=3, resample=False,
                                                   kernel_size=5, stride=3)):
        ref = ref_demucs.Demucs(SOURCES, **kwargs)
        ours = our_demucs.Demucs(SOURCES, **kwargs)
        for n in (1, 100, 44100, 44101, 123457):
            assert ours.valid_length(n) == ref.valid_length(n) >= n


def test_demucs_accepts_legacy_state_keys():
    # The first Demucs generation had no norm slot: its 1x1 rewrite conv (encoder) and
    # transposed conv (decoder) sat at Sequential index 2 instead of 3.
    kwargs = dict(channels=4, depth=2, dconv_mode=0, norm_starts=9)
    torch.manual_seed(0)
    model = our_demucs.Demucs(SOURCES, **kwargs)
    state = model.state_dict()
    legacy = {re.sub(r"^(encoder|decoder)\.(\d)\.3\.", r"\1.\2.2.", k): v
              for k, v in state.items()}
    assert legacy.keys() != state.keys()
    fresh = our_demucs.Demucs(SOURCES, **kwargs)
    fresh.load_state_dict(legacy, strict=True)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key])


@pytest.mark.slow
def test_demucs_released_size_parity():
    # The time-domain models of the `mdx` / `repro_mdx_a` bags: demucs' `conf/config.yaml`
    # defaults (64 channels, depth 6, resample, DConv with LSTM/attention at layers >= 4)
    # with input normalisation on.
    rel = _assert_parity(ref_demucs.Demucs, our_demucs.Demucs,
                         dict(channels=64, normalize=True, segment=44), 44100)
    print(f"demucs mdx-size max rel diff {rel:.2e}")


# ---------------------------------------------------------------------------- HDemucs


@pytest.mark.parametrize("kwargs, length", [
    # nfft must be a power of 4 so the time branch meets the frequency branch.
    (dict(channels=8, depth=4, nfft=256, dconv_attn=1, dconv_lstm=2), 6000),
    # Windowed BLSTM in the time branch (T/4 > 200 steps) and a ragged length.
    (dict(channels=4, depth=4, nfft=256, dconv_lstm=0, dconv_attn=3), 5001),
    # Multi-band wrapping (encoder and decoder), DConv both sides, old padding.
    (dict(channels=8, depth=6, nfft=1024, multi_freqs=[0.25, 0.5], dconv_mode=3,
          hybrid_old=True), 6000),
    # Separate time-branch width, no frequency embedding, encoder context, no rewrite.
    (dict(channels=8, channels_time=6, depth=5, nfft=256, freq_emb=0, context_enc=1,
          rewrite=False, norm_starts=2, norm_groups=2), 4000),
    # Magnitude output with the mixture phase.
    (dict(channels=8, depth=4, nfft=256, cac=False, wiener_iters=-1, end_iters=-1), 6000),
    # Wiener filtering (EM) with a residual source.
    (dict(channels=4, depth=4, nfft=256, cac=False, wiener_iters=2, end_iters=2,
          wiener_residual=True), 2000),
    # Spectrogram-only model, Wiener with 0 iterations.
    (dict(channels=8, depth=4, nfft=256, cac=False, hybrid=False), 1500),
    # Spectrogram-only model with complex-as-channels (no frames dropped at the edges).
    (dict(channels=8, depth=4, nfft=256, hybrid=False), 1500),
])
def test_hdemucs_tiny_parity(kwargs, length):
    batch = 1 if kwargs.get("cac") is False else 2  # the reference's Wiener is slow
    _assert_parity(ref_hdemucs.HDemucs, our_hdemucs.HDemucs, kwargs, length, batch=batch)


@pytest.mark.parametrize("niters, residual", [(0, False), (1, True), (3, False)])
def test_hdemucs_wiener_matches_reference_across_windows(niters, residual):
    # More than one 300-frame window, on a few bins only to keep the reference fast.
    kwargs = dict(channels=4, depth=4, nfft=256, cac=False, wiener_iters=niters,
                  end_iters=niters, wiener_residual=residual)
    torch.manual_seed(0)
    ref = ref_hdemucs.HDemucs(SOURCES, **kwargs).eval()
    ours = our_hdemucs.HDemucs(SOURCES, **kwargs).eval()
    gen = torch.Generator().manual_seed(5)
    mag = torch.rand(2, len(SOURCES), 2, 6, 650, generator=gen)  # [B, S, C, F, N]
    mix = torch.complex(torch.randn(2, 2, 6, 650, generator=gen),
                        torch.randn(2, 2, 6, 650, generator=gen))
    mix[..., 0, 3] = 0  # a silent bin: phase defined as 0
    # Each side gets its own copy: the reference's atan2 patches the silent bins of its
    # input in place, which would hand ours an input without any.
    expected = ref._wiener(mag.clone(), mix.clone(), niters)
    got = ours._wiener(mag.clone(), mix.clone(), niters)
    assert got.shape == expected.shape == mag.shape and got.dtype == mix.dtype
    assert (got - expected).abs().max() <= REL_TOL * expected.abs().max()


@pytest.mark.parametrize("kwargs", [
    dict(wiener_iters=1, end_iters=1),
    dict(wiener_iters=2, end_iters=2, wiener_residual=True),
    dict(wiener_iters=1, end_iters=1, hybrid=False),
])
def test_hdemucs_wiener_through_digital_silence_matches_reference(kwargs):
    # Frames inside a silent stretch are exactly-zero bins, which the reference's Wiener
    # filter treats specially (see `_wiener`); the whole model must follow it there.
    kwargs = dict(channels=4, depth=4, nfft=256, cac=False, **kwargs)
    torch.manual_seed(0)
    ref = ref_hdemucs.HDemucs(SOURCES, **kwargs).eval()
    ours = our_hdemucs.HDemucs(SOURCES, **kwargs).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    mix = torch.randn(1, 2, 3000, generator=torch.Generator().manual_seed(7))
    mix[..., 1000:2200] = 0
    with torch.no_grad():
        expected = ref(mix.clone())
        got = ours(mix.clone())
    assert (got - expected).abs().max() <= REL_TOL * expected.abs().max()


def test_hdemucs_rejects_inconsistent_hybrid_settings():
    with pytest.raises(ValueError):
        our_hdemucs.HDemucs(SOURCES, hybrid=False, hybrid_old=True, nfft=256, depth=4)
    with pytest.raises(ValueError):
        our_hdemucs.HDemucs(SOURCES, wiener_iters=1, end_iters=0, nfft=256, depth=4)


@pytest.mark.slow
@pytest.mark.parametrize("hybrid_old", [False, True])
def test_hdemucs_released_size_parity(hybrid_old):
    # hdemucs_mmi / mdx_extra: demucs' `conf/config.yaml` hdemucs defaults (48 channels,
    # nfft 4096, depth 6, cac, dconv_init 1e-3, no multi-band). Some MDX-era models were
    # trained with the old (zero) padding: cover both.
    rel = _assert_parity(ref_hdemucs.HDemucs, our_hdemucs.HDemucs,
                         dict(channels=48, dconv_init=1e-3, multi_freqs=[], multi_freqs_depth=3,
                              hybrid_old=hybrid_old, segment=44), 44100)
    print(f"hdemucs hybrid_old={hybrid_old} max rel diff {rel:.2e}")
