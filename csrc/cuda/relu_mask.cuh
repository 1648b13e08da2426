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

}  // namespace overfeat_kernels
