"""The CPU fp32 inference kernels (`unmixcli.models.cpu_kernels`): each must compute
what the torch module it stands in for computes, and step aside where it does not apply
(autograd, autocast)."""

import pytest
import torch
import torch.nn.functional as F

from unmixcli.models import cpu_kernels
from unmixcli.models.demucs import DConv


@pytest.mark.parametrize("kernel,dilation,frames", [(3, 1, 336), (3, 2, 5), (5, 3, 7), (3, 4, 3), (3, 8, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv1d_gemm_matches_conv1d(kernel, dilation, frames, bias):
    # Every tap, including taps that fall wholly outside short rows (dilation >= T).
    torch.manual_seed(0)
    x = torch.randn(7, 12, frames)
    conv = torch.nn.Conv1d(12, 3, kernel, dilation=dilation, padding=dilation * (kernel // 2), bias=bias)
    proj = torch.nn.Conv1d(12, 10, 1, bias=bias)
    with torch.no_grad():
        got = cpu_kernels.conv1d_same_gemm(x, conv.weight, conv.bias, dilation)
        assert got.shape == (7, 3, frames)
        assert torch.allclose(got, conv(x), atol=1e-6)
        assert torch.allclose(cpu_kernels.conv1x1_gemm(x, proj.weight, proj.bias), proj(x), atol=1e-6)


@pytest.mark.parametrize("rows,channels,frames,depth", [(64, 48, 336, 2), (1, 16, 4000, 2), (5, 16, 3, 3)])
def test_dconv_cpu_inference_path_matches_the_modules(rows, channels, frames, depth):
    # no_grad on CPU runs the GEMM path; with autograd on, the plain module chain runs.
    torch.manual_seed(0)
    dconv = DConv(channels, compress=8, depth=depth, init=0.5).eval()
    x = torch.randn(rows, channels, frames)
    assert dconv._plain
    plain = dconv(x).detach()
    with torch.no_grad():
        assert cpu_kernels.cpu_fp32_inference(x)
        fast = dconv(x)
    assert torch.allclose(fast, plain, atol=1e-5), (fast - plain).abs().max()
    # A DConv with LSTM / attention keeps its module chain everywhere.
    assert not DConv(channels, compress=4, depth=2, lstm=True)._plain
    assert not DConv(channels, compress=4, depth=2, attn=True)._plain
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cpu_kernels.cpu_fp32_inference(x)



@pytest.mark.parametrize("shape", [(7, 33), (2, 50, 33), (1, 3, 4, 33)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_f_linear(shape, bias):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    layer = cpu_kernels.Linear(33, 20, bias=bias)
    ref = torch.nn.Linear(33, 20, bias=bias)
    assert list(layer.state_dict()) == list(ref.state_dict())  # checkpoints load unchanged
    ref.load_state_dict(layer.state_dict())
    with torch.no_grad():
        got, want = layer(x), ref(x)
        assert got.shape == want.shape == (*shape[:-1], 20)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
        # A transposed (non-contiguous) input is read correctly too.
        xt = torch.randn(*shape[:-2], 33, shape[-2]).transpose(-1, -2)
        assert torch.allclose(layer(xt), ref(xt), rtol=1e-5, atol=1e-5)


def test_linear_steps_aside_for_autograd_and_autocast():
    torch.manual_seed(0)
    x = torch.randn(4, 16, requires_grad=True)
    layer = cpu_kernels.Linear(16, 8)
    out = layer(x)
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))
    out.sum().backward()  # gradients flow (torch's kernel, not the inference one)
    assert x.grad is not None and layer.weight.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16  # autocast's own bf16 linear ran


def test_linear_gelu_is_gelu_of_linear():
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 40, 32), torch.randn(64, 32) * 0.2, torch.randn(64)
    with torch.no_grad():
        got = cpu_kernels.linear_gelu(x, w, b)
        assert torch.allclose(got, F.gelu(F.linear(x, w, b)), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, F.gelu(F.linear(x, w, b), approximate="tanh"), rtol=1e-6, atol=1e-6)


def test_a_build_whose_onednn_linear_fails_falls_back_to_torch(monkeypatch):
    def broken(*args):
        raise RuntimeError("no oneDNN kernel here")

    monkeypatch.setattr(cpu_kernels, "_ONEDNN_LINEAR", True)
    monkeypatch.setattr(cpu_kernels, "_pointwise", broken)
    x, w, b = torch.randn(5, 8), torch.randn(4, 8), torch.randn(4)
    with torch.no_grad():
        assert torch.equal(cpu_kernels.linear(x, w, b), F.linear(x, w, b))
        assert not cpu_kernels._ONEDNN_LINEAR  # not tried again
        assert torch.equal(cpu_kernels.linear_gelu(x, w, b), F.gelu(F.linear(x, w, b)))


@pytest.mark.parametrize("chunk_floats", [1, 5000, 1 << 20])
def test_dconv_rows_in_chunks_match_the_folded_module_chain(monkeypatch, chunk_floats):
    # The frequency layers run DConv on [B, C, F, T] with F folded into the batch; the
    # fast path takes a few rows at a time (one, several with a ragged last chunk, all).
    monkeypatch.setattr(cpu_kernels, "CHUNK_FLOATS", chunk_floats)
    torch.manual_seed(1)
    dconv = DConv(16, compress=4, depth=2, init=0.5).eval()
    y = torch.randn(2, 16, 7, 40)  # [B, C, F, T]
    folded = y.permute(0, 2, 1, 3).reshape(14, 16, 40)  # [B*F, C, T]
    expected = dconv(folded).detach().view(2, 7, 16, 40).permute(0, 2, 1, 3)
    with torch.no_grad():
        got = dconv.forward_rows(y)
    assert got.shape == y.shape
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    # Outside CPU fp32 inference the folded module chain runs; it agrees as well.
    assert torch.allclose(dconv.forward_rows(y).detach(), expected, atol=1e-6)


@pytest.mark.parametrize("chunk_floats", [1, 3000, 1 << 20])
@pytest.mark.parametrize("taps,stride,bias", [(8, 4, True), (6, 2, False), (4, 4, True)])
def test_transposed_conv_gemm_matches_torch(monkeypatch, chunk_floats, taps, stride, bias):
    # Chunks of one row, several rows with a ragged end, and all rows: the rows where
    # one chunk's later taps meet the next chunk's first ones must add up, not overwrite.
    monkeypatch.setattr(cpu_kernels, "CHUNK_FLOATS", chunk_floats)
    torch.manual_seed(2)
    x = torch.randn(2, 6, 11, 5)  # [B, Ci, F, T]
    weight = torch.randn(6, 3, taps, 1)
    b = torch.randn(3) if bias else None
    with torch.no_grad():
        got = cpu_kernels.conv_transpose_gemm(x, weight, b, stride)
        expected = F.conv_transpose2d(x, weight, b, stride=(stride, 1))
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
        # The same along time (a 1-D transposed conv, nothing after the upsampled axis).
        got = cpu_kernels.conv_transpose_gemm(x[..., 0], weight[..., 0], b, stride)
        assert torch.allclose(got, F.conv_transpose1d(x[..., 0], weight[..., 0], b, stride=stride), atol=1e-5)
