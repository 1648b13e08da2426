// Blocks of a dense 4-D map in shared memory, for the memory-bound tiled kernels (offset
// pooling, its backward, interleave): a CTA copies a rows x cols x channels block of its map
// in with coalesced (16-byte where the layout allows) loads, works on it, and writes its
// output the same way. Each input byte then comes from DRAM about once, whatever the k x k
// windows or the k^2 offsets that read it.
//
// Two dense layouts: NCHW (x fastest; a block is [channel][row][col]) and NHWC, i.e.
// channels_last (channels fastest; a block is [row][col][channel]). Strided views take the
// generic kernels.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "../index_math.h"
#include "launch.cuh"
#include "vector_io.cuh"

namespace overfeat_kernels {

enum class MapLayout : int { kNCHW = 0, kNHWC = 1 };

// The layout of a dense map a tiled kernel can take, if any: NCHW-contiguous, or
// channels_last with whole aligned 16-byte vectors per pixel.
inline bool tiled_layout(const at::Tensor& t, MapLayout* layout) {
  if (channels_last_vectorizable(t)) {
    *layout = MapLayout::kNHWC;
    return true;
  }
  if (t.is_contiguous()) {
    *layout = MapLayout::kNCHW;
    return true;
  }
  return false;
}

// Whether the rows of a dense NCHW map can be read in 16-byte vectors: whole vectors per row
// at 16-byte aligned addresses.
inline bool nchw_rows_vectorizable(const at::Tensor& t) {
  return t.is_contiguous() && (t.size(3) * t.element_size()) % kVectorBytes == 0 &&
         reinterpret_cast<uintptr_t>(t.const_data_ptr()) % kVectorBytes == 0;
}

// A block of `cp` channels x `rows` x `cols` elements in shared memory, in the map's layout.
template <typename T, MapLayout L>
struct SmemBlock {
  T* data;
  int cp, rows, cols;

  __host__ __device__ static constexpr int64_t bytes(int cp, int rows, int cols) {
    return int64_t(cp) * rows * cols * static_cast<int64_t>(sizeof(T));
  }
  __device__ __forceinline__ int index(int c, int r, int x) const {
    return L == MapLayout::kNHWC ? (r * cols + x) * cp + c : (c * rows + r) * cols + x;
  }
  __device__ __forceinline__ T& at(int c, int r, int x) const { return data[index(c, r, x)]; }
  // The (c, r, x) of the q-th element in the block's memory order.
  __device__ __forceinline__ void coords(int q, int* c, int* r, int* x) const {
    if (L == MapLayout::kNHWC) {
      *c = q % cp;
      q /= cp;
      *x = q % cols;
      *r = q / cols;
    } else {
      *x = q % cols;
      q /= cols;
      *r = q % rows;
      *c = q / rows;
    }
  }
  __device__ __forceinline__ int size() const { return cp * rows * cols; }
};

// A dense map in global memory: its shape and layout give every element's offset.
template <MapLayout L>
struct DenseMap {
  Shape4 d;
  __host__ __device__ __forceinline__ int64_t offset(int64_t n, int64_t c, int64_t y,
                                                     int64_t x) const {
    return L == MapLayout::kNHWC ? ((n * d.h + y) * d.w + x) * d.c + c
                                 : ((n * d.c + c) * d.h + y) * d.w + x;
  }
};

// Copies channels [c0, c0 + b.cp) x rows [y0, y0 + b.rows) x cols [x0, x0 + b.cols) of image
// n of `map` into `b` (all threads of the CTA take part; the caller synchronises). Elements
// outside the map are zero. NHWC moves whole 16-byte channel vectors (b.cp and the map's
// channels are multiples of a vector); NCHW moves 16-byte row vectors when kRowVectors
// (rows of whole vectors, x0 on a vector boundary), else elements, consecutive threads on
// consecutive addresses either way.
template <typename T, MapLayout L, bool kRowVectors>
__device__ __forceinline__ void load_block(const SmemBlock<T, L>& b, const T* __restrict__ map,
                                           const DenseMap<L>& m, int64_t n, int64_t c0,
                                           int64_t y0, int64_t x0, int tid, int threads) {
  constexpr int kV = Vec16<T>::kSize;
  const bool vectors = L == MapLayout::kNHWC || kRowVectors;
  const int units = vectors ? b.size() / kV : b.size();  // NCHW with vectors: cols % kV == 0
  for (int q = tid; q < units; q += threads) {
    int c, r, x;
    b.coords(vectors ? q * kV : q, &c, &r, &x);
    const int64_t y = y0 + r, xx = x0 + x, cc = c0 + c;
    const bool inside = y >= 0 && y < m.d.h && xx >= 0 && xx < m.d.w && cc < m.d.c;
    T* dst = &b.at(c, r, x);
    if (vectors) {
      Vec16<T> v;
      if (inside) {
        v = load16(map + m.offset(n, cc, y, xx));
      } else {
#pragma unroll
        for (int e = 0; e < kV; ++e) v.v[e] = T(0);
      }
      store16(dst, v);
    } else {
      *dst = inside ? map[m.offset(n, cc, y, xx)] : T(0);
    }
  }
}

}  // namespace overfeat_kernels
