"""The family seam: a family is one module and one row of `unmixcli.families.FAMILIES`.

A toy family defined in tests/toy_family.py is registered from here and used end to
end through the CLI, from a local file and from a registry entry on the fake Hub.
"""

import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

import toy_family
from fakehub import registry_entry, write_registry
from unmixcli import cli, families
from unmixcli.registry import load_registry

RATE = 8000
GAINS = {"low": 0.25, "high": 0.75}


@pytest.fixture
def toy_row():
    families.register(toy_family.ROW)
    try:
        yield toy_family.ROW
    finally:
        families.unregister("toy")


def _song(path, seconds=1.3):
    rng = np.random.default_rng(0)
    data = (0.3 * rng.standard_normal((int(seconds * RATE), 2))).astype(np.float32)
    sf.write(path, data, RATE, subtype="FLOAT")
    return data


def _toy_bytes():
    return json.dumps({"stems": GAINS, "rate": RATE}).encode()


def _run(args):
    return CliRunner().invoke(cli.app, [str(a) for a in args], catch_exceptions=False)


def _check_stems(folder, mix):
    for stem, gain in GAINS.items():
        data, rate = sf.read(folder / f"{stem}.wav", dtype="float32", always_2d=True)
        assert rate == RATE and data.shape == mix.shape
        np.testing.assert_allclose(data, gain * mix, atol=1e-6)


def test_toy_family_from_a_local_file_through_the_cli(tmp_path, toy_row):
    model = tmp_path / "gains.toy"
    model.write_bytes(_toy_bytes())
    mix = _song(tmp_path / "song.wav")
    result = _run([tmp_path / "song.wav", "-m", model, "-o", tmp_path / "out", "-f", "wav", "--bit-depth", "32"])
    assert result.exit_code == 0, result.output
    _check_stems(tmp_path / "out" / "gains" / "song", mix)


def test_toy_family_from_the_registry_through_the_cli(tmp_path, toy_row, fake_hub):
    fake_hub.add_repo("test-owner/Toy", {"gains.toy": _toy_bytes()})
    entry = registry_entry("toyreg", "test-owner/Toy", {"gains.toy": _toy_bytes()}, stems=list(GAINS),
                           family="toy", bag=None, checkpoint="gains.toy", sample_rate=RATE)
    reg = write_registry(tmp_path / "reg.yaml", {"toyreg": entry})
    assert load_registry([reg]).get("toyreg").family == "toy"
    mix = _song(tmp_path / "song.wav")
    result = _run([tmp_path / "song.wav", "-m", "toyreg", "--registry", reg, "-o", tmp_path / "out",
                   "-f", "wav", "--bit-depth", "32", "--stems", "high"])
    assert result.exit_code == 0, result.output
    track = tmp_path / "out" / "toyreg" / "song"
    assert [p.name for p in track.iterdir()] == ["high.wav"]
    data, _ = sf.read(track / "high.wav", dtype="float32", always_2d=True)
    np.testing.assert_allclose(data, 0.75 * mix, atol=1e-6)


def test_an_unregistered_family_is_refused_by_the_registry(tmp_path):
    entry = registry_entry("toyreg", "test-owner/Toy", {"gains.toy": b"{}"}, family="toy", bag=None)
    reg = write_registry(tmp_path / "reg.yaml", {"toyreg": entry})
    result = _run(["models", "list", "--registry", reg])
    assert result.exit_code != 0 and "family" in result.output and "toy" in result.output


def test_the_engine_runs_the_contract_not_the_module(tmp_path, toy_row):
    """The toy module has no `segment`/`samplerate` attributes: all the engine knows comes
    from the contract (segment 0.25 s at 8 kHz, so a 1.3 s track takes several forwards)."""
    model = tmp_path / "gains.toy"
    model.write_bytes(_toy_bytes())
    bag = families.load_local(model)
    from unmixcli import engine
    import torch

    mix = torch.randn(2, int(1.3 * RATE))
    out = engine.separate_tensor(bag, mix, None, engine.EngineOptions(), torch.device("cpu"))
    assert max(bag.models[0].lengths) == int(0.25 * RATE)
    assert len(bag.models[0].lengths) > 1
    torch.testing.assert_close(out["low"], 0.25 * mix, atol=1e-6, rtol=0)
