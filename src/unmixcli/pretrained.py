"""A model reference -> a ready ModelBag: registry + hub + checkpoints.

A reference is either a path that exists (a folder with a bag yaml and its
safetensors, or one checkpoint file) or a registry name. Paths win: a local
folder named like a registry model is what the user pointed at.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Union

from .hub import Progress
from .registry import ModelSpec, load_registry


def resolve(ref: str, *, registry_files: Iterable[Union[str, os.PathLike]] = ()) -> Union[Path, ModelSpec]:
    """An existing local path, or the registry entry named `ref` (ModelNotFoundError otherwise)."""
    path = Path(os.path.expanduser(str(ref)))
    if path.exists():
        return path
    return load_registry(registry_files).get(str(ref))


def load_model(
    ref: str,
    *,
    device: Any = None,
    offline: bool = False,
    registry_files: Iterable[Union[str, os.PathLike]] = (),
    progress: Progress = None,
):
    """Load a model bag from a registry name or a local path.

    Args:
        ref: registry name (e.g. "htdemucs") or a local folder / checkpoint file.
        device: where to put the members (a torch.device, "cpu", "cuda", "auto"),
            or None to leave them on the CPU.
        offline: use the cache only (also implied by HF_HUB_OFFLINE).
        registry_files: extra registry files (`--registry`).
        progress: download progress, see `hub.fetch`.

    Returns:
        a `ModelBag` whose members map `[B, C, T]` to `[B, S, C, T]`, in eval mode.
    """
    from . import checkpoints  # torch and the model classes: only when a model is loaded

    target = resolve(ref, registry_files=registry_files)
    if isinstance(target, Path):
        bag = checkpoints.load_local(target)
    else:
        bag = _load_spec(target, offline=offline, progress=progress)
    if device is not None:
        _to_device(bag, device)
    return bag


def _load_spec(spec: ModelSpec, *, offline: bool, progress: Progress):
    from . import checkpoints, hub

    folder = hub.fetch(spec, offline=offline, progress=progress)
    return checkpoints.load_spec(spec, folder)  # dispatches on spec.family; names the bag after the entry


def _to_device(bag, device: Any) -> None:
    import torch

    if isinstance(device, str):
        if device == "auto":
            from .engine import resolve_device

            device = resolve_device("auto")
        else:
            device = torch.device(device)
    for member in bag.models:
        member.to(device)
