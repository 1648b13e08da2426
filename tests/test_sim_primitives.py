"""The tensor-core and async-copy primitives (csrc/cuda/ptx_primitives.cuh) in the CUDA
simulator, checked against the PTX ISA ("Parallel Thread Execution ISA").

Every expectation here is derived in Python, independently of the C++ code, from the ISA's
text: the fragment tables of "Matrix Fragments for mma.m16n8k16 with floating point type"
and "Matrix Fragments for mma.m16n8k8", the ldmatrix layout of "Warp-level matrix load
instruction: ldmatrix", the group semantics of "Data Movement and Conversion Instructions:
cp.async" / "cp.async.wait_group / cp.async.wait_all", and the rounding modifiers of
"Data Movement and Conversion Instructions: cvt" (.rna: to nearest, ties away from zero;
.rn: to nearest, ties to even). The test kernels are in csrc/sim/selftest_primitives.cpp.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import numpy as np
import pytest
import torch

import overfeat_kernels
from overfeat_kernels import simulator

pytestmark = [
    pytest.mark.sim,
    pytest.mark.skipif(
        not simulator.available(), reason="the CUDA simulator module (_sim) is not built"
    ),
]

EMPTY = torch.empty(0)
HERE = r"selftest_primitives\.cpp:\d+"  # errors name the primitive's caller


def primitive(name, a=EMPTY, b=EMPTY, c=EMPTY, **kwargs):
    with overfeat_kernels.simulate_cuda(**kwargs):
        return torch.ops.overfeat_kernels_simtest.primitive(name, a, b, c)


# ---- the ISA's fragment tables, written as the ISA states them ---------------------------
# groupID = %laneid >> 2, threadID_in_group = %laneid % 4. Each returns (row, col) of
# element i of a lane's fragment.


def a_m16n8k16(lane, i):
    """Figure "MMA .m16n8k16 fragment layout for matrix A with .f16 / .bf16 type"."""
    group, tig = lane >> 2, lane % 4
    row = group if (0 <= i < 2 or 4 <= i < 6) else group + 8
    col = tig * 2 + (i & 0x1) if i < 4 else tig * 2 + (i & 0x1) + 8
    return row, col


def b_m16n8k16(lane, i):
    """Figure "MMA .m16n8k16 fragment layout for matrix B with .f16 / .bf16 type"."""
    group, tig = lane >> 2, lane % 4
    row = tig * 2 + (i & 0x1) if i < 2 else tig * 2 + (i & 0x1) + 8
    return row, group


def a_m16n8k8_tf32(lane, i):
    """Figure "MMA .m16n8k8 fragment layout for matrix A with .tf32 type"."""
    group, tig = lane >> 2, lane % 4
    row = group if i in (0, 2) else group + 8
    col = tig if i in (0, 1) else tig + 4
    return row, col


def b_m16n8k8_tf32(lane, i):
    """Figure "MMA .m16n8k8 fragment layout for matrix B with .tf32 type"."""
    group, tig = lane >> 2, lane % 4
    return (tig if i == 0 else tig + 4), group


def c_m16n8(lane, i):
    """Accumulators C/D (.f32), the same for m16n8k16 and m16n8k8."""
    group, tig = lane >> 2, lane % 4
    return (group if i < 2 else group + 8), tig * 2 + (i & 0x1)


# kind: (K, A table, A elements per lane, B table, B elements per lane, elements per register)
MMA = {
    "bf16": (16, a_m16n8k16, 8, b_m16n8k16, 4, 2),
    "f16": (16, a_m16n8k16, 8, b_m16n8k16, 4, 2),
    "tf32": (8, a_m16n8k8_tf32, 4, b_m16n8k8_tf32, 2, 1),
}
KINDS = sorted(MMA)


# ---- number formats, from first principles -----------------------------------------------


def round_to_format(x, mantissa_bits, min_exp, max_exp, ties_away):
    """x rounded to a binary floating-point format with `mantissa_bits` fraction bits and
    normal exponents min_exp..max_exp (subnormals below, overflow to infinity), exactly,
    with rational arithmetic."""
    if x == 0 or not math.isfinite(x):
        return x
    exp = max(math.frexp(abs(x))[1] - 1, min_exp)  # exponent of the leading bit
    ulp = Fraction(2) ** (exp - mantissa_bits)
    q, rem = divmod(Fraction(abs(x)), ulp)
    half = ulp / 2
    if rem > half or (rem == half and (ties_away or q % 2 == 1)):
        q += 1
    r = q * ulp
    if r >= Fraction(2) ** (max_exp + 1):
        return math.copysign(math.inf, x)
    return math.copysign(float(r), x)


def tf32_round(x):  # cvt.rna.tf32.f32
    return round_to_format(x, 10, -126, 127, ties_away=True)


def bf16_round(x):  # cvt.rn.bf16.f32
    return round_to_format(x, 7, -126, 127, ties_away=False)


def f16_round(x):  # cvt.rn.f16.f32
    return round_to_format(x, 10, -14, 15, ties_away=False)


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def bits_f32(u):
    return struct.unpack("<f", struct.pack("<I", u))[0]


def element_bits(kind, x):
    """The bits of x in the operand format; x must be exactly representable."""
    if kind == "tf32":
        u = f32_bits(x)
        assert u & 0x1FFF == 0, f"{x} is not a tf32 number"
        return u
    if kind == "bf16":
        u = f32_bits(x)
        assert u & 0xFFFF == 0, f"{x} is not a bf16 number"
        return u >> 16
    h = struct.unpack("<H", struct.pack("<e", x))[0]
    assert struct.unpack("<e", struct.pack("<H", h))[0] == x, f"{x} is not an f16 number"
    return h


def representable(kind, x):
    return {"tf32": tf32_round, "bf16": bf16_round, "f16": f16_round}[kind](float(x))


# ---- mma through raw registers -----------------------------------------------------------


def pack_registers(kind, A, B, C):
    """Each lane's a/b/c registers, by the ISA tables."""
    _, a_at, n_a, b_at, n_b, per_reg = MMA[kind]
    a = np.zeros((32, 4), np.uint32)
    b = np.zeros((32, 2), np.uint32)
    c = np.zeros((32, 4), np.float32)
    for lane in range(32):
        for regs, at, n, M in ((a, a_at, n_a, A), (b, b_at, n_b, B)):
            for i in range(n):
                bits = element_bits(kind, float(M[at(lane, i)]))
                regs[lane, i // per_reg] |= np.uint32(bits << (16 * (i % per_reg)))
        for i in range(4):
            c[lane, i] = C[c_m16n8(lane, i)]
    return a, b, c


def mma_registers(kind, a, b, c):
    """Runs the warp's mma on registers; returns d[lane][i]."""
    d = primitive(
        f"mma_{kind}_registers",
        torch.from_numpy(a.view(np.int32).copy()),
        torch.from_numpy(b.view(np.int32).copy()),
        torch.from_numpy(c.copy()),
    )
    return d.numpy().astype(np.float64)


def unpack_d(d):
    D = np.full((16, 8), np.nan)
    for lane in range(32):
        for i in range(4):
            D[c_m16n8(lane, i)] = d[lane, i]
    return D


def small_integers(shape, rng, low=-8, high=8):
    return rng.integers(low, high + 1, size=shape).astype(np.float64)


def small_problem(K, rng):
    """A (16xK), B (Kx8), C (16x8) of small integers: every product and sum is exact."""
    return small_integers((16, K), rng), small_integers((K, 8), rng), small_integers((16, 8), rng)


@pytest.mark.parametrize("kind", KINDS)
def test_mma_registers_small_integers_exact(kind):
    """Small integers: every product and sum is exact, so D = A B + C bitwise."""
    K = MMA[kind][0]
    rng = np.random.default_rng(1)
    for _ in range(3):
        A, B, C = small_problem(K, rng)
        D = unpack_d(mma_registers(kind, *pack_registers(kind, A, B, C)))
        np.testing.assert_array_equal(D, A @ B + C)


@pytest.mark.parametrize("kind", KINDS)
def test_mma_registers_random_within_tolerance(kind):
    """Random operands in the format: D matches a float64 A B + C to float rounding (the
    hardware's accumulation is not IEEE, so no bitwise comparison)."""
    K = MMA[kind][0]
    rng = np.random.default_rng(2)
    to_format = np.vectorize(lambda x: representable(kind, x))
    A = to_format(rng.standard_normal((16, K)) * 3)
    B = to_format(rng.standard_normal((K, 8)))
    C = rng.standard_normal((16, 8)).astype(np.float32).astype(np.float64)
    D = unpack_d(mma_registers(kind, *pack_registers(kind, A, B, C)))
    scale = np.abs(A) @ np.abs(B) + np.abs(C)
    np.testing.assert_allclose(D, A @ B + C, rtol=0, atol=float(scale.max()) * 2**-22)


@pytest.mark.parametrize("kind", KINDS)
def test_mma_simulator_rounds_once(kind):
    """The simulator's model (not an ISA fact): the sum taken in double, rounded to float
    once.
    D = 2**24 + K is a float, but adding K ones to 2**24 one at a time in float would give
    2**24. A tensor core's non-IEEE accumulation may differ: kernels compare with a
    tolerance."""
    K = MMA[kind][0]
    A, B, C = np.ones((16, K)), np.ones((K, 8)), np.full((16, 8), 2.0**24)
    D = unpack_d(mma_registers(kind, *pack_registers(kind, A, B, C)))
    np.testing.assert_array_equal(D, np.full((16, 8), 2.0**24 + K))


def _layout_mismatches(kind, A, B, C, expected):
    """Runs the mma and lists (lane, register, got, expected) where D differs."""
    d = mma_registers(kind, *pack_registers(kind, A, B, C))
    bad = []
    for lane in range(32):
        for i in range(4):
            want = expected[c_m16n8(lane, i)]
            if d[lane, i] != want:
                bad.append((lane, i, d[lane, i], want))
    return bad


@pytest.mark.parametrize("kind", KINDS)
def test_mma_layout_of_a_element_by_element(kind):
    """Section "Matrix Fragments for mma.m16n8k16 with floating point type" / "Matrix
    Fragments for mma.m16n8k8" (.tf32), matrix A: A holds a distinct code per element and
    B's columns are unit vectors e_k, so D[m][n] = A[m][k] + C[m][n] names the A element
    (and C the accumulator element) that each lane's d register received."""
    K = MMA[kind][0]
    A = np.arange(16 * K, dtype=np.float64).reshape(16, K) + 1  # <= 256: exact in bf16
    C = (np.arange(16 * 8, dtype=np.float64).reshape(16, 8) + 1) * 1024
    for first in range(0, K, 8):
        picks = list(range(first, first + 8))
        B = np.zeros((K, 8))
        for n, k in enumerate(picks):
            B[k, n] = 1
        expected = A[:, picks] + C
        assert _layout_mismatches(kind, A, B, C, expected) == []


@pytest.mark.parametrize("kind", KINDS)
def test_mma_layout_of_b_element_by_element(kind):
    """The same sections, matrix B: A's rows are unit vectors picking row m % K of B."""
    K = MMA[kind][0]
    B = np.arange(K * 8, dtype=np.float64).reshape(K, 8) + 1
    A = np.zeros((16, K))
    for m in range(16):
        A[m, m % K] = 1
    C = (np.arange(16 * 8, dtype=np.float64).reshape(16, 8) + 1) * 1024
    expected = B[[m % K for m in range(16)], :] + C
    assert _layout_mismatches(kind, A, B, C, expected) == []


def test_mma_layout_tables_are_permutations():
    """The Python tables themselves: each covers its matrix exactly once (a typo in them
    would otherwise weaken the layout tests)."""
    for K, a_at, n_a, b_at, n_b, _ in MMA.values():
        for at, n, shape in ((a_at, n_a, (16, K)), (b_at, n_b, (K, 8)), (c_m16n8, 4, (16, 8))):
            cells = {at(lane, i) for lane in range(32) for i in range(n)}
            assert cells == {(r, c) for r in range(shape[0]) for c in range(shape[1])}


def test_mma_tf32_ignores_low_13_bits():
    """The tensor core reads only the top 19 bits of a .tf32 register: garbage in the low
    13 bits of every a/b register leaves D unchanged."""
    rng = np.random.default_rng(3)
    A, B, C = small_problem(8, rng)
    a, b, c = pack_registers("tf32", A, B, C)
    clean = mma_registers("tf32", a, b, c)
    a_noisy = a | rng.integers(1, 0x2000, size=a.shape).astype(np.uint32)
    b_noisy = b | rng.integers(1, 0x2000, size=b.shape).astype(np.uint32)
    noisy = mma_registers("tf32", a_noisy, b_noisy, c)
    np.testing.assert_array_equal(noisy, clean)
    np.testing.assert_array_equal(unpack_d(noisy), A @ B + C)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("mma_half_warp", r"\.bf16\.bf16\.f32 at " + HERE + " in warp 0 is missing lanes 16-31"),
        ("mma_partial_warp", r"needs all 32 lanes .*the warp has only 16 threads \(at " + HERE),
    ],
)
def test_mma_needs_the_whole_warp(name, message):
    """mma.sync.aligned: all 32 lanes must execute it; half a warp raises, naming them."""
    with pytest.raises(RuntimeError, match=message):
        primitive(name, torch.zeros(1))


# ---- mma from matrices, fragments gathered in the kernel ---------------------------------


def mma_tile(kind, A, B, C, form="tile", **kwargs):
    def t(x):
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    return primitive(f"mma_{kind}_{form}", t(A), t(B), t(C), **kwargs).numpy().astype(np.float64)


@pytest.mark.parametrize("kind", KINDS)
def test_mma_tile_kernel(kind):
    """A kernel that gathers its fragments from shared memory with the header's
    fragment-coordinate helpers (and pack_bf16x2 / pack_f16x2 / float_to_tf32) and
    scatters D with them: exact on small integers, to tolerance on random numbers."""
    K = MMA[kind][0]
    rng = np.random.default_rng(4)
    A, B, C = small_problem(K, rng)
    np.testing.assert_array_equal(mma_tile(kind, A, B, C), A @ B + C)
    to_format = np.vectorize(lambda x: representable(kind, x))
    A, B = to_format(rng.standard_normal((16, K))), to_format(rng.standard_normal((K, 8)))
    C = rng.standard_normal((16, 8)).astype(np.float32).astype(np.float64)
    scale = float((np.abs(A) @ np.abs(B) + np.abs(C)).max())
    np.testing.assert_allclose(mma_tile(kind, A, B, C), A @ B + C, rtol=0, atol=scale * 2**-22)


def test_mma_tf32_tile_rounds_operands_with_cvt_rna():
    """Operands that are not tf32 numbers go through float_to_tf32 in the kernel: D is the
    product of the rna-rounded operands."""
    rng = np.random.default_rng(5)
    A = rng.standard_normal((16, 8)).astype(np.float32)
    B = rng.standard_normal((8, 8)).astype(np.float32)
    C = np.zeros((16, 8))
    rounded = np.vectorize(tf32_round)
    want = rounded(A.astype(np.float64)) @ rounded(B.astype(np.float64))
    scale = float((np.abs(want)).max())
    np.testing.assert_allclose(mma_tile("tf32", A, B, C), want, rtol=0, atol=scale * 2**-22)


def test_mma_with_ldmatrix_fragments():
    """ldmatrix.x4 of a row-major A and ldmatrix.x2.trans of a row-major B give exactly the
    mma.m16n8k16 A and B fragments (the pairing the ISA designs them for), and the kernel
    is free of races: bitwise the same under every schedule."""
    rng = np.random.default_rng(6)
    A, B, C = small_problem(16, rng)
    D = simulator.assert_schedule_independent(
        lambda: torch.from_numpy(mma_tile("bf16", A, B, C, form="ldmatrix"))
    )
    np.testing.assert_array_equal(D.numpy(), A @ B + C)


# ---- ldmatrix ----------------------------------------------------------------------------


def ldmatrix_expected(tile, rows, num, trans):
    """Section "Warp-level matrix load instruction: ldmatrix": threads 8j..8j+7 give the
    addresses of rows 0..7 of matrix j; register j of lane l holds row l >> 2 of matrix j,
    elements 2 (l % 4) and 2 (l % 4) + 1, the first in the low half (Figure "ldmatrix
    fragment layout for one 8x8 Matrix with 16-bit elements"); .trans loads each matrix
    in column-major order, i.e. transposed."""
    out = np.zeros((32, num), np.uint32)
    for j in range(num):
        matrix = np.array([tile[rows[8 * j + r]] for r in range(8)], dtype=np.uint32)
        if trans:
            matrix = matrix.T
        for lane in range(32):
            lo, hi = matrix[lane >> 2, 2 * (lane % 4)], matrix[lane >> 2, 2 * (lane % 4) + 1]
            out[lane, j] = lo | (hi << 16)
    return out


def ldmatrix_inputs(num, rng):
    codes = (np.arange(32 * 8, dtype=np.uint32) * 257) & 0xFFFF  # distinct, all 16 bits used
    tile = codes.reshape(32, 8)
    rows = rng.permutation(32).astype(np.int32)
    rows[8 * num :] = -1  # lanes whose address is ignored give a null pointer
    return tile, rows


@pytest.mark.parametrize("trans", [False, True], ids=["rows", "trans"])
@pytest.mark.parametrize("num", [1, 2, 4])
def test_ldmatrix_layout(num, trans):
    rng = np.random.default_rng(num * 2 + trans)
    tile, rows = ldmatrix_inputs(num, rng)
    name = f"ldmatrix_x{num}" + ("_trans" if trans else "")
    got = primitive(
        name,
        torch.from_numpy(tile.astype(np.uint16).view(np.int16).copy()),
        torch.from_numpy(rows),
    )
    got = got.numpy().view(np.uint32)
    want = ldmatrix_expected(tile, rows, num, trans)
    bad = [(lane, j) for lane in range(32) for j in range(num) if got[lane, j] != want[lane, j]]
    assert bad == [], f"{name}: wrong (lane, register) pairs {bad[:8]}"


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("_misaligned", r"lane 3 gives a row address that is not 16-byte aligned \(at " + HERE),
        ("_global", r"lane 5 gives a row address outside this kernel's shared memory \(at " + HERE),
        ("_partial_warp", r"x4\.shared\.b16 at " + HERE + r" .* missing lanes 16-31 .*exited"),
        ("_divergent", r"lanes of warp 0 diverge: lane \d+ calls ldmatrix.* at " + HERE),
    ],
)
def test_ldmatrix_errors(variant, message):
    """A misaligned row, a row outside shared memory, half a warp executing the .aligned
    instruction, and the warp split between two call sites: each raises, naming the
    lane(s) and the caller's line in the test kernel."""
    tile, rows = ldmatrix_inputs(4, np.random.default_rng(0))
    with pytest.raises(RuntimeError, match=message):
        primitive(
            "ldmatrix_x4" + variant,
            torch.from_numpy(tile.astype(np.uint16).view(np.int16).copy()),
            torch.from_numpy(rows),
        )


# ---- cp.async ----------------------------------------------------------------------------

POISON = -1  # 0xFFFFFFFF: the simulator's shared-memory poison, a NaN


def test_cp_async_groups():
    """Sections "cp.async", "cp.async.commit_group" and "cp.async.wait_group /
    cp.async.wait_all": copies are visible only once their group completed;
    wait_group 1 with two groups in flight completes only the older; wait_group 0 does not
    wait for uncommitted copies, wait_all does (it commits first)."""
    src = torch.arange(1, 257, dtype=torch.float32)
    out = primitive("cp_async", src).numpy()  # [step, lane, 7]
    bits = out.view(np.int32)
    s = src.numpy()
    lanes = np.arange(32)
    landed = np.concatenate(
        [s[:128].reshape(32, 4), s[128:192].reshape(32, 2), s[192:224, None]], axis=1
    )
    # 0: nothing has landed.
    assert (bits[0] == POISON).all()
    # 1: the 16-byte group landed, the 8/4-byte group did not.
    np.testing.assert_array_equal(out[1, :, :4], landed[:, :4])
    assert (bits[1, :, 4:] == POISON).all()
    # 2: everything landed.
    np.testing.assert_array_equal(out[2], landed)
    # 3: a new copy that was never committed has not landed after wait_group 0.
    np.testing.assert_array_equal(out[3], landed)
    # 4: after wait_all and a barrier, the neighbour's data, with the new copy.
    neighbour = landed[(lanes + 1) % 32].copy()
    neighbour[:, 6] = s[224 + (lanes + 1) % 32]
    np.testing.assert_array_equal(out[4], neighbour)


def test_cp_async_zfill():
    """The src-size operand: lane l copies l % 17 of 16, l % 9 of 8 and l % 5 of 4 bytes;
    the rest of each destination is zero."""
    rng = np.random.default_rng(7)
    src = rng.integers(1, 256, size=896).astype(np.uint8)  # no zero bytes
    out = primitive("cp_async_zfill", torch.from_numpy(src)).numpy()
    for lane in range(32):
        for offset, base, size, n in (
            (0, 16 * lane, 16, lane % 17),
            (16, 512 + 8 * lane, 8, lane % 9),
            (24, 768 + 4 * lane, 4, lane % 5),
        ):
            want = np.concatenate([src[base : base + n], np.zeros(size - n, np.uint8)])
            np.testing.assert_array_equal(out[lane, offset : offset + size], want, str(lane))


def test_cp_async_ignore_src():
    """The ignore-src predicate: those lanes read nothing (their address lies far past the
    buffer) and get 16 zero bytes; the others their 16 bytes."""
    src = np.random.default_rng(8).integers(1, 256, size=512).astype(np.uint8)
    out = primitive("cp_async_ignore_src", torch.from_numpy(src)).numpy()
    for lane in range(32):
        want = np.zeros(16, np.uint8) if lane % 3 == 0 else src[16 * lane : 16 * lane + 16]
        np.testing.assert_array_equal(out[lane], want, str(lane))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("misaligned_dst", r"cp\.async of 16 bytes needs source and destination aligned to 16"),
        ("misaligned_src", r"cp\.async of 16 bytes needs source and destination aligned to 16"),
        ("global_dst", r"cp\.async destination is not in this kernel's shared memory"),
        ("src_bytes_too_large", r"cp\.async source size 17 exceeds the copy size 16"),
    ],
)
def test_cp_async_errors(case, message):
    """Copies the GPU would fault on or leave undefined raise, naming the caller."""
    with pytest.raises(RuntimeError, match=message + r".* \(at " + HERE):
        primitive(f"cp_async_{case}", torch.zeros(256))


# ---- conversions -------------------------------------------------------------------------

TF32_CASES = {
    # bits in: the ISA's .rna rounding of a 23-bit mantissa to 10 bits
    0x3F801000: 0x3F802000,  # tie, kept LSB even: away from zero (even rounding would stay)
    0xBF801000: 0xBF802000,  # the same, negative
    0x3F803000: 0x3F804000,  # tie, kept LSB odd
    0x3F800FFF: 0x3F800000,  # just below the tie
    0x3F801001: 0x3F802000,  # just above
    0x3FFFF000: 0x40000000,  # rounds up into the next binade
    0xBFFFFFFF: 0xC0000000,
    0x7F7FEFFF: 0x7F7FE000,  # below the largest tf32's tie
    0x7F7FF000: 0x7F800000,  # tie above the largest tf32: overflow to infinity
    0xFF7FFFFF: 0xFF800000,
    0x7F800000: 0x7F800000,  # infinities stay
    0xFF800000: 0xFF800000,
    0x00000000: 0x00000000,  # zeros keep their sign
    0x80000000: 0x80000000,
    0x00000001: 0x00000000,  # denormals: rounded at the same 2**-136 step
    0x00001000: 0x00002000,
    0x80001000: 0x80002000,
    0x00000FFF: 0x00000000,
    0x807FFFFF: 0x80800000,  # the largest denormal rounds up to the smallest normal
}
NANS = [0x7FC00000, 0xFFC00000, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001, 0xFF800FFF]


def float_to_tf32(bits):
    x = torch.from_numpy(np.array(bits, np.uint32).view(np.float32).copy())
    return primitive("float_to_tf32", x).numpy().view(np.uint32)


def test_tf32_reference_agrees_with_the_table():
    for u, want in TF32_CASES.items():
        assert f32_bits(tf32_round(bits_f32(u))) == want, hex(u)


def test_float_to_tf32_edge_cases():
    got = float_to_tf32(list(TF32_CASES))
    for u, want, g in zip(TF32_CASES, TF32_CASES.values(), got, strict=True):
        assert g == want, f"float_to_tf32({u:#010x}) = {g:#010x}, expected {want:#010x}"


def test_float_to_tf32_nan_stays_nan():
    """The ISA leaves the NaN payload open; the simulator keeps a NaN a NaN (sign kept, low
    13 bits clear). A GPU that only masks the low bits could turn a signalling NaN whose
    payload lies in those bits (0x7F800001) into infinity: kernels must not rely on it."""
    for u, g in zip(NANS, float_to_tf32(NANS), strict=True):
        assert (g & 0x7F800000) == 0x7F800000 and (g & 0x007FFFFF) != 0, f"{u:#x} -> {g:#x}"
        assert g & 0x1FFF == 0 and g >> 31 == u >> 31


def test_float_to_tf32_random():
    rng = np.random.default_rng(8)
    bits = rng.integers(0, 2**32, size=20000, dtype=np.uint64).astype(np.uint32)
    bits = bits[(bits & 0x7F800000) != 0x7F800000]  # finite (NaN and Inf are tested above)
    got = float_to_tf32(bits)
    want = np.array([f32_bits(tf32_round(bits_f32(int(u)))) for u in bits], np.uint32)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, [(hex(bits[i]), hex(got[i]), hex(want[i])) for i in bad[:5]]


def half_bits(kind, x):
    if math.isnan(x):
        return None
    if kind == "bf16":
        return f32_bits(bf16_round(x)) >> 16
    return struct.unpack("<H", struct.pack("<e", f16_round(x)))[0]


def is_nan_half(kind, h):
    exp, man = (0x7F80, 0x7F) if kind == "bf16" else (0x7C00, 0x3FF)
    return (h & exp) == exp and (h & man) != 0


@pytest.mark.parametrize("kind", ["bf16", "f16"])
def test_pack_x2(kind):
    """pack_bf16x2 / pack_f16x2 (cvt.rn.{bf16x2,f16x2}.f32): round to nearest even, the
    first argument in the low half (the element order of mma's .bf16x2/.f16x2 registers)."""
    rng = np.random.default_rng(9)
    special = [
        (1 + 2**-8, 1 + 3 * 2**-8),  # bf16 ties: to even (down, up)
        (1 + 2**-11, 1 + 3 * 2**-11),  # f16 ties
        (65504.0, 65519.0, 65520.0),  # f16: the largest, below and at its overflow tie
        (2.0**-24, 2.0**-25, 3 * 2.0**-25, 1e-8),  # f16 subnormals, ties among them
        (bits_f32(0x7F7FFFFF), 2.0**-130, -0.0, math.inf, -math.inf, math.nan),
    ]
    noise = rng.standard_normal(2000) * np.exp(rng.uniform(-20, 20, 2000))
    values = np.concatenate([[v for group in special for v in group], noise]).astype(np.float32)
    lo, hi = values, np.roll(values, 7)
    got = primitive(f"pack_{kind}x2", torch.from_numpy(lo.copy()), torch.from_numpy(hi.copy()))
    got = got.numpy().view(np.uint32)
    for x, y, g in zip(lo, hi, got, strict=True):
        for half, v in ((g & 0xFFFF, float(x)), (g >> 16, float(y))):
            want = half_bits(kind, v)
            if want is None:
                assert is_nan_half(kind, half), f"{v} -> {half:#06x}"
            else:
                assert half == want, f"pack_{kind}x2: {v!r} -> {half:#06x}, expected {want:#06x}"
