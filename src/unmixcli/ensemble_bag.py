"""Several models run as one: an ensemble of model bags on the same input, streaming.

    bag = EnsembleBag([bag_a, bag_b], EnsembleOptions("avg_fft", members=2), name="a+b")
    engine.separate_stream(bag, blocks, ...)      # as for one ModelBag

Each member is an ordinary `ModelBag`, run by its own `engine.BagStream` (its own
segments, overlap and normalisation) on the same mix blocks. Members finish
samples at different times (their segments differ), so their stems wait in small
queues until every member has reached the same sample; those aligned blocks go
into one `ensemble.StreamingEnsemble` per stem, whose output equals combining the
members' whole-track stems (`ensemble.combine`). Memory: the members' own
buffers, plus queues no longer than the largest member's latency and the
ensemble's STFT window; nothing grows with the track.

Stems line up by name, case-insensitively ("Vocals" is "vocals"), and an ensemble
offers only the stems every member can give (`stem_plan`):

* a stem the member has;
* `instrumental` from a member without it but with `vocals`: by default (rule
  "auto") the mix minus vocals for a vocals model (one or two stems), the sum of
  its other stems for a multi-stem model; rule "residual" or "sum" forces one;
* `vocals` from a member with `instrumental` only: the mix minus instrumental.

All members must share the sample rate and channel count (they read one decoded
mix). Shapes: C channels, t samples of a block, M members.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import engine
from .ensemble import StreamingEnsemble, check_weights
from .errors import UsageError
from .models.bag import Contract, ModelBag

INSTRUMENTAL_RULES = ("auto", "residual", "sum")


@dataclass(frozen=True)
class EnsembleOptions:
    """How the members' stems are combined; checked here, before any model loads.

    Args:
        algorithm: one of `ensemble.ALGORITHMS` (default avg_wave, MSST's and audio-separator's).
        members: how many models (two or more).
        weights: one per member, for avg_wave / avg_fft only.
        instrumental: how a member without an `instrumental` stem makes one ("auto",
            "residual": mix minus vocals, "sum": its non-vocal stems).
    """

    algorithm: str = "avg_wave"
    members: int = 2
    weights: Optional[Tuple[float, ...]] = None
    instrumental: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.members, int) or self.members < 2:
            raise UsageError(f"an ensemble needs two or more models, got {self.members}",
                             hint="give -m more than once, e.g. -m A -m B")
        weights = check_weights(self.algorithm, self.members, self.weights)
        object.__setattr__(self, "weights", None if weights is None else tuple(weights))
        if self.instrumental not in INSTRUMENTAL_RULES:
            raise UsageError(f"unknown instrumental rule {self.instrumental!r}",
                             hint="use one of " + ", ".join(INSTRUMENTAL_RULES))


#: How a member makes one ensemble stem: ("native", [its stem]), ("sum", [its stems]) or
#: ("residual", [the stem subtracted from the mix]).
Plan = Tuple[str, List[str]]


def stem_plan(sources: Sequence[str], stem: str, rule: str = "auto") -> Optional[Plan]:
    """How a model with `sources` gives `stem` (lower case), or None when it cannot."""
    names = {s.lower(): s for s in sources}
    if stem in names:
        return "native", [names[stem]]
    if stem == "instrumental" and "vocals" in names:
        others = [s for s in sources if s.lower() != "vocals"]
        if rule == "auto":
            rule = "sum" if len(sources) > 2 else "residual"
        if rule == "sum" and others:
            return "sum", others
        return "residual", [names["vocals"]]
    if stem == "vocals" and "instrumental" in names:
        return "residual", [names["instrumental"]]
    return None


def common_stems(member_sources: Sequence[Sequence[str]], rule: str = "auto") -> List[str]:
    """The stems (lower case) every member can give, in the first member's order."""
    candidates: List[str] = []
    for sources in member_sources:
        for s in list(sources) + ["vocals", "instrumental"]:
            if s.lower() not in candidates:
                candidates.append(s.lower())
    return [s for s in candidates if all(stem_plan(src, s, rule) is not None for src in member_sources)]


class EnsembleBag:
    """Member bags run on the same input, each stem combined by `options.algorithm`.

    It stands where a `ModelBag` does for the engine, the batch and the API: `sources`,
    `samplerate`, `audio_channels`, `contracts` (all members'), `normalize`, `name`, and
    `open_stream`, which `engine.separate_stream` uses in place of a single bag's stream.
    """

    def __init__(self, members: Sequence[ModelBag], options: EnsembleOptions, name: str,
                 member_names: Optional[Sequence[str]] = None):
        self.members = list(members)
        if len(self.members) != options.members:
            raise UsageError(f"{len(self.members)} models for an ensemble of {options.members}")
        self.options = options
        self.name = name
        self.member_names = list(member_names or [m.name for m in self.members])
        first = self.members[0]
        for label, m in zip(self.member_names[1:], self.members[1:]):
            if (m.samplerate, m.audio_channels) != (first.samplerate, first.audio_channels):
                raise UsageError(
                    f"ensemble members must share sample rate and channels: {self.member_names[0]} is "
                    f"{first.samplerate} Hz x {first.audio_channels}, {label} {m.samplerate} Hz x {m.audio_channels}",
                    hint="ensemble models of the same kind (music models at 44.1 kHz stereo, for example)")
        self._sources = common_stems([m.sources for m in self.members], options.instrumental)
        if not self._sources:
            raise UsageError("the ensemble's models have no stem in common: "
                             + "; ".join(f"{n}: {', '.join(m.sources)}" for n, m in zip(self.member_names, self.members)),
                             hint="ensemble models that separate the same stems")
        self.extra = {"ensemble": {"algorithm": options.algorithm, "weights": options.weights,
                                   "models": self.member_names}}

    @property
    def sources(self) -> List[str]:
        return list(self._sources)

    @property
    def samplerate(self) -> int:
        return self.members[0].samplerate

    @property
    def audio_channels(self) -> int:
        return self.members[0].audio_channels

    @property
    def contracts(self) -> List[Contract]:
        return [c for m in self.members for c in m.contracts]

    @property
    def normalize(self) -> bool:
        """True when some member normalises: the mix statistics are then needed (per member rule)."""
        return any(m.normalize for m in self.members)

    @property
    def normalize_rule(self) -> str:
        return next((m.normalize_rule for m in self.members if m.normalize), "demucs")

    def plans(self, stems: Sequence[str]) -> List[Dict[str, Plan]]:
        """Per member: stem -> how that member gives it."""
        return [{s: stem_plan(m.sources, s, self.options.instrumental) for s in stems} for m in self.members]

    def open_stream(self, stems, options, device, total_frames=None, progress=None, stats=None) -> "_EnsembleStream":
        return _EnsembleStream(self, engine._check_stems(self, stems), options, device, total_frames, progress, stats)


class _Fifo:
    """Samples waiting in order, [C, n]: blocks in, any number of samples out."""

    def __init__(self) -> None:
        self._blocks: List[Tensor] = []
        self.length = 0

    def append(self, block: Tensor) -> None:
        if block.shape[1]:
            self._blocks.append(block)
            self.length += block.shape[1]

    def take(self, n: int) -> Tensor:
        out, got = [], 0
        while got < n:
            block = self._blocks[0]
            need = n - got
            if block.shape[1] <= need:
                out.append(self._blocks.pop(0))
                got += block.shape[1]
            else:
                out.append(block[:, :need])
                self._blocks[0] = block[:, need:]
                got = n
        self.length -= n
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)


class _EnsembleStream:
    """push / finish as `engine.BagStream`, for an `EnsembleBag`."""

    def __init__(self, bag: EnsembleBag, stems: List[str], options, device, total_frames,
                 progress: Optional[Callable[[int, Optional[int]], None]], stats):
        self.bag, self.stems = bag, stems
        self.plans = bag.plans(stems)
        done = [0] * len(bag.members)

        def member_progress(i: int):
            def report(frames: int, total: Optional[int]) -> None:
                done[i] = frames
                if progress is not None:  # the members' mean: the ensemble is as far as that
                    progress(sum(done) // len(done), total)
            return report

        self.streams = []
        self.queues: List[Dict[str, _Fifo]] = []
        for i, (member, plan) in enumerate(zip(bag.members, self.plans)):
            needed: List[str] = []
            for _, names in plan.values():
                needed += [n for n in names if n not in needed]
            self.streams.append(engine.BagStream(member, needed, options, device, total_frames,
                                                 member_progress(i), stats))
            self.queues.append({n: _Fifo() for n in needed})
        self.mix = _Fifo()
        o = bag.options
        self.combiners = {s: StreamingEnsemble(o.algorithm, o.members, o.weights) for s in stems}

    def push(self, block: Tensor) -> List[Dict[str, Tensor]]:
        self.mix.append(block)
        for stream, queue in zip(self.streams, self.queues):
            self._queue(queue, stream.push(block))
        return self._combine()

    def finish(self) -> List[Dict[str, Tensor]]:
        for stream, queue in zip(self.streams, self.queues):
            self._queue(queue, stream.finish())
        out = self._combine()
        tail = {s: c.finish() for s, c in self.combiners.items()}
        if tail and next(iter(tail.values())).shape[-1]:
            out.append(tail)
        return out

    @staticmethod
    def _queue(queue: Dict[str, _Fifo], outputs: List[Dict[str, Tensor]]) -> None:
        for out in outputs:
            for name, wav in out.items():
                queue[name].append(wav)

    def _combine(self) -> List[Dict[str, Tensor]]:
        # Every member has finished the first n samples not yet combined.
        n = min(next(iter(q.values())).length for q in self.queues)
        if n == 0:
            return []
        mix = self.mix.take(n)                                   # [C, n]
        per_stem: Dict[str, List[Tensor]] = {s: [] for s in self.stems}
        for plan, queue in zip(self.plans, self.queues):
            got = {name: q.take(n) for name, q in queue.items()}  # {member stem: [C, n]}
            for stem, (kind, names) in plan.items():
                if kind == "native":
                    wav = got[names[0]]
                elif kind == "sum":
                    wav = torch.stack([got[x] for x in names]).sum(dim=0)
                else:  # residual
                    wav = mix - got[names[0]]
                per_stem[stem].append(wav)
        out = {s: self.combiners[s].push(blocks) for s, blocks in per_stem.items()}
        return [out] if next(iter(out.values())).shape[-1] else []


__all__ = ["EnsembleBag", "EnsembleOptions", "INSTRUMENTAL_RULES", "common_stems", "stem_plan"]
