"""Open-Unmix: our separator against `openunmix.predict.separate`, and flat memory on long tracks.

Speed: umxhq's architecture (hidden 512, 4 targets, 4096-point STFT, niter 1, Wiener
windows of 300 frames) with random weights, written as open-unmix's own folder layout;
the reference loads it with `openunmix.utils.load_separator` and runs
`openunmix.predict.separate`, we load it with our family (`load_local`) and run the
engine (`separate_tensor`: a track shorter than one 30 s segment is one forward). Same
input, same threads, alternating ref/ours so background load hits both alike. CPU time
(user + system) is the primary figure on a shared machine; wall time is also printed.

Memory: each length in its own child process, our engine only, the mix streamed in
10 s blocks (`separate_stream`) and the stems dropped as they come, so what is measured
is the model plus the engine; peak RSS is the child's VmHWM.

    python benchmarks/bench_openunmix.py                           # both parts
    python benchmarks/bench_openunmix.py --speed --seconds 20 --threads 1 2
    python benchmarks/bench_openunmix.py --memory --minutes 1 5 20 [--segment 60]

The oracle: `pip install --no-deps openunmix==1.3.0` (see tests/test_openunmix.py for the
torchaudio stand-in, used here the same way).

Measured on the shared 2-core dev box (2026-12-02, torch 2.13 CPU, other jobs running;
compare the ratios, not the seconds):

    speed, 20 s stereo, best of 2 (CPU s / wall s, x real time by wall):
      1 thread:  reference  8.43 /  8.67 s  2.3x     ours 2.79 / 2.84 s   7.0x   ref/ours 3.0x
      2 threads: reference  7.94 /  3.99 s  5.0x     ours 3.16 / 1.59 s  12.6x   ref/ours 2.5x
      max |ours - ref| / peak = 2.0e-7
      (a 2-thread run while the box was busy: 11.6 / 8.3 s vs 5.9 / 4.6 s, 1.8x)
    memory, 1 thread, peak RSS (365 MB with the model loaded):
       1 min:   986 MB   7.1x real time
       5 min:  1150 MB   7.4x real time
      20 min:  1236 MB   7.7x real time
    the same with UNMIX_NO_MALLOC_TUNING=1: 930, 1004, 1020 MB (6.6x, 6.2x, 6.8x)
    60 s segments instead of 30 s: 1182 MB at 1 min, 1670 MB at 6 min, no faster
    the reference (predict.separate, whole track at once): 2038 MB at 1 min, 4932 MB at 3 min

What is live does not depend on the track's length: the rise from 1 to 20 minutes with
the engine's allocator tuning (no mmap, freed heap kept up to 1 GiB, trimmed every 8
forwards) is freed heap the process keeps, bounded by that 1 GiB; without the tuning
the peak is flat within 20 MB. The reference figures: `--reference-minutes 1 3`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procmem import reset_peak, rss_kib, trim_heap  # noqa: E402

RATE = 44100
TARGETS = ["vocals", "drums", "bass", "other"]


def _oracle():
    """openunmix's modules; an empty torchaudio stands in while importing if it is absent."""
    stand_in = None
    try:
        import torchaudio  # noqa: F401
    except ImportError:
        stand_in = sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        from openunmix import model, predict, utils  # test-only oracle
    finally:
        if stand_in is not None:
            sys.modules.pop("torchaudio", None)
    return model, predict, utils


def released_nets(seed: int = 0, hidden: int = 512):
    """Four umxhq-sized networks (ours) with random weights: {target: OpenUnmix}."""
    from unmixcli.models.openunmix import OpenUnmix, bandwidth_to_max_bin

    gen = torch.Generator().manual_seed(seed)
    nets = {}
    for target in TARGETS:
        max_bin = bandwidth_to_max_bin(RATE, 4096, 16000)
        net = OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=hidden, max_bin=max_bin)
        state = net.state_dict()
        for key, value in state.items():
            if value.is_floating_point():
                if key.endswith("running_var"):
                    state[key] = 0.5 + torch.rand(value.shape, generator=gen)
                elif key in ("output_scale", "output_mean", "input_scale"):
                    state[key] = 1.0 + 0.3 * torch.randn(value.shape, generator=gen)
                else:
                    state[key] = 0.05 * torch.randn(value.shape, generator=gen)
        net.load_state_dict(state)
        nets[target] = net.eval()
    return nets


def write_folder(folder: Path, nets) -> None:
    """open-unmix's training layout: <target>.json, <target>.pth, separator.json."""
    for target, net in nets.items():
        torch.save(net.state_dict(), folder / f"{target}.pth")
        args = {"nfft": 4096, "nhop": 1024, "hidden_size": net.hidden_size, "nb_channels": 2, "bandwidth": 16000}
        (folder / f"{target}.json").write_text(json.dumps({"args": args}))
    (folder / "separator.json").write_text(json.dumps({"nfft": 4096, "nhop": 1024, "sample_rate": RATE,
                                                       "nb_channels": 2}))


def timed(fn):
    gc.collect()
    trim_heap()
    c0, t0 = time.process_time(), time.perf_counter()
    with torch.inference_mode():
        out = fn()
    return time.process_time() - c0, time.perf_counter() - t0, out


def speed(seconds: float, threads: int, reps: int) -> None:
    from unmixcli.engine import EngineOptions, separate_tensor
    from unmixcli.families import openunmix as family

    umodel, upredict, uutils = _oracle()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_folder(folder, released_nets())
        ref = uutils.load_separator(str(folder), targets=TARGETS, niter=1, wiener_win_len=300, device="cpu")
        ref.freeze()
        bag = family.load_local(folder)
    gen = torch.Generator().manual_seed(1)
    audio = 0.2 * torch.randn(2, int(seconds * RATE), generator=gen)
    cpu = torch.device("cpu")

    def run_ref():
        return upredict.separate(audio, rate=RATE, separator=ref, device="cpu")

    def run_ours():
        return separate_tensor(bag, audio, None, EngineOptions(), cpu)

    # warm-up on a short piece (allocator, LSTM kernels)
    short = audio[:, : RATE * 2]
    with torch.inference_mode():
        upredict.separate(short, rate=RATE, separator=ref, device="cpu")
        separate_tensor(bag, short, None, EngineOptions(), cpu)
    best = {"ref": (1e9, 1e9), "ours": (1e9, 1e9)}
    outs = {}
    for _ in range(reps):
        for name, fn in (("ref", run_ref), ("ours", run_ours)):
            c, w, out = timed(fn)
            best[name] = (min(best[name][0], c), min(best[name][1], w))
            outs[name] = out
    ref_out = {k: v[0] for k, v in outs["ref"].items()}
    peak = max(float(v.abs().max()) for v in ref_out.values())
    err = max(float((outs["ours"][k] - v).abs().max()) for k, v in ref_out.items()) / peak
    print(f"speed: umxhq-size (hidden 512, 4 targets), {seconds:g} s stereo, {threads} thread(s), best of {reps}")
    for name in ("ref", "ours"):
        c, w = best[name]
        label = "reference (openunmix.predict.separate)" if name == "ref" else "ours (engine, one forward)"
        print(f"  {label:40s} CPU {c:6.2f} s  wall {w:6.2f} s  {seconds / w:5.1f}x real time")
    print(f"  ref/ours: CPU {best['ref'][0] / best['ours'][0]:.2f}x, wall {best['ref'][1] / best['ours'][1]:.2f}x;"
          f"  max |ours - ref| / peak = {err:.1e}")


def memory_child(minutes: float, threads: int, segment: float) -> None:
    """One streamed track through our engine; prints a JSON line."""
    from unmixcli.engine import EngineOptions, separate_stream
    from unmixcli.families.openunmix import DEFAULT_OVERLAP, _bag

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    settings = dict(n_fft=4096, n_hop=1024, audio_channels=2, niter=1, softmask=False, residual=False,
                    wiener_win_len=300, segment=segment)
    bag = _bag(released_nets(), samplerate=RATE, settings=settings, overlap=DEFAULT_OVERLAP, name="umxhq-size",
               available=TARGETS, where=None)
    trim_heap()
    loaded = rss_kib("VmRSS")
    reset_peak()
    total = int(minutes * 60 * RATE)
    block = 10 * RATE
    gen = torch.Generator().manual_seed(0)

    def blocks():
        for start in range(0, total, block):
            yield 0.2 * torch.randn(2, min(block, total - start), generator=gen)

    t0 = time.perf_counter()
    seen = 0
    for piece in separate_stream(bag, blocks(), total, None, EngineOptions(), torch.device("cpu")):
        first = next(iter(piece.values()))
        assert all(torch.isfinite(v).all() for v in piece.values())
        seen += first.shape[-1]
    wall = time.perf_counter() - t0
    assert seen == total, (seen, total)
    print(json.dumps({"minutes": minutes, "loaded_mb": loaded / 1024, "peak_mb": rss_kib("VmHWM") / 1024,
                      "wall": wall, "frames": seen}))


def reference_memory_child(minutes: float, threads: int) -> None:
    """openunmix.predict.separate on a whole track held in memory; prints a JSON line."""
    umodel, upredict, uutils = _oracle()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp), released_nets())
        ref = uutils.load_separator(tmp, targets=TARGETS, niter=1, wiener_win_len=300, device="cpu")
    ref.freeze()
    gen = torch.Generator().manual_seed(0)
    audio = 0.2 * torch.randn(2, int(minutes * 60 * RATE), generator=gen)
    trim_heap()
    loaded = rss_kib("VmRSS")
    reset_peak()
    t0 = time.perf_counter()
    with torch.inference_mode():
        upredict.separate(audio, rate=RATE, separator=ref, device="cpu")
    print(json.dumps({"minutes": minutes, "loaded_mb": loaded / 1024, "peak_mb": rss_kib("VmHWM") / 1024,
                      "wall": time.perf_counter() - t0, "frames": audio.shape[-1]}))


def memory(minutes_list, threads: int, segment: float, reference: bool = False) -> None:
    if reference:
        print(f"memory: openunmix.predict.separate, whole track in memory, {threads} thread(s)")
    else:
        print(f"memory: our engine, umxhq-size random weights, {segment:g} s segments, streamed stereo noise, "
              f"{threads} thread(s)")
    for minutes in minutes_list:
        cmd = [sys.executable, __file__, "--child-minutes", str(minutes), "--threads", str(threads),
               "--segment", str(segment)] + (["--child-reference"] if reference else [])
        res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if res.returncode != 0:
            print(f"  {minutes:g} min: failed\n{res.stderr[-2000:]}")
            continue
        data = json.loads(res.stdout.strip().splitlines()[-1])
        rt = minutes * 60 / data["wall"]
        print(f"  {minutes:5g} min: peak RSS {data['peak_mb']:6.0f} MB (before it: {data['loaded_mb']:.0f} MB), "
              f"{data['wall']:6.1f} s, {rt:.1f}x real time, {data['frames']} frames")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speed", action="store_true", help="only the speed comparison")
    ap.add_argument("--memory", action="store_true", help="only the long-input memory runs")
    ap.add_argument("--seconds", type=float, default=20.0, help="input length (under one segment: one forward)")
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 20])
    ap.add_argument("--segment", type=float, default=None, help="seconds per forward (default: the family's)")
    ap.add_argument("--reference-minutes", type=float, nargs="*", default=[],
                    help="also measure openunmix's own peak memory on these lengths (it grows with them)")
    ap.add_argument("--child-minutes", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--child-reference", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from unmixcli.families.openunmix import DEFAULT_SEGMENT

    segment = args.segment or DEFAULT_SEGMENT
    if args.child_minutes is not None:
        if args.child_reference:
            reference_memory_child(args.child_minutes, args.threads[0])
        else:
            memory_child(args.child_minutes, args.threads[0], segment)
        return
    both = not args.speed and not args.memory
    if args.speed or both:
        for threads in args.threads:
            speed(args.seconds, threads, args.reps)
    if args.memory or both:
        memory(args.minutes, args.threads[0], segment)
        if args.reference_minutes:
            memory(args.reference_minutes, args.threads[0], segment, reference=True)


if __name__ == "__main__":
    main()
