// The simulator's per-OS-thread state of the block it runs (internal to csrc/sim): shared
// by the scheduler (runtime.cpp) and the models of Hopper's asynchronous units
// (wgmma_model.cpp, tma_model.cpp). Kernels never include this.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime.h"

namespace ovk_sim::detail {

// One mbarrier object (runtime.h, "mbarrier objects").
struct MBarrierState {
  uint32_t expected = 0;
  int64_t pending = 0, tx = 0;
  uint64_t phase = 0;
  Site init{nullptr, 0, 0};
  uint64_t image = 0;  // what its 8 bytes of shared memory hold
};

// A TMA load in flight: its bytes, read from global memory when it was issued, land in
// shared memory when a thread's wait sees the phase of `bar` it completes end (the latest
// moment a GPU may make them visible; tma_model.cpp).
struct TmaLanding {
  void* bar;
  uint64_t phase;
  bool phase_complete = false;
  unsigned issuer;
  std::vector<uint32_t> issuer_clocks;  // the race detector's view of the issue
  uint32_t issue_epoch;
  std::vector<unsigned char*> chunks;  // where each 16 bytes of `data` go (swizzled)
  std::vector<unsigned char> data;
  Site site;
};

// A TMA store issued and not yet performed (tma_model.cpp).
struct BulkStore {
  const void* spec;  // the kernel's TensorMapSpec (a kernel parameter: alive all launch)
  const unsigned char* src;
  int32_t coords[5];
  Site site;
  bool read = false;                 // its shared memory has been read (wait_group.read)
  std::vector<unsigned char*> dsts;  // then: where each element goes, and its bytes
  std::vector<unsigned char> bytes;
};
struct BulkThread {
  std::vector<BulkStore> ops;
  std::vector<size_t> group_ends;
};

// A warpgroup collective in progress (4 consecutive warps of 32 threads).
struct WarpGroupExchange {
  bool open = false;
  const char* what = nullptr;
  Site site{nullptr, 0, 0};
  std::vector<unsigned char> uniform;  // what every thread must pass the same
  std::array<void*, 128> mine{};
  unsigned arrived = 0;
};

struct WgmmaThread;  // wgmma_model.cpp: a thread's wgmma operations in flight
struct RaceState;    // race_detector.cpp

struct Worker {
  std::vector<FiberStack> stacks;
  std::vector<SimThread> threads;
  std::vector<WarpExchange> warps;
  std::vector<std::array<unsigned char, kLaneBytes>> results;
  std::vector<unsigned char> dynamic_smem;
  uint32_t dynamic_smem_address = 0;  // shared-window address of dynamic shared memory's byte 0
  size_t dynamic_smem_bytes = 0;
  std::vector<unsigned> order;
  SimBlock block;
  const std::function<void()>* body = nullptr;
  std::unordered_map<const void*, MBarrierState> mbarriers;
  std::vector<TmaLanding> tma_in_flight;
  std::vector<BulkThread> bulk;  // per thread
  std::vector<WarpGroupExchange> warpgroups;
  std::vector<std::unique_ptr<WgmmaThread>> wgmma;  // per thread, created on first use
  std::shared_ptr<RaceState> race;  // shared_ptr: its type is complete only in race_detector.cpp
  Worker();
  ~Worker();
};

extern thread_local Worker* tl_worker;
extern thread_local SimThread* tl_thread;

std::string where(const Site& s);
bool same_site(const Site& a, const Site& b);
std::string ranges(const std::vector<unsigned>& ids);
std::string dim_str(const Dim3& d);
uint64_t splitmix64(uint64_t x);

// Hooks of the asynchronous models into the scheduler.
void complete_tma(Worker& w, void* bar, uint64_t completed_phase);  // tma_model.cpp: phase ends
void land_tma(Worker& w, const void* bar);                          // a wait saw it: bytes land
void reset_async_state(Worker& w);                                // both models, at block start
void check_thread_exit(Worker& w, SimThread& t);                  // both models
void check_wgmma_exit(Worker& w, SimThread& t);                   // wgmma_model.cpp
void check_bulk_exit(Worker& w, SimThread& t);                    // tma_model.cpp
std::string describe_warpgroup_wait(const Worker& w);             // wgmma_model.cpp

// The race detector (race_detector.cpp): the scheduler and the models report the
// synchronisation and the accesses the compiler's instrumentation cannot see. All are
// no-ops while it is off.
void race_begin_block(Worker& w, const KernelInfo& info, unsigned char* tls_base);
void race_end_block();
void race_barrier(Worker& w);                                       // a __syncthreads released
void race_collective(Worker& w, const std::vector<unsigned>& tids);  // warp / warpgroup: join,
void race_collective_done(Worker& w, const std::vector<unsigned>& tids);  // then, after it, tick
void race_arrive(Worker& w, const void* bar, unsigned tid);
void race_phase_complete(Worker& w, const void* bar, uint32_t parity);
void race_wait_done(Worker& w, const void* bar, uint32_t parity, unsigned tid);
std::vector<uint32_t> race_snapshot(Worker& w, unsigned tid, uint32_t& epoch);
void race_async_landing(Worker& w, const void* bar, uint32_t parity, const std::vector<unsigned char*>& chunks,
                        unsigned issuer, const std::vector<uint32_t>& issuer_vc, uint32_t issue_epoch);
// An access the instrumentation does not see (a model's copy), by the current thread;
// `record` false checks a read without remembering it.
void race_record(Worker& w, const void* p, size_t n, bool write, const void* pc, bool record = true,
                 const Site* site = nullptr);
void race_proxy_fence(Worker& w, unsigned tid);
// While a collective's combine runs (in its last lane), its accesses are named by its site.
void race_collective_site(const Site* site);
// Bytes the async proxy reads (wgmma, TMA store): written by ordinary stores, they need
// their writer's fence.proxy.async in between.
void race_check_async_read(Worker& w, const unsigned char* p, size_t n, const char* reader, Site site);

}  // namespace ovk_sim::detail
