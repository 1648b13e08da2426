// Offset max-pooling on CUDA.
//
// The tiled kernels (dense NCHW and channels_last maps) give a CTA a block of the map in
// shared memory, read from DRAM once with coalesced loads (16-byte vectors where the layout
// allows), and compute there:
// - forward: the max of every k-wide row segment, then of k of those rows, for all k^2
//   offsets of the block's output positions at once (the separable max: 2k^3 compares per
//   k^2 outputs instead of k^4); each output written once, 16-byte stores where possible.
// - backward: every window's argmax (one byte: its row-major position in the window) for
//   the windows that touch the block's pixels, the windows' gradients, then each pixel sums
//   the gradients of the windows whose max it holds, in index_math.h's fixed order (windows
//   by their first pixel, row-major ascending): deterministic, no atomics, the CPU's bits.
// The separable max keeps F.max_pool2d's rule (replaces_max: a strictly greater value or a
// NaN; ties keep the first element in row-major order, the last NaN wins): the first max of
// a row, then the first row holding the max, is the window's first max in row-major order.
// Other layouts (strided views), and k too large for a block in shared memory, take the
// generic kernels: a grid-stride loop over elements through index_math.h.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../checks.h"
#include "../dispatch.h"
#include "launch.cuh"
#include "map_tiles.cuh"
#include "vector_io.cuh"

namespace overfeat_kernels {
namespace {

template <typename scalar_t, bool kChannelsLast>
__global__ void offset_pool_forward_kernel(const scalar_t* __restrict__ in, Strides4 in_s,
                                           PoolGeometry g, scalar_t* __restrict__ out,
                                           int64_t numel) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t idx = global_thread_index(); idx < numel; idx += grid_stride()) {
    out[idx] = offset_pool_forward_element<scalar_t, acc_t>(in, in_s, g,
                                                            unravel(idx, g.out, kChannelsLast));
  }
}

template <typename scalar_t, bool kChannelsLast>
__global__ void offset_pool_backward_kernel(const scalar_t* __restrict__ grad_out,
                                            Strides4 go_s, const scalar_t* __restrict__ in,
                                            Strides4 in_s, PoolGeometry g,
                                            scalar_t* __restrict__ grad_in, int64_t numel) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t idx = global_thread_index(); idx < numel; idx += grid_stride()) {
    grad_in[idx] = offset_pool_backward_element<scalar_t, acc_t>(
        grad_out, go_s, in, in_s, g, unravel(idx, g.in, kChannelsLast));
  }
}


// ---- tiled kernels --------------------------------------------------------------------

constexpr int kPoolThreads = 256;
constexpr int kPoolSmemBytes = 40 * 1024;  // static shared memory of a tiled CTA


// One CTA's share of a tiled pooling pass: image n, channels [c0, c0 + cp), and a block of
// positions: forward, output rows [i0, i0 + ti) x cols [j0, j0 + tj) of every offset;
// backward, grad_input rows [i0, i0 + ti) x cols [j0, j0 + tj).
struct PoolTiles {
  int ti = 0, tj = 0, cp = 0;
  int64_t tiles_i = 0, tiles_j = 0, chan_tiles = 0;
  int64_t ctas() const { return tiles_i * tiles_j * chan_tiles; }  // per image
};

struct TileOrigin {
  int64_t n, c0, i0, j0;
};
__device__ __forceinline__ TileOrigin tile_origin(const PoolTiles& t) {
  int64_t b = blockIdx.x;
  TileOrigin o;
  const int64_t tj = b % t.tiles_j;
  b /= t.tiles_j;
  const int64_t ti = b % t.tiles_i;
  b /= t.tiles_i;
  o.c0 = (b % t.chan_tiles) * t.cp;
  o.n = b / t.chan_tiles;
  o.i0 = ti * t.ti;
  o.j0 = tj * t.tj;
  return o;
}

// Shared-memory columns of a block whose logical columns are [0, cols): NCHW row vectors
// need whole vectors.
__host__ __device__ constexpr int block_cols(int cols, bool row_vectors, int vec) {
  return row_vectors ? static_cast<int>(round_up(cols, vec)) : cols;
}

__host__ __device__ constexpr int64_t align16(int64_t bytes) { return round_up(bytes, 16); }

// The forward's shared memory: the input block (ti*k + k - 1 rows) and the row maxima.
template <typename T>
__host__ __device__ constexpr int64_t forward_smem(int ti, int tj, int cp, int k, bool rowv) {
  const int rows = ti * k + k - 1, wcols = tj * k;
  const int cols = block_cols(wcols + k - 1, rowv, Vec16<T>::kSize);
  return align16(SmemBlock<T, MapLayout::kNCHW>::bytes(cp, rows, cols)) +
         SmemBlock<T, MapLayout::kNCHW>::bytes(cp, rows, wcols);
}

template <typename T>
struct PoolTileArgs {
  const T* in;
  const T* grad_out;  // backward
  T* out;             // forward: the pooled maps; backward: grad_input
  PoolGeometry g;
  PoolTiles t;
};

// kRowVectors (NCHW): the input's rows are read in 16-byte vectors (tj*k a multiple of a
// vector); kStoreVectors (NCHW): output rows written in 16-byte vectors (Wo and tj
// multiples of a vector, aligned). NHWC moves channel vectors always.
template <typename T, MapLayout L, bool kRowVectors, bool kStoreVectors>
__global__ void __launch_bounds__(kPoolThreads)
    offset_pool_forward_tiled_kernel(const PoolTileArgs<T> a) {
  using acc_t = at::opmath_type<T>;
  constexpr int kV = Vec16<T>::kSize;
  __shared__ __align__(16) unsigned char smem[kPoolSmemBytes];
  const int k = static_cast<int>(a.g.k), tid = threadIdx.x, cp = a.t.cp;
  const TileOrigin o = tile_origin(a.t);
  const int rows = a.t.ti * k + k - 1, wcols = a.t.tj * k;
  const SmemBlock<T, L> in{reinterpret_cast<T*>(smem), cp, rows,
                           block_cols(wcols + k - 1, kRowVectors, kV)};
  const SmemBlock<T, L> best{reinterpret_cast<T*>(smem + align16(in.bytes(in.cp, in.rows, in.cols))),
                             cp, rows, wcols};
  load_block<T, L, kRowVectors>(in, a.in, DenseMap<L>{a.g.in}, o.n, o.c0, k * o.i0, k * o.j0,
                                tid, kPoolThreads);
  __syncthreads();
  // The max of every k-wide row segment starting at x: best(c, r, x) = max_b in(c, r, x + b).
  for (int q = tid; q < best.size(); q += kPoolThreads) {
    int c, r, x;
    best.coords(q, &c, &r, &x);
    T v = in.at(c, r, x);
    acc_t va = static_cast<acc_t>(v);
    for (int b = 1; b < k; ++b) {
      const T u = in.at(c, r, x + b);
      const acc_t ua = static_cast<acc_t>(u);
      if (replaces_max(ua, va)) {
        v = u;
        va = ua;
      }
    }
    best.at(c, r, x) = v;
  }
  __syncthreads();
  // Every offset (dy, dx) of every position (ii, jj): the max over k rows of best.
  const int ni = static_cast<int>(std::min<int64_t>(a.t.ti, a.g.out.h - o.i0));
  const int nj = static_cast<int>(std::min<int64_t>(a.t.tj, a.g.out.w - o.j0));
  const int nc = static_cast<int>(std::min<int64_t>(cp, a.g.in.c - o.c0));
  const auto window = [&](int c, int ii, int jj, int dy, int dx) {
    const int r = dy + k * ii, x = dx + k * jj;
    T v = best.at(c, r, x);
    acc_t va = static_cast<acc_t>(v);
    for (int e = 1; e < k; ++e) {
      const T u = best.at(c, r + e, x);
      const acc_t ua = static_cast<acc_t>(u);
      if (replaces_max(ua, va)) {
        v = u;
        va = ua;
      }
    }
    return v;
  };
  const DenseMap<L> om{a.g.out};
  if constexpr (L == MapLayout::kNHWC) {
    // A thread: one channel vector of one output pixel; neighbours: the next vector, pixel.
    const int cv = nc / kV;
    const int items = k * k * ni * nj * cv;
    for (int q = tid; q < items; q += kPoolThreads) {
      int rest = q;
      const int v = rest % cv;
      rest /= cv;
      const int jj = rest % nj;
      rest /= nj;
      const int ii = rest % ni;
      rest /= ni;
      const int dx = rest % k, dy = rest / k;
      Vec16<T> out;
#pragma unroll
      for (int e = 0; e < kV; ++e) out.v[e] = window(v * kV + e, ii, jj, dy, dx);
      store16(a.out + om.offset(offset_batch(o.n, dy, dx, k), o.c0 + v * kV, o.i0 + ii,
                                o.j0 + jj),
              out);
    }
  } else {
    // A thread: kV (or one) neighbouring outputs of one output row.
    constexpr int kPer = kStoreVectors ? kV : 1;
    const int jv = (nj + kPer - 1) / kPer;
    const int items = k * k * nc * ni * jv;
    for (int q = tid; q < items; q += kPoolThreads) {
      int rest = q;
      const int j = rest % jv * kPer;
      rest /= jv;
      const int ii = rest % ni;
      rest /= ni;
      const int c = rest % nc;
      rest /= nc;
      const int dx = rest % k, dy = rest / k;
      T* dst = a.out + om.offset(offset_batch(o.n, dy, dx, k), o.c0 + c, o.i0 + ii, o.j0 + j);
      if constexpr (kStoreVectors) {
        Vec16<T> out;
#pragma unroll
        for (int e = 0; e < kV; ++e) out.v[e] = window(c, ii, j + e, dy, dx);
        store16(dst, out);
      } else {
        *dst = window(c, ii, j, dy, dx);
      }
    }
  }
}

// The backward's shared memory: the input block (ti + 2k - 2 rows), the row maxima and
// their columns, the windows' argmax codes and gradients.
template <typename T>
__host__ __device__ constexpr int64_t backward_smem(int ti, int tj, int cp, int k, int lead) {
  const int rows = ti + 2 * k - 2, wy = ti + k - 1, wx = tj + k - 1;
  const int64_t e = sizeof(T);
  return align16(int64_t(cp) * rows * (lead + tj + lead) * e) +  // input
         align16(int64_t(cp) * rows * wx * e) +                  // row maxima
         align16(int64_t(cp) * rows * wx) +                      // their columns
         align16(int64_t(cp) * wy * wx) +                        // window argmax codes
         int64_t(cp) * wy * wx * e;                              // window gradients
}

// `lead`: columns loaded left of the first window column (k - 1 rounded up to a vector for
// NCHW row vectors, so that loads start on a vector boundary), and as many right of the
// tile's last pixel.
// (The register budget of 2 CTAs per SM: left to itself, ptxas kept 64 registers and
// spilled a few bytes; the shared memory allows 5 CTAs per SM at most anyway.)
template <typename T, MapLayout L, bool kRowVectors>
__global__ void __launch_bounds__(kPoolThreads, 2)
    offset_pool_backward_tiled_kernel(const PoolTileArgs<T> a, int lead) {
  using acc_t = at::opmath_type<T>;
  constexpr int kV = Vec16<T>::kSize;
  __shared__ __align__(16) unsigned char smem[kPoolSmemBytes];
  const int k = static_cast<int>(a.g.k), tid = threadIdx.x, cp = a.t.cp;
  const int ti = a.t.ti, tj = a.t.tj;
  const TileOrigin o = tile_origin(a.t);  // grad_input rows [i0, i0 + ti), cols [j0, j0 + tj)
  const int rows = ti + 2 * k - 2, wy = ti + k - 1, wx = tj + k - 1;
  const int shift = lead - (k - 1);  // block column of window column 0 (x0 = j0 - k + 1)
  unsigned char* p = smem;
  const SmemBlock<T, L> in{reinterpret_cast<T*>(p), cp, rows, lead + tj + lead};
  p += align16(in.bytes(in.cp, in.rows, in.cols));
  const SmemBlock<T, L> rval{reinterpret_cast<T*>(p), cp, rows, wx};
  p += align16(rval.bytes(cp, rows, wx));
  const SmemBlock<uint8_t, L> rcol{p, cp, rows, wx};
  p += align16(rcol.bytes(cp, rows, wx));
  const SmemBlock<uint8_t, L> code{p, cp, wy, wx};
  p += align16(code.bytes(cp, wy, wx));
  const SmemBlock<T, L> grad{reinterpret_cast<T*>(p), cp, wy, wx};
  const int64_t y_first = o.i0 - (k - 1), x_first = o.j0 - (k - 1);  // first window's pixel
  load_block<T, L, kRowVectors>(in, a.in, DenseMap<L>{a.g.in}, o.n, o.c0, y_first,
                                o.j0 - lead, tid, kPoolThreads);
  // The windows' gradients, 0 where no window starts: grad(c, wr, wc) for the window whose
  // first pixel is (y_first + wr, x_first + wc), of offset (y0 % k, x0 % k) at (y0 / k, x0 / k).
  const DenseMap<L> gm{a.g.out};
  constexpr int kPer = L == MapLayout::kNHWC ? kV : 1;  // NHWC: channel vectors
  for (int q = tid; q < grad.size() / kPer; q += kPoolThreads) {
    int c, wr, wc;
    grad.coords(q * kPer, &c, &wr, &wc);
    const int64_t y0 = y_first + wr, x0 = x_first + wc;
    int64_t dy, i, dx, j;
    const bool window = o.c0 + c < a.g.in.c && window_at(y0, k, a.g.out.h, &dy, &i) &&
                        window_at(x0, k, a.g.out.w, &dx, &j);
    if constexpr (L == MapLayout::kNHWC) {
      Vec16<T> g;
      if (window) {
        g = load16(a.grad_out + gm.offset(offset_batch(o.n, dy, dx, k), o.c0 + c, i, j));
      } else {
#pragma unroll
        for (int e = 0; e < kV; ++e) g.v[e] = T(0);
      }
      store16(&grad.at(c, wr, wc), g);
    } else {
      grad.at(c, wr, wc) =
          window ? a.grad_out[gm.offset(offset_batch(o.n, dy, dx, k), o.c0 + c, i, j)] : T(0);
    }
  }
  __syncthreads();
  // Each row segment's first max (or last NaN) and its column.
  for (int q = tid; q < rval.size(); q += kPoolThreads) {
    int c, r, x;
    rval.coords(q, &c, &r, &x);
    T v = in.at(c, r, x + shift);
    acc_t va = static_cast<acc_t>(v);
    int col = 0;
    for (int b = 1; b < k; ++b) {
      const T u = in.at(c, r, x + shift + b);
      const acc_t ua = static_cast<acc_t>(u);
      if (replaces_max(ua, va)) {
        v = u;
        va = ua;
        col = b;
      }
    }
    rval.at(c, r, x) = v;
    rcol.at(c, r, x) = static_cast<uint8_t>(col);
  }
  __syncthreads();
  // Each window's argmax: its row-major position a * k + b.
  for (int q = tid; q < code.size(); q += kPoolThreads) {
    int c, wr, wc;
    code.coords(q, &c, &wr, &wc);
    acc_t va = static_cast<acc_t>(rval.at(c, wr, wc));
    int row = 0;
    for (int e = 1; e < k; ++e) {
      const acc_t ua = static_cast<acc_t>(rval.at(c, wr + e, wc));
      if (replaces_max(ua, va)) {
        va = ua;
        row = e;
      }
    }
    code.at(c, wr, wc) = static_cast<uint8_t>(row * k + rcol.at(c, wr + row, wc));
  }
  __syncthreads();
  // Each pixel: the gradients of the windows whose max it holds, windows by their first
  // pixel in row-major order (index_math.h's order). A thread sums kPer neighbouring
  // pixels at once (channels for NHWC, a row vector for NCHW row vectors), window by window.
  const int ny = static_cast<int>(std::min<int64_t>(ti, a.g.in.h - o.i0));
  const int nx = static_cast<int>(std::min<int64_t>(tj, a.g.in.w - o.j0));
  const int nc = static_cast<int>(std::min<int64_t>(cp, a.g.in.c - o.c0));
  constexpr bool kVectors = L == MapLayout::kNHWC || kRowVectors;
  constexpr int kOut = kVectors ? kV : 1;
  const DenseMap<L> im{a.g.in};
  const int units_c = L == MapLayout::kNHWC ? nc / kV : nc;
  const int units_x = L == MapLayout::kNHWC ? nx : (nx + kOut - 1) / kOut;
  for (int q = tid; q < units_c * ny * units_x; q += kPoolThreads) {
    // (c, y, x): the first of the thread's pixels, in tile coordinates; the others follow
    // along c (NHWC) or x (NCHW).
    int c, y, x;
    if constexpr (L == MapLayout::kNHWC) {  // neighbouring threads: channel vectors, pixels
      c = q % units_c * kV;
      x = q / units_c % nx;
      y = q / units_c / nx;
    } else {  // neighbouring threads: along the row
      x = q % units_x * kOut;
      y = q / units_x % ny;
      c = q / units_x / ny;
    }
    acc_t sum[kOut];
#pragma unroll
    for (int e = 0; e < kOut; ++e) sum[e] = acc_t(0);
    for (int a0 = 0; a0 < k; ++a0) {    // the window starting in row y + a0 - (k - 1)
      for (int b0 = 0; b0 < k; ++b0) {  // and column x + b0 - (k - 1)
        const int pos = (k - 1 - a0) * k + (k - 1 - b0);  // the pixel's place in it
#pragma unroll
        for (int e = 0; e < kOut; ++e) {
          const int ce = L == MapLayout::kNHWC ? c + e : c, xe = L == MapLayout::kNHWC ? x : x + e;
          if (code.at(ce, y + a0, xe + b0) == pos) {
            sum[e] += static_cast<acc_t>(grad.at(ce, y + a0, xe + b0));
          }
        }
      }
    }
    T* dst = a.out + im.offset(o.n, o.c0 + c, o.i0 + y, o.j0 + x);
    if constexpr (kVectors) {
      Vec16<T> out;
#pragma unroll
      for (int e = 0; e < kV; ++e) out.v[e] = static_cast<T>(sum[e]);
      store16(dst, out);
    } else {
      *dst = static_cast<T>(sum[0]);
    }
  }
}

// ---- the tiles of a problem ---------------------------------------------------------------

// Channels per CTA: channels_last, up to 256 bytes of a pixel's channels (whole vectors);
// NCHW, planes: as many as give a CTA about 4096 output elements.
int64_t channel_tile(MapLayout l, int64_t c, int elt, int64_t per_plane) {
  if (l == MapLayout::kNHWC) return std::min<int64_t>(c, 256 / elt);
  return std::clamp<int64_t>(4096 / std::max<int64_t>(per_plane, 1), 1, c);
}

PoolTiles finish_tiles(PoolTiles t, int64_t rows, int64_t cols, int64_t c) {
  t.tiles_i = ceil_div(rows, t.ti);
  t.tiles_j = ceil_div(cols, t.tj);
  t.chan_tiles = ceil_div(c, t.cp);
  return t;
}

// The forward's tiles: ti x tj output positions, the largest block that fits (NCHW: rows
// of whole 16-byte vectors of outputs, so that vector loads and stores start aligned);
// none (ti = 0) when even one position does not fit.
template <typename T>
PoolTiles forward_tiles(const PoolGeometry& g, MapLayout l, bool rowv) {
  constexpr int kV = Vec16<T>::kSize;
  const int k = static_cast<int>(g.k), elt = sizeof(T);
  PoolTiles t;
  for (int side = 8; side >= 1; side /= 2) {
    t.ti = static_cast<int>(std::min<int64_t>(side, g.out.h));
    t.tj = static_cast<int>(std::min<int64_t>(l == MapLayout::kNCHW ? 8 * side : side, g.out.w));
    if (l == MapLayout::kNCHW) t.tj = static_cast<int>(round_up(t.tj, kV));
    t.cp = static_cast<int>(channel_tile(l, g.in.c, elt, int64_t(k) * k * t.ti * t.tj));
    while (t.cp > 1 && forward_smem<T>(t.ti, t.tj, t.cp, k, rowv) > kPoolSmemBytes) {
      t.cp = l == MapLayout::kNHWC ? std::max(kV, t.cp / 2 / kV * kV) : t.cp / 2;
      if (l == MapLayout::kNHWC && t.cp == kV) break;
    }
    if (forward_smem<T>(t.ti, t.tj, t.cp, k, rowv) <= kPoolSmemBytes) {
      return finish_tiles(t, g.out.h, g.out.w, g.in.c);
    }
  }
  return PoolTiles{};
}

// The backward's tiles: ti x tj pixels of grad_input (NCHW: whole vectors of a row).
template <typename T>
PoolTiles backward_tiles(const PoolGeometry& g, MapLayout l, int lead) {
  constexpr int kV = Vec16<T>::kSize;
  const int k = static_cast<int>(g.k), elt = sizeof(T);
  PoolTiles t;
  for (int side = 16; side >= 1; side /= 2) {
    t.ti = static_cast<int>(std::min<int64_t>(side, g.in.h));
    t.tj = static_cast<int>(std::min<int64_t>(l == MapLayout::kNCHW ? 4 * side : side, g.in.w));
    if (l == MapLayout::kNCHW) t.tj = static_cast<int>(round_up(t.tj, kV));
    t.cp = static_cast<int>(channel_tile(l, g.in.c, elt, int64_t(t.ti) * t.tj));
    while (t.cp > 1 && backward_smem<T>(t.ti, t.tj, t.cp, k, lead) > kPoolSmemBytes) {
      t.cp = l == MapLayout::kNHWC ? std::max(kV, t.cp / 2 / kV * kV) : t.cp / 2;
      if (l == MapLayout::kNHWC && t.cp == kV) break;
    }
    if (backward_smem<T>(t.ti, t.tj, t.cp, k, lead) <= kPoolSmemBytes) {
      return finish_tiles(t, g.in.h, g.in.w, g.in.c);
    }
  }
  return PoolTiles{};
}

// Runs f(layout, flag, flag) with the three as compile-time constants.
template <typename F>
void dispatch_tiled(MapLayout l, bool x, bool y, F&& f) {
  bool_switch(l == MapLayout::kNHWC, [&](auto nhwc) {
    bool_switch(x, [&](auto xv) {
      bool_switch(y, [&](auto yv) {
        constexpr bool kNhwc = std::remove_reference_t<decltype(nhwc)>::value;
        constexpr bool kX = std::remove_reference_t<decltype(xv)>::value;
        constexpr bool kY = std::remove_reference_t<decltype(yv)>::value;
        constexpr MapLayout kL = kNhwc ? MapLayout::kNHWC : MapLayout::kNCHW;
        // NHWC moves channel vectors: the NCHW flags mean nothing there.
        if constexpr (!kNhwc || (!kX && !kY)) {
          f(std::integral_constant<MapLayout, kL>{}, std::bool_constant<kX>{},
            std::bool_constant<kY>{});
        }
      });
    });
  });
}

at::Tensor offset_max_pool2d_cuda(const at::Tensor& input, int64_t kernel_size) {
  const PoolGeometry g = check_offset_pool_args(input, kernel_size, "offset_max_pool2d");
  at::Tensor out = empty_in_format_of({g.out.n, g.out.c, g.out.h, g.out.w}, input);
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = current_stream();
  MapLayout layout{};
  const bool dense = tiled_layout(input, &layout) &&
                     (layout == MapLayout::kNCHW || channels_last_vectorizable(out));
  OVERFEAT_DISPATCH_FLOATING(input.scalar_type(), "offset_max_pool2d_cuda", [&] {
    using T = scalar_t;
    if (dense) {
      const bool rowv = layout == MapLayout::kNCHW && nchw_rows_vectorizable(input);
      const PoolTiles t = forward_tiles<T>(g, layout, rowv);
      if (t.ti > 0 && t.ctas() * g.in.n <= INT32_MAX) {
        const bool storev = layout == MapLayout::kNCHW && nchw_rows_vectorizable(out);
        const PoolTileArgs<T> args{input.const_data_ptr<T>(), nullptr, out.mutable_data_ptr<T>(),
                                   g, t};
        const auto blocks = static_cast<unsigned>(t.ctas() * g.in.n);
        dispatch_tiled(layout, rowv, storev, [&](auto l, auto r, auto sv) {
          launch_kernel<offset_pool_forward_tiled_kernel<T, decltype(l)::value,
                                                         decltype(r)::value, decltype(sv)::value>>(
              blocks, kPoolThreads, 0, stream, args);
        });
        return;
      }
    }
    bool_switch(is_channels_last(input), [&](auto cl) {
      launch_kernel<offset_pool_forward_kernel<T, decltype(cl)::value>>(
          elementwise_blocks(numel), kElementwiseThreads, 0, stream, input.const_data_ptr<T>(),
          strides4(input), g, out.mutable_data_ptr<T>(), numel);
    });
  });
  return out;
}

at::Tensor offset_max_pool2d_backward_cuda(const at::Tensor& grad_output,
                                           const at::Tensor& input, int64_t kernel_size) {
  const PoolGeometry g = check_offset_pool_backward_args(grad_output, input, kernel_size);
  at::Tensor grad_input = empty_in_format_of(input.sizes(), input);
  const int64_t numel = grad_input.numel();
  if (numel == 0) return grad_input;
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = current_stream();
  MapLayout layout{};
  // A window's argmax is one byte: k * k positions, at most 256. grad_output is read in the
  // input's layout (channels_last: 16-byte vectors at aligned addresses): copied into fresh
  // storage of that layout where it comes otherwise (e.g. the expanded gradient of a sum, or
  // a view off a 16-byte boundary), one pass that the tiled kernel more than saves.
  const bool dense = g.k <= 16 && tiled_layout(input, &layout) &&
                     (layout == MapLayout::kNCHW || channels_last_vectorizable(grad_input));
  at::Tensor go = grad_output;
  if (dense && !(layout == MapLayout::kNHWC ? channels_last_vectorizable(go)
                                            : go.is_contiguous())) {
    go = grad_output.clone(layout == MapLayout::kNHWC ? at::MemoryFormat::ChannelsLast
                                                      : at::MemoryFormat::Contiguous);
  }
  OVERFEAT_DISPATCH_FLOATING(input.scalar_type(), "offset_max_pool2d_backward_cuda", [&] {
    using T = scalar_t;
    constexpr int kV = Vec16<T>::kSize;
    if (dense) {
      const bool rowv = layout == MapLayout::kNCHW && nchw_rows_vectorizable(input);
      const int lead = static_cast<int>(rowv ? round_up(g.k - 1, kV) : g.k - 1);
      const PoolTiles t = backward_tiles<T>(g, layout, lead);
      if (t.ti > 0 && t.ctas() * g.in.n <= INT32_MAX) {
        const PoolTileArgs<T> args{input.const_data_ptr<T>(), go.const_data_ptr<T>(),
                                   grad_input.mutable_data_ptr<T>(), g, t};
        const auto blocks = static_cast<unsigned>(t.ctas() * g.in.n);
        dispatch_tiled(layout, rowv, false, [&](auto l, auto r, auto) {
          launch_kernel<offset_pool_backward_tiled_kernel<T, decltype(l)::value,
                                                          decltype(r)::value>>(
              blocks, kPoolThreads, 0, stream, args, lead);
        });
        return;
      }
    }
    bool_switch(is_channels_last(input), [&](auto cl) {
      launch_kernel<offset_pool_backward_kernel<T, decltype(cl)::value>>(
          elementwise_blocks(numel), kElementwiseThreads, 0, stream,
          grad_output.const_data_ptr<T>(), strides4(grad_output), input.const_data_ptr<T>(),
          strides4(input), g, grad_input.mutable_data_ptr<T>(), numel);
    });
  });
  return grad_input;
}

}  // namespace

OVERFEAT_CUDA_LIBRARY_IMPL(m) {
  m.impl("offset_max_pool2d", &offset_max_pool2d_cuda);
  m.impl("offset_max_pool2d_backward", &offset_max_pool2d_backward_cuda);
}

}  // namespace overfeat_kernels
