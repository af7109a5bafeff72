"""`unmix eval` end to end: a MUSDB18-HQ-like folder generated here, scored from existing
estimates and by running a tiny exported model through the same separation path as `unmix`."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from demucs_export import export_tiny
from unmixcli import cli

STEMS = ("drums", "bass", "other", "vocals")
SR = 8000


def run(args):
    return CliRunner().invoke(cli.app, ["eval", *[str(a) for a in args]], catch_exceptions=False)


@pytest.fixture(scope="module")
def musdb(tmp_path_factory):
    """<root>/test/<track>/{mixture,drums,bass,other,vocals}.wav, two 3-second tracks."""
    root = tmp_path_factory.mktemp("musdb")
    rng = np.random.default_rng(0)
    t = np.arange(3 * SR) / SR
    for name in ("Artist - One", "Artist - Two"):
        folder = root / "test" / name
        folder.mkdir(parents=True)
        stems = {}
        for i, stem in enumerate(STEMS):
            tone = np.sin(2 * np.pi * (110 * (i + 1) + rng.uniform(0, 20)) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * (i + 1) * 0.3 * t))
            stems[stem] = 0.2 * np.stack([tone, np.roll(tone, 3)]) + 0.02 * rng.standard_normal((2, t.size))
            sf.write(folder / f"{stem}.wav", stems[stem].T.astype(np.float32), SR, subtype="FLOAT")
        sf.write(folder / "mixture.wav", sum(stems.values()).T.astype(np.float32), SR, subtype="FLOAT")
    return root


def estimates_from(musdb: Path, out: Path, swap: bool) -> Path:
    for track in (musdb / "test").iterdir():
        (out / track.name).mkdir(parents=True)
        for stem in STEMS:
            src = {"vocals": "drums", "drums": "vocals"}.get(stem, stem) if swap else stem
            data, rate = sf.read(track / f"{src}.wav")
            sf.write(out / track.name / f"{stem}.wav", data, rate, subtype="PCM_16")  # not bit-exact: finite SDR
    return out


@pytest.mark.slow
def test_existing_estimates_oracle_high_swapped_low(musdb, tmp_path):
    good = run([musdb, "--estimates", estimates_from(musdb, tmp_path / "oracle", False), "-o", tmp_path / "r1", "--json"])
    assert good.exit_code == 0, good.output
    summary = json.loads(good.stdout)
    assert summary["tracks"] == 2 and summary["stems"] == list(STEMS)
    assert summary["aggregate"]["median"]["vocals"]["SDR"] > 40
    bad = run([musdb, "--estimates", estimates_from(musdb, tmp_path / "swapped", True), "-o", tmp_path / "r2", "--json"])
    low = json.loads(bad.stdout)["aggregate"]["median"]
    assert low["vocals"]["SDR"] < 0 and low["drums"]["SDR"] < 0
    assert low["bass"]["SDR"] > 40  # untouched stems still score high
    assert (tmp_path / "r1" / "summary.csv").is_file() and (tmp_path / "r1" / "scores.csv").is_file()


@pytest.mark.slow
def test_model_mode_separates_scores_and_resumes(musdb, tmp_path):
    model = tmp_path / "model"
    export_tiny(model, "tiny")
    out = tmp_path / "results"
    first = run([musdb, "-m", model, "-o", out, "--device", "cpu"])
    assert first.exit_code == 0, first.output
    assert "median over tracks" in first.stdout and "Artist - One" in first.stdout
    data = json.loads((out / "summary.json").read_text())
    assert set(STEMS) <= set(json.dumps(data).split('"')) and len(list((out / "tracks").glob("*.json"))) == 2
    again = run([musdb, "-m", model, "-o", out, "--json", "--device", "cpu"])
    assert sorted(json.loads(again.stdout)["skipped"]) == ["Artist - One", "Artist - Two"]


def test_bad_layout_and_conflicting_options(musdb, tmp_path):
    empty = tmp_path / "not-musdb"
    (empty / "test" / "x").mkdir(parents=True)
    result = run([empty, "--estimates", tmp_path])
    assert result.exit_code == 1
    assert "mixture.wav" in result.stderr and "Traceback" not in result.output
    result = run([musdb, "-m", "htdemucs", "--estimates", tmp_path])
    assert result.exit_code == 2 and "not both" in result.stderr
