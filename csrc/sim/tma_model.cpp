// The simulator's model of the Tensor Memory Accelerator (runtime.h, "TMA"): tiled and
// im2col loads that land on an mbarrier's phase, tiled stores in bulk async-groups, and
// the async-proxy fence. The walks follow PTX ISA 5.5 "Tensors" (5.5.3 tiled mode, 5.5.4
// im2col mode, 5.5.7 swizzling); the tensor map is csrc/cuda/tensor_map.cuh's.
#include <c10/util/Exception.h>

#include <array>
#include <cstring>

#include "../cuda/tensor_map.cuh"
#include "block_state.h"

namespace ovk_sim {
namespace detail {
namespace {

using overfeat_kernels::tma::DType;
using overfeat_kernels::tma::Mode;
using overfeat_kernels::tma::OobFill;
using overfeat_kernels::tma::TensorMapSpec;
namespace hopper = overfeat_kernels::hopper;

// The fill of an out-of-bound element: zeros, or a quiet NaN of the element type.
void fill(const TensorMapSpec& s, unsigned char* out) {
  const uint32_t e = overfeat_kernels::tma::dtype_bytes(s.dtype);
  if (s.oob == OobFill::kZero) {
    std::memset(out, 0, e);
    return;
  }
  const uint32_t nan = s.dtype == DType::kBF16 ? 0x7FC0u : s.dtype == DType::kF16 ? 0x7E00u : 0x7FC00000u;
  std::memcpy(out, &nan, e);
}

// Copies element `x` (a global coordinate per dimension, innermost first) into `out`, or
// the fill when it lies outside the tensor.
void element(const TensorMapSpec& s, const int64_t* x, unsigned char* out) {
  const uint32_t e = overfeat_kernels::tma::dtype_bytes(s.dtype);
  int64_t offset = 0;
  for (uint32_t i = 0; i < s.rank; ++i) {
    if (x[i] < 0 || x[i] >= int64_t(s.dims[i])) {
      fill(s, out);
      return;
    }
    offset += x[i] * int64_t(s.strides[i]);
  }
  std::memcpy(out, static_cast<const unsigned char*>(s.global) + offset, e);
}

// Calls f(j) for every element j (an index per dimension, innermost first) of a box of
// n[i] elements in dimension i, in the box's memory order: dimension 0 fastest.
template <class F>
void walk_box(const std::array<uint32_t, 5>& n, const F& f) {
  for (uint32_t j4 = 0; j4 < n[4]; ++j4)
    for (uint32_t j3 = 0; j3 < n[3]; ++j3)
      for (uint32_t j2 = 0; j2 < n[2]; ++j2)
        for (uint32_t j1 = 0; j1 < n[1]; ++j1)
          for (uint32_t j0 = 0; j0 < n[0]; ++j0) {
            const uint32_t j[5] = {j0, j1, j2, j3, j4};
            f(j);
          }
}

// The box of a tiled load, logical (unswizzled) bytes, innermost first (5.5.3).
std::vector<unsigned char> tiled_box(const TensorMapSpec& s, const int32_t* coords) {
  const uint32_t e = overfeat_kernels::tma::dtype_bytes(s.dtype);
  std::array<uint32_t, 5> n{1, 1, 1, 1, 1};
  for (uint32_t i = 0; i < s.rank; ++i) {
    const uint32_t es = i == 0 ? 1 : s.element_strides[i];
    n[i] = (s.box[i] + es - 1) / es;
  }
  std::vector<unsigned char> out(overfeat_kernels::tma::box_bytes(s));
  size_t at = 0;
  walk_box(n, [&](const uint32_t* j) {
    int64_t x[5] = {};
    for (uint32_t i = 0; i < s.rank; ++i) {
      x[i] = int64_t(coords[i]) + int64_t(j[i]) * (i == 0 ? 1 : s.element_strides[i]);
    }
    element(s, x, out.data() + at);
    at += e;
  });
  return out;
}

// The pixels of an im2col load (5.5.4): the bounding box of filter bases is
// [lower, dims + upper) per spatial dimension, walked W fastest, then H (then D), then
// into the next image; pixel p of the load is the one `p` places after the base at the
// instruction's coordinates, shifted by the offsets; its channels c .. c + cpp - 1.
std::vector<unsigned char> im2col_box(Site site, const TensorMapSpec& s, const int32_t* coords,
                                      const uint16_t* offsets) {
  const uint32_t e = overfeat_kernels::tma::dtype_bytes(s.dtype);
  const uint32_t spatial = s.rank - 2;
  int64_t extent[3] = {1, 1, 1};  // base positions per spatial dimension
  int64_t base[3] = {0, 0, 0};    // the instruction's base, as a position in the box
  for (uint32_t d = 0; d < spatial; ++d) {
    const int64_t st = s.element_strides[d + 1];
    const int64_t span = int64_t(s.dims[d + 1]) + s.upper[d] - s.lower[d];
    extent[d] = (span + st - 1) / st;
    const int64_t rel = int64_t(coords[d + 1]) - s.lower[d];
    if (rel < 0 || rel % st != 0 || rel / st >= extent[d]) {
      fail(site, "TMA im2col: coordinate " + std::to_string(coords[d + 1]) + " of spatial dimension " +
                     std::to_string(d) + " is not a filter base inside the bounding box [" +
                     std::to_string(s.lower[d]) + ", " + std::to_string(int64_t(s.dims[d + 1]) + s.upper[d]) +
                     ") with stride " + std::to_string(st) + " (PTX ISA 5.5.4.1)");
    }
    base[d] = rel / st;
  }
  int64_t linear = coords[s.rank - 1];  // the image, then the spatial positions, W fastest
  for (int d = int(spatial) - 1; d >= 0; --d) linear = linear * extent[d] + base[d];
  std::vector<unsigned char> out(size_t(s.pixels_per_column) * s.channels_per_pixel * e);
  size_t at = 0;
  for (uint32_t p = 0; p < s.pixels_per_column; ++p) {
    int64_t rest = linear + p;
    int64_t x[5] = {};
    for (uint32_t d = 0; d < spatial; ++d) {
      const int64_t k = ((rest % extent[d]) + extent[d]) % extent[d];
      rest = (rest - k) / extent[d];
      x[d + 1] = s.lower[d] + k * int64_t(s.element_strides[d + 1]) + offsets[d];
    }
    x[s.rank - 1] = rest;
    for (uint32_t c = 0; c < s.channels_per_pixel; ++c) {
      x[0] = int64_t(coords[0]) + c;
      element(s, x, out.data() + at);
      at += e;
    }
  }
  return out;
}

// The shared address of logical byte `offset` of a box at `dst`, after the swizzle.
uint32_t swizzled(uint32_t dst, size_t offset, hopper::Swizzle sw) {
  return hopper::swizzle_address(dst + static_cast<uint32_t>(offset), sw);
}

void check_destination(Site site, const char* what, uint32_t address) {
  if (address % 128 != 0) {
    fail(site, std::string(what) + ": the shared-memory box must be 128-byte aligned (shared "
                   "address 0x" + [&] {
                     char b[16];
                     std::snprintf(b, sizeof b, "%x", address);
                     return std::string(b);
                   }() + ")");
  }
}

// Reads a store's box from shared memory (at its wait_group.read, the latest moment).
void read_store(BulkStore& op) {
  const auto& s = *static_cast<const TensorMapSpec*>(op.spec);
  const uint32_t e = overfeat_kernels::tma::dtype_bytes(s.dtype);
  const uint32_t src = shared_address(op.site, op.src);
  std::array<uint32_t, 5> n{1, 1, 1, 1, 1};
  for (uint32_t i = 0; i < s.rank; ++i) n[i] = s.box[i];
  size_t at = 0;
  walk_box(n, [&](const uint32_t* j) {
    const size_t here = at;
    at += e;
    int64_t offset = 0;
    for (uint32_t i = 0; i < s.rank; ++i) {
      const int64_t x = int64_t(op.coords[i]) + j[i];
      if (x >= int64_t(s.dims[i])) return;  // clipped, as the GPU does
      offset += x * int64_t(s.strides[i]);
    }
    const unsigned char* from = shared_pointer(op.site, swizzled(src, here, s.swizzle), e);
    op.dsts.push_back(const_cast<unsigned char*>(static_cast<const unsigned char*>(s.global)) + offset);
    op.bytes.insert(op.bytes.end(), from, from + e);
  });
  op.read = true;
}

// Writes a read store to global memory (at its full wait_group, or the thread's exit).
void write_store(const BulkStore& op) {
  const auto& s = *static_cast<const TensorMapSpec*>(op.spec);
  const uint32_t e = overfeat_kernels::tma::dtype_bytes(s.dtype);
  for (size_t i = 0; i < op.dsts.size(); ++i) std::memcpy(op.dsts[i], op.bytes.data() + i * e, e);
}

}  // namespace

void complete_tma(Worker& w, void* bar, uint64_t completed_phase) {
  for (TmaLanding& l : w.tma_in_flight) {
    if (l.bar == bar && l.phase == completed_phase) l.phase_complete = true;
  }
}

void land_tma(Worker& w, const void* bar) {
  auto& v = w.tma_in_flight;
  for (auto it = v.begin(); it != v.end();) {
    if (it->bar == bar && it->phase_complete) {
      race_async_landing(w, bar, static_cast<uint32_t>(it->phase & 1), it->chunks, it->issuer,
                         it->issuer_clocks, it->issue_epoch);
      for (size_t c = 0; c < it->chunks.size(); ++c) std::memcpy(it->chunks[c], it->data.data() + 16 * c, 16);
      it = v.erase(it);
    } else {
      ++it;
    }
  }
}

void check_bulk_exit(Worker& w, SimThread& t) {
  if (t.linear >= w.bulk.size()) return;
  BulkThread& b = w.bulk[t.linear];
  for (const BulkStore& op : b.ops) {
    if (!op.read) {
      fail(op.site, "the thread exits with TMA stores (cp.async.bulk.tensor) that no "
                    "cp.async.bulk.wait_group waited on: the shared memory they read may be gone");
    }
  }
  for (const BulkStore& op : b.ops) write_store(op);  // read: the launch's end completes them
  b.ops.clear();
  b.group_ends.clear();
}

}  // namespace detail

using detail::tl_worker;

void tma_load(Site site, const overfeat_kernels::tma::TensorMapSpec& map, void* dst, void* bar,
              int dims, const int32_t* coords, const uint16_t* offsets) {
  detail::Worker& w = *tl_worker;
  const bool im2col = map.mode == overfeat_kernels::tma::Mode::kIm2col;
  if (im2col != (dims < 0) || uint32_t(dims < 0 ? -dims : dims) != map.rank) {
    fail(site, std::string("TMA load: a ") + std::to_string(dims < 0 ? -dims : dims) + "-D " +
                   (dims < 0 ? "im2col" : "tiled") + " instruction on a " + std::to_string(map.rank) +
                   "-D " + (im2col ? "im2col" : "tiled") + " tensor map");
  }
  const uint32_t address = shared_address(site, dst);
  detail::check_destination(site, "TMA load", address);
  std::vector<unsigned char> box = map.mode == overfeat_kernels::tma::Mode::kIm2col
                                       ? detail::im2col_box(site, map, coords, offsets)
                                       : detail::tiled_box(map, coords);
  // The bytes land in 16-byte chunks (the swizzle permutes chunks), each poisoned now.
  detail::TmaLanding landing{bar, 0, false, this_thread().linear, {}, 0, {}, std::move(box), site};
  landing.issuer_clocks = detail::race_snapshot(w, landing.issuer, landing.issue_epoch);
  for (size_t off = 0; off < landing.data.size(); off += 16) {
    unsigned char* p = shared_pointer(site, detail::swizzled(address, off, map.swizzle), 16);
    std::memset(p, 0xFF, 16);
    landing.chunks.push_back(p);
  }
  // mbarrier_complete_tx validates the barrier and may complete the phase, landing what
  // is registered for it: register first (an unknown barrier fails there).
  const auto known = w.mbarriers.find(bar);
  landing.phase = known != w.mbarriers.end() ? known->second.phase : 0;
  const uint32_t bytes = static_cast<uint32_t>(landing.data.size());
  w.tma_in_flight.push_back(std::move(landing));
  mbarrier_complete_tx(site, bar, bytes);
}

void tma_store(Site site, const overfeat_kernels::tma::TensorMapSpec& map, const void* src,
               int dims, const int32_t* coords) {
  detail::Worker& w = *tl_worker;
  SimThread& t = this_thread();
  if (map.mode != overfeat_kernels::tma::Mode::kTiled) fail(site, "TMA store: the tensor map must be tiled");
  if (uint32_t(dims) != map.rank) {
    fail(site, "TMA store: a " + std::to_string(dims) + "-D instruction on a " +
                   std::to_string(map.rank) + "-D tensor map");
  }
  for (uint32_t i = 1; i < map.rank; ++i) {
    if (map.element_strides[i] != 1) {
      fail(site, "TMA store: the simulator models stores with element strides of 1 only");
    }
  }
  detail::check_destination(site, "TMA store", shared_address(site, src));
  // The store reads the box through the async proxy from now until its wait_group.read:
  // ordinary writes must be fenced and ordered before it, and count as read from here.
  {
    const uint32_t bytes = overfeat_kernels::tma::box_bytes(map);
    detail::race_check_async_read(w, static_cast<const unsigned char*>(src), bytes, "a TMA store", site);
    detail::race_record(w, src, bytes, false, nullptr, true, &site);
  }
  detail::BulkStore op{&map, static_cast<const unsigned char*>(src), {}, site, false, {}, {}};
  for (uint32_t i = 0; i < map.rank; ++i) {
    if (coords[i] < 0) {
      fail(site, "TMA store: coordinate " + std::to_string(i) + " is negative (" +
                     std::to_string(coords[i]) + "); stores need non-negative coordinates");
    }
    op.coords[i] = coords[i];
  }
  w.bulk[t.linear].ops.push_back(op);
}

void bulk_commit(Site) {
  detail::BulkThread& b = tl_worker->bulk[this_thread().linear];
  b.group_ends.push_back(b.ops.size());
}

void bulk_wait(Site site, int pending_groups, bool read_only) {
  if (pending_groups < 0) fail(site, "cp.async.bulk.wait_group needs N >= 0");
  detail::BulkThread& b = tl_worker->bulk[this_thread().linear];
  const size_t groups = b.group_ends.size();
  if (groups <= size_t(pending_groups)) return;
  const size_t done_groups = groups - size_t(pending_groups);
  const size_t done = b.group_ends[done_groups - 1];
  // The latest moments a GPU may read the shared memory (.read) and write global memory:
  // a buffer reused before the first, or an output read before the second, shows.
  for (size_t i = 0; i < done; ++i) {
    if (!b.ops[i].read) detail::read_store(b.ops[i]);
  }
  if (read_only) return;
  for (size_t i = 0; i < done; ++i) detail::write_store(b.ops[i]);
  b.ops.erase(b.ops.begin(), b.ops.begin() + static_cast<long>(done));
  b.group_ends.erase(b.group_ends.begin(), b.group_ends.begin() + static_cast<long>(done_groups));
  for (size_t& e : b.group_ends) e -= done;
}

void fence_proxy_async(Site) { detail::race_proxy_fence(*tl_worker, this_thread().linear); }

}  // namespace ovk_sim
