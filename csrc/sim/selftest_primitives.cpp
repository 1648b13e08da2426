// Kernels that exercise the tensor-core and async-copy primitives of
// csrc/cuda/ptx_primitives.cuh in the simulator, written as CUDA (one warp, shared-memory
// staging, launch_kernel). Exposed as overfeat_kernels_simtest::primitive(name, a, b, c)
// for tests/test_sim_primitives.py, which checks the results against the PTX ISA's
// layouts computed independently in Python. Compiled into the simulator only.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "../cuda/launch.cuh"
#include "../cuda/ptx_primitives.cuh"

namespace overfeat_kernels {
namespace {

enum class Mma { BF16, F16, TF32 };

template <Mma kType>
__device__ __forceinline__ void mma(float d[4], const uint32_t a[4], const uint32_t b[2],
                                    const float c[4]) {
  if constexpr (kType == Mma::BF16) mma_m16n8k16_bf16(d, a, b, c);
  if constexpr (kType == Mma::F16) mma_m16n8k16_f16(d, a, b, c);
  if constexpr (kType == Mma::TF32) mma_m16n8k8_tf32(d, a, b, c);
}

// Each lane's registers verbatim: a[lane][0..3], b[lane][0..1], c[lane][0..3] in, its D
// fragment d[lane][0..3] out. The test packs and unpacks them by the ISA's tables.
template <Mma kType>
__global__ void mma_registers_kernel(const int32_t* a, const int32_t* b, const float* c,
                                     float* d) {
  const int lane = threadIdx.x;
  uint32_t ra[4], rb[2];
  float rc[4], rd[4];
  for (int i = 0; i < 4; ++i) ra[i] = static_cast<uint32_t>(a[lane * 4 + i]);
  for (int i = 0; i < 2; ++i) rb[i] = static_cast<uint32_t>(b[lane * 2 + i]);
  for (int i = 0; i < 4; ++i) rc[i] = c[lane * 4 + i];
  mma<kType>(rd, ra, rb, rc);
  for (int i = 0; i < 4; ++i) d[lane * 4 + i] = rd[i];
}

// Only lanes 0-15 execute the .aligned mma (launched with 32 threads: lanes 16-31 exit
// instead; with 16: the warp is partial). Must raise either way.
__global__ void mma_half_warp_kernel(float* d) {
  const uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  const float c[4] = {0.f, 0.f, 0.f, 0.f};
  if (threadIdx.x < 16) mma_m16n8k16_bf16(d + 4 * threadIdx.x, a, b, c);
}

// D (16x8) = A (16xK) * B (Kx8) + C, all row-major floats: staged in shared memory, the
// fragments gathered by the fragment-coordinate helpers, D scattered by the same.
template <Mma kType>
__global__ void mma_tile_kernel(const float* A, const float* B, const float* C, float* D) {
  constexpr int K = kType == Mma::TF32 ? 8 : 16;
  __shared__ __align__(16) float sa[16 * K];
  __shared__ __align__(16) float sb[K * 8];
  __shared__ __align__(16) float sc[16 * 8];
  const int lane = threadIdx.x;
  for (int i = lane; i < 16 * K; i += 32) sa[i] = A[i];
  for (int i = lane; i < K * 8; i += 32) sb[i] = B[i];
  for (int i = lane; i < 16 * 8; i += 32) sc[i] = C[i];
  __syncthreads();
  uint32_t a[4], b[2];
  float c[4], d[4];
  const auto at = [](const float* m, int cols, RowCol p) { return m[p.row * cols + p.col]; };
  if constexpr (kType == Mma::TF32) {
    for (int i = 0; i < 4; ++i) a[i] = float_to_tf32(at(sa, K, mma_m16n8k8_tf32_a(lane, i)));
    for (int i = 0; i < 2; ++i) b[i] = float_to_tf32(at(sb, 8, mma_m16n8k8_tf32_b(lane, i)));
  } else {
    const auto pack = kType == Mma::BF16 ? pack_bf16x2 : pack_f16x2;
    for (int r = 0; r < 4; ++r) {
      a[r] = pack(at(sa, K, mma_m16n8k16_a(lane, 2 * r)),
                  at(sa, K, mma_m16n8k16_a(lane, 2 * r + 1)));
    }
    for (int r = 0; r < 2; ++r) {
      b[r] = pack(at(sb, 8, mma_m16n8k16_b(lane, 2 * r)),
                  at(sb, 8, mma_m16n8k16_b(lane, 2 * r + 1)));
    }
  }
  for (int i = 0; i < 4; ++i) c[i] = at(sc, 8, mma_m16n8_c(lane, i));
  mma<kType>(d, a, b, c);
  for (int i = 0; i < 4; ++i) {
    const RowCol p = mma_m16n8_c(lane, i);
    D[p.row * 8 + p.col] = d[i];
  }
}

// The usual tensor-core pipeline: A (16x16) and B (16x8) stored row-major as bf16 in
// shared memory, A's fragment loaded with ldmatrix.x4 and B's with ldmatrix.x2.trans.
__global__ void mma_ldmatrix_kernel(const float* A, const float* B, const float* C, float* D) {
  __shared__ __align__(16) uint32_t sa[16][8];  // bf16x2 pairs: row-major 16x16 bf16
  __shared__ __align__(16) uint32_t sb[16][4];  // row-major 16x8 bf16
  const int lane = threadIdx.x;
  for (int i = lane; i < 16 * 8; i += 32) sa[i / 8][i % 8] = pack_bf16x2(A[2 * i], A[2 * i + 1]);
  for (int i = lane; i < 16 * 4; i += 32) sb[i / 4][i % 4] = pack_bf16x2(B[2 * i], B[2 * i + 1]);
  __syncthreads();
  uint32_t a[4], b[2];
  // Matrices 0-3 of A: rows 0-7 / 8-15 of columns 0-7, then of columns 8-15 (a0..a7).
  ldmatrix_x4(a, &sa[lane % 16][(lane / 16) * 4]);
  // Matrices 0-1 of B: rows 0-7 and 8-15, transposed into the column fragments b0..b3.
  ldmatrix_x2_trans(b, &sb[lane % 16][0]);
  float c[4], d[4];
  for (int i = 0; i < 4; ++i) {
    const RowCol p = mma_m16n8_c(lane, i);
    c[i] = C[p.row * 8 + p.col];
  }
  mma_m16n8k16_bf16(d, a, b, c);
  for (int i = 0; i < 4; ++i) {
    const RowCol p = mma_m16n8_c(lane, i);
    D[p.row * 8 + p.col] = d[i];
  }
}

enum class LdmatrixCase { Normal, Misaligned, Global, PartialWarp, Divergent };

// A 32x8 b16 tile in shared memory; lane l gives the address of row rows[l] (none when
// rows[l] < 0) and writes its kNum registers to out[l][0..kNum-1].
template <int kNum, bool kTrans, LdmatrixCase kCase>
__global__ void ldmatrix_kernel(const int16_t* tile, const int32_t* rows, int32_t* out) {
  __shared__ __align__(16) uint16_t s[32][8];
  const int lane = threadIdx.x;
  for (int k = 0; k < 8; ++k) s[lane][k] = static_cast<uint16_t>(tile[lane * 8 + k]);
  __syncthreads();
  const void* row = rows[lane] >= 0 ? &s[rows[lane]][0] : nullptr;
  if (kCase == LdmatrixCase::Misaligned && lane == 3) row = &s[rows[lane]][2];
  if (kCase == LdmatrixCase::Global && lane == 5) row = tile;
  uint32_t r[4] = {0, 0, 0, 0};
  const auto load = [&] {
    if constexpr (kNum == 1) kTrans ? ldmatrix_x1_trans(r, row) : ldmatrix_x1(r, row);
    if constexpr (kNum == 2) kTrans ? ldmatrix_x2_trans(r, row) : ldmatrix_x2(r, row);
    if constexpr (kNum == 4) kTrans ? ldmatrix_x4_trans(r, row) : ldmatrix_x4(r, row);
  };
  if (kCase == LdmatrixCase::Divergent) {
    // The same instruction at two call sites: lanes of the warp diverge (must raise).
    if (lane % 2) {
      ldmatrix_x4(r, row);
    } else {
      ldmatrix_x4(r, row);
    }
  } else if (kCase != LdmatrixCase::PartialWarp || lane < 16) {
    load();
  }
  for (int j = 0; j < kNum; ++j) out[lane * kNum + j] = static_cast<int32_t>(r[j]);
}

// cp.async groups, 32 lanes: each lane copies 16 bytes (group 1), then 8 and 4 bytes
// (group 2), and reads its own destinations (7 floats) at each step:
//   0: before any wait             -> all poison
//   1: after wait_group<1>         -> group 1 landed, group 2 not
//   2: after wait_group<0>         -> both landed
//   3: after a new, uncommitted 4-byte copy and wait_group<0> -> not landed (no group)
//   4: after wait_all and a barrier, reading lane (l + 1) % 32's destinations -> landed
// src: 16-byte parts [0, 128), 8-byte [128, 192), 4-byte [192, 224), the later 4-byte
// copy [224, 256) floats.
__global__ void cp_async_kernel(const float* src, float* out) {
  __shared__ __align__(16) float s16[32][4];
  __shared__ __align__(16) float s8[32][2];
  __shared__ __align__(16) float s4[32];
  const int lane = threadIdx.x;
  const auto snapshot = [&](int step, int from) {
    float* o = out + (step * 32 + lane) * 7;
    for (int k = 0; k < 4; ++k) o[k] = s16[from][k];
    for (int k = 0; k < 2; ++k) o[4 + k] = s8[from][k];
    o[6] = s4[from];
  };
  cp_async_16(s16[lane], src + 4 * lane);
  cp_async_commit_group();
  cp_async_8(s8[lane], src + 128 + 2 * lane);
  cp_async_4(&s4[lane], src + 192 + lane);
  cp_async_commit_group();
  snapshot(0, lane);
  cp_async_wait_group<1>();
  snapshot(1, lane);
  cp_async_wait_group<0>();
  snapshot(2, lane);
  cp_async_4(&s4[lane], src + 224 + lane);
  cp_async_wait_group<0>();
  snapshot(3, lane);
  cp_async_wait_all();
  __syncthreads();
  snapshot(4, (lane + 1) % 32);
}

// Zero-fill: lane l copies l % 17 of 16 bytes, l % 9 of 8 and l % 5 of 4 (src: 16-byte
// parts at [0, 512), 8-byte at [512, 768), 4-byte at [768, 896)); out[l] = its 28 bytes.
__global__ void cp_async_zfill_kernel(const uint8_t* src, uint8_t* out) {
  __shared__ __align__(16) uint8_t d16[32][16];
  __shared__ __align__(16) uint8_t d8[32][8];
  __shared__ __align__(16) uint8_t d4[32][4];
  const int lane = threadIdx.x;
  cp_async_16_zfill(d16[lane], src + 16 * lane, lane % 17);
  cp_async_8_zfill(d8[lane], src + 512 + 8 * lane, lane % 9);
  cp_async_4_zfill(d4[lane], src + 768 + 4 * lane, lane % 5);
  cp_async_wait_all();
  uint8_t* o = out + lane * 28;
  for (int k = 0; k < 16; ++k) o[k] = d16[lane][k];
  for (int k = 0; k < 8; ++k) o[16 + k] = d8[lane][k];
  for (int k = 0; k < 4; ++k) o[24 + k] = d4[lane][k];
}

// ignore-src: lanes l % 3 == 0 give an address 1 MiB past the source (never read) and
// ignore it; the others copy their 16 bytes. out[l] = the 16 bytes that landed.
__global__ void cp_async_ignore_src_kernel(const uint8_t* src, uint8_t* out) {
  __shared__ __align__(16) uint8_t d[32][16];
  const int lane = threadIdx.x;
  const bool ignore = lane % 3 == 0;
  const uint8_t* from = ignore ? src + (1 << 20) + 16 * lane : src + 16 * lane;
  cp_async_16_ignore_src(d[lane], from, ignore);
  cp_async_wait_all();
  for (int k = 0; k < 16; ++k) out[lane * 16 + k] = d[lane][k];
}

enum class CpAsyncError { MisalignedDst, MisalignedSrc, GlobalDst, SrcBytesTooLarge };

// Copies the GPU would fault on (or leave undefined): each must raise.
template <CpAsyncError kCase>
__global__ void cp_async_error_kernel(const float* src, float* out) {
  __shared__ __align__(16) float s[32][8];
  const int lane = threadIdx.x;
  if (kCase == CpAsyncError::MisalignedDst) cp_async_16(&s[lane][1], src + 4 * lane);
  if (kCase == CpAsyncError::MisalignedSrc) cp_async_16(s[lane], src + 4 * lane + 1);
  if (kCase == CpAsyncError::GlobalDst) cp_async_16(out + 4 * lane, src + 4 * lane);
  if (kCase == CpAsyncError::SrcBytesTooLarge) cp_async_16_zfill(s[lane], src + 4 * lane, 17);
  cp_async_wait_all();
  out[lane] = s[lane][0];
}

enum class Convert { TF32, BF16x2, F16x2 };

// out[i] = float_to_tf32(x[i]), pack_bf16x2(x[i], y[i]) or pack_f16x2(x[i], y[i]).
template <Convert kOp>
__global__ void convert_kernel(const float* x, const float* y, int32_t* out, int64_t n) {
  for (int64_t i = global_thread_index(); i < n; i += grid_stride()) {
    uint32_t r = 0;
    if constexpr (kOp == Convert::TF32) r = float_to_tf32(x[i]);
    if constexpr (kOp == Convert::BF16x2) r = pack_bf16x2(x[i], y[i]);
    if constexpr (kOp == Convert::F16x2) r = pack_f16x2(x[i], y[i]);
    out[i] = static_cast<int32_t>(r);
  }
}

void check_input(const at::Tensor& t, at::ScalarType type, int64_t numel, const char* what) {
  TORCH_CHECK(t.is_cpu() && t.is_contiguous() && t.scalar_type() == type && t.numel() == numel,
              "simtest primitive: ", what, " must be a contiguous CPU tensor of ", numel, " ",
              c10::toString(type), " values, got ", t.scalar_type(), " ", t.sizes());
}

template <Mma kType>
at::Tensor run_mma(const std::string& form, const at::Tensor& a, const at::Tensor& b,
                   const at::Tensor& c) {
  const int64_t K = kType == Mma::TF32 ? 8 : 16;
  if (form == "registers") {
    check_input(a, at::kInt, 32 * 4, "a");
    check_input(b, at::kInt, 32 * 2, "b");
    check_input(c, at::kFloat, 32 * 4, "c");
    at::Tensor d = at::empty({32, 4}, c.options());
    launch_kernel<mma_registers_kernel<kType>>(
        1, 32, 0, nullptr, a.const_data_ptr<int32_t>(), b.const_data_ptr<int32_t>(),
        c.const_data_ptr<float>(), d.mutable_data_ptr<float>());
    return d;
  }
  check_input(a, at::kFloat, 16 * K, "a");
  check_input(b, at::kFloat, K * 8, "b");
  check_input(c, at::kFloat, 16 * 8, "c");
  at::Tensor d = at::empty({16, 8}, c.options());
  if (form == "tile") {
    launch_kernel<mma_tile_kernel<kType>>(1, 32, 0, nullptr, a.const_data_ptr<float>(),
                                          b.const_data_ptr<float>(), c.const_data_ptr<float>(),
                                          d.mutable_data_ptr<float>());
  } else if (form == "ldmatrix" && kType == Mma::BF16) {
    launch_kernel<mma_ldmatrix_kernel>(1, 32, 0, nullptr, a.const_data_ptr<float>(),
                                       b.const_data_ptr<float>(), c.const_data_ptr<float>(),
                                       d.mutable_data_ptr<float>());
  } else {
    TORCH_CHECK(false, "simtest primitive: unknown mma form ", form);
  }
  return d;
}

template <int kNum, bool kTrans>
at::Tensor run_ldmatrix(const std::string& variant, const at::Tensor& tile,
                        const at::Tensor& rows) {
  check_input(tile, at::kShort, 32 * 8, "a (the tile)");
  check_input(rows, at::kInt, 32, "b (the row of each lane)");
  at::Tensor out = at::empty({32, kNum}, rows.options());
  const auto go = [&](auto kernel_tag) {
    constexpr LdmatrixCase kCase = decltype(kernel_tag)::value;
    launch_kernel<ldmatrix_kernel<kNum, kTrans, kCase>>(1, 32, 0, nullptr,
                                                         tile.const_data_ptr<int16_t>(),
                                                         rows.const_data_ptr<int32_t>(),
                                                         out.mutable_data_ptr<int32_t>());
  };
  using C = LdmatrixCase;
  if (variant.empty()) {
    go(std::integral_constant<C, C::Normal>{});
  } else if (variant == "_misaligned") {
    go(std::integral_constant<C, C::Misaligned>{});
  } else if (variant == "_global") {
    go(std::integral_constant<C, C::Global>{});
  } else if (variant == "_partial_warp") {
    go(std::integral_constant<C, C::PartialWarp>{});
  } else if (variant == "_divergent") {
    go(std::integral_constant<C, C::Divergent>{});
  } else {
    TORCH_CHECK(false, "simtest primitive: unknown ldmatrix variant ", variant);
  }
  return out;
}

template <Convert kOp>
at::Tensor run_convert(const at::Tensor& x, const at::Tensor& y) {
  const int64_t n = x.numel();
  check_input(x, at::kFloat, n, "a");
  if (kOp != Convert::TF32) check_input(y, at::kFloat, n, "b");
  at::Tensor out = at::empty({n}, x.options().dtype(at::kInt));
  launch_kernel<convert_kernel<kOp>>(elementwise_blocks(n), kElementwiseThreads, 0, nullptr,
                                     x.const_data_ptr<float>(),
                                     kOp == Convert::TF32 ? nullptr : y.const_data_ptr<float>(),
                                     out.mutable_data_ptr<int32_t>(), n);
  return out;
}

// name: mma_{bf16,f16,tf32}_{registers,tile}, mma_bf16_ldmatrix, mma_{half,partial}_warp,
// ldmatrix_x{1,2,4}[_trans][_misaligned|_global|_partial_warp|_divergent], cp_async,
// cp_async_zfill, cp_async_ignore_src,
// cp_async_{misaligned_dst,misaligned_src,global_dst,src_bytes_too_large}, float_to_tf32,
// pack_bf16x2, pack_f16x2. Inputs a, b, c as each kernel above describes.
at::Tensor primitive(const std::string& name, const at::Tensor& a, const at::Tensor& b,
                     const at::Tensor& c) {
  const auto starts = [&](const char* prefix) { return name.rfind(prefix, 0) == 0; };
  const auto rest = [&](const char* prefix) { return name.substr(std::string(prefix).size()); };
  if (starts("mma_bf16_")) return run_mma<Mma::BF16>(rest("mma_bf16_"), a, b, c);
  if (starts("mma_f16_")) return run_mma<Mma::F16>(rest("mma_f16_"), a, b, c);
  if (starts("mma_tf32_")) return run_mma<Mma::TF32>(rest("mma_tf32_"), a, b, c);
  if (starts("ldmatrix_x1_trans")) return run_ldmatrix<1, true>(rest("ldmatrix_x1_trans"), a, b);
  if (starts("ldmatrix_x2_trans")) return run_ldmatrix<2, true>(rest("ldmatrix_x2_trans"), a, b);
  if (starts("ldmatrix_x4_trans")) return run_ldmatrix<4, true>(rest("ldmatrix_x4_trans"), a, b);
  if (starts("ldmatrix_x1")) return run_ldmatrix<1, false>(rest("ldmatrix_x1"), a, b);
  if (starts("ldmatrix_x2")) return run_ldmatrix<2, false>(rest("ldmatrix_x2"), a, b);
  if (starts("ldmatrix_x4")) return run_ldmatrix<4, false>(rest("ldmatrix_x4"), a, b);
  if (name == "mma_half_warp" || name == "mma_partial_warp") {
    at::Tensor d = at::zeros({32, 4}, a.options().dtype(at::kFloat));
    launch_kernel<mma_half_warp_kernel>(1, name == "mma_half_warp" ? 32 : 16, 0, nullptr,
                                        d.mutable_data_ptr<float>());
    return d;
  }
  if (name == "cp_async") {
    check_input(a, at::kFloat, 256, "a");
    at::Tensor out = at::empty({5, 32, 7}, a.options());
    launch_kernel<cp_async_kernel>(1, 32, 0, nullptr, a.const_data_ptr<float>(),
                                   out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "cp_async_zfill") {
    check_input(a, at::kByte, 896, "a");
    at::Tensor out = at::empty({32, 28}, a.options());
    launch_kernel<cp_async_zfill_kernel>(1, 32, 0, nullptr, a.const_data_ptr<uint8_t>(),
                                         out.mutable_data_ptr<uint8_t>());
    return out;
  }
  if (name == "cp_async_ignore_src") {
    check_input(a, at::kByte, 512, "a");
    at::Tensor out = at::empty({32, 16}, a.options());
    launch_kernel<cp_async_ignore_src_kernel>(1, 32, 0, nullptr, a.const_data_ptr<uint8_t>(),
                                              out.mutable_data_ptr<uint8_t>());
    return out;
  }
  if (starts("cp_async_")) {
    check_input(a, at::kFloat, 256, "a");
    at::Tensor out = at::empty({128}, a.options());
    const float* s = a.const_data_ptr<float>();
    float* o = out.mutable_data_ptr<float>();
    using E = CpAsyncError;
    const std::string which = rest("cp_async_");
    if (which == "misaligned_dst") {
      launch_kernel<cp_async_error_kernel<E::MisalignedDst>>(1, 32, 0, nullptr, s, o);
    } else if (which == "misaligned_src") {
      launch_kernel<cp_async_error_kernel<E::MisalignedSrc>>(1, 32, 0, nullptr, s, o);
    } else if (which == "global_dst") {
      launch_kernel<cp_async_error_kernel<E::GlobalDst>>(1, 32, 0, nullptr, s, o);
    } else if (which == "src_bytes_too_large") {
      launch_kernel<cp_async_error_kernel<E::SrcBytesTooLarge>>(1, 32, 0, nullptr, s, o);
    } else {
      TORCH_CHECK(false, "simtest primitive: unknown test ", name);
    }
    return out;
  }
  if (name == "float_to_tf32") return run_convert<Convert::TF32>(a, b);
  if (name == "pack_bf16x2") return run_convert<Convert::BF16x2>(a, b);
  if (name == "pack_f16x2") return run_convert<Convert::F16x2>(a, b);
  TORCH_CHECK(false, "simtest primitive: unknown test ", name);
}

}  // namespace
}  // namespace overfeat_kernels

TORCH_LIBRARY_FRAGMENT(overfeat_kernels_simtest, m) {
  m.def("primitive(str name, Tensor a, Tensor b, Tensor c) -> Tensor");
  m.impl("primitive", c10::DispatchKey::CPU, &overfeat_kernels::primitive);
}
