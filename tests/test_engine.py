"""The engine: chunking, overlap-add, shifts, bags, streaming, batching, devices.

Parity tests run tiny random-weight reference Demucs models (test-only oracle)
as bag members and compare with `demucs.apply.apply_model` on the same mix.
"""

import copy
import random
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from unmixcli.engine import (
    WINDOWS,
    EngineOptions,
    mix_stats,
    resolve_device,
    separate_stream,
    separate_tensor,
    triangle_window,
)
from unmixcli import engine
from unmixcli.errors import DeviceError, UsageError
from unmixcli.models.bag import ModelBag

CPU = torch.device("cpu")
SR = 8000  # tiny models run at 8 kHz to keep the tests fast


# ----------------------------------------------------------------------------- fake models


class Identity(nn.Module):
    """Returns its input, times `gain`, as every stem; counts its calls and batch sizes.

    `pad` > 0 makes it ask for a longer input (`valid_length`, as Demucs v2 does),
    so the engine must give it context and trim the output back to the centre.
    """

    def __init__(self, sources=("a", "b", "c"), samplerate=100, segment=1.0, pad=0, gain=1.0):
        super().__init__()
        self.sources = list(sources)
        self.samplerate = samplerate
        self.audio_channels = 2
        self.segment = segment
        self.gain = gain
        self.calls = []
        self.lengths = []
        self.dummy = nn.Parameter(torch.zeros(1))  # so that .to(device) and device lookups work
        if pad:
            self.valid_length = lambda n: n + pad

    def forward(self, x):  # [B, C, T] -> [B, S, C, T]
        self.calls.append(x.shape[0])
        self.lengths.append(x.shape[-1])
        return self.gain * x[:, None].expand(-1, len(self.sources), -1, -1).clone()


def _noise(channels, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(channels, length, generator=g)


def _stack(out, stems):
    return torch.stack([out[s] for s in stems])


# ----------------------------------------------------------------------------- identity


@pytest.mark.parametrize("pad", [0, 37])
@pytest.mark.parametrize("length", [1, 99, 100, 175, 401])
def test_identity_model_returns_input(pad, length):
    """Edges, the partial last segments and context padding all line up sample for sample."""
    mix = _noise(2, length)
    bag = ModelBag.single(Identity(pad=pad), normalize=False)
    out = separate_tensor(bag, mix, None, EngineOptions(), CPU)
    assert set(out) == {"a", "b", "c"}
    for wav in out.values():
        assert wav.shape == mix.shape
        torch.testing.assert_close(wav, mix, atol=1e-6, rtol=0)


def test_identity_with_normalisation_and_fade_window():
    mix = 3 * _noise(2, 517) + 0.5
    bag = ModelBag.single(Identity(), normalize=True, window="fade")
    out = separate_tensor(bag, mix, ["b"], EngineOptions(overlap=0.5), CPU)
    assert list(out) == ["b"]
    torch.testing.assert_close(out["b"], mix, atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7])
def test_identity_every_batch_size(batch_size):
    model = Identity(pad=11)
    mix = _noise(2, 1003)
    bag = ModelBag.single(model, normalize=False)
    out = separate_tensor(bag, mix, None, EngineOptions(batch_size=batch_size), CPU)
    torch.testing.assert_close(out["a"], mix, atol=1e-6, rtol=0)
    assert max(model.calls) <= batch_size
    if batch_size > 1:
        assert max(model.calls) > 1  # segments really were batched


@pytest.mark.parametrize("window", ["triangle", "fade"])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("block", [1, 13, 100, 256, 5000])
def test_identity_every_stream_block_size(block, batch_size, window):
    mix = _noise(2, 1234)
    model = Identity(pad=5)
    bag = ModelBag.single(model, normalize=True, window=window)
    whole = separate_tensor(bag, mix, None, EngineOptions(), CPU)
    torch.testing.assert_close(whole["a"], mix, atol=1e-5, rtol=0)
    model.calls.clear()
    blocks = (mix[:, i:i + block].numpy() for i in range(0, mix.shape[1], block))
    pieces = list(separate_stream(bag, blocks, None, None, EngineOptions(batch_size=batch_size), CPU,
                                  stats=mix_stats(mix)))
    if batch_size > 1:
        assert model.calls[0] == batch_size  # streaming waits to fill a batch
    for stem in bag.sources:
        streamed = torch.cat([p[stem] for p in pieces], dim=1)
        assert torch.equal(streamed, whole[stem])


@pytest.mark.parametrize("block", [7, 90, 1000])
def test_stream_mixed_segments_with_shifts(block):
    """Members with different segment lengths and context needs, each with its own shifts."""
    members = [Identity(segment=1.0, pad=5, gain=1.0), Identity(segment=0.7, gain=2.0)]
    bag = ModelBag(members, [[1.0, 1.0, 0.0], [1.0, 3.0, 1.0]], normalize=True)
    mix = _noise(2, 777, seed=3)
    options = EngineOptions(shifts=2, seed=11, overlap=0.3)
    whole = separate_tensor(bag, mix, ["a", "b", "c"], options, CPU)
    mean, _ = mix_stats(mix)  # gains apply to the normalised mix, around its mean
    for stem, gain in (("a", 1.5), ("b", 7 / 4), ("c", 2.0)):
        torch.testing.assert_close(whole[stem], gain * (mix - mean) + mean, atol=1e-5, rtol=0)
    blocks = (mix[:, i:i + block] for i in range(0, mix.shape[1], block))
    pieces = list(separate_stream(bag, blocks, None, ["a", "b", "c"], options, CPU, stats=mix_stats(mix)))
    for stem in ("a", "b", "c"):
        assert torch.equal(torch.cat([p[stem] for p in pieces], dim=1), whole[stem])


def test_segment_and_stride_in_samples_truncate_like_the_reference():
    """apply_model uses int(rate * segment) and int((1 - overlap) * length): 0.35 s at 44.1 kHz
    is 15434.999... samples, so 15434, and the stride int(0.9 * 15434) = 13890.

    (Rounding instead, as MSST's chunk_size // num_overlap needs, belongs to the "fade" rule.)"""
    model = Identity(samplerate=44100, segment=1.0)
    mix = _noise(2, 44100)
    out = separate_tensor(ModelBag.single(model, normalize=False), mix, ["a"],
                          EngineOptions(segment=0.35, overlap=0.1), CPU)
    assert model.lengths[0] == int(44100 * 0.35) == 15434
    assert len(model.lengths) == len(range(0, 44100, int((1 - 0.1) * 15434)))
    torch.testing.assert_close(out["a"], mix, atol=1e-6, rtol=0)


def test_stream_output_does_not_lag_behind_input():
    """Finished audio comes out while the input is still arriving: bounded memory."""
    segment = 100
    mix = _noise(2, 50 * segment)
    bag = ModelBag.single(Identity(segment=1.0), normalize=False)
    consumed = [0]

    def blocks():
        for i in range(0, mix.shape[1], 30):
            consumed[0] = min(i + 30, mix.shape[1])
            yield mix[:, i:i + 30]

    emitted = 0
    lags = []
    for piece in separate_stream(bag, blocks(), None, ["a"], EngineOptions(shifts=1), CPU):
        emitted += piece["a"].shape[1]
        lags.append(consumed[0] - emitted)
    assert emitted == mix.shape[1]
    assert len(lags) > 20
    # a shift delays by up to 0.5 s (50 samples), plus one segment and a block in flight
    assert max(lags) <= 3 * segment


def test_stream_requires_stats_when_normalising():
    bag = ModelBag.single(Identity(), normalize=True)
    with pytest.raises(UsageError):
        list(separate_stream(bag, [np.zeros((2, 10), np.float32)], None, None, EngineOptions(), CPU))


# ----------------------------------------------------------------------------- bags


def test_bag_weights_skipping_and_requested_stems():
    members = [Identity(gain=1.0), Identity(gain=2.0), Identity(gain=4.0)]
    weights = [[1.0, 0.0, 0.0],
               [3.0, 1.0, 0.0],
               [0.0, 0.0, 1.0]]
    bag = ModelBag(members, weights, normalize=False)
    assert bag.members_for(["a", "b"]) == [0, 1]
    mix = _noise(2, 333)
    out = separate_tensor(bag, mix, ["b", "a"], EngineOptions(), CPU)
    assert list(out) == ["b", "a"]
    assert members[2].calls == []  # weight 0 for every requested stem: never run
    assert members[0].calls and members[1].calls
    # stem k = sum_i w_ik * out_ik / sum_i w_ik
    torch.testing.assert_close(out["a"], mix * (1 * 1 + 3 * 2) / 4, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["b"], mix * 2.0, atol=1e-5, rtol=0)


def test_unknown_stem_is_a_usage_error():
    bag = ModelBag.single(Identity(), normalize=False)
    with pytest.raises(UsageError):
        separate_tensor(bag, _noise(2, 10), ["vocals"], EngineOptions(), CPU)


# ----------------------------------------------------------------------------- progress, devices


def test_progress_reaches_total_and_never_goes_back():
    calls = []
    mix = _noise(2, 950)
    bag = ModelBag([Identity(), Identity(segment=0.7)], [[1, 1, 1], [1, 1, 1]], normalize=False)
    separate_tensor(bag, mix, None, EngineOptions(shifts=2), CPU,
                    progress=lambda done, total: calls.append((done, total)))
    assert len(calls) > 5
    assert calls[-1] == (950, 950)
    done = [d for d, _ in calls]
    assert done == sorted(done)


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type != "cuda"
        with pytest.raises(DeviceError):
            resolve_device("cuda")
    with pytest.raises(DeviceError):
        resolve_device("tpu-please")


class _OomWhenBatched(Identity):
    def forward(self, x):
        if x.shape[0] > 1 or x.device.type == "meta":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().forward(x)


def test_out_of_memory_retries_with_smaller_batches():
    model = _OomWhenBatched(pad=3)
    mix = _noise(2, 800)
    bag = ModelBag.single(model, normalize=False)
    out = separate_tensor(bag, mix, None, EngineOptions(batch_size=4), CPU)
    torch.testing.assert_close(out["c"], mix, atol=1e-6, rtol=0)


def test_out_of_memory_on_a_device_falls_back_to_cpu_with_a_warning():
    model = _OomWhenBatched()
    del model.dummy  # no weights, so that the 'meta' stand-in device can hand it back
    mix = _noise(2, 300)
    bag = ModelBag.single(model, normalize=False)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        out = separate_tensor(bag, mix, None, EngineOptions(), torch.device("meta"))
    torch.testing.assert_close(out["a"], mix, atol=1e-6, rtol=0)


def test_windows_are_pluggable_by_name():
    assert {"triangle", "fade"} <= set(WINDOWS)
    tri = WINDOWS["triangle"](8, False, False)
    assert tri.tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.75, 0.5, 0.25])
    fade = WINDOWS["fade"](20, True, False)
    assert fade[0] == 1 and fade[-1] == 0



def test_segments_without_overlap_build_no_window_of_the_whole_segment(monkeypatch):
    """UVR's models ask for 1200 s segments and no overlap: the blend must neither build a
    triangle of the whole segment (0.85 GB while built, for a song of any length) nor change a
    sample (every sample has one segment's weight)."""
    built = []

    def triangle(length, first, last):
        built.append(length)
        return triangle_window(length, first, last)

    monkeypatch.setitem(WINDOWS, "triangle", triangle)
    mix = _noise(2, 1003)
    bag = ModelBag.single(Identity(segment=1200.0, gain=0.37), normalize=False)
    out = separate_tensor(bag, mix, None, EngineOptions(overlap=0.0), CPU)
    assert built == []
    assert torch.equal(out["a"], 0.37 * mix)
    separate_tensor(ModelBag.single(Identity(segment=2.0), normalize=False), mix, None,
                    EngineOptions(overlap=0.25), CPU)
    assert built  # with overlap the window is built as before

# ----------------------------------------------------------------------------- parity with demucs


def _reference_models():
    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    stems = ["drums", "bass", "other", "vocals"]
    models = {
        "htdemucs": HTDemucs(sources=stems, samplerate=SR, segment=Fraction(1, 1), channels=4, depth=2,
                             nfft=256, t_layers=1, t_heads=2, bottom_channels=0, dconv_mode=0,
                             t_hidden_scale=1.0),
        "hdemucs": HDemucs(sources=stems, samplerate=SR, segment=1.5, channels=4, depth=4, nfft=256,
                           dconv_mode=0),
        "demucs": Demucs(sources=stems, samplerate=SR, segment=1.2, channels=4, depth=3, lstm_layers=0,
                         dconv_mode=0),
    }
    for model in models.values():
        model.eval()
    return models


@pytest.fixture(scope="module")
def ref_models():
    pytest.importorskip("demucs")
    return _reference_models()


def _assert_parity(ours, ref, stems):
    got = _stack(ours, stems)
    peak = ref.abs().max().item()
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-5 * peak


@pytest.mark.parametrize("name", ["htdemucs", "hdemucs", "demucs"])
def test_parity_with_apply_model(ref_models, name):
    from demucs.apply import apply_model

    model = ref_models[name]
    mix = _noise(2, int(SR * 3.37), seed=1)  # ends in partial segments
    ref = apply_model(model, mix[None], shifts=0, split=True, overlap=0.25)[0]
    ours = separate_tensor(ModelBag.single(model, normalize=False), mix, None, EngineOptions(), CPU)
    _assert_parity(ours, ref, model.sources)


def test_parity_mixed_bag_with_normalisation(ref_models):
    from demucs.apply import BagOfModels, apply_model

    models = [ref_models[k] for k in ("htdemucs", "hdemucs", "demucs")]
    weights = [[1.0, 0.0, 2.0, 1.0], [0.5, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]]
    mix = 2 * _noise(2, int(SR * 2.6), seed=2) + 0.1
    mean, std = mix_stats(mix)
    ref_bag = BagOfModels([copy.deepcopy(m) for m in models], weights)
    ref = apply_model(ref_bag, ((mix - mean) / std)[None], shifts=0, split=True, overlap=0.25)[0]
    ref = ref * std + mean
    bag = ModelBag(models, weights, normalize=True)
    ours = separate_tensor(bag, mix, None, EngineOptions(), CPU)
    _assert_parity(ours, ref, bag.sources)


def test_parity_bag_with_shifts(ref_models):
    """Same random shifts as the reference for the same seed.

    Only for members that draw no Python random numbers themselves: the reference
    HTDemucs draws one per forward call (its positional embedding), which moves
    the reference's later shifts.
    """
    from demucs.apply import BagOfModels, apply_model

    models = [ref_models[k] for k in ("hdemucs", "demucs")]
    weights = [[1.0, 0.0, 2.0, 1.0], [0.5, 1.0, 1.0, 1.0]]
    mix = _noise(2, int(SR * 2.2), seed=9)
    random.seed(5)  # the reference draws its shifts from the global generator
    ref = apply_model(BagOfModels([copy.deepcopy(m) for m in models], weights), mix[None],
                      shifts=2, split=True, overlap=0.25)[0]
    ours = separate_tensor(ModelBag(models, weights, normalize=False), mix, None,
                           EngineOptions(shifts=2, seed=5), CPU)
    _assert_parity(ours, ref, models[0].sources)


def test_parity_bag_segment_override_and_option_segment(ref_models):
    from demucs.apply import BagOfModels, apply_model

    ht, v2 = ref_models["htdemucs"], ref_models["demucs"]
    mix = _noise(2, int(SR * 2.3), seed=3)
    ours = separate_tensor(ModelBag([ht, v2], [[1] * 4, [1] * 4], segment=0.8, normalize=False),
                           mix, None, EngineOptions(), CPU)
    assert ht.segment == 1  # our override is temporary
    ref = apply_model(BagOfModels([copy.deepcopy(ht), copy.deepcopy(v2)], segment=0.8), mix[None],
                      shifts=0, overlap=0.25)[0]
    _assert_parity(ours, ref, ht.sources)
    # an explicit segment (the command line's --segment), another overlap
    ours = separate_tensor(ModelBag.single(ht, normalize=False), mix, None,
                           EngineOptions(segment=0.6, overlap=0.4), CPU)
    ref = apply_model(ht, mix[None], shifts=0, overlap=0.4, segment=0.6)[0]
    _assert_parity(ours, ref, ht.sources)
    with pytest.raises(UsageError):
        separate_tensor(ModelBag.single(ht), mix, None, EngineOptions(segment=2.0), CPU)


def test_shifts_are_deterministic_per_seed(ref_models):
    model = ref_models["hdemucs"]
    bag = ModelBag.single(model, normalize=True)
    mix = _noise(2, int(SR * 1.7), seed=4)
    a = separate_tensor(bag, mix, ["vocals"], EngineOptions(shifts=2, seed=1), CPU)["vocals"]
    b = separate_tensor(bag, mix, ["vocals"], EngineOptions(shifts=2, seed=1), CPU)["vocals"]
    c = separate_tensor(bag, mix, ["vocals"], EngineOptions(shifts=2, seed=2), CPU)["vocals"]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-4)


@pytest.mark.parametrize("block", [777, 4000, 100000])
def test_stream_equals_in_memory_with_shifts(ref_models, block):
    model = ref_models["htdemucs"]
    bag = ModelBag.single(model, normalize=True)
    mix = _noise(2, int(SR * 2.9), seed=6)
    options = EngineOptions(shifts=1, seed=3)
    whole = separate_tensor(bag, mix, ["drums", "vocals"], options, CPU)
    blocks = [mix[:, i:i + block] for i in range(0, mix.shape[1], block)]
    pieces = list(separate_stream(bag, blocks, mix.shape[1], ["drums", "vocals"], options, CPU,
                                  stats=mix_stats(mix)))
    for stem in ("drums", "vocals"):
        assert torch.equal(torch.cat([p[stem] for p in pieces], dim=1), whole[stem])


def test_batching_keeps_the_output(ref_models):
    model = ref_models["demucs"]  # v2: its last segments need a different input length
    bag = ModelBag.single(model, normalize=False)
    mix = _noise(2, int(SR * 3.1), seed=7)
    one = separate_tensor(bag, mix, None, EngineOptions(batch_size=1), CPU)
    for batch_size in (2, 3):
        many = separate_tensor(bag, mix, None, EngineOptions(batch_size=batch_size), CPU)
        for stem in bag.sources:
            torch.testing.assert_close(many[stem], one[stem], atol=1e-6, rtol=1e-5)


def test_bf16_is_close_to_fp32(ref_models):
    model = ref_models["htdemucs"]
    bag = ModelBag.single(model, normalize=True)
    mix = _noise(2, int(SR * 1.3), seed=8)
    ref = _stack(separate_tensor(bag, mix, None, EngineOptions(), CPU), bag.sources)
    low = _stack(separate_tensor(bag, mix, None, EngineOptions(precision="bf16"), CPU), bag.sources)
    assert not torch.equal(low, ref)  # autocast really ran
    snr = 10 * torch.log10(ref.pow(2).sum() / (low - ref).pow(2).sum())
    assert snr > 20
    with pytest.raises(UsageError):
        separate_tensor(bag, mix, None, EngineOptions(precision="fp8"), CPU)


# ----------------------------------------------------------------------------- our own models


_REF_KWARGS = {
    "htdemucs": dict(segment=Fraction(1, 1), channels=4, depth=2, nfft=256, t_layers=1, t_heads=2,
                     bottom_channels=0, dconv_mode=0, t_hidden_scale=1.0),
    "hdemucs": dict(segment=1.5, channels=4, depth=4, nfft=256, dconv_mode=0),
    "demucs": dict(segment=1.2, channels=4, depth=3, lstm_layers=0, dconv_mode=0),
}
_OUR_CLASSES = {"htdemucs": "HTDemucs", "hdemucs": "HDemucs", "demucs": "Demucs"}


@pytest.mark.parametrize("name", ["htdemucs", "hdemucs", "demucs"])
def test_parity_with_our_models_loaded_from_reference_weights(ref_models, name):
    import importlib

    try:
        module = importlib.import_module(f"unmixcli.models.{name}")
        cls = getattr(module, _OUR_CLASSES[name])
    except (ImportError, AttributeError):
        pytest.skip(f"unmixcli.models.{name} is not available yet")
    from demucs.apply import apply_model

    reference = ref_models[name]
    ours = cls(sources=list(reference.sources), samplerate=SR, **_REF_KWARGS[name])
    ours.load_state_dict(reference.state_dict())
    ours.eval()
    mix = _noise(2, int(SR * 2.45), seed=10)
    ref = apply_model(reference, mix[None], shifts=0, split=True, overlap=0.25)[0]
    out = separate_tensor(ModelBag.single(ours, normalize=False), mix, None, EngineOptions(), CPU)
    _assert_parity(out, ref, reference.sources)


def test_cpu_heap_is_trimmed_every_few_forwards(monkeypatch):
    # The tuned allocator keeps freed memory resident; the engine hands free heap pages
    # back every TRIM_EVERY_FORWARDS forwards so that peak memory stays flat on long tracks.
    trims = []
    monkeypatch.setattr(engine, "_MALLOC_TRIM", lambda pad: trims.append(pad))
    model = Identity(segment=1.0)
    mix = torch.randn(2, 100 * 30)  # 30 segments' worth at overlap 0.25
    out = engine.separate_tensor(ModelBag.single(model), mix, None, engine.EngineOptions(), torch.device("cpu"))
    torch.testing.assert_close(out["a"], mix)
    forwards = len(model.calls)
    assert forwards > 2 * engine.TRIM_EVERY_FORWARDS
    assert trims == [0] * (forwards // engine.TRIM_EVERY_FORWARDS)


def test_sliding_store_keeps_positions_through_compaction_and_growth():
    # The engine's input buffer and overlap-add sums slide through storage that is
    # compacted in place (overlapping or not) and grows; a plain tensor is the oracle.
    from unmixcli.engine import _Sliding

    g = torch.Generator().manual_seed(3)
    store, oracle, start, most = _Sliding(3), torch.zeros(3, 0), 0, 0
    for step in range(200):
        choice = int(torch.randint(0, 3, (1,), generator=g))
        if choice == 0:
            block = torch.randn(3, int(torch.randint(1, 50, (1,), generator=g)), generator=g)
            store.append(block)
            oracle = torch.cat([oracle, block], dim=1)
        elif choice == 1:
            grow = int(torch.randint(0, 30, (1,), generator=g))
            store.extend(store.end + grow)
            oracle = torch.cat([oracle, torch.zeros(3, grow)], dim=1)
            if oracle.shape[1]:
                store.view(start, start + 1).add_(1.0)  # writes through views stay
                oracle[:, 0] += 1.0
        else:
            cut = int(torch.randint(0, oracle.shape[1] + 1, (1,), generator=g))
            store.drop_before(start + cut)
            oracle, start = oracle[:, cut:], start + cut
        assert (store.start, store.end) == (start, start + oracle.shape[1])
        assert torch.equal(store.view(store.start, store.end), oracle), step
        most = max(most, oracle.shape[1])
    assert store.start > 2 * most  # positions slid well past the storage's size...
    assert store.storage.shape[1] <= 2 * most  # ...which follows what is kept, not the total


def test_stream_state_is_allocated_once_whatever_the_track_length():
    # The input kept and the overlap-add sums slide through storage sized by the segment,
    # batch and block, so a track ten times longer holds the same storage.
    from unmixcli.engine import _StreamCore

    bag = ModelBag.single(Identity(segment=1.0), normalize=False)
    sizes = []
    for segments in (20, 200):
        core = _StreamCore(bag, ["a", "b"], EngineOptions(shifts=2, batch_size=2), CPU, 2, None, None)
        mix = _noise(2, segments * 100)
        out = [core.push(mix[:, i:i + 37]) for i in range(0, mix.shape[1], 37)] + [core.finish()]
        got = torch.cat([piece["a"] for pieces in out for piece in pieces], dim=1)
        assert torch.allclose(got, mix, atol=1e-6)
        storages = [core.buffer.samples.storage] + [lane.sums.storage for lane in core.all_lanes]
        sizes.append([s.shape[1] for s in storages])
    assert sizes[0] == sizes[1]
    assert max(sizes[1]) <= 8 * 100
