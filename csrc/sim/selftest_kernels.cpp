// Kernels that exercise the simulator itself (barriers, races, shuffles, votes, atomics,
// launch limits), written as CUDA and launched like the library's kernels. Exposed as
// overfeat_kernels_simtest::run(name, input, arg) for tests/test_simulator.py; compiled
// into the simulator only.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "../cuda/conv3x3_igemm.cuh"
#include "../cuda/dynamic_smem.cuh"
#include "../cuda/launch.cuh"
#include "../cuda/mbarrier.cuh"
#include "planted_bug.h"

namespace overfeat_kernels {
namespace {

constexpr int kBlock = 256;

// out[t] = in[(t + 1) % n] through shared memory, with the barrier it needs.
__global__ void barrier_kernel(const float* in, float* out) {
  __shared__ float s[kBlock];
  const int t = threadIdx.x;
  s[t] = in[t];
  __syncthreads();
  out[t] = s[(t + 1) % kBlock];
}

// The same exchange without the barrier: a race. Thread t reads what thread t - 1 wrote,
// so threads run in order happen to get it right; other schedules read poison (NaN).
__global__ void race_kernel(const float* in, float* out) {
  __shared__ float s[kBlock];
  const int t = threadIdx.x;
  s[t] = in[t];
  out[t] = t > 0 ? s[t - 1] : in[kBlock - 1];
}

// Shared-memory accesses the race detector must judge (tests/test_sim_races.py), by case:
// 0 write after read (read the right neighbour's slot, then overwrite one's own), 1 write
// after write (two threads per slot), 2 lanes exchanging through shared memory after a
// __syncwarp (ordered: no race), 3 the same exchange between warps (a race), 4 a
// warp-ordered chain: lane 0 writes, __syncwarp, lane 1 copies it after another warp
// reads lane 1's copy only after __syncthreads (no race), 5 an atomic counter (no race),
// 6 case 0's race in a frame with a destructor to run (the detector must not unwind
// through the compiler's non-throwing hook calls).
template <int kCase>
__global__ void race_cases_kernel(const float* in, float* out) {
  __shared__ float s[kBlock];
  __shared__ int counter;
  const int t = threadIdx.x;
  if constexpr (kCase == 0) {
    s[t] = in[t];
    __syncthreads();
    const float right = s[(t + 1) % kBlock];
    s[t] = 2.f * right;
    out[t] = right;
  } else if constexpr (kCase == 1) {
    s[t / 2] = in[t];
    __syncthreads();
    out[t] = s[t / 2];
  } else if constexpr (kCase == 2) {
    s[t] = in[t];
    __syncwarp();
    out[t] = s[(t & ~31) | ((t + 1) & 31)];
  } else if constexpr (kCase == 3) {
    s[t] = in[t];
    __syncwarp();
    out[t] = s[(t + 32) % kBlock];
  } else if constexpr (kCase == 4) {
    if (t % 32 == 0) s[t] = in[t];
    __syncwarp();
    if (t % 32 == 1) s[t] = s[t - 1] + 1.f;
    __syncthreads();
    out[t] = s[(((t + 32) % kBlock) & ~31) | 1];
  } else if constexpr (kCase == 6) {
    struct Cleanup {
      float* out;
      int t;
      ~Cleanup() { out[t] += 0.f; }
    } cleanup{out, t};
    s[t] = in[t];
    __syncthreads();
    const float right = s[(t + 1) % kBlock];
    s[t] = 2.f * right;
    out[t] = right;
  } else {
    if (t == 0) counter = 0;
    __syncthreads();
    atomicAdd(&counter, 1);
    __syncthreads();
    out[t] = static_cast<float>(counter);
  }
}

// A barrier inside a branch that splits the block: two call sites.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 100) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

// Threads that exit before a barrier count as arrived (as on the GPU).
__global__ void early_exit_kernel(const float* in, float* out) {
  __shared__ float s[kBlock];
  const int t = threadIdx.x;
  if (t >= kBlock / 2) return;
  s[t] = in[t];
  __syncthreads();
  out[t] = s[kBlock / 2 - 1 - t];
}

// Per lane: [shfl idx (lane+3)%32, shfl up 1, shfl down 2, shfl xor 5, ballot(v > 0),
// any(v > 2), all(v > -10), shfl idx width 8 (lane+1)%8].
__global__ void warp_kernel(const float* in, float* out) {
  const unsigned full = 0xFFFFFFFFu;
  const int t = threadIdx.x, lane = t % 32;
  const float v = in[t];
  float* o = out + t * 8;
  o[0] = __shfl_sync(full, v, (lane + 3) % 32);
  o[1] = __shfl_up_sync(full, v, 1);
  o[2] = __shfl_down_sync(full, v, 2);
  o[3] = __shfl_xor_sync(full, v, 5);
  o[4] = static_cast<float>(__ballot_sync(full, v > 0.f) & 0xFFFFu);
  o[5] = __any_sync(full, v > 2.f) ? 1.f : 0.f;
  o[6] = __all_sync(full, v > -10.f) ? 1.f : 0.f;
  o[7] = __shfl_sync(full, v, (lane + 1) % 8, 8);
  __syncwarp();
}

// A full-warp shuffle in a block whose last warp is partial.
__global__ void partial_warp_kernel(const float* in, float* out) {
  out[threadIdx.x] = __shfl_sync(0xFFFFFFFFu, in[threadIdx.x], 0);
}

// Lanes of a warp at two different shuffles.
__global__ void divergent_shuffle_kernel(const float* in, float* out) {
  const float v = in[threadIdx.x];
  out[threadIdx.x] = threadIdx.x % 2 ? __shfl_sync(0xFFFFFFFFu, v, 0) : __shfl_sync(0xFFFFFFFFu, v, 1);
}

// Every thread of every block adds to three counters.
__global__ void atomics_kernel(int* counts, float* sum, int* max_id) {
  const int id = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(counts, 1);
  atomicAdd(sum, 0.5f);
  atomicMax(max_id, id);
}

// `rounds` barriers in a row (the cost of a barrier).
__global__ void barriers_kernel(float* out, int rounds) {
  __shared__ float s[kBlock];
  for (int r = 0; r < rounds; ++r) {
    s[threadIdx.x] = static_cast<float>(r);
    __syncthreads();
  }
  out[threadIdx.x] = s[(threadIdx.x + 1) % kBlock];
}

// Writes one element past the end of `out` (n elements).
__global__ void out_of_bounds_kernel(float* out, int n) {
  const int t = threadIdx.x;
  if (t <= n) out[t] = 1.f;  // the bug: <= instead of <
}

// Forgets the last element of `out`.
__global__ void unwritten_kernel(float* out, int n) {
  if (threadIdx.x < n - 1) out[threadIdx.x] = 1.f;
}

// Nothing but a launch (for the launch-limit checks).
__global__ void empty_kernel(float* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0 && out != nullptr) out[0] = 1.f;
}

// Static shared memory above the 48 KB a block may have.
__global__ void big_shared_kernel(float* out) {
  __shared__ float s[13 * 1024];  // 52 KB
  s[threadIdx.x] = 1.f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

// ---- mbarrier ------------------------------------------------------------------------------

constexpr int kRingSlots = 2, kRingItems = 32;

// A producer warp and a consumer warp passing `rounds` batches of 32 values through a
// 2-slot ring in shared memory, each slot guarded by a "full" and an "empty" mbarrier
// (32 arrivals each). out[lane] = sum over rounds r of slot value (lane + r) % 32 times
// (r + 1), where round r's slot holds in[(32 r + i) % 256] + r. kWaitFull = false is the
// bug of a consumer that does not wait for its slot to be filled.
template <bool kWaitFull>
__global__ void mbarrier_ring_kernel(const float* in, float* out, int rounds) {
  __shared__ __align__(8) uint64_t full[kRingSlots], empty[kRingSlots];
  __shared__ float slots[kRingSlots][kRingItems];
  const int t = threadIdx.x, lane = t % 32;
  if (t == 0) {
    for (int s = 0; s < kRingSlots; ++s) {
      mbarrier_init(&full[s], 32);
      mbarrier_init(&empty[s], 32);
    }
    mbarrier_fence_init();
  }
  __syncthreads();
  if (t < 32) {  // producer
    for (int r = 0; r < rounds; ++r) {
      const int s = r % kRingSlots;
      const uint32_t use = static_cast<uint32_t>(r / kRingSlots);
      if (use > 0) mbarrier_wait_parity(&empty[s], (use - 1) & 1);
      slots[s][lane] = in[(r * kRingItems + lane) % 256] + static_cast<float>(r);
      mbarrier_arrive(&full[s]);
    }
  } else {  // consumer
    float acc = 0.f;
    for (int r = 0; r < rounds; ++r) {
      const int s = r % kRingSlots;
      const uint32_t use = static_cast<uint32_t>(r / kRingSlots);
      if (kWaitFull) mbarrier_wait_parity(&full[s], use & 1);
      acc += slots[s][(lane + r) % kRingItems] * static_cast<float>(r + 1);
      mbarrier_arrive(&empty[s]);
    }
    out[lane] = acc;
  }
}

// One thread walks a barrier through its phases and records, after each step, whether
// the phases of parity 0 and 1 count as completed (test_wait), and for arrivals whether
// the state token equals the previous arrival's on that barrier (-1: no arrival): on a
// barrier of 1 arrival, init, arrive, expect_tx 16 + arrive, complete-tx 8, complete-tx 8;
// on one of 2, arrive, arrive, arrive with count 2.
__global__ void mbarrier_phases_kernel(float* out) {
  __shared__ __align__(8) uint64_t one, two;
  if (threadIdx.x != 0) return;
  int k = 0;
  uint64_t last = 0;
  const auto record = [&](uint64_t* bar, bool arrived, uint64_t token) {
    out[k++] = mbarrier_test_wait_parity(bar, 0) ? 1.f : 0.f;
    out[k++] = mbarrier_test_wait_parity(bar, 1) ? 1.f : 0.f;
    out[k++] = arrived ? (token == last ? 1.f : 0.f) : -1.f;
    if (arrived) last = token;
  };
  mbarrier_init(&one, 1);
  record(&one, false, 0);
  record(&one, true, mbarrier_arrive(&one));                  // phase 0 done
  record(&one, true, mbarrier_arrive_expect_tx(&one, 16));    // phase 1 waits for bytes
  ovk_sim::mbarrier_complete_tx(OVK_SITE, &one, 8);
  record(&one, false, 0);
  ovk_sim::mbarrier_complete_tx(OVK_SITE, &one, 8);           // phase 1 done
  record(&one, false, 0);
  mbarrier_init(&two, 2);
  last = 0;
  record(&two, true, mbarrier_arrive(&two));                  // 1 of 2
  record(&two, true, mbarrier_arrive(&two));                  // phase 0 done: same token
  record(&two, true, mbarrier_arrive_count(&two, 2));         // phase 1 done
}

enum class MBarrierBug : int {
  MissingArrival = 0,  // 2 expected, 1 arrives: the waiters deadlock
  OverArrival,         // 2 arrivals on a phase that expects 1
  TxNeverLands,        // expect_tx 64, 32 bytes complete: deadlock with tx-count 32
  TxTooMuch,           // expect_tx 16, 32 bytes complete: the phase would end below zero
  Uninitialised,       // a wait on a barrier nobody initialised
  Overwritten,         // an ordinary store over a live barrier
  NotShared,           // a barrier in global memory
  Misaligned,          // a barrier 4 bytes off its 8-byte alignment
  InitWhileWaited,     // the last thread re-initialises the barrier the others wait on
  HalfAtSyncthreads,   // warp 0 waits on a phase, warp 1 at __syncthreads: a deadlock
  SpinOnTestWait,      // a loop on test_wait for a phase nothing completes
  ArriveCount,         // an arrival count of 0
};

template <MBarrierBug kBug>
__global__ void mbarrier_bug_kernel(float* out) {
  __shared__ __align__(8) uint64_t bar;
  const int t = threadIdx.x;
  if constexpr (kBug == MBarrierBug::NotShared) {
    if (t == 0) mbarrier_init(reinterpret_cast<uint64_t*>(out), 1);
    return;
  }
  if constexpr (kBug == MBarrierBug::Misaligned) {
    __shared__ __align__(8) uint64_t pair[2];
    if (t == 0) mbarrier_init(reinterpret_cast<uint64_t*>(reinterpret_cast<char*>(pair) + 4), 1);
    return;
  }
  if constexpr (kBug == MBarrierBug::InitWhileWaited) {
    if (t == 0) mbarrier_init(&bar, 1);
    __syncthreads();
    if (t == static_cast<int>(blockDim.x) - 1) {
      mbarrier_init(&bar, 1);
    } else {
      mbarrier_wait_parity(&bar, 0);
    }
    return;
  }
  if constexpr (kBug == MBarrierBug::HalfAtSyncthreads) {
    if (t == 0) mbarrier_init(&bar, 1);
    __syncthreads();
    if (t < 32) mbarrier_wait_parity(&bar, 0);
    __syncthreads();
    return;
  }
  if constexpr (kBug == MBarrierBug::SpinOnTestWait) {
    if (t == 0) mbarrier_init(&bar, 1);
    __syncthreads();
    if (t == 0) {
      while (!mbarrier_test_wait_parity(&bar, 0)) {
      }
    }
    return;
  }
  if constexpr (kBug == MBarrierBug::ArriveCount) {
    if (t == 0) {
      mbarrier_init(&bar, 1);
      mbarrier_arrive_count(&bar, 0);
    }
    return;
  }
  if (t == 0 && kBug != MBarrierBug::Uninitialised) {
    mbarrier_init(&bar, kBug == MBarrierBug::MissingArrival ? 2 : 1);
  }
  __syncthreads();
  if (t == 0) {
    if constexpr (kBug == MBarrierBug::MissingArrival) mbarrier_arrive(&bar);
    if constexpr (kBug == MBarrierBug::OverArrival) mbarrier_arrive_count(&bar, 2);
    if constexpr (kBug == MBarrierBug::TxNeverLands) {
      mbarrier_arrive_expect_tx(&bar, 64);
      ovk_sim::mbarrier_complete_tx(OVK_SITE, &bar, 32);
    }
    if constexpr (kBug == MBarrierBug::TxTooMuch) {
      mbarrier_arrive_expect_tx(&bar, 16);
      ovk_sim::mbarrier_complete_tx(OVK_SITE, &bar, 32);
    }
    if constexpr (kBug == MBarrierBug::Overwritten) {
      bar = 0;
      mbarrier_arrive(&bar);
    }
  }
  mbarrier_wait_parity(&bar, 0);
  out[t] = 1.f;
}

// Reverses n floats through dynamic shared memory, where they sit 16 bytes after an
// mbarrier (also in dynamic shared memory) that every thread arrives on once its values are
// written and waits on before reading.
__global__ void dynamic_smem_kernel(const float* in, float* out, int n) {
  uint64_t* bar = dynamic_shared_memory<uint64_t>();
  float* data = reinterpret_cast<float*>(bar + 2);
  const int t = threadIdx.x, threads = static_cast<int>(blockDim.x);
  if (t == 0) {
    mbarrier_init(bar, static_cast<uint32_t>(threads));
    mbarrier_fence_init();
  }
  __syncthreads();
  for (int i = t; i < n; i += threads) data[i] = in[i];
  mbarrier_arrive(bar);
  mbarrier_wait_parity(bar, 0);
  for (int i = t; i < n; i += threads) out[i] = data[n - 1 - i];
}

at::Tensor run(const std::string& name, const at::Tensor& input, int64_t arg) {
  TORCH_CHECK(input.is_cpu() && input.scalar_type() == at::kFloat && input.is_contiguous(),
              "simtest: input must be a contiguous float32 CPU tensor");
  const float* in = input.const_data_ptr<float>();
  at::Tensor out = at::empty({kBlock * 8}, input.options());
  float* o = out.mutable_data_ptr<float>();
  if (name == "barrier" || name == "race" || name == "early_exit") {
    TORCH_CHECK(input.numel() >= kBlock, "simtest: needs ", kBlock, " inputs");
    if (name == "barrier") launch_kernel<barrier_kernel>(1, kBlock, 0, nullptr, in, o);
    if (name == "race") launch_kernel<race_kernel>(1, kBlock, 0, nullptr, in, o);
    if (name == "early_exit") launch_kernel<early_exit_kernel>(1, kBlock, 0, nullptr, in, o);
    return out.narrow(0, 0, name == "early_exit" ? kBlock / 2 : kBlock);
  }
  if (name == "barriers") {
    launch_kernel<barriers_kernel>(1, kBlock, 0, nullptr, o, static_cast<int>(arg));
    return out.narrow(0, 0, kBlock);
  }
  if (name == "out_of_bounds" || name == "unwritten") {
    at::Tensor small = at::empty({arg}, input.options());
    float* p = small.mutable_data_ptr<float>();
    const int n = static_cast<int>(arg);
    if (name == "out_of_bounds") launch_kernel<out_of_bounds_kernel>(1, n + 1, 0, nullptr, p, n);
    if (name == "unwritten") launch_kernel<unwritten_kernel>(1, n, 0, nullptr, p, n);
    return small;
  }
  if (name == "race_cases") {
    const bool known = with_constant<0, 1, 2, 3, 4, 5, 6>(static_cast<int>(arg), [&](auto c) {
      launch_kernel<race_cases_kernel<decltype(c)::value>>(1, kBlock, 0, nullptr, in, o);
    });
    TORCH_CHECK(known, "simtest: unknown race case ", arg);
    return out.narrow(0, 0, kBlock);
  }
  if (name == "divergent_barrier") {
    launch_kernel<divergent_barrier_kernel>(1, kBlock, 0, nullptr, o);
    return out;
  }
  if (name == "warp") {
    TORCH_CHECK(input.numel() >= 64, "simtest: needs 64 inputs");
    launch_kernel<warp_kernel>(1, 64, 0, nullptr, in, o);
    return out.narrow(0, 0, 64 * 8).view({64, 8});
  }
  if (name == "partial_warp") {
    launch_kernel<partial_warp_kernel>(1, static_cast<unsigned>(arg), 0, nullptr, in, o);
    return out;
  }
  if (name == "divergent_shuffle") {
    launch_kernel<divergent_shuffle_kernel>(1, 32, 0, nullptr, in, o);
    return out;
  }
  if (name == "atomics") {
    at::Tensor state = at::zeros({3}, input.options().dtype(at::kInt));
    int* s = state.mutable_data_ptr<int>();
    state[2] = -1;
    float* sum = reinterpret_cast<float*>(s + 1);
    *sum = 0.f;
    launch_kernel<atomics_kernel>(static_cast<unsigned>(arg), kBlock, 0, nullptr, s, sum, s + 2);
    return state;
  }
  if (name == "mbarrier_ring" || name == "mbarrier_ring_no_wait") {
    TORCH_CHECK(input.numel() >= 256, "simtest: needs 256 inputs");
    const int rounds = static_cast<int>(arg);
    if (name == "mbarrier_ring") {
      launch_kernel<mbarrier_ring_kernel<true>>(1, 64, 0, nullptr, in, o, rounds);
    } else {
      launch_kernel<mbarrier_ring_kernel<false>>(1, 64, 0, nullptr, in, o, rounds);
    }
    return out.narrow(0, 0, 32);
  }
  if (name == "mbarrier_phases") {
    launch_kernel<mbarrier_phases_kernel>(1, 32, 0, nullptr, o);
    return out.narrow(0, 0, 8 * 3).view({8, 3});
  }
  if (name == "mbarrier_bug") {
    using B = MBarrierBug;
    const bool known =
        with_constant<B::MissingArrival, B::OverArrival, B::TxNeverLands, B::TxTooMuch,
                      B::Uninitialised, B::Overwritten, B::NotShared, B::Misaligned,
                      B::InitWhileWaited, B::HalfAtSyncthreads, B::SpinOnTestWait, B::ArriveCount>(
            static_cast<B>(arg), [&](auto b) {
              launch_kernel<mbarrier_bug_kernel<decltype(b)::value>>(1, 64, 0, nullptr, o);
            });
    TORCH_CHECK(known, "simtest: unknown mbarrier bug ", arg);
    return out.narrow(0, 0, 64);
  }
  if (name == "dynamic_smem") {
    // arg = n floats; negative: the same without raising the kernel's dynamic-memory limit.
    const int n = static_cast<int>(arg < 0 ? -arg : arg);
    TORCH_CHECK(input.numel() >= n, "simtest: needs ", n, " inputs");
    at::Tensor result = at::empty({n}, input.options());
    const size_t bytes = 16 + size_t(n) * sizeof(float);
    const bool opt_in = arg > 0 && bytes > 48 * 1024;
    if (opt_in) set_max_dynamic_smem<dynamic_smem_kernel>(static_cast<int>(bytes));
    launch_kernel<dynamic_smem_kernel>(1, kBlock, bytes, nullptr, in, result.mutable_data_ptr<float>(), n);
    if (opt_in) set_max_dynamic_smem<dynamic_smem_kernel>(48 * 1024);
    return result;
  }
  // Launch configurations: arg selects what the GPU would refuse.
  if (name == "launch") {
    switch (arg) {
      case 0: launch_kernel<empty_kernel>(1, 1024, 0, nullptr, o); break;            // fine
      case 1: launch_kernel<empty_kernel>(1, 1025, 0, nullptr, o); break;            // threads
      case 2: launch_kernel<empty_kernel>(dim3(1, 65536), 32, 0, nullptr, o); break;  // grid y
      case 3: launch_kernel<empty_kernel>(0, 32, 0, nullptr, o); break;              // empty
      case 4: launch_kernel<empty_kernel>(1, 32, 64 * 1024, nullptr, o); break;      // smem
      case 5: {  // the same after opting in
        set_max_dynamic_smem<empty_kernel>(64 * 1024);
        launch_kernel<empty_kernel>(1, 32, 64 * 1024, nullptr, o);
        set_max_dynamic_smem<empty_kernel>(48 * 1024);
        break;
      }
      case 6: launch_kernel<big_shared_kernel>(1, 32, 0, nullptr, o); break;         // static smem
      case 7: launch_kernel<empty_kernel>(dim3(1, 1, 65), dim3(1, 1, 65), 0, nullptr, o); break;
      default: TORCH_CHECK(false, "simtest: unknown launch case ", arg);
    }
    return out.narrow(0, 0, 1);
  }
  TORCH_CHECK(false, "simtest: unknown test ", name);
}

}  // namespace
}  // namespace overfeat_kernels

// The tensor-core conv's tile heuristic (0: large tiles, 1: small), for its unit test.
int64_t conv_tiles(int64_t pixels, int64_t filters, int64_t element_bytes, int64_t sms) {
  const auto tiles = overfeat_kernels::choose_tiles(pixels, filters,
                                                    static_cast<int>(element_bytes), sms);
  return tiles == overfeat_kernels::Tiles::kLarge ? 0 : 1;
}

TORCH_LIBRARY(overfeat_kernels_simtest, m) {
  m.def("conv_tiles(int pixels, int filters, int element_bytes, int sms) -> int", &conv_tiles);
  m.def("run(str name, Tensor input, int arg) -> Tensor");
  m.impl("run", c10::DispatchKey::CPU, &overfeat_kernels::run);
}
