"""Long inputs: `unmix` on 1, 10 and 60 minutes of audio in flat memory (a script, not a test).

For each length, a synthetic 44.1 kHz stereo FLAC is written block by block,
then the real command line (`python -m unmixcli`) separates it with a tiny
random-weight HTDemucs (8 kHz, the test models' size, so that the model's own
weights and activations are negligible and what is measured is the pipeline:
decode, resample, scratch files, streaming engine, encoders). Each run is its
own child process; its peak resident set size comes from `os.wait4`. Every
stem is then checked for its exact length (the input's, at the model's rate)
and for finite samples at the start and the end.

    python benchmarks/bench_long_input.py                  # 1, 10 and 60 minutes
    python benchmarks/bench_long_input.py --minutes 1 10   # shorter

Flat memory means the peak RSS of the 60-minute run is that of the 1-minute
run plus a few MB; the whole 60-minute track as float32 stereo at 44.1 kHz
would take 1.2 GB by itself. Scratch files (float32 at the model's rate) go to
a temporary folder, which must be empty again afterwards.

Measured on the shared 2-core dev box (2026-11-21, one thread, whole script 2.5 min):

     1 min: peak RSS 325 MB,   3.5 s (17.1x real time), 4 stems x   480000 frames: OK
    10 min: peak RSS 325 MB,  18.8 s (31.9x real time), 4 stems x  4800000 frames: OK
    60 min: peak RSS 326 MB, 104.2 s (34.6x real time), 4 stems x 28800000 frames: OK

Peak RSS grows by 1 MB from 1 to 60 minutes; about 300 MB of it is the Python
process with torch and PyAV loaded.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
INPUT_RATE = 44100


def generate(path: Path, minutes: float) -> int:
    """A tone/noise mix written in 10 s blocks (constant memory). Returns its length in frames."""
    from unmixcli.audio import AudioWriter

    total = int(round(minutes * 60 * INPUT_RATE))
    block = INPUT_RATE * 10
    rng = np.random.default_rng(0)
    with AudioWriter(path, INPUT_RATE, 2, bit_depth=16) as writer:
        for start in range(0, total, block):
            n = min(block, total - start)
            t = (start + np.arange(n)) / INPUT_RATE
            left = 0.3 * np.sin(2 * np.pi * 220.0 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))
            right = 0.3 * np.sin(2 * np.pi * 331.0 * t)
            writer.write((np.stack([left, right]) + 0.02 * rng.standard_normal((2, n))).astype(np.float32))
    return total


def export_tiny_model(folder: Path) -> Path:
    """The tests' tiny HTDemucs in the published layout (needs the `test` extra: demucs)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from demucs_export import export_bag, tiny_htdemucs

    export_bag([tiny_htdemucs(seed=3)], None, None, folder, "tiny")
    return folder


def run_child(cmd, env) -> tuple[int, float, float]:
    """(exit status, peak RSS in MB, wall seconds) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    return proc.returncode, usage.ru_maxrss * scale / 2**20, time.perf_counter() - t0


def check_stem(path: Path, frames: int, rate: int) -> str:
    """'' when the stem has exactly `frames` samples at `rate` and finite ends, else what is wrong."""
    import soundfile as sf

    info = sf.info(path)
    if info.samplerate != rate or info.frames != frames:
        return f"{path.name}: {info.frames} frames at {info.samplerate} Hz, expected {frames} at {rate}"
    n = min(frames, rate * 10)
    for start in (0, frames - n):
        data, _ = sf.read(path, start=start, frames=n, dtype="float32")
        if not np.isfinite(data).all():
            return f"{path.name}: non-finite samples near frame {start}"
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="unmix-bench-long-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    model = export_tiny_model(work / "model")
    model_rate = 8000
    scratch = work / "scratch"
    scratch.mkdir(exist_ok=True)
    # One thread, like the tests: the machine is shared, and a tiny model gains nothing from more.
    env = dict(os.environ, TMPDIR=str(scratch), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    rows = []
    try:
        for minutes in args.minutes:
            song = work / f"long-{minutes:g}min.flac"
            t0 = time.perf_counter()
            frames = generate(song, minutes)
            gen_s = time.perf_counter() - t0
            out = work / f"out-{minutes:g}"
            cmd = [sys.executable, "-m", "unmixcli", str(song), "-m", str(model), "-o", str(out), "-q",
                   "--threads", "1", "--overwrite"]
            status, peak, wall = run_child(cmd, env)
            expected = int(round(frames * model_rate / INPUT_RATE))
            stems = sorted((out / "tiny" / song.stem).glob("*.wav"))
            problems = [p for p in (check_stem(s, expected, model_rate) for s in stems) if p]
            if status != 0 or len(stems) != 4:
                problems.append(f"exit status {status}, {len(stems)} stems")
            leftovers = list(scratch.iterdir())
            if leftovers:
                problems.append(f"scratch not cleaned: {leftovers[:3]}")
            rows.append((minutes, peak, wall, problems))
            print(f"{minutes:6g} min: peak RSS {peak:6.0f} MB, {wall:7.1f} s ({minutes * 60 / wall:5.1f}x real time), "
                  f"4 stems x {expected} frames: {'OK' if not problems else '; '.join(problems)} "
                  f"(input generated in {gen_s:.0f} s)", flush=True)
            song.unlink()
            for s in stems:
                s.unlink()
    finally:
        if args.keep is None:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(f"peak RSS grows by {last[1] - first[1]:+.0f} MB from {first[0]:g} to {last[0]:g} min "
              f"(the {last[0]:g}-minute input as float32 would be {last[0] * 60 * INPUT_RATE * 8 / 2**20:.0f} MB)")
    if any(r[3] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
