// Inside `overfeat_kernels.simulate_cuda()`, every CPU call of an op runs the op's CUDA
// implementation in the simulator instead (the overfeat_kernels_sim library that the
// simulator module registers). The CPU kernels are registered through cpu_or_simulated,
// so the switch sits below autograd, torch.compile and opcheck, which see the same op.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <string>

#include "../op_schemas.h"

namespace overfeat_kernels {

bool simulate_cuda_enabled();  // ops.cpp

// Op kName of the simulator's library, called as the kernel it stands in for would be:
// below autograd.
template <const char* kName, typename Sig>
struct Simulated;
template <const char* kName, typename R, typename... A>
struct Simulated<kName, R(A...)> {
  static R call(A... args) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow(("overfeat_kernels_sim::" + std::string(kName)).c_str(), "")
                               .template typed<R(A...)>();
    const c10::impl::ExcludeDispatchKeyGuard below_autograd(c10::autograd_dispatch_keyset);
    return op.call(args...);
  }
};

template <const char* kName, auto kCpu>
struct CpuOrSimulated;

template <const char* kName, typename R, typename... A, R (*kCpu)(A...)>
struct CpuOrSimulated<kName, kCpu> {
  static R call(A... args) {
    if (simulate_cuda_enabled()) return Simulated<kName, R(A...)>::call(args...);
    return kCpu(args...);
  }
};

// The kernel to register for op kName: kCpu, or the simulated CUDA kernel when enabled.
template <const char* kName, auto kCpu>
constexpr auto cpu_or_simulated() {
  return &CpuOrSimulated<kName, kCpu>::call;
}

}  // namespace overfeat_kernels
