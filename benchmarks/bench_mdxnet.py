"""UVR MDX-Net: our ConvTDFNet in torch against onnxruntime running the same .onnx file, on the CPU.

A released-size network (UVR's Kim_Vocal_2 / Inst_HQ shape: dim_f 3072, n_fft 7680, dim_t 256,
num_blocks 11, l 3, g 48, bn 8; random weights) is built with audio-separator's ConvTDFNet and
exported to ONNX the way UVR's files were (`torch.onnx.export`, opset 13). Both sides then run
the same spectrogram segments [1, 4, dim_f, dim_t] with the same number of threads:

  onnxruntime   InferenceSession(CPUExecutionProvider, intra_op_num_threads=N)
  ours          unmixcli.families.mdxnet.load_network(file) under torch.inference_mode, N threads,
                with the CPU allocator tuned as the engine runs every model (engine.tune_cpu_allocator)

Printed per thread count: seconds per segment (median of 2 x --repeat runs after one warm-up of
each side; the sides take turns, ort first then ours first, so that a drift in the machine's speed
weighs on both), the ratio ours / onnxruntime (goal <= 1), the largest difference relative to
onnxruntime's peak, and the peak RSS growth of each side over its runs (flat: no growth per segment).

Measured on a 2-core AVX-512 (Zen 4) machine, torch 2.13.0, onnxruntime 1.32.0, released size:
1 thread 7.34 s vs 7.40 s (0.99), 2 threads 3.75 s vs 3.81 s (0.98), max diff 1.8e-7. Before the
channels-last layout, the folded norms and the in-place pointwise ops: 1.71 and 1.88; the same
network without the allocator tuning: 8.6 s and 4.5 s (page faults of fresh activations).
Not measured on an AVX2-only machine: oneDNN picks other kernels there. Under bf16 autocast
(--precision bf16, native bf16 here) the same network took 4.27 s and 2.79 s (0.58x and 0.74x
fp32's), 5.6e-3 of peak away from fp32.

    python benchmarks/bench_mdxnet.py                   # released size, 1 and 2 threads
    python benchmarks/bench_mdxnet.py --dim-f 2048 --n-fft 6144 --threads 1

Needs the test oracles (audio-separator 0.47.1 with --no-deps, onnxruntime) and the uvr extra.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))  # the oracle loader (uvr_oracle)


def reference_convtdfnet():
    """audio-separator's uvr_lib_v5.mdxnet module, loaded as the tests load it (tests/uvr_oracle.py)."""
    import uvr_oracle

    return uvr_oracle.load({"mdxnet": uvr_oracle.MDX_MODULES["mdxnet"]})[0].mdxnet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim-f", type=int, default=3072)
    parser.add_argument("--n-fft", type=int, default=7680)
    parser.add_argument("--dim-t", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch

    from procmem import reset_peak, rss_kib
    from unmixcli.engine import tune_cpu_allocator
    from unmixcli.families import mdxnet

    tune_cpu_allocator()  # as the engine runs every model on the CPU

    mdx = reference_convtdfnet()
    torch.manual_seed(0)
    net = mdx.ConvTDFNet(target_name="vocals", lr=1e-4, optimizer="rmsprop", dim_c=4, dim_f=args.dim_f,
                         dim_t=args.dim_t, n_fft=args.n_fft, hop_length=1024, num_blocks=11, l=3, g=48, k=3,
                         bn=8, bias=False, overlap=0).eval()
    x = torch.randn(1, 4, args.dim_f, args.dim_t)
    with tempfile.TemporaryDirectory(prefix="bench-mdxnet-") as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(net, x, str(path), input_names=["input"], output_names=["output"], opset_version=13,
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
        ours, _ = mdxnet.load_network(path)
        ours.eval()
        size_mb = path.stat().st_size / 1e6
        print(f"network: dim_f {args.dim_f}, n_fft {args.n_fft}, dim_t {args.dim_t}, {size_mb:.0f} MB .onnx; "
              f"torch {torch.__version__}, onnxruntime {ort.__version__}")
        print(f"{'threads':>7} {'ours s':>8} {'ort s':>8} {'ours/ort':>9} {'max diff':>9} {'ours +MiB':>10} {'ort +MiB':>9}")
        spec = x.numpy()
        for n in args.threads:
            torch.set_num_threads(n)
            options = ort.SessionOptions()
            options.intra_op_num_threads = n
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

            def run_ort():
                return session.run(None, {"input": spec})[0]

            def run_ours():
                with torch.inference_mode():
                    return ours(x).numpy()

            runs = {"ort": run_ort, "ours": run_ours}
            outs = {label: fn() for label, fn in runs.items()}  # warm-up (allocations, kernels)
            times = {label: [] for label in runs}
            grown = {label: 0.0 for label in runs}
            for order in (("ort", "ours"), ("ours", "ort")):
                for label in order:
                    reset_peak()
                    before = rss_kib("VmRSS") or 0
                    for _ in range(args.repeat):
                        t0 = time.perf_counter()
                        outs[label] = runs[label]()
                        times[label].append(time.perf_counter() - t0)
                    grown[label] = max(grown[label], ((rss_kib("VmHWM") or 0) - before) / 1024)
            results = {label: (statistics.median(times[label]), grown[label], outs[label]) for label in runs}
            diff = float(np.abs(results["ours"][2] - results["ort"][2]).max() / np.abs(results["ort"][2]).max())
            print(f"{n:7d} {results['ours'][0]:8.3f} {results['ort'][0]:8.3f} "
                  f"{results['ours'][0] / results['ort'][0]:9.2f} {diff:9.1e} {results['ours'][1]:10.0f} "
                  f"{results['ort'][1]:9.0f}")


if __name__ == "__main__":
    main()
