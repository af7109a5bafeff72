"""BS-RoFormer / Mel-Band RoFormer against msst 0.1.0 itself, the inference the community
checkpoints are published and scored with.

MSST is a test-only oracle: its model is built from one of its own published configs
(shrunk, tests/data/msst/), given random weights and saved as MSST saves a checkpoint
(torch.save of the state dict); our loader reads the same two files. Model outputs must
agree within 1e-5 of their peak; whole tracks through the command line (`unmix SONG -m
FILE.ckpt`, float WAV, no clipping) must equal `msst.utils.model_utils.demix` on the same
file within 1e-5 of peak, with MSST's stem names. (tests/test_roformer.py keeps the parity
with bs-roformer 0.3.10 where that code and MSST agree.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from typer.testing import CliRunner

from unmixcli import cli
from unmixcli.errors import CheckpointError
from unmixcli.families.roformer import load_roformer
from unmixcli.models.bag import Contract
from unmixcli.models.roformer import MelBandRoformer

msst_roformer = pytest.importorskip("msst.models.bs_roformer")
msst_utils = pytest.importorskip("msst.utils.model_utils")
ConfigDict = pytest.importorskip("ml_collections").ConfigDict

pytestmark = pytest.mark.filterwarnings("ignore:.*sdp_kernel.*:FutureWarning")

DATA = Path(__file__).parent / "data" / "msst"
CPU = torch.device("cpu")
RATE = 44100

# config file -> MSST model type (its --model_type)
CONFIGS = {
    "kim_mel_band_roformer.yaml": "mel_band_roformer",
    "viperx_bs_roformer_1297.yaml": "bs_roformer",
    "sw_bs_roformer_6stem.yaml": "bs_roformer",
    "karaoke_bs_roformer.yaml": "bs_roformer",
}
MSST_CLASSES = {"mel_band_roformer": "MelBandRoformer", "bs_roformer": "BSRoformer"}

# MSST decides the first/last-chunk fades once per batch of inference.batch_size chunks
# (the first chunk of a track keeps its fade-in when it shares a batch, every chunk of the
# last batch loses its fade-out), so for a config with batch_size > 1 its `demix` is only
# reproduced by an engine that knows that batch size (the Contract's `window_batch`).
ENGINE_HAS_MSST_BATCHES = "window_batch" in getattr(Contract, "__dataclass_fields__", {})


def read_text(name: str, **edits) -> str:
    """A test config's text, with `section.key: value` lines replaced (edits keys 'section__key')."""
    data = yaml.load((DATA / name).read_text(), Loader=yaml.FullLoader)  # test side only: MSST's own loader
    for key, value in edits.items():
        section, field = key.split("__")
        if value is None:
            data[section].pop(field, None)
        else:
            data[section][field] = value
    return yaml.dump(data, sort_keys=False)


def msst_model(text: str, model_type: str, seed: int = 0):
    """MSST's model for a config text, as its get_model_from_config builds it, with random
    weights (norm gains perturbed so that they matter)."""
    config = ConfigDict(yaml.load(text, Loader=yaml.FullLoader))
    torch.manual_seed(seed)
    model = getattr(msst_roformer, MSST_CLASSES[model_type])(**dict(config.model)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.mul_(1 + 0.2 * torch.randn_like(p))
    return model, config


def write_checkpoint(folder: Path, text: str, model) -> Path:
    """`model.ckpt` (torch.save of the state dict, as MSST writes it) with `model.yaml` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.ckpt")
    (folder / "model.yaml").write_text(text)
    return folder / "model.ckpt"


def msst_forward(model, config, x: torch.Tensor) -> torch.Tensor:
    """[B, C, T] -> [B, S, C, T'] as MSST's demix calls its model (target head alone where it can)."""
    training = config.training
    kwargs = {}
    target = training.get("target_instrument")
    if target and len(model.mask_estimators) == len(training.instruments):
        kwargs["active_stem_ids"] = [list(training.instruments).index(target)]
    with torch.inference_mode():
        y = model(x, **kwargs)
    return y if y.dim() == 4 else y[:, None]  # a one-stem Mel-Band RoFormer drops the stem axis


def peak_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


# --------------------------------------------------------------------------- model outputs


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_equals_msst(tmp_path, name):
    text = read_text(name)
    model, config = msst_model(text, CONFIGS[name])
    bag = load_roformer(write_checkpoint(tmp_path, text, model), tmp_path / "model.yaml")
    ours = bag.models[0]
    assert ours.zero_dc is True  # none of these configs says: MSST's default
    x = torch.randn(2, 2, config.audio.chunk_size, generator=torch.Generator().manual_seed(1))
    expected = msst_forward(model, config, x)
    with torch.inference_mode():
        got = ours(x)
    assert got.shape[:2] == (2, len(bag.sources))
    assert peak_error(got[..., :expected.shape[-1]].numpy(), expected.numpy()) < 1e-5


def test_target_head_of_a_model_with_one_head_per_instrument(tmp_path):
    """A config with target_instrument for a model with a head per instrument: MSST runs that
    head alone (active_stem_ids) and names the one stem after the target."""
    text = read_text("karaoke_bs_roformer.yaml", training__target_instrument="Instrumental")
    model, config = msst_model(text, "bs_roformer", seed=4)
    bag = load_roformer(write_checkpoint(tmp_path, text, model), tmp_path / "model.yaml")
    assert bag.sources == ["Instrumental"] and bag.models[0].active_stems == [1]
    x = torch.randn(1, 2, 8192, generator=torch.Generator().manual_seed(2))
    expected = msst_forward(model, config, x)
    with torch.inference_mode():
        got = bag.models[0](x)
        both = msst_forward(model, ConfigDict({"training": {"instruments": [], "target_instrument": None}}), x)
    assert got.shape == (1, 1, 2, 8192)
    assert peak_error(got.numpy(), expected.numpy()) < 1e-5
    assert peak_error(got.numpy(), both[:, 1:].numpy()) < 1e-5  # the second head's output


@pytest.mark.parametrize("zero_dc", [None, True, False])
def test_zero_dc_follows_msst_and_can_be_turned_off(tmp_path, zero_dc):
    """Left out, zero_dc is on, as in MSST's classes; a config that says false gets the
    older behaviour (bs-roformer 0.3.x's, which has no such step), matching MSST's with false."""
    text = read_text("kim_mel_band_roformer.yaml", model__zero_dc=zero_dc)
    model, config = msst_model(text, "mel_band_roformer", seed=2)
    assert model.zero_dc is (zero_dc is not False)
    bag = load_roformer(write_checkpoint(tmp_path, text, model), tmp_path / "model.yaml")
    assert bag.models[0].zero_dc is (zero_dc is not False)
    x = torch.randn(1, 2, 8192, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        got = bag.models[0](x)
    assert peak_error(got.numpy(), msst_forward(model, config, x).numpy()) < 1e-5


def test_configs_msst_refuses_are_refused(tmp_path):
    text = read_text("karaoke_bs_roformer.yaml")
    model, _ = msst_model(text, "bs_roformer")
    ckpt = write_checkpoint(tmp_path, text, model)
    # a target that names none of the two heads
    (tmp_path / "model.yaml").write_text(read_text("karaoke_bs_roformer.yaml", training__target_instrument="drums"))
    with pytest.raises(CheckpointError, match="target_instrument 'drums' is not among"):
        load_roformer(ckpt, tmp_path / "model.yaml")
    text = read_text("kim_mel_band_roformer.yaml")
    model, _ = msst_model(text, "mel_band_roformer")
    ckpt = write_checkpoint(tmp_path, text, model)
    (tmp_path / "model.yaml").write_text(read_text("kim_mel_band_roformer.yaml", model__use_pope=True))
    with pytest.raises(CheckpointError, match="use_pope"):
        load_roformer(ckpt, tmp_path / "model.yaml")
    # use_pope: false is MSST's default and builds the rotary model
    (tmp_path / "model.yaml").write_text(read_text("kim_mel_band_roformer.yaml", model__use_pope=False))
    assert isinstance(load_roformer(ckpt, tmp_path / "model.yaml").models[0], MelBandRoformer)


# --------------------------------------------------------------------------- whole tracks


def write_song(path: Path, length: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(length) / RATE
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * rng.standard_normal(length) + 0.05
    right = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.1 * rng.standard_normal(length)
    sf.write(path, np.stack([left, right], 1).astype(np.float32), RATE, subtype="FLOAT")
    return path


def run_cli(song: Path, ckpt: Path, out: Path, *extra) -> dict:
    args = [song, "-m", ckpt, "-o", out, "-q", "--bit-depth", "32", "--clip", "none", "--precision", "fp32", *extra]
    result = CliRunner().invoke(cli.app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stems = {}
    for wav in sorted(out.rglob("*.wav")):
        data, rate = sf.read(wav, dtype="float32", always_2d=True)
        assert rate == RATE
        stems[wav.stem] = data.T
    return stems


# Track lengths (chunk 8192): mirrored ends, a partial last chunk and several batches, the
# last of them full (12 chunks in batches of 4 at num_overlap 2: its first chunk's fade-out,
# which MSST drops, lies inside the track); a track shorter than twice the mirrored border
# (no mirroring, a filled last chunk, and with batch_size > 1 a first chunk that keeps its
# fade-in, so the track's first sample gets weight 0 and MSST writes 0 there).
LENGTHS = [40000, 6000]


def _cases():
    for name in CONFIGS:
        batch = yaml.load((DATA / name).read_text(), Loader=yaml.FullLoader)["inference"]["batch_size"]
        yield pytest.param(name, None, id=f"{name[:-5]}-published")
        if batch > 1:
            yield pytest.param(name, 1, id=f"{name[:-5]}-batch1")


@pytest.mark.parametrize("length", LENGTHS, ids=["long", "short"])
@pytest.mark.parametrize("name, batch", list(_cases()))
def test_whole_track_cli_equals_msst_demix(tmp_path, hf_env, name, batch, length):
    if batch is None and not ENGINE_HAS_MSST_BATCHES:
        published = yaml.load((DATA / name).read_text(), Loader=yaml.FullLoader)["inference"]["batch_size"]
        if published > 1:
            pytest.xfail("the engine blends chunks as MSST does with batch_size 1 only")
    text = read_text(name) if batch is None else read_text(name, inference__batch_size=batch)
    model, config = msst_model(text, CONFIGS[name], seed=5)
    ckpt = write_checkpoint(tmp_path / "model", text, model)
    song = write_song(tmp_path / "song.wav", length, seed=length)
    ours = run_cli(song, ckpt, tmp_path / "out")
    mix, _ = sf.read(song, dtype="float32", always_2d=True)
    expected = msst_utils.demix(config, model, mix.T, CPU, CONFIGS[name])
    assert sorted(ours) == sorted(expected)  # MSST's stem names, nothing else written
    for stem, wav in expected.items():
        assert ours[stem].shape == wav.shape
        assert peak_error(ours[stem], wav) < 1e-5, stem


def test_instrumental_is_the_mix_minus_msst_vocals(tmp_path, hf_env):
    """`--karaoke` with a vocals model writes what MSST's --extract_instrumental writes:
    instrumental = mix - vocals (MSST subtracts its target stem)."""
    text = read_text("kim_mel_band_roformer.yaml", inference__batch_size=1)
    model, config = msst_model(text, "mel_band_roformer", seed=6)
    ckpt = write_checkpoint(tmp_path / "model", text, model)
    song = write_song(tmp_path / "song.wav", 3 * 8192 + 77, seed=9)
    ours = run_cli(song, ckpt, tmp_path / "out", "--karaoke")
    mix = sf.read(song, dtype="float32", always_2d=True)[0].T
    vocals = msst_utils.demix(config, model, mix, CPU, "mel_band_roformer")["vocals"]
    assert sorted(ours) == ["instrumental", "vocals"]
    assert peak_error(ours["vocals"], vocals) < 1e-5
    assert peak_error(ours["instrumental"], mix - vocals) < 1e-5


def msst_normalize(mix: np.ndarray):
    """msst.utils.audio_utils.normalize_audio, written out (that module needs matplotlib):
    the mono mix's mean and population std, std 1 for a silent mix."""
    mono = mix.mean(0)
    mean, std = mono.mean(), mono.std()
    if not np.isfinite(std) or std <= np.finfo(np.float32).eps:
        std = 1.0
    return (mix - mean) / std, (mean, std)


@pytest.mark.parametrize("length", LENGTHS, ids=["long", "short"])
def test_normalize_true_equals_msst(tmp_path, hf_env, length):
    """inference.normalize: MSST's separate_audio standardises the mix before demix and
    undoes it on every stem."""
    text = read_text("kim_mel_band_roformer.yaml", inference__batch_size=1, inference__normalize=True)
    model, config = msst_model(text, "mel_band_roformer", seed=7)
    ckpt = write_checkpoint(tmp_path / "model", text, model)
    song = write_song(tmp_path / "song.wav", length, seed=3)
    ours = run_cli(song, ckpt, tmp_path / "out")
    mix = sf.read(song, dtype="float32", always_2d=True)[0].T
    normalised, (mean, std) = msst_normalize(mix)
    expected = msst_utils.demix(config, model, normalised, CPU, "mel_band_roformer")["vocals"] * std + mean
    assert peak_error(ours["vocals"], expected) < 1e-5


def test_registry_entry_can_turn_zero_dc_off(tmp_path):
    """A registry entry whose published config leaves zero_dc out, for a checkpoint trained
    without that step, says `extra: {model_overrides: {zero_dc: false}}`."""
    from types import MappingProxyType, SimpleNamespace

    from unmixcli.families.roformer import load_spec

    text = read_text("viperx_bs_roformer_1297.yaml")
    model, config = msst_model(text, "bs_roformer", seed=8)
    write_checkpoint(tmp_path, text, model)
    spec = SimpleNamespace(name="old-bs", arch="BSRoformer", config="model.yaml", checkpoint="model.ckpt",
                           source=None, extra=MappingProxyType({}))
    assert load_spec(spec, tmp_path).models[0].zero_dc is True
    spec.extra = MappingProxyType({"model_overrides": {"zero_dc": False}})
    ours = load_spec(spec, tmp_path).models[0]
    assert ours.zero_dc is False
    old = msst_model(read_text("viperx_bs_roformer_1297.yaml", model__zero_dc=False), "bs_roformer", seed=8)[0]
    x = torch.randn(1, 2, 8192, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        got = ours(x)
    assert peak_error(got.numpy(), msst_forward(old, config, x).numpy()) < 1e-5
    spec.extra = MappingProxyType({"model_overrides": ["zero_dc"]})
    with pytest.raises(CheckpointError, match="model_overrides must be a mapping"):
        load_spec(spec, tmp_path)


def test_tta_equals_msst_apply_tta(tmp_path, hf_env):
    """`--tta` is MSST's --use_tta (channels swapped, polarity inverted, averaged)."""
    text = read_text("karaoke_bs_roformer.yaml", inference__num_overlap=2)
    model, config = msst_model(text, "bs_roformer", seed=10)
    ckpt = write_checkpoint(tmp_path / "model", text, model)
    song = write_song(tmp_path / "song.wav", 2 * 8192 + 500, seed=10)
    ours = run_cli(song, ckpt, tmp_path / "out", "--tta")
    mix = sf.read(song, dtype="float32", always_2d=True)[0].T
    plain = msst_utils.demix(config, model, mix, CPU, "bs_roformer")
    expected = msst_utils.apply_tta(config, model, mix, plain, CPU, "bs_roformer")
    assert sorted(ours) == sorted(expected) == ["Instrumental", "Vocals"]
    for stem, wav in expected.items():
        assert peak_error(ours[stem], wav) < 1e-5, stem


def test_inference_chunk_size_is_the_one_demix_uses(tmp_path, hf_env):
    """MSST's demix takes inference.chunk_size over audio.chunk_size when a config has both."""
    text = read_text("kim_mel_band_roformer.yaml", inference__batch_size=1, inference__chunk_size=4096)
    model, config = msst_model(text, "mel_band_roformer", seed=11)
    ckpt = write_checkpoint(tmp_path / "model", text, model)
    song = write_song(tmp_path / "song.wav", 5 * 4096 + 99, seed=11)
    ours = run_cli(song, ckpt, tmp_path / "out")
    mix = sf.read(song, dtype="float32", always_2d=True)[0].T
    expected = msst_utils.demix(config, model, mix, CPU, "mel_band_roformer")["vocals"]
    assert peak_error(ours["vocals"], expected) < 1e-5


def test_streamed_blocks_equal_msst_demix_with_its_batches(tmp_path):
    """Streaming: a chunk's fades are only known once the track is known to go on past its
    batch, so the engine holds it back until then; small blocks give MSST's result too."""
    if not ENGINE_HAS_MSST_BATCHES:
        pytest.xfail("the engine blends chunks as MSST does with batch_size 1 only")
    from unmixcli.engine import EngineOptions, separate_stream

    text = read_text("kim_mel_band_roformer.yaml")  # inference.batch_size 4
    model, config = msst_model(text, "mel_band_roformer", seed=12)
    bag = load_roformer(write_checkpoint(tmp_path, text, model), tmp_path / "model.yaml")
    mix = write_song(tmp_path / "song.wav", LENGTHS[0], seed=12)
    mix = sf.read(mix, dtype="float32", always_2d=True)[0].T
    blocks = (mix[:, i:i + 1000] for i in range(0, mix.shape[1], 1000))
    pieces = [out["vocals"] for out in separate_stream(bag, blocks, None, None, EngineOptions(precision="fp32"), CPU)]
    expected = msst_utils.demix(config, model, mix, CPU, "mel_band_roformer")["vocals"]
    assert peak_error(torch.cat(pieces, dim=1).numpy(), expected) < 1e-5


# --------------------------------------------------------------------------- experimental types

# The experimental configs: the published ones plus the two options only those classes have,
# at their defaults (hyper-connections off, no value residuals).
NEUTRAL = dict(model__num_residual_streams=1, model__use_value_residual_learning=False)


def msst_experimental(text: str, model_type: str, seed: int):
    """MSST's bs_roformer_experimental / mel_band_roformer_experimental model for a config
    (their modules import hyper_connections, so these tests need it)."""
    pytest.importorskip("hyper_connections")
    import importlib

    module = importlib.import_module(f"msst.models.bs_roformer.{model_type}")
    config = ConfigDict(yaml.load(text, Loader=yaml.FullLoader))
    torch.manual_seed(seed)
    model = getattr(module, MSST_CLASSES[model_type.removesuffix("_experimental")])(**dict(config.model)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.mul_(1 + 0.2 * torch.randn_like(p))
    return model, config


@pytest.mark.parametrize("name, edits", [
    ("kim_mel_band_roformer.yaml", {}),
    ("viperx_bs_roformer_1297.yaml", {}),
    ("karaoke_bs_roformer.yaml", {}),
    ("viperx_bs_roformer_1297.yaml", dict(model__depth=3, model__time_transformer_depth=2)),
    ("kim_mel_band_roformer.yaml", dict(model__depth=3, model__use_value_residual_learning=True)),
    ("sw_bs_roformer_6stem.yaml", dict(model__depth=3, model__freq_transformer_depth=2,
                                       model__use_value_residual_learning=True)),
], ids=["kim", "viperx", "karaoke", "viperx-deeper", "kim-value-residuals", "sw-value-residuals-skip"])
def test_experimental_forward_equals_msst(tmp_path, name, edits):
    """The experimental classes never zero the DC bin and (their value-residual plumbing)
    run every block after the first without residual additions; with
    use_value_residual_learning those blocks also mix in the first block's values."""
    model_type = CONFIGS[name] + "_experimental"
    text = read_text(name, **{**NEUTRAL, **edits})
    model, config = msst_experimental(text, model_type, seed=13)
    bag = load_roformer(write_checkpoint(tmp_path, text, model), tmp_path / "model.yaml")
    assert bag.extra["model_type"] == model_type  # recognised by its options
    assert bag.models[0].zero_dc is False
    x = torch.randn(2, 2, 8192, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = model(x)
        got = bag.models[0](x)
    expected = expected if expected.dim() == 4 else expected[:, None]
    assert peak_error(got[..., :expected.shape[-1]].numpy(), expected.numpy()) < 1e-5


def test_experimental_arch_without_its_options_and_refusals(tmp_path):
    """A registry `arch` names the experimental type of a config that has none of its options;
    hyper-connections (several residual streams) and options those classes lack are refused."""
    from types import MappingProxyType, SimpleNamespace

    from unmixcli.families.roformer import load_spec

    text = read_text("viperx_bs_roformer_1297.yaml")
    model, config = msst_experimental(text, "bs_roformer_experimental", seed=14)
    write_checkpoint(tmp_path, text, model)
    spec = SimpleNamespace(name="exp", arch="bs_roformer_experimental", config="model.yaml",
                           checkpoint="model.ckpt", source=None, extra=MappingProxyType({}))
    bag = load_spec(spec, tmp_path)
    assert bag.extra["model_type"] == "bs_roformer_experimental" and bag.models[0].zero_dc is False
    x = torch.randn(1, 2, 8192, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        assert peak_error(bag.models[0](x).numpy(), model(x)[:, None].numpy()) < 1e-5
    for edit, words in [({"model__num_residual_streams": 4}, "num_residual_streams: 4 .hyper-connections. is not"),
                        ({**NEUTRAL, "model__zero_dc": True}, "does not support: zero_dc"),
                        ({**NEUTRAL, "model__use_pope": False}, "does not support: use_pope")]:
        (tmp_path / "model.yaml").write_text(read_text("viperx_bs_roformer_1297.yaml", **edit))
        with pytest.raises(CheckpointError, match=words):
            load_roformer(tmp_path / "model.ckpt", tmp_path / "model.yaml")
