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


def _node_names(out):
    """Names of the autograd nodes behind `out` (the whole graph)."""
    names, todo, seen = [], [out.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(node.name())
        todo.extend(next_fn for next_fn, _ in node.next_functions)
    return names


def test_autograd_is_cpp_and_builds_nodes_only_when_needed(device):
    x = torch.randn(2, 3, 11, 13, device=device, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, device=device, requires_grad=True)
    b = torch.randn(5, device=device, requires_grad=True)
    with_grad = _public_ops(x, w, b)
    names = _node_names(with_grad[1])
    for function in ("Conv3x3Function", "OffsetMaxPool2dFunction", "PermuteFunction<true>",
                     "PermuteFunction<false>"):  # fmt: skip
        assert sum(function in n for n in names) == 1, names
    # C++ nodes only: torch.library's Python autograd would show as a Python function node.
    assert all(n.startswith(("overfeat_kernels::", "torch::autograd::")) for n in names), names
    with torch.no_grad():
        without = _public_ops(x, w, b)
    detached = [t.detach() for t in (x, w, b)]
    plain = _public_ops(*detached)  # grad mode, but nothing requires grad
    for t, u, ref in zip(without, plain, with_grad, strict=True):
        assert t.grad_fn is None and not t.requires_grad
        assert u.grad_fn is None and not u.requires_grad
        assert torch.equal(t, ref.detach()) and torch.equal(u, ref.detach())


def test_second_order_gradients(device):
    """conv3x3 and offset pooling raise a clear error when their gradients are
    differentiated; interleave and deinterleave, linear, have gradients of any order."""
    x = torch.randn(1, 3, 7, 9, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(ok.conv3x3(x, w, None, 1, True).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="conv3x3: second-order gradients"):
        gx.sum().backward()
    (gx,) = torch.autograd.grad(ok.offset_max_pool2d(x, 2).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="offset_max_pool2d: second-order gradients"):
        gx.sum().backward()
    m = torch.randn(8, 2, 3, 4, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: ok.interleave(t, 2), (m,))
    assert torch.autograd.gradgradcheck(lambda t: ok.deinterleave(t, 2), (x[:, :, :6, :8],))


def test_autocast_is_below_the_op():
    """torch.ops callers get autocast too (a C++ Autocast kernel): float32 in, bfloat16 out,
    equal to the call on bfloat16 inputs."""
    x, w, b = torch.randn(1, 4, 6, 7), torch.randn(5, 4, 3, 3), torch.randn(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = OPS.conv3x3(x, w, b, 1, True)
        public = ok.conv3x3(x, w, b, 1, True)
        doubles = OPS.conv3x3(x.double(), w.double(), b.double(), 1, True)
    expected = ok.conv3x3(x.bfloat16(), w.bfloat16(), b.bfloat16(), 1, True)
    assert raw.dtype == public.dtype == torch.bfloat16
    assert torch.equal(raw, expected) and torch.equal(public, expected)
    assert doubles.dtype == torch.float64  # float64 stays, as for F.conv2d


def test_compile_fullgraph_without_grad_mode(device):
    torch._dynamo.reset()
    x = torch.randn(2, 3, 11, 13, device=device)
    w, b = torch.randn(5, 3, 3, 3, device=device), torch.randn(5, device=device)
    compiled = torch.compile(_pipeline, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        out = compiled(x, w, b)
    assert_matches(out, _pipeline_reference(to64(x), to64(w), to64(b)))
