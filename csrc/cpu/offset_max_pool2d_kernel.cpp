// Offset max-pooling on the CPU.
//
// Dense NCHW and channels_last inputs take fast paths that run over contiguous inner runs
// (W for NCHW, C for channels_last) with loops the compiler vectorises (cpu_simd.h);
// anything else (strided views) takes the general path, one element at a time through the
// per-element math of index_math.h. Both give the same bits: window elements are compared
// in row-major window order with F.max_pool2d's rule, and each input pixel sums its window
// gradients in the fixed order (dy, dx) ascending, by one thread.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../dispatch.h"
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
  using E = Elem<scalar_t>;
  using raw_t = typename E::raw_t;
  using key_t = typename E::key_t;
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

// idx[j] = row-major window position e of the maximum over e of src[e][j].
template <class C>
OVERFEAT_CPU_INLINE void argmax_run(const typename C::raw_t* const* src, int64_t kk2,
                                    int32_t* __restrict idx, int64_t n) {
  using raw_t = typename C::raw_t;
  using key_t = typename C::key_t;
  constexpr int E = C::K * C::K;
  if constexpr (E > 0) {
    const raw_t* s[E];
    for (int e = 0; e < E; ++e) s[e] = src[e];
    for (int64_t j = 0; j < n; ++j) {
      key_t bk = C::E::key(s[0][j]);
      int32_t bi = 0;
      for (int e = 1; e < E; ++e) {
        const key_t kv = C::E::key(s[e][j]);
        const bool r = cpu::replaces(kv, bk);
        bk = r ? kv : bk;
        bi = r ? e : bi;
      }
      idx[j] = bi;
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      key_t bk = C::E::key(src[0][j]);
      int32_t bi = 0;
      for (int64_t e = 1; e < kk2; ++e) {
        const key_t kv = C::E::key(src[e][j]);
        if (cpu::replaces(kv, bk)) {
          bk = kv;
          bi = static_cast<int32_t>(e);
        }
      }
      idx[j] = bi;
    }
  }
}

// ---------------------------------------------------------------------------------------
// NCHW. A plane is first split by phase in both directions into k*k sub-planes of
// (Ho + 1) x (Wo + 1): S[py][px][i][t] = plane[py + k*i][px + k*t]. Window element (a, b)
// of offset (dy, dx) at output (i, j) is then sub-plane ((dy+a) % k, (dx+b) % k) at
// (i + (dy+a) / k, j + (dx+b) / k): for fixed (dy, dx, a, b) one contiguous run over the
// flattened (i, j) of the sub-plane, so every max and argmax below is a single long
// unit-stride loop per offset (rows of padded length Wo + 1, the pad column dropped after).
// G planes (channels) are handled together, their sub-planes of one phase side by side, so
// that the runs stay long when the planes are small; lanes of pad rows and columns compute
// values nobody reads (and add gradients of 0).

struct NchwGeo {
  int64_t H, W, k, Ho, Wo, Hs, Ws;  // Hs, Ws = Ho + 1, Wo + 1: sub-plane extent
  int64_t G;                        // planes handled together
  int64_t sub() const { return Hs * Ws; }
  int64_t phase() const { return G * sub(); }  // distance between the phases' sub-planes
  // Flattened outputs of the G planes, pad rows and columns included.
  int64_t run() const { return (G - 1) * sub() + (Ho - 1) * Ws + Wo; }
};

template <class C>
OVERFEAT_CPU_INLINE void split_phases(const typename C::raw_t* __restrict in, const NchwGeo& g,
                                      typename C::raw_t* __restrict split) {
  using raw_t = typename C::raw_t;
  const int64_t k = C::K > 0 ? C::K : g.k;
  const int64_t full = std::min(g.W / k, g.Ws);  // columns t whose k phases are all inside
  for (int64_t c = 0; c < g.G; ++c)
  for (int64_t py = 0; py < k; ++py) {
    for (int64_t i = 0; i < g.Hs; ++i) {
      const int64_t y = py + k * i;
      raw_t* dst = split + py * k * g.phase() + c * g.sub() + i * g.Ws;
      if (y >= g.H) {  // never read for outputs; filled for tidiness
        for (int64_t px = 0; px < k; ++px) std::fill_n(dst + px * g.phase(), g.Ws, raw_t{});
        continue;
      }
      const raw_t* row = in + c * g.H * g.W + y * g.W;
      if constexpr (C::K > 0) {
        // One pointer per phase: the form the compiler turns into vector permutes.
        raw_t* ph[C::K];
        for (int px = 0; px < C::K; ++px) ph[px] = dst + px * g.phase();
        for (int64_t t = 0; t < full; ++t) {
          for (int px = 0; px < C::K; ++px) ph[px][t] = row[C::K * t + px];
        }
      } else {
        for (int64_t t = 0; t < full; ++t) {
          for (int64_t px = 0; px < k; ++px) dst[px * g.phase() + t] = row[k * t + px];
        }
      }
      for (int64_t t = full; t < g.Ws; ++t) {
        for (int64_t px = 0; px < k; ++px) {
          dst[px * g.phase() + t] = k * t + px < g.W ? row[k * t + px] : raw_t{};
        }
      }
    }
  }
}

// Start of the run of window element (a, b) of offset (dy, dx), for every e = a*k + b.
template <class C>
OVERFEAT_CPU_INLINE void window_runs(const typename C::raw_t* split, const NchwGeo& g,
                                     int64_t k, int64_t dy, int64_t dx,
                                     const typename C::raw_t** src) {
  for (int64_t a = 0; a < k; ++a) {
    for (int64_t b = 0; b < k; ++b) {
      const int64_t qy = dy + a, qx = dx + b;
      src[a * k + b] = split + ((qy % k) * k + qx % k) * g.phase() + (qy / k) * g.Ws + qx / k;
    }
  }
}

// One (n, c) plane: `out` is plane (n*k*k, c) of the output, `offset_stride` the distance
// between the planes of consecutive offsets (C*Ho*Wo). `tmp` holds Ho*(Wo+1) elements.
template <class C>
OVERFEAT_CPU_INLINE void nchw_forward_plane(const typename C::raw_t* in, typename C::raw_t* out,
                                            int64_t offset_stride, NchwGeo g,
                                            typename C::raw_t* split, typename C::raw_t* tmp) {
  using raw_t = typename C::raw_t;
  const int64_t k = C::K > 0 ? C::K : g.k;
  split_phases<C>(in, g, split);
  WindowPointers<C, const raw_t> src(k);
  const raw_t** s = src.get();
  for (int64_t dy = 0; dy < k; ++dy) {
    for (int64_t dx = 0; dx < k; ++dx) {
      window_runs<C>(split, g, k, dy, dx, s);
      max_run<C>(s, k * k, tmp, g.run());
      raw_t* o = out + (dy * k + dx) * offset_stride;
      for (int64_t c = 0; c < g.G; ++c) {
        for (int64_t i = 0; i < g.Ho; ++i) {
          std::memcpy(o + (c * g.Ho + i) * g.Wo, tmp + c * g.sub() + i * g.Ws,
                      g.Wo * sizeof(raw_t));
        }
      }
    }
  }
}
OVERFEAT_CPU_MULTIVERSION(nchw_forward_plane)

// dst[u] += g[u] where idx[u] == e. Adding +0 elsewhere leaves a sum's bits unchanged (a
// sum that starts at +0 is never -0, and NaN + 0 keeps its bits), so every lane takes the
// same branch-free add and each pixel still sums exactly its own windows' gradients.
template <typename key_t>
OVERFEAT_CPU_INLINE void masked_add(key_t* __restrict dst, const int32_t* __restrict idx,
                                    const key_t* __restrict g, int32_t e, int64_t n) {
  for (int64_t u = 0; u < n; ++u) dst[u] += idx[u] == e ? g[u] : key_t(0);
}

// One (n, c) plane of the backward, in the phase-split domain: for each offset, in
// ascending (dy, dx) order, the argmax positions of all its windows (one vector loop over
// the flattened windows), then for each window element (a, b) the gradients of the windows
// whose max it is, added to that element's sub-plane run (again one vector loop). Each
// pixel gets one add per offset, in the general path's order. `acc` (k*k sub-planes) is
// then written back to the plane. `gpad` holds Ho x (Wo + 1) gradients, pad column 0.
template <class C>
OVERFEAT_CPU_INLINE void nchw_backward_plane(const typename C::raw_t* in,
                                             const typename C::raw_t* go, int64_t offset_stride,
                                             typename C::raw_t* gi, NchwGeo g,
                                             typename C::raw_t* split, int32_t* idx,
                                             typename C::key_t* gpad, typename C::key_t* acc) {
  using raw_t = typename C::raw_t;
  using key_t = typename C::key_t;
  const int64_t k = C::K > 0 ? C::K : g.k;
  std::fill(acc, acc + k * k * g.phase(), key_t(0));
  split_phases<C>(in, g, split);
  WindowPointers<C, const raw_t> src(k);
  const raw_t** s = src.get();
  for (int64_t dy = 0; dy < k; ++dy) {
    for (int64_t dx = 0; dx < k; ++dx) {
      window_runs<C>(split, g, k, dy, dx, s);
      argmax_run<C>(s, k * k, idx, g.run());
      const raw_t* gp = go + (dy * k + dx) * offset_stride;
      for (int64_t c = 0; c < g.G; ++c) {
        for (int64_t i = 0; i < g.Ho; ++i) {
          key_t* __restrict drow = gpad + c * g.sub() + i * g.Ws;
          const raw_t* grow = gp + (c * g.Ho + i) * g.Wo;
          for (int64_t j = 0; j < g.Wo; ++j) drow[j] = C::E::key(grow[j]);
        }
      }
      for (int64_t a = 0; a < k; ++a) {
        for (int64_t b = 0; b < k; ++b) {
          const int64_t qy = dy + a, qx = dx + b;
          key_t* dst = acc + ((qy % k) * k + qx % k) * g.phase() + (qy / k) * g.Ws + qx / k;
          masked_add(dst, idx, gpad, static_cast<int32_t>(a * k + b), g.run());
        }
      }
    }
  }
  // Back from the sub-planes: pixel (py + k*i, px + k*t) is sub-plane (py, px) at (i, t).
  // Pixels outside every sub-plane are in no window: 0.
  const int64_t full = std::min(g.W / k, g.Ws);
  for (int64_t c = 0; c < g.G; ++c) {
    for (int64_t y = 0; y < g.H; ++y) {
      raw_t* __restrict row = gi + (c * g.H + y) * g.W;
      const int64_t py = y % k, i = y / k;
      if (i >= g.Hs) {
        std::fill_n(row, g.W, C::E::from_acc(key_t(0)));
        continue;
      }
      const key_t* sub = acc + py * k * g.phase() + c * g.sub() + i * g.Ws;
      for (int64_t t = 0; t < full; ++t) {
        for (int64_t px = 0; px < k; ++px) {
          row[k * t + px] = C::E::from_acc(sub[px * g.phase() + t]);
        }
      }
      for (int64_t x = k * full; x < g.W; ++x) {
        const int64_t t = x / k;
        row[x] = C::E::from_acc(t < g.Ws ? sub[(x % k) * g.phase() + t] : key_t(0));
      }
    }
  }
}
OVERFEAT_CPU_MULTIVERSION(nchw_backward_plane)

// Planes per group: about kGroupElems input elements (the group's buffers stay in L2).
constexpr int64_t kGroupElems = 8192;

NchwGeo nchw_geo(const PoolGeometry& g) {
  const int64_t group = std::clamp<int64_t>(kGroupElems / (g.in.h * g.in.w), 1, g.in.c);
  return {g.in.h, g.in.w, g.k, g.out.h, g.out.w, g.out.h + 1, g.out.w + 1, group};
}

// The NCHW forward without NaNs. The window max of offset (dy, dx) at output (i, j) is
// the dense stride-1 k x k max D at pixel (dy + k*i, dx + k*j). D is computed separably
// over the flattened group of G planes: row maxima R[t] = max_b x[t + b], then
// D[t] = max_a R[t + a*W], each one long unit-stride loop whatever the plane size (lanes
// at row and plane edges mix neighbouring rows or planes; no output reads them). The
// rows y = dy + k*i of D are then split by column phase into the offsets' outputs.
//
// Without NaNs, F.max_pool2d's rule is `later > running ? later : running` (ties keep the
// first element), one maxps, and the separable order picks the same element as the
// row-major one: the first row holding the maximum, and the first maximum in that row.
// Groups holding a NaN take the phase-split path above, which applies the full rule.

template <class C>
OVERFEAT_CPU_INLINE bool any_nan(const typename C::raw_t* __restrict x, int64_t n) {
  typename C::E::bits_t m = 0;
  for (int64_t t = 0; t < n; ++t) m = std::max(m, C::E::magnitude(x[t]));
  return m > C::E::kInf;
}

// The key of a raw element, or a key itself.
template <class C, typename S>
OVERFEAT_CPU_INLINE typename C::key_t key(S v) {
  if constexpr (std::is_same_v<S, typename C::key_t>) {
    return v;
  } else {
    return C::E::key(v);
  }
}

// d[t] = max over s < k of src[t + s*step] (in s order, maxps form), t < n. S and D are
// raw_t or key_t: keys are taken on loading and (exact without NaNs) converted back on
// storing as needed.
template <class C, typename S, typename D>
OVERFEAT_CPU_INLINE void fold_max(const S* __restrict src, int64_t step, int64_t k,
                                  D* __restrict d, int64_t n) {
  using key_t = typename C::key_t;
  const int64_t kk = C::K > 0 ? C::K : k;  // a constant: the s loop unrolled
  for (int64_t t = 0; t < n; ++t) {
    key_t best = key<C>(src[t]);
    for (int64_t s = 1; s < kk; ++s) {
      const key_t v = key<C>(src[t + s * step]);
      best = v > best ? v : best;
    }
    if constexpr (std::is_same_v<D, key_t>) {
      d[t] = best;
    } else {
      d[t] = C::E::to_raw(best);
    }
  }
}

// D of a group (above) as raw elements, or *nan = true (and D unset) if an input element
// that D would read is a NaN. `rows` holds n_rows keys, `dense` n_dense raw elements.
template <class C>
OVERFEAT_CPU_INLINE void nchw_dense_max(const typename C::raw_t* in, NchwGeo g, int64_t n_rows,
                                        int64_t n_dense, typename C::key_t* rows,
                                        typename C::raw_t* dense, bool* nan) {
  const int64_t k = C::K > 0 ? C::K : g.k;
  *nan = any_nan<C>(in, n_rows + k - 1);
  if (*nan) return;
  fold_max<C>(in, 1, k, rows, n_rows);
  fold_max<C>(rows, g.W, k, dense, n_dense);
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

#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
// nchw_split_offsets with AVX-512 permutes (GCC does not vectorise the short strided rows):
// 64 bytes of output lanes j come from the k vectors holding D[y][k*j0 .. k*j0 + k*L), lane
// j from position p = dx + k*j, picked by a chain of k - 1 two-source permutes (step s
// takes the lanes whose p lies in vector s + 1). Reads up to k*L elements past a row's
// last used element: `d` must have that many readable elements after D.
constexpr int kMaxPermuteK = 8;

template <class C>
OVERFEAT_CPU_TARGET_AVX512 __attribute__((noinline)) void nchw_split_offsets_permute(
    const typename C::raw_t* d, typename C::raw_t* out, int64_t offset_stride, NchwGeo g) {
  using T = typename C::raw_t;
  using V = cpu::Lanes512<sizeof(T)>;
  using index_t = typename V::index_t;
  constexpr int L = 64 / sizeof(T);
  const int k = C::K > 0 ? C::K : static_cast<int>(g.k);  // constant: loops unrolled
  // idx[dx][s]: step s of offset dx's chain; step 0 picks from vectors 0 and 1, step s > 0
  // from the chain so far (lane j, kept) and vector s + 1.
  alignas(64) index_t idx[kMaxPermuteK][kMaxPermuteK][L];
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
  __m512i v[kMaxPermuteK];
  for (int64_t c = 0; c < g.G; ++c) {
    for (int64_t y = 0; y < k * g.Ho; ++y) {
      const T* row = d + (c * g.H + y) * g.W;
      T* o = out + (y % k) * k * offset_stride + (c * g.Ho + y / k) * g.Wo;
      // An offset's rows are written in order, so a store may run past its row into the
      // next ones (written later); masked only where it would leave the group's output.
      const int64_t pos = (c * g.Ho + y / k) * g.Wo, end = g.G * g.Ho * g.Wo;
      for (int64_t j0 = 0; j0 < g.Wo; j0 += L) {
        const int64_t left = g.Wo - j0;
        const bool full = pos + j0 + L <= end;
        const auto m = cpu::first_lanes<sizeof(T)>(std::min<int64_t>(left, L));
        for (int s = 0; s < k; ++s) v[s] = _mm512_loadu_si512(row + k * j0 + s * L);
        for (int dx = 0; dx < k; ++dx) {
          __m512i t = v[0];
          for (int s = 0; s + 1 < k; ++s) {
            const __m512i i = _mm512_load_si512(idx[dx][s]);
            t = V::permute(t, i, v[s + 1]);
          }
          if (full) {
            _mm512_storeu_si512(o + dx * offset_stride + j0, t);
          } else {
            V::store(o + dx * offset_stride + j0, m, t);
          }
        }
      }
    }
  }
}
#endif

template <typename scalar_t, int K>
void nchw_forward(const at::Tensor& input, at::Tensor& out, const PoolGeometry& pg) {
  using C = Cfg<scalar_t, K>;
  using raw_t = typename C::raw_t;
  using key_t = typename C::key_t;
  const NchwGeo g = nchw_geo(pg);
  const int64_t k = pg.k, Cn = pg.in.c;
  const int64_t plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
  const auto* in = static_cast<const raw_t*>(input.const_data_ptr());
  auto* o = static_cast<raw_t*>(out.mutable_data_ptr());
  const int64_t groups = ceil_div(Cn, g.G);
  const int64_t grain = std::max<int64_t>(1, kTaskElems / (g.G * plane_in));
  at::parallel_for(0, pg.in.n * groups, grain, [&](int64_t begin, int64_t end) {
    std::vector<raw_t> split, tmp;  // for groups with NaNs
    std::vector<key_t> rows(g.G * plane_in);
    // + k*64: the AVX-512 split reads up to k vectors (of at most 64 elements) past D.
    std::vector<raw_t> dense(g.G * plane_in + k * 64);
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
      bool nan = false;
      nchw_dense_max_run<C>(src, gg, n_rows, n_dense, rows.data(), dense.data(), &nan);
      if (nan) {
        split.resize(k * k * g.phase());
        tmp.resize(g.phase());
        nchw_forward_plane_run<C>(src, dst, Cn * plane_out, gg, split.data(), tmp.data());
        continue;
      }
#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
      if (cpu::has_avx512() && k <= kMaxPermuteK) {
        nchw_split_offsets_permute<C>(dense.data(), dst, Cn * plane_out, gg);
        continue;
      }
#endif
      nchw_split_offsets_run<C>(dense.data(), dst, Cn * plane_out, gg);
    }
  });
}

template <typename scalar_t, int K>
void nchw_backward(const at::Tensor& grad_output, const at::Tensor& input,
                   at::Tensor& grad_input, const PoolGeometry& pg) {
  using C = Cfg<scalar_t, K>;
  using raw_t = typename C::raw_t;
  using key_t = typename C::key_t;
  const NchwGeo g = nchw_geo(pg);
  const int64_t k = pg.k, Cn = pg.in.c;
  const int64_t plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
  const auto* in = static_cast<const raw_t*>(input.const_data_ptr());
  const auto* go = static_cast<const raw_t*>(grad_output.const_data_ptr());
  auto* gi = static_cast<raw_t*>(grad_input.mutable_data_ptr());
  const int64_t groups = ceil_div(Cn, g.G);
  const int64_t grain = std::max<int64_t>(1, kTaskElems / (g.G * plane_in));
  at::parallel_for(0, pg.in.n * groups, grain, [&](int64_t begin, int64_t end) {
    std::vector<raw_t> split(k * k * g.phase());
    std::vector<int32_t> idx(g.phase());
    std::vector<key_t> gpad(g.phase(), key_t(0));  // pad rows and columns stay 0
    std::vector<key_t> acc(k * k * g.phase());
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / groups, c0 = (p % groups) * g.G;
      NchwGeo gg = g;
      gg.G = std::min(g.G, Cn - c0);
      const int64_t first = n * Cn + c0;
      const raw_t* gop = go + (n * k * k * Cn + c0) * plane_out;
      nchw_backward_plane_run<C>(in + first * plane_in, gop, Cn * plane_out,
                                 gi + first * plane_in, gg, split.data(), idx.data(),
                                 gpad.data(), acc.data());
    }
  });
}

// ---------------------------------------------------------------------------------------
// channels_last: every window element is a contiguous run of channels, so a window max is
// a vertical max of k*k runs. Tensors are [N, H, W, C] in memory; outputs [N*k*k, Ho, Wo, C].

struct ClGeo {
  int64_t H, W, C, k, Ho, Wo;
};

// Channels per block: the runs of a window and of its neighbours along j stay in L1.
int64_t cl_channel_block(int64_t C, int64_t elem_bytes) {
  const int64_t cb = 512 / elem_bytes;  // 128 floats
  return C <= cb ? C : cb;
}

// Output row i, channels [c0, c0 + cn), of every offset of image n (input rows k*i ..
// k*i + 2k - 2). Windows are visited along j with all offsets of a position together, so
// the 2k-1 x 2k-1 input runs they share are read from memory once.
template <class C>
OVERFEAT_CPU_INLINE void cl_forward_row(const typename C::raw_t* img, typename C::raw_t* out,
                                        ClGeo g, int64_t n, int64_t i, int64_t c0, int64_t cn) {
  using raw_t = typename C::raw_t;
  const int64_t k = C::K > 0 ? C::K : g.k;
  WindowPointers<C, const raw_t> src(k);
  const raw_t** s = src.get();
  for (int64_t j = 0; j < g.Wo; ++j) {
    for (int64_t dy = 0; dy < k; ++dy) {
      for (int64_t dx = 0; dx < k; ++dx) {
        for (int64_t a = 0; a < k; ++a) {
          const raw_t* row = img + (dy + k * i + a) * g.W * g.C + c0;
          for (int64_t b = 0; b < k; ++b) s[a * k + b] = row + (dx + k * j + b) * g.C;
        }
        raw_t* o = out + ((offset_batch(n, dy, dx, k) * g.Ho + i) * g.Wo + j) * g.C + c0;
        max_run<C>(s, k * k, o, cn);
      }
    }
  }
}
OVERFEAT_CPU_MULTIVERSION(cl_forward_row)

template <typename scalar_t, int K>
void cl_forward(const at::Tensor& input, at::Tensor& out, const PoolGeometry& pg) {
  using C = Cfg<scalar_t, K>;
  using raw_t = typename C::raw_t;
  const ClGeo g{pg.in.h, pg.in.w, pg.in.c, pg.k, pg.out.h, pg.out.w};
  const int64_t cb = cl_channel_block(g.C, sizeof(raw_t));
  const int64_t c_tiles = ceil_div(g.C, cb);
  const auto* in = static_cast<const raw_t*>(input.const_data_ptr());
  auto* o = static_cast<raw_t*>(out.mutable_data_ptr());
  const int64_t grain = std::max<int64_t>(1, kTaskElems / (g.k * g.W * cb));
  // Tasks (n, channel block, i), i fastest: a thread's consecutive rows share input rows.
  at::parallel_for(0, pg.in.n * c_tiles * g.Ho, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t i = t % g.Ho, ct = (t / g.Ho) % c_tiles, n = t / (g.Ho * c_tiles);
      const int64_t c0 = ct * cb, cn = std::min(cb, g.C - c0);
      cl_forward_row_run<C>(in + n * g.H * g.W * g.C, o, g, n, i, c0, cn);
    }
  });
}

// A tile of the backward: rows [y0, y1) (y0 a multiple of k) and channels [c0, c0 + cn) of
// image n. The tile's thread visits every window that overlaps the tile (windows that
// straddle two tiles are visited by both, each adding only to its own rows), so each pixel
// is summed by one thread. A pixel's windows are visited in (dy, dx) ascending order: for a
// pixel, a larger dy means a smaller (or equal) window row i, and a larger dx a smaller
// window column j, so visiting i and j descending with dy and dx ascending inside keeps
// that order while neighbouring windows (sharing input runs) are visited together.
// acc[(y - y0)*W*acc_px + x*acc_px + c]; for float and double acc points into grad_input.
template <class C>
OVERFEAT_CPU_INLINE void cl_backward_tile(const typename C::raw_t* img,
                                          const typename C::raw_t* go, ClGeo g, int64_t n,
                                          int64_t y0, int64_t y1, int64_t c0, int64_t cn,
                                          typename C::key_t* acc, int64_t acc_px,
                                          int32_t* idx, typename C::key_t* sink,
                                          typename C::key_t* gbuf) {
  using raw_t = typename C::raw_t;
  using key_t = typename C::key_t;
  const int64_t k = C::K > 0 ? C::K : g.k;
  // Rows are zeroed just before the first window that adds to them (i descending), so
  // they are still in cache when the adds come.
  int64_t zeroed_from = y1;
  auto zero_rows = [&](int64_t from) {
    for (int64_t y = from; y < zeroed_from; ++y) {
      for (int64_t x = 0; x < g.W; ++x) {
        std::fill_n(acc + ((y - y0) * g.W + x) * acc_px, cn, key_t(0));
      }
    }
    zeroed_from = std::min(zeroed_from, from);
  };
  WindowPointers<C, const raw_t> src(k);
  WindowPointers<C, key_t> dst(k);
  const raw_t** s = src.get();
  key_t** d = dst.get();
  // Windows (dy, i) meet [y0, y1) iff dy + k*i <= y1 - 1 and dy + k*i + k - 1 >= y0.
  const int64_t i_top = std::min<int64_t>(g.Ho - 1, (y1 - 1) / k);
  zero_rows(std::max(y0, std::min(y1, k * i_top + 2 * k - 1)));  // below every window
  for (int64_t i = i_top; i >= 0; --i) {
    if (k * i + 2 * k - 2 < y0) break;
    zero_rows(std::max(y0, k * i));
    for (int64_t dy = 0; dy < k; ++dy) {
      const int64_t ya = dy + k * i;
      if (ya > y1 - 1 || ya + k - 1 < y0) continue;
      for (int64_t j = g.Wo - 1; j >= 0; --j) {
        for (int64_t dx = 0; dx < k; ++dx) {
          for (int64_t a = 0; a < k; ++a) {
            const int64_t y = ya + a;
            const raw_t* row = img + y * g.W * g.C + c0;
            const bool mine = y >= y0 && y < y1;
            for (int64_t b = 0; b < k; ++b) {
              const int64_t x = dx + k * j + b;
              s[a * k + b] = row + x * g.C;
              d[a * k + b] = mine ? acc + ((y - y0) * g.W + x) * acc_px : sink;
            }
          }
          argmax_run<C>(s, k * k, idx, cn);
          const raw_t* gr = go + ((offset_batch(n, dy, dx, k) * g.Ho + i) * g.Wo + j) * g.C + c0;
          const key_t* gk;
          if constexpr (C::kSameKey) {
            gk = gr;
          } else {
            for (int64_t c = 0; c < cn; ++c) gbuf[c] = C::E::key(gr[c]);
            gk = gbuf;
          }
          for (int64_t e = 0; e < k * k; ++e) {
            masked_add(d[e], idx, gk, static_cast<int32_t>(e), cn);
          }
        }
      }
    }
  }
  zero_rows(y0);  // rows above every window
}
OVERFEAT_CPU_MULTIVERSION(cl_backward_tile)

template <typename scalar_t, int K>
void cl_backward(const at::Tensor& grad_output, const at::Tensor& input, at::Tensor& grad_input,
                 const PoolGeometry& pg) {
  using C = Cfg<scalar_t, K>;
  using raw_t = typename C::raw_t;
  using key_t = typename C::key_t;
  const ClGeo g{pg.in.h, pg.in.w, pg.in.c, pg.k, pg.out.h, pg.out.w};
  const int64_t cb = cl_channel_block(g.C, sizeof(key_t));
  const int64_t c_tiles = ceil_div(g.C, cb);
  // Whole images per task unless that leaves threads idle; then bands of rows (a multiple
  // of k each), whose boundary windows are computed twice.
  const int64_t bands = ceil_div(g.H, g.k);
  const int64_t want = 4 * at::get_num_threads();
  const int64_t r_tiles =
      std::min(bands, std::max<int64_t>(1, ceil_div(want, pg.in.n * c_tiles)));
  const int64_t rows = g.k * ceil_div(bands, r_tiles);
  const int64_t r_count = ceil_div(g.H, rows);
  const auto* in = static_cast<const raw_t*>(input.const_data_ptr());
  const auto* go = static_cast<const raw_t*>(grad_output.const_data_ptr());
  auto* gi = static_cast<raw_t*>(grad_input.mutable_data_ptr());
  at::parallel_for(0, pg.in.n * r_count * c_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> idx(cb);
    std::vector<key_t> sink(cb), gbuf(cb);
    std::vector<key_t> tile(C::kSameKey ? 0 : rows * g.W * cb);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t ct = t % c_tiles, rt = (t / c_tiles) % r_count, n = t / (c_tiles * r_count);
      const int64_t y0 = rt * rows, y1 = std::min(g.H, y0 + rows);
      const int64_t c0 = ct * cb, cn = std::min(cb, g.C - c0);
      raw_t* gi_tile = gi + ((n * g.H + y0) * g.W) * g.C + c0;
      key_t* acc;
      int64_t acc_px;
      if constexpr (C::kSameKey) {
        acc = gi_tile;
        acc_px = g.C;
      } else {
        acc = tile.data();
        acc_px = cn;
      }
      cl_backward_tile_run<C>(in + n * g.H * g.W * g.C, go, g, n, y0, y1, c0, cn, acc, acc_px,
                              idx.data(), sink.data(), gbuf.data());
      if constexpr (!C::kSameKey) {
        for (int64_t p = 0; p < (y1 - y0) * g.W; ++p)
          for (int64_t c = 0; c < cn; ++c) gi_tile[p * g.C + c] = C::E::from_acc(acc[p * cn + c]);
      }
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
