"""The simulator's TMA model (csrc/sim/tma_model.cpp; wrappers csrc/cuda/tma.cuh; tensor
maps csrc/cuda/tensor_map.cuh) against the PTX ISA: tiled loads (5.5.3: boxes, traversal
strides, out-of-bound fill), swizzling (5.5.7), im2col loads (5.5.4) on the hardware-
checked examples of Triton's gluon tutorial 13-tma-im2col.py and as a convolution's
im2col, completion on an mbarrier with complete-tx (9.7.13.15), tiled stores with their
bulk groups and the async-proxy fence (9.7.9.25), and the driver's tensor-map limits.
Kernels in csrc/sim/selftest_hopper.cpp."""

from __future__ import annotations

import itertools
import random

import hopper_layouts as isa
import numpy as np
import pytest
import torch
from samples import SCHEDULES, compile_cuda

from overfeat_kernels import simulator

pytestmark = [
    pytest.mark.sim,
    pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built"),
]

# tma::DType
U8, U16, U32, F16, BF16, F32, TF32 = range(7)
NUMPY = {
    U8: np.uint8,
    U16: np.uint16,
    BF16: np.uint16,
    F16: np.uint16,
    F32: np.float32,
    U32: np.uint32,
}
SIZE = {U8: 1, U16: 2, U32: 4, F16: 2, BF16: 2, F32: 4, TF32: 4}


def spec(dtype, dims, strides=None, box=(), element_strides=(), swizzle=isa.NONE, oob=0,
         im2col=False,
         lower=(), upper=(), cpp=0, ppc=0) -> list[int]:  # fmt: skip
    """The 36 values of a TensorMapSpec (selftest_hopper.cpp, spec_from); dims innermost
    first; strides in bytes (dense when None)."""
    rank = len(dims)
    if strides is None:
        strides = [SIZE[dtype]]
        for d in dims[:-1]:
            strides.append(strides[-1] * d)
    pad = lambda xs, n, v: (list(xs) + [v] * n)[:n]  # noqa: E731
    return [int(im2col), dtype, rank, *pad(dims, 5, 1), *pad(strides, 5, 0), *pad(box, 5, 1),
            *pad(element_strides, 5, 1), swizzle, oob, *pad(lower, 3, 0), *pad(upper, 3, 0),
            cpp, ppc,
            0, 0, 0]  # fmt: skip


def run(name, tensors, args, **sim):
    with simulator.simulate_cuda(**sim):
        return torch.ops.overfeat_kernels_simtest.hopper(name, tensors, args)


def load(
    global_bytes: torch.Tensor,
    sp: list[int],
    coords,
    offsets=(0, 0),
    bug=0,
    threads=128,
    dump=None,
    **sim,
):
    box_bytes = _box_bytes(sp)
    dump = dump or (box_bytes + 127) // 128 * 128
    args = sp + list(coords) + [0] * (5 - len(coords)) + list(offsets) + [bug, threads, dump]
    return run("tma_load", [global_bytes], args, **sim)


def _box_bytes(sp):
    if sp[0]:
        return sp[31] * sp[32] * SIZE[sp[1]]
    rank, box, es = sp[2], sp[13:18], sp[18:23]
    n = SIZE[sp[1]]
    for i in range(rank):
        s = 1 if i == 0 else es[i]
        n *= -(-box[i] // s)
    return n


def place(logical: np.ndarray, mode: int, dump: int) -> np.ndarray:
    """Where each logical byte of a box lands, swizzled (5.5.7), for a destination at a
    multiple of 1024; unwritten bytes stay poison (0xFF)."""
    out = np.full(dump, 0xFF, dtype=np.uint8)
    for off in range(0, logical.size, 16):
        dst = isa.swizzle(off, mode)
        out[dst : dst + 16] = logical[off : off + 16]
    return out


def tiled_reference(g: np.ndarray, dims, coords, box, es, fill=0) -> np.ndarray:
    """5.5.3: the box walked innermost first; element j reads coords + j * element stride
    (the innermost dimension has no stride); outside the tensor: the fill."""
    rank = len(dims)
    n = [-(-box[i] // (1 if i == 0 else es[i])) for i in range(rank)]
    out = []
    for j in itertools.product(*[range(k) for k in reversed(n)]):
        j = j[::-1]
        x = [coords[i] + j[i] * (1 if i == 0 else es[i]) for i in range(rank)]
        inside = all(0 <= x[i] < dims[i] for i in range(rank))
        out.append(g[tuple(reversed(x))] if inside else fill)
    return np.asarray(out, dtype=g.dtype)


# ---- tiled mode -------------------------------------------------------------------------


def _random_tiled(rng: random.Random):
    dtype = rng.choice([U8, BF16, F32])
    e = SIZE[dtype]
    rank = rng.randint(1, 5)
    mode = rng.choice([isa.NONE, isa.SW32, isa.SW64, isa.SW128])
    span = isa.SPAN[mode] if mode != isa.NONE else 128
    inner = rng.choice([b for b in (16, 32, 64, 128) if b <= span])
    box = [inner // e] + [rng.randint(1, 4) for _ in range(rank - 1)]
    dims = [rng.randint(1, 2 * box[0] + 3)] + [rng.randint(1, 6) for _ in range(rank - 1)]
    # Rows padded to 16 bytes (global strides must be multiples of 16).
    strides = [e]
    for i, d in enumerate(dims[:-1]):
        row = strides[-1] * d
        strides.append((row + 15) // 16 * 16 if i == 0 else row)
    es = [1] + [rng.randint(1, 3) for _ in range(rank - 1)]
    coords = [rng.randint(-box[i] - 1, dims[i]) for i in range(rank)]
    return dtype, dims, strides, box, es, mode, coords


def _global(dtype, dims, strides, rng):
    """A tensor with the given byte strides (innermost first), as numpy (outermost first)
    and its raw bytes."""
    e = SIZE[dtype]
    total = strides[-1] * dims[-1]
    raw = np.frombuffer(rng.randbytes(total), dtype=np.uint8).copy()
    shape = tuple(reversed(dims))
    view = np.lib.stride_tricks.as_strided(
        raw.view(NUMPY[dtype]), shape=shape, strides=tuple(reversed(strides))
    )
    if dtype == F32:  # finite floats: NaN bit patterns are fine, but keep the view readable
        view[...] = np.asarray(
            np.random.default_rng(rng.randrange(1 << 30)).standard_normal(shape), np.float32
        )
    del e
    return view, torch.from_numpy(raw)


@pytest.mark.parametrize("case", range(24))
def test_tiled_loads_follow_the_isa_walk_and_swizzle(case):
    rng = random.Random(case)
    dtype, dims, strides, box, es, mode, coords = _random_tiled(rng)
    g, raw = _global(dtype, dims, strides, rng)
    sp = spec(dtype, dims, strides, box, es, swizzle=mode)
    schedule, seed = SCHEDULES[case % len(SCHEDULES)]
    got = load(raw, sp, coords, schedule=schedule, seed=seed).numpy()
    logical = tiled_reference(g, dims, coords, box, es).view(np.uint8)
    np.testing.assert_array_equal(got, place(logical, mode, got.size))


def test_out_of_bound_fill_can_be_nan():
    dims, box = [8, 3], [8, 4]
    g = np.arange(24, dtype=np.float32).reshape(3, 8) + 1
    sp = spec(F32, dims, None, box, oob=1)
    got = (
        load(torch.from_numpy(g.view(np.uint8).ravel().copy()), sp, [0, 1]).numpy().view(np.float32)
    )
    assert np.array_equal(got[:16], g[1:3].ravel()) and np.isnan(got[16:32]).all()


# ---- im2col mode ------------------------------------------------------------------------

GOLDEN = [  # Triton gluon tutorial 13: N, corners, coord [n, h, w, c], offsets [h, w], out[:, 0]
    (1, 0, [0, 0, 0, 0], [0, 0], list(range(1, 17))),
    (1, -1, [0, -1, -1, 0], [0, 0], [0, 0, 0, 0, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11]),
    (1, -1, [0, -1, -1, 0], [1, 1], list(range(1, 17))),
    (2, 0, [0, 1, 3, 0], [0, 0], list(range(8, 24))),
    (2, -1, [0, 1, 2, 0], [0, 0], [7, 0, 9, 10, 11, 0, 0, 0, 0, 0, 17, 18, 19, 0, 21, 22]),
]


@pytest.mark.parametrize("example", range(len(GOLDEN)))
def test_im2col_golden_examples_of_the_triton_tutorial(example):
    # fp32 [N, 4, 4, 32] with x[n, h, w, :] = 1 + 16 n + 4 h + w; 16 pixels of 32 channels,
    # 128-byte rows swizzled 128B; expected values checked on hardware by the tutorial.
    n, corner, (cn, ch, cw, cc), (oh, ow), want = GOLDEN[example]
    x = (
        1
        + 16 * np.arange(n)[:, None, None]
        + 4 * np.arange(4)[None, :, None]
        + np.arange(4)[None, None, :]
    )
    x = np.repeat(x[..., None], 32, axis=-1).astype(np.float32)
    sp = spec(F32, [32, 4, 4, n], None, swizzle=isa.SW128, im2col=True, lower=[corner, corner],
              upper=[corner, corner], cpp=32, ppc=16)  # fmt: skip
    got = load(
        torch.from_numpy(x.view(np.uint8).ravel().copy()), sp, [cc, cw, ch, cn], [ow, oh]
    ).numpy()
    logical = np.empty_like(got)
    for off in range(0, got.size, 16):
        logical[off : off + 16] = got[
            isa.swizzle(off, isa.SW128) : isa.swizzle(off, isa.SW128) + 16
        ]
    out = logical.view(np.float32).reshape(16, 32)
    assert (out == out[:, :1]).all()  # every channel of a pixel
    assert out[:, 0].tolist() == want


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pad", [0, 1])
def test_im2col_loads_are_a_convolutions_patches(stride, pad):
    # A 3x3 conv (stride, pad) as the tutorial's test_conv2d_tma_im2col sets it up: corners
    # [-pad, (out - 1) * stride + 1 - size - pad], element strides = the conv stride, the
    # load at the output pixel's base with offsets (s, r) = the (r, s) filter tap's input.
    gen = torch.Generator().manual_seed(stride * 10 + pad)
    n, h, w, c = 2, 7, 6, 16
    x = torch.randn(n, h, w, c, generator=gen).to(torch.bfloat16)
    oh, ow = (h + 2 * pad - 3) // stride + 1, (w + 2 * pad - 3) // stride + 1
    lower = [-pad, -pad]
    upper = [(ow - 1) * stride + 1 - w - pad, (oh - 1) * stride + 1 - h - pad]
    ppc = 8
    sp = spec(BF16, [c, w, h, n], None, element_strides=[1, stride, stride, 1], swizzle=isa.SW32,
              im2col=True, lower=lower, upper=upper, cpp=c, ppc=ppc)  # fmt: skip
    raw = torch.from_numpy(x.view(torch.int16).numpy().view(np.uint8).ravel().copy())
    xp = torch.nn.functional.pad(x.double().permute(0, 3, 1, 2), (pad, pad, pad, pad))
    patches = torch.nn.functional.unfold(xp, 3, stride=stride)  # [n, c * 9, oh * ow]
    patches = patches.view(n, c, 9, oh * ow)
    total = n * oh * ow
    for first in range(0, total, ppc):
        img, pix = divmod(first, oh * ow)
        py, px = divmod(pix, ow)
        for r, s in [(0, 0), (1, 2), (2, 1)]:
            got = load(raw, sp, [0, px * stride - pad, py * stride - pad, img], [s, r]).numpy()
            logical = np.empty_like(got)
            for off in range(0, got.size, 16):
                src = isa.swizzle(off, isa.SW32)
                logical[off : off + 16] = got[src : src + 16]
            vals = torch.from_numpy(logical[: ppc * c * 2].view(np.int16).copy()).view(
                torch.bfloat16
            )
            vals = vals.view(ppc, c).double()
            for p in range(ppc):
                q = first + p
                if q >= total:
                    assert (vals[p] == 0).all()  # past the last image: filled
                    continue
                qi, qp = divmod(q, oh * ow)
                assert torch.equal(vals[p], patches[qi, :, 3 * r + s, qp]), (first, r, s, p)


# ---- completion on the mbarrier, and what a wrong pipeline gets --------------------------


def _small():
    g = np.arange(64 * 4, dtype=np.float32).reshape(4, 64)
    return torch.from_numpy(g.view(np.uint8).ravel().copy()), spec(
        F32, [64, 4], None, [32, 4], swizzle=isa.SW128
    )


@pytest.mark.parametrize("schedule,seed", SCHEDULES)
def test_expect_tx_must_match_the_bytes_that_land(schedule, seed):
    raw, sp = _small()
    ok = load(raw, sp, [16, 0], schedule=schedule, seed=seed)
    assert ok.numel() == 512
    with pytest.raises(RuntimeError, match=r"deadlock: threads 0-127 wait .* tx-count 16 bytes"):
        load(raw, sp, [16, 0], bug=1, schedule=schedule, seed=seed)
    with pytest.raises(
        RuntimeError, match=r"tx-count -16: more bytes completed than expect_tx announced"
    ):
        load(raw, sp, [16, 0], bug=2, schedule=schedule, seed=seed)


def test_reading_before_the_phase_completes_sees_poison_or_a_race():
    raw, sp = _small()
    with pytest.raises(RuntimeError, match=r"data race on shared memory"):
        load(raw, sp, [16, 0], bug=3)
    # Without the detector: the bytes land only when a wait sees the phase complete, so the
    # issuing thread, reading before its own (late) wait, reads poison.
    got = load(raw, sp, [16, 0], bug=3, race_check=False).numpy()
    want = load(raw, sp, [16, 0]).numpy()
    assert (got[::128] == 0xFF).all() and (want != 0xFF).all()  # thread 0 copies bytes 0, 128, ..


def test_the_instruction_must_match_the_maps_rank_and_mode():
    g = np.zeros((2, 4, 64), np.float32)
    sp = spec(F32, [64, 4, 2], None, [32, 4, 1], swizzle=isa.SW128)
    raw = torch.from_numpy(g.view(np.uint8).ravel().copy())
    with pytest.raises(RuntimeError, match=r"a 2-D tiled instruction on a 3-D tiled tensor map"):
        load(raw, sp, [0, 0, 0], bug=6)


def test_the_destination_must_be_128_byte_aligned():
    raw, sp = _small()
    with pytest.raises(
        RuntimeError, match=r"TMA load: the shared-memory box must be 128-byte aligned"
    ):
        load(raw, sp, [16, 0], bug=4)


# ---- stores -------------------------------------------------------------------------------


def _store(dst: np.ndarray, image: np.ndarray, box, coords, mode, bug=0, **sim):
    rows, cols = dst.shape
    sp = spec(F32, [cols, rows], None, box, swizzle=mode)
    args = sp + list(coords) + [0, 0, 0] + [0, 0] + [bug, 128, image.size]
    out = torch.from_numpy(dst.view(np.uint8).ravel().copy())
    run("tma_store", [out, torch.from_numpy(image)], args, **sim)
    return out.numpy().view(np.float32).reshape(rows, cols)


@pytest.mark.parametrize("mode", [isa.NONE, isa.SW64, isa.SW128])
def test_tma_store_writes_the_box_and_clips_at_the_edges(mode):
    rng = np.random.default_rng(mode)
    dst = np.zeros((10, 40), np.float32)
    tile = rng.standard_normal((8, 16)).astype(np.float32)  # box [16, 8]: 64-byte rows
    image = place(tile.view(np.uint8).ravel(), mode, 8 * 64)
    got = _store(dst, image, [16, 8], [32, 5], mode)
    want = dst.copy()
    want[5:10, 32:40] = tile[:5, :8]  # rows 10.. and columns 40.. fall outside: not written
    np.testing.assert_array_equal(got, want)


def test_tma_store_of_ordinary_stores_needs_the_proxy_fence():
    dst = np.zeros((8, 16), np.float32)
    image = place(np.ones((8, 16), np.float32).view(np.uint8).ravel(), isa.SW64, 512)
    message = (
        r"a TMA store reads .* which thread \d+ \(warp \d+\) wrote with an ordinary store at .* "
        r"a fence.proxy.async is missing"
    )
    with pytest.raises(RuntimeError, match=message):
        _store(dst, image, [16, 8], [0, 0], isa.SW64, bug=5)


# ---- the driver's limits, raised by the same checks in both builds -------------------------

LIMITS = [
    (dict(dtype=F32, dims=[64, 4], box=[257, 1]), r"box\[0\] = 257 is not in \[1, 256\]"),
    (dict(dtype=F32, dims=[64, 4], box=[3, 1]),
     r"box\[0\] x element size = 12 bytes is not a multiple of 16"),
    (dict(dtype=F32, dims=[64, 4], box=[64, 1], swizzle=isa.SW128),
     r"256 bytes exceeds the 128-byte swizzle span"),
    (dict(dtype=F32, dims=[6, 4], strides=[4, 24], box=[4, 1]),
     r"strides\[1\] = 24 bytes is not a multiple of 16"),
    (dict(dtype=F32, dims=[64, 4], box=[4, 1], element_strides=[1, 9]),
     r"element_strides\[1\] = 9 is not in \[1, 8\]"),
    (dict(dtype=F32, dims=[64, 4, 4, 4, 4, 4], box=[4]), r"rank 6 is not in \[1, 5\]"),
    (dict(dtype=U8, dims=[64, 4], box=[16, 1], oob=1),
     r"NaN out-of-bound fill needs a floating-point type"),
    (dict(dtype=BF16, dims=[16, 4, 4, 1], im2col=True, lower=[-129, 0], cpp=16, ppc=8),
     r"corner of spatial dimension 0 is -129, outside \[-128, 127\] for rank 4"),
    (dict(dtype=BF16, dims=[512, 4, 4, 1], im2col=True, cpp=264, ppc=8),
     r"channels_per_pixel = 264 is not in \[1, 256\]"),
    (dict(dtype=BF16, dims=[16, 4, 4, 1], im2col=True, cpp=16, ppc=1025),
     r"pixels_per_column = 1025 is not in \[1, 1024\]"),
    (dict(dtype=BF16, dims=[16, 4, 4, 1], im2col=True, cpp=4, ppc=8),
     r"channels_per_pixel x element size = 8 bytes is not a multiple of 16"),
    (dict(dtype=BF16, dims=[64, 4], im2col=True, cpp=16, ppc=8), r"rank 2 is not 3, 4 or 5"),
]  # fmt: skip


@pytest.mark.parametrize("kwargs,message", LIMITS)
def test_tensor_map_limits_raise_naming_the_argument(kwargs, message):
    sp = spec(**kwargs)
    with pytest.raises(RuntimeError, match=message):
        run("tma_encode", [torch.zeros(1 << 16, dtype=torch.uint8)], sp)


def test_a_misaligned_global_address_is_refused():
    raw = torch.zeros(4096, dtype=torch.uint8)
    sp = spec(F32, [64, 4], None, [4, 1])
    with pytest.raises(RuntimeError, match=r"the global address must be 16-byte aligned"):
        run("tma_encode", [raw[4:]], sp)


def test_the_tma_wrappers_and_the_encoder_compile_for_sm_80_and_sm_90a(tmp_path):
    # The device wrappers through ptxas (sm_80, where they trap, and sm_90a), and the host
    # encoder against the driver's cuda.h.
    proc, _ = compile_cuda(tmp_path, "tma", r"""
#include "mbarrier.cuh"
#include "tma.cuh"
using namespace overfeat_kernels;
__global__ void k(const __grid_constant__ tma::TensorMap map,
                  const __grid_constant__ tma::TensorMap cols, float* out) {
  extern __shared__ __align__(1024) unsigned char smem[];
  __shared__ __align__(8) uint64_t bar;
  if (threadIdx.x == 0) { mbarrier_init(&bar, 1); mbarrier_fence_init(); }
  __syncthreads();
  if (threadIdx.x == 0) {
    prefetch_tensor_map(&map);
    mbarrier_arrive_expect_tx(&bar, 5 * 4096);
    tma_load_1d(smem, &map, &bar, 0);
    tma_load_2d(smem, &map, &bar, 0, 1);
    tma_load_3d(smem + 4096, &map, &bar, 0, 1, 2);
    tma_load_4d(smem + 8192, &map, &bar, 0, 1, 2, 3);
    tma_load_5d(smem + 12288, &map, &bar, 0, 1, 2, 3, 4);
    tma_load_im2col_4d(smem + 16384, &cols, &bar, 0, -1, -1, 0, 1, 2);
  }
  mbarrier_wait_parity(&bar, 0);
  smem[threadIdx.x] += 1;
  fence_proxy_async_shared();
  __syncthreads();
  if (threadIdx.x == 0) {
    tma_store_2d(&map, smem, 0, 0);
    bulk_commit_group();
    bulk_wait_group_read<0>();
    bulk_wait_group<0>();
  }
  out[threadIdx.x] = smem[threadIdx.x];
}
tma::TensorMap host_encode(const void* p) {
  tma::TensorMapSpec s;
  s.rank = 2; s.global = p; s.dims[0] = 64; s.dims[1] = 8; s.strides[0] = 2; s.strides[1] = 128;
  s.box[0] = 64; s.box[1] = 8; s.swizzle = hopper::Swizzle::k128B;
  return tma::encode_tensor_map(s);
}
""")
    assert proc.returncode == 0, proc.stderr[-3000:]
