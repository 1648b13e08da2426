// CPU-only helpers for the fast paths of the CPU kernels.
//
// The extension is compiled for the baseline x86-64 ISA (SSE2). The hot loops of the CPU
// kernels are written as plain loops over contiguous runs that the compiler vectorises;
// OVERFEAT_CPU_MULTIVERSION compiles such a loop nest again for AVX2 and for AVX-512 (512-bit
// vectors and mask registers) and picks the variant at run time, so that every machine gets
// its widest vectors without changing the build flags. Everything a multiversioned body calls must be OVERFEAT_CPU_INLINE, so that it
// is compiled inside (and with the ISA of) the variant.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__GNUC__) && defined(__x86_64__)
#define OVERFEAT_CPU_HAVE_AVX2_VARIANT 1
#define OVERFEAT_CPU_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define OVERFEAT_CPU_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,prefer-vector-width=512")))
#define OVERFEAT_CPU_INLINE inline __attribute__((always_inline))
#else
#define OVERFEAT_CPU_HAVE_AVX2_VARIANT 0
#define OVERFEAT_CPU_TARGET_AVX2
#define OVERFEAT_CPU_TARGET_AVX512
#define OVERFEAT_CPU_INLINE inline
#endif

namespace overfeat_kernels {
namespace cpu {

// The widest variant to use: 0 baseline, 1 AVX2, 2 AVX-512; what the CPU supports, lowered
// by OVERFEAT_KERNELS_CPU_ISA=baseline|avx2 (read once; the tests run every variant so).
inline int simd_level() {
#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
  static const int level = [] {
    int l = 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      l = 1;
      if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
        l = 2;
      }
    }
    const char* cap = std::getenv("OVERFEAT_KERNELS_CPU_ISA");
    if (cap != nullptr && std::strcmp(cap, "baseline") == 0) l = 0;
    if (cap != nullptr && std::strcmp(cap, "avx2") == 0 && l > 1) l = 1;
    return l;
  }();
  return level;
#else
  return 0;
#endif
}
inline bool has_avx2() { return simd_level() >= 1; }
inline bool has_avx512() { return simd_level() >= 2; }

// Defines NAME_run<Cfg>(args...), which calls (and returns the value of) the
// OVERFEAT_CPU_INLINE function template NAME<Cfg>(args...) compiled for AVX-512 or AVX2
// when the CPU has it, else for the baseline ISA. OVERFEAT_CPU_MULTIVERSION_LEVEL(NAME)
// calls NAME<Cfg, L>(args...) instead, L the variant's level (as simd_level), for bodies
// that need another form of a loop per ISA.
#define OVERFEAT_CPU_LEVEL_ARG(L) , L
#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
#define OVERFEAT_CPU_MULTIVERSION_(NAME, L2, L1, L0)                                   \
  template <class Cfg, class... Args>                                                  \
  OVERFEAT_CPU_TARGET_AVX512 __attribute__((noinline)) auto NAME##_avx512(Args... a) { \
    return NAME<Cfg L2>(a...);                                                         \
  }                                                                                    \
  template <class Cfg, class... Args>                                                  \
  OVERFEAT_CPU_TARGET_AVX2 __attribute__((noinline)) auto NAME##_avx2(Args... a) {     \
    return NAME<Cfg L1>(a...);                                                         \
  }                                                                                    \
  template <class Cfg, class... Args>                                                  \
  __attribute__((noinline)) auto NAME##_base(Args... a) {                              \
    return NAME<Cfg L0>(a...);                                                         \
  }                                                                                    \
  template <class Cfg, class... Args>                                                  \
  auto NAME##_run(Args... a) {                                                         \
    if (::overfeat_kernels::cpu::has_avx512()) return NAME##_avx512<Cfg>(a...);        \
    if (::overfeat_kernels::cpu::has_avx2()) return NAME##_avx2<Cfg>(a...);            \
    return NAME##_base<Cfg>(a...);                                                     \
  }
#else
#define OVERFEAT_CPU_MULTIVERSION_(NAME, L2, L1, L0)                                   \
  template <class Cfg, class... Args>                                                  \
  auto NAME##_run(Args... a) {                                                         \
    return NAME<Cfg L0>(a...);                                                         \
  }
#endif
#define OVERFEAT_CPU_MULTIVERSION(NAME) OVERFEAT_CPU_MULTIVERSION_(NAME, , , )
#define OVERFEAT_CPU_MULTIVERSION_LEVEL(NAME)                                    \
  OVERFEAT_CPU_MULTIVERSION_(NAME, OVERFEAT_CPU_LEVEL_ARG(2), OVERFEAT_CPU_LEVEL_ARG(1), \
                             OVERFEAT_CPU_LEVEL_ARG(0))

#if OVERFEAT_CPU_HAVE_AVX2_VARIANT
// 512-bit lanes of 2, 4 or 8 bytes, for the hand-written AVX-512 permutes (GCC does not
// vectorise short strided rows): a two-source permute (vpermt2w/d/q) and masked loads and
// stores (masked-off lanes are neither read nor written, so they may lie past a buffer).
template <int Bytes>
struct Lanes512;
template <>
struct Lanes512<2> {
  using mask_t = __mmask32;
  using index_t = uint16_t;
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE __m512i permute(__m512i a, __m512i i,
                                                                       __m512i b) {
    return _mm512_permutex2var_epi16(a, i, b);
  }
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE __m512i load(mask_t m, const void* p) {
    return _mm512_maskz_loadu_epi16(m, p);
  }
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE void store(void* p, mask_t m, __m512i v) {
    _mm512_mask_storeu_epi16(p, m, v);
  }
};
template <>
struct Lanes512<4> {
  using mask_t = __mmask16;
  using index_t = uint32_t;
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE __m512i permute(__m512i a, __m512i i,
                                                                       __m512i b) {
    return _mm512_permutex2var_epi32(a, i, b);
  }
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE __m512i load(mask_t m, const void* p) {
    return _mm512_maskz_loadu_epi32(m, p);
  }
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE void store(void* p, mask_t m, __m512i v) {
    _mm512_mask_storeu_epi32(p, m, v);
  }
};
template <>
struct Lanes512<8> {
  using mask_t = __mmask8;
  using index_t = uint64_t;
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE __m512i permute(__m512i a, __m512i i,
                                                                       __m512i b) {
    return _mm512_permutex2var_epi64(a, i, b);
  }
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE __m512i load(mask_t m, const void* p) {
    return _mm512_maskz_loadu_epi64(m, p);
  }
  static OVERFEAT_CPU_TARGET_AVX512 OVERFEAT_CPU_INLINE void store(void* p, mask_t m, __m512i v) {
    _mm512_mask_storeu_epi64(p, m, v);
  }
};

// The mask of the first n lanes (n <= the lane count).
template <int Bytes>
OVERFEAT_CPU_INLINE typename Lanes512<Bytes>::mask_t first_lanes(int64_t n) {
  return static_cast<typename Lanes512<Bytes>::mask_t>((uint64_t{1} << n) - 1);
}
#endif

// Elements are handled as their raw storage: float and double as themselves, the 16-bit
// floats as uint16_t bit patterns, so that selecting a maximum copies the exact input bits
// (NaN payloads included) and the loops contain only plain integer and float operations.
// key() converts raw storage to the type comparisons and sums use; the conversions are
// exact. from_acc() rounds an accumulated sum back to storage.
// kExactBack: to_raw(key(v)) gives back v's bits for every v (NaN payloads included), so a
// maximum may be computed on keys alone and converted back at the end; without NaNs it
// does so for every type. magnitude(v): v's bits without the sign, an integer above kInf
// exactly when v is a NaN (a cheap NaN test on raw elements that vectorises as an integer
// max). order(): a key for maxima only, exact (from_order gives back the bits) for values
// without NaN, and without -0 where kOrderSplitsZeros.
template <typename scalar_t>
struct Elem {
  using raw_t = scalar_t;
  using key_t = scalar_t;
  using bits_t = std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>;
  static constexpr bits_t kInf = static_cast<bits_t>(
      sizeof(scalar_t) == 4 ? uint64_t{0x7F800000u} : uint64_t{0x7FF0000000000000u});
  static OVERFEAT_CPU_INLINE bits_t magnitude(raw_t v) {
    bits_t b;
    std::memcpy(&b, &v, sizeof b);
    return b & ~(bits_t{1} << (8 * sizeof(bits_t) - 1));
  }
  static constexpr bool kExactBack = true;
  static OVERFEAT_CPU_INLINE key_t key(raw_t v) { return v; }
  static OVERFEAT_CPU_INLINE raw_t to_raw(key_t v) { return v; }
  static OVERFEAT_CPU_INLINE raw_t from_acc(key_t v) { return v; }
  using order_t = key_t;
  static constexpr bool kOrderSplitsZeros = false;
  static OVERFEAT_CPU_INLINE order_t order(raw_t v) { return v; }
  static OVERFEAT_CPU_INLINE raw_t from_order(order_t v) { return v; }
};

// The order key of a 16-bit float (sign and magnitude): its bits as an int16 whose
// ordering is the float ordering, through the involution that flips the magnitude bits of
// negative values. Two floats compare equal exactly when their keys are equal, except +0
// and -0 (keys 0 and -1) and NaNs: without NaN and -0, a maximum taken on these keys (32
// lanes of one instruction) picks the element F.max_pool2d's rule picks, bit for bit.
struct SignMagnitude16 {
  using order_t = int16_t;
  static constexpr bool kOrderSplitsZeros = true;
  static constexpr uint16_t kNegZero = 0x8000;
  static OVERFEAT_CPU_INLINE order_t order(uint16_t v) {
    const auto b = static_cast<int16_t>(v);
    return static_cast<int16_t>(b ^ ((b >> 15) & 0x7FFF));
  }
  static OVERFEAT_CPU_INLINE uint16_t from_order(order_t k) {
    return static_cast<uint16_t>(k ^ ((k >> 15) & 0x7FFF));
  }
};

template <>
struct Elem<c10::BFloat16> : SignMagnitude16 {
  using raw_t = uint16_t;
  using key_t = float;
  using bits_t = uint16_t;
  static constexpr bits_t kInf = 0x7F80;
  static OVERFEAT_CPU_INLINE bits_t magnitude(raw_t v) { return v & 0x7FFF; }
  static OVERFEAT_CPU_INLINE float key(uint16_t v) {
    const uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  // A bfloat16 is the top half of its float: truncation is the exact way back.
  static constexpr bool kExactBack = true;
  static OVERFEAT_CPU_INLINE uint16_t to_raw(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    return static_cast<uint16_t>(bits >> 16);
  }
  // Round to nearest even, NaN to 0x7FC0: c10::BFloat16(float), written branch-free so
  // that it vectorises.
  static OVERFEAT_CPU_INLINE uint16_t from_acc(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    const uint32_t rounded = (bits + (((bits >> 16) & 1u) + 0x7FFFu)) >> 16;
    return v != v ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
  }
};

// c10's software conversions between half and float (c10::detail::fp16_ieee_to_fp32_value
// and fp16_ieee_from_fp32_value without F16C, as this extension is built): the same
// operations, written so that GCC vectorises them for AVX2 too (bits through std::bit_cast,
// selects as integer masks; c10's memcpy and `?:` kept the AVX2 and baseline float16
// backward scalar, 7x slower than AVX-512). Checked equal to c10's on every input.
OVERFEAT_CPU_INLINE uint32_t mask_if(bool c) { return uint32_t{0} - static_cast<uint32_t>(c); }

OVERFEAT_CPU_INLINE float half_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized =
      std::bit_cast<float>((two_w >> 4) + (0xE0u << 23)) * std::bit_cast<float>(15u << 23);
  const float denormalized = std::bit_cast<float>((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t m = mask_if(two_w < (1u << 27));
  return std::bit_cast<float>(sign | (std::bit_cast<uint32_t>(denormalized) & m) |
                              (std::bit_cast<uint32_t>(normalized) & ~m));
}

OVERFEAT_CPU_INLINE uint16_t float_to_half(float f) {
  const float base0 = (std::fabs(f) * std::bit_cast<float>(239u << 23)) *
                      std::bit_cast<float>(17u << 23);
  const uint32_t w = std::bit_cast<uint32_t>(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t bias = std::max(shl1_w & 0xFF000000u, 0x71000000u);
  const float base = std::bit_cast<float>((bias >> 1) + 0x07800000u) + base0;
  const uint32_t bits = std::bit_cast<uint32_t>(base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  const uint32_t nan = mask_if(shl1_w > 0xFF000000u);
  return static_cast<uint16_t>((sign >> 16) | (0x7E00u & nan) | (nonsign & ~nan));
}

template <>
struct Elem<c10::Half> : SignMagnitude16 {
  using raw_t = uint16_t;
  using key_t = float;
  using bits_t = uint16_t;
  static constexpr bits_t kInf = 0x7C00;
  static OVERFEAT_CPU_INLINE bits_t magnitude(raw_t v) { return v & 0x7FFF; }
  static OVERFEAT_CPU_INLINE float key(uint16_t v) { return half_to_float(v); }
  static constexpr bool kExactBack = false;  // NaN payloads would not survive
  static OVERFEAT_CPU_INLINE uint16_t to_raw(float v) { return float_to_half(v); }
  static OVERFEAT_CPU_INLINE uint16_t from_acc(float v) { return float_to_half(v); }
};

// F.max_pool2d's rule (index_math.h replaces_max) as a branch-free select: a strictly
// greater value or a NaN replaces the running maximum.
template <typename key_t>
OVERFEAT_CPU_INLINE bool replaces(key_t v, key_t best) {
  return (v > best) | (v != v);
}

// r ? a : b on integer lanes, as a bit mask: GCC (12) vectorises a chain of these where the
// `?:` form of the same chain becomes branches.
template <typename I>
OVERFEAT_CPU_INLINE I select(bool r, I a, I b) {
  const auto m = static_cast<I>(-static_cast<I>(r));
  return static_cast<I>((a & m) | (b & ~m));
}

// c ? v : 0 for a float or double v, adding which to a sum is the same as adding v where c
// (the sums of the pooling backward start at +0, so they are never -0). GCC (12) turns
// `sum += c ? v : 0` into a conditional add, which it vectorises with AVX-512 masks only: the
// AVX2 and baseline variants of the backward's gather ran scalar, 7x slower. So below
// AVX-512 (kLevel < 2) v is and-masked by c, bits through std::bit_cast (through memcpy GCC
// folds it back into the select); with AVX-512 the select stays, a masked add.
template <int kLevel, typename key_t>
OVERFEAT_CPU_INLINE key_t keep(bool c, key_t v) {
  if constexpr (kLevel >= 2) {
    return c ? v : key_t(0);
  } else {
    using bits_t = std::conditional_t<sizeof(key_t) == 8, uint64_t, uint32_t>;
    const bits_t m = bits_t{0} - static_cast<bits_t>(c);
    return std::bit_cast<key_t>(std::bit_cast<bits_t>(v) & m);
  }
}

}  // namespace cpu
}  // namespace overfeat_kernels
