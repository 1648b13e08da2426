// offset_max_pool2d's autograd, in C++ on the Autograd key: its backward is the op
// offset_max_pool2d_backward, whose own node raises when differentiated. No node is built
// when the input does not need a gradient.
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "../op_handles.h"

namespace overfeat_kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class OffsetMaxPool2dFunction : public torch::autograd::Function<OffsetMaxPool2dFunction> {
 public:
  static constexpr bool is_traceable = true;  // its backward only calls ops
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, int64_t k) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({input});
    ctx->saved_data["kernel_size"] = k;
    return {op::offset_max_pool2d().call(input, k)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(2);
    const at::Tensor input = ctx->get_saved_variables()[0];
    return {op::offset_max_pool2d_backward().call(grads[0], input,
                                                  ctx->saved_data["kernel_size"].toInt()),
            at::Tensor()};
  }
};

class OffsetMaxPool2dBackwardFunction
    : public torch::autograd::Function<OffsetMaxPool2dBackwardFunction> {
 public:
  static constexpr bool is_traceable = true;
  static variable_list forward(AutogradContext*, const at::Tensor& grad_output,
                               const at::Tensor& input, int64_t k) {
    at::AutoDispatchBelowADInplaceOrView below;
    return {op::offset_max_pool2d_backward().call(grad_output, input, k)};
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK_NOT_IMPLEMENTED(false,
                                "offset_max_pool2d: second-order gradients (double backward) "
                                "are not implemented; compute first-order gradients only "
                                "(torch.autograd.grad without create_graph)");
  }
};

at::Tensor offset_max_pool2d_autograd(const at::Tensor& input, int64_t k) {
  if (!(at::GradMode::is_enabled() && input.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView below;
    return op::offset_max_pool2d().call(input, k);
  }
  return OffsetMaxPool2dFunction::apply(input, k)[0];
}

at::Tensor offset_max_pool2d_backward_autograd(const at::Tensor& grad_output,
                                               const at::Tensor& input, int64_t k) {
  if (!(at::GradMode::is_enabled() && (grad_output.requires_grad() || input.requires_grad()))) {
    at::AutoDispatchBelowADInplaceOrView below;
    return op::offset_max_pool2d_backward().call(grad_output, input, k);
  }
  return OffsetMaxPool2dBackwardFunction::apply(grad_output, input, k)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(overfeat_kernels, Autograd, m) {
  m.impl("offset_max_pool2d", &offset_max_pool2d_autograd);
  m.impl("offset_max_pool2d_backward", &offset_max_pool2d_backward_autograd);
}

}  // namespace overfeat_kernels
