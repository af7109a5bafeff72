"""The MDX-Net family: UVR's MDX-Net `.onnx` models (KUIELab's ConvTDFNet), run in torch.

Published files, read as data:

* the ONNX file UVR downloads (`UVR-MDX-NET-*.onnx`, `Kim_Vocal_*.onnx`, ...): the
  spectrogram network only, input `[B, 4, dim_f, dim_t]`. Its weights are the
  graph's initializers (and Constant nodes), read with the `onnx` package; no
  ONNX runtime runs. Which weight is which follows the graph: its nodes are
  walked in order (Conv, ConvTranspose, MatMul / Gemm with their bias Add,
  BatchNormalization), and the network's shape (g, levels, l, k, bn, bias) is
  derived from that sequence, so exports that fold BatchNorms into convs or
  name their tensors otherwise load the same.
* what the file does not say (n_fft, dim_t, compensation, primary stem) comes
  from UVR's model-data table (`unmixcli/data/uvr_mdx_model_data.json`, sources
  named in it), keyed by UVR's hash of the file (`uvr_hash`).

The stems are UVR's (separate.py, SeperateMDX): primary = compensate * the
network's estimate, secondary = mix - primary, named as UVR's table and
audio-separator name them (Vocals <-> Instrumental, otherwise "<stem>" <->
"No <stem>"), lower case with "_" for spaces. The chunking is audio-separator's
MDX separator's (segment size dim_t, overlap 0.25, batch 1, hop 1024), run
inside the model on the whole segment the engine hands over: the contract asks
for `SEGMENT` seconds, so a track up to that long is demixed exactly as the
reference does; a longer one is cut there (no cross-fade, overlap 0) and each
part demixed on its own.

Registry entries: `checkpoint` is the .onnx file; an inline `config` mapping
states the row (keys it leaves out come from UVR's table by the file's hash) with the table's own keys
(compensate, mdx_dim_f_set, mdx_dim_t_set (log2), mdx_n_fft_scale_set,
primary_stem) and may set `overlap` (inside demix) and `denoise` (bool).
Local files: a JSON file given with `--model-params`, else a `<file stem>.json` beside it,
else the table's row for the file's hash (each row with the same keys).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, UsageError
from ..models.bag import Contract, ModelBag
from ..models.mdxnet import ConvReLU, ConvTDFConfig, ConvTDFNet, LinearNormReLU, MDXNet, MDXNetSeparator

#: UVR hashes the last this many bytes of a model file (the whole file when it is smaller).
HASH_BYTES = 10000 * 1024
#: UVR's and audio-separator's STFT hop for every MDX-Net model.
HOP = 1024
SAMPLERATE = 44100
#: Seconds per engine segment: every track up to this long is demixed whole, as the reference does.
SEGMENT = 1200.0
#: audio-separator's MDX defaults (mdx_params): overlap inside demix, and whether to denoise.
OVERLAP = 0.25
DENOISE = False
ROW_KEYS = ("compensate", "mdx_dim_f_set", "mdx_dim_t_set", "mdx_n_fft_scale_set", "primary_stem")
#: audio-separator's pairs; any other stem's complement is "No <stem>".
_PAIRS = {"Vocals": "Instrumental", "Instrumental": "Vocals"}


@dataclass(frozen=True)
class ModelData:
    """One row of UVR's table."""

    compensate: float
    dim_f: int
    dim_t: int
    n_fft: int
    primary_stem: str

    @property
    def secondary_stem(self) -> str:
        if self.primary_stem in _PAIRS:
            return _PAIRS[self.primary_stem]
        if self.primary_stem.startswith("No "):
            return self.primary_stem[3:]
        return "No " + self.primary_stem


def uvr_hash(path: Path) -> str:
    """UVR's md5 of a model file: of its last HASH_BYTES bytes, or all of it when smaller."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size >= HASH_BYTES:
            f.seek(size - HASH_BYTES)
        return hashlib.md5(f.read()).hexdigest()


@lru_cache(maxsize=1)
def _table() -> Dict[str, Dict[str, Any]]:
    text = resources.files("unmixcli").joinpath("data/uvr_mdx_model_data.json").read_text(encoding="utf-8")
    return json.loads(text)["models"]


def model_data(digest: str) -> Optional[ModelData]:
    """UVR's parameters of the model with this hash, or None."""
    row = _table().get(digest)
    return None if row is None else _row(row, "UVR's table")


def _row(row: Any, where: str, path: Optional[Path] = None) -> ModelData:
    """A table row (UVR's keys) as ModelData; CheckpointError naming `where` when malformed."""
    missing = [k for k in ROW_KEYS if not isinstance(row, dict) or k not in row]
    if missing:
        raise CheckpointError(f"{where} lacks {', '.join(missing)}", path=path,
                              hint="give " + ", ".join(ROW_KEYS) + " as UVR's model_data.json does")
    try:
        return ModelData(compensate=float(row["compensate"]), dim_f=int(row["mdx_dim_f_set"]),
                     dim_t=2 ** int(row["mdx_dim_t_set"]), n_fft=int(row["mdx_n_fft_scale_set"]),
                         primary_stem=str(row["primary_stem"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} has a malformed value ({exc})", path=path) from exc


# --------------------------------------------------------------------------------------
# Reading the ONNX graph.
# --------------------------------------------------------------------------------------


@dataclass
class _Layer:
    """A weighted node of the graph, with the BatchNormalization that follows it (if any)."""

    kind: str  # "conv", "convT" or "linear"
    weight: np.ndarray  # conv: [O, I, kh, kw]; convT: [I, O, kh, kw]; linear: [out, in]
    bias: Optional[np.ndarray]
    node: str
    strides: Tuple[int, ...] = (1, 1)
    pads: Tuple[int, ...] = (0, 0, 0, 0)
    norm: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]] = None  # scale, B, mean, var, eps


def _import_onnx(path: Path):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise UsageError("reading an MDX-Net .onnx file needs the `onnx` package",
                         path=path, hint="pip install 'unmixcli[uvr]' (or pip install onnx)") from exc
    return onnx, numpy_helper


def read_graph_layers(path: Path) -> Tuple[List[_Layer], Tuple[Optional[int], ...]]:
    """The weighted layers of an ONNX file in graph order, and its first input's shape (None: symbolic)."""
    onnx, numpy_helper = _import_onnx(path)
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / ValueError / OSError for bad files
        raise CheckpointError(f"not a readable ONNX file ({type(exc).__name__})", path=path) from exc
    graph = model.graph
    consts: Dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    layers: List[_Layer] = []
    producer: Dict[str, int] = {}  # tensor name -> index of the layer whose (biased) output it is

    def attrs(node) -> Dict[str, Any]:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def const(name: str) -> Optional[np.ndarray]:
        return consts.get(name) if name else None

    for node in graph.node:
        op, a = node.op_type, attrs(node)
        if op == "Constant" and "value" in a:
            consts[node.output[0]] = numpy_helper.to_array(a["value"])
        elif op == "Identity" and node.input[0] in consts:
            # torch's exporter shares equal tensors through Identity nodes.
            consts[node.output[0]] = consts[node.input[0]]
        elif op == "Cast" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]  # fp16 exports: read in float32 below
        elif op == "Transpose" and node.input[0] in consts:
            consts[node.output[0]] = np.transpose(consts[node.input[0]], a.get("perm"))
        elif op in ("Conv", "ConvTranspose"):
            w = const(node.input[1])
            if w is None or w.ndim != 4:
                raise CheckpointError(f"node {node.name or op}: a {op} whose weight is not a 4-d constant",
                                      path=path, hint="not an MDX-Net (ConvTDFNet) export")
            if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
                raise CheckpointError(f"node {node.name or op}: grouped or dilated {op}", path=path,
                                      hint="not an MDX-Net (ConvTDFNet) export")
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise CheckpointError(f"node {node.name or op}: auto_pad is not supported", path=path)
            bias = const(node.input[2]) if len(node.input) > 2 else None
            layers.append(_Layer("conv" if op == "Conv" else "convT", w, bias, node.name or op,
                                 strides=tuple(a.get("strides", [1, 1])), pads=tuple(a.get("pads", [0, 0, 0, 0]))))
            producer[node.output[0]] = len(layers) - 1
        elif op == "MatMul" and node.input[1] in consts:
            layers.append(_Layer("linear", consts[node.input[1]].T, None, node.name or op))
            producer[node.output[0]] = len(layers) - 1
        elif op == "Gemm" and node.input[1] in consts:
            if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
                raise CheckpointError(f"node {node.name or op}: a scaled or transposed Gemm", path=path)
            w = consts[node.input[1]]
            bias = const(node.input[2]) if len(node.input) > 2 else None
            layers.append(_Layer("linear", w if a.get("transB", 0) else w.T, bias, node.name or op))
            producer[node.output[0]] = len(layers) - 1
        elif op == "Add" and (node.input[0] in producer or node.input[1] in producer):
            # A linear map's bias: the producer's output plus a constant vector.
            src, other = (node.input[0], node.input[1]) if node.input[0] in producer else (node.input[1], node.input[0])
            layer = layers[producer[src]]
            if other in consts and layer.kind == "linear" and layer.bias is None and layer.norm is None:
                layer.bias = consts[other].reshape(-1)
                producer[node.output[0]] = producer[src]
        elif op == "BatchNormalization":
            if node.input[0] not in producer:
                raise CheckpointError(f"node {node.name or op}: a BatchNormalization after no conv or linear map",
                                      path=path, hint="not an MDX-Net (ConvTDFNet) export")
            layer = layers[producer[node.input[0]]]
            scale, shift, mean, var = (consts.get(n) for n in node.input[1:5])
            if any(v is None for v in (scale, shift, mean, var)):
                raise CheckpointError(f"node {node.name or op}: BatchNormalization parameters are not constants",
                                      path=path)
            layer.norm = (scale, shift, mean, var, float(a.get("epsilon", 1e-5)))
    dims: Tuple[Optional[int], ...] = ()
    inputs = [i for i in graph.input if i.name not in consts]
    if inputs:
        dims = tuple(d.dim_value if d.HasField("dim_value") else None
                     for d in inputs[0].type.tensor_type.shape.dim)
    return layers, dims


def infer_config(layers: List[_Layer], path: Path) -> ConvTDFConfig:
    """The network's shape from its layer sequence (checked layer by layer when loading)."""
    bad = "not an MDX-Net (ConvTDFNet) export"
    if len(layers) < 4 or layers[0].kind != "conv":
        raise CheckpointError("the graph does not start with a conv", path=path, hint=bad)
    g, dim_c = layers[0].weight.shape[:2]
    l = 0
    while 1 + l < len(layers) and layers[1 + l].kind == "conv" and tuple(layers[1 + l].strides) == (1, 1):
        l += 1
    tdf = 0
    while 1 + l + tdf < len(layers) and layers[1 + l + tdf].kind == "linear":
        tdf += 1
    if l == 0 or tdf not in (1, 2):
        raise CheckpointError(f"the first block has {l} convs and {tdf} linear maps", path=path, hint=bad)
    k = layers[1].weight.shape[-1]
    first_linear = layers[1 + l]
    dim_f = first_linear.weight.shape[1]
    bn = 0 if tdf == 1 else dim_f // first_linear.weight.shape[0]
    n = sum(layer.kind == "convT" for layer in layers)
    try:
        return ConvTDFConfig(dim_c=int(dim_c), dim_f=int(dim_f), g=int(g), n=int(n), l=l, k=int(k), bn=int(bn),
                             bias=first_linear.bias is not None)
    except ValueError as exc:
        raise CheckpointError(str(exc), path=path, hint=bad) from exc


def _check_shape(param: torch.Tensor, value: np.ndarray, where: str, path: Path) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise CheckpointError(f"{where}: a tensor of shape {tuple(value.shape)} where the network has "
                              f"{tuple(param.shape)}", path=path, hint="not an MDX-Net (ConvTDFNet) export")


def _put(param: torch.Tensor, value: np.ndarray, where: str, path: Path) -> None:
    _check_shape(param, value, where, path)
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.array(value, dtype=np.float32)))  # a copy: onnx arrays are read-only


def _affine(layer: _Layer, channels: int, where: str, path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """The layer's BatchNorm as a per-channel scale and shift [channels] (1 and 0 without one)."""
    if layer.norm is None:
        return np.ones(channels, np.float64), np.zeros(channels, np.float64)
    scale, shift, mean, var, eps = (np.asarray(v, np.float64).reshape(-1) for v in layer.norm)
    if not scale.shape == shift.shape == mean.shape == var.shape == (channels,):
        raise CheckpointError(f"{where}: a norm of {scale.size} channels where the network has {channels}",
                              path=path, hint="not an MDX-Net (ConvTDFNet) export")
    s = scale / np.sqrt(var + eps)
    return s, shift - mean * s


def load_network(path: Path) -> Tuple[ConvTDFNet, Tuple[Optional[int], ...]]:
    """The ConvTDFNet of an ONNX file (eval mode), and the file's input shape. Each BatchNorm
    the exporter left after a conv is folded into it here (see models/mdxnet.py)."""
    layers, dims = read_graph_layers(path)
    net = ConvTDFNet(infer_config(layers, path)).eval()
    slots = net.layers()
    if len(slots) != len(layers):
        raise CheckpointError(f"the graph has {len(layers)} weighted layers, a ConvTDFNet of its shape "
                              f"{len(slots)}", path=path, hint="not an MDX-Net (ConvTDFNet) export")
    for i, (slot, layer) in enumerate(zip(slots, layers)):
        where = f"layer {i} (node {layer.node})"
        if isinstance(slot, LinearNormReLU):
            expected, module = "linear", slot
        else:
            module = slot.conv if isinstance(slot, ConvReLU) else slot
            expected = "convT" if isinstance(module, nn.ConvTranspose2d) else "conv"
        if layer.kind != expected:
            raise CheckpointError(f"{where} is a {layer.kind} where a ConvTDFNet has a {expected}", path=path,
                                  hint="not an MDX-Net (ConvTDFNet) export")
        if layer.norm is not None and slot is net.final:
            raise CheckpointError(f"{where}: a norm after the final conv", path=path,
                                  hint="not an MDX-Net (ConvTDFNet) export")
        if layer.bias is not None and expected == "linear" and not slot.has_bias:
            raise CheckpointError(f"{where}: a bias where the network has none", path=path)
        _check_shape(module.weight, layer.weight, where, path)  # before folding, which broadcasts
        out = module.weight.shape[1 if expected == "convT" else 0]
        bias = np.zeros(out) if layer.bias is None else np.asarray(layer.bias, np.float64).reshape(-1)
        if bias.shape != (out,):
            raise CheckpointError(f"{where}: a bias of {bias.size} values for {out} outputs", path=path,
                                  hint="not an MDX-Net (ConvTDFNet) export")
        if expected == "linear":
            _put(slot.weight, layer.weight, where, path)
            scale, shift = _affine(layer, slot.scale.shape[0], where, path)
            _put(slot.scale, scale, f"{where}'s norm", path)
            _put(slot.shift_t, shift[None, :] + bias[:, None] * scale[None, :], f"{where}'s norm", path)
            continue
        want_pads = (module.padding[0], module.padding[1]) * 2
        if tuple(layer.strides) != tuple(module.stride) or tuple(layer.pads) != want_pads:
            raise CheckpointError(f"{where}: strides {layer.strides} / pads {layer.pads} differ from a "
                                  "ConvTDFNet's", path=path, hint="not an MDX-Net (ConvTDFNet) export")
        scale, shift = _affine(layer, out, where, path)
        # W s per output channel: dim 0 of a conv's [O, I, kh, kw], dim 1 of a transposed conv's [I, O, kh, kw].
        view = (1, -1, 1, 1) if expected == "convT" else (-1, 1, 1, 1)
        _put(module.weight, np.asarray(layer.weight, np.float64) * scale.reshape(view), where, path)
        _put(module.bias, bias * scale + shift, where, path)
    return net, dims


# --------------------------------------------------------------------------------------
# Building the model and the family's entry points.
# --------------------------------------------------------------------------------------


def stem_name(uvr_name: str) -> str:
    """UVR's stem name as our stems are spelled: "No Crowd" -> "no_crowd"."""
    return uvr_name.strip().lower().replace(" ", "_")


def load_mdxnet(path: Path, data: ModelData, *, overlap: float = OVERLAP, denoise: bool = DENOISE,
                name: Optional[str] = None) -> ModelBag:
    """A bag of one: the ONNX file's network with the table row `data`."""
    path = Path(path)
    net, dims = load_network(path)
    if net.cfg.dim_f != data.dim_f:
        raise CheckpointError(f"the network takes {net.cfg.dim_f} frequency bins, the model data says "
                              f"{data.dim_f}", path=path, hint="the model data belongs to another file")
    if len(dims) == 4 and dims[3] is not None and dims[3] != data.dim_t:
        raise CheckpointError(f"the graph's input has {dims[3]} frames, the model data says {data.dim_t}",
                              path=path, hint="the model data belongs to another file")
    if net.cfg.dim_c != 4:
        raise CheckpointError(f"the network takes {net.cfg.dim_c} spectrogram planes, UVR's stereo models 4",
                              path=path)
    try:
        model = MDXNet(net, n_fft=data.n_fft, hop=HOP, dim_f=data.dim_f, dim_t=data.dim_t, denoise=denoise)
    except ValueError as exc:
        raise CheckpointError(str(exc), path=path, hint="the model data belongs to another file") from exc
    names = [stem_name(data.primary_stem), stem_name(data.secondary_stem)]
    separator = MDXNetSeparator(model, compensate=data.compensate, sources=names, overlap=overlap,
                                samplerate=SAMPLERATE).eval()
    contract = Contract(samplerate=SAMPLERATE, channels=2, sources=tuple(names), segment=SEGMENT,
                        segment_rule="free", window="triangle", normalize=False, overlap=0.0,
                        # bf16 on request only (--precision bf16): 0.58x / 0.74x fp32's time on 1 / 2 threads of a
                        # Zen 4 (native bf16), 6e-3 of peak off fp32; auto keeps fp32 (no quality measured)
                        bf16=True, auto_bf16=False)
    cfg = net.cfg
    return ModelBag.single(
        separator, name=name or path.stem, contracts=[contract],
        extra={"family": "mdxnet", "dim_f": data.dim_f, "dim_t": data.dim_t, "n_fft": data.n_fft,
               "compensate": data.compensate, "primary_stem": data.primary_stem, "overlap": overlap,
               "denoise": denoise, "network": f"g {cfg.g}, {cfg.n} levels, l {cfg.l}, k {cfg.k}, bn {cfg.bn}"})


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _read_row(side: Path) -> ModelData:
    try:
        row = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"unreadable model data ({type(exc).__name__})", path=side) from exc
    return _row(row, "the model data", side)


def data_for(path: Path, params: Optional[Path] = None) -> ModelData:
    """The model data of a local file: `params` (a JSON row, `--model-params`), else a
    `<stem>.json` beside it, else UVR's table by hash."""
    path = Path(path)
    if params is not None:
        return _read_row(Path(params))
    side = _sidecar(path)
    if side.is_file():
        return _read_row(side)
    if not path.is_file():
        raise CheckpointError("no such file", path=path)
    digest = uvr_hash(path)
    data = model_data(digest)
    if data is None:
        raise CheckpointError(f"UVR's model table has no MDX-Net model with hash {digest}", path=path,
                              hint=f"give its parameters ({', '.join(ROW_KEYS)}) as JSON with "
                                   f"--model-params FILE, or in {side.name} beside it")
    return data


def accepts(path: Path, config: Any = None) -> bool:
    """An .onnx file with model data (given, beside it, or in UVR's table)."""
    path = Path(path)
    if config is not None or _sidecar(path).is_file():
        return True
    try:
        return model_data(uvr_hash(path)) is not None
    except OSError:
        return False


def load_local(path: Path, stems=None, config: Any = None) -> ModelBag:
    """An MDX-Net .onnx file; one network computes both stems. `config`: a JSON file holding
    the model data (`--model-params`), for a file UVR's table does not know."""
    del stems
    return load_mdxnet(Path(path), data_for(Path(path), None if config is None else Path(config)))


def load_spec(spec: Any, folder: Path, stems=None) -> ModelBag:
    """Registry entry `spec`: `spec.checkpoint` (.onnx), `spec.config` an optional inline mapping
    (see the module docstring)."""
    del stems
    path = Path(folder) / spec.checkpoint
    if spec.config is not None and not isinstance(spec.config, Mapping):
        raise CheckpointError(f"model '{spec.name}': an MDX-Net entry's config must be an inline mapping",
                              path=spec.source)
    config = dict(spec.config or {})
    overlap = config.pop("overlap", OVERLAP)
    denoise = config.pop("denoise", DENOISE)
    if not isinstance(denoise, bool) or isinstance(overlap, bool) or not isinstance(overlap, (int, float)) \
            or not 0 <= overlap < 1:
        raise CheckpointError(f"model '{spec.name}': overlap must be in [0, 1) and denoise true or false",
                              path=spec.source)
    if config:
        base = model_data(uvr_hash(path)) if path.is_file() else None
        row = {} if base is None else {"compensate": base.compensate, "mdx_dim_f_set": base.dim_f,
                                       "mdx_dim_t_set": int(math.log2(base.dim_t)),
                                       "mdx_n_fft_scale_set": base.n_fft, "primary_stem": base.primary_stem}
        data = _row({**row, **config}, f"model '{spec.name}''s config", spec.source)
    else:
        data = data_for(path)
    # The stems are named from the row (the loader then checks them against the entry's), so an
    # entry cannot swap primary and secondary by listing them in another order.
    return load_mdxnet(path, data, overlap=float(overlap), denoise=denoise, name=spec.name)
