// wgmma primitives (PTX ISA 9.7.15, "Asynchronous Warpgroup Level Matrix Multiply-
// Accumulate"): each a named wrapper around its instruction, for sm_90a. The simulator's
// bodies, same names, are in csrc/sim/wgmma_sim.h; the index math both use (descriptors,
// layouts, fragments) is in hopper_layouts.cuh.
//
// A warpgroup (128 threads, 4 consecutive warps) issues wgmma_ss / wgmma_rs together:
//   wgmma_fence();                        // before the first wgmma, and after any access
//                                         // to the accumulators outside wgmma
//   wgmma_ss<128, MmaType::kBF16>(acc, desc_a, desc_b, scale_d);  // ... more k steps
//   wgmma_commit_group();
//   wgmma_wait_group<0>();                // acc readable only after this
//
// The simulator asks for a wgmma_fence() after every wait_group that hands accumulators
// back before they feed another wgmma: it cannot see whether the thread touched them,
// which would need the fence (the ISA exempts only untouched accumulators). An A fragment
// in registers must stay alive and unchanged until the wait_group that retires its wgmma.
#pragma once

#include <cstdint>

#include "cuda_headers.cuh"
#include "hopper_layouts.cuh"

namespace overfeat_kernels {

enum class MmaType { kBF16, kF16, kTF32 };

}  // namespace overfeat_kernels

#ifdef OVERFEAT_SIM
#include "../sim/wgmma_sim.h"
#else
namespace overfeat_kernels {

// The instructions exist on sm_90a only (arch-specific features): elsewhere each wrapper
// compiles and traps, so a kernel that calls one fails loudly on another GPU.
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define OVERFEAT_SM90A_ONLY(body) __trap()
#else
#define OVERFEAT_SM90A_ONLY(body) body
#endif

namespace wgmma_asm {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#include "wgmma_asm.inc"
#endif
}  // namespace wgmma_asm

// wgmma.fence.sync.aligned: orders the warpgroup's register accesses before the wgmmas
// that follow (needed before the first wgmma and after touching its registers).
__device__ __forceinline__ void wgmma_fence() {
  OVERFEAT_SM90A_ONLY(asm volatile("wgmma.fence.sync.aligned;" ::: "memory"));
}

// wgmma.commit_group.sync.aligned: the wgmmas issued since the last commit form a group.
__device__ __forceinline__ void wgmma_commit_group() {
  OVERFEAT_SM90A_ONLY(asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"));
}

// wgmma.wait_group.sync.aligned N: waits until at most N groups are pending; the
// accumulators of the retired ones are then readable.
template <int N>
__device__ __forceinline__ void wgmma_wait_group() {
  static_assert(N >= 0 && N <= 7, "wgmma.wait_group takes N in [0, 7]");
  OVERFEAT_SM90A_ONLY(asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"));
}

// D (64 x N, f32, N / 2 registers per thread) = A * B (+ D if scale_d), A (64 x K) and B
// (N x K) from shared memory through matrix descriptors. kTransA / kTransB: the operand is
// MN-major (16-bit types only); kScaleA / kScaleB: +1 or -1.
template <int N, MmaType kType, bool kTransA = false, bool kTransB = false, int kScaleA = 1,
          int kScaleB = 1>
__device__ __forceinline__ void wgmma_ss(float* d, uint64_t desc_a, uint64_t desc_b, bool scale_d) {
  static_assert(N == 64 || N == 128 || N == 256, "wgmma_ss: N is 64, 128 or 256");
  static_assert(kType != MmaType::kTF32 || (!kTransA && !kTransB), "tf32 operands are K-major");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int ta = kTransA, tb = kTransB;
  const uint32_t s = scale_d ? 1u : 0u;
  if constexpr (kType == MmaType::kBF16) {
    if constexpr (N == 64) wgmma_asm::wgmma_ss_m64n64_bf16<kScaleA, kScaleB, ta, tb>(d, desc_a, desc_b, s);
    if constexpr (N == 128) wgmma_asm::wgmma_ss_m64n128_bf16<kScaleA, kScaleB, ta, tb>(d, desc_a, desc_b, s);
    if constexpr (N == 256) wgmma_asm::wgmma_ss_m64n256_bf16<kScaleA, kScaleB, ta, tb>(d, desc_a, desc_b, s);
  } else if constexpr (kType == MmaType::kF16) {
    if constexpr (N == 64) wgmma_asm::wgmma_ss_m64n64_f16<kScaleA, kScaleB, ta, tb>(d, desc_a, desc_b, s);
    if constexpr (N == 128) wgmma_asm::wgmma_ss_m64n128_f16<kScaleA, kScaleB, ta, tb>(d, desc_a, desc_b, s);
    if constexpr (N == 256) wgmma_asm::wgmma_ss_m64n256_f16<kScaleA, kScaleB, ta, tb>(d, desc_a, desc_b, s);
  } else {
    if constexpr (N == 64) wgmma_asm::wgmma_ss_m64n64_tf32<kScaleA, kScaleB, 0, 0>(d, desc_a, desc_b, s);
    if constexpr (N == 128) wgmma_asm::wgmma_ss_m64n128_tf32<kScaleA, kScaleB, 0, 0>(d, desc_a, desc_b, s);
    if constexpr (N == 256) wgmma_asm::wgmma_ss_m64n256_tf32<kScaleA, kScaleB, 0, 0>(d, desc_a, desc_b, s);
  }
#else
  OVERFEAT_SM90A_ONLY((void)0);
#endif
}

// The same with A from registers: a[4] is the thread's A fragment (hopper::wgmma_a_k16 /
// wgmma_a_k8_tf32 give its coordinates).
template <int N, MmaType kType, bool kTransB = false, int kScaleA = 1, int kScaleB = 1>
__device__ __forceinline__ void wgmma_rs(float* d, const uint32_t* a, uint64_t desc_b, bool scale_d) {
  static_assert(N == 64 || N == 128 || N == 256, "wgmma_rs: N is 64, 128 or 256");
  static_assert(kType != MmaType::kTF32 || !kTransB, "tf32 operands are K-major");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int tb = kTransB;
  const uint32_t s = scale_d ? 1u : 0u;
  if constexpr (kType == MmaType::kBF16) {
    if constexpr (N == 64) wgmma_asm::wgmma_rs_m64n64_bf16<kScaleA, kScaleB, 0, tb>(d, a, desc_b, s);
    if constexpr (N == 128) wgmma_asm::wgmma_rs_m64n128_bf16<kScaleA, kScaleB, 0, tb>(d, a, desc_b, s);
    if constexpr (N == 256) wgmma_asm::wgmma_rs_m64n256_bf16<kScaleA, kScaleB, 0, tb>(d, a, desc_b, s);
  } else if constexpr (kType == MmaType::kF16) {
    if constexpr (N == 64) wgmma_asm::wgmma_rs_m64n64_f16<kScaleA, kScaleB, 0, tb>(d, a, desc_b, s);
    if constexpr (N == 128) wgmma_asm::wgmma_rs_m64n128_f16<kScaleA, kScaleB, 0, tb>(d, a, desc_b, s);
    if constexpr (N == 256) wgmma_asm::wgmma_rs_m64n256_f16<kScaleA, kScaleB, 0, tb>(d, a, desc_b, s);
  } else {
    if constexpr (N == 64) wgmma_asm::wgmma_rs_m64n64_tf32<kScaleA, kScaleB, 0, 0>(d, a, desc_b, s);
    if constexpr (N == 128) wgmma_asm::wgmma_rs_m64n128_tf32<kScaleA, kScaleB, 0, 0>(d, a, desc_b, s);
    if constexpr (N == 256) wgmma_asm::wgmma_rs_m64n256_tf32<kScaleA, kScaleB, 0, 0>(d, a, desc_b, s);
  }
#else
  OVERFEAT_SM90A_ONLY((void)0);
#endif
}

// setmaxnreg.{inc,dec}.sync.aligned.u32 (9.7.19.5): the warpgroup's per-thread register
// budget, raised (consumers) or lowered (the producer); every thread of the warpgroup runs
// the same one.
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0, "setmaxnreg: 24..256, a multiple of 8");
  OVERFEAT_SM90A_ONLY(asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegs)));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0, "setmaxnreg: 24..256, a multiple of 8");
  OVERFEAT_SM90A_ONLY(asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegs)));
}

// elect.sync (9.7.13.14): true in one lane of the (full) warp, the same lane every time.
__device__ __forceinline__ bool elect_one_sync() {
  uint32_t elected = 0;
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n .reg .pred p;\n elect.sync _|p, 0xffffffff;\n selp.u32 %0, 1, 0, p;\n}"
      : "=r"(elected));
#else
  __trap();
#endif
  return elected != 0;
}

// A shared-memory matrix descriptor for the operand at `smem` (hopper_layouts.cuh).
__device__ __forceinline__ uint64_t make_matrix_desc(const void* smem, uint32_t leading,
                                                     uint32_t stride, hopper::Swizzle swizzle) {
  return hopper::encode_matrix_desc(static_cast<uint32_t>(__cvta_generic_to_shared(smem)), leading,
                                    stride, swizzle);
}

#undef OVERFEAT_SM90A_ONLY

}  // namespace overfeat_kernels
#endif
