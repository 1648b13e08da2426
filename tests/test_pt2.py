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


def _public_ops(x, w, b):
    """Each public op once: conv3x3, offset_max_pool2d, interleave, deinterleave."""
    y = ok.interleave(ok.offset_max_pool2d(ok.conv3x3(x, w, b, 1, True), 2), 2)
    return y, ok.deinterleave(y, 2)


def test_ops_without_grad_mode_skip_autograd(device, monkeypatch):
    from overfeat_kernels import ops

    entered = []
    real = ops._below_autograd
    assert real is not None  # the torch this package supports has it

    class Counting:
        def __enter__(self):
            entered.append(1)
            self.guard = real()
            return self.guard.__enter__()

        def __exit__(self, *exc):
            return self.guard.__exit__(*exc)

    monkeypatch.setattr(ops, "_below_autograd", Counting)
    x = torch.randn(2, 3, 11, 13, device=device, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, device=device, requires_grad=True)
    b = torch.randn(5, device=device, requires_grad=True)
    with_grad = _public_ops(x, w, b)
    assert not entered and all(t.grad_fn is not None for t in with_grad)
    with torch.no_grad():
        without = _public_ops(x, w, b)
    assert len(entered) == 4  # every public op went below autograd
    for t, ref in zip(without, with_grad, strict=True):
        assert t.grad_fn is None and not t.requires_grad
        assert torch.equal(t, ref.detach())


def test_compile_fullgraph_without_grad_mode(device):
    torch._dynamo.reset()
    x = torch.randn(2, 3, 11, 13, device=device)
    w, b = torch.randn(5, 3, 3, 3, device=device), torch.randn(5, device=device)
    compiled = torch.compile(_pipeline, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        out = compiled(x, w, b)
    assert_matches(out, _pipeline_reference(to64(x), to64(w), to64(b)))
