// Launch helpers shared by the CUDA kernels.
#pragma once

// Only light c10 headers: ATen/cuda/CUDAContext.h would pull in cuBLAS / cuSPARSE headers,
// which a minimal CUDA toolkit does not ship and these kernels do not need.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "../index_math.h"

namespace overfeat_kernels {

constexpr int kElementwiseThreads = 256;

// Streaming multiprocessors of the current device.
inline int64_t multiprocessor_count() {
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Blocks for a grid-stride loop over `numel` elements: enough to fill the device many
// times over, never more than the grid allows. Kernels loop, so any numel is covered.
inline unsigned elementwise_blocks(int64_t numel) {
  const int64_t wanted = ceil_div(numel, kElementwiseThreads);
  const int64_t cap = multiprocessor_count() * 64;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(wanted, cap)));
}

// Index of this thread in a grid-stride loop, and the stride, both 64-bit.
__device__ __forceinline__ int64_t global_thread_index() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() { return int64_t(gridDim.x) * blockDim.x; }

}  // namespace overfeat_kernels
