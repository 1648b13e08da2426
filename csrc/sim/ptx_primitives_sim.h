// The simulator's bodies of the tensor-core and async-copy primitives
// (csrc/cuda/ptx_primitives.cuh holds their PTX and the fragment coordinates both use): the
// same names and signatures, over the simulator's warp collectives and cp.async model
// (runtime.h), following the PTX ISA's definitions. Included by ptx_primitives.cuh only.
#pragma once

#include <cmath>
#include <cstring>
#include <string>

namespace overfeat_kernels {

namespace sim {

enum class MmaType { BF16, F16, TF32 };

struct MmaIn {
  uint32_t a[4], b[2];
  float c[4];
};
struct MmaOut {
  float d[4];
};

// Element i of a lane's A or B fragment, as a number (exact in double).
template <MmaType kType>
double mma_operand(const uint32_t* regs, int i) {
  if constexpr (kType == MmaType::TF32) {
    return __uint_as_float(regs[i] & 0xFFFFE000u);  // the tensor core reads only the top 19 bits
  } else {
    const auto half = static_cast<uint16_t>(regs[i / 2] >> (16 * (i % 2)));
    if constexpr (kType == MmaType::BF16) {
      return static_cast<float>(c10::BFloat16(half, c10::BFloat16::from_bits()));
    } else {
      return static_cast<float>(c10::Half(half, c10::Half::from_bits()));
    }
  }
}

// D = A * B + C for the whole warp, from the 32 lanes' fragments. Products of
// bf16/f16/tf32 numbers are exact; the sum is taken in double and rounded to float once.
// The tensor core's own accumulation order and rounding are not IEEE (and differ between
// GPU generations), so results agree with a GPU to a tolerance, not bitwise.
template <MmaType kType>
struct MmaCombine {
  static constexpr int K = kType == MmaType::TF32 ? 8 : 16;
  static void apply(const MmaIn* in, MmaOut* out, uint32_t /*mask*/) {
    double a[16][K], b[K][8], c[16][8];
    for (int lane = 0; lane < 32; ++lane) {
      for (int i = 0; i < (K == 16 ? 8 : 4); ++i) {
        const RowCol p = K == 16 ? mma_m16n8k16_a(lane, i) : mma_m16n8k8_tf32_a(lane, i);
        a[p.row][p.col] = mma_operand<kType>(in[lane].a, i);
      }
      for (int i = 0; i < (K == 16 ? 4 : 2); ++i) {
        const RowCol p = K == 16 ? mma_m16n8k16_b(lane, i) : mma_m16n8k8_tf32_b(lane, i);
        b[p.row][p.col] = mma_operand<kType>(in[lane].b, i);
      }
      for (int i = 0; i < 4; ++i) {
        const RowCol p = mma_m16n8_c(lane, i);
        c[p.row][p.col] = in[lane].c[i];
      }
    }
    for (int lane = 0; lane < 32; ++lane) {
      for (int i = 0; i < 4; ++i) {
        const RowCol p = mma_m16n8_c(lane, i);
        double s = c[p.row][p.col];
        for (int k = 0; k < K; ++k) s += a[p.row][k] * b[k][p.col];
        out[lane].d[i] = static_cast<float>(s);
      }
    }
  }
};

template <MmaType kType>
void mma(const char* what, ::ovk_sim::Site site, float* d, const uint32_t* a, const uint32_t* b,
         const float* c) {
  MmaIn in;
  std::memcpy(in.a, a, sizeof in.a);
  std::memcpy(in.b, b, sizeof in.b);
  std::memcpy(in.c, c, sizeof in.c);
  const MmaOut o = ::ovk_sim::collective<MmaIn, MmaOut, MmaCombine<kType>>(
      what, site, 0xFFFFFFFFu, /*full_warp=*/true, in);
  std::memcpy(d, o.d, sizeof o.d);
}

struct LdmatrixIn {
  const unsigned char* row;
};
template <int kNum>
struct LdmatrixOut {
  uint32_t r[kNum];
};

// "Warp-level matrix load instruction: ldmatrix": lanes 8j..8j+7 give the row addresses
// of matrix j; register j of lane l holds row l >> 2 of matrix j (of its transpose with
// .trans), columns 2 (l % 4) and 2 (l % 4) + 1, the lower column in the low half.
template <int kNum, bool kTrans>
struct LdmatrixCombine {
  static void apply(const LdmatrixIn* in, LdmatrixOut<kNum>* out, uint32_t /*mask*/) {
    uint16_t m[kNum][8][8];
    for (int j = 0; j < kNum; ++j) {
      for (int r = 0; r < 8; ++r) std::memcpy(m[j][r], in[8 * j + r].row, 16);
    }
    for (int lane = 0; lane < 32; ++lane) {
      const int r = lane >> 2, c = 2 * (lane & 3);
      for (int j = 0; j < kNum; ++j) {
        const uint32_t lo = kTrans ? m[j][c][r] : m[j][r][c];
        const uint32_t hi = kTrans ? m[j][c + 1][r] : m[j][r][c + 1];
        out[lane].r[j] = lo | (hi << 16);
      }
    }
  }
};

template <int kNum, bool kTrans>
void ldmatrix(const char* what, ::ovk_sim::Site site, uint32_t* r, const void* row) {
  // Only lanes 0 .. 8 kNum - 1 give addresses (sm_80+ ignores the others').
  if (::ovk_sim::lane_id() < 8u * kNum) {
    if (reinterpret_cast<uintptr_t>(row) % 16 != 0) {
      ::ovk_sim::fail(site, std::string(what) + ": lane " + std::to_string(::ovk_sim::lane_id()) +
                                " gives a row address that is not 16-byte aligned");
    }
    if (!::ovk_sim::in_shared_memory(row, 16)) {
      ::ovk_sim::fail(site, std::string(what) + ": lane " + std::to_string(::ovk_sim::lane_id()) +
                                " gives a row address outside this kernel's shared memory");
    }
  }
  using Combine = LdmatrixCombine<kNum, kTrans>;
  const auto o = ::ovk_sim::collective<LdmatrixIn, LdmatrixOut<kNum>, Combine>(
      what, site, 0xFFFFFFFFu, /*full_warp=*/true,
      LdmatrixIn{static_cast<const unsigned char*>(row)});
  std::memcpy(r, o.r, sizeof o.r);
}

}  // namespace sim

// ---- mma: "Multiply-and-Accumulate Instruction: mma" -------------------------------------
// D = A * B + C for the warp; a, b, c, d are this lane's fragments (layouts above). All 32
// lanes must execute it together (.sync.aligned).

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (a: 4 x bf16x2, b: 2 x bf16x2)
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4],
                                                  const uint32_t b[2], const float c[4],
                                                  CallerSite site = {}) {
  sim::mma<sim::MmaType::BF16>("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", site, d,
                               a, b, c);
}

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 (a: 4 x f16x2, b: 2 x f16x2)
__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4],
                                                 const uint32_t b[2], const float c[4],
                                                 CallerSite site = {}) {
  sim::mma<sim::MmaType::F16>("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", site, d, a,
                              b, c);
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (a: 4 x tf32, b: 2 x tf32; the low 13
// bits of each a/b register are ignored, as by the tensor core)
__device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const uint32_t a[4],
                                                 const uint32_t b[2], const float c[4],
                                                 CallerSite site = {}) {
  sim::mma<sim::MmaType::TF32>("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", site, d, a,
                               b, c);
}

// ---- ldmatrix: "Warp-level matrix load instruction: ldmatrix" ----------------------------
// Loads 1, 2 or 4 8x8 b16 matrices from shared memory; `row` is this lane's row address
// (16 bytes, 16-byte aligned; lanes 8j..8j+7 give matrix j's rows 0..7; for x1 only lanes
// 0-7 and for x2 only lanes 0-15 matter). All 32 lanes must execute it together. The
// ordering with the shared-memory writes it reads comes from the barrier before it.

// ldmatrix.sync.aligned.m8n8.x1.shared.b16
__device__ __forceinline__ void ldmatrix_x1(uint32_t r[1], const void* row,
                                            CallerSite site = {}) {
  sim::ldmatrix<1, false>("ldmatrix.sync.aligned.m8n8.x1.shared.b16", site, r, row);
}

// ldmatrix.sync.aligned.m8n8.x2.shared.b16
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* row,
                                            CallerSite site = {}) {
  sim::ldmatrix<2, false>("ldmatrix.sync.aligned.m8n8.x2.shared.b16", site, r, row);
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row,
                                            CallerSite site = {}) {
  sim::ldmatrix<4, false>("ldmatrix.sync.aligned.m8n8.x4.shared.b16", site, r, row);
}

// ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 (each 8x8 matrix transposed)
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t r[1], const void* row,
                                                  CallerSite site = {}) {
  sim::ldmatrix<1, true>("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16", site, r, row);
}

// ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* row,
                                                  CallerSite site = {}) {
  sim::ldmatrix<2, true>("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16", site, r, row);
}

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row,
                                                  CallerSite site = {}) {
  sim::ldmatrix<4, true>("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16", site, r, row);
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
  ::ovk_sim::cp_async(site, dst, src, 4, 4);
}

// cp.async.ca.shared.global [dst], [src], 8
__device__ __forceinline__ void cp_async_8(void* dst, const void* src,
                                           CallerSite site = {}) {
  ::ovk_sim::cp_async(site, dst, src, 8, 8);
}

// cp.async.cg.shared.global [dst], [src], 16
__device__ __forceinline__ void cp_async_16(void* dst, const void* src,
                                            CallerSite site = {}) {
  ::ovk_sim::cp_async(site, dst, src, 16, 16);
}

// cp.async.ca.shared.global [dst], [src], 4, src_bytes
__device__ __forceinline__ void cp_async_4_zfill(void* dst, const void* src, int src_bytes,
                                                 CallerSite site = {}) {
  ::ovk_sim::cp_async(site, dst, src, 4, static_cast<uint32_t>(src_bytes));
}

// cp.async.ca.shared.global [dst], [src], 8, src_bytes
__device__ __forceinline__ void cp_async_8_zfill(void* dst, const void* src, int src_bytes,
                                                 CallerSite site = {}) {
  ::ovk_sim::cp_async(site, dst, src, 8, static_cast<uint32_t>(src_bytes));
}

// cp.async.cg.shared.global [dst], [src], 16, src_bytes
__device__ __forceinline__ void cp_async_16_zfill(void* dst, const void* src, int src_bytes,
                                                  CallerSite site = {}) {
  ::ovk_sim::cp_async(site, dst, src, 16, static_cast<uint32_t>(src_bytes));
}

// cp.async.cg.shared.global [dst], [src], 16, ignore-src: with `ignore_src` true nothing is
// read (src is not accessed, so it may point anywhere, e.g. past a border) and the 16
// bytes are zero-filled. The predicate form lets ptxas test a bit instead of building a
// src-size operand: the implicit GEMM's loader issues one of these per row per k-block.
__device__ __forceinline__ void cp_async_16_ignore_src(void* dst, const void* src, bool ignore_src,
                                                       CallerSite site = {}) {
  ::ovk_sim::cp_async(site, dst, src, 16, ignore_src ? 0u : 16u);
}

// cp.async.commit_group: the copies issued since the last commit form a new group
// ("Data Movement and Conversion Instructions: cp.async.commit_group").
__device__ __forceinline__ void cp_async_commit_group() {
  ::ovk_sim::cp_async_commit();
}

// cp.async.wait_group N: waits until at most the N most recent groups are pending
// ("Data Movement and Conversion Instructions: cp.async.wait_group / cp.async.wait_all").
// N is an immediate in PTX, hence the template. Other threads see the data only after a
// barrier that follows the wait.
template <int N>
__device__ __forceinline__ void cp_async_wait_group(CallerSite site = {}) {
  static_assert(N >= 0, "cp.async.wait_group needs N >= 0");
  ::ovk_sim::cp_async_wait(site, N);
}

// cp.async.wait_all: commit_group then wait_group 0 (same ISA section), so it also waits
// for copies not yet committed.
__device__ __forceinline__ void cp_async_wait_all(CallerSite site = {}) {
  ::ovk_sim::cp_async_commit();
  ::ovk_sim::cp_async_wait(site, 0);
}

// ---- conversions for the tensor-core operands ("Data Movement and Conversion
// Instructions: cvt") ---------------------------------------------------------------------

// cvt.rna.tf32.f32: round to 10 mantissa bits, to nearest with ties away from zero, and
// return the .tf32 bit pattern as mma's a/b registers take it (low 13 bits zero; as a
// float it is the rounded value). Overflow past the largest tf32 gives infinity; infinity
// stays; NaN gives a NaN (the ISA does not specify its payload: the simulator keeps the
// sign and top payload bits and sets the quiet bit, so a NaN cannot turn into infinity).
__device__ __forceinline__ uint32_t float_to_tf32(float x) {
  const uint32_t u = __float_as_uint(x);
  if (std::isnan(x)) return (u & 0xFFFFE000u) | 0x00400000u;
  if (std::isinf(x)) return u;
  // Adding half a tf32 ulp to the magnitude bits rounds ties away from zero; a carry out
  // of the mantissa moves to the next binade (or to infinity), as it should.
  return (u + 0x1000u) & 0xFFFFE000u;
}

// cvt.rn.bf16x2.f32: two floats to bf16 (round to nearest even) packed in one register,
// `lo` in the low half: the element order of mma's .bf16x2 fragments.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  return uint32_t(c10::BFloat16(lo).x) | (uint32_t(c10::BFloat16(hi).x) << 16);
}

// cvt.rn.f16x2.f32: the same for f16.
__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
  return uint32_t(c10::Half(lo).x) | (uint32_t(c10::Half(hi).x) << 16);
}

}  // namespace overfeat_kernels
