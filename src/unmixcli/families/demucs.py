"""The Demucs family (v2, v3 hybrid, v4 hybrid transformer; diffq-quantized too).

Demucs weights are published on the Hugging Face Hub as one folder per named
model: a bag file `<name>.yaml` (member signatures, per-stem weights, segment)
and one `<sig>.safetensors` per member. Each safetensors file carries, in its
string metadata:

- `klass`: the dotted name of the reference class that produced it, e.g.
  `demucs.htdemucs.HTDemucs`. We only use it as a key into `MODEL_CLASSES`,
  our allow-list; nothing is ever imported by a name read from a file.
- `args` / `kwargs`: JSON constructor arguments. Fractions (the 39/5 s segment
  of HTDemucs) are objects `{"_type": "fraction", "numerator", "denominator"}`.
- `structure` (diffq-quantized models only): the nested packed state as JSON,
  with tensors referred to by their key in the file.

Plain files store `state_dict()` tensors in float16; we load them into float32
parameters with a strict key and shape check. Quantized files are unpacked and
dequantized here with numpy/torch; the `diffq` package is never imported.

Contract: Demucs' chunking (triangle window, overlap 0.25, the mix
standardised); HTDemucs runs on at most its trained window ("max"), the others
on any segment with the context their `valid_length` asks for ("free").
"""

from __future__ import annotations

import inspect
import json
import warnings
from dataclasses import dataclass, field
from fnmatch import fnmatch
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import yaml
from torch import nn

from ..errors import CheckpointError
from ..models.bag import Contract, ModelBag
from . import summarise as _summarise

PathLike = Union[str, Path]

# --------------------------------------------------------------------------------------
# The allow-list of model classes.
# --------------------------------------------------------------------------------------

HTDEMUCS_KLASS = "demucs.htdemucs.HTDemucs"
HDEMUCS_KLASS = "demucs.hdemucs.HDemucs"
DEMUCS_KLASS = "demucs.demucs.Demucs"


def _htdemucs_class() -> type:
    from ..models.htdemucs import HTDemucs

    return HTDemucs


def _hdemucs_class() -> type:
    from ..models.hdemucs import HDemucs

    return HDemucs


def _demucs_class() -> type:
    from ..models.demucs import Demucs

    return Demucs


class _LazyClassTable(Mapping):
    """A read-only `klass string -> our class` mapping that imports on first use.

    The architectures are heavy modules (and written separately); importing them
    lazily keeps `import unmixcli.checkpoints` cheap and lets this module work
    with whichever of them exist.
    """

    def __init__(self, factories: Mapping[str, Callable[[], type]]):
        self._factories = dict(factories)

    def __getitem__(self, key: str) -> type:
        return self._factories[key]()

    def __contains__(self, key: object) -> bool:
        # Membership must not import anything (Mapping's default would call __getitem__).
        return key in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __len__(self) -> int:
        return len(self._factories)


#: klass strings found in published files -> our implementation of that class.
MODEL_CLASSES: Mapping[str, type] = _LazyClassTable(
    {
        HTDEMUCS_KLASS: _htdemucs_class,
        HDEMUCS_KLASS: _hdemucs_class,
        DEMUCS_KLASS: _demucs_class,
    }
)

# Classes trained on a fixed-length window (the transformer's positional range):
# a bag-level segment may shorten their segment but never lengthen it, as the
# reference's bag does.
_SEGMENT_IS_MAXIMUM = frozenset({HTDEMUCS_KLASS})

# Quantizers whose packed state we know how to read.
_DIFFQ_KLASS = "diffq.diffq.DiffQuantizer"

_DEMUCS_HINT = "re-download the model, or check that the file is an official Demucs export"


# --------------------------------------------------------------------------------------
# Safetensors files with Demucs metadata.
# --------------------------------------------------------------------------------------


@dataclass
class _RawCheckpoint:
    """What a Demucs safetensors file holds, decoded but not yet applied to a model."""

    path: Path
    klass: str
    args: list
    kwargs: dict
    tensors: Dict[str, torch.Tensor]
    structure: Any = None  # parsed JSON of the `structure` key, if any


def _read_safetensors(path: Path) -> Tuple[Dict[str, str], Dict[str, torch.Tensor]]:
    """Metadata and all tensors of a safetensors file (CPU, stored dtypes)."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(
            "checkpoint file not found", path=path, hint="re-download the model or check the folder"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types, and OSError
        raise CheckpointError(
            f"not a readable safetensors file ({exc})",
            path=path,
            hint="the file is damaged or incomplete; delete it and download it again",
        ) from exc
    return metadata, tensors


def _json_object_hook(obj: dict) -> Any:
    # The exporter writes Fraction values as tagged objects; everything else is plain JSON.
    if obj.get("_type") == "fraction":
        return Fraction(int(obj["numerator"]), int(obj["denominator"]))
    return obj


def _metadata_json(metadata: Mapping[str, str], key: str, path: Path, default: Any) -> Any:
    if key not in metadata:
        return default
    try:
        return json.loads(metadata[key], object_hook=_json_object_hook)
    except (ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        raise CheckpointError(
            f"metadata field {key!r} is not valid JSON ({exc})", path=path, hint=_DEMUCS_HINT
        ) from exc


def _read_demucs_file(path: Path) -> _RawCheckpoint:
    metadata, tensors = _read_safetensors(path)
    klass = metadata.get("klass")
    if not klass:
        raise CheckpointError(
            "metadata has no 'klass' entry, so the model class is unknown",
            path=path,
            hint="only Demucs safetensors exports (with klass/args/kwargs metadata) can be loaded this way",
        )
    args = _metadata_json(metadata, "args", path, [])
    kwargs = _metadata_json(metadata, "kwargs", path, {})
    if not isinstance(args, list):
        raise CheckpointError("metadata field 'args' is not a JSON list", path=path, hint=_DEMUCS_HINT)
    if not isinstance(kwargs, dict):
        raise CheckpointError("metadata field 'kwargs' is not a JSON object", path=path, hint=_DEMUCS_HINT)
    structure = None
    if "structure" in metadata:
        try:
            structure = json.loads(metadata["structure"])
        except ValueError as exc:
            raise CheckpointError(
                f"metadata field 'structure' is not valid JSON ({exc})", path=path, hint=_DEMUCS_HINT
            ) from exc
    return _RawCheckpoint(path, klass, args, kwargs, tensors, structure)


def _build_model(raw: _RawCheckpoint, classes: Mapping[str, type]) -> nn.Module:
    """Instantiate our class for `raw.klass` with the stored constructor arguments."""
    if raw.klass not in classes:
        raise CheckpointError(
            f"unknown model class {raw.klass!r}",
            path=raw.path,
            hint="supported classes: " + ", ".join(sorted(classes)),
        )
    try:
        klass = classes[raw.klass]
    except ImportError as exc:
        raise CheckpointError(
            f"model class {raw.klass!r} is not available in this installation ({exc})",
            path=raw.path,
            hint="reinstall unmix; this model family should be part of it",
        ) from exc

    kwargs = dict(raw.kwargs)
    params = inspect.signature(klass).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_any:
        # Older exports carry arguments that later versions of the class dropped;
        # the reference ignores them with a warning, and so do we.
        unknown = [key for key in kwargs if key not in params]
        for key in unknown:
            del kwargs[key]
        if unknown:
            warnings.warn(
                f"{raw.path}: ignoring constructor argument(s) {', '.join(unknown)} "
                f"that {klass.__name__} does not take",
                stacklevel=3,
            )
    try:
        return klass(*raw.args, **kwargs)
    except Exception as exc:  # bad argument values surface as any exception type
        raise CheckpointError(
            f"could not build {klass.__name__} from the stored arguments ({type(exc).__name__}: {exc})",
            path=raw.path,
            hint=_DEMUCS_HINT,
        ) from exc


def _load_plain_state(model: nn.Module, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Copy a flat `state_dict`-style mapping into `model`, strictly.

    Every key must be present with the right shape; stored float16 values are
    widened to the model's dtype (float32) on the way in.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = [
        f"{key} {tuple(tensors[key].shape)} != {tuple(expected[key].shape)}"
        for key in expected
        if key in tensors and tensors[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_summarise(missing)}")
    if extra:
        problems.append(f"unexpected tensors: {_summarise(extra)}")
    if wrong:
        problems.append(f"wrong shapes: {_summarise(wrong)}")
    if problems:
        raise CheckpointError(
            "weights do not fit the model described by its metadata; " + "; ".join(problems),
            path=path,
            hint="the file does not match its own klass/kwargs metadata: " + _DEMUCS_HINT,
        )
    state = {}
    for key, target in expected.items():
        value = tensors[key]
        if value.is_floating_point() and target.is_floating_point():
            value = value.to(target.dtype)
        state[key] = value
    model.load_state_dict(state, strict=True)


def load_demucs_safetensors(
    path: PathLike, *, classes: Optional[Mapping[str, type]] = None
) -> nn.Module:
    """Load one Demucs-family model from a `<sig>.safetensors` export.

    Args:
        path: the safetensors file.
        classes: the `klass -> class` allow-list to use; `MODEL_CLASSES` by default.
            (Tests pass other tables to check the format against reference classes.)

    Returns:
        our module, float32, in eval mode, on the CPU. Its forward maps
        `[B, C, T]` to `[B, S, C, T]`.
    """
    model, _ = _load_demucs_member(Path(path), classes)
    return model


def _load_demucs_member(path: Path, classes: Optional[Mapping[str, type]]) -> Tuple[nn.Module, str]:
    raw = _read_demucs_file(path)
    model = _build_model(raw, MODEL_CLASSES if classes is None else classes)
    model = model.float()
    if raw.structure is None:
        _load_plain_state(model, raw.tensors, path)
    else:
        state = _unflatten(raw.structure, raw.tensors, path)
        if isinstance(state, dict) and state.get("__quantized"):
            restore_diffq_state(model, state, path=path)
        elif isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
            _load_plain_state(model, state, path)
        else:
            raise CheckpointError(
                "the 'structure' metadata describes neither a quantized state nor a state dict",
                path=path,
                hint=_DEMUCS_HINT,
            )
    model.eval()
    return model, raw.klass


# --------------------------------------------------------------------------------------
# Nested states (the `structure` metadata key).
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassRef:
    """A class named inside a nested state (e.g. the quantizer). Kept as a name only."""

    name: str


def _unflatten(structure: Any, tensors: Mapping[str, torch.Tensor], path: Path) -> Any:
    """Rebuild the nested state that `structure` describes.

    Tagged JSON objects stand for containers: `{"_tensor": key}` (a tensor of the
    file), `{"_dict": [[key, node], ...]}` (an ordered dict; JSON object keys
    would have been strings only), `{"_list": [...]}`, `{"_tuple": [...]}` and
    `{"_class": "dotted.name"}` (returned as a `ClassRef`, never imported).
    Scalars and null stand for themselves.
    """

    def bad(message: str) -> CheckpointError:
        return CheckpointError(f"invalid 'structure' metadata: {message}", path=path, hint=_DEMUCS_HINT)

    def build(node: Any) -> Any:
        if isinstance(node, list):
            raise bad("bare JSON list (containers must be tagged)")
        if not isinstance(node, dict):
            return node
        if len(node) != 1:
            raise bad(f"node with keys {sorted(node)}")
        (tag, value), = node.items()
        if tag == "_tensor":
            if value not in tensors:
                raise bad(f"refers to tensor {value!r}, which the file does not hold (truncated export?)")
            return tensors[value]
        if tag == "_dict":
            if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
                raise bad("'_dict' is not a list of [key, value] pairs")
            return {key: build(item) for key, item in value}
        if tag == "_list":
            return [build(item) for item in _as_list(value, tag)]
        if tag == "_tuple":
            return tuple(build(item) for item in _as_list(value, tag))
        if tag == "_class":
            return ClassRef(str(value))
        raise bad(f"unknown tag {tag!r}")

    def _as_list(value: Any, tag: str) -> list:
        if not isinstance(value, list):
            raise bad(f"{tag!r} does not hold a list")
        return value

    return build(structure)


# --------------------------------------------------------------------------------------
# diffq packed states.
# --------------------------------------------------------------------------------------
#
# A diffq-quantized state is positional: it lists values for the model's
# parameters in `named_modules()` / `named_parameters(recurse=False)` order,
# split into three lists by size. Parameters with more than
# `min_size * 2**20 // 4` entries are "quantized": cut into groups of
# `group_size` consecutive values, each group with its own bit width b, each
# value stored as an integer level in [0, 2**b - 1] mapped linearly onto the
# tensor's [min, max]. Smaller parameters are stored raw ("others", float32) or
# as float16 when the quantizer was built with float16=True.
#
# Packed form of one quantized parameter: (levels_by_width, (min, max), widths)
# where `widths` holds the per-group bit width minus `min_bits`, bit-packed, and
# levels_by_width[w - 1] holds, bit-packed on w bits, the levels of all groups of
# width w (in group order), or None when no group has that width.


@dataclass(frozen=True)
class _DiffqSettings:
    """The quantizer arguments that decide the layout (diffq's own defaults otherwise)."""

    min_size: float = 0.01
    float16: bool = False
    group_size: int = 1
    min_bits: int = 2
    exclude: Tuple[str, ...] = ()
    detect_bound: bool = True

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], path: Path) -> "_DiffqSettings":
        init = meta.get("init_kwargs") or {}
        if not isinstance(init, dict):
            raise CheckpointError("diffq metadata 'init_kwargs' is not a mapping", path=path, hint=_DEMUCS_HINT)
        try:
            return cls(
                min_size=float(init.get("min_size", cls.min_size)),
                float16=bool(init.get("float16", cls.float16)),
                group_size=int(init.get("group_size", cls.group_size)),
                min_bits=int(init.get("min_bits", cls.min_bits)),
                exclude=tuple(str(p) for p in (init.get("exclude") or ())),
                detect_bound=bool(init.get("detect_bound", cls.detect_bound)),
            )
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"bad diffq settings ({exc})", path=path, hint=_DEMUCS_HINT) from exc


def _diffq_partition(
    model: nn.Module, settings: _DiffqSettings
) -> Tuple[List[Tuple[str, nn.Parameter]], List[Tuple[str, nn.Parameter]]]:
    """Split the model's parameters into (quantized, small), in state order.

    Order and dedup follow the quantizer: modules in `named_modules()` order,
    each module's own parameters in registration order; a parameter shared by
    several modules counts once when `detect_bound` is on.
    """
    threshold = settings.min_size * 2**20 // 4
    quantized: List[Tuple[str, nn.Parameter]] = []
    small: List[Tuple[str, nn.Parameter]] = []
    seen = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if settings.detect_bound and id(param) in seen:
                continue
            seen.add(id(param))
            # diffq matches patterns against "<module>.<param>" (a leading dot at the root) or the bare name.
            full_name = f"{module_name}.{name}"
            excluded = any(fnmatch(full_name, p) or fnmatch(name, p) for p in settings.exclude)
            qualified = f"{module_name}.{name}" if module_name else name
            if param.numel() <= threshold or excluded:
                small.append((qualified, param))
            else:
                quantized.append((qualified, param))
    return quantized, small


def _unpack_blocks(packed: torch.Tensor, length: int) -> np.ndarray:
    """Unpack diffq's default (Cython) layout into `length` non-negative integers.

    `packed` is int64 `[L, nbits, 32]`, read as uint64 words. Value number
    `line * 2048 + k * 32 + j` keeps its bit `b` at bit `k` of word
    `[line, b, j]`: one word holds the same bit of 64 values spaced 32 apart.
    """
    if packed.dtype != torch.int64 or packed.dim() != 3:
        raise ValueError(f"expected an int64 [L, nbits, 32] packed tensor, got {packed.dtype} {tuple(packed.shape)}")
    words = packed.detach().cpu().contiguous().numpy().view(np.uint64)
    lines, nbits, block = words.shape
    capacity = lines * 64 * block
    if length > capacity:
        raise ValueError(f"needs {length} values but the packed tensor holds only {capacity}")
    # Spread every word into its 64 bits with one vectorised call (much faster
    # than shifting uint64 arrays 64 times): little-endian bytes, low bit first.
    raw = np.ascontiguousarray(words.astype("<u8", copy=False)).view(np.uint8)  # [L, nbits, 32 * 8]
    bits = np.unpackbits(raw, axis=-1, bitorder="little").reshape(lines, nbits, block, 64)  # [L, nbits, j, k]
    out = np.zeros((lines, block, 64), dtype=np.uint16)  # [L, j, k]; values have at most 15 bits
    for bit in range(nbits):
        out |= bits[:, bit].astype(np.uint16) << bit
    return out.transpose(0, 2, 1).reshape(-1)[:length]  # value order: line, k, j


def _unpack_planes(packed: torch.Tensor, length: int) -> np.ndarray:
    """Unpack diffq's pure-torch (`torch_pack=True`) layout.

    `packed` is `[nbits, G]` of an integer storage type with W bits; value number
    `k * G + g` has its bit `b` at bit `k` of `packed[b, g]`.
    """
    array = packed.detach().cpu().contiguous().numpy()
    if array.ndim != 2 or array.dtype.kind not in "iu":
        raise ValueError(f"expected a 2-d integer packed tensor, got {array.dtype} {array.shape}")
    width = array.dtype.itemsize * 8
    words = array.view(np.dtype(f"u{array.dtype.itemsize}"))
    nbits, groups = words.shape
    if length > width * groups:
        raise ValueError(f"needs {length} values but the packed tensor holds only {width * groups}")
    shifts = np.arange(width, dtype=words.dtype)[:, None]  # [W, 1]
    out = np.zeros((width, groups), dtype=np.int32)  # [W, G] -> value order k, g
    for bit in range(nbits):
        out |= ((words[bit][None, :] >> shifts) & 1).astype(np.int32) << bit
    return out.reshape(-1)[:length]


def _check_widths(widths: np.ndarray) -> None:
    if widths.size and (widths.min() < 1 or widths.max() > 15):
        raise ValueError(f"bit widths {int(widths.min())}..{int(widths.max())} are outside 1..15")


def _dequantize(
    param: torch.Tensor,
    entry: Any,
    settings: _DiffqSettings,
    packed: bool,
    unpack: Callable[[torch.Tensor, int], np.ndarray],
) -> torch.Tensor:
    """Float32 values of one quantized parameter, shaped like `param`.

    Raises ValueError with a short reason when `entry` does not fit `param`.
    """
    numel = param.numel()
    group = settings.group_size if settings.group_size > 0 else numel
    if numel % group:
        raise ValueError(f"{numel} values do not split into groups of {group}")
    n_groups = numel // group
    if not isinstance(entry, tuple) or len(entry) != 3:
        raise ValueError("entry is not a (levels, (min, max), bits) triple")
    levels_part, scales, widths_part = entry
    if not isinstance(scales, (tuple, list)) or len(scales) != 2:
        raise ValueError("range is not a (min, max) pair")
    low, high = float(scales[0]), float(scales[1])

    if packed:
        widths = unpack(widths_part, n_groups).astype(np.int64) + settings.min_bits  # [n]
        _check_widths(widths)
        if not isinstance(levels_part, (list, tuple)):
            raise ValueError("packed levels are not a list")
        # The levels of each width are stored back to back in group order, so
        # concatenating the chunks by width gives the groups sorted (stably) by
        # width; one scatter puts them back in place.
        counts = np.bincount(widths, minlength=16)
        chunks = []
        for width in np.flatnonzero(counts).tolist():
            chunk = levels_part[width - 1] if width - 1 < len(levels_part) else None
            if chunk is None:
                raise ValueError(f"{counts[width]} groups of bit width {width} have no stored levels")
            chunk_levels = unpack(chunk, int(counts[width]) * group)
            if int(chunk_levels.max()) >= 1 << width:
                raise ValueError(f"levels stored for {width}-bit groups do not fit in {width} bits")
            chunks.append(chunk_levels.reshape(-1, group))
        levels = np.empty((n_groups, group), dtype=np.int32)  # [n, g]
        # uint8 keys let numpy use its radix sort for the stable argsort.
        levels[np.argsort(widths.astype(np.uint8), kind="stable")] = np.concatenate(chunks)
    else:
        widths = widths_part.detach().cpu().numpy().astype(np.int64).reshape(-1)
        levels = levels_part.detach().cpu().numpy().astype(np.int64).reshape(n_groups, group)
        if widths.shape[0] != n_groups:
            raise ValueError(f"{widths.shape[0]} bit widths for {n_groups} groups")
        _check_widths(widths)

    # Same float32 arithmetic, in the same order, as the quantizer, so that the
    # result is bit-identical: level * (1 / (2**bits - 1)) * (max - min) + min.
    bits = torch.from_numpy(widths).float()[:, None]  # [n, 1]
    step = 1 / (2**bits - 1)
    values = torch.from_numpy(levels).float() * step * (high - low) + low  # [n, g]
    return values.view(param.shape)


def restore_diffq_state(model: nn.Module, state: Mapping[str, Any], *, path: Optional[PathLike] = None) -> None:
    """Write a diffq quantized state (packed or not) into `model`'s parameters.

    Args:
        model: the freshly built model; its parameter order defines the state's layout.
        state: the nested state rebuilt from a file (`quantized`, `float16`,
            `others`, `meta` entries).
        path: the file, for error messages.
    """
    where = Path(path) if path is not None else None

    def fail(message: str) -> CheckpointError:
        return CheckpointError(
            f"diffq-quantized weights do not fit the model: {message}", path=where, hint=_DEMUCS_HINT
        )

    meta = state.get("meta") or {}
    quantizer = meta.get("klass")
    quantizer_name = quantizer.name if isinstance(quantizer, ClassRef) else quantizer
    if quantizer_name is not None and quantizer_name != _DIFFQ_KLASS:
        raise CheckpointError(
            f"unsupported quantizer {quantizer_name!r}", path=where, hint=f"only {_DIFFQ_KLASS} states can be read"
        )
    settings = _DiffqSettings.from_meta(meta, where)
    packed = bool(meta.get("packed", False))
    unpack = _unpack_planes if meta.get("torch_pack", False) else _unpack_blocks

    quantized, small = _diffq_partition(model, settings)
    q_values = list(state.get("quantized") or [])
    f16_values = list(state.get("float16") or [])
    other_values = list(state.get("others") or [])
    small_values = f16_values if settings.float16 else other_values
    if len(q_values) != len(quantized):
        raise fail(f"{len(q_values)} quantized tensors stored, the model has {len(quantized)}")
    if len(small_values) != len(small) or (f16_values and other_values):
        raise fail(f"{len(f16_values) + len(other_values)} small tensors stored, the model has {len(small)}")

    with torch.no_grad():
        for (name, param), entry in zip(quantized, q_values):
            try:
                value = _dequantize(param, entry, settings, packed, unpack)
            except (ValueError, TypeError, AttributeError) as exc:
                raise fail(f"{name}: {exc}") from exc
            param.copy_(value)
        for (name, param), value in zip(small, small_values):
            if not isinstance(value, torch.Tensor) or value.numel() != param.numel():
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise fail(f"{name}: stored {shape}, expected {tuple(param.shape)}")
            param.copy_(value.reshape(param.shape).to(param.dtype))


# --------------------------------------------------------------------------------------
# Bags and local paths.
# --------------------------------------------------------------------------------------

_BAG_HINT = "a bag file lists 'models: [sig, ...]' with optional 'weights' (one row per model) and 'segment'"


@dataclass
class _BagSpec:
    path: Path
    signatures: List[str]
    weights: Optional[List[List[float]]] = None
    segment: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)


def _yaml_where(exc: Exception) -> str:
    """' at line N' for a YAML error that knows where it is (YAML's own text spans several lines)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f" at line {mark.line + 1}" if mark is not None else ""


def _read_bag_yaml(path: Path) -> _BagSpec:
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError as exc:
        raise CheckpointError("bag file not found", path=path, hint="check the path, or download the model again") from exc
    except yaml.constructor.ConstructorError as exc:
        # e.g. !!python/object tags: safe_load refuses to build Python objects from a file.
        raise CheckpointError(f"bag file uses a YAML tag that is not allowed{_yaml_where(exc)} ({exc.problem})",
                              path=path, hint=_BAG_HINT) from exc
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CheckpointError(f"bag file is not valid YAML{_yaml_where(exc)}: {problem}", path=path,
                              hint=_BAG_HINT) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read the bag file ({exc})", path=path, hint=_BAG_HINT) from exc
    if not isinstance(data, dict) or "models" not in data:
        raise CheckpointError("bag file has no 'models' list", path=path, hint=_BAG_HINT)
    models = data["models"]
    if not isinstance(models, list) or not models:
        raise CheckpointError("'models' is not a non-empty list", path=path, hint=_BAG_HINT)
    signatures = []
    for sig in models:
        if isinstance(sig, (bool, float, dict, list)) or sig is None:
            raise CheckpointError(f"model signature {sig!r} is not a name", path=path, hint=_BAG_HINT)
        sig = str(sig)
        # Signatures become file names: keep them inside the bag's folder.
        if not sig or "/" in sig or "\\" in sig or sig.startswith("."):
            raise CheckpointError(f"model signature {sig!r} is not a plain file name", path=path, hint=_BAG_HINT)
        signatures.append(sig)

    weights = data.get("weights")
    if weights is not None:
        ok = isinstance(weights, list) and all(
            isinstance(row, list) and all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in row)
            for row in weights
        )
        if not ok or len(weights) != len(signatures):
            raise CheckpointError(
                f"'weights' must be a list of {len(signatures)} rows of numbers, one per model",
                path=path,
                hint=_BAG_HINT,
            )
        weights = [[float(w) for w in row] for row in weights]

    segment = data.get("segment")
    if segment is not None:
        if isinstance(segment, bool) or not isinstance(segment, (int, float)) or not segment > 0:
            raise CheckpointError(
                f"'segment' must be a positive number of seconds, not {segment!r}", path=path, hint=_BAG_HINT
            )
    extra = {k: v for k, v in data.items() if k not in ("models", "weights", "segment")}
    return _BagSpec(path, signatures, weights, segment, extra)


def _member_file(folder: Path, sig: str) -> Path:
    """The checkpoint file of bag member `sig`."""
    return folder / f"{sig}.safetensors"


def _contract(model: nn.Module, klass: str) -> Contract:
    """What the engine needs to run one Demucs member, from the built model."""
    return Contract(
        samplerate=int(model.samplerate),
        channels=int(model.audio_channels),
        sources=tuple(model.sources),
        segment=float(model.segment),
        # HTDemucs' transformer has a fixed positional range: it pads to its trained window.
        segment_rule="max" if klass in _SEGMENT_IS_MAXIMUM else "free",
        window="triangle",
        normalize=True,
        overlap=0.25,
        # Demucs v2 asks for context (its valid_length); v3 has none, v4 pads to its window.
        input_length=getattr(model, "valid_length", None),
        # bench_engine: HTDemucs ~1.8x faster in bf16 on a CPU with AVX-512 BF16/AMX, at
        # museval-level agreement; the convolutional v2/v3 were not measured, so auto keeps fp32.
        auto_bf16=klass == HTDEMUCS_KLASS,
    )


def load_bag(yaml_path: PathLike, *, classes: Optional[Mapping[str, type]] = None) -> ModelBag:
    """Load a bag file `<name>.yaml` and each member checkpoint found beside it.

    The bag's `segment`, when given, is written into each member as the
    reference does: it replaces the member's own segment, except that a model
    trained on a fixed window (HTDemucs) is never given a longer one.

    Returns:
        a `ModelBag` named after the yaml file, with weights `[M, S]` (all ones
        when the file has none) and `segment` as in the file.
    """
    path = Path(yaml_path)
    spec = _read_bag_yaml(path)
    files = [_member_file(path.parent, sig) for sig in spec.signatures]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise CheckpointError(
            f"bag member file(s) missing: {_summarise(absent)}",
            path=path,
            hint=f"the files listed in {path.name} must be in the same folder; download the model again",
        )

    models, contracts = [], []
    for file in files:
        model, klass = _load_demucs_member(file, classes)
        if spec.segment is not None:
            current = getattr(model, "segment", None)
            if klass not in _SEGMENT_IS_MAXIMUM or current is None or spec.segment <= current:
                model.segment = spec.segment
        models.append(model)
        contracts.append(_contract(model, klass))

    n_sources = len(models[0].sources)
    weights = spec.weights if spec.weights is not None else [[1.0] * n_sources for _ in models]
    bad_rows = [i for i, row in enumerate(weights) if len(row) != n_sources]
    if bad_rows:
        raise CheckpointError(
            f"'weights' rows must have {n_sources} entries (one per stem: {', '.join(models[0].sources)})",
            path=path,
            hint=_BAG_HINT,
        )
    totals = torch.tensor(weights).sum(0)
    if (totals == 0).any():
        dead = [s for s, t in zip(models[0].sources, totals.tolist()) if t == 0]
        raise CheckpointError(
            f"no model has a non-zero weight for stem(s) {', '.join(dead)}",
            path=path,
            hint="every stem needs at least one model with a non-zero weight in 'weights'",
        )
    try:
        return ModelBag(models=models, weights=torch.tensor(weights), segment=spec.segment, name=path.stem,
                        extra=spec.extra, contracts=contracts)
    except ValueError as exc:  # members disagree on stems, rate or channels
        raise CheckpointError(
            f"bag members do not fit together: {exc}",
            path=path,
            hint="all models of a bag must produce the same stems at the same sample rate",
        ) from exc


def _single_file_bag(path: Path, classes: Optional[Mapping[str, type]] = None) -> ModelBag:
    model, klass = _load_demucs_member(path, classes)
    return ModelBag.single(model, name=path.stem, contracts=[_contract(model, klass)])


def accepts(path: Path) -> bool:
    """Whether a YAML file is a bag file (a `models` list), not some other family's config.

    A file that is not YAML at all is reported (what is wrong, and where): found in a
    model folder it was meant to describe the model, and "no model here" would hide why.
    """
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except (OSError, UnicodeDecodeError, yaml.constructor.ConstructorError):
        return False  # tags (MSST's !!python/tuple) are for the other family's loader to judge
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CheckpointError(f"not valid YAML{_yaml_where(exc)}: {problem}", path=path,
                              hint="fix or remove the file; " + _BAG_HINT) from exc
    return isinstance(data, dict) and "models" in data


def load_local(path: Path, stems=None, *, classes: Optional[Mapping[str, type]] = None) -> ModelBag:
    """A bag yaml with its members beside it, or one `.safetensors` export (a bag of one).

    Every member computes every stem, so `stems` changes nothing here (the engine
    skips the members whose weights are zero for the stems asked for).
    """
    del stems
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return load_bag(path, classes=classes)
    return _single_file_bag(path, classes)


def load_spec(spec: Any, folder: Path, stems=None) -> ModelBag:
    """Registry entry `spec`: its bag file (`spec.bag`) and members, downloaded into `folder`."""
    del stems
    return load_bag(folder / spec.bag)
