"""UVR VR architecture: our torch port against audio-separator 0.47.1's VR separator, on the CPU.

Published-size networks with random weights, drawn with audio-separator's own classes and saved
as UVR's files are (a plain state dict, torch.save):

  v51   nets_new.CascadedNet, nout 48, nout_lstm 128, 4band_v3 (UVR-De-Echo-Normal/Aggressive's shape)
  v5    nets.determine_model_capacity(.., 123821), 4band_v2 (the 5_HP-Karaoke-UVR size, ch 32)

Both sides separate the same WAV file with the same weights and threads:

  audio-separator  VRSeparator.loading_mix -> inference_vr -> spec_to_wav for both stems (what
                   its `separate` does before writing files), window 512, aggression 5, batch 1;
                   band resampling "polyphase" (as our port does; its default off Apple silicon is
                   libsamplerate's sinc_fastest)
  ours             the `vr` family's bag for that file through the engine (separate_tensor), the
                   WAV read with soundfile

Printed per thread count: seconds for the whole track (one timed run after a short warm-up),
the ratio ours / audio-separator (goal <= 1), the largest stem difference relative to
audio-separator's peak, and each side's peak RSS growth over its run (flat memory: the growth
is the spectrograms of the track, not the network).

    python benchmarks/bench_vr.py                       # both networks, 20 s, 1 and 2 threads
    python benchmarks/bench_vr.py --arch v51 --seconds 60 --threads 2

Measured on a 2-core AVX-512 (Zen 4) machine, torch 2.13.0, 20 s (ours / audio-separator):
v51 1.00 on 1 thread, 0.97 on 2; v5 1.01 and 1.07; max diff 3.9e-7. Both sides spend ~90% in the
same torch convs (channels-last measured no faster: 2.25 vs 2.27 s per window), so the ratio is
parity within this machine's run-to-run noise. The tuned allocator the engine sets is worth ~25%
to both; the script sets it first, so that it serves both sides alike. Peak growth (2 threads,
after the engine stopped building a window of the whole 1200 s segment): v51 1075 MiB vs 1119,
v5 1428 vs 1629; under the tuned heap these move by +-200 MiB from run to run. v51, 2 threads,
each side alone in a fresh process, ours then also dropping each whole-track spectrogram once
used: 20 s 1278 MiB vs 1047, 60 s 1286 vs 1343, 120 s 1648 vs 1463. Neither is flat: both
process the track in one piece (ours up to SEGMENT = 1200 s, then in parts), a few MiB per
second of audio.

Needs the test oracle: pip install --no-deps audio-separator==0.47.1 (and librosa).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))  # the oracle loader

import uvr_oracle  # noqa: E402

RATE = 44100
NETWORKS = {"v51": ("4band_v3", "No Echo"), "v5": ("4band_v2", "Instrumental")}


def reference():
    """audio-separator's VR modules, loaded as the tests load them (tests/uvr_oracle.py)."""
    return uvr_oracle.load(uvr_oracle.VR_MODULES)[0]


def reference_net(ref, arch: str, bins: int):
    import torch

    torch.manual_seed(0)
    if arch == "v51":
        net = ref.nets_new.CascadedNet(bins * 2, nout=48, nout_lstm=128)
    else:
        net = ref.nets.determine_model_capacity(bins * 2, 123821)
    return net.eval()


def write_song(path: Path, seconds: float) -> None:
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    mix = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 3300 * t)]) * 0.3
    sf.write(path, (mix + 0.1 * rng.standard_normal((2, n))).T.astype(np.float32), RATE, subtype="FLOAT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(NETWORKS), nargs="+", default=["v51", "v5"])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    import numpy as np
    import soundfile as sf
    import torch

    from procmem import reset_peak, rss_kib, trim_heap
    from unmixcli.engine import EngineOptions, separate_tensor, tune_cpu_allocator
    from unmixcli.families import vr as family

    # The engine tunes the allocator on its first CPU run, process-wide; done here first, both
    # sides run under it from the start (otherwise the first reference run alone goes without).
    tune_cpu_allocator()
    ref = reference()
    ref.spec_utils.wav_resolution = "polyphase"
    print(f"track {args.seconds:.0f} s stereo 44.1 kHz; torch {torch.__version__}; window 512, aggression 5")
    print(f"{'net':>4} {'threads':>7} {'ours s':>8} {'theirs s':>9} {'ours/them':>10} {'max diff':>9} "
          f"{'ours +MiB':>10} {'theirs +MiB':>12}")
    with tempfile.TemporaryDirectory(prefix="bench-vr-") as tmp:
        tmp = Path(tmp)
        song, warm = tmp / "song.wav", tmp / "warm.wav"
        write_song(song, args.seconds)
        write_song(warm, 2.0)
        for arch in args.arch:
            param_name, primary = NETWORKS[arch]
            net = reference_net(ref, arch, family.param_set(param_name).bins)
            path = tmp / f"{arch}.pth"
            torch.save(net.state_dict(), path)
            (tmp / f"{arch}.json").write_text(json.dumps({"vr_model_param": param_name, "primary_stem": primary}))
            bag = family.load_local(path)

            def ours(file: Path):
                mix = torch.from_numpy(sf.read(file, dtype="float32", always_2d=True)[0].T.copy())
                out = separate_tensor(bag, mix, None, EngineOptions(precision="fp32"), torch.device("cpu"))
                return [out[name].numpy() for name in bag.sources]

            def theirs(file: Path):
                with torch.no_grad():
                    return list(uvr_oracle.run_vr_reference(ref, net, param_name, file, primary, arch == "v51"))

            for n in args.threads:
                torch.set_num_threads(n)
                results = {}
                for label, fn in (("theirs", theirs), ("ours", ours)):
                    fn(warm)  # warm-up (allocations, kernels)
                    gc.collect()
                    trim_heap()
                    reset_peak()
                    before = rss_kib("VmRSS") or 0
                    t0 = time.perf_counter()
                    out = fn(song)
                    seconds = time.perf_counter() - t0
                    grown = ((rss_kib("VmHWM") or 0) - before) / 1024
                    results[label] = (seconds, grown, out)
                    del out
                diff = max(float(np.abs(m[:, :t.shape[1]] - t).max() / np.abs(t).max())
                           for m, t in zip(results["ours"][2], results["theirs"][2]))
                print(f"{arch:>4} {n:7d} {results['ours'][0]:8.2f} {results['theirs'][0]:9.2f} "
                      f"{results['ours'][0] / results['theirs'][0]:10.2f} {diff:9.1e} {results['ours'][1]:10.0f} "
                      f"{results['theirs'][1]:12.0f}", flush=True)


if __name__ == "__main__":
    main()
