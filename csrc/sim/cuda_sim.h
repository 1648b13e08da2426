// The CUDA surface of the simulator: what the sources in csrc/cuda/ use from
// cuda_runtime.h, the device built-ins and the c10 CUDA helpers, implemented on the CPU
// over the fiber runtime (runtime.h). Included instead of the real headers when
// OVERFEAT_SIM is defined (csrc/cuda/cuda_headers.cuh); never under nvcc.
#pragma once

#ifdef __CUDACC__
#error "cuda_sim.h is the simulator's stand-in for the CUDA headers: not for nvcc"
#endif

#include <c10/core/Device.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <math.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "runtime.h"

// ---- keywords ---------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __grid_constant__
// A function-local static in thread-local storage: one copy per OS thread, and one OS
// thread runs one block at a time, so every fiber of the block sees the same array. The
// runtime finds these variables in the module's symbol table, poisons them when a block
// starts and counts them against the shared-memory limit.
#define __shared__ static thread_local

// ---- vector types -----------------------------------------------------------------------
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// ---- built-in variables: threadIdx, blockIdx, blockDim, gridDim are in runtime.h ----
constexpr int warpSize = 32;

// ---- synchronisation and warp collectives ---------------------------------------------
namespace ovk_sim {

inline unsigned lane_id() { return this_thread().linear % 32; }

template <typename In, typename Out, typename Combine>
Out collective(const char* what, Site site, uint32_t mask, bool full_warp, const In& in) {
  static_assert(sizeof(In) <= kLaneBytes && sizeof(Out) <= kLaneBytes);
  static_assert(std::is_trivially_copyable_v<In> && std::is_trivially_copyable_v<Out>);
  Out out;
  warp_collective(what, site, mask, full_warp, &in, sizeof(In), &out, sizeof(Out),
                  [](const unsigned char (*ins)[kLaneBytes], unsigned char (*outs)[kLaneBytes],
                     uint32_t m) {
                    In lanes_in[32];
                    Out lanes_out[32];
                    for (int l = 0; l < 32; ++l) std::memcpy(&lanes_in[l], ins[l], sizeof(In));
                    Combine::apply(lanes_in, lanes_out, m);
                    for (int l = 0; l < 32; ++l) std::memcpy(outs[l], &lanes_out[l], sizeof(Out));
                  });
  return out;
}

struct Empty {};
struct SyncWarp {
  static void apply(const Empty*, Empty*, uint32_t) {}
};
inline void syncwarp(Site site, uint32_t mask = 0xFFFFFFFFu) {
  collective<Empty, Empty, SyncWarp>("__syncwarp", site, mask, false, Empty{});
}

enum class ShflMode : int { Idx, Up, Down, Xor };
template <typename T>
struct ShflIn {
  T value;
  int arg;
  int width;
};
template <typename T, ShflMode kMode>
struct Shfl {
  static void apply(const ShflIn<T>* in, T* out, uint32_t mask) {
    for (int l = 0; l < 32; ++l) {
      if (!((mask >> l) & 1u)) continue;
      const int w = in[l].width, base = l & ~(w - 1), arg = in[l].arg;
      int src = l;
      switch (kMode) {
        case ShflMode::Idx: src = base + (arg % w + w) % w; break;
        case ShflMode::Up: src = (l - base >= arg) ? l - arg : l; break;
        case ShflMode::Down: src = (l - base + arg < w) ? l + arg : l; break;
        case ShflMode::Xor: src = (l ^ arg) < base + w && (l ^ arg) >= base ? (l ^ arg) : l; break;
      }
      // Reading a lane outside the mask is undefined in CUDA: give a poison value.
      if ((mask >> src) & 1u) {
        out[l] = in[src].value;
      } else {
        std::memset(&out[l], 0xFF, sizeof(T));
      }
    }
  }
};
template <ShflMode kMode, typename T>
T shfl(const char* what, Site site, uint32_t mask, T value, int arg, int width = 32) {
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
    fail(site, std::string(what) + ": width must be a power of two <= 32, got " + std::to_string(width));
  }
  return collective<ShflIn<T>, T, Shfl<T, kMode>>(what, site, mask, false,
                                                  ShflIn<T>{value, arg, width});
}

enum class VoteMode : int { Ballot, Any, All };
template <VoteMode kMode>
struct Vote {
  static void apply(const int* in, uint32_t* out, uint32_t mask) {
    uint32_t ballot = 0;
    for (int l = 0; l < 32; ++l) {
      if (((mask >> l) & 1u) && in[l]) ballot |= 1u << l;
    }
    const uint32_t r = kMode == VoteMode::Ballot ? ballot
                       : kMode == VoteMode::Any  ? uint32_t(ballot != 0)
                                                 : uint32_t(ballot == mask);
    for (int l = 0; l < 32; ++l) out[l] = r;
  }
};
template <VoteMode kMode>
uint32_t vote(const char* what, Site site, uint32_t mask, int predicate) {
  return collective<int, uint32_t, Vote<kMode>>(what, site, mask, false, predicate != 0);
}

}  // namespace ovk_sim

#define __syncthreads() ::ovk_sim::syncthreads(OVK_SITE)
#define __syncwarp(...) ::ovk_sim::syncwarp(OVK_SITE __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_sync(mask, ...) \
  ::ovk_sim::shfl<::ovk_sim::ShflMode::Idx>("__shfl_sync", OVK_SITE, mask, __VA_ARGS__)
#define __shfl_up_sync(mask, ...) \
  ::ovk_sim::shfl<::ovk_sim::ShflMode::Up>("__shfl_up_sync", OVK_SITE, mask, __VA_ARGS__)
#define __shfl_down_sync(mask, ...) \
  ::ovk_sim::shfl<::ovk_sim::ShflMode::Down>("__shfl_down_sync", OVK_SITE, mask, __VA_ARGS__)
#define __shfl_xor_sync(mask, ...) \
  ::ovk_sim::shfl<::ovk_sim::ShflMode::Xor>("__shfl_xor_sync", OVK_SITE, mask, __VA_ARGS__)
#define __ballot_sync(mask, pred) \
  ::ovk_sim::vote<::ovk_sim::VoteMode::Ballot>("__ballot_sync", OVK_SITE, mask, pred)
#define __any_sync(mask, pred) \
  (::ovk_sim::vote<::ovk_sim::VoteMode::Any>("__any_sync", OVK_SITE, mask, pred) != 0)
#define __all_sync(mask, pred) \
  (::ovk_sim::vote<::ovk_sim::VoteMode::All>("__all_sync", OVK_SITE, mask, pred) != 0)

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---- memory and arithmetic built-ins ---------------------------------------------------
// A load through the read-only path; like the GPU, refuses a misaligned vector.
template <typename T>
inline T __ldg(const T* p, ::ovk_sim::CallerSite caller = {}) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0) {
    ::ovk_sim::fail(caller.site, "misaligned " + std::to_string(sizeof(T)) + "-byte __ldg");
  }
  return *p;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }

// Atomics on global or shared memory: real atomics, since blocks run on several OS
// threads at once.
template <typename T>
inline T atomicAdd(T* address, T value) {
  if constexpr (std::is_integral_v<T>) {
    return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
  } else {
    T old;
    __atomic_load(address, &old, __ATOMIC_RELAXED);
    T desired;
    do {
      desired = old + value;
    } while (!__atomic_compare_exchange(address, &old, &desired, false, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED));
    return old;
  }
}
template <typename T>
inline T atomicSub(T* address, T value) {
  return __atomic_fetch_sub(address, value, __ATOMIC_RELAXED);
}
template <typename T>
inline T atomicExch(T* address, T value) {
  T old;
  __atomic_exchange(address, &value, &old, __ATOMIC_RELAXED);
  return old;
}
template <typename T>
inline T atomicCAS(T* address, T compare, T value) {
  __atomic_compare_exchange(address, &compare, &value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;  // the old value either way
}
template <typename T>
inline T atomicMax(T* address, T value) {
  T old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (old < value &&
         !__atomic_compare_exchange_n(address, &old, value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
template <typename T>
inline T atomicMin(T* address, T value) {
  T old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (old > value &&
         !__atomic_compare_exchange_n(address, &old, value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}

// ---- half / bfloat16 (round to nearest even, as the cuda_fp16 / cuda_bf16 intrinsics) ----
using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;
inline __half __float2half_rn(float f) { return c10::Half(f); }
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return c10::BFloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return static_cast<float>(b); }

// ---- the runtime API --------------------------------------------------------------------
using cudaStream_t = struct CUstream_st*;
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
};
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
  }
  return "unknown error";
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }  // launch errors throw at once
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

// The device the simulator stands for: an H100 SXM (compute capability 9.0).
enum cudaDeviceAttr : int {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxBlockDimX = 2,
  cudaDevAttrMaxBlockDimY = 3,
  cudaDevAttrMaxBlockDimZ = 4,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxGridDimY = 6,
  cudaDevAttrMaxGridDimZ = 7,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
namespace ovk_sim {
struct H100 {
  static constexpr int kSMs = 132, kMaxThreadsPerBlock = 1024, kWarpSize = 32;
  static constexpr int kMaxBlockDim[3] = {1024, 1024, 64};
  static constexpr int kMaxGridDim[3] = {2147483647, 65535, 65535};
  static constexpr int kSharedPerBlock = 48 * 1024;         // without the opt-in attribute
  static constexpr int kSharedPerBlockOptin = 227 * 1024;   // after cudaFuncSetAttribute
  static constexpr int kSharedPerSM = 228 * 1024;
};
}  // namespace ovk_sim
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*device*/) {
  using H = ovk_sim::H100;
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = H::kMaxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: *value = H::kMaxBlockDim[0]; break;
    case cudaDevAttrMaxBlockDimY: *value = H::kMaxBlockDim[1]; break;
    case cudaDevAttrMaxBlockDimZ: *value = H::kMaxBlockDim[2]; break;
    case cudaDevAttrMaxGridDimX: *value = H::kMaxGridDim[0]; break;
    case cudaDevAttrMaxGridDimY: *value = H::kMaxGridDim[1]; break;
    case cudaDevAttrMaxGridDimZ: *value = H::kMaxGridDim[2]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = H::kSharedPerBlock; break;
    case cudaDevAttrWarpSize: *value = H::kWarpSize; break;
    case cudaDevAttrMultiProcessorCount: *value = H::kSMs; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = H::kSharedPerSM; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = H::kSharedPerBlockOptin; break;
    default: return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

struct cudaFuncAttributes {
  size_t sharedSizeBytes;
  int maxThreadsPerBlock;
  int maxDynamicSharedSizeBytes;
};
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

template <typename... P>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, void (*kernel)(P...)) {
  const ovk_sim::KernelInfo& k = ovk_sim::kernel_info(reinterpret_cast<const void*>(kernel));
  attr->sharedSizeBytes = k.static_smem;
  // __launch_bounds__ is not seen by the simulator: the device limit applies.
  attr->maxThreadsPerBlock = ovk_sim::H100::kMaxThreadsPerBlock;
  attr->maxDynamicSharedSizeBytes =
      k.max_dynamic_smem >= 0
          ? k.max_dynamic_smem
          : std::max(0, ovk_sim::H100::kSharedPerBlock - static_cast<int>(k.static_smem));
  return cudaSuccess;
}
template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  ovk_sim::KernelInfo& k = ovk_sim::kernel_info(reinterpret_cast<const void*>(kernel));
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) + k.static_smem > ovk_sim::H100::kSharedPerBlockOptin) {
    return cudaErrorInvalidValue;
  }
  k.max_dynamic_smem = value;
  return cudaSuccess;
}

struct cudaLaunchConfig_t {
  dim3 gridDim;
  dim3 blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
};

// The shape of CUDA's own cudaLaunchKernelEx: the arguments are converted to the
// kernel's parameter types, and every simulated thread gets its own copy of them. Runs
// the whole grid before returning; breaking a rule of the execution model throws.
template <typename... ExpTypes, typename... ActTypes>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(ExpTypes...),
                               ActTypes&&... args) {
  const std::tuple<std::decay_t<ExpTypes>...> params(std::forward<ActTypes>(args)...);
  const std::function<void()> body = [&params, kernel] {
    std::apply([kernel](const auto&... p) { kernel(p...); }, params);
  };
  const dim3 g = config->gridDim, b = config->blockDim;
  ovk_sim::run_grid(reinterpret_cast<const void*>(kernel), {g.x, g.y, g.z}, {b.x, b.y, b.z},
                    config->dynamicSmemBytes, body);
  return cudaSuccess;
}

// ---- the c10 CUDA helpers the launchers use -------------------------------------------
namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace c10::cuda

#define C10_CUDA_CHECK(EXPR)                                                          \
  do {                                                                                \
    const cudaError_t ovk_err_ = (EXPR);                                              \
    TORCH_CHECK(ovk_err_ == cudaSuccess, "CUDA error: ", cudaGetErrorString(ovk_err_)); \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
