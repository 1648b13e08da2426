// Launch helpers shared by the CUDA kernels: one launch path (launch_kernel) for the GPU
// and the simulator, with the launch checks the GPU would apply raised as clear errors.
#pragma once

#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <mutex>
#include <string>

#include "../index_math.h"
#include "cuda_headers.cuh"

// The ops' implementations in csrc/cuda register for the CUDA dispatch key; compiled into
// the simulator they register for CPU tensors in the overfeat_kernels_sim library, which
// the CPU kernels forward to inside `overfeat_kernels.simulate_cuda()`.
#ifdef OVERFEAT_SIM
#define OVERFEAT_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(overfeat_kernels_sim, CPU, m)
#else
#define OVERFEAT_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(overfeat_kernels, CUDA, m)
#endif

namespace overfeat_kernels {

constexpr int kElementwiseThreads = 256;

inline int current_device() {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

// What the current device allows a launch (queried once per device).
struct DeviceLimits {
  int sms, max_threads, max_block[3], max_grid[3], smem_per_block, smem_optin;
  int capability;  // compute capability x 10 (90: sm_90)
};
inline const DeviceLimits& device_limits() {
  constexpr int kMaxDevices = 64;
  static std::array<DeviceLimits, kMaxDevices> cache{};
  static std::array<std::once_flag, kMaxDevices> once;
  const int dev = current_device();
  TORCH_CHECK(dev >= 0 && dev < kMaxDevices, "overfeat_kernels: device index ", dev,
              " out of range");
  std::call_once(once[dev], [dev] {
    DeviceLimits& l = cache[dev];
    const auto get = [dev](cudaDeviceAttr a) {
      int v = 0;
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, a, dev));
      return v;
    };
    l.sms = get(cudaDevAttrMultiProcessorCount);
    l.max_threads = get(cudaDevAttrMaxThreadsPerBlock);
    l.max_block[0] = get(cudaDevAttrMaxBlockDimX);
    l.max_block[1] = get(cudaDevAttrMaxBlockDimY);
    l.max_block[2] = get(cudaDevAttrMaxBlockDimZ);
    l.max_grid[0] = get(cudaDevAttrMaxGridDimX);
    l.max_grid[1] = get(cudaDevAttrMaxGridDimY);
    l.max_grid[2] = get(cudaDevAttrMaxGridDimZ);
    l.smem_per_block = get(cudaDevAttrMaxSharedMemoryPerBlock);
    l.smem_optin = get(cudaDevAttrMaxSharedMemoryPerBlockOptin);
    l.capability = 10 * get(cudaDevAttrComputeCapabilityMajor) +
                   get(cudaDevAttrComputeCapabilityMinor);
  });
  return cache[dev];
}

// Streaming multiprocessors of the current device.
inline int64_t multiprocessor_count() { return device_limits().sms; }

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// "ns::kernel<float, false>" from the __PRETTY_FUNCTION__ of kernel_name<Kernel>.
inline std::string kernel_name_from_signature(const std::string& f) {
  const size_t at = f.find("Kernel = ");
  if (at == std::string::npos) return f;
  const std::string s = f.substr(at + 9);
  return s.substr(0, s.find_first_of(";]"));
}

// The name of the kernel a launch_kernel instance launches, for error messages.
template <auto Kernel>
const std::string& kernel_name() {
  static const std::string name = kernel_name_from_signature(__PRETTY_FUNCTION__);
  return name;
}

// The checks a GPU applies to a launch, raised before it with a message naming the
// kernel, so that the GPU build and the simulator fail the same way.
inline void check_launch(const std::string& kernel, dim3 grid, dim3 block, size_t dynamic_smem,
                         const cudaFuncAttributes& attr) {
  const DeviceLimits& l = device_limits();
  const auto refuse = [&](const std::string& why) {
    TORCH_CHECK(false, "overfeat_kernels: the GPU would refuse to launch ", kernel, ": ", why);
  };
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  if (threads == 0 || int64_t(grid.x) * grid.y * grid.z == 0) {
    refuse("empty grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) + ", " +
           std::to_string(grid.z) + ") or block (" + std::to_string(block.x) + ", " +
           std::to_string(block.y) + ", " + std::to_string(block.z) + ")");
  }
  const int64_t max_threads = std::min(l.max_threads, attr.maxThreadsPerBlock);
  if (threads > max_threads) {
    refuse(std::to_string(threads) + " threads per block exceed the limit of " +
           std::to_string(max_threads));
  }
  const unsigned bd[3] = {block.x, block.y, block.z}, gd[3] = {grid.x, grid.y, grid.z};
  for (int i = 0; i < 3; ++i) {
    if (bd[i] > static_cast<unsigned>(l.max_block[i])) {
      refuse("block dimension " + std::string(1, "xyz"[i]) + " = " + std::to_string(bd[i]) +
             " exceeds " + std::to_string(l.max_block[i]));
    }
    if (gd[i] > static_cast<unsigned>(l.max_grid[i])) {
      refuse("grid dimension " + std::string(1, "xyz"[i]) + " = " + std::to_string(gd[i]) +
             " exceeds " + std::to_string(l.max_grid[i]));
    }
  }
  if (attr.sharedSizeBytes > static_cast<size_t>(l.smem_per_block)) {
    refuse(std::to_string(attr.sharedSizeBytes) + " bytes of static __shared__ memory exceed " +
           std::to_string(l.smem_per_block) + " (larger needs dynamic shared memory)");
  }
  if (dynamic_smem > static_cast<size_t>(attr.maxDynamicSharedSizeBytes)) {
    refuse(std::to_string(dynamic_smem) + " bytes of dynamic shared memory (plus " +
           std::to_string(attr.sharedSizeBytes) + " static) exceed the " +
           std::to_string(attr.maxDynamicSharedSizeBytes) +
           " bytes allowed; above " + std::to_string(l.smem_per_block) +
           " bytes in all a kernel needs cudaFuncSetAttribute("
           "cudaFuncAttributeMaxDynamicSharedMemorySize) (set_max_dynamic_smem), up to " +
           std::to_string(l.smem_optin));
  }
}

// A kernel's attributes on the current device, queried once per device (a query costs
// microseconds, a launch of a small kernel not much more). Raise a kernel's dynamic shared
// memory limit through set_max_dynamic_smem, which keeps this copy current.
template <auto Kernel>
cudaFuncAttributes& kernel_attributes() {
  constexpr int kMaxDevices = 64;
  static std::array<cudaFuncAttributes, kMaxDevices> cache{};
  static std::array<std::once_flag, kMaxDevices> once;
  const int dev = current_device();
  TORCH_CHECK(dev >= 0 && dev < kMaxDevices, "overfeat_kernels: device index ", dev,
              " out of range");
  std::call_once(once[dev], [dev] { C10_CUDA_CHECK(cudaFuncGetAttributes(&cache[dev], Kernel)); });
  return cache[dev];
}

// cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) on the
// current device, and the cached attributes with it.
template <auto Kernel>
void set_max_dynamic_smem(int bytes) {
  cudaFuncAttributes& attr = kernel_attributes<Kernel>();
  C10_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  attr.maxDynamicSharedSizeBytes = bytes;
}

// Launches Kernel<<<grid, block, dynamic_smem, stream>>>(args...) after the checks above.
// Under nvcc this is cudaLaunchKernelEx; in the simulator, its stand-in of the same shape.
template <auto Kernel, typename... Args>
void launch_kernel(dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t stream,
                   Args&&... args) {
  check_launch(kernel_name<Kernel>(), grid, block, dynamic_smem, kernel_attributes<Kernel>());
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = dynamic_smem;
  config.stream = stream;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, Kernel, std::forward<Args>(args)...));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Reports a host-side step of a launcher (an operand copied or repacked before a kernel):
// counted by the simulator next to its launches, so that tests see which copies a call
// made; nothing on a GPU.
inline void note_host_step([[maybe_unused]] const char* what) {
#ifdef OVERFEAT_SIM
  ovk_sim::count_host_step(what);
#endif
}

// Blocks for a grid-stride loop over `numel` elements: enough to fill the device many
// times over, never more than the grid allows. Kernels loop, so any numel is covered.
inline unsigned elementwise_blocks(int64_t numel) {
  const int64_t wanted = ceil_div(numel, kElementwiseThreads);
  const int64_t cap = multiprocessor_count() * 64;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(wanted, cap)));
}

// Index of this thread in a grid-stride loop, and the stride, both 64-bit.
__device__ __forceinline__ int64_t global_thread_index() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() { return int64_t(gridDim.x) * blockDim.x; }

}  // namespace overfeat_kernels
