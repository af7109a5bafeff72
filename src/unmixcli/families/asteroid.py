"""The Asteroid family: Conv-TasNet, DPRNN-TasNet and DCCRNet speech models published by asteroid.

Published files, read as data:

* `pytorch_model.bin` (a Hub repo such as JorisCos/ConvTasNet_Libri2Mix_sepclean_16k):
  what asteroid's `BaseModel.serialize()` returns, `torch.save`d: a dict with
  `model_name` (the class), `model_args` (its constructor's arguments: the
  filterbank's and the masker's), `state_dict`, and `infos`. It loads with
  `torch.load(weights_only=True)`; `model_name` is looked up in our own table
  (`ARCHS`), never imported; every argument is checked against what the table
  entry takes, and the state dict loads strictly.

Models: `ConvTasNet` (a TCN masker) and `DPRNNTasNet` (a dual-path RNN masker),
both on asteroid's learned `free` filterbank, and `DCCRNet` (a complex U-Net with
a complex LSTM masking an STFT; its `architecture` is one of asteroid's named
layouts, DCCRN-CL or mini). Other asteroid models are named in a one-line error.

Stems: one source (the `enhsingle` / `enh_*` models) gives `speech` and `noise`
(the mix minus the speech); n sources give `speaker1` ... `speaker<n>`, in the
network's output order.

Contract: the model's own rate (`model_args.sample_rate`; 8 kHz or 16 kHz) and
mono (the engine resamples and downmixes the input), no normalisation (asteroid's
forward takes the waveform as it is), segments of `SEGMENT` seconds cross-faded
with the triangle window. Separation has no fixed speaker order between
segments, so a recording longer than a segment may swap speakers where segments
meet; enhancement has no such ambiguity.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch.torch_version import TorchVersion

from ..errors import CheckpointError
from ..models.asteroid import (DCCRN_ARCHITECTURES, DPRNN, ENCODER_ACTS, MASK_ACTS, MASK_BOUNDS, NORMS, RNN_TYPES,
                               AsteroidSeparator, DCCRNetSeparator, DPRNNArgs, TDConvNet, TDConvNetArgs)
from ..models.bag import Contract, ModelBag
from . import weights

CHECKPOINT = "pytorch_model.bin"
#: Seconds per engine segment (the networks take any length; this bounds memory).
SEGMENT = 30.0
#: model_name -> the masker's arguments; those are the names we build.
ARCHS = {"ConvTasNet": TDConvNetArgs, "DPRNNTasNet": DPRNNArgs, "DCCRNet": None}
#: DCCRNet's arguments (`BaseDCUNet.get_model_args` and the mask network's keywords).
_DCCRNET_KEYS = ("architecture", "stft_n_filters", "stft_kernel_size", "stft_stride", "sample_rate", "n_freqs",
                 "n_src", "mask_bound")
#: Asteroid models we know of but do not build (yet), with why.
NOT_YET = {"DCUNet": "DCUNet is not supported by this version of unmix",
           "DPTNet": "DPTNet is not supported by this version of unmix",
           "LSTMTasNet": "LSTMTasNet is not supported by this version of unmix",
           "SuDORMRFNet": "SuDORMRFNet is not supported by this version of unmix",
           "SuDORMRFImprovedNet": "SuDORMRFImprovedNet is not supported by this version of unmix",
           "DeMask": "DeMask is not supported by this version of unmix"}
#: Filterbank arguments (asteroid's `make_enc_dec`); `fb_name` must be the learned bank.
_FB_NAMES = ("free", "FreeFB")
# Arguments that must keep asteroid's defaults: another value is another network.
_FIXED = {"who_is_pinv": None, "padding": 0, "output_padding": 0, "is_pinv": False}
_HINT = "expected asteroid's serialized model: a dict with model_name, model_args and state_dict"


def _stems(n_src: int) -> Tuple[str, ...]:
    return ("speech", "noise") if n_src == 1 else tuple(f"speaker{i + 1}" for i in range(n_src))


def _cause(exc: BaseException) -> str:
    """A short cause for a failed `torch.load`: the object it refused, or the error's first line."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it names the Python object {found.group(1)}, not plain data; refused"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:160]


def read_package(path: Path) -> Dict[str, Any]:
    """The serialized dict, loaded as data (`weights_only`), its three fields checked."""
    try:
        # `infos` records torch.__version__, a str subclass in recent torch: allowed as the string it is.
        with torch.serialization.safe_globals([TorchVersion]):
            package = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"not a loadable asteroid model file ({_cause(exc)})", path=path, hint=_HINT) from exc
    if not isinstance(package, Mapping):
        raise CheckpointError(f"holds a {type(package).__name__}, not asteroid's model dict", path=path, hint=_HINT)
    missing = [k for k in ("model_name", "model_args", "state_dict") if k not in package]
    if missing:
        raise CheckpointError(f"the model dict lacks {', '.join(missing)}", path=path, hint=_HINT)
    if not isinstance(package["model_args"], Mapping) or not isinstance(package["state_dict"], Mapping):
        raise CheckpointError("model_args and state_dict must be mappings", path=path, hint=_HINT)
    return dict(package)


def _int(args: Mapping, key: str, default: Any, path: Path, minimum: int = 1) -> int:
    value = args.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CheckpointError(f"model_args.{key} must be a whole number >= {minimum}, got {value!r}", path=path)
    return value


def _choice(args: Mapping, key: str, default: Any, allowed, path: Path):
    value = args.get(key, default)
    if value not in allowed:
        raise CheckpointError(f"model_args.{key} = {value!r} is not supported", path=path,
                              hint=f"{key} may be " + ", ".join(map(repr, allowed)))
    return value


def build(package: Mapping, path: Path, *, default_rate: Optional[int] = None) -> Tuple[torch.nn.Module, int]:
    """The network described by the dict (weights loaded) and its sample rate."""
    name = package["model_name"]
    if name not in ARCHS:
        if isinstance(name, str) and name in NOT_YET:
            raise CheckpointError(NOT_YET[name], path=path, hint="supported: " + ", ".join(ARCHS))
        raise CheckpointError(f"unknown asteroid model_name {name!r}", path=path,
                              hint="supported asteroid models: " + ", ".join(ARCHS))
    args = dict(package["model_args"])
    if name == "DCCRNet":
        return _build_dccrnet(args, package["state_dict"], path, default_rate)
    klass = ARCHS[name]
    masker_keys = {f.name for f in fields(klass)}
    # dropout acts in training only; the _FIXED arguments are accepted at their defaults
    known = masker_keys | {"fb_name", "n_filters", "kernel_size", "stride", "sample_rate", "encoder_activation",
                           "in_chan", "dropout"} | set(_FIXED)
    unknown = sorted(map(str, set(args) - known))
    if unknown:
        raise CheckpointError(f"{name}: model_args has unknown argument(s) {', '.join(unknown)}", path=path,
                              hint=f"{name} takes " + ", ".join(sorted(known)))
    for key, want in _FIXED.items():
        if key in args and args[key] != want:
            raise CheckpointError(f"model_args.{key} = {args[key]!r} is not supported (only {want!r})", path=path)
    _choice(args, "fb_name", "free", _FB_NAMES, path)
    n_filters = _int(args, "n_filters", 512 if name == "ConvTasNet" else 64, path)
    kernel_size = _int(args, "kernel_size", 16, path)
    stride = _int(args, "stride", kernel_size // 2, path)
    n_src = _int(args, "n_src", None, path)
    rate = _rate(args, default_rate, path)
    enc_act = _choice(args, "encoder_activation", None, ENCODER_ACTS, path)
    in_chan = _int(args, "in_chan", n_filters, path)
    if in_chan != n_filters:
        raise CheckpointError(f"model_args.in_chan ({in_chan}) must equal n_filters ({n_filters})", path=path)
    out_chan = _int(args, "out_chan", n_filters, path)
    norm = _choice(args, "norm_type", "gLN", NORMS, path)
    act = _choice(args, "mask_act", "sigmoid", MASK_ACTS, path)
    if name == "ConvTasNet":
        causal = _choice(args, "causal", False, (False, True), path)
        if causal and norm not in ("cgLN", "cLN"):
            norm = "cLN"  # as asteroid: a causal network needs a causal norm
        masker_args = TDConvNetArgs(
            in_chan=n_filters, n_src=n_src, out_chan=out_chan, n_blocks=_int(args, "n_blocks", 8, path),
            n_repeats=_int(args, "n_repeats", 3, path), bn_chan=_int(args, "bn_chan", 128, path),
            hid_chan=_int(args, "hid_chan", 512, path),
            # skip_chan None, like 0, means no skip connections (asteroid's TDConvNet)
            skip_chan=0 if "skip_chan" in args and args["skip_chan"] is None else _int(args, "skip_chan", 128, path,
                                                                                    minimum=0),
            conv_kernel_size=_int(args, "conv_kernel_size", 3, path), norm_type=norm, mask_act=act, causal=causal)
        masker = TDConvNet(masker_args)
    else:
        chunk = _int(args, "chunk_size", 100, path)
        masker_args = DPRNNArgs(
            in_chan=n_filters, n_src=n_src, out_chan=out_chan, bn_chan=_int(args, "bn_chan", 128, path),
            hid_size=_int(args, "hid_size", 128, path), chunk_size=chunk,
            hop_size=_int(args, "hop_size", chunk // 2, path), n_repeats=_int(args, "n_repeats", 6, path),
            norm_type=norm, mask_act=act, bidirectional=_choice(args, "bidirectional", True, (True, False), path),
            rnn_type=_choice(args, "rnn_type", "LSTM", RNN_TYPES, path),
            num_layers=_int(args, "num_layers", 1, path),
            use_mulcat=_choice(args, "use_mulcat", False, (False, True), path))
        masker = DPRNN(masker_args)
    model = AsteroidSeparator(masker, n_filters, kernel_size, stride, n_src, enc_act, _stems(n_src))
    _load_state(model, package["state_dict"], path)
    model.eval()
    return model, rate


def _rate(args: Mapping, default_rate: Optional[int], path: Path) -> int:
    rate = args.get("sample_rate", default_rate if default_rate is not None else 8000)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0 or float(rate) != int(rate):
        raise CheckpointError(f"model_args.sample_rate must be a positive whole number of Hz, got {rate!r}", path=path)
    return int(rate)


def _build_dccrnet(args: Dict[str, Any], state: Mapping, path: Path,
                   default_rate: Optional[int]) -> Tuple[DCCRNetSeparator, int]:
    unknown = sorted(map(str, set(args) - set(_DCCRNET_KEYS)))
    if unknown:
        raise CheckpointError(f"DCCRNet: model_args has unknown argument(s) {', '.join(unknown)}", path=path,
                              hint="DCCRNet takes " + ", ".join(_DCCRNET_KEYS))
    arch = _choice(args, "architecture", None, tuple(DCCRN_ARCHITECTURES), path)
    n_filters = _int(args, "stft_n_filters", 512, path, minimum=2)
    kernel_size = _int(args, "stft_kernel_size", 400, path)
    stride = _int(args, "stft_stride", 100, path)
    if n_filters % 2 or n_filters < kernel_size:
        raise CheckpointError(f"model_args.stft_n_filters ({n_filters}) must be even and at least "
                              f"stft_kernel_size ({kernel_size})", path=path)
    n_freqs = _int(args, "n_freqs", n_filters // 2, path)
    if n_freqs != n_filters // 2:
        # The network sees the STFT's bins without Nyquist: any other count cannot run.
        raise CheckpointError(f"model_args.n_freqs ({n_freqs}) must be stft_n_filters / 2 ({n_filters // 2})",
                              path=path)
    n_src = _int(args, "n_src", 1, path)
    bound = _choice(args, "mask_bound", "tanh", MASK_BOUNDS, path)
    model = DCCRNetSeparator(arch, n_filters, kernel_size, stride, n_freqs, n_src, bound, _stems(n_src))
    if n_freqs % model.masker.freq_stride:
        raise CheckpointError(f"model_args.n_freqs ({n_freqs}) is not divisible by the {arch} encoders' "
                              f"frequency stride ({model.masker.freq_stride})", path=path)
    # `torch_window` is the STFT window kept for convenience; no computation reads it (the
    # windowed kernels are `_filters`), and older files lack it.
    state = {k: v for k, v in state.items() if not (isinstance(k, str) and k.endswith("filterbank.torch_window"))}
    _load_state(model, state, path)
    model.eval()
    return model, _rate(args, default_rate, path)


def _load_state(model: torch.nn.Module, state: Mapping, path: Path) -> None:
    weights.load_strict(model, state, what="model_args", path=path, hint=_HINT)


def load_asteroid(path: Path, *, name: Optional[str] = None, default_rate: Optional[int] = None) -> ModelBag:
    """A bag of one from asteroid's `pytorch_model.bin`."""
    path = Path(path)
    package = read_package(path)
    model, rate = build(package, path, default_rate=default_rate)
    contract = Contract(samplerate=rate, channels=1, sources=tuple(model.sources), segment=SEGMENT,
                        segment_rule="free", window="triangle", normalize=False, overlap=0.25, bf16=False)
    return ModelBag.single(model, name=name or path.parent.name or path.stem, contracts=[contract],
                           extra={"family": "asteroid", "arch": package["model_name"], "n_src": model.n_src})


def accepts(path: Path) -> bool:
    return Path(path).suffix.lower() == ".bin"


def load_local(path: Path, stems=None, **options: Any) -> ModelBag:
    """`pytorch_model.bin` (or any `.bin` file holding asteroid's serialized dict)."""
    del stems
    if options:
        raise CheckpointError(f"asteroid models take no options (got {', '.join(map(str, options))})", path=path)
    return load_asteroid(Path(path))


def load_spec(spec: Any, folder: Path, stems=None) -> ModelBag:
    """Registry entry `spec`: `checkpoint` is the serialized model (default pytorch_model.bin)."""
    del stems
    if spec.config is not None:
        raise CheckpointError(f"model '{spec.name}': asteroid entries take no config (their pytorch_model.bin "
                              "holds the arguments)", path=spec.source)
    return load_asteroid(Path(folder) / (spec.checkpoint or CHECKPOINT), name=spec.name,
                         default_rate=spec.sample_rate)
