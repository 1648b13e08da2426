"""The oracle itself, checked against SPEC's formulas written out as plain loops."""

from __future__ import annotations

import itertools

import torch

from overfeat_kernels import reference


def test_offset_pool_reference_is_the_spec_formula():
    k, n, c, h, w = 3, 2, 2, 11, 13
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    out = reference.offset_max_pool2d(x, k)
    ho, wo = (h - k + 1) // k, (w - k + 1) // k
    assert out.shape == (n * k * k, c, ho, wo)
    for nn_, dy, dx, ch, i, j in itertools.product(
        range(n), range(k), range(k), range(c), range(ho), range(wo)
    ):
        window = [x[nn_, ch, dy + k * i + a, dx + k * j + b] for a in range(k) for b in range(k)]
        assert out[(nn_ * k + dy) * k + dx, ch, i, j] == max(window)


def test_interleave_reference_is_the_spec_formula():
    k, n, c, h, w = 2, 2, 3, 3, 4
    x = torch.randn(n * k * k, c, h, w)
    out = reference.interleave(x, k)
    for nn_, ch, i, j, dy, dx in itertools.product(
        range(n), range(c), range(h), range(w), range(k), range(k)
    ):
        assert out[nn_, ch, k * i + dy, k * j + dx] == x[(nn_ * k + dy) * k + dx, ch, i, j]
    assert torch.equal(reference.deinterleave(out, k), x)


def test_conv_reference_is_a_direct_sum():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    wt = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    out = reference.conv3x3(x, wt, b, padding=1, relu=True)
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for k, y, xx in itertools.product(range(3), range(5), range(6)):
        s = (xp[0, :, y : y + 3, xx : xx + 3] * wt[k]).sum() + b[k]
        torch.testing.assert_close(out[0, k, y, xx], s.clamp_min(0))
