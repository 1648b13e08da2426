"""torch.library.opcheck on every op (schema, fake kernel, autograd registration, AOT
dispatch with dynamic shapes) from the shared samples, and torch.compile(fullgraph=True)."""

from __future__ import annotations

import pytest
import torch
from samples import (
    conv3x3_backward_samples,
    conv3x3_samples,
    deinterleave_samples,
    interleave_samples,
    offset_pool_samples,
    pool_backward_samples,
)
from tolerance import assert_matches, to64

import overfeat_kernels as ok
from overfeat_kernels import reference

OPS = torch.ops.overfeat_kernels

CASES = [
    (OPS.conv3x3.default, lambda d: conv3x3_samples(d, requires_grad=True)),
    (OPS.conv3x3_backward.default, conv3x3_backward_samples),
    # PyTorch's convolution inside the op (the backend's "cudnn" candidate), autograd included.
    (OPS.conv3x3.default, lambda d: conv3x3_samples(d, requires_grad=True, algos=[4, 4, 4])),
    (OPS.conv3x3_backward.default, lambda d: conv3x3_backward_samples(d, algos=[4, 4])),
    (OPS.offset_max_pool2d.default, lambda d: offset_pool_samples(d, requires_grad=True)),
    (OPS.offset_max_pool2d_backward.default, pool_backward_samples),
    (OPS.interleave.default, lambda d: interleave_samples(d, requires_grad=True)),
    (OPS.deinterleave.default, lambda d: deinterleave_samples(d, requires_grad=True)),
]


CASE_IDS = [str(op) + ("-aten" if i in (2, 3) else "") for i, (op, _) in enumerate(CASES)]


@pytest.mark.parametrize("op,samples", CASES, ids=CASE_IDS)
def test_opcheck(device, op, samples):
    for s in samples(device):
        torch.library.opcheck(op, s.args, s.kwargs)


def _pipeline(x, w, b):
    """A dense-evaluation tail: conv + ReLU, offset pooling, 1x1-ish classifier, interleave."""
    y = ok.conv3x3(x, w, b, 1, True)
    return ok.interleave(ok.offset_max_pool2d(y, 2) * 2.0, 2)


def _pipeline_reference(x, w, b):
    y = reference.conv3x3(x, w, b, 1, True)
    return reference.interleave(reference.offset_max_pool2d(y, 2) * 2.0, 2)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_forward_backward(device, backend):
    torch._dynamo.reset()
    x = torch.randn(2, 3, 11, 13, device=device, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, device=device, requires_grad=True)
    b = torch.randn(5, device=device, requires_grad=True)
    compiled = torch.compile(_pipeline, fullgraph=True, backend=backend)
    out = compiled(x, w, b)
    # float64 reference: gradients of out.square().sum() reach magnitudes in the thousands,
    # where float32 summation order alone moves the last digits.
    leaves64 = [to64(t).requires_grad_() for t in (x, w, b)]
    ref = _pipeline_reference(*leaves64)
    assert_matches(out, ref.detach())
    grads = torch.autograd.grad(out.square().sum(), (x, w, b))
    ref_grads = torch.autograd.grad(ref.square().sum(), leaves64)
    for g, r in zip(grads, ref_grads, strict=True):
        assert_matches(g, r)


def test_compile_dynamic_shapes(device):
    torch._dynamo.reset()
    fn = torch.compile(
        lambda t: ok.interleave(ok.offset_max_pool2d(t, 3), 3),
        fullgraph=True,
        dynamic=True,
        backend="aot_eager",
    )
    for h in (17, 20, 26):
        x = torch.randn(1, 2, h, h + 1, device=device)
        assert torch.equal(fn(x), reference.interleave(reference.offset_max_pool2d(x, 3), 3))
