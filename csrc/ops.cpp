// The overfeat_kernels op library: its schemas (op_schemas.h, the one place they are
// written) and the switch that sends CPU calls through the CUDA simulator. The backend
// folders only add implementations: csrc/cpu and csrc/cuda the kernels, csrc/autograd the
// autograd (C++ torch::autograd::Functions), csrc/autocast conv3x3's autocast; the fake
// kernels are Python (overfeat_kernels/ops/fake.py). The Python module is python_module.cpp.
#include <torch/library.h>

#include <atomic>

#include "op_schemas.h"

namespace overfeat_kernels {

namespace {
std::atomic<bool> g_simulate_cuda{false};
}

bool simulate_cuda_enabled() { return g_simulate_cuda.load(std::memory_order_relaxed); }

// Process-wide; overfeat_kernels.simulate_cuda() loads the simulator module first, so that
// the forwarded ops exist.
void set_simulate_cuda(bool on) { g_simulate_cuda.store(on); }

}  // namespace overfeat_kernels

TORCH_LIBRARY(overfeat_kernels, m) { overfeat_kernels::define_ops(m); }
