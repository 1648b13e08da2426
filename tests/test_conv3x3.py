"""conv3x3 against F.conv2d (float64 reference), gradients, layouts, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import HALF_DTYPES
from samples import CONV_GRAD_CONFIGS, conv3x3_samples, make_map
from tolerance import assert_matches, to64
from torch._prims_common import suggest_memory_format

import overfeat_kernels as ok
from overfeat_kernels import reference

DTYPES = [torch.float32, torch.float64, *HALF_DTYPES]


def _reference(args, dtype=None):
    x, w, b, pad, relu = args
    cast = (lambda t: t.detach().to(dtype)) if dtype else to64
    return reference.conv3x3(cast(x), cast(w), None if b is None else cast(b), pad, relu)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_matches_reference(device, dtype):
    for s in conv3x3_samples(device, dtype):
        out = ok.conv3x3(*s.args)
        ref_lp = _reference(s.args, dtype) if dtype in HALF_DTYPES else None
        assert out.dtype == dtype and out.device.type == device
        assert_matches(out, _reference(s.args), ref_lp)


def test_output_keeps_memory_format(device):
    for s in conv3x3_samples(device):
        x = s.args[0]
        out = ok.conv3x3(*s.args)
        expect = suggest_memory_format(x)
        if out.numel():
            assert out.is_contiguous(memory_format=expect), s.name


def test_channels_last_input_gives_channels_last_output(device):
    x = make_map((2, 5, 9, 11), torch.float32, device, "channels_last")
    out = ok.conv3x3(x, torch.randn(7, 5, 3, 3, device=device))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert not out.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, *HALF_DTYPES], ids=str)
def test_backward_matches_reference(device, dtype):
    for s in conv3x3_samples(device, dtype, requires_grad=True):
        x, w, b, pad, relu = s.args
        out = ok.conv3x3(*s.args)
        grad = torch.randn_like(out)
        out.backward(grad)
        leaves = [t for t in (x, w, b) if t is not None]
        ref_leaves = [to64(t).requires_grad_() for t in leaves]
        ref_args = (
            ref_leaves[0],
            ref_leaves[1],
            ref_leaves[2] if b is not None else None,
            pad,
            relu,
        )
        reference.conv3x3(*ref_args).backward(to64(grad))
        lp_leaves = None
        if dtype in HALF_DTYPES:
            lp_leaves = [t.detach().clone().requires_grad_() for t in leaves]
            lp_args = (
                lp_leaves[0],
                lp_leaves[1],
                lp_leaves[2] if b is not None else None,
                pad,
                relu,
            )
            reference.conv3x3(*lp_args).backward(grad)
        for i, (t, r) in enumerate(zip(leaves, ref_leaves, strict=True)):
            assert t.grad is not None and t.grad.shape == t.shape, (s.name, i)
            assert_matches(t.grad, r.grad, lp_leaves[i].grad if lp_leaves else None, factor=4)


def test_relu_gradient_is_masked_by_output(device):
    x = make_map((1, 2, 6, 6), torch.float64, device, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    out = ok.conv3x3(x, w, None, 1, True)
    assert (out == 0).any() and (out > 0).any()
    (gx,) = torch.autograd.grad(out, x, torch.ones_like(out))
    pre = F.conv2d(x, w.detach(), padding=1)
    (gx_ref,) = torch.autograd.grad(pre, x, (pre > 0).double())
    torch.testing.assert_close(gx, gx_ref)


def test_gradcheck_float64(device):
    for s in conv3x3_samples(device, torch.float64, True, configs=CONV_GRAD_CONFIGS):
        assert torch.autograd.gradcheck(ok.conv3x3, s.args, eps=1e-6, atol=1e-5), s.name


def test_only_requested_gradients_are_computed(device):
    x = make_map((1, 3, 5, 5), torch.float32, device)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    b = torch.randn(4, device=device)
    ok.conv3x3(x, w, b).sum().backward()
    assert x.grad is None and b.grad is None and w.grad is not None


def test_backward_is_deterministic(device):
    x = make_map((2, 9, 17, 13), torch.float32, device, "channels_last", requires_grad=True)
    w = torch.randn(10, 9, 3, 3, device=device, requires_grad=True)
    b = torch.randn(10, device=device, requires_grad=True)
    grad = torch.randn(2, 10, 17, 13, device=device)
    runs = []
    for _ in range(3):
        out = ok.conv3x3(x, w, b, 1, True)
        runs.append(torch.autograd.grad(out, (x, w, b), grad))
    for later in runs[1:]:
        for a, b_ in zip(runs[0], later, strict=True):
            assert torch.equal(a, b_)


def test_empty_batch(device):
    x = torch.empty(0, 3, 8, 8, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    out = ok.conv3x3(x, w, None, 0)
    assert out.shape == (0, 4, 6, 6)
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))


def test_nan_propagates(device):
    x = torch.randn(1, 2, 5, 5, device=device)
    x[0, 1, 2, 2] = float("nan")
    out = ok.conv3x3(x, torch.randn(3, 2, 3, 3, device=device), None, 1, True)
    assert torch.isnan(out[0, :, 1:4, 1:4]).all()
    assert not torch.isnan(out[0, :, 0, :]).any()
