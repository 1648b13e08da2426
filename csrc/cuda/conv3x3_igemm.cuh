// conv3x3 on tensor cores: an implicit GEMM.
//
//   out[m, k] = sum_{tap, c} A[m, (tap, c)] * B[(tap, c), k]
//
// m = (n, y, x) runs over the output pixels (M = N·H'·W'), k over the filters (K), and the
// reduction over the 9 taps × Cp channels. A is never formed: a row of A at tap (r, s) is
// the input pixel (y + r - pad, x + s - pad), read straight from an NHWC map with its
// channels padded to a multiple of one 16-byte vector (Cp); B is the filter copy
// [K][3][3][Cpf] (the reduction contiguous), Cpf = Cp rounded up to whole k-blocks with zero
// channels, so that B's loads need no channel test. See conv3x3_kernel.cu for who prepares what.
// With one tap (Params::taps = 1) the same kernel is a 1 × 1 convolution: the forward for
// few input channels, whose input arrives with the 3 × 3 taps unfolded into channels.
//
// Per CTA: a kBM × kBN output tile (pixels × filters); warps of 64 × 32 or 64 × 64, each
// 4 × 4 (or 4 × 8) mma tiles of 16 × 8 with fp32 accumulators. The reduction advances by
// k-blocks of 64 bytes of channels (32 bf16/fp16, 16 tf32) of one tap: a k-block is 4
// vectors of 16 bytes per row, loaded by 16-byte cp.async (zero-filled, through the
// ignore-src predicate, where the pixel is outside the map, the vector beyond Cp or the
// filter beyond K) into a kStages-deep shared-memory ring. The epilogue adds the bias,
// applies ReLU (NaN kept), converts, stages the tile in the drained ring and writes rows
// of 16-byte vectors (channels_last) or pixel-contiguous runs (NCHW).
//
// Pooling (Params::pool = k, 2 or 3; the op's pool, conv_pool.h): the GEMM rows are
// ordered window by window instead: row j·k² + a·k + b of a tile is pixel (a, b) of the
// tile's window j (kBM / k² whole windows per tile; the rows past them load nothing and
// are dropped), windows in (image, row, column) order of the pooled map. The epilogue then
// finds each window's k² pixels in consecutive rows of its staged tile, takes their max as
// F.max_pool2d does (after bias, ReLU and the rounding, with which max commutes) and
// stores only the pooled map. Conv pixels that no window covers (trailing rows and
// columns) are never computed.
// Offset pooling (Params::off_blocks set; offset_max_pool2d's k² offsets): a tile's rows are
// a 2-D block of (k·a + k − 1) x (k·b + k − 1) conv pixels in row-major order
// (OffsetPoolBlock, conv_plan.h; make_offset_pixel_blocks, conv_tiles.cuh), blocks k·a
// rows and k·b columns apart, so that they overlap by k − 1 (computed by both tiles);
// every offset's windows over the block's a x b positions lie inside it.
//
// Shared-memory rows are 64 bytes; ldmatrix reads one 16-byte vector from each of 8
// consecutive rows. Unswizzled, rows r and r + 2 would fall on the same banks; storing
// vector v of row r at slot v ^ ((r >> 1) & 3) spreads any 8 consecutive rows over all 32
// banks (rows 2j and 2j + 1 share a key but sit in different halves of a 128-byte line).
//
// The byte layout is the same for 2-byte and 4-byte elements: a 16-byte vector holds 8
// bf16/fp16 or 4 floats, an mma k-step is 2 vectors (k16 for bf16/fp16, k8 for tf32), and
// ldmatrix's "8 × 8 b16" matrices are 8 rows × 4 floats for tf32, which is exactly the
// m16n8k8 .tf32 fragment layout (lane l: row l / 4, element l % 4). So one kernel serves
// all three; tf32 operands are rounded with cvt.rna after ldmatrix, as cuDNN's TF32 does.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "../conv_plan.h"
#include "../dispatch.h"
#include "../index_math.h"
#include "conv_epilogue.cuh"
#include "conv_tiles.cuh"
#include "cp_async_pipeline.cuh"
#include "launch.cuh"
#include "ptx_primitives.cuh"
#include "relu_mask.cuh"

namespace overfeat_kernels {
namespace igemm {

constexpr int kVecBytes = 16;
constexpr int kRowBytes = 64;                      // one k-block of one row
constexpr int kVecsPerRow = kRowBytes / kVecBytes;  // 4
constexpr int kWarpM = 64;                          // warp tile rows (pixels)
constexpr int kMmaM = 16, kMmaN = 8;
constexpr int kMi = kWarpM / kMmaM;                   // 4 mma tiles along M per warp
constexpr int kKSteps = kRowBytes / (2 * kVecBytes);  // mma k-steps per k-block: 2

// A tile configuration: warps_m × warps_n warps of 64 × warp_n (32 or 64) each.
template <int kWarpsM_, int kWarpsN_, int kWarpN_, int kStages_>
struct TileConfig {
  static constexpr int kWarpsM = kWarpsM_, kWarpsN = kWarpsN_, kWarpN = kWarpN_;
  static constexpr int kStages = kStages_;
  static constexpr int kNi = kWarpN / kMmaN;  // mma tiles along N per warp
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kBM = kWarpM * kWarpsM, kBN = kWarpN * kWarpsN;
  static constexpr int kStageBytes = (kBM + kBN) * kRowBytes;
  static constexpr int kPipeBytes = kStages * kStageBytes;
  // Each thread copies the same vector column of several rows (threads is a multiple of 4).
  static constexpr int kRowsPerPass = kThreads / kVecsPerRow;
  static constexpr int kARows = kBM / kRowsPerPass, kBRows = kBN / kRowsPerPass;
  static_assert(kBM % kRowsPerPass == 0 && kBN % kRowsPerPass == 0, "tile/threads mismatch");
  static_assert(kARows <= 4, "9 tap bits per row; after the shift by the tap, 32 bits");
  // Rows a thread copies are kRowsPerPass apart, a multiple of 8: they share the swizzle
  // key, so their shared-memory slots differ by constants.
  static_assert(kRowsPerPass % 8 == 0, "rows of one thread must share the swizzle key");
  static_assert(kNi % 2 == 0, "B fragments come in pairs of n8 tiles (ldmatrix.x4)");
};
// Large maps: 128 × 128 per CTA, 4 warps of 64 × 64 (bf16 / fp16; tf32's output tile
// would not fit the staging buffer, so it takes 128 × 64, warps of 64 × 32). Small maps
// (few CTAs): 64 × 64, 2 warps of 64 × 32, four times as many CTAs as 128 × 128.
template <typename T>
using LargeTiles = std::conditional_t<sizeof(T) == 2, TileConfig<2, 2, 64, 3>, TileConfig<2, 2, 32, 3>>;
using SmallTiles = TileConfig<1, 2, 32, 3>;

// Per element type: the mma and the operand conversion.
template <typename T>
struct MmaTraits;
template <>
struct MmaTraits<at::BFloat16> {
  __device__ __forceinline__ static uint32_t operand(uint32_t r) { return r; }
  __device__ __forceinline__ static void mma(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    mma_m16n8k16_bf16(d, a, b, d);
  }
};
template <>
struct MmaTraits<at::Half> {
  __device__ __forceinline__ static uint32_t operand(uint32_t r) { return r; }
  __device__ __forceinline__ static void mma(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    mma_m16n8k16_f16(d, a, b, d);
  }
};
template <>
struct MmaTraits<float> {
  // The tensor core would truncate the low mantissa bits; round as cuDNN's TF32 does.
  __device__ __forceinline__ static uint32_t operand(uint32_t r) {
    return float_to_tf32(__uint_as_float(r));
  }
  __device__ __forceinline__ static void mma(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    mma_m16n8k8_tf32(d, a, b, d);
  }
};

template <typename T>
struct Params {
  const T* in;    // [n][h][w][cp], 16-byte aligned, cp a multiple of 16 / sizeof(T)
  const T* filt;  // [k][3][3][cpf]
  const T* bias;  // [k] or null
  T* out;         // [n][k][out_h][out_w] with strides out_s
  Strides4 out_s;
  int64_t n, m;  // m = n · out_h · out_w
  int h, w, cp, k, out_h, out_w, pad;
  int cpf;  // the filters' channel stride: cp rounded up to whole k-blocks (zeros past cp)
  bool relu;
  // 9; or 1: a 1 × 1 convolution (pad 0) of an input whose channels are already the
  // unfolded 3 × 3 taps of a map with few channels (unfolded_input in conv3x3_kernel.cu).
  int taps;
  // Grad-input through a ReLU: the forward's output in `in`'s layout ([n][h][w][cp]); an
  // element of `in` counts only where this one is > 0. Null: no mask.
  const T* mask;
  // Pooling in the epilogue: k = 2 or 3 (0: none). `out` is then the pooled map
  // [n][k][pool_h][pool_w] (strides out_s) of pool_m = n · pool_h · pool_w windows.
  int pool, pool_h, pool_w;
  int64_t pool_m;
  // Offset pooling (off_blocks.off_a > 0; zeros: none): `out` is offset_max_pool2d's
  // [n·k²][k][pool_h][pool_w]; tile t is block t of off_blocks (make_offset_pixel_blocks,
  // one filter tile: blockIdx.y's).
  PixelBlocks off_blocks;
};

// Row `row` of the tile `tile` (kBM rows each): without pooling, pixel tile·kBM + row of
// the map in (image, y, x) order; pooling, see "Pooling" above.
template <int kBM, bool kPool, typename T>
__host__ __device__ __forceinline__ RowPixel tile_row_pixel(const Params<T>& p, int64_t tile,
                                                             int row) {
  if constexpr (kPool) {
    if (p.off_blocks.off_a > 0) return block_row_pixel(p.off_blocks, block_tile(p.off_blocks, tile), row);
    const int kk = p.pool * p.pool, per_tile = kBM / kk;
    const int win = row / kk, pos = row - win * kk;
    const int64_t q = tile * per_tile + win;
    if (win >= per_tile || q >= p.pool_m) return {false, 0, 0, 0};
    // 64-bit: an image may hold more than 2^31 pixels (its rows and columns fit 32 bits).
    const int64_t per_img = int64_t(p.pool_h) * p.pool_w;
    const int64_t img = q / per_img, rem = q - img * per_img;
    return {true, img, static_cast<int>(rem / p.pool_w) * p.pool + pos / p.pool,
            static_cast<int>(rem % p.pool_w) * p.pool + pos % p.pool};
  } else {
    const int64_t m = tile * kBM + row;
    if (m >= p.m) return {false, 0, 0, 0};
    const int64_t per_img = int64_t(p.out_h) * p.out_w;
    const int64_t img = m / per_img, rem = m - img * per_img;
    return {true, img, static_cast<int>(rem / p.out_w), static_cast<int>(rem % p.out_w)};
  }
}

// Byte offset of 16-byte vector `v` of row `row` in a tile (the XOR swizzle above).
__host__ __device__ constexpr int swizzled(int row, int v) {
  return row * kRowBytes + ((v ^ ((row >> 1) & 3)) * kVecBytes);
}

// Where the loader is in the reduction: k-block (tap, channels c..c + kBK) and its byte
// offsets; advance() steps to the next k-block with additions only.
struct KBlockCursor {
  int tap = 0, s = 0, c = 0;  // tap (r, s) = tap, its column s, first channel c
  int a = 0;  // ((r·W + s)·Cp + c)·elem_bytes: the k-block in the input (32 bits: fits_igemm)
  int b = 0;  // (tap·Cpf + c)·elem_bytes: the k-block in a filter
  // kbk: elements per k-block; next_row: bytes from the end of tap s = 2 of a row of the
  // input to tap s = 0 of the next.
  __device__ __forceinline__ void advance(int cp, int kbk, int elem_bytes, int next_row) {
    c += kbk;
    a += kRowBytes;
    b += kRowBytes;
    if (c >= cp) {
      // The input's tap is Cp channels: step back to its end. The filters' is Cpf, whole
      // k-blocks: b is already at the next tap.
      const int back = (cp - c) * elem_bytes;
      ++tap;
      s = s == 2 ? 0 : s + 1;
      a += back + (s == 0 ? next_row : 0);
      c = 0;
    }
  }
};

// Bit t of the result: whether tap t = (r, s) of output pixel `px` reads inside the map
// (for kTaps = 1: whether the pixel exists).
template <int kTaps>
__device__ __forceinline__ uint32_t tap_mask(const RowPixel& px, int h, int w, int pad) {
  if (!px.valid) return 0;
  if constexpr (kTaps == 1) return 1;
  const int y = px.y - pad, x = px.x - pad;
  uint32_t bits = 0;
#pragma unroll
  for (int t = 0; t < 9; ++t) {
    const int iy = y + t / 3, ix = x + t % 3;
    if (iy >= 0 && iy < h && ix >= 0 && ix < w) bits |= 1u << t;
  }
  return bits;
}

// kTaps: 9 (a 3 × 3 convolution), or 1 (Params::taps). kChannelTail: Cp is not a multiple
// of the k-block, so the last k-block of a tap has input vectors past Cp (zero-filled; the
// filters are zero there already). Without it (C % 32 == 0 for bf16 / fp16, the usual
// case), the loader skips that test. kMasked: Params::mask is set (grad-input through a
// ReLU). kPool: Params::pool is set (the rows are windows' pixels; see "Pooling" above).
template <typename T, typename Cfg, int kTaps, bool kOutChannelsLast, bool kChannelTail,
          bool kMasked, bool kPool>
__global__ void __launch_bounds__(Cfg::kThreads)
    conv3x3_igemm_kernel(const Params<T> p) {
  constexpr int kVec = kVecBytes / static_cast<int>(sizeof(T));  // elements per vector
  constexpr int kBK = kRowBytes / static_cast<int>(sizeof(T));   // elements per k-block
  constexpr int kOutStride = Cfg::kBN + kVec;  // staging row (elements), padded a vector
  static_assert(Cfg::kBM * kOutStride * sizeof(T) <= Cfg::kPipeBytes, "staging too large");
  __shared__ __align__(16) unsigned char smem[Cfg::kPipeBytes];

  constexpr int kNi = Cfg::kNi, kWarpN = Cfg::kWarpN;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warp_m = warp % Cfg::kWarpsM, warp_n = warp / Cfg::kWarpsM;
  const int k0 = blockIdx.y * Cfg::kBN;

  // ---- loader state: this thread copies vector `lv` of rows lrow + j·kRowsPerPass ----
  const int lv = tid % kVecsPerRow, lrow = tid / kVecsPerRow;
  // Destination of its first row in a stage; the others follow at constant distances
  // (they share the swizzle key).
  const int st_a = swizzled(lrow, lv), st_b = Cfg::kBM * kRowBytes + swizzled(lrow, lv);
  // Byte address of tap (0, 0), vector lv, of each row's pixel, as an integer: it may lie
  // outside the map (border pixels) and is dereferenced only for taps inside it.
  uint64_t a_addr[Cfg::kARows];
  uint64_t a_taps = 0;  // bit 9·j + tap: tap (r, s) of row j lies inside the map
#pragma unroll
  for (int j = 0; j < Cfg::kARows; ++j) {
    const RowPixel px =
        tile_row_pixel<Cfg::kBM, kPool>(p, blockIdx.x, lrow + j * Cfg::kRowsPerPass);
    const int64_t y = px.y - p.pad, x = px.x - p.pad;
    const int64_t off = ((px.img * p.h + y) * p.w + x) * p.cp + lv * kVec;
    a_addr[j] = reinterpret_cast<uint64_t>(p.in) + static_cast<uint64_t>(off * int64_t(sizeof(T)));
    a_taps |= uint64_t(tap_mask<kTaps>(px, p.h, p.w, p.pad)) << (9 * j);
  }
  const int64_t filter_bytes = kTaps * int64_t(p.cpf) * int64_t(sizeof(T));
  uint32_t b_valid = 0;  // filter rows beyond K read nothing
#pragma unroll
  for (int j = 0; j < Cfg::kBRows; ++j) {
    if (k0 + lrow + j * Cfg::kRowsPerPass < p.k) b_valid |= 1u << j;
  }
  // Filter rows past K: an address never read (ignore-src), as for A.
  const uint64_t b_src = reinterpret_cast<uint64_t>(p.filt) +
                         static_cast<uint64_t>(int64_t(k0 + lrow) * filter_bytes + lv * kVecBytes);

  const int c_blocks = (p.cp + kBK - 1) / kBK;
  const int k_blocks = kTaps * c_blocks;
  KBlockCursor ld;       // the k-block the next load_stage copies
  int ld_stage = 0;      // byte offset of its stage
  const int next_row = (p.w - 3) * p.cp * static_cast<int>(sizeof(T));  // s = 2 -> next r

  // With a channel tail: this thread's vector of a k-block is inside Cp while c < c_end.
  const int c_end = p.cp - lv * kVec;
  // Bits 9·j of: row j's vector of the k-block at `at` is inside the map and inside Cp.
  const auto rows_inside = [&](const KBlockCursor& at) -> uint32_t {
    const bool c_ok = !kChannelTail || at.c < c_end;
    return c_ok ? static_cast<uint32_t>(a_taps >> at.tap) : 0u;
  };
  const auto load_stage = [&]() {
    const uint32_t taps = rows_inside(ld);
#pragma unroll
    for (int j = 0; j < Cfg::kARows; ++j) {
      // Outside the map the address is not read (ignore-src): zeros land instead.
      cp_async_16_ignore_src(smem + ld_stage + st_a + j * Cfg::kRowsPerPass * kRowBytes,
                             reinterpret_cast<const void*>(a_addr[j] + int64_t(ld.a)),
                             (taps & (1u << (9 * j))) == 0);
    }
#pragma unroll
    for (int j = 0; j < Cfg::kBRows; ++j) {
      const uint64_t src = b_src + ld.b + uint64_t(j * Cfg::kRowsPerPass * filter_bytes);
      cp_async_16_ignore_src(smem + ld_stage + st_b + j * Cfg::kRowsPerPass * kRowBytes,
                             reinterpret_cast<const void*>(src), (b_valid & (1u << j)) == 0);
    }
    ld_stage = ld_stage == (Cfg::kStages - 1) * Cfg::kStageBytes ? 0 : ld_stage + Cfg::kStageBytes;
    ld.advance(p.cp, kBK, static_cast<int>(sizeof(T)), next_row);
  };

  // ---- the ReLU mask (kMasked) -----------------------------------------------------------
  // relu_mask.cuh's StagedMask: each thread masks its own A vectors in the landed stage;
  // the mask vectors come from global memory one k-block ahead (cursor mk).
  [[maybe_unused]] StagedMask<T, Cfg::kARows> mask;
  [[maybe_unused]] KBlockCursor mk;
  [[maybe_unused]] const int64_t mask_delta =
      kMasked ? reinterpret_cast<const char*>(p.mask) - reinterpret_cast<const char*>(p.in) : 0;
  const auto prefetch_mask = [&]() {
    const uint32_t taps = rows_inside(mk);
    mask.prefetch([&](int j) {
      const auto* src = reinterpret_cast<const uint4*>(a_addr[j] + mask_delta + int64_t(mk.a));
      return (taps & (1u << (9 * j))) != 0 ? __ldg(src) : uint4{0u, 0u, 0u, 0u};
    });
    mk.advance(p.cp, kBK, static_cast<int>(sizeof(T)), next_row);
  };
  // cp_async_pipeline's `landed`: does nothing unless kMasked.
  const auto apply_mask = [&](unsigned char* st, int kb) {
    if constexpr (kMasked) {
      mask.apply([&](int j) {
        return reinterpret_cast<uint4*>(st + st_a + j * Cfg::kRowsPerPass * kRowBytes);
      });
      if (kb + 1 < k_blocks) prefetch_mask();
    }
  };
  if constexpr (kMasked) {
    if (k_blocks > 0) prefetch_mask();
  }

  float acc[kMi][kNi][4] = {};

  // ldmatrix row addresses (byte offsets in a stage): lane l gives row l % 8 of matrix
  // l / 8. A (x4 = rows 0-7 / 8-15 × k-vectors 0 / 1 of a 16 × 16 tile: a0..a3); B (x4 =
  // filters 0-7 / 8-15 × k-vectors 0 / 1: b0 b1 of two n8 tiles). Rows 16 apart share
  // the swizzle key, so only the k-step changes the slot.
  const int mat = lane / 8, mrow = lane % 8;
  const int a_row0 = warp_m * kWarpM + (mat & 1) * 8 + mrow;
  const int b_row0 = warp_n * kWarpN + (mat >> 1) * 8 + mrow;
  int a_ld[kKSteps], b_ld[kKSteps];
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks) {
    a_ld[ks] = swizzled(a_row0, 2 * ks + (mat >> 1));
    b_ld[ks] = Cfg::kBM * kRowBytes + swizzled(b_row0, 2 * ks + (mat & 1));
  }

  const auto compute = [&](const unsigned char* st) {
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      uint32_t a[kMi][4], b[kNi][2];
#pragma unroll
      for (int i = 0; i < kMi; ++i) {
        ldmatrix_x4(a[i], st + a_ld[ks] + i * kMmaM * kRowBytes);
#pragma unroll
        for (int e = 0; e < 4; ++e) a[i][e] = MmaTraits<T>::operand(a[i][e]);
      }
#pragma unroll
      for (int j = 0; j < kNi / 2; ++j) {
        uint32_t r[4];
        ldmatrix_x4(r, st + b_ld[ks] + j * 16 * kRowBytes);
        b[2 * j][0] = MmaTraits<T>::operand(r[0]);
        b[2 * j][1] = MmaTraits<T>::operand(r[1]);
        b[2 * j + 1][0] = MmaTraits<T>::operand(r[2]);
        b[2 * j + 1][1] = MmaTraits<T>::operand(r[3]);
      }
#pragma unroll
      for (int i = 0; i < kMi; ++i) {
#pragma unroll
        for (int j = 0; j < kNi; ++j) MmaTraits<T>::mma(acc[i][j], a[i], b[j]);
      }
    }
  };
  cp_async_pipeline<Cfg::kStages, Cfg::kStageBytes>(k_blocks, smem, load_stage, compute,
                                                    apply_mask);
  __syncthreads();  // the ring is free: reuse it to stage the output tile

  // ---- epilogue: + bias, ReLU, convert, through shared memory to wide stores ----------
  T* stage = reinterpret_cast<T*>(smem);
  const int g = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int j = 0; j < kNi; ++j) {
    const int col = warp_n * kWarpN + j * kMmaN + 2 * t4;
    float bias0 = 0.f, bias1 = 0.f;
    if (p.bias != nullptr) {
      if (k0 + col < p.k) bias0 = static_cast<float>(p.bias[k0 + col]);
      if (k0 + col + 1 < p.k) bias1 = static_cast<float>(p.bias[k0 + col + 1]);
    }
#pragma unroll
    for (int i = 0; i < kMi; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // rows g and g + 8 of the mma tile
        const int row = warp_m * kWarpM + i * kMmaM + g + 8 * h;
        stage[row * kOutStride + col] = epilogue::epilogue_value<T>(acc[i][j][2 * h], bias0, p.relu);
        stage[row * kOutStride + col + 1] =
            epilogue::epilogue_value<T>(acc[i][j][2 * h + 1], bias1, p.relu);
      }
    }
  }
  __syncthreads();

  if constexpr (kPool) {
    if (p.off_blocks.off_a > 0) {
      // Every offset's windows over the block (conv_tiles.cuh, block_window).
      const BlockTile blk = block_tile(p.off_blocks, blockIdx.x);
      epilogue::store_pooled_tile<T, Cfg::kBN, kOutChannelsLast>(
          stage, kOutStride, block_windows(p.off_blocks, p.pool), p.pool, p.off_blocks.bw, tid,
          Cfg::kThreads, p.out, p.out_s, k0, p.k,
          [&](int win) { return block_window(p.off_blocks, blk, p.pool, win); });
      return;
    }
    // Window j's pixels are staged rows j·k² .. j·k² + k² - 1; only the pooled map is stored.
    const int kk = p.pool * p.pool, per_tile = Cfg::kBM / kk;
    const int64_t q0 = int64_t(blockIdx.x) * per_tile;
    const int64_t per_img = int64_t(p.pool_h) * p.pool_w;
    epilogue::store_pooled_tile<T, Cfg::kBN, kOutChannelsLast>(
        stage, kOutStride, per_tile, p.pool, p.pool, tid, Cfg::kThreads, p.out, p.out_s, k0, p.k,
        [&](int win) -> PooledWindow {
          const int64_t q = q0 + win;
          if (q >= p.pool_m) return {false, 0, 0, 0, 0};
          const int64_t img = q / per_img, rem = q - img * per_img;
          return {true, img, static_cast<int>(rem / p.pool_w), static_cast<int>(rem % p.pool_w),
                  win * kk};
        });
  } else {
    epilogue::store_staged_tile<T, Cfg::kBN, kOutChannelsLast>(
        stage, kOutStride, Cfg::kBM, tid, Cfg::kThreads, p.out, p.out_s, k0, p.k,
        [&](int row) { return tile_row_pixel<Cfg::kBM, false>(p, blockIdx.x, row); });
  }
}

// The two tile configurations; which one a call gets is the plan's (conv_plan.h,
// choose_tiles), whose tile shapes these must be.
enum class TileChoice : int { Large = 0, Small = 1 };
static_assert(LargeTiles<at::Half>::kBM == kLargeTileM && LargeTiles<at::Half>::kBN == kLargeTileN16 &&
                  LargeTiles<float>::kBM == kLargeTileM && LargeTiles<float>::kBN == kLargeTileN32 &&
                  SmallTiles::kBM == kSmallTileM && SmallTiles::kBN == kSmallTileN,
              "conv_plan.h's tile shapes");
static_assert(kVecBytes == kIgemmVecBytes && kRowBytes == kIgemmRowBytes, "conv_plan.h's granules");

template <typename T, typename Cfg>
void launch_with(const Params<T>& p, bool out_channels_last, cudaStream_t stream) {
  TORCH_INTERNAL_ASSERT(p.pool == 0 || ((p.pool == 2 || p.pool == 3) && p.mask == nullptr));
  const bool offsets = p.off_blocks.off_a > 0;
  TORCH_INTERNAL_ASSERT(!offsets || (p.pool != 0 && p.off_blocks.k_tiles == 1 &&
                                     p.off_blocks.bh * p.off_blocks.bw <= Cfg::kBM));
  const int64_t m_tiles = p.pool == 0 ? ceil_div(p.m, Cfg::kBM)
                          : offsets   ? p.off_blocks.tiles
                                      : ceil_div(p.pool_m, Cfg::kBM / (p.pool * p.pool));
  const int64_t n_tiles = ceil_div(p.k, Cfg::kBN);
  TORCH_CHECK_VALUE(m_tiles <= INT32_MAX && n_tiles <= 65535, "conv3x3 (CUDA): ", p.m,
                    " pixels with ", p.k, " filters exceed the launch grid of this kernel");
  const dim3 grid(static_cast<unsigned>(m_tiles), static_cast<unsigned>(n_tiles));
  constexpr int kBK = kRowBytes / static_cast<int>(sizeof(T));
  TORCH_INTERNAL_ASSERT(p.taps == 9 || (p.taps == 1 && p.pad == 0));
  TORCH_INTERNAL_ASSERT(p.mask == nullptr || p.taps == 9);
  bool_switch(p.taps == 1, [&](auto unfolded) {
    constexpr int kTaps = decltype(unfolded)::value ? 1 : 9;
    bool_switch(out_channels_last, [&](auto cl) {
      bool_switch(p.cp % kBK != 0, [&](auto tail) {
        bool_switch(p.mask != nullptr, [&](auto masked) {
          bool_switch(p.pool != 0, [&](auto pooled) {
            constexpr bool kMasked = std::remove_reference_t<decltype(masked)>::value;
            constexpr bool kPool = decltype(pooled)::value;
            constexpr bool kOutCl = std::remove_reference_t<decltype(cl)>::value;
            constexpr bool kTail = std::remove_reference_t<decltype(tail)>::value;
            // The mask is grad-input's, which always has 9 taps and never pools.
            if constexpr ((kTaps == 9 || !kMasked) && !(kMasked && kPool)) {
              launch_kernel<conv3x3_igemm_kernel<T, Cfg, kTaps, kOutCl, kTail, kMasked, kPool>>(
                  grid, Cfg::kThreads, 0, stream, p);
            }
          });
        });
      });
    });
  });
}

// `tiles`: the configuration the plan picked.
template <typename T>
void launch(const Params<T>& p, bool out_channels_last, cudaStream_t stream, TileChoice tiles) {
  if (p.m == 0 || p.k == 0) return;
  if (tiles == TileChoice::Large) {
    launch_with<T, LargeTiles<T>>(p, out_channels_last, stream);
  } else {
    launch_with<T, SmallTiles>(p, out_channels_last, stream);
  }
}

}  // namespace igemm
}  // namespace overfeat_kernels
