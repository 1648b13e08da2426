// The simulator's bodies of the TMA primitives (csrc/cuda/tma.cuh holds their PTX): the
// same names and signatures, over the runtime's TMA model (runtime.h, "TMA").
#pragma once

#include <cstdint>

#include "runtime.h"

namespace overfeat_kernels {

inline void tma_load_1d(void* dst, const tma::TensorMap* map, uint64_t* bar, int32_t c0,
                        ovk_sim::CallerSite at = {}) {
  const int32_t c[] = {c0};
  ovk_sim::tma_load(at.site, map->spec, dst, bar, 1, c, nullptr);
}
inline void tma_load_2d(void* dst, const tma::TensorMap* map, uint64_t* bar, int32_t c0, int32_t c1,
                        ovk_sim::CallerSite at = {}) {
  const int32_t c[] = {c0, c1};
  ovk_sim::tma_load(at.site, map->spec, dst, bar, 2, c, nullptr);
}
inline void tma_load_3d(void* dst, const tma::TensorMap* map, uint64_t* bar, int32_t c0, int32_t c1,
                        int32_t c2, ovk_sim::CallerSite at = {}) {
  const int32_t c[] = {c0, c1, c2};
  ovk_sim::tma_load(at.site, map->spec, dst, bar, 3, c, nullptr);
}
inline void tma_load_4d(void* dst, const tma::TensorMap* map, uint64_t* bar, int32_t c0, int32_t c1,
                        int32_t c2, int32_t c3, ovk_sim::CallerSite at = {}) {
  const int32_t c[] = {c0, c1, c2, c3};
  ovk_sim::tma_load(at.site, map->spec, dst, bar, 4, c, nullptr);
}
inline void tma_load_5d(void* dst, const tma::TensorMap* map, uint64_t* bar, int32_t c0, int32_t c1,
                        int32_t c2, int32_t c3, int32_t c4, ovk_sim::CallerSite at = {}) {
  const int32_t c[] = {c0, c1, c2, c3, c4};
  ovk_sim::tma_load(at.site, map->spec, dst, bar, 5, c, nullptr);
}
inline void tma_load_im2col_4d(void* dst, const tma::TensorMap* map, uint64_t* bar, int32_t c,
                               int32_t w, int32_t h, int32_t n, uint16_t off_w, uint16_t off_h,
                               ovk_sim::CallerSite at = {}) {
  const int32_t coords[] = {c, w, h, n};
  const uint16_t offsets[] = {off_w, off_h};
  ovk_sim::tma_load(at.site, map->spec, dst, bar, -4, coords, offsets);  // negative: im2col
}
inline void tma_store_2d(const tma::TensorMap* map, const void* src, int32_t c0, int32_t c1,
                         ovk_sim::CallerSite at = {}) {
  const int32_t c[] = {c0, c1};
  ovk_sim::tma_store(at.site, map->spec, src, 2, c);
}
inline void bulk_commit_group(ovk_sim::CallerSite at = {}) { ovk_sim::bulk_commit(at.site); }
template <int N>
inline void bulk_wait_group_read(ovk_sim::CallerSite at = {}) {
  ovk_sim::bulk_wait(at.site, N, true);
}
template <int N>
inline void bulk_wait_group(ovk_sim::CallerSite at = {}) {
  ovk_sim::bulk_wait(at.site, N, false);
}
inline void fence_proxy_async_shared(ovk_sim::CallerSite at = {}) { ovk_sim::fence_proxy_async(at.site); }
inline void prefetch_tensor_map(const tma::TensorMap*) {}

}  // namespace overfeat_kernels
