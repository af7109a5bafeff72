"""The BandIt v2 family: dialogue / music / effects separation of film and video soundtracks.

Checkpoints come in the MSST format (`families.msst`), model type "bandit_v2", with one
difference: the constructor arguments sit under `kwargs:` instead of `model:` (MSST's
settings build `Bandit(**config.kwargs)` for this type only). The stems are named in
`kwargs.stems` (the published DnR config: speech, music, sfx) and, as MSST names its
outputs, in `training.instruments`.

MSST's published config omits `fs` (the bands are then laid out for 44.1 kHz while the
audio runs at the 48 kHz of `audio.sample_rate`, the rate the authors trained at); the
musical band edges scale with the rate, so the layout is the same either way. MSST's
demix runs this type with its generic chunking.

The authors publish their weights as PyTorch Lightning checkpoints: the state dict sits
under `state_dict` (unwrapped by `msst.read_state_dict`), the network's keys prefixed
`model.` (their training module holds it as `.model`) beside the loss handler's. MSST
asks users to re-save them without those; here they load as they are (`lightning_layout`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..errors import CheckpointError
from ..models.bandit_v2 import ACTIVATIONS, PAD_MODES, RNNS, WINDOWS, BanditV2
from . import msst

MODEL_TYPE = "bandit_v2"

# Registry `arch` values -> model type.
ARCHS: Dict[str, str] = {"bandit_v2": MODEL_TYPE}

# `kwargs` keys MSST's Bandit takes but runs with one value only (we refuse any other by name).
_FIXED = {
    "band_type": ("musical",),  # MSST asserts "musical"
    "power": (None,),  # MSST asserts a complex spectrogram
    "normalize_channel_independently": (False,),  # not implemented in MSST either
    "treat_channel_as_feature": (True,),  # not implemented in MSST either
    "onesided": (True,),
}
# Keys passed on to BanditV2 as they are.
_PASSED = {"in_channels", "stems", "n_bands", "require_no_overlap", "require_no_gap", "n_sqm_modules",
           "emb_dim", "rnn_dim", "bidirectional", "rnn_type", "mlp_dim", "hidden_activation",
           "hidden_activation_kwargs", "complex_mask", "use_freq_weights", "n_fft", "win_length",
           "hop_length", "window_fn", "wkwargs", "center", "normalized", "pad_mode", "fs"}
# Training-time precision choices MSST's Bandit accepts and never uses.
_IGNORED = {"stft_precisions", "bandsplit_precisions", "tf_model_precisions", "mask_estim_precisions"}
_HINT = "unmix runs the BandIt v2 of MSST's model type bandit_v2; check the config belongs to this checkpoint"
_CHOICES = {"rnn_type": RNNS, "hidden_activation": ACTIVATIONS, "window_fn": WINDOWS, "pad_mode": PAD_MODES}


def recognises(config: Dict[str, Any]) -> Optional[str]:
    """"bandit_v2" for a config with a `kwargs` section and no `model` section, else None.

    MSST reads `kwargs` for this model type only, and every other type's config has `model`,
    so no other family claims such a config.
    """
    if isinstance(config.get("kwargs"), dict) and not isinstance(config.get("model"), dict):
        return MODEL_TYPE
    return None


def model_kwargs(config: Dict[str, Any]) -> Dict[str, Any]:
    """The `kwargs` section as `BanditV2` arguments; an option we do not run is a CheckpointError."""
    section = dict(config.get("kwargs") or {})
    unknown = sorted(set(section) - _PASSED - _IGNORED - set(_FIXED))
    if unknown:
        raise CheckpointError(f"the config's kwargs section has options BandIt v2 does not take: "
                              f"{', '.join(unknown)}", hint=_HINT)
    for key, allowed in _FIXED.items():
        if key in section and section[key] not in allowed:
            raise CheckpointError(f"kwargs.{key}: {section[key]!r} is not supported (only "
                                  f"{' / '.join(repr(a) for a in allowed)})", hint=_HINT)
    for key, choices in _CHOICES.items():
        if key in section and section[key] not in choices:
            raise CheckpointError(f"kwargs.{key}: {section[key]!r} is not supported (one of: "
                                  f"{', '.join(choices)})", hint=_HINT)
    stems = section.get("stems")
    if not isinstance(stems, (list, tuple)) or not stems:
        raise CheckpointError("the config's kwargs section names no stems (kwargs.stems)")
    kwargs = {k: v for k, v in section.items() if k in _PASSED}
    kwargs["stems"] = [str(s) for s in stems]
    return kwargs


# Keys of the authors' Lightning training module that are not the network's.
_TRAINING_ONLY = ("loss_handler.", "metric_handler.")
_LIGHTNING_PREFIX = "model."


def lightning_layout(state: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The network's own keys of a state dict saved from the authors' Lightning module, or None
    when `state` is not in that layout (every key but the training-only ones under `model.`)."""
    kept = {k: v for k, v in state.items() if not k.startswith(_TRAINING_ONLY)}
    if not kept or not all(k.startswith(_LIGHTNING_PREFIX) for k in kept):
        return None
    return {k[len(_LIGHTNING_PREFIX):]: v for k, v in kept.items()}


def _accept_lightning_layout(module, state_dict, prefix, *_):
    # A load_state_dict pre-hook of the whole network: renames in place, before the strict
    # key check, the dict that load_state_dict copied for itself.
    if prefix:
        return
    renamed = lightning_layout(state_dict)
    if renamed is not None:
        state_dict.clear()
        state_dict.update(renamed)


def build(config: Dict[str, Any], model_type: str, config_path: Optional[Path]) -> torch.nn.Module:
    if model_type != MODEL_TYPE:
        raise CheckpointError(f"unknown BandIt type {model_type!r}", path=config_path, hint="use bandit_v2")
    kwargs = model_kwargs(config)
    # MSST names the outputs (in the network's order) by training.instruments.
    sources = msst.stem_names(config, len(kwargs["stems"]))[0]
    channels = int((config.get("audio") or {}).get("num_channels") or 2)
    try:
        model = BanditV2(**kwargs, sources=sources, audio_channels=channels)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"the config does not describe a buildable bandit_v2 ({exc})",
                              path=config_path) from exc
    model.register_load_state_dict_pre_hook(_accept_lightning_layout)
    return model


def contract_options(config: Dict[str, Any], model_type: str) -> Dict[str, Any]:
    # MSST's demix treats bandit_v2 like every generic type; only precision differs: the
    # masks are complex tensors made from the MLP outputs, which bf16 cannot hold.
    return {"bf16": False}


_ENTRY = msst.EntryPoints("bandit_v2", recognises=recognises, build=build, contract_options=contract_options,
                          archs=ARCHS)

# The family's entry points (see `families`): a `.ckpt` / `.pth` with its MSST config.
accepts, load_local, load_spec = _ENTRY.functions()


def load_bandit_v2(ckpt_path, config, *, name: Optional[str] = None):
    """Build BandIt v2 from an MSST config (path or mapping) and load its checkpoint strictly."""
    return _ENTRY.load(ckpt_path, config, model_type=MODEL_TYPE, name=name)
