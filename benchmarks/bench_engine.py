"""Engine speed and memory, side by side with demucs.apply.apply_model.

Every measurement runs in its own fresh subprocess, so that peak RSS is that
run's alone. The network is HTDemucs in its released configuration
(4 stems, 7.8 s segment) with random weights (seed 0): our HTDemucs loaded with
the reference's state_dict when ours is importable, else the reference class
for both sides (the output says which).

    python benchmarks/bench_engine.py                    # 30 s, fp32 + bf16, memory 1/10/60 min
    python benchmarks/bench_engine.py --seconds 30 120 --threads 2
    python benchmarks/bench_engine.py --skip-memory

Memory runs stream the mix through `separate_stream` (generated block by
block, output discarded) with a cheap stub network, so that 10 and 60 minutes
finish quickly: they measure the engine's memory, not the network's.
Timings on a shared machine are noisy; run it when the machine is quiet.

Measured 2026-11-21 on the 2-core dev machine, 1 thread, the published htdemucs
configuration (dconv_mode=3, bottom_channels=512) with random weights. The reference's
time moves by +-10% between runs and hours here (33.7 to 37.5 s for 30 s that day; most of
its extra time is page faults), and the ratios move with it:
    30 s, quiet machine, pinned to one core (taskset -c 1): apply_model 34.9 s; unmix fp32
    25.5 s, x1.37, max|diff| 1.5e-7; unmix bf16 19.8 s, x1.76, SNR vs fp32 48.8 dB. Other
    runs that day: fp32 x1.29-1.39, bf16 x1.73-1.84.
    120 s, same run: apply_model 122.5 s; fp32 89.9 s (x1.36); bf16 68.4 s (x1.79).
    Ceiling: 335 GFLOP per segment at the ~108 GFLOP/s GEMM peak is 18.5 s for the 6
    segments (at most x1.83-1.95 as the reference moves); our forward runs at 75% of that
    peak. One fp32 forward takes 4.1 s (the first 1 s more: ~130k page faults and oneDNN's
    kernel generation): the cross-transformer 2.3 s (linears 1.2 s at peak, attention
    1.1 s at ~80%, mostly the exp of its softmax), the frequency decoders' 3x3 rewrite
    convs 0.5 s at peak, the rest 1.3 s. A bf16 forward takes 3.2 s, 1.1 s of it attention:
    torch's CPU attention runs no faster in bf16 than in fp32 here. Written out in query
    chunks with bf16 GEMMs (160-210 GFLOP/s on its shapes), one self-attention call took
    163-282 ms against its 187-198 ms and lost 3-7 dB of SNR: the GEMMs return bf16 scores.
    torch.compile (inductor, freezing) took 700 s to compile and then ran 4.8 s forwards.
    Streaming, stub network: 327 MB at 1 min, 327 at 10, 320 at 60 (flat; 342 -> 363
    before the engine's state got storage allocated once). Full network: 1114 MB at
    1 min; per forward over 4 min (trimming every 8 forwards, see
    engine._Runner._release_free_heap) 1071 MB, 1055 MB without trimming; a 60 min
    stream (616 forwards) peaked at 1066 MB by 2 min, 1080 by 20, 1090 at 60.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from procmem import reset_peak, rss_kib, trim_heap

SR = 44100
STEMS = ["drums", "bass", "other", "vocals"]


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM, see procmem.rss_kib; ru_maxrss where /proc is absent)."""
    peak = rss_kib("VmHWM")
    if peak is not None:
        return peak / 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _forget_setup() -> None:
    """Drop what building the network left behind (the reference copy it was loaded from)
    and restart the peak from here, so that the memory runs see what `unmix` itself holds:
    one network plus the engine."""
    import gc

    gc.collect()
    trim_heap()
    reset_peak()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _mix(seconds: float, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(2, int(seconds * SR), generator=g)


# The published htdemucs (955717e8) is not the class defaults: only these kwargs give its
# 533 tensors / 41,984,456 values (tests/test_models_htdemucs.py checks the counts).
RELEASED_KWARGS = dict(segment=Fraction(39, 5), dconv_mode=3, bottom_channels=512)


def _build(kind: str):
    """(network, description). kind: "reference" or "ours"."""
    import torch
    from demucs.htdemucs import HTDemucs as RefHTDemucs

    torch.manual_seed(0)
    reference = RefHTDemucs(sources=STEMS, **RELEASED_KWARGS).eval()
    if kind == "reference":
        return reference, "demucs.htdemucs.HTDemucs"
    try:
        from unmixcli.models.htdemucs import HTDemucs
    except ImportError:
        return reference, "demucs.htdemucs.HTDemucs (ours not available yet)"
    ours = HTDemucs(sources=STEMS, **RELEASED_KWARGS)
    ours.load_state_dict(reference.state_dict())
    return ours.eval(), "unmixcli.models.htdemucs.HTDemucs"


class _Stub:
    """A cheap stand-in with HTDemucs' interface: fixed 7.8 s input, 4 stems."""

    def __new__(cls):
        import torch
        from torch import nn

        class Stub(nn.Module):
            def __init__(self):
                super().__init__()
                self.sources = list(STEMS)
                self.samplerate = SR
                self.audio_channels = 2
                self.segment = Fraction(39, 5)
                self.use_train_segment = True
                self.gain = nn.Parameter(torch.linspace(0.1, 0.4, len(STEMS)))

            def forward(self, x):  # [B, C, T] -> [B, S, C, T]
                return self.gain[None, :, None, None] * x[:, None]

        return Stub()


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    seconds = args.seconds[0]
    from unmixcli.engine import EngineOptions, separate_stream, separate_tensor
    from unmixcli.models.bag import ModelBag

    result = {"rss_before_mb": None}
    if args.worker in ("memory", "memory-full"):
        model = _Stub() if args.worker == "memory" else _build("ours")[0]
        _forget_setup()
        bag = ModelBag.single(model, normalize=True)
        total = int(seconds * SR)
        block = SR  # 1 s blocks, as an audio reader gives them

        def blocks():
            g = torch.Generator().manual_seed(0)
            for start in range(0, total, block):
                yield 0.3 * torch.randn(2, min(block, total - start), generator=g)

        result["rss_before_mb"] = _peak_rss_mb()
        t0 = time.perf_counter()
        frames = 0
        for piece in separate_stream(bag, blocks(), total, None, EngineOptions(), torch.device("cpu"),
                                     stats=(0.0, 0.3)):
            frames += piece["vocals"].shape[1]
        assert frames == total
        result.update(wall=time.perf_counter() - t0, peak_rss_mb=_peak_rss_mb(),
                      model="stub" if args.worker == "memory" else _build("ours")[1])
        print(json.dumps(result))
        return

    if args.worker == "ceiling":
        print(json.dumps(_ceiling()))
        return

    model, description = _build("reference" if args.worker == "reference" else "ours")
    forwards = []
    model.register_forward_pre_hook(lambda module, inputs: forwards.append(inputs[0].shape[0]))
    mix = _mix(seconds)
    result["rss_before_mb"] = _peak_rss_mb()
    c0, t0 = _cpu_seconds(), time.perf_counter()
    if args.worker == "reference":
        from demucs.apply import apply_model

        out = apply_model(model, mix[None], shifts=0, split=True, overlap=0.25)[0]
    else:
        bag = ModelBag.single(model, normalize=False)  # apply_model itself does not normalise
        stems = separate_tensor(bag, mix, None, EngineOptions(precision=args.precision),
                                torch.device("cpu"))
        out = torch.stack([stems[s] for s in STEMS])
    wall = time.perf_counter() - t0
    result.update(wall=wall, cpu=_cpu_seconds() - c0, peak_rss_mb=_peak_rss_mb(), model=description,
                  segments=sum(forwards))
    torch.save(out, args.save)
    print(json.dumps(result))


def _ceiling() -> dict:
    """What one forward of the network costs at best on this CPU: its FLOPs (attention and
    oneDNN linears included, which torch's counter misses) over the measured fp32 GEMM
    peak at this thread count. No implementation that computes the same network in fp32
    can beat that, whatever the engine does around it."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def attention_flops(query, key, value, *args, out_shape=None, **kwargs):
        *lead, q_len, head_dim = query
        batch_heads = 1
        for n in lead:
            batch_heads *= n
        return 4 * batch_heads * q_len * key[-2] * head_dim  # Q @ K^T and P @ V

    from unmixcli.engine import tune_cpu_allocator

    tune_cpu_allocator()  # as the engine runs it
    def linear_flops(x, weight, *args, out_shape=None, **kwargs):
        rows = 1
        for n in x[:-1]:
            rows *= n
        return 2 * rows * weight[0] * weight[1]

    model, _ = _build("ours")
    x = _mix(float(model.segment))[None]
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention_flops}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):  # unmixcli.models.cpu_kernels.linear
        mapping[torch.ops.mkldnn._linear_pointwise] = linear_flops
    with torch.no_grad():
        model(x)
        counter = FlopCounterMode(display=False, custom_mapping=mapping)
        with counter:
            model(x)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    # The peak: the faster of torch's own GEMM (MKL) and the oneDNN one ours uses.
    from unmixcli.models.cpu_kernels import linear

    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    peak = 0.0
    with torch.no_grad():
        for gemm in (torch.mm, linear):
            gemm(a, b)
            t0 = time.perf_counter()
            for _ in range(3):
                gemm(a, b)
            peak = max(peak, 3 * 2 * 4096 ** 3 / (time.perf_counter() - t0))
    return dict(gflop=counter.get_total_flops() / 1e9, peak_gflops=peak / 1e9, forward=min(times))


def _run(kind: str, seconds: float, threads: int, precision: str = "fp32", save: str = "") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--worker", kind, "--seconds", str(seconds), "--threads", str(threads),
           "--precision", precision, "--save", save]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median(runs: list) -> dict:
    """The run with the median wall time (its other fields come with it)."""
    return sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, nargs="+", default=[30.0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=1, help="runs per side, alternating")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 run")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true", help="only the memory runs")
    parser.add_argument("--memory-minutes", type=float, nargs="+", default=[1.0, 10.0, 60.0])
    parser.add_argument("--full-memory-minutes", type=float, nargs="*", default=[],
                        help="also stream these lengths through the full HTDemucs (slow: ~21 forwards "
                             "per 2 minutes of audio)")
    parser.add_argument("--worker", choices=["reference", "ours", "memory", "memory-full", "ceiling"], help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--save", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    print(f"threads={args.threads}; each run in a fresh process; wall = separation only; "
          "RSS = whole-process peak (includes the model and the mix)")
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in [] if args.skip_speed else args.seconds:
            paths = {k: str(Path(tmp) / f"{k}.pt") for k in ("ref", "fp32", "bf16")}
            runs = {"ref": [], "fp32": [], "bf16": []}
            for _ in range(args.reps):  # alternate, so that load changes hit both sides alike
                runs["ref"].append(_run("reference", seconds, args.threads, save=paths["ref"]))
                runs["fp32"].append(_run("ours", seconds, args.threads, save=paths["fp32"]))
                if not args.no_bf16:
                    runs["bf16"].append(_run("ours", seconds, args.threads, precision="bf16",
                                             save=paths["bf16"]))
            ref, ours = _median(runs["ref"]), _median(runs["fp32"])
            a, b = torch.load(paths["ref"]), torch.load(paths["fp32"])
            diff = (a - b).abs().max().item()
            print(f"\n{seconds:g} s of audio, {args.reps} run(s) each, medians; "
                  f"model: ours={ours['model']}; reference={ref['model']}")
            print(f"  apply_model : wall {ref['wall']:7.2f} s  cpu {ref['cpu']:7.2f} s  "
                  f"peak RSS {ref['peak_rss_mb']:6.0f} MB")
            print(f"  unmix fp32  : wall {ours['wall']:7.2f} s  cpu {ours['cpu']:7.2f} s  "
                  f"peak RSS {ours['peak_rss_mb']:6.0f} MB  speed-up wall x{ref['wall'] / ours['wall']:.2f} "
                  f"cpu x{ref['cpu'] / ours['cpu']:.2f}  max|diff| {diff:.2e} (output peak {a.abs().max().item():.2f})")
            ceiling = _run("ceiling", seconds, args.threads)
            floor = ours["segments"] * ceiling["gflop"] / ceiling["peak_gflops"]
            print(f"  ceiling     : {ceiling['gflop']:.0f} GFLOP per segment x {ours['segments']} segments at "
                  f"this thread count's fp32 GEMM peak ({ceiling['peak_gflops']:.0f} GFLOP/s) = {floor:.1f} s, "
                  f"so fp32 can be at most x{ref['wall'] / floor:.2f}; one forward runs at "
                  f"{100 * ceiling['gflop'] / ceiling['forward'] / ceiling['peak_gflops']:.0f}% of that peak")
            if not args.no_bf16:
                low = _median(runs["bf16"])
                c = torch.load(paths["bf16"])
                snr = 10 * torch.log10(b.pow(2).sum() / (c - b).pow(2).sum()).item()
                print(f"  unmix bf16  : wall {low['wall']:7.2f} s  cpu {low['cpu']:7.2f} s  "
                      f"peak RSS {low['peak_rss_mb']:6.0f} MB  speed-up wall x{ref['wall'] / low['wall']:.2f} "
                      f"cpu x{ref['cpu'] / low['cpu']:.2f}  SNR vs fp32 {snr:.1f} dB")
    if not args.skip_memory:
        print("\nStreaming peak RSS (separate_stream, 1 s input blocks, output discarded; "
              "STUB network, not HTDemucs: measures the engine's own memory)")
        for minutes in args.memory_minutes:
            mem = _run("memory", minutes * 60, args.threads)
            print(f"  {minutes:5g} min: peak RSS {mem['peak_rss_mb']:7.0f} MB "
                  f"(before separating {mem['rss_before_mb']:.0f} MB), {mem['wall']:.1f} s")
        for minutes in args.full_memory_minutes:
            mem = _run("memory-full", minutes * 60, args.threads)
            print(f"  {minutes:5g} min, full network ({mem['model']}): peak RSS {mem['peak_rss_mb']:7.0f} MB "
                  f"(before separating {mem['rss_before_mb']:.0f} MB), {mem['wall']:.1f} s")


if __name__ == "__main__":
    main()
