"""The memory-bound CUDA kernels in the simulator: offset pooling's tiled forward and
backward, and interleave / deinterleave's tiled transposes (NCHW) and row kernels
(channels_last), bit for bit equal to the CPU kernels for every dtype, k = 1..4, odd sizes,
several tiles in every direction, NaN, ties and signed zeros; the paths that vectorise rows
and those that cannot; strided views on the generic kernels; schedule independence."""

from __future__ import annotations

import pytest
import torch

import overfeat_kernels as ok
from overfeat_kernels import simulator

pytestmark = [
    pytest.mark.sim,
    pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built"),
]

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, so that NaN payloads and the sign of zero count."""
    return t.reshape(-1).clone().view(torch.uint8)  # logical order, any strides


def values(shape, dtype, kind: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":  # few distinct values: windows with several maxima, +0 and -0
        x = torch.randint(-2, 3, shape, generator=g).to(torch.float64)
        x = torch.where(torch.rand(shape, generator=g) < 0.3, -x, x)  # -0.0 among the zeros
        return x.to(dtype)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if kind == "nan":  # NaNs with different payloads, some windows with two
        flat = x.view(-1)
        idx = torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 13)]
        flat[idx] = float("nan")
        x = x.to(dtype)
        raw = x.view(-1).view({2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()])
        raw[idx] ^= torch.arange(len(idx), dtype=raw.dtype) % 7  # distinct payloads
        return x
    return x.to(dtype)


def layout_of(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        n, c, h, w = x.shape
        big = torch.zeros(n, c * 2, h + 1, w + 3, dtype=x.dtype)
        big[:, ::2, 1:, 2 : w + 2] = x
        return big[:, ::2, 1:, 2 : w + 2]
    return x.contiguous()


def on_sim(fn, *args):
    simulator.reset_launch_counts()
    with simulator.simulate_cuda():
        out = fn(*args)
    return out, " ".join(simulator.launch_counts())


# (N, C, H, W, k): odd sizes; maps of several tiles in rows and columns; channel counts of
# several channel tiles (NCHW: planes, channels_last: 256 bytes of channels per tile)
POOL_SHAPES = [
    (1, 3, 9, 11, 2),
    (2, 8, 17, 19, 3),
    (1, 16, 40, 37, 2),  # several row and column tiles
    (1, 2, 7, 150, 2),  # several NCHW column tiles
    (1, 1, 9, 9, 4),
    (2, 4, 5, 6, 1),
    (1, 80, 9, 10, 2),  # channels_last fp32: 2 channel tiles, the second partial
    (1, 24, 13, 16, 3),  # W and Wo whole vectors: NCHW row-vector loads and stores
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("kind", ["normal", "ties", "nan"])
def test_offset_pool_forward_and_backward_bits(dtype, layout, kind):
    for i, (n, c, h, w, k) in enumerate(POOL_SHAPES):
        if layout == "channels_last" and (c * torch.empty((), dtype=dtype).element_size()) % 16:
            continue  # channels_last takes the tiled kernel with whole 16-byte channel vectors
        x = layout_of(values((n, c, h, w), dtype, kind, i), layout)
        cpu = ok.offset_max_pool2d(x, k)
        sim, ran = on_sim(ok.offset_max_pool2d, x, k)
        name = f"{(n, c, h, w, k)} {layout}"
        assert torch.equal(bits(sim), bits(cpu)), name
        tiled = "offset_pool_forward_tiled_kernel" in ran
        assert tiled == (layout != "strided"), (name, ran)
        g = values(cpu.shape, dtype, "normal", 100 + i)
        g = g.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else g
        cpu_bwd = torch.ops.overfeat_kernels.offset_max_pool2d_backward(g, x, k)
        sim_bwd, ran = on_sim(torch.ops.overfeat_kernels.offset_max_pool2d_backward, g, x, k)
        assert torch.equal(bits(sim_bwd), bits(cpu_bwd)), name
        assert ("offset_pool_backward_tiled_kernel" in ran) == (layout != "strided"), ran


def test_offset_pool_paths_are_the_ones_meant():
    """NCHW rows of whole vectors read and write 16-byte vectors; other rows elements;
    channels_last channel vectors; a large k that fits no tile takes the generic kernel."""
    name = "offset_pool_forward_tiled_kernel<float, (overfeat_kernels::MapLayout)"
    for shape, k, layout, expect in [
        ((1, 2, 13, 16), 3, "nchw", name + "0, true, true>"),  # W = 16, Wo = 4: both
        ((1, 2, 13, 16), 2, "nchw", name + "0, true, false>"),  # Wo = 7: loads only
        ((1, 2, 13, 9), 2, "nchw", name + "0, false, true>"),  # W = 9, Wo = 4: stores only
        ((1, 2, 17, 31), 2, "nchw", name + "0, false, false>"),
        ((1, 8, 17, 31), 2, "channels_last", name + "1, false, false>"),
        ((1, 1, 200, 200), 90, "nchw", "offset_pool_forward_kernel<float, false>"),
    ]:
        x = layout_of(torch.randn(shape), layout)
        out, ran = on_sim(ok.offset_max_pool2d, x, k)
        assert expect in ran, (shape, k, ran)
        assert torch.equal(out, ok.offset_max_pool2d(x, k))


def test_offset_pool_backward_of_a_misaligned_channels_last_gradient():
    """A channels_last gradient that starts off a 16-byte boundary (a view at an odd
    offset): the kernel reads 16-byte vectors, so it is copied first (the simulator refuses
    misaligned vector loads, as the GPU does)."""
    x = torch.randn(1, 8, 9, 10).contiguous(memory_format=torch.channels_last)
    n, c, ho, wo = 4, 8, 4, 4
    g = torch.randn(n * c * ho * wo + 1)[1:].view(n, ho, wo, c).permute(0, 3, 1, 2)
    assert g.is_contiguous(memory_format=torch.channels_last) and g.data_ptr() % 16
    cpu = torch.ops.overfeat_kernels.offset_max_pool2d_backward(g, x, 2)
    sim, ran = on_sim(torch.ops.overfeat_kernels.offset_max_pool2d_backward, g, x, 2)
    assert torch.equal(sim, cpu) and "offset_pool_backward_tiled_kernel" in ran


@pytest.mark.parametrize("k", [5, 8, 16, 17])
def test_offset_pool_large_kernel_sizes(k):
    """Up to k = 16 the tiled backward (argmax codes up to 255), beyond it the generic one."""
    for layout in ("nchw", "channels_last"):
        x = layout_of(values((1, 4, 2 * k + 3, 2 * k + 1), torch.float32, "ties", k), layout)
        cpu = ok.offset_max_pool2d(x, k)
        sim, _ = on_sim(ok.offset_max_pool2d, x, k)
        assert torch.equal(bits(sim), bits(cpu)), (k, layout)
        g = layout_of(values(cpu.shape, torch.float32, "normal", k + 1), layout)
        cpu = torch.ops.overfeat_kernels.offset_max_pool2d_backward(g, x, k)
        sim, ran = on_sim(torch.ops.overfeat_kernels.offset_max_pool2d_backward, g, x, k)
        assert torch.equal(bits(sim), bits(cpu)), (k, layout)
        assert ("offset_pool_backward_tiled_kernel" in ran) == (k <= 16), (k, ran)


def test_offset_pool_backward_of_an_expanded_gradient():
    """The gradient of a sum arrives expanded (stride 0): copied into the input's layout,
    then the tiled kernel."""
    x = torch.randn(2, 3, 11, 12, requires_grad=True)
    with simulator.simulate_cuda():
        ok.offset_max_pool2d(x, 3).sum().backward()
    sim = x.grad.clone()
    x.grad = None
    ok.offset_max_pool2d(x, 3).sum().backward()
    assert torch.equal(sim, x.grad)


# (N*k*k per-offset maps, C, h, w, k): odd sizes, several tiles, vector and element rows
PERMUTE_SHAPES = [
    (1, 3, 5, 7, 2),
    (2, 2, 9, 20, 3),
    (1, 5, 4, 16, 2),  # w and w*k whole vectors for 2-byte elements
    (1, 2, 3, 130, 2),  # several column tiles
    (1, 3, 4, 4, 1),
    (1, 1, 6, 6, 4),
]
PERMUTE_DTYPES = [torch.float32, torch.bfloat16, torch.float64, torch.uint8, torch.int16]


@pytest.mark.parametrize("dtype", PERMUTE_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_interleave_and_deinterleave_bits(dtype, layout):
    for i, (n, c, h, w, k) in enumerate(PERMUTE_SHAPES):
        per_offset = torch.randint(0, 200, (n * k * k, c, h, w), dtype=torch.int64)
        per_offset = layout_of(per_offset.to(dtype), layout)
        cpu = ok.interleave(per_offset, k)
        sim, ran = on_sim(ok.interleave, per_offset, k)
        assert torch.equal(bits(sim), bits(cpu)), (i, layout)
        big = layout_of(cpu.contiguous(), layout)
        back, ran_back = on_sim(ok.deinterleave, big, k)
        assert torch.equal(bits(back), bits(ok.deinterleave(big, k))), (i, layout)
        assert torch.equal(back, per_offset)
        vectors = (c * per_offset.element_size()) % 16 == 0
        if layout == "channels_last" and vectors:
            assert "permute_nhwc_rows_kernel<true>" in ran, ran
            assert "permute_nhwc_rows_kernel<false>" in ran_back, ran_back
        elif per_offset.is_contiguous():  # NCHW (also a one-channel channels_last map)
            assert "permute_nchw_tiled_kernel" in ran and "permute_nchw_tiled_kernel" in ran_back
        else:
            assert "permute_kernel<" in ran and "permute_kernel<" in ran_back


def test_interleave_vector_paths():
    """Rows of whole 16-byte vectors move as vectors: per-offset rows of 8 bf16 elements
    (w = 8) and interleaved rows of 16."""
    x = torch.randn(4, 3, 5, 8).bfloat16()
    out, ran = on_sim(ok.interleave, x, 2)
    assert "permute_nchw_tiled_kernel<unsigned short, true, true, true>" in ran, ran
    assert torch.equal(out, ok.interleave(x, 2))
    back, ran = on_sim(ok.deinterleave, out, 2)
    assert "permute_nchw_tiled_kernel<unsigned short, false, true, true>" in ran, ran
    assert torch.equal(back, x)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_tiled_kernels_are_schedule_independent(layout):
    x = layout_of(values((1, 16, 21, 19), torch.bfloat16, "ties", 7), layout)
    g = layout_of(values((9, 16, 6, 5), torch.bfloat16, "normal", 8), layout)

    def calls():
        return (
            ok.offset_max_pool2d(x, 3),
            torch.ops.overfeat_kernels.offset_max_pool2d_backward(g, x, 3),
            ok.interleave(g, 3),
            ok.deinterleave(ok.interleave(g, 3), 3),
        )

    simulator.assert_schedule_independent(calls)
