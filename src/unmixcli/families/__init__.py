"""Model families: one module per family, and ONE table of them (`FAMILIES`).

A family reads its published files as data, builds its `nn.Module`s from
configuration read as data (never importing a name found in a file) and states
a `Contract` per member (rate, channels, stems, segment rule, window,
normalisation, overlap, context) that the engine reads. Adding a family is one
module with the functions below and one `Family` row:

    load_spec(spec, folder, stems) -> ModelBag   a registry entry whose files are in `folder`
    load_local(path, stems) -> ModelBag          a local file (by suffix) or folder
    claims(folder) -> bool                       a folder layout of its own (asked only of rows
                                                 with `folder_suffixes`, when the folder has them)
    accepts(path) -> bool                        optional: whether a file with one of the
                                                 row's `descriptors` suffixes is really its own,
                                                 or which of the rows sharing a suffix loads it

`stems` is the subset the caller will ask for (None: all); a family whose stems
are separate networks builds only those.

This module is imported by the registry (`unmix models list`), so it must not
import torch: a family's module is imported only when a model of it is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ..errors import CheckpointError, ModelNotFoundError, UsageError

Stems = Optional[Sequence[str]]


@dataclass(frozen=True)
class EntryRule:
    """What a registry entry of the family must name, checked when the registry is read.

    Attributes:
        bag: a bag file among the entry's files (`bag`, default `<name>.yaml`).
        config: "none"; "required" (`config` is a file among the files, or an inline
            mapping); "mapping" (an inline mapping only).
        checkpoint: one weights file (`checkpoint`, or the only file with one of
            `weight_suffixes` among the files).
        weight_suffixes: the entry must hold at least one file ending so.
    """

    bag: bool = False
    config: str = "none"
    checkpoint: bool = False
    weight_suffixes: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    """One row of the family table.

    Attributes:
        name: the registry's `family` value.
        module: imports and returns the family's module (see the module docstring).
        archs: the registry `arch` values it serves (empty: it takes none).
        suffixes: single files it loads from a local path (lower case, with the dot).
        descriptors: files that name other files of the model (a bag yaml); in a
            folder they win over single checkpoints. `accepts` says which are its own.
        folder_suffixes: a folder holding files with all of these suffixes may be in a
            layout of the family's own: its module's `claims(folder)` decides.
        entry: what its registry entries must name.
        hint: what its local files look like (shown when a folder holds no model).
        takes_config: its local files come with a YAML config that `--config` may name
            (the MSST families: their `accepts` and `load_local` take `config=`).
    """

    name: str
    module: Callable[[], ModuleType]
    archs: Tuple[str, ...] = ()
    suffixes: Tuple[str, ...] = ()
    descriptors: Tuple[str, ...] = ()
    folder_suffixes: Tuple[str, ...] = ()
    entry: EntryRule = EntryRule()
    hint: str = ""
    takes_config: bool = False


def _demucs() -> ModuleType:
    from . import demucs

    return demucs


def _conformer() -> ModuleType:
    from . import conformer

    return conformer


def _roformer() -> ModuleType:
    from . import roformer

    return roformer


def _scnet() -> ModuleType:
    from . import scnet

    return scnet


def _openunmix() -> ModuleType:
    from . import openunmix

    return openunmix


def _mdx23c() -> ModuleType:
    from . import mdx23c

    return mdx23c


def _mdxnet() -> ModuleType:
    from . import mdxnet

    return mdxnet


def _bandit_v2() -> ModuleType:
    from . import bandit_v2

    return bandit_v2


def _vr() -> ModuleType:
    from . import vr

    return vr


def _deepfilternet() -> ModuleType:
    from . import deepfilternet

    return deepfilternet


def _asteroid() -> ModuleType:
    from . import asteroid

    return asteroid


def _sepformer() -> ModuleType:
    from . import sepformer

    return sepformer


_BUILTIN = (
    Family("demucs", _demucs, descriptors=(".yaml", ".yml"), suffixes=(".safetensors",),
           entry=EntryRule(bag=True, weight_suffixes=(".safetensors",)),
           hint="<name>.yaml with its <sig>.safetensors files, or one .safetensors file"),
    Family("conformer", _conformer, archs=("bs_conformer", "mel_band_conformer"),
           suffixes=(".ckpt", ".pth"), entry=EntryRule(config="required", checkpoint=True),
           hint="a BS-/Mel-Band Conformer .ckpt/.pth with its YAML config", takes_config=True),
    Family("roformer", _roformer, archs=("BSRoformer", "MelBandRoformer", "bs_roformer", "mel_band_roformer",
                                          "bs_roformer_experimental", "mel_band_roformer_experimental"),
           suffixes=(".ckpt", ".pth"), entry=EntryRule(config="required", checkpoint=True),
           hint="a RoFormer .ckpt/.pth with its YAML config", takes_config=True),
    Family("scnet", _scnet, archs=("scnet", "scnet_masked", "scnet_tran"), suffixes=(".ckpt", ".pth"),
           entry=EntryRule(config="required", checkpoint=True),
           hint="an SCNet .ckpt with its MSST YAML config", takes_config=True),
    Family("mdx23c", _mdx23c, archs=("mdx23c",), suffixes=(".ckpt", ".pth"),
           entry=EntryRule(config="required", checkpoint=True), hint="an MDX23C .ckpt with its MSST YAML config",
           takes_config=True),
    Family("bandit_v2", _bandit_v2, archs=("bandit_v2",), suffixes=(".ckpt", ".pth"),
           entry=EntryRule(config="required", checkpoint=True),
           hint="a BandIt v2 .ckpt/.pth with its MSST YAML config (a kwargs: section)", takes_config=True),
    Family("mdxnet", _mdxnet, suffixes=(".onnx",),
           entry=EntryRule(config="mapping", checkpoint=True, weight_suffixes=(".onnx",)),
           hint="a UVR MDX-Net .onnx file (its parameters from UVR's table, --model-params JSON, or a <name>.json beside it)",
           takes_config=True),
    Family("openunmix", _openunmix, folder_suffixes=(".json", ".pth"), entry=EntryRule(config="mapping", weight_suffixes=(".pth",)),
           hint="Open-Unmix's <target>.json files with their <target>*.pth weights"),
    # After the MSST rows, which share `.pth`: its `accepts` knows a VR state dict by its keys.
    Family("vr", _vr, suffixes=(".pth",),
           entry=EntryRule(config="mapping", checkpoint=True, weight_suffixes=(".pth",)),
           hint="a UVR VR-architecture .pth file (its parameters from UVR's table, --model-params JSON, or a <name>.json beside it)",
           takes_config=True),
    Family("deepfilternet", _deepfilternet, suffixes=(".tar.gz",), folder_suffixes=(".onnx", ".ini"),
           entry=EntryRule(config="mapping", checkpoint=True, weight_suffixes=(".tar.gz",)),
           hint="DeepFilterNet3_onnx.tar.gz, or a folder with its enc.onnx, erb_dec.onnx, df_dec.onnx, config.ini"),
    Family("asteroid", _asteroid, suffixes=(".bin",),
           entry=EntryRule(checkpoint=True, weight_suffixes=(".bin",)),
           hint="asteroid's pytorch_model.bin (ConvTasNet, DPRNNTasNet, DCCRNet)"),
    Family("sepformer", _sepformer, folder_suffixes=(".yaml", ".ckpt"),
           entry=EntryRule(config="required", weight_suffixes=(".ckpt",)),
           hint="SpeechBrain SepFormer's hyperparams.yaml with encoder.ckpt, masknet.ckpt, decoder.ckpt"),
)

#: family name -> row. `register` adds one (a plug-in, or a test's toy family).
FAMILIES: Dict[str, Family] = {f.name: f for f in _BUILTIN}


def register(family: Family) -> None:
    """Add (or replace) a family row."""
    FAMILIES[family.name] = family


def unregister(name: str) -> None:
    FAMILIES.pop(name, None)


def names() -> Tuple[str, ...]:
    return tuple(FAMILIES)


def get(name: str, *, path: Any = None) -> Family:
    family = FAMILIES.get(name)
    if family is None:
        raise CheckpointError(f"the {name} family cannot be loaded by this version of unmix", path=path,
                              hint="supported families: " + ", ".join(sorted(FAMILIES)))
    return family


# --------------------------------------------------------------------------- loading


def looks_local(ref: str) -> bool:
    """Whether `ref` names an existing file or folder (which wins over a registry name)."""
    return Path(os.path.expanduser(str(ref))).exists()


def resolve(ref: str, *, registry_files: Iterable[Union[str, os.PathLike]] = ()):
    """An existing local path, or the registry entry named `ref` (ModelNotFoundError otherwise).

    Paths win: a local folder named like a registry model is what the user pointed at.
    """
    from ..registry import load_registry

    path = Path(os.path.expanduser(str(ref)))
    if path.exists():
        return path
    return load_registry(registry_files).get(str(ref))


def load_model(ref: str, *, device: Any = None, offline: bool = False,
               registry_files: Iterable[Union[str, os.PathLike]] = (), progress: Any = None,
               stems: Stems = None, config: Optional[Union[str, os.PathLike]] = None):
    """Load a model bag from a registry name or a local path.

    Args:
        ref: registry name (e.g. "htdemucs") or a local folder / checkpoint file.
        device: where to put the members (a torch.device, "cpu", "cuda", "auto"),
            or None to leave them on the CPU.
        offline: use the cache only (also implied by HF_HUB_OFFLINE).
        registry_files: extra registry files (`--registry`).
        progress: download progress, see `hub.fetch`.
        stems: the stems that will be asked for (None: all); families whose stems
            are separate networks load only those.
        config: the YAML config of a local MSST checkpoint (default: the one beside it).

    Returns:
        a `ModelBag` whose members map `[B, C, T]` to `[B, S, C, T]`, in eval mode.
    """
    target = resolve(ref, registry_files=registry_files)
    if isinstance(target, Path):
        bag = load_local(target, stems=stems, **({} if config is None else {"config": config}))
    elif config is not None:
        raise UsageError(f"--config applies to a local checkpoint; '{target.name}' is a registry model "
                         "with its own config", hint="give -m the path of the checkpoint file")
    else:
        bag = load_spec(target, offline=offline, progress=progress, stems=stems)
    if device is not None:
        _to_device(bag, device)
    return bag


def load_spec(spec, *, offline: bool = False, progress: Any = None, stems: Stems = None, folder=None):
    """Download (unless `folder` holds the files already) and load registry entry `spec`.

    Returns:
        a `ModelBag` named after the entry, its stems spelled as the entry lists them.
    """
    family = get(spec.family, path=spec.source)
    if folder is None:
        # A family may find the entry's files already installed (a pip package shipping them).
        bundled = getattr(family.module(), "bundled", None)
        folder = bundled(spec) if bundled is not None else None
    if folder is None:
        from .. import hub

        folder = hub.fetch(spec, offline=offline, progress=progress)
    bag = family.module().load_spec(spec, Path(folder), stems)
    bag.name = spec.name
    _registered_stem_names(bag, spec)
    return bag


def _registered_stem_names(bag, spec) -> None:
    """Spell the bag's stems as the registry entry does (configs say "Vocals" or "vocals").

    The model decides which stems exist and in which order; the entry must list
    the same ones, compared without case (a family that loaded a subset, plus a
    residual stem of its own, keeps its extra stem's name).
    """
    produced = list(bag.sources)
    registered = {s.lower(): s for s in spec.stems}
    if bag.extra.get("stem_subset"):
        names = [registered.get(s.lower(), s) for s in produced]
    else:
        if len(produced) != len(spec.stems) or any(s.lower() not in registered for s in produced):
            raise CheckpointError(
                f"model '{spec.name}': its config gives the stems {', '.join(produced)}, "
                f"the registry entry lists {', '.join(spec.stems)}",
                path=spec.source,
                hint="make the entry's 'stems' match the model's config",
            )
        names = [registered[s.lower()] for s in produced]
    if names != produced:
        bag.rename_sources(names)


def load_local(path: Union[str, os.PathLike], *, stems: Stems = None, **family_options: Any):
    """Load a model from a local path: a folder, a bag yaml, or one checkpoint file.

    A folder in a layout a family claims (Open-Unmix's) goes to that family.
    Otherwise a folder must hold exactly one descriptor (a bag yaml, loaded with its
    members) or, if it has none, exactly one checkpoint file; the file's suffix
    picks the family. A single checkpoint is a bag of one. `family_options` go to
    the family's `load_local` (tests give Demucs the reference's classes).
    """
    target = Path(path)
    if not target.exists():
        raise ModelNotFoundError("no such file or folder", path=target, hint="check the model path")
    if target.is_dir():
        owner = _folder_family(target)
        if owner is not None:
            return owner.module().load_local(target, stems, **family_options)
        target = _pick_in_folder(target)
    elif family_options.get("config") is None:
        # One file of a folder layout (SpeechBrain's hyperparams.yaml, an Open-Unmix target's
        # .json): its suffix would route it to another family, so load the folder it is part of.
        # The folder test comes first: it is cheap, asking the suffix's families may read the file.
        owner = _folder_family(target.parent)
        if (owner is not None and _suffix(target) in owner.folder_suffixes and not _is_descriptor(target)
                and not _accepted_by_suffix(target)):
            return owner.module().load_local(target.parent, stems, **family_options)
    config = family_options.get("config")
    if config is not None and not Path(config).is_file():
        raise UsageError("no such config file", path=config, hint="--config names the checkpoint's YAML config")
    family = _family_for_file(target, config)
    if config is not None and not family.takes_config:
        raise UsageError(f"--config/--model-params applies to MSST and UVR checkpoints; {target.name} is a {family.name} model",
                         path=target, hint="leave --config out")
    return family.module().load_local(target, stems, **family_options)


def _folder_family(folder: Path) -> Optional[Family]:
    """The family whose folder layout `folder` is in (it has the family's `folder_suffixes`
    and the family's module claims it), or None."""
    present = {p.suffix.lower() for p in folder.iterdir() if p.is_file()}
    for family in FAMILIES.values():
        if family.folder_suffixes and present.issuperset(family.folder_suffixes) and family.module().claims(folder):
            return family
    return None


def _accepted_by_suffix(path: Path) -> bool:
    """Whether a family that loads single files of this suffix says this file is its own."""
    suffix = _suffix(path)
    for family in FAMILIES.values():
        accepts = getattr(family.module(), "accepts", None) if suffix in family.suffixes else None
        if accepts is not None and accepts(path):
            return True
    return False


def _family_for_file(path: Path, config: Any = None) -> Family:
    """The family that loads this file: the only one with its suffix, or, where several share
    a suffix (the MSST families' `.ckpt`), the first whose module `accepts` it; if none does,
    the first, which then says what is wrong with the file."""
    suffix = _suffix(path)
    candidates = [f for f in FAMILIES.values() if suffix in f.descriptors or suffix in f.suffixes]
    if len(candidates) > 1:
        for family in candidates:
            accepts = getattr(family.module(), "accepts", None)
            if accepts is None:
                continue
            if accepts(path) if config is None else (family.takes_config and accepts(path, config)):
                return family
    if candidates:
        return candidates[0]
    known = sorted({s for f in FAMILIES.values() for s in f.descriptors + f.suffixes})
    raise CheckpointError(f"unsupported model file type {path.suffix or '(no suffix)'!r}", path=path,
                          hint="supported: " + ", ".join(known))


def _suffix(path: Path) -> str:
    """The file's suffix in lower case; a two-part one (".tar.gz") when a family names it."""
    name = path.name.lower()
    for family in FAMILIES.values():
        for s in family.suffixes:
            if s.count(".") > 1 and name.endswith(s) and len(name) > len(s):
                return s
    return path.suffix.lower()


def summarise(names: Sequence[str], limit: int = 4) -> str:
    """'a, b, c, d (+2 more)': a few names for a one-line message."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _is_descriptor(path: Path) -> bool:
    for family in FAMILIES.values():
        if path.suffix.lower() in family.descriptors:
            accepts = getattr(family.module(), "accepts", None)
            return accepts is None or bool(accepts(path))
    return False


def _pick_in_folder(folder: Path) -> Path:
    """The one file in `folder` that describes a model: a descriptor, else a lone checkpoint."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    descriptors = [p for p in files if _is_descriptor(p)]
    if len(descriptors) == 1:
        return descriptors[0]
    if len(descriptors) > 1:
        raise CheckpointError(
            f"the folder holds several bag files ({summarise([p.name for p in descriptors])})",
            path=folder,
            hint="pass the path of the bag file you want",
        )
    singles = [p for p in files if any(_suffix(p) in f.suffixes for f in FAMILIES.values())]
    if len(singles) == 1:
        return singles[0]
    if not singles:
        raise CheckpointError(
            "the folder holds no model: no bag yaml and no checkpoint file",
            path=folder,
            hint="expected " + "; or ".join(f.hint for f in FAMILIES.values() if f.hint),
        )
    raise CheckpointError(
        f"the folder holds several checkpoints ({summarise([p.name for p in singles])}) and no bag file",
        path=folder,
        hint="pass the path of one checkpoint, or add a bag yaml listing them",
    )


def _to_device(bag, device: Any) -> None:
    import torch

    if isinstance(device, str):
        if device == "auto":
            from ..engine import resolve_device

            device = resolve_device("auto")
        else:
            device = torch.device(device)
    for member in bag.models:
        member.to(device)


__all__: List[str] = ["Family", "EntryRule", "FAMILIES", "register", "unregister", "names", "get", "resolve",
                      "load_model", "load_spec", "load_local", "summarise"]
