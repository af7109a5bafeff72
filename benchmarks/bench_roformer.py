"""Speed and peak memory of our Mel-Band RoFormer against the reference forward.

Released-size model (dim 384, depth 6, 60 mel bands, n_fft 2048, hop 441,
stereo, one stem, mask estimator depth 2: the shape of the Kim vocals
checkpoint) with random weights; the reference (`bs-roformer==0.3.10`, a
test-only oracle) gets the same state dict. One chunk per forward, both in
this process, alternating ref/ours so background load hits both alike.

Peak memory is the growth of the process's resident-set high-water mark
during one forward (reset through /proc/self/clear_refs before each run;
Linux only, printed as n/a elsewhere).

    python benchmarks/bench_roformer.py                # 4 s chunk, 1 thread
    python benchmarks/bench_roformer.py --seconds 8 --reps 2

On a shared machine the timings are noisy: compare the ratio, not the seconds.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
import warnings

import torch

from procmem import reset_peak, rss_kib, trim_heap


def measure(fn, x):
    """Run `fn(x)` once: ((CPU seconds, wall seconds), peak RSS growth in MiB or None, output).

    CPU time (user + system of this process) is the primary figure: on a
    machine shared with other jobs, wall time mostly measures the queue.
    """
    gc.collect()
    trim_heap()
    reset_peak()
    base = rss_kib("VmRSS")
    c0, t0 = time.process_time(), time.perf_counter()
    with torch.inference_mode():
        y = fn(x)
    dt = (time.process_time() - c0, time.perf_counter() - t0)
    peak = rss_kib("VmHWM")
    grown = (peak - base) / 1024 if peak is not None and base is not None else None
    return dt, grown, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="chunk length (the Kim config uses 8 s)")
    ap.add_argument("--reps", type=int, default=1, help="timed runs per implementation (after one warm-up each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--no-warmup", action="store_true")
    args = ap.parse_args()

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    from bs_roformer import MelBandRoformer as RefMel  # test-only oracle

    from unmixcli.models.roformer import MelBandRoformer

    cfg = dict(dim=384, depth=args.depth, stereo=True, num_stems=1, time_transformer_depth=1,
               freq_transformer_depth=1, num_bands=60, dim_head=64, heads=8, stft_n_fft=2048,
               stft_hop_length=441, stft_win_length=2048, mask_estimator_depth=2)
    torch.manual_seed(0)
    ref = RefMel(**cfg).eval()
    ours = MelBandRoformer(**cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)

    samples = int(args.seconds * 44100)
    x = torch.randn(1, 2, samples) * 0.1
    print(f"Mel-Band RoFormer dim 384 depth {args.depth}, 60 bands; chunk {args.seconds:g} s; "
          f"{args.threads} thread(s); torch {torch.__version__}")
    if not args.no_warmup:
        short = x[..., : 44100 // 4]
        measure(ref, short)
        measure(ours, short)

    times = {"reference": [], "ours": []}
    peaks = {"reference": [], "ours": []}
    outs = {}
    for _ in range(args.reps):
        for name, fn in (("reference", ref), ("ours", ours)):
            dt, grown, y = measure(fn, x)
            times[name].append(dt)
            peaks[name].append(grown)
            outs[name] = y

    y_ref = outs["reference"]
    y_ours = outs["ours"][:, 0, :, : y_ref.shape[-1]]
    rel = float((y_ref - y_ours).abs().max() / y_ref.abs().max())
    for name in ("reference", "ours"):
        peak = max((p for p in peaks[name] if p is not None), default=None)
        peak_s = f"{peak:.0f} MiB" if peak is not None else "n/a"
        cpu = [t[0] for t in times[name]]
        wall = [t[1] for t in times[name]]
        print(f"{name:>9}: CPU best {min(cpu):.2f} s (runs {', '.join(f'{t:.2f}' for t in cpu)}), "
              f"wall best {min(wall):.2f} s, peak RSS growth {peak_s}")
    best = {n: (min(t[0] for t in v), min(t[1] for t in v)) for n, v in times.items()}
    print(f"speed-up ref/ours: CPU time {best['reference'][0] / best['ours'][0]:.2f}x, "
          f"wall {best['reference'][1] / best['ours'][1]:.2f}x")
    pr, po = peaks["reference"][0], peaks["ours"][0]
    if pr and po:
        print(f"peak memory ratio (ref / ours): {pr / po:.2f}x")
    print(f"max |ours - ref| / max |ref|: {rel:.2e}")
    print("note: shared CPU, timings are noisy; load average "
          f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")


if __name__ == "__main__":
    main()
