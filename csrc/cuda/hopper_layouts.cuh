// Index math of Hopper's tensor-core and TMA operands, shared by the kernels (host and
// device) and by the simulator's models of wgmma and TMA: fragment coordinates of
// wgmma's registers, the shared-memory matrix descriptor, the canonical shared-memory
// layouts a descriptor names, and the swizzle modes. Section numbers are those of the
// PTX ISA 8.x ("Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions").
#pragma once

#include <cstdint>

#include "cuda_headers.cuh"

namespace overfeat_kernels::hopper {

// ---- swizzle (ISA "Tensor-map swizzle modes"; the same function for TMA and wgmma) ------
// Encoded as the descriptor's layout-type field (bits 63-62).
enum class Swizzle : uint32_t { kNone = 0, k128B = 1, k64B = 2, k32B = 3 };

// Bytes of one swizzled row (the span whose 16-byte chunks are permuted): 16 for none.
__host__ __device__ constexpr uint32_t swizzle_bytes(Swizzle s) {
  return s == Swizzle::k128B ? 128 : s == Swizzle::k64B ? 64 : s == Swizzle::k32B ? 32 : 16;
}

// The swizzled shared address of `address`: the 16-byte chunk index (bits 4..) is XORed
// with the address's 128-byte row index (bits 7..) modulo 8, 4 or 2 for 128B, 64B, 32B.
// The pattern repeats every 1024, 512 or 256 bytes, and is a function of the absolute
// address, so operands of swizzled layouts are placed at multiples of that period.
__host__ __device__ constexpr uint32_t swizzle_address(uint32_t address, Swizzle s) {
  const uint32_t mask = s == Swizzle::k128B ? 7u : s == Swizzle::k64B ? 3u : s == Swizzle::k32B ? 1u : 0u;
  return address ^ (((address >> 7) & mask) << 4);
}

// ---- the shared-memory matrix descriptor (9.7.15.5.1.2.2 "Matrix Descriptor Format") ----
// bits 13-0: start address >> 4; 29-16: leading dimension byte offset >> 4; 45-32: stride
// dimension byte offset >> 4; 51-49: base offset; 63-62: swizzle mode. Addresses and
// offsets are 16-byte multiples below 256 KB.
struct MatrixDesc {
  uint32_t start, leading, stride;  // bytes
  uint32_t base_offset;
  Swizzle swizzle;
};

__host__ __device__ constexpr uint64_t encode_matrix_desc(uint32_t start, uint32_t leading,
                                                          uint32_t stride, Swizzle swizzle,
                                                          uint32_t base_offset = 0) {
  return uint64_t((start & 0x3FFFF) >> 4) | (uint64_t((leading & 0x3FFFF) >> 4) << 16) |
         (uint64_t((stride & 0x3FFFF) >> 4) << 32) | (uint64_t(base_offset & 7) << 49) |
         (uint64_t(swizzle) << 62);
}

__host__ __device__ constexpr MatrixDesc decode_matrix_desc(uint64_t d) {
  return {static_cast<uint32_t>(d & 0x3FFF) << 4, static_cast<uint32_t>((d >> 16) & 0x3FFF) << 4,
          static_cast<uint32_t>((d >> 32) & 0x3FFF) << 4, static_cast<uint32_t>((d >> 49) & 7),
          static_cast<Swizzle>((d >> 62) & 3)};
}

// ---- canonical layouts (9.7.15.5.1.2 "Shared Memory Matrix Layout") ---------------------
// The byte offset from the descriptor's start address, before swizzling, of element
// (mn, k) of an operand of `elem` bytes per element: mn is the row of A (M) or of B (N),
// k the reduction index within one instruction (K = 32 bytes of elements).
//
// K-major (the operand's K elements contiguous): 8 rows of a "core matrix" or of a swizzle
// atom lie `swizzle_bytes` apart (16 without swizzle: the 8 x 16-byte core matrix is
// contiguous); groups of 8 rows lie `stride` (SBO) apart; along K, without swizzle, the two
// 16-byte halves of the instruction's K lie `leading` (LBO) apart, and in a swizzled layout
// they are adjacent chunks of the row (LBO unused).
//
// MN-major (the operand's M or N elements contiguous, 16-bit types only): a row holds
// `swizzle_bytes` of consecutive mn; 8 such rows (k, k + 1, ... k + 7) lie swizzle_bytes
// apart; the next group of 8 k lies `stride` (SBO) apart, and the next block of mn (each
// swizzle_bytes wide) lies `leading` (LBO) apart. Without swizzle the core matrix is
// 8 k-rows of 16 bytes of mn; the next 8 mn lie `stride` apart and the next 8 k `leading`.
__host__ __device__ constexpr uint32_t canonical_offset(bool k_major, Swizzle s, uint32_t leading,
                                                        uint32_t stride, uint32_t elem, int mn, int k) {
  const uint32_t row_bytes = swizzle_bytes(s);
  if (k_major) {
    const uint32_t kb = static_cast<uint32_t>(k) * elem;  // byte within the K extent
    const uint32_t row = static_cast<uint32_t>(mn % 8) * row_bytes + static_cast<uint32_t>(mn / 8) * stride;
    if (s == Swizzle::kNone) return row + (kb / 16) * leading + kb % 16;
    return row + kb;
  }
  const uint32_t mnb = static_cast<uint32_t>(mn) * elem;  // byte along MN
  const uint32_t krow = static_cast<uint32_t>(k % 8) * row_bytes;
  if (s == Swizzle::kNone) {
    return krow + static_cast<uint32_t>(k / 8) * leading + (mnb / 16) * stride + mnb % 16;
  }
  return krow + static_cast<uint32_t>(k / 8) * stride + (mnb / row_bytes) * leading + mnb % row_bytes;
}

// The swizzled shared address of element (mn, k) of the operand a descriptor names.
__host__ __device__ constexpr uint32_t operand_address(const MatrixDesc& d, bool k_major,
                                                       uint32_t elem, int mn, int k) {
  return swizzle_address(d.start + canonical_offset(k_major, d.swizzle, d.leading, d.stride, elem, mn, k),
                         d.swizzle);
}

// ---- register fragments (9.7.15.5.1.1 "Register Fragments") ----------------------------
struct RowCol {
  int row, col;
};
// Accumulator D (64 x N, f32) of thread t (0..127) of the warpgroup, register i (0..N/2-1):
// warp t / 32 holds rows 16 (t / 32) .. + 15, as N / 8 m16n8 C fragments side by side.
__host__ __device__ constexpr RowCol wgmma_d(int t, int i) {
  return {16 * (t / 32) + (t % 32) / 4 + 8 * ((i >> 1) & 1), 2 * (t % 4) + (i & 1) + 8 * (i >> 2)};
}
// A from registers (64 x 16, f16/bf16), element i (0..7; element i is half i % 2 of
// register i / 2): each warp holds an m16n8k16 A fragment of its 16 rows.
__host__ __device__ constexpr RowCol wgmma_a_k16(int t, int i) {
  return {16 * (t / 32) + (t % 32) / 4 + 8 * ((i >> 1) & 1), 2 * (t % 4) + (i & 1) + 8 * (i >> 2)};
}
// A from registers (64 x 8, tf32), register i (0..3): rows g (a0 a2) or g + 8, cols t (a0
// a1) or t + 4, in the warp's 16 rows.
__host__ __device__ constexpr RowCol wgmma_a_k8_tf32(int t, int i) {
  return {16 * (t / 32) + (t % 32) / 4 + 8 * (i & 1), (t % 4) + 4 * (i >> 1)};
}

}  // namespace overfeat_kernels::hopper
