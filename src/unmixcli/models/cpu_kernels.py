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

import math
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


# Widest temporary of one chunk when a layer runs a few rows at a time, in floats (4 MB):
# small enough to stay in the CPU cache and to keep large buffers off the heap.
CHUNK_FLOATS = 1 << 20


def rows_per_chunk(floats_per_row: int, at_least: int = 1) -> int:
    """How many rows to take at a time so that a temporary of `floats_per_row` floats
    per row stays within `CHUNK_FLOATS` (`DConv.forward_rows`, `conv_transpose_gemm`)."""
    return max(at_least, CHUNK_FLOATS // floats_per_row)


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


def conv_transpose_gemm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        stride: int) -> torch.Tensor:
    """A transposed conv along one axis (kernel K a multiple of the stride s, no padding),
    as GEMMs and K/s shifted adds, a few rows of that axis at a time.

    The Hybrid Demucs decoders upsample by 4 with kernel 8, over frequency (kernel [8, 1])
    or time. torch runs the time case at 20-60 GFLOP/s on this model's shapes, and the
    frequency one only on channels-last memory, paying two layout copies of the largest
    activations. Here tap block j of `[Co*K, Ci] @ x[:, :, rows]` lands on output rows
    `(row + j) * s ...`; rows are taken a few at a time so the GEMM output stays in cache.

    Shapes: x `[B, Ci, L, *R]`, weight `[Ci, Co, K, *1]` -> `[B, Co, (L - 1) * s + K, *R]`.
    """
    batch, c_in, length = x.shape[:3]
    rest = x.shape[3:]
    inner = math.prod(rest)
    c_out, taps = weight.shape[1], weight.shape[2]
    blocks = taps // stride  # r: each input row reaches r output row blocks of s rows
    w = weight.reshape(c_in, c_out * taps).t()  # [Co*K, Ci]
    if bias is None:
        bias = weight.new_zeros(c_out)
    # The bias goes in once, with tap block 0 (and on the rows no block 0 reaches).
    first = weight.new_zeros(c_out, blocks, stride)
    first[:, 0] = bias[:, None]
    first = first.reshape(c_out * taps, 1)
    out = x.new_empty(batch, c_out, length + blocks - 1, stride, inner)  # [B, Co, L+r-1, s, R]
    out[:, :, length:] = bias[:, None, None, None]
    flat = x.reshape(batch, c_in, length, inner)
    step = rows_per_chunk(batch * c_out * taps * inner, at_least=blocks)  # y: [B, Co*K, n*R]
    for lo in range(0, length, step):
        hi = min(length, lo + step)
        rows = flat[:, :, lo:hi].reshape(batch, c_in, -1)  # [B, Ci, n*R]
        y = torch.baddbmm(first.expand(batch, -1, rows.shape[-1]), w.expand(batch, -1, -1), rows)
        y = y.view(batch, c_out, blocks, stride, hi - lo, inner).transpose(3, 4)  # [B, Co, r, n, s, R]
        # Rows [lo, lo + r - 1) already hold the previous chunk's later taps.
        carried = 0 if lo == 0 else min(blocks - 1, hi - lo)
        out[:, :, lo:lo + carried] += y[:, :, 0, :carried]
        out[:, :, lo + carried:hi] = y[:, :, 0, carried:]
        out[:, :, hi:min(hi + blocks - 1, length)] = 0  # first reached by this chunk's later taps
        for j in range(1, blocks):
            out[:, :, lo + j:hi + j] += y[:, :, j]
    return out.view(batch, c_out, (length + blocks - 1) * stride, *rest)


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
