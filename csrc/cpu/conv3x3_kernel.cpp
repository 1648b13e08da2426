// conv3x3 on the CPU. The convolution sums themselves are handed to ATen, computed in
// float32 (float64 for float64) so half-precision inputs get float32 accumulation and one
// rounding at the end. The bias + ReLU epilogue, the ReLU gradient mask and the bias
// gradient are ours, written against the same contract as the CUDA kernels.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "../checks.h"
#include "../dispatch.h"
#include "simulator_switch.h"

namespace overfeat_kernels {
namespace {

constexpr int64_t kGrain = 4096;

std::vector<int64_t> conv3x3_output_size(const at::Tensor& input, const at::Tensor& weight,
                                         int64_t padding) {
  return {input.size(0), weight.size(0), input.size(2) + 2 * padding - 2,
          input.size(3) + 2 * padding - 2};
}

// out (dense, compute dtype) += bias[c], then ReLU, in one pass.
void bias_relu_(at::Tensor& out, const std::optional<at::Tensor>& bias, bool relu) {
  if (!bias.has_value() && !relu) return;
  const bool cl = is_channels_last(out);
  const Shape4 d = shape4(out);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "conv3x3_cpu_epilogue", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const at::Tensor b = bias.has_value() ? bias->to(out.scalar_type()).contiguous() : at::Tensor();
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, out.numel(), kGrain, [&](int64_t begin, int64_t end) {
      Coord4 c = unravel(begin, d, cl);
      for (int64_t idx = begin; idx < end; ++idx, advance(c, d, cl)) {
        scalar_t v = o[idx];
        if (bp != nullptr) v += bp[c.c];
        o[idx] = relu ? relu_keep_nan(v) : v;
      }
    });
  });
}

at::Tensor conv3x3_cpu(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, int64_t padding, bool relu) {
  check_conv3x3_args(input, weight, bias, padding);
  const auto size = conv3x3_output_size(input, weight, padding);
  if (input.size(0) == 0) return empty_in_format_of(size, input);
  // The ATen calls below are our implementation, not the user's: autocast (handled in the
  // Python wrapper) must not recast them.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto compute = at::toOpMathType(input.scalar_type());
  at::Tensor out = at::conv2d(input.to(compute), weight.to(compute), {}, 1, padding)
                       .contiguous(input.suggest_memory_format());
  bias_relu_(out, bias, relu);
  return out.to(input.scalar_type());
}

// grad_output in the compute dtype, masked by relu_output > 0 when given (one pass),
// laid out like `input`. Dense inputs in that layout take a flat loop; anything else
// (views, mixed layouts) goes through the strided path.
at::Tensor masked_grad(const at::Tensor& grad_output, const std::optional<at::Tensor>& relu_output,
                       const at::Tensor& input, at::ScalarType compute) {
  const auto fmt = input.suggest_memory_format();
  const bool dense_go = grad_output.is_contiguous(fmt);
  if (!relu_output.has_value() && dense_go && grad_output.scalar_type() == compute) {
    return grad_output;  // nothing to do: no copy
  }
  at::Tensor g = at::empty(grad_output.sizes(), input.options().dtype(compute).memory_format(fmt));
  if (g.numel() == 0) return g;
  const bool flat = dense_go && (!relu_output.has_value() || relu_output->is_contiguous(fmt));
  const bool cl = is_channels_last(g);
  const Shape4 d = shape4(g);
  const Strides4 go_s = strides4(grad_output);
  const Strides4 ro_s = relu_output.has_value() ? strides4(*relu_output) : go_s;
  OVERFEAT_DISPATCH_FLOATING(grad_output.scalar_type(), "conv3x3_cpu_masked_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* ro = relu_output.has_value() ? relu_output->const_data_ptr<scalar_t>() : nullptr;
    acc_t* out = g.mutable_data_ptr<acc_t>();
    at::parallel_for(0, g.numel(), kGrain, [&](int64_t begin, int64_t end) {
      if (flat) {
        for (int64_t i = begin; i < end; ++i) {
          const bool pass = ro == nullptr || static_cast<acc_t>(ro[i]) > acc_t(0);
          out[i] = pass ? static_cast<acc_t>(go[i]) : acc_t(0);
        }
        return;
      }
      Coord4 p = unravel(begin, d, cl);
      for (int64_t idx = begin; idx < end; ++idx, advance(p, d, cl)) {
        const bool pass = ro == nullptr || static_cast<acc_t>(ro[offset_of(ro_s, p.n, p.c, p.h, p.w)]) > acc_t(0);
        out[idx] = pass ? static_cast<acc_t>(go[offset_of(go_s, p.n, p.c, p.h, p.w)]) : acc_t(0);
      }
    });
  });
  return g;
}

// Sum of g over N, H, W per channel, in a fixed order (deterministic), accumulated in
// double. NCHW-dense planes are summed as contiguous runs.
at::Tensor bias_grad(const at::Tensor& g, at::ScalarType out_dtype) {
  const Shape4 d = shape4(g);
  const Strides4 s = strides4(g);
  const bool planes = s.w == 1 && s.h == d.w;
  at::Tensor acc = at::empty({d.c}, g.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "conv3x3_cpu_bias_grad", [&] {
    const scalar_t* p = g.const_data_ptr<scalar_t>();
    double* a = acc.mutable_data_ptr<double>();
    at::parallel_for(0, d.c, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double sum = 0;
        for (int64_t n = 0; n < d.n; ++n) {
          if (planes) {
            const scalar_t* plane = p + n * s.n + c * s.c;
            for (int64_t i = 0; i < d.h * d.w; ++i) sum += plane[i];
          } else {
            for (int64_t y = 0; y < d.h; ++y)
              for (int64_t x = 0; x < d.w; ++x) sum += p[offset_of(s, n, c, y, x)];
          }
        }
        a[c] = sum;
      }
    });
  });
  return acc.to(out_dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& relu_output, int64_t padding,
    std::array<bool, 3> output_mask) {
  check_conv3x3_backward_args(grad_output, input, weight, relu_output, padding);
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto dtype = input.scalar_type();
  const auto compute = at::toOpMathType(dtype);
  const at::Tensor g = masked_grad(grad_output, relu_output, input, compute);

  at::Tensor grad_input = input.new_empty({0});
  at::Tensor grad_weight = input.new_empty({0});
  at::Tensor grad_bias = input.new_empty({0});
  if (input.size(0) == 0) {
    if (output_mask[0]) grad_input = empty_in_format_of(input.sizes(), input);
    if (output_mask[1]) grad_weight = at::zeros_like(weight, at::MemoryFormat::Contiguous);
    if (output_mask[2]) grad_bias = at::zeros({weight.size(0)}, weight.options());
    return {grad_input, grad_weight, grad_bias};
  }
  if (output_mask[0] || output_mask[1]) {
    auto grads = at::convolution_backward(g, input.to(compute), weight.to(compute), std::nullopt,
                                          {1, 1}, {padding, padding}, {1, 1}, false, {0, 0}, 1,
                                          {output_mask[0], output_mask[1], false});
    if (output_mask[0])
      grad_input = std::get<0>(grads).to(dtype).contiguous(input.suggest_memory_format());
    if (output_mask[1]) grad_weight = std::get<1>(grads).to(dtype).contiguous();
  }
  if (output_mask[2]) grad_bias = bias_grad(g, dtype);
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(overfeat_kernels, CPU, m) {
  m.impl("conv3x3", cpu_or_simulated<kConv3x3, &conv3x3_cpu>());
  m.impl("conv3x3_backward", cpu_or_simulated<kConv3x3Backward, &conv3x3_backward_cpu>());
}

}  // namespace overfeat_kernels
