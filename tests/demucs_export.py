"""Test helper: write reference Demucs models in the published Hugging Face format.

The official export (demucs' `tools/export_hf.py`) turns a reference model
package into `<sig>.safetensors` with string metadata `klass` (dotted class
path), `args` and `kwargs` (JSON, Fractions as tagged objects) and, for
diffq-quantized packages, `structure` (the nested state as tagged JSON). Plain
packages hold the `state_dict()` in float16 (`get_state(..., half=True)`).
A bag is `<name>.yaml` with `models`, optional `weights` and `segment`.

This module re-creates those files from reference (`demucs`) model instances so
that tests can check our loader against what the reference would read. Test-only:
it imports the oracles (demucs, optionally diffq).
"""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import yaml

SOURCES = ["drums", "bass", "other", "vocals"]


# ---------------------------------------------------------------- tiny reference models


def tiny_htdemucs(sources: Sequence[str] = SOURCES, seed: int = 0, **overrides):
    """A few-thousand-parameter reference HTDemucs (8 kHz, 0.5 s segment)."""
    from demucs.htdemucs import HTDemucs

    kwargs = dict(channels=4, depth=2, nfft=256, t_layers=1, t_heads=2, t_hidden_scale=1.0,
                  dconv_comp=2, freq_emb=0.0, samplerate=8000, segment=Fraction(1, 2))
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return HTDemucs(sources=list(sources), **kwargs).eval()


def tiny_hdemucs(sources: Sequence[str] = SOURCES, seed: int = 0, **overrides):
    """A small reference HDemucs (8 kHz, 1 s segment)."""
    from demucs.hdemucs import HDemucs

    kwargs = dict(channels=4, depth=3, nfft=256, dconv_comp=2, samplerate=8000, segment=1)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return HDemucs(sources=list(sources), **kwargs).eval()


def tiny_demucs(sources: Sequence[str] = SOURCES, seed: int = 0, **overrides):
    """A small reference Demucs v2 (8 kHz, 1 s segment). `sources` is passed positionally,
    so its export has a non-empty `args` list."""
    from demucs.demucs import Demucs

    kwargs = dict(channels=4, depth=3, lstm_layers=1, samplerate=8000, segment=1)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return Demucs(list(sources), **kwargs).eval()


# ---------------------------------------------------------------- the export format


def _json_default(value: Any) -> Any:
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    return str(value)


def flatten_state(state: Any) -> Tuple[Dict[str, torch.Tensor], Any]:
    """A nested state -> (flat tensors keyed by dotted position, tagged-JSON structure)."""
    tensors: Dict[str, torch.Tensor] = {}

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().clone().contiguous()
            return {"_tensor": key}
        if isinstance(value, dict):
            return {"_dict": [[k, walk(v, f"{key}.{k}")] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            tag = "_tuple" if isinstance(value, tuple) else "_list"
            return {tag: [walk(v, f"{key}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, type):
            return {"_class": f"{value.__module__}.{value.__qualname__}"}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"cannot export {key} of type {type(value)}")

    return tensors, walk(state, "state")


def model_package(model, quantizer=None) -> dict:
    """The reference's serialized package (what `serialize_model` builds, minus training args)."""
    from demucs.states import get_state

    args, kwargs = model._init_args_kwargs
    return {"klass": type(model), "args": list(args), "kwargs": dict(kwargs),
            "state": get_state(model, quantizer, half=True)}


def package_to_file(package: dict, path: Path) -> None:
    """Write a reference package as the official exporter converts it."""
    from safetensors.torch import save_file

    klass = package["klass"]
    metadata = {
        "klass": f"{klass.__module__}.{klass.__qualname__}",
        "args": json.dumps(package["args"], default=_json_default),
        "kwargs": json.dumps(package["kwargs"], default=_json_default),
    }
    state = package["state"]
    if state.get("__quantized"):
        tensors, structure = flatten_state(state)
        metadata["structure"] = json.dumps(structure)
    else:
        tensors = {k: v.contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata=metadata)


def export_model(model, folder, *, quantizer=None, sig: Optional[str] = None) -> str:
    """Export a reference model to `folder/<sig>.safetensors`, return `sig`.

    `quantizer`: a diffq quantizer attached to `model` (exports the packed
    quantized state, as for mdx_q). Without `sig`, it is the first 8 hex digits
    of the file's sha256 (the official signatures hash the original package).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / ".export.tmp"
    package_to_file(model_package(model, quantizer), scratch)
    if sig is None:
        sig = hashlib.sha256(scratch.read_bytes()).hexdigest()[:8]
    scratch.replace(folder / f"{sig}.safetensors")
    return sig


def write_bag_yaml(folder, name: str, sigs: Sequence[str], weights=None, segment=None) -> Path:
    """Write `<folder>/<name>.yaml` as in demucs' remote bag files."""
    data: Dict[str, Any] = {"models": [str(s) for s in sigs]}
    if weights is not None:
        data["weights"] = [[float(w) for w in row] for row in weights]
    if segment is not None:
        data["segment"] = segment
    path = Path(folder) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, default_flow_style=None))
    return path


def export_bag(models, weights, segment, folder, name: str, *, quantizers=None) -> Path:
    """Export each reference model and a bag yaml listing them; return the yaml path.

    `quantizers`: None, or one diffq quantizer (or None) per model.
    """
    quantizers = quantizers or [None] * len(models)
    sigs: List[str] = [export_model(m, folder, quantizer=q) for m, q in zip(models, quantizers)]
    return write_bag_yaml(folder, name, sigs, weights=weights, segment=segment)


# ---------------------------------------------------------------- the tests' runnable model


@functools.lru_cache(maxsize=None)
def _tiny_model_file() -> Tuple[str, bytes]:
    """(sig, file bytes) of the shared tiny model, built and exported once per session."""
    with torch.random.fork_rng(), tempfile.TemporaryDirectory() as scratch:
        # fork_rng: building seeds torch's global generator; callers keep their own state.
        sig = export_model(tiny_htdemucs(seed=3), scratch)
        return sig, (Path(scratch) / f"{sig}.safetensors").read_bytes()


def export_tiny(folder, name: str = "tiny") -> Path:
    """The tests' one tiny *runnable* model (a `tiny_htdemucs`, 8 kHz, 4 stems), written
    as an official one-model bag: `folder/<name>.yaml` + `folder/<sig>.safetensors`.
    Every test that needs a real model to run gets this same file; return the yaml path."""
    sig, data = _tiny_model_file()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{sig}.safetensors").write_bytes(data)
    return write_bag_yaml(folder, name, [sig])


def reference_classes() -> Dict[str, type]:
    """The klass-string table pointing at the reference classes (to test the format alone)."""
    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs

    return {"demucs.htdemucs.HTDemucs": HTDemucs, "demucs.hdemucs.HDemucs": HDemucs,
            "demucs.demucs.Demucs": Demucs}
