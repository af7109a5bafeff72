"""The RoFormer family: community BS-RoFormer / Mel-Band RoFormer checkpoints.

They ship in the MSST checkpoint format (`families.msst`: a `.ckpt` / `.pth` state
dict and a YAML config whose `model` section holds the constructor arguments:
dim, depth, stereo, num_stems, freqs_per_bands (BS) or num_bands (Mel), ...), and
run with MSST's generic chunking. They always run in fp32: their fused kernels
write into fp32 workspaces, which bf16 autocast breaks.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Type

import torch

from ..errors import CheckpointError
from ..models.bag import ModelBag
from ..models.roformer import BSRoformer, MelBandRoformer
from . import msst

FAMILIES: Dict[str, Type[torch.nn.Module]] = {
    "bs_roformer": BSRoformer,
    "mel_band_roformer": MelBandRoformer,
}

# Constructor arguments that are not architecture and never come from a config.
_NOT_FROM_CONFIG = {"stft_window_fn", "multi_stft_window_fn", "sources", "segment"}

# Registry `arch` values -> the loader's model types (None: recognised from the config).
ARCHS: Dict[str, str] = {
    "BSRoformer": "bs_roformer",
    "MelBandRoformer": "mel_band_roformer",
    "bs_roformer": "bs_roformer",
    "mel_band_roformer": "mel_band_roformer",
}


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
    kwargs.setdefault("sample_rate", msst.samplerate_of(config))
    return kwargs


def recognises(config: Dict[str, Any]) -> Optional[str]:
    """"mel_band_roformer" (`num_bands`) or "bs_roformer" (`freqs_per_bands`), else None."""
    model_cfg = config.get("model") or {}
    if "num_bands" in model_cfg:
        return "mel_band_roformer"
    if "freqs_per_bands" in model_cfg:
        return "bs_roformer"
    return None


def build(config: Dict[str, Any], model_type: str, config_path: Optional[Path]) -> torch.nn.Module:
    if model_type not in FAMILIES:
        raise CheckpointError(f"unknown RoFormer type {model_type!r}", path=config_path,
                              hint=f"use one of: {', '.join(FAMILIES)}")
    kwargs = model_kwargs(config, model_type)
    sources = msst.stem_names(config, int(kwargs.get("num_stems", 1)))[0]
    chunk_size = (config.get("audio") or {}).get("chunk_size")
    segment = float(chunk_size) / int(kwargs["sample_rate"]) if chunk_size else None
    try:
        return FAMILIES[model_type](**kwargs, sources=sources, segment=segment)
    except (TypeError, ValueError, AssertionError) as exc:
        raise CheckpointError(f"the config does not describe a buildable {model_type} ({exc})",
                              path=config_path) from exc


def contract_options(config: Dict[str, Any], model_type: str) -> Dict[str, Any]:
    return {"bf16": False}  # complex rotary tables and out= matmuls into fp32 workspaces


def load_roformer(ckpt_path, config_path, *, model_type: Optional[str] = None,
                  name: Optional[str] = None) -> ModelBag:
    """Build a RoFormer from an MSST config (a path, or the same data as a mapping) and load
    its checkpoint (strict keys); see `msst.load_checkpoint`.

    `model_type`: "bs_roformer" or "mel_band_roformer"; None: recognised from the config
    (`num_bands` vs `freqs_per_bands`).
    """
    return msst.load_checkpoint("roformer", ckpt_path, config_path, recognises=recognises, build=build,
                                contract_options=contract_options, model_type=model_type, name=name)


# --------------------------------------------------------------------------------------
# The family's entry points.
# --------------------------------------------------------------------------------------


def accepts(path: Path, config=None) -> bool:
    return msst.recognised_with(path, config, recognises)


def load_local(path: Path, stems=None, config=None) -> ModelBag:
    """A `.ckpt` / `.pth` with its MSST config (`config`, or the one beside it); one network
    computes every stem."""
    del stems
    return load_roformer(path, config if config is not None else msst.config_for(Path(path)))


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
