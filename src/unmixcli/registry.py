"""The model registry: `models.yaml` plus the user's own registry files.

A registry file maps model names to entries that say where the weights live on
the Hugging Face Hub (repo, revision, files, optional sha256 pins), what the
model produces (stems, sample rate) and what a user should know before picking
it (size, licence, published SDR, a one-line description).

Files are read in this order, later entries replacing earlier ones by name:

1. the built-in `models.yaml` (inside the wheel; the repo root in a checkout),
2. `<user config dir>/unmix/models.yaml` (`$XDG_CONFIG_HOME` honoured),
3. the files in `$UNMIX_REGISTRY` (separated by `os.pathsep`),
4. the files given with `--registry` (`extra_files`).

This module must stay cheap to import: `unmix models list` uses it and must
not import torch.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import yaml

from . import families
from .errors import ModelNotFoundError, RegistryError
REGISTRY_ENV = "UNMIX_REGISTRY"
SCHEMA_VERSION = 1

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# torch.hub names a file `<name>-<first hex digits of its sha256>.<ext>`; eight or more digits pin it.
_HASH_PREFIX_RE = re.compile(r"^[0-9a-f]{8,63}$")
_URL_RE = re.compile(r"^https?://[^\s/]+/\S*$")

_ENTRY_KEYS = {
    "family", "description", "repo", "revision", "files", "bag", "config", "checkpoint", "arch",
    "stems", "sample_rate", "download_size", "quantized", "licence", "licence_note", "sdr", "extra",
    "purpose",
}

#: What a model is for (`purpose`), in the order `unmix models list` groups them, with titles.
PURPOSES: Dict[str, str] = {
    "4-stem": "4 stems (drums, bass, other, vocals)",
    "6-stem": "6 stems (+ guitar, piano)",
    "vocals": "vocals / instrumental",
    "karaoke": "karaoke (lead / backing vocals)",
    "restoration": "de-reverb, denoise, crowd removal",
    "dialogue": "dialogue / music / effects",
    "speech": "speech",
    "other": "other",
}


def purpose_from_stems(stems: Sequence[str]) -> str:
    """The purpose of an entry that names none, from its stems."""
    names = {s.lower() for s in stems}
    if names & {"dialog", "dialogue"} or {"speech", "music"} <= names:
        return "dialogue"
    if "speech" in names:
        return "speech"
    if len(names) == 6 and {"guitar", "piano"} <= names:
        return "6-stem"
    if {"drums", "bass", "other", "vocals"} <= names:
        return "4-stem"
    if names & {"vocals", "instrumental"}:
        return "vocals"
    return "other"
_FILE_KEYS = {"name", "size", "sha256", "hash_prefix", "url"}
_SDR_KEYS = {"value", "dataset", "source", "stems", "note"}
_TOP_KEYS = {"version", "default", "models", "ensembles"}
_ENSEMBLE_KEYS = {"description", "models", "algorithm", "weights", "stems", "purpose", "sdr", "note"}


@dataclass(frozen=True)
class FileSpec:
    """One file of a model: from the entry's Hub repo, or from `url` when given.

    `size` (bytes), `sha256` and `hash_prefix` (the leading hex digits of the
    sha256, as a torch.hub file name carries them) are pins when given. A URL
    file has one of the two hashes, or says `sha256: unpublished` (`trust_first`):
    no hash is published for it (most GitHub release files), so the sha256 of the
    first complete download is recorded and every later use is checked against it.
    """

    name: str
    size: Optional[int] = None
    sha256: Optional[str] = None
    url: Optional[str] = None
    hash_prefix: Optional[str] = None
    trust_first: bool = False


@dataclass(frozen=True)
class SdrInfo:
    """A published score: mean SDR in dB on `dataset`, as reported by `source`."""

    value: Optional[float]
    dataset: str
    source: str
    stems: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    note: Optional[str] = None


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry, validated. Immutable."""

    name: str
    family: str
    description: str
    repo: Optional[str]  # the Hugging Face repo; None when every file has its own URL
    revision: str
    files: Tuple[FileSpec, ...]
    stems: Tuple[str, ...]
    sample_rate: int
    licence: str
    bag: Optional[str] = None
    config: Any = None  # a file name among `files`, or an inline mapping (RoFormers)
    checkpoint: Optional[str] = None
    arch: Optional[str] = None
    download_size: Optional[int] = None
    quantized: Optional[str] = None  # None, or the scheme ("diffq")
    licence_note: Optional[str] = None
    sdr: Optional[SdrInfo] = None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    source: Optional[str] = None  # the registry file this entry came from
    purpose: str = "other"  # a key of PURPOSES

    @property
    def filenames(self) -> Tuple[str, ...]:
        return tuple(f.name for f in self.files)

    def file(self, name: str) -> FileSpec:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-friendly view (used by `unmix models list --json` / `info`)."""
        sdr = None
        if self.sdr is not None:
            sdr = {
                "value": self.sdr.value,
                "dataset": self.sdr.dataset,
                "source": self.sdr.source,
                "stems": dict(self.sdr.stems),
                "note": self.sdr.note,
            }
        config = dict(self.config) if isinstance(self.config, Mapping) else self.config
        return {
            "name": self.name,
            "family": self.family,
            "description": self.description,
            "repo": self.repo,
            "revision": self.revision,
            "purpose": self.purpose,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256, "url": f.url,
                       "hash_prefix": f.hash_prefix, "trust_first": f.trust_first} for f in self.files],
            "bag": self.bag,
            "config": config,
            "checkpoint": self.checkpoint,
            "arch": self.arch,
            "stems": list(self.stems),
            "sample_rate": self.sample_rate,
            "download_size": self.download_size,
            "quantized": self.quantized,
            "licence": self.licence,
            "licence_note": self.licence_note,
            "sdr": sdr,
            "source": self.source,
        }


class Registry:
    """Named model specs, after merging every registry file (later files win)."""

    def __init__(self, specs: Mapping[str, ModelSpec], default: Optional[str], sources: Sequence[str],
                 ensembles: Mapping[str, "EnsembleSpec"] = MappingProxyType({})):
        self._specs: Dict[str, ModelSpec] = dict(specs)
        self.default = default
        self.sources = tuple(sources)
        #: preset name -> EnsembleSpec (the `ensembles:` sections, later files win)
        self.ensembles: Dict[str, EnsembleSpec] = dict(ensembles)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def names(self) -> List[str]:
        return list(self._specs)

    def get(self, name: str) -> ModelSpec:
        """The entry called `name`; ModelNotFoundError naming the closest names otherwise."""
        spec = self._specs.get(name)
        if spec is not None:
            return spec
        if name in self.ensembles:
            raise ModelNotFoundError(f"'{name}' is an ensemble preset, not a model",
                                     hint="run it with -m " + name + " (unmix separate), not here")
        raise ModelNotFoundError(f"unknown model '{name}'", hint=self._not_found_hint(name))

    def close_matches(self, name: str, n: int = 3) -> List[str]:
        by_lower = {k.lower(): k for k in list(self._specs) + list(self.ensembles)}
        hits = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.6)
        return [by_lower[h] for h in hits]

    def _not_found_hint(self, name: str) -> str:
        parts = []
        close = self.close_matches(name)
        if close:
            parts.append("did you mean " + ", ".join(close) + "?")
        looks_like_path = os.sep in name or "/" in name or Path(name).suffix in {
            ".safetensors", ".yaml", ".yml", ".ckpt", ".th", ".pth"
        }
        if looks_like_path:
            parts.append(f"no file or folder '{name}' exists either.")
        parts.append("`unmix models list` shows every model.")
        return " ".join(parts)


# --------------------------------------------------------------------------- loading


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate keys (a silent override is almost always a typo)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` is resolved by the base class; merged keys may be overridden
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def builtin_registry_path() -> Path:
    """`models.yaml` shipped in the wheel, or the repo-root copy in an editable install."""
    packaged = Path(__file__).resolve().parent / "models.yaml"
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "models.yaml"


def user_registry_path() -> Path:
    """`<user config dir>/unmix/models.yaml` (need not exist)."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg:
        base = Path(xdg)
    elif sys.platform == "win32" and os.environ.get("APPDATA"):
        base = Path(os.environ["APPDATA"])
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path.home() / ".config"
    return base / "unmix" / "models.yaml"


def registry_files(extra_files: Iterable[os.PathLike | str] = (), *, include_user: bool = True) -> List[Path]:
    """Every registry file to read, in override order (see the module docstring)."""
    files = [builtin_registry_path()]
    if include_user:
        user = user_registry_path()
        if user.is_file():
            files.append(user)
        env = os.environ.get(REGISTRY_ENV, "")
        for part in env.split(os.pathsep):
            if part.strip():
                files.append(Path(part.strip()).expanduser())
    files.extend(Path(f).expanduser() for f in extra_files)
    return files


def load_registry(extra_files: Iterable[os.PathLike | str] = (), *, include_user: bool = True) -> Registry:
    """Read and validate every registry file; raise RegistryError naming file, entry and field."""
    specs: Dict[str, ModelSpec] = {}
    ensembles: Dict[str, EnsembleSpec] = {}
    default: Optional[str] = None
    sources = []
    for path in registry_files(extra_files, include_user=include_user):
        file_default, file_specs, file_presets = _parse_file(path)
        for spec in file_specs:
            specs.pop(spec.name, None)  # re-insert so an override keeps its new position last
            specs[spec.name] = spec
            ensembles.pop(spec.name, None)  # one name, one meaning: the later file's
        for preset in file_presets:
            ensembles.pop(preset.name, None)
            ensembles[preset.name] = preset
            specs.pop(preset.name, None)
        if file_default is not None:
            default = file_default
        sources.append(str(path))
    if default is not None and default not in specs and default not in ensembles:
        raise RegistryError(f"the default model '{default}' has no entry", path=sources[-1])
    for preset in ensembles.values():
        # Members are checked once every file is read: a user file may add them.
        for member in preset.models:
            if member not in specs:
                raise RegistryError(f"ensemble '{preset.name}': member '{member}' has no model entry",
                                    path=preset.source, hint="add the model, or fix the member's name")
    return Registry(specs, default, sources, ensembles)


def load_registry_file(path: os.PathLike | str) -> Tuple[Optional[str], List[ModelSpec]]:
    """Parse one registry file: `(default name or None, [ModelSpec...])`."""
    default, specs, _ = _parse_file(path)
    return default, specs


def _parse_file(path: os.PathLike | str) -> Tuple[Optional[str], List[ModelSpec], List["EnsembleSpec"]]:
    """One registry file: its default, its model entries and its ensemble presets."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError("registry file not found", path=path, hint="check the --registry / UNMIX_REGISTRY path")
    except OSError as exc:
        raise RegistryError(f"cannot read registry file ({exc.strerror or exc})", path=path)
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: plain data only
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise RegistryError(f"invalid YAML{where}: {problem}", path=path)
    if data is None:
        return None, [], []
    if not isinstance(data, dict):
        raise RegistryError("a registry file must be a mapping with a 'models' key", path=path)
    # Top-level keys starting with "_" hold YAML anchors shared by entries (`<<: *name`).
    unknown = {k for k in data if not (isinstance(k, str) and k.startswith("_"))} - _TOP_KEYS
    if unknown:
        raise RegistryError(f"unknown top-level key(s): {', '.join(sorted(map(str, unknown)))}", path=path)
    version = data.get("version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise RegistryError(f"unsupported registry version {version!r} (expected {SCHEMA_VERSION})", path=path)
    models = data.get("models") or {}
    if not isinstance(models, dict):
        raise RegistryError("'models' must map model names to entries", path=path)
    specs = [_parse_entry(name, entry, path) for name, entry in models.items()]
    default = data.get("default")
    if default is not None and not isinstance(default, str):
        raise RegistryError("'default' must be a model name", path=path)
    return default, specs, _parse_ensembles(data.get("ensembles") or {}, path)


@dataclass(frozen=True)
class EnsembleSpec:
    """A named ensemble (registry `ensembles:` section): members run on the same input, each
    stem combined by `algorithm` (ensemble.py) with `weights`."""

    name: str
    description: str
    models: Tuple[str, ...]
    algorithm: str
    weights: Optional[Tuple[float, ...]]
    stems: Tuple[str, ...]
    purpose: str
    sdr: Optional[SdrInfo] = None
    note: Optional[str] = None
    source: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name, "ensemble": True, "description": self.description, "models": list(self.models),
            "algorithm": self.algorithm, "weights": None if self.weights is None else list(self.weights),
            "stems": list(self.stems), "purpose": self.purpose, "note": self.note, "source": self.source,
            "sdr": None if self.sdr is None else {"value": self.sdr.value, "dataset": self.sdr.dataset,
                                                  "source": self.sdr.source, "stems": dict(self.sdr.stems),
                                                  "note": self.sdr.note},
        }


def _parse_ensembles(raw_all: Any, path: Path) -> List[EnsembleSpec]:
    """A file's `ensembles:` section: preset name -> {description, models, algorithm, weights,
    stems, purpose, sdr, note}; members are checked against the merged models later."""
    if not isinstance(raw_all, dict):
        raise RegistryError("'ensembles' must map preset names to entries", path=path)
    presets: List[EnsembleSpec] = []
    if not raw_all:
        return presets
    from . import ensemble_rules as ensemble  # torch-free: models list must not import torch
    from .errors import UsageError

    for name, raw in raw_all.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise RegistryError(f"invalid ensemble name {name!r}", path=path)
        if not isinstance(raw, dict):
            raise RegistryError(f"ensemble '{name}': the entry must be a mapping of fields", path=path)
        e = _Entry(name, raw, path)
        unknown = set(raw) - _ENSEMBLE_KEYS
        if unknown:
            raise e.fail(sorted(map(str, unknown))[0], "unknown field")
        members = raw.get("models")
        if (not isinstance(members, list) or len(members) < 2
                or not all(isinstance(m, str) and _NAME_RE.match(m) for m in members)):
            raise e.fail("models", "must list two or more model names")
        algorithm = e.str_("algorithm", required=True)
        weights = raw.get("weights")
        try:
            checked = ensemble.check_weights(algorithm, len(members), weights)
        except UsageError as exc:  # reworded for a file: which entry, which field
            raise e.fail("weights" if weights is not None and algorithm in ensemble.ALGORITHMS else "algorithm",
                         exc.message)
        stems = raw.get("stems")
        if not isinstance(stems, list) or not stems or not all(isinstance(x, str) and x for x in stems):
            raise e.fail("stems", "must list the stems the preset is for")
        purpose = raw.get("purpose") or purpose_from_stems(stems)
        if purpose not in PURPOSES:
            raise e.fail("purpose", f"must be one of {', '.join(PURPOSES)}, got {purpose!r}")
        presets.append(EnsembleSpec(
            name=name, description=e.str_("description", required=True), models=tuple(members),
            algorithm=algorithm, weights=None if checked is None else tuple(checked), stems=tuple(stems),
            purpose=purpose, sdr=_parse_sdr(e, list(stems)), note=e.str_("note"), source=str(path)))
    return presets


# --------------------------------------------------------------------------- validation


class _Entry:
    """Field access with errors that name the file, the entry and the field."""

    def __init__(self, name: str, raw: Dict[str, Any], path: Path):
        self.name, self.raw, self.path = name, raw, path

    def fail(self, key: str, problem: str) -> RegistryError:
        return RegistryError(f"model '{self.name}': field '{key}': {problem}", path=self.path)

    def str_(self, key: str, required: bool = False, default: Optional[str] = None) -> Optional[str]:
        value = self.raw.get(key)
        if value is None:
            if required:
                raise self.fail(key, "is required")
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        return value.strip()

    def int_(self, key: str, value: Any = None, what: str = "a positive integer") -> Optional[int]:
        if value is None:
            value = self.raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.fail(key, f"must be {what}, got {value!r}")
        return value


def _parse_entry(name: Any, raw: Any, path: Path) -> ModelSpec:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RegistryError(
            f"invalid model name {name!r} (letters, digits, '_', '-', '.', starting with a letter or digit)",
            path=path,
        )
    if not isinstance(raw, dict):
        raise RegistryError(f"model '{name}': the entry must be a mapping of fields", path=path)
    e = _Entry(name, raw, path)
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        key = sorted(map(str, unknown))[0]
        close = difflib.get_close_matches(key, sorted(_ENTRY_KEYS), n=1)
        raise e.fail(key, "unknown field" + (f" (did you mean '{close[0]}'?)" if close else ""))

    family = e.str_("family", default="demucs")
    if family not in families.FAMILIES:
        raise e.fail("family", f"must be one of {', '.join(families.names())}, got {family!r}")
    rule = families.FAMILIES[family].entry
    description = e.str_("description", required=True)
    repo = e.str_("repo")
    if repo is not None and not _REPO_RE.match(repo):
        raise e.fail("repo", f"must be a Hugging Face repo id 'owner/name', got {repo!r}")
    raw_files = raw.get("files")
    all_urls = isinstance(raw_files, list) and bool(raw_files) and all(
        isinstance(f, dict) and f.get("url") is not None for f in raw_files)
    if repo is None and not all_urls:
        raise e.fail("repo", "is required (unless every file has its own 'url')")
    files = _parse_files(e)
    names = [f.name for f in files]
    revision = e.str_("revision", default="main")

    stems_raw = raw.get("stems")
    if not isinstance(stems_raw, list) or not stems_raw or not all(isinstance(s, str) and s for s in stems_raw):
        raise e.fail("stems", "must be a non-empty list of stem names")
    if len(set(stems_raw)) != len(stems_raw):
        raise e.fail("stems", "lists a stem twice")

    sample_rate = e.int_("sample_rate") or 44100
    download_size = e.int_("download_size", what="a size in bytes")

    quantized_raw = raw.get("quantized", False)
    if quantized_raw is False or quantized_raw is None:
        quantized = None
    elif isinstance(quantized_raw, str) and quantized_raw.strip():
        quantized = quantized_raw.strip()
    else:
        raise e.fail("quantized", f"must be false or the scheme's name (e.g. diffq), got {quantized_raw!r}")

    licence = e.str_("licence", required=True)
    licence_note = e.str_("licence_note")
    arch = e.str_("arch")

    archs = families.FAMILIES[family].archs
    if arch is not None and archs and arch not in archs:
        raise e.fail("arch", f"must be one of {', '.join(archs)}, got {arch!r}")
    bag, config, checkpoint = _family_fields(e, rule, names)

    sdr = _parse_sdr(e, list(stems_raw))

    extra = raw.get("extra") or {}
    if not isinstance(extra, dict):
        raise e.fail("extra", "must be a mapping")
    purpose = raw.get("purpose")
    if purpose is None:
        purpose = purpose_from_stems(stems_raw)
    elif purpose not in PURPOSES:
        raise e.fail("purpose", f"must be one of {', '.join(PURPOSES)}, got {purpose!r}")

    return ModelSpec(
        name=name,
        family=family,
        description=description,
        repo=repo,
        revision=revision,
        files=tuple(files),
        stems=tuple(stems_raw),
        sample_rate=sample_rate,
        licence=licence,
        bag=bag,
        config=config,
        checkpoint=checkpoint,
        arch=arch,
        download_size=download_size,
        quantized=quantized,
        licence_note=licence_note,
        sdr=sdr,
        extra=MappingProxyType(dict(extra)),
        source=str(path),
        purpose=purpose,
    )


_WEIGHT_SUFFIXES = (".ckpt", ".safetensors", ".pth", ".th", ".bin")


def _family_fields(e: _Entry, rule: "families.EntryRule", names: List[str]) -> Tuple[Optional[str], Any, Optional[str]]:
    """(bag, config, checkpoint) of an entry, checked against its family's `EntryRule`."""
    bag = e.str_("bag")
    config = e.raw.get("config")
    checkpoint = e.str_("checkpoint")
    for key, wanted in (("bag", rule.bag), ("config", rule.config != "none"), ("checkpoint", rule.checkpoint)):
        if not wanted and e.raw.get(key) is not None:
            raise e.fail(key, f"is not used by the {e.raw.get('family', 'demucs')} family")
    if rule.bag:
        if bag is None:
            bag = f"{e.name}.yaml"
        if bag not in names:
            raise e.fail("bag", f"'{bag}' is not one of the entry's files")
    if rule.weight_suffixes and not any(n.endswith(rule.weight_suffixes) for n in names):
        raise e.fail("files", f"needs at least one {' or '.join(rule.weight_suffixes)} file")
    if rule.config == "required" and config is None:
        raise e.fail("config", "is required (a config file name among 'files', or a mapping)")
    if rule.config == "mapping" and not isinstance(config, dict):
        raise e.fail("config", "must be a mapping of hyper-parameters")
    if isinstance(config, str):
        if config not in names:
            raise e.fail("config", f"'{config}' is not one of the entry's files")
    elif isinstance(config, dict):
        config = MappingProxyType(dict(config))
    elif config is not None:
        raise e.fail("config", "must be a file name or a mapping of hyper-parameters")
    if rule.checkpoint:
        if checkpoint is None:
            weights = [n for n in names if n.endswith(_WEIGHT_SUFFIXES)]
            if len(weights) != 1:
                raise e.fail("checkpoint", "is required when the files do not hold exactly one checkpoint")
            checkpoint = weights[0]
        elif checkpoint not in names:
            raise e.fail("checkpoint", f"'{checkpoint}' is not one of the entry's files")
    return bag, config, checkpoint


def _parse_files(e: _Entry) -> List[FileSpec]:
    raw = e.raw.get("files")
    if not isinstance(raw, list) or not raw:
        raise e.fail("files", "must be a non-empty list of file names (or {name, size, sha256, url} mappings)")
    files = []
    for i, item in enumerate(raw):
        key = f"files[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise e.fail(key, "must be a file name or a {name, size, sha256, url} mapping")
        unknown = set(item) - _FILE_KEYS
        if unknown:
            raise e.fail(key, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        fname = item.get("name")
        if not isinstance(fname, str) or not fname or fname.startswith("/") or ".." in fname.split("/"):
            raise e.fail(key, f"'name' must be a relative file path inside the repo, got {fname!r}")
        size = e.int_(f"{key}.size", item.get("size"), what="a size in bytes")
        sha = item.get("sha256")
        trust_first = sha == "unpublished"
        if trust_first:
            sha = None
        if sha is not None:
            if not isinstance(sha, str) or not _SHA256_RE.match(sha.lower()):
                raise e.fail(f"{key}.sha256", "must be a full sha256 (64 hex digits)")
            sha = sha.lower()
        prefix = item.get("hash_prefix")
        if prefix is not None:
            if not isinstance(prefix, str) or not _HASH_PREFIX_RE.match(prefix.lower()):
                raise e.fail(f"{key}.hash_prefix", "must be 8 to 63 hex digits of the file's sha256")
            prefix = prefix.lower()
            if sha is not None and not sha.startswith(prefix):
                raise e.fail(f"{key}.hash_prefix", "does not match the file's sha256")
        url = item.get("url")
        if url is not None:
            if not isinstance(url, str) or not _URL_RE.match(url):
                raise e.fail(f"{key}.url", f"must be an http(s) URL, got {url!r}")
            if sha is None and prefix is None and not trust_first:
                raise e.fail(key, "a file with a URL needs a 'sha256' (or the torch.hub 'hash_prefix', "
                                  "or 'sha256: unpublished' where none is published)")
        elif trust_first:
            raise e.fail(f"{key}.sha256", "'unpublished' is for URL files (Hub files have the Hub's own hash)")
        files.append(FileSpec(name=fname, size=size, sha256=sha, url=url, hash_prefix=prefix,
                              trust_first=trust_first))
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise e.fail("files", "lists a file twice")
    return files


def _parse_sdr(e: _Entry, stems: List[str]) -> Optional[SdrInfo]:
    raw = e.raw.get("sdr")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise e.fail("sdr", "must be a mapping with value, dataset and source")
    unknown = set(raw) - _SDR_KEYS
    if unknown:
        raise e.fail("sdr", f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    value = raw.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise e.fail("sdr.value", f"must be a number in dB (or null), got {value!r}")
    for key in ("dataset", "source"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise e.fail(f"sdr.{key}", "is required (where the score comes from)")
    per_stem = raw.get("stems") or {}
    if not isinstance(per_stem, dict):
        raise e.fail("sdr.stems", "must map stem names to dB")
    for stem, v in per_stem.items():
        if stem not in stems:
            raise e.fail("sdr.stems", f"'{stem}' is not one of the model's stems")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise e.fail("sdr.stems", f"'{stem}' must be a number in dB")
    note = raw.get("note")
    if note is not None and not isinstance(note, str):
        raise e.fail("sdr.note", "must be a string")
    return SdrInfo(
        value=None if value is None else float(value),
        dataset=raw["dataset"].strip(),
        source=raw["source"].strip(),
        stems=MappingProxyType({k: float(v) for k, v in per_stem.items()}),
        note=note,
    )
