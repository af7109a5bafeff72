"""Inputs of a single frame, or a few: padded like any short track, stems of the input's length."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from unmixcli import cli

MODEL_RATE = 8000  # the tiny model's
STEMS = ("drums", "bass", "other", "vocals")
# The tiny model these runs use is conftest.py's `model_dir` fixture (one export per module).


def write_frames(path, frames: int, rate: int):
    rng = np.random.default_rng(frames)
    sf.write(path, (0.2 * rng.standard_normal((frames, 2))).astype(np.float32), rate, subtype="FLOAT")
    return path


@pytest.mark.parametrize("frames", [1, 2, 3, 7])
@pytest.mark.parametrize("extra", [[], ["--segment", "0.1"], ["--shifts", "1"], ["--batch-size", "3"]],
                         ids=["default", "segment", "shifts", "batch"])
def test_a_few_frames_at_the_model_rate(tmp_path, model_dir, frames, extra):
    song = write_frames(tmp_path / "tiny.wav", frames, MODEL_RATE)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.app, [str(song), "-m", str(model_dir), "-o", str(out), "-q",
                                          "--bit-depth", "32", *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for stem in STEMS:
        data, rate = sf.read(out / "tiny" / "tiny" / f"{stem}.wav", dtype="float32", always_2d=True)
        assert rate == MODEL_RATE and data.shape == (frames, 2)
        assert np.isfinite(data).all()


def test_a_few_frames_kept_at_the_input_rate(tmp_path, model_dir):
    """6 frames at 44.1 kHz are 1 frame at the model's rate; written back at 44.1 kHz: 6 frames."""
    song = write_frames(tmp_path / "short.wav", 6, 44100)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.app, [str(song), "-m", str(model_dir), "-o", str(out), "-q",
                                          "--sample-rate", "keep", "--bit-depth", "32"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for stem in STEMS:
        data, rate = sf.read(out / "tiny" / "short" / f"{stem}.wav", always_2d=True)
        assert rate == 44100 and data.shape == (6, 2) and np.isfinite(data).all()


def test_api_one_frame_is_finite(model_dir):
    from unmixcli import Separator

    sep = Separator(str(model_dir), device="cpu")
    out = sep.separate(np.full((2, 1), 0.1, np.float32), MODEL_RATE)
    assert all(v.shape == (2, 1) and bool(torch.isfinite(v).all()) for v in out.values())
