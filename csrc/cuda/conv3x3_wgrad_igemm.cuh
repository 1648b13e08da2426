// conv3x3 grad-weight on tensor cores (bf16 / fp16 / tf32): a GEMM over the output pixels.
//
//   dW[k, (tap, c)] = sum_p G[p, k] * X[p, (tap, c)]
//
// p = (n, y, x) runs over the output pixels (the reduction, P = N·H'·W'), k over the
// filters, and (tap, c) over the 9 taps × Cp input channels; X[p, (tap, c)] is the input
// pixel (y + r - pad, x + s - pad), zero outside the map. G is grad_output as NHWC
// [p][Kp], masked by the forward's ReLU on its way into shared memory; the input is NHWC
// [n][h][w][Cp] (both prepared by conv3x3_kernel.cu, channels padded to a 16-byte vector
// with zeros).
//
// Both operands are stored with the reduction (pixels) as rows: a shared-memory row is one
// pixel's 64 filters (A) or 64 channels of one tap (B), 128 bytes (bf16 / fp16) or 256
// (float). For the 16-bit types `ldmatrix.trans` turns an 8 × 8 block [pixels][filters]
// into the mma's A fragment [filters][pixels], and [pixels][channels] into the B fragment
// (k = pixels, n = channels). ldmatrix moves 16-bit elements only, so tf32 (m16n8k8)
// reads its fragments with 32-bit shared loads and rounds them with cvt.rna, as the
// forward does.
//
// Per CTA: 64 filters × 64 channels of one tap, 4 warps of 32 × 32 (2 × 4 mma tiles). The
// pixels are split over gridDim.z slices of whole k-blocks (64 pixels, tf32 32); each
// slice writes its fp32 partial sums, and a second kernel adds the slices in order:
// deterministic, no atomics. The XOR swizzle of the rows' 16-byte vectors is in Layout.
#pragma once

#include <ATen/ATen.h>

#include "../dispatch.h"
#include "../index_math.h"
#include "conv3x3_igemm.cuh"  // igemm::MmaTraits
#include "relu_mask.cuh"
#include "cp_async_pipeline.cuh"
#include "launch.cuh"
#include "ptx_primitives.cuh"

namespace overfeat_kernels {
namespace wgrad {

constexpr int kThreads = 128;
constexpr int kBM = 64, kBN = 64;  // filters × channels of one tap per CTA
constexpr int kStages = 3;
constexpr int kVecBytes = 16;
constexpr int kTileBytes = 8192;                 // one operand's rows of one k-block
constexpr int kStageBytes = 2 * kTileBytes;      // A then B
constexpr int kWarpM = 32, kWarpN = 32, kMi = 2, kNi = 4;
static_assert(kStages * kStageBytes <= 48 * 1024, "static shared memory limit");

// The shared-memory layout for elements of type T: a row holds one pixel's 64 filters (A)
// or 64 channels (B), so 128 bytes for bf16 / fp16 and 256 for float (tf32); a k-block is
// as many pixels as fill kTileBytes.
template <typename T>
struct Layout {
  static constexpr int kRowBytes = kBM * static_cast<int>(sizeof(T));
  static constexpr int kVecsPerRow = kRowBytes / kVecBytes;                // 8 or 16
  static constexpr int kVec = kVecBytes / static_cast<int>(sizeof(T));    // elements per vector
  static constexpr int kBK = kTileBytes / kRowBytes;                       // pixels: 64 or 32
  static constexpr int kMmaK = 32 / static_cast<int>(sizeof(T));          // k16 or k8
  // Loader: 512 vectors per tile, 4 per thread: rows lrow + kRowsPerPass·j, vector lv.
  static constexpr int kRowsPerPass = kThreads / kVecsPerRow;  // 16 or 8
  static constexpr int kLoadRows = kBK / kRowsPerPass;         // 4
  static_assert(kBN * sizeof(T) == kRowBytes && kBK % kMmaK == 0, "tile shapes");

  // Byte offset of vector v of row `row`. 16-bit: slot v ^ (row & 7), so the 8 rows an
  // ldmatrix reads (8 consecutive pixels, one vector column) hit all 32 banks. tf32 reads
  // fragments with scalar loads: a warp's 32 lanes read rows t = 0..3 (lane % 4) at
  // elements g = 0..7 (lane / 4), two vectors of each row; slot v ^ 2·(row & 3) puts those
  // 8 vectors on 8 different bank groups.
  __host__ __device__ static constexpr int swizzled(int row, int v) {
    return row * kRowBytes +
           ((sizeof(T) == 2 ? v ^ (row & 7) : v ^ (2 * (row & 3))) * kVecBytes);
  }
};

template <typename T>
struct Params {
  const T* g;   // [p][kp], grad_output
  const T* in;  // [n][h][w][cp]
  float* partial;  // [slices][k][9][cp]
  int64_t pixels;  // P = n · out_h · out_w
  int h, w, out_h, out_w, pad, k, kp, cp;
  int blocks_per_slice;  // 64-pixel blocks per slice (gridDim.z slices)
  // The forward's ReLU output, laid out as g; an element of g counts only where this one is
  // > 0. Null: no mask.
  const T* mask;
};

// kMasked: Params::mask is set.
template <typename T, bool kMasked>
__global__ void __launch_bounds__(kThreads) wgrad_igemm_kernel(const Params<T> p) {
  using L = Layout<T>;
  constexpr int kBK = L::kBK, kVec = L::kVec, kVecsPerRow = L::kVecsPerRow;
  constexpr int kRowsPerPass = L::kRowsPerPass, kLoadRows = L::kLoadRows;
  __shared__ __align__(16) unsigned char smem[kStages * kStageBytes];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warp_m = warp % 2, warp_n = warp / 2;
  const int k0 = blockIdx.x * kBM;
  const int c_tiles = (p.cp + kBN - 1) / kBN;
  const int tap = blockIdx.y / c_tiles, c0 = (blockIdx.y % c_tiles) * kBN;
  const int dy = tap / 3 - p.pad, dx = tap % 3 - p.pad;
  const int64_t hw_out = int64_t(p.out_h) * p.out_w;
  const int64_t first_block = int64_t(blockIdx.z) * p.blocks_per_slice;
  const int64_t total_blocks = (p.pixels + kBK - 1) / kBK;
  const int64_t end_block = first_block + p.blocks_per_slice < total_blocks
                                ? first_block + p.blocks_per_slice
                                : total_blocks;
  const int k_blocks = static_cast<int>(end_block - first_block);

  // Loader: vector lv (filters / channels kVec·lv..) of rows lrow + kRowsPerPass·j.
  const int lv = tid % kVecsPerRow, lrow = tid / kVecsPerRow;
  const bool a_vec_ok = k0 + lv * kVec < p.kp;
  const bool b_vec_ok = c0 + lv * kVec < p.cp;
  // Each loaded row's output pixel px as (y, x) and two element offsets: into G (px · kp) and
  // into the input (of pixel (img, y, x), tap (0, 0) before the padding shift: the
  // tap's shift is added at the load). All advance by kBK pixels per k-block with
  // additions only: kBK pixels = step_img images + step_y rows + step_x pixels, with
  // step_y < out_h and step_x < out_w, so each of x and y carries at most once.
  const int hw = p.out_h * p.out_w;  // < 2^31: the caller checks
  const int step_img = kBK / hw, step_y = (kBK % hw) / p.out_w, step_x = (kBK % hw) % p.out_w;
  const int64_t cp = p.cp, row_elems = int64_t(p.w) * cp, img_elems = int64_t(p.h) * row_elems;
  const int64_t in_step = step_img * img_elems + step_y * row_elems + step_x * cp;
  const int64_t x_carry = row_elems - int64_t(p.out_w) * cp;   // x wraps: next row
  const int64_t y_carry = img_elems - int64_t(p.out_h) * row_elems;  // y wraps: next image
  const int64_t tap_elems = int64_t(dy) * row_elems + int64_t(dx) * cp + c0 + lv * kVec;
  constexpr int64_t kB = sizeof(T);
  const uint64_t g_addr = reinterpret_cast<uint64_t>(p.g);
  const uint64_t in_addr = reinterpret_cast<uint64_t>(p.in);
  int64_t px[kLoadRows];
  // Byte addresses, as integers: they may point outside the tensors (pixels past P, taps
  // outside the map) and are dereferenced only where the load's predicate holds.
  uint64_t g_ptr[kLoadRows];  // this row's vector in G
  uint64_t b_ptr[kLoadRows];  // this row's vector in the input at this CTA's tap
  int oy[kLoadRows], ox[kLoadRows];
#pragma unroll
  for (int j = 0; j < kLoadRows; ++j) {
    px[j] = first_block * kBK + lrow + j * kRowsPerPass;
    const int64_t img = px[j] / hw_out, rem = px[j] % hw_out;
    oy[j] = static_cast<int>(rem / p.out_w);
    ox[j] = static_cast<int>(rem % p.out_w);
    const int64_t in_off = img * img_elems + oy[j] * row_elems + ox[j] * cp;
    g_ptr[j] = g_addr + uint64_t((px[j] * p.kp + k0 + lv * kVec) * kB);
    b_ptr[j] = in_addr + uint64_t((in_off + tap_elems) * kB);
  }
  const uint64_t g_step = uint64_t(int64_t(kBK) * p.kp * kB);
  const uint64_t b_step = uint64_t(in_step * kB), b_x_carry = uint64_t(x_carry * kB),
                 b_y_carry = uint64_t(y_carry * kB);
  int ld_stage = 0;

  const auto load_stage = [&]() {
#pragma unroll
    for (int j = 0; j < kLoadRows; ++j) {
      const int row = lrow + j * kRowsPerPass;
      const bool in_range = px[j] < p.pixels;
      // A: grad_output row px, filters k0 + 8·lv.. (a valid, aligned address when ignored).
      const bool a_ok = in_range && a_vec_ok;
      cp_async_16_ignore_src(smem + ld_stage + L::swizzled(row, lv),
                             reinterpret_cast<const void*>(a_ok ? g_ptr[j] : g_addr), !a_ok);
      // B: the input pixel tap (r, s) of output pixel px reads, channels c0 + 8·lv..
      const int iy = oy[j] + dy, ix = ox[j] + dx;
      const bool b_ok = in_range && b_vec_ok && iy >= 0 && iy < p.h && ix >= 0 && ix < p.w;
      cp_async_16_ignore_src(smem + ld_stage + kTileBytes + L::swizzled(row, lv),
                             reinterpret_cast<const void*>(b_ok ? b_ptr[j] : in_addr), !b_ok);
      px[j] += kBK;
      g_ptr[j] += g_step;
      b_ptr[j] += b_step;
      ox[j] += step_x;
      oy[j] += step_y;
      if (ox[j] >= p.out_w) {
        ox[j] -= p.out_w;
        ++oy[j];
        b_ptr[j] += b_x_carry;
      }
      if (oy[j] >= p.out_h) {
        oy[j] -= p.out_h;
        b_ptr[j] += b_y_carry;
      }
    }
    ld_stage = ld_stage == (kStages - 1) * kStageBytes ? 0 : ld_stage + kStageBytes;
  };

  // The ReLU mask (kMasked), as in conv3x3_igemm.cuh: relu_mask.cuh's StagedMask over
  // each thread's own G vectors.
  [[maybe_unused]] StagedMask<T, kLoadRows> mask;
  [[maybe_unused]] int64_t mk_px = first_block * kBK + lrow;  // row 0's pixel, next prefetch
  [[maybe_unused]] uint64_t mk_ptr =
      reinterpret_cast<uint64_t>(p.mask) + uint64_t((mk_px * p.kp + k0 + lv * kVec) * kB);
  const uint64_t row_pass_bytes = uint64_t(int64_t(kRowsPerPass) * p.kp * kB);
  const auto prefetch_mask = [&]() {
    mask.prefetch([&](int j) {
      const bool ok = a_vec_ok && mk_px + j * kRowsPerPass < p.pixels;
      const auto* src = reinterpret_cast<const uint4*>(mk_ptr + j * row_pass_bytes);
      return ok ? __ldg(src) : uint4{0u, 0u, 0u, 0u};
    });
    mk_px += kBK;
    mk_ptr += g_step;
  };
  // cp_async_pipeline's `landed`: does nothing unless kMasked.
  const auto apply_mask = [&](unsigned char* st, int kb) {
    if constexpr (kMasked) {
      mask.apply([&](int j) {
        return reinterpret_cast<uint4*>(st + L::swizzled(lrow + j * kRowsPerPass, lv));
      });
      if (kb + 1 < k_blocks) prefetch_mask();
    }
  };
  if constexpr (kMasked) {
    if (k_blocks > 0) prefetch_mask();
  }

  float acc[kMi][kNi][4] = {};

  // 16-bit: ldmatrix.x4.trans row addresses: lane l gives pixel row l % 8 of matrix l / 8.
  // A (a0..a3 = filters 0-7 / 8-15 × pixels 0-7 / 8-15): matrix q holds filters
  // 8·(q & 1).. and pixels 8·(q >> 1)... B (two n8 tiles: b0 b1 of tile 0, b0 b1 of
  // tile 1): matrix q holds pixels 8·(q & 1).. and channels 8·(q >> 1)...
  const int q = lane / 8, qrow = lane % 8;
  const int a_pix = (q >> 1) * 8 + qrow, a_vec = (warp_m * kWarpM) / kVec + (q & 1);
  const int b_pix = (q & 1) * 8 + qrow, b_vec = (warp_n * kWarpN) / kVec + (q >> 1);
  // tf32: scalar fragment loads (ldmatrix.trans moves 16-bit elements only). Lane (fg, ft)
  // = (lane / 4, lane % 4) reads rows (pixels) ft and ft + 4 of each k-step of 8: the A
  // elements of filters 16·i + fg (+ 8) of the warp, the B elements of channels 8·j + fg.
  // Those rows share the swizzle key 2·ft, so a column's byte offset within them is fixed
  // per lane: a_col, b_col.
  const int fg = lane / 4, ft = lane % 4;
  const auto col_offset = [&](int e) {
    return L::swizzled(ft, e / kVec) - ft * L::kRowBytes + (e % kVec) * int(sizeof(T));
  };
  [[maybe_unused]] int a_col[kMi][2], b_col[kNi];
#pragma unroll
  for (int i = 0; i < kMi; ++i) {
    a_col[i][0] = col_offset(warp_m * kWarpM + 16 * i + fg);
    a_col[i][1] = col_offset(warp_m * kWarpM + 16 * i + fg + 8);
  }
#pragma unroll
  for (int j = 0; j < kNi; ++j) b_col[j] = col_offset(warp_n * kWarpN + 8 * j + fg);

  const auto compute = [&](const unsigned char* st) {
#pragma unroll
    for (int ks = 0; ks < kBK / L::kMmaK; ++ks) {
      uint32_t a[kMi][4], b[kNi][2];
      if constexpr (sizeof(T) == 2) {
#pragma unroll
        for (int i = 0; i < kMi; ++i) {
          // Filters 16·i.. of the warp: two vectors further along the row.
          ldmatrix_x4_trans(a[i], st + L::swizzled(ks * 16 + a_pix, a_vec + 2 * i));
        }
#pragma unroll
        for (int j = 0; j < kNi / 2; ++j) {
          uint32_t r[4];
          ldmatrix_x4_trans(r, st + kTileBytes + L::swizzled(ks * 16 + b_pix, b_vec + 2 * j));
          b[2 * j][0] = r[0];
          b[2 * j][1] = r[1];
          b[2 * j + 1][0] = r[2];
          b[2 * j + 1][1] = r[3];
        }
      } else {
        const unsigned char* row0 = st + (ks * 8 + ft) * L::kRowBytes;
        const unsigned char* row4 = row0 + 4 * L::kRowBytes;
        const auto ld = [](const unsigned char* q4) {
          return igemm::MmaTraits<T>::operand(*reinterpret_cast<const uint32_t*>(q4));
        };
#pragma unroll
        for (int i = 0; i < kMi; ++i) {  // a0..a3: (fg, ft), (fg + 8, ft), (fg, ft + 4), ...
          a[i][0] = ld(row0 + a_col[i][0]);
          a[i][1] = ld(row0 + a_col[i][1]);
          a[i][2] = ld(row4 + a_col[i][0]);
          a[i][3] = ld(row4 + a_col[i][1]);
        }
#pragma unroll
        for (int j = 0; j < kNi; ++j) {  // b0, b1: (ft, fg), (ft + 4, fg)
          b[j][0] = ld(row0 + kTileBytes + b_col[j]);
          b[j][1] = ld(row4 + kTileBytes + b_col[j]);
        }
      }
#pragma unroll
      for (int i = 0; i < kMi; ++i) {
#pragma unroll
        for (int j = 0; j < kNi; ++j) igemm::MmaTraits<T>::mma(acc[i][j], a[i], b[j]);
      }
    }
  };
  cp_async_pipeline<kStages, kStageBytes>(k_blocks, smem, load_stage, compute, apply_mask);

  // This slice's partial sums: rows = filters, columns = channels of the tap.
  const int g = lane / 4, t4 = lane % 4;
  float* out = p.partial + int64_t(blockIdx.z) * p.k * 9 * p.cp;
#pragma unroll
  for (int i = 0; i < kMi; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int k = k0 + warp_m * kWarpM + i * 16 + g + 8 * h;
      if (k >= p.k) continue;
#pragma unroll
      for (int j = 0; j < kNi; ++j) {
        const int c = c0 + warp_n * kWarpN + j * 8 + 2 * t4;  // cp is even: c + 1 < cp too
        if (c >= p.cp) continue;
        float2 v;
        v.x = acc[i][j][2 * h];
        v.y = acc[i][j][2 * h + 1];
        *reinterpret_cast<float2*>(out + (int64_t(k) * 9 + tap) * p.cp + c) = v;
      }
    }
  }
}

// grad_weight[k, c, r, s] = sum over slices, in slice order, of partial[slice][k][tap][c].
template <typename T>
__global__ void wgrad_igemm_reduce_kernel(const float* __restrict__ partial, int slices, int k,
                                          int c, int cp, T* __restrict__ grad_weight,
                                          Strides4 gw_s) {
  const int64_t numel = int64_t(k) * c * 9;
  const int64_t slice_stride = int64_t(k) * 9 * cp;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int tap = static_cast<int>(i % 9);
    const int64_t kc = i / 9;
    const int ch = static_cast<int>(kc % c), f = static_cast<int>(kc / c);
    const int64_t src = (int64_t(f) * 9 + tap) * cp + ch;
    float sum = 0.f;
    for (int s = 0; s < slices; ++s) sum += partial[s * slice_stride + src];
    grad_weight[offset_of(gw_s, f, ch, tap / 3, tap % 3)] = static_cast<T>(sum);
  }
}

// Pixel slices: enough CTAs for about two waves, each slice at least 8 blocks of pixels;
// a function of the shape and the SM count only, so results repeat run to run.
inline int64_t choose_slices(int64_t pixel_blocks, int64_t ctas_per_slice, int64_t sms) {
  const int64_t want = ceil_div(2 * sms, ctas_per_slice);
  const int64_t most = std::max<int64_t>(1, pixel_blocks / 8);
  return std::clamp<int64_t>(want, 1, std::min<int64_t>(most, 65535));
}

}  // namespace wgrad
}  // namespace overfeat_kernels
