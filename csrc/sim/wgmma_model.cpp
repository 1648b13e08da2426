// The simulator's warpgroup collectives and its model of wgmma.mma_async (runtime.h,
// "warpgroups and wgmma"; PTX ISA 9.7.15): operands decoded from shared-memory matrix
// descriptors or registers, the product computed when the last thread of the warpgroup
// arrives, and the result held back until the wgmma.wait_group that retires it.
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "../cuda/hopper_layouts.cuh"
#include "block_state.h"

namespace ovk_sim {
namespace hopper = overfeat_kernels::hopper;

namespace detail {

namespace {
constexpr uint32_t kPoisonWord = 0xFFFFFFFFu;  // a NaN: what pending accumulators hold

// The shared-memory bytes one wgmma read, to check at retirement that nothing overwrote
// them while the (asynchronous) operation could still be reading.
struct OperandBytes {
  Site site;
  std::vector<std::pair<const unsigned char*, std::array<unsigned char, 16>>> chunks;
  bool checked = false;
};

struct PendingOp {
  std::shared_ptr<OperandBytes> operands;
  float* d = nullptr;
  int count = 0;
  std::vector<float> values;
  bool superseded = false;  // a later wgmma on the same accumulators carries on from here
  const uint32_t* a_regs = nullptr;
  std::array<uint32_t, 4> a_copy{};
};
}  // namespace

struct WgmmaThread {
  bool fenced = false;                   // a wgmma.fence has run
  std::vector<const float*> handed_back;  // accumulators retired since the last fence
  std::vector<PendingOp> ops;             // in issue order
  std::vector<size_t> group_ends;         // committed groups: end index in ops
};

Worker::Worker() = default;
Worker::~Worker() = default;

namespace {

WgmmaThread& wgmma_state(Worker& w, const SimThread& t) {
  if (w.wgmma.size() < w.threads.size()) w.wgmma.resize(w.threads.size());
  auto& p = w.wgmma[t.linear];
  if (!p) p = std::make_unique<WgmmaThread>();
  return *p;
}

// Element `bits` (16 or 32 bits wide) of an operand, as the tensor core reads it.
double element(WgmmaType type, uint32_t bits) {
  switch (type) {
    case WgmmaType::BF16:
      return static_cast<float>(c10::BFloat16(static_cast<uint16_t>(bits), c10::BFloat16::from_bits()));
    case WgmmaType::F16:
      return static_cast<float>(c10::Half(static_cast<uint16_t>(bits), c10::Half::from_bits()));
    case WgmmaType::TF32:
      return std::bit_cast<float>(bits & 0xFFFFE000u);  // only the top 19 bits are read
  }
  return 0;
}

// Reads the rows x k operand a descriptor names into `out` (row-major), recording the
// 16-byte chunks it touched.
void read_operand(Site site, const char* which, const WgmmaCall& c, uint64_t desc, bool trans,
                  int rows, int k, std::vector<double>& out, OperandBytes& bytes) {
  const hopper::MatrixDesc d = hopper::decode_matrix_desc(desc);
  const uint32_t elem = c.type == WgmmaType::TF32 ? 4 : 2;
  if (d.base_offset != 0) {
    fail(site, std::string("wgmma: operand ") + which +
                   "'s descriptor has a base offset; the simulator models base offset 0 only "
                   "(place swizzled operands at multiples of the swizzle period)");
  }
  if (trans && c.type == WgmmaType::TF32) {
    fail(site, std::string("wgmma: operand ") + which + " cannot be MN-major (transposed) for tf32");
  }
  out.assign(size_t(rows) * k, 0.0);
  for (int r = 0; r < rows; ++r) {
    for (int kk = 0; kk < k; ++kk) {
      const uint32_t addr = hopper::operand_address(d, !trans, elem, r, kk);
      if (addr % elem != 0) fail(site, std::string("wgmma: operand ") + which + " misaligned");
      const unsigned char* p = shared_pointer(site, addr, elem);
      uint32_t bits = 0;
      std::memcpy(&bits, p, elem);
      out[size_t(r) * k + kk] = element(c.type, bits);
      const unsigned char* chunk = p - (addr % 16);
      const bool seen = std::any_of(bytes.chunks.begin(), bytes.chunks.end(),
                                    [&](const auto& x) { return x.first == chunk; });
      if (!seen) {
        race_check_async_read(*tl_worker, chunk, 16, "wgmma.mma_async", site);
        race_record(*tl_worker, chunk, 16, false, nullptr, false, &site);
        std::array<unsigned char, 16> copy{};
        std::memcpy(copy.data(), chunk, 16);
        bytes.chunks.push_back({chunk, copy});
      }
    }
  }
}

// What each thread hands the collective.
struct Mine {
  const float* d_in;  // the accumulators to add to (a pending value, or the registers)
  const uint32_t* a_regs;
  std::vector<float>* out;
  OperandBytes** operands;
};

}  // namespace

void reset_async_state(Worker& w) {
  w.tma_in_flight.clear();
  w.bulk.assign(w.threads.size(), BulkThread{});
  w.warpgroups.assign((w.threads.size() + 127) / 128, WarpGroupExchange{});
  for (auto& p : w.wgmma) {
    if (p) *p = WgmmaThread{};
  }
}

void check_thread_exit(Worker& w, SimThread& t) {
  check_wgmma_exit(w, t);
  check_bulk_exit(w, t);
}

void check_wgmma_exit(Worker& w, SimThread& t) {
  if (t.linear >= w.wgmma.size() || !w.wgmma[t.linear]) return;
  const WgmmaThread& s = *w.wgmma[t.linear];
  if (!s.ops.empty()) {
    fail(s.ops.front().operands->site,
         "the thread exits with wgmma.mma_async operations that no wgmma.wait_group retired "
         "(their accumulators were never ready)");
  }
}

std::string describe_warpgroup_wait(const Worker& w) {
  for (size_t g = 0; g < w.warpgroups.size(); ++g) {
    const WarpGroupExchange& x = w.warpgroups[g];
    if (!x.open) continue;
    std::vector<unsigned> missing;
    std::string why;
    for (unsigned i = 0; i < 128; ++i) {
      const unsigned id = static_cast<unsigned>(g) * 128 + i;
      if (x.mine[i] != nullptr) continue;
      missing.push_back(id);
      if (why.empty()) {
        why = id >= w.threads.size()           ? "the block has only " + std::to_string(w.threads.size()) + " threads"
              : w.threads[id].state == ThreadState::Exited ? "thread " + std::to_string(id) + " has exited"
                                                           : "thread " + std::to_string(id) + " waits at " + where(w.threads[id].site);
      }
    }
    return std::string(x.what) + " at " + where(x.site) + " in warpgroup " + std::to_string(g) +
           " is missing threads " + ranges(missing) + " (" + why + ")";
  }
  return {};
}

}  // namespace detail

using detail::tl_worker;
using detail::Worker;

void warpgroup_collective(const char* what, Site site, const void* uniform, size_t uniform_bytes,
                          void* mine, const std::function<void(void* const* mine)>& combine) {
  SimThread& t = this_thread();
  Worker& w = *tl_worker;
  const unsigned g = t.linear / 128, i = t.linear % 128;
  if (size_t(g + 1) * 128 > w.threads.size()) {
    fail(site, std::string(what) + " is a warpgroup instruction (128 threads, 4 whole warps), but "
                   "thread " + std::to_string(t.linear) + "'s warpgroup " + std::to_string(g) +
                   " is incomplete: the block has " + std::to_string(w.threads.size()) + " threads");
  }
  detail::WarpGroupExchange& x = w.warpgroups[g];
  const auto* u = static_cast<const unsigned char*>(uniform);
  if (!x.open) {
    x.open = true;
    x.what = what;
    x.site = site;
    x.uniform.assign(u, u + uniform_bytes);
    x.mine.fill(nullptr);
    x.arrived = 0;
  } else if (std::strcmp(x.what, what) != 0 || !detail::same_site(x.site, site)) {
    fail(site, "threads of warpgroup " + std::to_string(g) + " diverge: thread " +
                   std::to_string(t.linear) + " calls " + what + " while others wait in " + x.what +
                   " at " + detail::where(x.site));
  } else if (x.uniform.size() != uniform_bytes || std::memcmp(x.uniform.data(), u, uniform_bytes) != 0) {
    fail(site, std::string(what) + ": thread " + std::to_string(t.linear) +
                   " passes operands (descriptors, shape, scale) that differ from those of the "
                   "other threads of warpgroup " + std::to_string(g));
  }
  x.mine[i] = mine;
  if (++x.arrived == 128) {
    x.open = false;
    std::vector<unsigned> tids;
    if (options().race_check) {
      for (unsigned j = 0; j < 128; ++j) tids.push_back(g * 128 + j);
      detail::race_collective(w, tids);
    }
    combine(x.mine.data());
    if (!tids.empty()) detail::race_collective_done(w, tids);
    for (unsigned j = 0; j < 128; ++j) {
      SimThread& o = w.threads[g * 128 + j];
      if (&o != &t) {
        o.state = ThreadState::Runnable;
        o.waiting = WaitKind::None;
      }
    }
  } else {
    t.state = ThreadState::Blocked;
    t.waiting = WaitKind::WarpGroup;
    t.site = site;
    switch_fiber(t.fiber, t.block->scheduler);
  }
}

void setmaxnreg(Site site, int regs, bool increase) {
  const uint64_t uniform[] = {uint64_t(regs), increase};
  int mine = 0;
  warpgroup_collective(increase ? "setmaxnreg.inc" : "setmaxnreg.dec", site, uniform, sizeof uniform,
                       &mine, [](void* const*) {});
}

void wgmma_fence(Site) {
  detail::WgmmaThread& s = detail::wgmma_state(*tl_worker, this_thread());
  s.fenced = true;
  s.handed_back.clear();
}

void wgmma(Site site, const WgmmaCall& call, float* d, const uint32_t* a_regs) {
  Worker& w = *tl_worker;
  SimThread& t = this_thread();
  detail::WgmmaThread& s = detail::wgmma_state(w, t);
  const int k = call.type == WgmmaType::TF32 ? 8 : 16;
  if (call.n < 8 || call.n > 256 || call.n % 8 != 0) {
    fail(site, "wgmma.mma_async: N must be a multiple of 8 in [8, 256], got " + std::to_string(call.n));
  }
  if (!s.fenced) {
    fail(site, "wgmma.mma_async before any wgmma.fence: the first wgmma needs a fence before it "
               "(PTX ISA 9.7.15.7.1)");
  }
  if (std::find(s.handed_back.begin(), s.handed_back.end(), d) != s.handed_back.end()) {
    fail(site, "wgmma.mma_async on accumulators that a wgmma.wait_group handed back to the "
               "thread, without a wgmma.fence since: registers accessed outside wgmma need a "
               "fence before a wgmma uses them again (PTX ISA 9.7.15.7.1)");
  }
  const int count = call.n / 2;
  // Carry on from a pending operation on the same accumulators (the hardware chains them).
  const float* d_in = d;
  for (auto it = s.ops.rbegin(); it != s.ops.rend(); ++it) {
    if (it->superseded) continue;
    const bool overlap = it->d < d + count && d < it->d + it->count;
    if (!overlap) continue;
    if (it->d != d || it->count != count) {
      fail(site, "wgmma.mma_async on accumulators that overlap, but are not, those of the pending "
                 "wgmma issued at " + detail::where(it->operands->site));
    }
    it->superseded = true;
    d_in = it->values.data();
    break;
  }
  std::vector<float> out;
  detail::OperandBytes* operands = nullptr;
  detail::Mine mine{d_in, a_regs, &out, &operands};
  auto shared_operands = std::make_shared<detail::OperandBytes>();
  shared_operands->site = site;
  // Compared bytewise across the warpgroup: the fields, not the struct (it has padding).
  const uint64_t uniform[] = {uint64_t(call.type), uint64_t(call.n),       call.a_in_registers,
                              call.scale_d,        uint64_t(call.scale_a + 2), uint64_t(call.scale_b + 2),
                              call.trans_a,        call.trans_b,           call.a_in_registers ? 0 : call.desc_a,
                              call.desc_b};
  warpgroup_collective("wgmma.mma_async", site, uniform, sizeof uniform, &mine, [&](void* const* all) {
    // A (64 x k) and B (n x k), as numbers.
    std::vector<double> a(64 * size_t(k)), b;
    if (call.a_in_registers) {
      for (int th = 0; th < 128; ++th) {
        const auto* m = static_cast<const detail::Mine*>(all[th]);
        if (call.type == WgmmaType::TF32) {
          for (int r = 0; r < 4; ++r) {
            const auto p = hopper::wgmma_a_k8_tf32(th, r);
            a[size_t(p.row) * k + p.col] = detail::element(call.type, m->a_regs[r]);
          }
        } else {
          for (int e = 0; e < 8; ++e) {
            const auto p = hopper::wgmma_a_k16(th, e);
            a[size_t(p.row) * k + p.col] = detail::element(call.type, m->a_regs[e / 2] >> (16 * (e % 2)));
          }
        }
      }
    } else {
      detail::read_operand(site, "A", call, call.desc_a, call.trans_a, 64, k, a, *shared_operands);
    }
    detail::read_operand(site, "B", call, call.desc_b, call.trans_b, call.n, k, b, *shared_operands);
    const double scale = double(call.scale_a) * double(call.scale_b);
    for (int th = 0; th < 128; ++th) {
      auto* m = static_cast<detail::Mine*>(all[th]);
      m->out->resize(count);
      *m->operands = shared_operands.get();
      for (int i = 0; i < count; ++i) {
        const auto p = hopper::wgmma_d(th, i);
        double sum = 0;
        for (int kk = 0; kk < k; ++kk) sum += a[size_t(p.row) * k + kk] * b[size_t(p.col) * k + kk];
        const double acc = call.scale_d ? double(m->d_in[i]) : 0.0;
        (*m->out)[i] = static_cast<float>(acc + scale * sum);
      }
    }
  });
  // The operation is in flight: the accumulators hold poison until it retires.
  detail::PendingOp op;
  op.operands = shared_operands;
  op.d = d;
  op.count = count;
  op.values = std::move(out);
  if (a_regs != nullptr && call.a_in_registers) {
    op.a_regs = a_regs;
    std::memcpy(op.a_copy.data(), a_regs, sizeof op.a_copy);
  }
  for (int i = 0; i < count; ++i) std::memcpy(&d[i], &detail::kPoisonWord, 4);
  s.ops.push_back(std::move(op));
}

void wgmma_commit(Site) {
  detail::WgmmaThread& s = detail::wgmma_state(*tl_worker, this_thread());
  s.group_ends.push_back(s.ops.size());  // possibly empty, as the ISA allows
}

void wgmma_wait(Site site, int pending_groups) {
  detail::WgmmaThread& s = detail::wgmma_state(*tl_worker, this_thread());
  if (pending_groups < 0 || pending_groups > 7) {
    fail(site, "wgmma.wait_group N needs N in [0, 7], got " + std::to_string(pending_groups));
  }
  const size_t groups = s.group_ends.size();
  if (groups <= size_t(pending_groups)) return;
  const size_t retire_groups = groups - size_t(pending_groups);
  const size_t retire = s.group_ends[retire_groups - 1];
  for (size_t i = 0; i < retire; ++i) {
    detail::PendingOp& op = s.ops[i];
    detail::OperandBytes& bytes = *op.operands;
    if (!bytes.checked) {
      bytes.checked = true;
      for (const auto& [p, copy] : bytes.chunks) {
        if (std::memcmp(p, copy.data(), 16) != 0) {
          fail(site, "shared memory that the wgmma.mma_async issued at " + detail::where(bytes.site) +
                         " reads was overwritten before the wgmma.wait_group that retires it");
        }
      }
    }
    if (op.a_regs != nullptr && std::memcmp(op.a_regs, op.a_copy.data(), sizeof op.a_copy) != 0) {
      fail(site, "the A registers of the wgmma.mma_async issued at " + detail::where(bytes.site) +
                     " were modified before the wgmma.wait_group that retires it");
    }
    for (int r = 0; r < op.count; ++r) {
      if (std::memcmp(&op.d[r], &detail::kPoisonWord, 4) != 0) {
        fail(site, "accumulator " + std::to_string(r) + " of the wgmma.mma_async issued at " +
                       detail::where(bytes.site) +
                       " was written before the wgmma.wait_group that retires it");
      }
    }
  }
  for (size_t i = 0; i < retire; ++i) {
    detail::PendingOp& op = s.ops[i];
    if (op.superseded) continue;
    std::memcpy(op.d, op.values.data(), sizeof(float) * op.count);
    s.handed_back.push_back(op.d);
  }
  s.ops.erase(s.ops.begin(), s.ops.begin() + static_cast<long>(retire));
  s.group_ends.erase(s.group_ends.begin(), s.group_ends.begin() + static_cast<long>(retire_groups));
  for (size_t& e : s.group_ends) e -= retire;
}

}  // namespace ovk_sim
