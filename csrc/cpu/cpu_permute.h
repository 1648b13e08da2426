// AVX-512 permutes that split a run by phase or weave k runs into one (GCC does not
// vectorise these strided moves well on short rows). Used by the offset pooling kernels
// (splitting window maxima into offsets, weaving gradients) and by interleave /
// deinterleave. Elements of 2, 4 or 8 bytes (vpermt2w/d/q).
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu_simd.h"

namespace overfeat_kernels {
namespace cpu {

// The largest k of the permute paths (their index tables are k*k vectors).
constexpr int kMaxPermuteK = 8;

// Declared everywhere so that callers can pass a table by pointer (null: no permutes);
// defined only where the AVX-512 variant is compiled.
template <typename T>
struct SplitPermute;
template <int Bytes>
struct WeavePermute;

#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
// dst[0, n) = src[0, n) in whole vectors: the last, partial one is loaded masked (src may
// end at n) and stored whole (dst needs L - 1 writable elements past n).
template <typename T>
OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE void copy_run(T* dst, const T* src, int64_t n) {
  constexpr int L = 64 / static_cast<int>(sizeof(T));
  int64_t t = 0;
  for (; t + L <= n; t += L) _mm512_storeu_si512(dst + t, _mm512_loadu_si512(src + t));
  if (t < n) {
    _mm512_storeu_si512(dst + t, Lanes512<sizeof(T)>::load(first_lanes<sizeof(T)>(n - t), src + t));
  }
}

// Split: out[dx*stride + j] = r[dx + k*j] for j < n, dx < k. 64 bytes of output lanes j
// come from the k vectors holding r[k*j0 .. k*j0 + k*L), lane j from position
// p = dx + k*j, picked by a chain of k - 1 two-source permutes (step s takes the lanes
// whose p lies in vector s + 1). Reads up to k*L elements past r's last used one; stores
// whole vectors up to `writable` lanes from each output (masked beyond).
template <typename T>
struct SplitPermute {
  using V = Lanes512<sizeof(T)>;
  using index_t = typename V::index_t;
  static constexpr int L = 64 / sizeof(T);
  // idx[dx][s]: step s of offset dx's chain; step 0 picks from vectors 0 and 1, step s > 0
  // from the chain so far (lane j, kept) and vector s + 1.
  alignas(64) index_t idx[kMaxPermuteK][kMaxPermuteK][L];
  int k;

  explicit SplitPermute(int k_) : k(k_) {
    for (int dx = 0; dx < k; ++dx) {
      for (int s = 0; s + 1 < k; ++s) {
        for (int j = 0; j < L; ++j) {
          const int p = dx + k * j;
          const int from = p - (s + 1) * L;  // position in vector s + 1
          idx[dx][s][j] = static_cast<index_t>(s == 0 ? (p < 2 * L ? p : 0)
                                                      : (from >= 0 && from < L ? L + from : j));
        }
      }
    }
  }

  // K: k as a compile-time constant (loops unrolled), or 0.
  template <int K>
  OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE void run(const T* r, T* out, int64_t stride,
                                                          int64_t n, int64_t writable) const {
    const int kk = K > 0 ? K : k;
    __m512i v[kMaxPermuteK];
    for (int64_t j0 = 0; j0 < n; j0 += L) {
      const bool full = j0 + L <= writable;
      const auto m = first_lanes<sizeof(T)>(std::min<int64_t>(n - j0, L));
      for (int s = 0; s < kk; ++s) v[s] = _mm512_loadu_si512(r + kk * j0 + s * L);
      for (int dx = 0; dx < kk; ++dx) {
        __m512i t = v[0];
        for (int s = 0; s + 1 < kk; ++s) {
          t = V::permute(t, _mm512_load_si512(idx[dx][s]), v[s + 1]);
        }
        if (full) {
          _mm512_storeu_si512(out + dx * stride + j0, t);
        } else {
          V::store(out + dx * stride + j0, m, t);
        }
      }
    }
  }
};

// Weave, k >= 2: vectors r[0..k) of L lanes each (element j0 + l of run dx in lane l)
// become the k output vectors of positions k*j0 .. k*j0 + k*L, position p = k*j + dx
// holding run dx's element j. Output vector s, lane l is position s*L + l, run p % k's
// element p / k, picked by a chain of k - 1 two-source permutes: step 0 from runs 0 and 1,
// step q > 0 keeps its lane or takes run q + 1's.
template <int Bytes>
struct WeavePermute {
  using V = Lanes512<Bytes>;
  using index_t = typename V::index_t;
  static constexpr int L = 64 / Bytes;
  // idx[s][q][l]: the source of lane l of output vector s at step q.
  alignas(64) index_t idx[kMaxPermuteK][kMaxPermuteK - 1][L];
  int k;

  explicit WeavePermute(int k_) : k(k_) {
    for (int s = 0; s < k; ++s) {
      for (int q = 0; q + 1 < k; ++q) {
        for (int l = 0; l < L; ++l) {
          const int p = s * L + l, run = p % k, at = p / k;
          int from = q == 0 ? 0 : l;  // a lane that a later step fills keeps anything
          if (q == 0 && run <= 1) from = run * L + at;
          if (q > 0 && run == q + 1) from = L + at;
          idx[s][q][l] = static_cast<index_t>(from);
        }
      }
    }
  }

  // Output vector s. K: k as a compile-time constant (loops unrolled), or 0.
  template <int K>
  OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE __m512i vector(const __m512i* r, int s) const {
    const int kk = K > 0 ? K : k;
    __m512i t = V::permute(r[0], _mm512_load_si512(idx[s][0]), r[1]);
    for (int q = 1; q + 1 < kk; ++q) t = V::permute(t, _mm512_load_si512(idx[s][q]), r[q + 1]);
    return t;
  }
};
#endif

}  // namespace cpu
}  // namespace overfeat_kernels
