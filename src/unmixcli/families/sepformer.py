"""The SepFormer family: SpeechBrain's SepFormer separation and enhancement models.

Published files (a Hub repo such as speechbrain/sepformer-wsj02mix), read as data:

* `hyperparams.yaml`: HyperPyYAML. It is read with a PyYAML *safe* loader whose
  only addition records HyperPyYAML's tags as data: `!new:<dotted.name>` (with
  its mapping or list of arguments), `!name:`, `!apply:`, `!ref <key>`,
  `!copy <key>`; nothing is imported, called or constructed. The three networks
  are found through `modules:` (else the pretrainer's `loadables`, else the
  top-level `Encoder` / `MaskNet` / `Decoder`), `!ref`s are followed to their
  top-level keys, and every `!new:` target must be one of the four SpeechBrain
  classes in `TARGETS`, each argument checked against what that class takes.
  `sample_rate` and `num_spks` come from the file's top level.
* `encoder.ckpt`, `masknet.ckpt`, `decoder.ckpt`: plain state dicts, loaded with
  `torch.load(weights_only=True)` and strictly into our modules.

Stems: one source (the enhancement models) gives `speech` and `noise` (the mix
minus the speech); n sources give `speaker1` ... `speaker<n>`.

The output is SpeechBrain's `separate_batch` (the networks' own scale), not
`separate_file`'s, which divides each estimate by its peak: that rescaling would
differ between segments and break `noise = mix - speech`.

Contract: the file's `sample_rate` (8 kHz for wsj02mix / whamr, 16 kHz for the
16k models), mono, no normalisation, `SEGMENT`-second segments cross-faded with
the triangle window (the inter-chunk transformer's position table bounds the
length one forward can take). Separation has no fixed speaker order between
segments, so a recording longer than a segment may swap speakers where they meet.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import yaml

from ..errors import CheckpointError
from ..models.bag import Contract, ModelBag
from ..models.sepformer import (POS_MAX_LEN, MaskNet, MaskNetArgs, SepDecoder, SepEncoder, SepFormer,
                                TransformerArgs)
from . import weights

HYPERPARAMS = "hyperparams.yaml"
MODULES = ("encoder", "masknet", "decoder")
#: Seconds per engine segment.
SEGMENT = 20.0
_DP = "speechbrain.lobes.models.dual_path."
#: The classes a `!new:` may name, by their dotted name.
TARGETS = {_DP + "Encoder": "encoder", _DP + "Decoder": "decoder", _DP + "Dual_Path_Model": "masknet",
           _DP + "SBTransformerBlock": "transformer"}
_HINT = "expected SpeechBrain's SepFormer layout: hyperparams.yaml with encoder.ckpt, masknet.ckpt, decoder.ckpt"


# --------------------------------------------------------------------------------------
# HyperPyYAML as data.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tagged:
    """A HyperPyYAML object tag, recorded: `kind` new/name/apply, the dotted `target`, its arguments."""

    kind: str
    target: str
    args: Any


@dataclass(frozen=True)
class Ref:
    """`!ref <key>` or `!copy <key>`: the text inside the tag, resolved later (or refused)."""

    text: str
    copy: bool = False


class HyperParamsLoader(yaml.SafeLoader):
    """A safe loader that keeps HyperPyYAML's tags as `Tagged` / `Ref` values."""


def _tagged(loader: HyperParamsLoader, suffix: str, node: yaml.Node) -> Any:
    tag = "!" + suffix
    if tag in ("!ref", "!copy"):
        if not isinstance(node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(None, None, f"{tag} takes a <key>", node.start_mark)
        return Ref(loader.construct_scalar(node), copy=tag == "!copy")
    if isinstance(node, yaml.MappingNode):
        args: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        args = loader.construct_sequence(node, deep=True)
    else:
        args = loader.construct_scalar(node)
    kind, _, target = suffix.partition(":")
    return Tagged(kind, target, args)


HyperParamsLoader.add_multi_constructor("!", _tagged)


def read_hyperparams(path: Path) -> Dict[str, Any]:
    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=HyperParamsLoader)
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read hyperparams.yaml ({type(exc).__name__})", path=path) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CheckpointError(f"hyperparams.yaml is not valid YAML{where}", path=path, hint=_HINT) from exc
    if not isinstance(data, dict):
        raise CheckpointError("hyperparams.yaml is not a mapping", path=path, hint=_HINT)
    return data


_REF = re.compile(r"^\s*<([A-Za-z_][\w]*)>\s*$")


def _resolve(value: Any, top: Mapping, path: Path, seen: Tuple[str, ...] = ()) -> Any:
    """`value` with every `!ref <key>` replaced by the top-level value it names (recursively)."""
    if isinstance(value, Ref):
        m = _REF.match(value.text)
        if not m:
            raise CheckpointError(f"hyperparams.yaml: !ref {value.text!r} is not a plain <key> reference",
                                  path=path, hint="only references to top-level keys are read")
        key = m.group(1)
        if key in seen:
            raise CheckpointError(f"hyperparams.yaml: !ref <{key}> refers to itself", path=path)
        if key not in top:
            raise CheckpointError(f"hyperparams.yaml: !ref <{key}> names no top-level key", path=path)
        return _resolve(top[key], top, path, seen + (key,))
    if isinstance(value, Tagged):
        return Tagged(value.kind, value.target, _resolve(value.args, top, path, seen))
    if isinstance(value, dict):
        return {k: _resolve(v, top, path, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, top, path, seen) for v in value]
    return value


def _object(value: Any, role: str, where: str, path: Path) -> Dict[str, Any]:
    """The arguments of a `!new:` of the class `role` expects (a mapping), checked."""
    if not isinstance(value, Tagged) or value.kind != "new":
        raise CheckpointError(f"hyperparams.yaml: {where} is not a !new: object", path=path, hint=_HINT)
    if TARGETS.get(value.target) != role:
        raise CheckpointError(f"hyperparams.yaml: {where} is {value.target}, not a class this family builds",
                              path=path, hint="SepFormer files use " + ", ".join(TARGETS))
    if not isinstance(value.args, dict):
        raise CheckpointError(f"hyperparams.yaml: {where} ({value.target}) must take keyword arguments",
                              path=path, hint=_HINT)
    return dict(value.args)


class _Args:
    """Reads one object's arguments: types and allowed values checked, unknown ones refused."""

    def __init__(self, args: Dict[str, Any], where: str, path: Path):
        self.args, self.where, self.path, self.used = args, where, path, set()

    def get(self, key: str, default: Any = None, kind: Any = int, allowed=None, minimum: Optional[int] = 1) -> Any:
        self.used.add(key)
        value = self.args.get(key, default)
        if value is None and default is None:
            raise CheckpointError(f"hyperparams.yaml: {self.where} lacks {key}", path=self.path, hint=_HINT)
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)
                            or (minimum is not None and value < minimum)):
            raise CheckpointError(f"hyperparams.yaml: {self.where}.{key} must be a whole number"
                                  f"{'' if minimum is None else f' >= {minimum}'}, got {value!r}", path=self.path)
        if kind is bool and not isinstance(value, bool):
            raise CheckpointError(f"hyperparams.yaml: {self.where}.{key} must be true or false, got {value!r}",
                                  path=self.path)
        if allowed is not None and value not in allowed:
            raise CheckpointError(f"hyperparams.yaml: {self.where}.{key} = {value!r} is not supported",
                                  path=self.path, hint=f"{key} may be " + ", ".join(map(repr, allowed)))
        return value

    def ignore(self, *keys: str) -> None:
        """Arguments with no effect at inference (dropout)."""
        self.used.update(keys)

    def done(self) -> None:
        unknown = sorted(map(str, set(self.args) - self.used))
        if unknown:
            raise CheckpointError(f"hyperparams.yaml: {self.where} has unsupported argument(s) {', '.join(unknown)}",
                                  path=self.path, hint="this family reads " + ", ".join(sorted(self.used)))


def _transformer(value: Any, where: str, d_model_expected: int, path: Path) -> TransformerArgs:
    a = _Args(_object(value, "transformer", where, path), where, path)
    t = TransformerArgs(
        num_layers=a.get("num_layers"), d_model=a.get("d_model"), nhead=a.get("nhead"),
        d_ffn=a.get("d_ffn", 2048), activation=a.get("activation", "relu", kind=str, allowed=("relu", "gelu")),
        use_positional_encoding=a.get("use_positional_encoding", False, kind=bool),
        norm_before=a.get("norm_before", False, kind=bool))
    a.get("attention_type", "regularMHA", kind=str, allowed=("regularMHA",))
    for key in ("input_shape", "kdim", "vdim"):
        a.get(key, "unset", kind=str, allowed=("unset", None))  # only the defaults (None) are supported
    a.ignore("dropout")
    a.done()
    if t.d_model != d_model_expected:
        raise CheckpointError(f"hyperparams.yaml: {where}.d_model ({t.d_model}) must equal the mask network's "
                              f"out_channels ({d_model_expected})", path=path)
    if t.d_model % t.nhead:
        raise CheckpointError(f"hyperparams.yaml: {where}.d_model ({t.d_model}) is not a multiple of nhead "
                              f"({t.nhead})", path=path)
    if t.use_positional_encoding and t.d_model % 2:
        raise CheckpointError(f"hyperparams.yaml: {where}: positional encoding needs an even d_model", path=path)
    return t


@dataclass(frozen=True)
class SepFormerConfig:
    sample_rate: int
    num_spks: int
    enc_kernel: int
    enc_channels: int
    masknet: MaskNetArgs
    dec_in: int
    dec_kernel: int
    dec_stride: int
    dec_bias: bool


def _modules(top: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """The three networks' (unresolved) values: from `modules:`, the pretrainer, or the usual keys."""
    mods = top.get("modules")
    if not isinstance(mods, dict) or not all(k in mods for k in MODULES):
        pre = top.get("pretrainer")
        mods = pre.args.get("loadables") if isinstance(pre, Tagged) and isinstance(pre.args, dict) else None
    if not isinstance(mods, dict) or not all(k in mods for k in MODULES):
        mods = {"encoder": top.get("Encoder"), "masknet": top.get("MaskNet"), "decoder": top.get("Decoder")}
    missing = [k for k in MODULES if mods.get(k) is None]
    if missing:
        raise CheckpointError(f"hyperparams.yaml names no {', '.join(missing)}", path=path,
                              hint="a SepFormer hyperparams.yaml lists modules: encoder, masknet, decoder")
    return {k: mods[k] for k in MODULES}


def parse_hyperparams(top: Dict[str, Any], path: Path) -> SepFormerConfig:
    """The networks' shapes from hyperparams.yaml (already read as data)."""
    mods = {k: _resolve(v, top, path) for k, v in _modules(top, path).items()}
    rate = _resolve(top.get("sample_rate"), top, path)
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise CheckpointError(f"hyperparams.yaml: sample_rate must be a whole number of Hz, got {rate!r}",
                              path=path, hint=_HINT)

    enc = _Args(_object(mods["encoder"], "encoder", "the encoder", path), "the encoder", path)
    enc_kernel, enc_channels = enc.get("kernel_size", 2), enc.get("out_channels", 64)
    enc.get("in_channels", 1, allowed=(1,))
    enc.done()
    if enc_kernel < 2:
        raise CheckpointError("hyperparams.yaml: the encoder's kernel_size must be at least 2", path=path)

    m = _Args(_object(mods["masknet"], "masknet", "the mask network", path), "the mask network", path)
    in_ch, out_ch = m.get("in_channels"), m.get("out_channels")
    m.get("norm", "ln", kind=str, allowed=("ln",))
    m.get("use_global_pos_enc", False, kind=bool, allowed=(False,))
    m.ignore("max_length")  # used only with use_global_pos_enc
    m.used.update({"intra_model", "inter_model"})
    masknet = MaskNetArgs(
        in_channels=in_ch, out_channels=out_ch,
        intra=_transformer(m.args.get("intra_model"), "the mask network's intra_model", out_ch, path),
        inter=_transformer(m.args.get("inter_model"), "the mask network's inter_model", out_ch, path),
        num_layers=m.get("num_layers", 1), K=m.get("K", 200, minimum=2), num_spks=m.get("num_spks", 2),
        skip_around_intra=m.get("skip_around_intra", True, kind=bool),
        linear_layer_after_inter_intra=m.get("linear_layer_after_inter_intra", True, kind=bool))
    m.done()
    if masknet.K % 2:
        raise CheckpointError(f"hyperparams.yaml: the mask network's K ({masknet.K}) must be even", path=path)
    if in_ch != enc_channels:
        raise CheckpointError(f"hyperparams.yaml: the mask network's in_channels ({in_ch}) must equal the "
                              f"encoder's out_channels ({enc_channels})", path=path)

    d = _Args(_object(mods["decoder"], "decoder", "the decoder", path), "the decoder", path)
    dec_in, dec_kernel = d.get("in_channels"), d.get("kernel_size")
    dec_stride = d.get("stride", 1)
    d.get("out_channels", 1, allowed=(1,))
    dec_bias = d.get("bias", True, kind=bool)
    for key in ("padding", "output_padding"):
        d.get(key, 0, minimum=0, allowed=(0,))
    d.get("groups", 1, allowed=(1,))
    d.get("dilation", 1, allowed=(1,))
    d.done()
    if dec_in != enc_channels:
        raise CheckpointError(f"hyperparams.yaml: the decoder's in_channels ({dec_in}) must equal the encoder's "
                              f"out_channels ({enc_channels})", path=path)

    spks = top.get("num_spks", masknet.num_spks)
    spks = _resolve(spks, top, path)
    if spks != masknet.num_spks:
        raise CheckpointError(f"hyperparams.yaml: num_spks ({spks!r}) differs from the mask network's "
                              f"({masknet.num_spks})", path=path)
    return SepFormerConfig(sample_rate=rate, num_spks=masknet.num_spks, enc_kernel=enc_kernel,
                           enc_channels=enc_channels, masknet=masknet, dec_in=dec_in, dec_kernel=dec_kernel,
                           dec_stride=dec_stride, dec_bias=dec_bias)


# --------------------------------------------------------------------------------------
# Building and loading.
# --------------------------------------------------------------------------------------


def _stems(n: int) -> Tuple[str, ...]:
    return ("speech", "noise") if n == 1 else tuple(f"speaker{i + 1}" for i in range(n))


def build(cfg: SepFormerConfig) -> SepFormer:
    encoder = SepEncoder(cfg.enc_kernel, cfg.enc_channels)
    decoder = SepDecoder(cfg.dec_in, 1, cfg.dec_kernel, stride=cfg.dec_stride, bias=cfg.dec_bias)
    return SepFormer(encoder, MaskNet(cfg.masknet), decoder, _stems(cfg.num_spks))


def _read_state(path: Path) -> Mapping:
    if not path.is_file():
        raise CheckpointError(f"the model lacks {path.name}", path=path.parent, hint=_HINT)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        text = str(exc)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        cause = (f"it names the Python object {found.group(1)}, not plain data; refused" if found
                 else (text.strip().splitlines()[0][:160] if text.strip() else type(exc).__name__))
        raise CheckpointError(f"not a loadable state dict ({cause})", path=path, hint=_HINT) from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("not a state dict of tensors", path=path, hint=_HINT)
    return state


def _load_state(module: torch.nn.Module, state: Mapping, path: Path) -> None:
    weights.load_strict(module, state, what="hyperparams.yaml", path=path, hint=_HINT)


def load_sepformer(folder: Path, *, name: Optional[str] = None) -> ModelBag:
    """A bag of one from a folder holding hyperparams.yaml and the three .ckpt files."""
    folder = Path(folder)
    hp = folder / HYPERPARAMS
    if not hp.is_file():
        raise CheckpointError("the folder has no hyperparams.yaml", path=folder, hint=_HINT)
    cfg = parse_hyperparams(read_hyperparams(hp), hp)
    model = build(cfg)
    for part in MODULES:
        ckpt = folder / f"{part}.ckpt"
        _load_state(getattr(model, part), _read_state(ckpt), ckpt)
    model.eval()
    # The inter-chunk sequence (about 2 chunks per K encoder frames) must fit the position table.
    frames_per_second = cfg.sample_rate / (cfg.enc_kernel // 2)
    longest = (POS_MAX_LEN - 4) * cfg.masknet.K / 2 / frames_per_second
    segment = min(SEGMENT, max(1.0, float(int(longest * 0.9))))
    contract = Contract(samplerate=cfg.sample_rate, channels=1, sources=tuple(model.sources), segment=segment,
                        segment_rule="free", window="triangle", normalize=False, overlap=0.25, bf16=False)
    return ModelBag.single(model, name=name or folder.name, contracts=[contract],
                           extra={"family": "sepformer", "num_spks": cfg.num_spks, "K": cfg.masknet.K,
                                  "layers": cfg.masknet.num_layers})


def claims(folder: Path) -> bool:
    """SpeechBrain's layout: hyperparams.yaml with masknet.ckpt beside it."""
    folder = Path(folder)
    return (folder / HYPERPARAMS).is_file() and (folder / "masknet.ckpt").is_file()


def load_local(path: Path, stems=None, **options: Any) -> ModelBag:
    del stems
    if options:
        raise CheckpointError(f"SepFormer models take no options (got {', '.join(map(str, options))})", path=path)
    path = Path(path)
    return load_sepformer(path.parent if path.is_file() else path)


def load_spec(spec: Any, folder: Path, stems=None) -> ModelBag:
    """Registry entry `spec`: its files are hyperparams.yaml (`config`) and the three .ckpt files."""
    del stems
    if spec.config not in (None, HYPERPARAMS):
        raise CheckpointError(f"model '{spec.name}': a SepFormer entry's config must be {HYPERPARAMS}",
                              path=spec.source)
    return load_sepformer(Path(folder), name=spec.name)
