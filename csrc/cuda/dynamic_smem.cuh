// Dynamic shared memory: the bytes a launch asks for beyond the kernel's static __shared__
// arrays (launch_kernel's `dynamic_smem`; above 48 KB only after set_max_dynamic_smem, up to
// 227 KB on an H100). Under nvcc it is the kernel's `extern __shared__` array; in the
// simulator, the block's buffer, poisoned like the rest of shared memory.
#pragma once

#include <cstdint>

#include "cuda_headers.cuh"

namespace overfeat_kernels {

// The start of the launch's dynamic shared memory, 16-byte aligned, as a T*.
template <typename T>
__device__ __forceinline__ T* dynamic_shared_memory() {
#ifdef OVERFEAT_SIM
  return reinterpret_cast<T*>(ovk_sim::dynamic_shared_memory());
#else
  extern __shared__ __align__(16) unsigned char overfeat_dynamic_smem[];
  return reinterpret_cast<T*>(overfeat_dynamic_smem);
#endif
}

// `p` rounded up to a multiple of `to` bytes (a power of two): swizzled TMA boxes and wgmma
// operands need 1024-byte aligned tiles, and the launch guarantees only 16.
__device__ __forceinline__ unsigned char* align_up(unsigned char* p, uintptr_t to) {
  return reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(p) + to - 1) & ~(to - 1));
}

}  // namespace overfeat_kernels
