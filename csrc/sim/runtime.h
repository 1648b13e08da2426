// The simulator's execution model (see README "Testing CUDA code without a GPU").
//
// A launch runs its blocks on the CPU's threads (at::parallel_for); the threads of one
// block run as cooperative fibers on one OS thread, switched only at barriers and warp
// collectives. Adversarial by default: static and dynamic shared memory is filled with
// 0xFF bytes (NaN in every float type) when a block starts; the order in which the
// block's threads run between barriers follows a schedule (in order, reversed, seeded
// shuffle) so that a race between barriers shows as a bitwise difference between
// schedules; a barrier reached at different call sites, or a warp collective that not
// all its lanes reach, raises naming the kernel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <source_location>
#include <string>
#include <vector>

#include "fiber.h"

// CUDA's uint3, and its built-in index variables: per OS thread, set by the scheduler
// before it resumes a simulated thread (a block's fibers all run on one OS thread).
struct uint3 {
  unsigned x, y, z;
};
extern thread_local uint3 threadIdx, blockIdx, blockDim, gridDim;

namespace overfeat_kernels::tma {
struct TensorMapSpec;  // csrc/cuda/tensor_map.cuh
}

namespace ovk_sim {

using Dim3 = ::uint3;

// A source location: barriers and collectives are matched by call site.
struct Site {
  const char* file;
  int line;
  int column;  // tells apart two calls on one line
};
#define OVK_SITE                                                                  \
  (::ovk_sim::Site{__FILE__, __LINE__,                                            \
                   static_cast<int>(std::source_location::current().column())})

// The call site of a function that takes `CallerSite site = {}` last: g++ evaluates the
// constructor's default arguments where that function is called.
struct CallerSite {
  CallerSite(const char* file = __builtin_FILE(), int line = __builtin_LINE())
      : site{file, line, 0} {}
  Site site;
};

enum class Schedule : int { InOrder = 0, Reversed = 1, Shuffle = 2 };

struct Options {
  Schedule schedule = Schedule::InOrder;
  uint64_t seed = 0;
  bool poison_shared = true;
  // The shared-memory race detector (race_detector.cpp), and the async-proxy checks that
  // share its records: on by default.
  bool race_check = true;
};
Options& options();

// What the module's symbol table says about a kernel: its name and its static
// __shared__ variables (offsets in the module's thread-local block, and sizes).
struct KernelInfo {
  std::string name;  // demangled, without the parameter list
  struct Var {
    size_t offset, size;
  };
  std::vector<Var> shared;
  size_t static_smem = 0;
  int max_dynamic_smem = -1;  // cudaFuncAttributeMaxDynamicSharedMemorySize; -1: not set
};
KernelInfo& kernel_info(const void* kernel);

// Runs `body` once per thread of every block of the grid. Throws (c10::Error) when a
// thread of the kernel breaks a rule of the execution model.
void run_grid(const void* kernel, Dim3 grid, Dim3 block, size_t dynamic_smem,
              const std::function<void()>& body);

// ---- what the CUDA surface (cuda_sim.h) calls from inside a kernel ----------------------

enum class WaitKind : uint8_t { None, Barrier, Warp, MBarrier, WarpGroup };
enum class ThreadState : uint8_t { Runnable, Blocked, Exited };

struct CpAsyncCopy {
  void* dst;
  const void* src;
  uint32_t bytes, src_bytes;
};

struct SimThread {
  Dim3 idx;
  unsigned linear = 0;
  ThreadState state = ThreadState::Runnable;
  WaitKind waiting = WaitKind::None;
  Site site{nullptr, 0, 0};
  Fiber fiber;
  struct SimBlock* block = nullptr;
  std::vector<CpAsyncCopy> async_copies;  // issued, not landed, in issue order
  std::vector<size_t> group_ends;         // committed groups: end index in async_copies
  const void* mbarrier = nullptr;         // WaitKind::MBarrier: the barrier and the parity
  uint32_t mbarrier_parity = 0;           // of the phase awaited
  uint64_t failed_test_waits = 0;         // in a row: a thread spinning on test_wait
};

constexpr int kLaneBytes = 64;  // operand bytes a lane may pass to a warp collective

// One lane-exchange in progress in a warp.
struct WarpExchange {
  bool open = false;
  const char* what = nullptr;
  Site site{nullptr, 0, 0};
  uint32_t mask = 0, arrived = 0;
  bool full_warp = false;
  void (*combine)(const unsigned char (*in)[kLaneBytes], unsigned char (*out)[kLaneBytes],
                  uint32_t mask) = nullptr;
  alignas(16) unsigned char in[32][kLaneBytes];
  alignas(16) unsigned char out[32][kLaneBytes];
};

struct SimBlock {
  const KernelInfo* kernel = nullptr;
  Dim3 idx, dim, grid;
  std::vector<SimThread>* threads = nullptr;
  std::vector<WarpExchange>* warps = nullptr;
  unsigned char* dynamic_smem = nullptr;
  Fiber scheduler;
  std::string error;
};

SimThread& this_thread();
inline SimBlock& this_block() { return *this_thread().block; }

// Blocks the calling thread at a __syncthreads until every live thread of the block is
// there, at the same call site.
void syncthreads(Site site);

// A warp collective: each lane in `mask` passes `in` (at most kLaneBytes); when all of
// them have arrived at the same call site, `combine` computes every lane's output from
// all inputs, and this lane's comes back in `out`. `full_warp`: the instruction is
// .aligned and needs all 32 lanes (mma, ldmatrix).
void warp_collective(const char* what, Site site, uint32_t mask, bool full_warp,
                     const void* in, size_t in_bytes, void* out, size_t out_bytes,
                     void (*combine)(const unsigned char (*)[kLaneBytes],
                                     unsigned char (*)[kLaneBytes], uint32_t));

// Raises, naming the kernel, block and thread: for rule violations found in primitives.
[[noreturn]] void fail(Site site, const std::string& what);

// The calling thread's block's dynamic shared memory (16-byte aligned; the launch's
// dynamic_smem bytes, poisoned at block start): what `extern __shared__` names on a GPU.
unsigned char* dynamic_shared_memory();

// Shared-window addresses (what __cvta_generic_to_shared gives on a GPU), for the operands
// Hopper's units take by address (wgmma descriptors, TMA destinations): dynamic shared
// memory only. shared_pointer checks that [address, address + bytes) lies inside it.
uint32_t shared_address(Site site, const void* p);
unsigned char* shared_pointer(Site site, uint32_t address, size_t bytes);

// Whether [p, p + bytes) lies in the calling thread's block's shared memory (static
// __shared__ variables or dynamic shared memory): for primitives that need shared memory.
bool in_shared_memory(const void* p, size_t bytes);

// cp.async bookkeeping (the copies land only in wait_group).
void cp_async(Site site, void* dst, const void* src, uint32_t bytes, uint32_t src_bytes);
void cp_async_commit();
void cp_async_wait(Site site, int pending_groups);

// mbarrier objects (PTX ISA, "Parallel synchronization and communication instructions:
// mbarrier"): 8 bytes of shared memory, 8-byte aligned, holding a phase, the arrivals
// pending in it (of an expected count set at init) and a transaction count in bytes. A
// phase completes when its pending arrivals and its tx-count are both zero; the next one
// then expects the same arrivals. The simulator keeps each barrier's state beside the
// block and an image of it in its 8 bytes, so that a generic store over a live barrier,
// an over-arrival, a tx-count that would end a phase below zero, and a barrier used before
// its init raise naming the kernel, block, thread and call site; a wait that cannot be
// satisfied because every live thread is waiting is reported as a deadlock naming the
// barrier, instead of hanging.
void mbarrier_init(Site site, void* bar, uint32_t count);
// Arrives `count` times; returns a state token, opaque as the GPU's (equal for arrivals in
// one phase of one barrier; its bits are not the phase).
uint64_t mbarrier_arrive(Site site, void* bar, uint32_t count);
void mbarrier_expect_tx(Site site, void* bar, uint32_t bytes);
// What a TMA transfer's complete-tx will do when its bytes have landed (a simulator hook:
// the TMA model that calls it is still to come; tests call it directly).
void mbarrier_complete_tx(Site site, void* bar, uint32_t bytes);
// Whether the phase of parity `parity` has completed (it is not the current one). A false
// answer lets the other threads run before it returns, so a loop spinning on it makes
// progress; a thread that keeps getting false with nothing else left to run raises.
bool mbarrier_test_wait_parity(Site site, void* bar, uint32_t parity);
// Suspends the calling thread until the phase of parity `parity` has completed: the
// other threads run meanwhile (a GPU's try_wait loop, without the spinning).
void mbarrier_wait_parity(Site site, void* bar, uint32_t parity);

// ---- warpgroups and wgmma (PTX ISA 9.7.15, wgmma_model.cpp) ----------------------------
// A collective of the 128 threads of a warpgroup (4 consecutive warps, the first a multiple
// of 4): each passes `uniform` (which all must pass the same, bytewise) and its own `mine`;
// the last to arrive runs `combine` over the 128 `mine` pointers (in thread order), then all
// go on. A thread that arrives elsewhere, with other uniform bytes, or a warpgroup whose
// threads do not all exist raises naming the kernel, block, thread and call site.
void warpgroup_collective(const char* what, Site site, const void* uniform, size_t uniform_bytes,
                          void* mine, const std::function<void(void* const* mine)>& combine);

enum class WgmmaType : uint8_t { BF16, F16, TF32 };

// The operands of one wgmma.mma_async that every thread of the warpgroup passes the same.
struct WgmmaCall {
  WgmmaType type;
  int n;                 // 8 .. 256, a multiple of 8 (K is 16, or 8 for tf32)
  bool a_in_registers;   // A from registers (then desc_a is unused)
  bool scale_d;          // false: D = A * B, the accumulators' old values ignored
  int scale_a, scale_b;  // +1 or -1
  bool trans_a, trans_b; // MN-major (16-bit types only)
  uint64_t desc_a, desc_b;
};

// wgmma.mma_async: `d` holds the thread's n / 2 accumulators, `a_regs` its A fragment (4
// registers) when A comes from registers. Asynchronous as on a GPU: the accumulators hold
// poison (NaN) from here until a wgmma.wait_group retires the operation; reading them
// earlier gives NaN, writing them (or the A registers) earlier, a shared-memory operand
// changed before then, or an operation issued on accumulators handed back by a wait_group
// without a wgmma.fence since, raise.
void wgmma(Site site, const WgmmaCall& call, float* d, const uint32_t* a_regs);
void wgmma_fence(Site site);
// setmaxnreg: a warpgroup collective (every thread the same count and direction); the
// simulator has no registers to move, so it checks and returns.
void setmaxnreg(Site site, int regs, bool increase);
void wgmma_commit(Site site);
void wgmma_wait(Site site, int pending_groups);

// ---- TMA (PTX ISA 9.7.9.25 "Data movement: bulk tensor copies", tma_model.cpp) ----------
// cp.async.bulk.tensor, global -> shared, completing on an mbarrier: the box (tiled or
// im2col, out-of-bound elements filled) is read from global memory when the load is
// issued; its destination holds poison from then until a thread's wait sees the barrier
// phase it completes end, when the bytes land (swizzled as the map says): a thread that
// reads without waiting sees poison. Its byte count is subtracted from the barrier's
// tx-count at once. `offsets` (im2col only) are the per-spatial-dimension
// offsets of the instruction.
void tma_load(Site site, const overfeat_kernels::tma::TensorMapSpec& map, void* dst, void* bar,
              int dims, const int32_t* coords, const uint16_t* offsets);
// cp.async.bulk.tensor, shared -> global (tiled), in the calling thread's bulk async-group:
// the shared memory is read only at the wait_group[.read] that covers it, global memory
// written only at the (full) wait_group that covers it, or when the thread exits; elements
// outside the tensor are not written. `dims` (the instruction's) must be the map's rank.
void tma_store(Site site, const overfeat_kernels::tma::TensorMapSpec& map, const void* src,
               int dims, const int32_t* coords);
void bulk_commit(Site site);
// cp.async.bulk.wait_group[.read] N.
void bulk_wait(Site site, int pending_groups, bool read_only);
// fence.proxy.async.shared::cta: the calling thread's earlier generic writes to shared
// memory become visible to the async proxy (wgmma operands, TMA stores).
void fence_proxy_async(Site site);

// Counters, for tests and `selfcheck`: launches per kernel name, and the host-side steps the
// launchers report (e.g. "conv3x3 copy: filters", an operand copied before a launch).
std::vector<std::pair<std::string, int64_t>> launch_counts();
std::vector<std::pair<std::string, int64_t>> host_steps();
void count_host_step(const std::string& name);
void reset_launch_counts();

}  // namespace ovk_sim
