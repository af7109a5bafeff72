"""The Open-Unmix family: umxhq, umxl, umx, umxse and models trained with open-unmix.

Published files, read as data:

* one state dict per target, `<target>-<sha256 prefix>.pth` (torch.hub's naming;
  umxse writes `<target>_<prefix>.pth`), holding the network's tensors only. The
  2019/2020 releases also carry the STFT window and rate of the old model class
  (`stft.window`, `transform.0.window`, `sample_rate`): known, checked, dropped.
* what open-unmix's hub functions hard-code (hidden size, channels, bandwidth,
  STFT, rate, Wiener settings) comes, for a registry entry, from its inline
  `config` (schema below);
* a folder written by open-unmix's training script: `<target>.json` (its
  arguments under "args": nfft, nhop, hidden_size, nb_channels, ...), the
  weights `<target>.pth` (or `<target>-<hash>.pth`), and `separator.json`
  (nfft, nhop, sample_rate, nb_channels), which may be missing.

Registry `config` (an inline mapping):

    hidden_size   int, required        the networks' bottleneck width (512; umxl 1024; umxse 256)
    nb_channels   1 | 2, required      channels of the networks' spectrograms
    n_fft, n_hop  int, required        the STFT
    bandwidth     Hz | max_bin  bins   input bandwidth of the networks (one of the two, required)
    audio_channels 1 | 2               channels of the mix and stems (default nb_channels)
    nb_layers     int (3)              LSTM layers
    unidirectional bool (false)
    niter         int >= 0 (1)         EM iterations of the Wiener post-filter
    softmask      bool (false)
    residual      bool (false)         add a "residual" stem (the mix minus the targets)
    wiener_win_len int | null (300)    frames per independent Wiener window
    segment       seconds (30)         per forward, see DEFAULT_SEGMENT
    overlap       [0, 1) (0.1)
    sample_rate   Hz                   if given, must equal the entry's sample_rate
    targets       [names]              the networks, in order (default: the entry's stems)
    weights       {target: file}       default: the one file named <target>-*.pth / <target>_*.pth

Stems: only the networks of the requested targets are built; with a partial set
the separator adds the residual stem, as `openunmix.predict.separate(targets=...,
residual=True)` does (its EM refuses a single source).
"""

from __future__ import annotations

import difflib
import json
import math
import pickle
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..errors import CheckpointError, UsageError
from ..models.bag import Contract, ModelBag
from ..models.openunmix import OpenUnmix, UmxSeparator, bandwidth_to_max_bin
from . import summarise, weights

#: Seconds per forward. The BLSTM sees the whole segment and the Wiener filter works on
#: ~7 s windows (300 frames of 1024 samples), so 30 s keeps far more context than the
#: networks use (they were trained on 6 s excerpts), while one forward stays bounded:
#: about 0.4 GB above the loaded model for umxhq/umxl on the CPU, ~1.1 GB peak RSS
#: through the engine for any track length (60 s segments: 0.8 GB and ~1.65 GB;
#: benchmarks/bench_openunmix.py). A track shorter than this goes through in one
#: forward of its own length, exactly as open-unmix separates it.
DEFAULT_SEGMENT = 30.0
#: Fraction of a segment shared with the next: a 3 s cross-fade at 30 s (the triangle
#: weights make it linear), for 11% more computation.
DEFAULT_OVERLAP = 0.1

# open-unmix's own defaults (predict.separate / load_separator).
DEFAULT_NITER = 1
DEFAULT_WIENER_WIN_LEN = 300
DEFAULT_SAMPLERATE = 44100  # MUSDB's, the training script's when separator.json is missing

# Tensors the first released files still carry from the model class of open-unmix 1.0,
# which computed the STFT inside each network: checked against the config, then dropped.
_LEGACY_KEYS = ("stft.window", "transform.0.window", "sample_rate")

# Stem names in the order open-unmix lists them; other targets follow alphabetically.
_KNOWN_ORDER = ("vocals", "drums", "bass", "other", "speech", "noise")

_CONFIG_KEYS = {
    "hidden_size", "nb_channels", "n_fft", "n_hop", "bandwidth", "max_bin", "audio_channels", "nb_layers",
    "unidirectional", "niter", "softmask", "residual", "wiener_win_len", "segment", "overlap", "sample_rate",
    "targets", "weights",
}
_RESIDUAL = "residual"


# --------------------------------------------------------------------------- family API


def claims(path: Path) -> bool:
    """A folder in open-unmix's layout: some `<target>.json` beside a `<target>*.pth`."""
    path = Path(path)
    if not path.is_dir():
        return False
    return bool(_local_targets(path))


def load_local(path: Path, stems=None) -> ModelBag:
    """A folder written by open-unmix's training (see the module docstring)."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError("an Open-Unmix model is a folder of <target>.json and <target>.pth files",
                              path=folder, hint="pass the folder that holds them")
    available = _local_targets(folder)
    if not available:
        raise CheckpointError("no <target>.json with its <target>.pth weights in this folder", path=folder,
                              hint="expected open-unmix's training output: vocals.json + vocals.pth, ...")
    targets, residual = _select(available, stems, path=folder)
    separator_conf = _read_json(folder / "separator.json") if (folder / "separator.json").is_file() else {}
    rate = separator_conf.get("sample_rate", DEFAULT_SAMPLERATE)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0 or rate != int(rate):
        raise CheckpointError(f"'sample_rate' must be a positive whole number of Hz, got {rate!r}",
                              path=folder / "separator.json")
    nets: Dict[str, OpenUnmix] = {}
    shared: Optional[Tuple[int, int, int]] = None
    for target in targets:
        json_path = folder / f"{target}.json"
        args = _read_json(json_path).get("args")
        if not isinstance(args, dict):
            raise CheckpointError("no 'args' mapping (the training arguments)", path=json_path,
                                  hint="open-unmix's training writes them; is this its <target>.json?")
        n_fft = _int(args, "nfft", json_path)
        n_hop = _int(args, "nhop", json_path)
        nb_channels = _int(args, "nb_channels", json_path, allowed=(1, 2))
        hidden = _int(args, "hidden_size", json_path)
        if shared is None:
            shared = (n_fft, n_hop, nb_channels)
        elif shared != (n_fft, n_hop, nb_channels):
            raise CheckpointError(f"target '{target}' was trained with nfft/nhop/nb_channels {n_fft}/{n_hop}/"
                                  f"{nb_channels}, '{targets[0]}' with {'/'.join(map(str, shared))}",
                                  path=json_path, hint="all targets of a separator share one STFT")
        weights = _local_weights(folder, target)
        nets[target] = _build_network(_read_state(weights), weights, n_fft=n_fft, nb_channels=nb_channels,
                                      hidden_size=hidden, max_bin=None, samplerate=int(rate),
                                      unidirectional=args.get("unidirectional"))
    assert shared is not None
    n_fft, n_hop, nb_channels = shared
    conf_path = folder / "separator.json"
    for key, value in (("nfft", n_fft), ("nhop", n_hop), ("nb_channels", nb_channels)):
        if key in separator_conf and separator_conf[key] != value:
            raise CheckpointError(f"'{key}' is {separator_conf[key]!r} but the targets were trained with {value}",
                                  path=conf_path)
    settings = dict(n_fft=n_fft, n_hop=n_hop, audio_channels=nb_channels, niter=DEFAULT_NITER, softmask=False,
                    residual=residual, wiener_win_len=DEFAULT_WIENER_WIN_LEN, segment=DEFAULT_SEGMENT)
    return _bag(nets, samplerate=int(rate), settings=settings, overlap=DEFAULT_OVERLAP, name=folder.name,
                available=available, where=folder)


def load_spec(spec: Any, folder: Path, stems=None) -> ModelBag:
    """Registry entry `spec` whose files were downloaded into `folder` (schema: module docstring)."""
    folder = Path(folder)
    config = _check_config(spec)
    available = list(config.get("targets") or [s for s in spec.stems if s.lower() != _RESIDUAL])
    targets, residual = _select(available, stems, where=f"model '{spec.name}'")
    residual = residual or bool(config.get("residual", False))
    mapping = config.get("weights") or {}
    names = [f.name for f in spec.files]
    n_fft = config["n_fft"]
    rate = spec.sample_rate
    if "max_bin" in config:
        max_bin = config["max_bin"]
    else:
        max_bin = bandwidth_to_max_bin(rate, n_fft, config["bandwidth"])
    nets = {}
    for target in targets:
        fname = mapping.get(target) or _weights_among(names, target, spec)
        nets[target] = _build_network(
            _read_state(folder / fname), folder / fname, n_fft=n_fft, nb_channels=config["nb_channels"],
            hidden_size=config["hidden_size"], max_bin=max_bin, samplerate=rate,
            unidirectional=config.get("unidirectional", False),
            nb_layers=config.get("nb_layers", 3))
    settings = dict(
        n_fft=n_fft, n_hop=config["n_hop"], audio_channels=config.get("audio_channels", config["nb_channels"]),
        niter=config.get("niter", DEFAULT_NITER), softmask=bool(config.get("softmask", False)), residual=residual,
        wiener_win_len=config.get("wiener_win_len", DEFAULT_WIENER_WIN_LEN),
        segment=float(config.get("segment", DEFAULT_SEGMENT)))
    return _bag(nets, samplerate=rate, settings=settings, overlap=float(config.get("overlap", DEFAULT_OVERLAP)),
                name=spec.name, available=available, where=spec.source)


# --------------------------------------------------------------------------- building


def _bag(nets: Dict[str, OpenUnmix], *, samplerate: int, settings: Dict[str, Any], overlap: float, name: str,
         available: Sequence[str], where: Any) -> ModelBag:
    if len(nets) == 1 and settings["niter"] > 0:
        settings["residual"] = True  # EM needs two sources; open-unmix refuses a lone target
    try:
        separator = UmxSeparator(nets, samplerate=samplerate, **settings)
    except ValueError as exc:  # channels / bins that do not fit together
        raise CheckpointError(str(exc), path=where) from exc
    separator.eval()
    for param in separator.parameters():
        param.requires_grad_(False)
    contract = Contract(samplerate=samplerate, channels=separator.audio_channels, sources=tuple(separator.sources),
                        segment=separator.segment, segment_rule="free", window="triangle", normalize=False,
                        overlap=overlap)
    first = next(iter(nets.values()))
    extra = {
        "family": "openunmix",
        "targets": list(nets),
        "available_targets": list(available),
        # families.load_spec keeps the stem names as they are when they are not the entry's
        # list (a subset of the targets, or the residual added).
        "stem_subset": list(separator.sources) != list(available),
        "residual": separator.residual,
        "niter": separator.niter,
        "softmask": separator.softmask,
        "wiener_win_len": separator.wiener_win_len,
        "n_fft": separator.n_fft,
        "n_hop": separator.n_hop,
        "hidden_size": first.hidden_size,
        "max_bin": first.nb_bins,
    }
    return ModelBag.single(separator, name=name, window="triangle", overlap=overlap, normalize=False,
                           extra=extra, contracts=[contract])


def _build_network(state: Dict[str, torch.Tensor], path: Path, *, n_fft: int, nb_channels: int, hidden_size: int,
                   max_bin: Optional[int], samplerate: int, unidirectional: Any = None,
                   nb_layers: Optional[int] = None) -> OpenUnmix:
    """One target's network from its state dict, checked against what the config says."""
    nb_bins = n_fft // 2 + 1
    state = dict(state)
    for key in _LEGACY_KEYS:
        value = state.pop(key, None)
        if value is None:
            continue
        if key.endswith("window") and tuple(value.shape) != (n_fft,):
            raise CheckpointError(f"'{key}' has {value.numel()} samples but the STFT has n_fft {n_fft}", path=path,
                                  hint="the config's n_fft does not match these weights")
        if key == "sample_rate" and (value.numel() != 1 or abs(float(value.reshape(())) - samplerate) > 0.5):
            raise CheckpointError(f"the weights were trained at {value.reshape(-1)[0].item():g} Hz, "
                                  f"the model is declared at {samplerate} Hz", path=path, hint="check sample_rate")
    for key in ("fc1.weight", "input_mean", "output_mean"):
        if key not in state:
            raise CheckpointError(f"not an Open-Unmix state dict (no '{key}')", path=path)
    found_bins = int(state["input_mean"].shape[0])
    if max_bin is not None and found_bins != max_bin:
        raise CheckpointError(f"the weights take {found_bins} input bins, the config gives {max_bin}", path=path,
                              hint="check the entry's bandwidth / max_bin")
    if int(state["output_mean"].shape[0]) != nb_bins:
        raise CheckpointError(f"the weights give {state['output_mean'].shape[0]} bins, n_fft {n_fft} gives {nb_bins}",
                              path=path, hint="check n_fft")
    found_hidden, fc1_in = (int(n) for n in state["fc1.weight"].shape)
    if found_hidden != hidden_size:
        raise CheckpointError(f"the weights have hidden size {found_hidden}, the config says {hidden_size}",
                              path=path, hint="check hidden_size")
    if fc1_in != found_bins * nb_channels:
        raise CheckpointError(f"the weights take {fc1_in // max(found_bins, 1)} channel(s), "
                              f"the config says {nb_channels}", path=path, hint="check nb_channels")
    found_layers = sum(1 for k in state if k.startswith("lstm.weight_ih_l") and not k.endswith("_reverse"))
    found_uni = found_layers > 0 and "lstm.weight_ih_l0_reverse" not in state
    if nb_layers is not None and found_layers and found_layers != nb_layers:
        raise CheckpointError(f"the weights have {found_layers} LSTM layers, the config says {nb_layers}",
                              path=path, hint="check nb_layers")
    if unidirectional is not None and found_layers and bool(unidirectional) != found_uni:
        raise CheckpointError(f"the weights hold a {'uni' if found_uni else 'bi'}directional LSTM, "
                              f"the config says unidirectional: {bool(unidirectional)}", path=path)
    net = OpenUnmix(nb_bins=nb_bins, nb_channels=nb_channels, hidden_size=hidden_size,
                    nb_layers=found_layers or (nb_layers or 3), unidirectional=found_uni, max_bin=found_bins)
    weights.load_strict(net, state, what="an Open-Unmix network", path=path)
    return net.eval()


def _read_state(path: Path) -> Dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("weights file not found", path=path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError("refused to load: the file needs more than tensors and plain containers to "
                              "unpickle, which could run code", path=path,
                              hint="re-save the weights with torch.save(model.state_dict())") from exc
    except Exception as exc:  # truncated, or not a torch file at all
        raise CheckpointError(f"not a readable PyTorch file ({_first_line(exc)})", path=path) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # open-unmix's `<target>.chkpnt` training checkpoints
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError("the file holds no state dict", path=path)
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"the state dict has non-tensor entries ({summarise(bad)})", path=path)
    return obj


# --------------------------------------------------------------------------- selection


def _select(available: Sequence[str], stems: Optional[Sequence[str]], *, where: str = "",
            path: Any = None) -> Tuple[List[str], bool]:
    """(targets to build, in the model's order; whether a residual stem is needed)."""
    if stems is None:
        return list(available), False
    lookup = {t.lower(): t for t in available}
    wanted, unknown = set(), []
    for stem in stems:
        target = lookup.get(str(stem).lower())
        if target is not None:
            wanted.add(target)
        elif str(stem).lower() != _RESIDUAL:
            unknown.append(str(stem))
    if unknown or not wanted:
        what = ", ".join(unknown) or _RESIDUAL + " alone"
        raise UsageError(f"{where + ': ' if where else ''}no stem {what}", path=path,
                         hint=f"this model gives: {', '.join(available)} (and '{_RESIDUAL}' next to a subset)")
    targets = [t for t in available if t in wanted]
    return targets, len(targets) < len(available)


def _ordered(names: Sequence[str]) -> List[str]:
    known = [n for n in _KNOWN_ORDER if n in names]
    return known + sorted(n for n in names if n not in _KNOWN_ORDER)


def _local_targets(folder: Path) -> List[str]:
    names = [p.stem for p in folder.glob("*.json") if p.stem != "separator" and p.is_file()]
    return _ordered([n for n in names if _local_weight_candidates(folder, n)])


def _local_weight_candidates(folder: Path, target: str) -> List[Path]:
    exact = folder / f"{target}.pth"
    if exact.is_file():
        return [exact]
    return sorted(p for p in folder.glob("*.pth")
                  if p.is_file() and p.stem.startswith(target) and p.stem[len(target):len(target) + 1] in ("-", "_"))


def _local_weights(folder: Path, target: str) -> Path:
    found = _local_weight_candidates(folder, target)
    if len(found) > 1:
        raise CheckpointError(f"several weight files for '{target}' ({summarise([p.name for p in found])})",
                              path=folder, hint=f"keep one {target}.pth or {target}-<hash>.pth")
    return found[0]


def _weights_among(names: Sequence[str], target: str, spec: Any) -> str:
    found = [n for n in names if n.endswith(".pth") and (n == f"{target}.pth" or (
        Path(n).stem.startswith(target) and Path(n).stem[len(target):len(target) + 1] in ("-", "_")))]
    if len(found) != 1:
        problem = "no weights file" if not found else f"several weights files ({summarise(found)})"
        raise CheckpointError(f"model '{spec.name}': {problem} for target '{target}'", path=spec.source,
                              hint="name one <target>-<hash>.pth per target, or map them in config.weights")
    return found[0]


# --------------------------------------------------------------------------- config


def _check_config(spec: Any) -> Dict[str, Any]:
    """The entry's inline config, validated: CheckpointError naming the entry and the key."""
    raw = spec.config
    where = spec.source

    def fail(key: str, problem: str) -> CheckpointError:
        return CheckpointError(f"model '{spec.name}': config '{key}' {problem}", path=where,
                               hint="see the Open-Unmix config schema in unmixcli/families/openunmix.py")

    if not isinstance(raw, Mapping):
        raise CheckpointError(f"model '{spec.name}': an Open-Unmix entry needs an inline 'config' mapping",
                              path=where, hint="give hidden_size, nb_channels, n_fft, n_hop and bandwidth")
    config = dict(raw)
    unknown = sorted(set(map(str, config)) - _CONFIG_KEYS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(_CONFIG_KEYS), n=1)
        raise fail(unknown[0], "is not a known key" + (f" (did you mean '{close[0]}'?)" if close else ""))

    def positive_int(key: str, required: bool = False, allowed: Optional[Tuple[int, ...]] = None) -> None:
        if key not in config:
            if required:
                raise fail(key, "is required")
            return
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise fail(key, f"must be a positive integer, got {value!r}")
        if allowed is not None and value not in allowed:
            raise fail(key, f"must be one of {', '.join(map(str, allowed))}, got {value}")

    def boolean(key: str) -> None:
        if key in config and not isinstance(config[key], bool):
            raise fail(key, f"must be true or false, got {config[key]!r}")

    for key in ("hidden_size", "n_fft", "n_hop"):
        positive_int(key, required=True)
    positive_int("nb_channels", required=True, allowed=(1, 2))
    positive_int("audio_channels", allowed=(1, 2))
    positive_int("nb_layers")
    positive_int("max_bin")
    for key in ("unidirectional", "softmask", "residual"):
        boolean(key)
    if config["n_hop"] > config["n_fft"]:
        raise fail("n_hop", f"({config['n_hop']}) must not exceed n_fft ({config['n_fft']})")
    if "max_bin" in config and "bandwidth" in config:
        raise fail("max_bin", "and 'bandwidth' are two ways to say the same: give one")
    if "max_bin" not in config and "bandwidth" not in config:
        raise fail("bandwidth", "is required (or max_bin)")
    if "bandwidth" in config:
        bw = config["bandwidth"]
        if isinstance(bw, bool) or not isinstance(bw, (int, float)) or not bw > 0:
            raise fail("bandwidth", f"must be a positive frequency in Hz, got {bw!r}")
    if "max_bin" in config and config["max_bin"] > config["n_fft"] // 2 + 1:
        raise fail("max_bin", f"exceeds the {config['n_fft'] // 2 + 1} bins of n_fft {config['n_fft']}")
    audio = config.get("audio_channels", config["nb_channels"])
    if config["nb_channels"] == 2 and audio == 1:
        raise fail("audio_channels", "cannot be 1 for stereo networks (nb_channels 2)")
    niter = config.get("niter", DEFAULT_NITER)
    if isinstance(niter, bool) or not isinstance(niter, int) or niter < 0:
        raise fail("niter", f"must be a whole number >= 0, got {niter!r}")
    win = config.get("wiener_win_len", DEFAULT_WIENER_WIN_LEN)
    if win is not None and (isinstance(win, bool) or not isinstance(win, int) or win <= 0):
        raise fail("wiener_win_len", f"must be a positive number of frames or null, got {win!r}")
    if "segment" in config:
        seg = config["segment"]
        if isinstance(seg, bool) or not isinstance(seg, (int, float)) or not seg > 0 or not math.isfinite(seg):
            raise fail("segment", f"must be a positive number of seconds, got {seg!r}")
    if "overlap" in config:
        ov = config["overlap"]
        if isinstance(ov, bool) or not isinstance(ov, (int, float)) or not 0 <= ov < 1:
            raise fail("overlap", f"must be in [0, 1), got {ov!r}")
    if "sample_rate" in config and config["sample_rate"] != spec.sample_rate:
        raise fail("sample_rate", f"is {config['sample_rate']!r} but the entry's sample_rate is {spec.sample_rate}")
    targets = config.get("targets")
    if targets is not None:
        if (not isinstance(targets, (list, tuple)) or not targets
                or not all(isinstance(t, str) and t for t in targets) or len(set(targets)) != len(targets)):
            raise fail("targets", "must be a list of distinct target names")
        if _RESIDUAL in (t.lower() for t in targets):
            raise fail("targets", f"cannot name '{_RESIDUAL}': it is not a network (use residual: true)")
    weights = config.get("weights")
    if weights is not None:
        names = {f.name for f in spec.files}
        if not isinstance(weights, Mapping) or not all(isinstance(v, str) for v in weights.values()):
            raise fail("weights", "must map target names to file names")
        for target, fname in weights.items():
            if fname not in names:
                raise fail("weights", f"names '{fname}' for '{target}', which is not one of the entry's files")
    return config


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read ({_first_line(exc)})", path=path) from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"invalid JSON at line {exc.lineno}: {exc.msg}", path=path) from exc
    if not isinstance(data, dict):
        raise CheckpointError("expected a JSON object", path=path)
    return data


def _int(args: Mapping[str, Any], key: str, path: Path, allowed: Optional[Tuple[int, ...]] = None) -> int:
    value = args.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"'args.{key}' must be a positive integer, got {value!r}", path=path)
    if allowed is not None and value not in allowed:
        raise CheckpointError(f"'args.{key}' must be one of {', '.join(map(str, allowed))}, got {value}", path=path)
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
