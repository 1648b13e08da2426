// Kernels that exercise the simulator's Hopper primitives (wgmma, TMA, warpgroups),
// written as CUDA and launched like the library's kernels, for tests/test_sim_wgmma.py,
// tests/test_sim_tma.py and tests/test_sim_gemm.py. Compiled into the simulator only.
// Each kernel template takes a `Bug` switch that plants one mistake, so the tests can
// show the simulator catching it.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "../cuda/dynamic_smem.cuh"
#include "../cuda/hopper_gemm.cuh"
#include "../cuda/hopper_layouts.cuh"
#include "../cuda/launch.cuh"
#include "../cuda/mbarrier.cuh"
#include "../cuda/tma.cuh"
#include "../cuda/wgmma.cuh"
#include "planted_bug.h"

namespace overfeat_kernels {
namespace {

using hopper::Swizzle;
using hopper_gemm::gemm_kernel;
using hopper_gemm::GemmBug;
using hopper_gemm::GemmMaps;
using hopper_gemm::kGemmK;
using hopper_gemm::kGemmStageBytes;
using hopper_gemm::kGemmStages;
using hopper_gemm::kGemmTile;

// ---- wgmma: one warpgroup, D (64 x N) = A (64 x K) B (N x K)^T ---------------------------

enum class WgmmaBug : int {
  kNone = 0,
  kReadBeforeWait,    // the accumulators stored before wait_group
  kWriteBeforeWait,   // an accumulator zeroed before wait_group
  kNoFence,           // no wgmma.fence before the first wgmma
  kNoFenceAfterWait,  // a second pass reuses handed-back accumulators without a fence
  kOverwriteOperand,  // shared memory of A overwritten before wait_group
  kWaitTooEarly,      // one group per k step, then wait_group<1>
  kMismatch,          // thread 5 passes another B descriptor
  kNoWait,            // the thread exits with the wgmma pending
  kNoProxyFence,      // operands written by ordinary stores, no fence.proxy.async
};

struct WgmmaParams {
  const unsigned char* a;  // 64 x K elements, row-major (unused for A in registers)
  const unsigned char* b;  // N x K elements, row-major
  const int32_t* offset_a;  // byte offset in the A region of element (m, k): the test's layout
  const int32_t* offset_b;
  const int32_t* start_a;  // per k step: the descriptor's start, bytes into the region
  const int32_t* start_b;
  uint32_t lbo_a, sbo_a, lbo_b, sbo_b;
  Swizzle swizzle_a, swizzle_b;
  int k;            // total K
  int region_a;     // bytes of the A region (a multiple of 1024)
  float* out;       // 64 x N
};

template <int N, MmaType kType, bool kTransA, bool kTransB, bool kARegs, WgmmaBug kBug>
__global__ void wgmma_kernel(WgmmaParams p) {
  constexpr int kElem = kType == MmaType::kTF32 ? 4 : 2;
  constexpr int kStepK = kType == MmaType::kTF32 ? 8 : 16;
  unsigned char* base = align_up(dynamic_shared_memory<unsigned char>(), 1024);
  unsigned char* region_a = base;
  unsigned char* region_b = base + p.region_a;
  const int t = threadIdx.x;
  for (int i = t; i < 64 * p.k; i += blockDim.x) {
    if (!kARegs) memcpy(region_a + p.offset_a[i], p.a + size_t(i) * kElem, kElem);
  }
  for (int i = t; i < N * p.k; i += blockDim.x) memcpy(region_b + p.offset_b[i], p.b + size_t(i) * kElem, kElem);
  if (kBug != WgmmaBug::kNoProxyFence) fence_proxy_async_shared();
  __syncthreads();
  float acc[N / 2];
  if (kBug != WgmmaBug::kNoFence) wgmma_fence();
  const int steps = p.k / kStepK;
  for (int s = 0; s < steps; ++s) {
    const uint64_t db = make_matrix_desc(region_b + p.start_b[s], p.lbo_b, p.sbo_b, p.swizzle_b) +
                        (kBug == WgmmaBug::kMismatch && t == 5 ? 2 : 0);
    if constexpr (kARegs) {
      uint32_t a[4];
      for (int r = 0; r < 4; ++r) {
        if constexpr (kType == MmaType::kTF32) {
          const auto q = hopper::wgmma_a_k8_tf32(t, r);
          memcpy(&a[r], p.a + (size_t(q.row) * p.k + s * kStepK + q.col) * 4, 4);
        } else {
          uint16_t half[2];
          for (int h = 0; h < 2; ++h) {
            const auto q = hopper::wgmma_a_k16(t, 2 * r + h);
            memcpy(&half[h], p.a + (size_t(q.row) * p.k + s * kStepK + q.col) * 2, 2);
          }
          a[r] = half[0] | (uint32_t(half[1]) << 16);
        }
      }
      wgmma_rs<N, kType, kTransB>(acc, a, db, s > 0);
      // The A registers must stay untouched until the wait: keep them alive past it.
      wgmma_commit_group();
      wgmma_wait_group<0>();
      if (s + 1 < steps) wgmma_fence();
      continue;
    } else {
      const uint64_t da = make_matrix_desc(region_a + p.start_a[s], p.lbo_a, p.sbo_a, p.swizzle_a);
      wgmma_ss<N, kType, kTransA, kTransB>(acc, da, db, s > 0);
    }
    if (kBug == WgmmaBug::kWaitTooEarly) wgmma_commit_group();
  }
  if (!kARegs) {
    if (kBug != WgmmaBug::kWaitTooEarly) wgmma_commit_group();
    if (kBug == WgmmaBug::kReadBeforeWait) {
      for (int i = 0; i < N / 2; ++i) {
        const auto q = hopper::wgmma_d(t, i);
        p.out[q.row * N + q.col] = acc[i];
      }
    }
    if (kBug == WgmmaBug::kWriteBeforeWait) acc[0] = 0.f;
    if (kBug == WgmmaBug::kOverwriteOperand && t == 0) region_a[p.start_a[0]] ^= 1;
    if (kBug == WgmmaBug::kNoWait) return;
    if (kBug == WgmmaBug::kWaitTooEarly) {
      wgmma_wait_group<1>();
    } else {
      wgmma_wait_group<0>();
    }
  }
  if (kBug == WgmmaBug::kNoFenceAfterWait) {
    // No fence since the wait handed the accumulators back: the simulator cannot see
    // whether they were touched, and asks for one (wgmma.cuh).
    const uint64_t da = make_matrix_desc(region_a + p.start_a[0], p.lbo_a, p.sbo_a, p.swizzle_a);
    const uint64_t db = make_matrix_desc(region_b + p.start_b[0], p.lbo_b, p.sbo_b, p.swizzle_b);
    wgmma_ss<N, kType, kTransA, kTransB>(acc, da, db, true);
    wgmma_commit_group();
    wgmma_wait_group<0>();
  }
  if (kBug == WgmmaBug::kReadBeforeWait) return;
  for (int i = 0; i < N / 2; ++i) {
    const auto q = hopper::wgmma_d(t, i);
    p.out[q.row * N + q.col] = acc[i];
  }
  if (kBug == WgmmaBug::kWaitTooEarly) wgmma_wait_group<0>();  // too late: out is written
}

template <int N, MmaType kType, bool kTransA, bool kTransB, bool kARegs, WgmmaBug kBug>
void launch_wgmma(const WgmmaParams& p, int threads, size_t smem) {
  set_max_dynamic_smem<wgmma_kernel<N, kType, kTransA, kTransB, kARegs, kBug>>(static_cast<int>(smem));
  launch_kernel<wgmma_kernel<N, kType, kTransA, kTransB, kARegs, kBug>>(1, threads, smem, nullptr, p);
}

template <int N, MmaType kType, bool kTransA, bool kTransB, bool kARegs>
void launch_wgmma_bug(const WgmmaParams& p, int bug, int threads, size_t smem) {
  using B = WgmmaBug;
  const bool known = with_constant<B::kNone, B::kReadBeforeWait, B::kWriteBeforeWait, B::kNoFence,
                                   B::kNoFenceAfterWait, B::kOverwriteOperand, B::kWaitTooEarly,
                                   B::kMismatch, B::kNoWait, B::kNoProxyFence>(
      static_cast<B>(bug), [&](auto b) {
        launch_wgmma<N, kType, kTransA, kTransB, kARegs, decltype(b)::value>(p, threads, smem);
      });
  TORCH_CHECK(known, "simtest: unknown wgmma bug ", bug);
}

// Correct kernels for every layout; the planted bugs only on m64n64 bf16, K-major, A in
// shared memory (each bug is one more kernel to compile).
template <int N, MmaType kType>
void launch_wgmma_layout(const WgmmaParams& p, bool trans_a, bool trans_b, bool a_regs, int bug,
                         int threads, size_t smem) {
  constexpr auto kOk = WgmmaBug::kNone;
  if (bug != 0) {
    TORCH_CHECK(N == 64 && kType == MmaType::kBF16 && !trans_a && !trans_b && !a_regs,
                "simtest wgmma: planted bugs run on m64n64 bf16, K-major, A from shared memory");
    if constexpr (N == 64 && kType == MmaType::kBF16) {
      launch_wgmma_bug<64, MmaType::kBF16, false, false, false>(p, bug, threads, smem);
    }
  } else if (a_regs) {
    if (trans_b) {
      launch_wgmma<N, kType, false, true, true, kOk>(p, threads, smem);
    } else {
      launch_wgmma<N, kType, false, false, true, kOk>(p, threads, smem);
    }
  } else if (trans_a) {
    if (trans_b) {
      launch_wgmma<N, kType, true, true, false, kOk>(p, threads, smem);
    } else {
      launch_wgmma<N, kType, true, false, false, kOk>(p, threads, smem);
    }
  } else if (trans_b) {
    launch_wgmma<N, kType, false, true, false, kOk>(p, threads, smem);
  } else {
    launch_wgmma<N, kType, false, false, false, kOk>(p, threads, smem);
  }
}

// inputs: a (64 x K raw elements), b (N x K), offset_a, offset_b, start_a, start_b (int32)
// args: type (0 bf16, 1 f16, 2 tf32), n, k, trans_a, trans_b, a_regs, lbo_a, sbo_a, lbo_b,
//       sbo_b, swizzle_a, swizzle_b, region_a, region_b, bug, threads
at::Tensor run_wgmma(const std::vector<at::Tensor>& in, const std::vector<int64_t>& args) {
  TORCH_CHECK(in.size() == 6 && args.size() == 16, "simtest wgmma: 6 tensors, 16 args");
  const int type = int(args[0]), n = int(args[1]);
  WgmmaParams p{};
  p.a = static_cast<const unsigned char*>(in[0].data_ptr());
  p.b = static_cast<const unsigned char*>(in[1].data_ptr());
  p.offset_a = in[2].data_ptr<int32_t>();
  p.offset_b = in[3].data_ptr<int32_t>();
  p.start_a = in[4].data_ptr<int32_t>();
  p.start_b = in[5].data_ptr<int32_t>();
  p.k = int(args[2]);
  p.lbo_a = uint32_t(args[6]);
  p.sbo_a = uint32_t(args[7]);
  p.lbo_b = uint32_t(args[8]);
  p.sbo_b = uint32_t(args[9]);
  p.swizzle_a = static_cast<Swizzle>(args[10]);
  p.swizzle_b = static_cast<Swizzle>(args[11]);
  p.region_a = int(args[12]);
  at::Tensor out = at::full({64, n}, -1.0f, at::kFloat);
  p.out = out.data_ptr<float>();
  const size_t smem = size_t(args[12] + args[13] + 1024);
  const bool ta = args[3] != 0, tb = args[4] != 0, regs = args[5] != 0;
  const int bug = int(args[14]), threads = int(args[15]);
#define OVK_N(NN, T)                                                                 \
  if (n == NN) {                                                                     \
    launch_wgmma_layout<NN, T>(p, ta, tb, regs, bug, threads, smem);                 \
    return out;                                                                      \
  }
  if (type == 0) { OVK_N(64, MmaType::kBF16) OVK_N(128, MmaType::kBF16) OVK_N(256, MmaType::kBF16) }
  if (type == 1) { OVK_N(64, MmaType::kF16) OVK_N(128, MmaType::kF16) OVK_N(256, MmaType::kF16) }
  if (type == 2) {
    TORCH_CHECK(!ta && !tb && bug == 0, "simtest wgmma: tf32 is K-major");
    constexpr auto kOk = WgmmaBug::kNone;
    if (n == 64) { launch_wgmma<64, MmaType::kTF32, false, false, false, kOk>(p, threads, smem); return out; }
    if (n == 128) {
      if (regs) launch_wgmma<128, MmaType::kTF32, false, false, true, kOk>(p, threads, smem);
      else launch_wgmma<128, MmaType::kTF32, false, false, false, kOk>(p, threads, smem);
      return out;
    }
  }
#undef OVK_N
  TORCH_CHECK(false, "simtest wgmma: unsupported type ", type, " / n ", n);
}

// ---- TMA: a load into shared memory, dumped byte for byte; a store of a shared tile ------

enum class TmaBug : int {
  kNone = 0,
  kExpectMore,  // expect_tx announces 16 bytes more than land: the phase never completes
  kExpectLess,  // 16 bytes fewer: the tx-count ends the phase below zero
  kNoWait,      // the box is read without waiting on the barrier
  kMisaligned,  // the destination 16 bytes past a 1024-byte boundary
  kNoFence,     // (store) the shared tile written by ordinary stores, no fence.proxy.async
  kWrongDims,   // a 2-D instruction whatever the map's rank
};

struct TmaArgs {
  int rank;
  bool im2col;
  int32_t coords[5];
  uint16_t offsets[2];
  uint32_t bytes;  // the box's bytes (what expect_tx announces)
  int dump;        // bytes of shared memory copied out
};

template <TmaBug kBug>
__global__ void tma_load_kernel(const __grid_constant__ tma::TensorMap map, TmaArgs a, unsigned char* out) {
  __shared__ __align__(8) uint64_t bar;
  unsigned char* box = align_up(dynamic_shared_memory<unsigned char>(), 1024) +
                       (kBug == TmaBug::kMisaligned ? 16 : 0);
  const int t = threadIdx.x;
  if (t == 0) {
    mbarrier_init(&bar, 1);
    mbarrier_fence_init();
  }
  __syncthreads();
  if (t == 0) {
    const uint32_t announced = a.bytes + (kBug == TmaBug::kExpectMore ? 16 : 0) -
                               (kBug == TmaBug::kExpectLess ? 16 : 0);
    mbarrier_arrive_expect_tx(&bar, announced);
    const int32_t* c = a.coords;
    if (kBug == TmaBug::kWrongDims) {
      tma_load_2d(box, &map, &bar, c[0], c[1]);
    } else if (a.im2col) {
      tma_load_im2col_4d(box, &map, &bar, c[0], c[1], c[2], c[3], a.offsets[0], a.offsets[1]);
    } else if (a.rank == 1) {
      tma_load_1d(box, &map, &bar, c[0]);
    } else if (a.rank == 2) {
      tma_load_2d(box, &map, &bar, c[0], c[1]);
    } else if (a.rank == 3) {
      tma_load_3d(box, &map, &bar, c[0], c[1], c[2]);
    } else if (a.rank == 4) {
      tma_load_4d(box, &map, &bar, c[0], c[1], c[2], c[3]);
    } else {
      tma_load_5d(box, &map, &bar, c[0], c[1], c[2], c[3], c[4]);
    }
  }
  if (kBug != TmaBug::kNoWait) mbarrier_wait_parity(&bar, 0);
  for (int i = t; i < a.dump; i += blockDim.x) out[i] = box[i];
  if (kBug == TmaBug::kNoWait) mbarrier_wait_parity(&bar, 0);  // let the load finish before exit
}

template <TmaBug kBug>
__global__ void tma_store_kernel(const __grid_constant__ tma::TensorMap map, TmaArgs a,
                                 const unsigned char* image) {
  unsigned char* box = align_up(dynamic_shared_memory<unsigned char>(), 1024);
  const int t = threadIdx.x;
  for (int i = t; i < a.dump; i += blockDim.x) box[i] = image[i];
  if (kBug != TmaBug::kNoFence) fence_proxy_async_shared();
  __syncthreads();
  if (t == 0) {
    tma_store_2d(&map, box, a.coords[0], a.coords[1]);
    bulk_commit_group();
    bulk_wait_group_read<0>();
    bulk_wait_group<0>();
  }
}

// args: mode (0 tiled, 1 im2col), dtype (tma::DType), rank, dims[5], strides[5] (bytes),
// box[5], element_strides[5], swizzle (descriptor code), oob (0 zero, 1 NaN), lower[3],
// upper[3], channels_per_pixel, pixels_per_column — 36 values — then, for "tma_load" and
// "tma_store": coords[5], offsets[2], bug, threads.
tma::TensorMapSpec spec_from(const std::vector<int64_t>& a, const void* global) {
  TORCH_CHECK(a.size() >= 36, "simtest tma: a tensor-map spec is 36 values");
  tma::TensorMapSpec s;
  s.mode = a[0] ? tma::Mode::kIm2col : tma::Mode::kTiled;
  s.dtype = static_cast<tma::DType>(a[1]);
  s.rank = static_cast<uint32_t>(a[2]);
  s.global = global;
  for (int i = 0; i < 5; ++i) {
    s.dims[i] = static_cast<uint64_t>(a[3 + i]);
    s.strides[i] = static_cast<uint64_t>(a[8 + i]);
    s.box[i] = static_cast<uint32_t>(a[13 + i]);
    s.element_strides[i] = static_cast<uint32_t>(a[18 + i]);
  }
  s.swizzle = static_cast<Swizzle>(a[23]);
  s.oob = a[24] ? tma::OobFill::kNaN : tma::OobFill::kZero;
  for (int i = 0; i < 3; ++i) {
    s.lower[i] = static_cast<int32_t>(a[25 + i]);
    s.upper[i] = static_cast<int32_t>(a[28 + i]);
  }
  s.channels_per_pixel = static_cast<uint32_t>(a[31]);
  s.pixels_per_column = static_cast<uint32_t>(a[32]);
  return s;
}

at::Tensor run_tma(const std::string& name, const std::vector<at::Tensor>& in,
                   const std::vector<int64_t>& args) {
  TORCH_CHECK(!in.empty(), "simtest tma: needs the global tensor");
  const tma::TensorMapSpec spec = spec_from(args, in[0].data_ptr());
  if (name == "tma_encode") {
    (void)tma::encode_tensor_map(spec);
    return at::empty({0});
  }
  TORCH_CHECK(args.size() == 36 + 10, "simtest tma: spec, coords[5], offsets[2], bug, threads, dump");
  const tma::TensorMap map = tma::encode_tensor_map(spec);
  TmaArgs a{};
  a.rank = static_cast<int>(spec.rank);
  a.im2col = spec.mode == tma::Mode::kIm2col;
  for (int i = 0; i < 5; ++i) a.coords[i] = static_cast<int32_t>(args[36 + i]);
  a.offsets[0] = static_cast<uint16_t>(args[41]);
  a.offsets[1] = static_cast<uint16_t>(args[42]);
  a.bytes = tma::box_bytes(spec);
  const int bug = static_cast<int>(args[43]);
  const int threads = static_cast<int>(args[44]);
  a.dump = static_cast<int>(args[45]);
  const size_t smem = size_t(a.dump) + 2048;
  if (name == "tma_load") {
    at::Tensor out = at::empty({a.dump}, at::kByte);
    unsigned char* o = out.data_ptr<unsigned char>();
    using B = TmaBug;
    const bool known = with_constant<B::kNone, B::kExpectMore, B::kExpectLess, B::kNoWait,
                                     B::kMisaligned, B::kWrongDims>(
        static_cast<B>(bug), [&](auto b) {
          constexpr auto kernel = tma_load_kernel<decltype(b)::value>;
          set_max_dynamic_smem<kernel>(static_cast<int>(smem));
          launch_kernel<kernel>(1, threads, smem, nullptr, map, a, o);
        });
    TORCH_CHECK(known, "simtest tma_load: unknown bug ", bug);
    return out;
  }
  if (name == "tma_store") {
    TORCH_CHECK(in.size() == 2 && in[1].numel() >= a.dump, "simtest tma_store: global tensor, image");
    const unsigned char* image = in[1].data_ptr<unsigned char>();
    set_max_dynamic_smem<tma_store_kernel<TmaBug::kNone>>(static_cast<int>(smem));
    set_max_dynamic_smem<tma_store_kernel<TmaBug::kNoFence>>(static_cast<int>(smem));
    if (bug == 0) {
      launch_kernel<tma_store_kernel<TmaBug::kNone>>(1, threads, smem, nullptr, map, a, image);
    } else {
      launch_kernel<tma_store_kernel<TmaBug::kNoFence>>(1, threads, smem, nullptr, map, a, image);
    }
    return in[0];
  }
  TORCH_CHECK(false, "simtest tma: unknown test ", name);
}

// The GEMM of hopper_gemm.cuh. inputs: a (M x K bf16), b (N x K bf16), d (M x N f32,
// written); args: bug
at::Tensor run_gemm(const std::vector<at::Tensor>& in, const std::vector<int64_t>& args) {
  TORCH_CHECK(in.size() == 3 && args.size() == 1, "simtest gemm: a, b, d; bug");
  const int64_t m = in[0].size(0), k = in[0].size(1), n = in[1].size(0);
  const auto map2d = [](const at::Tensor& x, tma::DType type, uint32_t box0, uint32_t box1, Swizzle sw) {
    tma::TensorMapSpec sp;
    sp.dtype = type;
    sp.rank = 2;
    sp.global = x.data_ptr();
    sp.dims[0] = static_cast<uint64_t>(x.size(1));
    sp.dims[1] = static_cast<uint64_t>(x.size(0));
    sp.strides[0] = x.element_size();
    sp.strides[1] = static_cast<uint64_t>(x.stride(0) * x.element_size());
    sp.box[0] = box0;
    sp.box[1] = box1;
    sp.swizzle = sw;
    return tma::encode_tensor_map(sp);
  };
  GemmMaps maps{map2d(in[0], tma::DType::kBF16, kGemmK, kGemmTile, Swizzle::k128B),
                map2d(in[1], tma::DType::kBF16, kGemmK, kGemmTile, Swizzle::k128B),
                map2d(in[2], tma::DType::kF32, kGemmTile, 64, Swizzle::kNone),
                static_cast<int>((k + kGemmK - 1) / kGemmK)};
  const size_t smem = kGemmStages * kGemmStageBytes + kGemmTile * kGemmTile * 4 + 1024;
  const dim3 grid(static_cast<unsigned>((n + kGemmTile - 1) / kGemmTile),
                  static_cast<unsigned>((m + kGemmTile - 1) / kGemmTile));
  using B = GemmBug;
  const bool known = with_constant<B::kNone, B::kWrongSwizzle, B::kNoProxyFence, B::kExpectTxWrong,
                                   B::kReleaseEarly, B::kNoEmptyWait>(
      static_cast<B>(args[0]), [&](auto b) {
        constexpr auto kernel = gemm_kernel<decltype(b)::value>;
        set_max_dynamic_smem<kernel>(static_cast<int>(smem));
        launch_kernel<kernel>(grid, 384, smem, nullptr, maps);
      });
  TORCH_CHECK(known, "simtest gemm: unknown bug ", args[0]);
  return in[2];
}

// ---- the index math of hopper_layouts.cuh, for element-by-element tests -------------------

std::vector<int64_t> hopper_index(const std::string& what, const std::vector<int64_t>& a) {
  auto sw = [](int64_t v) { return static_cast<Swizzle>(v); };
  if (what == "encode_desc") {
    return {static_cast<int64_t>(hopper::encode_matrix_desc(uint32_t(a[0]), uint32_t(a[1]), uint32_t(a[2]), sw(a[3]), uint32_t(a[4])))};
  }
  if (what == "decode_desc") {
    const auto d = hopper::decode_matrix_desc(static_cast<uint64_t>(a[0]));
    return {d.start, d.leading, d.stride, d.base_offset, static_cast<int64_t>(d.swizzle)};
  }
  if (what == "swizzle") return {hopper::swizzle_address(uint32_t(a[0]), sw(a[1]))};
  if (what == "operand_address") {
    // desc, k_major, elem, then (mn, k) pairs
    const auto d = hopper::decode_matrix_desc(static_cast<uint64_t>(a[0]));
    std::vector<int64_t> out;
    for (size_t i = 3; i + 1 < a.size(); i += 2) {
      out.push_back(hopper::operand_address(d, a[1] != 0, uint32_t(a[2]), int(a[i]), int(a[i + 1])));
    }
    return out;
  }
  if (what == "fragments") {
    // per thread t and index i: D (i < 128), A k16 (i < 8), A k8 tf32 (i < 4): rows, cols
    std::vector<int64_t> out;
    for (int t = 0; t < 128; ++t) {
      for (int i = 0; i < 128; ++i) { const auto q = hopper::wgmma_d(t, i); out.push_back(q.row); out.push_back(q.col); }
      for (int i = 0; i < 8; ++i) { const auto q = hopper::wgmma_a_k16(t, i); out.push_back(q.row); out.push_back(q.col); }
      for (int i = 0; i < 4; ++i) { const auto q = hopper::wgmma_a_k8_tf32(t, i); out.push_back(q.row); out.push_back(q.col); }
    }
    return out;
  }
  TORCH_CHECK(false, "simtest hopper_index: unknown ", what);
}

}  // namespace

// The Hopper self-tests, by name.
at::Tensor run_hopper(const std::string& name, const std::vector<at::Tensor>& inputs,
                      const std::vector<int64_t>& args) {
  if (name == "wgmma") return run_wgmma(inputs, args);
  if (name == "gemm") return run_gemm(inputs, args);
  if (name.rfind("tma_", 0) == 0) return run_tma(name, inputs, args);
  TORCH_CHECK(false, "simtest hopper: unknown test ", name);
}

}  // namespace overfeat_kernels

TORCH_LIBRARY_FRAGMENT(overfeat_kernels_simtest, m) {
  m.def("hopper(str name, Tensor[] inputs, int[] args) -> Tensor");
  m.impl("hopper", c10::DispatchKey::CPU, &overfeat_kernels::run_hopper);
  m.def("hopper_index(str what, int[] args) -> int[]", &overfeat_kernels::hopper_index);
}
