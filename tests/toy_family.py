"""A toy model family, written from the test suite alone: this module and one `Family` row.

Its "checkpoint" is a JSON file `{"stems": {name: gain, ...}, "rate": Hz}`; the
network scales the mix by each stem's gain (a real nn.Module, run by the engine).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from unmixcli.errors import CheckpointError
from unmixcli.families import EntryRule, Family
from unmixcli.models.bag import Contract, ModelBag


class Gains(nn.Module):
    def __init__(self, gains):
        super().__init__()
        self.register_buffer("gains", torch.tensor(gains, dtype=torch.float32))

    def forward(self, mix):  # [B, C, T] -> [B, S, C, T]
        self.lengths = getattr(self, "lengths", []) + [mix.shape[-1]]
        return self.gains[None, :, None, None] * mix[:, None]


def _load(path: Path, stems=None) -> ModelBag:
    try:
        data = json.loads(Path(path).read_text())
        names, gains = list(data["stems"]), [float(g) for g in data["stems"].values()]
        rate = int(data["rate"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"not a toy model ({exc})", path=path) from None
    contract = Contract(samplerate=rate, channels=2, sources=tuple(names), segment=0.25, segment_rule="free",
                        window="triangle", normalize=False, overlap=0.25)
    return ModelBag.single(Gains(gains), name=Path(path).stem, contracts=[contract])


def load_local(path, stems=None):
    return _load(path, stems)


def load_spec(spec, folder, stems=None):
    return _load(Path(folder) / spec.checkpoint, stems)


def _module():
    import toy_family

    return toy_family


ROW = Family("toy", _module, suffixes=(".toy",), entry=EntryRule(checkpoint=True),
             hint="a .toy JSON file")
