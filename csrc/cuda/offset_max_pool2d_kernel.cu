// Offset max-pooling on CUDA: a grid-stride loop over the output (forward) or the input
// (backward), in memory order so that writes coalesce, with the per-element math shared
// with the CPU (index_math.h). The backward gathers, one thread per input pixel, so it is
// deterministic and atomic-free. First, simple versions: the fast ones come later.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../checks.h"
#include "../dispatch.h"
#include "launch.cuh"
#include "vector_io.cuh"

namespace overfeat_kernels {
namespace {

template <typename scalar_t, bool kChannelsLast>
__global__ void offset_pool_forward_kernel(const scalar_t* __restrict__ in, Strides4 in_s,
                                           PoolGeometry g, scalar_t* __restrict__ out,
                                           int64_t numel) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t idx = global_thread_index(); idx < numel; idx += grid_stride()) {
    out[idx] = offset_pool_forward_element<scalar_t, acc_t>(in, in_s, g,
                                                            unravel(idx, g.out, kChannelsLast));
  }
}

// Dense channels_last input, whole 16-byte vectors per pixel: each thread takes the k x k
// window max of one vector of channels, for one offset, and stores it with one 16-byte
// write; threads are ordered (n, i, j, dy, dx, vector), see unravel_pool_vec.
template <typename scalar_t>
__global__ void offset_pool_forward_nhwc_vec_kernel(const scalar_t* __restrict__ in,
                                                    PoolGeometry g, int64_t vectors,
                                                    scalar_t* __restrict__ out, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec16<scalar_t>;
  const int64_t c = g.in.c;
  for (int64_t idx = global_thread_index(); idx < total; idx += grid_stride()) {
    const PoolVecCoord p = unravel_pool_vec(idx, g, vectors);
    const int64_t y0 = p.dy + g.k * p.i, x0 = p.dx + g.k * p.j;
    const scalar_t* base = in + ((p.n * g.in.h + y0) * g.in.w + x0) * c + p.v * V::kSize;
    V best = load16(base);
    acc_t best_acc[V::kSize];
#pragma unroll
    for (int e = 0; e < V::kSize; ++e) best_acc[e] = static_cast<acc_t>(best.v[e]);
    for (int64_t a = 0; a < g.k; ++a) {
      for (int64_t b = 0; b < g.k; ++b) {
        if (a == 0 && b == 0) continue;
        const V cur = load16(base + (a * g.in.w + b) * c);
#pragma unroll
        for (int e = 0; e < V::kSize; ++e) {
          const acc_t value = static_cast<acc_t>(cur.v[e]);
          if (replaces_max(value, best_acc[e])) {  // F.max_pool2d's rule, as everywhere
            best_acc[e] = value;
            best.v[e] = cur.v[e];
          }
        }
      }
    }
    const int64_t b = offset_batch(p.n, p.dy, p.dx, g.k);
    store16(out + ((b * g.out.h + p.i) * g.out.w + p.j) * c + p.v * V::kSize, best);
  }
}

template <typename scalar_t, bool kChannelsLast>
__global__ void offset_pool_backward_kernel(const scalar_t* __restrict__ grad_out,
                                            Strides4 go_s, const scalar_t* __restrict__ in,
                                            Strides4 in_s, PoolGeometry g,
                                            scalar_t* __restrict__ grad_in, int64_t numel) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t idx = global_thread_index(); idx < numel; idx += grid_stride()) {
    grad_in[idx] = offset_pool_backward_element<scalar_t, acc_t>(
        grad_out, go_s, in, in_s, g, unravel(idx, g.in, kChannelsLast));
  }
}

at::Tensor offset_max_pool2d_cuda(const at::Tensor& input, int64_t kernel_size) {
  const PoolGeometry g = check_offset_pool_args(input, kernel_size, "offset_max_pool2d");
  at::Tensor out = empty_in_format_of({g.out.n, g.out.c, g.out.h, g.out.w}, input);
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = current_stream();
  OVERFEAT_DISPATCH_FLOATING(input.scalar_type(), "offset_max_pool2d_cuda", [&] {
    if (channels_last_vectorizable(input) && channels_last_vectorizable(out)) {
      const int64_t vectors = g.in.c / Vec16<scalar_t>::kSize;
      const int64_t total = numel / Vec16<scalar_t>::kSize;
      launch_kernel<offset_pool_forward_nhwc_vec_kernel<scalar_t>>(
          elementwise_blocks(total), kElementwiseThreads, 0, stream,
              input.const_data_ptr<scalar_t>(), g, vectors, out.mutable_data_ptr<scalar_t>(),
              total);
      return;
    }
    bool_switch(is_channels_last(input), [&](auto cl) {
      launch_kernel<offset_pool_forward_kernel<scalar_t, decltype(cl)::value>>(
          elementwise_blocks(numel), kElementwiseThreads, 0, stream,
              input.const_data_ptr<scalar_t>(), strides4(input), g,
              out.mutable_data_ptr<scalar_t>(), numel);
    });
  });
  return out;
}

at::Tensor offset_max_pool2d_backward_cuda(const at::Tensor& grad_output,
                                           const at::Tensor& input, int64_t kernel_size) {
  const PoolGeometry g = check_offset_pool_backward_args(grad_output, input, kernel_size);
  at::Tensor grad_input = empty_in_format_of(input.sizes(), input);
  const int64_t numel = grad_input.numel();
  if (numel == 0) return grad_input;
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = current_stream();
  OVERFEAT_DISPATCH_FLOATING(input.scalar_type(), "offset_max_pool2d_backward_cuda", [&] {
    bool_switch(is_channels_last(input), [&](auto cl) {
      launch_kernel<offset_pool_backward_kernel<scalar_t, decltype(cl)::value>>(
          elementwise_blocks(numel), kElementwiseThreads, 0, stream,
              grad_output.const_data_ptr<scalar_t>(), strides4(grad_output),
              input.const_data_ptr<scalar_t>(), strides4(input), g,
              grad_input.mutable_data_ptr<scalar_t>(), numel);
    });
  });
  return grad_input;
}

}  // namespace

OVERFEAT_CUDA_LIBRARY_IMPL(m) {
  m.impl("offset_max_pool2d", &offset_max_pool2d_cuda);
  m.impl("offset_max_pool2d_backward", &offset_max_pool2d_backward_cuda);
}

}  // namespace overfeat_kernels
