// The epilogue of the tensor-core convolutions, shared by the mma.sync implicit GEMM
// (conv3x3_igemm.cuh) and the Hopper kernel (conv3x3_wgmma.cuh): bias, ReLU with NaN kept
// and the conversion of each fp32 accumulator (epilogue_value), and the store of a tile
// staged in shared memory to the output in its own memory format (store_staged_tile): rows
// of 16-byte vectors for channels_last, pixel-contiguous runs for any other strides. Which
// pixel a tile row is comes from the kernel's tile scheduler (conv_tiles.cuh). The fused
// pooling of the mma.sync kernel stores through its own path (conv3x3_igemm.cuh).
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

}  // namespace overfeat_kernels::epilogue
