"""`unmix eval` on speech folders generated here: VoiceBank-DEMAND (clean/ + noisy/) scored with
the installed DeepFilterNet3 and from existing estimates, and LibriMix (mix_clean/, s1/, s2/)
with a toy two-speaker model that gives the speakers in the other order (so only the best
permutation scores it well)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn
from typer.testing import CliRunner

from test_speech_metrics import noisy, speech_like
from unmixcli import cli, families
from unmixcli.errors import CheckpointError, EvaluationError
from unmixcli.evaluate import best_permutation, detect_layout, evaluate
from unmixcli.families import Family
from unmixcli.models.bag import Contract, ModelBag

RATE = 16000
FILES = ("p232_001", "p232_002", "p257_003")


def run(args):
    return CliRunner().invoke(cli.app, ["eval", *[str(a) for a in args]], catch_exceptions=False)


def write(path: Path, audio: np.ndarray, rate: int = RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.asarray(audio, dtype=np.float32), rate, subtype="FLOAT")


@pytest.fixture(scope="module")
def voicebank(tmp_path_factory) -> Path:
    """<root>/test/{clean,noisy}/<file>.wav: three 2-3 s speech-like files, white noise at 5 dB."""
    root = tmp_path_factory.mktemp("voicebank")
    for i, name in enumerate(FILES):
        clean = speech_like(RATE, seconds=2.0 + 0.4 * i, seed=10 + i)
        write(root / "test" / "clean" / f"{name}.wav", clean)
        write(root / "test" / "noisy" / f"{name}.wav", noisy(clean, snr_db=5.0, seed=20 + i))
    return root


def test_layouts_are_told_from_the_folder(voicebank, tmp_path):
    assert detect_layout(voicebank) == ("voicebank", voicebank / "test")
    assert detect_layout(voicebank / "test")[0] == "voicebank"
    for d in ("mix_both", "s1", "s2"):
        (tmp_path / "libri" / d).mkdir(parents=True)
    assert detect_layout(tmp_path / "libri")[0] == "librimix"
    assert detect_layout(tmp_path)[0] == "musdb"


def test_voicebank_from_estimates_clean_scores_high_noisy_scores_no_gain(voicebank, tmp_path):
    clean_est, noisy_est = tmp_path / "clean_est", tmp_path / "noisy_est"
    for name in FILES:
        audio, _ = sf.read(voicebank / "test" / "clean" / f"{name}.wav")
        # PCM_16: not bit-exact, so SI-SDR is finite.
        clean_est.joinpath(name).mkdir(parents=True)
        sf.write(clean_est / name / "speech.wav", audio, RATE, subtype="PCM_16")
        audio, _ = sf.read(voicebank / "test" / "noisy" / f"{name}.wav")
        write(noisy_est / name / "speech.wav", audio)
    good = evaluate(voicebank, tmp_path / "r1", estimates_dir=clean_est)
    bad = evaluate(voicebank, tmp_path / "r2", estimates_dir=noisy_est)
    assert good.layout == "voicebank" and good.stems == ("speech",) and len(good.tracks) == 3
    hi, lo = good.aggregate["mean"]["speech"], bad.aggregate["mean"]["speech"]
    assert hi["SI-SDR"] > 40 and hi["PESQ-wb"] > 4.0 and hi["STOI"] > 0.99 and hi["eSTOI"] > 0.99
    assert abs(lo["SI-SDRi"]) < 1e-6  # the input itself improves nothing
    assert lo["PESQ-wb"] < hi["PESQ-wb"] - 1 and lo["PESQ-nb"] < hi["PESQ-nb"] - 1 and lo["STOI"] < hi["STOI"]
    assert 4 < lo["SI-SDR"] < 6  # the 5 dB the noise was mixed at


def test_cli_voicebank_with_deepfilternet3_prints_writes_and_resumes(voicebank, tmp_path):
    out = tmp_path / "results"
    first = run([voicebank, "-m", "deepfilternet3", "-o", out, "--device", "cpu"])
    assert first.exit_code == 0, first.output
    for column in ("PESQ-wb", "PESQ-nb", "STOI", "eSTOI", "SI-SDR", "SI-SDRi", "mean over 3 files"):
        assert column in first.stdout, first.stdout
    assert all(name in first.stdout for name in FILES)
    summary = json.loads((out / "summary.json").read_text())
    mean = summary["aggregate"]["mean"]["speech"]
    assert summary["settings"]["layout"] == "voicebank" and summary["tracks"] == 3
    assert mean["SI-SDRi"] > 3  # the model does clean white noise at 5 dB
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["track"] for r in rows] == list(FILES) and all(float(r["PESQ-wb"]) > 1 for r in rows)
    assert len(list((out / "tracks").glob("*.json"))) == 3
    # Resume: every file is already scored, nothing runs again, the same summary comes back
    # (without -m too: deepfilternet3 is the default model for a VoiceBank folder).
    before = {p.name: p.stat().st_mtime_ns for p in (out / "tracks").iterdir()}
    again = run([voicebank, "-o", out, "--device", "cpu", "--json"])
    data = json.loads(again.stdout)
    assert sorted(data["skipped"]) == sorted(FILES) and data["layout"] == "voicebank"
    assert data["aggregate"]["mean"]["speech"]["SI-SDRi"] == pytest.approx(mean["SI-SDRi"], abs=1e-3)
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "tracks").iterdir()}


# --------------------------------------------------------------------------- LibriMix

LIBRI_RATE = 8000
CUT_HZ = 1000.0


def _band(x: np.ndarray, low: bool) -> np.ndarray:
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(x.size, 1 / LIBRI_RATE)
    return np.fft.irfft(spec * ((freqs < CUT_HZ) if low else (freqs >= CUT_HZ)), n=x.size)


class BandSplit(nn.Module):
    """A two-"speaker" toy separator: the high band first, the low band second."""

    def forward(self, mix):  # [B, C, T] -> [B, S=2, C, T]
        spec = torch.fft.rfft(mix)
        freqs = torch.fft.rfftfreq(mix.shape[-1], 1 / LIBRI_RATE)
        low = torch.fft.irfft(spec * (freqs < CUT_HZ), n=mix.shape[-1])
        return torch.stack([mix - low, low], dim=1)


def load_local(path, stems=None):
    if Path(path).read_text() != "bands":
        raise CheckpointError("not a band model", path=path)
    contract = Contract(samplerate=LIBRI_RATE, channels=1, sources=("speaker1", "speaker2"), segment=1.0,
                        segment_rule="free", window="triangle", normalize=False, overlap=0.5)
    return ModelBag.single(BandSplit(), name="bands", contracts=[contract])


@pytest.fixture
def band_model(tmp_path):
    families.register(Family("bands", lambda: sys.modules[__name__], suffixes=(".bands",), hint="a .bands file"))
    path = tmp_path / "split.bands"
    path.write_text("bands")
    try:
        yield path
    finally:
        families.unregister("bands")


@pytest.fixture(scope="module")
def librimix(tmp_path_factory) -> Path:
    """<root>/{mix_clean,s1,s2}/<file>.wav at 8 kHz: s1 below 1 kHz, s2 above it."""
    root = tmp_path_factory.mktemp("librimix")
    for i, name in enumerate(("61-70968-0000_8455-210777-0012", "61-70968-0003_2830-3980-0008")):
        s1 = _band(speech_like(LIBRI_RATE, 2.5, seed=30 + i), low=True)
        s2 = 0.5 * _band(speech_like(LIBRI_RATE, 2.5, seed=40 + i) + speech_like(LIBRI_RATE, 2.5, seed=50 + i), low=False)
        write(root / "s1" / f"{name}.wav", s1, LIBRI_RATE)
        write(root / "s2" / f"{name}.wav", s2, LIBRI_RATE)
        write(root / "mix_clean" / f"{name}.wav", s1 + s2, LIBRI_RATE)
    return root


def test_best_permutation_matches_swapped_speakers():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 1, 4000))
    refs = {"speaker1": a, "speaker2": b}
    assert best_permutation(refs, {"speaker1": b + 0.1 * a, "speaker2": a}) == {"speaker1": "speaker2",
                                                                                "speaker2": "speaker1"}
    assert best_permutation(refs, {"speaker1": a, "speaker2": b}) == {"speaker1": "speaker1", "speaker2": "speaker2"}


def test_cli_librimix_with_a_toy_two_speaker_model_uses_the_best_permutation(librimix, band_model, tmp_path):
    out = tmp_path / "results"
    result = run([librimix, "-m", band_model, "-o", out, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "speaker1" in result.stdout and "speaker2" in result.stdout and "best permutation" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["layout"] == "librimix" and summary["settings"]["mixture"] == "mix_clean"
    for stem in ("speaker1", "speaker2"):
        row = summary["aggregate"]["mean"][stem]
        assert row["SI-SDR"] > 15 and row["SI-SDRi"] > 5, row  # scored against the right speaker
        assert row["PESQ-wb"] is None  # 8 kHz has no wide band
    for track in (out / "tracks").glob("*.json"):
        assert json.loads(track.read_text())["permutation"] == {"speaker1": "speaker2", "speaker2": "speaker1"}
    again = run([librimix, "-m", band_model, "-o", out, "--device", "cpu", "--json"])
    assert len(json.loads(again.stdout)["skipped"]) == 2
    no_model = run([librimix, "-o", tmp_path / "r2"])
    assert no_model.exit_code == 2 and "speaker separation model" in no_model.stderr
    absent = run([librimix, "-m", band_model, "--mix", "mix_both", "-o", tmp_path / "r3"])
    assert absent.exit_code == 1 and "no mix_both/ folder" in absent.stderr
    bogus = run([librimix, "-m", band_model, "--mix", "mix_single", "-o", tmp_path / "r4"])
    assert bogus.exit_code == 2 and "mix_clean, mix_both" in bogus.stderr


def test_missing_speech_metric_package_is_one_line(voicebank, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pesq", None)  # `import pesq` now raises ImportError
    result = run([voicebank, "--estimates", tmp_path, "-o", tmp_path / "r"])
    assert result.exit_code == 2
    assert "pesq" in result.stderr and "pip install" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) <= 2


def test_noisy_file_without_its_clean_reference(tmp_path):
    write(tmp_path / "vb" / "clean" / "a.wav", np.zeros(800))
    write(tmp_path / "vb" / "noisy" / "a.wav", np.zeros(800))
    write(tmp_path / "vb" / "noisy" / "b.wav", np.zeros(800))
    with pytest.raises(EvaluationError, match="no reference for noisy/b.wav"):
        evaluate(tmp_path / "vb", tmp_path / "out", estimates_dir=tmp_path)
