// 16-byte vector loads and stores for the bandwidth-bound kernels.
#pragma once

#include <ATen/ATen.h>

#include "cuda_headers.cuh"

#include <cstdint>

namespace overfeat_kernels {

constexpr int kVectorBytes = 16;

// kSize elements as one 16-byte word. A union, so that filling v element by element and
// then moving u (or the reverse) is well defined in both builds: the simulator's host
// compiler would otherwise drop element stores that are read back only as a uint4 (strict
// aliasing).
template <typename T>
union alignas(kVectorBytes) Vec16 {
  static constexpr int kSize = kVectorBytes / sizeof(T);
  T v[kSize];
  uint4 u;
};

template <typename T>
__device__ __forceinline__ Vec16<T> load16(const T* p) {
  Vec16<T> r;
  r.u = __ldg(reinterpret_cast<const uint4*>(p));
  return r;
}

template <typename T>
__device__ __forceinline__ void store16(T* p, const Vec16<T>& x) {
  *reinterpret_cast<uint4*>(p) = x.u;
}

// Dense channels_last with whole 16-byte vectors per pixel at 16-byte aligned addresses:
// the layout the vectorised kernels need (anything else takes the generic kernels).
inline bool channels_last_vectorizable(const at::Tensor& t) {
  return t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast) &&
         (t.size(1) * t.element_size()) % kVectorBytes == 0 &&
         reinterpret_cast<uintptr_t>(t.const_data_ptr()) % kVectorBytes == 0;
}

}  // namespace overfeat_kernels
