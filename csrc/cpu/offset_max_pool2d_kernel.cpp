// Offset max-pooling on the CPU: one pass over the output (forward) or the input
// (backward), parallel over elements, with the per-element math of index_math.h.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../dispatch.h"
#include "simulator_switch.h"

namespace overfeat_kernels {
namespace {

constexpr int64_t kGrain = 2048;

at::Tensor offset_max_pool2d_cpu(const at::Tensor& input, int64_t kernel_size) {
  const PoolGeometry g = check_offset_pool_args(input, kernel_size, "offset_max_pool2d");
  at::Tensor out = empty_in_format_of({g.out.n, g.out.c, g.out.h, g.out.w}, input);
  if (out.numel() == 0) return out;
  const bool cl = is_channels_last(input);
  const Strides4 in_s = strides4(input);
  OVERFEAT_DISPATCH_FLOATING(input.scalar_type(), "offset_max_pool2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, out.numel(), kGrain, [&](int64_t begin, int64_t end) {
      Coord4 c = unravel(begin, g.out, cl);
      for (int64_t idx = begin; idx < end; ++idx, advance(c, g.out, cl)) {
        o[idx] = offset_pool_forward_element<scalar_t, acc_t>(in, in_s, g, c);
      }
    });
  });
  return out;
}

at::Tensor offset_max_pool2d_backward_cpu(const at::Tensor& grad_output,
                                          const at::Tensor& input, int64_t kernel_size) {
  const PoolGeometry g = check_offset_pool_backward_args(grad_output, input, kernel_size);
  at::Tensor grad_input = empty_in_format_of(input.sizes(), input);
  if (grad_input.numel() == 0) return grad_input;
  const bool cl = is_channels_last(input);
  const Strides4 in_s = strides4(input), go_s = strides4(grad_output);
  OVERFEAT_DISPATCH_FLOATING(input.scalar_type(), "offset_max_pool2d_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, grad_input.numel(), kGrain, [&](int64_t begin, int64_t end) {
      Coord4 c = unravel(begin, g.in, cl);
      for (int64_t idx = begin; idx < end; ++idx, advance(c, g.in, cl)) {
        gi[idx] = offset_pool_backward_element<scalar_t, acc_t>(go, go_s, in, in_s, g, c);
      }
    });
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(overfeat_kernels, CPU, m) {
  m.impl("offset_max_pool2d", cpu_or_simulated<kOffsetMaxPool2d, &offset_max_pool2d_cpu>());
  m.impl("offset_max_pool2d_backward", cpu_or_simulated<kOffsetMaxPool2dBackward, &offset_max_pool2d_backward_cpu>());
}

}  // namespace overfeat_kernels
