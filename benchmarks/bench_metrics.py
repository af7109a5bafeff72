"""BSS Eval v4 speed: unmixcli.metrics against museval (the reference) on one synthetic track.

Default: a 3-minute, 4-stem, stereo, 44.1 kHz track, scored as museval.eval_mus_track
does (1 s windows and hop, whole-track 512-tap filters). Both run single-threaded in the
same process, one after the other; the script prints both times, the ratio, and the
largest per-window difference (dB) as a parity check.

Timings on a shared machine are noisy (other processes compete for the cores): compare
the ratio, not the absolute times, and repeat if it matters. museval alone takes
minutes on the default track; use --seconds for a quicker look.

    python benchmarks/bench_metrics.py [--seconds 180] [--stems 4] [--skip-museval]
"""

from __future__ import annotations

import os

# Single-threaded BLAS/FFT for both sides: fair, and polite on a shared machine.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from unmixcli.metrics import bss_eval_v4  # noqa: E402

SR = 44100


def load_museval_metrics():
    """museval/metrics.py by file path: `import museval` pulls musdb -> stempeg -> ffmpeg."""
    spec = importlib.util.find_spec("museval")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "metrics.py"
    mod_spec = importlib.util.spec_from_file_location("museval_metrics_oracle", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def make_track(seconds: float, n_src: int, seed: int = 0):
    """`[S, 2, T]` references (coloured noise with envelopes, a silent passage in stem 0)
    and estimates with crosstalk, filtering and noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    refs = np.empty((n_src, 2, n))
    for s in range(n_src):
        noise = rng.standard_normal((2, n))
        spectrum = np.fft.rfft(noise, axis=-1) / (1 + np.fft.rfftfreq(n, 1 / SR) / (200.0 * (s + 1)))
        refs[s] = np.fft.irfft(spectrum, n=n, axis=-1) * (0.5 + np.sin(2 * np.pi * 0.1 * (s + 1) * t) ** 2)
    refs[0, :, 10 * SR : 13 * SR] = 0.0
    ests = 0.8 * refs + 0.1 * np.roll(refs, 1, axis=0) + 0.05 * np.roll(refs, 7, axis=-1)
    ests += 0.02 * rng.standard_normal(ests.shape)
    return refs, ests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--stems", type=int, default=4)
    parser.add_argument("--skip-museval", action="store_true")
    args = parser.parse_args()

    refs, ests = make_track(args.seconds, args.stems)
    print(f"track: {args.seconds:.0f} s, {args.stems} stems, stereo, {SR} Hz; 1 s windows, 1 s hop")

    start = time.perf_counter()
    ours = bss_eval_v4(refs, ests, window=SR, hop=SR)
    ours_s = time.perf_counter() - start
    print(f"unmixcli.metrics.bss_eval_v4: {ours_s:8.2f} s")

    museval = None if args.skip_museval else load_museval_metrics()
    if museval is None:
        print("museval: skipped" if args.skip_museval else "museval: not installed (pip install museval)")
        return
    start = time.perf_counter()
    theirs = museval.bss_eval(
        refs.transpose(0, 2, 1),
        ests.transpose(0, 2, 1),
        window=SR,
        hop=SR,
        compute_permutation=False,
        framewise_filters=False,
        bsseval_sources_version=False,
    )
    theirs_s = time.perf_counter() - start
    print(f"museval.metrics.bss_eval:     {theirs_s:8.2f} s")
    print(f"speed-up: {theirs_s / ours_s:.1f}x  (shared CPU: expect noise of tens of percent)")

    worst = 0.0
    for got, expected in zip((ours.sdr, ours.isr, ours.sir, ours.sar), theirs[:4]):
        assert np.array_equal(np.isnan(got), np.isnan(expected))
        finite = np.isfinite(expected)
        worst = max(worst, float(np.max(np.abs(got[finite] - expected[finite]))))
    print(f"parity: largest per-window difference {worst:.2e} dB")


if __name__ == "__main__":
    main()
