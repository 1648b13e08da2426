// conv3x3's autograd, in C++ on the Autograd key: a torch::autograd::Function whose
// backward is an op of its own (conv3x3_backward). A call where nothing needs a gradient
// builds no node: it goes straight below autograd. conv3x3_backward's own autograd node
// raises when differentiated (second-order gradients are not implemented).
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "../conv_choice.h"
#include "../conv_pool.h"
#include "../op_handles.h"

namespace overfeat_kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class Conv3x3Function : public torch::autograd::Function<Conv3x3Function> {
 public:
  static constexpr bool is_traceable = true;  // its backward only calls ops
  // `algos`: the three implementations, fixed by conv3x3_autograd; None while tracing.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               int64_t padding, bool relu, at::OptionalIntArrayRef algos) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      out = op::conv3x3().call(input, weight, bias, padding, relu, algos, 0, false);
    }
    ctx->save_for_backward({input, weight, relu ? out : at::Tensor()});
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["grad_algos"] =
        algos.has_value() ? c10::IValue(std::vector<int64_t>{(*algos)[1], (*algos)[2]})
                          : c10::IValue();
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) return variable_list(6);
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)};
    const c10::IValue& grad_algos = ctx->saved_data["grad_algos"];
    std::vector<int64_t> algos;
    if (!grad_algos.isNone()) algos = grad_algos.toIntVector();
    const std::optional<at::Tensor> relu_output =
        saved[2].defined() ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    auto [gi, gw, gb] = op::conv3x3_backward().call(
        grad, saved[0], saved[1], relu_output, ctx->saved_data["padding"].toInt(), mask,
        grad_algos.isNone() ? at::OptionalIntArrayRef() : at::OptionalIntArrayRef(algos));
    return {mask[0] ? gi : at::Tensor(), mask[1] ? gw : at::Tensor(), mask[2] ? gb : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class Conv3x3BackwardFunction : public torch::autograd::Function<Conv3x3BackwardFunction> {
 public:
  static constexpr bool is_traceable = true;
  static variable_list forward(AutogradContext*, const at::Tensor& grad_output,
                               const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& relu_output, int64_t padding,
                               std::array<bool, 3> output_mask, at::OptionalIntArrayRef algos) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [gi, gw, gb] = op::conv3x3_backward().call(grad_output, input, weight, relu_output,
                                                    padding, output_mask, algos);
    return {gi, gw, gb};
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK_NOT_IMPLEMENTED(false,
                                "conv3x3: second-order gradients (double backward) are not "
                                "implemented; compute first-order gradients only "
                                "(torch.autograd.grad without create_graph)");
  }
};

bool needs_grad(std::initializer_list<const at::Tensor*> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : ts) {
    if (t != nullptr && t->defined() && t->requires_grad()) return true;
  }
  return false;
}

at::Tensor conv3x3_autograd(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t padding, bool relu,
                            at::OptionalIntArrayRef algos, int64_t pool, bool pool_offsets) {
  if (!needs_grad({&input, &weight, bias.has_value() ? &*bias : nullptr})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return op::conv3x3().call(input, weight, bias, padding, relu, algos, pool, pool_offsets);
  }
  if (pool != 0 || pool_offsets) {
    // Training pools after the conv, through the pooling ops' own autograd: the backward
    // needs the unpooled output (the ReLU mask and the windows' maxima), and keeping it
    // costs the write the fused kernel saves, where recomputing it would cost a whole
    // conv. Gradients are the composition's by construction.
    if (choice::is_plain(input) && choice::is_plain(weight)) {
      check_conv3x3_args(input, weight, bias, padding);
      check_conv3x3_pool_args(input, weight, padding, pool, pool_offsets);
    }
    return pool_conv_output(
        conv3x3_autograd(input, weight, bias, padding, relu, algos, 0, false), pool,
        pool_offsets);
  }
  // The three implementations are fixed here, under the mode of this call and for the
  // training key (the forward below runs without grad mode): a later backward runs them
  // wherever and whenever it runs. While tracing (fake or functional tensors) they stay
  // open: the traced ops resolve them when they run.
  if (choice::is_plain(input) && choice::is_plain(weight)) {
    check_conv3x3_args(input, weight, bias, padding);
    const choice::Codes codes = choice::forward_algos(input, weight, bias.has_value(), padding,
                                                      relu, /*train=*/true, algos);
    return Conv3x3Function::apply(input, weight, bias, padding, relu, at::IntArrayRef(codes))[0];
  }
  return Conv3x3Function::apply(input, weight, bias, padding, relu, algos)[0];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& relu_output, int64_t padding,
    std::array<bool, 3> output_mask, at::OptionalIntArrayRef algos) {
  if (!needs_grad({&grad_output, &input, &weight,
                   relu_output.has_value() ? &*relu_output : nullptr})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return op::conv3x3_backward().call(grad_output, input, weight, relu_output, padding,
                                       output_mask, algos);
  }
  const auto out = Conv3x3BackwardFunction::apply(grad_output, input, weight, relu_output,
                                                  padding, output_mask, algos);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(overfeat_kernels, Autograd, m) {
  m.impl("conv3x3", &conv3x3_autograd);
  m.impl("conv3x3_backward", &conv3x3_backward_autograd);
}

}  // namespace overfeat_kernels
