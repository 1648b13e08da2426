"""interleave / deinterleave against the reference permutation, round trips, any dtype,
gradients, and the identity that offset pooling + interleave rests on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from samples import deinterleave_samples, interleave_samples, make_map

import overfeat_kernels as ok
from overfeat_kernels import reference, simulator


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.uint8,
        torch.bool,
    ],
    ids=str,
)
def test_interleave_equals_reference(device, dtype):
    for s in interleave_samples(device):
        x, k = s.args
        x = (x * 10).to(dtype) if dtype != torch.bool else x > 0
        out = ok.interleave(x, k)
        assert out.dtype == dtype
        assert torch.equal(out, reference.interleave(x, k)), s.name


def test_deinterleave_equals_reference(device):
    for s in deinterleave_samples(device):
        x, k = s.args
        assert torch.equal(ok.deinterleave(x, k), reference.deinterleave(x, k)), s.name


def test_round_trips(device):
    for s in interleave_samples(device):
        x, k = s.args
        assert torch.equal(ok.deinterleave(ok.interleave(x, k), k), x), s.name
    for s in deinterleave_samples(device):
        x, k = s.args
        assert torch.equal(ok.interleave(ok.deinterleave(x, k), k), x), s.name


def test_formula_elementwise(device):
    k, n, c, h, w = 3, 2, 2, 4, 5
    x = torch.randn(n * k * k, c, h, w, device=device)
    out = ok.interleave(x, k)
    for nn_ in range(n):
        for dy in range(k):
            for dx in range(k):
                b = (nn_ * k + dy) * k + dx
                assert torch.equal(out[nn_, :, dy::k, dx::k], x[b])


def test_memory_format_kept(device):
    x = make_map((9, 4, 5, 6), torch.float32, device, "channels_last")
    assert ok.interleave(x, 3).is_contiguous(memory_format=torch.channels_last)


def test_gradients(device):
    # In the simulator a full Jacobian (one launch per element) takes minutes: check
    # random projections of it instead.
    fast = simulator.enabled()
    for s in interleave_samples(device, torch.float64, True):
        assert torch.autograd.gradcheck(ok.interleave, s.args, fast_mode=fast), s.name
    for s in deinterleave_samples(device, torch.float64, True):
        assert torch.autograd.gradcheck(ok.deinterleave, s.args, fast_mode=fast), s.name


@pytest.mark.parametrize("k", [2, 3])
def test_identity_offsets_equal_dilated(device, k):
    """SPEC "The identity": interleave(f(offset_pool(X))) is the top-left block of
    f_dilated(max_pool2d(X, k, stride=1)) for a classifier f with an s x s first layer."""
    torch.manual_seed(k)
    x = torch.randn(2, 4, 31, 29, device=device, dtype=torch.float64)
    w1 = torch.randn(6, 4, 3, 3, device=device, dtype=torch.float64)
    w2 = torch.randn(5, 6, 1, 1, device=device, dtype=torch.float64)

    def classifier(t, dilation=1):
        return F.conv2d(F.relu(F.conv2d(t, w1, dilation=dilation)), w2)

    fine = ok.interleave(classifier(ok.offset_max_pool2d(x, k)), k)
    dense = classifier(reference.dilated_equivalent(x, k), dilation=k)
    h, w = fine.shape[-2:]
    assert h <= dense.shape[-2] and w <= dense.shape[-1]
    torch.testing.assert_close(fine, dense[:, :, :h, :w])
