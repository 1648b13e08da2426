"""Comparison against float64 references, with half-precision tolerances set relative to
the reference's own error in that precision (as flash-attention's tests do)."""

from __future__ import annotations

import torch

HALF = (torch.float16, torch.bfloat16)


def to64(x):
    return x.detach().to("cpu", torch.float64) if isinstance(x, torch.Tensor) else x


def assert_matches(ours, ref64, ref_same_precision=None, *, factor=2.0):
    """ours (any dtype / device) against ref64 (float64, CPU).

    float64: ~1e-10 relative. float32: 1e-5 of the output's scale (exact FP32 arithmetic
    lands far under that). float16 / bfloat16: at most `factor` times the error that the
    reference itself makes in that precision (ref_same_precision), plus one unit of
    rounding at the output's scale.
    """
    assert ours.shape == ref64.shape, (ours.shape, ref64.shape)
    got = to64(ours)
    nan = torch.isnan(ref64)
    assert torch.equal(torch.isnan(got), nan), "NaN positions differ"
    got, ref = got[~nan], ref64[~nan]
    if ref.numel() == 0:
        return
    scale = max(1.0, ref.abs().max().item())
    err = (got - ref).abs().max().item()
    if ours.dtype == torch.float64:
        tol = 1e-10 * scale
    elif ours.dtype == torch.float32:
        tol = 1e-5 * scale
    else:
        assert ref_same_precision is not None, "half precision needs the reference's own error"
        ref_err = (to64(ref_same_precision)[~nan] - ref).abs().max().item()
        tol = factor * ref_err + torch.finfo(ours.dtype).eps * scale
    assert err <= tol, f"max error {err:.3g} > tolerance {tol:.3g} ({ours.dtype})"
