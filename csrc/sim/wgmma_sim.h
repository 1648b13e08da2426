// The simulator's bodies of the wgmma primitives (csrc/cuda/wgmma.cuh holds their PTX):
// the same names and signatures, over the runtime's warpgroup model (runtime.h,
// "warpgroups and wgmma"). Each takes its caller's source location, which errors name.
#pragma once

#include <cstdint>

#include "runtime.h"

namespace overfeat_kernels {

namespace wgmma_sim {
constexpr ovk_sim::WgmmaType type_of(MmaType t) {
  return t == MmaType::kBF16 ? ovk_sim::WgmmaType::BF16
         : t == MmaType::kF16 ? ovk_sim::WgmmaType::F16
                              : ovk_sim::WgmmaType::TF32;
}
}  // namespace wgmma_sim

inline void wgmma_fence(ovk_sim::CallerSite at = {}) { ovk_sim::wgmma_fence(at.site); }
inline void wgmma_commit_group(ovk_sim::CallerSite at = {}) { ovk_sim::wgmma_commit(at.site); }
template <int N>
inline void wgmma_wait_group(ovk_sim::CallerSite at = {}) {
  static_assert(N >= 0 && N <= 7, "wgmma.wait_group takes N in [0, 7]");
  ovk_sim::wgmma_wait(at.site, N);
}

template <int N, MmaType kType, bool kTransA = false, bool kTransB = false, int kScaleA = 1,
          int kScaleB = 1>
inline void wgmma_ss(float* d, uint64_t desc_a, uint64_t desc_b, bool scale_d,
                     ovk_sim::CallerSite at = {}) {
  static_assert(N == 64 || N == 128 || N == 256, "wgmma_ss: N is 64, 128 or 256");
  static_assert(kType != MmaType::kTF32 || (!kTransA && !kTransB), "tf32 operands are K-major");
  const ovk_sim::WgmmaCall call{wgmma_sim::type_of(kType), N, false, scale_d, kScaleA, kScaleB,
                                kTransA, kTransB, desc_a, desc_b};
  ovk_sim::wgmma(at.site, call, d, nullptr);
}

template <int N, MmaType kType, bool kTransB = false, int kScaleA = 1, int kScaleB = 1>
inline void wgmma_rs(float* d, const uint32_t* a, uint64_t desc_b, bool scale_d,
                     ovk_sim::CallerSite at = {}) {
  static_assert(N == 64 || N == 128 || N == 256, "wgmma_rs: N is 64, 128 or 256");
  static_assert(kType != MmaType::kTF32 || !kTransB, "tf32 operands are K-major");
  const ovk_sim::WgmmaCall call{wgmma_sim::type_of(kType), N, true, scale_d, kScaleA, kScaleB,
                                false, kTransB, 0, desc_b};
  ovk_sim::wgmma(at.site, call, d, a);
}

template <int kRegs>
inline void setmaxnreg_inc(ovk_sim::CallerSite at = {}) {
  static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0, "setmaxnreg: 24..256, a multiple of 8");
  ovk_sim::setmaxnreg(at.site, kRegs, true);
}
template <int kRegs>
inline void setmaxnreg_dec(ovk_sim::CallerSite at = {}) {
  static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0, "setmaxnreg: 24..256, a multiple of 8");
  ovk_sim::setmaxnreg(at.site, kRegs, false);
}

namespace wgmma_sim {
struct ElectLowest {
  static void apply(const ovk_sim::Empty*, bool* out, uint32_t mask) {
    const int leader = __builtin_ctz(mask);
    for (int l = 0; l < 32; ++l) out[l] = l == leader;
  }
};
}  // namespace wgmma_sim

// The lowest lane, as on the GPUs measured by others (the ISA promises only one lane).
inline bool elect_one_sync(ovk_sim::CallerSite at = {}) {
  return ovk_sim::collective<ovk_sim::Empty, bool, wgmma_sim::ElectLowest>("elect.sync", at.site,
                                                                           0xFFFFFFFFu, true, {});
}

inline uint64_t make_matrix_desc(const void* smem, uint32_t leading, uint32_t stride,
                                 hopper::Swizzle swizzle, ovk_sim::CallerSite at = {}) {
  return hopper::encode_matrix_desc(ovk_sim::shared_address(at.site, smem), leading, stride, swizzle);
}

}  // namespace overfeat_kernels
