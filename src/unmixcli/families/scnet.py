"""The SCNet family: MSST's model types "scnet", "scnet_masked" and "scnet_tran"
(e.g. SCNet XL IHF, the best four-stem model trained on MUSDB18-HQ alone).

They ship in the MSST checkpoint format (`families.msst`): a `.ckpt` state dict and a
YAML config whose `model` section holds the constructor arguments (sources,
audio_channels, dims, nfft, hop_size, win_size, normalized, band_SR, band_stride,
band_kernel, conv_depths, compress, conv_kernel, num_dplayer, expand; "scnet_tran"
adds tran_*). They run with MSST's generic chunking (its `demix` treats SCNet like
every type but htdemucs); the contract honours `inference.chunk_size` as `demix`
does, and runs in fp32 (the network's STFT, FFTs and complex products need it).

Telling the types apart: a config is SCNet's when its `model` section has one of
band_SR, band_stride, band_kernel, conv_depths, num_dplayer (no other MSST type
uses them; MSST's unofficial SCNet names them differently and is not claimed);
`tran_*` keys make it "scnet_tran"; `training.model_type`, where a config states
one, decides. "scnet" and "scnet_masked" take the same keys, so a config alone
means "scnet" (the type of MSST's published SCNet configs), and a registry entry
of a masked model must say `arch: scnet_masked`. A local checkpoint whose
config reads as "scnet" but whose weights do not fit it is retried as the variant
its weights' names show (the mask head and bin embedding of "scnet_masked",
`first_conv` and the transformers of "scnet_tran").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import CheckpointError
from ..models.bag import ModelBag
from ..models.scnet import MODEL_TYPES
from . import msst

# Registry `arch` values -> the loader's model types.
ARCHS: Dict[str, str] = {name: name for name in MODEL_TYPES}

# `model` keys only SCNet configs have (one is enough).
_SIGNATURE = frozenset({"band_SR", "band_stride", "band_kernel", "conv_depths", "num_dplayer"})
# Every `model` key of each type (MSST passes the section to the constructor as keyword arguments).
_COMMON_KEYS = frozenset({"sources", "audio_channels", "dims", "nfft", "hop_size", "win_size", "normalized",
                          "band_SR", "band_stride", "band_kernel", "conv_depths", "compress", "conv_kernel",
                          "num_dplayer", "expand"})
_TRAN_KEYS = frozenset({"tran_rotary_embedding_dim", "tran_depth", "tran_heads", "tran_dim_head",
                        "tran_attn_dropout", "tran_ff_dropout", "tran_flash_attn"})
MODEL_KEYS: Dict[str, frozenset] = {"scnet": _COMMON_KEYS, "scnet_masked": _COMMON_KEYS,
                                    "scnet_tran": _COMMON_KEYS | _TRAN_KEYS}
_DEFAULT_SOURCES = ("drums", "bass", "other", "vocals")

# State-dict names that only one variant has: what a local checkpoint's weights say it is.
_VARIANT_KEYS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("scnet_masked", ("pos_embed_f", "mask_layer.0.weight")),
    ("scnet_tran", ("first_conv.weight",)),
)


def recognises(config: Dict[str, Any]) -> Optional[str]:
    """"scnet_tran" (tran_* keys), "scnet" (the other SCNet configs) or the SCNet type
    `training.model_type` names; None when the config is not an SCNet one."""
    model_cfg = config.get("model")
    if not isinstance(model_cfg, dict) or not _SIGNATURE & set(model_cfg):
        return None
    declared = (config.get("training") or {}).get("model_type")
    if declared is not None:
        return declared if declared in MODEL_TYPES else None
    return "scnet_tran" if any(str(k).startswith("tran_") for k in model_cfg) else "scnet"


def chunk_size(config: Dict[str, Any]) -> Optional[int]:
    """The samples per forward MSST's `demix` uses: `inference.chunk_size` if set, else `audio.chunk_size`."""
    inference = config.get("inference") or {}
    if "chunk_size" in inference:
        return inference["chunk_size"]
    return (config.get("audio") or {}).get("chunk_size")


def _outputs(config: Dict[str, Any], count: int, config_path: Optional[Path]) -> Tuple[List[str], Optional[int]]:
    """(names of the network's `count` outputs, the one output to keep or None), as MSST's
    `demix` labels and keeps them: by `training.instruments`, and only the target's when
    `training.target_instrument` is set."""
    model_cfg = config["model"]
    training = config.get("training") or {}
    instruments = [str(s) for s in (training.get("instruments") or [])]
    target = training.get("target_instrument")
    if not target:
        if not instruments:
            return [str(s) for s in model_cfg.get("sources", _DEFAULT_SOURCES)], None
        return msst.stem_names(config, count)[0], None
    target = str(target)
    if target not in instruments:
        raise CheckpointError(f"the config's training.target_instrument {target!r} is not among "
                              f"training.instruments ({', '.join(instruments)})", path=config_path)
    if count == len(instruments):
        return instruments, instruments.index(target)
    if count == 1:
        return [target], None
    raise CheckpointError(f"the config's model computes {count} stems, but training.target_instrument {target!r} "
                          f"keeps one of {len(instruments)} instruments", path=config_path)


def build(config: Dict[str, Any], model_type: str, config_path: Optional[Path]) -> torch.nn.Module:
    """The network of `model_type` for `config` (weights not loaded); unknown model keys are refused."""
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"unknown SCNet type {model_type!r}", path=config_path,
                              hint="use one of: " + ", ".join(MODEL_TYPES))
    model_cfg = dict(config.get("model") or {})
    unknown = sorted(str(k) for k in set(model_cfg) - MODEL_KEYS[model_type])
    if unknown:
        raise CheckpointError(f"the config's model section has options this {model_type} does not support: "
                              f"{', '.join(unknown)}", path=config_path,
                              hint="check the config belongs to this checkpoint and names its model type")
    count = len(model_cfg.get("sources", _DEFAULT_SOURCES))
    if count < 1:
        raise CheckpointError("the config's model.sources names no stems", path=config_path)
    names, keep = _outputs(config, count, config_path)
    chunk = chunk_size(config)
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise CheckpointError(f"the config's chunk_size must be a positive integer, got {chunk!r}", path=config_path)
    model_cfg["sources"] = names
    try:
        model = MODEL_TYPES[model_type](**model_cfg)
    except (TypeError, ValueError, IndexError, ZeroDivisionError) as exc:
        raise CheckpointError(f"the config does not describe a buildable {model_type} ({exc})",
                              path=config_path) from exc
    if keep is not None:
        model.keep_only([keep])
    return model


def contract_options(config: Dict[str, Any], model_type: str) -> Dict[str, Any]:
    """fp32 always (complex spectrograms and FFTs have no bf16 form), and `inference.chunk_size`
    winning over `audio.chunk_size` as it does in MSST's `demix`."""
    options: Dict[str, Any] = {"bf16": False}
    inference = config.get("inference") or {}
    if "chunk_size" in inference:
        options["segment"] = float(inference["chunk_size"]) / msst.samplerate_of(config)
    return options


_ENTRY = msst.EntryPoints("scnet", recognises=recognises, build=build, contract_options=contract_options,
                          archs=ARCHS)

accepts = _ENTRY.accepts


def _variant_by_weights(ckpt_path: Path, config: Any) -> Optional[str]:
    """The SCNet variant a checkpoint's state-dict names show, when its config reads as plain
    "scnet" without saying so (`training.model_type`); else None."""
    data = msst.load_config(config)[0]
    if recognises(data) != "scnet" or (data.get("training") or {}).get("model_type") is not None:
        return None
    names = set(msst.read_state_dict(ckpt_path))
    for variant, marks in _VARIANT_KEYS:
        if all(mark in names for mark in marks):
            return variant
    return None


def load_scnet(ckpt_path, config, *, model_type: Optional[str] = None, name: Optional[str] = None) -> ModelBag:
    """Build an SCNet from an MSST config (a path, or the same data as a mapping) and load its
    checkpoint (strict keys); see `msst.load_checkpoint`.

    `model_type`: "scnet", "scnet_masked" or "scnet_tran"; None: recognised from the config,
    and where the config reads as "scnet" but the weights are a masked or transformer
    SCNet's, loaded as that variant.
    """
    try:
        return _ENTRY.load(ckpt_path, config, model_type=model_type, name=name)
    except CheckpointError as exc:
        if model_type is not None:
            raise
        failure = exc
    try:
        variant = _variant_by_weights(Path(ckpt_path), config)
    except CheckpointError:
        variant = None
    if variant is None:
        raise failure
    return _ENTRY.load(ckpt_path, config, model_type=variant, name=name)


def load_local(path: Path, stems=None, config=None) -> ModelBag:
    """A `.ckpt` / `.pth` with its MSST config (`config`, or the one beside it)."""
    del stems  # one network computes every stem
    return load_scnet(path, config if config is not None else msst.config_for(Path(path)))


def load_spec(spec: Any, folder: Path, stems=None) -> ModelBag:
    """Registry entry `spec`: `spec.checkpoint` with `spec.config` (a file among its files, or inline);
    `spec.arch` names the type (needed for "scnet_masked")."""
    del stems
    model_type = None
    if spec.arch is not None:
        model_type = ARCHS.get(spec.arch)
        if model_type is None:
            raise CheckpointError(f"model '{spec.name}': unknown scnet arch {spec.arch!r}", path=spec.source,
                                  hint="use one of: " + ", ".join(sorted(ARCHS)))
    config = spec.config if isinstance(spec.config, Mapping) else folder / spec.config
    return load_scnet(folder / spec.checkpoint, config, model_type=model_type, name=spec.name)
