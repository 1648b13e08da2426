// The simulator's bodies of the mbarrier primitives (csrc/cuda/mbarrier.cuh holds their
// PTX): the same names and signatures, over the runtime's barrier model (runtime.h,
// "mbarrier objects"). Each takes its caller's source location, which errors name.
#pragma once

#include <cstdint>

#include "runtime.h"

namespace overfeat_kernels {

inline void mbarrier_init(uint64_t* bar, uint32_t count, ovk_sim::CallerSite at = {}) {
  ovk_sim::mbarrier_init(at.site, bar, count);
}
// Makes the inits visible to the other threads (and the async proxy): all the simulator's
// memory is visible at once.
inline void mbarrier_fence_init() {}
inline uint64_t mbarrier_arrive(uint64_t* bar, ovk_sim::CallerSite at = {}) {
  return ovk_sim::mbarrier_arrive(at.site, bar, 1);
}
inline uint64_t mbarrier_arrive_count(uint64_t* bar, uint32_t count,
                                      ovk_sim::CallerSite at = {}) {
  return ovk_sim::mbarrier_arrive(at.site, bar, count);
}
inline uint64_t mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes,
                                          ovk_sim::CallerSite at = {}) {
  ovk_sim::mbarrier_expect_tx(at.site, bar, bytes);
  return ovk_sim::mbarrier_arrive(at.site, bar, 1);
}
inline void mbarrier_expect_tx(uint64_t* bar, uint32_t bytes, ovk_sim::CallerSite at = {}) {
  ovk_sim::mbarrier_expect_tx(at.site, bar, bytes);
}
// try_wait may give up before the phase completes on a GPU; here it suspends the thread
// until the phase completes (an outcome the GPU may also give) and returns true.
inline bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity,
                                     ovk_sim::CallerSite at = {}) {
  ovk_sim::mbarrier_wait_parity(at.site, bar, parity);
  return true;
}
inline bool mbarrier_test_wait_parity(uint64_t* bar, uint32_t parity,
                                      ovk_sim::CallerSite at = {}) {
  return ovk_sim::mbarrier_test_wait_parity(at.site, bar, parity);
}
inline void mbarrier_wait_parity(uint64_t* bar, uint32_t parity, ovk_sim::CallerSite at = {}) {
  ovk_sim::mbarrier_wait_parity(at.site, bar, parity);
}

}  // namespace overfeat_kernels
