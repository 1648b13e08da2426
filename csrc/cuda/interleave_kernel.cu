// Interleave / deinterleave on CUDA: a permutation, at copy speed where the layout allows.
//
// - NCHW (dense): a tiled transpose through shared memory. A CTA takes the k^2 per-offset
//   blocks of ti x tj pixels of its planes (interleave) or the k*ti x k*tj block they weave
//   into (deinterleave), reading rows with coalesced loads and writing rows with coalesced
//   stores, 16-byte vectors wherever rows are whole vectors.
// - channels_last (dense, whole 16-byte vectors per pixel): a pixel's channels move
//   together; a CTA per output row, each thread one 16-byte vector, with 32-bit index math.
// - anything else (strided views): one grid-stride pass over the output in its memory order
//   through the shared index math.
// Instantiated per element width, so every dtype of 1-8 bytes is served.
#include <torch/library.h>

#include "../checks.h"
#include "../dispatch.h"
#include "launch.cuh"
#include "map_tiles.cuh"
#include "vector_io.cuh"

namespace overfeat_kernels {
namespace {
template <typename T, bool kInterleave, bool kChannelsLast>
__global__ void permute_kernel(const T* __restrict__ in, Strides4 in_s, int64_t k,
                               Shape4 out_shape, T* __restrict__ out, int64_t numel) {
  for (int64_t idx = global_thread_index(); idx < numel; idx += grid_stride()) {
    const Coord4 c = unravel(idx, out_shape, kChannelsLast);
    out[idx] = in[kInterleave ? interleave_source(in_s, k, c) : deinterleave_source(in_s, k, c)];
  }
}

constexpr int kPermuteThreads = 256;
constexpr int kPermuteSmemBytes = 32 * 1024;

// One CTA of the NCHW transpose: image n, planes [c0, c0 + cp), per-offset rows
// [i0, i0 + ti) and columns [j0, j0 + tj) (tj whole vectors); the shared-memory block is
// [plane][offset row dy][per-offset row][k * tj interleaved columns], i.e. the interleaved
// map's rows of the region.
struct PermuteTiles {
  int ti = 0, tj = 0, cp = 0;
  int64_t tiles_i = 0, tiles_j = 0, chan_tiles = 0;
};

// kLoadVectors / kStoreVectors: rows read / written in 16-byte vectors.
template <typename T, bool kInterleave, bool kLoadVectors, bool kStoreVectors>
__global__ void __launch_bounds__(kPermuteThreads)
    permute_nchw_tiled_kernel(const T* __restrict__ in, T* __restrict__ out, Shape4 per_offset,
                              int64_t k64, PermuteTiles t) {
  constexpr int kV = Vec16<T>::kSize;
  __shared__ __align__(16) unsigned char smem[kPermuteSmemBytes];
  T* s = reinterpret_cast<T*>(smem);
  const int k = static_cast<int>(k64), tid = threadIdx.x;
  int64_t b = blockIdx.x;
  const int64_t tj_idx = b % t.tiles_j;
  b /= t.tiles_j;
  const int64_t ti_idx = b % t.tiles_i;
  b /= t.tiles_i;
  const int64_t c0 = (b % t.chan_tiles) * t.cp, n = b / t.chan_tiles;
  const int64_t i0 = ti_idx * t.ti, j0 = tj_idx * t.tj;
  const Shape4& p = per_offset;  // [N*k*k, C, h, w]
  const int64_t big_h = p.h * k, big_w = p.w * k;
  const int ni = static_cast<int>(std::min<int64_t>(t.ti, p.h - i0));
  const int nj = static_cast<int>(std::min<int64_t>(t.tj, p.w - j0));
  const int nc = static_cast<int>(std::min<int64_t>(t.cp, p.c - c0));
  const int wide = k * t.tj;  // interleaved columns of a block row
  const auto smem_at = [&](int c, int dy, int ii, int x) -> T& {
    return s[((c * k + dy) * t.ti + ii) * wide + x];
  };
  // The per-offset maps' side: rows of nj pixels at (b, c, i0 + ii, j0 ..).
  const auto per_offset_row = [&](int c, int dy, int dx, int ii) {
    const int64_t bb = offset_batch(n, dy, dx, k);
    return ((bb * p.c + c0 + c) * p.h + i0 + ii) * p.w + j0;
  };
  // The interleaved map's side: rows of k * nj pixels at (n, c, k*(i0 + ii) + dy, k*j0 ..).
  const auto interleaved_row = [&](int c, int dy, int ii) {
    return ((n * p.c + c0 + c) * big_h + k * (i0 + ii) + dy) * big_w + k * j0;
  };
  // 1. In: the k^2 per-offset blocks (interleave), or the interleaved block (deinterleave).
  if constexpr (kInterleave) {
    constexpr int kPer = kLoadVectors ? kV : 1;
    const int jv = (nj + kPer - 1) / kPer;
    for (int q = tid; q < nc * k * k * ni * jv; q += kPermuteThreads) {
      const int j = q % jv * kPer, ii = q / jv % ni, o = q / jv / ni % (k * k),
                c = q / jv / ni / (k * k);
      const int dy = o / k, dx = o % k;
      const T* src = in + per_offset_row(c, dy, dx, ii) + j;
      T v[kPer];
      if constexpr (kLoadVectors) {
        const Vec16<T> x = load16(src);
#pragma unroll
        for (int e = 0; e < kV; ++e) v[e] = x.v[e];
      } else {
        v[0] = *src;
      }
#pragma unroll
      for (int e = 0; e < kPer; ++e) smem_at(c, dy, ii, k * (j + e) + dx) = v[e];
    }
  } else {
    constexpr int kPer = kLoadVectors ? kV : 1;
    const int xv = (k * nj + kPer - 1) / kPer;
    for (int q = tid; q < nc * k * ni * xv; q += kPermuteThreads) {
      const int x = q % xv * kPer, ii = q / xv % ni, dy = q / xv / ni % k,
                c = q / xv / ni / k;
      const T* src = in + interleaved_row(c, dy, ii) + x;
      if constexpr (kLoadVectors) {
        store16(&smem_at(c, dy, ii, x), load16(src));
      } else {
        smem_at(c, dy, ii, x) = *src;
      }
    }
  }
  __syncthreads();
  // 2. Out: the interleaved rows (interleave), or the k^2 per-offset rows (deinterleave).
  if constexpr (kInterleave) {
    constexpr int kPer = kStoreVectors ? kV : 1;
    const int xv = (k * nj + kPer - 1) / kPer;
    for (int q = tid; q < nc * k * ni * xv; q += kPermuteThreads) {
      const int x = q % xv * kPer, ii = q / xv % ni, dy = q / xv / ni % k,
                c = q / xv / ni / k;
      T* dst = out + interleaved_row(c, dy, ii) + x;
      if constexpr (kStoreVectors) {
        store16(dst, *reinterpret_cast<const Vec16<T>*>(&smem_at(c, dy, ii, x)));
      } else {
        *dst = smem_at(c, dy, ii, x);
      }
    }
  } else {
    constexpr int kPer = kStoreVectors ? kV : 1;
    const int jv = (nj + kPer - 1) / kPer;
    for (int q = tid; q < nc * k * k * ni * jv; q += kPermuteThreads) {
      const int j = q % jv * kPer, ii = q / jv % ni, o = q / jv / ni % (k * k),
                c = q / jv / ni / (k * k);
      const int dy = o / k, dx = o % k;
      T* dst = out + per_offset_row(c, dy, dx, ii) + j;
      if constexpr (kStoreVectors) {
        Vec16<T> v;
#pragma unroll
        for (int e = 0; e < kV; ++e) v.v[e] = smem_at(c, dy, ii, k * (j + e) + dx);
        store16(dst, v);
      } else {
        *dst = smem_at(c, dy, ii, k * j + dx);
      }
    }
  }
}

// Dense channels_last, whole 16-byte vectors per pixel: a CTA per output row, each thread
// one vector of one pixel (channels fastest), 32-bit index math. Interleave: output row
// (n, y) of the interleaved map gathers per-offset rows; deinterleave: output row (b, i) of
// a per-offset map gathers every k-th pixel of an interleaved row.
template <bool kInterleave>
__global__ void __launch_bounds__(kPermuteThreads)
    permute_nhwc_rows_kernel(const uint4* __restrict__ in, uint4* __restrict__ out,
                             Shape4 per_offset, int64_t k64, int vectors) {
  const int k = static_cast<int>(k64);
  const Shape4& p = per_offset;
  const int64_t row = blockIdx.x;  // interleave: n * h*k + y; deinterleave: b * h + i
  const int64_t big_w = p.w * k;
  if constexpr (kInterleave) {
    const int64_t n = row / (p.h * k), y = row % (p.h * k);
    const int dy = static_cast<int>(y % k);
    const int64_t i = y / k;
    const int units = static_cast<int>(big_w) * vectors;
    for (int q = threadIdx.x; q < units; q += kPermuteThreads) {
      const int x = q / vectors, v = q % vectors;
      const int64_t b = offset_batch(n, dy, x % k, k);
      out[(row * big_w + x) * vectors + v] = in[((b * p.h + i) * p.w + x / k) * vectors + v];
    }
  } else {
    const int64_t b = row / p.h, i = row % p.h;
    const OffsetBatch ob = split_offset_batch(b, k);
    const int64_t src_row = ob.n * p.h * k + k * i + ob.dy;
    const int units = static_cast<int>(p.w) * vectors;
    for (int q = threadIdx.x; q < units; q += kPermuteThreads) {
      const int j = q / vectors, v = q % vectors;
      out[(row * p.w + j) * vectors + v] = in[(src_row * big_w + k * j + ob.dx) * vectors + v];
    }
  }
}

// The NCHW transpose's tiles: tj whole vectors (up to 64 pixels), as many rows and planes
// as give a CTA about 8192 elements within its shared memory; none (ti = 0) if one row of
// one plane does not fit.
template <typename T>
PermuteTiles permute_tiles(const Shape4& p, int64_t k) {
  constexpr int kV = Vec16<T>::kSize;
  PermuteTiles t;
  t.tj = static_cast<int>(std::min<int64_t>(round_up(p.w, kV), std::max(64, kV)));
  const int64_t row_bytes = k * k * t.tj * int64_t(sizeof(T));  // one per-offset row, all k^2
  if (row_bytes > kPermuteSmemBytes) return PermuteTiles{};
  t.ti = static_cast<int>(std::clamp<int64_t>(
      std::min<int64_t>(8192 / (k * k * t.tj), kPermuteSmemBytes / row_bytes), 1, p.h));
  t.cp = static_cast<int>(std::clamp<int64_t>(
      std::min<int64_t>(8192 / (k * k * t.tj * t.ti), kPermuteSmemBytes / (row_bytes * t.ti)),
      1, p.c));
  t.tiles_i = ceil_div(p.h, t.ti);
  t.tiles_j = ceil_div(p.w, t.tj);
  t.chan_tiles = ceil_div(p.c, t.cp);
  return t;
}

template <bool kInterleave>
at::Tensor permute_cuda(const at::Tensor& input, int64_t k, const Shape4& out_shape) {
  at::Tensor out = empty_in_format_of({out_shape.n, out_shape.c, out_shape.h, out_shape.w}, input);
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = current_stream();
  const at::Tensor& per_offset_t = kInterleave ? input : out;
  const Shape4 per_offset = shape4(per_offset_t);
  const Shape4 big = shape4(kInterleave ? out : input);
  MapLayout layout{};
  if (tiled_layout(input, &layout) && layout == MapLayout::kNHWC &&
      channels_last_vectorizable(out)) {
    const int64_t vectors = input.size(1) * input.element_size() / kVectorBytes;
    const int64_t rows = kInterleave ? big.n * big.h : per_offset.n * per_offset.h;
    const int64_t units = (kInterleave ? big.w : per_offset.w) * vectors;
    if (rows <= INT32_MAX && units <= INT32_MAX) {
      launch_kernel<permute_nhwc_rows_kernel<kInterleave>>(
          static_cast<unsigned>(rows), kPermuteThreads, 0, stream,
          static_cast<const uint4*>(input.const_data_ptr()),
          static_cast<uint4*>(out.mutable_data_ptr()), per_offset, k, static_cast<int>(vectors));
      return out;
    }
  }
  bool done = false;
  dispatch_by_element_size(input, kInterleave ? "interleave" : "deinterleave", [&](auto tag) {
    using T = decltype(tag);
    if (!(input.is_contiguous() && out.is_contiguous())) return;
    const PermuteTiles t = permute_tiles<T>(per_offset, k);
    const int64_t ctas = t.tiles_i * t.tiles_j * t.chan_tiles * big.n;
    if (t.ti == 0 || ctas > INT32_MAX) return;
    // Rows of whole aligned vectors on each side (the block's columns start on a vector).
    const bool per_offset_vec = nchw_rows_vectorizable(per_offset_t);
    const bool big_vec = nchw_rows_vectorizable(kInterleave ? out : input);
    const bool load_vec = kInterleave ? per_offset_vec : big_vec;
    const bool store_vec = kInterleave ? big_vec : per_offset_vec;
    bool_switch(load_vec, [&](auto lv) {
      bool_switch(store_vec, [&](auto sv) {
        launch_kernel<permute_nchw_tiled_kernel<T, kInterleave, decltype(lv)::value,
                                                decltype(sv)::value>>(
            static_cast<unsigned>(ctas), kPermuteThreads, 0, stream,
            static_cast<const T*>(input.const_data_ptr()), static_cast<T*>(out.mutable_data_ptr()),
            per_offset, k, t);
      });
    });
    done = true;
  });
  if (done) return out;
  dispatch_by_element_size(input, kInterleave ? "interleave" : "deinterleave", [&](auto tag) {
    using T = decltype(tag);
    bool_switch(is_channels_last(input), [&](auto cl) {
      launch_kernel<permute_kernel<T, kInterleave, decltype(cl)::value>>(
          elementwise_blocks(numel), kElementwiseThreads, 0, stream,
              static_cast<const T*>(input.const_data_ptr()), strides4(input), k, out_shape,
              static_cast<T*>(out.mutable_data_ptr()), numel);
    });
  });
  return out;
}

at::Tensor interleave_cuda(const at::Tensor& input, int64_t kernel_size) {
  return permute_cuda<true>(input, kernel_size, check_interleave_args(input, kernel_size));
}

at::Tensor deinterleave_cuda(const at::Tensor& input, int64_t kernel_size) {
  return permute_cuda<false>(input, kernel_size, check_deinterleave_args(input, kernel_size));
}

}  // namespace

OVERFEAT_CUDA_LIBRARY_IMPL(m) {
  m.impl("interleave", &interleave_cuda);
  m.impl("deinterleave", &deinterleave_cuda);
}

}  // namespace overfeat_kernels
