"""conv3x3's pooling (``pool=k``, ``pool_offsets``): against F.conv2d + F.relu +
F.max_pool2d / the reference offset pooling in float64 on the CPU; in the CUDA simulator,
the tensor-core kernels' pooling epilogue bit for bit against the same kernel unfused
followed by the pooling (max commutes with the rounding), NaN and ties included; gradients
against the composition; bad arguments; the layers and the models that fuse."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from samples import make_map
from torch import nn

import overfeat_kernels as ok
from overfeat_kernels import nn as onn
from overfeat_kernels import reference, simulator
from overfeat_kernels.models.heads import head_as_convs
from overfeat_kernels.models.taps import forward_layers

OP = torch.ops.overfeat_kernels.conv3x3.default


def _composition(x, w, b, pad, relu, pool, offsets):
    y = F.conv2d(x, w, b, padding=pad)
    if relu:
        y = F.relu(y)
    if pool == 0:
        return y
    return reference.offset_max_pool2d(y, pool) if offsets else F.max_pool2d(y, pool)


def _inputs(n, c, k, h, w, dtype=torch.float64, layout="nchw", bias=True, values="normal"):
    x = make_map((n, c, h, w), dtype, "cpu", layout, values=values)
    wt = (torch.randn(k, c, 3, 3, dtype=torch.float64) / (3 * c) ** 0.5).to(dtype)
    if values == "ties":  # few distinct outputs: equal maxima inside windows
        wt = torch.randint(-1, 2, (k, c, 3, 3)).to(dtype)
    b = torch.randn(k, dtype=torch.float64).to(dtype) if bias else None
    return x, wt, b


# (N, C, K, H, W, padding, layout, pool, offsets): odd sizes whose trailing rows and
# columns no window uses, NCHW / channels_last / a strided view, windows 2, 3 and 4.
CPU_CASES = [
    (2, 3, 5, 9, 12, 1, "nchw", 2, False),
    (1, 4, 6, 11, 10, 0, "channels_last", 3, False),
    (2, 5, 3, 13, 9, 1, "strided", 4, False),
    (1, 3, 4, 12, 13, 1, "nchw", 2, True),
    (2, 2, 3, 11, 14, 0, "channels_last", 3, True),
]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", CPU_CASES, ids=str)
def test_cpu_float64_equals_composition(case, relu):
    n, c, k, h, w, pad, layout, pool, offsets = case
    x, wt, b = _inputs(n, c, k, h, w, layout=layout)
    out = ok.conv3x3(x, wt, b, pad, relu, pool=pool, pool_offsets=offsets)
    ref = _composition(x, wt, b, pad, relu, pool, offsets)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_low_precision_against_float64(dtype):
    x, wt, b = _inputs(2, 6, 7, 13, 11, dtype)
    x[0, 1, 4, 4] = float("nan")
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
    for pool, offsets in [(2, False), (3, False), (2, True)]:
        out = ok.conv3x3(x, wt, b, 1, True, pool=pool, pool_offsets=offsets)
        ref = _composition(x.double(), wt.double(), b.double(), 1, True, pool, offsets)
        assert out.dtype == dtype and torch.equal(out.isnan(), ref.isnan())
        assert out.isnan().any()
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol, equal_nan=True)


def test_empty_batch_and_shapes():
    x, wt, b = _inputs(0, 3, 4, 9, 8)
    assert ok.conv3x3(x, wt, b, pool=2).shape == (0, 4, 4, 4)
    assert ok.conv3x3(x, wt, b, pool=2, pool_offsets=True).shape == (0, 4, 4, 3)
    assert ok.conv3x3(x, wt, b, pool=3, pool_offsets=True).shape == (0, 4, 2, 2)


BAD = [
    (dict(pool=1), ValueError, "pool must be 0"),
    (dict(pool=-2), ValueError, "pool must be 0"),
    (dict(pool_offsets=True), ValueError, "pool_offsets=True needs"),
    (dict(pool=8), ValueError, "too small for max pooling with pool=8"),
    (dict(pool=5, pool_offsets=True), ValueError, "too small for offset pooling with pool=5"),
    (dict(pool=2.0), TypeError, "pool must be an int"),
    (dict(pool=True), TypeError, "pool must be an int"),
    (dict(pool=2, pool_offsets=1), TypeError, "pool_offsets must be a bool"),
    (dict(pool=2**70), ValueError, r"pool must be < 2\*\*63"),
    (dict(pool=-(2**70)), ValueError, "pool must be 0"),
]


class _Wrapped(torch.Tensor):
    """A Tensor subclass: its calls take the general path (torch.ops, the Python checks)."""


@pytest.mark.parametrize("path", ["fast", "general"])
@pytest.mark.parametrize(("kwargs", "error", "message"), BAD, ids=str)
def test_bad_pool_arguments(kwargs, error, message, path):
    x, wt, b = _inputs(1, 3, 4, 7, 7)
    if path == "general":
        x = x.as_subclass(_Wrapped)
    with pytest.raises(error, match=message):
        ok.conv3x3(x, wt, b, 1, True, **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(pool=1), "pool must be 0"),
    (dict(pool_offsets=True), "pool_offsets=True needs"),
    (dict(pool=8), "too small for max pooling"),
    (dict(pool=5, pool_offsets=True), "too small for offset pooling"),
])  # fmt: skip
def test_bad_pool_arguments_of_the_raw_op(kwargs, message):
    x, wt, b = _inputs(1, 3, 4, 7, 7)
    with pytest.raises(ValueError, match=message):
        OP(x, wt, b, 1, True, None, kwargs.get("pool", 0), kwargs.get("pool_offsets", False))
    if simulator.available():
        with simulator.simulate_cuda(), pytest.raises(ValueError, match=message):
            OP(x, wt, b, 1, True, None, kwargs.get("pool", 0), kwargs.get("pool_offsets", False))


@pytest.mark.parametrize(("pool", "offsets"), [(2, False), (3, False), (2, True)])
def test_gradcheck_float64(pool, offsets):
    # Distinct values everywhere (no ties at a window's max), so the max is differentiable.
    x, wt, b = _inputs(1, 2, 3, 8, 7)
    x.requires_grad_()
    wt.requires_grad_()
    b.requires_grad_()
    torch.autograd.gradcheck(
        lambda *a: ok.conv3x3(*a, padding=1, relu=True, pool=pool, pool_offsets=offsets),
        (x, wt, b),
    )


@pytest.mark.parametrize(("pool", "offsets"), [(2, False), (3, True)])
def test_gradients_equal_the_composition(pool, offsets):
    x, wt, b = _inputs(2, 3, 4, 10, 9, values="ties")  # tied maxima: the first one wins
    leaves = [t.clone().requires_grad_() for t in (x, wt, b)]
    ours = ok.conv3x3(*leaves, 1, True, pool=pool, pool_offsets=offsets)
    ref_leaves = [t.clone().requires_grad_() for t in (x, wt, b)]
    ref = _composition(*ref_leaves, 1, True, pool, offsets)
    g = torch.randn_like(ref)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    for a, r in zip(torch.autograd.grad(ours, leaves, g), torch.autograd.grad(ref, ref_leaves, g),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_opcheck_and_compile():
    x, wt, b = _inputs(1, 3, 4, 9, 8, torch.float32)
    for pool, offsets in [(2, False), (3, True)]:
        torch.library.opcheck(OP, (x, wt, b, 1, True, None, pool, offsets))
        leaves = [t.clone().requires_grad_() for t in (x, wt, b)]
        torch.library.opcheck(OP, (*leaves, 1, True, None, pool, offsets))

    def f(x, w, b):
        return ok.conv3x3(x, w, b, 1, True, pool=2) * 2

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, wt, b), f(x, wt, b), rtol=0, atol=0)


# ---- the tensor-core kernels' pooling epilogue, in the simulator ---------------------------

sim = [
    pytest.mark.sim,
    pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built"),
]
TF32 = "tf32"
IGEMM = "conv3x3_igemm_kernel"
# (N, C, K, H, W, padding, layout, pool, tiles): several windows' tiles per image and
# images per tile, windows cut by the map's end, K not a multiple of the vector (scalar
# stores), few input channels (the unfolded 1 x 1 path), large and small tiles.
SIM_CASES = [
    (2, 8, 17, 13, 11, 1, "channels_last", 2, "small"),
    (1, 17, 16, 12, 15, 0, "nchw", 2, "large"),
    (2, 16, 8, 11, 13, 1, "strided", 3, "small"),
    (1, 3, 16, 17, 10, 1, "channels_last", 3, "large"),
    (1, 3, 24, 9, 14, 0, "nchw", 2, "small"),
]
TILES = {"large": [2, 2, 0], "small": [3, 3, 0]}


def _sim_dtype(d):
    return torch.float32 if d == TF32 else d


def _bits(t):
    t = t.contiguous()
    return t.view(torch.int32 if t.element_size() == 4 else torch.int16)


def _same_bits(a, b):
    """Bit for bit, except NaN payloads (ATen's CPU max_pool2d rewrites bfloat16 NaNs in
    channels_last maps; the kernels keep the conv's)."""
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(_bits(a)[~nan], _bits(b)[~nan])


def _offset_pool_by_shifts(y, k):
    """offset_max_pool2d from F.max_pool2d on the k² shifted maps (SPEC's definition:
    batch index (n·k + dy)·k + dx), independent of our pooling kernels."""
    ho, wo = (y.shape[2] - k + 1) // k, (y.shape[3] - k + 1) // k
    parts = [
        F.max_pool2d(y[:, :, dy:, dx:], k)[:, :, :ho, :wo] for dy in range(k) for dx in range(k)
    ]
    return torch.stack(parts, 1).flatten(0, 1)


def _pooled_reference(y, pool, offsets):
    return _offset_pool_by_shifts(y, pool) if offsets else F.max_pool2d(y, pool)


def _sim_fused_and_unfused(x, wt, b, pad, relu, algos, pool, offsets):
    """The pooled call and the unpooled one, in the simulator, and the kernels the pooled
    call launched (names without spaces)."""
    simulator.reset_launch_counts()
    with simulator.simulate_cuda():
        fused = OP(x, wt, b, pad, relu, algos, pool, offsets)
        launches = [name.replace(" ", "") for name in simulator.launch_counts()]
        unfused = OP(x, wt, b, pad, relu, algos)
    return fused, unfused, launches


def _assert_fused_equals(fused, ref, layout, launches):
    assert fused.shape == ref.shape
    if layout == "channels_last":
        assert fused.is_contiguous(memory_format=torch.channels_last)
    elif layout == "nchw":
        assert fused.is_contiguous()
    assert _same_bits(fused, ref)
    assert fused.isnan().any()
    assert not any("offset_pool" in name for name in launches), launches  # no pooling kernel


# Offset pooling in the epilogue: overlapping pixel blocks of (k·a + k - 1) x (k·b + k - 1)
# conv pixels. (N, C, K, H, W, padding, layout, pool, tiles): several blocks down and across
# an image with the last ones cut by the map, blocks wider than the map, trailing rows and
# columns no offset uses, K not a multiple of the vector, the unfolded path (C = 3), large
# and small tiles.
OFFSET_CASES = [
    (2, 8, 17, 13, 11, 1, "channels_last", 2, "small"),
    (1, 17, 16, 31, 29, 0, "nchw", 3, "large"),
    (2, 16, 8, 11, 13, 1, "strided", 3, "small"),
    (1, 3, 16, 17, 10, 1, "channels_last", 3, "large"),
    (1, 3, 24, 9, 14, 0, "nchw", 2, "small"),
    (1, 8, 16, 40, 37, 1, "channels_last", 2, "large"),
]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, TF32], ids=str)
@pytest.mark.parametrize(
    ("case", "offsets"),
    [(c, False) for c in SIM_CASES] + [(c, True) for c in OFFSET_CASES],
    ids=str,
)
@pytest.mark.usefixtures("_tf32_on")
@pytest.mark.sim
@pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built")
def test_sim_epilogue_pool_bit_equal_to_unfused(case, offsets, dtype, relu):
    n, c, k, h, w, pad, layout, pool, tiles = case
    x, wt, b = _inputs(n, c, k, h, w, _sim_dtype(dtype), layout)
    # NaN inside windows (of several offsets) and in the trailing rows no window uses.
    x[0, 0, 2, 3] = float("nan")
    x[n - 1, c - 1, h - 1, w - 1] = float("nan")
    fused, unfused, launches = _sim_fused_and_unfused(x, wt, b, pad, relu, TILES[tiles], pool,
                                                      offsets)  # fmt: skip
    # The igemm kernel's last two switches: kMasked, kPool.
    assert any(IGEMM in name and name.endswith(",false,true>") for name in launches), launches
    _assert_fused_equals(fused, _pooled_reference(unfused, pool, offsets), layout, launches)


@pytest.mark.usefixtures("_tf32_on")
@pytest.mark.sim
@pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built")
@pytest.mark.parametrize(
    ("pool", "offsets", "algos"),
    [(2, False, [3, 3, 0]), (2, True, [2, 2, 0]), (3, True, [3, 3, 0])],
)
def test_sim_tied_maxima(pool, offsets, algos):
    # Integer weights and inputs: many equal maxima, and ReLU's zeros in every window.
    x, wt, _ = _inputs(1, 8, 16, 12, 11, torch.bfloat16, "channels_last", values="ties")
    fused, unfused, _ = _sim_fused_and_unfused(x, wt, None, 1, True, algos, pool, offsets)
    assert _same_bits(fused, _pooled_reference(unfused, pool, offsets))


def test_offset_cases_span_several_blocks_each_way():
    from overfeat_kernels.ops._ext import _C

    spans = []
    for _, _, _, h, w, pad, _, pool, tiles in OFFSET_CASES:
        oh, ow = h + 2 * pad - 2, w + 2 * pad - 2
        ph, pw = (oh - pool + 1) // pool, (ow - pool + 1) // pool
        a, b = _C.offset_pool_block(128 if tiles == "large" else 64, pool, ph, pw)
        spans.append((-(-ph // a), -(-pw // b), ph % a != 0 or pw % b != 0))
    assert any(sy > 1 and sx > 1 and cut for sy, sx, cut in spans), spans


def test_offset_pool_block_is_the_fewest_blocks_that_fit():
    from overfeat_kernels.ops._ext import _C

    for rows in (64, 128):
        for pool in (2, 3):
            for ph, pw in [(1, 1), (1, 40), (40, 1), (6, 5), (9, 8), (19, 18), (55, 55), (7, 300)]:
                a, b = _C.offset_pool_block(rows, pool, ph, pw)
                assert (pool * a + pool - 1) * (pool * b + pool - 1) <= rows
                fits = [
                    (i, j)
                    for i in range(1, rows)
                    for j in range(1, rows)
                    if (pool * i + pool - 1) * (pool * j + pool - 1) <= rows
                ]
                fewest = min(-(-ph // i) * -(-pw // j) for i, j in fits)
                assert -(-ph // a) * -(-pw // b) == fewest, (rows, pool, ph, pw, a, b)
    assert _C.offset_pool_block(128, 3, 55, 55) == (3, 3)  # 11 x 11 conv pixels, 81 used
    for args, message in [((96, 2, 5, 5), "rows must be"), ((128, 4, 5, 5), "pool must be"),
                          ((128, 2, 0, 5), "must have positions")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            _C.offset_pool_block(*args)


@pytest.mark.usefixtures("_tf32_on")
@pytest.mark.sim
@pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built")
@pytest.mark.parametrize(("pool", "offsets", "algos"), [
    (5, True, [2, 2, 0]),  # offset windows of 25 pixels: composed
    (4, False, [3, 3, 0]),  # windows of 16 pixels: composed
    (2, False, [1, 1, 1]),  # the direct kernel: composed
])  # fmt: skip
def test_sim_composed_paths(pool, offsets, algos):
    x, wt, b = _inputs(1, 8, 8, 12, 11, torch.float16, "nchw")
    out, y, launches = _sim_fused_and_unfused(x, wt, b, 1, True, algos, pool, offsets)
    with simulator.simulate_cuda():
        ref = ok.offset_max_pool2d(y, pool) if offsets else F.max_pool2d(y, pool)
    assert _same_bits(out, ref)
    # The conv kernel ran unpooled; the pooling after it.
    pooled = [name for name in launches if "conv3x3" in name and name.endswith(",true>")]
    assert not pooled and any("conv3x3" in name for name in launches), launches
    if offsets:
        assert any("offset_pool" in name for name in launches), launches


@pytest.mark.sim
@pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built")
def test_sim_gradients_equal_the_composition():
    x, wt, b = _inputs(1, 8, 8, 9, 10, torch.float16, "channels_last")
    leaves = [t.clone().requires_grad_() for t in (x, wt, b)]
    ref_leaves = [t.clone().requires_grad_() for t in (x, wt, b)]
    with simulator.simulate_cuda():
        ours = ok.conv3x3(*leaves, 1, True, pool=2)
        ref = F.max_pool2d(ok.conv3x3(*ref_leaves, 1, True), 2)
        g = torch.randn_like(ref)
        grads = torch.autograd.grad(ours, leaves, g)
        ref_grads = torch.autograd.grad(ref, ref_leaves, g)
    assert torch.equal(ours, ref)
    for a, r in zip(grads, ref_grads, strict=True):
        assert torch.equal(a, r)


# The Hopper kernel (algos [5, 0, 0]) pools in its epilogue too: its blocks hold whole
# windows (2 x 2 in blocks of 128 pixels; 3 x 3 in blocks of 126, whose A tile's last two
# rows are never loaded and hold poison in the simulator), both consumer warpgroups reduce
# the staged tile; split-K's reduction kernel pools the summed parts. Offset pooling: the
# overlapping blocks above (one TMA box per tap, filling bh·bw rows of A).
WGMMA = "conv3x3_wgmma_kernel"
REDUCE = "split_reduce_kernel"
# (N, C, K, H, W, padding, layout, pool, relu): split-K, one part with more work units than
# the simulator's 132 SMs (persistent CTAs take a second tile), tap chunks (C <= 8; tf32
# C <= 4), pools 2 and 3, odd maps whose trailing rows and columns no window takes.
WGMMA_CASES = [
    (2, 16, 17, 13, 11, 1, "channels_last", 2, True),  # split 2
    (1, 17, 16, 14, 15, 0, "nchw", 3, False),  # split 2, 6 x 21 blocks
    (2, 3, 24, 17, 10, 1, "channels_last", 3, True),  # tap chunks
    (1, 8, 16, 9, 14, 0, "strided", 2, True),  # tap chunks (tf32: slices, split 2)
    (5, 16, 136, 34, 34, 1, "channels_last", 2, True),  # 150 units, one part
    (7, 16, 136, 33, 33, 1, "nchw", 3, True),  # 154 units (3 x 42 blocks), one part
    # Fewer tiles pooled (24) than unpooled (40): the unpooled call's split-K (3) all the same.
    (1, 40, 16, 49, 65, 1, "channels_last", 2, False),
]
# The same for offset pooling.
WGMMA_OFFSET_CASES = [
    (2, 16, 17, 13, 11, 1, "channels_last", 2, True),  # split 2
    (1, 17, 16, 14, 15, 0, "nchw", 3, False),  # split 2
    (2, 3, 24, 17, 10, 1, "channels_last", 3, True),  # tap chunks
    (1, 8, 16, 9, 14, 0, "strided", 2, True),  # tap chunks (tf32: slices, split 2)
    (6, 16, 136, 34, 34, 1, "channels_last", 2, True),  # 144 units (7 x 17 blocks)
    (5, 16, 136, 33, 33, 1, "nchw", 3, False),  # 150 units (8 x 14 blocks)
    (1, 40, 16, 49, 65, 1, "channels_last", 2, False),  # more tiles than unpooled; split 3
]
WGMMA_ALL = [(c, False) for c in WGMMA_CASES] + [(c, True) for c in WGMMA_OFFSET_CASES]


def _wgmma_slices(c, dtype):
    e = 4 if dtype == TF32 else 2
    if c * e <= 16:
        return 1
    cp_bytes = -(-c * e // 16) * 16  # channels padded to 16-byte vectors
    return 9 * -(-cp_bytes // 128)  # taps x 128-byte slices


def _wgmma_plan(case, dtype, pool, offsets=False):
    """(block_h, block_w, split, work units) the plan takes for the call (pool 0: unfused)."""
    from overfeat_kernels.ops._ext import _C

    n, c, k, h, w, pad = case[:6]
    oh, ow = h + 2 * pad - 2, w + 2 * pad - 2
    bh, bw, split = _C.wgmma_config(n, oh, ow, k, _wgmma_slices(c, dtype), 132, pool, offsets)
    if offsets:
        # Blocks of a x b positions, k·a rows and k·b columns apart.
        a, b = (bh + 1) // pool - 1, (bw + 1) // pool - 1
        assert (bh, bw) == (pool * a + pool - 1, pool * b + pool - 1)
        ph, pw = (oh - pool + 1) // pool, (ow - pool + 1) // pool
        assert (a, b) == _C.offset_pool_block(128, pool, ph, pw)
        return bh, bw, split, n * -(-ph // a) * -(-pw // b) * -(-k // 128) * split
    if pool:
        oh, ow = oh // pool * pool, ow // pool * pool
    return bh, bw, split, n * -(-oh // bh) * -(-ow // bw) * -(-k // 128) * split


@pytest.mark.parametrize("offsets", [False, True])
def test_wgmma_cases_cover_split_k_one_part_persistent_and_tap_chunks(offsets):
    cases = WGMMA_OFFSET_CASES if offsets else WGMMA_CASES
    plans = [_wgmma_plan(c, torch.bfloat16, c[7], offsets) for c in cases]
    assert any(p[2] > 1 for p in plans) and any(p[2] == 1 for p in plans)
    assert {c[7] for c, p in zip(cases, plans, strict=True) if p[3] > 132} == {2, 3}
    assert any(c[1] <= 8 for c in cases) and {c[7] for c in cases} == {2, 3}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, TF32], ids=str)
@pytest.mark.parametrize(("case", "offsets"), WGMMA_ALL, ids=str)
@pytest.mark.usefixtures("_tf32_on")
@pytest.mark.sim
@pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built")
def test_sim_wgmma_epilogue_pool_bit_equal_to_unfused(case, offsets, dtype):
    n, c, k, h, w, pad, layout, pool, relu = case
    # The plan gives the pooled call the unpooled call's split-K: the same parts' sums, so
    # the same conv bits before the max.
    fused_plan = _wgmma_plan(case, dtype, pool, offsets)
    assert fused_plan[2] == _wgmma_plan(case, dtype, 0)[2], fused_plan
    x, wt, b = _inputs(n, c, k, h, w, _sim_dtype(dtype), layout)
    x[0, 0, 2, 3] = float("nan")
    x[n - 1, c - 1, h - 1, w - 1] = float("nan")
    fused, unfused, launches = _sim_fused_and_unfused(x, wt, b, pad, relu, [5, 0, 0], pool,
                                                      offsets)  # fmt: skip
    # The kernel's switches: <T, kTapChunks, kOutChannelsLast, kMasked, kPool>.
    kernels = [name for name in launches if WGMMA in name]
    assert kernels and all(name.endswith(",false,true>") for name in kernels), launches
    chunks = c * (4 if dtype == TF32 else 2) <= 16
    assert all(name.split(",")[1] == str(chunks).lower() for name in kernels), kernels
    assert any(REDUCE in name for name in launches) == (fused_plan[2] > 1)
    _assert_fused_equals(fused, _pooled_reference(unfused, pool, offsets), layout, launches)


@pytest.mark.usefixtures("_tf32_on")
@pytest.mark.sim
@pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built")
@pytest.mark.parametrize("offsets", [False, True])
@pytest.mark.parametrize("pool", [2, 3])
def test_sim_wgmma_tied_maxima(pool, offsets):
    # Integer weights and inputs: many equal maxima (signed zeros among them after ReLU).
    x, wt, _ = _inputs(1, 16, 16, 13, 14, torch.bfloat16, "channels_last", values="ties")
    fused, unfused, _ = _sim_fused_and_unfused(x, wt, None, 1, True, [5, 0, 0], pool, offsets)
    assert _same_bits(fused, _pooled_reference(unfused, pool, offsets))


@pytest.mark.usefixtures("_tf32_on")
@pytest.mark.sim
@pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built")
@pytest.mark.parametrize(
    ("case", "offsets"),
    [WGMMA_ALL[1], WGMMA_ALL[2], (WGMMA_OFFSET_CASES[1], True), (WGMMA_OFFSET_CASES[2], True)],
    ids=str,
)
def test_sim_wgmma_pool_schedule_independent(case, offsets):
    n, c, k, h, w, pad, layout, pool, relu = case
    x, wt, b = _inputs(n, c, k, h, w, torch.bfloat16, layout)

    def calls():
        return [OP(x, wt, b, pad, relu, [5, 0, 0], pool, offsets)]

    simulator.assert_schedule_independent(calls)


@pytest.fixture
def _tf32_on():
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32 = old


# ---- layers and models -------------------------------------------------------------------


def test_layer_pool_and_repr():
    layer = onn.Conv3x3(3, 8, relu=True, pool=2).double()
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64)
    ref = F.max_pool2d(F.relu(F.conv2d(x, layer.weight, layer.bias, padding=1)), 2)
    torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)
    assert "pool=2" in repr(layer)
    stock = onn.to_stock(layer)
    assert [type(m) for m in stock] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d]
    torch.testing.assert_close(stock(x), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="pool must be 0"):
        onn.Conv3x3(3, 8, pool=1)
    with pytest.raises(ValueError, match="pool_offsets=True needs"):
        onn.Conv3x3(3, 8, pool_offsets=True)
    with pytest.raises(TypeError, match="pool must be an int"):
        onn.Conv3x3(3, 8, pool=2.0)
    with pytest.raises(ValueError, match=r"pool must be < 2\*\*63"):
        onn.Conv3x3(3, 8, pool=2**70)


def test_convert_sees_every_slot_of_a_shared_module():
    drop = nn.Dropout(0.5)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), drop, nn.Conv2d(4, 4, 3, padding=1), drop,
                        nn.MaxPool2d(2))  # fmt: skip
    onn.convert(net, verbose=False)
    assert net[2].pool == 0 and type(net[4]) is nn.MaxPool2d


def test_convert_fuses_a_following_max_pool():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(3),
        nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2, stride=1),  # overlapping: not fused
    ).double()  # fmt: skip
    x = torch.randn(1, 3, 26, 25, dtype=torch.float64)
    ref = net(x)
    keys = list(net.state_dict())
    onn.convert(net, verbose=False)
    assert net[0].pool == 2 and net[0].relu and type(net[2]) is nn.Identity
    assert net[3].pool == 3 and not net[3].relu and type(net[4]) is nn.Identity
    assert net[5].pool == 0 and type(net[6]) is nn.MaxPool2d
    assert list(net.state_dict()) == keys
    torch.testing.assert_close(net(x), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(onn.to_stock(net)(x), ref, rtol=1e-12, atol=1e-12)


def _count_pooled_calls(model, x):
    """How many conv3x3 calls with pool > 0 a forward pass makes."""
    calls = []
    original = onn.ops.conv3x3

    def spy(*args, **kwargs):
        calls.append(args[5] if len(args) > 5 else kwargs.get("pool", 0))
        return original(*args, **kwargs)

    onn.ops.conv3x3 = spy
    try:
        out = model(x)
    finally:
        onn.ops.conv3x3 = original
    return out, sum(1 for p in calls if p)


def test_fused_sequential_equals_the_plain_one_and_respects_hooks():
    seq = onn.FusedSequential(
        onn.Conv3x3(3, 8, relu=True), nn.Identity(), nn.MaxPool2d(2, 2),
        onn.Conv3x3(8, 8), nn.ReLU(), nn.MaxPool2d(2),
        onn.Conv3x3(8, 8, relu=True), nn.BatchNorm2d(8), nn.MaxPool2d(2),  # BN between: unfused
    ).double().eval()  # fmt: skip
    x = torch.randn(2, 3, 37, 35, dtype=torch.float64)
    plain = nn.Sequential(*seq)
    with torch.no_grad():
        out, pooled = _count_pooled_calls(seq, x)
    assert pooled == 2
    torch.testing.assert_close(out, plain(x), rtol=1e-12, atol=1e-12)
    # Recording a graph, a ReLU module stays apart from a conv without ReLU (NaN gradients).
    out, pooled = _count_pooled_calls(seq, x)
    assert pooled == 1
    seen = []
    handle = seq[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        out, pooled = _count_pooled_calls(seq, x)
    assert pooled == 1 and seen == [(2, 8, 37, 35)]
    torch.testing.assert_close(out, plain(x), rtol=1e-12, atol=1e-12)
    handle.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        with torch.no_grad():
            _, pooled = _count_pooled_calls(seq, x)
        assert pooled == 0  # a global hook sees every module run
    finally:
        handle.remove()

    class Logged(onn.Conv3x3):  # a subclass's own forward is never bypassed
        def forward(self, input):
            return super().forward(input) + 0

    sub = onn.FusedSequential(Logged(3, 8, relu=True), nn.MaxPool2d(2)).double()
    with torch.no_grad():
        assert _count_pooled_calls(sub, x)[1] == 0
    assert type(onn.to_stock(seq)) is nn.Sequential


def test_vgg_fuses_every_pool_and_keeps_torchvision_keys():
    torchvision = pytest.importorskip("torchvision")
    model = ok.models.vgg11().double().eval()
    keys = set(torchvision.models.vgg11().state_dict())
    assert set(model.state_dict()) == keys
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    feats, pooled = _count_pooled_calls(model.features, x)
    assert pooled == 5
    stock = onn.to_stock(model).features
    torch.testing.assert_close(feats, stock(x), rtol=1e-10, atol=1e-10)
    # A tap inside a fused pair still sees the unpooled map.
    outs = forward_layers(model, x, ["conv1_1", "pool1"])
    assert outs["conv1_1"].shape == (1, 64, 64, 64) and outs["pool1"].shape == (1, 64, 32, 32)


def test_dense_offsets_fuse_the_last_conv_with_the_offset_pooling(monkeypatch):
    model = ok.models.overfeat("fast").double().eval()
    x = torch.randn(1, 3, 231 + 36, 231 + 36, dtype=torch.float64)
    calls = []
    original = ok.dense.maps.ops.conv3x3

    def spy(*args):
        calls.append(args[5:])
        return original(*args)

    monkeypatch.setattr(ok.dense.maps.ops, "conv3x3", spy)
    fused = ok.dense.score_map(model, x)
    monkeypatch.undo()
    pooled = [c for c in calls if c[0]]
    assert pooled == [(model.dense_spec.pool_kernel, True)]
    trunk = nn.Sequential(*model.features[:-1])
    k = model.dense_spec.pool_kernel
    pooled = ok.offset_max_pool2d(trunk(x), k)
    ref = ok.interleave(head_as_convs(model.classifier, pooled, model.dense_spec.fc_kernel), k)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-10)


def test_convert_fuses_torchvision_vgg():
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.vgg11().double().eval()
    x = torch.randn(1, 3, 48, 40, dtype=torch.float64)
    ref = net(x)
    keys = list(net.state_dict())
    onn.convert(net, verbose=False)
    assert [m.pool for m in net.features if isinstance(m, onn.Conv3x3)] == [2, 2, 0, 2, 0, 2, 0, 2]
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.features)
    assert list(net.state_dict()) == keys
    torch.testing.assert_close(net(x), ref, rtol=1e-10, atol=1e-10)


# ---- on a GPU (skipped without one) ------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@gpu
@pytest.mark.usefixtures("_tf32_on")
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, TF32], ids=str)
@pytest.mark.parametrize(
    ("pool", "algos"), [(2, [2, 2, 0]), (3, [3, 3, 0]), (2, None), (2, [5, 0, 0]), (3, [5, 0, 0])]
)
def test_gpu_epilogue_pool_bit_equal_to_unfused(pool, algos, dtype, layout):
    if algos == [5, 0, 0]:
        from overfeat_kernels.ops._ext import _C

        if torch.cuda.get_device_capability() != (9, 0) or not _C.build_has_sm90a:
            pytest.skip("the Hopper kernel runs on compute capability 9.0 in an sm_90a build")
    x, wt, b = _inputs(2, 64, 72, 57, 43, _sim_dtype(dtype), layout)
    x[0, 3, 10, 11] = float("nan")
    x, wt, b = x.cuda(), wt.cuda(), b.cuda()
    fused = OP(x, wt, b, 1, True, algos, pool, False)
    ref = F.max_pool2d(OP(x, wt, b, 1, True, algos), pool)
    assert fused.shape == ref.shape and fused.isnan().any()
    assert _same_bits(fused.cpu(), ref.cpu())


@gpu
@pytest.mark.parametrize(("pool", "algos"), [(3, [2, 2, 0]), (2, [3, 3, 0]), (3, [5, 0, 0])])
def test_gpu_epilogue_offset_pool_bit_equal_to_unfused(pool, algos):
    if algos == [5, 0, 0]:
        from overfeat_kernels.ops._ext import _C

        if torch.cuda.get_device_capability() != (9, 0) or not _C.build_has_sm90a:
            pytest.skip("the Hopper kernel runs on compute capability 9.0 in an sm_90a build")
    x, wt, b = _inputs(2, 64, 72, 57, 43, torch.bfloat16, "channels_last")
    x[0, 3, 10, 11] = float("nan")
    x, wt, b = x.cuda(), wt.cuda(), b.cuda()
    fused = OP(x, wt, b, 1, True, algos, pool, True)
    ref = _offset_pool_by_shifts(OP(x, wt, b, 1, True, algos), pool)
    assert fused.shape == ref.shape and fused.isnan().any()
    assert _same_bits(fused.cpu(), ref.cpu())


@gpu
def test_gpu_vgg_features_fused_equal_unfused():
    model = ok.models.vgg11().cuda().to(torch.bfloat16).eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 96, 80, device="cuda", dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fused = model.features(x)
        unfused = nn.Sequential(*model.features)(x)
    assert torch.equal(fused, unfused)
