"""`unmix INPUT... --ray`: the batch as a Ray Data job (raybatch.py), on a local Ray cluster
this module starts (2 CPUs), with the suite's tiny HTDemucs.

The Ray path must give what a local batch gives, byte for byte, keep its resume rule and its
"a bad file fails alone" rule, and survive a worker killed mid-track through Ray's own retries.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

ray = pytest.importorskip("ray", reason="the Ray extra (unmixcli[ray]) is not installed")
pytest.importorskip("ray.data", reason="the Ray extra (unmixcli[ray]) is not installed")

from demucs_export import export_tiny  # noqa: E402
from unmixcli import cli  # noqa: E402
from unmixcli.raybatch import MANIFEST, RayOptions, separate_on_ray  # noqa: E402
from unmixcli.separate import OutputOptions, StemRequest  # noqa: E402

STEMS = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (starting one costs seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    export_tiny(folder, "tiny")
    return folder


def write_song(path: Path, seconds: float, seed: int, rate: int = 8000) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    mix = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1) + 0.3 * rng.standard_normal((t.size, 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * mix).astype(np.float32), rate, subtype="FLOAT")
    return path


def run(args):
    return CliRunner().invoke(cli.app, [str(a) for a in args], catch_exceptions=False)


def tree(root: Path) -> dict:
    """{relative path: bytes} of every file under root (the manifest aside)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def manifest(out: Path) -> dict:
    return {Path(r["input"]).name: r for r in map(json.loads, (out / MANIFEST).read_text().splitlines())}


@pytest.fixture(scope="module")
def batch(tmp_path_factory, model_dir):
    """Three songs and a file that is not audio, separated once by a local batch (the reference)."""
    root = tmp_path_factory.mktemp("batch")
    for i, seconds in enumerate((1.0, 2.0, 1.5)):
        write_song(root / "in" / "sub" / f"song {i}.wav" if i == 2 else root / "in" / f"song {i}.wav", seconds, i)
    (root / "in" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    local = root / "local"
    result = run([root / "in", "-m", model_dir, "-o", local, "-q", "--threads", "1"])
    assert result.exit_code == 1  # the broken file fails, the batch goes on
    assert len(tree(local)) == 3 * len(STEMS)
    return root


def test_ray_batch_matches_the_local_batch_and_a_bad_file_fails_alone(cluster, batch, model_dir):
    out = batch / "ray"
    result = run([batch / "in", "-m", model_dir, "-o", out, "-q", "--ray", "auto", "--workers", "2", "--threads", "1",
                  "--report"])
    assert result.exit_code == 1, result.output  # as the local batch: some input failed
    assert "broken.wav" in result.stderr and "error:" in result.stderr
    # --report: one page for the whole cluster batch, written by the driver once Ray is done.
    page = (out / "report.html").read_text(encoding="utf-8")
    assert all(name in page for name in ("song 0", "song 1", "song 2", "broken.wav"))
    (out / "report.html").unlink()
    # Same files, same names (the {dir} of the song in sub/ included), same bytes.
    assert tree(out) == tree(batch / "local")
    records = manifest(out)
    assert sorted(records) == ["broken.wav", "song 0.wav", "song 1.wav", "song 2.wav"]
    assert records["broken.wav"]["status"] == "failed" and "broken.wav" in records["broken.wav"]["error"]
    for name in ("song 0.wav", "song 1.wav", "song 2.wav"):
        rec = records[name]
        assert rec["status"] == "done" and rec["error"] is None
        assert sorted(rec["outputs"]) == sorted(STEMS) and all(Path(p).is_file() for p in rec["outputs"].values())
        assert rec["duration"] > 0 and rec["seconds"] > 0
    assert records["song 1.wav"]["duration"] == pytest.approx(2.0)



def test_remux_on_ray_writes_the_video_copy_as_a_local_batch_does(cluster, tmp_path, model_dir):
    """--remux with --ray: the worker writes the video with a stem for its audio, the same bytes
    as a local batch writes."""
    from media import pyav_write

    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(7)
    pyav_write(inputs / "clip.mp4", (0.2 * rng.standard_normal((2, 44100))).astype(np.float32), 44100, "aac",
               "fltp", video="mpeg4")
    local, remote = tmp_path / "local", tmp_path / "ray"
    base = [inputs, "-m", model_dir, "-q", "--threads", "1", "--remux"]
    assert run([*base, "-o", local]).exit_code == 0
    result = run([*base, "-o", remote, "--ray", "auto"])
    assert result.exit_code == 0, result.output
    copies = [p for p in tree(remote) if p.endswith("clip.mp4")]
    assert len(copies) == 1
    with av.open(str(remote / copies[0])) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
    assert tree(remote) == tree(local)

def test_a_rerun_redoes_only_unfinished_tracks(cluster, batch, model_dir):
    out = batch / "resume"
    args = [batch / "in", "-m", model_dir, "-o", out, "--ray", "auto", "--threads", "1", "--json"]
    assert run(args).exit_code == 1
    finished = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}
    missing = out / "tiny" / "song 1" / "vocals.wav"
    missing.unlink()  # as if the first run had stopped before this track was complete
    result = run(args)
    assert result.exit_code == 1
    events = {Path(e["input"]).name: e["event"] for e in map(json.loads, result.stdout.splitlines()) if "input" in e}
    assert events == {"broken.wav": "error", "song 0.wav": "skipped", "song 1.wav": "done", "song 2.wav": "skipped"}
    assert json.loads(result.stdout.splitlines()[-1]) == {"event": "summary", "done": 1, "skipped": 2, "failed": 1}
    assert tree(out) == tree(batch / "local")
    for path, mtime in finished.items():
        if path.parent.name != "song 1":
            assert path.stat().st_mtime_ns == mtime  # skipped tracks are not written again
    assert manifest(out)["song 0.wav"]["status"] == "skipped"


class Killer(threading.Thread):
    """SIGKILLs the worker process of a track in progress, up to `times` different ones.

    A track in progress has a scratch folder whose `owner` file holds its process id
    (separate._new_scratch), so the kill lands mid-track, inside separate_track."""

    def __init__(self, scratch: Path, times: int):
        super().__init__(daemon=True)
        self.scratch, self.times, self.killed, self.stop = scratch, times, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and len(self.killed) < self.times:
            for owner in self.scratch.glob("unmix-*/owner"):
                try:
                    pid = int(owner.read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    continue  # being written
                if pid not in self.killed and pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
            time.sleep(0.005)


def kill_run(tmp_path, model_dir, inputs, times, retries=2):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    killer = Killer(scratch, times)
    killer.start()
    try:
        results = separate_on_ray(
            [str(p) for p in inputs], dict(model=str(model_dir), device="cpu"), StemRequest(),
            OutputOptions(out_dir=tmp_path / "ray"),
            RayOptions(workers=1, threads=1, task_retries=retries, progress=False, scratch_root=str(scratch)))
    finally:
        killer.stop.set()
        killer.join()
    return results, killer, scratch


def test_a_worker_killed_mid_track_is_restarted_and_the_track_retried(cluster, tmp_path, model_dir):
    long_song = write_song(tmp_path / "in" / "long.wav", 60.0, 7)
    short_song = write_song(tmp_path / "in" / "short.wav", 1.0, 8)
    # What a writer killed earlier mid-stem leaves beside the stem: its temporary file.
    stale = tmp_path / "ray" / "tiny" / "long" / ".vocals.wav.k1ll3d.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a stem")
    results, killer, scratch = kill_run(tmp_path, model_dir, [long_song, short_song], times=1)
    assert len(killer.killed) == 1  # one worker really died mid-track
    assert [r.status for r in results] == ["done", "done"]
    assert run([tmp_path / "in", "-m", model_dir, "-o", tmp_path / "local", "-q", "--threads", "1"]).exit_code == 0
    assert tree(tmp_path / "ray") == tree(tmp_path / "local")  # no temporary or half-written file left
    assert not list(scratch.iterdir())  # the dead worker's scratch was removed by its successor


def test_a_track_that_kills_every_worker_fails_alone_and_leaves_nothing(cluster, tmp_path, model_dir):
    song = write_song(tmp_path / "in" / "doomed.wav", 60.0, 9)
    results, killer, _ = kill_run(tmp_path, model_dir, [song], times=2, retries=1)
    assert len(killer.killed) == 2
    (res,) = results
    assert res.status == "failed"
    assert "died on each of 2 attempts" in res.error.message and res.error.path == str(song)
    assert not [p for p in (tmp_path / "ray").rglob("*") if p.is_file() and p.name != MANIFEST]
    assert manifest(tmp_path / "ray")["doomed.wav"]["status"] == "failed"
