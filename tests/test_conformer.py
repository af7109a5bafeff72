"""BS-Conformer / Mel-Band Conformer (MSST's `bs_conformer`, `mel_band_conformer`) against msst 0.1.0.

The reference classes are the ones msst's `get_model_from_config` builds for these
model types (`msst.models.bs_roformer.BSConformer` / `MelBandConformer`, called with
the config's model section); the whole-track reference is `msst.utils.model_utils.demix`.
Weights are random (norm gains, BatchNorm statistics and the linear-attention
temperatures perturbed so that they matter), written as the community does:
`torch.save` of the reference model's state dict beside its YAML config. The configs
are MSST's published ones, shrunk (tests/data/msst/).
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from unmixcli import cli, families
from unmixcli.errors import CheckpointError
from unmixcli.families import conformer, msst, roformer
from unmixcli.models.roformer import BSRoformer

pytest.importorskip("msst")
pytest.importorskip("ml_collections")

from ml_collections import ConfigDict  # noqa: E402
from msst.models.bs_roformer import BSConformer as RefBSConformer  # noqa: E402
from msst.models.bs_roformer import MelBandConformer as RefMelBandConformer  # noqa: E402
from msst.utils.model_utils import demix  # noqa: E402

DATA = Path(__file__).parent / "data" / "msst"
RATE = 44100
CHUNK = 8192  # audio.chunk_size of the shrunk configs

CONFIGS = {  # file -> model type
    "config_vocals_bs_conformer.yaml": "bs_conformer",
    "config_musdb18_mel_band_conformer.yaml": "mel_band_conformer",
    "config_musdb18_mel_band_conformer_all_stems.yaml": "mel_band_conformer",
}
REFERENCE = {"bs_conformer": RefBSConformer, "mel_band_conformer": RefMelBandConformer}


def read_config(name: str) -> dict:
    return msst.read_config(DATA / name)


def reference_model(config: dict, model_type: str, seed: int = 0) -> torch.nn.Module:
    """msst's class for `model_type`, built as `get_model_from_config` does (`cls(**config.model)`),
    with random weights that exercise every parameter and buffer."""
    model_cfg = dict(config["model"])
    # msst 0.1.0 dropped `sage_attention` from the conformers' arguments, although MSST's
    # published configs (and the checkpoints trained with them) still carry `sage_attention: false`.
    model_cfg.pop("sage_attention", None)
    torch.manual_seed(seed)
    model = REFERENCE[model_type](**model_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "temperature")):
                p.mul_(1 + 0.3 * torch.randn_like(p))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.3)
                module.bias.normal_(0, 0.3)
    return model


def ours_for(config: dict, model_type: str, state: dict) -> torch.nn.Module:
    model = conformer.build(config, model_type, None)
    model.load_state_dict(state, strict=True)
    return model.eval()


def reference_forward(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return out[:, None] if out.dim() == 3 else out  # msst squeezes a one-stem output to [B, C, T]


def ckpt_bytes(model) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def write_model(folder: Path, config_name: str, model, config_text: str = None) -> Path:
    """`<folder>/model.ckpt` with its config beside it as `model.yaml`."""
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "model.ckpt"
    ckpt.write_bytes(ckpt_bytes(model))
    (folder / "model.yaml").write_text(config_text if config_text is not None
                                      else (DATA / config_name).read_text(encoding="utf-8"), encoding="utf-8")
    return ckpt


def peak_error(ours, expected) -> float:
    """max |ours - expected| relative to the peak of `expected`."""
    ours, expected = np.asarray(ours, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert ours.shape == expected.shape
    return float(np.abs(ours - expected).max() / np.abs(expected).max())


def noise(channels: int, length: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(0.3 * np.random.default_rng(seed).standard_normal((channels, length)).astype(np.float32))


# --------------------------------------------------------------------------- model parity


VARIANTS = [
    (name, {}) for name in CONFIGS
] + [
    # Options of the same classes that the published configs leave at their defaults.
    ("config_vocals_bs_conformer.yaml", dict(skip_connection=True, linear_conformer_depth=1, ff_mult=2,
                                            num_stems=2, zero_dc=False, depth=3)),
    ("config_musdb18_mel_band_conformer.yaml", dict(stereo=False, skip_connection=True, linear_conformer_depth=1,
                                                    mask_estimator_depth=1, conv_kernel_size=7,
                                                    time_conformer_depth=2)),
]


@pytest.mark.parametrize("name, overrides", VARIANTS)
def test_model_matches_msst(name, overrides):
    config = read_config(name)
    config["model"].update(overrides)
    model_type = CONFIGS[name]
    if overrides.get("num_stems", 0) > 1:
        config["training"]["target_instrument"] = None
    ref = reference_model(config, model_type, seed=len(name) + len(overrides))
    ours = ours_for(config, model_type, ref.state_dict())
    channels = 2 if config["model"]["stereo"] else 1
    x = torch.stack([noise(channels, CHUNK, seed=1), noise(channels, CHUNK, seed=2)])
    expected = reference_forward(ref, x)
    got = ours(x)
    assert got.shape == (2, len(ours.sources), channels, CHUNK)
    assert peak_error(got, expected) <= 1e-5


def test_mel_bands_are_msst_bands():
    config = read_config("config_musdb18_mel_band_conformer_all_stems.yaml")
    ref = reference_model(config, "mel_band_conformer")
    ours = conformer.build(config, "mel_band_conformer", None)
    for buffer in ("freq_indices", "freqs_per_band", "num_freqs_per_band", "num_bands_per_freq"):
        assert torch.equal(getattr(ours, buffer), getattr(ref, buffer)), buffer


def test_bf16_autocast_runs_and_stays_close():
    config = read_config("config_musdb18_mel_band_conformer_all_stems.yaml")
    ref = reference_model(config, "mel_band_conformer")
    ours = ours_for(config, "mel_band_conformer", ref.state_dict())
    x = noise(2, CHUNK, seed=5)[None]
    full = ours(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = ours(x)
    assert half.dtype == torch.float32
    assert peak_error(half, full) <= 5e-2


# --------------------------------------------------------------------------- whole tracks


def run(args):
    return CliRunner().invoke(cli.app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("name, target", [
    ("config_vocals_bs_conformer.yaml", "keep"),
    ("config_musdb18_mel_band_conformer.yaml", "keep"),
    ("config_musdb18_mel_band_conformer_all_stems.yaml", "keep"),
    # A config naming a target of a four-head model: msst's demix runs that head only.
    ("config_musdb18_mel_band_conformer_all_stems.yaml", "bass"),
])
def test_cli_stems_match_msst_demix(tmp_path, name, target):
    model_type = CONFIGS[name]
    text = (DATA / name).read_text(encoding="utf-8")
    if target != "keep":
        text = text.replace("target_instrument: null", f"target_instrument: {target}")
    config = msst.load_config(_write(tmp_path / "cfg.yaml", text))[0]
    ref = reference_model(config, model_type, seed=3)
    ckpt = write_model(tmp_path / "model", name, ref, config_text=text)

    length = 3 * CHUNK + 2500  # mirrored track ends, a partial last chunk
    mix = noise(2, length, seed=7).numpy()
    song = tmp_path / "song.wav"
    sf.write(song, mix.T, RATE, subtype="FLOAT")
    result = run([song, "-m", ckpt, "--bit-depth", "32", "--clip", "none", "-o", tmp_path / "out", "-q"])
    assert result.exit_code == 0, result.output

    reference_cfg = copy.deepcopy(config)
    reference_cfg["model"].pop("sage_attention", None)
    expected = demix(ConfigDict(reference_cfg), ref, mix, torch.device("cpu"), model_type=model_type)
    track = tmp_path / "out" / "model" / "song"
    assert sorted(p.stem for p in track.iterdir()) == sorted(expected)
    for stem, audio in expected.items():
        got, rate = sf.read(track / f"{stem}.wav", dtype="float32", always_2d=True)
        assert rate == RATE
        assert peak_error(got.T, audio) <= 1e-5, stem


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- routing


def tiny_roformer_files(folder: Path) -> Path:
    """A BS-RoFormer checkpoint and config (the RoFormer family's), for routing."""
    bands = (8,) * 8 + (16,) * 4 + (32,) * 2 + (65,)
    model = BSRoformer(32, depth=1, stereo=True, num_stems=1, time_transformer_depth=1, freq_transformer_depth=1,
                       freqs_per_bands=bands, dim_head=16, heads=2, stft_n_fft=512, stft_hop_length=128,
                       stft_win_length=512, mask_estimator_depth=1)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rof.ckpt").write_bytes(ckpt_bytes(model))
    band_lines = "".join(f"  - {b}\n" for b in bands)
    (folder / "rof.yaml").write_text(
        f"audio: {{chunk_size: {CHUNK}, sample_rate: {RATE}}}\n"
        "model:\n  dim: 32\n  depth: 1\n  stereo: true\n  num_stems: 1\n  time_transformer_depth: 1\n"
        "  freq_transformer_depth: 1\n  linear_transformer_depth: 0\n  freqs_per_bands: !!python/tuple\n"
        f"{band_lines}  dim_head: 16\n  heads: 2\n  stft_n_fft: 512\n  stft_hop_length: 128\n"
        "  stft_win_length: 512\n  mask_estimator_depth: 1\n"
        "training:\n  instruments: [vocals, other]\n  target_instrument: vocals\n", encoding="utf-8")
    return folder / "rof.ckpt"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_local_conformer_routes_to_this_family(tmp_path, name):
    model_type = CONFIGS[name]
    ref = reference_model(read_config(name), model_type)
    ckpt = write_model(tmp_path / "m", name, ref)
    assert families._family_for_file(ckpt).name == "conformer"
    bag = families.load_local(ckpt)
    assert bag.extra["family"] == "conformer" and bag.extra["model_type"] == model_type
    contract = bag.contracts[0]
    config = read_config(name)
    assert contract.segment == CHUNK / RATE and contract.window == "fade" and contract.segment_rule == "fixed"
    assert contract.overlap == 1 - 1 / config["inference"]["num_overlap"]
    # The same checkpoint with its config elsewhere (--config).
    moved = tmp_path / "elsewhere.yaml"
    (ckpt.parent / "model.yaml").rename(moved)
    assert families.load_local(ckpt, config=moved).extra["model_type"] == model_type


def test_roformer_checkpoint_still_routes_to_roformer(tmp_path):
    ckpt = tiny_roformer_files(tmp_path / "r")
    assert conformer.recognises(msst.read_config(ckpt.with_suffix(".yaml"))) is None
    assert families._family_for_file(ckpt).name == "roformer"
    assert families.load_local(ckpt).extra["family"] == "roformer"


def test_recognises_by_conformer_only_keys():
    for name, model_type in CONFIGS.items():
        assert conformer.recognises(read_config(name)) == model_type
    bare = {"model": {"dim": 32, "depth": 1, "num_bands": 8}}
    assert conformer.recognises(bare) is None  # all conformer options left at their defaults
    assert conformer.recognises({"model": {"dim": 32, "conv_kernel_size": 31}}) is None  # no band layout
    # MSST's other "conformer" model type (configs/config_musdb_conformers.yaml) is not one of these.
    plain_conformer = {"model": {"in_channels": 2, "sources": 4, "freq_bins": 2049, "embed_dim": 512, "depth": 8,
                                 "dim_head": 64, "heads": 8, "ff_mult": 4, "conv_expansion_factor": 2,
                                 "conv_kernel_size": 31}, "stft": {"n_fft": 4096}}
    assert conformer.recognises(plain_conformer) is None


def test_roformer_family_does_not_claim_conformer_configs():
    for name in CONFIGS:
        assert roformer.recognises(read_config(name)) is None


def test_registry_arch_resolves_a_config_without_conformer_keys(tmp_path):
    """A config leaving every conformer option at its default cannot be told from a RoFormer's:
    `arch` in a registry entry says which it is."""
    config = read_config("config_vocals_bs_conformer.yaml")
    for key in conformer.MARKERS:
        config["model"].pop(key, None)
    ref = reference_model(config, "bs_conformer")
    assert conformer.recognises(config) is None
    (tmp_path / "m.ckpt").write_bytes(ckpt_bytes(ref))
    spec = SimpleNamespace(name="bsc", arch="bs_conformer", checkpoint="m.ckpt", config=config, source="test")
    bag = conformer.load_spec(spec, tmp_path)
    assert bag.extra["model_type"] == "bs_conformer"
    x = noise(2, CHUNK, seed=9)[None]
    assert peak_error(bag.models[0](x), reference_forward(ref, x)) <= 1e-5


# --------------------------------------------------------------------------- errors


def one_line(exc: CheckpointError) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_unknown_options_are_named_in_one_line(tmp_path):
    name = "config_vocals_bs_conformer.yaml"
    ref = reference_model(read_config(name), "bs_conformer")
    text = (DATA / name).read_text(encoding="utf-8").replace("  skip_connection: false\n",
                                                             "  skip_connection: false\n  use_pope: true\n"
                                                             "  time_transformer_depth: 1\n")
    ckpt = write_model(tmp_path / "m", name, ref, config_text=text)
    with pytest.raises(CheckpointError) as err:
        families.load_local(ckpt)
    message = one_line(err.value)
    assert "time_transformer_depth, use_pope" in message and "bs_conformer" in message


def test_weights_that_do_not_fit_are_refused_in_one_line(tmp_path):
    name = "config_musdb18_mel_band_conformer.yaml"
    ref = reference_model(read_config(name), "mel_band_conformer")
    text = (DATA / name).read_text(encoding="utf-8").replace("  depth: 2\n", "  depth: 3\n")
    ckpt = write_model(tmp_path / "m", name, ref, config_text=text)
    with pytest.raises(CheckpointError) as err:
        families.load_local(ckpt)
    message = one_line(err.value)
    assert "do not fit" in message and "missing key" in message and "layers.2." in message

    # A RoFormer's weights with a conformer's config.
    rof = tiny_roformer_files(tmp_path / "r")
    (rof.parent / "rof.yaml").write_text((DATA / "config_vocals_bs_conformer.yaml").read_text(encoding="utf-8"),
                                         encoding="utf-8")
    with pytest.raises(CheckpointError) as err:
        families.load_local(rof)
    assert "do not fit the bs_conformer" in one_line(err.value)


def test_configs_that_do_not_build_are_refused_in_one_line(tmp_path):
    config = read_config("config_vocals_bs_conformer.yaml")
    config["model"]["freqs_per_bands"] = (8,) * 8
    with pytest.raises(CheckpointError) as err:
        conformer.build(config, "bs_conformer", None)
    assert "freqs_per_bands covers 64 bins" in one_line(err.value)

    config = read_config("config_musdb18_mel_band_conformer.yaml")
    config["training"]["target_instrument"] = "piano"
    with pytest.raises(CheckpointError) as err:
        conformer.build(config, "mel_band_conformer", None)
    assert "piano" in one_line(err.value)

    config = read_config("config_vocals_bs_conformer.yaml")
    config["model"]["conv_kernel_size"] = 30
    with pytest.raises(CheckpointError) as err:
        conformer.build(config, "bs_conformer", None)
    assert "odd" in one_line(err.value)

    config = read_config("config_vocals_bs_conformer.yaml")
    config["model"]["dim_head"] = 15
    with pytest.raises(CheckpointError) as err:
        conformer.build(config, "bs_conformer", None)
    assert "dim_head must be even" in one_line(err.value)
