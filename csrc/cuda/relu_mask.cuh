// The ReLU mask of the backward GEMMs: a 16-byte vector of grad_output with the elements
// whose ReLU output (`m`, the matching vector) is not > 0 zeroed. How the mma.sync
// grad-input and grad-weight kernels (conv3x3_igemm.cuh, conv3x3_wgrad_igemm.cuh) and the
// Hopper grad-input (conv3x3_wgmma.cuh) apply the mask as an operand lands in shared memory.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "ptx_primitives.cuh"

namespace overfeat_kernels {

template <typename T>
__device__ __forceinline__ uint32_t keep_where_positive_word(uint32_t g, uint32_t m) {
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    return keep_where_positive_bf16x2(g, m);
  } else if constexpr (std::is_same_v<T, at::Half>) {
    return keep_where_positive_f16x2(g, m);
  } else {
    static_assert(std::is_same_v<T, float>, "bf16, fp16 or float (tf32)");
    return keep_where_positive_f32(g, m);
  }
}

template <typename T>
__device__ __forceinline__ uint4 keep_where_positive(uint4 g, uint4 m) {
  return {keep_where_positive_word<T>(g.x, m.x), keep_where_positive_word<T>(g.y, m.y),
          keep_where_positive_word<T>(g.z, m.z), keep_where_positive_word<T>(g.w, m.w)};
}

// The mask vectors of a thread's grad_output copies in one k-block of the mma.sync
// backward kernels, held in registers: loaded one k-block ahead (their latency hides
// behind a k-block of mma), applied in the stage the copies have just landed in, after
// the thread's wait_group and before the barrier that publishes the stage
// (cp_async_pipeline's `landed`), so ldmatrix reads masked operands and no masked copy of
// grad_output is ever written.
template <typename T, int kRows>
struct StagedMask {
  uint4 v[kRows];

  // load(j): copy j's mask vector (zeros where the copy was zero-filled).
  template <class Load>
  __device__ __forceinline__ void prefetch(const Load& load) {
#pragma unroll
    for (int j = 0; j < kRows; ++j) v[j] = load(j);
  }

  // slot(j): where copy j landed in the stage.
  template <class Slot>
  __device__ __forceinline__ void apply(const Slot& slot) const {
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      uint4* s = slot(j);
      *s = keep_where_positive<T>(*s, v[j]);
    }
  }
};

}  // namespace overfeat_kernels
