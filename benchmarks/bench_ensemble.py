"""What an ensemble costs: time against the sum of its members, peak memory against its largest.

Two members (random-weight HTDemucs bags in the published layout, by tests/demucs_export.py,
different seeds; `--size` picks how big) separate the same track alone and as an ensemble
(`Separator([A, B], ensemble=ALGO)`, streamed by the engine). Each run is its own process, so
its peak RSS (VmHWM, after the model is loaded and the track written) is its own:

    member A, member B          seconds, peak RSS
    ensemble avg_wave / avg_fft seconds, peak RSS

Printed: ensemble seconds / (A + B seconds) (goal: about 1; the combination is cheap) and
ensemble peak RSS - max(member peak RSS) (goal: the combination buffers only, a few MiB per
stem, not a second copy of the track). `--seconds` longer shows the peak does not grow with
the track (the members and the combination all stream).

    python benchmarks/bench_ensemble.py                          # 30 s track, "medium" model
    python benchmarks/bench_ensemble.py --seconds 120 --size released

Needs the demucs oracle (the tests' set-up) to write the random-weight members.

Measured on the shared 2-core dev box (2026-12-03, torch 2.13 CPU, 1 thread, other jobs
running), "medium" members: time / sum of members 0.87-0.94 (avg_wave), 0.97-1.03 (avg_fft);
peak over (largest member's peak + the other's weights) +15 MiB (avg_wave), +32-35 MiB
(avg_fft), the same for a 20 s and an 80 s track (flat in the track's length).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_ray import SIZES, make_model  # noqa: E402  (same member sizes as the Ray benchmark)


def child(models: list, ensemble: str, track: Path, out: Path, threads: int) -> dict:
    import torch

    from procmem import reset_peak, rss_kib, trim_heap
    from unmixcli.api import Separator
    from unmixcli.separate import OutputOptions, StemRequest, run_batch

    torch.set_num_threads(threads)
    sep = Separator(models if len(models) > 1 else models[0], device="cpu",
                    ensemble=ensemble if len(models) > 1 else None)
    trim_heap()
    loaded = rss_kib("VmRSS")
    reset_peak()
    request = StemRequest()
    options = OutputOptions(out_dir=out)
    t0 = time.perf_counter()
    results = run_batch(sep.plan([str(track)], options, request), sep.runtime, request, options)
    seconds = time.perf_counter() - t0
    assert all(r.status == "done" for r in results), [r.error for r in results]
    return {"seconds": seconds, "weights_mib": _weights_bytes(sep.bag) / 2**20,
            "loaded_mib": (loaded or 0) / 1024, "peak_mib": (rss_kib("VmHWM") or 0) / 1024}


def _weights_bytes(bag) -> int:
    """Parameter bytes of a bag, or of an ensemble's member bags."""
    bags = getattr(bag, "members", None) or [bag]
    return sum(p.numel() * p.element_size() for b in bags for m in b.models for p in m.parameters())


def run_child(args, models, ensemble, track, out) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps({"models": models, "ensemble": ensemble,
                                                             "track": str(track), "out": str(out)}),
           "--threads", str(args.threads)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--size", choices=sorted(SIZES), default="medium")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(spec["models"], spec["ensemble"], Path(spec["track"]), Path(spec["out"]), args.threads)))
        return

    import numpy as np
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="bench-ensemble-") as tmp:
        tmp = Path(tmp)
        a = make_model(tmp / "A", args.size, seed=1)
        b = make_model(tmp / "B", args.size, seed=2)
        rate = 22050 if args.size == "medium" else 44100
        rng = np.random.default_rng(0)
        t = np.arange(int(args.seconds * rate)) / rate
        mix = np.stack([np.sin(2 * np.pi * 110 * t), np.sin(2 * np.pi * 165 * t)], 1)
        track = tmp / "song.wav"
        sf.write(track, (0.2 * mix + 0.05 * rng.standard_normal(mix.shape)).astype(np.float32), rate)

        rows = {}
        for label, models, algo in [("member A", [str(a)], None), ("member B", [str(b)], None),
                                    ("ensemble avg_wave", [str(a), str(b)], "avg_wave"),
                                    ("ensemble avg_fft", [str(a), str(b)], "avg_fft")]:
            rows[label] = run_child(args, models, algo, track, tmp / label.replace(" ", "_"))
        print(f"{args.seconds:g} s track, model '{args.size}', {args.threads} thread(s)")
        print(f"{'run':<20} {'seconds':>8} {'weights MiB':>12} {'loaded MiB':>11} {'peak MiB':>9}")
        for label, r in rows.items():
            print(f"{label:<20} {r['seconds']:8.2f} {r['weights_mib']:12.1f} {r['loaded_mib']:11.0f} {r['peak_mib']:9.0f}")
        members_s = rows["member A"]["seconds"] + rows["member B"]["seconds"]
        big, small = sorted((rows["member A"], rows["member B"]), key=lambda r: r["peak_mib"], reverse=True)
        for algo in ("avg_wave", "avg_fft"):
            r = rows[f"ensemble {algo}"]
            # The ensemble holds both members' weights: its budget is the larger member's peak
            # plus the other member's weights; what is left over is the combination's buffers.
            extra = r["peak_mib"] - big["peak_mib"] - small["weights_mib"]
            print(f"{algo}: time / sum of members {r['seconds'] / members_s:.2f}; "
                  f"peak - (largest member's peak + the other's weights) {extra:+.0f} MiB")


if __name__ == "__main__":
    main()
