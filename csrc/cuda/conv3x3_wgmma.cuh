// conv3x3 on Hopper (sm_90a): the implicit GEMM of conv3x3_igemm.cuh, fed by TMA and
// multiplied by wgmma, with warp-specialised, persistent CTAs.
//
//   out[m, k] = sum_{tap, c} A[m, (tap, c)] * B[(tap, c), k]
//
// Tiles (conv_tiles.cuh, PixelBlocks): 128 GEMM rows are a bh x bw block of output pixels
// of one image, times kBN = 128 filters. The reduction runs over slices of 128 bytes of
// channels (64 bf16 / fp16, 32 tf32) of one tap.
//
// Why tiled loads per tap, not TMA's im2col mode: for tap (r, s) the rows of A are the
// input pixels (y + r - pad, x + s - pad) of the block, i.e. the block's own box shifted by
// (r - pad, s - pad): one 4-D tiled load of the NHWC map (channels, x, y, image) per slice,
// box (slice, bw, bh, 1). Its out-of-bound elements, the padding ring and the channels past
// C, arrive as zeros, so no pixel or channel needs a test; the box lands as 128-byte rows
// in the 128B-swizzled K-major layout wgmma reads. im2col mode gives the same rows, but a
// box of whole-row pixel runs rather than 2-D blocks, an offset pair per tap and a second
// map per padding. The filters [K][taps][Cf] come by a 3-D tiled load (slice, 1, kBN).
//
// Warpgroups (384 threads, one CTA per SM):
// - 0, producer: setmaxnreg.dec to 40 registers; one elected thread walks the CTA's work
//   units and issues, per slice, the A and B loads into a kStages-deep ring of shared
//   memory, announcing their bytes on the slot's "full" mbarrier after the slot's "empty"
//   one says both consumers are done with it;
// - 1 and 2, consumers: setmaxnreg.inc to 232; each waits "full", issues 4 wgmma
//   m64n128k16 (k8 for tf32) on its 64 rows of A, keeps one group in flight and releases a
//   slot when the group that read it retires (wgmma.wait_group 1).
// The epilogue (conv_epilogue.cuh) runs in each consumer warpgroup on its 64 rows while the
// producer already loads the next unit: + bias, ReLU (NaN kept), conversion into a staging
// tile, a warpgroup mbarrier, then 16-byte stores in the output's memory format.
//
// Work units (persistent): unit u = part u % split of tile u / split, CTA b takes units b,
// b + grid, ... . With split > 1 (small maps: too few tiles for the SMs) a part reduces a
// contiguous range of slices and writes its fp32 tile to a workspace; split_reduce_kernel
// then adds the parts in order (deterministic) and runs the epilogue.
//
// Few channels (kTapChunks; Cp = one 16-byte vector, VGG's first layer): a slice of 128
// bytes would be mostly zeros for each tap, and the unfolded copy the mma.sync kernel makes
// moves 9·C channels per pixel through memory. Instead one unit loads all nine taps' boxes
// (16 bytes of channels, bw, bh, 1; no swizzle) as ten 2 KB chunks (the tenth a box past the
// last image: zeros) and the filters, packed tap-major [9][K][Cp], as one box (Cp, 128, 10;
// the tenth tap out of bounds: zeros). In the canonical K-major layout without swizzle each
// chunk is a column of core matrices (8 rows x 16 bytes), so five wgmma k-steps of two
// chunks reduce over (tap, channel) with the input read once from DRAM (its nine shifted
// boxes from L2).
//
// Grad-input (kMasked: through a ReLU) is the same kernel on grad_output, with the filters
// flipped and transposed and padding 2 - pad (conv3x3_kernel.cu prepares them as for the
// mma.sync kernel). The ReLU mask comes by TMA too, the same box of the forward's output
// into a third part of the slot; each consumer thread zeroes, in its warpgroup's rows of A,
// the elements whose mask is not > 0, then fence.proxy.async (its generic writes, visible
// to wgmma's async proxy) and a warpgroup mbarrier before the wgmma. A masked slot holds
// 48 KB: the ring has 3 slots then, to fit the epilogue's staging in 227 KB.
//
// Pooling (kPool; conv_pool.h's fused pool, k = 2 or 3): the blocks cover the conv pixels
// that windows take, bh and bw multiples of k (8 x 16 and the like for k = 2; 6 x 21, 3 x 42,
// 21 x 6 or 42 x 3, 126 pixels, for k = 3: the box fills 126 rows of A, the last two rows
// hold whatever the slot held and their accumulators are never read). The two consumers
// stage their halves, meet on a 256-thread mbarrier (a window may straddle the halves),
// reduce the tile's (bh / k) x (bw / k) windows as F.max_pool2d does
// (conv_epilogue.cuh, store_pooled_tile) and store only the pooled map; with split-K,
// split_reduce_kernel pools the summed parts the same way. Offset pooling: the blocks
// overlap (make_offset_pixel_blocks, conv_tiles.cuh: (k·a + k − 1) x (k·b + k − 1) pixels,
// k·a rows and k·b columns apart), the box fills that many rows of A, and the same steps
// pool every offset's windows of the block (block_window).
//
// The kernels compile to their bodies for sm_90a only (and in the simulator); other
// targets get an empty kernel, which the plan never launches (conv_plan.h).
#pragma once

#include <cstdint>
#include <type_traits>

#include "../index_math.h"
#include "conv_epilogue.cuh"
#include "conv_tiles.cuh"
#include "cuda_headers.cuh"
#include "dynamic_smem.cuh"
#include "hopper_layouts.cuh"
#include "launch.cuh"
#include "mbarrier.cuh"
#include "relu_mask.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define OVERFEAT_WGMMA_CONV_BODY 1
#endif

namespace overfeat_kernels::hopper_conv {

constexpr int kThreads = 384;                 // producer + 2 consumer warpgroups
constexpr int kBM = 128, kBN = 128;           // CTA tile: pixels x filters
constexpr int kSliceBytes = 128;              // a row of one slice: the 128B swizzle span
constexpr int kKSteps = 4;                    // wgmma k-steps per slice, 32 bytes each
constexpr uint32_t kABytes = kBM * kSliceBytes, kBBytes = kBN * kSliceBytes;
// Tap chunks (kChunks): 10 chunks of 16 bytes of channels per row (9 taps and a zero one),
// each chunk a 128-row box; 5 k-steps of two chunks.
constexpr int kChunkBytes = 16, kChunks = 10, kChunkKSteps = kChunks / 2;
constexpr uint32_t kChunkABytes = kBM * kChunkBytes * kChunks, kChunkBBytes = kBN * kChunkBytes * kChunks;
// A slot: A, B and (kMasked) the mask's box, laid out as A; or the tap chunks of A and B.
template <bool kMasked, bool kTapChunks>
constexpr uint32_t kStageBytes = kTapChunks ? kChunkABytes + kChunkBBytes
                                            : kABytes + kBBytes + (kMasked ? kABytes : 0);
// Ring slots: 4 of 32 KB; 3 of the masked (48 KB) and tap-chunk (40 KB) slots, so that the
// epilogue's staging fits beside them (4 masked ones never fit, 4 tap-chunk ones not with
// tf32's staging; a tap-chunk tile is one reduction step, so 3 slots hold two tiles ahead).
template <bool kMasked, bool kTapChunks>
constexpr int kStages = kMasked || kTapChunks ? 3 : 4;
constexpr int kProducerRegs = 40, kConsumerRegs = 232;
static_assert(kProducerRegs * 128 + 2 * kConsumerRegs * 128 <= 65536, "register file");

template <typename T>
constexpr MmaType mma_type() {
  if constexpr (std::is_same_v<T, float>) {
    return MmaType::kTF32;
  } else if constexpr (sizeof(T) == 2 && std::is_same_v<T, at::Half>) {
    return MmaType::kF16;
  } else {
    return MmaType::kBF16;
  }
}

// Elements per slice row, and the staging row of the epilogue (padded by one 16-byte
// vector against bank conflicts).
template <typename T>
constexpr int kSliceElems = kSliceBytes / static_cast<int>(sizeof(T));
template <typename T>
constexpr int kStageStride = kBN + 16 / static_cast<int>(sizeof(T));

// Dynamic shared memory of a launch: the ring (1024-byte aligned, as 128B-swizzled boxes
// need) and the two consumers' staging tiles; 1024 bytes of slack for the alignment.
template <typename T, bool kMasked, bool kTapChunks>
constexpr size_t smem_bytes() {
  return 1024 + size_t(kStages<kMasked, kTapChunks>) * kStageBytes<kMasked, kTapChunks> +
         2 * size_t(kBM / 2) * kStageStride<T> * sizeof(T);
}
static_assert(smem_bytes<float, true, false>() <= 227 * 1024 - 256 &&
                  smem_bytes<float, false, false>() <= 227 * 1024 - 256 &&
                  smem_bytes<float, false, true>() <= 227 * 1024 - 256,
              "an H100's 227 KB per block, static barriers included");

template <typename T>
struct Params {
  tma::TensorMap in_map;    // 4-D (channels, x, y, image), box (slice, bw, bh, 1)
  tma::TensorMap filt_map;  // 3-D (channels, tap, filter), box (slice, 1, kBN);
                            // kTapChunks: (channels, filter, tap), box (cp, kBN, 10)
  tma::TensorMap mask_map;  // kMasked: the ReLU output, as in_map
  PixelBlocks blocks;        // pooling: over the conv pixels the windows take
  uint32_t slot_tx;          // the bytes one slot's loads bring (its full barrier's tx)
  const T* bias;            // [k] or null
  T* out;                   // the output (pooling: the pooled map), strides out_s
  Strides4 out_s;
  float* partial;           // split > 1: [tiles · split][kBM][kBN] fp32
  int pad, c_slices, split;
  int pool;                 // kPool: the window, 2 or 3 (0: none)
  bool relu;
};

#ifdef OVERFEAT_WGMMA_CONV_BODY
// The slot and phase of the it-th slice this CTA moves through its ring of kSlots.
struct RingPos {
  int slot;
  uint32_t use;
};
template <int kSlots>
__device__ __forceinline__ RingPos ring_pos(uint32_t it) {
  return {static_cast<int>(it % kSlots), it / kSlots};
}
#endif

// kTapChunks: few input channels (Cp = one 16-byte vector: C <= 8 for bf16 / fp16, <= 4 for
// tf32; VGG's first layer), see "Few channels" above. kOutChannelsLast: the output is dense
// channels_last. kMasked: grad-input through a ReLU (mask_map). kPool: the epilogue pools
// (Params::pool).
template <typename T, bool kTapChunks, bool kOutChannelsLast, bool kMasked, bool kPool>
__global__ void __launch_bounds__(kThreads, 1)
    conv3x3_wgmma_kernel(const __grid_constant__ Params<T> p) {
#ifdef OVERFEAT_WGMMA_CONV_BODY
  static_assert(!(kTapChunks && kMasked), "grad-input reads slices");
  static_assert(!(kMasked && kPool), "grad-input does not pool");
  constexpr int kSlots = kStages<kMasked, kTapChunks>;
  constexpr uint32_t kSlotBytes = kStageBytes<kMasked, kTapChunks>;
  __shared__ __align__(8) uint64_t full[kSlots], empty[kSlots], staged[2], masked[2], pooled;
  unsigned char* ring = align_up(dynamic_shared_memory<unsigned char>(), 1024);
  const int t = threadIdx.x, wg = t / 128;
  if (t == 0) {
    for (int s = 0; s < kSlots; ++s) {
      mbarrier_init(&full[s], 1);      // the producer's arrive, with the loads' bytes
      mbarrier_init(&empty[s], 256);   // every consumer thread, after its group retired
    }
    mbarrier_init(&staged[0], 128);    // a consumer warpgroup's epilogue steps
    mbarrier_init(&staged[1], 128);
    mbarrier_init(&masked[0], 128);    // kMasked: a warpgroup's rows of A masked
    mbarrier_init(&masked[1], 128);
    mbarrier_init(&pooled, 256);       // kPool: both consumers' epilogue steps
    mbarrier_fence_init();
  }
  __syncthreads();
  const int slices = kTapChunks ? 1 : 9 * p.c_slices;
  const int64_t units = p.blocks.tiles * p.split;

  if (wg == 0) {
    setmaxnreg_dec<kProducerRegs>();
    if (t < 32 && elect_one_sync()) {
      prefetch_tensor_map(&p.in_map);
      prefetch_tensor_map(&p.filt_map);
      if constexpr (kMasked) prefetch_tensor_map(&p.mask_map);
      uint32_t it = 0;
      for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
        const BlockTile tile = block_tile(p.blocks, u / p.split);
        const SliceRange r = split_slices(slices, p.split, static_cast<int>(u % p.split));
        for (int sl = r.begin; sl < r.end; ++sl, ++it) {
          const RingPos pos = ring_pos<kSlots>(it);
          if (pos.use > 0) mbarrier_wait_parity(&empty[pos.slot], (pos.use - 1) & 1);
          unsigned char* a = ring + pos.slot * kSlotBytes;
          mbarrier_arrive_expect_tx(&full[pos.slot], p.slot_tx);
          if constexpr (kTapChunks) {
            // All 9 taps' boxes (the block shifted by (r - pad, s - pad), zeros outside),
            // then a tenth past the last image: all zeros, K's padding to whole k-steps.
            for (int tap = 0; tap < 9; ++tap) {
              tma_load_4d(a + tap * (kBM * kChunkBytes), &p.in_map, &full[pos.slot], 0,
                          tile.x0 + tap % 3 - p.pad, tile.y0 + tap / 3 - p.pad,
                          static_cast<int32_t>(tile.img));
            }
            tma_load_4d(a + 9 * (kBM * kChunkBytes), &p.in_map, &full[pos.slot], 0, tile.x0,
                        tile.y0, static_cast<int32_t>(p.blocks.n));
            tma_load_3d(a + kChunkABytes, &p.filt_map, &full[pos.slot], 0, tile.k0, 0);
            continue;
          }
          const int tap = sl / p.c_slices, c0 = (sl % p.c_slices) * kSliceElems<T>;
          // Tap (r, s) reads the block shifted by (r - pad, s - pad); outside: zeros.
          const int dy = tap / 3 - p.pad, dx = tap % 3 - p.pad;
          tma_load_4d(a, &p.in_map, &full[pos.slot], c0, tile.x0 + dx, tile.y0 + dy,
                      static_cast<int32_t>(tile.img));
          tma_load_3d(a + kABytes, &p.filt_map, &full[pos.slot], c0, tap, tile.k0);
          if constexpr (kMasked) {
            tma_load_4d(a + kABytes + kBBytes, &p.mask_map, &full[pos.slot], c0, tile.x0 + dx,
                        tile.y0 + dy, static_cast<int32_t>(tile.img));
          }
        }
      }
    }
    return;
  }

  setmaxnreg_inc<kConsumerRegs>();
  const int half = wg - 1, ct = t - 128 * wg;  // rows 64·half .. of the tile; thread in group
  T* stage = reinterpret_cast<T*>(ring + kSlots * kSlotBytes) + half * (kBM / 2) * kStageStride<T>;
  float acc[kBN / 2];
  uint32_t it = 0, staged_phase = 0, masked_phase = 0, pooled_phase = 0;
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
    const BlockTile tile = block_tile(p.blocks, u / p.split);
    const SliceRange r = split_slices(slices, p.split, static_cast<int>(u % p.split));
    int prev_slot = -1;
    for (int sl = r.begin; sl < r.end; ++sl, ++it) {
      const RingPos pos = ring_pos<kSlots>(it);
      mbarrier_wait_parity(&full[pos.slot], pos.use & 1);
      unsigned char* a = ring + pos.slot * kSlotBytes + half * (kBM / 2) * kSliceBytes;
      const unsigned char* b = ring + pos.slot * kSlotBytes + kABytes;
      if constexpr (kMasked) {
        // A and the mask's box share their layout (box, swizzle, alignment): element i of
        // one is element i of the other. 64 rows x 128 bytes, 4 vectors per thread.
        const unsigned char* m = a + kABytes + kBBytes;
        for (int v = ct; v < (kBM / 2) * kSliceBytes / 16; v += 128) {
          uint4* av = reinterpret_cast<uint4*>(a) + v;
          *av = keep_where_positive<T>(*av, reinterpret_cast<const uint4*>(m)[v]);
        }
        fence_proxy_async_shared();
        mbarrier_arrive(&masked[half]);
        mbarrier_wait_parity(&masked[half], masked_phase);
        masked_phase ^= 1;
      }
      wgmma_fence();
      if constexpr (kTapChunks) {
        // K-major, no swizzle: core matrices of 8 rows x 16 bytes, 128 bytes apart along M /
        // N (SBO) and a chunk (128 rows) apart along K (LBO); a k-step is two chunks.
        const unsigned char* ac = ring + pos.slot * kSlotBytes + half * (kBM / 2) * kChunkBytes;
        const unsigned char* bc = ring + pos.slot * kSlotBytes + kChunkABytes;
        constexpr uint32_t kChunk = kBM * kChunkBytes;
#pragma unroll
        for (int kk = 0; kk < kChunkKSteps; ++kk) {
          wgmma_ss<kBN, mma_type<T>()>(
              acc, make_matrix_desc(ac + 2 * kk * kChunk, kChunk, 8 * kChunkBytes, hopper::Swizzle::kNone),
              make_matrix_desc(bc + 2 * kk * kChunk, kChunk, 8 * kChunkBytes, hopper::Swizzle::kNone),
              kk > 0);
        }
      } else {
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk) {
          // K-major, 128B swizzle: 8-row atoms 1024 bytes apart (SBO); a k-step is 32 bytes.
          wgmma_ss<kBN, mma_type<T>()>(
              acc, make_matrix_desc(a + 32 * kk, 16, 1024, hopper::Swizzle::k128B),
              make_matrix_desc(b + 32 * kk, 16, 1024, hopper::Swizzle::k128B), sl > r.begin || kk > 0);
        }
      }
      wgmma_commit_group();
      // The group of the previous slice has retired: its slot goes back to the producer.
      wgmma_wait_group<1>();
      if (prev_slot >= 0) mbarrier_arrive(&empty[prev_slot]);
      prev_slot = pos.slot;
    }
    wgmma_wait_group<0>();
    mbarrier_arrive(&empty[prev_slot]);

    if (p.split > 1) {
      // A part's fp32 tile, straight from the accumulators (columns in pairs).
      float* dst = p.partial + u * (kBM * kBN) + half * (kBM / 2) * kBN;
#pragma unroll
      for (int i = 0; i < kBN / 2; i += 2) {
        const hopper::RowCol q = hopper::wgmma_d(ct, i);
        *reinterpret_cast<float2*>(dst + q.row * kBN + q.col) = make_float2(acc[i], acc[i + 1]);
      }
      continue;
    }
    // Epilogue: + bias, ReLU, convert into the staging tile; the warpgroup's 128 threads
    // meet on `staged` (phase: tile staged), store, and meet again (phase: staging free).
#pragma unroll
    for (int i = 0; i < kBN / 2; i += 2) {
      const hopper::RowCol q = hopper::wgmma_d(ct, i);
      const int kc = tile.k0 + q.col;
      float b0 = 0.f, b1 = 0.f;
      if (p.bias != nullptr) {
        if (kc < p.blocks.k) b0 = static_cast<float>(p.bias[kc]);
        if (kc + 1 < p.blocks.k) b1 = static_cast<float>(p.bias[kc + 1]);
      }
      stage[q.row * kStageStride<T> + q.col] = epilogue::epilogue_value<T>(acc[i], b0, p.relu);
      stage[q.row * kStageStride<T> + q.col + 1] = epilogue::epilogue_value<T>(acc[i + 1], b1, p.relu);
    }
    if constexpr (kPool) {
      // A window may straddle the halves: both consumers meet, then pool the whole tile
      // (staged rows 0 .. kBM - 1: the halves' staging tiles are adjacent).
      const T* tile_stage = stage - half * (kBM / 2) * kStageStride<T>;
      mbarrier_arrive(&pooled);
      mbarrier_wait_parity(&pooled, pooled_phase);
      pooled_phase ^= 1;
      epilogue::store_pooled_tile<T, kBN, kOutChannelsLast>(
          tile_stage, kStageStride<T>, block_windows(p.blocks, p.pool), p.pool, p.blocks.bw,
          t - 128, 256, p.out, p.out_s, tile.k0, p.blocks.k,
          [&](int win) { return block_window(p.blocks, tile, p.pool, win); });
      mbarrier_arrive(&pooled);
      mbarrier_wait_parity(&pooled, pooled_phase);
      pooled_phase ^= 1;
    } else {
      mbarrier_arrive(&staged[half]);
      mbarrier_wait_parity(&staged[half], staged_phase);
      staged_phase ^= 1;
      epilogue::store_staged_tile<T, kBN, kOutChannelsLast>(
          stage, kStageStride<T>, kBM / 2, ct, 128, p.out, p.out_s, tile.k0, p.blocks.k,
          [&](int row) { return block_row_pixel(p.blocks, tile, half * (kBM / 2) + row); });
      mbarrier_arrive(&staged[half]);
      mbarrier_wait_parity(&staged[half], staged_phase);
      staged_phase ^= 1;
    }
  }
#endif
}

// Split-K's second pass: element (row, col) of tile `tile` is the sum of the split parts'
// partial tiles in part order, then the epilogue; pooling, each window's max of those
// (window_max's order and rule). One thread per element of the tiles, or per window and
// filter.
template <typename T>
__global__ void split_reduce_kernel(const Params<T> p) {
  const int per_tile = p.pool == 0 ? kBM : block_windows(p.blocks, p.pool);
  const int64_t total = p.blocks.tiles * per_tile * kBN;
  for (int64_t e = global_thread_index(); e < total; e += grid_stride()) {
    const int col = static_cast<int>(e % kBN), j = static_cast<int>((e / kBN) % per_tile);
    const int64_t tile_index = e / (int64_t(per_tile) * kBN);
    const BlockTile tile = block_tile(p.blocks, tile_index);
    const int kc = tile.k0 + col;
    if (kc >= p.blocks.k) continue;
    const float b = p.bias != nullptr ? static_cast<float>(p.bias[kc]) : 0.f;
    const float* parts = p.partial + tile_index * p.split * (kBM * kBN) + col;
    const auto value = [&](int row) {
      float sum = 0.f;
      for (int s = 0; s < p.split; ++s) sum += parts[s * (kBM * kBN) + row * kBN];
      return epilogue::epilogue_value<T>(sum, b, p.relu);
    };
    if (p.pool == 0) {
      const RowPixel px = block_row_pixel(p.blocks, tile, j);
      if (px.valid) p.out[offset_of(p.out_s, px.img, kc, px.y, px.x)] = value(j);
      continue;
    }
    const PooledWindow wd = block_window(p.blocks, tile, p.pool, j);
    if (!wd.valid) continue;
    T best = value(wd.first_row);
    float key = static_cast<float>(best);
    for (int dy = 0; dy < p.pool; ++dy) {
      for (int dx = dy == 0 ? 1 : 0; dx < p.pool; ++dx) {
        const T v = value(wd.first_row + dy * p.blocks.bw + dx);
        if (replaces_max(static_cast<float>(v), key)) {
          best = v;
          key = static_cast<float>(v);
        }
      }
    }
    p.out[offset_of(p.out_s, wd.img, kc, wd.y, wd.x)] = best;
  }
}

}  // namespace overfeat_kernels::hopper_conv
