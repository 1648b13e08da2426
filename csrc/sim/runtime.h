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

enum class WaitKind : uint8_t { None, Barrier, Warp, MBarrier };
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

// Counters, for tests and `selfcheck`: launches per kernel name, and the host-side steps the
// launchers report (e.g. "conv3x3 copy: filters", an operand copied before a launch).
std::vector<std::pair<std::string, int64_t>> launch_counts();
std::vector<std::pair<std::string, int64_t>> host_steps();
void count_host_step(const std::string& name);
void reset_launch_counts();

}  // namespace ovk_sim
