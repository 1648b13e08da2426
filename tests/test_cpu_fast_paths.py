"""The CPU fast paths (dense NCHW and channels_last) of offset pooling, interleave and the
conv3x3 epilogue: against independent references, bit for bit against the general
(strided) path, across thread counts and across the SIMD variants (baseline, AVX2,
AVX-512) that the kernels pick at run time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from tolerance import to64

import overfeat_kernels as ok
from overfeat_kernels import reference

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# (N, C, H, W, k): odd sizes; channel counts below, at and above the vector widths (8, 16,
# 32 lanes) and the kernels' channel blocks (128, 256); k from 1 to 5.
POOL_SHAPES = [
    (2, 3, 11, 13, 2),
    (1, 17, 20, 23, 3),
    (2, 16, 9, 9, 2),
    (1, 33, 14, 31, 3),
    (1, 130, 8, 11, 2),
    (1, 300, 7, 10, 3),
    (3, 5, 9, 12, 4),
    (1, 2, 11, 14, 5),
    (2, 7, 5, 6, 1),
    (1, 1, 3, 40, 2),
    (1, 3, 12, 75, 2),  # output rows of several vectors, in every dtype
    (1, 150, 7, 400, 3),  # long rows: channels_last backward in blocks of 64, 64 and 22
]


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # same values, a non-contiguous view: the general path
        n, c, h, w = x.shape
        big = torch.empty(n, c, w + 1, h + 3, dtype=x.dtype)
        view = big[:, :, 1:, 2 : h + 2].transpose(2, 3)
        view.copy_(x)
        assert not view.is_contiguous() and torch.equal(_bits(view), _bits(x))
        return view
    return x.contiguous()


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor (signed zeros and NaN payloads compare exactly)."""
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(ints)


def _draw(shape, dtype, values: str) -> torch.Tensor:
    if values == "ties":
        return torch.randint(-3, 4, shape).to(dtype)
    if values == "signed_zeros":  # maxima of +0 and -0 in either order: the first one wins
        x = torch.randint(-1, 1, shape).to(dtype)
        return torch.where((x == 0) & (torch.rand(shape) < 0.5), -x.new_zeros(()), x)
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    if values == "nan":
        x[torch.rand(shape) < 0.05] = float("nan")
    return x


def _per_offset_max_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """Independent oracle: F.max_pool2d (float64) on each shifted crop, offset-major."""
    n, c, h, w = x.shape
    ho, wo = (h - k + 1) // k, (w - k + 1) // k
    out = torch.empty(n, k, k, c, ho, wo, dtype=torch.float64)
    for dy in range(k):
        for dx in range(k):
            crop = to64(x)[:, :, dy : dy + k * ho, dx : dx + k * wo]
            out[:, dy, dx] = F.max_pool2d(crop, k)
    return out.reshape(n * k * k, c, ho, wo)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("values", ["normal", "ties", "nan", "signed_zeros"])
def test_pool_forward_against_max_pool_per_offset(dtype, layout, values):
    for n, c, h, w, k in POOL_SHAPES:
        x = _layout(_draw((n, c, h, w), dtype, values), layout)
        out = ok.offset_max_pool2d(x, k)
        expect = _per_offset_max_pool(x, k)
        got = to64(out)
        name = f"{(n, c, h, w)} k={k}"
        assert torch.equal(torch.isnan(got), torch.isnan(expect)), name
        assert torch.equal(got.nan_to_num(), expect.nan_to_num()), name
        # The same bits as the general path (strided view of the same values).
        assert torch.equal(_bits(out), _bits(ok.offset_max_pool2d(_layout(x, "strided"), k))), name


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("values", ["normal", "ties", "nan", "signed_zeros"])
def test_pool_backward_bitwise_equals_general_path(dtype, layout, values):
    # The general path sums each pixel's gradients in a fixed order in the accumulation
    # type; the fast paths must give the very same bits.
    for n, c, h, w, k in POOL_SHAPES:
        x = _layout(_draw((n, c, h, w), dtype, values), layout)
        out = ok.offset_max_pool2d(x, k)
        g = torch.randn(out.shape).to(dtype)
        fast = torch.ops.overfeat_kernels.offset_max_pool2d_backward(g, x, k)
        general = torch.ops.overfeat_kernels.offset_max_pool2d_backward(g, _layout(x, "strided"), k)
        cl = layout == "channels_last"
        fmt = torch.channels_last if cl else torch.contiguous_format
        assert fast.is_contiguous(memory_format=fmt)
        assert torch.equal(_bits(fast), _bits(general)), f"{(n, c, h, w)} k={k}"


def _window_order_backward(x: torch.Tensor, g: torch.Tensor, k: int) -> torch.Tensor:
    """Independent oracle of the backward's summation order: each pixel adds the gradients of
    the windows whose max it is, windows taken by first pixel (y0, x0) in row-major order, in
    the accumulation type (float64 for float64, else float32), then rounds once. The window
    maxima come from F.max_pool2d over every stride-1 position."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n, c, h, w = x.shape
    ho, wo = (h - k + 1) // k, (w - k + 1) // k
    _, idx = F.max_pool2d(x.to(acc), k, stride=1, return_indices=True)  # [n, c, h-k+1, w-k+1]
    # The gradient of the window starting at (y0, x0): offset (y0 % k, x0 % k), index
    # (y0 // k, x0 // k); 0 where no window starts.
    gw = torch.zeros(n, c, h, w, dtype=acc)
    gw[:, :, : k * ho, : k * wo] = reference.interleave(g.to(acc), k)
    total = torch.zeros(n, c, h, w, dtype=acc)
    pixel = torch.arange(h * w).view(h, w)
    for a in reversed(range(k)):  # window (y - a, x - b): a, b descending = (y0, x0) ascending
        for b in reversed(range(k)):
            term = torch.zeros(n, c, h, w, dtype=acc)
            hi, wi = min(h - a, idx.shape[2]), min(w - b, idx.shape[3])
            hits = idx[:, :, :hi, :wi] == pixel[a : a + hi, b : b + wi]
            term[:, :, a : a + hi, b : b + wi] = torch.where(hits, gw[:, :, :hi, :wi], 0.0)
            total = total + term
    return total.to(x.dtype)


@pytest.mark.parametrize("device", ["cpu", pytest.param("sim", marks=pytest.mark.sim)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_pool_backward_sums_in_window_order(device, dtype, layout):
    # Random values and gradients: a local maximum is the max of up to k*k windows, so the
    # order of its sum shows in the bits. Every path (fast, general, and the CUDA kernel in
    # the simulator) must follow the documented one.
    from overfeat_kernels import simulator

    if device == "sim" and not simulator.available():
        pytest.skip("CUDA simulator not built")
    shapes = [(2, 3, 11, 13, 2), (1, 17, 20, 23, 3), (1, 130, 8, 11, 2), (1, 5, 9, 12, 4)]
    for n, c, h, w, k in shapes:
        x = _layout(torch.randn(n, c, h, w).to(dtype), layout)
        g = torch.randn(n * k * k, c, (h - k + 1) // k, (w - k + 1) // k).to(dtype)
        expect = _window_order_backward(x, g, k)
        if device == "sim":
            with simulator.simulate_cuda():
                got = torch.ops.overfeat_kernels.offset_max_pool2d_backward(g, x, k)
        else:
            got = torch.ops.overfeat_kernels.offset_max_pool2d_backward(g, x, k)
        _, idx = F.max_pool2d(x.float(), k, stride=1, return_indices=True)
        planes = torch.arange(n * c).view(n, c, 1, 1) * (h * w)
        most = torch.bincount((idx + planes).flatten()).max().item()
        assert most >= 3, "no pixel is the max of three windows: the order is not tested"
        assert torch.equal(_bits(got), _bits(expect)), f"{(n, c, h, w)} k={k}"


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("values", ["ties", "nan"])
def test_pool_backward_routes_like_max_pool2d(layout, values):
    # Integer gradients: sums are exact, so the comparison with autograd through
    # F.max_pool2d (first maximum in row-major order, NaN as max_pool2d routes it) is exact.
    for n, c, h, w, k in POOL_SHAPES:
        x = _layout(_draw((n, c, h, w), torch.float32, values), layout).requires_grad_()
        out = ok.offset_max_pool2d(x, k)
        g = torch.randint(-5, 6, out.shape).float()
        (ours,) = torch.autograd.grad(out, x, g)
        xr = x.detach().clone().requires_grad_()
        (ref,) = torch.autograd.grad(reference.offset_max_pool2d(xr, k), xr, g)
        assert torch.equal(ours, ref), f"{(n, c, h, w)} k={k}"


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("k", [2, 3])
def test_pool_keeps_signed_zero_and_nan_bits_of_the_rules_pick(layout, k):
    # Equal values with different bits: +0 / -0 (ties: the first in row-major window order
    # wins, so a row-by-column order would pick differently) and NaNs with different
    # payloads (a later NaN replaces an earlier one, F.max_pool2d's rule). The output must
    # carry the bits of the element the rule picks.
    choices = torch.tensor([-1.0, -0.0, 0.0])
    x = choices[torch.randint(0, 3, (2, 20, 14, 15))]
    nans = torch.tensor([0x7FC00001, -0x3FFFFE], dtype=torch.int32).view(torch.float32)
    where = torch.rand(x.shape) < 0.03
    x[where] = nans[torch.randint(0, 2, (int(where.sum()),))]
    x = _layout(x, layout)
    out = ok.offset_max_pool2d(x, k)
    assert torch.equal(_bits(out), _bits(ok.offset_max_pool2d(_layout(x, "strided"), k)))
    _, _, h, w = x.shape
    ho, wo = (h - k + 1) // k, (w - k + 1) // k
    ref = torch.stack(
        [
            F.max_pool2d(x[:, :, dy : dy + k * ho, dx : dx + k * wo], k)
            for dy in range(k)
            for dx in range(k)
        ],
        1,
    ).reshape(out.shape)
    assert torch.equal(_bits(out), _bits(ref))
    signs = torch.signbit(out[out == 0])
    assert signs.any() and not signs.all()  # the test does see both zeros


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_pool_forward_nan_free_and_nan_groups(dtype, layout):
    # The NCHW forward handles groups of planes without NaNs with a separable max and the
    # groups holding a NaN with the full rule: a few NaNs (only some groups hit) and +0 / -0
    # ties (first in row-major window order wins) in both; many planes (several groups, the
    # last one smaller), rows longer than a vector, k = 1 to 9.
    for n, c, h, w, k in [(1, 200, 9, 11, 2), (2, 70, 17, 17, 3), (1, 9, 12, 100, 2),
                          (1, 40, 13, 70, 4), (1, 6, 11, 23, 5), (1, 3, 19, 40, 9),
                          (1, 37, 5, 6, 1)]:  # fmt: skip
        x = torch.tensor([-1.0, -0.0, 0.0])[torch.randint(0, 3, (n, c, h, w))].to(dtype)
        x[0, c // 3, h // 2, w // 2] = float("nan")
        x[-1, c - 1, h - 1, w - 1] = float("nan")  # outside every window for most shapes
        x = _layout(x, layout)
        out = ok.offset_max_pool2d(x, k)
        name = f"{(n, c, h, w)} k={k}"
        assert torch.equal(_bits(out), _bits(ok.offset_max_pool2d(_layout(x, "strided"), k))), name
        expect = _per_offset_max_pool(x, k)
        assert torch.equal(torch.isnan(to64(out)), torch.isnan(expect)), name


def _threads(n: int):
    class _Ctx:
        def __enter__(self):
            self.old = torch.get_num_threads()
            torch.set_num_threads(n)

        def __exit__(self, *exc):
            torch.set_num_threads(self.old)

    return _Ctx()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_pool_results_do_not_depend_on_thread_count(dtype, layout):
    # (1, 64, 35, 44) k=3 channels_last is cut into bands of rows whose number depends on
    # the thread count; the sums must not.
    for shape, k in (((1, 64, 35, 44), 3), ((2, 300, 17, 16), 2), ((1, 8, 64, 66), 2)):
        x = _layout(torch.randn(shape).to(dtype), layout)
        g = torch.randn(ok.offset_max_pool2d(x, k).shape).to(dtype)
        results = []
        for n in (1, 2, 3):
            with _threads(n):
                fwd = ok.offset_max_pool2d(x, k)
                bwd = torch.ops.overfeat_kernels.offset_max_pool2d_backward(g, x, k)
            results.append((_bits(fwd), _bits(bwd)))
        for fwd, bwd in results[1:]:
            assert torch.equal(fwd, results[0][0]) and torch.equal(bwd, results[0][1]), shape


def test_pool_backward_takes_a_gradient_in_another_layout():
    x = torch.randn(2, 24, 13, 15).contiguous(memory_format=torch.channels_last)
    out = ok.offset_max_pool2d(x, 3)
    g = torch.randn(out.shape)  # NCHW gradient for a channels_last input
    got = torch.ops.overfeat_kernels.offset_max_pool2d_backward(g, x, 3)
    want = torch.ops.overfeat_kernels.offset_max_pool2d_backward(
        g.contiguous(memory_format=torch.channels_last), x, 3
    )
    assert torch.equal(got, want)


PERMUTE_DTYPES = [torch.bool, torch.uint8, torch.int16, torch.float16, torch.bfloat16,
                  torch.int32, torch.float32, torch.int64, torch.float64]  # fmt: skip


def _values(shape, dtype) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    return torch.randint(0, 100, shape).to(dtype)


@pytest.mark.parametrize("dtype", PERMUTE_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_interleave_fast_paths_every_element_size(dtype, layout):
    # Rows of w elements: short ones (under 256 bytes: merged per plane through a buffer)
    # and, for the wider types, long ones (merged row by row); k = 5 has no fixed-k code.
    for n, c, h, w, k in [(1, 3, 5, 7, 2), (2, 17, 4, 9, 3), (1, 33, 3, 3, 4), (1, 5, 6, 5, 5),
                          (2, 2, 7, 8, 1), (1, 1, 1, 1, 2), (1, 2, 3, 130, 3),
                          (2, 3, 2, 65, 2), (1, 2, 2, 40, 4)]:  # fmt: skip
        x = _layout(_values((n * k * k, c, h, w), dtype), layout)
        out = ok.interleave(x, k)
        assert torch.equal(out, reference.interleave(x, k)), (n, c, h, w, k)
        y = _layout(_values((n, c, h * k, w * k), dtype), layout)
        back = ok.deinterleave(y, k)
        assert torch.equal(back, reference.deinterleave(y, k)), (n, c, h, w, k)
        assert torch.equal(ok.interleave(back, k), y)
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        assert out.is_contiguous(memory_format=fmt) and back.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_conv3x3_epilogue_and_gradients_fast_paths(layout):
    # C = 130: channel blocks of the bias gradient that are and are not full.
    x = _layout(torch.randn(2, 6, 9, 11, dtype=torch.float64), layout).float()
    w = torch.randn(130, 6, 3, 3) / 8
    b = torch.randn(130)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    out = ok.conv3x3(xs, ws, bs, 1, True)
    x64, w64, b64 = (to64(t).requires_grad_() for t in (x, w, b))
    ref = reference.conv3x3(x64, w64, b64, 1, True)
    torch.testing.assert_close(to64(out), ref.detach(), rtol=1e-5, atol=1e-5)
    g = _layout(torch.randn(out.shape), layout)
    grads = torch.autograd.grad(out, (xs, ws, bs), g)
    ref_grads = torch.autograd.grad(ref, (x64, w64, b64), to64(g))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(to64(got), want, rtol=1e-4, atol=1e-4)
    # Bias gradient: the same bits whatever the thread count.
    mask = [False, False, True]
    bias_grads = []
    for n in (1, 2):
        with _threads(n):
            bias_grads.append(
                torch.ops.overfeat_kernels.conv3x3_backward(g, x, w, out.detach(), 1, mask)[2]
            )
    assert torch.equal(bias_grads[0], bias_grads[1])


_VARIANT_SCRIPT = textwrap.dedent(
    """
    import hashlib, torch, overfeat_kernels as ok
    torch.manual_seed(0)
    h = hashlib.sha256()
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for fmt in (torch.contiguous_format, torch.channels_last):
            for shape, k in (((2, 19, 13, 17), 2), ((1, 37, 20, 23), 3), ((1, 5, 11, 9), 4)):
                x = torch.randn(shape).to(dtype).contiguous(memory_format=fmt)
                x[0, 0, 1, 1] = float("nan")
                out = ok.offset_max_pool2d(x, k)
                g = torch.randn(out.shape).to(dtype)
                gi = torch.ops.overfeat_kernels.offset_max_pool2d_backward(g, x, k)
                y = ok.interleave(out, k)
                for t in (out, gi, y, ok.deinterleave(y, k)):
                    h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    print(h.hexdigest())
    """
)


def _variant_digest(isa: str | None) -> str:
    env = dict(os.environ)
    env.pop("OVERFEAT_KERNELS_CPU_ISA", None)
    if isa:
        env["OVERFEAT_KERNELS_CPU_ISA"] = isa
    out = subprocess.run(
        [sys.executable, "-c", _VARIANT_SCRIPT], env=env, capture_output=True, text=True,
        check=True, timeout=300,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


def test_simd_variants_give_the_same_bits():
    # The kernels are compiled for the baseline ISA, AVX2 and AVX-512 and pick one at run
    # time; OVERFEAT_KERNELS_CPU_ISA caps the choice. Every variant must give the same bits.
    best = _variant_digest(None)
    assert len(best) == 64
    assert _variant_digest("avx2") == best
    assert _variant_digest("baseline") == best


_VARIANT_TIMING_SCRIPT = textwrap.dedent(
    """
    import time, torch, overfeat_kernels as ok
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ops = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(1, 256, 35, 44).contiguous(memory_format=fmt)
        g = torch.randn(ok.offset_max_pool2d(x, 3).shape)
        ops.append(lambda x=x: ok.offset_max_pool2d(x, 3))
        ops.append(lambda x=x, g=g: torch.ops.overfeat_kernels.offset_max_pool2d_backward(g, x, 3))
    best = []
    for op in ops:
        op()
        times = []
        for _ in range(15):
            t = time.perf_counter()
            op()
            times.append(time.perf_counter() - t)
        best.append(min(times))
    print(" ".join(f"{t:.6e}" for t in best))
    """
)


def _variant_times(isa: str | None) -> list[float]:
    env = dict(os.environ)
    env.pop("OVERFEAT_KERNELS_CPU_ISA", None)
    if isa:
        env["OVERFEAT_KERNELS_CPU_ISA"] = isa
    out = subprocess.run(
        [sys.executable, "-c", _VARIANT_TIMING_SCRIPT], env=env, capture_output=True,
        text=True, check=True, timeout=300,
    )  # fmt: skip
    return [float(t) for t in out.stdout.strip().splitlines()[-1].split()]


def test_simd_variants_are_vectorised():
    # A loop the compiler vectorises for one ISA may stay scalar for another (GCC vectorised
    # the pooling backward's gather only with AVX-512 masks: AVX2 and baseline ran 7-10x
    # slower). The narrower variants do the same work on 2-4x fewer lanes; a scalar one is
    # far slower than that. Fastest of 15 runs, one thread, each against the best variant.
    best = _variant_times(None)
    names = ["NCHW forward", "NCHW backward", "channels_last forward", "channels_last backward"]
    for isa, limit in (("avx2", 3.0), ("baseline", 5.0)):
        for name, t, ref in zip(names, _variant_times(isa), best, strict=True):
            assert t < limit * ref, f"{isa} {name}: {t * 1e3:.2f} ms, best {ref * 1e3:.2f} ms"
