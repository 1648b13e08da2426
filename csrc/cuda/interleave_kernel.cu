// Interleave / deinterleave on CUDA: a permutation, one grid-stride pass over the output
// in its memory order (coalesced writes), gathering through the shared index math.
// Instantiated per element width, so every dtype of 1-8 bytes is served.
#include <torch/library.h>

#include "../checks.h"
#include "../dispatch.h"
#include "launch.cuh"
#include "vector_io.cuh"

namespace overfeat_kernels {
namespace {

template <typename T, bool kInterleave, bool kChannelsLast>
__global__ void permute_kernel(const T* __restrict__ in, Strides4 in_s, int64_t k,
                               Shape4 out_shape, T* __restrict__ out, int64_t numel) {
  for (int64_t idx = global_thread_index(); idx < numel; idx += grid_stride()) {
    const Coord4 c = unravel(idx, out_shape, kChannelsLast);
    out[idx] = in[kInterleave ? interleave_source(in_s, k, c) : deinterleave_source(in_s, k, c)];
  }
}

template <bool kInterleave>
at::Tensor permute_cuda(const at::Tensor& input, int64_t k, const Shape4& out_shape) {
  at::Tensor out = empty_in_format_of({out_shape.n, out_shape.c, out_shape.h, out_shape.w}, input);
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = current_stream();
  if (channels_last_vectorizable(input) && channels_last_vectorizable(out)) {
    // Dense channels_last, whole 16-byte vectors per pixel: the same permutation with
    // 16-byte elements (a pixel's channels move together), in units of vectors.
    const int64_t vectors = input.size(1) * input.element_size() / kVectorBytes;
    const Shape4 in_v{input.size(0), vectors, input.size(2), input.size(3)};
    const Strides4 in_vs{vectors * in_v.h * in_v.w, 1, vectors * in_v.w, vectors};
    const Shape4 out_v{out_shape.n, vectors, out_shape.h, out_shape.w};
    const int64_t total = numel / (kVectorBytes / input.element_size());
    launch_kernel<permute_kernel<uint4, kInterleave, true>>(
        elementwise_blocks(total), kElementwiseThreads, 0, stream,
            static_cast<const uint4*>(input.const_data_ptr()), in_vs, k, out_v,
            static_cast<uint4*>(out.mutable_data_ptr()), total);
    return out;
  }
  dispatch_by_element_size(input, kInterleave ? "interleave" : "deinterleave", [&](auto tag) {
    using T = decltype(tag);
    bool_switch(is_channels_last(input), [&](auto cl) {
      launch_kernel<permute_kernel<T, kInterleave, decltype(cl)::value>>(
          elementwise_blocks(numel), kElementwiseThreads, 0, stream,
              static_cast<const T*>(input.const_data_ptr()), strides4(input), k, out_shape,
              static_cast<T*>(out.mutable_data_ptr()), numel);
    });
  });
  return out;
}

at::Tensor interleave_cuda(const at::Tensor& input, int64_t kernel_size) {
  return permute_cuda<true>(input, kernel_size, check_interleave_args(input, kernel_size));
}

at::Tensor deinterleave_cuda(const at::Tensor& input, int64_t kernel_size) {
  return permute_cuda<false>(input, kernel_size, check_deinterleave_args(input, kernel_size));
}

}  // namespace

OVERFEAT_CUDA_LIBRARY_IMPL(m) {
  m.impl("interleave", &interleave_cuda);
  m.impl("deinterleave", &deinterleave_cuda);
}

}  // namespace overfeat_kernels
