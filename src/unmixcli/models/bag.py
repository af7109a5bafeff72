"""A bag of models: what the engine runs and what the loaders produce.

A single network is a bag of one. Pure data: no I/O, no chunking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
from torch import nn


@dataclass
class ModelBag:
    """One or more separation networks whose outputs are averaged per stem.

    Each member is an `nn.Module` with attributes `sources` (list of stem
    names, the same for all members), `samplerate`, `audio_channels` and
    `segment` (seconds per forward chunk), whose forward maps a mix
    `[B, C, T]` to stems `[B, S, C, T]`.

    Attributes:
        models: the member networks.
        weights: `[M, S]` per-member, per-stem weights (output stem k is
            sum_i w_ik * out_ik / sum_i w_ik, as the reference's BagOfModels).
        segment: the bag's segment override in seconds (from the bag yaml), or None.
        name: a display name (registry name, or a file name).
        window: the cross-fade between overlapping chunks: "triangle" (Demucs)
            or "fade" (Music-Source-Separation-Training style, RoFormers).
        overlap: the default overlap between chunks (fraction of a segment).
        normalize: whether the mix is normalised (mean/std) before the model,
            as the Demucs command line does, and undone afterwards.
    """

    models: List[nn.Module]
    weights: torch.Tensor
    segment: Optional[float] = None
    name: str = "model"
    window: str = "triangle"
    overlap: float = 0.25
    normalize: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("a ModelBag needs at least one model")
        first = self.models[0]
        for other in self.models[1:]:
            if list(other.sources) != list(first.sources):
                raise ValueError("all models of a bag must produce the same stems")
            if other.samplerate != first.samplerate or other.audio_channels != first.audio_channels:
                raise ValueError("all models of a bag must share sample rate and channels")
        self.weights = torch.as_tensor(self.weights, dtype=torch.float32)
        expected = (len(self.models), len(first.sources))
        if tuple(self.weights.shape) != expected:
            raise ValueError(f"bag weights have shape {tuple(self.weights.shape)}, expected {expected}")

    @classmethod
    def single(cls, model: nn.Module, **kwargs) -> "ModelBag":
        return cls(models=[model], weights=torch.ones(1, len(model.sources)), **kwargs)

    @property
    def sources(self) -> List[str]:
        return list(self.models[0].sources)

    @property
    def samplerate(self) -> int:
        return int(self.models[0].samplerate)

    @property
    def audio_channels(self) -> int:
        return int(self.models[0].audio_channels)

    def members_for(self, stems: Sequence[str]) -> List[int]:
        """Indices of the members whose weight is non-zero for at least one requested stem."""
        idx = [self.sources.index(s) for s in stems]
        return [i for i in range(len(self.models)) if bool((self.weights[i, idx] != 0).any())]
