// mbarrier primitives (PTX ISA, "Parallel synchronization and communication instructions:
// mbarrier"), each a named wrapper around its instruction; the simulator's bodies, same
// names, are in csrc/sim/mbarrier_sim.h. The foundation of the Hopper kernels' pipelines:
// a barrier in shared memory whose phases complete when the expected arrivals and the
// announced bytes (transaction count, for TMA) are in; waiters test a phase's parity.
//
// Usage, a ring slot s of a producer / consumer pipeline (use u of the slot = round / slots):
//   producer: mbarrier_wait_parity(&empty[s], (u - 1) & 1) for u > 0; fill; mbarrier_arrive(&full[s])
//   consumer: mbarrier_wait_parity(&full[s], u & 1); read; mbarrier_arrive(&empty[s])
#pragma once

#include <cstdint>

#include "cuda_headers.cuh"

#ifdef OVERFEAT_SIM
#include "../sim/mbarrier_sim.h"
#else
namespace overfeat_kernels {

__device__ __forceinline__ uint32_t mbarrier_smem(const uint64_t* bar) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(bar));
}

// mbarrier.init: expected arrivals `count` (1 .. 2^20 - 1), phase 0, tx-count 0.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(mbarrier_smem(bar)), "r"(count)
               : "memory");
}

// fence.mbarrier_init: the inits visible before other threads or the async proxy use them.
__device__ __forceinline__ void mbarrier_fence_init() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif  // before sm_90: no async proxy, no cluster; the __syncthreads after the inits suffice
}

__device__ __forceinline__ uint64_t mbarrier_arrive(uint64_t* bar) {
  uint64_t state;
  asm volatile("mbarrier.arrive.shared::cta.b64 %0, [%1];"
               : "=l"(state)
               : "r"(mbarrier_smem(bar))
               : "memory");
  return state;
}

// The sm_90 instructions below are declared for every architecture (host and sm_80 passes
// included) and trap where the GPU lacks them, so a kernel that calls one compiles
// everywhere and fails loudly, not silently, on an older GPU.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define OVERFEAT_SM90_ONLY(body) __trap()
#else
#define OVERFEAT_SM90_ONLY(body) body
#endif

// `count` arrivals at once (sm_90).
__device__ __forceinline__ uint64_t mbarrier_arrive_count(uint64_t* bar, uint32_t count) {
  uint64_t state = 0;
  OVERFEAT_SM90_ONLY(asm volatile("mbarrier.arrive.shared::cta.b64 %0, [%1], %2;"
                                  : "=l"(state)
                                  : "r"(mbarrier_smem(bar)), "r"(count)
                                  : "memory"));
  return state;
}

// expect-tx of `bytes`, then one arrival (sm_90).
__device__ __forceinline__ uint64_t mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  uint64_t state = 0;
  OVERFEAT_SM90_ONLY(asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 %0, [%1], %2;"
                                  : "=l"(state)
                                  : "r"(mbarrier_smem(bar)), "r"(bytes)
                                  : "memory"));
  return state;
}

// Raises the current phase's tx-count by `bytes` (sm_90).
__device__ __forceinline__ void mbarrier_expect_tx(uint64_t* bar, uint32_t bytes) {
  OVERFEAT_SM90_ONLY(asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;" ::"r"(
                                      mbarrier_smem(bar)),
                                  "r"(bytes)
                                  : "memory"));
}

// Waits a while (a hardware time limit) for the phase of parity `parity` to complete (sm_90).
__device__ __forceinline__ bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  OVERFEAT_SM90_ONLY(asm volatile(
      "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      " selp.u32 %0, 1, 0, p;\n}"
      : "=r"(done)
      : "r"(mbarrier_smem(bar)), "r"(parity)
      : "memory"));
  return done != 0;
}
#undef OVERFEAT_SM90_ONLY

// Whether the phase of parity `parity` has completed, without waiting.
__device__ __forceinline__ bool mbarrier_test_wait_parity(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n .reg .pred p;\n mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      " selp.u32 %0, 1, 0, p;\n}"
      : "=r"(done)
      : "r"(mbarrier_smem(bar)), "r"(parity)
      : "memory");
  return done != 0;
}

// Blocks until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbarrier_wait_parity(uint64_t* bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  while (!mbarrier_try_wait_parity(bar, parity)) {
  }
#else
  while (!mbarrier_test_wait_parity(bar, parity)) {
  }
#endif
}

}  // namespace overfeat_kernels
#endif
