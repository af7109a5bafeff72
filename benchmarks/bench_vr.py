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

Needs the test oracle: pip install --no-deps audio-separator==0.47.1 (and librosa).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import logging
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

RATE = 44100
NETWORKS = {"v51": ("4band_v3", "No Echo"), "v5": ("4band_v2", "Instrumental")}


def reference():
    """audio-separator's VR modules, loaded from its files under namespace stand-ins for its
    packages (its package __init__ imports the whole separator), as tests/test_vr.py does."""
    root = Path(importlib.util.find_spec("audio_separator").origin).parent
    lib = root / "separator" / "uvr_lib_v5"
    for name, folder in (("audio_separator", root), ("audio_separator.separator", root / "separator"),
                         ("audio_separator.separator.uvr_lib_v5", lib),
                         ("audio_separator.separator.uvr_lib_v5.vr_network", lib / "vr_network"),
                         ("audio_separator.separator.architectures", root / "separator" / "architectures")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(folder)]
        sys.modules[name] = mod
    for name, attrs in (("pydub", {"AudioSegment": object}), ("six", {})):
        if importlib.util.find_spec(name) is None:
            mod = types.ModuleType(name)
            mod.__dict__.update(attrs)
            sys.modules[name] = mod
    return types.SimpleNamespace(
        nets=importlib.import_module("audio_separator.separator.uvr_lib_v5.vr_network.nets"),
        nets_new=importlib.import_module("audio_separator.separator.uvr_lib_v5.vr_network.nets_new"),
        params=importlib.import_module("audio_separator.separator.uvr_lib_v5.vr_network.model_param_init"),
        spec_utils=importlib.import_module("audio_separator.separator.uvr_lib_v5.spec_utils"),
        separator=importlib.import_module("audio_separator.separator.architectures.vr_separator"),
        params_dir=lib / "vr_network" / "modelparams",
    )


def reference_net(ref, arch: str, bins: int):
    import torch

    torch.manual_seed(0)
    if arch == "v51":
        net = ref.nets_new.CascadedNet(bins * 2, nout=48, nout_lstm=128)
    else:
        net = ref.nets.determine_model_capacity(bins * 2, 123821)
    return net.eval()


def run_reference(ref, net, param_name: str, song: Path, primary: str, v51: bool):
    """audio-separator's VRSeparator as its __init__ sets it up with its defaults, its network
    already loaded. Returns (primary, secondary) [2, T]."""
    import numpy as np
    import torch

    sep = object.__new__(ref.separator.VRSeparator)
    sep.logger = logging.getLogger("vr-reference")
    sep.model_params = ref.params.ModelParameters(str(ref.params_dir / f"{param_name}.json"))
    sep.is_vr_51_model = v51
    sep.window_size, sep.batch_size = 512, 1
    sep.enable_tta = sep.enable_post_process = sep.high_end_process = False
    sep.post_process_threshold = 0.2
    sep.input_high_end_h = sep.input_high_end = None
    sep.aggression = 0.05
    sep.aggressiveness = {"value": sep.aggression, "split_bin": sep.model_params.param["band"][1]["crop_stop"],
                          "aggr_correction": sep.model_params.param.get("aggr_correction")}
    sep.primary_stem_name = primary
    sep.model_run = net
    sep.torch_device, sep.torch_device_mps = torch.device("cpu"), None
    sep.audio_file_path, sep.wav_subtype = str(song), "FLOAT"
    y_spec, v_spec = sep.inference_vr(sep.loading_mix(), sep.torch_device, sep.aggressiveness)
    y_spec = np.nan_to_num(y_spec, nan=0.0, posinf=0.0, neginf=0.0)
    v_spec = np.nan_to_num(v_spec, nan=0.0, posinf=0.0, neginf=0.0)
    return sep.spec_to_wav(y_spec), sep.spec_to_wav(v_spec)


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
    from unmixcli.engine import EngineOptions, separate_tensor
    from unmixcli.families import vr as family

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
                    return list(run_reference(ref, net, param_name, file, primary, arch == "v51"))

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
