// A GEMM built from the Hopper primitives, the pipeline the Hopper conv kernels follow:
// TMA -> mbarrier ring -> wgmma -> TMA store. Not a library op: it is run in the simulator
// (tests/test_sim_gemm.py, against float64, with each GemmBug planted) and compiled by nvcc
// for sm_90a (tests/test_sim_gemm.py checks its SASS for HGMMA and the TMA instructions).
//
#pragma once

#include <cstdint>

#include "dynamic_smem.cuh"
#include "hopper_layouts.cuh"
#include "mbarrier.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace overfeat_kernels::hopper_gemm {

using hopper::Swizzle;

// D (M x N, f32) = A (M x K) B (N x K)^T, bf16, both K-major. A block computes a 128 x 128
// tile with three warpgroups: warpgroup 0 produces (one elected thread issues the TMA
// loads of each 64-wide K slice into a 4-stage ring guarded by full / empty mbarriers),
// warpgroups 1 and 2 consume (m64n128k16 wgmma on rows 0-63 and 64-127, from 128B-
// swizzled shared memory), then write their accumulators to shared memory and store
// them with TMA. Out-of-bound rows and the K tail come in as zeros; the store clips.

enum class GemmBug : int {
  kNone = 0,
  kWrongSwizzle,   // the wgmma descriptors say 64B while TMA wrote 128B-swizzled tiles
  kNoProxyFence,   // the epilogue's ordinary stores reach the TMA store unfenced
  kExpectTxWrong,  // expect_tx announces the A tile only
  kReleaseEarly,   // wait_group<1> keeps a group in flight, yet its stage is released
  kNoEmptyWait,    // the producer refills a stage without waiting for "empty"
};

constexpr int kGemmStages = 4, kGemmTile = 128, kGemmK = 64;
constexpr uint32_t kGemmStageBytes = 2 * kGemmTile * kGemmK * 2;  // A and B tiles, bf16

struct GemmMaps {
  tma::TensorMap a, b, d;
  int k_tiles;
};

template <GemmBug kBug>
__global__ void __launch_bounds__(384, 1) gemm_kernel(const __grid_constant__ GemmMaps maps) {
  __shared__ __align__(8) uint64_t full[kGemmStages], empty[kGemmStages];
  unsigned char* ring = align_up(dynamic_shared_memory<unsigned char>(), 1024);
  float* epilogue = reinterpret_cast<float*>(ring + kGemmStages * kGemmStageBytes);
  const int t = threadIdx.x, wg = t / 128;
  const int m0 = blockIdx.y * kGemmTile, n0 = blockIdx.x * kGemmTile;
  if (t == 0) {
    for (int s = 0; s < kGemmStages; ++s) {
      mbarrier_init(&full[s], 1);
      mbarrier_init(&empty[s], 256);  // every consumer thread releases
    }
    mbarrier_fence_init();
  }
  __syncthreads();
  if (wg == 0) {
    setmaxnreg_dec<40>();
    if (t < 32 && elect_one_sync()) {
      for (int kt = 0; kt < maps.k_tiles; ++kt) {
        const int s = kt % kGemmStages, use = kt / kGemmStages;
        if (use > 0 && kBug != GemmBug::kNoEmptyWait) mbarrier_wait_parity(&empty[s], (use - 1) & 1);
        unsigned char* a = ring + s * kGemmStageBytes;
        unsigned char* b = a + kGemmStageBytes / 2;
        mbarrier_arrive_expect_tx(&full[s], kBug == GemmBug::kExpectTxWrong ? kGemmStageBytes / 2 : kGemmStageBytes);
        tma_load_2d(a, &maps.a, &full[s], kt * kGemmK, m0);
        tma_load_2d(b, &maps.b, &full[s], kt * kGemmK, n0);
      }
    }
  } else {
    setmaxnreg_inc<232>();
    const int half = wg - 1;  // rows 64 * half ..
    constexpr Swizzle kRead = kBug == GemmBug::kWrongSwizzle ? Swizzle::k64B : Swizzle::k128B;
    float acc[kGemmTile / 2];
    for (int kt = 0; kt < maps.k_tiles; ++kt) {
      const int s = kt % kGemmStages;
      mbarrier_wait_parity(&full[s], (kt / kGemmStages) & 1);
      const unsigned char* a = ring + s * kGemmStageBytes + half * 64 * 128;
      const unsigned char* b = ring + s * kGemmStageBytes + kGemmStageBytes / 2;
      wgmma_fence();
      for (int kk = 0; kk < kGemmK / 16; ++kk) {
        wgmma_ss<kGemmTile, MmaType::kBF16>(acc, make_matrix_desc(a + 32 * kk, 16, 1024, kRead),
                                            make_matrix_desc(b + 32 * kk, 16, 1024, kRead),
                                            kt > 0 || kk > 0);
      }
      wgmma_commit_group();
      if constexpr (kBug == GemmBug::kReleaseEarly) {
        wgmma_wait_group<1>();  // the group just issued may still read stage s...
      } else {
        wgmma_wait_group<0>();
      }
      mbarrier_arrive(&empty[s]);  // ...which this releases to the producer
    }
    wgmma_wait_group<0>();
    float* tile = epilogue + half * 64 * kGemmTile;
    for (int i = 0; i < kGemmTile / 2; ++i) {
      const auto q = hopper::wgmma_d(t % 128, i);
      tile[q.row * kGemmTile + q.col] = acc[i];
    }
    if (kBug != GemmBug::kNoProxyFence) fence_proxy_async_shared();
  }
  __syncthreads();
  if (wg > 0 && t % 128 == 0) {
    tma_store_2d(&maps.d, epilogue + (wg - 1) * 64 * kGemmTile, n0, m0 + (wg - 1) * 64);
    bulk_commit_group();
    bulk_wait_group<0>();
  }
}

}  // namespace overfeat_kernels::hopper_gemm
