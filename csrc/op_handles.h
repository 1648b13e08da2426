// Typed handles of the library's ops, for the C++ that calls them through the dispatcher
// (autograd and autocast kernels, the Python bindings). Each is looked up once.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <optional>
#include <tuple>

namespace overfeat_kernels::op {

using Conv3x3 = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                           int64_t, bool, at::OptionalIntArrayRef, int64_t, bool);
using Conv3x3Backward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    int64_t, std::array<bool, 3>, at::OptionalIntArrayRef);
using WithKernelSize = at::Tensor(const at::Tensor&, int64_t);
using PoolBackward = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t);

template <typename Sig>
c10::TypedOperatorHandle<Sig> find(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

inline const c10::TypedOperatorHandle<Conv3x3>& conv3x3() {
  static const auto h = find<Conv3x3>("overfeat_kernels::conv3x3");
  return h;
}
inline const c10::TypedOperatorHandle<Conv3x3Backward>& conv3x3_backward() {
  static const auto h = find<Conv3x3Backward>("overfeat_kernels::conv3x3_backward");
  return h;
}
inline const c10::TypedOperatorHandle<WithKernelSize>& offset_max_pool2d() {
  static const auto h = find<WithKernelSize>("overfeat_kernels::offset_max_pool2d");
  return h;
}
inline const c10::TypedOperatorHandle<PoolBackward>& offset_max_pool2d_backward() {
  static const auto h = find<PoolBackward>("overfeat_kernels::offset_max_pool2d_backward");
  return h;
}
inline const c10::TypedOperatorHandle<WithKernelSize>& interleave() {
  static const auto h = find<WithKernelSize>("overfeat_kernels::interleave");
  return h;
}
inline const c10::TypedOperatorHandle<WithKernelSize>& deinterleave() {
  static const auto h = find<WithKernelSize>("overfeat_kernels::deinterleave");
  return h;
}

}  // namespace overfeat_kernels::op
