// Tensor-core and async-copy primitives: one tiny wrapper per PTX instruction, with the
// inline PTX for nvcc (sm_80+) here and, under OVERFEAT_SIM, a simulator body of the same
// name in csrc/sim/ptx_primitives_sim.h that follows the PTX ISA's definition (fragment
// layouts, cp.async groups) on the CPU. Kernels call only these wrappers, so the GPU build
// and the simulator run the same kernel code.
//
// Section names below are those of the PTX ISA ("Parallel Thread Execution ISA").
//
// Call sites (simulator): warp collectives are matched by call site, and errors name it.
// Each wrapper takes a last parameter `CallerSite site = {}`; in the simulator its
// constructor's default arguments __builtin_FILE() / __builtin_LINE() are evaluated where
// the wrapper is called, so the site is the caller's line (g++ does that for a default
// argument, or one nested in a default argument's constructor call, but not for the
// builtins inside a braced initializer). Under nvcc CallerSite is an empty struct that
// costs nothing. A helper that wraps these wrappers reports its own line.
#pragma once

#include <cstdint>

#include "cuda_headers.cuh"

namespace overfeat_kernels {

#ifdef OVERFEAT_SIM
struct CallerSite {
  CallerSite(const char* file = __builtin_FILE(), int line = __builtin_LINE()) : site{file, line} {}
  operator ::ovk_sim::Site() const { return site; }
  ::ovk_sim::Site site;
};
#else
struct CallerSite {};
#endif

// ---- fragment coordinates ---------------------------------------------------------------
// Row and column, in the warp's matrix, of element i of a lane's fragment: the formulas of
// "Matrix Fragments for mma.m16n8k16 with floating point type" and "Matrix Fragments for
// mma.m16n8k8" (.tf32). groupID = lane >> 2, threadID_in_group = lane % 4. Elements are
// numbered low to high: for .f16/.bf16, element i sits in register i / 2, half i % 2
// (low half first); for .tf32 and the f32 accumulators, element i is register i.
struct RowCol {
  int row, col;
};

// A (16x16, .f16/.bf16), i = 0..7: rows g (a0 a1 a4 a5) or g + 8; cols 2t + (i & 1),
// plus 8 for i >= 4.
__host__ __device__ constexpr RowCol mma_m16n8k16_a(int lane, int i) {
  return {(lane >> 2) + 8 * ((i >> 1) & 1), 2 * (lane & 3) + (i & 1) + 8 * (i >> 2)};
}
// B (16x8, .f16/.bf16), i = 0..3: rows 2t + (i & 1), + 8 for i >= 2; col g.
__host__ __device__ constexpr RowCol mma_m16n8k16_b(int lane, int i) {
  return {2 * (lane & 3) + (i & 1) + 8 * (i >> 1), lane >> 2};
}
// A (16x8, .tf32), i = 0..3: rows g (a0 a2) or g + 8 (a1 a3); cols t (a0 a1) or t + 4.
__host__ __device__ constexpr RowCol mma_m16n8k8_tf32_a(int lane, int i) {
  return {(lane >> 2) + 8 * (i & 1), (lane & 3) + 4 * (i >> 1)};
}
// B (8x8, .tf32), i = 0..1: row t (b0) or t + 4 (b1); col g.
__host__ __device__ constexpr RowCol mma_m16n8k8_tf32_b(int lane, int i) {
  return {(lane & 3) + 4 * i, lane >> 2};
}
// C and D (16x8, .f32), both shapes, i = 0..3: rows g (c0 c1) or g + 8; cols 2t + (i & 1).
__host__ __device__ constexpr RowCol mma_m16n8_c(int lane, int i) {
  return {(lane >> 2) + 8 * (i >> 1), 2 * (lane & 3) + (i & 1)};
}

}  // namespace overfeat_kernels

// The wrappers: their PTX here, their simulator bodies (same names and signatures) in
// csrc/sim/ptx_primitives_sim.h.
#ifdef OVERFEAT_SIM
#include "../sim/ptx_primitives_sim.h"
#else
namespace overfeat_kernels {

// ---- mma: "Multiply-and-Accumulate Instruction: mma" -------------------------------------
// D = A * B + C for the warp; a, b, c, d are this lane's fragments (layouts above). All 32
// lanes must execute it together (.sync.aligned).

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (a: 4 x bf16x2, b: 2 x bf16x2)
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4],
                                                  const uint32_t b[2], const float c[4],
                                                  CallerSite site = {}) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
        "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 (a: 4 x f16x2, b: 2 x f16x2)
__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4],
                                                 const uint32_t b[2], const float c[4],
                                                 CallerSite site = {}) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
        "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (a: 4 x tf32, b: 2 x tf32; the low 13
// bits of each a/b register are ignored, as by the tensor core)
__device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const uint32_t a[4],
                                                 const uint32_t b[2], const float c[4],
                                                 CallerSite site = {}) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
        "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

// ---- ldmatrix: "Warp-level matrix load instruction: ldmatrix" ----------------------------
// Loads 1, 2 or 4 8x8 b16 matrices from shared memory; `row` is this lane's row address
// (16 bytes, 16-byte aligned; lanes 8j..8j+7 give matrix j's rows 0..7; for x1 only lanes
// 0-7 and for x2 only lanes 0-15 matter). All 32 lanes must execute it together. The
// ordering with the shared-memory writes it reads comes from the barrier before it.

// ldmatrix.sync.aligned.m8n8.x1.shared.b16
__device__ __forceinline__ void ldmatrix_x1(uint32_t r[1], const void* row,
                                            CallerSite site = {}) {
  const auto p = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(p));
}

// ldmatrix.sync.aligned.m8n8.x2.shared.b16
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* row,
                                            CallerSite site = {}) {
  const auto p = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(p));
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row,
                                            CallerSite site = {}) {
  const auto p = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(p));
}

// ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 (each 8x8 matrix transposed)
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t r[1], const void* row,
                                                  CallerSite site = {}) {
  const auto p = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(p));
}

// ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* row,
                                                  CallerSite site = {}) {
  const auto p = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(p));
}

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row,
                                                  CallerSite site = {}) {
  const auto p = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(p));
}

// ---- cp.async: "Data Movement and Conversion Instructions: cp.async" ---------------------
// Starts a copy of 4, 8 or 16 bytes from global to shared memory (both aligned to the
// size). The data may be read only after the cp.async.wait_group that completes its group
// (the simulator writes it there, not before). The _zfill forms copy src_bytes (0 ..
// size) and fill the rest of the destination with zeros (the src-size operand). .cg
// (L2 only) takes only 16 bytes, so 4 and 8 use .ca.

// cp.async.ca.shared.global [dst], [src], 4
__device__ __forceinline__ void cp_async_4(void* dst, const void* src,
                                           CallerSite site = {}) {
  const auto d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src) : "memory");
}

// cp.async.ca.shared.global [dst], [src], 8
__device__ __forceinline__ void cp_async_8(void* dst, const void* src,
                                           CallerSite site = {}) {
  const auto d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(d), "l"(src) : "memory");
}

// cp.async.cg.shared.global [dst], [src], 16
__device__ __forceinline__ void cp_async_16(void* dst, const void* src,
                                            CallerSite site = {}) {
  const auto d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}

// cp.async.ca.shared.global [dst], [src], 4, src_bytes
__device__ __forceinline__ void cp_async_4_zfill(void* dst, const void* src, int src_bytes,
                                                 CallerSite site = {}) {
  const auto d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src),
               "r"(src_bytes)
               : "memory");
}

// cp.async.ca.shared.global [dst], [src], 8, src_bytes
__device__ __forceinline__ void cp_async_8_zfill(void* dst, const void* src, int src_bytes,
                                                 CallerSite site = {}) {
  const auto d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(d), "l"(src),
               "r"(src_bytes)
               : "memory");
}

// cp.async.cg.shared.global [dst], [src], 16, src_bytes
__device__ __forceinline__ void cp_async_16_zfill(void* dst, const void* src, int src_bytes,
                                                  CallerSite site = {}) {
  const auto d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
               "r"(src_bytes)
               : "memory");
}

// cp.async.cg.shared.global [dst], [src], 16, ignore-src: with `ignore_src` true nothing is
// read (src is not accessed, so it may point anywhere, e.g. past a border) and the 16
// bytes are zero-filled. The predicate form lets ptxas test a bit instead of building a
// src-size operand: the implicit GEMM's loader issues one of these per row per k-block.
__device__ __forceinline__ void cp_async_16_ignore_src(void* dst, const void* src, bool ignore_src,
                                                       CallerSite site = {}) {
  const auto d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n"
      " cp.async.cg.shared.global [%0], [%1], 16, p;\n}\n" ::"r"(d),
      "l"(src), "r"(static_cast<int>(ignore_src))
      : "memory");
}

// cp.async.commit_group: the copies issued since the last commit form a new group
// ("Data Movement and Conversion Instructions: cp.async.commit_group").
__device__ __forceinline__ void cp_async_commit_group() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// cp.async.wait_group N: waits until at most the N most recent groups are pending
// ("Data Movement and Conversion Instructions: cp.async.wait_group / cp.async.wait_all").
// N is an immediate in PTX, hence the template. Other threads see the data only after a
// barrier that follows the wait.
template <int N>
__device__ __forceinline__ void cp_async_wait_group(CallerSite site = {}) {
  static_assert(N >= 0, "cp.async.wait_group needs N >= 0");
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// cp.async.wait_all: commit_group then wait_group 0 (same ISA section), so it also waits
// for copies not yet committed.
__device__ __forceinline__ void cp_async_wait_all(CallerSite site = {}) {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

// ---- conversions for the tensor-core operands ("Data Movement and Conversion
// Instructions: cvt") ---------------------------------------------------------------------

// cvt.rna.tf32.f32: round to 10 mantissa bits, to nearest with ties away from zero, and
// return the .tf32 bit pattern as mma's a/b registers take it (low 13 bits zero; as a
// float it is the rounded value). Overflow past the largest tf32 gives infinity; infinity
// stays; NaN gives a NaN (the ISA does not specify its payload: the simulator keeps the
// sign and top payload bits and sets the quiet bit, so a NaN cannot turn into infinity).
__device__ __forceinline__ uint32_t float_to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// cvt.rn.bf16x2.f32: two floats to bf16 (round to nearest even) packed in one register,
// `lo` in the low half: the element order of mma's .bf16x2 fragments.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));  // a -> upper half
  return r;
}

// cvt.rn.f16x2.f32: the same for f16.
__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));  // a -> upper half
  return r;
}

}  // namespace overfeat_kernels
#endif  // OVERFEAT_SIM

namespace overfeat_kernels {

// ---- the ReLU mask of a gradient ("Comparison and Selection Instructions: set") ----------
// g's elements where the matching element of m (the ReLU's output) is > 0, zero where it
// is not (negative, ±0, NaN): what backward through ReLU does to grad_output. One register
// holds two f16 / bf16 elements (low half first) or one float.

// Two 16-bit floats at once in integer arithmetic: h > 0 exactly when its bits, as an
// unsigned number, lie in [1, infinity's bits] (sign clear, not zero, not NaN).
__host__ __device__ __forceinline__ uint32_t positive_halves(uint32_t m, uint32_t inf_bits) {
  const uint32_t lo = (m & 0xFFFFu) - 1u, hi = (m >> 16) - 1u;
  return (lo < inf_bits ? 0x0000FFFFu : 0u) | (hi < inf_bits ? 0xFFFF0000u : 0u);
}

// set.gt.u32.f16x2 (sm_53+): all-ones halves where m > 0.
__device__ __forceinline__ uint32_t keep_where_positive_f16x2(uint32_t g, uint32_t m) {
#ifdef OVERFEAT_SIM
  return g & positive_halves(m, 0x7C00u);
#else
  uint32_t keep;
  asm("set.gt.u32.f16x2 %0, %1, %2;\n" : "=r"(keep) : "r"(m), "r"(0u));
  return g & keep;
#endif
}

// set.gt.u32.bf16x2 needs sm_90; sm_80 compares the bits as integers.
__device__ __forceinline__ uint32_t keep_where_positive_bf16x2(uint32_t g, uint32_t m) {
#if defined(OVERFEAT_SIM) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ < 900
  return g & positive_halves(m, 0x7F80u);
#else
  uint32_t keep;
  asm("set.gt.u32.bf16x2 %0, %1, %2;\n" : "=r"(keep) : "r"(m), "r"(0u));
  return g & keep;
#endif
}

__device__ __forceinline__ uint32_t keep_where_positive_f32(uint32_t g, uint32_t m) {
  return __uint_as_float(m) > 0.f ? g : 0u;
}

}  // namespace overfeat_kernels
