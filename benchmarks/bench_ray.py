"""`unmix --ray`: a Ray Data job of 2 actors x 1 thread against one local batch x 1 thread.

The same 8 short tracks, the same model (a random-weight HTDemucs written in the published
bag layout, by tests/demucs_export.py; `--size` picks how big), the same options. Timed:

  local   `separate.run_batch` in this process, model already loaded (1 torch thread);
  ray     `raybatch.separate_on_ray` on a local cluster of 2 CPUs: planning (the driver
          loads the model once), starting 2 actors (each loads the model), the tracks,
          the manifest. Ray's own start (`ray.init`) is timed apart: a cluster is
          normally running already.

Throughput = seconds of audio per wall second; the ratio ray/local is the figure to read
(on 2 cores the ceiling is 2x, less the actors' start). The stems of both runs are compared
byte for byte.

    python benchmarks/bench_ray.py                      # 8 x 4 s tracks, the "medium" model
    python benchmarks/bench_ray.py --tracks 8 --seconds 10 --size released

Needs the Ray extra (pip install "ray[data]==2.60.0") and the demucs oracle (tests' set-up).

Measured on the shared 2-core dev box (2026-12-03, torch 2.13 CPU, ray 2.60.0, other jobs
running; compare the ratios, not the seconds): see the report of issue 20.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # actors inherit it; one thread each, as the local run
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SIZES = {
    # kwargs of the reference HTDemucs on top of tests/demucs_export.tiny_htdemucs's
    "tiny": dict(),
    "medium": dict(channels=16, depth=3, nfft=1024, samplerate=22050),
    "released": dict(channels=48, depth=4, nfft=4096, samplerate=44100, t_layers=5, t_heads=8,
                     t_hidden_scale=4.0, dconv_comp=8, freq_emb=0.2, bottom_channels=512, dconv_mode=3),
}


def make_model(folder: Path, size: str, seed: int = 1) -> Path:
    from fractions import Fraction

    from demucs_export import export_model, tiny_htdemucs, write_bag_yaml

    extra = dict(SIZES[size])
    if size == "released":
        extra["segment"] = Fraction(39, 5)
    sig = export_model(tiny_htdemucs(seed=seed, **extra), folder)
    write_bag_yaml(folder, "bench", [sig])
    return folder


def make_tracks(folder: Path, n: int, seconds: float, rate: int) -> float:
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True)
    for i in range(n):
        rng = np.random.default_rng(i)
        t = np.arange(int(seconds * rate)) / rate
        mix = np.stack([np.sin(2 * np.pi * (110 + 20 * i) * t), np.sin(2 * np.pi * 165 * t)], 1)
        sf.write(folder / f"track{i}.wav", (0.2 * mix + 0.05 * rng.standard_normal(mix.shape)).astype(np.float32),
                 rate, subtype="FLOAT")
    return n * seconds


def tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.wav")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--size", choices=sorted(SIZES), default="medium")
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    import ray

    from unmixcli.api import Separator
    from unmixcli.raybatch import RayOptions, separate_on_ray
    from unmixcli.separate import OutputOptions, StemRequest, run_batch

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        tmp = Path(tmp)
        model = make_model(tmp / "model", args.size)
        sep = Separator(str(model), device="cpu")
        audio_s = make_tracks(tmp / "in", args.tracks, args.seconds, sep.samplerate)
        request = StemRequest()
        print(f"{args.tracks} tracks x {args.seconds:g} s, model '{args.size}' "
              f"({sum(p.numel() for p in sep.bag.models[0].parameters()) if hasattr(sep.bag, 'models') else '?'}"
              f" parameters, {sep.samplerate} Hz), torch {torch.__version__}, ray {ray.__version__}")

        out_local = OutputOptions(out_dir=tmp / "local")
        t0 = time.perf_counter()
        results = run_batch(sep.plan([str(tmp / "in")], out_local, request), sep.runtime, request, out_local)
        local_s = time.perf_counter() - t0
        assert all(r.status == "done" for r in results)
        local_track_s = sum(r.elapsed for r in results)

        # Control: the same split by hand, N plain `unmix` processes side by side (each starts
        # Python, imports torch and loads the model, as an actor does): what the machine allows.
        import subprocess

        files = sorted(str(f) for f in (tmp / "in").iterdir())
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "unmixcli", *files[i::args.actors], "-m", str(model),
                                   "-o", str(tmp / "control"), "-q", "--threads", "1", "--device", "cpu"])
                 for i in range(args.actors)]
        assert all(proc.wait() == 0 for proc in procs)
        control_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        ray.init(num_cpus=args.actors, include_dashboard=False, logging_level="error")
        init_s = time.perf_counter() - t0
        try:
            out_ray = OutputOptions(out_dir=tmp / "ray")
            t0 = time.perf_counter()
            results = separate_on_ray([str(tmp / "in")], dict(model=str(model), device="cpu"), request, out_ray,
                                      RayOptions(workers=args.actors, threads=1, progress=False))
            ray_s = time.perf_counter() - t0
        finally:
            ray.shutdown()
        assert all(r.status == "done" for r in results)
        ray_track_s = sum(r.elapsed for r in results)  # measured in the actors, by separate_track
        same = tree(tmp / "local") == tree(tmp / "ray") == tree(tmp / "control")

    print(f"local, 1 process x 1 thread:   {local_s:7.2f} s  {audio_s / local_s:6.2f}x real time")
    print(f"ray, {args.actors} actors x 1 thread:     {ray_s:7.2f} s  {audio_s / ray_s:6.2f}x real time"
          f"   (+ ray.init {init_s:.2f} s)")
    print(f"control, {args.actors} unmix processes x 1 thread: {control_s:7.2f} s  {audio_s / control_s:6.2f}x real time"
          f"   (ray/control {control_s / ray_s:.2f}x)")
    print(f"seconds inside separate_track, summed over tracks: local {local_track_s:.2f}, ray {ray_track_s:.2f}"
          f" (the rest of ray's time: planning, actors starting and loading the model, Ray's own work)")
    print(f"throughput ray/local: {local_s / ray_s:.2f}x  (with ray.init: {local_s / (ray_s + init_s):.2f}x)")
    print(f"stems byte-identical: {same}")


if __name__ == "__main__":
    main()
