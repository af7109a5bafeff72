"""The RoFormer family: community BS-RoFormer / Mel-Band RoFormer checkpoints.

Those models ship as a weights file (`.ckpt` / `.pth`: a pickled state dict,
sometimes wrapped in `{"state_dict": ...}`) plus the YAML config of
Music-Source-Separation-Training (MSST) that describes the architecture:

    audio:     chunk_size, sample_rate, ...
    model:     dim, depth, stereo, num_stems, freqs_per_bands (BS) or num_bands (Mel), ...
    training:  instruments, target_instrument
    inference: num_overlap, normalize (optional)

Contract: MSST's `demix` recipe: segment = audio.chunk_size (every forward gets
exactly one chunk: "fixed"), overlap 1 - 1/num_overlap, the "fade" window with
its edge rule (reflected track ends, short chunks filled), normalisation only
when inference.normalize says so.

Security: weights are read with `torch.load(weights_only=True)` only (or
safetensors), so a file that needs anything beyond tensors and plain
containers is refused; the YAML is read with a SafeLoader that additionally
understands `!!python/tuple` and nothing else.
"""

from __future__ import annotations

import inspect
import os
import pickle
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type

import torch
import yaml

from ..errors import CheckpointError
from ..models.bag import Contract, ModelBag
from ..models.roformer import SAMPLERATE, BSRoformer, MelBandRoformer
from . import summarise

FAMILIES: Dict[str, Type[torch.nn.Module]] = {
    "bs_roformer": BSRoformer,
    "mel_band_roformer": MelBandRoformer,
}

# Wrappers that training scripts put around the state dict (MSST unwraps the same ones).
_WRAPPER_KEYS = ("state", "state_dict", "model_state_dict")

# Constructor arguments that are not architecture and never come from a config.
_NOT_FROM_CONFIG = {"stft_window_fn", "multi_stft_window_fn", "sources", "segment"}


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader plus `!!python/tuple` (MSST writes band widths as tuples)."""


def _construct_tuple(loader: yaml.SafeLoader, node: yaml.Node) -> tuple:
    return tuple(loader.construct_sequence(node, deep=True))


_ConfigLoader.add_constructor("tag:yaml.org,2002:python/tuple", _construct_tuple)


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
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
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
    if not isinstance(config.get("model"), dict):
        raise CheckpointError("the inline config has no 'model' section",
                              hint="give the MSST sections audio/model/training/inference, as in a config YAML")
    return config


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


def model_kwargs(config: Dict[str, Any], family: str) -> Dict[str, Any]:
    """Map an MSST config to constructor arguments of `FAMILIES[family]`.

    `model.*` keys are the constructor's own argument names; the sample rate
    comes from `model.sample_rate` or `audio.sample_rate`. Unknown model keys
    are refused: they usually mean an architecture variant we do not have.
    """
    cls = FAMILIES[family]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"} - _NOT_FROM_CONFIG
    model_cfg = dict(config["model"])
    unknown = sorted(set(model_cfg) - accepted)
    if unknown:
        raise CheckpointError(f"the config's model section has options this {family} does not support: "
                              f"{', '.join(unknown)}")
    kwargs = dict(model_cfg)
    for key in ("freqs_per_bands", "multi_stft_resolutions_window_sizes"):
        if key in kwargs and isinstance(kwargs[key], list):
            kwargs[key] = tuple(kwargs[key])
    audio = config.get("audio") or {}
    kwargs.setdefault("sample_rate", int(audio.get("sample_rate", SAMPLERATE)))
    return kwargs


def _guess_family(config: Dict[str, Any], state: Dict[str, torch.Tensor]) -> str:
    model_cfg = config["model"]
    if "num_bands" in model_cfg:
        return "mel_band_roformer"
    if "freqs_per_bands" in model_cfg:
        return "bs_roformer"
    # Only BS-RoFormer has a norm after the last layer.
    return "bs_roformer" if "final_norm.gamma" in state else "mel_band_roformer"


def _stem_names(config: Dict[str, Any], num_stems: int) -> Tuple[List[str], List[str]]:
    """(names of the model's outputs, all instruments of the config)."""
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
                              f"but the model has num_stems={num_stems}")
    return names, instruments or names


def load_roformer(ckpt_path, config_path, *, model_type: Optional[str] = None,
                  name: Optional[str] = None) -> ModelBag:
    """Build a RoFormer from an MSST config and load its checkpoint (strict keys).

    Args:
        ckpt_path: `.ckpt` / `.pth` (torch pickle, read with weights_only=True) or `.safetensors`.
        config_path: the MSST YAML config of that checkpoint, or the same data as a
            mapping (an inline config, see `config_from_mapping`).
        model_type: "bs_roformer" or "mel_band_roformer"; guessed from the config
            (`num_bands` vs `freqs_per_bands`) or the weights when None.
        name: display name of the bag (default: the checkpoint's file stem).

    Returns:
        A one-model ModelBag (float32, eval mode) with MSST's chunking recipe:
        segment = audio.chunk_size / sample rate (on the model), overlap =
        1 - 1 / inference.num_overlap, window "fade", normalize =
        inference.normalize (default False). `extra` records the family,
        chunk_size, num_overlap, instruments and target_instrument.
    """
    if isinstance(config_path, Mapping):
        config = config_from_mapping(config_path)
        config_path = None  # errors then name the checkpoint only
    else:
        config = read_config(config_path)
    state = read_state_dict(ckpt_path)
    family = model_type or _guess_family(config, state)
    if family not in FAMILIES:
        raise CheckpointError(f"unknown RoFormer type {family!r}", path=config_path,
                              hint=f"use one of: {', '.join(FAMILIES)}")
    try:
        kwargs = model_kwargs(config, family)
    except CheckpointError as exc:
        raise CheckpointError(exc.message, path=config_path, hint=exc.hint) from None
    num_stems = int(kwargs.get("num_stems", 1))
    try:
        sources, instruments = _stem_names(config, num_stems)
    except CheckpointError as exc:
        raise CheckpointError(exc.message, path=config_path) from None
    audio = config.get("audio") or {}
    inference = config.get("inference") or {}
    samplerate = int(kwargs["sample_rate"])
    chunk_size = audio.get("chunk_size")
    segment = float(chunk_size) / samplerate if chunk_size else None
    try:
        model = FAMILIES[family](**kwargs, sources=sources, segment=segment)
    except (TypeError, ValueError, AssertionError) as exc:
        raise CheckpointError(f"the config does not describe a buildable {family} ({exc})", path=config_path) from exc

    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        expected = set(model.state_dict())
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            detail = f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:2]) or '-'}), " \
                     f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2]) or '-'})"
        else:
            detail = str(exc).splitlines()[-1].strip()
        raise CheckpointError(f"the weights do not fit the {family} the config describes: {detail}",
                              path=ckpt_path, hint="check that the config belongs to this checkpoint") from exc
    model.float().eval()

    num_overlap = int(inference.get("num_overlap", 4) or 1)
    contract = Contract(samplerate=samplerate, channels=int(model.audio_channels), sources=tuple(sources),
                        segment=segment, segment_rule="fixed", window="fade",
                        normalize=bool(inference.get("normalize", False)),
                        overlap=1.0 - 1.0 / max(num_overlap, 1),
                        bf16=False)  # complex rotary tables and out= matmuls into fp32 workspaces
    return ModelBag.single(
        model,
        name=name or Path(os.fspath(ckpt_path)).stem,
        contracts=[contract],
        extra={
            "family": family,
            "chunk_size": int(chunk_size) if chunk_size else None,
            "num_overlap": num_overlap,
            "instruments": instruments,
            "target_instrument": (config.get("training") or {}).get("target_instrument"),
        },
    )


# --------------------------------------------------------------------------------------
# The family's entry points.
# --------------------------------------------------------------------------------------

_CONFIG_SUFFIXES = (".yaml", ".yml")

_CONFIG_HINT = (
    "a RoFormer checkpoint needs the YAML config it was published with (audio/model/training "
    "sections); put it beside the checkpoint as {stem}.yaml"
)

# Registry `arch` values -> the loader's model types (None: guessed from the config).
ARCHS: Dict[str, str] = {
    "BSRoformer": "bs_roformer",
    "MelBandRoformer": "mel_band_roformer",
    "bs_roformer": "bs_roformer",
    "mel_band_roformer": "mel_band_roformer",
}


def _is_bag_yaml(path: Path) -> bool:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "models" in data


def config_for(ckpt: Path) -> Path:
    """The config of a RoFormer checkpoint: `<stem>.yaml`, else the one non-bag yaml beside it."""
    for suffix in _CONFIG_SUFFIXES:
        same_stem = ckpt.with_suffix(suffix)
        if same_stem.is_file():
            return same_stem
    candidates = sorted(p for p in ckpt.parent.iterdir()
                        if p.suffix.lower() in _CONFIG_SUFFIXES and p.is_file() and not _is_bag_yaml(p))
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


def load_local(path: Path, stems=None) -> ModelBag:
    """A `.ckpt` / `.pth` with its MSST config beside it (one network computes every stem)."""
    del stems
    return load_roformer(path, config_for(Path(path)))


def load_spec(spec: Any, folder: Path, stems=None) -> ModelBag:
    """Registry entry `spec`: `spec.checkpoint` with `spec.config` (a file among its files, or inline)."""
    del stems
    model_type = None
    if spec.arch is not None:
        model_type = ARCHS.get(spec.arch)
        if model_type is None:
            raise CheckpointError(
                f"model '{spec.name}': unknown RoFormer arch {spec.arch!r}",
                path=spec.source,
                hint="use one of: " + ", ".join(sorted(ARCHS)),
            )
    config = spec.config if isinstance(spec.config, Mapping) else folder / spec.config
    return load_roformer(folder / spec.checkpoint, config, model_type=model_type, name=spec.name)
