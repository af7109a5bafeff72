"""evaluate.py on a small MUSDB18-HQ-like folder generated here."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile

from unmixcli.errors import EvaluationError, UsageError
from unmixcli.evaluate import evaluate, find_tracks, score_track

SR = 16000
STEMS = ("drums", "bass", "vocals")
SECONDS = 2.5


def synth_stems(rng: np.random.Generator, seconds: float = SECONDS) -> dict:
    """Three distinct stereo stems `[2, T]`: noise bursts, a low tone, a vibrato voice."""
    t = np.arange(int(seconds * SR)) / SR
    beat = np.exp(-30 * (t % 0.5))
    drums = beat * rng.standard_normal(len(t))
    bass_phase = 2 * np.pi * 55 * t
    bass = np.sin(bass_phase) + 0.3 * np.sin(2 * bass_phase) + 0.05 * rng.standard_normal(len(t))
    voice_phase = 2 * np.pi * np.cumsum(330 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))) / SR
    vocals = (np.sin(voice_phase) + 0.4 * np.sin(3 * voice_phase)) * (0.5 + 0.5 * np.sin(np.pi * t) ** 2)
    vocals = vocals + 0.05 * rng.standard_normal(len(t))
    out = {}
    for i, (name, mono) in enumerate(zip(STEMS, (drums, bass, vocals))):
        pan = 0.3 + 0.2 * i
        stereo = np.stack([(1 - pan) * mono, pan * mono]) + 0.01 * rng.standard_normal((2, len(t)))
        out[name] = (0.3 * stereo / np.abs(stereo).max()).astype(np.float32)
    return out


def write_wav(path: Path, audio: np.ndarray, sr: int = SR, subtype: str = "FLOAT") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.asarray(audio).T, sr, subtype=subtype)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """`<root>/test/<track>/{mixture,drums,bass,vocals}.wav`, two tracks."""
    root = tmp_path_factory.mktemp("musdb")
    rng = np.random.default_rng(0)
    for name in ("Artist A - Song", "Artist B - Tune"):
        stems = synth_stems(rng)
        for stem, audio in stems.items():
            write_wav(root / "test" / name / f"{stem}.wav", audio)
        write_wav(root / "test" / name / "mixture.wav", sum(stems.values()))
    return root


def read(path: Path) -> np.ndarray:
    audio, _ = soundfile.read(str(path), dtype="float64", always_2d=True)
    return audio.T


def make_estimates(dataset: Path, out: Path, swap: bool = False) -> Path:
    """Estimates = the true stems written as 16-bit PCM (a near-perfect "oracle"),
    optionally with vocals and drums exchanged."""
    for track in sorted((dataset / "test").iterdir()):
        for stem in STEMS:
            source = {"vocals": "drums", "drums": "vocals"}.get(stem, stem) if swap else stem
            write_wav(out / track.name / f"{stem}.wav", read(track / f"{source}.wav"), subtype="PCM_16")
    return out


@pytest.fixture(scope="module")
def oracle_run(dataset, tmp_path_factory):
    base = tmp_path_factory.mktemp("oracle")
    estimates = make_estimates(dataset, base / "est")
    events = []
    report = evaluate(dataset, base / "scores", estimates_dir=estimates, progress=lambda *a: events.append(a))
    return base, estimates, report, events


def test_oracle_scores_very_high_and_files_are_written(oracle_run):
    base, _, report, events = oracle_run
    assert report.stems == ("drums", "bass", "vocals")
    assert [t.track for t in report.tracks] == ["Artist A - Song", "Artist B - Tune"]
    for track in report.tracks:
        for stem in STEMS:
            assert track.scores[stem]["SDR"] > 50, (track.track, stem, track.scores[stem])
            assert track.scores[stem]["SIR"] > 50
            assert track.scores[stem]["uSDR"] > 50
    assert report.aggregate["median"]["overall"]["SDR"] > 50
    # Progress: a start and a finish per track, in order.
    assert [(e[0], e[1], e[3]) for e in events] == [(0, 2, "start"), (1, 2, "scored"), (1, 2, "start"), (2, 2, "scored")]
    out = base / "scores"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tracks"] == 2
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(STEMS)
    assert {r["stem"] for r in rows} == set(STEMS)
    per_track = json.loads((out / "tracks" / "Artist A - Song.json").read_text())
    # 2.5 s at 1 s windows: two scored windows per stem, museval-like layout.
    assert [len(t["frames"]) for t in per_track["targets"]] == [2, 2, 2]
    assert set(per_track["targets"][0]["frames"][0]["metrics"]) == {"SDR", "SIR", "ISR", "SAR"}


def test_aggregate_is_median_over_tracks_and_overall_mean_over_stems(oracle_run):
    _, _, report, _ = oracle_run
    for metric in ("SDR", "uSDR"):
        medians = []
        for stem in STEMS:
            per_track = [t.scores[stem][metric] for t in report.tracks]
            assert report.aggregate["median"][stem][metric] == pytest.approx(np.median(per_track))
            assert report.aggregate["mean"][stem][metric] == pytest.approx(np.mean(per_track))
            medians.append(np.median(per_track))
        assert report.aggregate["median"]["overall"][metric] == pytest.approx(np.mean(medians))


def test_swapped_estimates_score_low(dataset, tmp_path):
    estimates = make_estimates(dataset, tmp_path / "est", swap=True)
    report = evaluate(dataset / "test", tmp_path / "scores", estimates_dir=estimates)
    agg = report.aggregate["median"]
    assert agg["vocals"]["SDR"] < 0 and agg["drums"]["SDR"] < 0
    assert agg["vocals"]["uSDR"] < 0 and agg["drums"]["uSDR"] < 0
    assert agg["bass"]["SDR"] > 50  # untouched stem still scores as the oracle


def test_rerun_skips_scored_tracks(oracle_run):
    base, estimates, first, _ = oracle_run
    json_file = base / "scores" / "tracks" / "Artist B - Tune.json"
    before = json_file.stat().st_mtime_ns
    events = []
    second = evaluate(
        first.dataset, base / "scores", estimates_dir=estimates, progress=lambda *a: events.append(a)
    )
    assert [e[3] for e in events] == ["skipped", "skipped"]
    assert second.skipped == ["Artist A - Song", "Artist B - Tune"]
    assert json_file.stat().st_mtime_ns == before
    for a, b in zip(first.tracks, second.tracks):
        for stem in STEMS:
            for metric, value in a.scores[stem].items():
                assert b.scores[stem][metric] == pytest.approx(value, abs=1e-9)
    assert second.aggregate["median"]["overall"]["SDR"] == pytest.approx(first.aggregate["median"]["overall"]["SDR"])
    # Scores made from other estimates (another label) are not reused.
    events.clear()
    evaluate(
        first.dataset, base / "scores", estimates_dir=estimates, label="another model",
        track_names=["Artist B - Tune"], progress=lambda *a: events.append(a),
    )
    assert [e[3] for e in events] == ["start", "scored"]
    assert json.loads(json_file.read_text())["settings"]["label"] == "another model"


def test_separate_fn_mode_with_accompaniment_pair(dataset, tmp_path):
    """A "model" that returns the true vocals and accompaniment; the accompaniment reference
    is built from the non-vocal stems, as musdb does."""
    calls = []

    def separate(mixture: Path) -> dict:
        calls.append(mixture.parent.name)
        vocals = read(mixture.parent / "vocals.wav") + 1e-5 * np.random.default_rng(0).standard_normal((2, 1))
        return {"vocals": vocals, "accompaniment": read(mixture) - vocals, "extra": vocals * 0}

    report = evaluate(
        dataset, tmp_path / "scores", separate_fn=separate, stems=["vocals", "accompaniment"], track_names=["Artist B - Tune"]
    )
    assert calls == ["Artist B - Tune"]
    assert report.stems == ("vocals", "accompaniment")
    scores = report.tracks[0].scores
    assert scores["vocals"]["SDR"] > 50 and scores["accompaniment"]["SDR"] > 50


def test_model_missing_a_stem_is_an_evaluation_error(dataset, tmp_path):
    def separate(mixture: Path) -> dict:
        return {"vocals": read(mixture), "drums": read(mixture)}

    with pytest.raises(EvaluationError, match="does not produce stem bass") as info:
        evaluate(dataset, tmp_path / "scores", separate_fn=separate)
    assert "vocals" in info.value.hint


def test_exact_copies_leave_sdr_undefined_like_museval(dataset, tmp_path):
    track = dataset / "test" / "Artist A - Song"
    refs = {s: read(track / f"{s}.wav") for s in STEMS}
    scores = score_track("x", refs, refs, SR)
    # Every window has zero error: museval stores those as NaN, so the median is NaN,
    # while the MDX SDR stays finite thanks to its delta.
    assert math.isnan(scores.scores["vocals"]["SDR"])
    assert scores.scores["vocals"]["uSDR"] > 100


def test_layout_errors_name_what_is_missing(dataset, tmp_path):
    with pytest.raises(EvaluationError, match="not found"):
        find_tracks(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no track folders") as info:
        find_tracks(tmp_path / "empty")
    assert "mixture.wav" in info.value.hint
    bad = tmp_path / "bad"
    write_wav(bad / "Song" / "vocals.wav", np.zeros((2, 100), np.float32))
    with pytest.raises(EvaluationError, match="no mixture.wav") as info:
        find_tracks(bad)
    assert info.value.path.endswith("Song")
    # Root holding test/ and the split folder itself both work.
    assert find_tracks(dataset)[0] == find_tracks(dataset / "test")[0] == dataset / "test"


def test_missing_reference_or_estimate_file(dataset, tmp_path):
    estimates = make_estimates(dataset, tmp_path / "est")
    (estimates / "Artist B - Tune" / "bass.wav").unlink()
    with pytest.raises(EvaluationError, match="estimate of 'bass' missing") as info:
        evaluate(dataset, tmp_path / "scores", estimates_dir=estimates)
    assert info.value.path.endswith("bass.wav")
    with pytest.raises(EvaluationError, match="reference stem 'piano' missing"):
        evaluate(dataset, tmp_path / "scores", estimates_dir=estimates, stems=["piano", "drums"])
    assert not (tmp_path / "scores" / "tracks" / "Artist A - Song.json").exists()


def test_mismatched_length_and_sample_rate(dataset, tmp_path):
    estimates = make_estimates(dataset, tmp_path / "est")
    one = ["Artist A - Song"]
    short = estimates / one[0] / "vocals.wav"
    write_wav(short, read(short)[:, :-10])
    with pytest.raises(EvaluationError, match="samples, the reference"):
        evaluate(dataset, tmp_path / "s1", estimates_dir=estimates, track_names=one)
    # museval's behaviour on request: zero-pad the short estimate and score it.
    report = evaluate(dataset, tmp_path / "s2", estimates_dir=estimates, track_names=one, fit_length=True)
    assert report.tracks[0].scores["vocals"]["SDR"] > 50
    write_wav(short, read(short), sr=SR // 2)
    with pytest.raises(EvaluationError, match="sample rate"):
        evaluate(dataset, tmp_path / "s3", estimates_dir=estimates, track_names=one)


def test_reference_stem_not_matching_mixture(tmp_path):
    rng = np.random.default_rng(1)
    stems = synth_stems(rng, seconds=1.0)
    for stem, audio in stems.items():
        write_wav(tmp_path / "data" / "Song" / f"{stem}.wav", audio)
    write_wav(tmp_path / "data" / "Song" / "mixture.wav", sum(stems.values())[:, :-5])
    with pytest.raises(EvaluationError, match="differs from the mixture"):
        evaluate(tmp_path / "data", tmp_path / "out", estimates_dir=tmp_path / "data")


def test_usage_errors(dataset, tmp_path):
    with pytest.raises(UsageError):
        evaluate(dataset, tmp_path / "out")
    with pytest.raises(UsageError, match="at least two stems"):
        evaluate(dataset, tmp_path / "out", estimates_dir=dataset, stems=["vocals"])


def test_model_output_of_wrong_shape(dataset, tmp_path):
    def mono(mixture: Path) -> dict:
        return {s: read(mixture)[:1] for s in STEMS}

    with pytest.raises(EvaluationError, match="expected 2 channels"):
        evaluate(dataset, tmp_path / "a", separate_fn=mono)

    def short(mixture: Path) -> dict:
        return {s: read(mixture)[:, :-1] for s in STEMS}

    with pytest.raises(EvaluationError, match="samples, the reference"):
        evaluate(dataset, tmp_path / "b", separate_fn=short)
