"""SCNet (MSST model types scnet, scnet_masked, scnet_tran) against msst 0.1.0 itself.

The networks are built from MSST's own configs, shrunk (tests/data/msst/config_*scnet*.yaml),
by MSST's `get_model_from_config`, given random weights and saved as MSST saves them
(a plain state dict, as in its releases, or its trainer's `save_weights` dict). Our side
loads those files through the family; both run side by side on the same input.
"""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from typer.testing import CliRunner

from unmixcli import cli, families
from unmixcli.errors import CheckpointError
from unmixcli.families import msst as msst_format
from unmixcli.families import scnet as family
from unmixcli.models.scnet import SCNet, SCNetMasked, SCNetTran


def _import_oracle():
    """msst's builder, demix and normalisation. Modules msst imports but these never use
    (torchaudio; matplotlib, for its spectrogram plots) get empty stand-ins while importing
    when they are not installed."""
    stand_ins = {}
    for name in ("torchaudio", "matplotlib", "matplotlib.pyplot"):
        if name in sys.modules:
            continue
        try:
            __import__(name)
        except ImportError:
            stand_ins[name] = sys.modules[name] = types.ModuleType(name)
    if "matplotlib.pyplot" in stand_ins:
        sys.modules["matplotlib"].pyplot = stand_ins["matplotlib.pyplot"]
    try:
        from msst.utils import audio_utils, model_utils, settings  # noqa: F401  (hard imports: never skipped)
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    return settings, model_utils, audio_utils


msettings, mutils, maudio = _import_oracle()

DATA = Path(__file__).parent / "data" / "msst"
CONFIGS = {"scnet": DATA / "config_musdb18_scnet.yaml", "scnet_masked": DATA / "config_musdb18_scnet.yaml",
           "scnet_tran": DATA / "config_musdb18_scnet_tran.yaml"}
OURS = {"scnet": SCNet, "scnet_masked": SCNetMasked, "scnet_tran": SCNetTran}
CPU = torch.device("cpu")
RATE = 44100
# MSST's "scnet" and "scnet_tran" call torch.stft without a window; torch says so on every call.
pytestmark = pytest.mark.filterwarnings("ignore:A window was not provided")
CHUNK = 2205  # audio.chunk_size of the shrunk configs (0.05 s)
TOL = 1e-5  # of the reference's peak


def reference(model_type: str, config_path: Path = None, seed: int = 0):
    """(MSST's network for the config, with every float parameter drawn at random; its ConfigDict)."""
    model, config = msettings.get_model_from_config(model_type, str(config_path or CONFIGS[model_type]))
    gen = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        noise = torch.randn(value.shape, generator=gen)
        if key.endswith("rotary_embed.freqs"):  # shared tables: the same draw everywhere, still a new one
            state[key] = value * (1 + 0.1 * torch.randn(value.shape, generator=torch.Generator().manual_seed(seed)))
        else:
            state[key] = value + 0.1 * noise
    model.load_state_dict(state)
    return model.eval(), config


def save_release(model, path: Path) -> Path:
    """A release .ckpt: torch.save of the plain state dict."""
    torch.save(model.state_dict(), path)
    return path


def save_trainer(model, path: Path) -> Path:
    """What msst 0.1.0's trainer writes (`save_weights`: the weights under model_state_dict,
    with optimizer state and metrics)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    args = types.SimpleNamespace(train_lora_peft=False, train_lora_loralib=False, checkpoint_meta={})
    mutils.save_weights(str(path), model, [0], optimizer, 3, {"sdr": [1.0]}, [0.5], 1.0, args)
    return path


def place(tmp_path: Path, model_type: str, model, *, name: str = "model", saver=save_release,
          config_path: Path = None) -> Path:
    """The checkpoint `<name>.ckpt` beside its config `<name>.yaml` (a copy of the MSST file)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    shutil.copy(config_path or CONFIGS[model_type], tmp_path / f"{name}.yaml")
    return saver(model, tmp_path / f"{name}.ckpt")


def peak_error(ours, expected) -> float:
    ours, expected = np.asarray(ours), np.asarray(expected)
    assert ours.shape == expected.shape
    return float(np.abs(ours - expected).max() / np.abs(expected).max())


def noise(channels: int, length: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(0.3 * np.random.default_rng(seed).standard_normal((channels, length)).astype(np.float32))


# --------------------------------------------------------------------------- (1) the networks


@pytest.mark.parametrize("model_type", ["scnet", "scnet_masked", "scnet_tran"])
def test_network_matches_msst(tmp_path, model_type):
    ref, _ = reference(model_type)
    bag = family.load_scnet(place(tmp_path, model_type, ref), tmp_path / "model.yaml", model_type=model_type)
    ours = bag.models[0]
    assert type(ours) is OURS[model_type] and bag.extra["model_type"] == model_type
    x = noise(2, 3 * CHUNK + 123, seed=1)[None].repeat(2, 1, 1)
    x[1] *= -0.5
    with torch.inference_mode():
        expected, got = ref(x), ours(x)
    assert got.shape == expected.shape == (2, 4, 2, x.shape[-1])
    assert peak_error(got, expected) <= TOL


@pytest.mark.parametrize("model_type", ["scnet", "scnet_tran"])
def test_network_variants_outside_the_published_configs(tmp_path, model_type):
    """Rotary positions over part of a head, a shorter window than the FFT (zero-padded
    rectangle), one stem, mono: each still MSST's numbers."""
    config = msst_format.read_config(CONFIGS[model_type])
    config["model"].update(win_size=96, audio_channels=1, dims=[2, 8, 12, 16], sources=["vocals"])
    config["training"]["instruments"] = ["vocals"]
    if model_type == "scnet_tran":
        config["model"].update(tran_rotary_embedding_dim=4, tran_depth=2)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.dump(config))
    ref, _ = reference(model_type, path, seed=5)
    bag = family.load_scnet(place(tmp_path, model_type, ref, config_path=path), tmp_path / "model.yaml")
    assert bag.sources == ["vocals"] and bag.audio_channels == 1
    x = noise(1, 2 * CHUNK + 77, seed=2)[None]
    with torch.inference_mode():
        assert peak_error(bag.models[0](x), ref(x)) <= TOL


# --------------------------------------------------------------------------- (2) whole tracks


def write_song(path: Path, length: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length) / RATE
    mix = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)])
    mix = (mix + 0.1 * rng.standard_normal(mix.shape)).astype(np.float32)
    sf.write(path, mix.T, RATE, subtype="FLOAT")
    return mix


def msst_stems(config, model, mix: np.ndarray, model_type: str):
    """MSST's inference of a track: demix, with inference.normalize around it as its command line does."""
    normalize = bool(config.inference.get("normalize", False))
    prepared, params = maudio.normalize_audio(mix) if normalize else (mix, None)
    stems = mutils.demix(config, model, prepared, CPU, model_type=model_type)
    return {k: (maudio.denormalize_audio(v, params) if normalize else v) for k, v in stems.items()}


def run_cli(tmp_path: Path, song: Path, ckpt: Path, out: str = "out"):
    result = CliRunner().invoke(cli.app, [str(song), "-m", str(ckpt), "--bit-depth", "32", "--clip", "none",
                                          "-o", str(tmp_path / out), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return tmp_path / out / ckpt.stem / song.stem


def without_normalisation(model_type: str, folder: Path) -> Path:
    """The shrunk config with inference.normalize false (see test_normalised_track_matches_msst)."""
    config = msst_format.read_config(CONFIGS[model_type])
    config["inference"]["normalize"] = False
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plain.yaml"
    path.write_text(yaml.dump(config))
    return path


@pytest.mark.parametrize("model_type, saver", [("scnet", save_trainer), ("scnet_masked", save_release),
                                               ("scnet_tran", save_release)])
def test_cli_whole_track_matches_msst_demix(tmp_path, model_type, saver):
    config_path = without_normalisation(model_type, tmp_path / "cfg")
    ref, config = reference(model_type, config_path, seed=2)
    ckpt = place(tmp_path / "model", model_type, ref, saver=saver, config_path=config_path)
    if model_type == "scnet_masked":  # its config reads as "scnet": the weights say which it is
        assert family.recognises(msst_format.read_config(tmp_path / "model" / "model.yaml")) == "scnet"
    song = tmp_path / "song.wav"
    mix = write_song(song, 3 * CHUNK + 700)  # 3.3 chunks: mirrored ends and a partial last chunk
    track = run_cli(tmp_path, song, ckpt)
    expected = msst_stems(config, ref, mix, model_type)
    assert sorted(p.stem for p in track.iterdir()) == sorted(expected)
    for stem, wave in expected.items():
        got, rate = sf.read(track / f"{stem}.wav", dtype="float32", always_2d=True)
        assert rate == RATE
        assert peak_error(got.T, wave) <= TOL, stem


def test_normalised_track_matches_msst(tmp_path):
    ref, config = reference("scnet", seed=2)
    assert config.inference.normalize
    ckpt = place(tmp_path / "model", "scnet", ref)
    song = tmp_path / "song.wav"
    mix = write_song(song, 3 * CHUNK + 700)
    track = run_cli(tmp_path, song, ckpt)
    for stem, wave in msst_stems(config, ref, mix, "scnet").items():
        got, _ = sf.read(track / f"{stem}.wav", dtype="float32", always_2d=True)
        assert peak_error(got.T, wave) <= TOL, stem


def test_target_instrument_keeps_that_stem_as_demix_does(tmp_path):
    ref, _ = reference("scnet", DATA / "config_vocals_scnet.yaml", seed=4)
    config = msst_format.read_config(DATA / "config_vocals_scnet.yaml")
    config["training"]["target_instrument"] = "other"
    path = tmp_path / "model.yaml"
    path.write_text(yaml.dump(config))
    bag = families.load_local(save_release(ref, tmp_path / "model.ckpt"))
    assert bag.sources == ["other"] and bag.overlap == 0.75
    mix = noise(2, 2 * CHUNK + 999, seed=3)
    from unmixcli.engine import EngineOptions, separate_tensor

    ours = separate_tensor(bag, mix, None, EngineOptions(precision="fp32"), CPU)
    oracle_config = msettings.load_config("scnet", str(path))
    expected = mutils.demix(oracle_config, ref, mix.numpy(), CPU, model_type="scnet")
    assert list(expected) == ["other"]
    assert peak_error(ours["other"], expected["other"]) <= TOL


# --------------------------------------------------------------------------- (3) routing


def test_a_local_ckpt_goes_to_scnet_and_its_contract_is_msst_demix(tmp_path):
    ref, _ = reference("scnet_tran", seed=6)
    ckpt = place(tmp_path, "scnet_tran", ref, name="tran", saver=save_trainer)
    assert families._family_for_file(ckpt).name == "scnet"
    bag = families.load_local(tmp_path)  # the folder: one checkpoint, its config by stem
    assert bag.extra["family"] == "scnet" and bag.extra["model_type"] == "scnet_tran"
    assert bag.sources == ["drums", "bass", "other", "vocals"] and bag.name == "tran"
    contract = bag.contracts[0]
    assert (contract.segment_rule, contract.window, contract.normalize, contract.overlap) == ("fixed", "fade", False, 0.5)
    assert round(contract.segment * RATE) == CHUNK and contract.bf16 is False
    # --config names a config elsewhere
    other = tmp_path / "elsewhere"
    other.mkdir()
    (tmp_path / "tran.yaml").rename(other / "cfg.yaml")
    bag = families.load_local(ckpt, config=other / "cfg.yaml")
    assert bag.extra["model_type"] == "scnet_tran"


def test_recognition_is_exclusive_among_the_msst_families():
    ours = {p.name: msst_format.read_config(p) for p in DATA.glob("*.yaml") if "scnet" in p.name}
    theirs = {p.name: msst_format.read_config(p) for p in DATA.glob("*.yaml") if "scnet" not in p.name}
    assert {n: family.recognises(c) for n, c in ours.items()} == {
        "config_musdb18_scnet.yaml": "scnet", "config_vocals_scnet.yaml": "scnet",
        "config_musdb18_scnet_tran.yaml": "scnet_tran"}
    assert theirs and all(family.recognises(c) is None for c in theirs.values())
    # The other MSST families: the rows that recognise an MSST config (UVR's rows take a config
    # too, as --model-params, but recognise none).
    others = [row for row in families.FAMILIES.values()
              if row.takes_config and row.name != "scnet" and hasattr(row.module(), "recognises")]
    assert others  # the other MSST families
    for row in others:
        assert all(row.module().recognises(c) is None for c in ours.values()), row.name
    unofficial = {"model": {"dims": [4, 32], "bandsplit_ratios": [0.2, 0.4, 0.4], "n_rnn_layers": 6}}
    assert family.recognises(unofficial) is None  # MSST's scnet_unofficial: not ours
    declared = dict(ours["config_musdb18_scnet.yaml"], training={"model_type": "scnet_masked"})
    assert family.recognises(declared) == "scnet_masked"


def test_registry_arch_names_the_masked_type(tmp_path):
    ref, _ = reference("scnet_masked", seed=7)
    place(tmp_path, "scnet_masked", ref)
    spec = types.SimpleNamespace(name="tiny-masked", arch="scnet_masked", checkpoint="model.ckpt",
                                 config="model.yaml", source="test")
    bag = family.load_spec(spec, tmp_path)
    assert isinstance(bag.models[0], SCNetMasked) and bag.name == "tiny-masked"
    wrong = types.SimpleNamespace(**{**vars(spec), "arch": "scnet_unofficial"})
    with pytest.raises(CheckpointError, match="unknown scnet arch"):
        family.load_spec(wrong, tmp_path)


# --------------------------------------------------------------------------- (4) one-line errors


def test_an_unknown_model_option_is_named(tmp_path):
    ref, _ = reference("scnet", seed=8)
    ckpt = place(tmp_path, "scnet", ref)
    config = msst_format.read_config(CONFIGS["scnet"])
    config["model"]["use_mamba"] = True
    config["model"]["tran_depth"] = 2  # a tran option: the config now reads as scnet_tran, still one unknown
    (tmp_path / "model.yaml").write_text(yaml.dump(config))
    with pytest.raises(CheckpointError) as err:
        families.load_local(ckpt)
    message = err.value.one_line()
    assert "use_mamba" in message and "tran_depth" not in message and "\n" not in message
    song = tmp_path / "song.wav"
    write_song(song, CHUNK)
    result = CliRunner().invoke(cli.app, [str(song), "-m", str(ckpt), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert any("use_mamba" in line for line in lines) and not (tmp_path / "o").exists()


def test_weights_that_do_not_fit_the_config_fail_in_one_line(tmp_path):
    ref, _ = reference("scnet", seed=9)
    ckpt = place(tmp_path, "scnet", ref)
    config = msst_format.read_config(CONFIGS["scnet"])
    config["model"]["dims"] = [4, 8, 12, 20]
    (tmp_path / "model.yaml").write_text(yaml.dump(config))
    with pytest.raises(CheckpointError) as err:
        families.load_local(ckpt)
    message = err.value.one_line()
    assert "do not fit the scnet" in message and "\n" not in message
    assert err.value.hint

    config["model"]["dims"] = [6, 8, 12, 16]  # not 2 per audio channel
    (tmp_path / "model.yaml").write_text(yaml.dump(config))
    with pytest.raises(CheckpointError, match="dims\\[0\\] must be 2 \\* audio_channels"):
        families.load_local(ckpt)


def test_family_keys_are_the_constructors():
    """The accepted config keys are exactly MSST's constructor arguments (and ours)."""
    import inspect

    from msst.models.scnet.scnet import SCNet as MSCNet
    from msst.models.scnet.scnet_masked import SCNet as MMasked
    from msst.models.scnet.scnet_tran import SCNet_Tran as MTran

    def args(cls):
        return set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}

    assert family.MODEL_KEYS["scnet"] == args(MSCNet) == args(SCNet)
    assert family.MODEL_KEYS["scnet_masked"] == args(MMasked)
    assert family.MODEL_KEYS["scnet_tran"] == args(MTran) == args(SCNet) | args(SCNetTran)
