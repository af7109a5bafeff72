"""Each MSST family against MSST's own inference: CPU time and peak memory, side by side.

For every model type asked for, a released-size network is built from MSST's own published
config (the mirror's `configs/`, or any config given with --config TYPE=FILE) with random
weights, saved as MSST saves it (`torch.save(model.state_dict())`), then separated twice on
the same noise, each in a fresh process at the same thread count:

  ours   `unmix noise.wav -m model.ckpt --config model.yaml` (the command line in-process: the
         track streamed from the WAV file, stems written as WAV files);
  msst   `msst.utils.model_utils.demix` on the whole track in memory, as its inference runs it
         (msst 0.1.0 installed with --no-deps, plus omegaconf and ml_collections).

Printed per type and length: CPU seconds (user + system of the process) and peak RSS of each,
and the ratios msst/ours (above 1: ours faster / smaller). Goal: at least as fast, and memory
flat in the track's length (compare the 1 and 10 minute rows).

    python benchmarks/bench_msst.py --types mdx23c,scnet --minutes 1,10
    python benchmarks/bench_msst.py --types mel_band_roformer --minutes 1 --threads 2
    python benchmarks/bench_msst.py --config scnet=path/to/config.yaml --types scnet

Random weights make the same arithmetic as trained ones. On a shared machine, compare the
ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MIRROR = Path("/work/.mirror/ZFTurbo+Music-Source-Separation-Training/repo")

# A published config per model type (paths inside MSST's repository).
CONFIGS = {
    "mdx23c": "configs/config_vocals_mdx23c.yaml",
    "scnet": "configs/config_musdb18_scnet_large.yaml",
    "scnet_masked": "configs/config_musdb18_scnet.yaml",
    "scnet_tran": "configs/config_musdb18_scnet_tran.yaml",
    "bandit_v2": "configs/config_dnr_bandit_v2_mus64.yaml",
    "bs_conformer": "configs/config_vocals_bs_conformer.yaml",
    "mel_band_conformer": "configs/config_vocals_mel_band_conformer.yaml",
    "bs_roformer": "configs/viperx/model_bs_roformer_ep_317_sdr_12.9755.yaml",
    "mel_band_roformer": "configs/KimberleyJensen/config_vocals_mel_band_roformer_kj.yaml",
}

_CHILD = r"""
import json, os, resource, sys, time
import numpy as np, soundfile as sf, torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
side, ckpt, config, model_type, wav, out = sys.argv[1:7]
c0 = time.process_time()
if side == "ours":
    from unmixcli.cli import main
    sys.argv = ["unmix", wav, "-m", ckpt, "--config", config, "-o", out, "-q", "--precision", "fp32",
                "--bit-depth", "32", "--clip", "none", "--threads", os.environ["BENCH_THREADS"]]
    try:
        main()
    except SystemExit as exc:
        if exc.code:
            raise
else:
    from msst.utils.settings import get_model_from_config
    from msst.utils.model_utils import demix
    model, cfg = get_model_from_config(model_type, config)
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    model.eval()
    mix, rate = sf.read(wav, dtype="float32", always_2d=True)
    with torch.inference_mode():
        res = demix(cfg, model, mix.T, torch.device("cpu"), model_type=model_type)
    for s, y in (res.items() if isinstance(res, dict) else [("out", res)]):
        sf.write(os.path.join(out, s + ".wav"), np.asarray(y).T, rate, subtype="FLOAT")
cpu = time.process_time() - c0
print(json.dumps({"cpu": cpu, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def config_text(model_type: str, given: dict) -> str:
    if model_type in given:
        return Path(given[model_type]).read_text()
    return subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{CONFIGS[model_type]}"],
                          check=True, capture_output=True, text=True).stdout


def build_checkpoint(model_type: str, config_path: Path, ckpt: Path) -> None:
    """A random-weight network of MSST's own class, saved as MSST saves it."""
    import torch
    from msst.utils.settings import get_model_from_config

    torch.manual_seed(0)
    model, _ = get_model_from_config(model_type, str(config_path))
    torch.save(model.state_dict(), ckpt)


def run_side(side: str, ckpt: Path, config: Path, model_type: str, wav: Path, out: Path, threads: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BENCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, side, str(ckpt), str(config), model_type, str(wav), str(out)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="mdx23c,scnet,bandit_v2,bs_conformer,mel_band_roformer")
    ap.add_argument("--minutes", default="1,10", help="track lengths, comma-separated")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", action="append", default=[], metavar="TYPE=FILE", help="a config of your own")
    args = ap.parse_args()
    given = dict(item.split("=", 1) for item in args.config)

    import numpy as np
    import soundfile as sf
    import yaml

    print(f"{'type':<20} {'min':>4} {'ours s':>8} {'msst s':>8} {'x faster':>8} "
          f"{'ours MiB':>9} {'msst MiB':>9} {'x smaller':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for model_type in args.types.split(","):
            config = tmp / f"{model_type}.yaml"
            config.write_text(config_text(model_type, given))
            ckpt = tmp / f"{model_type}.ckpt"
            try:
                build_checkpoint(model_type, config, ckpt)
            except Exception as exc:  # noqa: BLE001 - a benchmark reports and goes on
                print(f"{model_type:<20} cannot build MSST's model: {exc}")
                continue
            cfg = yaml.load(config.read_text(), Loader=yaml.FullLoader)
            rate = int((cfg.get("audio") or {}).get("sample_rate", 44100))
            channels = int((cfg.get("audio") or {}).get("num_channels", 2))
            for minutes in (float(m) for m in args.minutes.split(",")):
                wav = tmp / f"noise_{minutes}.wav"
                if not wav.exists():
                    rng = np.random.default_rng(0)
                    with sf.SoundFile(wav, "w", rate, channels, "FLOAT") as f:
                        for _ in range(int(minutes * 6)):  # 10-second blocks
                            f.write((0.1 * rng.standard_normal((rate * 10, channels))).astype(np.float32))
                res = {side: run_side(side, ckpt, config, model_type, wav, tmp / side, args.threads)
                       for side in ("ours", "msst")}
                if any("error" in r for r in res.values()):
                    print(f"{model_type:<20} {minutes:>4g} " + "; ".join(f"{k}: {v.get('error')}" for k, v in res.items()
                                                                       if "error" in v))
                    continue
                o, m = res["ours"], res["msst"]
                print(f"{model_type:<20} {minutes:>4g} {o['cpu']:>8.1f} {m['cpu']:>8.1f} {m['cpu'] / o['cpu']:>8.2f} "
                      f"{o['peak_mib']:>9.0f} {m['peak_mib']:>9.0f} {m['peak_mib'] / o['peak_mib']:>9.2f}")


if __name__ == "__main__":
    main()
