"""`unmix INPUT...` and the Python API end to end, with tiny random-weight models
exported in the official format (local folder and fake Hugging Face Hub)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from demucs_export import export_tiny
from unmixcli import cli
from unmixcli.separate import INSTRUMENTAL

STEMS = ["drums", "bass", "other", "vocals"]
RATE = 44100


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A bag of one tiny HTDemucs (8 kHz) in the published layout: tiny.yaml + <sig>.safetensors."""
    folder = tmp_path_factory.mktemp("tiny-model")
    export_tiny(folder, "tiny")
    return folder


def write_song(path: Path, seconds: float = 1.5, rate: int = RATE, gain: float = 0.3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    left = gain * (np.sin(2 * np.pi * 220 * t) + 0.3 * rng.standard_normal(t.size))
    right = gain * (np.sin(2 * np.pi * 330 * t) + 0.3 * rng.standard_normal(t.size))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.stack([left, right], 1).astype(np.float32), rate, subtype="FLOAT")
    return path


def run(args, **kw):
    result = CliRunner().invoke(cli.app, [str(a) for a in args], catch_exceptions=False, **kw)
    return result


def read(path: Path):
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    return data.T, rate  # [C, T]


def test_four_stems_by_default(tmp_path, model_dir):
    song = write_song(tmp_path / "My Song.wav")
    out = tmp_path / "out"
    result = run([song, "-m", model_dir, "-o", out, "-q"])
    assert result.exit_code == 0, result.output
    track = out / "tiny" / "My Song"
    assert sorted(p.name for p in track.iterdir()) == sorted(f"{s}.wav" for s in STEMS)
    for stem in STEMS:
        data, rate = read(track / f"{stem}.wav")
        assert rate == 8000  # the model's rate by default
        assert data.shape == (2, round(1.5 * 8000))
        assert np.isfinite(data).all() and np.abs(data).max() > 0
    # No scratch or temporary files are left beside the stems.
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or "tmp" in p.name]


def test_cli_matches_the_python_api(tmp_path, model_dir):
    from unmixcli import Separator

    song = write_song(tmp_path / "a.wav", seconds=1.0)
    out = tmp_path / "out"
    assert run([song, "-m", model_dir, "-o", out, "-q", "--bit-depth", "32", "--clip", "none"]).exit_code == 0
    sep = Separator(str(model_dir), device="cpu")
    stems = sep.separate_file(song)
    assert set(stems) == set(STEMS)
    for stem in STEMS:
        data, _ = read(out / "tiny" / "a" / f"{stem}.wav")
        np.testing.assert_allclose(data, stems[stem].numpy(), atol=1e-5)


def test_only_requested_stems_are_written(tmp_path, model_dir):
    song = write_song(tmp_path / "s.wav")
    out = tmp_path / "out"
    result = run([song, "-m", model_dir, "-o", out, "-q", "--stems", "vocals,drums"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "tiny" / "s").iterdir()) == ["drums.wav", "vocals.wav"]


def test_unknown_stem_is_a_usage_error(tmp_path, model_dir):
    song = write_song(tmp_path / "s.wav")
    result = run([song, "-m", model_dir, "-o", tmp_path / "out", "--stems", "flute"])
    assert result.exit_code == 2
    assert "error: unknown stem 'flute'" in result.stderr
    assert "drums, bass, other, vocals" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_karaoke_instrumental_is_mix_minus_vocals(tmp_path, model_dir):
    song = write_song(tmp_path / "k.wav", rate=8000)
    out = tmp_path / "out"
    result = run([song, "-m", model_dir, "-o", out, "-q", "--karaoke", "--bit-depth", "32", "--clip", "none"])
    assert result.exit_code == 0, result.output
    vocals, _ = read(out / "tiny" / "k" / "vocals.wav")
    inst, _ = read(out / "tiny" / "k" / f"{INSTRUMENTAL}.wav")
    mix, _ = read(song)
    np.testing.assert_allclose(vocals + inst, mix, atol=1e-6)
    assert np.abs(inst - mix).max() > 1e-3  # the vocals really were removed from something


def test_karaoke_sum_of_other_stems(tmp_path, model_dir):
    song = write_song(tmp_path / "k.wav", rate=8000)
    out = tmp_path / "out"
    args = ["-m", model_dir, "--bit-depth", "32", "--clip", "none", "-q"]
    assert run([song, *args, "-o", out, "--karaoke", "--instrumental", "sum"]).exit_code == 0
    assert run([song, *args, "-o", tmp_path / "all"]).exit_code == 0
    inst, _ = read(out / "tiny" / "k" / f"{INSTRUMENTAL}.wav")
    others = sum(read(tmp_path / "all" / "tiny" / "k" / f"{s}.wav")[0] for s in ("drums", "bass", "other"))
    np.testing.assert_allclose(inst, others, atol=1e-5)


def test_rescale_uses_one_gain_so_stems_still_sum_to_the_mix(tmp_path, model_dir):
    song = write_song(tmp_path / "loud.wav", rate=8000, gain=2.5)  # peaks well above full scale
    out = tmp_path / "out"
    result = run([song, "-m", model_dir, "-o", out, "-q", "--karaoke", "--bit-depth", "32"])
    assert result.exit_code == 0, result.output
    vocals, _ = read(out / "tiny" / "loud" / "vocals.wav")
    inst, _ = read(out / "tiny" / "loud" / f"{INSTRUMENTAL}.wav")
    mix, _ = read(song)
    peak = max(np.abs(vocals).max(), np.abs(inst).max())
    assert peak <= 1.0 + 1e-6 and peak > 0.99  # rescaled to full scale, not beyond
    gain = (vocals + inst)[mix != 0] / mix[mix != 0]
    assert gain.max() - gain.min() < 1e-4  # the same gain everywhere and for both stems
    assert 0 < gain.mean() < 1


def test_clamp_and_integer_output_never_wrap(tmp_path, model_dir):
    song = write_song(tmp_path / "loud.wav", rate=8000, gain=2.5)
    out = tmp_path / "out"
    assert run([song, "-m", model_dir, "-o", out, "-q", "--karaoke", "--clip", "none", "--bit-depth", "16"]).exit_code == 0
    inst, _ = read(out / "tiny" / "loud" / f"{INSTRUMENTAL}.wav")
    mix, _ = read(song)
    # Where the mix is at its positive extreme the instrumental is too: clipped to +1, not wrapped to -1.
    hot = mix > 2.0
    assert hot.any()
    assert (inst[hot] > 0.5).mean() > 0.9


def test_keep_sample_rate_gives_the_input_length(tmp_path, model_dir):
    song = write_song(tmp_path / "r.wav", seconds=1.3, rate=44100)
    out = tmp_path / "out"
    assert run([song, "-m", model_dir, "-o", out, "-q", "--sample-rate", "keep", "--stems", "vocals"]).exit_code == 0
    data, rate = read(out / "tiny" / "r" / "vocals.wav")
    assert rate == 44100 and data.shape == (2, round(1.3 * 44100))
    assert run([song, "-m", model_dir, "-o", tmp_path / "o2", "-q", "--sample-rate", "22050", "--stems", "vocals"]).exit_code == 0
    data, rate = read(tmp_path / "o2" / "tiny" / "r" / "vocals.wav")
    assert rate == 22050 and data.shape == (2, round(1.3 * 22050))


@pytest.mark.parametrize("fmt", ["flac", "mp3", "opus", "m4a"])
def test_other_formats(tmp_path, model_dir, fmt):
    from unmixcli import audio

    song = write_song(tmp_path / "f.wav", seconds=1.0)
    out = tmp_path / "out"
    result = run([song, "-m", model_dir, "-o", out, "-q", "-f", fmt, "--stems", "vocals", "--sample-rate", "keep"])
    assert result.exit_code == 0, result.output
    path = out / "tiny" / "f" / f"vocals.{fmt}"
    decoded = audio.decode(path, sample_rate=44100)
    assert decoded.shape == (2, 44100)


def test_filename_template(tmp_path, model_dir):
    song = write_song(tmp_path / "lib" / "Artist" / "t.wav")
    out = tmp_path / "out"
    result = run([tmp_path / "lib", "-m", model_dir, "-o", out, "-q", "--stems", "bass",
                  "--filename", "{dir}/{track}_{stem}_{model}.{ext}"])
    assert result.exit_code == 0, result.output
    assert (out / "Artist" / "t_bass_tiny.wav").is_file()


def test_resume_skips_finished_tracks_and_redoes_half_finished(tmp_path, model_dir):
    a = write_song(tmp_path / "in" / "a.wav", seed=1)
    b = write_song(tmp_path / "in" / "b.wav", seed=2)
    out = tmp_path / "out"
    assert run([tmp_path / "in", "-m", model_dir, "-o", out, "-q"]).exit_code == 0
    a_vocals = out / "tiny" / "a" / "vocals.wav"
    before = a_vocals.stat().st_mtime_ns
    (out / "tiny" / "b" / "drums.wav").unlink()  # b looks half finished
    result = run([tmp_path / "in", "-m", model_dir, "-o", out, "--json"])
    assert result.exit_code == 0, result.output
    events = [json.loads(l) for l in result.stdout.splitlines() if l.strip()]
    kinds = {(e["event"], Path(e["input"]).name) for e in events if "input" in e}
    assert ("skipped", "a.wav") in kinds and ("done", "b.wav") in kinds
    assert a_vocals.stat().st_mtime_ns == before
    assert (out / "tiny" / "b" / "drums.wav").is_file()
    # --overwrite redoes everything.
    result = run([tmp_path / "in", "-m", model_dir, "-o", out, "--json", "--overwrite"])
    assert sum(json.loads(l)["event"] == "done" for l in result.stdout.splitlines()) == 2


def test_batch_goes_on_past_a_bad_file_and_exits_1(tmp_path, model_dir):
    good = write_song(tmp_path / "in" / "good.wav")
    bad = tmp_path / "in" / "bad.mp3"
    bad.write_bytes(os.urandom(4000))
    out = tmp_path / "out"
    result = run([tmp_path / "in", "-m", model_dir, "-o", out, "-q"])
    assert result.exit_code == 1
    assert (out / "tiny" / "good" / "vocals.wav").is_file()
    assert not (out / "tiny" / "bad").exists()
    error_lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(error_lines) == 1 and "bad.mp3" in error_lines[0]
    assert "Traceback" not in result.output


def test_json_events(tmp_path, model_dir):
    song = write_song(tmp_path / "j.wav")
    result = run([song, "-m", model_dir, "-o", tmp_path / "out", "--json", "--stems", "vocals"])
    assert result.exit_code == 0
    events = [json.loads(l) for l in result.stdout.splitlines() if l.strip()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "progress" in kinds and kinds[-2:] == ["done", "summary"]
    done = events[-2]
    assert Path(done["outputs"]["vocals"]).is_file()
    assert done["duration"] == pytest.approx(1.5, abs=1e-3)
    assert events[-1] == {"event": "summary", "done": 1, "skipped": 0, "failed": 0}


def test_dry_run_writes_nothing(tmp_path, model_dir):
    song = write_song(tmp_path / "d.wav")
    out = tmp_path / "out"
    result = run([song, "-m", model_dir, "-o", out, "--dry-run", "--stems", "vocals"])
    assert result.exit_code == 0
    assert str(out / "tiny" / "d" / "vocals.wav") in result.stdout
    assert "1 to separate" in result.stdout
    assert not out.exists()


def test_colliding_inputs_both_written(tmp_path, model_dir):
    a = write_song(tmp_path / "x" / "song.wav", seed=1)
    b = write_song(tmp_path / "y" / "song.wav", seed=2)
    out = tmp_path / "out"
    result = run([a, b, "-m", model_dir, "-o", out, "-q", "--stems", "vocals", "--bit-depth", "32"])
    assert result.exit_code == 0, result.output
    files = sorted((out / "tiny").rglob("vocals.wav"))
    assert len(files) == 2
    assert not np.array_equal(read(files[0])[0], read(files[1])[0])


def test_bad_option_values_are_usage_errors(tmp_path, model_dir):
    song = write_song(tmp_path / "s.wav")
    for extra in (["-f", "ogg"], ["--clip", "soft"], ["--overlap", "1.5"], ["--sample-rate", "fast"], ["--filename", "{track}.{ext}"]):
        result = run([song, "-m", model_dir, "-o", tmp_path / "out", *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert result.stderr.startswith("error:"), extra


def test_unknown_model_names_close_matches(tmp_path, hf_env):
    song = write_song(tmp_path / "s.wav")
    result = run([song, "-m", "htdemucs_fx", "-o", tmp_path / "out"])
    assert result.exit_code != 0
    assert "htdemucs_ft" in result.stderr
    assert "Traceback" not in result.output


def test_registry_model_from_the_fake_hub_then_offline(tmp_path, fake_hub, runnable_hub_model):
    registry = runnable_hub_model.registry
    song = write_song(tmp_path / "h.wav")
    result = run([song, "-m", "tinyhub", "--registry", registry, "-o", tmp_path / "out", "-q", "--stems", "vocals"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "tinyhub" / "h" / "vocals.wav").is_file()
    fake_hub.stop()  # the Hub is gone: the cached copy must be enough
    result = run([song, "-m", "tinyhub", "--registry", registry, "-o", tmp_path / "out2", "-q", "--offline", "--stems", "vocals"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(
        read(tmp_path / "out" / "tinyhub" / "h" / "vocals.wav")[0], read(tmp_path / "out2" / "tinyhub" / "h" / "vocals.wav")[0]
    )


@pytest.mark.slow
def test_real_process_run(tmp_path, model_dir):
    song = write_song(tmp_path / "p.wav", seconds=1.0)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "unmixcli", str(song), "-m", str(model_dir), "-o", str(out), "--stems", "vocals"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "tiny" / "p" / "vocals.wav").is_file()
    assert "done" in proc.stderr  # the progress display reports the finished file


def test_api_separate_in_memory_resamples_back(model_dir):
    from unmixcli import Separator

    sep = Separator(str(model_dir), device="cpu")
    assert sep.sources == STEMS and sep.samplerate == 8000
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 22050)).astype(np.float32) * 0.1)
    stems = sep.separate(wave, 44100, stems=["vocals"])
    assert list(stems) == ["vocals"]
    assert stems["vocals"].shape == (2, 22050)  # mono in -> the model's stereo, at the caller's rate
    assert torch.isfinite(stems["vocals"]).all()


def test_bit_depth_default_and_lossy_options(tmp_path, model_dir):
    song = write_song(tmp_path / "b.wav", seconds=0.5)
    out = tmp_path / "out"
    assert run([song, "-m", model_dir, "-o", out, "-q", "--stems", "vocals"]).exit_code == 0
    assert sf.info(out / "tiny" / "b" / "vocals.wav").subtype == "PCM_24"
    assert run([song, "-m", model_dir, "-o", out, "-q", "--stems", "bass", "--bit-depth", "16"]).exit_code == 0
    assert sf.info(out / "tiny" / "b" / "bass.wav").subtype == "PCM_16"
    result = run([song, "-m", model_dir, "-o", out, "-f", "mp3", "--bit-depth", "24"])
    assert result.exit_code == 2 and "mp3 cannot be written with --bit-depth 24" in result.stderr
    result = run([song, "-m", model_dir, "-o", out, "-f", "flac", "--bitrate", "320"])
    assert result.exit_code == 2 and "--bitrate does not apply to flac" in result.stderr
    from unmixcli import audio

    assert run([song, "-m", model_dir, "-o", out, "-q", "-f", "mp3", "--bitrate", "128", "--stems", "vocals"]).exit_code == 0
    assert audio.probe(out / "tiny" / "b" / "vocals.mp3").codec == "mp3"


def test_api_separate_to_files_and_verbose_flag_before_inputs(tmp_path, model_dir):
    from unmixcli import Separator
    from unmixcli.separate import OutputOptions, StemRequest

    song = write_song(tmp_path / "in" / "v.wav", seconds=0.5)
    sep = Separator(str(model_dir), device="cpu")
    results = sep.separate_to_files([str(tmp_path / "in")], OutputOptions(out_dir=str(tmp_path / "o"), fmt="flac"),
                                    StemRequest(karaoke=True))
    assert [r.status for r in results] == ["done"]
    assert sorted(p.name for p in (tmp_path / "o" / "tiny" / "v").iterdir()) == ["instrumental.flac", "vocals.flac"]
    # Top-level flags may come before the inputs: `unmix -v song.wav ...`.
    result = run(["-v", song, "-m", model_dir, "-o", tmp_path / "o2", "-q", "--stems", "vocals"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o2" / "tiny" / "v" / "vocals.wav").is_file()


def test_dry_run_of_a_registry_model_downloads_nothing(tmp_path, fake_hub, runnable_hub_model):
    registry = runnable_hub_model.registry
    song = write_song(tmp_path / "d.wav")
    result = run([song, "-m", "tinyhub", "--registry", registry, "-o", tmp_path / "out", "--dry-run", "--karaoke"])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "out" / "tinyhub" / "d" / "instrumental.wav") in result.stdout
    assert not [p for _, p, _ in fake_hub.requests if "/resolve/" in p]  # no file was fetched
    assert not (tmp_path / "out").exists()
