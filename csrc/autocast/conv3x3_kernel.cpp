// conv3x3 under torch.autocast, as F.conv2d: the floating inputs are cast to the autocast
// dtype (bfloat16 / float16; float64 stays), weights through autocast's cast cache. Below
// the op, so that torch.ops and torch.export callers get it too. The other ops compute in
// their input's dtype: autocast's fallthrough.
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "../op_handles.h"

namespace overfeat_kernels {
namespace {

template <c10::DeviceType kDevice>
at::Tensor conv3x3_autocast(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t padding, bool relu,
                            at::OptionalIntArrayRef algos, int64_t pool, bool pool_offsets) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const at::ScalarType dtype = at::autocast::get_lower_precision_fp_from_device_type(kDevice);
  return op::conv3x3().call(at::autocast::cached_cast(dtype, input, kDevice),
                            at::autocast::cached_cast(dtype, weight, kDevice),
                            at::autocast::cached_cast(dtype, bias, kDevice), padding, relu,
                            algos, pool, pool_offsets);
}

}  // namespace

TORCH_LIBRARY_IMPL(overfeat_kernels, AutocastCPU, m) {
  m.impl("conv3x3", &conv3x3_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(overfeat_kernels, AutocastCUDA, m) {
  m.impl("conv3x3", &conv3x3_autocast<c10::DeviceType::CUDA>);
}

}  // namespace overfeat_kernels
