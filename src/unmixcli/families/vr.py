"""The VR family: UVR's VR-architecture `.pth` models (5_HP-Karaoke-UVR, UVR-De-Echo-*, ...), in torch.

Published files, read as data:

* the `.pth` file UVR downloads: a plain state dict, read with
  `torch.load(weights_only=True)`. Which network it is comes from its keys and
  shapes (`network_from_state`): a v5 `CascadedASPPNet` (width, fifth encoder
  level, extra ASPP branches) or a v5.1 `CascadedNet` (nout, nout_lstm); UVR and
  audio-separator guess it from the file's size instead.
* what the file does not say (the parameter set: bands, rates, FFT sizes, crops,
  filters; and the primary stem) comes from UVR's VR model-data table
  (`unmixcli/data/uvr_vr_model_data.json`, sources named in it), keyed by UVR's
  hash of the file (`mdxnet.uvr_hash`); the parameter sets themselves ship as
  `unmixcli/data/vr_modelparams/<name>.json` (UVR's files, see SOURCE.txt there).

The processing is audio-separator's VR separator's (`models.vr.VRSeparator`):
the mask keeps the primary stem, its complement the secondary, named as
audio-separator names them (Vocals <-> Instrumental, otherwise "<stem>" <-> "No
<stem>"), lower case with "_" for spaces. The whole track is one piece there;
the contract asks for `SEGMENT` seconds, so a track up to that long is processed
exactly so, a longer one in parts of that length.

Options (audio-separator's names and defaults, `DEFAULTS`): window_size,
aggression, enable_tta (or tta), enable_post_process (or post_process),
post_process_threshold, high_end_process, batch_size.

Where the row comes from:

* a registry entry: `checkpoint` the .pth file; `config` an inline mapping with the
  table's keys (vr_model_param, primary_stem, nout, nout_lstm; keys it leaves out
  come from UVR's table by the file's hash) and any options;
* a local file: `config=` (the `--config` / `--model-params` option) or a
  `<file stem>.json` beside it, holding the same keys, and optionally
  `model_params`: a whole parameter set inline (a UVR modelparams mapping)
  instead of naming one; else UVR's table by the file's hash.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from ..errors import CheckpointError
from ..models.bag import Contract, ModelBag
from ..models.vr import CascadedASPPNet, CascadedNet, ModelParams, VROptions, VRSeparator
from .mdxnet import uvr_hash
from . import weights

#: Seconds per engine segment: every track up to this long is processed whole, as the reference does.
SEGMENT = 1200.0
DEFAULTS = VROptions()
#: Option keys -> VROptions fields (audio-separator's names, and short spellings).
OPTION_KEYS = {"window_size": "window_size", "aggression": "aggression", "enable_tta": "enable_tta",
               "tta": "enable_tta", "enable_post_process": "enable_post_process",
               "post_process": "enable_post_process", "post_process_threshold": "post_process_threshold",
               "high_end_process": "high_end_process", "batch_size": "batch_size"}
ROW_KEYS = ("vr_model_param", "primary_stem", "nout", "nout_lstm", "model_params",
            "is_karaoke", "is_bv_model", "is_bv_model_rebalanced")
#: audio-separator's stem pairs; any other stem's complement is "No <stem>" (or <stem> without "No ").
_PAIRS = {"Vocals": "Instrumental", "Instrumental": "Vocals", "lead_only": "backing_only",
          "backing_only": "lead_only", "Primary Stem": "Secondary Stem"}
_HINT_PARAMS = ("give its parameters as JSON with --model-params FILE (or a <name>.json beside it): "
                '{"vr_model_param": "4band_v3", "primary_stem": "Vocals"}')
#: A v5 network's shape -> the size UVR names it by (KB of the published file).
_V5_SIZES = {(16, False, 0): "31191", (16, False, 2): "33966", (32, False, 0): "123821/123812",
             (16, True, 1): "129605", (64, False, 2): "537238/537227"}


@dataclass(frozen=True)
class ModelData:
    """What a model's row says: its parameter set and primary stem (nout/nout_lstm are read
    from the state dict; a row's values are checked against it)."""

    params: ModelParams
    primary_stem: str
    nout: Optional[int] = None
    nout_lstm: Optional[int] = None

    @property
    def secondary_stem(self) -> str:
        return secondary_stem(self.primary_stem)


def secondary_stem(primary: str) -> str:
    if primary in _PAIRS:
        return _PAIRS[primary]
    return primary[3:] if primary.startswith("No ") else "No " + primary


def stem_name(uvr_name: str) -> str:
    """UVR's stem name as our stems are spelled: "No Echo" -> "no_echo"."""
    return uvr_name.strip().lower().replace(" ", "_")


# --------------------------------------------------------------------------------------
# Tables shipped as data.
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _table() -> Dict[str, Dict[str, Any]]:
    text = resources.files("unmixcli").joinpath("data/uvr_vr_model_data.json").read_text(encoding="utf-8")
    return json.loads(text)["models"]


def param_set_names() -> Tuple[str, ...]:
    folder = resources.files("unmixcli").joinpath("data/vr_modelparams")
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json")))


@lru_cache(maxsize=None)
def param_set(name: str) -> ModelParams:
    """One of UVR's parameter sets by name ("4band_v3"); CheckpointError if none is called so."""
    if name not in param_set_names():
        raise CheckpointError(f"no VR parameter set named {name!r}",
                              hint="use one of: " + ", ".join(param_set_names()))
    text = resources.files("unmixcli").joinpath(f"data/vr_modelparams/{name}.json").read_text(encoding="utf-8")
    return _params(json.loads(text), name, f"parameter set {name}")


def _params(raw: Any, name: str, where: str, path: Optional[Path] = None) -> ModelParams:
    try:
        params = ModelParams.from_dict(raw, name=name)
        params.check()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{where} is malformed ({type(exc).__name__}: {exc})", path=path,
                              hint="a UVR modelparams mapping: bins, sr, pre_filter_start/stop, band: {1: ...}") \
            from exc
    return params


def _row(row: Any, where: str, path: Optional[Path] = None) -> Tuple[ModelData, Dict[str, Any]]:
    """A row (UVR's keys, plus options) -> its ModelData and the option keys it held."""
    if not isinstance(row, Mapping):
        raise CheckpointError(f"{where} must be a JSON object", path=path, hint=_HINT_PARAMS)
    unknown = sorted(set(row) - set(ROW_KEYS) - set(OPTION_KEYS))
    if unknown:
        raise CheckpointError(f"{where} has unknown keys: {', '.join(unknown)}", path=path,
                              hint="keys: " + ", ".join(ROW_KEYS + tuple(OPTION_KEYS)))
    if "model_params" in row:
        params = _params(row["model_params"], "inline", f"{where}'s model_params", path)
    elif "vr_model_param" in row:
        if not isinstance(row["vr_model_param"], str):
            raise CheckpointError(f"{where}: vr_model_param must be a parameter set's name", path=path)
        params = param_set(row["vr_model_param"])
    else:
        raise CheckpointError(f"{where} names no parameter set (vr_model_param or model_params)", path=path,
                              hint=_HINT_PARAMS)
    primary = row.get("primary_stem")
    if not isinstance(primary, str) or not primary.strip():
        raise CheckpointError(f"{where} lacks primary_stem", path=path, hint=_HINT_PARAMS)
    sizes = {}
    for key in ("nout", "nout_lstm"):
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise CheckpointError(f"{where}: {key} must be a positive whole number", path=path)
        sizes[key] = value
    options = {k: row[k] for k in row if k in OPTION_KEYS}
    return ModelData(params=params, primary_stem=primary, **sizes), options


def model_data(digest: str) -> Optional[ModelData]:
    """UVR's row for the model with this hash, or None."""
    row = _table().get(digest)
    return None if row is None else _row(row, "UVR's table")[0]


def options_from(values: Mapping, where: str, path: Any = None, base: VROptions = DEFAULTS) -> VROptions:
    """VROptions from option keys (see OPTION_KEYS), validated; `base` for the rest."""
    fields: Dict[str, Any] = {}
    for key, value in values.items():
        if key not in OPTION_KEYS:
            raise CheckpointError(f"{where}: unknown VR option {key!r}", path=path,
                                  hint="options: " + ", ".join(OPTION_KEYS))
        fields[OPTION_KEYS[key]] = value
    opts = replace(base, **fields)

    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not whole(opts.window_size) or opts.window_size % 16 or opts.window_size < 320:
        raise CheckpointError(f"{where}: window_size must be a whole multiple of 16, at least 320 "
                              f"(UVR offers 320, 512, 1024), not {opts.window_size!r}", path=path)
    if not whole(opts.aggression) or not -100 <= opts.aggression <= 100:
        raise CheckpointError(f"{where}: aggression must be a whole number in -100..100, not {opts.aggression!r}",
                              path=path)
    for name in ("enable_tta", "enable_post_process", "high_end_process"):
        if not isinstance(getattr(opts, name), bool):
            raise CheckpointError(f"{where}: {name} must be true or false", path=path)
    t = opts.post_process_threshold
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
        raise CheckpointError(f"{where}: post_process_threshold must be in (0, 1), not {t!r}", path=path)
    if not whole(opts.batch_size) or opts.batch_size < 1:
        raise CheckpointError(f"{where}: batch_size must be a whole number >= 1", path=path)
    return replace(opts, post_process_threshold=float(t))


# --------------------------------------------------------------------------------------
# The state dict.
# --------------------------------------------------------------------------------------

_V5_PROBE = "stg1_low_band_net.enc1.conv1.conv.0.weight"
_V51_PROBE = "stg1_low_band_net.0.enc1.conv.0.weight"


@lru_cache(maxsize=1)
def _read(path: str, stamp: Tuple[int, int]) -> Dict[str, torch.Tensor]:
    """The file's state dict (one file cached: `accepts` and `load_local` read the same file)."""
    del stamp  # part of the cache key only
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (pre-zip) file cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip / unsafe-global errors all mean: not a readable state dict
        raise CheckpointError(f"not a readable PyTorch state dict ({type(exc).__name__})", path=path,
                              hint="a UVR VR-architecture .pth file") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("the file holds no state dict of tensors", path=path,
                              hint="a UVR VR-architecture .pth file")
    return dict(state)


def read_state(path: Path) -> Dict[str, torch.Tensor]:
    st = os.stat(path)
    return _read(os.fspath(path), (st.st_size, st.st_mtime_ns))


def is_vr_state(state: Mapping) -> bool:
    return _V5_PROBE in state or _V51_PROBE in state


def network_from_state(state: Mapping, bins: int, path: Any = None) -> Tuple[torch.nn.Module, str]:
    """The network whose layout the state dict has, with its weights (eval mode), and a description."""
    if _V51_PROBE in state:
        nout = int(state[_V51_PROBE].shape[0]) * 2
        lstm = "stg1_low_band_net.0.lstm_dec2.lstm."
        try:
            nout_lstm = int(state[lstm + "weight_hh_l0"].shape[1]) * 2
            nin_lstm = int(state[lstm + "weight_ih_l0"].shape[1])
        except KeyError as exc:
            raise CheckpointError(f"a v5.1 VR state dict without {exc.args[0]}", path=path) from exc
        if nin_lstm != (bins // 2) // 2:
            raise CheckpointError(f"the network was trained on {nin_lstm * 4} bins, the model parameters have "
                                  f"{bins}", path=path, hint="the parameters belong to another model")
        net: torch.nn.Module = CascadedNet(bins, nout=nout, nout_lstm=nout_lstm)
        about = f"CascadedNet (v5.1), nout {nout}, nout_lstm {nout_lstm}"
    elif _V5_PROBE in state:
        ch = int(state[_V5_PROBE].shape[0])
        deep = any(k.startswith("stg1_low_band_net.enc5.") for k in state)
        aspp = "stg1_low_band_net.aspp."
        extra = 2 if any(k.startswith(aspp + "conv7.") for k in state) else (
            1 if any(k.startswith(aspp + "conv6.") for k in state) else 0)
        net = CascadedASPPNet(bins, ch, deep=deep, extra=extra)
        size = _V5_SIZES.get((ch, deep, extra))
        about = (f"CascadedASPPNet (v5), ch {ch}, {5 + extra} ASPP branches{', 5 levels' if deep else ''}"
                 + (f" (UVR's {size} size)" if size else ""))
    else:
        raise CheckpointError("not a UVR VR-architecture state dict (no stg1_low_band_net keys)", path=path,
                              hint="a UVR VR-architecture .pth file")
    weights.load_strict(net, state, what=f"a {about.split(',')[0]}", path=path,
                        hint="a UVR VR-architecture .pth file, unmodified")
    return net.eval(), about


# --------------------------------------------------------------------------------------
# Building the model and the family's entry points.
# --------------------------------------------------------------------------------------


def load_vr(path: Path, data: ModelData, options: VROptions = DEFAULTS, *, name: Optional[str] = None) -> ModelBag:
    """A bag of one: the .pth file's network with the model data `data`."""
    path = Path(path)
    state = read_state(path)
    net, about = network_from_state(state, data.params.bins, path)
    if isinstance(net, CascadedNet):
        derived = (int(state[_V51_PROBE].shape[0]) * 2,
                   int(state["stg1_low_band_net.0.lstm_dec2.lstm.weight_hh_l0"].shape[1]) * 2)
        for key, want, got in (("nout", data.nout, derived[0]), ("nout_lstm", data.nout_lstm, derived[1])):
            if want is not None and want != got:
                raise CheckpointError(f"the model data says {key} {want}, the state dict has {got}", path=path,
                                      hint="the model data belongs to another file")
    if options.window_size <= 2 * net.offset:
        raise CheckpointError(f"window_size {options.window_size} leaves no frames past the network's "
                              f"{net.offset}-frame margins", path=path, hint="use 512 or 1024")
    names = [stem_name(data.primary_stem), stem_name(data.secondary_stem)]
    separator = VRSeparator(net, data.params, options, primary_stem=data.primary_stem, sources=names).eval()
    contract = Contract(samplerate=data.params.sr, channels=2, sources=tuple(names), segment=SEGMENT,
                        segment_rule="free", window="triangle", normalize=False, overlap=0.0,
                        # bf16 on request only (--precision bf16): the network in bf16 took 0.61-0.63x
                        # fp32's time on a Zen 4 (native bf16), 4e-3 of peak off; auto keeps fp32
                        bf16=True, auto_bf16=False)
    return ModelBag.single(
        separator, name=name or path.stem, contracts=[contract],
        extra={"family": "vr", "network": about, "model_params": data.params.name or "inline",
               "primary_stem": data.primary_stem, "window_size": options.window_size,
               "aggression": options.aggression, "enable_tta": options.enable_tta,
               "enable_post_process": options.enable_post_process,
               "post_process_threshold": options.post_process_threshold,
               "high_end_process": options.high_end_process})


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"unreadable model parameters ({type(exc).__name__})", path=path,
                              hint="a JSON object, e.g. " + _HINT_PARAMS.split(": ", 1)[1]) from exc


def _merged(row: Mapping, path: Path, where: str, source: Any) -> Tuple[ModelData, VROptions]:
    """A row that may leave out the table's keys: completed from UVR's table by the file's hash."""
    row = dict(row)
    if "vr_model_param" not in row and "model_params" not in row or "primary_stem" not in row:
        base = _table().get(uvr_hash(path)) if path.is_file() else None
        if base is not None:
            row = {**{k: v for k, v in base.items() if k in ROW_KEYS}, **row}
    data, opts = _row(row, where, source)
    return data, options_from(opts, where, source)


def data_for(path: Path, config: Any = None) -> Tuple[ModelData, VROptions]:
    """The model data and options of a local file: `config` (a JSON file), else a `<stem>.json`
    beside it, else UVR's table by hash."""
    path = Path(path)
    side = Path(config) if config is not None else path.with_suffix(".json")
    if config is not None or side.is_file():
        return _merged(_read_json(side), path, "the model parameters", side)
    if not path.is_file():
        raise CheckpointError("no such file", path=path)
    digest = uvr_hash(path)
    row = _table().get(digest)
    if row is None:
        raise CheckpointError(f"UVR's VR model table has no model with hash {digest}", path=path,
                              hint=_HINT_PARAMS)
    return _row(row, "UVR's table")[0], DEFAULTS


def accepts(path: Path, config: Any = None) -> bool:
    """A .pth holding a VR network's state dict (by its keys), whatever its parameters."""
    del config  # the parameters do not decide whose file it is; load_local says what is missing
    try:
        return is_vr_state(read_state(Path(path)))
    except (CheckpointError, OSError):
        return False


def load_local(path: Path, stems=None, config: Any = None) -> ModelBag:
    """A VR .pth file; one network computes both stems."""
    del stems
    path = Path(path)
    state = read_state(path)  # a garbage file is refused before its parameters are asked for
    if not is_vr_state(state):
        network_from_state(state, 0, path)  # raises, naming what is wrong
    data, options = data_for(path, config)
    return load_vr(path, data, options)


def load_spec(spec: Any, folder: Path, stems=None) -> ModelBag:
    """Registry entry `spec`: `spec.checkpoint` (.pth), `spec.config` an inline mapping (see the
    module docstring)."""
    del stems
    path = Path(folder) / spec.checkpoint
    if spec.config is not None and not isinstance(spec.config, Mapping):
        raise CheckpointError(f"model '{spec.name}': a VR entry's config must be an inline mapping",
                              path=spec.source)
    data, options = _merged(dict(spec.config or {}), path, f"model '{spec.name}''s config", spec.source)
    return load_vr(path, data, options, name=spec.name)
