"""The tensor-core conv3x3 on a real GPU: the simulator's configurations plus sizes large
enough for many CTAs and both tile shapes, forward and both gradients, bf16 / fp16 / tf32,
against float64 references on the CPU (tolerances as in test_conv3x3_tc.py). Every output
is checked for unwritten (NaN-poisoned) elements: outputs are compared whole.
"""

from __future__ import annotations

import pytest
import torch
from test_conv3x3_tc import (
    CONFIGS,
    DTYPES,
    TF32,
    _assert_backward_matches,
    _assert_forward_matches,
    _dtype,
    _inputs,
    _name,
    _tf32,
)

import overfeat_kernels as ok
from overfeat_kernels.ops._ext import _C

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


# The op's algos for [forward, grad-input, grad-weight]: the heuristic, or the large (2) or
# small (3) tensor-core tiles forced for the forward and grad-input.
@pytest.fixture(params=["auto", "large", "small"])
def tiles(request):
    return {"auto": [0, 0, 0], "large": [2, 2, 0], "small": [3, 3, 0]}[request.param]


def _conv(x, w, b, pad, relu, algos):
    return torch.ops.overfeat_kernels.conv3x3.default(x, w, b, pad, relu, algos)


def _to_cuda(t):
    if t is None:
        return None
    out = t.detach().to("cuda")
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", CONFIGS + BIG, ids=_name)
def test_forward_gpu(cfg, dtype, tiles):
    x, w, b, pad, relu = _inputs(cfg, _dtype(dtype))
    xc = x.to("cuda") if cfg[6] != "channels_last" else _to_cuda(x)
    if cfg[6] == "strided":  # keep it a non-contiguous view on the GPU too
        xc = x.transpose(2, 3).contiguous().transpose(2, 3).to("cuda")
    with _tf32(dtype == TF32):
        out = _conv(xc, _to_cuda(w), _to_cuda(b), pad, relu, tiles)
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
        out = _conv(leaves[0], leaves[1], leaves[2] if b is not None else None, pad, relu, tiles)
        grad = torch.randn(out.shape, dtype=torch.float64).to(out.dtype)
        grads = [g.cpu() for g in torch.autograd.grad(out, leaves, grad.to("cuda"))]
    _assert_backward_matches(out.detach().cpu(), grads, leaves_cpu, grad, pad, relu, dtype)


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


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float32], ids=str)
@pytest.mark.parametrize("direction", ["forward", "grad_input", "grad_weight"])
def test_every_backend_candidate_on_gpu(direction, dtype):
    """Each candidate the "auto" backend times (cuDNN included) computes conv3x3 and its
    gradients on the GPU."""
    from overfeat_kernels import backend

    cfg = (2, 64, 96, 20, 21, 1, "channels_last", True, True)
    x, w, b, pad, relu = _inputs(cfg, _dtype(dtype))
    ops = torch.ops.overfeat_kernels
    for name in backend.candidates(direction, "cuda", _dtype(dtype), dtype == TF32):
        algo = backend.ALGOS[name]
        with _tf32(dtype == TF32):
            fwd = [algo if direction == "forward" else 0, 0, 0]
            out = ops.conv3x3.default(_to_cuda(x), _to_cuda(w), _to_cuda(b), pad, relu, fwd)
            if direction != "forward":
                grad = torch.randn(out.shape, dtype=torch.float64).to(out.dtype)
                algos = [algo, 0] if direction == "grad_input" else [0, algo]
                gi, gw, _ = ops.conv3x3_backward.default(
                    grad.cuda(), _to_cuda(x), _to_cuda(w), out, pad, [True, True, False], algos
                )
        if dtype == TF32 and name in ("cudnn", "wgmma"):
            # cuDNN's TF32 rounds its operands its own way, wgmma truncates them: within
            # TF32's precision.
            got = out if direction == "forward" else (gi if direction == "grad_input" else gw)
            # The backward masks by the ReLU output it was given (our forward's).
            g = None if direction == "forward" else grad.double() * (out.cpu().double() > 0)
            _assert_within_tf32(got.cpu(), x, w, b, pad, relu, g, direction)
            continue
        # tf32 rounding where our tensor cores computed it (the other gradient of a backward
        # call runs by default: on tensor cores); else exact float32.
        on_tc = name in ("tc", "tc-small")
        if direction == "forward":
            check = torch.float32 if dtype == TF32 and not on_tc else dtype
            _assert_forward_matches(out.cpu(), x, w, b, pad, relu, check)
        else:
            _assert_backward_matches(
                out.cpu(), [gi.cpu(), gw.cpu()], [x, w], grad, pad, relu, dtype,
                gi_tf32=on_tc or direction != "grad_input",
                gw_tf32=on_tc or direction != "grad_weight",
            )


def _assert_within_tf32(got, x, w, b, pad, relu, masked_grad, direction):
    """`got` against a float64 reference to TF32's 10-bit mantissa, relative to its scale;
    for the gradients, `masked_grad` is grad_output already masked by the ReLU."""
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    pre = torch.nn.functional.conv2d(x64, w64, None if b is None else b.double(), padding=pad)
    if direction == "forward":
        ref = pre.relu() if relu else pre
    else:
        gx, gw = torch.autograd.grad(pre, (x64, w64), masked_grad)
        ref = gx if direction == "grad_input" else gw
    scale = ref.abs().max().item()
    assert (got.double() - ref).abs().max().item() <= 4e-3 * scale


# The Hopper kernel (TMA + wgmma) on compute capability 9.0: the large shapes above (the
# first layer's tap chunks at 224 x 224, split-K on 14 x 14 at batch 1 too), forward and
# grad-input through a ReLU, against float64 (tf32: wgmma truncates its operands, so within
# TF32's precision, as cuDNN).
HOPPER = pytest.mark.skipif(
    not torch.cuda.is_available()
    or torch.cuda.get_device_capability() != (9, 0)
    or not getattr(_C, "build_has_sm90a", False),
    reason="the Hopper kernel runs on compute capability 9.0, in a build for sm_90a",
)


@HOPPER
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", [*BIG, (1, 512, 512, 14, 14, 1, "channels_last", True, True)],
                         ids=_name)  # fmt: skip
def test_wgmma_forward_and_grad_input_gpu(cfg, dtype):
    from test_conv3x3_wgmma import _assert_forward_matches as wgmma_matches

    x, w, b, pad, relu = _inputs(cfg, _dtype(dtype))
    with _tf32(dtype == TF32):
        out = _conv(_to_cuda(x), _to_cuda(w), _to_cuda(b), pad, relu, [5, 0, 0])
        grad = torch.randn(out.shape, dtype=torch.float64).to(out.dtype)
        gi, _, _ = torch.ops.overfeat_kernels.conv3x3_backward.default(
            grad.cuda(), _to_cuda(x), _to_cuda(w), out, pad, [True, False, False], [5, 0]
        )
    wgmma_matches(out.cpu(), x, w, b, pad, relu, dtype)
    g = torch.where(out.cpu() > 0, grad, torch.zeros((), dtype=grad.dtype))
    wgmma_matches(gi.cpu(), g, w.flip(2, 3).transpose(0, 1).contiguous(), None, 2 - pad, False,
                  dtype)  # fmt: skip
