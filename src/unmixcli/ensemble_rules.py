"""The ensemble algorithms' names and the weights rule, without torch.

`unmix models list` reads the registry's `ensembles:` presets, and checking a preset's
algorithm and weights must not import torch; `ensemble` re-exports all of this.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

from .errors import UsageError

WAVE_ALGORITHMS = ("avg_wave", "median_wave", "min_wave", "max_wave")
"""Per-sample algorithms: they stream with no delay."""

SPEC_ALGORITHMS = ("avg_fft", "median_fft", "min_fft", "max_fft", "uvr_max_spec", "uvr_min_spec")
"""Per time-frequency-bin algorithms (STFT, combine, inverse STFT)."""

ALGORITHMS = WAVE_ALGORITHMS + SPEC_ALGORITHMS

WEIGHTED_ALGORITHMS = ("avg_wave", "avg_fft")
"""The only algorithms that take weights."""

_ALGO_HINT = "use one of " + ", ".join(ALGORITHMS)


def check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise UsageError(f"unknown ensemble algorithm {algorithm!r}", hint=_ALGO_HINT)


def check_weights(algorithm: str, members: int, weights: Optional[Sequence[float]]) -> Optional[List[float]]:
    """Validate ``weights`` for ``algorithm`` over ``members`` stems; returns them as floats.

    Raises UsageError for an unknown algorithm, weights given to an algorithm without
    weights, a count other than ``members``, non-finite weights, or a zero sum.
    """
    check_algorithm(algorithm)
    if weights is None:
        return None
    if algorithm not in WEIGHTED_ALGORITHMS:
        raise UsageError(f"ensemble algorithm {algorithm} takes no weights",
                         hint="drop the weights, or use " + " or ".join(WEIGHTED_ALGORITHMS))
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise UsageError(f"ensemble weights must be numbers, got {weights!r}") from None
    if len(values) != members:
        raise UsageError(f"{len(values)} ensemble weights for {members} models",
                         hint="give one weight per model, in the models' order")
    if not all(math.isfinite(w) for w in values):
        raise UsageError(f"ensemble weights must be finite, got {values}")
    if sum(values) == 0:
        raise UsageError(f"ensemble weights sum to zero: {values}", hint="the average divides by their sum")
    return values
