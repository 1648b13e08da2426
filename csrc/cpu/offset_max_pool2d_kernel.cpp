// Offset max-pooling on the CPU.
//
// Dense NCHW and channels_last inputs take fast paths that run over contiguous inner runs
// (W for NCHW, C for channels_last) with loops the compiler vectorises (cpu_simd.h);
// anything else (strided views) takes the general path, one element at a time through the
// per-element math of index_math.h. Both give the same bits: window elements are compared
// in row-major window order with F.max_pool2d's rule, and each input pixel sums its window
// gradients in the fixed order of index_math.h (windows by first pixel), by one thread.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "../checks.h"
#include "../dispatch.h"
#include "cpu_permute.h"
#include "cpu_simd.h"
#include "simulator_switch.h"

namespace overfeat_kernels {
namespace {

using cpu::Elem;

constexpr int64_t kGrain = 2048;
// Work per parallel task of the fast paths, in input elements.
constexpr int64_t kTaskElems = 16384;

// Compile-time kernel size K (0: the run-time value k) and element type.
template <typename scalar_t, int K_>
struct Cfg {
  using scalar = scalar_t;
  using E = Elem<scalar_t>;
  using raw_t = typename E::raw_t;
  using key_t = typename E::key_t;
  using Weave = cpu::WeavePermute<sizeof(key_t)>;  // of key_t lanes (cpu_permute.h)
  // A window's code, the row-major position a*k + b of its maximum: one byte for the
  // compile-time sizes (k <= 3; the backward's gather loads k*k codes per pixel).
  using code_t = std::conditional_t<(K_ > 0), uint8_t, int32_t>;
  // The integer lanes that select codes beside order keys: of their width where codes fit.
  using select_t = std::conditional_t<(K_ > 0 && sizeof(typename E::order_t) == 2), int16_t,
                                      int32_t>;
  static constexpr int K = K_;
  static constexpr bool kSameKey = std::is_same_v<raw_t, key_t>;
};

// One pointer per window element (k*k): on the stack when K is a compile-time constant,
// on the heap for other kernel sizes.
template <class C, typename T>
struct WindowPointers {
  T* fixed[C::K > 0 ? C::K * C::K : 1];
  std::vector<T*> dynamic;
  explicit WindowPointers(int64_t k) : dynamic(C::K > 0 ? 0 : k * k) {}
  T** get() { return C::K > 0 ? fixed : dynamic.data(); }
};

// Calls f(std::integral_constant<int, K>) with K = k for the common sizes, else K = 0.
template <typename F>
void k_switch(int64_t k, F&& f) {
  switch (k) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
}

// out[j] = max over e of src[e][j] (e in row-major window order), j < n.
template <class C>
OVERFEAT_CPU_INLINE void max_run(const typename C::raw_t* const* src, int64_t kk2,
                                 typename C::raw_t* __restrict out, int64_t n) {
  using raw_t = typename C::raw_t;
  using key_t = typename C::key_t;
  constexpr int E = C::K * C::K;
  if constexpr (E > 0) {
    const raw_t* s[E];
    for (int e = 0; e < E; ++e) s[e] = src[e];
    for (int64_t j = 0; j < n; ++j) {
      raw_t best = s[0][j];
      key_t bk = C::E::key(best);
      for (int e = 1; e < E; ++e) {
        const raw_t v = s[e][j];
        const key_t kv = C::E::key(v);
        if constexpr (C::E::kExactBack) {
          // The same rule in the form of maxps (`kv > bk ? kv : bk`: ties and a NaN bk keep
          // bk) plus a NaN kv: two instructions with AVX-512. bk holds the exact bits of
          // the element the rule picks.
          const key_t m = kv > bk ? kv : bk;
          bk = kv != kv ? kv : m;
        } else {
          const bool r = cpu::replaces(kv, bk);
          bk = r ? kv : bk;
          best = r ? v : best;
        }
      }
      if constexpr (C::E::kExactBack) {
        out[j] = C::E::to_raw(bk);
      } else {
        out[j] = best;
      }
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      raw_t best = src[0][j];
      key_t bk = C::E::key(best);
      for (int64_t e = 1; e < kk2; ++e) {
        const raw_t v = src[e][j];
        const key_t kv = C::E::key(v);
        if (cpu::replaces(kv, bk)) {
          bk = kv;
          best = v;
        }
      }
      out[j] = best;
    }
  }
}

// idx[j] = row-major window position e of the maximum over e of src[e][j] (the full rule,
// NaNs included), j < n.
template <class C>
OVERFEAT_CPU_INLINE void argmax_run(const typename C::raw_t* const* src, int64_t kk2,
                                    typename C::code_t* __restrict idx, int64_t n) {
  using key_t = typename C::key_t;
  const int64_t E = C::K > 0 ? C::K * C::K : kk2;  // a constant when K is: e loop unrolled
  for (int64_t j = 0; j < n; ++j) {
    key_t best = C::E::key(src[0][j]);
    int32_t at = 0;
    for (int64_t e = 1; e < E; ++e) {
      const key_t v = C::E::key(src[e][j]);
      const bool r = cpu::replaces(v, best);
      best = r ? v : best;
      at = cpu::select(r, static_cast<int32_t>(e), at);
    }
    idx[j] = static_cast<typename C::code_t>(at);
  }
}

// ---------------------------------------------------------------------------------------
// NCHW. Small planes are handled G (channels) at a time, flattened into one run, so that
// the loops below stay long whatever the plane size.

struct NchwGeo {
  int64_t H, W, k, Ho, Wo;
  int64_t G;  // planes handled together
};

// Planes per group: about `elems` input elements. The forward's group buffers stay in L1
// (f32, one thread, [1, 1024, 35, 44], k = 3, rows packed as below: 0.70 ms with groups of
// 8192 elements, 0.54 ms with 4096); the backward's, about five times the group's bytes, in
// L2 (no group size from 2048 to 16384 was faster than 8192 at [8, 512, 28, 28], k = 2, or
// [1, 1024, 35, 44], k = 3).
constexpr int64_t kForwardGroupElems = 4096;
constexpr int64_t kBackwardGroupElems = 8192;

NchwGeo nchw_geo(const PoolGeometry& g, int64_t elems) {
  const int64_t group = std::clamp<int64_t>(elems / (g.in.h * g.in.w), 1, g.in.c);
  return {g.in.h, g.in.w, g.k, g.out.h, g.out.w, group};
}

// The NCHW forward. The window max of offset (dy, dx) at output (i, j) is
// the dense stride-1 k x k max D at pixel (dy + k*i, dx + k*j). D is computed separably
// over the flattened group of G planes: row maxima R[t] = max_b x[t + b], then
// D[t] = max_a R[t + a*W], each one long unit-stride loop whatever the plane size (lanes
// at row and plane edges mix neighbouring rows or planes; no output reads them). The
// rows y = dy + k*i of D are then split by column phase into the offsets' outputs.
//
// Without NaNs, F.max_pool2d's rule is `later > running ? later : running` (ties keep the
// first element), one maxps, and the separable order picks the same element as the
// row-major one: the first row holding the maximum, and the first maximum in that row.
// Groups holding a NaN take the full rule, window by window.

// Whether maxima over some raw elements need the full rule: a NaN, or a -0 where order
// keys split the zeros (cpu_simd.h: the 16-bit floats). Runs are added one by one.
template <class C>
struct FullRuleScan {
  using bits_t = typename C::E::bits_t;
  bits_t magnitude = 0, neg_zero = 0;

  // One element into a caller's local accumulators m, z (GCC vectorises neither `|=` nor
  // `?:` here, nor reductions into members): two max reductions.
  static OVERFEAT_CPU_INLINE void note(bits_t& m, bits_t& z, typename C::raw_t v) {
    m = std::max(m, C::E::magnitude(v));
    if constexpr (C::E::kOrderSplitsZeros) {
      z = std::max(z, static_cast<bits_t>(v == C::E::kNegZero));
    }
  }
  OVERFEAT_CPU_INLINE void add(const typename C::raw_t* __restrict x, int64_t n) {
    bits_t m = magnitude, z = neg_zero;
    for (int64_t t = 0; t < n; ++t) note(m, z, x[t]);
    magnitude = m;
    neg_zero = z;
  }
  bool needed() const { return magnitude > C::E::kInf || neg_zero != 0; }
};

template <class C>
OVERFEAT_CPU_INLINE bool needs_full_rule(const typename C::raw_t* x, int64_t n) {
  FullRuleScan<C> scan;
  scan.add(x, n);
  return scan.needed();
}

// The order key of a raw element, or an order key itself.
template <class C, typename S>
OVERFEAT_CPU_INLINE typename C::E::order_t order(S v) {
  if constexpr (std::is_same_v<S, typename C::E::order_t>) {
    return v;
  } else {
    return C::E::order(v);
  }
}

// d[t] = max over s < k of src[t + s*step] (in s order, maxps form), t < n, for values that
// do not need the full rule. S and D are raw_t or order_t: order keys are taken on loading
// and converted back on storing as needed. With kScan, src[0, n) (raw) is added to *scan in
// the same pass.
template <class C, bool kScan = false, typename S, typename D>
OVERFEAT_CPU_INLINE void fold_max(const S* __restrict src, int64_t step, int64_t k,
                                  D* __restrict d, int64_t n,
                                  FullRuleScan<C>* scan = nullptr) {
  using order_t = typename C::E::order_t;
  const int64_t kk = C::K > 0 ? C::K : k;  // a constant: the s loop unrolled
  typename FullRuleScan<C>::bits_t m = 0, z = 0;
  if constexpr (kScan) {
    m = scan->magnitude;
    z = scan->neg_zero;
  }
  for (int64_t t = 0; t < n; ++t) {
    if constexpr (kScan) FullRuleScan<C>::note(m, z, src[t]);
    order_t best = order<C>(src[t]);
    for (int64_t s = 1; s < kk; ++s) {
      const order_t v = order<C>(src[t + s * step]);
      best = v > best ? v : best;
    }
    if constexpr (std::is_same_v<D, order_t>) {
      d[t] = best;
    } else {
      d[t] = C::E::from_order(best);
    }
  }
  if constexpr (kScan) {
    scan->magnitude = m;
    scan->neg_zero = z;
  }
}

// D of a group (above) as raw elements. `rows` holds n_rows order keys, `dense` n_dense raw
// elements. A group holding a NaN (or a -0, see needs_full_rule) takes the full rule,
// element by element in window order. With `rows_only`, R alone where the full rule is not
// needed (the caller takes D from it). Returns whether the full rule was taken.
template <class C>
OVERFEAT_CPU_INLINE bool nchw_dense_max(const typename C::raw_t* in, NchwGeo g, int64_t n_rows,
                                        int64_t n_dense, typename C::E::order_t* rows,
                                        typename C::raw_t* __restrict dense, bool rows_only) {
  const int64_t k = C::K > 0 ? C::K : g.k;
  FullRuleScan<C> scan;
  fold_max<C, true>(in, 1, k, rows, n_rows, &scan);
  scan.add(in + n_rows, k - 1);
  if (!scan.needed()) {
    if (!rows_only) fold_max<C>(rows, g.W, k, dense, n_dense);
    return false;
  }
  WindowPointers<C, const typename C::raw_t> src(k);
  const typename C::raw_t** s = src.get();
  for (int64_t e = 0; e < k * k; ++e) s[e] = in + (e / k) * g.W + e % k;
  max_run<C>(s, k * k, dense, n_dense);
  return true;
}
OVERFEAT_CPU_MULTIVERSION(nchw_dense_max)

// The outputs of a group from D: offset (dy, dx), plane c, row i is D[c][dy + k*i][dx + k*j]
// for j < Wo, so each row y = dy + k*i of D is split by column phase into the rows (c, i)
// of the k offsets (dy, 0..k-1). `offset_stride` is the distance between offsets' outputs.
template <class C>
OVERFEAT_CPU_INLINE void nchw_split_offsets(const typename C::raw_t* __restrict d,
                                            typename C::raw_t* __restrict out,
                                            int64_t offset_stride, NchwGeo g) {
  const int64_t k = C::K > 0 ? C::K : g.k;
  for (int64_t c = 0; c < g.G; ++c) {
    for (int64_t y = 0; y < k * g.Ho; ++y) {
      const typename C::raw_t* row = d + (c * g.H + y) * g.W;
      const int64_t dy = y % k, i = y / k;
      for (int64_t dx = 0; dx < k; ++dx) {
        typename C::raw_t* o = out + (dy * k + dx) * offset_stride + (c * g.Ho + i) * g.Wo;
        for (int64_t j = 0; j < g.Wo; ++j) o[j] = row[dx + k * j];
      }
    }
  }
}
OVERFEAT_CPU_MULTIVERSION(nchw_split_offsets)

// Whether the AVX-512 forward packs output rows of Wo elements (below).
template <typename T>
bool packs_offset_rows(int64_t Wo) {
  return Wo * static_cast<int64_t>(sizeof(T)) <= 64;
}

#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
// One 512-bit vector of order keys, for maxima and window codes written by hand (GCC left
// the short whole-vector loops over rows of D scalar, and converted the codes between
// 32-bit and byte lanes): max(v, best) is `v > best ? v : best`, gt(v, best) the mask of
// `v > best`; load_order takes keys of raw elements, store_raw converts keys back.
template <int Bytes>
struct FloatVec512 {  // (a specialisation: vector types lose their attributes as arguments)
  using V = __m512;
};
template <>
struct FloatVec512<8> {
  using V = __m512d;
};

template <class C, typename order_t = typename C::E::order_t>
struct OrderMax512 {  // float and double: the keys are the elements
  static constexpr bool kF32 = sizeof(order_t) == 4;
  using V = typename FloatVec512<sizeof(order_t)>::V;
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE V load(const order_t* p) {
    if constexpr (kF32) {
      return _mm512_loadu_ps(p);
    } else {
      return _mm512_loadu_pd(p);
    }
  }
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE void store(order_t* p, V v) {
    if constexpr (kF32) {
      _mm512_storeu_ps(p, v);
    } else {
      _mm512_storeu_pd(p, v);
    }
  }
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE V load_order(const order_t* p) {
    return load(p);
  }
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE void store_raw(order_t* p, V v) {
    store(p, v);
  }
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE uint64_t gt(V v, V best) {
    if constexpr (kF32) {
      return _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);
    } else {
      return _mm512_cmp_pd_mask(v, best, _CMP_GT_OQ);
    }
  }
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE V max(V v, V best) {
    if constexpr (kF32) {
      return _mm512_max_ps(v, best);
    } else {
      return _mm512_max_pd(v, best);
    }
  }
};
template <class C>
struct OrderMax512<C, int16_t> {  // SignMagnitude16 keys: equal keys are equal bits
  using V = __m512i;
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE V load(const int16_t* p) {
    return _mm512_loadu_si512(p);
  }
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE V max(V v, V best) {
    return _mm512_max_epi16(v, best);
  }
  // SignMagnitude16's order and from_order, one involution: k ^ ((k >> 15) & 0x7FFF).
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE V flip(V v) {
    return _mm512_xor_si512(
        v, _mm512_and_si512(_mm512_srai_epi16(v, 15), _mm512_set1_epi16(0x7FFF)));
  }
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE void store_raw(uint16_t* p, V v) {
    _mm512_storeu_si512(p, flip(v));
  }
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE V load_order(const uint16_t* p) {
    return flip(_mm512_loadu_si512(p));
  }
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE void store(int16_t* p, V v) {
    _mm512_storeu_si512(p, v);
  }
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE uint64_t gt(V v, V best) {
    return _mm512_cmpgt_epi16_mask(v, best);
  }
};

// The forward of a group with AVX-512 permutes (cpu_permute.h).
//
// Output rows up to a vector long are packed: split row by row, every store would be a
// partial one overlapping the next row's, mostly split across cache lines (39 % of the
// k = 3 forward at 17x17 planes went there). So for each dy the rows y = dy + k*i of D
// (their first k*Wo positions) are written end to end for all planes of the group: in that
// run position k*((c*Ho + i)*Wo + j) + dx is D[c][dy + k*i][dx + k*j], and the k offsets
// (dy, 0..k-1) of the whole group are split from it in one pass of whole-vector stores,
// each offset's outputs of the group being one contiguous run. Without the full rule these
// rows are maxima over k rows of R taken straight into the run; D is not stored (f32, one
// thread, [1, 1024, 35, 44], k = 3: 0.73 -> 0.55 ms). Longer rows are split row by row from
// D (packing was slower there: [8, 64, 224, 224], k = 2: 57 -> 57-71 ms).
//
// `rows`: n_rows + L order keys, `dense`: n_dense raw elements, `packed`: G*Ho*k*Wo + k*L
// elements where packs_offset_rows.
template <class C>
OVERFEAT_CPU_TARGET_AVX512 __attribute__((noinline)) void nchw_forward_group_permute(
    const typename C::raw_t* in, NchwGeo g, int64_t n_rows, int64_t n_dense,
    typename C::E::order_t* rows, typename C::raw_t* dense, typename C::raw_t* packed,
    typename C::raw_t* out, int64_t offset_stride,
    const cpu::SplitPermute<typename C::raw_t>& split) {
  using T = typename C::raw_t;
  constexpr int L = 64 / sizeof(T);
  const int64_t k = C::K > 0 ? C::K : split.k, end = g.G * g.Ho * g.Wo, row = k * g.Wo;
  if (!packs_offset_rows<T>(g.Wo)) {
    nchw_dense_max_avx512<C>(in, g, n_rows, n_dense, rows, dense, false);
    for (int64_t c = 0; c < g.G; ++c) {
      for (int64_t y = 0; y < k * g.Ho; ++y) {
        // An offset's rows are written in order, so a store may run past its row into the
        // next ones (written later); masked only where it would leave the group's output.
        const int64_t pos = (c * g.Ho + y / k) * g.Wo;
        split.template run<C::K>(dense + (c * g.H + y) * g.W,
                                 out + (y % k) * k * offset_stride + pos, offset_stride, g.Wo,
                                 end - pos);
      }
    }
    return;
  }
  const bool full_rule = nchw_dense_max_avx512<C>(in, g, n_rows, n_dense, rows, dense, true);
  for (int64_t dy = 0; dy < k; ++dy) {
    T* p = packed;
    for (int64_t c = 0; c < g.G; ++c) {
      for (int64_t i = 0; i < g.Ho; ++i, p += row) {
        const int64_t at = (c * g.H + dy + k * i) * g.W;
        if (full_rule) {
          cpu::copy_run(p, dense + at, row);
          continue;
        }
        // Whole vectors: lanes past the row read R past it (rows has L to spare) and land
        // where the next row (or the spare end of `packed`) is written after.
        for (int64_t x = 0; x < row; x += L) {
          const typename C::E::order_t* r = rows + at + x;
          auto best = OrderMax512<C>::load(r);
          for (int64_t a = 1; a < k; ++a) {
            best = OrderMax512<C>::max(OrderMax512<C>::load(r + a * g.W), best);
          }
          OrderMax512<C>::store_raw(p + x, best);
        }
      }
    }
    split.template run<C::K>(packed, out + dy * k * offset_stride, offset_stride, end, end);
  }
}
#endif

template <typename scalar_t, int K>
void nchw_forward(const at::Tensor& input, at::Tensor& out, const PoolGeometry& pg) {
  using C = Cfg<scalar_t, K>;
  using raw_t = typename C::raw_t;
  const NchwGeo g = nchw_geo(pg, kForwardGroupElems);
  const int64_t k = pg.k, Cn = pg.in.c;
  const int64_t plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
  const auto* in = static_cast<const raw_t*>(input.const_data_ptr());
  auto* o = static_cast<raw_t*>(out.mutable_data_ptr());
  const int64_t groups = ceil_div(Cn, g.G);
  const int64_t grain = std::max<int64_t>(1, kTaskElems / (g.G * plane_in));
  const bool permute =
      OVERFEAT_CPU_HAVE_AVX2_VARIANT && cpu::has_avx512() && k <= cpu::kMaxPermuteK;
  at::parallel_for(0, pg.in.n * groups, grain, [&](int64_t begin, int64_t end) {
#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
    std::optional<cpu::SplitPermute<raw_t>> split;  // its index table, once per task
    if (permute) split.emplace(static_cast<int>(k));
#endif
    // + 64: whole vectors read past R's rows or D's (at most 64 elements each).
    std::vector<typename C::E::order_t> rows(g.G * plane_in + 64);
    std::vector<raw_t> dense(g.G * plane_in + k * 64);
    std::vector<raw_t> packed(permute && packs_offset_rows<raw_t>(g.Wo)
                                  ? g.G * plane_out * k + k * 64
                                  : 0);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / groups, c0 = (p % groups) * g.G;
      NchwGeo gg = g;
      gg.G = std::min(g.G, Cn - c0);
      const raw_t* src = in + (n * Cn + c0) * plane_in;
      raw_t* dst = o + (n * k * k * Cn + c0) * plane_out;
      // D is read up to the last plane's pixel (k*Ho - 1, k*Wo - 1), R up to (k-1)*W
      // further on.
      const int64_t n_dense = (gg.G - 1) * plane_in + (k * g.Ho - 1) * g.W + k * g.Wo;
      const int64_t n_rows = n_dense + (k - 1) * g.W;
#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
      if (permute) {
        nchw_forward_group_permute<C>(src, gg, n_rows, n_dense, rows.data(), dense.data(),
                                      packed.data(), dst, Cn * plane_out, *split);
        continue;
      }
#endif
      nchw_dense_max_run<C>(src, gg, n_rows, n_dense, rows.data(), dense.data(), false);
      nchw_split_offsets_run<C>(dense.data(), dst, Cn * plane_out, gg);
    }
  });
}

// ---------------------------------------------------------------------------------------
// NCHW backward, in the dense domain of a group of G planes flattened (as the forward).
// Every stride-1 position (y0, x0) with y0 < k*Ho and x0 < k*Wo is the first pixel of one
// window (offset (y0 % k, x0 % k), index (y0 / k, x0 / k)). Each position gets a code, the
// row-major position a*k + b of its window's max, and, in a dense map, its window's
// gradient (0 where no window starts). Pixel p then sums, for (a, b) descending, the
// gradient at p - a*W - b where the code there is a*k + b: its windows by first pixel in
// row-major order (index_math.h). The k*k shifts are the same in every lane, so each sum is
// one unit-stride loop over the group whatever the plane size, and grad_input is written
// once, in memory order. Lanes at row and plane edges read codes of positions that are no
// window; their gradient 0 adds nothing (adding +0 keeps a sum's bits: a sum that starts
// at +0 is never -0, and NaN + 0 is NaN with its bits). A margin of (k-1)*W + k-1
// gradients 0 lies before the group's first position.

#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
// The two separable passes of the window codes (nchw_window_codes, cl_row_max and
// cl_code_row below) for one-byte codes, 64 positions (one vector of codes) at a time: the
// comparisons' masks select codes in byte lanes (GCC's loops moved every code through
// 32-bit lanes and back). Each returns the positions done (a multiple of 64); the caller
// finishes the rest.
//
// Row pass: rv[t] = max over b < K of x[t + b*step] (first maximum), rb[t] = its b, t < n.
template <class C>
OVERFEAT_CPU_TARGET_AVX512 __attribute__((noinline)) int64_t row_codes_avx512(
    const typename C::raw_t* x, int64_t step, int64_t n, typename C::E::order_t* rv,
    uint8_t* rb) {
  using M = OrderMax512<C>;
  constexpr int K = C::K, Lv = 64 / sizeof(typename C::E::order_t), S = 64 / Lv;
  int64_t t = 0;
  for (; t + 64 <= n; t += 64) {
    uint64_t won[K] = {};  // won[b]: lanes where element b replaced the maximum
    for (int s = 0; s < S; ++s) {
      const typename C::raw_t* p = x + t + s * Lv;
      auto best = M::load_order(p);
      for (int b = 1; b < K; ++b) {
        const auto v = M::load_order(p + b * step);
        won[b] |= M::gt(v, best) << (s * Lv);
        best = M::max(v, best);
      }
      M::store(rv + t + s * Lv, best);
    }
    __m512i at = _mm512_setzero_si512();
    for (int b = 1; b < K; ++b) at = _mm512_mask_blend_epi8(won[b], at, _mm512_set1_epi8(b));
    _mm512_storeu_si512(rb + t, at);
  }
  return t;
}

// Column pass over the row maxima of K rows (rv[a], rb[a]): code[t] = a*K + rb[a][t] for
// the first a holding the maximum, t < n.
template <class C>
OVERFEAT_CPU_TARGET_AVX512 __attribute__((noinline)) int64_t col_codes_avx512(
    const typename C::E::order_t* const* rv, const uint8_t* const* rb, int64_t n,
    uint8_t* code) {
  using M = OrderMax512<C>;
  constexpr int K = C::K, Lv = 64 / sizeof(typename C::E::order_t), S = 64 / Lv;
  int64_t t = 0;
  for (; t + 64 <= n; t += 64) {
    typename M::V best[S];
    for (int s = 0; s < S; ++s) best[s] = M::load(rv[0] + t + s * Lv);
    __m512i at = _mm512_loadu_si512(rb[0] + t);
    for (int a = 1; a < K; ++a) {
      uint64_t won = 0;
      for (int s = 0; s < S; ++s) {
        const auto v = M::load(rv[a] + t + s * Lv);
        won |= M::gt(v, best[s]) << (s * Lv);
        best[s] = M::max(v, best[s]);
      }
      const __m512i cand =
          _mm512_add_epi8(_mm512_loadu_si512(rb[a] + t), _mm512_set1_epi8(a * K));
      at = _mm512_mask_blend_epi8(won, at, cand);
    }
    _mm512_storeu_si512(code + t, at);
  }
  return t;
}
#endif

// Whether the window codes of C take row_codes_avx512 / col_codes_avx512 in variant kLevel.
template <class C, int kLevel>
constexpr bool kByteLaneCodes =
    OVERFEAT_CPU_HAVE_AVX2_VARIANT && kLevel >= 2 && C::K >= 2 &&
    std::is_same_v<typename C::code_t, uint8_t>;

// code[t], t < n_dense. Without NaNs (and -0 for the 16-bit floats: needs_full_rule)
// separably on order keys, like the forward's max: the first maximum of each row (rv, rb
// over n_rows positions), then the first row holding the maximum, which is the element the
// row-major scan picks. Otherwise the full rule in window order.
template <class C, int kLevel>
OVERFEAT_CPU_INLINE void nchw_window_codes(const typename C::raw_t* __restrict in,
                                           const NchwGeo& g, int64_t n_rows, int64_t n_dense,
                                           typename C::E::order_t* __restrict rv,
                                           typename C::code_t* __restrict rb,
                                           typename C::code_t* __restrict code) {
  using key_t = typename C::E::order_t;
  using code_t = typename C::code_t;
  using at_t = typename C::select_t;
  const int64_t k = C::K > 0 ? C::K : g.k;
  if (!needs_full_rule<C>(in, n_rows + k - 1)) {
    int64_t t_row = 0, t_col = 0;  // positions done by the AVX-512 passes
#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
    if constexpr (kByteLaneCodes<C, kLevel>) t_row = row_codes_avx512<C>(in, 1, n_rows, rv, rb);
#endif
    for (int64_t t = t_row; t < n_rows; ++t) {
      key_t best = C::E::order(in[t]);
      at_t at = 0;
      for (int64_t b = 1; b < k; ++b) {
        const key_t v = C::E::order(in[t + b]);
        const bool r = v > best;
        best = r ? v : best;
        at = cpu::select(r, static_cast<at_t>(b), at);
      }
      rv[t] = best;
      rb[t] = static_cast<code_t>(at);
    }
#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
    if constexpr (kByteLaneCodes<C, kLevel>) {
      const key_t* rvs[C::K];
      const code_t* rbs[C::K];
      for (int a = 0; a < C::K; ++a) {
        rvs[a] = rv + a * g.W;
        rbs[a] = rb + a * g.W;
      }
      t_col = col_codes_avx512<C>(rvs, rbs, n_dense, code);
    }
#endif
    for (int64_t t = t_col; t < n_dense; ++t) {
      key_t best = rv[t];
      at_t at = rb[t];
      for (int64_t a = 1; a < k; ++a) {
        const key_t v = rv[t + a * g.W];
        const bool r = v > best;
        best = r ? v : best;
        at = cpu::select(r, static_cast<at_t>(a * k + rb[t + a * g.W]), at);
      }
      code[t] = static_cast<code_t>(at);
    }
    return;
  }
  WindowPointers<C, const typename C::raw_t> src(k);
  const typename C::raw_t** s = src.get();
  for (int64_t e = 0; e < k * k; ++e) s[e] = in + (e / k) * g.W + e % k;
  argmax_run<C>(s, k * k, code, n_dense);
}

// The dense gradient map of a group: row y0 < k*Ho of plane c interleaves row y0 / k of
// the k offsets (y0 % k, 0..k-1); other rows and columns are 0.
template <class C>
OVERFEAT_CPU_INLINE void nchw_dense_grads(const typename C::raw_t* go, int64_t offset_stride,
                                          const NchwGeo& g, typename C::key_t* __restrict gd) {
  using raw_t = typename C::raw_t;
  using key_t = typename C::key_t;
  const int64_t k = C::K > 0 ? C::K : g.k;
  for (int64_t c = 0; c < g.G; ++c) {
    for (int64_t y = 0; y < g.H; ++y) {
      key_t* __restrict row = gd + (c * g.H + y) * g.W;
      if (y >= k * g.Ho) {
        std::fill_n(row, g.W, key_t(0));
        continue;
      }
      const raw_t* src = go + (y % k) * k * offset_stride + (c * g.Ho + y / k) * g.Wo;
      if constexpr (C::K > 0) {
        const raw_t* s[C::K];
        for (int dx = 0; dx < C::K; ++dx) s[dx] = src + dx * offset_stride;
        for (int64_t j = 0; j < g.Wo; ++j) {
          for (int dx = 0; dx < C::K; ++dx) row[C::K * j + dx] = C::E::key(s[dx][j]);
        }
      } else {
        for (int64_t j = 0; j < g.Wo; ++j) {
          for (int64_t dx = 0; dx < k; ++dx) row[k * j + dx] = C::E::key(src[dx * offset_stride + j]);
        }
      }
      std::fill(row + k * g.Wo, row + g.W, key_t(0));
    }
  }
}

// gi[p] for the n pixels of a group (code and gd point at its first position). kLevel: the
// ISA variant's (cpu::keep).
template <class C, int kLevel>
OVERFEAT_CPU_INLINE void nchw_gather(const typename C::code_t* code, const typename C::key_t* gd,
                                     const NchwGeo& g, int64_t n,
                                     typename C::raw_t* __restrict gi) {
  using key_t = typename C::key_t;
  if constexpr (C::K > 0) {
    // One base pointer per window row a, the b shifts as constant displacements: with one
    // pointer per term (18 for k = 3) GCC kept them in vector registers and on the stack.
    const typename C::code_t* cr[C::K];
    const key_t* gr[C::K];
    for (int a = 0; a < C::K; ++a) {
      cr[a] = code - a * g.W;
      gr[a] = gd - a * g.W;
    }
    for (int64_t p = 0; p < n; ++p) {
      key_t sum = key_t(0);
      for (int a = C::K - 1; a >= 0; --a) {
        for (int b = C::K - 1; b >= 0; --b) {
          // The gradient is loaded whatever the code: as a conditional load, GCC made it a
          // masked load merging into the previous iteration's register (a loop-carried
          // dependency, through the stack where registers ran out).
          const key_t v = gr[a][p - b];
          sum += cpu::keep<kLevel>(cr[a][p - b] == a * C::K + b, v);
        }
      }
      gi[p] = C::E::from_acc(sum);
    }
  } else {
    const int64_t k = g.k;
    for (int64_t p = 0; p < n; ++p) {
      key_t sum = key_t(0);
      for (int64_t e = k * k - 1; e >= 0; --e) {
        const int64_t q = p - (e / k) * g.W - e % k;
        sum += cpu::keep<kLevel>(code[q] == e, gd[q]);
      }
      gi[p] = C::E::from_acc(sum);
    }
  }
}

#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
// The first n <= L raw elements at p as a vector of L keys (lanes from n on: 0).
template <class C>
OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE __m512i load_keys(const typename C::raw_t* p,
                                                                 int64_t n) {
  if constexpr (C::kSameKey) {
    using V = cpu::Lanes512<sizeof(typename C::raw_t)>;
    return V::load(cpu::first_lanes<sizeof(typename C::raw_t)>(n), p);
  } else {  // 16-bit storage, float keys
    const __m256i h = _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p);
    if constexpr (std::is_same_v<typename C::scalar, c10::Half>) {
      return _mm512_castps_si512(_mm512_cvtph_ps(h));
    } else {
      return _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
    }
  }
}

// nchw_dense_grads with AVX-512 permutes, k >= 2 (GCC writes the interleaved short rows one
// element at a time: 22 % of the k = 3 backward at 17x17 planes), a row's block of k*L
// positions from k*j0 on woven from the k runs' elements j0 .. j0 + L (cpu_permute.h).
// Runs are loaded masked, so lanes past k*Wo come out 0. Rows are written in
// order with whole vectors that may run into the next row (written later); `gd` needs L
// writable keys past the group.
template <class C>
OVERFEAT_CPU_TARGET_AVX512 __attribute__((noinline)) void nchw_dense_grads_permute(
    const typename C::raw_t* go, int64_t offset_stride, NchwGeo g,
    const typename C::Weave& weave, typename C::key_t* gd) {
  using key_t = typename C::key_t;
  constexpr int L = 64 / sizeof(key_t);
  const int k = C::K > 0 ? C::K : weave.k;  // constant: loops unrolled
  const __m512i zero = _mm512_setzero_si512();
  __m512i r[cpu::kMaxPermuteK];
  for (int64_t c = 0; c < g.G; ++c) {
    for (int64_t y = 0; y < g.H; ++y) {
      key_t* row = gd + (c * g.H + y) * g.W;
      int64_t done = 0;  // positions of the row written
      if (y < k * g.Ho) {
        const auto* runs = go + (y % k) * k * offset_stride + (c * g.Ho + y / k) * g.Wo;
        for (int64_t j0 = 0; j0 < g.Wo; j0 += L) {
          const int64_t n = std::min<int64_t>(g.Wo - j0, L);
          for (int dx = 0; dx < k; ++dx) r[dx] = load_keys<C>(runs + dx * offset_stride + j0, n);
          for (int s = 0; s < k && s * L < k * n; ++s) {
            _mm512_storeu_si512(row + k * j0 + s * L, weave.template vector<C::K>(r, s));
            done = k * j0 + (s + 1) * L;
          }
        }
      }
      for (; done < g.W; done += L) _mm512_storeu_si512(row + done, zero);
    }
  }
}
#endif

// One group: codes, gradient map, gather. The map from nchw_dense_grads_permute where
// `weave` (AVX-512 only) is given.
template <class C, int kLevel>
OVERFEAT_CPU_INLINE void nchw_backward_group(const typename C::raw_t* in,
                                             const typename C::raw_t* go, int64_t offset_stride,
                                             typename C::raw_t* gi, NchwGeo g, int64_t n_rows,
                                             int64_t n_dense, typename C::E::order_t* rv,
                                             typename C::code_t* rb, typename C::code_t* code,
                                             typename C::key_t* gd,
                                             const typename C::Weave* weave) {
  nchw_window_codes<C, kLevel>(in, g, n_rows, n_dense, rv, rb, code);
#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
  if (weave != nullptr) {
    nchw_dense_grads_permute<C>(go, offset_stride, g, *weave, gd);
  } else
#endif
  {
    nchw_dense_grads<C>(go, offset_stride, g, gd);
  }
  nchw_gather<C, kLevel>(code, gd, g, g.G * g.H * g.W, gi);
}
OVERFEAT_CPU_MULTIVERSION_LEVEL(nchw_backward_group)

template <typename scalar_t, int K>
void nchw_backward(const at::Tensor& grad_output, const at::Tensor& input,
                   at::Tensor& grad_input, const PoolGeometry& pg) {
  using C = Cfg<scalar_t, K>;
  using raw_t = typename C::raw_t;
  using key_t = typename C::key_t;
  const NchwGeo g = nchw_geo(pg, kBackwardGroupElems);
  const int64_t k = pg.k, Cn = pg.in.c;
  const int64_t plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
  const int64_t margin = (k - 1) * g.W + k - 1;
  const auto* in = static_cast<const raw_t*>(input.const_data_ptr());
  const auto* go = static_cast<const raw_t*>(grad_output.const_data_ptr());
  auto* gi = static_cast<raw_t*>(grad_input.mutable_data_ptr());
  const int64_t groups = ceil_div(Cn, g.G);
  const int64_t grain = std::max<int64_t>(1, kTaskElems / (g.G * plane_in));
  // Permutes for rows shorter than a vector only: no gain measured on longer rows (k = 2,
  // [8, 256, 56, 56]), where the compiler's loop writes whole vectors.
  const bool permute_grads =
      cpu::has_avx512() && k >= 2 && k <= cpu::kMaxPermuteK &&
      g.Wo < 64 / static_cast<int64_t>(sizeof(key_t));
  at::parallel_for(0, pg.in.n * groups, grain, [&](int64_t begin, int64_t end) {
    const typename C::Weave* weave = nullptr;  // its index table, once per task
#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
    std::optional<typename C::Weave> table;
    if (permute_grads) weave = &table.emplace(static_cast<int>(k));
#endif
    std::vector<typename C::E::order_t> rv(g.G * plane_in);
    std::vector<typename C::code_t> rb(g.G * plane_in);
    // Codes past a group's last window keep what an earlier group left: they only meet
    // gradients 0.
    std::vector<typename C::code_t> code(margin + g.G * plane_in, 0);
    // + 64: nchw_dense_grads_permute's whole vectors may run past the group.
    std::vector<key_t> gd(margin + g.G * plane_in + (permute_grads ? 64 : 0), key_t(0));
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / groups, c0 = (p % groups) * g.G;
      NchwGeo gg = g;
      gg.G = std::min(g.G, Cn - c0);
      const int64_t first = n * Cn + c0;
      const int64_t n_dense = (gg.G - 1) * plane_in + (k * g.Ho - 1) * g.W + k * g.Wo;
      nchw_backward_group_run<C>(in + first * plane_in, go + (n * k * k * Cn + c0) * plane_out,
                                 Cn * plane_out, gi + first * plane_in, gg,
                                 n_dense + (k - 1) * g.W, n_dense, rv.data(), rb.data(),
                                 code.data() + margin, gd.data() + margin, weave);
    }
  });
}

// ---------------------------------------------------------------------------------------
// channels_last: every pixel is a contiguous run of channels, the vector lanes below; all
// lanes of a run share the pixel, so row maxima, window maxima and gradient terms are whole
// runs. Tensors are [N, H, W, C] in memory; outputs [N*k*k, Ho, Wo, C].

struct ClGeo {
  int64_t H, W, C, k, Ho, Wo;
};

// Channel blocks of the channels_last kernels: up to 1024 channels (a window's runs are
// long, the pointer arithmetic per pixel amortised: the backward ran 1.7x faster than with
// 128 at [8, 512, 28, 28], k = 2), as long as `rings` rows of k*Wo positions of 4-byte
// lanes stay within about 1 MiB. A multiple of 64 channels: GCC vectorises the channel loops
// 64 lanes at a time (one vector of byte codes) and ends a run with a scalar loop (9
// branches per channel in the k = 3 gather); blocks of 688 channels (43 vectors of 16) made
// the bfloat16 backward at [1, 1024, 35, 44] 1.4x slower than blocks of 640.
int64_t cl_channel_block(const PoolGeometry& pg, int64_t rings) {
  const int64_t ring_bytes = rings * pg.k * pg.out.w * 4;
  return std::min(pg.in.c,
                  std::clamp<int64_t>((int64_t{1} << 20) / ring_bytes / 64 * 64, 64, 1024));
}

// A tile: rows [y0, y1) and channels [c0, c0 + cn) of image n.
struct ClTile {
  int64_t n, y0, y1, c0, cn;
};

// Row maxima of input row y over its window positions x0 < k*Wo, on order keys: rv (value),
// rb (b of the first maximum, if kIndex); true if the row's channel block holds a value that
// needs the full rule (needs_full_rule: a NaN, or a -0 for the 16-bit floats).
template <class C, bool kIndex, int kLevel = 0>
OVERFEAT_CPU_INLINE bool cl_row_max(const typename C::raw_t* row, const ClGeo& g, int64_t cn,
                                    typename C::E::order_t* __restrict rv,
                                    typename C::code_t* __restrict rb) {
  using key_t = typename C::E::order_t;
  const int64_t k = C::K > 0 ? C::K : g.k;
  FullRuleScan<C> scan;
  for (int64_t x = 0; x < g.W; ++x) scan.add(row + x * g.C, cn);
  for (int64_t x0 = 0; x0 < k * g.Wo; ++x0) {
    const typename C::raw_t* px = row + x0 * g.C;
    int64_t c = 0;
#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
    if constexpr (kIndex && kByteLaneCodes<C, kLevel>) {
      c = row_codes_avx512<C>(px, g.C, cn, rv + x0 * cn, rb + x0 * cn);
    }
#endif
    for (; c < cn; ++c) {
      key_t best = C::E::order(px[c]);
      int32_t at = 0;
      for (int64_t b = 1; b < k; ++b) {
        const key_t v = C::E::order(px[b * g.C + c]);
        const bool r = v > best;
        best = r ? v : best;
        if constexpr (kIndex) at = cpu::select(r, static_cast<int32_t>(b), at);
      }
      rv[x0 * cn + c] = best;
      if constexpr (kIndex) rb[x0 * cn + c] = static_cast<typename C::code_t>(at);
    }
  }
  return scan.needed();
}

// Brings the rings of row maxima (slot y % k of `ring` elements in rv, and rb if kIndex) up
// to input row wy + k - 1, from row *maxed on; true if one of rows wy .. wy + k - 1 holds a
// NaN (nan_ring: per slot).
template <class C, bool kIndex, int kLevel = 0>
OVERFEAT_CPU_INLINE bool cl_fill_rings(const typename C::raw_t* img, const ClGeo& g,
                                       const ClTile& t, int64_t wy, int64_t ring,
                                       typename C::E::order_t* rv, typename C::code_t* rb,
                                       char* nan_ring,
                                       int64_t* maxed) {
  const int64_t k = C::K > 0 ? C::K : g.k;
  for (; *maxed < wy + k; ++*maxed) {
    const int64_t slot = *maxed % k;
    nan_ring[slot] =
        cl_row_max<C, kIndex, kLevel>(img + *maxed * g.W * g.C + t.c0, g, t.cn, rv + slot * ring,
                                      kIndex ? rb + slot * ring : nullptr);
  }
  bool nan = false;
  for (int64_t a = 0; a < k; ++a) nan = nan || nan_ring[(wy + a) % k];
  return nan;
}

// The forward over window rows [t.y0, t.y1) (whole output rows): the max of the window
// starting at (wy, x0) is the max over a of the row maxima of rows wy + a at x0 (the
// separable order picks the row-major rule's element when there is no NaN; see the NCHW
// forward), as order keys kept for the last k input rows in a ring `rv`. Windows over a row
// holding a NaN (or a -0, needs_full_rule) take the full rule. Window (wy, x0) is output
// (wy / k, x0 / k) of offset (wy % k, x0 % k).
template <class C>
OVERFEAT_CPU_INLINE void cl_forward_tile(const typename C::raw_t* img, typename C::raw_t* out,
                                         ClGeo g, ClTile t, typename C::E::order_t* rv) {
  using raw_t = typename C::raw_t;
  using key_t = typename C::E::order_t;
  const int64_t k = C::K > 0 ? C::K : g.k;
  const int64_t ring = k * g.Wo * t.cn;
  std::vector<char> nan_ring(k);  // per ring slot: that input row needs the full rule
  WindowPointers<C, const key_t> rvw(k);
  WindowPointers<C, const raw_t> src(k);
  const key_t** rvs = rvw.get();
  const raw_t** s = src.get();
  int64_t maxed = t.y0;  // input rows [t.y0, maxed) have row maxima in the ring
  for (int64_t wy = t.y0; wy < t.y1; ++wy) {
    const bool nan = cl_fill_rings<C, false>(img, g, t, wy, ring, rv, nullptr,
                                             nan_ring.data(), &maxed);
    for (int64_t a = 0; a < k; ++a) rvs[a] = rv + ((wy + a) % k) * ring;
    for (int64_t x0 = 0; x0 < k * g.Wo; ++x0) {
      raw_t* __restrict o =
          out + ((offset_batch(t.n, wy % k, x0 % k, k) * g.Ho + wy / k) * g.Wo + x0 / k) * g.C +
          t.c0;
      if (nan) {
        for (int64_t e = 0; e < k * k; ++e) {
          s[e] = img + ((wy + e / k) * g.W + x0 + e % k) * g.C + t.c0;
        }
        max_run<C>(s, k * k, o, t.cn);
        continue;
      }
      for (int64_t c = 0; c < t.cn; ++c) {
        key_t best = rvs[0][x0 * t.cn + c];
        for (int64_t a = 1; a < k; ++a) {
          const key_t v = rvs[a][x0 * t.cn + c];
          best = std::max(best, v);  // = v > best ? v : best; this form GCC vectorises for k = 2
        }
        o[c] = C::E::from_order(best);
      }
    }
  }
}
OVERFEAT_CPU_MULTIVERSION(cl_forward_tile)

// Tasks (n, band of output rows, channel block): bands only when whole images leave
// threads idle (their k - 1 shared input rows get row maxima twice), about `per_thread`
// tasks per thread. at::parallel_for hands each thread one contiguous range of tasks, so
// more tasks than threads balance nothing and only add shared rows: the forward takes one
// per thread (f32, 2 threads, [1, 1024, 35, 44], k = 3: 0.29-0.31 -> 0.27 ms). The
// backward keeps four (with one, 0.84-0.95 -> 0.93-1.06 ms at that shape).
struct ClTasks {
  int64_t cb, c_tiles, rows, r_count;
  ClTasks(const PoolGeometry& pg, int64_t rings, int64_t band_rows, int64_t unit,
          int64_t per_thread) {
    cb = cl_channel_block(pg, rings);
    c_tiles = ceil_div(pg.in.c, cb);
    const int64_t want = per_thread * at::get_num_threads();
    const int64_t r_tiles =
        std::min(band_rows, std::max<int64_t>(1, ceil_div(want, pg.in.n * c_tiles)));
    rows = unit * ceil_div(band_rows, r_tiles);
    r_count = ceil_div(band_rows * unit, rows);
  }
  int64_t count(const PoolGeometry& pg) const { return pg.in.n * r_count * c_tiles; }
  ClTile tile(int64_t p, int64_t limit, int64_t C) const {
    const int64_t ct = p % c_tiles, rt = (p / c_tiles) % r_count, n = p / (c_tiles * r_count);
    ClTile t{n, rt * rows, std::min(limit, (rt + 1) * rows), ct * cb, 0};
    t.cn = std::min(cb, C - t.c0);
    return t;
  }
};

template <typename scalar_t, int K>
void cl_forward(const at::Tensor& input, at::Tensor& out, const PoolGeometry& pg) {
  using C = Cfg<scalar_t, K>;
  using raw_t = typename C::raw_t;
  const ClGeo g{pg.in.h, pg.in.w, pg.in.c, pg.k, pg.out.h, pg.out.w};
  const ClTasks tasks(pg, pg.k, g.Ho, g.k, 1);  // bands of whole output rows: k window rows
  const auto* in = static_cast<const raw_t*>(input.const_data_ptr());
  auto* o = static_cast<raw_t*>(out.mutable_data_ptr());
  at::parallel_for(0, tasks.count(pg), 1, [&](int64_t begin, int64_t end) {
    std::vector<typename C::E::order_t> rv(g.k * g.k * g.Wo * tasks.cb);
    for (int64_t p = begin; p < end; ++p) {
      const ClTile t = tasks.tile(p, g.k * g.Ho, g.C);
      cl_forward_tile_run<C>(in + t.n * g.H * g.W * g.C, o, g, t, rv.data());
    }
  });
}

// The backward, as the NCHW one (codes of every window position, then a gather in the
// order of index_math.h), with channel runs as the vector lanes: all lanes of a run share
// the pixel, so the k*k terms of a pixel are k*k runs. A tile is rows [y0, y1) and channels
// [c0, c0 + cn) of image n; it computes the codes of the windows starting in rows
// y0 - k + 1 .. y1 - 1 (windows starting above y0 are computed by two tiles), keeping the
// last k rows of row maxima and of codes in rings.

// Codes of the windows starting in row wy: from the row maxima of rows wy .. wy+k-1
// (rv[a], rb[a]), or, if `rows` (input rows wy ..) need it (a NaN, a 16-bit -0), by the
// full rule.
template <class C, int kLevel>
OVERFEAT_CPU_INLINE void cl_code_row(const typename C::raw_t* rows, const ClGeo& g, int64_t cn,
                                     const typename C::E::order_t* const* rv,
                                     const typename C::code_t* const* rb, bool nan,
                                     typename C::code_t* __restrict code) {
  using key_t = typename C::E::order_t;
  const int64_t k = C::K > 0 ? C::K : g.k;
  if (!nan) {
    // Position t = x0*cn + c of the row's rings, one run.
    const int64_t n = k * g.Wo * cn;
    int64_t t = 0;
#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
    if constexpr (kByteLaneCodes<C, kLevel>) t = col_codes_avx512<C>(rv, rb, n, code);
#endif
    for (; t < n; ++t) {
      key_t best = rv[0][t];
      int32_t at = rb[0][t];
      for (int64_t a = 1; a < k; ++a) {
        const key_t v = rv[a][t];
        const bool r = v > best;
        best = r ? v : best;
        at = cpu::select(r, static_cast<int32_t>(a * k) + rb[a][t], at);
      }
      code[t] = static_cast<typename C::code_t>(at);
    }
    return;
  }
  WindowPointers<C, const typename C::raw_t> src(k);
  const typename C::raw_t** s = src.get();
  for (int64_t x0 = 0; x0 < k * g.Wo; ++x0) {
    for (int64_t e = 0; e < k * k; ++e) s[e] = rows + ((e / k) * g.W + x0 + e % k) * g.C;
    argmax_run<C>(s, k * k, code + x0 * cn, cn);
  }
}

// grad_input row y of the tile: pixel x sums, for (a, b) descending, the gradient of window
// (y - a, x - b) where its code is a*k + b (codes of window row wy in slot wy % k of `code`,
// `ring` elements each). Terms of positions that start no window read `zeros` (cn
// gradients 0) and any codes.
template <class C, int kLevel>
OVERFEAT_CPU_INLINE void cl_gather_row(const typename C::raw_t* go, const ClGeo& g,
                                       const ClTile& t, int64_t y,
                                       const typename C::code_t* code,
                                       int64_t ring, const typename C::raw_t* zeros,
                                       typename C::raw_t* __restrict out) {
  using raw_t = typename C::raw_t;
  using key_t = typename C::key_t;
  const int64_t k = C::K > 0 ? C::K : g.k;
  WindowPointers<C, const typename C::code_t> cw(k);
  WindowPointers<C, const raw_t> gw(k);
  const typename C::code_t** cs = cw.get();
  const raw_t** gs = gw.get();
  for (int64_t x = 0; x < g.W; ++x) {
    for (int64_t e = k * k - 1; e >= 0; --e) {
      const int64_t s = k * k - 1 - e, wy = y - e / k, wx = x - e % k;
      const bool window = wy >= 0 && wy < k * g.Ho && wx >= 0 && wx < k * g.Wo;
      cs[s] = window ? code + (wy % k) * ring + wx * t.cn : code;
      gs[s] = window ? go + ((offset_batch(t.n, wy % k, wx % k, k) * g.Ho + wy / k) * g.Wo +
                             wx / k) * g.C + t.c0
                     : zeros;
    }
    raw_t* o = out + x * g.C;
    if constexpr (C::K > 0) {
      constexpr int E = C::K * C::K;
      for (int64_t c = 0; c < t.cn; ++c) {
        key_t sum = key_t(0);
        for (int s = 0; s < E; ++s) {
          const key_t v = C::E::key(gs[s][c]);  // unconditional: see nchw_gather
          sum += cpu::keep<kLevel>(cs[s][c] == E - 1 - s, v);
        }
        o[c] = C::E::from_acc(sum);
      }
    } else {
      for (int64_t c = 0; c < t.cn; ++c) {
        key_t sum = key_t(0);
        for (int64_t s = 0; s < k * k; ++s) {
          sum += cpu::keep<kLevel>(cs[s][c] == k * k - 1 - s, C::E::key(gs[s][c]));
        }
        o[c] = C::E::from_acc(sum);
      }
    }
  }
}

// rv, rb: k rings of k*Wo*cn; code: k rings of k*Wo*cn; zeros: cn raw 0.
template <class C, int kLevel>
OVERFEAT_CPU_INLINE void cl_backward_tile(const typename C::raw_t* img,
                                          const typename C::raw_t* go, ClGeo g, ClTile t,
                                          typename C::E::order_t* rv, typename C::code_t* rb,
                                          typename C::code_t* code,
                                          const typename C::raw_t* zeros,
                                          typename C::raw_t* gi_img) {
  using key_t = typename C::E::order_t;
  const int64_t k = C::K > 0 ? C::K : g.k;
  const int64_t ring = k * g.Wo * t.cn;
  const int64_t first = std::max<int64_t>(0, t.y0 - k + 1);  // first window row needed
  const int64_t last = std::min(t.y1, k * g.Ho);             // past the last
  WindowPointers<C, const key_t> rvw(k);
  WindowPointers<C, const typename C::code_t> rbw(k);
  const key_t** rvs = rvw.get();
  const typename C::code_t** rbs = rbw.get();
  std::vector<char> nan_ring(k);  // per ring slot: that input row needs the full rule
  int64_t maxed = first;  // input rows [first, maxed) have row maxima in the rings
  // Row y: the codes of the windows starting in it (if any), then its gradient (if the
  // tile's); the code ring then holds the codes of rows y - k + 1 .. y.
  for (int64_t y = first; y < t.y1; ++y) {
    if (y < last) {
      const bool nan = cl_fill_rings<C, true, kLevel>(img, g, t, y, ring, rv, rb,
                                                      nan_ring.data(), &maxed);
      for (int64_t a = 0; a < k; ++a) {
        rvs[a] = rv + ((y + a) % k) * ring;
        rbs[a] = rb + ((y + a) % k) * ring;
      }
      cl_code_row<C, kLevel>(img + y * g.W * g.C + t.c0, g, t.cn, rvs, rbs, nan,
                             code + (y % k) * ring);
    }
    if (y >= t.y0) cl_gather_row<C, kLevel>(go, g, t, y, code, ring, zeros, gi_img + y * g.W * g.C + t.c0);
  }
}
OVERFEAT_CPU_MULTIVERSION_LEVEL(cl_backward_tile)

template <typename scalar_t, int K>
void cl_backward(const at::Tensor& grad_output, const at::Tensor& input, at::Tensor& grad_input,
                 const PoolGeometry& pg) {
  using C = Cfg<scalar_t, K>;
  using raw_t = typename C::raw_t;
  const ClGeo g{pg.in.h, pg.in.w, pg.in.c, pg.k, pg.out.h, pg.out.w};
  // Bands of any rows; windows starting above a band are computed by two bands.
  const ClTasks tasks(pg, 3 * pg.k, g.H, 1, 4);
  const int64_t ring = g.k * g.Wo * tasks.cb;
  const auto* in = static_cast<const raw_t*>(input.const_data_ptr());
  const auto* go = static_cast<const raw_t*>(grad_output.const_data_ptr());
  auto* gi = static_cast<raw_t*>(grad_input.mutable_data_ptr());
  at::parallel_for(0, tasks.count(pg), 1, [&](int64_t begin, int64_t end) {
    std::vector<typename C::E::order_t> rv(g.k * ring);
    std::vector<typename C::code_t> rb(g.k * ring), code(g.k * ring, 0);
    const std::vector<raw_t> zeros(tasks.cb, raw_t{});
    for (int64_t p = begin; p < end; ++p) {
      const ClTile t = tasks.tile(p, g.H, g.C);
      cl_backward_tile_run<C>(in + t.n * g.H * g.W * g.C, go, g, t, rv.data(), rb.data(),
                              code.data(), zeros.data(), gi + t.n * g.H * g.W * g.C);
    }
  });
}

// ---------------------------------------------------------------------------------------
// The general path: any strides, one element at a time (index_math.h).

void forward_general(const at::Tensor& input, at::Tensor& out, const PoolGeometry& g, bool cl) {
  const Strides4 in_s = strides4(input);
  OVERFEAT_DISPATCH_FLOATING(input.scalar_type(), "offset_max_pool2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, out.numel(), kGrain, [&](int64_t begin, int64_t end) {
      Coord4 c = unravel(begin, g.out, cl);
      for (int64_t idx = begin; idx < end; ++idx, advance(c, g.out, cl)) {
        o[idx] = offset_pool_forward_element<scalar_t, acc_t>(in, in_s, g, c);
      }
    });
  });
}

void backward_general(const at::Tensor& grad_output, const at::Tensor& input,
                      at::Tensor& grad_input, const PoolGeometry& g, bool cl) {
  const Strides4 in_s = strides4(input), go_s = strides4(grad_output);
  OVERFEAT_DISPATCH_FLOATING(input.scalar_type(), "offset_max_pool2d_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, grad_input.numel(), kGrain, [&](int64_t begin, int64_t end) {
      Coord4 c = unravel(begin, g.in, cl);
      for (int64_t idx = begin; idx < end; ++idx, advance(c, g.in, cl)) {
        gi[idx] = offset_pool_backward_element<scalar_t, acc_t>(go, go_s, in, in_s, g, c);
      }
    });
  });
}

// The fast paths need the input dense in the memory format the output takes.
bool dense_in_own_format(const at::Tensor& t, bool cl) {
  return t.is_contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

at::Tensor offset_max_pool2d_cpu(const at::Tensor& input, int64_t kernel_size) {
  const PoolGeometry g = check_offset_pool_args(input, kernel_size, "offset_max_pool2d");
  at::Tensor out = empty_in_format_of({g.out.n, g.out.c, g.out.h, g.out.w}, input);
  if (out.numel() == 0) return out;
  const bool cl = is_channels_last(input);
  if (!dense_in_own_format(input, cl)) {
    forward_general(input, out, g, cl);
    return out;
  }
  OVERFEAT_DISPATCH_FLOATING(input.scalar_type(), "offset_max_pool2d_cpu", [&] {
    k_switch(g.k, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      if (cl) {
        cl_forward<scalar_t, K>(input, out, g);
      } else {
        nchw_forward<scalar_t, K>(input, out, g);
      }
    });
  });
  return out;
}

at::Tensor offset_max_pool2d_backward_cpu(const at::Tensor& grad_output,
                                          const at::Tensor& input, int64_t kernel_size) {
  const PoolGeometry g = check_offset_pool_backward_args(grad_output, input, kernel_size);
  at::Tensor grad_input = empty_in_format_of(input.sizes(), input);
  if (grad_input.numel() == 0) return grad_input;
  const bool cl = is_channels_last(input);
  if (!dense_in_own_format(input, cl)) {
    backward_general(grad_output, input, grad_input, g, cl);
    return grad_input;
  }
  // One copy of a gradient in another layout is cheaper than the general path.
  const at::Tensor go = grad_output.contiguous(input.suggest_memory_format());
  OVERFEAT_DISPATCH_FLOATING(input.scalar_type(), "offset_max_pool2d_backward_cpu", [&] {
    k_switch(g.k, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      if (cl) {
        cl_backward<scalar_t, K>(go, input, grad_input, g);
      } else {
        nchw_backward<scalar_t, K>(go, input, grad_input, g);
      }
    });
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(overfeat_kernels, CPU, m) {
  m.impl("offset_max_pool2d", cpu_or_simulated<kOffsetMaxPool2d, &offset_max_pool2d_cpu>());
  m.impl("offset_max_pool2d_backward", cpu_or_simulated<kOffsetMaxPool2dBackward, &offset_max_pool2d_backward_cpu>());
}

}  // namespace overfeat_kernels
