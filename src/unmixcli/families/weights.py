"""Putting a checkpoint's tensors into a network built from its config, every family alike.

`torch.nn.Module.load_state_dict(strict=True)` fails with a multi-line message listing
every key; a user whose config does not belong to the checkpoint needs one line that says
what does not fit and how (which keys are missing or extra, which shape differs), so the
fit is checked first and the load then cannot fail.
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
    "the weights do not fit <what>: ...". Tensors of another float type are converted by
    the load (a half-precision checkpoint fills a float32 network)."""
    expected = model.state_dict()
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointError(f"the weights do not fit {what}: entry {odd[0]!r} is not a tensor", path=path,
                              hint=hint)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"the weights do not fit {what}: {len(missing)} missing key(s) (e.g. {_some(missing)}), "
                              f"{len(unexpected)} unexpected (e.g. {_some(unexpected)})", path=path, hint=hint)
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(f"the weights do not fit {what}: '{key}' has shape {tuple(state[key].shape)}, "
                                  f"expected {tuple(value.shape)}", path=path, hint=hint)
    model.load_state_dict(dict(state), strict=True)
