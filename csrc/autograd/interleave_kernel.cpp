// interleave / deinterleave autograd, in C++ on the Autograd key: each op is the other's
// exact inverse, so each one's backward is the other (through the dispatcher, autograd
// included: both are linear, and gradients of any order follow). No node is built when
// the input does not need a gradient.
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "../op_handles.h"

namespace overfeat_kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// kInterleave: interleave (its backward deinterleaves), else the reverse.
template <bool kInterleave>
class PermuteFunction : public torch::autograd::Function<PermuteFunction<kInterleave>> {
 public:
  static constexpr bool is_traceable = true;  // its backward only calls ops
  static const c10::TypedOperatorHandle<op::WithKernelSize>& forward_op() {
    return kInterleave ? op::interleave() : op::deinterleave();
  }
  static const c10::TypedOperatorHandle<op::WithKernelSize>& backward_op() {
    return kInterleave ? op::deinterleave() : op::interleave();
  }

  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, int64_t k) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->saved_data["kernel_size"] = k;
    return {forward_op().call(input, k)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(2);
    return {backward_op().call(grads[0], ctx->saved_data["kernel_size"].toInt()), at::Tensor()};
  }
};

template <bool kInterleave>
at::Tensor permute_autograd(const at::Tensor& input, int64_t k) {
  if (!(at::GradMode::is_enabled() && input.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView below;
    return PermuteFunction<kInterleave>::forward_op().call(input, k);
  }
  return PermuteFunction<kInterleave>::apply(input, k)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(overfeat_kernels, Autograd, m) {
  m.impl("interleave", &permute_autograd<true>);
  m.impl("deinterleave", &permute_autograd<false>);
}

}  // namespace overfeat_kernels
