"""audio-separator 0.47.1 (the UVR oracle, test-only) loaded module by module.

Its package __init__ imports the whole separator and its dependencies (onnx2torch,
pydub, Lightning, ...), which our test set-up does not install; the modules the
tests compare against need none of that. So its packages are stood in for by
namespace modules pointing at its folders, the few names those modules import
but never use are stubbed (only when the real package is absent), and the
modules are imported from its files. `unload` puts sys.modules back.

Used by tests/test_mdxnet.py, tests/test_vr.py and the UVR benchmarks.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from pathlib import Path
from typing import Dict, Iterable, Tuple

import numpy as np
import torch

PACKAGES = ("", "separator", "separator/uvr_lib_v5", "separator/uvr_lib_v5/vr_network", "separator/architectures")
# Names the oracle's modules import but these tests never reach: the Lightning base class only
# adds training hooks (the network is a plain nn.Module), pydub exports audio, onnx2torch is
# for segment sizes other than dim_t, six is a leftover of Python 2.
STUBS: Dict[str, Dict[str, object]] = {"pytorch_lightning": {"LightningModule": torch.nn.Module},
                                       "pydub": {"AudioSegment": object}, "onnx2torch": {"convert": None},
                                       "six": {}}


def root() -> Path:
    spec = importlib.util.find_spec("audio_separator")
    assert spec is not None and spec.origin is not None, \
        "the oracle is missing: pip install --no-deps audio-separator==0.47.1"
    return Path(spec.origin).parent


def load(modules: Iterable[str]) -> Tuple[types.SimpleNamespace, Dict[str, types.ModuleType]]:
    """{short name: dotted path under audio_separator} -> (a namespace of the imported modules
    plus `root`, the sys.modules to restore with `unload`)."""
    saved = dict(sys.modules)
    base = root()
    for folder in PACKAGES:
        name = ".".join(["audio_separator", *filter(None, folder.split("/"))])
        mod = types.ModuleType(name)
        mod.__path__ = [str(base / folder)]
        sys.modules[name] = mod
    for name, attrs in STUBS.items():
        if importlib.util.find_spec(name) is None:
            mod = types.ModuleType(name)
            mod.__dict__.update(attrs)
            sys.modules[name] = mod
    found = {short: importlib.import_module(f"audio_separator.{path}") for short, path in dict(modules).items()}
    return types.SimpleNamespace(root=base, **found), saved


def unload(saved: Dict[str, types.ModuleType]) -> None:
    """Drop the oracle's modules and the stand-ins. Libraries it imported for the first time
    (numpy.fft, scipy, librosa) stay, since C extensions cannot be loaded twice."""
    for name in set(sys.modules) - set(saved):
        if name.split(".")[0] == "audio_separator" or name in STUBS:
            del sys.modules[name]
    sys.modules.update(saved)


VR_MODULES = {"nets": "separator.uvr_lib_v5.vr_network.nets",
              "nets_new": "separator.uvr_lib_v5.vr_network.nets_new",
              "params": "separator.uvr_lib_v5.vr_network.model_param_init",
              "spec_utils": "separator.uvr_lib_v5.spec_utils",
              "separator": "separator.architectures.vr_separator"}
MDX_MODULES = {"mdxnet": "separator.uvr_lib_v5.mdxnet", "stft": "separator.uvr_lib_v5.stft",
               "separator": "separator.architectures.mdx_separator"}


def vr_params_dir(ref: types.SimpleNamespace) -> Path:
    return ref.root / "separator" / "uvr_lib_v5" / "vr_network" / "modelparams"


def run_vr_reference(ref, net, param_name: str, song: Path, primary: str, v51: bool, **options):
    """audio-separator's VRSeparator, set up as its __init__ would for these model data, with its
    network already loaded (`_ensure_model_loaded` then keeps it: it would pick the v5 layout by
    the file's size, which a shrunk file does not have), run as its `separate` runs it before
    writing files. Returns (primary, secondary) [2, T]."""
    sep = object.__new__(ref.separator.VRSeparator)
    sep.logger = logging.getLogger("vr-reference")
    sep.model_params = ref.params.ModelParameters(str(vr_params_dir(ref) / f"{param_name}.json"))
    sep.is_vr_51_model = v51
    sep.window_size = options.get("window_size", 512)
    sep.batch_size = options.get("batch_size", 1)
    sep.enable_tta = options.get("enable_tta", False)
    sep.enable_post_process = options.get("enable_post_process", False)
    sep.post_process_threshold = options.get("post_process_threshold", 0.2)
    sep.high_end_process = options.get("high_end_process", False)
    sep.input_high_end_h = sep.input_high_end = None
    sep.aggression = float(int(options.get("aggression", 5)) / 100)
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
