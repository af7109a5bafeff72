"""Reliability (issue 8), parts 2 and 3: faults during a run, and files that try to run code.

Faults: an output folder we may not write to or that vanishes mid-run, a full
disk (an injected ENOSPC, and a real RLIMIT_FSIZE in a subprocess), SIGINT and
SIGTERM in the middle of a track (real subprocesses), two processes writing
the same output at once, a damaged cached checkpoint. The invariant in every
case: no file that looks finished but is not (no partial stem, no temporary
file, no scratch folder left), finished tracks stay, the exit code says what
happened, and a re-run completes the work.

Safety: pickles that would run code, YAML with Python tags and safetensors
metadata naming arbitrary callables are refused with one clean error line, and
the code they carry never runs (each plants a marker file if it did).
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from unmixcli import audio, cli

MODEL_RATE = 8000
STEMS = ("drums", "bass", "other", "vocals")
# The tiny model these runs use is conftest.py's `model_dir` fixture (one export per module).


def song(path: Path, seconds: float, rate: int = MODEL_RATE, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    x = 0.3 * np.stack([np.sin(2 * np.pi * 200 * t), np.sin(2 * np.pi * 300 * t)]) + 0.05 * rng.standard_normal((2, n))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.T.astype(np.float32), rate, subtype="PCM_16")
    return path


def run_cli(args, **kw):
    return CliRunner().invoke(cli.app, [str(a) for a in args], catch_exceptions=False, **kw)


def error_lines(text: str):
    return [line for line in text.splitlines() if line.startswith("error:")]


def files_under(folder: Path):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_whole_stems(out: Path, seconds_by_track: dict, rate: int = MODEL_RATE) -> None:
    """Every file under `out` is a complete stem of a known track, and nothing else is there."""
    for p in files_under(out):
        assert p.suffix == ".wav" and not p.name.startswith("."), f"stray file {p}"
        track = p.parent.name
        assert track in seconds_by_track, p
        info = sf.info(p)
        assert info.frames == int(seconds_by_track[track] * rate), (p, info.frames)


def events(text: str):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --------------------------------------------------------------------------- output folder problems


def test_output_folder_we_may_not_write_to(tmp_path, model_dir, monkeypatch):
    a = song(tmp_path / "in" / "a.wav", 0.5)
    b = song(tmp_path / "in" / "b.wav", 0.5, seed=1)
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() == 0:
        # root writes anywhere: make creating a file in the output tree fail as chmod 555 would.
        real_mkstemp = audio.tempfile.mkstemp

        def denied(*args, dir=None, **kwargs):
            if dir is not None and str(dir).startswith(str(out)):
                raise PermissionError(errno.EACCES, "Permission denied", str(dir))
            return real_mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(audio.tempfile, "mkstemp", denied)
    else:
        out.chmod(0o555)
    result = run_cli([a, b, "-m", model_dir, "-o", out, "-q"])
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 2, result.stderr
    for line, track in zip(lines, (a, b)):
        assert re.search("cannot create a file|Permission denied", line), line
        assert str(track) in line or f"{os.sep}{track.stem}{os.sep}" in line, line  # names its track
    assert "Traceback" not in result.output
    assert [p for p in files_under(out)] == []


@pytest.mark.parametrize("moment", ["while a stem is written", "between two stems"])
def test_output_folder_vanishing_mid_run(tmp_path, model_dir, monkeypatch, moment):
    """The output tree is deleted while the first track's stems are being written."""
    import shutil

    song(tmp_path / "in" / "a.wav", 0.5)
    song(tmp_path / "in" / "b.wav", 0.5, seed=1)
    out = tmp_path / "out"
    method = "write" if moment == "while a stem is written" else "__init__"
    real = getattr(audio.AudioWriter, method)
    calls = {"n": 0}

    def hooked(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # a's second stem: its first is already in place
            shutil.rmtree(out)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(audio.AudioWriter, method, hooked)
    result = run_cli([tmp_path / "in", "-m", model_dir, "-o", out, "-q"])
    assert result.exit_code == 1, result.output
    [line] = error_lines(result.stderr)
    a_in, a_out = str(tmp_path / "in" / "a.wav"), str(out / "tiny" / "a") + os.sep
    assert a_in in line or a_out in line, line  # the error names track a (its input or one of its stems)
    assert "Traceback" not in result.output
    # Track a is not reported done with a stem missing, and keeps nothing; b went on and is whole.
    assert_whole_stems(out, {"a": 0.5, "b": 0.5})
    assert len(files_under(out / "tiny" / "b")) == 4
    assert not (out / "tiny" / "a").exists()
    monkeypatch.setattr(audio.AudioWriter, method, real)
    again = run_cli([tmp_path / "in", "-m", model_dir, "-o", out, "-q"])
    assert again.exit_code == 0
    assert len(files_under(out / "tiny" / "a")) == 4


def test_disk_full_while_writing_a_stem(tmp_path, model_dir, monkeypatch):
    a = song(tmp_path / "in" / "a.wav", 0.5)
    b = song(tmp_path / "in" / "b.wav", 0.5, seed=1)
    out = tmp_path / "out"
    real_write = sf.SoundFile.write
    calls = {"n": 0}

    def full(self, data):
        calls["n"] += 1
        if calls["n"] == 3:  # the third stem of track a
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(sf.SoundFile, "write", full)
    result = run_cli([a, b, "-m", model_dir, "-o", out, "-q"])
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert str(a) in line and "No space left on device" in line
    assert "Traceback" not in result.output
    assert_whole_stems(out, {"a": 0.5, "b": 0.5})
    assert len(files_under(out / "tiny" / "b")) == 4
    assert not (out / "tiny" / "a").exists()  # all or nothing: a's two finished stems were removed


@pytest.mark.slow
def test_a_real_file_size_limit_in_a_subprocess(tmp_path, model_dir):
    """RLIMIT_FSIZE: the kernel refuses writes past the limit (EFBIG), as a full disk would (ENOSPC)."""
    small = song(tmp_path / "in" / "small.wav", 0.5)
    big = song(tmp_path / "in" / "big.wav", 8.0, seed=1)
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    scratch.mkdir()
    # Scratch (8 kHz float32) fits; the big track's 44.1 kHz 24-bit stems (2.1 MB each) do not.
    limit = 1_000_000

    def limit_writes():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "unmixcli", str(tmp_path / "in"), "-m", str(model_dir), "-o", str(out),
         "-q", "--sample-rate", "44100"],
        capture_output=True, text=True, timeout=120, preexec_fn=limit_writes,
        env=dict(os.environ, TMPDIR=str(scratch)),
    )
    assert proc.returncode == 1, proc.stderr
    [line] = error_lines(proc.stderr)
    # libsndfile reports no errno ("System error."); the line names big's stem and suggests the causes.
    assert (str(big) in line or "/big/" in line) and re.search("File too large|disk full", line), line
    assert "Traceback" not in proc.stderr
    assert_whole_stems(out, {"small": 0.5}, rate=44100)
    assert len(files_under(out / "tiny" / "small")) == 4
    assert not (out / "tiny" / "big").exists()  # not even an empty folder for the failed track
    assert list(scratch.iterdir()) == []


# --------------------------------------------------------------------------- interrupts


def test_ctrl_c_while_writing_stems_leaves_only_whole_files(tmp_path, model_dir, monkeypatch):
    a = song(tmp_path / "in" / "a.wav", 0.5)
    b = song(tmp_path / "in" / "b.wav", 0.5, seed=1)
    out = tmp_path / "out"
    real_write = audio.AudioWriter.write
    calls = {"n": 0}

    def write(self, block):
        calls["n"] += 1
        if calls["n"] == 6:  # b's second stem
            raise KeyboardInterrupt
        return real_write(self, block)

    monkeypatch.setattr(audio.AudioWriter, "write", write)
    result = run_cli([a, b, "-m", model_dir, "-o", out, "-q"])
    assert result.exit_code == 130
    assert "Traceback" not in result.output
    assert_whole_stems(out, {"a": 0.5, "b": 0.5})
    assert len(files_under(out / "tiny" / "a")) == 4
    assert not (out / "tiny" / "b").exists()  # b's first stem, written before the interrupt, went with it
    monkeypatch.setattr(audio.AudioWriter, "write", real_write)
    again = run_cli([a, b, "-m", model_dir, "-o", out, "--json"])
    assert again.exit_code == 0
    kinds = {(e["event"], Path(e["input"]).name) for e in events(again.stdout) if "input" in e}
    assert ("skipped", "a.wav") in kinds and ("done", "b.wav") in kinds
    assert len(files_under(out / "tiny" / "b")) == 4


def start_and_wait_for_b(tmp_path, model_dir, out, scratch):
    """A real `unmix` process on in/ (a.wav short, b.wav 30 s), returned once it is separating b."""
    # --overlap 0.9 makes the tiny model about ten times slower: b takes seconds.
    proc = subprocess.Popen(
        [sys.executable, "-m", "unmixcli", str(tmp_path / "in"), "-m", str(model_dir), "-o", str(out),
         "--json", "--overlap", "0.9"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, TMPDIR=str(scratch)),
    )
    seen = []
    deadline = time.monotonic() + 90
    for line in proc.stdout:
        event = json.loads(line)
        seen.append(event)
        if event["event"] == "progress" and event["stage"] == "separate" and event["input"].endswith("b.wav"):
            return proc, seen
        assert time.monotonic() < deadline, seen
    raise AssertionError(f"the process ended before separating b: {seen}")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_signal_in_the_middle_of_a_track(tmp_path, model_dir, signum):
    a = song(tmp_path / "in" / "a.wav", 0.5)
    song(tmp_path / "in" / "b.wav", 30.0, seed=1)
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    scratch.mkdir()
    # The signal lands while b is being separated (its scratch files exist, none of its stems do).
    proc, seen = start_and_wait_for_b(tmp_path, model_dir, out, scratch)
    try:
        assert any(e["event"] == "done" and e["input"] == str(a) for e in seen), seen
        assert list(scratch.iterdir()), "b's scratch folder should exist mid-track"
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert_whole_stems(out, {"a": 0.5, "b": 30.0})
    assert len(files_under(out / "tiny" / "a")) == 4
    assert files_under(out / "tiny" / "b") == []
    assert list(scratch.iterdir()) == []  # scratch removed on the way out
    # A re-run resumes: a is skipped, b is separated.
    again = run_cli([tmp_path / "in", "-m", model_dir, "-o", out, "--json"])
    assert again.exit_code == 0
    kinds = {(e["event"], Path(e["input"]).name) for e in events(again.stdout) if "input" in e}
    assert ("skipped", "a.wav") in kinds and ("done", "b.wav") in kinds
    assert_whole_stems(out, {"a": 0.5, "b": 30.0})


@pytest.mark.slow
def test_scratch_of_a_killed_run_is_removed_by_the_next_run(tmp_path, model_dir, monkeypatch):
    import tempfile

    song(tmp_path / "in" / "a.wav", 0.5)
    song(tmp_path / "in" / "b.wav", 30.0, seed=1)
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    scratch.mkdir()
    proc, _ = start_and_wait_for_b(tmp_path, model_dir, out, scratch)
    proc.kill()  # SIGKILL: no clean-up is possible
    proc.communicate(timeout=30)
    [dead] = list(scratch.iterdir())
    assert any(dead.iterdir())  # its scratch audio is still there
    # Folders that must survive: one of a live process (this one), one that is not ours.
    live = scratch / "unmix-live"
    live.mkdir()
    from unmixcli.separate import _boot_id

    (live / "owner").write_text(f"{os.getpid()} {_boot_id()}\n")
    foreign = scratch / "unmix-something-else"
    foreign.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    result = run_cli([tmp_path / "in", "-m", model_dir, "-o", out, "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in scratch.iterdir()) == sorted([live.name, foreign.name])
    assert_whole_stems(out, {"a": 0.5, "b": 30.0})


# --------------------------------------------------------------------------- two processes at once


@pytest.mark.slow
def test_two_processes_on_the_same_folder_and_output(tmp_path, model_dir):
    seconds = {f"t{i}": 1.0 + 0.5 * i for i in range(3)}
    for i, (name, s) in enumerate(seconds.items()):
        song(tmp_path / "in" / f"{name}.wav", s, seed=i)
    single = tmp_path / "single"
    assert run_cli([tmp_path / "in", "-m", model_dir, "-o", single, "-q"]).exit_code == 0
    shared = tmp_path / "shared"
    cmd = [sys.executable, "-m", "unmixcli", str(tmp_path / "in"), "-m", str(model_dir), "-o", str(shared), "-q"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    assert_whole_stems(shared, seconds)
    ref_files = files_under(single)
    assert [p.relative_to(single) for p in ref_files] == [p.relative_to(shared) for p in files_under(shared)]
    for p in ref_files:
        want, _ = sf.read(p, dtype="float32")
        got, _ = sf.read(shared / p.relative_to(single), dtype="float32")
        np.testing.assert_allclose(got, want, rtol=0, atol=2.0 ** -22)


# --------------------------------------------------------------------------- damaged model cache


def test_damaged_cached_checkpoint_is_refetched_online_and_an_error_offline(tmp_path, fake_hub, runnable_hub_model):
    registry, files = runnable_hub_model.registry, runnable_hub_model.files
    track = song(tmp_path / "s.wav", 0.5)
    args = [track, "-m", "tinyhub", "--registry", registry, "-q", "--stems", "vocals"]
    assert run_cli([*args, "-o", tmp_path / "o1"]).exit_code == 0
    weights = next(n for n in files if n.endswith(".safetensors"))
    cached = next((Path(os.environ["HF_HOME"]) / "hub").rglob(weights))
    blob = Path(os.path.realpath(cached))

    # Same size, a few bytes changed: only the content hash can tell.
    data = bytearray(blob.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4] = b"\x7f\x7f\x7f\x7f"
    blob.write_bytes(bytes(data))
    gets = fake_hub.count("GET", weights)
    result = run_cli([*args, "-o", tmp_path / "o2"])
    assert result.exit_code == 0, result.output
    assert fake_hub.count("GET", weights) == gets + 1  # fetched again
    assert Path(os.path.realpath(cached)).read_bytes() == files[weights]
    np.testing.assert_array_equal(sf.read(tmp_path / "o1" / "tinyhub" / "s" / "vocals.wav")[0],
                                  sf.read(tmp_path / "o2" / "tinyhub" / "s" / "vocals.wav")[0])

    # Truncated, and offline: a clear error before any separation, no output.
    blob = Path(os.path.realpath(cached))
    blob.write_bytes(blob.read_bytes()[:-100])
    result = run_cli([*args, "-o", tmp_path / "o3", "--offline"])
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert "damaged" in line and "tinyhub" in line
    assert "unmix models download tinyhub" in result.stderr  # the hint says how to repair it
    assert "Traceback" not in result.output
    assert not (tmp_path / "o3").exists()


# --------------------------------------------------------------------------- files that try to run code


class _PlantsMarker:
    """Unpickling this calls os.system: a real attack would do worse than touch a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".ckpt", ".pth", ".th", ".pt"])
def test_pickle_that_would_run_code_is_refused(tmp_path, suffix):
    marker = tmp_path / "pickle_ran"
    folder = tmp_path / "model"
    folder.mkdir()
    ckpt = folder / f"evil{suffix}"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _PlantsMarker(marker)}, ckpt)
    # A config beside it, so that a RoFormer loader gets as far as reading the weights.
    (folder / "evil.yaml").write_text("audio: {sample_rate: 44100, chunk_size: 44100}\nmodel: {num_bands: 4}\n")
    track = song(tmp_path / "s.wav", 0.3)
    for ref in (ckpt, folder):
        result = run_cli([track, "-m", ref, "-o", tmp_path / "out", "-q"])
        assert result.exit_code != 0
        [line] = error_lines(result.stderr)
        assert "Traceback" not in result.output
        assert not marker.exists(), f"unpickling ran code ({ref})"
        assert not (tmp_path / "out").exists()
    # The direct loader says why.
    from unmixcli.errors import CheckpointError
    from unmixcli.families.msst import read_state_dict

    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(ckpt)
    assert not marker.exists()


YAML_ATTACKS = [
    "models: !!python/object/apply:os.system ['touch {marker}']\n",
    "models: [!!python/object/new:subprocess.Popen [['touch', '{marker}']]]\n",
    "models: !!python/name:os.system\n",
]


@pytest.mark.parametrize("text", YAML_ATTACKS + ["models: [a\n  b: {{c: [\n"])
def test_bag_yaml_with_python_tags_is_refused(tmp_path, text):
    marker = tmp_path / "yaml_ran"
    bag = tmp_path / "evil.yaml"
    bag.write_text(text.format(marker=marker))
    track = song(tmp_path / "s.wav", 0.3)
    result = run_cli([track, "-m", bag, "-o", tmp_path / "out", "-q"])
    assert result.exit_code != 0
    [line] = error_lines(result.stderr)
    assert str(bag) in line and "Traceback" not in result.output
    assert "not allowed" in line if "python" in text else "not valid YAML" in line
    # One line: the hint is the only other line (YAML's own multi-line message is not passed through).
    assert len(result.stderr.strip().splitlines()) == 2
    assert not marker.exists()


@pytest.mark.parametrize("text", YAML_ATTACKS)
def test_roformer_config_with_python_tags_is_refused(tmp_path, text):
    marker = tmp_path / "yaml_ran"
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save({"w": torch.zeros(2)}, folder / "m.ckpt")
    (folder / "m.yaml").write_text(text.format(marker=marker).replace("models:", "model:"))
    track = song(tmp_path / "s.wav", 0.3)
    result = run_cli([track, "-m", folder / "m.ckpt", "-o", tmp_path / "out", "-q"])
    assert result.exit_code != 0
    [line] = error_lines(result.stderr)
    assert "m.yaml" in line and "not allowed" in line and "Traceback" not in result.output
    assert not marker.exists()


@pytest.mark.parametrize("text", YAML_ATTACKS)
def test_registry_yaml_with_python_tags_is_refused(tmp_path, text, hf_env):
    marker = tmp_path / "yaml_ran"
    registry = tmp_path / "reg.yaml"
    registry.write_text(text.format(marker=marker).replace("models:", "mine:"))
    track = song(tmp_path / "s.wav", 0.3)
    result = run_cli([track, "-m", "mine", "--registry", registry, "-o", tmp_path / "out", "-q"])
    assert result.exit_code != 0
    assert len(error_lines(result.stderr)) == 1 and "Traceback" not in result.output
    assert not marker.exists()


@pytest.mark.parametrize("klass", ["os.system", "builtins.eval", "subprocess.Popen", "torch.nn.Linear"])
def test_safetensors_naming_an_arbitrary_class_is_refused(tmp_path, klass):
    from safetensors.torch import save_file

    marker = tmp_path / "klass_ran"
    path = tmp_path / "evil.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={
        "klass": klass, "args": json.dumps([f"touch {marker}"]), "kwargs": json.dumps({})})
    track = song(tmp_path / "s.wav", 0.3)
    result = run_cli([track, "-m", path, "-o", tmp_path / "out", "-q"])
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert str(path) in line and klass in line
    assert "Traceback" not in result.output
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
