"""offset_max_pool2d against F.max_pool2d per offset (float64), NaN and tie semantics,
gradients (also tie routing as F.max_pool2d does it), determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import HALF_DTYPES
from samples import POOL_GRAD_CONFIGS, make_map, offset_pool_samples
from tolerance import to64

import overfeat_kernels as ok
from overfeat_kernels import reference

DTYPES = [torch.float32, torch.float64, *HALF_DTYPES]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_equals_reference_exactly(device, dtype):
    # A max selects one input element: the result is exact in every dtype.
    for s in offset_pool_samples(device, dtype):
        x, k = s.args
        out = ok.offset_max_pool2d(x, k)
        ref = reference.offset_max_pool2d(to64(x), k)
        assert out.dtype == dtype and out.shape == ref.shape, s.name
        assert torch.equal(to64(out), ref), s.name


def test_forward_against_max_pool_per_offset(device):
    x = make_map((2, 3, 17, 20), torch.float32, device, "channels_last")
    k = 3
    out = ok.offset_max_pool2d(x, k)
    assert out.shape == (18, 3, 5, 6)
    for n in range(2):
        for dy in range(k):
            for dx in range(k):
                crop = x[n : n + 1, :, dy:, dx:]
                expect = F.max_pool2d(crop, k)[:, :, :5, :6]
                assert torch.equal(out[(n * k + dy) * k + dx][None], expect)


def test_output_memory_format(device):
    for layout, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        out = ok.offset_max_pool2d(make_map((2, 4, 9, 9), torch.float32, device, layout), 2)
        assert out.is_contiguous(memory_format=fmt)


def test_nan_propagates(device):
    x = torch.randn(1, 2, 9, 9, device=device)
    x[0, 1, 4, 4] = float("nan")
    out = ok.offset_max_pool2d(x, 3)
    ref = reference.offset_max_pool2d(x, 3)
    assert torch.isnan(out).any()
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.equal(out.nan_to_num(), ref.nan_to_num())


def test_ties_route_gradient_like_max_pool2d(device):
    # Integer values in a small range: most windows have several equal maxima. Gradients
    # are integers too, so sums are exact and the comparison can be bitwise.
    for s in offset_pool_samples(device, torch.float32, True, values="ties"):
        x, k = s.args
        if x.numel() == 0:
            continue
        out = ok.offset_max_pool2d(x, k)
        grad = torch.randint(-5, 6, out.shape, device=device).float()
        (ours,) = torch.autograd.grad(out, x, grad)
        xr = x.detach().clone().requires_grad_()
        (ref,) = torch.autograd.grad(reference.offset_max_pool2d(xr, k), xr, grad)
        assert torch.equal(ours, ref), s.name


def test_nan_gradient_routed_like_max_pool2d(device):
    x = torch.randn(1, 1, 7, 7, device=device)
    x[0, 0, 1, 1] = float("nan")
    x[0, 0, 2, 3] = float("nan")
    x.requires_grad_()
    out = ok.offset_max_pool2d(x, 2)
    grad = torch.arange(out.numel(), device=device, dtype=torch.float32).view_as(out)
    (ours,) = torch.autograd.grad(out, x, grad)
    xr = x.detach().clone().requires_grad_()
    (ref,) = torch.autograd.grad(reference.offset_max_pool2d(xr, 2), xr, grad)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF_DTYPES], ids=str)
def test_backward_matches_reference(device, dtype):
    for s in offset_pool_samples(device, dtype, True):
        x, k = s.args
        out = ok.offset_max_pool2d(x, k)
        grad = torch.randn_like(out)
        (ours,) = torch.autograd.grad(out, x, grad)
        x64 = to64(x).requires_grad_()
        (ref,) = torch.autograd.grad(reference.offset_max_pool2d(x64, k), x64, to64(grad))
        assert ours.shape == x.shape
        if ref.numel():
            # Each pixel sums at most k*k gradients in float32, then rounds once.
            tol = torch.finfo(dtype).eps * 2 * max(1.0, ref.abs().max().item())
            assert (to64(ours) - ref).abs().max().item() <= tol, s.name


def test_gradcheck_float64(device):
    for s in offset_pool_samples(device, torch.float64, True, configs=POOL_GRAD_CONFIGS):
        assert torch.autograd.gradcheck(ok.offset_max_pool2d, s.args), s.name


def test_backward_is_bitwise_deterministic(device):
    x = make_map((2, 8, 35, 44), torch.float32, device, "channels_last", requires_grad=True)
    out = ok.offset_max_pool2d(x, 3)
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, x, grad, retain_graph=True)[0]
    for _ in range(3):
        assert torch.equal(first, torch.autograd.grad(out, x, grad, retain_graph=True)[0])


def test_kernel_size_one_is_identity(device):
    x = make_map((2, 3, 5, 6), torch.float32, device, "strided")
    assert torch.equal(ok.offset_max_pool2d(x, 1), x)


def test_empty_batch(device):
    x = torch.empty(0, 3, 9, 9, device=device, requires_grad=True)
    out = ok.offset_max_pool2d(x, 3)
    assert out.shape == (0, 3, 2, 2)
    out.sum().backward()
    assert x.grad.shape == x.shape
