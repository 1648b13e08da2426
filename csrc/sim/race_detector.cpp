// The simulator's shared-memory race detector (runtime.h, "race detector"): the
// counterpart of compute-sanitizer's racecheck.
//
// How accesses are seen: the kernels' translation units are compiled with g++
// -fsanitize=thread (setup.py), which makes the compiler call __tsan_read4(addr),
// __tsan_write16(addr), ... before every load and store; libtsan is never linked: this
// file (compiled without the flag) defines those entry points. Each keeps the accesses
// that fall in the running block's shared memory and drops the rest after two compares.
//
// What orders two accesses (happens-before), per block: program order within a thread;
// a __syncthreads (an epoch: every access of an earlier epoch is ordered before every
// later one); a warp or warpgroup collective, for its participants; an mbarrier phase,
// from the threads that arrived in it (and the TMA loads that completed it) to the threads
// whose wait saw it complete. Within an epoch these are vector clocks (FastTrack-style):
// thread t's clock ticks at each release, and vc[t][u] is the latest tick of u that t has
// synchronised with. Per byte the shadow keeps the last write and two reads (the first
// and the latest reader of the epoch): a third concurrent reader is not remembered, so a
// race with only that reader can be missed (never reported falsely).
//
// The same shadow answers the async-proxy question: a byte written by ordinary stores and
// then read by wgmma or a TMA store needs a fence.proxy.async by its writer in between.
#include <c10/util/Exception.h>
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "block_state.h"

namespace ovk_sim::detail {

namespace {

constexpr uint16_t kAsyncUnit = 0xFFFF;  // the tid of TMA's writes

struct Rec {
  uint32_t epoch = 0;  // 0: none
  uint32_t clock = 0;
  uint16_t tid = 0;
  uint16_t fences = 0;  // the writer's fence.proxy.async count at the write
  const void* pc = nullptr;
  Site site{nullptr, 0, 0};  // a model's or a collective's call site, when known (else pc)
};
struct Cell {
  Rec write, read1, read2;
};

using Clocks = std::vector<uint32_t>;  // one per thread, then the async unit

struct ThreadClock {
  uint32_t clock = 1;
  uint32_t vc_epoch = 0;
  uint16_t fences = 0;
  // Shared between the lanes a collective joined (copied before a private change): a
  // warp's run of collectives then costs one copy each, not one per lane.
  std::shared_ptr<Clocks> vc;
};

// A barrier phase's release: the join of its arrivers' clocks.
struct PhaseClock {
  uint32_t epoch = 0;
  std::vector<uint32_t> vc;
};

}  // namespace

struct RaceState {
  uint32_t epoch = 1;
  uint32_t first_epoch = 1;  // the running block's first epoch
  unsigned threads = 0;
  std::vector<ThreadClock> clocks;
  std::vector<Cell> shadow;
  // Static __shared__ variables: [host address, end, shadow offset], sorted.
  std::vector<std::array<uintptr_t, 3>> statics;
  uintptr_t dyn_lo = 0;
  size_t dyn_bytes = 0;
  uint32_t dyn_address = 0;
  struct Barrier {
    PhaseClock pending;       // arrivals of the current phase
    PhaseClock completed[2];  // the last completed phase of each parity
  };
  std::unordered_map<const void*, Barrier> barriers;
  uint32_t async_clock = 1;
  std::string kernel;
};

namespace {

// What the hooks read first, kept small and in initial-exec TLS so the common case (an
// access outside shared memory) costs two compares.
struct HookContext {
  RaceState* state = nullptr;
  uintptr_t dyn_lo = 0, dyn_size = 0;
  uintptr_t static_lo = 0, static_size = 0;
};
thread_local HookContext tl_hook;

std::string symbolize(const void* pc) {
  if (pc == nullptr) return "?";
  Dl_info info{};
  if (dladdr(pc, &info) == 0 || info.dli_fname == nullptr) return "?";
  const uintptr_t offset = reinterpret_cast<uintptr_t>(pc) - reinterpret_cast<uintptr_t>(info.dli_fbase) - 1;
  char cmd[1024];
  std::snprintf(cmd, sizeof cmd, "addr2line -C -f -i -p -e '%s' 0x%zx 2>/dev/null", info.dli_fname,
                static_cast<size_t>(offset));
  std::string out;
  if (FILE* f = popen(cmd, "r")) {
    char buf[512];
    while (std::fgets(buf, sizeof buf, f)) out += buf;
    pclose(f);
  }
  // The inline chain, innermost first: "function at /path/file.cpp:123", then lines
  // " (inlined by) caller at ...". Keep the first frame outside the system headers (a
  // memcpy's) as "file.cpp:123 (function)".
  std::string first;
  for (size_t begin = 0; begin < out.size();) {
    size_t end = out.find('\n', begin);
    if (end == std::string::npos) end = out.size();
    std::string line = out.substr(begin, end - begin);
    begin = end + 1;
    const size_t inl = line.find("(inlined by) ");
    if (inl != std::string::npos) line = line.substr(inl + 13);
    if (first.empty()) first = line;
    if (line.find(" at /usr/") == std::string::npos) {
      first = line;
      break;
    }
  }
  const size_t at = first.rfind(" at ");
  if (at == std::string::npos) return info.dli_sname ? info.dli_sname : "?";
  std::string loc = first.substr(at + 4);
  const size_t slash = loc.rfind('/');
  if (slash != std::string::npos) loc = loc.substr(slash + 1);
  const size_t disc = loc.find(" (discriminator");
  if (disc != std::string::npos) loc = loc.substr(0, disc);
  std::string fn = first.substr(0, at);
  if (fn.size() > 80) fn = fn.substr(0, 77) + "...";
  return loc + " (" + fn + ")";
}

std::string who(uint16_t tid) {
  if (tid == kAsyncUnit) return "a TMA load";
  return "thread " + std::to_string(tid) + " (warp " + std::to_string(tid / 32) + ")";
}

ThreadClock& clock_of(RaceState& s, unsigned tid) { return s.clocks[tid]; }

// Whether `r` happens before the current point of thread `tid` (or, for kAsyncUnit
// writes, of the issuer whose clocks `vc` are).
bool ordered(const RaceState& s, const Rec& r, unsigned tid, const std::vector<uint32_t>& vc, bool vc_valid) {
  if (r.epoch != s.epoch) return true;  // none, an earlier block, or before a __syncthreads
  if (r.tid == tid) return true;        // program order
  const unsigned slot = r.tid == kAsyncUnit ? s.threads : r.tid;
  return vc_valid && vc[slot] >= r.clock;
}

bool vc_valid(const RaceState& s, const ThreadClock& c) { return c.vc_epoch == s.epoch && c.vc; }

const Clocks& clocks_of(const ThreadClock& c) {
  static const Clocks kNone;
  return c.vc ? *c.vc : kNone;
}

// The thread's clocks, valid for this epoch and its own to change.
Clocks& own_clocks(RaceState& s, ThreadClock& c) {
  if (!vc_valid(s, c)) {
    c.vc = std::make_shared<Clocks>(s.threads + 1, 0);
    c.vc_epoch = s.epoch;
  } else if (c.vc.use_count() > 1) {
    c.vc = std::make_shared<Clocks>(*c.vc);
  }
  return *c.vc;
}

void join_into(std::vector<uint32_t>& into, const std::vector<uint32_t>& from) {
  for (size_t i = 0; i < into.size(); ++i) into[i] = std::max(into[i], from[i]);
}

// Where a shared byte is, for reports.
std::string where_shared(const RaceState& s, uintptr_t a) {
  char buf[128];
  if (a - s.dyn_lo < s.dyn_bytes) {
    std::snprintf(buf, sizeof buf, "shared address 0x%zx (dynamic shared memory + %zu)",
                  size_t(s.dyn_address + (a - s.dyn_lo)), size_t(a - s.dyn_lo));
  } else {
    for (size_t i = 0; i < s.statics.size(); ++i) {
      if (a >= s.statics[i][0] && a < s.statics[i][1]) {
        std::snprintf(buf, sizeof buf, "byte %zu of the kernel's static __shared__ array #%zu",
                      size_t(a - s.statics[i][0]), i);
        return buf;
      }
    }
    return "shared memory";
  }
  return buf;
}

thread_local const Site* tl_site = nullptr;  // where a model's or a collective's access comes from
thread_local bool tl_in_hook = false;         // an access seen by the instrumentation

// Ends the simulated thread with `msg` as its block's error. Used for races found in a
// hook: the compiler declares the hooks as non-throwing, so an exception thrown through the
// instrumented kernel's frame could terminate the process instead of unwinding. The
// scheduler reports the error as for any other (naming the kernel, block and thread).
[[noreturn]] void abort_thread(const std::string& msg) {
  SimThread& t = *tl_thread;
  SimBlock& b = *t.block;
  if (b.error.empty()) b.error = msg;
  tl_in_hook = false;
  t.state = ThreadState::Exited;
  switch_fiber(t.fiber, b.scheduler);
  __builtin_trap();  // never resumed
}

std::string location(const Rec& r) {
  if (r.tid == kAsyncUnit) return "its completion";
  return r.site.file ? where(r.site) : symbolize(r.pc);
}

[[noreturn]] void report(const RaceState& s, const char* kind, uintptr_t a, size_t n, unsigned tid,
                         const void* pc, const char* verb, const Rec& other, const char* other_verb) {
  const std::string here = tl_site ? where(*tl_site) : symbolize(pc);
  std::string msg = std::string("data race on shared memory (") + kind + "): " + who(uint16_t(tid)) + " " +
                    verb + " " + std::to_string(n) + " byte(s) at " + where_shared(s, a) + " at " +
                    here + "; " + who(other.tid) + " " + other_verb + " them at " +
                    location(other) +
                    ", and no __syncthreads, warp collective or mbarrier phase orders the two";
  if (tl_in_hook) abort_thread(msg);
  TORCH_CHECK(false, msg);
}

// The shadow cell of shared byte `a`, and where its array ends (cells are consecutive
// up to there); found is false outside shared memory.
size_t shadow_index(const RaceState& s, uintptr_t a, bool& found, uintptr_t& end) {
  found = true;
  if (a - s.dyn_lo < s.dyn_bytes) {
    end = s.dyn_lo + s.dyn_bytes;
    return a - s.dyn_lo;
  }
  for (const auto& v : s.statics) {
    if (a >= v[0] && a < v[1]) {
      end = v[1];
      return s.dyn_bytes + v[2] + (a - v[0]);
    }
  }
  found = false;
  end = a + 1;
  return 0;
}

size_t shadow_index(const RaceState& s, uintptr_t a, bool& found) {
  uintptr_t end;
  return shadow_index(s, a, found, end);
}

void access(RaceState& s, uintptr_t a, size_t n, bool write, const void* pc, bool record = true) {
  const SimThread* t = tl_thread;
  if (t == nullptr) return;
  const unsigned tid = t->linear;
  ThreadClock& c = clock_of(s, tid);
  const bool valid = vc_valid(s, c);
  const Clocks& vc = clocks_of(c);
  const Rec now{s.epoch, c.clock, uint16_t(tid), c.fences, pc, tl_site ? *tl_site : Site{nullptr, 0, 0}};
  bool found = false;
  uintptr_t end = 0;
  size_t k = 0;
  for (size_t i = 0; i < n; ++i, ++k) {
    if (i == 0 || a + i >= end) k = shadow_index(s, a + i, found, end);  // once per array
    if (!found) continue;
    Cell& cell = s.shadow[k];
    if (!ordered(s, cell.write, tid, vc, valid)) {
      report(s, write ? "write after write" : "read after write", a + i, n - i, tid, pc,
             write ? "writes" : "reads", cell.write, "wrote");
    }
    if (!record) continue;
    if (write) {
      for (const Rec* r : {&cell.read1, &cell.read2}) {
        if (!ordered(s, *r, tid, vc, valid)) {
          report(s, "write after read", a + i, n - i, tid, pc, "writes", *r, "read");
        }
      }
      cell.write = now;
      cell.read1 = cell.read2 = Rec{};
    } else if (cell.read1.epoch != s.epoch || cell.read1.tid == tid) {
      cell.read1 = now;
    } else {
      cell.read2 = now;
    }
  }
}

void on_access(const void* p, size_t n, bool write, const void* pc) {
  const HookContext& h = tl_hook;
  if (h.state == nullptr) return;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a - h.dyn_lo >= h.dyn_size && a - h.static_lo >= h.static_size) return;
  tl_in_hook = true;
  access(*h.state, a, n, write, pc);
  tl_in_hook = false;
}

}  // namespace

// ---- the scheduler's side ---------------------------------------------------------------

void race_begin_block(Worker& w, const KernelInfo& info, unsigned char* tls_base) {
  if (!options().race_check) {
    tl_hook = HookContext{};
    return;
  }
  if (!w.race) w.race = std::make_shared<RaceState>();
  RaceState& s = *w.race;
  s.epoch += 2;  // records of earlier blocks are stale
  s.first_epoch = s.epoch;
  s.threads = static_cast<unsigned>(w.threads.size());
  s.clocks.assign(s.threads, ThreadClock{});
  s.barriers.clear();
  s.async_clock = 1;
  s.kernel = info.name;
  s.dyn_lo = reinterpret_cast<uintptr_t>(w.block.dynamic_smem);
  s.dyn_bytes = w.dynamic_smem_bytes;
  s.dyn_address = w.dynamic_smem_address;
  s.statics.clear();
  size_t shadow_bytes = s.dyn_bytes;
  uintptr_t lo = UINTPTR_MAX, hi = 0;
  for (const auto& v : info.shared) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(tls_base + v.offset);
    s.statics.push_back({base, base + v.size, shadow_bytes});
    shadow_bytes += v.size;
    lo = std::min(lo, base);
    hi = std::max(hi, base + v.size);
  }
  std::sort(s.statics.begin(), s.statics.end());
  // Grown, never cleared: a record's epoch tells whether it belongs to this block.
  if (s.shadow.size() < shadow_bytes) s.shadow.resize(shadow_bytes);
  tl_hook = HookContext{&s, s.dyn_lo, s.dyn_bytes, lo == UINTPTR_MAX ? 0 : lo, lo == UINTPTR_MAX ? 0 : hi - lo};
}

void race_end_block() { tl_hook = HookContext{}; }

void race_barrier(Worker& w) {
  if (w.race && tl_hook.state) ++w.race->epoch;
}

void race_collective(Worker& w, const std::vector<unsigned>& tids) {
  if (!tl_hook.state) return;
  RaceState& s = *w.race;
  // Usually every participant still holds the clocks the previous collective gave them.
  const ThreadClock& first = s.clocks[tids.front()];
  bool shared = vc_valid(s, first);
  for (unsigned u : tids) shared = shared && s.clocks[u].vc == first.vc && vc_valid(s, s.clocks[u]);
  auto join = shared ? std::make_shared<Clocks>(*first.vc) : std::make_shared<Clocks>(s.threads + 1, 0);
  for (unsigned u : tids) {
    ThreadClock& c = s.clocks[u];
    if (!shared && vc_valid(s, c)) join_into(*join, *c.vc);
    (*join)[u] = std::max((*join)[u], c.clock);
  }
  for (unsigned u : tids) {
    ThreadClock& c = s.clocks[u];
    c.vc = join;
    c.vc_epoch = s.epoch;
  }
}

void race_collective_done(Worker& w, const std::vector<unsigned>& tids) {
  if (!tl_hook.state) return;
  // After the combine, whose accesses (made in the last lane) carry the clocks the join
  // gave every lane; later accesses are not ordered by this collective.
  for (unsigned u : tids) ++w.race->clocks[u].clock;
}

void race_arrive(Worker& w, const void* bar, unsigned tid) {
  if (!tl_hook.state) return;
  RaceState& s = *w.race;
  ThreadClock& c = s.clocks[tid];
  PhaseClock& p = s.barriers[bar].pending;
  if (p.epoch != s.epoch) {
    p.vc.assign(s.threads + 1, 0);
    p.epoch = s.epoch;
  }
  if (vc_valid(s, c)) join_into(p.vc, *c.vc);
  p.vc[tid] = std::max(p.vc[tid], c.clock);
  ++c.clock;
}

void race_phase_complete(Worker& w, const void* bar, uint32_t parity) {
  if (!tl_hook.state) return;
  RaceState& s = *w.race;
  RaceState::Barrier& b = s.barriers[bar];
  if (b.pending.epoch != s.epoch) b.pending = PhaseClock{s.epoch, std::vector<uint32_t>(s.threads + 1, 0)};
  b.completed[parity & 1] = std::move(b.pending);
  b.pending = PhaseClock{};
}

void race_wait_done(Worker& w, const void* bar, uint32_t parity, unsigned tid) {
  if (!tl_hook.state) return;
  RaceState& s = *w.race;
  const auto it = s.barriers.find(bar);
  if (it == s.barriers.end()) return;
  const PhaseClock& p = it->second.completed[parity & 1];
  if (p.epoch != s.epoch) return;
  join_into(own_clocks(s, s.clocks[tid]), p.vc);
}

void race_async_landing(Worker& w, const void* bar, uint32_t parity, const std::vector<unsigned char*>& chunks,
                        unsigned issuer, const std::vector<uint32_t>& issuer_vc, uint32_t issue_epoch) {
  if (!tl_hook.state) return;
  RaceState& s = *w.race;
  const uint32_t tick = s.async_clock++;
  for (unsigned char* p : chunks) {
    for (size_t i = 0; i < 16; ++i) {
      bool found = false;
      const size_t k = shadow_index(s, reinterpret_cast<uintptr_t>(p) + i, found);
      if (!found) continue;
      Cell& cell = s.shadow[k];
      // The load overwrites these bytes: every earlier access must be ordered before its
      // issue (the issuer waited for them, e.g. on an "empty" barrier).
      const bool valid = issue_epoch == s.epoch && !issuer_vc.empty();
      for (const Rec* r : {&cell.write, &cell.read1, &cell.read2}) {
        if (r->epoch == s.epoch && r->tid != issuer && r->tid != kAsyncUnit &&
            !(valid && issuer_vc[r->tid] >= r->clock)) {
          std::string msg = "data race on shared memory (TMA load after " +
                            std::string(r == &cell.write ? "write" : "read") + "): a TMA load issued by " +
                            who(uint16_t(issuer)) + " overwrites " + where_shared(s, reinterpret_cast<uintptr_t>(p) + i) +
                            ", which " + who(r->tid) + (r == &cell.write ? " wrote" : " read") + " at " +
                            location(*r) + " with nothing ordering that access before the load's issue";
          TORCH_CHECK(false, msg);
        }
      }
      cell.write = Rec{s.epoch, tick, kAsyncUnit, 0, nullptr};
      cell.read1 = cell.read2 = Rec{};
    }
  }
  // The (completed) phase whose wait lands it publishes it to its waiters.
  PhaseClock& done = s.barriers[bar].completed[parity & 1];
  if (done.epoch != s.epoch) {
    done.vc.assign(s.threads + 1, 0);
    done.epoch = s.epoch;
  }
  done.vc[s.threads] = std::max(done.vc[s.threads], tick);
}

std::vector<uint32_t> race_snapshot(Worker& w, unsigned tid, uint32_t& epoch) {
  if (!tl_hook.state) return {};
  RaceState& s = *w.race;
  ThreadClock& c = s.clocks[tid];
  epoch = s.epoch;
  if (!vc_valid(s, c)) return Clocks(s.threads + 1, 0);
  return *c.vc;
}

void race_record(Worker& w, const void* p, size_t n, bool write, const void* pc, bool record,
                 const Site* site) {
  if (!tl_hook.state) return;
  const Site* saved = tl_site;
  tl_site = site ? site : saved;
  struct Reset {
    const Site* saved;
    ~Reset() { tl_site = saved; }
  } reset{saved};
  access(*w.race, reinterpret_cast<uintptr_t>(p), n, write, pc, record);
}

void race_collective_site(const Site* site) { tl_site = site; }

void race_proxy_fence(Worker& w, unsigned tid) {
  if (!tl_hook.state) return;
  ++w.race->clocks[tid].fences;
}

void race_check_async_read(Worker& w, const unsigned char* p, size_t n, const char* reader, Site site) {
  if (!tl_hook.state) return;
  RaceState& s = *w.race;
  for (size_t i = 0; i < n; ++i) {
    bool found = false;
    const size_t k = shadow_index(s, reinterpret_cast<uintptr_t>(p) + i, found);
    if (!found) continue;
    const Rec& wr = s.shadow[k].write;
    if (wr.epoch < s.first_epoch || wr.tid == kAsyncUnit) continue;  // not this block's, or TMA's
    if (s.clocks[wr.tid].fences == wr.fences) {
      fail(site, std::string(reader) + " reads " + where_shared(s, reinterpret_cast<uintptr_t>(p) + i) +
                     ", which " + who(wr.tid) + " wrote with an ordinary store at " + location(wr) +
                     " and has not made visible to the async proxy: a fence.proxy.async is missing "
                     "between the write and this read (PTX ISA 9.7.9.25.2 / 9.7.15.7.1)");
    }
  }
}

}  // namespace ovk_sim::detail

// ---- the compiler's hooks (-fsanitize=thread ABI; libtsan is not linked) -----------------

#define OVK_HOOK extern "C" __attribute__((visibility("hidden"), noinline))

using ovk_sim::detail::on_access;

OVK_HOOK void __tsan_init() {}
OVK_HOOK void __tsan_func_entry(void*) {}
OVK_HOOK void __tsan_func_exit() {}
OVK_HOOK void __tsan_vptr_update(void**, void*) {}
OVK_HOOK void __tsan_acquire(void*) {}
OVK_HOOK void __tsan_release(void*) {}
OVK_HOOK void __tsan_read_range(void* p, long n) { on_access(p, size_t(n), false, __builtin_return_address(0)); }
OVK_HOOK void __tsan_write_range(void* p, long n) { on_access(p, size_t(n), true, __builtin_return_address(0)); }

#define OVK_RW(N)                                                                                           \
  OVK_HOOK void __tsan_read##N(void* p) { on_access(p, N, false, __builtin_return_address(0)); }           \
  OVK_HOOK void __tsan_write##N(void* p) { on_access(p, N, true, __builtin_return_address(0)); }           \
  OVK_HOOK void __tsan_volatile_read##N(void* p) { on_access(p, N, false, __builtin_return_address(0)); }  \
  OVK_HOOK void __tsan_volatile_write##N(void* p) { on_access(p, N, true, __builtin_return_address(0)); }  \
  OVK_HOOK void __tsan_unaligned_read##N(void* p) { on_access(p, N, false, __builtin_return_address(0)); } \
  OVK_HOOK void __tsan_unaligned_write##N(void* p) { on_access(p, N, true, __builtin_return_address(0)); }
OVK_RW(1)
OVK_RW(2)
OVK_RW(4)
OVK_RW(8)
OVK_RW(16)

// Atomics: the call replaces the instruction, so the hook performs it (sequentially
// consistent, the strongest order asked for). Atomic accesses are not races.
#define OVK_SC __ATOMIC_SEQ_CST
#define OVK_ATOMIC(N, T)                                                                                   \
  OVK_HOOK T __tsan_atomic##N##_load(const volatile T* a, int) { return __atomic_load_n(a, OVK_SC); }      \
  OVK_HOOK void __tsan_atomic##N##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, OVK_SC); }      \
  OVK_HOOK T __tsan_atomic##N##_exchange(volatile T* a, T v, int) { return __atomic_exchange_n(a, v, OVK_SC); } \
  OVK_HOOK T __tsan_atomic##N##_fetch_add(volatile T* a, T v, int) { return __atomic_fetch_add(a, v, OVK_SC); } \
  OVK_HOOK T __tsan_atomic##N##_fetch_sub(volatile T* a, T v, int) { return __atomic_fetch_sub(a, v, OVK_SC); } \
  OVK_HOOK T __tsan_atomic##N##_fetch_and(volatile T* a, T v, int) { return __atomic_fetch_and(a, v, OVK_SC); } \
  OVK_HOOK T __tsan_atomic##N##_fetch_or(volatile T* a, T v, int) { return __atomic_fetch_or(a, v, OVK_SC); }   \
  OVK_HOOK T __tsan_atomic##N##_fetch_xor(volatile T* a, T v, int) { return __atomic_fetch_xor(a, v, OVK_SC); } \
  OVK_HOOK T __tsan_atomic##N##_fetch_nand(volatile T* a, T v, int) { return __atomic_fetch_nand(a, v, OVK_SC); } \
  OVK_HOOK int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* e, T d, int, int) {            \
    return __atomic_compare_exchange_n(a, e, d, false, OVK_SC, OVK_SC);                                    \
  }                                                                                                        \
  OVK_HOOK int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* e, T d, int, int) {              \
    return __atomic_compare_exchange_n(a, e, d, true, OVK_SC, OVK_SC);                                     \
  }                                                                                                        \
  OVK_HOOK T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T e, T d, int, int) {                  \
    __atomic_compare_exchange_n(a, &e, d, false, OVK_SC, OVK_SC);                                          \
    return e;                                                                                              \
  }
OVK_ATOMIC(8, uint8_t)
OVK_ATOMIC(16, uint16_t)
OVK_ATOMIC(32, uint32_t)
OVK_ATOMIC(64, uint64_t)
OVK_HOOK void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(OVK_SC); }
OVK_HOOK void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(OVK_SC); }
