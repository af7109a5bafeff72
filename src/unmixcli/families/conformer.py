"""The conformer family: MSST's BS-Conformer and Mel-Band Conformer checkpoints.

They ship in the MSST checkpoint format (`families.msst`: a `.ckpt` / `.pth` state
dict and a YAML config whose `model` section holds the constructor arguments) and
run with MSST's generic chunking, like the RoFormers they derive from.

Telling them from RoFormer configs: both have `freqs_per_bands` (BS) or
`num_bands` (Mel); a conformer's config also has at least one of the conformer's
own arguments (`MARKERS`: time/freq_conformer_depth, conv_kernel_size, ...),
which no RoFormer takes. Every published conformer config names several of them;
a config that leaves them all at their defaults cannot be told from a RoFormer's
and goes to the RoFormer family (a registry entry can say `arch: bs_conformer`
or `arch: mel_band_conformer`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Type

import torch

from ..errors import CheckpointError
from ..models.bag import ModelBag
from ..models.conformer import BSConformer, MelBandConformer
from . import msst

FAMILIES: Dict[str, Type[torch.nn.Module]] = {
    "bs_conformer": BSConformer,
    "mel_band_conformer": MelBandConformer,
}

#: Config keys only the conformers take (MSST's RoFormers have none of them).
MARKERS = frozenset({"time_conformer_depth", "freq_conformer_depth", "linear_conformer_depth",
                     "conv_expansion_factor", "conv_kernel_size", "conv_dropout", "ff_mult"})

# Constructor arguments that are not architecture and never come from a config.
_NOT_FROM_CONFIG = {"stft_window_fn", "multi_stft_window_fn", "sources", "segment", "active_stems"}

# Registry `arch` values -> model types.
ARCHS: Dict[str, str] = {"bs_conformer": "bs_conformer", "mel_band_conformer": "mel_band_conformer"}


def model_kwargs(config: Dict[str, Any], model_type: str) -> Dict[str, Any]:
    """Map an MSST config to constructor arguments of `FAMILIES[model_type]`.

    `model.*` keys are the constructor's own argument names (MSST passes them as
    they are); the sample rate comes from `model.sample_rate` or `audio.sample_rate`.
    Unknown keys are refused: they usually mean an architecture variant we do not have.
    """
    cls = FAMILIES[model_type]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"} - _NOT_FROM_CONFIG
    kwargs = dict(config.get("model") or {})
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise CheckpointError(f"the config's model section has options this {model_type} does not support: "
                              f"{', '.join(unknown)}",
                              hint="check that the config belongs to a BS-/Mel-Band Conformer checkpoint")
    for key in ("freqs_per_bands", "multi_stft_resolutions_window_sizes"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    kwargs.setdefault("sample_rate", msst.samplerate_of(config))
    return kwargs


def recognises(config: Dict[str, Any]) -> Optional[str]:
    """"mel_band_conformer" (`num_bands`) or "bs_conformer" (`freqs_per_bands`) when the model
    section also has a conformer-only key (`MARKERS`); else None."""
    model_cfg = config.get("model") or {}
    if not isinstance(model_cfg, Mapping) or not MARKERS & set(model_cfg):
        return None
    if "num_bands" in model_cfg:
        return "mel_band_conformer"
    if "freqs_per_bands" in model_cfg:
        return "bs_conformer"
    return None


def build(config: Dict[str, Any], model_type: str, config_path: Optional[Path]) -> torch.nn.Module:
    if model_type not in FAMILIES:
        raise CheckpointError(f"unknown conformer type {model_type!r}", path=config_path,
                              hint=f"use one of: {', '.join(FAMILIES)}")
    kwargs = model_kwargs(config, model_type)
    sources, active = msst.outputs(config, int(kwargs.get("num_stems", 1)))
    chunk_size = msst.chunk_size_of(config)
    segment = float(chunk_size) / int(kwargs["sample_rate"]) if chunk_size else None
    try:
        return FAMILIES[model_type](**kwargs, active_stems=active, sources=sources, segment=segment)
    except (TypeError, ValueError, AssertionError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"the config does not describe a buildable {model_type} ({detail})",
                              path=config_path) from exc


def contract_options(config: Dict[str, Any], model_type: str) -> Dict[str, Any]:
    """No differences from MSST's generic demix recipe. The conformers can run under bf16
    autocast (their mask heads and the spectrogram stay in fp32): `--precision bf16` is
    honoured, and `auto` keeps them in fp32 (bf16 was not measured faster for them)."""
    return {}


_ENTRY = msst.EntryPoints("conformer", recognises=recognises, build=build, contract_options=contract_options,
                          archs=ARCHS)

#: The table's entry points: accepts(path, config=None), load_local(path, stems, config=None),
#: load_spec(spec, folder, stems).
accepts, load_local, load_spec = _ENTRY.functions()


def load_conformer(ckpt_path, config, *, model_type: Optional[str] = None, name: Optional[str] = None) -> ModelBag:
    """Build a BS-/Mel-Band Conformer from an MSST config (a path, or the same data as a
    mapping) and load its checkpoint (strict keys); see `msst.load_checkpoint`.

    `model_type`: "bs_conformer" or "mel_band_conformer"; None: recognised from the config.
    """
    return _ENTRY.load(ckpt_path, config, model_type=model_type, name=name)
