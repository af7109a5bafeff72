"""The RoFormer family: community BS-RoFormer / Mel-Band RoFormer checkpoints.

They ship in the MSST checkpoint format (`families.msst`: a `.ckpt` / `.pth` state
dict and a YAML config whose `model` section holds the constructor arguments:
dim, depth, stereo, num_stems, freqs_per_bands (BS) or num_bands (Mel), ...), and
run with MSST's generic chunking. They always run in fp32: their fused kernels
write into fp32 workspaces, which bf16 autocast breaks.

What runs is what msst 0.1.0 runs for the same files: its classes' defaults (a
config that leaves `zero_dc` out gets the DC bin zeroed), and its `demix`'s
outputs: with `training.target_instrument` set, the one stem of that name (a
model with one head per instrument runs only the target's head, as MSST's
`active_stem_ids`); otherwise one stem per instrument. A checkpoint trained
before `zero_dc` existed that wants the old behaviour says `zero_dc: false` in
its config (a registry entry: `extra: {model_overrides: {zero_dc: false}}`).
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
    # MSST's *_experimental classes: the same layers, without the zero_dc step and with the
    # blocks after the first run without residual additions (`experimental_residuals`);
    # of their two extra options, learned value residuals are run, hyper-connections
    # (num_residual_streams > 1) are not.
    "bs_roformer_experimental": BSRoformer,
    "mel_band_roformer_experimental": MelBandRoformer,
}

# Options of the experimental types -> their defaults.
_EXPERIMENTAL_OPTIONS = {"num_residual_streams": 1, "use_value_residual_learning": False}
# Options the experimental types do not have (their MSST classes refuse them).
_NOT_EXPERIMENTAL = {"zero_dc", "use_pope", "sage_attention"}

# Constructor arguments that are not architecture and never come from a config.
_NOT_FROM_CONFIG = {"stft_window_fn", "multi_stft_window_fn", "sources", "segment", "active_stems",
                    "experimental_residuals", "value_residuals"}

# Registry `arch` values -> the loader's model types (None: recognised from the config).
ARCHS: Dict[str, str] = {
    "BSRoformer": "bs_roformer",
    "MelBandRoformer": "mel_band_roformer",
    "bs_roformer": "bs_roformer",
    "mel_band_roformer": "mel_band_roformer",
    "bs_roformer_experimental": "bs_roformer_experimental",
    "mel_band_roformer_experimental": "mel_band_roformer_experimental",
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
    experimental = family.endswith("_experimental")
    if experimental:
        accepted = (accepted - _NOT_EXPERIMENTAL) | set(_EXPERIMENTAL_OPTIONS)
    unknown = sorted(set(model_cfg) - accepted)
    if unknown:
        raise CheckpointError(f"the config's model section has options this {family} does not support: "
                              f"{', '.join(unknown)}")
    kwargs = dict(model_cfg)
    if experimental:
        streams = kwargs.pop("num_residual_streams", 1)
        if streams != 1:
            # hyper-connections (several residual streams) are a third-party module of their own
            raise CheckpointError(f"{family} with num_residual_streams: {streams} (hyper-connections) "
                                  "is not supported (only num_residual_streams: 1)")
        kwargs["value_residuals"] = bool(kwargs.pop("use_value_residual_learning", False))
        kwargs["zero_dc"] = False  # the experimental classes have no zero_dc step
        kwargs["experimental_residuals"] = True
    for key in ("freqs_per_bands", "multi_stft_resolutions_window_sizes"):
        if key in kwargs and isinstance(kwargs[key], list):
            kwargs[key] = tuple(kwargs[key])
    kwargs.setdefault("sample_rate", msst.samplerate_of(config))
    return kwargs


# Model keys of MSST's BS-/Mel-Band conformers (families/conformer.py), which share the
# RoFormers' band layouts: a config with any of them is not a RoFormer's.
_CONFORMER_KEYS = frozenset({"time_conformer_depth", "freq_conformer_depth", "linear_conformer_depth",
                             "conv_expansion_factor", "conv_kernel_size", "conv_dropout", "ff_mult"})


def recognises(config: Dict[str, Any]) -> Optional[str]:
    """"mel_band_roformer" (`num_bands`) or "bs_roformer" (`freqs_per_bands`), else None
    (also for a conformer's config); the "_experimental" type of either when the config has
    an option only those have. (An experimental config that has none of them reads as the
    plain type: a registry entry's `arch` tells them apart.)"""
    model_cfg = config.get("model") or {}
    if not isinstance(model_cfg, Mapping) or _CONFORMER_KEYS & set(model_cfg):
        return None
    suffix = "_experimental" if set(_EXPERIMENTAL_OPTIONS) & set(model_cfg) else ""
    if "num_bands" in model_cfg:
        return "mel_band_roformer" + suffix
    if "freqs_per_bands" in model_cfg:
        return "bs_roformer" + suffix
    return None


def build(config: Dict[str, Any], model_type: str, config_path: Optional[Path]) -> torch.nn.Module:
    if model_type not in FAMILIES:
        raise CheckpointError(f"unknown RoFormer type {model_type!r}", path=config_path,
                              hint=f"use one of: {', '.join(FAMILIES)}")
    kwargs = model_kwargs(config, model_type)
    sources, active = msst.outputs(config, int(kwargs.get("num_stems", 1)))  # load_checkpoint adds the path
    chunk_size = msst.chunk_size_of(config)  # inference.chunk_size over audio.chunk_size, as demix
    segment = float(chunk_size) / int(kwargs["sample_rate"]) if chunk_size else None
    try:
        return FAMILIES[model_type](**kwargs, sources=sources, segment=segment, active_stems=active)
    except (TypeError, ValueError, AssertionError) as exc:
        raise CheckpointError(f"the config does not describe a buildable {model_type} ({exc})",
                              path=config_path) from exc


def contract_options(config: Dict[str, Any], model_type: str) -> Dict[str, Any]:
    return {"bf16": False}  # complex rotary tables and out= matmuls into fp32 workspaces


_ENTRY = msst.EntryPoints("roformer", recognises=recognises, build=build, contract_options=contract_options,
                          archs=ARCHS)

#: The table's entry points: accepts(path, config=None), load_local(path, stems, config=None),
#: load_spec(spec, folder, stems) (with the registry's `extra.model_overrides`, see msst.EntryPoints).
accepts, load_local, load_spec = _ENTRY.functions()


def load_roformer(ckpt_path, config_path, *, model_type: Optional[str] = None,
                  name: Optional[str] = None) -> ModelBag:
    """Build a RoFormer from an MSST config (a path, or the same data as a mapping) and load
    its checkpoint (strict keys); see `msst.load_checkpoint`.

    `model_type`: "bs_roformer" or "mel_band_roformer"; None: recognised from the config
    (`num_bands` vs `freqs_per_bands`).
    """
    return _ENTRY.load(ckpt_path, config_path, model_type=model_type, name=name)
