"""The MSST checkpoint format shared by its families: `--config`, routing, model types left out."""

from __future__ import annotations

import numpy as np
import torch
from typer.testing import CliRunner

from demucs_export import export_tiny
from test_roformer_e2e import MEL_MODEL, MEL_YAML, ckpt_bytes, random_model, read, write_song
from unmixcli import cli
from unmixcli.models.roformer import MelBandRoformer


def invoke(*args):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def test_config_option_names_a_config_kept_elsewhere(tmp_path):
    """`-m model.ckpt --config FILE` is what the same files side by side give."""
    model = random_model(MelBandRoformer, MEL_MODEL, seed=3)
    beside = tmp_path / "beside"
    beside.mkdir()
    (beside / "vocals.ckpt").write_bytes(ckpt_bytes(model))
    (beside / "vocals.yaml").write_text(MEL_YAML)
    apart = tmp_path / "apart"
    (apart / "configs").mkdir(parents=True)
    (apart / "vocals.ckpt").write_bytes(ckpt_bytes(model))
    (apart / "configs" / "kim.yaml").write_text(MEL_YAML)
    song = write_song(tmp_path / "song.wav")
    common = ["--bit-depth", "32", "--clip", "none", "-q", "--precision", "fp32"]
    r1 = invoke(song, "-m", beside / "vocals.ckpt", "-o", tmp_path / "o1", *common)
    assert r1.exit_code == 0, r1.output
    r2 = invoke(song, "-m", apart / "vocals.ckpt", "--config", apart / "configs" / "kim.yaml",
                "-o", tmp_path / "o2", *common)
    assert r2.exit_code == 0, r2.output
    a = read(next((tmp_path / "o1").rglob("vocals.wav")))
    b = read(next((tmp_path / "o2").rglob("vocals.wav")))
    assert np.array_equal(a, b)
    # Without --config the lone checkpoint names what is missing.
    r3 = invoke(song, "-m", apart / "vocals.ckpt", "-o", tmp_path / "o3", "-q")
    assert r3.exit_code == 1 and "no config found" in r3.output


def test_config_option_misuse_is_a_usage_error(tmp_path, hf_env):
    song = write_song(tmp_path / "song.wav")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(MEL_YAML)
    bad = invoke(song, "-m", "htdemucs", "--config", cfg, "-o", tmp_path / "o", "-q")
    assert bad.exit_code == 2 and "--config applies to a local checkpoint" in bad.output
    demucs = invoke(song, "-m", export_tiny(tmp_path / "tiny"), "--config", cfg, "-o", tmp_path / "o", "-q")
    assert demucs.exit_code == 2 and "applies to MSST and UVR checkpoints" in demucs.output
    (tmp_path / "m.ckpt").write_bytes(ckpt_bytes(random_model(MelBandRoformer, MEL_MODEL, seed=1)))
    missing = invoke(song, "-m", tmp_path / "m.ckpt", "--config", tmp_path / "nope.yaml", "-o", tmp_path / "o", "-q")
    assert missing.exit_code == 2 and "no such config file" in missing.output


def test_a_model_type_left_out_is_named_in_one_line(tmp_path):
    """bs_mamba2 needs CUDA-only kernels: its config gets one line saying so, not a guess."""
    folder = tmp_path / "mamba"
    folder.mkdir()
    torch.save({"w": torch.zeros(2)}, folder / "model.ckpt")
    (folder / "model.yaml").write_text("audio: {chunk_size: 8192, sample_rate: 44100}\n"
                                       "model: {sr: 44100, win: 2048, stride: 512, feature_dim: 128,\n"
                                       "        num_repeat_mask: 8, num_repeat_map: 4, num_output: 2}\n"
                                       "training: {instruments: [vocals, other], target_instrument: null}\n")
    song = write_song(tmp_path / "song.wav")
    result = invoke(song, "-m", folder / "model.ckpt", "-o", tmp_path / "o", "-q")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "MSST model type bs_mamba2 is not supported" in lines[0] and lines[0].startswith("error:")
    assert all(line.startswith("hint:") for line in lines[1:])  # one error line (and its hint)
    assert "CUDA-only" in lines[0] and "model.yaml" in lines[0]
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.wav"))


def test_target_instrument_heads_follow_demix():
    """One rule for every MSST family: demix refuses a target that is not an instrument (for
    any head count), runs the target's head alone when there is one head per instrument."""
    import pytest

    from unmixcli.errors import CheckpointError
    from unmixcli.families import msst

    def config(target, instruments=("vocals", "other")):
        return {"model": {}, "training": {"instruments": list(instruments), "target_instrument": target}}

    assert msst.outputs(config(None), 2) == (["vocals", "other"], None)
    assert msst.outputs(config("vocals"), 1) == (["vocals"], None)
    assert msst.outputs(config("other"), 2) == (["other"], [1])
    for heads in (1, 2):
        with pytest.raises(CheckpointError, match="'drums' is not among training.instruments"):
            msst.outputs(config("drums"), heads)
    with pytest.raises(CheckpointError, match="the model has 3 stems"):
        msst.outputs(config("vocals"), 3)
