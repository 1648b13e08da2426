// conv3x3 on the CPU. The convolution sums themselves are handed to ATen (oneDNN), computed
// in float32 (float64 for float64) so half-precision inputs get float32 accumulation and
// one rounding at the end; the bias is added inside that call and ReLU in place. The ReLU
// gradient mask and the bias gradient are ours, vector loops written against the same
// contract as the CUDA kernels.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "../checks.h"
#include "../conv_choice.h"
#include "../conv_pool.h"
#include "../dispatch.h"
#include "../op_handles.h"
#include "cpu_simd.h"
#include "simulator_switch.h"

namespace overfeat_kernels {
namespace {

constexpr int64_t kGrain = 4096;

// On the CPU our implementation is ATen's convolution: the default and "aten" algos are the
// same computation, the CUDA kernels' algos need a CUDA tensor (or the simulator).
template <size_t N>
void check_cpu_algos(const std::array<int64_t, N>& algos, bool backward) {
  const char* op = backward ? "conv3x3_backward" : "conv3x3";
  for (size_t i = 0; i < N; ++i) {
    const auto d = static_cast<ConvDirection>(i + (backward ? 1 : 0));
    plan_direction(ConvProblem{}, d, algos[i], /*gpu=*/false, DeviceInfo{}, op,
                   algo_argument(d, backward));
  }
}

at::Tensor conv3x3_cpu(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, int64_t padding, bool relu,
                       at::OptionalIntArrayRef requested, int64_t pool, bool pool_offsets) {
  check_conv3x3_args(input, weight, bias, padding);
  const auto pooled_size = check_conv3x3_pool_args(input, weight, padding, pool, pool_offsets);
  const choice::Codes algos =
      choice::forward_algos(input, weight, bias.has_value(), padding, relu,
                            choice::records_grad(input, weight, bias), requested,
                            pool_of_key(input, pool), pool_offsets);
  if (simulate_cuda_enabled()) {
    return Simulated<kConv3x3, op::Conv3x3>::call(input, weight, bias, padding, relu,
                                                   at::IntArrayRef(algos), pool, pool_offsets);
  }
  check_cpu_algos(algos, false);
  if (input.size(0) == 0) return empty_in_format_of(pooled_size, input);
  // The ATen calls below are our implementation, not the user's: autocast (handled by the
  // op's own autocast kernel) must not recast them.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto dtype = input.scalar_type();
  const auto compute = at::toOpMathType(dtype);
  const bool cast = dtype != compute;  // float16 / bfloat16: accumulate in float32
  // The bias goes into oneDNN's call (added inside its epilogue), and ReLU runs in place on
  // the result with ATen's vectorised kernel (NaN passes, as F.relu). No conversions (each
  // a dispatcher call) where the dtype is already the compute dtype.
  std::optional<at::Tensor> b = bias;
  if (cast && b.has_value()) b = b->to(compute);
  at::Tensor out = at::conv2d(cast ? input.to(compute) : input,
                              cast ? weight.to(compute) : weight, b, 1, padding);
  if (relu) out.relu_();
  if (cast) out = out.to(dtype);
  return pool_conv_output(out.contiguous(input.suggest_memory_format()), pool, pool_offsets);
}

// out[i] = relu_output[i] > 0 ? grad_output[i] : 0 in the compute dtype, one vector pass
// over dense runs (without relu_output: the conversion alone).
template <class Cf>
OVERFEAT_CPU_INLINE void mask_run(const typename Cf::raw_t* __restrict go,
                                  const typename Cf::raw_t* __restrict ro,
                                  typename Cf::key_t* __restrict out, int64_t n) {
  using E = typename Cf::E;
  using key_t = typename Cf::key_t;
  if (ro == nullptr) {
    for (int64_t i = 0; i < n; ++i) out[i] = E::key(go[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = E::key(ro[i]) > key_t(0) ? E::key(go[i]) : key_t(0);
  }
}
OVERFEAT_CPU_MULTIVERSION(mask_run)

template <typename scalar_t>
struct ElemCfg {
  using E = cpu::Elem<scalar_t>;
  using raw_t = typename E::raw_t;
  using key_t = typename E::key_t;
};

// grad_output in the compute dtype, masked by relu_output > 0 when given (one pass),
// laid out like `input`. Dense inputs in that layout take the vector pass; anything else
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
    using Cf = ElemCfg<scalar_t>;
    using raw_t = typename Cf::raw_t;
    static_assert(std::is_same_v<acc_t, typename Cf::key_t>);
    acc_t* out = g.mutable_data_ptr<acc_t>();
    if (flat) {
      const auto* go = static_cast<const raw_t*>(grad_output.const_data_ptr());
      const auto* ro = relu_output.has_value()
                           ? static_cast<const raw_t*>(relu_output->const_data_ptr())
                           : nullptr;
      at::parallel_for(0, g.numel(), kGrain, [&](int64_t begin, int64_t end) {
        mask_run_run<Cf>(go + begin, ro == nullptr ? nullptr : ro + begin, out + begin,
                         end - begin);
      });
      return;
    }
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* ro = relu_output.has_value() ? relu_output->const_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, g.numel(), kGrain, [&](int64_t begin, int64_t end) {
      Coord4 p = unravel(begin, d, cl);
      for (int64_t idx = begin; idx < end; ++idx, advance(p, d, cl)) {
        const bool pass = ro == nullptr || static_cast<acc_t>(ro[offset_of(ro_s, p.n, p.c, p.h, p.w)]) > acc_t(0);
        out[idx] = pass ? static_cast<acc_t>(go[offset_of(go_s, p.n, p.c, p.h, p.w)]) : acc_t(0);
      }
    });
  });
  return g;
}

// Sum of a contiguous run in double: kLanes partial sums (element i goes to lane i % kLanes)
// combined in a fixed order, so the loop vectorises and the result is deterministic.
constexpr int kLanes = 8;
template <class Cf>
OVERFEAT_CPU_INLINE double sum_run(const typename Cf::key_t* __restrict p, int64_t n) {
  double lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += static_cast<double>(p[i + l]);
  for (; i < n; ++i) lane[i % kLanes] += static_cast<double>(p[i]);
  double sum = 0;
  for (int l = 0; l < kLanes; ++l) sum += lane[l];
  return sum;
}

// acc[c] += p[px*stride + c] for every pixel px < n and c < cn (channels_last rows).
template <class Cf>
OVERFEAT_CPU_INLINE void sum_pixels(const typename Cf::key_t* p, int64_t n, int64_t stride,
                                    double* __restrict acc, int64_t cn) {
  for (int64_t px = 0; px < n; ++px) {
    const typename Cf::key_t* row = p + px * stride;
    for (int64_t c = 0; c < cn; ++c) acc[c] += static_cast<double>(row[c]);
  }
}

// Defines sum_run_run / sum_pixels_run for the variants (the macro needs void functions).
template <class Cf>
OVERFEAT_CPU_INLINE void sum_run_into(const typename Cf::key_t* p, int64_t n, double* out) {
  *out += sum_run<Cf>(p, n);
}
OVERFEAT_CPU_MULTIVERSION(sum_run_into)
OVERFEAT_CPU_MULTIVERSION(sum_pixels)

// Sum of g over N, H, W per channel, accumulated in double in an order that does not depend
// on the thread count (each channel is summed by one thread). Dense NCHW planes and dense
// channels_last rows take vector loops; other layouts the strided loop.
at::Tensor bias_grad(const at::Tensor& g, at::ScalarType out_dtype) {
  const Shape4 d = shape4(g);
  const Strides4 s = strides4(g);
  const bool planes = s.w == 1 && s.h == d.w;
  const bool pixels = s.c == 1 && s.w == d.c && s.h == d.w * d.c && s.n == d.h * d.w * d.c;
  at::Tensor acc = at::zeros({d.c}, g.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "conv3x3_cpu_bias_grad", [&] {
    using Cf = ElemCfg<scalar_t>;
    const scalar_t* p = g.const_data_ptr<scalar_t>();
    double* a = acc.mutable_data_ptr<double>();
    if (pixels && !planes) {
      constexpr int64_t cb = 64;
      at::parallel_for(0, ceil_div(d.c, cb), 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t c0 = t * cb, cn = std::min(cb, d.c - c0);
          sum_pixels_run<Cf>(p + c0, d.n * d.h * d.w, d.c, a + c0, cn);
        }
      });
      return;
    }
    at::parallel_for(0, d.c, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        for (int64_t n = 0; n < d.n; ++n) {
          if (planes) {
            sum_run_into_run<Cf>(p + n * s.n + c * s.c, d.h * d.w, a + c);
          } else {
            double sum = 0;
            for (int64_t y = 0; y < d.h; ++y)
              for (int64_t x = 0; x < d.w; ++x) sum += p[offset_of(s, n, c, y, x)];
            a[c] += sum;
          }
        }
      }
    });
  });
  return acc.to(out_dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& relu_output, int64_t padding,
    std::array<bool, 3> output_mask, at::OptionalIntArrayRef requested) {
  check_conv3x3_backward_args(grad_output, input, weight, relu_output, padding);
  const auto algos = choice::backward_algos(input, weight, output_mask[2], padding,
                                            relu_output.has_value(), requested);
  if (simulate_cuda_enabled()) {
    return Simulated<kConv3x3Backward, op::Conv3x3Backward>::call(
        grad_output, input, weight, relu_output, padding, output_mask, at::IntArrayRef(algos));
  }
  check_cpu_algos(algos, true);
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
  // The conv kernels forward to the simulator themselves, after resolving the algos.
  m.impl("conv3x3", &conv3x3_cpu);
  m.impl("conv3x3_backward", &conv3x3_backward_cpu);
}

}  // namespace overfeat_kernels
