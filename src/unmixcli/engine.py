"""The separation engine: run a ModelBag over a mix of any length.

The engine knows nothing about files. It cuts the (normalised) mix into
overlapping segments, runs each bag member on them, blends the segment outputs
with a cross-fade window, averages random time shifts and weights the members
per stem. With Demucs' settings (segment = the model's, overlap 0.25, triangle
window, no shifts) the result equals the reference `demucs.apply.apply_model`.

The work is split into small pieces:

* `WINDOWS`: name -> window function (the cross-fade weights of one segment).
* `EDGE_RULES`: window name -> how the track's ends and short segments are
  padded ("fade" follows Music-Source-Separation-Training's `demix`).
* `_Plan`: per bag member, the segment length, stride, window and the rule
  that gives the model's input length for a segment.
* `_Lane`: one pass of one member over the mix, delayed by one time shift.
  It keeps only the overlap-add accumulator of the segments not yet final.
* `_Runner`: calls the model on a batch of segments (device, precision,
  out-of-memory fallback).
* `_StreamCore`: feeds input blocks to every lane and emits the region that
  no later segment can change any more.

`separate_tensor` is the streaming core fed with the whole mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import random
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .checks import is_number, is_whole
from .errors import DeviceError, UsageError
from .models.bag import Contract, ModelBag

Progress = Callable[[int, Optional[int]], None]

# Time shifts move the mix by up to this many seconds (the reference's `shifts` trick).
MAX_SHIFT_SECONDS = 0.5
# "auto": bf16 where the hardware runs it natively and it measured faster, fp32 elsewhere
# (see `choose_precision`).
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class EngineOptions:
    """How to run the bag. None means the bag's (or the model's) own value.

    Checked when made (`UsageError`, one wording for the CLI, the API and `unmix eval`).

    Attributes:
        segment: seconds per model call (at most the model's own for fixed-length models).
        overlap: fraction of a segment shared with the next one, in [0, 1).
        shifts: number of random time shifts averaged (0 = none).
        seed: seed of the time shifts; the same seed gives the same output.
        batch_size: segments per forward call.
        precision: "fp32", "bf16" (autocast on CPU/CUDA, float16 on MPS), or "auto" (bf16
            where it is native and faster, else fp32; see `choose_precision`). The engine
            runs fp32 unless told otherwise; the command line and `api.Separator` pass "auto".
        tta: test-time augmentation as MSST does it: each segment also goes in with its
            channels swapped and with its polarity inverted, and the three results (brought
            back) are averaged; three times the work.
    """

    segment: Optional[float] = None
    overlap: Optional[float] = None
    shifts: int = 0
    seed: int = 0
    batch_size: int = 1
    precision: str = "fp32"
    tta: bool = False

    def __post_init__(self) -> None:
        if self.segment is not None and not (is_number(self.segment) and math.isfinite(self.segment)
                                             and self.segment > 0):
            raise UsageError(f"segment must be a positive number of seconds, got {self.segment!r}",
                             hint="e.g. --segment 7.8, or leave it out for the model's own")
        if self.overlap is not None and not (is_number(self.overlap) and 0 <= self.overlap < 1):
            raise UsageError(f"overlap must be in [0, 1), got {self.overlap!r}",
                             hint="e.g. --overlap 0.25")
        if not (is_whole(self.shifts) and self.shifts >= 0):
            raise UsageError(f"shifts must be a whole number >= 0, got {self.shifts!r}")
        if not is_whole(self.seed):
            raise UsageError(f"seed must be a whole number, got {self.seed!r}")
        if not (is_whole(self.batch_size) and self.batch_size >= 1):
            raise UsageError(f"batch size must be a whole number >= 1, got {self.batch_size!r}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}", hint=f"use one of: {', '.join(PRECISIONS)}")
        if not isinstance(self.tta, (bool, np.bool_)):
            raise UsageError(f"tta must be true or false, got {self.tta!r}")


# ----------------------------------------------------------------------------- precision

# How a device runs bfloat16 (see `bf16_support`):
BF16_EMULATED = "emulated"  # no bf16 units: converted in software, many times slower than fp32
BF16_NATIVE = "native"  # bf16 units, but not measured faster than fp32 for our models
BF16_FAST = "fast"  # native and measured faster (see `choose_precision`)

# CPU feature flags (Linux /proc/cpuinfo names) of native bf16 arithmetic.
_X86_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_ARM_BF16_FLAGS = frozenset({"bf16"})  # Armv8.6 BF16 (e.g. Neoverse V1/V2, Graviton 3/4)


def cpu_bf16_support(machine: str, flags) -> str:
    """How a CPU runs bf16, from its architecture (`platform.machine()`) and feature flags.

    x86 with AVX-512 BF16 or AMX: measured ~1.8x faster than fp32 for HTDemucs (bench_engine,
    on a Xeon with both), so "fast" (Zen 4 has AVX-512 BF16 alone; counted the same). Without
    them (AVX2-only chips, most desktops and laptops) bf16 is converted in software and runs
    many times slower than fp32. arm64 with the BF16 extension is native, but no speed-up was
    measured there, so `auto` keeps fp32.
    """
    flags = {f.lower() for f in flags}
    machine = machine.lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        return BF16_FAST if flags & _X86_BF16_FLAGS else BF16_EMULATED
    if machine in ("aarch64", "arm64", "armv8", "armv9"):
        return BF16_NATIVE if flags & _ARM_BF16_FLAGS else BF16_EMULATED
    return BF16_EMULATED


def choose_precision(requested: str, device_type: str, support: str) -> Tuple[str, Optional[str]]:
    """The precision to run and a warning to show (or None); a pure function of its inputs.

    Args:
        requested: "auto", "fp32" or "bf16".
        device_type: "cpu", "cuda", "mps", ...
        support: `BF16_EMULATED`, `BF16_NATIVE` or `BF16_FAST` for that device.

    `auto` picks bf16 only where it is native and measured faster, fp32 otherwise. An explicit
    bf16 is honoured everywhere; where it is emulated the warning says why fp32 is likely faster.
    On MPS "bf16" means float16 autocast (as before), without a warning.
    """
    if requested not in PRECISIONS:  # EngineOptions refuses these: a caller's bug
        raise ValueError(f"unknown precision {requested!r}")
    if requested == "fp32":
        return "fp32", None
    if requested == "auto":
        return ("bf16" if device_type in ("cpu", "cuda") and support == BF16_FAST else "fp32"), None
    if device_type == "mps" or support != BF16_EMULATED:
        return "bf16", None
    where = "this CPU" if device_type == "cpu" else f"this {device_type} device"
    units = "AVX-512 BF16 or AMX" if device_type == "cpu" else "bf16 units"
    return "bf16", (f"--precision bf16: {where} has no native bfloat16 ({units}), so it is emulated "
                    "and usually much slower than fp32; --precision fp32 (or auto) will likely be faster")


_BF16_SUPPORT: Dict[str, str] = {}


def bf16_support(device: torch.device) -> str:
    """`choose_precision`'s `support` for a device, probed once per device type."""
    kind = device.type
    if kind not in _BF16_SUPPORT:
        if kind == "cpu":
            _BF16_SUPPORT[kind] = _probe_cpu_bf16()
        elif kind == "cuda":
            # Ampere and later. Not measured against fp32 here (no GPU in this project's
            # bench), so "native", and `auto` keeps fp32 on CUDA until it is.
            try:
                native = bool(torch.cuda.is_bf16_supported())
            except (RuntimeError, AssertionError):
                native = False
            _BF16_SUPPORT[kind] = BF16_NATIVE if native else BF16_EMULATED
        else:
            _BF16_SUPPORT[kind] = BF16_NATIVE  # MPS: "bf16" runs float16 autocast
    return _BF16_SUPPORT[kind]


def _probe_cpu_bf16() -> str:
    import platform

    machine = platform.machine()
    flags = set()
    cpu = getattr(torch, "cpu", None)
    # torch's own CPU probe (cpuinfo) works on every OS; /proc/cpuinfo is the Linux fallback.
    # Every x86 chip with AMX tiles so far has AMX-BF16 too.
    for probe, flag in (("_is_avx512_bf16_supported", "avx512_bf16"), ("_is_amx_tile_supported", "amx_bf16")):
        check = getattr(cpu, probe, None)
        try:
            if check is not None and check():
                flags.add(flag)
        except Exception:  # noqa: BLE001 - a private probe; absence means "not known to be native"
            pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        pass
    return cpu_bf16_support(machine, flags)


def effective_precision(requested: str, device: torch.device, auto_bf16: bool = True, bf16: bool = True) -> str:
    """What `requested` runs as on `device` ("fp32" or "bf16") for a model that may (`auto_bf16`)
    or may not run in bf16 under "auto", and can (`bf16`) or cannot run in bf16 at all (its
    contract's fields; see `_Runner.precision_for`)."""
    chosen = choose_precision(requested, device.type, bf16_support(device))[0]
    return _member_precision(requested, chosen, auto_bf16, bf16)


def _member_precision(requested: str, chosen: str, auto_bf16: bool, bf16: bool) -> str:
    """The precision one member runs in, given what `requested` settled to on the device
    (`chosen`) and the member's contract: fp32 for a member that cannot run bf16, and under
    "auto" for one not measured faster in it."""
    if not bf16 or (requested == "auto" and not auto_bf16):
        return "fp32"
    return chosen


# Warnings already shown in this process: a batch of many tracks warns once, not per track.
_WARNED: set = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# ----------------------------------------------------------------------------- devices


def resolve_device(name: str = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda", "cuda:N" or "mps" into a usable torch.device.

    "auto" picks CUDA, then Apple MPS, then the CPU. Raises DeviceError for a
    device that is not available here.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device {name!r}", hint="use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was requested but no CUDA GPU is available",
                              hint="use --device cpu, or install a CUDA build of torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"there is no CUDA device {device.index} "
                              f"({torch.cuda.device_count()} found)", hint="pick another index")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError("Apple MPS was requested but is not available", hint="use --device cpu")
        return device
    raise DeviceError(f"unsupported device {name!r}", hint="use auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


_ALLOCATOR_TUNED = False
# glibc's malloc_trim once the allocator is tuned (None otherwise), and how many CPU
# forwards run between two calls of it (see _Runner._release_free_heap).
_MALLOC_TRIM = None
TRIM_EVERY_FORWARDS = 8


def tune_cpu_allocator() -> bool:
    """Stop glibc from returning big activation buffers to the OS after every forward.

    Without it each segment pays for fresh mmap/munmap page faults of its
    activations (measured ~20% of the time of an HTDemucs forward). The settings
    are process-wide and only change where memory comes from, not the results.
    Returns True when applied. Set UNMIX_NO_MALLOC_TUNING=1 to skip.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("UNMIX_NO_MALLOC_TUNING"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's mallopt parameter numbers
    # Serve every allocation from the heap (no per-buffer mmap/munmap) and give
    # freed memory back to the OS only when over 1 GiB of it sits at the top.
    ok = mallopt(m_mmap_max, 0) == 1
    ok = mallopt(m_trim_threshold, 1024 * 1024 * 1024) == 1 and ok
    _ALLOCATOR_TUNED = ok
    if ok:
        global _MALLOC_TRIM
        _MALLOC_TRIM = getattr(libc, "malloc_trim", None)
    return ok


# ----------------------------------------------------------------------------- windows


def triangle_window(length: int, first: bool, last: bool) -> Tensor:
    """Demucs' cross-fade: a triangle peaking mid-segment, scaled to a max of 1. Shape [T]."""
    del first, last  # the triangle never changes at the ends of the track
    half = length // 2
    ramp = torch.cat([torch.arange(1, half + 1), torch.arange(length - half, 0, -1)])
    return ramp.to(torch.float32) / float(ramp.max())


def fade_window(length: int, first: bool, last: bool) -> Tensor:
    """Music-Source-Separation-Training style: flat, with linear fades of length//10.

    The first segment of the track has no fade-in and the last no fade-out, so
    that the track's edges keep a non-zero weight. Shape [T].
    """
    fade = length // 10
    window = torch.ones(length, dtype=torch.float32)
    if fade > 0:
        window[:fade] = torch.linspace(0, 1, fade)
        window[-fade:] = torch.linspace(1, 0, fade)
        # MSST's if/elif: a segment that is both (a one-segment track) only loses its fade-in.
        if first:
            window[:fade] = 1
        elif last:
            window[-fade:] = 1
    return window


def msst_fade_edges(index: int, count: Optional[int], batch: int) -> Tuple[bool, bool]:
    """(first, last) for `fade_window` of segment `index` of `count`, as MSST's `demix` decides.

    MSST decides once per batch of `batch` consecutive segments (its inference.batch_size),
    after running it: "first" when the batch ends with segment 0 (so only with batch 1, or a
    one-segment track), otherwise "last" for every segment of the track's final batch.
    `count` None: the track is known to go on past this segment's batch.
    """
    if index == 0 and (batch == 1 or count == 1):
        return True, False
    return False, count is not None and index // batch == (count - 1) // batch


# A window function takes (segment length, is the track's first segment, is the
# last) and returns the segment's blending weights [T]. Add new ones here.
WINDOWS: Dict[str, Callable[[int, bool, bool], Tensor]] = {
    "triangle": triangle_window,
    "fade": fade_window,
}


def fill_like_msst(chunk: Tensor, length: int) -> Tensor:
    """Pad a short segment [C, n] to [C, length] at its end, as MSST's `demix` does.

    Reflection when the segment is over half the length (a mirror image keeps
    the spectrum of the padding close to the music's), zeros otherwise (a
    reflection longer than the segment is impossible).
    """
    n = chunk.shape[-1]
    mode = "reflect" if n > length // 2 else "constant"
    return torch.nn.functional.pad(chunk[None], (0, length - n), mode=mode)[0]


@dataclass(frozen=True)
class EdgeRule:
    """How a chunking style treats the ends of the track.

    Attributes:
        reflect_track: pad the track at both ends with (segment - stride)
            mirrored samples before cutting it, when it is longer than twice
            that; the padding's outputs are dropped. Every real sample is then
            covered by as many segments as one in the middle.
        fill_short: when set, segments shorter than the segment length (at the
            end) are padded to the full length by this function [C, n] -> [C, N]
            and the first n output samples are kept; otherwise the model gets
            the short segment (with the plan's context rule).
        edges: (segment index, segment count or None while the track may go on past the
            index's window batch, window batch) -> the (first, last) flags of its window;
            None: first is segment 0, last the final segment.
        exact_samples: segment and stride are whole numbers of samples in the
            recipe (MSST's chunk_size and chunk_size // num_overlap), so seconds
            are converted back to the nearest whole sample when float error
            lies in between; otherwise truncated, as Demucs' int(rate * segment).
    """

    reflect_track: bool = False
    fill_short: Optional[Callable[[Tensor, int], Tensor]] = None
    exact_samples: bool = False
    edges: Optional[Callable[[int, Optional[int], int], Tuple[bool, bool]]] = None

    def samples(self, seconds: float, rate: float) -> int:
        """Whole samples in `seconds` at `rate` (see `exact_samples`)."""
        value = float(seconds) * rate
        nearest = round(value)
        if self.exact_samples and abs(value - nearest) < 1e-6:
            return int(nearest)
        return int(value)


# Window name -> edge rule. Demucs ("triangle") pads nothing; the MSST recipe
# ("fade") mirrors the track's ends and fills short segments.
EDGE_RULES: Dict[str, EdgeRule] = {
    "triangle": EdgeRule(),
    "fade": EdgeRule(reflect_track=True, fill_short=fill_like_msst, exact_samples=True, edges=msst_fade_edges),
}


# ----------------------------------------------------------------------------- plans


def _nullcontext_factory():
    return contextlib.nullcontext()


@dataclass
class _Plan:
    """How one bag member is chunked (from its contract and the options)."""

    model: nn.Module
    segment_length: int  # samples per segment
    stride: int
    window: str
    fixed_input: Optional[int]  # when set, every segment goes in with exactly this length
    context: Optional[Callable[[int], int]] = None  # Contract.input_length
    around_forward: Callable[[], object] = _nullcontext_factory  # Contract.forward_context
    edge: int = 0  # mirrored samples added at each end of a long enough track (EdgeRule.reflect_track)
    fill_short: Optional[Callable[[Tensor, int], Tensor]] = None  # see EdgeRule.fill_short
    bf16: bool = True  # Contract.bf16
    auto_bf16: bool = False  # Contract.auto_bf16
    window_batch: int = 1  # Contract.window_batch
    edges: Optional[Callable[[int, Optional[int], int], Tuple[bool, bool]]] = None  # EdgeRule.edges

    def window_edges(self, offset: int, total: Optional[int]) -> Tuple[bool, bool]:
        """(first, last) window flags of the segment at lane position `offset` (total: lane length)."""
        if self.edges is None:
            return offset == 0, total is not None and offset + self.stride >= total
        count = None if total is None else -(-total // self.stride)
        return self.edges(offset // self.stride, count, self.window_batch)

    def settled(self, offset: int, available: int) -> bool:
        """Whether `available` lane samples show that the track goes on past the window batch
        of the segment at `offset` (so its window flags are final before the track ends)."""
        group = self.window_batch * self.stride
        return available > (offset // group + 1) * group

    def input_length(self, n: int) -> int:
        """Samples fed to the model for a segment of n samples (the rest is context)."""
        if self.fill_short is not None:
            return self.segment_length
        if self.fixed_input is not None:
            return self.fixed_input
        return int(self.context(n)) if self.context is not None else n

    def window_for(self, n: int, first: bool, last: bool, cache: dict) -> Tensor:
        if self.window == "triangle" and self.stride >= self.segment_length:
            # Segments that do not overlap: each sample has one segment's weight, which the blend
            # divides out again, and the triangle has no zeros, so ones give the same blend while
            # sparing a window of the whole segment (1200 s for UVR's models: 200 MB kept, 0.85 GB
            # while it is built, per track).
            return torch.ones(n)
        key = (first, last)
        if key not in cache:
            cache[key] = WINDOWS[self.window](self.segment_length, first, last)
        return cache[key][:n]


def _make_plan(model: nn.Module, contract: Contract, options: EngineOptions) -> _Plan:
    overlap = contract.overlap if options.overlap is None else options.overlap
    if not 0 <= overlap < 1:
        raise UsageError(f"overlap must be in [0, 1), got {overlap}")
    if contract.window not in WINDOWS:
        raise UsageError(f"unknown window {contract.window!r}", hint=f"known: {', '.join(WINDOWS)}")
    own = contract.segment
    fixed_input = None
    if options.segment is not None:
        segment = options.segment  # positive: EngineOptions checked it
        if contract.segment_rule == "max":
            if own is not None and segment > own:
                raise UsageError(f"segment {segment} s is longer than the {own:.2f} s "
                                 "this model was trained on", hint="use a shorter --segment")
            # An explicit segment goes in as is, and the model pads it inside.
            fixed_input = int(segment * contract.samplerate)
    else:
        segment = own
    if segment is None:
        raise UsageError("the model has no segment length and none was given",
                         hint="pass a segment length")
    rule = EDGE_RULES.get(contract.window, EdgeRule())
    segment_length = rule.samples(segment, contract.samplerate)
    stride = rule.samples(1 - overlap, segment_length)
    if segment_length <= 0 or stride <= 0:
        raise UsageError(f"segment {segment} s with overlap {overlap} leaves no samples to advance by")
    edge = segment_length - stride if rule.reflect_track else 0
    fill_short = rule.fill_short if contract.segment_rule == "fixed" else None
    if contract.segment_rule == "fixed" and fill_short is None:
        fill_short = _fill_zeros
    return _Plan(model, segment_length, stride, contract.window, fixed_input, contract.input_length,
                 contract.forward_context, edge, fill_short, contract.bf16, contract.auto_bf16,
                 contract.window_batch, rule.edges)


def _fill_zeros(chunk: Tensor, length: int) -> Tensor:
    """Pad a short segment [C, n] with zeros to [C, length] (a fixed-length model under a window
    whose edge rule has no fill of its own)."""
    return torch.nn.functional.pad(chunk, (0, length - chunk.shape[-1]))


# ----------------------------------------------------------------------------- model calls


def _is_oom(error: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


class _Runner:
    """Runs members on batches of segments: device, precision, out-of-memory fallback."""

    def __init__(self, device: torch.device, precision: str, batch_size: int):
        # The options were checked by EngineOptions; "auto" is settled per device (here)
        # and per model (`forward`'s auto_bf16).
        self.device = device
        self.requested = precision
        self.precision = self._settle(precision, device)  # what "auto" gives a model measured faster in bf16
        self.batch_size = batch_size
        self._cpu_forwards = 0

    @staticmethod
    def _settle(precision: str, device: torch.device) -> str:
        chosen, warning = choose_precision(precision, device.type, bf16_support(device))
        if warning:
            _warn_once(warning)
        return chosen

    def precision_for(self, auto_bf16: bool, bf16: bool = True) -> str:
        """The precision a model runs in: "auto" gives bf16 only to a model whose contract says
        bf16 measured faster for it (e.g. HTDemucs), on hardware where bf16 is fast; a model
        that cannot run in bf16 (`bf16` False) runs in fp32 whatever was asked."""
        if not bf16 and self.requested == "bf16":
            _warn_once("--precision bf16: this model runs in fp32 only (its kernels write into "
                       "fp32 buffers), so it runs in fp32")
        return _member_precision(self.requested, self.precision, auto_bf16, bf16)

    def _autocast(self, precision: str):
        if precision == "bf16" and self.device.type in ("cpu", "cuda"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.float16)
        return _nullcontext()

    def forward(self, model: nn.Module, batch: Tensor, auto_bf16: bool = False, bf16: bool = True) -> Tensor:
        """[B, C, P] on any device -> [B, S, C, P'] float32 on the CPU.

        `auto_bf16`, `bf16`: the model's contract (see `precision_for`).
        On out-of-memory: retry in halves (and keep the smaller batch size from
        then on); a single segment that does not fit moves to the CPU with a warning.
        """
        try:
            return self._forward_on_device(model, batch, auto_bf16, bf16)
        except Exception as error:  # noqa: BLE001 - only out-of-memory is handled
            if not _is_oom(error):
                raise
            oom = error
        _empty_cache(self.device)
        if batch.shape[0] > 1:
            half = batch.shape[0] // 2
            self.batch_size = min(self.batch_size, half)
            return torch.cat([self.forward(model, batch[:half], auto_bf16, bf16),
                              self.forward(model, batch[half:], auto_bf16, bf16)])
        if self.device.type == "cpu":
            raise DeviceError("out of memory on the CPU for a single segment",
                              hint="use a shorter segment or close other programs") from oom
        warnings.warn(f"out of memory on {self.device} even for a single segment; "
                      "continuing on the CPU (slower)", RuntimeWarning, stacklevel=2)
        self.device = torch.device("cpu")
        self.precision = self._settle(self.requested, self.device)  # "auto" on the CPU may differ
        return self._forward_on_device(model, batch, auto_bf16, bf16)

    def _forward_on_device(self, model: nn.Module, batch: Tensor, auto_bf16: bool = False,
                           bf16: bool = True) -> Tensor:
        if isinstance(model, nn.Module) and _module_device(model) not in (None, self.device):
            model.to(self.device)
        with torch.inference_mode(), self._autocast(self.precision_for(auto_bf16, bf16)), _fast_attention():
            out = model(batch.to(self.device))
        out = out.float().cpu()
        if self.device.type == "cpu":
            self._release_free_heap()
        return out

    def _release_free_heap(self) -> None:
        """Every few CPU forwards, give the heap's free pages back to the OS.

        With the tuned allocator (no mmap, 1 GiB trim threshold) freed activations stay
        resident and the heap fragments as segments go by, so peak RSS creeps up with the
        track's length. malloc_trim(0) releases free pages anywhere in the heap, but the
        next forward then faults its whole working set in again (what the tuning saves).
        Measured with the released HTDemucs, peak RSS at ~1.5 and ~5.5 min of audio:
        no trim 1208 -> 1297 MB; every 16 forwards 1104 -> 1218 MB; every 8 1180 -> 1180 MB;
        every forward 1111 -> 1117 MB but fp32 ~18% slower. Every 8 costs about an eighth
        of that. Re-measured later with the peak taken from VmHWM (bench_engine), every 8
        gave 1171 MB at 1.5 min and 1216 MB at 4 min: it slows the creep, it does not stop
        it. Trimming every 4 forwards, or whenever the resident size rose 48 MB, measured
        no better (1250 and 1274 MB at 1.5 min). The creep itself went once the engine's
        state stopped being reallocated between forwards (`_Sliding`) and DConv stopped
        making 33-66 MB temporaries (`DConv.forward_rows`): 4 min then peaked at 1071 MB
        with this trim and 1055 MB without, so the trim is now only a guard.
        """
        if _MALLOC_TRIM is None:
            return
        self._cpu_forwards += 1
        if self._cpu_forwards % TRIM_EVERY_FORWARDS == 0:
            _MALLOC_TRIM(0)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _module_device(model: nn.Module) -> Optional[torch.device]:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


# ----------------------------------------------------------------------------- lanes


class _Sliding:
    """Rows of samples over a sliding range of positions [start, end), kept in storage
    that is allocated once and reused. `[R, t]`

    The engine's long-lived state (the input still needed, the overlap-add sums) lives
    through every forward. Rebuilt with cat/clone for each block, those buffers landed
    in the holes that the forward's activations had just freed and pinned them, which
    fragments the heap (and so peak RSS) under the tuned allocator. Here positions slide
    through the storage; it is compacted in place and only grows (by doubling) while the
    first segments set the size it needs.
    """

    def __init__(self, rows: int):
        self.storage = torch.zeros(rows, 0)
        self.head = 0  # storage column of position `start`
        self.start = 0
        self.end = 0

    def view(self, begin: int, end: int) -> Tensor:
        """Positions [begin, end) (within [start, end)), a view valid until the next change. [R, t]"""
        lo = self.head + begin - self.start
        return self.storage[:, lo:lo + end - begin]

    def extend(self, end: int) -> None:
        """Make positions up to `end` available, the new ones zero."""
        if end <= self.end:
            return
        self._reserve(end - self.start)
        lo = self.head + self.end - self.start
        self.storage[:, lo:self.head + end - self.start].zero_()
        self.end = end

    def append(self, block: Tensor) -> None:
        """Copy `block` [R, t] in after `end`."""
        length = block.shape[1]
        self._reserve(self.end - self.start + length)
        lo = self.head + self.end - self.start
        self.storage[:, lo:lo + length] = block
        self.end += length

    def drop_before(self, position: int) -> None:
        cut = min(position, self.end) - self.start
        if cut > 0:
            self.head += cut
            self.start += cut

    def _reserve(self, length: int) -> None:
        """Room for `length` positions from `start`."""
        rows, capacity = self.storage.shape
        if self.head + length <= capacity:
            return
        live = self.storage[:, self.head:self.head + self.end - self.start]
        if length > capacity:
            grown = torch.zeros(rows, max(length, 2 * capacity))
            grown[:, :live.shape[1]] = live
            self.storage = grown
        elif live.shape[1] <= self.head:  # source and destination do not overlap
            self.storage[:, :live.shape[1]] = live
        else:
            self.storage[:, :live.shape[1]] = live.clone()
        self.head = 0


class _InputBuffer:
    """The normalised mix seen so far, minus what no lane needs any more. [C, t] float32."""

    def __init__(self, channels: int):
        self.samples = _Sliding(channels)
        self.total: Optional[int] = None  # known once the stream has ended (or given)

    @property
    def start(self) -> int:
        """Mix position of the oldest sample kept."""
        return self.samples.start

    @property
    def end(self) -> int:
        """Mix position one past the last sample received."""
        return self.samples.end

    def append(self, block: Tensor) -> None:
        self.samples.append(block)  # a copy: the caller may reuse the memory of its blocks

    def read(self, begin: int, length: int, mirror: int = 0) -> Tensor:
        """Mix samples [begin, begin + length) with zeros outside the track. [C, length]

        With `mirror` > 0, the `mirror` samples before the track and (once its
        end is known) after it are the track reflected about its first / last
        sample, like torch's "reflect" padding; zeros lie beyond those.
        """
        if mirror and (begin < 0 or (self.total is not None and begin + length > self.total)):
            return self._read_mirrored(begin, length, mirror)
        out_begin, out_end = max(begin, 0), min(begin + length, self.end)
        if out_begin >= out_end:
            return torch.zeros(self.samples.storage.shape[0], length)
        piece = self.samples.view(out_begin, out_end)
        left, right = out_begin - begin, begin + length - out_end
        if left or right:
            piece = torch.nn.functional.pad(piece, (left, right))
        return piece

    def _read_mirrored(self, begin: int, length: int, mirror: int) -> Tensor:
        pos = torch.arange(begin, begin + length)
        src = pos.clone()
        head = (pos < 0) & (pos >= -mirror)
        src[head] = -pos[head]
        if self.total is not None:
            tail = (pos >= self.total) & (pos < self.total + mirror)
            src[tail] = 2 * (self.total - 1) - pos[tail]
        inside = (src >= 0) & (src < self.end)  # positions left unmapped outside the track stay zero
        assert bool((src[inside] >= self.start).all()), "mirrored samples were already dropped"
        out = torch.zeros(self.samples.storage.shape[0], length)
        out[:, inside] = self.samples.view(self.start, self.end)[:, src[inside] - self.start]
        return out

    def drop_before(self, position: int) -> None:
        self.samples.drop_before(position)


class _Lane:
    """One member's pass over the mix delayed by `delay` samples (a time shift).

    The lane sees v = zeros(delay) ++ mix (length delay + L), or, when the
    plan mirrors the track's ends, zeros(delay) ++ mirror(edge) ++ mix ++
    mirror(edge) (`lead` = delay + edge samples before the mix), and cuts it at offsets
    0, stride, 2*stride, ... into segments of `segment_length` (the last ones
    shorter), and overlap-adds the model outputs of the requested stems with the
    window. Positions before the next segment's offset are final.
    """

    def __init__(self, plan: _Plan, stem_index: List[int], delay: int, channels: int):
        self.plan = plan
        self.stem_index = stem_index
        self.delay = delay
        # Mirrored samples at each end: decided once the track is known to be
        # longer than 2 * plan.edge (or has ended shorter); None until then.
        self.edge: Optional[int] = 0 if plan.edge == 0 else None
        self.next_offset = 0  # lane position of the next segment to run
        self.done = False
        self.windows: dict = {}
        # Overlap-add state over lane positions: S*C rows of sums, then a row of weights.
        self.sums = _Sliding(len(stem_index) * channels + 1)
        self.channels = channels

    @property
    def lead(self) -> int:
        """Lane samples before the first sample of the mix."""
        return self.delay + (self.edge or 0)

    def length(self, total: Optional[int]) -> Optional[int]:
        """Lane length for a mix of `total` samples (None while unknown)."""
        return None if total is None else total + self.delay + 2 * (self.edge or 0)

    def final_until(self, lane_length: Optional[int]) -> int:
        """Lane positions below this will not change any more."""
        if self.done:
            assert lane_length is not None
            return lane_length
        return self.next_offset

    def ready_segments(self, buffer: _InputBuffer, limit: int) -> List[Tuple[int, int, int, int]]:
        """Segments whose input is fully known: (offset, n, input length, input start)."""
        out = []
        total = self.length(buffer.total)
        available = buffer.end + self.lead  # lane samples received so far
        offset = self.next_offset
        plan = self.plan
        while len(out) < limit:
            if total is not None and offset >= total:
                break
            if total is not None:
                n = min(plan.segment_length, total - offset)
            else:
                n = plan.segment_length
            length = plan.input_length(n)
            if plan.fill_short is not None:
                start = offset  # the segment itself, padded at its end by fill_short
            else:
                start = offset - (length - n) // 2  # context is taken evenly from both sides
            if total is None and start + length > available:
                break  # its right context has not arrived yet
            if total is None and offset + n > available:
                break
            if total is None and plan.edges is not None and not plan.settled(offset, available):
                break  # its window depends on whether the track ends within its batch
            out.append((offset, n, length, start))
            offset += plan.stride
        return out

    def add(self, offset: int, n: int, stems: Tensor, first: bool, last: bool) -> None:
        """Overlap-add a segment's output [S, C, n] at lane position `offset`."""
        self.sums.extend(offset + n)
        window = self.plan.window_for(n, first, last, self.windows)
        rows = self.sums.view(offset, offset + n)  # [S*C + 1, n]
        stems_n = stems.shape[0] * self.channels
        rows[:stems_n].view(stems.shape).addcmul_(stems, window)  # [S, C, n]
        rows[stems_n] += window

    def take(self, begin: int, end: int) -> Tensor:
        """Blended output for lane positions [begin, end), then forget what lies before end.

        Returns [S, C, end - begin]; positions of zero total weight (never covered, or only at
        the zero ends of "fade" windows) are 0, as MSST's demix makes them (nan_to_num).
        """
        assert begin >= self.sums.start, "lane output requested twice"
        self.sums.extend(end)
        rows = self.sums.view(begin, end)  # [S*C + 1, t]
        weight = rows[-1]
        out = torch.where(weight > 0, rows[:-1] / weight, 0.0)
        out = out.view(len(self.stem_index), self.channels, end - begin)
        self.sums.drop_before(end)
        return out


# ----------------------------------------------------------------------------- streaming core


class _StreamCore:
    def __init__(self, bag: ModelBag, stems: List[str], options: EngineOptions, device: torch.device,
                 channels: int, total_frames: Optional[int], progress: Optional[Progress]):
        self.bag = bag
        self.stems = stems
        self.total_frames = total_frames
        self.progress = progress
        self.runner = _Runner(device, options.precision, options.batch_size)
        self.shifts = options.shifts
        self.tta = bool(options.tta)
        stem_index = [bag.sources.index(s) for s in stems]
        members = bag.members_for(stems)
        self.members = members
        self.plans = {i: _make_plan(bag.models[i], bag.contracts[i], options) for i in members}
        # Per-stem weights of all members (as the reference sums them, skipped ones add 0).
        weights = bag.weights.tolist()
        self.member_weights = {i: [weights[i][k] for k in stem_index] for i in members}
        self.totals = [sum(float(weights[i][k]) for i in range(len(weights))) for k in stem_index]
        for k, total in zip(stems, self.totals):
            if total == 0:
                raise UsageError(f"no model of the bag produces stem {k!r}")
        # Shifts are drawn in the reference's order (member by member, shift by shift),
        # from our own generator so that a seed gives the same output every time.
        rng = random.Random(options.seed)
        max_shift = int(MAX_SHIFT_SECONDS * bag.samplerate)
        self.lanes: Dict[int, List[_Lane]] = {}
        for i in range(len(bag.models)):
            if options.shifts:
                delays = [max_shift - rng.randint(0, max_shift) for _ in range(options.shifts)]
            else:
                delays = [0]
            if i in members:
                self.lanes[i] = [_Lane(self.plans[i], stem_index, d, channels) for d in delays]
        self.all_lanes = [lane for i in members for lane in self.lanes[i]]
        # The end of the track is only trusted once the stream ends (buffer.total);
        # total_frames only sizes the progress reports.
        self.buffer = _InputBuffer(channels)
        self.emitted = 0
        self.max_context = max(p.input_length(p.segment_length) for p in self.plans.values())
        self.max_context = max(self.max_context, max(p.segment_length for p in self.plans.values()))
        # The last segments mirror up to `edge` samples before them.
        self.max_context += max(p.edge for p in self.plans.values())
        self.reported = -1

    # -- feeding

    def push(self, block: Tensor) -> List[Dict[str, Tensor]]:
        self.buffer.append(block)
        return self._advance()

    def finish(self) -> List[Dict[str, Tensor]]:
        self.buffer.total = self.buffer.end
        return self._advance()

    def _advance(self) -> List[Dict[str, Tensor]]:
        for lane in self.all_lanes:
            self._run_lane(lane)
        return self._emit()

    def _run_lane(self, lane: _Lane) -> None:
        plan = lane.plan
        if lane.edge is None:
            # MSST mirrors the ends only of tracks longer than twice the mirrored length.
            if self.buffer.end > 2 * plan.edge:
                lane.edge = plan.edge
            elif self.buffer.total is not None:
                lane.edge = 0
            else:
                return
        total = lane.length(self.buffer.total)
        while not lane.done:
            ready = lane.ready_segments(self.buffer, self.runner.batch_size)
            if not ready:
                if total is not None and lane.next_offset >= total:
                    lane.done = True
                return
            if total is None and len(ready) < self.runner.batch_size:
                return  # wait for input enough to fill a whole batch
            # A batch holds consecutive segments of one input length (only the last ones differ).
            same = 1
            while same < len(ready) and ready[same][2] == ready[0][2]:
                same += 1
            ready = ready[:same]
            inputs = torch.stack([self._segment_input(lane, n, length, start)
                                  for (_, n, length, start) in ready])  # [B, C, P]
            with plan.around_forward():
                outputs = self._forward(plan, inputs)  # [B, S, C, P']
            for (offset, n, _, _), out in zip(ready, outputs):
                # Filled segments keep the head of the output, context-padded ones its middle.
                lo = 0 if plan.fill_short is not None else (out.shape[-1] - n) // 2
                stems = out[lane.stem_index, :, lo:lo + n]  # [S, C, n]
                first, last = plan.window_edges(offset, total)
                lane.add(offset, n, stems, first, last)
                lane.next_offset = offset + plan.stride
            if total is not None and lane.next_offset >= total:
                lane.done = True
            self._report()

    def _forward(self, plan: _Plan, inputs: Tensor) -> Tensor:
        """[B, C, P] -> [B, S, C, P']: one forward, or MSST's test-time augmentation.

        With `tta`, the channels swapped and the polarity inverted go in as well; each
        result is brought back (channels swapped again, sign flipped) and the three are
        averaged, summed in MSST's order. Since overlap-add and the mix normalisation are
        linear, averaging per segment equals MSST's averaging of three whole-track runs.
        """
        run = functools.partial(self.runner.forward, plan.model, auto_bf16=plan.auto_bf16, bf16=plan.bf16)
        out = run(inputs)
        if not self.tta:
            return out
        out = out + run(inputs.flip(1)).flip(2)
        out = out - run(-inputs)
        return out / 3

    def _segment_input(self, lane: _Lane, n: int, length: int, start: int) -> Tensor:
        """The model input [C, length] of a segment of n samples starting at lane position `start`."""
        plan = lane.plan
        if plan.fill_short is not None and n < length:
            return plan.fill_short(self.buffer.read(start - lane.lead, n, lane.edge), length)
        return self.buffer.read(start - lane.lead, length, lane.edge)

    def _report(self) -> None:
        if self.progress is None:
            return
        length = self.total_frames if self.total_frames is not None else self.buffer.end
        done = 0
        for lane in self.all_lanes:
            reached = length if lane.done else min(max(lane.next_offset - lane.lead, 0), length)
            done += reached
        done //= len(self.all_lanes)
        if self.buffer.total is not None and all(lane.done for lane in self.all_lanes):
            done = self.buffer.total
        if done != self.reported:
            self.reported = done
            self.progress(done, self.total_frames)

    # -- output

    def _emit(self) -> List[Dict[str, Tensor]]:
        """The finished region [emitted, upto) of every requested stem, as [C, t] tensors."""
        upto = self.buffer.end
        total = self.buffer.total
        for lane in self.all_lanes:
            upto = min(upto, lane.final_until(lane.length(total)) - lane.lead)
        if total is not None and all(lane.done for lane in self.all_lanes):
            upto = total
            self._report()
        # Keep the input any remaining segment may still read (its left context).
        keep = min((lane.next_offset - lane.lead for lane in self.all_lanes), default=upto)
        self.buffer.drop_before(keep - self.max_context)
        if upto <= self.emitted:
            return []
        begin, end = self.emitted, upto
        self.emitted = upto
        estimate = None
        for i in self.members:
            lanes = self.lanes[i]
            member = None
            for lane in lanes:  # shifts, averaged
                part = lane.take(begin + lane.lead, end + lane.lead)
                member = part if member is None else member + part
            if self.shifts:
                member = member / self.shifts
            for k, weight in enumerate(self.member_weights[i]):
                member[k] *= weight
            estimate = member if estimate is None else estimate + member
        for k, total_weight in enumerate(self.totals):
            estimate[k] /= total_weight
        return [{stem: estimate[k] for k, stem in enumerate(self.stems)}]


# ----------------------------------------------------------------------------- public API


def _check_stems(bag: ModelBag, stems: Optional[Sequence[str]]) -> List[str]:
    if stems is None:
        return list(bag.sources)
    stems = list(stems)
    unknown = [s for s in stems if s not in bag.sources]
    if unknown or not stems:
        raise UsageError(f"unknown stem(s) {', '.join(unknown) or '(none given)'} for model {bag.name}",
                         hint=f"this model gives: {', '.join(bag.sources)}")
    return stems


def _as_tensor(block) -> Tensor:
    if isinstance(block, np.ndarray):
        block = torch.from_numpy(np.ascontiguousarray(block))
    block = block.detach().to("cpu", torch.float32)
    if block.dim() != 2:
        raise UsageError(f"audio blocks must be [channels, samples], got shape {tuple(block.shape)}")
    return block


def mix_stats(mix: Tensor, rule: str = "demucs") -> Tuple[Tensor, Tensor]:
    """(mean, std) of the mono mix [C, T] (0-d tensors), as the model's recipe normalises
    (`rule`, see `std_by_rule`).

    A streaming caller computes them in a first pass; plain floats work as well.
    """
    mono = mix.mean(0)
    # One frame has no spread: the unbiased estimate would be NaN (0/0), so take 0 there.
    correction = 1 if rule == "demucs" and mono.numel() > 1 else 0
    return mono.mean(), torch.as_tensor(std_by_rule(float(mono.std(correction=correction)), rule))


def std_by_rule(std: float, rule: str) -> float:
    """The divisor a recipe standardises by, from the mono mix's std (unbiased for "demucs",
    population for "msst"): Demucs adds 1e-8; MSST uses 1 where the std is at most float32's
    eps or not finite (digital silence stays silent either way)."""
    if rule == "msst":
        return std if math.isfinite(std) and std > float(np.finfo(np.float32).eps) else 1.0
    return std + 1e-8


Stats = Union[Tuple[float, float], Callable[[str], Tuple[float, float]], None]
"""The whole mix's (mean, std), or a function giving them for a normalisation rule (an
ensemble's members may normalise by different rules)."""


def separate_stream(bag: ModelBag, blocks: Iterable, total_frames: Optional[int],
                    stems: Optional[Sequence[str]], options: EngineOptions, device: torch.device,
                    progress: Optional[Progress] = None,
                    stats: Stats = None) -> Iterator[Dict[str, Tensor]]:
    """Separate a stream of mix blocks [C, t], yielding finished stem blocks in order.

    Args:
        bag: the models (a `ModelBag`, or an ensemble of them: `ensemble_bag.EnsembleBag`).
        blocks: numpy arrays or tensors [C, t] at the bag's sample rate.
        total_frames: the track length if known (only used for progress).
        stems: the stems wanted (None = all of the bag's).
        options: segment, overlap, shifts, batching, precision.
        device: where the models run.
        progress: called as progress(done_frames, total_frames) after each model call.
        stats: (mean, std) of the whole mix (see `mix_stats`), or rule -> (mean, std);
            required when the bag normalises, since a stream cannot look ahead.

    Yields:
        {stem: Tensor [C, t]} float32 on the CPU; the blocks together cover the
        whole track, each sample exactly once, as soon as no later segment can
        change them (memory does not grow with the track length).
    """
    # An ensemble opens its own stream (one BagStream per member, combined).
    opener = getattr(bag, "open_stream", None) or functools.partial(BagStream, bag)
    stream = opener(stems, options, device, total_frames, progress, stats)
    for block in blocks:
        yield from stream.push(_as_tensor(block))
    yield from stream.finish()


class BagStream:
    """One bag's separation, fed block by block: `push(block [C, t])` and `finish()` return the
    stem blocks now final ({stem: [C, t']}, in order). `separate_stream` is its loop; an
    ensemble feeds one per member with the same blocks."""

    def __init__(self, bag: ModelBag, stems: Optional[Sequence[str]], options: EngineOptions,
                 device: torch.device, total_frames: Optional[int] = None,
                 progress: Optional[Progress] = None, stats: Stats = None):
        self.bag = bag
        self.stems = _check_stems(bag, stems)
        if callable(stats):
            stats = stats(bag.normalize_rule) if bag.normalize else None
        if bag.normalize and stats is None:
            raise UsageError("separate_stream needs the mix statistics to normalise",
                             hint="compute them with mix_stats() in a first pass")
        self.mean, self.std = stats if bag.normalize else (None, None)
        self.options, self.device = options, device
        self.total_frames, self.progress = total_frames, progress
        self._core: Optional[_StreamCore] = None
        if device.type == "cpu":
            tune_cpu_allocator()

    def push(self, block: Tensor) -> List[Dict[str, Tensor]]:
        bag = self.bag
        if block.shape[0] != bag.audio_channels:
            raise UsageError(f"the mix has {block.shape[0]} channel(s), model {bag.name} "
                             f"expects {bag.audio_channels}", hint="decode with the model's channel count")
        if self._core is None:
            self._core = _StreamCore(bag, self.stems, self.options, self.device, block.shape[0],
                                     self.total_frames, self.progress)
        if bag.normalize:
            block = (block - self.mean) / self.std
        return list(_denormalised(self._core.push(block), bag.normalize, self.mean, self.std))

    def finish(self) -> List[Dict[str, Tensor]]:
        if self._core is None:
            return []
        return list(_denormalised(self._core.finish(), self.bag.normalize, self.mean, self.std))


def _denormalised(outputs: List[Dict[str, Tensor]], normalize: bool, mean, std):
    for out in outputs:
        if normalize:
            for wav in out.values():  # fresh tensors of _emit's: undone in place
                wav.mul_(std).add_(mean)
        yield out


# Segments per block when the in-memory path feeds the streaming core, in
# units of the longest segment; small keeps the overlap-add state small.
_BLOCK_SEGMENTS = 4


def separate_tensor(bag: ModelBag, mix: Tensor, stems: Optional[Sequence[str]], options: EngineOptions,
                    device: torch.device, progress: Optional[Progress] = None) -> Dict[str, Tensor]:
    """Separate a whole mix held in memory.

    Args:
        mix: [C, T] float32 at the bag's sample rate.
    Returns:
        {stem: Tensor [C, T]} float32 on the CPU, for the requested stems.
    """
    mix = _as_tensor(mix)
    stems = _check_stems(bag, stems)

    def stats(rule: str) -> Tuple[Tensor, Tensor]:
        return mix_stats(mix, rule)

    length = mix.shape[1]
    out = {stem: torch.empty(mix.shape[0], length) for stem in stems}
    if length == 0:
        return out
    block = _BLOCK_SEGMENTS * max(int(bag.samplerate * float(c.segment or 1)) for c in bag.contracts)
    blocks = (mix[:, i:i + block] for i in range(0, length, block))
    position = 0
    for piece in separate_stream(bag, blocks, length, stems, options, device, progress, stats):
        size = next(iter(piece.values())).shape[1]
        for stem, wav in piece.items():
            out[stem][:, position:position + size] = wav
        position += size
    assert position == length
    return out


@contextmanager
def _fast_attention():
    """Route nn.MultiheadAttention through scaled_dot_product_attention.

    The fused "fast path" materialises full score matrices; SDPA is ~10% faster
    for HTDemucs on CPU and agrees to ~1e-7. The switch is global, so it is only
    flipped around each model call and restored afterwards.
    """
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)
