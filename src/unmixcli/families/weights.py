"""Putting a checkpoint's tensors into a network built from its config, every family alike.

`torch.nn.Module.load_state_dict(strict=True)` fails with a multi-line message listing
every key; a user whose config does not belong to the checkpoint needs one line that says
what does not fit and how (which keys are missing or extra, which shape differs).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch

from ..errors import CheckpointError


def _some(keys: Sequence[str]) -> str:
    return ", ".join(keys[:2]) or "-"


def load_strict(model: torch.nn.Module, state: Mapping[str, Any], *, what: str, path: Any,
                hint: Optional[str] = None) -> None:
    """Load `state` into `model`, every key and shape matching, else one CheckpointError:
    "the weights do not fit <what>: ..." naming the keys or the shape. Tensors of another float
    type are converted by the load (a half-precision checkpoint fills a float32 network)."""
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointError(f"the weights do not fit {what}: entry {odd[0]!r} is not a tensor", path=path,
                              hint=hint)
    try:
        # Loaded first, diagnosed after: a network's load_state_dict pre-hooks may rename keys
        # (BandIt v2 takes its authors' Lightning layout so).
        model.load_state_dict(dict(state), strict=True)
        return
    except RuntimeError as exc:
        error = exc
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"{len(missing)} missing key(s) (e.g. {_some(missing)})"] if missing else []) \
            + ([f"{len(unexpected)} unexpected (e.g. {_some(unexpected)})"] if unexpected else [])
        detail = ", ".join(parts)
    else:
        wrong = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
        detail = (f"'{wrong[0]}' has shape {tuple(state[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}"
                  if wrong else str(error).strip().splitlines()[-1].strip())
    raise CheckpointError(f"the weights do not fit {what}: {detail}", path=path, hint=hint) from error
