"""Faster CPU formulations of a few layers, for fp32 inference only.

torch picks its CPU kernels by shape and library; on the shapes these networks run,
some picks leave a lot on the table (measured on a Zen 4 CPU, one thread):

- Linear layers go to MKL's sgemm, which reaches ~80-97 GFLOP/s there, where oneDNN's
  matmul reaches ~102-109 GFLOP/s on the same shapes.
- Convolutions over many short rows with few output channels (the DConv branches of
  the frequency layers: batch 512, 48 -> 6 channels, 336 frames) run through oneDNN at
  ~15 GFLOP/s.

Each function here computes the same maths as the module it stands in for, summed in
another order (differences of a few ulps), and is used only where
`cpu_fp32_inference` holds; training, autocast and accelerators keep torch's kernels.
"""

from __future__ import annotations

import platform
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F


def cpu_fp32_inference(x: torch.Tensor) -> bool:
    """Whether the formulations in this module may stand in for torch's kernels: fp32
    inference on the CPU (where they were measured faster). Training, autocast and
    accelerators keep the plain modules."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu"))


def conv1d_same_gemm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     dilation: int) -> torch.Tensor:
    """A stride-1 Conv1d with 'same' zero padding, as one batched GEMM and shifted sums.

    The DConv branches of the frequency layers run on many short rows (batch B*F = 512,
    T = 336) and project to few channels (48 -> 6); torch sends them through oneDNN at
    ~15 GFLOP/s. One GEMM that computes every tap at once, `[K*H, C] @ [C, T]` per row,
    then adds the taps shifted by their offsets, takes about half the time. Same maths,
    summed in another order (differences of an ulp or so).

    Shapes: x `[N, C, T]`, weight `[H, C, K]` (K odd) -> `[N, H, T]`.
    """
    rows, _, frames = x.shape
    hidden, channels, taps = weight.shape
    w_all = weight.permute(2, 0, 1).reshape(taps * hidden, channels)  # [K*H, C], tap-major
    y = torch.bmm(w_all.expand(rows, -1, -1), x)  # [N, K*H, T]
    centre = taps // 2
    out = y[:, centre * hidden:(centre + 1) * hidden]
    out = out + bias[:, None] if bias is not None else out.clone()
    for k in range(taps):
        shift = (k - centre) * dilation  # tap k reads x[t + shift]
        if k == centre or abs(shift) >= frames:
            continue
        tap = y[:, k * hidden:(k + 1) * hidden]
        if shift > 0:
            out[..., :frames - shift] += tap[..., shift:]
        else:
            out[..., -shift:] += tap[..., :frames + shift]
    return out


def conv1x1_gemm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A kernel-1 Conv1d as a batched GEMM: torch's conv path for 1x1 kernels on many
    short rows is ~1.5x slower (see `conv1d_same_gemm`).

    Shapes: x `[N, C, T]`, weight `[O, C, 1]` -> `[N, O, T]`.
    """
    rows, _, frames = x.shape
    w = weight[:, :, 0].expand(rows, -1, -1)  # [N, O, C]
    if bias is None:
        return torch.bmm(w, x)
    return torch.baddbmm(bias[None, :, None].expand(rows, -1, frames), w, x)


def _onednn_linear_available() -> bool:
    # Measured on x86-64 only; elsewhere torch's own choice stands.
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    try:
        return hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_LINEAR = _onednn_linear_available()


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], post_op: str,
               algorithm: str) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], algorithm)


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], post_op: str,
            algorithm: str) -> Optional[torch.Tensor]:
    """oneDNN's linear (with an optional fused activation), or None where it does not
    apply. A build whose op fails is switched back to torch's kernels for good."""
    global _ONEDNN_LINEAR
    if not (_ONEDNN_LINEAR and torch.backends.mkldnn.enabled and cpu_fp32_inference(x)):
        return None
    try:
        return _pointwise(x, weight, bias, post_op, algorithm)
    except RuntimeError:
        _ONEDNN_LINEAR = False
        return None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`F.linear`, through oneDNN's matmul for CPU fp32 inference (see the module doc).

    Shapes: x `[*, I]`, weight `[O, I]` -> `[*, O]`.
    """
    out = _onednn(x, weight, bias, "none", "")
    return F.linear(x, weight, bias) if out is None else out


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`F.gelu(F.linear(x, weight, bias))` (the exact, erf GELU). On the oneDNN path the
    activation is applied as the GEMM writes its output, which saves a pass over the
    widest activation of a transformer layer (bit-identical to GELU applied after).

    Shapes: x `[*, I]`, weight `[O, I]` -> `[*, O]`.
    """
    out = _onednn(x, weight, bias, "gelu", "none")
    return F.gelu(F.linear(x, weight, bias)) if out is None else out


class Linear(nn.Linear):
    """`nn.Linear` (same parameters and state-dict keys) that runs through `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
