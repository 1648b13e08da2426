// Interleave / deinterleave on the CPU: a permutation, one parallel pass over the output
// in its memory order, gathering through the shared index math.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../dispatch.h"
#include "simulator_switch.h"

namespace overfeat_kernels {
namespace {

constexpr int64_t kGrain = 8192;

template <bool kInterleave>
at::Tensor permute_cpu(const at::Tensor& input, int64_t k, const Shape4& out_shape) {
  at::Tensor out = empty_in_format_of({out_shape.n, out_shape.c, out_shape.h, out_shape.w}, input);
  if (out.numel() == 0) return out;
  const bool cl = is_channels_last(input);
  const Strides4 in_s = strides4(input);
  const char* op = kInterleave ? "interleave" : "deinterleave";
  dispatch_by_element_size(input, op, [&](auto tag) {
    using T = decltype(tag);
    const T* in = static_cast<const T*>(input.const_data_ptr());
    T* o = static_cast<T*>(out.mutable_data_ptr());
    at::parallel_for(0, out.numel(), kGrain, [&](int64_t begin, int64_t end) {
      Coord4 c = unravel(begin, out_shape, cl);
      for (int64_t idx = begin; idx < end; ++idx, advance(c, out_shape, cl)) {
        o[idx] = in[kInterleave ? interleave_source(in_s, k, c) : deinterleave_source(in_s, k, c)];
      }
    });
  });
  return out;
}

at::Tensor interleave_cpu(const at::Tensor& input, int64_t kernel_size) {
  return permute_cpu<true>(input, kernel_size, check_interleave_args(input, kernel_size));
}

at::Tensor deinterleave_cpu(const at::Tensor& input, int64_t kernel_size) {
  return permute_cpu<false>(input, kernel_size, check_deinterleave_args(input, kernel_size));
}

}  // namespace

TORCH_LIBRARY_IMPL(overfeat_kernels, CPU, m) {
  m.impl("interleave", cpu_or_simulated<kInterleave, &interleave_cpu>());
  m.impl("deinterleave", cpu_or_simulated<kDeinterleave, &deinterleave_cpu>());
}

}  // namespace overfeat_kernels
