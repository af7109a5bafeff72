"""`unmix eval` when its results cannot be written: a typed error, one line, exit 1, no traceback.

The failures are real (a folder where a result file goes, a read-only folder when not root),
not patched-in exceptions.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from unmixcli import cli
from unmixcli.errors import EXIT_FAILURE, EvaluationError
from unmixcli.evaluate import evaluate

SR = 8000
STEMS = ("bass", "vocals")


@pytest.fixture
def data(tmp_path):
    """(dataset root, estimates folder): one 1.5 s track, estimates = noisy references."""
    rng = np.random.default_rng(0)
    root, est = tmp_path / "musdb" / "test" / "Song", tmp_path / "est" / "Song"
    root.mkdir(parents=True)
    est.mkdir(parents=True)
    mix = 0
    for stem in STEMS:
        audio = 0.2 * rng.standard_normal((int(1.5 * SR), 2)).astype(np.float32)
        sf.write(root / f"{stem}.wav", audio, SR, subtype="FLOAT")
        sf.write(est / f"{stem}.wav", audio + 0.01 * rng.standard_normal(audio.shape).astype(np.float32), SR,
                 subtype="FLOAT")
        mix = mix + audio
    sf.write(root / "mixture.wav", mix, SR, subtype="FLOAT")
    return tmp_path / "musdb", tmp_path / "est"


def run(args):
    return CliRunner().invoke(cli.app, ["eval", *map(str, args)], catch_exceptions=False)


@pytest.mark.parametrize("blocked", ["summary.json", "scores.csv", os.path.join("tracks", "Song.json")])
def test_a_result_file_that_cannot_be_written(tmp_path, data, blocked):
    dataset, estimates = data
    out = tmp_path / "results"
    (out / blocked).mkdir(parents=True)  # a folder where the file must go: renaming onto it fails
    with pytest.raises(EvaluationError) as exc:
        evaluate(dataset, out, estimates_dir=estimates)
    assert exc.value.path == str(out / blocked) and "cannot write results" in exc.value.message
    result = run([dataset, "--estimates", estimates, "-o", out, "-q"])
    assert result.exit_code == EXIT_FAILURE, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {out / blocked}: {exc.value.message}"], result.stderr
    assert "Traceback" not in result.output
    # No temporary file is left beside the results.
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path, data):
    dataset, estimates = data
    out = tmp_path / "results"
    (out / "tracks").mkdir(parents=True)
    (out / "tracks").chmod(0o555)
    try:
        result = run([dataset, "--estimates", estimates, "-o", out, "-q"])
    finally:
        (out / "tracks").chmod(0o755)
    assert result.exit_code == EXIT_FAILURE, result.output
    assert "cannot write results" in result.stderr and "Traceback" not in result.output


def test_results_are_readable_like_any_new_file(tmp_path, data):
    """Atomic writes keep the mode a plain open() gives (the temporary file was private)."""
    dataset, estimates = data
    out = tmp_path / "results"
    evaluate(dataset, out, estimates_dir=estimates)
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("summary.json", "summary.csv", "scores.csv", os.path.join("tracks", "Song.json")):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_unlistable_dataset_folder_is_a_typed_error(tmp_path):
    dataset = tmp_path / "musdb"
    dataset.mkdir()
    if os.name == "nt" or os.geteuid() == 0:
        pytest.skip("root lists any folder")
    dataset.chmod(0o311)  # can enter, cannot list
    try:
        with pytest.raises(EvaluationError, match="cannot list"):
            evaluate(dataset, tmp_path / "out", estimates_dir=tmp_path)
    finally:
        dataset.chmod(0o755)
