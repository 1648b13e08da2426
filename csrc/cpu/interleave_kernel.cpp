// Interleave / deinterleave on the CPU: permutations, moved as raw elements of their width
// (so every dtype of 1, 2, 4 or 8 bytes works).
//
// Dense NCHW maps are woven a row at a time: an interleaved row y = k*i + dy is the k rows
// i of the offsets (dy, 0..k-1), merged element by element, a loop of contiguous loads and
// a grouped store (the reverse for deinterleave) that the compiler vectorises. Rows shorter
// than a few vectors (OverFeat's 11 x 14 maps) would run as scalar loop remainders: there
// the whole plane of each offset row band is merged as one long stream through a buffer,
// and the interleaved rows are moved with memcpy. On AVX-512 (elements of 2, 4 or 8 bytes)
// the merge and split of those streams are vector permutes (cpu_permute.h), or, for
// interleaves with k >= 3 of 4- and 8-byte elements, each row is built from masked vector
// loads and permutes without a buffer. Dense
// channels_last maps move whole pixels, C contiguous elements at a time. Anything else
// (strided views) takes the general path through the shared index math.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "../checks.h"
#include "../dispatch.h"
#include "cpu_permute.h"
#include "cpu_simd.h"
#include "simulator_switch.h"

namespace overfeat_kernels {
namespace {

constexpr int64_t kGrain = 8192;
// Work per parallel task of the fast paths, in elements.
constexpr int64_t kTaskElems = 32768;

template <typename T_, int K_>
struct Cfg {
  using T = T_;
  static constexpr int K = K_;  // 0: the run-time k
};

// Calls f(std::integral_constant<int, K>) with K = k for the common sizes, else K = 0.
template <typename F>
void k_switch(int64_t k, F&& f) {
  switch (k) {
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
}

// NCHW, one (n, c) plane of the interleaved map ([H, W] = [h*k, w*k]). `small` points at
// plane (n*k*k, c) of the per-offset maps; consecutive offsets are `offset_stride` apart.
// kToSmall: deinterleave (interleaved -> per-offset), else interleave.
template <class C, bool kToSmall>
OVERFEAT_CPU_INLINE void nchw_plane(typename C::T* big, typename C::T* small,
                                    int64_t offset_stride, int64_t h, int64_t w, int64_t k_rt) {
  using T = typename C::T;
  const int64_t k = C::K > 0 ? C::K : k_rt;
  const int64_t W = w * k;
  for (int64_t i = 0; i < h; ++i) {
    for (int64_t dy = 0; dy < k; ++dy) {
      T* row = big + (k * i + dy) * W;
      T* s = small + dy * k * offset_stride + i * w;  // offset (dy, 0), row i
      if constexpr (C::K > 0) {
        T* runs[C::K];
        for (int dx = 0; dx < C::K; ++dx) runs[dx] = s + dx * offset_stride;
        if constexpr (kToSmall) {
          for (int64_t j = 0; j < w; ++j)
            for (int dx = 0; dx < C::K; ++dx) runs[dx][j] = row[C::K * j + dx];
        } else {
          for (int64_t j = 0; j < w; ++j)
            for (int dx = 0; dx < C::K; ++dx) row[C::K * j + dx] = runs[dx][j];
        }
      } else {
        for (int64_t dx = 0; dx < k; ++dx) {
          T* run = s + dx * offset_stride;
          if constexpr (kToSmall) {
            for (int64_t j = 0; j < w; ++j) run[j] = row[k * j + dx];
          } else {
            for (int64_t j = 0; j < w; ++j) row[k * j + dx] = run[j];
          }
        }
      }
    }
  }
}

template <class C>
OVERFEAT_CPU_INLINE void nchw_interleave_plane(const typename C::T* small, typename C::T* big,
                                               int64_t offset_stride, int64_t h, int64_t w,
                                               int64_t k) {
  nchw_plane<C, false>(big, const_cast<typename C::T*>(small), offset_stride, h, w, k);
}
OVERFEAT_CPU_MULTIVERSION(nchw_interleave_plane)

template <class C>
OVERFEAT_CPU_INLINE void nchw_deinterleave_plane(const typename C::T* big, typename C::T* small,
                                                 int64_t offset_stride, int64_t h, int64_t w,
                                                 int64_t k) {
  nchw_plane<C, true>(const_cast<typename C::T*>(big), small, offset_stride, h, w, k);
}
OVERFEAT_CPU_MULTIVERSION(nchw_deinterleave_plane)

// nchw_plane for short rows (compile-time K): for each dy, the k offset planes (dy, dx)
// are merged as whole planes, stream position k*u + dx for element u = i*w + j, in `tmp`
// (h*w*k elements); row i of that stream is interleaved row k*i + dy.
template <class C, bool kToSmall>
OVERFEAT_CPU_INLINE void nchw_plane_short(typename C::T* big, typename C::T* small,
                                          int64_t offset_stride, int64_t h, int64_t w,
                                          typename C::T* __restrict tmp) {
  using T = typename C::T;
  constexpr int K = C::K;
  const int64_t W = w * K, n = h * w;
  const size_t row_bytes = static_cast<size_t>(W) * sizeof(T);
  for (int dy = 0; dy < K; ++dy) {
    T* runs[K];
    for (int dx = 0; dx < K; ++dx) runs[dx] = small + (dy * K + dx) * offset_stride;
    if constexpr (kToSmall) {
      for (int64_t i = 0; i < h; ++i) std::memcpy(tmp + i * W, big + (K * i + dy) * W, row_bytes);
      for (int64_t u = 0; u < n; ++u)
        for (int dx = 0; dx < K; ++dx) runs[dx][u] = tmp[K * u + dx];
    } else {
      for (int64_t u = 0; u < n; ++u)
        for (int dx = 0; dx < K; ++dx) tmp[K * u + dx] = runs[dx][u];
      for (int64_t i = 0; i < h; ++i) std::memcpy(big + (K * i + dy) * W, tmp + i * W, row_bytes);
    }
  }
}

template <class C>
OVERFEAT_CPU_INLINE void nchw_interleave_short(const typename C::T* small, typename C::T* big,
                                               int64_t offset_stride, int64_t h, int64_t w,
                                               typename C::T* tmp) {
  nchw_plane_short<C, false>(big, const_cast<typename C::T*>(small), offset_stride, h, w, tmp);
}
OVERFEAT_CPU_MULTIVERSION(nchw_interleave_short)

template <class C>
OVERFEAT_CPU_INLINE void nchw_deinterleave_short(const typename C::T* big, typename C::T* small,
                                                 int64_t offset_stride, int64_t h, int64_t w,
                                                 typename C::T* tmp) {
  nchw_plane_short<C, true>(const_cast<typename C::T*>(big), small, offset_stride, h, w, tmp);
}
OVERFEAT_CPU_MULTIVERSION(nchw_deinterleave_short)

// Rows of the per-offset maps shorter than this many bytes take the plane-stream path (or,
// for some interleaves on AVX-512, the permutes below): a few 64-byte vectors, below which
// a row loop is mostly its scalar remainder.
constexpr int64_t kShortRowBytes = 256;

#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
// The interleave of nchw_plane with AVX-512 permutes, for elements of 4 or 8 bytes and a
// compile-time K: each block of L = 64 / sizeof(T) elements of the K runs of an
// interleaved row (offsets (dy, 0..K-1), row i) becomes the K vectors of the row's block
// of K*L (cpu::WeavePermute), with masked loads and stores at the row ends. No buffer, no
// memcpy, no scalar remainder: a 14-element OverFeat row is one masked vector per run.
template <typename T, int K>
OVERFEAT_CPU_TARGET_AVX512 __attribute__((noinline)) void nchw_plane_permute(
    T* big, const T* small, int64_t offset_stride, int64_t h, int64_t w,
    const cpu::WeavePermute<sizeof(T)>& weave) {
  static_assert(K >= 2, "a permute chain has K - 1 >= 1 steps");
  using V = cpu::Lanes512<sizeof(T)>;
  constexpr int L = 64 / static_cast<int>(sizeof(T));
  const int64_t W = K * w;
  __m512i r[K];
  for (int64_t i = 0; i < h; ++i) {
    for (int dy = 0; dy < K; ++dy) {
      T* row = big + (K * i + dy) * W;
      const T* runs = small + dy * K * offset_stride + i * w;  // offset (dy, 0), row i
      for (int64_t j0 = 0; j0 < w; j0 += L) {
        const int64_t n = std::min<int64_t>(w - j0, L);  // run elements in this block
        for (int dx = 0; dx < K; ++dx) {
          r[dx] = V::load(cpu::first_lanes<sizeof(T)>(n), runs + dx * offset_stride + j0);
        }
        T* block = row + K * j0;
        for (int s = 0; s < K; ++s) {
          const __m512i t = weave.template vector<K>(r, s);
          const int64_t lanes = std::clamp<int64_t>(K * n - s * L, 0, L);
          V::store(block + s * L, cpu::first_lanes<sizeof(T)>(lanes), t);
        }
      }
    }
  }
}

// The deinterleave of a plane with short rows on AVX-512: the plane's rows are copied in
// memory order into K runs, rows K*i + dy end to end in run dy, in which position
// K*(i*w + j) + dx is offset (dy, dx)'s element (i, j); cpu::SplitPermute splits each run
// into its K offset planes with whole-vector stores (masked at each plane's end). `tmp`:
// K runs of `run` >= h*K*w + (K + 1)*L elements.
template <typename T, int K>
OVERFEAT_CPU_TARGET_AVX512 __attribute__((noinline)) void nchw_plane_split(
    const T* big, T* small, int64_t offset_stride, int64_t h, int64_t w,
    const cpu::SplitPermute<T>& split, T* tmp, int64_t run) {
  const int64_t W = K * w;
  for (int64_t i = 0; i < h; ++i) {
    for (int dy = 0; dy < K; ++dy) {
      // A whole store past the row's end lands where the next row's copy, or the margin,
      // follows; the plane's last row ends the tensor, so its end is loaded masked.
      cpu::copy_run(tmp + dy * run + i * W, big + (K * i + dy) * W, W);
    }
  }
  for (int dy = 0; dy < K; ++dy) {
    split.template run<K>(tmp + dy * run, small + dy * K * offset_stride, offset_stride, h * w,
                          h * w);
  }
}

// The interleave of a plane with short rows on AVX-512, the reverse of nchw_plane_split:
// cpu::WeavePermute weaves the K offset planes (dy, 0..K-1) into run dy with whole-vector
// stores, then the plane's rows are copied from the runs in memory order (whole vectors
// that may run into the next row, written later; masked at the plane's end). `tmp`: K
// runs of `run` >= h*K*w + L elements.
template <typename T, int K>
OVERFEAT_CPU_TARGET_AVX512 __attribute__((noinline)) void nchw_plane_weave(
    T* big, const T* small, int64_t offset_stride, int64_t h, int64_t w,
    const cpu::WeavePermute<sizeof(T)>& weave, T* tmp, int64_t run) {
  using V = cpu::Lanes512<sizeof(T)>;
  constexpr int L = 64 / static_cast<int>(sizeof(T));
  const int64_t W = K * w, n = h * w;
  __m512i r[K];
  for (int dy = 0; dy < K; ++dy) {
    const T* runs = small + dy * K * offset_stride;
    T* out = tmp + dy * run;
    for (int64_t j0 = 0; j0 < n; j0 += L) {
      const auto m = cpu::first_lanes<sizeof(T)>(std::min<int64_t>(n - j0, L));
      for (int dx = 0; dx < K; ++dx) r[dx] = V::load(m, runs + dx * offset_stride + j0);
      for (int s = 0; s < K; ++s) {
        _mm512_storeu_si512(out + K * j0 + s * L, weave.template vector<K>(r, s));
      }
    }
  }
  const int64_t plane = h * K * W;
  for (int64_t i = 0; i < h; ++i) {
    for (int dy = 0; dy < K; ++dy) {
      const int64_t at = (K * i + dy) * W;
      const T* src = tmp + dy * run + i * W;
      for (int64_t t = 0; t < W; t += L) {
        if (at + t + L <= plane) {
          _mm512_storeu_si512(big + at + t, _mm512_loadu_si512(src + t));
        } else {
          V::store(big + at + t, cpu::first_lanes<sizeof(T)>(plane - at - t),
                   _mm512_loadu_si512(src + t));
        }
      }
    }
  }
}
#endif

// Both directions over dense NCHW maps: big [N, C, h*k, w*k], small [N*k*k, C, h, w].
template <typename T, int K>
void nchw_permute(const at::Tensor& input, at::Tensor& out, bool interleave, int64_t k) {
  using Cf = Cfg<T, K>;
  const at::Tensor& big = interleave ? out : input;
  const int64_t n = big.size(0), c = big.size(1);
  const int64_t h = big.size(2) / k, w = big.size(3) / k;
  const int64_t plane_small = h * w, plane_big = plane_small * k * k;
  const int64_t grain = std::max<int64_t>(1, kTaskElems / std::max<int64_t>(1, plane_big));
  const T* in = static_cast<const T*>(input.const_data_ptr());
  T* o = static_cast<T*>(out.mutable_data_ptr());
  const bool short_rows = K > 0 && w * static_cast<int64_t>(sizeof(T)) < kShortRowBytes;
  // Short rows on AVX-512: the row permutes where they measured faster than the plane
  // stream (interleave, k >= 3, 4- and 8-byte elements: 2.3-3.9x on this project's AMD
  // EPYC benchmark machine).
  [[maybe_unused]] const bool permute_rows = OVERFEAT_CPU_HAVE_AVX2_VARIANT && short_rows &&
                                             interleave && K >= 3 && cpu::has_avx512() &&
                                             (sizeof(T) == 4 || sizeof(T) == 8);
  // Deinterleaves of short rows on AVX-512, elements of 2, 4 or 8 bytes: copied rows split
  // by permutes (nchw_plane_split; single thread, f32 k = 3 [1, 1024, 33, 42]: 2.0-2.3x the
  // clone against 3.2-4.2x for the plane stream in the same runs).
  [[maybe_unused]] const bool split_rows = OVERFEAT_CPU_HAVE_AVX2_VARIANT && short_rows &&
                                           !interleave && K >= 2 && cpu::has_avx512() &&
                                           sizeof(T) >= 2;
  // Other interleaves of short rows on AVX-512 (k = 2, or 2-byte elements): woven plane
  // runs (nchw_plane_weave; single thread, f32 k = 2 [32, 512, 14, 14]: 1.2-1.4x the clone
  // against 1.5-2.0x for the plane stream; bf16 k = 3 [9, 1024, 11, 14]: 2.7x against 3.5x).
  // For 4- and 8-byte k >= 3 the row permutes stay (2.0x against 2.2-2.5x woven).
  [[maybe_unused]] const bool weave_rows = OVERFEAT_CPU_HAVE_AVX2_VARIANT && short_rows &&
                                           interleave && !permute_rows && K >= 2 &&
                                           cpu::has_avx512() && sizeof(T) >= 2;
  at::parallel_for(0, n * c, grain, [&](int64_t begin, int64_t end) {
    const int64_t run = plane_small * k + (k + 1) * 64;  // of nchw_plane_split / _weave
    std::vector<T> tmp(split_rows || weave_rows ? k * run
                       : short_rows && !permute_rows ? plane_small * k : 0);
#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
    // (1-byte elements have no permute: a placeholder type, never used.)
    using T2 = std::conditional_t<sizeof(T) >= 2, T, uint16_t>;
    std::optional<cpu::SplitPermute<T2>> split;
    std::optional<cpu::WeavePermute<sizeof(T2)>> weave;
    if constexpr (sizeof(T) >= 2) {
      if (split_rows) split.emplace(static_cast<int>(k));
      if (weave_rows || permute_rows) weave.emplace(static_cast<int>(k));
    }
#endif
    for (int64_t p = begin; p < end; ++p) {
      const int64_t ni = p / c, ci = p % c;
      const int64_t small_off = (ni * k * k * c + ci) * plane_small;
      if constexpr (K > 0) {  // the short-row paths need a compile-time k
#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
        if constexpr (K >= 2 && sizeof(T) >= 2) {
          if (weave_rows) {
            nchw_plane_weave<T, K>(o + p * plane_big, in + small_off, c * plane_small, h, w,
                                   *weave, tmp.data(), run);
            continue;
          }
        }
        if constexpr (K >= 3 && (sizeof(T) == 4 || sizeof(T) == 8)) {
          if (permute_rows) {
            nchw_plane_permute<T, K>(o + p * plane_big, in + small_off, c * plane_small, h, w,
                                     *weave);
            continue;
          }
        }
        if constexpr (K >= 2 && sizeof(T) >= 2) {
          if (split_rows) {
            nchw_plane_split<T, K>(in + p * plane_big, o + small_off, c * plane_small, h, w,
                                   *split, tmp.data(), run);
            continue;
          }
        }
#endif
        if (short_rows && interleave) {
          nchw_interleave_short_run<Cf>(in + small_off, o + p * plane_big, c * plane_small, h,
                                        w, tmp.data());
          continue;
        }
        if (short_rows) {
          nchw_deinterleave_short_run<Cf>(in + p * plane_big, o + small_off, c * plane_small,
                                          h, w, tmp.data());
          continue;
        }
      }
      if (interleave) {
        nchw_interleave_plane_run<Cf>(in + small_off, o + p * plane_big, c * plane_small, h, w,
                                      k);
      } else {
        nchw_deinterleave_plane_run<Cf>(in + p * plane_big, o + small_off, c * plane_small, h, w,
                                        k);
      }
    }
  });
}

// channels_last: pixels are runs of C elements. big [N, h*k, w*k, C] and small
// [N*k*k, h, w, C] in memory; one task per interleaved row (n, y).
template <typename T>
void cl_permute(const at::Tensor& input, at::Tensor& out, bool interleave, int64_t k) {
  const at::Tensor& big = interleave ? out : input;
  const int64_t n = big.size(0), c = big.size(1), H = big.size(2), W = big.size(3);
  const int64_t h = H / k, w = W / k;
  const size_t px_bytes = static_cast<size_t>(c) * sizeof(T);
  const int64_t grain = std::max<int64_t>(1, kTaskElems / std::max<int64_t>(1, W * c));
  const T* in = static_cast<const T*>(input.const_data_ptr());
  T* o = static_cast<T*>(out.mutable_data_ptr());
  at::parallel_for(0, n * H, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t ni = r / H, y = r % H, i = y / k, dy = y % k;
      const int64_t big_row = r * W * c;
      // The interleaved row in memory order (k sequential streams on the other side): a
      // row written dx by dx, every k-th pixel per pass, ran 1.5-3x slower.
      for (int64_t x = 0; x < W; ++x) {
        const int64_t j = x / k, dx = x % k;
        const int64_t s = ((offset_batch(ni, dy, dx, k) * h + i) * w + j) * c;
        const int64_t b = big_row + x * c;
        if (interleave) {
          std::memcpy(o + b, in + s, px_bytes);
        } else {
          std::memcpy(o + s, in + b, px_bytes);
        }
      }
    }
  });
}

// The general path: any strides, one element at a time in the output's memory order.
template <typename T>
void general_permute(const at::Tensor& input, at::Tensor& out, bool interleave, int64_t k,
                     const Shape4& out_shape, bool cl) {
  const Strides4 in_s = strides4(input);
  const T* in = static_cast<const T*>(input.const_data_ptr());
  T* o = static_cast<T*>(out.mutable_data_ptr());
  at::parallel_for(0, out.numel(), kGrain, [&](int64_t begin, int64_t end) {
    Coord4 c = unravel(begin, out_shape, cl);
    for (int64_t idx = begin; idx < end; ++idx, advance(c, out_shape, cl)) {
      o[idx] = in[interleave ? interleave_source(in_s, k, c) : deinterleave_source(in_s, k, c)];
    }
  });
}

at::Tensor permute_cpu(const at::Tensor& input, int64_t k, const Shape4& out_shape,
                       bool interleave) {
  at::Tensor out = empty_in_format_of({out_shape.n, out_shape.c, out_shape.h, out_shape.w}, input);
  if (out.numel() == 0) return out;
  const bool cl = is_channels_last(input);
  const bool dense =
      input.is_contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const char* op = interleave ? "interleave" : "deinterleave";
  dispatch_by_element_size(input, op, [&](auto tag) {
    using T = decltype(tag);
    if (!dense) {
      general_permute<T>(input, out, interleave, k, out_shape, cl);
    } else if (cl) {
      cl_permute<T>(input, out, interleave, k);
    } else {
      k_switch(k, [&](auto kc) { nchw_permute<T, decltype(kc)::value>(input, out, interleave, k); });
    }
  });
  return out;
}

at::Tensor interleave_cpu(const at::Tensor& input, int64_t kernel_size) {
  return permute_cpu(input, kernel_size, check_interleave_args(input, kernel_size), true);
}

at::Tensor deinterleave_cpu(const at::Tensor& input, int64_t kernel_size) {
  return permute_cpu(input, kernel_size, check_deinterleave_args(input, kernel_size), false);
}

}  // namespace

TORCH_LIBRARY_IMPL(overfeat_kernels, CPU, m) {
  m.impl("interleave", cpu_or_simulated<kInterleave, &interleave_cpu>());
  m.impl("deinterleave", cpu_or_simulated<kDeinterleave, &deinterleave_cpu>());
}

}  // namespace overfeat_kernels
