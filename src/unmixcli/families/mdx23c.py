"""The MDX23C family: MSST's TFC-TDF v3 checkpoints (model type "mdx23c"), e.g. MDX23C InstVoc HQ.

They ship in the MSST checkpoint format (`families.msst`): a `.ckpt` state dict and
a YAML config whose `model` section holds act, bottleneck_factor, growth, norm,
num_blocks_per_scale, num_channels, num_scales, num_subbands, scale, and whose
`audio` section holds the STFT (n_fft, hop_length, dim_f, num_channels,
chunk_size). They run with MSST's generic chunking (MSST's `demix` treats every
type but htdemucs alike).

Caveat: MSST's STHT variant (model type "mdx23c_stht") publishes configs with the
same keys; it is recognised as "mdx23c" unless the config says
`training.model_type`, and its weights then fail the strict load (the first
convolution takes half the channels), which says the config does not fit them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ..errors import CheckpointError
from ..models.bag import ModelBag
from ..models.mdx23c import MDX23C
from . import msst

MODEL_TYPE = "mdx23c"

# Registry `arch` values -> the loader's model type.
ARCHS: Dict[str, str] = {"mdx23c": MODEL_TYPE}

# The `model` keys that make a config an MDX23C one (together; no other MSST family has them).
_SIGNATURE = ("num_subbands", "num_scales", "bottleneck_factor", "num_blocks_per_scale", "growth")
# Every `model` key the network reads; any other is refused.
_MODEL_KEYS = frozenset(_SIGNATURE) | {"act", "norm", "num_channels", "scale"}
_REQUIRED_AUDIO = ("n_fft", "hop_length", "dim_f")

# Our tables of MSST's norm and activation names (config values are data: looked up, never resolved).
_NORMS = {"BatchNorm": "batch", "InstanceNorm": "instance"}
_GROUP_NORM = re.compile(r"GroupNorm(\d+)")
_ACTS = {"gelu": "gelu", "relu": "relu"}
_ELU = re.compile(r"elu([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")


def recognises(config: Dict[str, Any]) -> Optional[str]:
    """"mdx23c" when the `model` section has the TFC-TDF keys (num_subbands, num_scales,
    bottleneck_factor, num_blocks_per_scale, growth) and `training.model_type`, if any,
    does not name another type; else None."""
    model_cfg = config.get("model")
    if not isinstance(model_cfg, dict) or not all(k in model_cfg for k in _SIGNATURE):
        return None
    declared = (config.get("training") or {}).get("model_type")
    if declared is not None and declared != MODEL_TYPE:
        return None
    return MODEL_TYPE


def _norm(value: Any) -> Tuple[str, Optional[int]]:
    name = str(value)
    if name in _NORMS:
        return _NORMS[name], None
    group = _GROUP_NORM.fullmatch(name)
    if group:
        return "group", int(group.group(1))
    raise CheckpointError(f"the config's model.norm {name!r} is not one this MDX23C supports",
                          hint="supported: BatchNorm, InstanceNorm, GroupNorm<groups> (MSST would silently run "
                               "any other name without normalisation)")


def _act(value: Any) -> Tuple[str, float]:
    name = str(value)
    if name in _ACTS:
        return _ACTS[name], 1.0
    elu = _ELU.fullmatch(name)
    if elu:
        return "elu", float(elu.group(1))
    raise CheckpointError(f"the config's model.act {name!r} is not one this MDX23C supports",
                          hint="supported: gelu, relu, elu<alpha> (e.g. elu1.0)")


def _positive_int(section: Mapping, key: str, where: str) -> int:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"the config's {where}.{key} must be a positive integer, got {value!r}")
    return value


def model_kwargs(config: Dict[str, Any]) -> Dict[str, Any]:
    """Constructor arguments of `MDX23C` (but `sources`) for an MSST config, checked.

    Refuses unknown `model` keys, norms and activations, and geometry MSST's network
    cannot run (it would fail mid-forward): bins or frames not divisible down the U-Net,
    a chunk that is not a whole number of hops, a TDF bottleneck of zero bins.
    """
    model_cfg = dict(config.get("model") or {})
    audio = dict(config.get("audio") or {})
    unknown = sorted(set(model_cfg) - _MODEL_KEYS)
    if unknown:
        raise CheckpointError(f"the config's model section has options this MDX23C does not support: "
                              f"{', '.join(map(str, unknown))}")
    missing = [f"model.{k}" for k in sorted(_MODEL_KEYS) if k not in model_cfg] + \
              [f"audio.{k}" for k in _REQUIRED_AUDIO if k not in audio]
    if missing:
        raise CheckpointError(f"the config lacks {', '.join(missing)}, which an MDX23C needs")
    ints = {k: _positive_int(model_cfg, k, "model") for k in
            ("num_subbands", "num_scales", "num_blocks_per_scale", "num_channels", "bottleneck_factor")}
    growth = model_cfg["growth"]
    if isinstance(growth, bool) or not isinstance(growth, int) or growth < 0:
        raise CheckpointError(f"the config's model.growth must be a non-negative integer, got {growth!r}")
    scale = model_cfg["scale"]
    if (not isinstance(scale, (list, tuple)) or len(scale) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in scale)):
        raise CheckpointError(f"the config's model.scale must be two positive integers (time, frequency), "
                              f"got {scale!r}")
    n_fft, hop, dim_f = (_positive_int(audio, k, "audio") for k in _REQUIRED_AUDIO)
    channels = audio.get("num_channels", 2)
    if channels != 2:
        raise CheckpointError(f"the config's audio.num_channels is {channels!r}; MSST's MDX23C runs stereo only "
                              "(its inverse STFT assumes 2 channels)")

    k, levels = ints["num_subbands"], ints["num_scales"]
    if dim_f > n_fft // 2 + 1 or dim_f % k:
        raise CheckpointError(f"the config's audio.dim_f {dim_f} must be at most n_fft // 2 + 1 = {n_fft // 2 + 1} "
                              f"and a multiple of model.num_subbands {k}")
    bins = dim_f // k
    if bins % scale[1] ** levels:
        raise CheckpointError(f"dim_f / num_subbands = {bins} bins cannot be divided by scale {scale[1]} "
                              f"{levels} times (model.num_scales)")
    if bins // scale[1] ** levels < ints["bottleneck_factor"]:
        raise CheckpointError(f"the deepest level (model.num_scales {levels}) has {bins // scale[1] ** levels} "
                              f"bins, fewer than model.bottleneck_factor {ints['bottleneck_factor']}")
    chunk = msst.declared_chunk_size(config)  # checked here: it must fit the STFT and the U-Net
    if chunk is not None:
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1 or chunk % hop:
            raise CheckpointError(f"the config's chunk_size {chunk!r} must be a positive multiple of "
                                  f"audio.hop_length {hop}")
        frames = chunk // hop + 1
        if frames % scale[0] ** levels:
            raise CheckpointError(f"a chunk of {chunk} samples has {frames} STFT frames, which scale {scale[0]} "
                                  f"cannot divide {levels} times (model.num_scales)")
    return dict(audio_channels=2, n_fft=n_fft, hop_length=hop, dim_f=dim_f, num_subbands=k, num_scales=levels,
                scale=tuple(scale), num_blocks_per_scale=ints["num_blocks_per_scale"],
                num_channels=ints["num_channels"], growth=growth, bottleneck_factor=ints["bottleneck_factor"],
                norm=_norm(model_cfg["norm"]), act=_act(model_cfg["act"]))


def build(config: Dict[str, Any], model_type: str, config_path: Optional[Path]) -> torch.nn.Module:
    if model_type != MODEL_TYPE:
        raise CheckpointError(f"unknown MDX23C type {model_type!r}", path=config_path, hint=f"use {MODEL_TYPE}")
    kwargs = model_kwargs(config)
    # MSST builds one output per `prefer_target_instrument` name: the target alone, or every instrument.
    training = config.get("training") or {}
    target, instruments = training.get("target_instrument"), list(training.get("instruments") or [])
    if target and target not in instruments:  # MSST's demix refuses it too
        raise CheckpointError(f"the config's training.target_instrument {target!r} is not among "
                              f"training.instruments ({', '.join(map(str, instruments)) or 'none'})",
                              path=config_path)
    count = 1 if target else len(instruments)
    if count < 1:
        raise CheckpointError("the config names no stems (training.instruments)", path=config_path)
    sources = msst.stem_names(config, count)[0]
    try:
        return MDX23C(sources=sources, **kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"the config does not describe a buildable MDX23C ({exc})", path=config_path) from exc


_ENTRY = msst.EntryPoints("mdx23c", recognises=recognises, build=build, archs=ARCHS)

#: The table's entry points: accepts(path, config=None), load_local(path, stems, config=None),
#: load_spec(spec, folder, stems).
accepts, load_local, load_spec = _ENTRY.functions()


def load_mdx23c(ckpt_path, config, *, name: Optional[str] = None) -> ModelBag:
    """Build an MDX23C from an MSST config (a path, or the same data as a mapping) and load its
    checkpoint (strict keys); see `msst.load_checkpoint`. The config must be one `recognises`
    claims (a config naming another `training.model_type` is refused)."""
    return _ENTRY.load(ckpt_path, config, name=name)
