"""Checks of the CUDA kernels: an independent oracle (CuPy on a GPU, NumPy in the
simulator), every output element written, the vectorised channels_last paths; and, on a
GPU only, CuPy interop, streams and 64-bit indexing on tensors of more than 2^31 elements.

The `gpu` fixture runs the first group twice: on a CUDA GPU when there is one, and in the
CUDA simulator (CPU tensors, the same kernels, NaN-poisoned buffers) in every CI run.
The shared per-op tests (test_conv3x3.py, ...) also run on both through `device`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from samples import conv3x3_samples, offset_pool_samples

import overfeat_kernels as ok
from overfeat_kernels import reference, simulator

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
GPUS = [
    pytest.param("cuda", marks=needs_gpu),
    pytest.param(
        "sim",
        marks=[
            pytest.mark.sim,
            pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built"),
        ],
    ),
]


@pytest.fixture(params=GPUS)
def gpu(request):
    """The device the CUDA kernels run on: "cuda", or "cpu" inside the simulator."""
    if request.param == "sim":
        with simulator.simulate_cuda():
            yield "cpu"
    else:
        yield "cuda"


@pytest.fixture
def cp():
    return pytest.importorskip("cupy")


@pytest.fixture
def xp(gpu):
    """The array library of the oracle: CuPy on the GPU, NumPy in the simulator."""
    return pytest.importorskip("cupy") if gpu == "cuda" else np


def poison_allocator_cache():
    """Fill the caching allocator's free blocks with NaN, so that an output element a
    kernel forgets to write reads as NaN instead of a plausible stale value. (In the
    simulator every new buffer is NaN-filled already.)"""
    if not torch.cuda.is_available() or simulator.enabled():
        return
    free = torch.cuda.mem_get_info()[0]
    blocks = [
        torch.full((1 << 24,), float("nan"), device="cuda")
        for _ in range(min(64, max(1, free // (1 << 27))))
    ]
    del blocks


def windows(xp, x, k):
    """[..., H-k+1, W-k+1, k, k] sliding windows, with the oracle library's stride tricks."""
    return xp.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))


def to_xp(xp, t):
    return xp.asarray(t) if xp is not np else t.cpu().numpy()


def from_xp(xp, a):
    return torch.from_dlpack(a) if xp is not np else torch.from_numpy(np.ascontiguousarray(a))


def test_conv3x3_against_oracle(gpu, xp):
    poison_allocator_cache()
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for s in conv3x3_samples(gpu, dtype):
            x, w, b, pad, relu = s.args
            if x.shape[0] == 0:
                continue
            out = ok.conv3x3(*s.args)
            xc = to_xp(xp, x.double().contiguous())
            xc = xp.pad(xc, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
            ref = xp.einsum("nchwrs,kcrs->nkhw", windows(xp, xc, 3), to_xp(xp, w.double()))
            if b is not None:
                ref += to_xp(xp, b.double())[None, :, None, None]
            if relu:
                ref = xp.maximum(ref, 0)
            ref_t = from_xp(xp, ref)
            err = (out.double() - ref_t).abs().max().item()
            tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
            assert err <= tol * max(1.0, ref_t.abs().max().item()), (s.name, dtype, err)


def test_offset_pool_against_oracle(gpu, xp):
    poison_allocator_cache()
    for s in offset_pool_samples(gpu, torch.float32):
        x, k = s.args
        if x.shape[0] == 0:
            continue
        out = ok.offset_max_pool2d(x, k)
        dense = windows(xp, to_xp(xp, x.contiguous()), k).max(axis=(-2, -1))
        n, c, _, _ = x.shape
        ho, wo = out.shape[-2:]
        for dy in range(k):
            for dx in range(k):
                ref = dense[:, :, dy : dy + k * ho : k, dx : dx + k * wo : k]
                got = out.view(n, k, k, c, ho, wo)[:, dy, dx]
                assert xp.array_equal(to_xp(xp, got.contiguous()), ref), (s.name, dy, dx)


@needs_gpu
def test_cupy_in_cupy_out(cp):
    x = cp.random.standard_normal((2, 3, 11, 12), dtype=cp.float32)
    w = cp.random.standard_normal((4, 3, 3, 3), dtype=cp.float32)
    out = ok.conv3x3(x, w, None, 1, True)
    assert isinstance(out, cp.ndarray)
    ref = reference.conv3x3(torch.from_dlpack(x), torch.from_dlpack(w), None, 1, True)
    assert cp.allclose(out, cp.asarray(ref), rtol=1e-5, atol=1e-5)
    pooled = ok.offset_max_pool2d(x, 3)
    assert isinstance(pooled, cp.ndarray)
    assert isinstance(ok.interleave(pooled, 3), cp.ndarray)


@needs_gpu
def test_runs_on_the_current_stream():
    x = torch.randn(4, 16, 64, 64, device="cuda")
    w = torch.randn(32, 16, 3, 3, device="cuda")
    expect = reference.conv3x3(x, w, None, 1, True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = ok.conv3x3(x, w, None, 1, True)
        pooled = ok.offset_max_pool2d(out, 2)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(pooled, reference.offset_max_pool2d(expect, 2), rtol=1e-5, atol=1e-4)


def test_every_output_element_written(gpu):
    poison_allocator_cache()
    x = torch.randn(3, 20, 33, 47, device=gpu).contiguous(memory_format=torch.channels_last)
    w = torch.randn(19, 20, 3, 3, device=gpu, requires_grad=True)
    xg = x.clone().requires_grad_()
    out = ok.conv3x3(xg, w, None, 0, True)
    assert not torch.isnan(out).any()
    gx, gw = torch.autograd.grad(out, (xg, w), torch.randn_like(out))
    assert not torch.isnan(gx).any() and not torch.isnan(gw).any()
    assert not torch.isnan(ok.offset_max_pool2d(x, 3)).any()


def _free_gib():
    return torch.cuda.mem_get_info()[0] / 2**30


@needs_gpu
def test_interleave_beyond_32bit_indexing():
    if _free_gib() < 12:
        pytest.skip("needs 12 GiB of free GPU memory")
    k = 2
    x = torch.randint(0, 255, (4, 2, 16384, 16385), dtype=torch.uint8, device="cuda")
    assert x.numel() > 2**31
    out = ok.interleave(x, k)
    assert torch.equal(out[:, :, -4:, -6:], reference.interleave(x, k)[:, :, -4:, -6:])
    assert torch.equal(ok.deinterleave(out, k), x)


@needs_gpu
def test_offset_pool_beyond_32bit_indexing():
    if _free_gib() < 20:
        pytest.skip("needs 20 GiB of free GPU memory")
    x = torch.randn(1, 2, 32768, 32769 + 2, device="cuda", dtype=torch.bfloat16)
    assert x.numel() > 2**31
    out = ok.offset_max_pool2d(x, 2)
    # The last windows of the big map equal pooling of its bottom-right corner, aligned.
    ho, wo = out.shape[-2:]
    ref = reference.offset_max_pool2d(
        x[:, :, 2 * ho - 62 : 2 * ho + 1, 2 * wo - 62 : 2 * wo + 1], 2
    )
    assert torch.equal(out.view(1, 2, 2, 2, ho, wo)[..., -31:, -31:], ref.view(1, 2, 2, 2, 31, 31))


# The vectorised channels_last paths (16-byte vectors: dense channels_last, channels x
# element size a multiple of 16 bytes); other layouts take the generic kernels tested above.
VECTOR_CASES = [(torch.bfloat16, 16), (torch.float16, 8), (torch.float32, 12), (torch.float64, 6)]


@pytest.mark.parametrize("dtype,channels", VECTOR_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_vectorized_channels_last_paths(gpu, dtype, channels, k):
    poison_allocator_cache()
    x = torch.randn(3, channels, 23, 31, device=gpu, dtype=dtype)
    x[0, 1, 5, 7] = float("nan")
    x = x.contiguous(memory_format=torch.channels_last)
    out = ok.offset_max_pool2d(x, k)
    ref = reference.offset_max_pool2d(x.cpu(), k)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out.cpu().nan_to_num(), ref.nan_to_num())
    assert torch.equal(out.cpu().isnan(), ref.isnan())
    woven = ok.interleave(out, k)
    assert torch.equal(woven.cpu().nan_to_num(), reference.interleave(ref, k).nan_to_num())
    assert torch.equal(ok.deinterleave(woven, k).cpu().nan_to_num(), ref.nan_to_num())
    # A view (not dense) of the same data takes the generic kernel and agrees.
    view = x[:, :, 1:, :]
    assert torch.equal(ok.offset_max_pool2d(view, k).cpu().nan_to_num(),
                       reference.offset_max_pool2d(view.cpu(), k).nan_to_num())  # fmt: skip
