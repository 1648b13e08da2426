// The epilogue of the tensor-core convolutions, shared by the mma.sync implicit GEMM
// (conv3x3_igemm.cuh) and the Hopper kernel (conv3x3_wgmma.cuh): bias, ReLU with NaN kept
// and the conversion of each fp32 accumulator (epilogue_value), and the store of a tile
// staged in shared memory to the output in its own memory format (store_staged_tile): rows
// of 16-byte vectors for channels_last, pixel-contiguous runs for any other strides. Which
// pixel a tile row is comes from the kernel's tile scheduler (conv_tiles.cuh). With the
// fused pooling (conv_pool.h) a staged tile's windows are reduced and only the pooled map
// is stored (store_pooled_tile); where a window's pixels are staged comes from the kernel's
// scheduler too (PooledWindow).
#pragma once

#include <cstdint>

#include "../index_math.h"
#include "conv_tiles.cuh"
#include "cuda_headers.cuh"

namespace overfeat_kernels::epilogue {

// One output element from its accumulator: + bias, ReLU (F.relu's: NaN passes), rounded
// to T once.
template <typename T>
__device__ __forceinline__ T epilogue_value(float acc, float bias, bool relu) {
  float v = acc + bias;
  if (relu) v = relu_keep_nan(v);
  return static_cast<T>(v);
}

// Stores rows [0, rows) x columns [0, kCols) of a tile staged at `stage` (row r at
// stage + r·stride elements, 16-byte aligned rows) to `out` (strides s): row r is pixel
// pixel_of(r), column c is filter k0 + c; invalid pixels and filters >= k are skipped.
// `tid` of `threads` threads take part. Channels_last (kOutChannelsLast: s.c == 1): a tile
// row is contiguous in memory, written as 16-byte vectors where a whole aligned vector is
// inside K. Otherwise (NCHW, views) element by element, rows fastest across threads, so a
// warp writes neighbouring pixels of one channel plane.
template <typename T, int kCols, bool kOutChannelsLast, typename PixelOf>
__device__ __forceinline__ void store_staged_tile(const T* stage, int stride, int rows, int tid,
                                                  int threads, T* out, const Strides4& s, int k0,
                                                  int k, PixelOf pixel_of) {
  if constexpr (kOutChannelsLast) {
    constexpr int kVec = 16 / static_cast<int>(sizeof(T));
    constexpr int kVecs = kCols / kVec;
    const bool vec_ok = k % kVec == 0;
    for (int q = tid; q < rows * kVecs; q += threads) {
      const int row = q / kVecs, cv = q % kVecs;
      const int kc = k0 + cv * kVec;
      if (kc >= k) continue;
      const RowPixel px = pixel_of(row);
      if (!px.valid) continue;
      T* dst = out + offset_of(s, px.img, kc, px.y, px.x);
      const T* src = stage + row * stride + cv * kVec;
      if (vec_ok) {
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
      } else {
        for (int e = 0; e < kVec && kc + e < k; ++e) dst[e] = src[e];
      }
    }
  } else {
    for (int q = tid; q < rows * kCols; q += threads) {
      const int row = q % rows, col = q / rows;
      const int kc = k0 + col;
      if (kc >= k) continue;
      const RowPixel px = pixel_of(row);
      if (!px.valid) continue;
      out[offset_of(s, px.img, kc, px.y, px.x)] = stage[row * stride + col];
    }
  }
}

// F.max_pool2d's max over a pool x pool window of a staged tile, for kN neighbouring
// columns: pixel (dy, dx) is staged at first + (dy·row_step + dx)·stride. The first maximum
// in row-major window order is kept, a NaN takes over (replaces_max); compared as floats,
// which is exact for T, so the max commutes with the rounding epilogue_value did.
template <typename T, int kN>
__device__ __forceinline__ void window_max(T* best, const T* first, int stride, int pool,
                                           int row_step) {
  float key[kN];
#pragma unroll
  for (int e = 0; e < kN; ++e) {
    best[e] = first[e];
    key[e] = static_cast<float>(best[e]);
  }
  for (int dy = 0; dy < pool; ++dy) {
    for (int dx = dy == 0 ? 1 : 0; dx < pool; ++dx) {
      const T* px = first + (dy * row_step + dx) * stride;
#pragma unroll
      for (int e = 0; e < kN; ++e) {
        const T v = px[e];
        const float f = static_cast<float>(v);
        if (replaces_max(f, key[e])) {
          best[e] = v;
          key[e] = f;
        }
      }
    }
  }
}

// Pools the `windows` windows of a tile staged at `stage` (as store_staged_tile's) and
// stores them to `out` (strides s, the pooled map): window_of(j) says where window j's
// pixels are staged (row_step: see window_max) and which pooled pixel it is; column c is
// filter k0 + c. Channels_last: 16-byte vectors of a window's filters per thread;
// otherwise windows fastest across threads, so a warp writes neighbouring pooled pixels.
template <typename T, int kCols, bool kOutChannelsLast, typename WindowOf>
__device__ __forceinline__ void store_pooled_tile(const T* stage, int stride, int windows,
                                                  int pool, int row_step, int tid, int threads,
                                                  T* out, const Strides4& s, int k0, int k,
                                                  WindowOf window_of) {
  if constexpr (kOutChannelsLast) {
    constexpr int kVec = 16 / static_cast<int>(sizeof(T));
    constexpr int kVecs = kCols / kVec;
    const bool vec_ok = k % kVec == 0;
    for (int q = tid; q < windows * kVecs; q += threads) {
      const int win = q / kVecs, cv = q % kVecs;
      const int kc = k0 + cv * kVec;
      if (kc >= k) continue;
      const PooledWindow wd = window_of(win);
      if (!wd.valid) continue;
      union {
        uint4 v;
        T e[kVec];
      } best;
      window_max<T, kVec>(best.e, stage + wd.first_row * stride + cv * kVec, stride, pool, row_step);
      T* dst = out + offset_of(s, wd.img, kc, wd.y, wd.x);
      if (vec_ok) {
        *reinterpret_cast<uint4*>(dst) = best.v;
      } else {
#pragma unroll
        for (int i = 0; i < kVec; ++i) {  // constant indices: `best` stays in registers
          if (kc + i < k) dst[i] = best.e[i];
        }
      }
    }
  } else {
    for (int q = tid; q < windows * kCols; q += threads) {
      const int win = q % windows, col = q / windows;
      const int kc = k0 + col;
      if (kc >= k) continue;
      const PooledWindow wd = window_of(win);
      if (!wd.valid) continue;
      T best;
      window_max<T, 1>(&best, stage + wd.first_row * stride + col, stride, pool, row_step);
      out[offset_of(s, wd.img, kc, wd.y, wd.x)] = best;
    }
  }
}

}  // namespace overfeat_kernels::epilogue
