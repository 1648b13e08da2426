"""The tensor-core conv3x3 on a real GPU: the simulator's configurations plus sizes large
enough for many CTAs and both tile shapes, forward and grad-input, bf16 / fp16 / tf32,
against float64 references on the CPU (tolerances as in test_conv3x3_tc.py). Every output
is checked for unwritten (NaN-poisoned) elements: outputs are compared whole.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_conv3x3_tc import (
    CONFIGS,
    DTYPES,
    TF32,
    _assert_tf32_matches,
    _dtype,
    _inputs,
    _name,
    _round_tf32,
    _tf32,
)
from tolerance import assert_matches, to64

import overfeat_kernels as ok
from overfeat_kernels import reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
]

# Larger shapes: several CTAs in M and N, C a multiple of the vector (no copy pass) or not,
# H x W that leave a partial last M tile; VGG-like channel counts.
BIG = [
    (2, 64, 128, 56, 56, 1, "channels_last", True, True),
    (1, 128, 256, 28, 28, 1, "nchw", True, True),
    (3, 256, 64, 17, 23, 1, "channels_last", False, True),
    (1, 3, 64, 224, 224, 1, "nchw", True, True),
    (4, 512, 512, 14, 14, 1, "channels_last", True, False),
    (2, 40, 72, 31, 45, 0, "strided", True, True),
]


@pytest.fixture(params=["auto", "large", "small"])
def tiles(request, monkeypatch):
    if request.param != "auto":
        monkeypatch.setenv("OVERFEAT_KERNELS_CONV_TILES", request.param)
    return request.param


def _to_cuda(t):
    if t is None:
        return None
    out = t.detach().to("cuda")
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _assert_forward_matches(out, x, w, b, pad, relu, dtype):
    """`out` (on the CPU) against float64 references of the CPU inputs."""
    ref64 = reference.conv3x3(to64(x), to64(w), to64(b), pad, relu)
    if dtype == TF32:
        r = lambda t: None if t is None else to64(_round_tf32(t))  # noqa: E731
        _assert_tf32_matches(out, ref64, reference.conv3x3(r(x), r(w), to64(b), pad, relu))
    else:
        assert_matches(out, ref64, reference.conv3x3(x, w, b, pad, relu))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", CONFIGS + BIG, ids=_name)
def test_forward_gpu(cfg, dtype, tiles):
    x, w, b, pad, relu = _inputs(cfg, _dtype(dtype))
    xc = x.to("cuda") if cfg[6] != "channels_last" else _to_cuda(x)
    if cfg[6] == "strided":  # keep it a non-contiguous view on the GPU too
        xc = x.transpose(2, 3).contiguous().transpose(2, 3).to("cuda")
    with _tf32(dtype == TF32):
        out = ok.conv3x3(xc, _to_cuda(w), _to_cuda(b), pad, relu)
    torch.cuda.synchronize()
    assert out.device.type == "cuda"
    assert out.shape == (cfg[0], cfg[2], cfg[3] + 2 * pad - 2, cfg[4] + 2 * pad - 2)
    out = out.cpu()
    _assert_forward_matches(out, x, w, b, pad, relu, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", [CONFIGS[i] for i in (0, 1, 4, 7, 10)] + BIG, ids=_name)
def test_backward_gpu(cfg, dtype, tiles):
    x, w, b, pad, relu = _inputs(cfg, _dtype(dtype))
    leaves_cpu = [t for t in (x, w, b) if t is not None]
    leaves = [_to_cuda(t).requires_grad_() for t in leaves_cpu]
    with _tf32(dtype == TF32):
        out = ok.conv3x3(leaves[0], leaves[1], leaves[2] if b is not None else None, pad, relu)
        grad = torch.randn(out.shape, dtype=torch.float64).to(out.dtype)
        grads = [g.cpu() for g in torch.autograd.grad(out, leaves, grad.to("cuda"))]
    out = out.detach().cpu()
    mask = (to64(out) > 0) if relu else None
    ref_leaves = [to64(t).requires_grad_() for t in leaves_cpu]
    g64 = to64(grad) if mask is None else to64(grad) * mask
    pre = F.conv2d(ref_leaves[0], ref_leaves[1], ref_leaves[2] if b is not None else None,
                   padding=pad)  # fmt: skip
    ref64 = torch.autograd.grad(pre, ref_leaves, g64)
    if dtype == TF32:
        r = lambda t: to64(_round_tf32(t.detach()))  # noqa: E731
        gi_tf32 = torch.nn.grad.conv2d_input(x.shape, r(w), r(g64.float()), padding=pad)
        _assert_tf32_matches(grads[0], ref64[0], gi_tf32)
        for ours, r64 in zip(grads[1:], ref64[1:], strict=True):
            assert_matches(ours, r64)
    else:
        lp = [t.detach().clone().requires_grad_() for t in leaves_cpu]
        pre_lp = F.conv2d(lp[0], lp[1], lp[2] if b is not None else None, padding=pad)
        g_lp = grad if mask is None else grad * mask.to(grad.dtype)
        ref_lp = torch.autograd.grad(pre_lp, lp, g_lp)
        for ours, r64, rlp in zip(grads, ref64, ref_lp, strict=True):
            assert_matches(ours, r64, rlp, factor=4)


def test_repeatable_on_gpu():
    """Same inputs, same bits: the kernels have no order-dependent reductions."""
    x = torch.randn(2, 96, 40, 40, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(160, 96, 3, 3, device="cuda", dtype=torch.bfloat16) / 30
    first = ok.conv3x3(x, w, None, 1, True)
    for _ in range(3):
        assert torch.equal(ok.conv3x3(x, w, None, 1, True), first)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_channels_last_weight_gpu(dtype, layout):
    """Weights in channels_last memory (model.to(memory_format=torch.channels_last))."""
    cfg = (2, 64, 96, 20, 21, 1, layout, True, True)
    x, w, b, pad, relu = _inputs(cfg, _dtype(dtype))
    wc = w.to("cuda").contiguous(memory_format=torch.channels_last)
    with _tf32(dtype == TF32):
        out = ok.conv3x3(_to_cuda(x), wc, _to_cuda(b), pad, relu).cpu()
    _assert_forward_matches(out, x, w, b, pad, relu, dtype)
