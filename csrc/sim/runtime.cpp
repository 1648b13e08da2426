// The simulator's scheduler, shared memory and warp exchange (see runtime.h).
#include "runtime.h"

#include "block_state.h"
#include "guarded_allocator.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <unordered_map>

// A thread-local variable of this module whose offset in the module's thread-local block
// the symbol table gives: its address minus that offset is where the block starts on the
// calling OS thread, and the kernels' __shared__ arrays live in that block.
extern "C" {
__attribute__((visibility("default"))) thread_local char ovk_sim_tls_anchor = 0;
}

thread_local uint3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0}, blockDim{1, 1, 1}, gridDim{1, 1, 1};

namespace ovk_sim {

using detail::Worker;
using detail::tl_worker;
using detail::tl_thread;
using detail::where;
using detail::same_site;
using detail::ranges;
using detail::dim_str;
using detail::splitmix64;

namespace {

constexpr size_t kFiberStackBytes = 64 * 1024;
constexpr unsigned char kPoisonByte = 0xFF;  // NaN in float16, bfloat16, float32, float64

std::string demangle(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(mangled, nullptr, nullptr, &status),
                                             std::free);
  return status == 0 && out ? std::string(out.get()) : std::string(mangled);
}

// "ns::kernel<float, false>(Params<float>)" -> "ns::kernel<float, false>"
std::string strip_parameters(const std::string& name) {
  if (name.empty() || name.back() != ')') return name;
  int depth = 0;
  for (size_t i = name.size(); i-- > 0;) {
    if (name[i] == ')') ++depth;
    if (name[i] == '(' && --depth == 0) return name.substr(0, i);
  }
  return name;
}

// The symbol table of the module that holds the kernels (this one).
struct ModuleSymbols {
  std::string path;
  uintptr_t load_base = 0;
  std::unordered_map<uintptr_t, std::string> functions;  // address -> mangled name
  std::vector<std::tuple<std::string, size_t, size_t>> tls;  // mangled, offset, size
  size_t anchor_offset = 0;
  bool anchor_found = false;
};

ModuleSymbols load_symbols() {
  ModuleSymbols m;
  Dl_info info{};
  TORCH_CHECK(dladdr(reinterpret_cast<void*>(&run_grid), &info) != 0 && info.dli_fname,
              "CUDA simulator: cannot locate its own module (dladdr failed)");
  m.path = info.dli_fname;
  m.load_base = reinterpret_cast<uintptr_t>(info.dli_fbase);
  std::ifstream f(m.path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  TORCH_CHECK(bytes.size() > sizeof(Elf64_Ehdr), "CUDA simulator: cannot read ", m.path);
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(bytes.data());
  TORCH_CHECK(std::memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 && eh->e_ident[EI_CLASS] == ELFCLASS64,
              "CUDA simulator: ", m.path, " is not a 64-bit ELF file");
  const auto* sh = reinterpret_cast<const Elf64_Shdr*>(bytes.data() + eh->e_shoff);
  for (int i = 0; i < eh->e_shnum; ++i) {
    if (sh[i].sh_type != SHT_SYMTAB) continue;
    const auto* syms = reinterpret_cast<const Elf64_Sym*>(bytes.data() + sh[i].sh_offset);
    const char* strtab = bytes.data() + sh[sh[i].sh_link].sh_offset;
    const size_t count = sh[i].sh_size / sizeof(Elf64_Sym);
    for (size_t s = 0; s < count; ++s) {
      const char* name = strtab + syms[s].st_name;
      const int type = ELF64_ST_TYPE(syms[s].st_info);
      if (type == STT_FUNC && syms[s].st_value != 0) {
        m.functions.emplace(m.load_base + syms[s].st_value, name);
      } else if (type == STT_TLS) {
        if (std::strcmp(name, "ovk_sim_tls_anchor") == 0) {
          m.anchor_offset = syms[s].st_value;
          m.anchor_found = true;
        }
        m.tls.emplace_back(name, syms[s].st_value, syms[s].st_size);
      }
    }
  }
  TORCH_CHECK(!m.functions.empty() && m.anchor_found, "CUDA simulator: ", m.path,
              " has no symbol table (was it stripped?); the simulator reads __shared__ "
              "variables from it. Rebuild without stripping.");
  return m;
}

const ModuleSymbols& symbols() {
  static const ModuleSymbols m = load_symbols();
  return m;
}

unsigned char* tls_block_base() {
  uintptr_t base = reinterpret_cast<uintptr_t>(&ovk_sim_tls_anchor) - symbols().anchor_offset;
  // The empty asm hides that the address was derived from the one-byte anchor: with
  // _FORTIFY_SOURCE=3 (Ubuntu's default) GCC otherwise bounds memsets through it by the
  // anchor's size and aborts ("buffer overflow detected") when the block is poisoned.
  asm("" : "+r"(base));
  return reinterpret_cast<unsigned char*>(base);
}

std::mutex g_kernels_mutex;
std::map<const void*, std::unique_ptr<KernelInfo>> g_kernels;
std::map<std::string, int64_t> g_launch_counts;
std::map<std::string, int64_t> g_host_steps;

KernelInfo make_kernel_info(const void* kernel) {
  const ModuleSymbols& m = symbols();
  const auto it = m.functions.find(reinterpret_cast<uintptr_t>(kernel));
  Dl_info info{};
  TORCH_CHECK(it != m.functions.end(), "CUDA simulator: no symbol for the kernel at ", kernel,
              (dladdr(kernel, &info) && info.dli_fname ? std::string(" (in ") + info.dli_fname + ")"
                                                       : std::string()),
              "; kernels must be compiled into the simulator module");
  KernelInfo k;
  k.name = strip_parameters(demangle(it->second.c_str()));
  if (k.name.compare(0, 5, "void ") == 0) k.name = k.name.substr(5);  // a template's return type
  // A function-local static of function _Z<enc> is mangled _ZZ<enc>E<name>: in a kernel,
  // those are exactly its __shared__ variables (CUDA has no other function-local
  // thread-local storage).
  const std::string prefix = "_ZZ" + it->second.substr(2) + "E";
  for (const auto& [name, offset, size] : m.tls) {
    if (name.compare(0, prefix.size(), prefix) == 0) {
      k.shared.push_back({offset, size});
      k.static_smem += size;
    }
  }
  return k;
}

// ---- per OS thread state ------------------------------------------------------------------

thread_local std::unique_ptr<detail::Worker> tl_worker_owner;  // freed when the OS thread ends

detail::Worker& worker() {
  if (tl_worker == nullptr) {
    tl_worker_owner = std::make_unique<detail::Worker>();
    tl_worker = tl_worker_owner.get();
  }
  return *tl_worker;
}

}  // namespace

namespace detail {

thread_local Worker* tl_worker = nullptr;
thread_local SimThread* tl_thread = nullptr;

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

std::string where(const Site& s) {
  std::string f = s.file ? s.file : "?";
  const size_t slash = f.rfind('/');
  if (slash != std::string::npos) f = f.substr(slash + 1);
  return f + ":" + std::to_string(s.line) + (s.column ? ":" + std::to_string(s.column) : "");
}

bool same_site(const Site& a, const Site& b) {
  return a.line == b.line && a.column == b.column &&
         (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}

std::string dim_str(const Dim3& d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

// "0-31, 64, 66-70"
std::string ranges(const std::vector<unsigned>& ids) {
  std::ostringstream os;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (i) os << ", ";
    os << ids[i];
    if (j > i) os << "-" << ids[j];
    i = j + 1;
  }
  return os.str();
}

}  // namespace detail

namespace {

[[noreturn]] void block_error(const SimBlock& b, const std::string& what) {
  TORCH_CHECK(false, "CUDA simulator: kernel ", b.kernel->name, ", block ", dim_str(b.idx), ": ",
              what);
}

void thread_main(void* arg) {
  auto* t = static_cast<SimThread*>(arg);
  SimBlock& b = *t->block;
  try {
    (*tl_worker->body)();
    detail::check_thread_exit(*tl_worker, *t);
  } catch (const c10::Error& e) {
    if (b.error.empty()) b.error = e.what_without_backtrace();
  } catch (const std::exception& e) {
    if (b.error.empty()) b.error = e.what();
  } catch (...) {
    if (b.error.empty()) b.error = "unknown exception in a simulated thread";
  }
  t->state = ThreadState::Exited;
  switch_fiber(t->fiber, b.scheduler);
  __builtin_trap();  // an exited fiber is never resumed
}

// Every live thread is blocked: release a barrier that all of them reached at the same
// site, or explain the deadlock.
void resolve_blocked(Worker& w) {
  SimBlock& b = w.block;
  std::vector<SimThread>& ts = w.threads;
  // The common case first, without allocating: every live thread at one barrier.
  const SimThread* first = nullptr;
  bool one_barrier = true;
  for (const SimThread& t : ts) {
    if (t.state == ThreadState::Exited) continue;
    if (t.waiting != WaitKind::Barrier || (first != nullptr && !same_site(first->site, t.site))) {
      one_barrier = false;
      break;
    }
    if (first == nullptr) first = &t;
  }
  if (one_barrier) {
    detail::race_barrier(w);
    for (SimThread& t : ts) {
      if (t.state == ThreadState::Blocked) {
        t.state = ThreadState::Runnable;
        t.waiting = WaitKind::None;
      }
    }
    return;
  }
  std::vector<std::pair<Site, std::vector<unsigned>>> barrier_sites;
  bool all_at_barrier = true;
  for (SimThread& t : ts) {
    if (t.state == ThreadState::Exited) continue;
    if (t.waiting != WaitKind::Barrier) {
      all_at_barrier = false;
      continue;
    }
    auto it = std::find_if(barrier_sites.begin(), barrier_sites.end(),
                           [&](const auto& p) { return same_site(p.first, t.site); });
    if (it == barrier_sites.end()) {
      barrier_sites.push_back({t.site, {}});
      it = barrier_sites.end() - 1;
    }
    it->second.push_back(t.linear);
  }
  if (all_at_barrier && barrier_sites.size() == 1) {
    detail::race_barrier(w);
    for (SimThread& t : ts) {
      if (t.state == ThreadState::Blocked) {
        t.state = ThreadState::Runnable;
        t.waiting = WaitKind::None;
      }
    }
    return;
  }
  std::ostringstream os;
  // Threads waiting on mbarrier phases that nothing left running can complete.
  for (const SimThread& t : ts) {
    if (t.state == ThreadState::Exited || t.waiting != WaitKind::MBarrier) continue;
    std::vector<unsigned> same;
    for (const SimThread& o : ts) {
      if (o.state != ThreadState::Exited && o.waiting == WaitKind::MBarrier &&
          o.mbarrier == t.mbarrier && o.mbarrier_parity == t.mbarrier_parity) {
        same.push_back(o.linear);
      }
    }
    const auto& bar = w.mbarriers.at(t.mbarrier);
    os << "deadlock: threads " << ranges(same) << " wait at " << where(t.site)
       << " for the phase of parity " << t.mbarrier_parity << " of the mbarrier initialised at "
       << where(bar.init) << ", which cannot complete: " << bar.pending << " of "
       << bar.expected << " arrivals pending, tx-count " << bar.tx << " bytes";
    if (!barrier_sites.empty()) {
      os << "; meanwhile threads";
      for (const auto& [site, ids] : barrier_sites) os << " " << ranges(ids) << " wait at __syncthreads " << where(site) << ";";
    }
    block_error(b, os.str());
  }
  const std::string warpgroup = detail::describe_warpgroup_wait(w);
  if (!warpgroup.empty()) {
    os << warpgroup;
    if (!barrier_sites.empty()) {
      os << "; meanwhile threads";
      for (const auto& [site, ids] : barrier_sites) os << " " << ranges(ids) << " wait at __syncthreads " << where(site) << ";";
    }
    block_error(b, os.str());
  }
  if (all_at_barrier) {
    os << "__syncthreads reached at different call sites (a divergent barrier):";
    for (const auto& [site, ids] : barrier_sites) os << " threads " << ranges(ids) << " at " << where(site) << ";";
  } else {
    // A warp collective some lanes never join.
    for (size_t wi = 0; wi < w.warps.size(); ++wi) {
      const WarpExchange& x = w.warps[wi];
      if (!x.open) continue;
      std::vector<unsigned> missing;
      std::string why;
      for (unsigned l = 0; l < 32; ++l) {
        if (!((x.mask >> l) & 1u) || ((x.arrived >> l) & 1u)) continue;
        missing.push_back(l);
        const unsigned id = static_cast<unsigned>(wi) * 32 + l;
        if (why.empty()) {
          if (id >= ts.size()) {
            why = "the warp has only " + std::to_string(ts.size() - wi * 32) + " threads";
          } else if (ts[id].state == ThreadState::Exited) {
            why = "lane " + std::to_string(l) + " has exited";
          } else {
            why = "lane " + std::to_string(l) + " waits at " + where(ts[id].site);
          }
        }
      }
      os << x.what << " at " << where(x.site) << " in warp " << wi
         << " is missing lanes " << ranges(missing) << " of its mask (" << why << ")";
      break;
    }
    if (!barrier_sites.empty()) {
      os << "; meanwhile threads";
      for (const auto& [site, ids] : barrier_sites) os << " " << ranges(ids) << " wait at __syncthreads " << where(site) << ";";
    }
  }
  block_error(b, os.str());
}

void run_block(Worker& w, const KernelInfo& info, Dim3 grid, Dim3 dim, Dim3 bidx,
               size_t dynamic_smem, uint64_t block_linear) {
  const unsigned n = dim.x * dim.y * dim.z;
  while (w.stacks.size() < n) w.stacks.emplace_back(kFiberStackBytes);
  w.threads.resize(n);
  w.results.resize(n);
  w.warps.resize((n + 31) / 32);
  for (WarpExchange& x : w.warps) x.open = false;

  SimBlock& b = w.block;
  b.kernel = &info;
  b.idx = bidx;
  b.dim = dim;
  b.grid = grid;
  b.threads = &w.threads;
  b.warps = &w.warps;
  b.error.clear();
  w.mbarriers.clear();
  detail::reset_async_state(w);
  // Poisoned shared memory: a read of an element this block has not written is NaN.
  // Dynamic shared memory sits in the shared window after 1 KB the system reserves and the
  // static variables, 16-byte aligned, as on a GPU: only 16. Its host buffer is placed so
  // that host and shared addresses agree modulo 1024, the period of every swizzle pattern,
  // so kernels that need 128- or 1024-byte aligned tiles must align them themselves.
  w.dynamic_smem_address = static_cast<uint32_t>((1024 + info.static_smem + 15) & ~size_t(15));
  w.dynamic_smem_bytes = dynamic_smem;
  w.dynamic_smem.assign(dynamic_smem + 1024, kPoisonByte);
  {
    const uintptr_t host = reinterpret_cast<uintptr_t>(w.dynamic_smem.data());
    const uintptr_t want = w.dynamic_smem_address % 1024;
    b.dynamic_smem = reinterpret_cast<unsigned char*>(host + ((want - host % 1024 + 1024) % 1024));
  }
  if (options().poison_shared) {
    unsigned char* base = tls_block_base();
    for (const auto& v : info.shared) std::memset(base + v.offset, kPoisonByte, v.size);
  }
  for (unsigned i = 0; i < n; ++i) {
    SimThread& t = w.threads[i];
    t.idx = {i % dim.x, (i / dim.x) % dim.y, i / (dim.x * dim.y)};
    t.linear = i;
    t.state = ThreadState::Runnable;
    t.waiting = WaitKind::None;
    t.block = &b;
    t.async_copies.clear();
    t.group_ends.clear();
    t.mbarrier = nullptr;
    t.failed_test_waits = 0;
    t.fiber.prepare(w.stacks[i], &thread_main, &t);
  }

  blockIdx = bidx;
  blockDim = dim;
  gridDim = grid;
  detail::race_begin_block(w, info, tls_block_base());
  struct RaceScope {
    ~RaceScope() { detail::race_end_block(); }
  } race_scope;
  const Options opt = options();
  uint64_t round = 0;
  for (;;) {
    w.order.clear();
    for (unsigned i = 0; i < n; ++i) {
      if (w.threads[i].state == ThreadState::Runnable) w.order.push_back(i);
    }
    if (w.order.empty()) {
      const bool done = std::all_of(w.threads.begin(), w.threads.end(),
                                    [](const SimThread& t) { return t.state == ThreadState::Exited; });
      if (done) break;
      resolve_blocked(w);
      continue;
    }
    if (opt.schedule == Schedule::Reversed) {
      std::reverse(w.order.begin(), w.order.end());
    } else if (opt.schedule == Schedule::Shuffle) {
      std::mt19937_64 rng(splitmix64(opt.seed ^ splitmix64(block_linear * 1000003u + round)));
      std::shuffle(w.order.begin(), w.order.end(), rng);
    }
    ++round;
    for (unsigned i : w.order) {
      SimThread& t = w.threads[i];
      if (t.state != ThreadState::Runnable) continue;
      tl_thread = &t;
      threadIdx = t.idx;
      switch_fiber(b.scheduler, t.fiber);
      tl_thread = nullptr;
      if (!b.error.empty()) {
        const SimThread& bad = t;
        TORCH_CHECK(false, "CUDA simulator: kernel ", info.name, ", block ", dim_str(bidx),
                    ", thread ", dim_str(bad.idx), ": ", b.error);
      }
    }
  }
}

}  // namespace

Options& options() {
  static Options o;
  return o;
}

KernelInfo& kernel_info(const void* kernel) {
  std::lock_guard<std::mutex> lock(g_kernels_mutex);
  auto& slot = g_kernels[kernel];
  if (!slot) slot = std::make_unique<KernelInfo>(make_kernel_info(kernel));
  return *slot;
}

void run_grid(const void* kernel, Dim3 grid, Dim3 block, size_t dynamic_smem,
              const std::function<void()>& body) {
  const KernelInfo& info = kernel_info(kernel);
  {
    std::lock_guard<std::mutex> lock(g_kernels_mutex);
    ++g_launch_counts[info.name];
  }
  const int64_t blocks = int64_t(grid.x) * grid.y * grid.z;
  const Options opt = options();
  std::vector<int64_t> order(static_cast<size_t>(blocks));
  for (int64_t i = 0; i < blocks; ++i) order[i] = i;
  if (opt.schedule == Schedule::Reversed) {
    std::reverse(order.begin(), order.end());
  } else if (opt.schedule == Schedule::Shuffle) {
    std::mt19937_64 rng(splitmix64(opt.seed));
    std::shuffle(order.begin(), order.end(), rng);
  }
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    Worker& w = worker();
    // Reset on every exit, errors included: the pointer must not outlive `body`.
    struct BodyScope {
      Worker& w;
      const std::function<void()>* saved;
      ~BodyScope() { w.body = saved; }
    } scope{w, w.body};
    w.body = &body;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t lin = order[i];
      const Dim3 bidx{static_cast<unsigned>(lin % grid.x),
                      static_cast<unsigned>((lin / grid.x) % grid.y),
                      static_cast<unsigned>(lin / (int64_t(grid.x) * grid.y))};
      run_block(w, info, grid, block, bidx, dynamic_smem, static_cast<uint64_t>(lin));
    }
  });
  if (guarded_allocator_installed()) check_guard_bands(info.name);
}

SimThread& this_thread() {
  TORCH_CHECK(tl_thread != nullptr,
              "CUDA simulator: a device function was called outside a kernel launch");
  return *tl_thread;
}

[[noreturn]] void fail(Site site, const std::string& what) {
  TORCH_CHECK(false, what, " (at ", where(site), ")");
}

void syncthreads(Site site) {
  SimThread& t = this_thread();
  t.state = ThreadState::Blocked;
  t.waiting = WaitKind::Barrier;
  t.site = site;
  switch_fiber(t.fiber, t.block->scheduler);
}

void warp_collective(const char* what, Site site, uint32_t mask, bool full_warp,
                     const void* in, size_t in_bytes, void* out, size_t out_bytes,
                     void (*combine)(const unsigned char (*)[kLaneBytes],
                                     unsigned char (*)[kLaneBytes], uint32_t)) {
  SimThread& t = this_thread();
  Worker& w = *tl_worker;
  const unsigned lane = t.linear % 32, warp = t.linear / 32;
  TORCH_CHECK(in_bytes <= kLaneBytes && out_bytes <= kLaneBytes, "CUDA simulator: ", what,
              " exchanges more than ", kLaneBytes, " bytes per lane");
  if (!((mask >> lane) & 1u)) {
    fail(site, std::string(what) + " called by lane " + std::to_string(lane) +
                   ", which is not in its mask 0x" + [&] {
                     char buf[16];
                     std::snprintf(buf, sizeof buf, "%08x", mask);
                     return std::string(buf);
                   }());
  }
  const unsigned warp_threads =
      std::min<unsigned>(32, static_cast<unsigned>(w.threads.size()) - warp * 32);
  if (full_warp && (mask != 0xFFFFFFFFu || warp_threads < 32)) {
    fail(site, std::string(what) + " needs all 32 lanes of the warp (mask 0xffffffff), but " +
                   (warp_threads < 32 ? "the warp has only " + std::to_string(warp_threads) + " threads"
                                      : std::string("the mask leaves lanes out")));
  }
  WarpExchange& x = w.warps[warp];
  const bool any_site = std::strcmp(what, "__syncwarp") == 0;  // sm_70+: any __syncwarp
  if (!x.open) {
    x.open = true;
    x.what = what;
    x.site = site;
    x.mask = mask;
    x.arrived = 0;
    x.full_warp = full_warp;
    x.combine = combine;
  } else if (std::strcmp(x.what, what) != 0 || x.mask != mask ||
             (!any_site && !same_site(x.site, site))) {
    fail(site, std::string("lanes of warp ") + std::to_string(warp) + " diverge: lane " +
                   std::to_string(lane) + " calls " + what + " while other lanes wait in " +
                   x.what + " at " + where(x.site) + " (mask or call site differs)");
  }
  std::memcpy(x.in[lane], in, in_bytes);
  x.arrived |= 1u << lane;
  if (x.arrived == x.mask) {
    std::vector<unsigned> tids;
    if (options().race_check) {
      for (unsigned l = 0; l < 32; ++l) {
        if ((x.mask >> l) & 1u) tids.push_back(warp * 32 + l);
      }
      detail::race_collective(w, tids);
    }
    {
      struct SiteScope {
        explicit SiteScope(const Site* s) { detail::race_collective_site(s); }
        ~SiteScope() { detail::race_collective_site(nullptr); }
      } site_scope(&site);
      x.combine(x.in, x.out, x.mask);
    }
    if (!tids.empty()) detail::race_collective_done(w, tids);
    x.open = false;
    for (unsigned l = 0; l < 32; ++l) {
      if (!((x.mask >> l) & 1u)) continue;
      std::memcpy(w.results[warp * 32 + l].data(), x.out[l], kLaneBytes);
      SimThread& o = w.threads[warp * 32 + l];
      if (&o != &t) {
        o.state = ThreadState::Runnable;
        o.waiting = WaitKind::None;
      }
    }
  } else {
    t.state = ThreadState::Blocked;
    t.waiting = WaitKind::Warp;
    t.site = site;
    switch_fiber(t.fiber, t.block->scheduler);
  }
  std::memcpy(out, w.results[t.linear].data(), out_bytes);
}

namespace {
bool in_shared_memory(const SimThread& t, const void* p, size_t bytes) {
  const auto* q = static_cast<const unsigned char*>(p);
  const SimBlock& b = *t.block;
  const unsigned char* base = tls_block_base();
  for (const auto& v : b.kernel->shared) {
    if (q >= base + v.offset && q + bytes <= base + v.offset + v.size) return true;
  }
  const Worker& w = *tl_worker;
  return q >= b.dynamic_smem && q + bytes <= b.dynamic_smem + w.dynamic_smem_bytes;
}
}  // namespace

bool in_shared_memory(const void* p, size_t bytes) { return in_shared_memory(this_thread(), p, bytes); }

unsigned char* dynamic_shared_memory() { return this_block().dynamic_smem; }

uint32_t shared_address(Site site, const void* p) {
  const Worker& w = *tl_worker;
  const auto* q = static_cast<const unsigned char*>(p);
  const unsigned char* base = this_block().dynamic_smem;
  if (q < base || q > base + w.dynamic_smem_bytes) {
    fail(site, "the simulator gives shared-window addresses (wgmma descriptors, TMA "
               "destinations) to dynamic shared memory only; this pointer is not in it");
  }
  return w.dynamic_smem_address + static_cast<uint32_t>(q - base);
}

unsigned char* shared_pointer(Site site, uint32_t address, size_t bytes) {
  const Worker& w = *tl_worker;
  if (address < w.dynamic_smem_address ||
      size_t(address - w.dynamic_smem_address) + bytes > w.dynamic_smem_bytes) {
    char buf[160];
    std::snprintf(buf, sizeof buf,
                  "shared address 0x%x (+%zu bytes) lies outside the block's dynamic shared "
                  "memory [0x%x, 0x%zx)",
                  address, bytes, w.dynamic_smem_address,
                  size_t(w.dynamic_smem_address) + w.dynamic_smem_bytes);
    fail(site, buf);
  }
  return this_block().dynamic_smem + (address - w.dynamic_smem_address);
}

void cp_async(Site site, void* dst, const void* src, uint32_t bytes, uint32_t src_bytes) {
  SimThread& t = this_thread();
  if (bytes != 4 && bytes != 8 && bytes != 16) {
    fail(site, "cp.async copies 4, 8 or 16 bytes, not " + std::to_string(bytes));
  }
  if (src_bytes > bytes) {
    fail(site, "cp.async source size " + std::to_string(src_bytes) + " exceeds the copy size " +
                   std::to_string(bytes));
  }
  if (reinterpret_cast<uintptr_t>(dst) % bytes || reinterpret_cast<uintptr_t>(src) % bytes) {
    fail(site, "cp.async of " + std::to_string(bytes) +
                   " bytes needs source and destination aligned to " + std::to_string(bytes) +
                   " bytes");
  }
  if (!in_shared_memory(t, dst, bytes)) {
    fail(site, "cp.async destination is not in this kernel's shared memory");
  }
  t.async_copies.push_back({dst, src, bytes, src_bytes});
}

void cp_async_commit() {
  SimThread& t = this_thread();
  t.group_ends.push_back(t.async_copies.size());
}

void cp_async_wait(Site site, int pending_groups) {
  SimThread& t = this_thread();
  if (pending_groups < 0) fail(site, "cp.async.wait_group needs N >= 0");
  const size_t groups = t.group_ends.size();
  if (groups <= static_cast<size_t>(pending_groups)) return;
  const size_t land_groups = groups - static_cast<size_t>(pending_groups);
  const size_t land = t.group_ends[land_groups - 1];
  for (size_t i = 0; i < land; ++i) {
    const CpAsyncCopy& c = t.async_copies[i];
    // The copy's writes count as the waiting thread's, now (the race detector).
    detail::race_record(*tl_worker, c.dst, c.bytes, true, __builtin_return_address(0));
    std::memcpy(c.dst, c.src, c.src_bytes);
    std::memset(static_cast<unsigned char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
  }
  t.async_copies.erase(t.async_copies.begin(), t.async_copies.begin() + static_cast<long>(land));
  t.group_ends.erase(t.group_ends.begin(), t.group_ends.begin() + static_cast<long>(land_groups));
  for (size_t& e : t.group_ends) e -= land;
}

// ---- mbarrier objects ---------------------------------------------------------------------

namespace {

constexpr uint32_t kMaxArrivals = (1u << 20) - 1;  // the ISA's expected-count range
constexpr int64_t kMaxTx = (1 << 20) - 1;           // and tx-count range

uint64_t barrier_image(const detail::MBarrierState& m) {
  // A recognisable 8-byte pattern that changes with every update, so that a generic store
  // over a live barrier is noticed at its next use.
  return 0x6d62617200000000ull ^ (m.phase << 40) ^ (uint64_t(m.pending & 0xfffff) << 20) ^
         uint64_t(m.tx & 0xfffff);
}

void store_image(void* bar, detail::MBarrierState& m) {
  m.image = barrier_image(m);
  std::memcpy(bar, &m.image, sizeof m.image);
}

void check_operand(Site site, const void* bar, const char* what) {
  if (reinterpret_cast<uintptr_t>(bar) % 8 != 0) {
    fail(site, std::string(what) + ": an mbarrier object must be 8-byte aligned");
  }
  if (!in_shared_memory(this_thread(), bar, 8)) {
    fail(site, std::string(what) + ": the mbarrier object is not in this kernel's shared memory");
  }
}

detail::MBarrierState& live_barrier(Site site, void* bar, const char* what) {
  check_operand(site, bar, what);
  auto it = tl_worker->mbarriers.find(bar);
  if (it == tl_worker->mbarriers.end()) {
    fail(site, std::string(what) + " on an mbarrier that mbarrier.init has not initialised");
  }
  uint64_t bytes = 0;
  std::memcpy(&bytes, bar, sizeof bytes);
  if (bytes != it->second.image) {
    fail(site, std::string(what) + ": the mbarrier initialised at " + where(it->second.init) +
                   " was overwritten by an ordinary store to its shared memory");
  }
  return it->second;
}

// Completes the phase if its arrivals and bytes are all in, waking its waiters.
void maybe_complete(Site site, void* bar, detail::MBarrierState& m) {
  if (m.pending == 0 && m.tx < 0) {
    fail(site, "mbarrier phase " + std::to_string(m.phase) + " (initialised at " +
                   where(m.init) + ") has all its arrivals but tx-count " + std::to_string(m.tx) +
                   ": more bytes completed than expect_tx announced");
  }
  if (m.pending != 0 || m.tx != 0) return;
  const uint32_t done = static_cast<uint32_t>(m.phase & 1);
  detail::complete_tma(*tl_worker, bar, m.phase);
  detail::race_phase_complete(*tl_worker, bar, done);
  ++m.phase;
  m.pending = m.expected;
  for (SimThread& o : tl_worker->threads) {
    if (o.state == ThreadState::Blocked && o.waiting == WaitKind::MBarrier && o.mbarrier == bar &&
        o.mbarrier_parity == done) {
      o.state = ThreadState::Runnable;
      o.waiting = WaitKind::None;
    }
  }
}

}  // namespace

void mbarrier_init(Site site, void* bar, uint32_t count) {
  check_operand(site, bar, "mbarrier.init");
  if (count < 1 || count > kMaxArrivals) {
    fail(site, "mbarrier.init: the expected arrival count must be in [1, 2^20 - 1], got " +
                   std::to_string(count));
  }
  for (const SimThread& o : tl_worker->threads) {
    if (o.state == ThreadState::Blocked && o.waiting == WaitKind::MBarrier && o.mbarrier == bar) {
      fail(site, "mbarrier.init on a barrier that thread " + std::to_string(o.linear) +
                     " is waiting on (at " + where(o.site) + ")");
    }
  }
  detail::MBarrierState& m = tl_worker->mbarriers[bar];
  m = detail::MBarrierState{};
  m.expected = count;
  m.pending = count;
  m.init = site;
  store_image(bar, m);
}

uint64_t mbarrier_arrive(Site site, void* bar, uint32_t count) {
  detail::MBarrierState& m = live_barrier(site, bar, "mbarrier.arrive");
  if (count < 1 || count > kMaxArrivals) {
    fail(site, "mbarrier.arrive: the count must be in [1, 2^20 - 1], got " + std::to_string(count));
  }
  if (count > m.pending) {
    fail(site, "over-arrival on the mbarrier initialised at " + where(m.init) + ": " +
                   std::to_string(count) + " arrival(s) in phase " + std::to_string(m.phase) +
                   ", which has " + std::to_string(m.pending) + " of " +
                   std::to_string(m.expected) + " pending");
  }
  // Opaque, as the GPU's: the same for every arrival in this phase of this barrier, with no
  // bit that is the phase's parity (code testing token & 1 would be wrong on a GPU).
  const uint64_t token = splitmix64(reinterpret_cast<uintptr_t>(bar) ^ splitmix64(m.phase + 1));
  detail::race_arrive(*tl_worker, bar, this_thread().linear);
  m.pending -= count;
  maybe_complete(site, bar, m);
  store_image(bar, m);
  return token;
}

void mbarrier_expect_tx(Site site, void* bar, uint32_t bytes) {
  detail::MBarrierState& m = live_barrier(site, bar, "mbarrier.expect_tx");
  if (m.tx + int64_t(bytes) > kMaxTx) {
    fail(site, "mbarrier.expect_tx: the tx-count would exceed 2^20 - 1 bytes");
  }
  m.tx += bytes;
  store_image(bar, m);
}

void mbarrier_complete_tx(Site site, void* bar, uint32_t bytes) {
  detail::MBarrierState& m = live_barrier(site, bar, "complete-tx");
  m.tx -= bytes;
  if (m.tx < -kMaxTx) fail(site, "complete-tx: the tx-count would fall below -(2^20 - 1)");
  maybe_complete(site, bar, m);
  store_image(bar, m);
}

namespace {
bool phase_done(Site site, void* bar, uint32_t parity) {
  const detail::MBarrierState& m = live_barrier(site, bar, "mbarrier.test_wait");
  return (m.phase & 1) != (parity & 1);
}
}  // namespace

// Failed test_waits in a row after which a spinning thread counts as stuck: every one lets
// all other threads run first, so a pipeline makes progress long before this.
constexpr uint64_t kMaxFailedTestWaits = 1u << 16;

bool mbarrier_test_wait_parity(Site site, void* bar, uint32_t parity) {
  SimThread& t = this_thread();
  if (phase_done(site, bar, parity)) {
    t.failed_test_waits = 0;
    detail::land_tma(*tl_worker, bar);
    detail::race_wait_done(*tl_worker, bar, parity, t.linear);
    return true;
  }
  if (++t.failed_test_waits > kMaxFailedTestWaits) {
    const auto& m = tl_worker->mbarriers.at(bar);
    fail(site, "thread spins on mbarrier.test_wait for the phase of parity " +
                   std::to_string(parity & 1) + " of the mbarrier initialised at " +
                   where(m.init) + ", which has not completed in " +
                   std::to_string(kMaxFailedTestWaits) + " tries: " +
                   std::to_string(m.pending) + " of " + std::to_string(m.expected) +
                   " arrivals pending, tx-count " + std::to_string(m.tx) + " bytes");
  }
  switch_fiber(t.fiber, t.block->scheduler);  // still runnable: the others run first
  if (!phase_done(site, bar, parity)) return false;
  t.failed_test_waits = 0;
  detail::land_tma(*tl_worker, bar);
  detail::race_wait_done(*tl_worker, bar, parity, t.linear);
  return true;
}

void mbarrier_wait_parity(Site site, void* bar, uint32_t parity) {
  while (!phase_done(site, bar, parity)) {
    SimThread& t = this_thread();
    t.state = ThreadState::Blocked;
    t.waiting = WaitKind::MBarrier;
    t.mbarrier = bar;
    t.mbarrier_parity = parity & 1;
    t.site = site;
    switch_fiber(t.fiber, t.block->scheduler);
  }
  detail::land_tma(*tl_worker, bar);
  detail::race_wait_done(*tl_worker, bar, parity, this_thread().linear);
}

std::vector<std::pair<std::string, int64_t>> launch_counts() {
  std::lock_guard<std::mutex> lock(g_kernels_mutex);
  return {g_launch_counts.begin(), g_launch_counts.end()};
}

std::vector<std::pair<std::string, int64_t>> host_steps() {
  std::lock_guard<std::mutex> lock(g_kernels_mutex);
  return {g_host_steps.begin(), g_host_steps.end()};
}

void count_host_step(const std::string& name) {
  std::lock_guard<std::mutex> lock(g_kernels_mutex);
  ++g_host_steps[name];
}

void reset_launch_counts() {
  std::lock_guard<std::mutex> lock(g_kernels_mutex);
  g_launch_counts.clear();
  g_host_steps.clear();
}

}  // namespace ovk_sim
