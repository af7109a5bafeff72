"""The checkpoint format of Music-Source-Separation-Training (MSST), shared by its families.

MSST publishes every model type (BS-/Mel-RoFormer, MDX23C, SCNet, BandIt v2, the
conformers, ...) the same way: a weights file (`.ckpt` / `.pth`: a pickled state
dict, sometimes wrapped in `{"state_dict": ...}`) plus a YAML config:

    audio:     chunk_size, sample_rate, num_channels, ...
    model:     the constructor arguments of the model type
    training:  instruments, target_instrument
    inference: batch_size, num_overlap, normalize (optional), ...

The config does not name its model type (MSST's command line takes `--model_type`):
a registry entry says it (`arch`); for a local file each MSST family module answers
`recognises(config) -> model_type or None`, and the families table routes the file to
the one that recognises it (`families.load_local`, through the module's `accepts`).

A family module built on this one provides, besides the table's entry points:

    recognises(config) -> Optional[str]   this family's model type for `config`, or None
                                          (exclusive: no two families claim one config)
    build(config, model_type, config_path) -> nn.Module
        the network for `config` (weights not yet loaded) with attributes `sources`
        (stem names, see `stem_names`) and `audio_channels`, mapping [B, C, T] to
        [B, S, C, T] with S = len(sources);
    contract_options(config, model_type) -> dict  optional: `Contract` fields that
        differ from MSST's generic `demix` (e.g. bf16=False)

and `load_checkpoint` here does the rest: safe reading, stem names, strict weights,
MSST's chunking as a `Contract`.

Contract: MSST's generic `demix` recipe: segment = audio.chunk_size (every forward gets
exactly one chunk: "fixed"), overlap 1 - 1/num_overlap, the "fade" window with its
edge rule (reflected track ends, short chunks filled), normalisation only when
inference.normalize says so.

Security: weights are read with `torch.load(weights_only=True)` only (or safetensors),
so a file that needs anything beyond tensors and plain containers is refused; the
YAML is read with a SafeLoader that additionally understands `!!python/tuple` and
nothing else. Nothing named in a file is ever imported.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
import yaml

from ..errors import CheckpointError
from ..models.bag import Contract, ModelBag
from . import summarise, weights

# Wrappers that training scripts put around the state dict (MSST unwraps the same ones).
_WRAPPER_KEYS = ("state", "state_dict", "model_state_dict")

CONFIG_SUFFIXES = (".yaml", ".yml")

DEFAULT_SAMPLERATE = 44100

# Where a config keeps the constructor arguments: `model`, or `kwargs` (BandIt v2's configs).
MODEL_SECTIONS = ("model", "kwargs")

_CONFIG_HINT = (
    "an MSST checkpoint needs the YAML config it was published with (audio/model/training "
    "sections); put it beside the checkpoint as {stem}.yaml, or name it with --config FILE"
)


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader plus `!!python/tuple` (MSST writes band widths as tuples)."""


def _construct_tuple(loader: yaml.SafeLoader, node: yaml.Node) -> tuple:
    return tuple(loader.construct_sequence(node, deep=True))


_ConfigLoader.add_constructor("tag:yaml.org,2002:python/tuple", _construct_tuple)


# --------------------------------------------------------------------------- reading


def read_config(config_path) -> Dict[str, Any]:
    """Parse an MSST YAML config into plain Python data (dicts, lists, tuples, scalars)."""
    path = Path(config_path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CheckpointError(f"cannot read the model config ({exc.strerror or exc})", path=path,
                              hint="pass the YAML config that belongs to this checkpoint") from exc
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader subclass (+ tuples only)
    except yaml.constructor.ConstructorError as exc:
        raise CheckpointError(
            f"the config uses a YAML tag that is not allowed ({exc.problem})", path=path,
            hint="only plain YAML and !!python/tuple are accepted; tags that build Python objects are refused",
        ) from exc
    except yaml.YAMLError as exc:
        # YAML's own message spans several lines; keep the error to one.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CheckpointError(f"the config is not valid YAML{where}: {problem}", path=path) from exc
    if not isinstance(data, dict) or not any(isinstance(data.get(k), dict) for k in MODEL_SECTIONS):
        raise CheckpointError("the config has no 'model' section", path=path,
                              hint="expected a Music-Source-Separation-Training config (audio/model/training)")
    return data


def config_from_mapping(data: Mapping) -> Dict[str, Any]:
    """An inline config (e.g. from a registry entry), as plain dicts, lists and scalars.

    Same shape as an MSST YAML file: `audio`, `model`, `training`, `inference`.
    """

    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    config = plain(data)
    if not any(isinstance(config.get(k), dict) for k in MODEL_SECTIONS):
        raise CheckpointError("the inline config has no 'model' section",
                              hint="give the MSST sections audio/model/training/inference, as in a config YAML")
    return config


def load_config(config: Union[str, os.PathLike, Mapping]) -> Tuple[Dict[str, Any], Optional[Path]]:
    """(the config as plain data, its path or None for an inline mapping)."""
    if isinstance(config, Mapping):
        return config_from_mapping(config), None
    return read_config(config), Path(config)


def read_state_dict(ckpt_path) -> Dict[str, torch.Tensor]:
    """Read the weights of a checkpoint file as a flat `{name: tensor}` dict (tensors on CPU)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError("checkpoint file not found", path=path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"not a readable safetensors file ({exc})", path=path) from exc
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                "refused to load: the file needs more than tensors and plain containers to unpickle, "
                "which could run code",
                path=path, hint="only plain state-dict checkpoints are loaded; re-save the weights "
                "with torch.save(model.state_dict()) or as safetensors",
            ) from exc
        except Exception as exc:  # truncated or not a torch file at all
            raise CheckpointError(f"not a readable PyTorch checkpoint ({exc})", path=path) from exc
    while isinstance(obj, dict):
        wrapper = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if wrapper is None:
            break
        obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError("the checkpoint holds no state dict", path=path)
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"the checkpoint's state dict has non-tensor entries ({', '.join(map(str, bad[:3]))})",
                              path=path)
    return obj


def _is_bag_yaml(path: Path) -> bool:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "models" in data


def config_for(ckpt: Path) -> Path:
    """The config of a checkpoint: `<stem>.yaml`, else the one non-bag yaml beside it."""
    ckpt = Path(ckpt)
    for suffix in CONFIG_SUFFIXES:
        same_stem = ckpt.with_suffix(suffix)
        if same_stem.is_file():
            return same_stem
    candidates = sorted(p for p in ckpt.parent.iterdir()
                        if p.suffix.lower() in CONFIG_SUFFIXES and p.is_file() and not _is_bag_yaml(p))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise CheckpointError(
            "no config found for this checkpoint (no YAML file beside it)",
            path=ckpt,
            hint=_CONFIG_HINT.format(stem=ckpt.stem),
        )
    raise CheckpointError(
        f"several YAML files beside the checkpoint ({summarise([p.name for p in candidates])}) "
        f"and none is named {ckpt.stem}.yaml",
        path=ckpt,
        hint=f"rename the checkpoint's own config to {ckpt.stem}.yaml, or move the others away",
    )


def stem_names(config: Dict[str, Any], num_stems: int) -> Tuple[List[str], List[str]]:
    """(names of the model's outputs, all instruments of the config), as MSST names them:
    `training.target_instrument` alone when set, else `training.instruments`."""
    training = config.get("training") or {}
    instruments = [str(s) for s in (training.get("instruments") or [])]
    target = training.get("target_instrument")
    if target:
        names = [str(target)]
    elif instruments:
        names = instruments
    else:
        names = [f"stem{i}" for i in range(num_stems)]
    if len(names) != num_stems:
        raise CheckpointError(f"the config names {len(names)} output stem(s) ({', '.join(names)}) "
                              f"but the model has {num_stems}")
    return names, instruments or names


def outputs(config: Dict[str, Any], num_stems: int) -> Tuple[List[str], Optional[List[int]]]:
    """(stem names, mask heads to run or None for all) of a model with `num_stems` heads, as
    MSST's `demix` gives them.

    With `training.target_instrument` (which must be among `training.instruments`, as demix
    requires): that stem alone, from the model's only head, or from its head at the target's
    place in the instruments when it has one head per instrument (demix passes
    `active_stem_ids`, so the other heads never run).
    """
    training = config.get("training") or {}
    target = training.get("target_instrument")
    if not target:
        return stem_names(config, num_stems)[0], None
    target = str(target)
    instruments = [str(s) for s in (training.get("instruments") or [])]
    if target not in instruments:
        raise CheckpointError(f"training.target_instrument {target!r} is not among training.instruments "
                              f"({', '.join(instruments) or 'none'})", hint="MSST refuses this config as well")
    if num_stems == 1:
        return [target], None
    if num_stems == len(instruments):
        return [target], [instruments.index(target)]
    raise CheckpointError(f"the model has {num_stems} stems, but the config asks for {target!r} alone "
                          f"out of {len(instruments)} instruments",
                          hint="num_stems must be 1 or the number of training.instruments")


def declared_chunk_size(config: Dict[str, Any]) -> Any:
    """The chunk size as the config states it (unchecked), taken as MSST's `demix` takes it:
    `inference.chunk_size` when the section has the key, else `audio.chunk_size` (None: neither)."""
    inference = config.get("inference") or {}
    if "chunk_size" in inference:
        return inference["chunk_size"]
    return (config.get("audio") or {}).get("chunk_size")


def chunk_size_of(config: Dict[str, Any]) -> Optional[int]:
    """Samples per forward (`declared_chunk_size` as a number; None when the config has none)."""
    chunk = declared_chunk_size(config)
    return int(chunk) if chunk else None


def samplerate_of(config: Dict[str, Any]) -> int:
    audio = config.get("audio") or {}
    return int((config.get("model") or {}).get("sample_rate") or audio.get("sample_rate") or DEFAULT_SAMPLERATE)


# --------------------------------------------------------------------------- building


def load_strict(model: torch.nn.Module, state: Dict[str, torch.Tensor], *, what: str, path: Any) -> None:
    """The checkpoint's tensors into the network the config describes (`weights.load_strict`)."""
    weights.load_strict(model, state, what=f"the {what} the config describes", path=path,
                        hint="check that the config belongs to this checkpoint")


def contract_for(config: Dict[str, Any], *, channels: int, sources, **overrides: Any) -> Contract:
    """MSST's generic `demix` recipe as a contract (see the module docstring)."""
    inference = config.get("inference") or {}
    samplerate = samplerate_of(config)
    chunk_size = chunk_size_of(config)
    num_overlap = int(inference.get("num_overlap", 4) or 1)
    fields = dict(samplerate=samplerate, channels=int(channels), sources=tuple(sources),
                  segment=float(chunk_size) / samplerate if chunk_size else None,
                  segment_rule="fixed", window="fade",
                  normalize=bool(inference.get("normalize", False)), normalize_rule="msst",
                  overlap=1.0 - 1.0 / max(num_overlap, 1),
                  # demix picks the first/last-chunk fades once per batch of inference.batch_size
                  window_batch=max(int(inference.get("batch_size", 1) or 1), 1))
    fields.update(overrides)
    return Contract(**fields)


def load_checkpoint(family: str, ckpt_path, config, *, recognises: Callable, build: Callable,
                    contract_options: Optional[Callable] = None, model_type: Optional[str] = None,
                    name: Optional[str] = None) -> ModelBag:
    """Build a family's network for an MSST checkpoint and its config; a bag of one.

    Args:
        family: the family's row name (recorded in `bag.extra["family"]`).
        recognises, build, contract_options: the family's functions (module docstring).
        ckpt_path: `.ckpt` / `.pth` (torch pickle, read with weights_only=True) or `.safetensors`.
        config: the YAML config's path, or the same data as a mapping (inline config).
        model_type: the MSST model type (registry `arch`); None: `module.recognises` says.
        name: display name of the bag (default: the checkpoint's file stem).
    """
    config, config_path = load_config(config)
    if model_type in UNSUPPORTED:
        raise _unsupported(model_type, config_path or ckpt_path)
    model_type = model_type or recognises(config)
    if model_type is None:
        raise not_recognised(config, config_path or ckpt_path)
    state = read_state_dict(ckpt_path)
    try:
        model = build(config, model_type, config_path)
    except CheckpointError as exc:
        raise CheckpointError(exc.message, path=exc.path or config_path, hint=exc.hint) from None
    load_strict(model, state, what=model_type, path=ckpt_path)
    model.float().eval()
    sources = list(model.sources)
    instruments = stem_names(config, len(sources))[1]
    overrides = contract_options(config, model_type) if contract_options is not None else {}
    contract = contract_for(config, channels=model.audio_channels, sources=sources, **overrides)
    inference = config.get("inference") or {}
    return ModelBag.single(
        model,
        name=name or Path(os.fspath(ckpt_path)).stem,
        contracts=[contract],
        extra={
            "family": family,
            "model_type": model_type,
            "chunk_size": chunk_size_of(config),
            "num_overlap": int(inference.get("num_overlap", 4) or 1),
            "instruments": instruments,
            "target_instrument": (config.get("training") or {}).get("target_instrument"),
        },
    )


# --------------------------------------------------------------------------- model types we do not run

#: MSST model types out of scope, and why (shown in one line when a config asks for one).
UNSUPPORTED: Dict[str, str] = {
    "bs_mamba2": "it needs mamba-ssm's CUDA-only kernels",
    "segm_models": "it needs a third-party backbone (segmentation_models_pytorch)",
    "torchseg": "it needs a third-party backbone (torchseg)",
    "swin_upernet": "it needs a third-party backbone (a Swin transformer from transformers)",
    "apollo": "it is an audio restoration model, not a separator",
    "conformer": "MSST's plain spectrogram conformer is not implemented (its BS-/Mel-Band Conformers are)",
}


def _unsupported_type(config: Dict[str, Any]) -> Optional[str]:
    """The out-of-scope model type a config is written for, where its keys say so."""
    model_cfg = config.get("model") or {}
    if "num_repeat_mask" in model_cfg and "num_repeat_map" in model_cfg:
        return "bs_mamba2"
    if "encoder_name" in model_cfg and "decoder_type" in model_cfg:
        return "segm_models / torchseg"
    if {"sr", "win", "feature_dim", "layer"} <= set(model_cfg):
        return "apollo"
    if {"embed_dim", "freq_bins", "in_channels", "sources"} <= set(model_cfg):
        return "conformer"
    return None


def _unsupported(model_type: str, path: Any) -> CheckpointError:
    why = UNSUPPORTED.get(model_type) or UNSUPPORTED.get(model_type.split(" ")[0], "")
    return CheckpointError(f"MSST model type {model_type} is not supported: {why}", path=path,
                           hint="use a model of a type unmix runs (unmix models list)")


def not_recognised(config: Dict[str, Any], path: Any) -> CheckpointError:
    """The error for a config no MSST family recognises: named when it is a type we leave out."""
    kind = _unsupported_type(config)
    if kind is not None:
        return _unsupported(kind, path)
    keys = summarise(sorted(config.get("model") or config.get("kwargs") or {}))
    return CheckpointError(f"the config matches no MSST model type unmix runs (model keys: {keys})", path=path,
                           hint="give the model type as `arch` in a registry entry, or check the config "
                                "belongs to this checkpoint")


# --------------------------------------------------------------------------- routing local files

_CONFIGS: Dict[Tuple[str, float, int], Dict[str, Any]] = {}


def recognised_by(path: Path, recognises: Callable[[Dict[str, Any]], Optional[str]]) -> bool:
    """Whether `recognises` claims the checkpoint at `path` by the config beside it.

    A checkpoint without a readable config is claimed by nobody here; the first MSST
    family then loads it and reports why. The last config parsed is kept for the next
    family asked (only the config: weights are read once, by the family that loads them).
    """
    try:
        config_path = config_for(Path(path))
        stat = config_path.stat()
        key = (os.fspath(config_path), stat.st_mtime, stat.st_size)
        if key not in _CONFIGS:
            _CONFIGS.clear()
            _CONFIGS[key] = read_config(config_path)
        config = _CONFIGS[key]
    except (CheckpointError, OSError):
        return False
    return recognises(config) is not None


def recognised_with(path: Path, config, recognises: Callable[[Dict[str, Any]], Optional[str]]) -> bool:
    """`recognised_by` with the config given (`--config`) instead of the one beside `path`."""
    if config is None:
        return recognised_by(path, recognises)
    try:
        data = load_config(config)[0]
    except CheckpointError:
        return False
    return recognises(data) is not None


class EntryPoints:
    """The table's entry points of an MSST family, from its three functions.

    A family module states `recognises`, `build` (and `contract_options`), then
    `accepts, load_local, load_spec = msst.EntryPoints("name", ...).functions()`.

    Args:
        family: the row's name.
        archs: registry `arch` values -> model types (an arch that is a model type maps to itself).
    """

    def __init__(self, family: str, *, recognises: Callable, build: Callable,
                 contract_options: Optional[Callable] = None, archs: Optional[Mapping[str, str]] = None):
        self.family = family
        self.recognises = recognises
        self.build = build
        self.contract_options = contract_options
        self.archs = dict(archs or {})

    def load(self, ckpt_path, config, *, model_type: Optional[str] = None, name: Optional[str] = None) -> ModelBag:
        return load_checkpoint(self.family, ckpt_path, config, recognises=self.recognises, build=self.build,
                               contract_options=self.contract_options, model_type=model_type, name=name)

    def accepts(self, path: Path, config=None) -> bool:
        return recognised_with(path, config, self.recognises)

    def load_local(self, path: Path, stems=None, config=None) -> ModelBag:
        """A `.ckpt` / `.pth` with its MSST config (`config`, or the one beside it)."""
        del stems  # one network computes every stem
        return self.load(path, config if config is not None else config_for(Path(path)))

    def load_spec(self, spec: Any, folder: Path, stems=None) -> ModelBag:
        """Registry entry `spec`: `spec.checkpoint` with `spec.config` (a file among its files, or inline).

        `extra: {model_overrides: {...}}` in the entry replaces keys of the config's model
        section, e.g. `{zero_dc: false}` for a RoFormer trained with code that had no zero_dc
        step, whose published config leaves it out (MSST would then zero the DC bin).
        """
        del stems
        model_type = None
        if spec.arch is not None:
            model_type = self.archs.get(spec.arch)
            if model_type is None and spec.arch in UNSUPPORTED:
                raise _unsupported(spec.arch, spec.source)
            if model_type is None:
                raise CheckpointError(f"model '{spec.name}': unknown {self.family} arch {spec.arch!r}",
                                      path=spec.source, hint="use one of: " + ", ".join(sorted(self.archs)))
        config = spec.config if isinstance(spec.config, Mapping) else folder / spec.config
        overrides = (getattr(spec, "extra", None) or {}).get("model_overrides")
        if overrides is not None:
            if not isinstance(overrides, Mapping):
                raise CheckpointError(f"model '{spec.name}': extra.model_overrides must be a mapping of model keys",
                                      path=spec.source)
            config = load_config(config)[0]
            config["model"] = {**(config.get("model") or {}), **dict(overrides)}
        return self.load(folder / spec.checkpoint, config, model_type=model_type, name=spec.name)

    def functions(self) -> Tuple[Callable, Callable, Callable]:
        return self.accepts, self.load_local, self.load_spec
