// Dispatch helpers shared by the CPU and CUDA implementations.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <type_traits>

namespace overfeat_kernels {

// Calls f(T{}) with an unsigned integer type T as wide as one element of `t`. Ops that
// only move elements (interleave, deinterleave) are instantiated once per width instead
// of once per dtype, and so work for every dtype of 1, 2, 4 or 8 bytes.
template <typename F>
void dispatch_by_element_size(const at::Tensor& t, const char* op, F&& f) {
  switch (t.element_size()) {
    case 1: f(uint8_t{}); break;
    case 2: f(uint16_t{}); break;
    case 4: f(uint32_t{}); break;
    case 8: f(uint64_t{}); break;
    default:
      TORCH_CHECK_TYPE(false, op, ": input dtype ", t.scalar_type(),
                       " is not supported (elements of 1, 2, 4 or 8 bytes only)");
  }
}

// Calls f(std::integral_constant<bool, b>{}): turns a run-time flag into a compile-time
// kernel template argument (layouts, optional fused steps).
template <typename F>
void bool_switch(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// Floating dtypes every compute op supports.
#define OVERFEAT_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

}  // namespace overfeat_kernels
