// Index math shared by the CPU and CUDA kernels.
//
// Every function here is __host__ __device__, so the CPU loops and the CUDA kernels
// compute exactly the same thing element by element. All offsets are 64-bit: tensors
// with more than 2^31 elements are supported, not rejected.
#pragma once

#include <ATen/NumericUtils.h>
#include <c10/macros/Macros.h>

#include <cstdint>
#include <limits>

namespace overfeat_kernels {

// Sizes of a 4-D map and its element strides (any layout, views included).
struct Shape4 {
  int64_t n, c, h, w;
};
struct Strides4 {
  int64_t n, c, h, w;
};

C10_HOST_DEVICE inline int64_t offset_of(const Strides4& s, int64_t n, int64_t c,
                                         int64_t h, int64_t w) {
  return n * s.n + c * s.c + h * s.h + w * s.w;
}

// Coordinates of the idx-th element of a dense tensor of shape `d`, enumerated in memory
// order: NCHW (w fastest) or channels_last (c fastest). Enumerating outputs in their own
// memory order keeps neighbouring threads on neighbouring addresses when they write.
struct Coord4 {
  int64_t n, c, h, w;
};
C10_HOST_DEVICE inline Coord4 unravel(int64_t idx, const Shape4& d, bool channels_last) {
  Coord4 r;
  if (channels_last) {
    r.c = idx % d.c;
    idx /= d.c;
    r.w = idx % d.w;
    idx /= d.w;
    r.h = idx % d.h;
    r.n = idx / d.h;
  } else {
    r.w = idx % d.w;
    idx /= d.w;
    r.h = idx % d.h;
    idx /= d.h;
    r.c = idx % d.c;
    r.n = idx / d.c;
  }
  return r;
}

// ReLU that, like F.relu, lets NaN through.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t relu_keep_nan(acc_t v) {
  return (v > acc_t(0) || at::_isnan(v)) ? v : acc_t(0);
}

C10_HOST_DEVICE inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// a rounded up to a multiple of m.
C10_HOST_DEVICE constexpr int64_t round_up(int64_t a, int64_t m) { return (a + m - 1) / m * m; }

// Moves `r` to the next element in the same memory order as unravel (no divisions):
// serial loops unravel once per chunk, then advance.
C10_HOST_DEVICE inline void advance(Coord4& r, const Shape4& d, bool channels_last) {
  if (channels_last) {
    if (++r.c < d.c) return;
    r.c = 0;
    if (++r.w < d.w) return;
    r.w = 0;
    if (++r.h < d.h) return;
    r.h = 0;
    ++r.n;
  } else {
    if (++r.w < d.w) return;
    r.w = 0;
    if (++r.h < d.h) return;
    r.h = 0;
    if (++r.c < d.c) return;
    r.c = 0;
    ++r.n;
  }
}

// ---------------------------------------------------------------------------------------
// Offset pooling geometry (SPEC "offset_max_pool2d").

// Pooled extent of a side of `size` pixels: the same for every offset 0..k-1, so pixels
// that not every offset can use are dropped. Zero or negative means "too small".
C10_HOST_DEVICE inline int64_t pooled_extent(int64_t size, int64_t k) {
  return size >= k ? (size - k + 1) / k : 0;
}

// Batch index of offset (dy, dx) of image n in the [N*k*k, ...] offset batch.
C10_HOST_DEVICE inline int64_t offset_batch(int64_t n, int64_t dy, int64_t dx, int64_t k) {
  return (n * k + dy) * k + dx;
}

// Inverse of offset_batch.
struct OffsetBatch {
  int64_t n, dy, dx;
};
C10_HOST_DEVICE inline OffsetBatch split_offset_batch(int64_t b, int64_t k) {
  OffsetBatch r;
  r.dx = b % k;
  b /= k;
  r.dy = b % k;
  r.n = b / k;
  return r;
}

// Along one side, the window whose first pixel is y0 (windows of every offset together
// start at every y0 = d + k*i, d < k, 0 <= i < count): its offset d and index i, if any.
C10_HOST_DEVICE inline bool window_at(int64_t y0, int64_t k, int64_t count, int64_t* d,
                                      int64_t* i) {
  if (y0 < 0) return false;
  *d = y0 % k;
  *i = y0 / k;
  return *i < count;
}

// F.max_pool2d's rule for replacing the running max: a strictly greater value or a NaN.
// Ties keep the first element in row-major window order; NaN propagates.
template <typename acc_t>
C10_HOST_DEVICE inline bool replaces_max(acc_t value, acc_t current) {
  return value > current || at::_isnan(value);
}

// Max of the k x k window with top-left pixel (y0, x0) of plane (n, c), and the
// row-major position of the element that holds it.
template <typename scalar_t>
struct WindowMax {
  scalar_t value;
  int64_t pos;
};

template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline WindowMax<scalar_t> window_max(const scalar_t* in,
                                                             const Strides4& s, int64_t n,
                                                             int64_t c, int64_t y0,
                                                             int64_t x0, int64_t k) {
  const scalar_t* base = in + offset_of(s, n, c, y0, x0);
  WindowMax<scalar_t> best{base[0], 0};
  acc_t best_acc = static_cast<acc_t>(best.value);
  for (int64_t a = 0; a < k; ++a) {
    for (int64_t b = 0; b < k; ++b) {
      const scalar_t v = base[a * s.h + b * s.w];
      const acc_t va = static_cast<acc_t>(v);
      if (replaces_max(va, best_acc)) {
        best_acc = va;
        best.value = v;
        best.pos = a * k + b;
      }
    }
  }
  return best;
}

struct PoolGeometry {
  Shape4 in;       // [N, C, H, W]
  Shape4 out;      // [N*k*k, C, Ho, Wo]
  int64_t k;
};

// out[b, c, i, j] for the output element at coordinates `o`.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline scalar_t offset_pool_forward_element(const scalar_t* in,
                                                            const Strides4& in_s,
                                                            const PoolGeometry& g,
                                                            const Coord4& o) {
  const OffsetBatch ob = split_offset_batch(o.n, g.k);
  return window_max<scalar_t, acc_t>(in, in_s, ob.n, o.c, ob.dy + g.k * o.h,
                                     ob.dx + g.k * o.w, g.k)
      .value;
}

// grad_input[n, c, y, x] for the input element at coordinates `p`: the sum of the
// gradients of every window whose max p holds, in a fixed order: windows by their first
// pixel (y0, x0), row-major ascending, whatever their offsets. That order is the same for
// every pixel relative to it, so the vectorised CPU paths can keep it lane by lane. Each
// element is computed by one thread from reads only, so the result is deterministic
// and needs no atomics.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline scalar_t offset_pool_backward_element(const scalar_t* grad_out,
                                                             const Strides4& go_s,
                                                             const scalar_t* in,
                                                             const Strides4& in_s,
                                                             const PoolGeometry& g,
                                                             const Coord4& p) {
  const int64_t k = g.k;
  acc_t sum = acc_t(0);
  for (int64_t y0 = p.h - (k - 1); y0 <= p.h; ++y0) {
    int64_t dy, i;
    if (!window_at(y0, k, g.out.h, &dy, &i)) continue;
    for (int64_t x0 = p.w - (k - 1); x0 <= p.w; ++x0) {
      int64_t dx, j;
      if (!window_at(x0, k, g.out.w, &dx, &j)) continue;
      const auto m = window_max<scalar_t, acc_t>(in, in_s, p.n, p.c, y0, x0, k);
      if (m.pos == (p.h - y0) * k + (p.w - x0)) {
        const int64_t b = offset_batch(p.n, dy, dx, k);
        sum += static_cast<acc_t>(grad_out[offset_of(go_s, b, p.c, i, j)]);
      }
    }
  }
  return static_cast<scalar_t>(sum);
}

// ---------------------------------------------------------------------------------------
// Interleave geometry (SPEC "interleave"): out[n, c, k*i + dy, k*j + dx] =
// in[(n*k + dy)*k + dx, c, i, j].

// Offset of the interleaved-map element (n, c, y, x) in the per-offset batch.
C10_HOST_DEVICE inline int64_t interleave_source(const Strides4& per_offset, int64_t k,
                                                 const Coord4& o) {
  const int64_t b = offset_batch(o.n, o.h % k, o.w % k, k);
  return offset_of(per_offset, b, o.c, o.h / k, o.w / k);
}

// Offset of the per-offset element (b, c, i, j) in the interleaved map.
C10_HOST_DEVICE inline int64_t deinterleave_source(const Strides4& interleaved, int64_t k,
                                                   const Coord4& o) {
  const OffsetBatch ob = split_offset_batch(o.n, k);
  return offset_of(interleaved, ob.n, o.c, k * o.h + ob.dy, k * o.w + ob.dx);
}

}  // namespace overfeat_kernels
