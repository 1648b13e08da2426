"""The simulator's wgmma model (csrc/sim/wgmma_model.cpp; wrappers csrc/cuda/wgmma.cuh;
index math csrc/cuda/hopper_layouts.cuh) against the PTX ISA: descriptor encoding
(9.7.15.5.1.2.2), the canonical shared-memory layouts and swizzles (9.7.15.5.1.2,
5.5.7), register fragments (9.7.15.5.1.1), D = A * B over every layout against float64,
and the asynchronous rules (9.7.15.7: wgmma.fence, commit_group, wait_group) each
broken on purpose. Kernels in csrc/sim/selftest_hopper.cpp; the layouts the test kernels
write come from tests/hopper_layouts.py, written from the ISA independently of the C++.
"""

from __future__ import annotations

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

TYPES = {
    "bf16": (0, torch.bfloat16, 2),
    "f16": (1, torch.float16, 2),
    "tf32": (2, torch.float32, 4),
}


def index(what: str, *args: int) -> list[int]:
    return torch.ops.overfeat_kernels_simtest.hopper_index(what, list(args))


def _u64(x: int) -> int:
    return x & (1 << 64) - 1


# ---- index math against the ISA --------------------------------------------------------


def test_descriptor_fields_follow_the_isa():
    # 9.7.15.5.1.2.2. The worked case: a 128B-swizzled B tile at 0x2000, SBO 1024, LBO
    # 16 (encoded 1, "assumed 1" for swizzled K-major layouts).
    assert _u64(index("encode_desc", 0x2000, 16, 1024, isa.SW128, 0)[0]) == 0x4000004000010200
    rng = random.Random(0)
    for _ in range(200):
        start, lbo, sbo = (rng.randrange(0, 1 << 18) & ~15 for _ in range(3))
        mode, base = rng.randrange(4), rng.randrange(8)
        want = isa.encode_desc(start, lbo, sbo, mode, base)
        got = _u64(index("encode_desc", start, lbo, sbo, mode, base)[0])
        assert got == want
        signed = want - (1 << 64) if want >> 63 else want
        assert index("decode_desc", signed) == [start, lbo, sbo, base, mode]


@pytest.mark.parametrize("mode", [isa.NONE, isa.SW32, isa.SW64, isa.SW128])
def test_swizzle_permutes_16_byte_chunks_as_the_isa_tables(mode):
    # 5.5.7: within each 128-byte row, chunk c goes to c ^ (row mod 2 / 4 / 8); the
    # pattern repeats every 256 / 512 / 1024 bytes; bytes inside a chunk stay put.
    for address in range(0, 4096, 4):
        got = index("swizzle", address, mode)[0]
        assert got == isa.swizzle(address, mode)
        row, chunk = address // 128, (address // 16) % 8
        assert got // 128 == row and got % 16 == address % 16
        assert (got // 16) % 8 == chunk ^ (row % isa.ROWS[mode])


@pytest.mark.parametrize("k_major", [True, False])
@pytest.mark.parametrize("mode", [isa.NONE, isa.SW32, isa.SW64, isa.SW128])
@pytest.mark.parametrize("elem", [2, 4])
def test_operand_addresses_follow_the_canonical_layouts(k_major, mode, elem):
    # 9.7.15.5.1.2.1.3: the address of every element (m, k) of one instruction's operand.
    if elem == 4 and not k_major:
        pytest.skip("tf32 operands are K-major only")
    rows, k = 64, 32 // elem
    _, lbo, sbo, _ = isa.tile_layout(rows, 4 * k, elem, k_major, mode)
    start = 3 * 1024 + 32
    desc = isa.encode_desc(start, lbo, sbo, mode)
    signed = desc - (1 << 64) if desc >> 63 else desc
    pairs = [(m, kk) for m in range(rows) for kk in range(k)]
    got = index("operand_address", signed, int(k_major), elem, *[x for p in pairs for x in p])
    want = [
        isa.swizzle(start + isa.canonical(k_major, mode, lbo, sbo, elem, m, kk), mode)
        for m, kk in pairs
    ]
    assert got == want


def test_register_fragments_follow_the_isa():
    # 9.7.15.5.1.1: D of m64nNk16 (every thread's 128 registers of N = 256), A of k16
    # (8 halves) and of k8 tf32 (4 registers), and that each covers its matrix once.
    got = np.asarray(index("fragments")).reshape(128, 140, 2)
    seen_d, seen_a, seen_t = set(), set(), set()
    for t in range(128):
        for i in range(128):
            assert tuple(got[t, i]) == isa.fragment_d(t, i)
            seen_d.add(tuple(got[t, i]))
        for i in range(8):
            assert tuple(got[t, 128 + i]) == isa.fragment_a16(t, i)
            seen_a.add(tuple(got[t, 128 + i]))
        for i in range(4):
            assert tuple(got[t, 136 + i]) == isa.fragment_a8_tf32(t, i)
            seen_t.add(tuple(got[t, 136 + i]))
    assert seen_d == {(r, c) for r in range(64) for c in range(256)}
    assert seen_a == {(r, c) for r in range(64) for c in range(16)}
    assert seen_t == {(r, c) for r in range(64) for c in range(8)}


# ---- D = A * B through the simulator ---------------------------------------------------


def _operand(rows: int, k: int, dtype, gen) -> torch.Tensor:
    return torch.randn(rows, k, generator=gen).to(dtype)


def _as_bytes(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.uint8)


def _exact(x: torch.Tensor, type_name: str) -> np.ndarray:
    """The operand as the tensor core reads it: tf32 keeps the top 19 bits."""
    if type_name == "tf32":
        bits = x.contiguous().view(torch.int32) & ~0x1FFF
        return bits.view(torch.float32).double().numpy()
    return x.double().numpy()


def run_wgmma(type_name="bf16", n=64, k=32, trans_a=False, trans_b=False, a_regs=False,
              mode_a=isa.SW128, mode_b=isa.SW128, bug=0, threads=128, seed=0, **sim):  # fmt: skip
    code, dtype, elem = TYPES[type_name]
    gen = torch.Generator().manual_seed(seed)
    a, b = _operand(64, k, dtype, gen), _operand(n, k, dtype, gen)
    off_a, lbo_a, sbo_a, start_a = isa.tile_layout(64, k, elem, not trans_a, mode_a)
    off_b, lbo_b, sbo_b, start_b = isa.tile_layout(n, k, elem, not trans_b, mode_b)
    phys_a, phys_b = isa.physical(off_a, mode_a), isa.physical(off_b, mode_b)
    region_a = (int(phys_a.max()) + elem + 1023) // 1024 * 1024
    region_b = (int(phys_b.max()) + elem + 1023) // 1024 * 1024
    tensors = [_as_bytes(a), _as_bytes(b)] + [
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.int32)).flatten()
        for x in (phys_a, phys_b, start_a, start_b)
    ]
    args = [code, n, k, int(trans_a), int(trans_b), int(a_regs), lbo_a, sbo_a, lbo_b, sbo_b,
            mode_a, mode_b, region_a, region_b, bug, threads]  # fmt: skip
    with simulator.simulate_cuda(**sim):
        out = torch.ops.overfeat_kernels_simtest.hopper("wgmma", tensors, args)
    want = _exact(a, type_name) @ _exact(b, type_name).T
    return out, want


def _check(out: torch.Tensor, want: np.ndarray, k: int):
    # Products are exact; the simulator sums each instruction's K in float64 and rounds to
    # float32 once per instruction: a few float32 ulps of the running sum.
    got = out.double().numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=4e-6 * k * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("type_name", ["bf16", "f16"])
@pytest.mark.parametrize("n", [64, 128, 256])
@pytest.mark.parametrize(
    "trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)]
)
@pytest.mark.parametrize("mode", [isa.NONE, isa.SW32, isa.SW64, isa.SW128])
def test_wgmma_16_bit_every_layout_against_float64(type_name, n, trans_a, trans_b, mode):
    k = 64 if mode == isa.SW128 else 32  # several instructions per swizzle atom
    out, want = run_wgmma(
        type_name, n, k, trans_a, trans_b, mode_a=mode, mode_b=mode, seed=n + mode
    )
    _check(out, want, k)


@pytest.mark.parametrize("n", [64, 128])
@pytest.mark.parametrize("mode", [isa.NONE, isa.SW32, isa.SW64, isa.SW128])
def test_wgmma_tf32_against_float64(n, mode):
    out, want = run_wgmma("tf32", n, 32, mode_a=mode, mode_b=mode, seed=mode)
    _check(out, want, 32)


@pytest.mark.parametrize(
    "type_name,n,trans_b",
    [("bf16", 64, False), ("f16", 128, True), ("bf16", 256, True), ("tf32", 128, False)],
)
def test_wgmma_with_a_from_registers(type_name, n, trans_b):
    out, want = run_wgmma(type_name, n, 32, trans_b=trans_b, a_regs=True, mode_b=isa.SW64)
    _check(out, want, 32)


@pytest.mark.parametrize("schedule,seed", SCHEDULES)
def test_wgmma_is_schedule_independent(schedule, seed):
    out, _ = run_wgmma("bf16", 128, 64, schedule=schedule, seed=3)
    ref, _ = run_wgmma("bf16", 128, 64, seed=3)
    assert torch.equal(out, ref)


# ---- the asynchronous rules, broken on purpose (WgmmaBug in selftest_hopper.cpp) --------

BUGS = {
    2: r"accumulator 0 of the wgmma.mma_async issued at .*selftest_hopper.cpp:\d+ was written "
       r"before the wgmma.wait_group",
    3: r"wgmma.mma_async before any wgmma.fence",
    4: r"accumulators that a wgmma.wait_group handed back to the thread, without a wgmma.fence",
    5: r"shared memory that the wgmma.mma_async issued at .*selftest_hopper.cpp:\d+ reads was "
       r"overwritten before the wgmma.wait_group",
    7: r"thread 5 passes operands \(descriptors, shape, scale\) that differ",
    8: r"exits with wgmma.mma_async operations that no wgmma.wait_group retired",
    9: r"wgmma.mma_async reads .* which thread \d+ \(warp \d+\) wrote with an ordinary store at "
       r".*selftest_hopper.cpp:\d+ .* a fence.proxy.async is missing",
}  # fmt: skip


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_broken_wgmma_use_raises(bug):
    with pytest.raises(RuntimeError, match=BUGS[bug]):
        run_wgmma(bug=bug)


def test_accumulators_read_before_wait_group_are_poison():
    out, _ = run_wgmma(bug=1)
    assert torch.isnan(out).all()


def test_wait_group_one_too_early_leaves_poison():
    # One group per instruction, then wait_group<1>: the last group is still in flight, so
    # the accumulators it chains into are poison.
    out, want = run_wgmma(bug=6)
    assert torch.isnan(out).all()
    out, want = run_wgmma(bug=0)
    _check(out, want, 32)


def test_a_warpgroup_needs_all_128_threads():
    with pytest.raises(RuntimeError, match=r"warpgroup instruction \(128 threads, 4 whole warps\)"):
        run_wgmma(threads=96)


def test_the_wgmma_wrappers_compile_for_sm_90a(tmp_path):
    proc, _ = compile_cuda(tmp_path, "wg", r"""
#include "wgmma.cuh"
using namespace overfeat_kernels;
__global__ void k(float* out, const uint32_t* a_regs) {
  extern __shared__ __align__(1024) unsigned char smem[];
  float acc[128];
  uint32_t a[4] = {a_regs[0], a_regs[1], a_regs[2], a_regs[3]};
  setmaxnreg_inc<232>();
  const uint64_t d = make_matrix_desc(smem, 16, 1024, hopper::Swizzle::k128B);
  wgmma_fence();
  wgmma_ss<256, MmaType::kBF16>(acc, d, d, false);
  wgmma_ss<128, MmaType::kF16, true, true>(acc, d, d, true);
  wgmma_ss<64, MmaType::kTF32>(acc, d, d, true);
  wgmma_rs<128, MmaType::kBF16, true>(acc, a, d, true);
  wgmma_rs<64, MmaType::kTF32>(acc, a, d, true);
  wgmma_commit_group();
  wgmma_wait_group<0>();
  if (elect_one_sync()) out[threadIdx.x] = acc[0] + acc[127];
}
""")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "serialized" not in proc.stderr  # ptxas C7510: wgmma serialised
