"""Asteroid models (ConvTasNet, DPRNNTasNet, DCCRNet) against `asteroid==0.7.0` itself.

Each model is built by asteroid with small random arguments, given random weights,
written with asteroid's own `serialize()` + `torch.save` (the layout of the Hub's
`pytorch_model.bin`), loaded by our family, and both run on the same mix: within
1e-5 of the reference output's peak.

asteroid is a test-only oracle, installed without its training dependencies:
`pip install --no-deps asteroid==0.7.0 asteroid-filterbanks==0.4.0`. Its `serialize()`
reads `pytorch_lightning.__version__` only to record it, so a stand-in module with a
version string is used when pytorch_lightning is not installed. asteroid 0.7.0's
DCCRMaskNet passes a numpy integer as the LSTM's input size, which torch 2.x refuses;
the oracle's constructor is given a plain int (`_dccrnet_fix`), nothing else changes.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import soundfile as sf
import torch

import asteroid.models as asteroid_models  # a hard import: CI must not skip the oracle silently

from unmixcli import families
from unmixcli.errors import CheckpointError
from unmixcli.families import asteroid as family

TOL = 1e-5  # of the reference output's peak


def serialize(model) -> dict:
    """asteroid's own `serialize()`; a stand-in pytorch_lightning (only its version string is read)
    while it runs, when pytorch_lightning is not installed."""
    stand_in = None
    if "pytorch_lightning" not in sys.modules:
        try:
            import pytorch_lightning  # noqa: F401
        except ImportError:
            stand_in = sys.modules["pytorch_lightning"] = types.ModuleType("pytorch_lightning")
            stand_in.__version__ = "1.9.5"
    try:
        return model.serialize()
    finally:
        if stand_in is not None and sys.modules.get("pytorch_lightning") is stand_in:
            del sys.modules["pytorch_lightning"]


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random weights, and random running statistics for batch norms (so eval mode is not trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "filterbank" in name and "_filters" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if name.endswith("gamma") else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    model.eval()


def _dccrnet_fix() -> None:
    from asteroid.masknn import recurrent

    init = recurrent.DCCRMaskNetRNN.__init__
    if getattr(init, "_int_size", False):
        return

    def fixed(self, in_size, *args, **kwargs):
        init(self, int(in_size), *args, **kwargs)

    fixed._int_size = True
    recurrent.DCCRMaskNetRNN.__init__ = fixed


def dccrnet(**args):
    _dccrnet_fix()
    return asteroid_models.DCCRNet(**args)


def save(model, path) -> None:
    torch.save(serialize(model), path)


def mix(seconds: float, rate: int, seed: int = 0) -> torch.Tensor:
    """Two voiced-like tones with vibrato, plus noise: [1, 1, T]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    a = np.sin(2 * np.pi * (180 * t + 3 * np.sin(2 * np.pi * 4 * t))) * (0.5 + 0.5 * np.sin(2 * np.pi * 1.5 * t))
    b = np.sign(np.sin(2 * np.pi * 130 * t)) * 0.3 * (np.sin(2 * np.pi * 0.7 * t) > 0)
    x = 0.4 * a + 0.3 * b + 0.05 * rng.standard_normal(len(t))
    return torch.from_numpy(x.astype(np.float32))[None, None]


def reference(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x[:, 0]).numpy()[0]  # [n_src, T]


def ours(bag, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return bag.models[0](x).numpy()[0, :, 0]  # [S, T]


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    peak = np.abs(want).max()
    assert peak > 1e-3  # a model that outputs silence would prove nothing
    assert np.abs(got - want).max() <= TOL * peak, np.abs(got - want).max() / peak


CONVTASNET = [
    dict(n_src=2, n_blocks=3, n_repeats=2, bn_chan=16, hid_chan=24, skip_chan=16, n_filters=32, kernel_size=16,
         stride=8, sample_rate=8000, mask_act="relu"),
    dict(n_src=2, n_blocks=2, n_repeats=1, bn_chan=8, hid_chan=16, skip_chan=0, n_filters=16, kernel_size=32,
         stride=16, sample_rate=16000, norm_type="cLN", mask_act="sigmoid"),
    dict(n_src=1, n_blocks=2, n_repeats=2, bn_chan=8, hid_chan=16, skip_chan=8, n_filters=16, kernel_size=16,
         stride=8, sample_rate=16000, causal=True, encoder_activation="relu", mask_act="softmax"),
    dict(n_src=3, n_blocks=2, n_repeats=1, bn_chan=8, hid_chan=8, skip_chan=None, n_filters=16, kernel_size=8,
         stride=4, sample_rate=8000, norm_type="cgLN", mask_act="tanh", out_chan=16),
]

DPRNN = [
    dict(n_src=2, n_repeats=2, bn_chan=16, hid_size=12, chunk_size=20, hop_size=10, n_filters=24, kernel_size=16,
         stride=8, sample_rate=8000),
    dict(n_src=2, n_repeats=1, bn_chan=8, hid_size=8, chunk_size=16, hop_size=8, n_filters=16, kernel_size=2,
         stride=1, sample_rate=8000, rnn_type="GRU", bidirectional=False, use_mulcat=True, norm_type="cLN",
         mask_act="relu"),
    dict(n_src=1, n_repeats=1, bn_chan=8, hid_size=8, chunk_size=30, hop_size=15, n_filters=16, kernel_size=16,
         stride=8, sample_rate=16000, num_layers=2),
]


@pytest.mark.parametrize("kind,args", [("ConvTasNet", a) for a in CONVTASNET] + [("DPRNNTasNet", a) for a in DPRNN])
def test_matches_asteroid(kind, args, tmp_path):
    ref = getattr(asteroid_models, kind)(**args)
    randomise(ref, seed=len(args))
    path = tmp_path / "pytorch_model.bin"
    save(ref, path)
    bag = family.load_local(path)
    n_src = args["n_src"]
    assert bag.sources == (["speech", "noise"] if n_src == 1 else [f"speaker{i + 1}" for i in range(n_src)])
    contract = bag.contracts[0]
    assert contract.samplerate == args["sample_rate"] and contract.channels == 1
    x = mix(0.4, args["sample_rate"])
    want = reference(ref, x)
    got = ours(bag, x)
    assert_close(got[:n_src], want)
    if n_src == 1:
        np.testing.assert_allclose(got[1], x[0, 0].numpy() - got[0], atol=1e-6)  # noise = mix - speech


def test_odd_lengths_and_a_batch(tmp_path):
    """Lengths that are no multiple of the stride: zero-filled to T as asteroid does; a batch of two."""
    ref = asteroid_models.ConvTasNet(**CONVTASNET[0])
    randomise(ref, seed=5)
    save(ref, tmp_path / "m.bin")
    bag = family.load_local(tmp_path / "m.bin")
    for n in (1001, 1237):
        x = torch.randn(2, 1, n, generator=torch.Generator().manual_seed(n)) * 0.3
        with torch.no_grad():
            want = ref(x[:, 0]).numpy()
            got = bag.models[0](x).numpy()[:, :, 0]
        assert got.shape == want.shape == (2, 2, n)
        assert np.abs(got - want).max() <= TOL * np.abs(want).max()


def test_file_is_plain_data(tmp_path):
    """The published dict (with asteroid's `infos`) loads with weights_only; a pickled object does not."""
    ref = asteroid_models.ConvTasNet(**CONVTASNET[1])
    package = serialize(ref)
    assert set(package) >= {"model_name", "model_args", "state_dict", "infos"}
    path = tmp_path / "pytorch_model.bin"
    torch.save(package, path)
    # The oracle's own file is weights_only-safe once torch's version string (a str subclass) is allowed.
    from torch.torch_version import TorchVersion

    with torch.serialization.safe_globals([TorchVersion]):
        torch.load(path, weights_only=True)
    family.load_local(path)

    evil = tmp_path / "evil.bin"
    torch.save({**package, "model_args": types.SimpleNamespace(n_src=2)}, evil)
    with pytest.raises(CheckpointError, match="not plain data"):
        family.load_local(evil)


def test_bad_files_are_one_line_errors(tmp_path):
    ref = asteroid_models.ConvTasNet(**CONVTASNET[0])
    package = serialize(ref)
    cases = {
        "name": ({**package, "model_name": "os.system"}, "unknown asteroid model_name"),
        "arg": ({**package, "model_args": {**package["model_args"], "frobnicate": 3}}, "unknown argument"),
        "fb": ({**package, "model_args": {**package["model_args"], "fb_name": "param_sinc"}}, "fb_name"),
        "shape": ({**package, "model_args": {**package["model_args"], "bn_chan": 12}}, "shape|does not fit"),
        "missing": ({k: v for k, v in package.items() if k != "state_dict"}, "lacks state_dict"),
    }
    for key, (data, match) in cases.items():
        path = tmp_path / f"{key}.bin"
        torch.save(data, path)
        with pytest.raises(CheckpointError, match=match) as info:
            family.load_local(path)
        assert "\n" not in str(info.value)
    (tmp_path / "junk.bin").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a loadable asteroid model"):
        family.load_local(tmp_path / "junk.bin")


DCCRNET = [
    dict(architecture="mini", stft_n_filters=64, stft_kernel_size=64, stft_stride=16, sample_rate=16000),
    dict(architecture="mini", stft_n_filters=64, stft_kernel_size=48, stft_stride=12, sample_rate=8000,
         mask_bound="sigmoid"),
    dict(architecture="mini", stft_n_filters=32, stft_kernel_size=32, stft_stride=8, sample_rate=16000,
         mask_bound=None, n_src=2),
]


@pytest.mark.parametrize("args", DCCRNET, ids=["tanh", "sigmoid", "unbounded-2src"])
def test_dccrnet_matches_asteroid(args, tmp_path):
    ref = dccrnet(**args)
    randomise(ref, seed=7)
    path = tmp_path / "pytorch_model.bin"
    save(ref, path)
    bag = family.load_local(path)
    n_src = args.get("n_src", 1)
    assert bag.sources == (["speech", "noise"] if n_src == 1 else ["speaker1", "speaker2"])
    assert bag.contracts[0].samplerate == args["sample_rate"]
    for seconds in (0.3, 0.2371):
        x = mix(seconds, args["sample_rate"], seed=3)
        want = reference(ref, x)
        got = ours(bag, x)
        assert_close(got[:n_src], want)


def test_dccrnet_full_architecture(tmp_path):
    """DCCRN-CL at the published STFT size (the 16 kHz enhancement model's layout), random weights."""
    ref = dccrnet(architecture="DCCRN-CL", stft_n_filters=512, stft_kernel_size=400, stft_stride=100,
                  sample_rate=16000)
    randomise(ref, seed=11)
    package = serialize(ref)
    # Older files have no torch_window (a convenience copy of the window): they load too.
    package["state_dict"] = {k: v for k, v in package["state_dict"].items() if not k.endswith("torch_window")}
    torch.save(package, tmp_path / "pytorch_model.bin")
    bag = family.load_local(tmp_path / "pytorch_model.bin")
    x = mix(0.5, 16000, seed=4)
    assert_close(ours(bag, x)[:1], reference(ref, x))


def test_dccrnet_bad_arguments(tmp_path):
    package = serialize(dccrnet(**DCCRNET[0]))
    for change, match in (({"architecture": "DCCRN-XL"}, "architecture"), ({"n_freqs": 30}, "n_freqs"),
                          ({"mask_bound": "cube"}, "mask_bound"), ({"rnn_hidden": 3}, "unknown argument")):
        path = tmp_path / "m.bin"
        torch.save({**package, "model_args": {**package["model_args"], **change}}, path)
        with pytest.raises(CheckpointError, match=match):
            family.load_local(path)


# --------------------------------------------------------------------------- registry and CLI


ENTRIES = {
    "convtasnet-libri2mix-16k": ("JorisCos/ConvTasNet_Libri2Mix_sepclean_16k", 16000, ["speaker1", "speaker2"]),
    "convtasnet-libri2mix-8k": ("JorisCos/ConvTasNet_Libri2Mix_sepclean_8k", 8000, ["speaker1", "speaker2"]),
    "dprnntasnet-libri2mix-8k": ("JorisCos/DPRNNTasNet-ks2_Libri2Mix_sepclean_8k", 8000, ["speaker1", "speaker2"]),
    "dccrnet-libri1mix-16k": ("JorisCos/DCCRNet_Libri1Mix_enhsingle_16k", 16000, ["speech", "noise"]),
}


def test_registry_entries():
    from unmixcli.registry import load_registry

    reg = load_registry(include_user=False)
    for name, (repo, rate, stems) in ENTRIES.items():
        spec = reg.get(name)
        assert (spec.family, spec.repo, spec.sample_rate, list(spec.stems)) == ("asteroid", repo, rate, stems)
        assert [f.name for f in spec.files] == ["pytorch_model.bin"] and spec.checkpoint == "pytorch_model.bin"
        assert spec.licence.startswith("CC BY-SA 4.0") and "non-commercial" in spec.licence_note


def _publish(fake_hub, name: str, model) -> None:
    import io

    from unmixcli.registry import load_registry

    spec = load_registry(include_user=False).get(name)
    buf = io.BytesIO()
    torch.save(serialize(model), buf)
    fake_hub.add_repo(spec.repo, {"pytorch_model.bin": buf.getvalue()})


def test_cli_separates_speakers_from_the_fake_hub(fake_hub, tmp_path):
    """`unmix talk.wav -m convtasnet-libri2mix-8k`: a 16 kHz stereo talk, written at its own rate
    with `--sample-rate keep`, at the model's 8 kHz by default."""
    from conftest import run_unmix

    ref = asteroid_models.ConvTasNet(**CONVTASNET[0])  # 8 kHz, two speakers
    randomise(ref, seed=2)
    _publish(fake_hub, "convtasnet-libri2mix-8k", ref)
    rate = 16000
    x = np.stack([mix(1.0, rate, seed=1)[0, 0].numpy(), mix(1.0, rate, seed=2)[0, 0].numpy()], 1)
    talk = tmp_path / "talk.wav"
    sf.write(talk, x, rate, subtype="FLOAT")
    for choice, want_rate in (("keep", rate), ("model", 8000)):
        out = tmp_path / f"out-{choice}"
        result = run_unmix(str(talk), "-m", "convtasnet-libri2mix-8k", "-o", str(out), "-q", "--sample-rate", choice)
        assert result.exit_code == 0, result.output
        stems = {p.stem: p for p in out.rglob("*.wav")}
        assert sorted(stems) == ["speaker1", "speaker2"]
        data, got_rate = sf.read(stems["speaker1"], dtype="float32", always_2d=True)
        assert got_rate == want_rate and data.shape[1] == 1 and abs(data.shape[0] - want_rate) <= 1


def test_cli_8k_input_matches_asteroid(fake_hub, tmp_path):
    """At the model's own rate the written stems are asteroid's output on the file."""
    from conftest import run_unmix

    ref = asteroid_models.DPRNNTasNet(**DPRNN[0])
    randomise(ref, seed=4)
    _publish(fake_hub, "dprnntasnet-libri2mix-8k", ref)
    x = mix(1.2, 8000, seed=9) * 0.3  # quiet enough that no stem needs the anti-clipping gain
    talk = tmp_path / "talk.wav"
    sf.write(talk, x[0, 0].numpy(), 8000, subtype="FLOAT")
    out = tmp_path / "out"
    result = run_unmix(str(talk), "-m", "dprnntasnet-libri2mix-8k", "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    want = reference(ref, x)
    for i in range(2):
        got, got_rate = sf.read(next(out.rglob(f"speaker{i + 1}.wav")), dtype="float32")
        assert got_rate == 8000 and got.shape == (x.shape[-1],)
        assert np.abs(got - want[i]).max() <= 1e-4 * np.abs(want).max()


def test_enhancement_entry_gives_speech_and_noise(fake_hub, tmp_path):
    ref = dccrnet(**DCCRNET[0])
    randomise(ref, seed=8)
    _publish(fake_hub, "dccrnet-libri1mix-16k", ref)
    bag = families.load_model("dccrnet-libri1mix-16k")
    assert bag.sources == ["speech", "noise"] and bag.contracts[0].samplerate == 16000


def test_inputs_shorter_than_the_network_run(tmp_path):
    """A sliver shorter than one frame (the engine's last bit of a segment, a tiny file) runs,
    zero-filled inside and trimmed back, where asteroid itself would raise."""
    for i, model in enumerate((asteroid_models.ConvTasNet(**CONVTASNET[0]), asteroid_models.DPRNNTasNet(**DPRNN[0]),
                               dccrnet(**DCCRNET[0]))):
        save(model, tmp_path / f"{i}.bin")
        bag = family.load_local(tmp_path / f"{i}.bin")
        for n in (1, 7, 70):
            with torch.no_grad():
                out = bag.models[0](torch.randn(1, 1, n))
            assert out.shape == (1, 2, 1, n) and torch.isfinite(out).all()


def test_engine_segments_a_long_recording(tmp_path):
    """Several overlapping segments with a sliver at the end: the stems still sum to the mix."""
    from unmixcli import Separator

    ref = dccrnet(**DCCRNET[0])
    randomise(ref, seed=12)
    save(ref, tmp_path / "pytorch_model.bin")
    rate = 16000
    x = mix(1.0, rate, seed=5)[0] * 0.3  # [1, T]
    x = x[:, : int(0.75 * 0.2 * rate) * 6 + 3]  # ends 3 samples into a last segment
    sep = Separator(str(tmp_path / "pytorch_model.bin"), device="cpu", segment=0.2)
    stems = sep.separate(x, rate)
    assert sorted(stems) == ["noise", "speech"]
    assert stems["speech"].shape == x.shape
    np.testing.assert_allclose((stems["speech"] + stems["noise"]).numpy(), x.numpy(), atol=1e-5)
