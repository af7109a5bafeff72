"""MDX23C (MSST's TFC-TDF v3, model type "mdx23c"): ours against msst 0.1.0 on the same weights.

The configs are MSST's own (configs/config_vocals_mdx23c.yaml, configs/config_musdb18_mdx23c.yaml),
shrunk in tests/data/msst/ (a 256-point STFT, 2 levels, 8 channels; the same keys and structure).
Weights are random, drawn in MSST's own `TFC_TDF_net` and saved as MSST saves them:
`torch.save(model.state_dict())`. The reference side runs beside ours in every parity test:
its network on the same state dict, and its `demix` on the same track.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from ml_collections import ConfigDict
from typer.testing import CliRunner

from msst.models.mdx23c_tfc_tdf_v3 import TFC_TDF_net  # a hard import: the oracle must not be skipped
from msst.utils.model_utils import demix
from test_roformer_e2e import BS_YAML, MEL_YAML
from unmixcli import cli, families
from unmixcli.engine import EngineOptions, separate_tensor
from unmixcli.errors import CheckpointError
from unmixcli.families import mdx23c, roformer
from unmixcli.families.msst import read_config
from unmixcli.models.mdx23c import MDX23C

DATA = Path(__file__).parent / "data" / "msst"
VOCALS = DATA / "config_vocals_mdx23c.yaml"  # one stem: target_instrument vocals
MUSDB = DATA / "config_musdb18_mdx23c.yaml"  # four stems
RATE = 44100
CHUNK = 1984  # audio.chunk_size of both configs
CPU = torch.device("cpu")
TOL = 1e-5  # of the reference's peak


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def msst_config(data: dict) -> ConfigDict:
    """The config as MSST holds it (msst.utils.settings.load_config: ConfigDict of the YAML)."""
    return ConfigDict(copy.deepcopy(data))


def reference(data: dict, seed: int) -> TFC_TDF_net:
    """MSST's network for `data` with every parameter (and BatchNorm statistic) drawn at random."""
    torch.manual_seed(seed)
    net = TFC_TDF_net(msst_config(data))
    gen = torch.Generator().manual_seed(seed)
    state = net.state_dict()
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        noise = torch.randn(value.shape, generator=gen)
        if key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif value.dim() == 1:  # norm gains and shifts, running means
            state[key] = (1.0 if key.endswith("weight") else 0.0) + 0.2 * noise
        else:
            state[key] = value + 0.05 * noise
    net.load_state_dict(state)
    return net.eval()


def write_model(folder: Path, data: dict, net: torch.nn.Module, name: str = "model") -> Path:
    """`<name>.ckpt` (torch.save of the state dict, as MSST's training writes it) beside `<name>.yaml`."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / f"{name}.ckpt")
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder / f"{name}.ckpt"


def write_song(path: Path, length: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(length) / RATE
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * rng.standard_normal(length)
    right = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.1 * rng.standard_normal(length)
    sf.write(path, np.stack([left, right], 1).astype(np.float32), RATE, subtype="FLOAT")
    return path


def read(path: Path) -> np.ndarray:
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == RATE
    return data.T  # [C, T]


def run(*args):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def close(ours, expected) -> float:
    """max |ours - expected| as a fraction of the expected peak."""
    ours, expected = np.asarray(ours, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert ours.shape == expected.shape
    peak = float(np.abs(expected).max())
    assert peak > 1e-3  # the model did produce something
    return float(np.abs(ours - expected).max()) / peak


# --------------------------------------------------------------------------- the network


VARIANTS = {
    "vocals": (VOCALS, {}),
    "musdb": (MUSDB, {}),
    # The other norms and activations MSST's get_norm / get_act know.
    "batchnorm-relu": (MUSDB, {"norm": "BatchNorm", "act": "relu"}),
    "groupnorm-elu": (VOCALS, {"norm": "GroupNorm2", "act": "elu0.5"}),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_network_matches_msst_on_the_same_state_dict(tmp_path, variant):
    path, model_overrides = VARIANTS[variant]
    data = load_yaml(path)
    data["model"].update(model_overrides)
    ref = reference(data, seed=len(variant))
    bag = mdx23c.load_mdx23c(write_model(tmp_path, data, ref), tmp_path / "model.yaml")  # strict keys
    ours = bag.models[0]
    assert isinstance(ours, MDX23C) and ours.audio_channels == 2
    x = 0.3 * torch.randn(2, 2, CHUNK, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = ref(x)
        got = ours(x)
    # MSST gives [B, S, 2, T] for one stem too (S = 1); ours is [B, S, C, T] always.
    stems = 1 if data["training"]["target_instrument"] else len(data["training"]["instruments"])
    assert tuple(expected.shape) == (2, stems, 2, CHUNK) == tuple(got.shape)
    assert close(got, expected) <= TOL


def test_stems_and_contract_follow_the_config(tmp_path):
    vocals = mdx23c.load_mdx23c(write_model(tmp_path / "v", load_yaml(VOCALS), reference(load_yaml(VOCALS), 1)),
                                VOCALS)
    assert vocals.sources == ["vocals"] and vocals.extra["family"] == "mdx23c"
    assert (vocals.window, vocals.normalize, vocals.overlap) == ("fade", False, 0.75)
    assert round(vocals.contracts[0].segment * RATE) == CHUNK and vocals.contracts[0].segment_rule == "fixed"
    musdb = mdx23c.load_mdx23c(write_model(tmp_path / "m", load_yaml(MUSDB), reference(load_yaml(MUSDB), 2)), MUSDB)
    assert musdb.sources == ["vocals", "bass", "drums", "other"] and musdb.overlap == 0.5


def test_inference_chunk_size_wins_as_in_msst_demix(tmp_path):
    """MSST's demix takes inference.chunk_size over audio.chunk_size; so does the contract."""
    data = load_yaml(VOCALS)
    data["inference"]["chunk_size"] = 4032  # 63 hops: 64 frames
    bag = mdx23c.load_mdx23c(write_model(tmp_path, data, reference(data, 3)), tmp_path / "model.yaml")
    assert round(bag.contracts[0].segment * RATE) == 4032


# --------------------------------------------------------------------------- whole tracks


@pytest.mark.parametrize("config, length", [(MUSDB, 4 * CHUNK + 777), (VOCALS, 3 * CHUNK + 100)])
def test_cli_stems_equal_msst_demix(tmp_path, config, length):
    data = load_yaml(config)
    ref = reference(data, seed=length)
    ckpt = write_model(tmp_path / "model", data, ref, name="mdx")
    song = write_song(tmp_path / "song.wav", length, seed=length)
    result = run(song, "-m", ckpt, "--bit-depth", "32", "--clip", "none", "-q", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    expected = demix(msst_config(data), ref, read(song), CPU, model_type="mdx23c")
    track = tmp_path / "out" / "mdx" / "song"
    assert sorted(p.stem for p in track.iterdir()) == sorted(expected)
    for stem, wav in expected.items():
        assert close(read(track / f"{stem}.wav"), wav) <= TOL, stem


@pytest.mark.parametrize("length", [
    5 * CHUNK + CHUNK // 4,  # mirrored ends, a last chunk under half full (zero-filled)
    1500,                    # one chunk, no mirroring, filled by reflection (over half full)
    900,                     # one chunk under half full: filled with zeros
])
def test_separate_tensor_equals_msst_demix(tmp_path, length):
    data = load_yaml(MUSDB)
    ref = reference(data, seed=9)
    bag = families.load_local(write_model(tmp_path, data, ref))
    mix = torch.from_numpy(read(write_song(tmp_path / "s.wav", length, seed=9)))
    ours = separate_tensor(bag, mix, None, EngineOptions(precision="fp32", batch_size=3), CPU)
    expected = demix(msst_config(data), ref, mix.numpy(), CPU, model_type="mdx23c")
    assert list(ours) == list(expected)
    for stem in expected:
        assert close(ours[stem].numpy(), expected[stem]) <= TOL, stem


def test_bf16_runs_and_stays_near_fp32(tmp_path):
    """The STFTs stay in float32 under autocast, so a bf16 request runs (the network in bf16)."""
    data = load_yaml(VOCALS)
    bag = families.load_local(write_model(tmp_path, data, reference(data, 4)))
    mix = torch.from_numpy(read(write_song(tmp_path / "s.wav", 2 * CHUNK, seed=4)))
    full = separate_tensor(bag, mix, None, EngineOptions(precision="fp32"), CPU)["vocals"]
    half = separate_tensor(bag, mix, None, EngineOptions(precision="bf16"), CPU)["vocals"]
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert 0 < close(half.numpy(), full.numpy()) < 0.1


# --------------------------------------------------------------------------- routing


def test_a_local_checkpoint_with_its_config_goes_to_this_family(tmp_path):
    data = load_yaml(VOCALS)
    ckpt = write_model(tmp_path / "m", data, reference(data, 6), name="MDX23C-8KFFT-InstVoc_HQ")
    assert families._family_for_file(ckpt).name == "mdx23c"
    for target in (ckpt, ckpt.parent):  # the file, or its folder
        bag = families.load_local(target)
        assert isinstance(bag.models[0], MDX23C) and bag.extra["model_type"] == "mdx23c"
    # --config: the config kept elsewhere.
    apart = tmp_path / "apart"
    apart.mkdir()
    (apart / "weights.ckpt").write_bytes(ckpt.read_bytes())
    assert families._family_for_file(apart / "weights.ckpt", VOCALS).name == "mdx23c"
    assert families.load_local(apart / "weights.ckpt", config=VOCALS).sources == ["vocals"]


def test_recognises_is_exclusive_with_the_roformers(tmp_path):
    for path in (VOCALS, MUSDB):
        config = read_config(path)
        assert mdx23c.recognises(config) == "mdx23c"
        assert roformer.recognises(config) is None
    for text in (MEL_YAML, BS_YAML):
        (tmp_path / "r.yaml").write_text(text)
        config = read_config(tmp_path / "r.yaml")
        assert roformer.recognises(config) is not None
        assert mdx23c.recognises(config) is None
    # MSST's STHT variant shares the keys; a config that says its type is not claimed.
    stht = read_config(MUSDB)
    stht["training"]["model_type"] = "mdx23c_stht"
    assert mdx23c.recognises(stht) is None


def test_no_other_msst_family_claims_these_configs():
    """Routing by `accepts` needs exclusive `recognises`: every other family that has one says None."""
    configs = [read_config(VOCALS), read_config(MUSDB)]
    others = [row for name, row in families.FAMILIES.items() if name != "mdx23c"]
    asked = 0
    for row in others:
        module = row.module()
        if hasattr(module, "recognises"):
            asked += 1
            assert all(module.recognises(c) is None for c in configs), row.name
    assert asked >= 1  # the RoFormers at least


# The audio and model sections of MSST's configs/config_vocals_mdx23c.yaml at full size (the
# architecture of MSST's released MDX23C vocals model, and of UVR's MDX23C-8KFFT-InstVoc_HQ).
FULL_SIZE = {
    "audio": {"chunk_size": 261120, "dim_f": 4096, "dim_t": 256, "hop_length": 1024, "n_fft": 8192,
              "num_channels": 2, "sample_rate": 44100, "min_mean_abs": 0.001},
    "model": {"act": "gelu", "bottleneck_factor": 4, "growth": 128, "norm": "InstanceNorm",
              "num_blocks_per_scale": 2, "num_channels": 128, "num_scales": 5, "num_subbands": 4, "scale": [2, 2]},
    "training": {"instruments": ["Vocals", "Instrumental"], "target_instrument": None},
    "inference": {"batch_size": 1, "dim_t": 256, "num_overlap": 4},
}


@pytest.mark.slow  # seconds: the meta device's first hann_window imports torch's decompositions
def test_the_full_size_config_builds_msst_s_layout():
    """The published size passes our geometry checks and has MSST's keys and shapes (meta device:
    no memory, no weights)."""
    with torch.device("meta"):
        ours = mdx23c.build(copy.deepcopy(FULL_SIZE), "mdx23c", None)
        ref = TFC_TDF_net(msst_config(FULL_SIZE))
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert list(mine) == list(theirs) and len(mine) == 319
    assert all(mine[k].shape == theirs[k].shape for k in theirs)
    assert tuple(mine["first_conv.weight"].shape) == (128, 16, 1, 1)
    assert tuple(mine["final_conv.2.weight"].shape) == (2 * 16, 128, 1, 1)  # two stems
    assert ours.sources == ["Vocals", "Instrumental"]


def test_registry_entry_loads_from_the_fake_hub(tmp_path, fake_hub):
    from fakehub import registry_entry, write_registry

    data = load_yaml(VOCALS)
    src = write_model(tmp_path / "src", data, reference(data, 7), name="MDX23C-8KFFT-InstVoc_HQ")
    files = {"MDX23C-8KFFT-InstVoc_HQ.ckpt": src.read_bytes(), "model_2_stem_full_band_8k.yaml": VOCALS.read_bytes()}
    fake_hub.add_repo("someone/MDX23C", files)
    entry = registry_entry("tiny-mdx", "someone/MDX23C", files, stems=["vocals"], family="mdx23c", arch="mdx23c",
                           checkpoint="MDX23C-8KFFT-InstVoc_HQ.ckpt", config="model_2_stem_full_band_8k.yaml")
    del entry["bag"]
    registry = write_registry(tmp_path / "reg.yaml", {"tiny-mdx": entry})
    bag = families.load_model("tiny-mdx", registry_files=[registry])
    assert bag.name == "tiny-mdx" and bag.sources == ["vocals"] and isinstance(bag.models[0], MDX23C)


# --------------------------------------------------------------------------- errors


def one_line_error(ckpt: Path, config) -> CheckpointError:
    with pytest.raises(CheckpointError) as err:
        mdx23c.load_mdx23c(ckpt, config)
    assert "\n" not in str(err.value) and "\n" not in (err.value.hint or "")
    return err.value


@pytest.mark.parametrize("change, named", [
    ({"model": {"use_attention": True}}, "use_attention"),
    ({"model": {"act": "swish"}}, "swish"),
    ({"model": {"norm": "LayerNorm"}}, "LayerNorm"),
    ({"audio": {"num_channels": 1}}, "num_channels"),
    ({"audio": {"chunk_size": CHUNK + 1}}, "chunk_size"),
    ({"model": {"num_scales": 4}}, "num_scales"),
    ({"training": {"target_instrument": "guitar"}}, "guitar"),
])
def test_a_config_we_cannot_run_is_named_in_one_line(tmp_path, change, named):
    data = load_yaml(VOCALS)
    ckpt = write_model(tmp_path, data, reference(data, 8))
    for section, values in change.items():
        data[section].update(values)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert named in one_line_error(ckpt, bad).message


def test_weights_that_do_not_fit_are_one_line(tmp_path):
    musdb = write_model(tmp_path / "musdb", load_yaml(MUSDB), reference(load_yaml(MUSDB), 10))
    err = one_line_error(musdb, VOCALS)  # four stems' weights under a one-stem config: shapes differ
    assert "do not fit" in err.message and "final_conv" in err.message
    state = torch.load(musdb, weights_only=True)
    del state["bottleneck_block.blocks.0.tfc1.2.weight"]
    torch.save(state, tmp_path / "cut.ckpt")
    err = one_line_error(tmp_path / "cut.ckpt", MUSDB)
    assert "1 missing key" in err.message and "bottleneck_block.blocks.0.tfc1.2.weight" in err.message


def test_cli_says_a_bad_option_in_one_line(tmp_path):
    data = load_yaml(VOCALS)
    ckpt = write_model(tmp_path / "m", data, reference(data, 11))
    data["model"]["num_heads"] = 4
    (tmp_path / "m" / "model.yaml").write_text(yaml.safe_dump(data))
    song = write_song(tmp_path / "song.wav", CHUNK)
    result = run(song, "-m", ckpt, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("error:") and "num_heads" in lines[0]
    assert all(line.startswith("hint:") for line in lines[1:])
