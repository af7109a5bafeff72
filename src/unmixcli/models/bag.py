"""A bag of models and the contract of each member: what the engine runs.

A single network is a bag of one. Pure data: no I/O, no chunking.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Callable, ContextManager, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

#: How a member's segment length may be chosen:
#: "free"  any length; the model may ask for context around it (`input_length`);
#: "max"   at most the trained `segment`; a shorter one is padded inside the model (HTDemucs);
#: "fixed" every forward gets exactly one segment: the track's last, short segment is
#:         filled up to it by the window's edge rule (MSST's `demix`).
SEGMENT_RULES = ("free", "max", "fixed")

# How the mix's std is taken when it is standardised (see `Contract.normalize_rule`).
NORMALIZE_RULES = ("demucs", "msst")


@dataclass(frozen=True)
class Contract:
    """What the engine must know to run one member. Stated by its family; immutable.

    Attributes:
        samplerate: the rate the model runs at (Hz).
        channels: audio channels it takes and returns.
        sources: its output stems, in output order.
        segment: seconds per forward by default (None: the caller must give one).
        segment_rule: see `SEGMENT_RULES`.
        window: the cross-fade and edge rule between segments, a key of
            `engine.WINDOWS`: "triangle" (Demucs) or "fade" (MSST).
        normalize: the mix is standardised (mean/std of the mono mix) before the
            model and the stems de-standardised after, as the Demucs command line does.
        normalize_rule: how the std is taken (`NORMALIZE_RULES`): "demucs" (unbiased,
            + 1e-8, as the Demucs command line) or "msst" (population std, 1 where it is
            at most float32's eps, as MSST's inference).
        overlap: default fraction of a segment shared with the next one.
        input_length: samples the model wants for a segment of n samples (context
            taken from the track around it, output trimmed back to the centre);
            None: exactly n.
        around_forward: a context manager factory entered around each forward of
            this member (a bag's shorter segment lent to a "max" model, see
            `ModelBag`); None: nothing.
        bf16: the member can run under bf16 autocast when asked (`--precision bf16`);
            False: it always runs in fp32 (its kernels write into fp32 buffers).
        auto_bf16: `--precision auto` gives it bf16 where bf16 is fast, because
            bf16 was measured faster for it (HTDemucs); otherwise auto keeps fp32.
        window_batch: window "fade" only: MSST's `demix` decides which segments skip their
            fades once per batch of this many consecutive segments (its config's
            inference.batch_size); 1: segment by segment. See `engine.msst_fade_edges`.
    """

    samplerate: int
    channels: int
    sources: Tuple[str, ...]
    segment: Optional[float] = None
    segment_rule: str = "free"
    window: str = "triangle"
    normalize: bool = True
    overlap: float = 0.25
    normalize_rule: str = "demucs"
    input_length: Optional[Callable[[int], int]] = field(default=None, compare=False)
    around_forward: Optional[Callable[[], ContextManager]] = field(default=None, compare=False)
    bf16: bool = True
    auto_bf16: bool = False
    window_batch: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        if self.normalize_rule not in NORMALIZE_RULES:
            raise ValueError(f"normalize_rule must be one of {', '.join(NORMALIZE_RULES)}, "
                             f"not {self.normalize_rule!r}")
        if self.segment_rule not in SEGMENT_RULES:
            raise ValueError(f"segment_rule must be one of {', '.join(SEGMENT_RULES)}, not {self.segment_rule!r}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.segment is not None and not self.segment > 0:
            raise ValueError(f"segment must be positive, got {self.segment}")
        if self.samplerate <= 0 or self.channels <= 0 or not self.sources:
            raise ValueError("a contract needs a positive rate, channels and at least one source")
        if self.auto_bf16 and not self.bf16:
            raise ValueError("auto_bf16 needs bf16")
        if isinstance(self.window_batch, bool) or not isinstance(self.window_batch, int) or self.window_batch < 1:
            raise ValueError(f"window_batch must be a whole number >= 1, got {self.window_batch!r}")

    @classmethod
    def describe(cls, model: nn.Module, *, window: str = "triangle", overlap: float = 0.25,
                 normalize: bool = True) -> "Contract":
        """The contract of a module written in the Demucs conventions: attributes `sources`,
        `samplerate`, `audio_channels`, `segment`, optional `valid_length(n)` (context) and
        `use_train_segment` (trained on a fixed window, padded inside: rule "max").

        For bags built by hand (tests, a user's own module); families state theirs.
        """
        segment = getattr(model, "segment", None)
        rule = "max" if getattr(model, "use_train_segment", False) else "free"
        if window == "fade":
            rule = "fixed"
        valid_length = getattr(model, "valid_length", None)
        return cls(samplerate=int(model.samplerate), channels=int(model.audio_channels),
                   sources=tuple(model.sources), segment=None if segment is None else float(segment),
                   segment_rule=rule, window=window, normalize=normalize, overlap=overlap,
                   input_length=valid_length if callable(valid_length) else None)

    def renamed(self, sources: Sequence[str]) -> "Contract":
        """The same contract with its stems spelled otherwise (same count and order)."""
        if len(sources) != len(self.sources):
            raise ValueError("renaming must keep the number of stems")
        return replace(self, sources=tuple(sources))

    def forward_context(self) -> ContextManager:
        return self.around_forward() if self.around_forward is not None else nullcontext()


@contextmanager
def _lent_segment(model: nn.Module, segment: float) -> Iterator[None]:
    """`model.segment` is `segment` inside, its own value again after."""
    own = model.segment
    model.segment = segment
    try:
        yield
    finally:
        model.segment = own


@dataclass
class ModelBag:
    """One or more separation networks whose outputs are averaged per stem.

    Each member is an `nn.Module` whose forward maps a mix `[B, C, T]` to stems
    `[B, S, C, T]`, run as its `Contract` says.

    Attributes:
        models: the member networks.
        weights: `[M, S]` per-member, per-stem weights (output stem k is
            sum_i w_ik * out_ik / sum_i w_ik, as the reference's BagOfModels).
        segment: the bag's segment in seconds (from the bag yaml), or None. It has
            been applied to the members' contracts already; kept for display.
        name: a display name (registry name, or a file name).
        contracts: one per member. When None (a bag built by hand), each member is
            described from its attributes (`Contract.describe`) with `window`,
            `overlap` and `normalize`, and a bag `segment` replaces the members' own
            as the reference's BagOfModels does (never lengthening a "max" member),
            but only while the bag runs: the modules are left as they were.
        extra: what the family wants to remember (shown by `unmix models info`).
    """

    models: List[nn.Module]
    weights: torch.Tensor
    segment: Optional[float] = None
    name: str = "model"
    window: str = "triangle"
    overlap: float = 0.25
    normalize: bool = True
    extra: dict = field(default_factory=dict)
    contracts: Optional[List[Contract]] = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("a ModelBag needs at least one model")
        if self.contracts is None:
            self.contracts = [self._describe(m) for m in self.models]
        self.contracts = list(self.contracts)
        if len(self.contracts) != len(self.models):
            raise ValueError(f"{len(self.models)} models but {len(self.contracts)} contracts")
        first = self.contracts[0]
        for other in self.contracts[1:]:
            if other.sources != first.sources:
                raise ValueError("all models of a bag must produce the same stems")
            if other.samplerate != first.samplerate or other.channels != first.channels:
                raise ValueError("all models of a bag must share sample rate and channels")
            if (other.normalize, other.normalize_rule) != (first.normalize, first.normalize_rule):
                raise ValueError("all models of a bag must agree on normalising the mix")
        # The first member's recipe, for display (the engine reads each member's contract); the
        # engine standardises the mix once, for every member.
        self.window, self.overlap, self.normalize = first.window, first.overlap, first.normalize
        self.normalize_rule = first.normalize_rule
        self.weights = torch.as_tensor(self.weights, dtype=torch.float32)
        expected = (len(self.models), len(first.sources))
        if tuple(self.weights.shape) != expected:
            raise ValueError(f"bag weights have shape {tuple(self.weights.shape)}, expected {expected}")

    def _describe(self, model: nn.Module) -> Contract:
        contract = Contract.describe(model, window=self.window, overlap=self.overlap, normalize=self.normalize)
        bag_segment = None if self.segment is None else float(self.segment)
        if bag_segment is None or bag_segment == contract.segment:
            return contract
        if contract.segment_rule != "max":
            return replace(contract, segment=bag_segment)
        if contract.segment is not None and bag_segment > contract.segment:
            return contract  # never lengthen the window a model was trained on
        # The model pads to its own segment inside its forward: lend it the bag's while it runs.
        length = int(bag_segment * contract.samplerate)
        return replace(contract, segment=bag_segment, input_length=lambda n: length,
                       around_forward=lambda: _lent_segment(model, bag_segment))

    @classmethod
    def single(cls, model: nn.Module, **kwargs) -> "ModelBag":
        contract = kwargs.get("contracts")
        n_sources = len(contract[0].sources) if contract else len(model.sources)
        return cls(models=[model], weights=torch.ones(1, n_sources), **kwargs)

    @property
    def sources(self) -> List[str]:
        return list(self.contracts[0].sources)

    @property
    def samplerate(self) -> int:
        return int(self.contracts[0].samplerate)

    @property
    def audio_channels(self) -> int:
        return int(self.contracts[0].channels)

    def rename_sources(self, names: Sequence[str]) -> None:
        """Spell the stems otherwise (same count and order): contracts and modules alike."""
        self.contracts = [c.renamed(names) for c in self.contracts]
        for member in self.models:
            if hasattr(member, "sources"):
                member.sources = list(names)

    def members_for(self, stems: Sequence[str]) -> List[int]:
        """Indices of the members whose weight is non-zero for at least one requested stem."""
        idx = [self.sources.index(s) for s in stems]
        return [i for i in range(len(self.models)) if bool((self.weights[i, idx] != 0).any())]
