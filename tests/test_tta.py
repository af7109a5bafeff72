"""`--tta`: MSST's test-time augmentation (channels swapped, polarity inverted, averaged).

MSST runs three whole-track separations (the mix, its channels reversed, its negation) and
averages them after bringing each back. The engine does it per segment; since overlap-add
and the mix normalisation are linear, the two must agree. (The MSST families' tests compare
against msst's own `apply_tta`.)
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from demucs_export import export_tiny
from unmixcli import cli, families
from unmixcli.engine import EngineOptions, separate_tensor
from unmixcli.errors import UsageError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return families.load_local(export_tiny(tmp_path_factory.mktemp("tta")))


def test_tta_equals_averaging_three_whole_track_runs(bag):
    mix = 0.3 * torch.randn(bag.audio_channels, 3 * bag.samplerate, generator=torch.Generator().manual_seed(5))
    opts = EngineOptions(precision="fp32")
    plain = separate_tensor(bag, mix, None, opts, CPU)
    swapped = separate_tensor(bag, mix.flip(0), None, opts, CPU)
    negated = separate_tensor(bag, -mix, None, opts, CPU)
    tta = separate_tensor(bag, mix, None, EngineOptions(precision="fp32", tta=True), CPU)
    for stem in bag.sources:
        want = (plain[stem] + swapped[stem].flip(0) - negated[stem]) / 3
        peak = float(want.abs().max())
        assert float((tta[stem] - want).abs().max()) <= 1e-5 * peak
        assert float((tta[stem] - plain[stem]).abs().max()) > 1e-3 * peak  # it did something


def test_tta_through_the_cli_and_bad_values(tmp_path, bag):
    song = tmp_path / "song.wav"
    rng = np.random.default_rng(0)
    sf.write(song, 0.2 * rng.standard_normal((bag.samplerate, 2)).astype(np.float32), bag.samplerate)
    model = export_tiny(tmp_path / "m")
    outs = {}
    for flag in ([], ["--tta"]):
        out = tmp_path / ("tta" if flag else "plain")
        result = CliRunner().invoke(cli.app, [str(song), "-m", str(model), "-o", str(out), "-q",
                                              "--precision", "fp32", "--bit-depth", "32", *flag])
        assert result.exit_code == 0, result.output
        outs[bool(flag)] = sf.read(next(out.rglob("vocals.wav")))[0]
    assert not np.allclose(outs[True], outs[False])
    with pytest.raises(UsageError, match="tta must be true or false"):
        EngineOptions(tta="yes")
