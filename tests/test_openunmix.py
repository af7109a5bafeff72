"""Open-Unmix (umxhq, umxl, umx, umxse): our separator against openunmix 1.3.0 on the same weights.

Weights are random and written the way open-unmix publishes them: `torch.save` of a
network's state dict as `<target>-<sha256 prefix>.pth`, beside the `<target>.json` its
training script writes (the arguments under "args") and `separator.json`. The networks
are tiny (hidden size 16, 512-point STFT) so that each test takes well under a second;
the released architectures are checked with one target each.

The oracle: `pip install --no-deps openunmix==1.3.0` (its torchaudio pin would replace
our torch). Its utils.py and transforms.py import torchaudio at the top but the paths
used here (torch filterbank, Separator, predict.separate at the model's own rate) never
touch it, so when torchaudio is absent an empty module stands in while openunmix is
imported, and is removed again right after: any use of it would raise AttributeError.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import io
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from unmixcli import families
from unmixcli.engine import EngineOptions, separate_tensor
from unmixcli.errors import CheckpointError, UsageError
from unmixcli.families import openunmix as umx_family
from unmixcli.models.openunmix import OpenUnmix, UmxSeparator
from unmixcli.registry import load_registry, load_registry_file


def _import_oracle():
    stand_in = None
    if "torchaudio" not in sys.modules:
        try:
            import torchaudio  # noqa: F401
        except ImportError:
            stand_in = sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        import openunmix as ref  # noqa: F401  (a hard import: CI must not skip the oracle silently)
        from openunmix import model, predict, utils
    finally:
        if stand_in is not None and sys.modules.get("torchaudio") is stand_in:
            del sys.modules["torchaudio"]
    return ref, model, predict, utils


openunmix, umodel, upredict, uutils = _import_oracle()

CPU = torch.device("cpu")
RATE = 44100
NFFT, NHOP, HIDDEN = 512, 128, 16
MUSIC = ["vocals", "drums", "bass", "other"]
TOL = 1e-5  # of the reference's peak


# --------------------------------------------------------------------------- fixtures


def _random_reference(seed: int, *, nb_channels: int = 2, hidden: int = HIDDEN, nfft: int = NFFT, rate: int = RATE,
                      bandwidth: float = 16000, **kw):
    """openunmix.model.OpenUnmix with every parameter and BN statistic drawn at random."""
    max_bin = uutils.bandwidth_to_max_bin(rate, nfft, bandwidth)
    net = umodel.OpenUnmix(nb_bins=nfft // 2 + 1, nb_channels=nb_channels, hidden_size=hidden, max_bin=max_bin, **kw)
    gen = torch.Generator().manual_seed(seed)
    state = net.state_dict()
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        noise = torch.randn(value.shape, generator=gen)
        if key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif key in ("output_scale", "output_mean", "input_scale"):
            state[key] = 1.0 + 0.3 * noise
        else:
            state[key] = 0.4 * noise
    net.load_state_dict(state)
    return net.eval()


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def write_umx_folder(folder: Path, targets=MUSIC, *, nb_channels: int = 2, rate: int = RATE, nfft: int = NFFT,
                     nhop: int = NHOP, hidden: int = HIDDEN, bandwidth: float = 16000, seed: int = 0,
                     separator_json: bool = True, legacy: bool = False, hashed: bool = True) -> dict:
    """Open-unmix's training output for `targets`; returns {target: weights file name}."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for i, target in enumerate(targets):
        state = _random_reference(seed + i, nb_channels=nb_channels, hidden=hidden, nfft=nfft, rate=rate,
                                  bandwidth=bandwidth).state_dict()
        if legacy:  # the 2019 files also hold the old model class's STFT window and rate
            state["stft.window"] = torch.hann_window(nfft)
            state["transform.0.window"] = torch.hann_window(nfft)
            state["sample_rate"] = torch.tensor(float(rate))
        data = _torch_bytes(state)
        names[target] = f"{target}-{hashlib.sha256(data).hexdigest()[:8]}.pth" if hashed else f"{target}.pth"
        (folder / names[target]).write_bytes(data)
        args = {"target": target, "dataset": "musdb", "root": None, "output": str(folder), "model": None,
                "checkpoint": None, "audio_backend": "soundfile", "epochs": 1, "batch_size": 16, "lr": 0.001,
                "patience": 140, "lr_decay_patience": 80, "lr_decay_gamma": 0.3, "weight_decay": 1e-05, "seed": 42,
                "seq_dur": 6.0, "unidirectional": False, "nfft": nfft, "nhop": nhop, "hidden_size": hidden,
                "bandwidth": bandwidth, "nb_channels": nb_channels, "nb_workers": 0, "debug": False, "quiet": False,
                "no_cuda": False}
        log = {"epochs_trained": 1, "args": args, "best_loss": 0.5, "best_epoch": 1, "train_loss_history": [0.6],
               "valid_loss_history": [0.5], "train_time_history": [1.0], "num_bad_epochs": 0, "commit": None}
        (folder / f"{target}.json").write_text(json.dumps(log, indent=4, sort_keys=True))
    if separator_json:
        conf = {"nfft": nfft, "nhop": nhop, "sample_rate": rate, "nb_channels": nb_channels}
        (folder / "separator.json").write_text(json.dumps(conf, indent=4, sort_keys=True))
    return names


def entry_spec(tmp_path: Path, names: dict, *, name: str = "tinyumx", stems=None, rate: int = RATE, **config):
    """A registry entry (family openunmix, inline config) for the files in `names`, parsed by the registry."""
    base = {"hidden_size": HIDDEN, "nb_channels": 2, "n_fft": NFFT, "n_hop": NHOP, "bandwidth": 16000}
    base.update(config)
    entry = {"family": "openunmix", "description": "tiny test Open-Unmix", "repo": "test/tinyumx",
             "files": [{"name": n} for n in names.values()], "stems": list(stems or names), "sample_rate": rate,
             "licence": "test only", "config": base}
    import yaml

    reg = tmp_path / f"{name}-registry.yaml"
    reg.write_text(yaml.safe_dump({"version": 1, "models": {name: entry}}, sort_keys=False))
    (spec,) = load_registry_file(reg)[1]
    return spec


def mix(channels: int = 2, seconds: float = 0.6, seed: int = 1, rate: int = RATE) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(channels, int(seconds * rate), generator=gen)  # [C, T]


def ours(bag, audio: torch.Tensor) -> dict:
    """Through the engine: a track shorter than one segment is one forward of its own length."""
    assert audio.shape[-1] < bag.contracts[0].segment * bag.samplerate
    return separate_tensor(bag, audio, None, EngineOptions(), CPU)


def assert_close(reference: dict, result: dict) -> float:
    """Same stems, each within TOL of the reference's peak; returns the worst error (relative)."""
    assert list(result) == list(reference)
    peak = max(float(v.abs().max()) for v in reference.values())
    worst = 0.0
    for stem, ref in reference.items():
        got = result[stem]
        assert got.shape == ref.shape, stem
        assert torch.isfinite(got).all(), stem
        worst = max(worst, float((got - ref).abs().max()) / peak)
    assert worst < TOL, worst
    return worst


def reference_separate(folder: Path, audio: torch.Tensor, targets, **kw) -> dict:
    """openunmix.predict.separate on a local model folder; stems [C, T]."""
    out = upredict.separate(audio, rate=RATE, model_str_or_path=str(folder), targets=list(targets), device="cpu",
                            **kw)
    return {k: v[0] for k, v in out.items()}


# --------------------------------------------------------------------------- the network


@pytest.mark.parametrize("kw", [{}, {"unidirectional": True, "nb_layers": 1}, {"nb_channels": 1}])
def test_network_registers_the_reference_names_shapes_and_order(kw):
    ref = _random_reference(0, **kw)
    mine = OpenUnmix(nb_bins=NFFT // 2 + 1, nb_channels=kw.get("nb_channels", 2), hidden_size=HIDDEN,
                     nb_layers=kw.get("nb_layers", 3), unidirectional=kw.get("unidirectional", False),
                     max_bin=ref.nb_bins)
    assert [(k, tuple(v.shape)) for k, v in mine.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]
    mine.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(2, kw.get("nb_channels", 2), NFFT // 2 + 1, 30)  # [B, C, F, N] magnitudes
    with torch.no_grad():
        torch.testing.assert_close(mine.eval()(x), ref(x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- parity: registry entries


PARITY_CASES = {
    # name: (our config, our stems, predict.separate kwargs)
    "defaults": ({}, None, dict(niter=1)),
    "no_wiener": ({"niter": 0}, None, dict(niter=0)),
    "two_em_steps": ({"niter": 2}, None, dict(niter=2)),
    "one_target_and_residual": ({}, ["vocals"], dict(niter=1, residual=True)),
    "two_targets_and_residual": ({}, ["vocals", "bass"], dict(niter=1, residual=True)),
    "all_targets_and_residual": ({"residual": True}, None, dict(niter=1, residual=True)),
    "several_wiener_windows": ({"wiener_win_len": 40}, None, dict(niter=1, wiener_win_len=40)),
    "one_wiener_window": ({"wiener_win_len": None}, None, dict(niter=1, wiener_win_len=None)),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_parity_with_predict_separate(case, tmp_path):
    config, stems, kw = PARITY_CASES[case]
    names = write_umx_folder(tmp_path / "umx")
    bag = umx_family.load_spec(entry_spec(tmp_path, names, **config), tmp_path / "umx", stems)
    targets = stems or MUSIC
    assert list(bag.models[0].target_models) == targets  # only the requested networks are built
    audio = mix()  # 0.6 s: 207 frames, so 40-frame windows leave a short last one
    reference = reference_separate(tmp_path / "umx", audio, targets, **kw)
    assert bag.sources == list(reference)
    assert_close(reference, ours(bag, audio))


def test_softmask_parity_with_the_reference_separator(tmp_path):
    names = write_umx_folder(tmp_path / "umx")
    bag = umx_family.load_spec(entry_spec(tmp_path, names, softmask=True, niter=1), tmp_path / "umx")
    ref = umodel.Separator(uutils.load_target_models(MUSIC, str(tmp_path / "umx")), niter=1, softmask=True,
                           sample_rate=RATE, n_fft=NFFT, n_hop=NHOP, nb_channels=2).eval()
    audio = mix()
    with torch.no_grad():
        reference = ref.to_dict(ref(audio[None]))
    assert_close({k: v[0] for k, v in reference.items()}, ours(bag, audio))


def _speech_folder(tmp_path: Path) -> dict:
    # umxse's layout at test size: mono networks, 16 kHz, the whole band (bandwidth = rate).
    return write_umx_folder(tmp_path / "se", ["speech", "noise"], nb_channels=1, rate=16000, nfft=256, nhop=128,
                            bandwidth=16000)


def test_mono_speech_model_at_16k_matches_the_reference_separator(tmp_path):
    names = _speech_folder(tmp_path)
    spec = entry_spec(tmp_path, names, rate=16000, nb_channels=1, n_fft=256, n_hop=128)
    bag = umx_family.load_spec(spec, tmp_path / "se")
    assert (bag.samplerate, bag.audio_channels, bag.sources) == (16000, 1, ["speech", "noise"])
    ref = umodel.Separator(uutils.load_target_models(["speech", "noise"], str(tmp_path / "se")), niter=1,
                           sample_rate=16000.0, n_fft=256, n_hop=128, nb_channels=1).eval()
    audio = mix(channels=1, seconds=1.0, rate=16000)
    with torch.no_grad():
        reference = ref.to_dict(ref(audio[None]))  # the reference's Separator on a mono mix
    assert_close({k: v[0] for k, v in reference.items()}, ours(bag, audio))


def test_mono_networks_on_a_stereo_mix_match_predict_separate(tmp_path):
    # predict.separate always works in stereo: mono networks see the mean magnitude and the
    # Wiener filter separates both channels. audio_channels: 2 asks for the same.
    names = _speech_folder(tmp_path)
    spec = entry_spec(tmp_path, names, rate=16000, nb_channels=1, n_fft=256, n_hop=128, audio_channels=2)
    bag = umx_family.load_spec(spec, tmp_path / "se")
    audio = mix(channels=2, seconds=1.0, rate=16000)
    out = upredict.separate(audio, rate=16000, model_str_or_path=str(tmp_path / "se"), targets=["speech", "noise"],
                            niter=1, device="cpu")
    assert_close({k: v[0] for k, v in out.items()}, separate_tensor(bag, audio, None, EngineOptions(), CPU))


@pytest.mark.parametrize("mono_networks", [False, True])
def test_a_mono_recording_in_stereo_stays_finite_and_matches_float64(mono_networks, tmp_path):
    """Identical channels make the mix covariance singular next to sqrt(eps) in float32 (the
    reference then errs by ~1e-3, or gives NaN with mono networks); we solve it in float64."""
    if mono_networks:
        names = _speech_folder(tmp_path)
        folder, targets, rate, nfft, hop = tmp_path / "se", ["speech", "noise"], 16000, 256, 128
        spec = entry_spec(tmp_path, names, rate=rate, nb_channels=1, n_fft=nfft, n_hop=hop, audio_channels=2)
    else:
        names = write_umx_folder(tmp_path / "umx")
        folder, targets, rate, nfft, hop = tmp_path / "umx", MUSIC, RATE, NFFT, NHOP
        spec = entry_spec(tmp_path, names)
    bag = umx_family.load_spec(spec, folder)
    audio = mix(channels=1, seconds=1.0, rate=rate).repeat(2, 1)  # [2, T], both channels the same
    ref = umodel.Separator(uutils.load_target_models(targets, str(folder)), niter=1, sample_rate=float(rate),
                           n_fft=nfft, n_hop=hop, nb_channels=1 if mono_networks else 2).eval()
    with torch.no_grad():
        exact = copy.deepcopy(ref).double()(audio[None].double()).float()  # the reference in float64
    assert_close({s: exact[0, j] for j, s in enumerate(ref.to_dict(exact))},
                 separate_tensor(bag, audio, None, EngineOptions(), CPU))


def test_digital_silence_separates_as_the_reference_does(tmp_path):
    # Exactly-zero STFT bins: the reference's atan2 sets their real part to 1 in the mix that
    # the residual and EM then use. A silent start makes whole frames of them.
    names = write_umx_folder(tmp_path / "umx")
    bag = umx_family.load_spec(entry_spec(tmp_path, names), tmp_path / "umx", ["vocals"])
    audio = mix()
    audio[:, : RATE // 5] = 0
    reference = reference_separate(tmp_path / "umx", audio, ["vocals"], niter=1, residual=True)
    assert_close(reference, ours(bag, audio))


def test_input_shorter_than_half_a_window_is_zero_padded_inside(tmp_path):
    names = write_umx_folder(tmp_path / "umx")
    bag = umx_family.load_spec(entry_spec(tmp_path, names), tmp_path / "umx")
    sep = bag.models[0]
    audio = mix(seconds=0.002)  # 88 samples: torch.stft's reflection needs more than n_fft // 2
    padded = torch.nn.functional.pad(audio, (0, NFFT // 2 + 1 - audio.shape[-1]))
    with torch.no_grad():
        short, long = sep(audio[None]), sep(padded[None])
    assert short.shape == (1, 4, 2, audio.shape[-1])
    torch.testing.assert_close(short, long[..., : audio.shape[-1]])


def test_long_track_in_segments_keeps_the_stems_summing_to_the_mix(tmp_path):
    # With the Wiener filter the stems sum to the mix (up to sqrt(eps) Cxx^-1 x), and the
    # engine's cross-fades keep that across segment boundaries.
    names = write_umx_folder(tmp_path / "umx")
    bag = umx_family.load_spec(entry_spec(tmp_path, names, segment=0.3, overlap=0.25), tmp_path / "umx")
    audio = mix(seconds=1.5)
    out = separate_tensor(bag, audio, None, EngineOptions(), CPU)
    total = sum(out.values())
    assert total.shape == audio.shape
    assert float((total - audio).abs().max()) < 1e-3 * float(audio.abs().max())


# --------------------------------------------------------------------------- open-unmix's own folder layout


def test_load_local_reads_the_training_layout_like_load_separator(tmp_path):
    folder = tmp_path / "my-umx"
    write_umx_folder(folder, legacy=True)  # with the old files' extra tensors, which openunmix ignores
    assert umx_family.claims(folder)
    bag = families.load_local(folder)  # the family table routes the folder to Open-Unmix
    assert bag.extra["family"] == "openunmix" and bag.sources == MUSIC and bag.samplerate == RATE
    audio = mix()
    assert_close(reference_separate(folder, audio, MUSIC, niter=1), ours(bag, audio))


def test_load_local_with_stems_builds_only_those_networks(tmp_path):
    folder = tmp_path / "my-umx"
    write_umx_folder(folder, hashed=False, separator_json=False)  # <target>.pth; rate then defaults to 44.1 kHz
    bag = families.load_local(folder, stems=["drums"])
    assert list(bag.models[0].target_models) == ["drums"]
    assert bag.sources == ["drums", "residual"] and bag.extra["stem_subset"]
    write_umx_folder(tmp_path / "ref", hashed=False)  # the reference needs separator.json
    audio = mix()
    assert_close(reference_separate(tmp_path / "ref", audio, ["drums"], niter=1, residual=True), ours(bag, audio))


def test_other_folders_are_not_claimed(tmp_path):
    (tmp_path / "htdemucs.yaml").write_text("models: ['955717e8']\n")
    (tmp_path / "955717e8.safetensors").write_bytes(b"x")
    (tmp_path / "notes.json").write_text("{}")  # a json without its weights
    assert not umx_family.claims(tmp_path)
    assert not umx_family.claims(tmp_path / "htdemucs.yaml")


# --------------------------------------------------------------------------- strict weights


def _rewrite(path: Path, edit) -> None:
    state = torch.load(path, weights_only=True)
    edit(state)
    path.write_bytes(_torch_bytes(state))


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("bn2.running_mean"), "1 missing key(s) (e.g. bn2.running_mean)"),
    (lambda s: s.update({"fc4.weight": torch.zeros(3)}), "1 unexpected (e.g. fc4.weight)"),
    (lambda s: s.update({"lstm.weight_ih_l3": torch.zeros(32, 16)}), "4 LSTM layers, the config says 3"),
    (lambda s: s.update({"lstm.weight_hh_l9": torch.zeros(32, 8)}), "1 unexpected (e.g. lstm.weight_hh_l9)"),
    (lambda s: s.update({"stft.window": torch.ones(1024)}), "n_fft 512"),
    (lambda s: s.update({"sample_rate": torch.tensor(16000.0)}), "trained at 16000 Hz"),
    (lambda s: s.update({"bn3.weight": torch.ones(7)}), "'bn3.weight' has shape (7,)"),
    (lambda s: s.update({"fc1.weight": s["fc1.weight"][:8]}), "hidden size 8"),
    (lambda s: s.update({"input_mean": s["input_mean"][:10]}), "10 input bins"),
])
def test_state_dicts_that_do_not_fit_are_one_line_checkpoint_errors(edit, message, tmp_path):
    names = write_umx_folder(tmp_path / "umx", ["vocals", "drums"])
    _rewrite(tmp_path / "umx" / names["drums"], edit)
    spec = entry_spec(tmp_path, names)
    with pytest.raises(CheckpointError) as exc:
        umx_family.load_spec(spec, tmp_path / "umx")
    text = str(exc.value)
    assert message in text and names["drums"] in text and "\n" not in text


def test_wrong_hidden_size_in_the_config_names_it(tmp_path):
    names = write_umx_folder(tmp_path / "umx", ["vocals", "drums"])
    with pytest.raises(CheckpointError, match="hidden size 16, the config says 32"):
        umx_family.load_spec(entry_spec(tmp_path, names, hidden_size=32), tmp_path / "umx")


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    names = write_umx_folder(tmp_path / "umx", ["vocals", "drums"])
    (tmp_path / "umx" / names["vocals"]).write_bytes(_torch_bytes({"fc1.weight": _Payload()}))
    with pytest.raises(CheckpointError, match="refused to load"):
        umx_family.load_spec(entry_spec(tmp_path, names), tmp_path / "umx")


# --------------------------------------------------------------------------- config and stems


@pytest.mark.parametrize("change, message", [
    ({"hiden_size": 16}, "did you mean 'hidden_size'"),
    ({"niter": -1}, "'niter' must be a whole number"),
    ({"nb_channels": 3}, "'nb_channels' must be one of 1, 2"),
    ({"max_bin": 100}, "'max_bin' and 'bandwidth'"),
    ({"sample_rate": 48000}, "entry's sample_rate is 44100"),
    ({"wiener_win_len": 0}, "'wiener_win_len' must be a positive"),
    ({"overlap": 1.0}, "'overlap' must be in [0, 1)"),
    ({"weights": {"vocals": "nope.pth"}}, "not one of the entry's files"),
])
def test_invalid_config_names_the_entry_and_key(change, message, tmp_path):
    names = write_umx_folder(tmp_path / "umx", ["vocals", "drums"])
    with pytest.raises(CheckpointError) as exc:
        umx_family.load_spec(entry_spec(tmp_path, names, **change), tmp_path / "umx")
    assert "model 'tinyumx'" in str(exc.value) and message in str(exc.value)


def test_missing_required_config_key(tmp_path):
    names = write_umx_folder(tmp_path / "umx", ["vocals", "drums"])
    spec = entry_spec(tmp_path, names)
    spec = type(spec)(**{**spec.__dict__, "config": {k: v for k, v in spec.config.items() if k != "n_fft"}})
    with pytest.raises(CheckpointError, match="config 'n_fft' is required"):
        umx_family.load_spec(spec, tmp_path / "umx")


def test_unknown_stem_is_a_usage_error(tmp_path):
    names = write_umx_folder(tmp_path / "umx", ["vocals", "drums"])
    spec = entry_spec(tmp_path, names)
    with pytest.raises(UsageError, match="no stem guitar"):
        umx_family.load_spec(spec, tmp_path / "umx", ["guitar"])
    with pytest.raises(UsageError, match="residual alone"):
        umx_family.load_spec(spec, tmp_path / "umx", ["residual"])


# --------------------------------------------------------------------------- models.yaml


def _published_urls() -> dict:
    """{model: {target: url}} read from the installed openunmix package's hub functions."""
    out = {}
    for name in ("umxhq", "umxl", "umx", "umxse"):
        source = inspect.getsource(getattr(openunmix, f"{name}_spec"))
        out[name] = dict(re.findall(r'"(\w+)":\s*"(https://zenodo\.org/[^"]+\.pth)"', source))
    return out


def test_registry_entries_point_at_the_published_files():
    registry = load_registry(include_user=False)
    for name, urls in _published_urls().items():
        spec = registry.get(name)
        assert spec.family == "openunmix"
        assert {f.url for f in spec.files} == set(urls.values())
        for f in spec.files:
            assert f.name == f.url.rsplit("/", 1)[1]
            assert f.hash_prefix == re.search(r"[-_]([0-9a-f]{8})\.pth$", f.name).group(1)
        assert set(spec.stems) == set(urls)


@pytest.mark.parametrize("name", ["umxhq", "umxl", "umx", "umxse"])
def test_registry_config_builds_what_the_hub_functions_build(name, tmp_path):
    """One target at released size: openunmix.<name>_spec's network (random weights) saved under
    the entry's file name loads strictly into ours, and both separators agree on it."""
    spec = load_registry(include_user=False).get(name)
    target = spec.stems[0]
    ref_net = getattr(openunmix, f"{name}_spec")(targets=[target], pretrained=False)[target].eval()
    (tmp_path / spec.file(next(f.name for f in spec.files if f.name.startswith(target))).name).write_bytes(
        _torch_bytes(ref_net.state_dict()))
    bag = umx_family.load_spec(spec, tmp_path, [target])
    sep = bag.models[0]
    ref = getattr(openunmix, name)(targets=[target], residual=True, niter=1, pretrained=False)
    ref.target_models[target].load_state_dict(ref_net.state_dict())
    ref.eval()
    assert (sep.n_fft, sep.n_hop) == (ref.stft.n_fft, ref.stft.n_hop)
    assert sep.samplerate == int(ref.sample_rate) == spec.sample_rate
    assert sep.wiener_win_len == ref.wiener_win_len and sep.niter == ref.niter
    channels = 1 if name == "umxse" else 2
    assert bag.audio_channels == channels
    audio = mix(channels=channels, seconds=0.5, rate=spec.sample_rate)
    with torch.no_grad():
        reference = ref.to_dict(ref(audio[None]))
    assert_close({k: v[0] for k, v in reference.items()}, ours(bag, audio))


# --------------------------------------------------------------------------- the download path


def test_download_from_urls_then_load_only_the_requested_target(hf_env, tmp_path, monkeypatch):
    from urlserver import FileServer

    monkeypatch.setenv("UNMIX_CACHE", str(tmp_path / "cache"))
    names = write_umx_folder(tmp_path / "published")
    with FileServer(lifetime=60) as server:
        files = []
        for target, fname in names.items():
            data = (tmp_path / "published" / fname).read_bytes()
            url = server.publish(f"/records/1/files/{fname}", data)
            files.append({"name": fname, "url": url, "hash_prefix": fname.rsplit("-", 1)[1][:8]})
        import yaml

        entry = {"family": "openunmix", "description": "tiny test Open-Unmix", "files": files, "stems": MUSIC,
                 "sample_rate": RATE, "licence": "test only",
                 "config": {"hidden_size": HIDDEN, "nb_channels": 2, "n_fft": NFFT, "n_hop": NHOP,
                            "bandwidth": 16000}}
        reg = tmp_path / "registry.yaml"
        reg.write_text(yaml.safe_dump({"version": 1, "models": {"tinyumx": entry}}, sort_keys=False))
        bag = families.load_model("tinyumx", registry_files=[reg], stems=["vocals"])
    assert bag.name == "tinyumx" and bag.sources == ["vocals", "residual"]
    audio = mix()
    reference = reference_separate(tmp_path / "published", audio, ["vocals"], niter=1, residual=True)
    assert_close(reference, ours(bag, audio))

    # The command line passes the stems it will write to the loader: `--stems vocals` (offline,
    # from the cache just filled) builds the vocals network alone and writes its stem only.
    import soundfile as sf
    from typer.testing import CliRunner

    from unmixcli import cli

    song = tmp_path / "song.wav"
    sf.write(song, audio.numpy().T, RATE, subtype="FLOAT")
    built = []
    real_build = umx_family._build_network
    monkeypatch.setattr(umx_family, "_build_network", lambda *a, **k: built.append(a[1].name) or real_build(*a, **k))
    result = CliRunner().invoke(cli.app, [str(song), "-m", "tinyumx", "--registry", str(reg), "--offline",
                                          "--stems", "vocals", "--bit-depth", "32", "--clip", "none", "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    assert built == [names["vocals"]]
    written = sorted(p.name for p in (tmp_path / "out").rglob("*.wav"))
    assert written == ["vocals.wav"]
    got, _ = sf.read(next((tmp_path / "out").rglob("vocals.wav")), dtype="float32")
    want = reference["vocals"].numpy().T
    assert float(abs(got - want).max()) <= 1e-5 * float(abs(want).max())
