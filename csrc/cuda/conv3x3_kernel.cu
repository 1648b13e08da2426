// conv3x3 on CUDA: first, simple and clearly correct kernels (the tensor-core versions
// come later). All of them accumulate in float32 (float64 for float64) with exact FMA
// arithmetic, read any strides (NCHW, channels_last, views) and write the output in the
// input's memory format.
//
// - direct_conv3x3_kernel: a 16x16 output tile x 8 output channels per block; input
//   patches (18x18 with the halo) and weights are staged through shared memory 8 input
//   channels at a time. It computes the forward (with bias + ReLU epilogue) and also
//   grad-input, which is a 3x3 convolution of grad_output with the filters flipped and
//   transposed: the weight is read through strides, so no flipped copy is made.
// - wgrad_partial_kernel + wgrad_reduce_kernel: grad-weight as a deterministic two-stage
//   reduction: each block sums a fixed slice of output tiles into its own workspace row,
//   then the rows are added in order. No float atomics.
// - bias_grad_kernel: one block per output channel, a fixed-order tree reduction.
// The tensor-core kernels (conv3x3_igemm.cuh: forward and grad-input;
// conv3x3_wgrad_igemm.cuh: grad-weight) take over where they apply.
//
// Which of them runs is the plan's (conv_plan.h): bf16 / fp16, and float32 when TF32 is
// allowed (torch.backends.cudnn.allow_tf32, as F.conv2d), take the tensor-core implicit
// GEMMs; float64 and exact float32 the direct kernels. The ops' `algos` argument
// (ConvAlgo) forces one implementation per direction, PyTorch's own convolution (cuDNN,
// through ATen) among them; omitted, the conv backend's mode chooses (conv_choice.h). Each
// entry point checks its arguments, resolves the algos, plans, then runs the plan.
#include <ATen/OpMathType.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "../checks.h"
#include "../conv_choice.h"
#include "../conv_plan.h"
#include "../conv_pool.h"
#include "../dispatch.h"
#include "conv3x3_igemm.cuh"
#include "conv3x3_wgmma.h"
#include "conv3x3_wgrad_igemm.cuh"
#include "launch.cuh"

namespace overfeat_kernels {
namespace {

constexpr int kTile = 16;                  // output tile side; one thread per pixel
constexpr int kHalo = kTile + 2;           // input patch side for a 3x3 kernel
constexpr int kThreads = kTile * kTile;
constexpr int kOutChunk = 8;               // output channels per block
constexpr int kInChunk = 8;                // input channels staged per step
constexpr int kTaps = 9;
constexpr int64_t kMaxGridYZ = 65535;

// One 3x3 convolution pass: out[n, o, y, x] = sum_{i, r, s} in[n, i, y + r - pad, x + s - pad]
// * w(o, i, r, s), where w(o, i, r, s) = w[w_base + o*w_so + i*w_si + r*w_sr + s*w_ss].
template <typename scalar_t>
struct DirectConvParams {
  const scalar_t* in;
  Strides4 in_s;
  int64_t in_c, in_h, in_w;
  const scalar_t* mask;  // with kMasked: an input element counts only where mask > 0
  Strides4 mask_s;
  const scalar_t* w;
  int64_t w_base, w_so, w_si, w_sr, w_ss;
  const scalar_t* bias;  // may be null
  scalar_t* out;
  Strides4 out_s;
  int64_t n, out_c, out_h, out_w;
  int64_t pad;
  bool relu;
};

template <typename scalar_t, bool kMasked>
__device__ __forceinline__ at::opmath_type<scalar_t> load_masked(const scalar_t* data,
                                                                 const Strides4& s,
                                                                 const scalar_t* mask,
                                                                 const Strides4& mask_s,
                                                                 int64_t n, int64_t c,
                                                                 int64_t y, int64_t x) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t v = static_cast<acc_t>(data[offset_of(s, n, c, y, x)]);
  if (kMasked && !(static_cast<acc_t>(mask[offset_of(mask_s, n, c, y, x)]) > acc_t(0))) {
    return acc_t(0);
  }
  return v;
}

// Stages in[n, c0:c0+kInChunk, y0:y0+kHalo, x0:x0+kHalo] (zero outside the map) into
// shared memory.
template <typename scalar_t, bool kMasked>
__device__ __forceinline__ void stage_patch(at::opmath_type<scalar_t> (*patch)[kHalo][kHalo],
                                            const scalar_t* data, const Strides4& s,
                                            const scalar_t* mask, const Strides4& mask_s,
                                            int64_t channels, int64_t h, int64_t w, int64_t n,
                                            int64_t c0, int64_t y0, int64_t x0, int tid) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int i = tid; i < kInChunk * kHalo * kHalo; i += kThreads) {
    const int c = i / (kHalo * kHalo), ry = (i / kHalo) % kHalo, rx = i % kHalo;
    const int64_t y = y0 + ry, x = x0 + rx;
    acc_t v = acc_t(0);
    if (c0 + c < channels && y >= 0 && y < h && x >= 0 && x < w) {
      v = load_masked<scalar_t, kMasked>(data, s, mask, mask_s, n, c0 + c, y, x);
    }
    patch[c][ry][rx] = v;
  }
}

// Blocks per SM the register budget is set for: left to itself, ptxas aimed at 3-4 blocks
// and spilled a few bytes; float64 (twice the registers per value) gets one.
template <typename scalar_t>
constexpr int kDirectMinBlocks = sizeof(at::opmath_type<scalar_t>) == 8 ? 1 : 2;

template <typename scalar_t, bool kMasked>
__global__ void __launch_bounds__(kThreads, kDirectMinBlocks<scalar_t>)
    direct_conv3x3_kernel(const DirectConvParams<scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t s_in[kInChunk][kHalo][kHalo];
  __shared__ acc_t s_w[kOutChunk][kInChunk][kTaps];

  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile, tid = threadIdx.x;
  // 32-bit tile arithmetic (the launch checks tiles <= INT32_MAX): a 64-bit division is a
  // subroutine call.
  const unsigned tiles_w = static_cast<unsigned>(ceil_div(p.out_w, kTile));
  const int64_t oy0 = int64_t(blockIdx.x / tiles_w) * kTile;
  const int64_t ox0 = int64_t(blockIdx.x % tiles_w) * kTile;
  const int64_t o0 = int64_t(blockIdx.y) * kOutChunk;

  for (int64_t n = blockIdx.z; n < p.n; n += gridDim.z) {
    acc_t acc[kOutChunk];
#pragma unroll
    for (int o = 0; o < kOutChunk; ++o) acc[o] = acc_t(0);

    for (int64_t c0 = 0; c0 < p.in_c; c0 += kInChunk) {
      stage_patch<scalar_t, kMasked>(s_in, p.in, p.in_s, p.mask, p.mask_s, p.in_c, p.in_h,
                                     p.in_w, n, c0, oy0 - p.pad, ox0 - p.pad, tid);
      for (int i = tid; i < kOutChunk * kInChunk * kTaps; i += kThreads) {
        const int o = i / (kInChunk * kTaps), c = (i / kTaps) % kInChunk, rs = i % kTaps;
        acc_t v = acc_t(0);
        if (o0 + o < p.out_c && c0 + c < p.in_c) {
          v = static_cast<acc_t>(p.w[p.w_base + (o0 + o) * p.w_so + (c0 + c) * p.w_si +
                                     (rs / 3) * p.w_sr + (rs % 3) * p.w_ss]);
        }
        s_w[o][c][rs] = v;
      }
      __syncthreads();
#pragma unroll 2
      for (int c = 0; c < kInChunk; ++c) {
        acc_t x[kTaps];
#pragma unroll
        for (int rs = 0; rs < kTaps; ++rs) x[rs] = s_in[c][ty + rs / 3][tx + rs % 3];
#pragma unroll
        for (int o = 0; o < kOutChunk; ++o) {
#pragma unroll
          for (int rs = 0; rs < kTaps; ++rs) acc[o] = fma(s_w[o][c][rs], x[rs], acc[o]);
        }
      }
      __syncthreads();
    }

    const int64_t oy = oy0 + ty, ox = ox0 + tx;
    if (oy < p.out_h && ox < p.out_w) {
#pragma unroll
      for (int o = 0; o < kOutChunk; ++o) {
        const int64_t k = o0 + o;
        if (k >= p.out_c) break;
        acc_t v = acc[o];
        if (p.bias != nullptr) v += static_cast<acc_t>(p.bias[k]);
        if (p.relu) v = relu_keep_nan(v);
        p.out[offset_of(p.out_s, n, k, oy, ox)] = static_cast<scalar_t>(v);
      }
    }
  }
}

template <typename scalar_t>
void launch_direct_conv(const DirectConvParams<scalar_t>& p, cudaStream_t stream) {
  if (p.n == 0 || p.out_c == 0 || p.out_h == 0 || p.out_w == 0) return;
  const int64_t tiles = ceil_div(p.out_h, kTile) * ceil_div(p.out_w, kTile);
  const int64_t out_blocks = ceil_div(p.out_c, kOutChunk);
  TORCH_CHECK_VALUE(tiles <= INT32_MAX && out_blocks <= kMaxGridYZ,
                    "conv3x3 (CUDA): map of ", p.out_h, "x", p.out_w, " with ", p.out_c,
                    " channels exceeds the launch grid of this kernel");
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(out_blocks),
                  static_cast<unsigned>(std::min(p.n, kMaxGridYZ)));
  bool_switch(p.mask != nullptr, [&](auto masked) {
    launch_kernel<direct_conv3x3_kernel<scalar_t, decltype(masked)::value>>(grid, kThreads, 0,
                                                                           stream, p);
  });
}

// grad_weight[o, c, r, s] = sum_{n, y, x} g[n, o, y, x] * in[n, c, y + r - pad, x + s - pad],
// with g = grad_output (masked by relu_output > 0 when given).
template <typename scalar_t>
struct WgradParams {
  const scalar_t* in;
  Strides4 in_s;
  int64_t n, in_c, in_h, in_w;
  const scalar_t* go;
  Strides4 go_s;
  const scalar_t* mask;
  Strides4 mask_s;
  int64_t out_c, out_h, out_w;
  int64_t pad;
  int64_t num_tiles, tiles_per_slice;
  at::opmath_type<scalar_t>* partial;  // [slices, out_c, in_c, 9]
};

constexpr int kWgradOutputs = kOutChunk * kInChunk * kTaps;  // per block
constexpr int kWgradPerThread = (kWgradOutputs + kThreads - 1) / kThreads;

template <typename scalar_t, bool kMasked>
__global__ void __launch_bounds__(kThreads) wgrad_partial_kernel(const WgradParams<scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t s_go[kOutChunk][kThreads];
  __shared__ acc_t s_in[kInChunk][kHalo][kHalo];

  const int tid = threadIdx.x;
  const int64_t in_blocks = ceil_div(p.in_c, kInChunk);
  const int64_t o0 = int64_t(blockIdx.x / in_blocks) * kOutChunk;
  const int64_t c0 = int64_t(blockIdx.x % in_blocks) * kInChunk;
  const int64_t slice = blockIdx.y;
  const int64_t tiles_w = ceil_div(p.out_w, kTile);
  const int64_t tiles_hw = ceil_div(p.out_h, kTile) * tiles_w;
  const int64_t t_begin = slice * p.tiles_per_slice;
  const int64_t t_end = std::min(p.num_tiles, t_begin + p.tiles_per_slice);

  acc_t acc[kWgradPerThread];
#pragma unroll
  for (int m = 0; m < kWgradPerThread; ++m) acc[m] = acc_t(0);

  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t n = t / tiles_hw;
    const int64_t oy0 = ((t % tiles_hw) / tiles_w) * kTile;
    const int64_t ox0 = ((t % tiles_hw) % tiles_w) * kTile;
    for (int i = tid; i < kOutChunk * kThreads; i += kThreads) {
      const int o = i / kThreads, pix = i % kThreads;
      const int64_t y = oy0 + pix / kTile, x = ox0 + pix % kTile;
      acc_t v = acc_t(0);
      if (o0 + o < p.out_c && y < p.out_h && x < p.out_w) {
        v = load_masked<scalar_t, kMasked>(p.go, p.go_s, p.mask, p.mask_s, n, o0 + o, y, x);
      }
      s_go[o][pix] = v;
    }
    stage_patch<scalar_t, false>(s_in, p.in, p.in_s, nullptr, p.in_s, p.in_c, p.in_h, p.in_w,
                                 n, c0, oy0 - p.pad, ox0 - p.pad, tid);
    __syncthreads();
#pragma unroll
    for (int m = 0; m < kWgradPerThread; ++m) {
      const int e = tid + m * kThreads;
      if (e < kWgradOutputs) {
        const int o = e / (kInChunk * kTaps), c = (e / kTaps) % kInChunk;
        const int r = (e % kTaps) / 3, s = e % 3;
        acc_t sum = acc[m];
        for (int pix = 0; pix < kThreads; ++pix) {
          sum = fma(s_go[o][pix], s_in[c][pix / kTile + r][pix % kTile + s], sum);
        }
        acc[m] = sum;
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int m = 0; m < kWgradPerThread; ++m) {
    const int e = tid + m * kThreads;
    if (e >= kWgradOutputs) continue;
    const int64_t o = o0 + e / (kInChunk * kTaps), c = c0 + (e / kTaps) % kInChunk;
    if (o < p.out_c && c < p.in_c) {
      p.partial[((slice * p.out_c + o) * p.in_c + c) * kTaps + e % kTaps] = acc[m];
    }
  }
}

// Adds the per-slice partial sums in slice order (deterministic) and casts.
template <typename scalar_t>
__global__ void wgrad_reduce_kernel(const at::opmath_type<scalar_t>* __restrict__ partial,
                                    int64_t slices, int64_t numel,
                                    scalar_t* __restrict__ grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t idx = global_thread_index(); idx < numel; idx += grid_stride()) {
    acc_t sum = acc_t(0);
    for (int64_t s = 0; s < slices; ++s) sum += partial[s * numel + idx];
    grad_weight[idx] = static_cast<scalar_t>(sum);
  }
}

// grad_bias[o] = sum_{n, y, x} g[n, o, y, x]: a block per channel, each thread a fixed
// strided subset, then a fixed tree in shared memory (deterministic).
template <typename scalar_t, bool kMasked>
__global__ void __launch_bounds__(kThreads)
    bias_grad_kernel(const scalar_t* __restrict__ go, Strides4 go_s,
                     const scalar_t* __restrict__ mask, Strides4 mask_s, Shape4 d,
                     scalar_t* __restrict__ grad_bias) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t s_sum[kThreads];
  const int64_t per_channel = d.n * d.h * d.w;
  for (int64_t o = blockIdx.x; o < d.c; o += gridDim.x) {
    acc_t sum = acc_t(0);
    for (int64_t e = threadIdx.x; e < per_channel; e += kThreads) {
      const int64_t x = e % d.w, y = (e / d.w) % d.h, n = e / (d.w * d.h);
      sum += load_masked<scalar_t, kMasked>(go, go_s, mask, mask_s, n, o, y, x);
    }
    s_sum[threadIdx.x] = sum;
    __syncthreads();
    for (int width = kThreads / 2; width > 0; width /= 2) {
      if (threadIdx.x < width) s_sum[threadIdx.x] += s_sum[threadIdx.x + width];
      __syncthreads();
    }
    if (threadIdx.x == 0) grad_bias[o] = static_cast<scalar_t>(s_sum[0]);
    __syncthreads();
  }
}

// ---- the plan's inputs and its operands ------------------------------------------------

// Whether `t` is already the [n][h][w][c] map the implicit GEMM streams: dense
// channels_last with 16-byte aligned data (used in place when its channels need no
// padding, which the plan decides).
bool nhwc_ready(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) &&
         reinterpret_cast<uintptr_t>(t.const_data_ptr()) % kIgemmVecBytes == 0;
}

ConvProblem conv_problem(const at::Tensor& input, const at::Tensor& weight, int64_t padding,
                         const at::Tensor& grad_output = at::Tensor(),
                         const at::Tensor& relu_output = at::Tensor()) {
  ConvProblem p;
  p.n = input.size(0);
  p.c = input.size(1);
  p.h = input.size(2);
  p.w = input.size(3);
  p.k = weight.size(0);
  p.padding = padding;
  p.element_size = static_cast<int>(input.element_size());
  p.dtype = py_dtype(input.scalar_type());
  p.tensor_core_dtype = tensor_core_dtype(p.element_size, input.scalar_type() == at::kFloat,
                                          at::globalContext().allowTF32CuDNN());
  p.input_nhwc = nhwc_ready(input);
  p.weight_nhwc = nhwc_ready(weight);
  p.grad_output_nhwc = grad_output.defined() && nhwc_ready(grad_output);
  p.relu_output_nhwc = relu_output.defined() && nhwc_ready(relu_output);
  p.masked = relu_output.defined();
  return p;
}

DeviceInfo device_info() {
  const DeviceLimits& l = device_limits();
  return {l.capability, l.sms, kBuildHasSm90a};
}

// x as the [n][h][w][cp] map the implicit GEMM reads: the tensor itself (a view) where the
// plan found it ready, else a copy with zero channels up to cp, the explicit layout
// conversion the benchmarks count (`what` names it to the simulator's counters). A
// channels_last weight [K, C, 3, 3] is [K][3][3][C]: filters read in place.
at::Tensor nhwc_operand(const at::Tensor& x, int64_t cp, bool copy, const char* what) {
  if (!copy) {
    TORCH_INTERNAL_ASSERT(x.size(1) == cp && nhwc_ready(x), "conv3x3: plan and operand disagree");
    return x.permute({0, 2, 3, 1});
  }
  note_host_step(what);
  const std::vector<int64_t> sizes{x.size(0), x.size(2), x.size(3), cp};
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor out = cp == x.size(1) ? at::empty(sizes, opts) : at::zeros(sizes, opts);
  out.narrow(3, 0, x.size(1)).copy_(x.permute({0, 2, 3, 1}));
  return out;
}

// Whether `t` is dense channels_last ([n][h][w][c] with exactly those strides).
bool dense_channels_last(const at::Tensor& t) {
  return t.stride(1) == 1 && t.stride(3) == t.size(1) && t.stride(2) == t.size(3) * t.size(1) &&
         t.stride(0) == t.size(2) * t.size(3) * t.size(1);
}

// The "aten" algo: PyTorch's own convolution (cuDNN), called from inside the op so that
// every algo has conv3x3's contract. Autocast must not recast these inner calls.
at::Tensor aten_conv3x3(const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, int64_t padding, bool relu) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  at::Tensor out = at::conv2d(input, weight, bias, 1, padding);
  if (relu) out.relu_();
  return out.contiguous(input.suggest_memory_format());
}

// grad-input and / or grad-weight (mask) by PyTorch's convolution backward; `g` is the
// ReLU-masked grad_output.
std::tuple<at::Tensor, at::Tensor> aten_conv3x3_backward(const at::Tensor& g,
                                                         const at::Tensor& input,
                                                         const at::Tensor& weight,
                                                         int64_t padding, bool grad_input,
                                                         bool grad_weight) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  auto grads = at::convolution_backward(g, input, weight, std::nullopt, {1, 1},
                                        {padding, padding}, {1, 1}, false, {0, 0}, 1,
                                        {grad_input, grad_weight, false});
  return {std::get<0>(grads), std::get<1>(grads)};
}

// The unfolded forward's operands (plan kernel kUnfolded): the input unfolded to
// [n][h'][w'][Cu] (zeros past 9·C) and the filters as [K][1][1][Cuf]. im2col's column
// (c, r, s) is c·9 + r·3 + s, the order of weight.reshape(K, 9·C).
std::pair<at::Tensor, at::Tensor> unfolded_operands(const at::Tensor& input,
                                                    const at::Tensor& weight, int64_t pad,
                                                    const DirectionPlan& plan) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const int64_t n = input.size(0), k = weight.size(0), taps_c = 9 * input.size(1);
  const int64_t out_h = input.size(2) + 2 * pad - 2, out_w = input.size(3) + 2 * pad - 2;
  const auto dense = at::MemoryFormat::Contiguous;
  note_host_step("conv3x3 copy: unfolded input and filters");
  const at::Tensor cols = at::im2col(input, {3, 3}, {1, 1}, {pad, pad}, {1, 1});
  at::Tensor x = at::zeros({n, out_h, out_w, plan.channels}, input.options().memory_format(dense));
  x.narrow(3, 0, taps_c).copy_(cols.view({n, taps_c, out_h, out_w}).permute({0, 2, 3, 1}));
  at::Tensor filt = at::zeros({k, 1, 1, plan.filter_channels}, weight.options().memory_format(dense));
  filt.narrow(3, 0, taps_c).copy_(weight.reshape({k, 1, 1, taps_c}));
  return {x, filt};
}

// The filters tap-major, [9][K][cp] (channels past C zero): the Hopper kernel's operand
// for few input channels (its tap chunks).
at::Tensor tap_major_filters(const at::Tensor& weight, int64_t cp) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const int64_t k = weight.size(0), c = weight.size(1);
  note_host_step("conv3x3 copy: filters");
  at::Tensor filt = at::zeros({9, k, cp}, weight.options().memory_format(at::MemoryFormat::Contiguous));
  filt.narrow(2, 0, c).copy_(weight.permute({2, 3, 0, 1}).reshape({9, k, c}));
  return filt;
}

igemm::TileChoice tile_choice(Tiles t) {
  TORCH_INTERNAL_ASSERT(t != Tiles::kNone);
  return t == Tiles::kLarge ? igemm::TileChoice::Large : igemm::TileChoice::Small;
}

// out = conv3x3(in, filt) (+ bias, ReLU) on tensor cores, where `filt` is [K][3][3][Cpf]
// prepared by the caller and `in` is given as [n][h][w][cp]; or, with `filt` [K][1][1][Cuf],
// the 1 × 1 convolution of an unfolded input (pad 0). `mask` (grad-input through a ReLU:
// the forward's output, laid out as `in`), when defined: `in` counts only where it is > 0.
// `pool` (2 or 3; 0: none): `out` is the conv's output max-pooled pool x pool with stride
// pool, or with `pool_offsets` offset_max_pool2d's, pooled in the epilogue.
template <typename scalar_t>
void igemm_conv(const at::Tensor& in_nhwc, int64_t in_h, int64_t in_w, const at::Tensor& filt,
                const at::Tensor& bias, int64_t pad, bool relu, at::Tensor& out,
                Tiles tiles, cudaStream_t stream, const at::Tensor& mask = at::Tensor(),
                int64_t pool = 0, bool pool_offsets = false) {
  const int64_t taps = filt.size(1) * filt.size(2);
  TORCH_INTERNAL_ASSERT(in_nhwc.is_contiguous() && filt.is_contiguous() &&
                        filt.size(1) == filt.size(2) && (taps == 9 || (taps == 1 && pad == 0)) &&
                        filt.size(3) == filter_channels(in_nhwc.size(3), in_nhwc.element_size()));
  TORCH_INTERNAL_ASSERT(!mask.defined() || (mask.is_contiguous() && mask.sizes() == in_nhwc.sizes()));
  igemm::Params<scalar_t> p{};
  p.in = in_nhwc.const_data_ptr<scalar_t>();
  p.filt = filt.const_data_ptr<scalar_t>();
  p.bias = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
  p.out = out.mutable_data_ptr<scalar_t>();
  p.out_s = strides4(out);
  // The conv's output size: the 1 × 1 convolution of an unfolded input keeps its size.
  const int64_t out_h = taps == 9 ? in_h + 2 * pad - 2 : in_h;
  const int64_t out_w = taps == 9 ? in_w + 2 * pad - 2 : in_w;
  const int64_t n = in_nhwc.size(0);
  TORCH_INTERNAL_ASSERT(out.sizes() == at::IntArrayRef(conv3x3_pooled_size(
                                           n, out.size(1), out_h, out_w, pool, pool_offsets)));
  p.n = n;
  p.m = n * out_h * out_w;
  p.h = static_cast<int>(in_h);
  p.w = static_cast<int>(in_w);
  p.cp = static_cast<int>(in_nhwc.size(3));
  p.cpf = static_cast<int>(filt.size(3));
  p.k = static_cast<int>(out.size(1));
  p.out_h = static_cast<int>(out_h);
  p.out_w = static_cast<int>(out_w);
  p.pad = static_cast<int>(pad);
  p.relu = relu;
  p.taps = static_cast<int>(taps);
  p.mask = mask.defined() ? mask.const_data_ptr<scalar_t>() : nullptr;
  p.pool = static_cast<int>(pool);
  p.pool_h = pool == 0 ? 0 : static_cast<int>(out.size(2));
  p.pool_w = pool == 0 ? 0 : static_cast<int>(out.size(3));
  p.pool_m = pool == 0 ? 0 : out.size(0) * out.size(2) * out.size(3);
  if (pool != 0 && pool_offsets) {
    const OffsetPoolBlock blk =
        choose_offset_pool_block(tiles == Tiles::kLarge ? kLargeTileM : kSmallTileM,
                                 static_cast<int>(pool), p.pool_h, p.pool_w);
    p.off_blocks = make_offset_pixel_blocks(n, p.out_h, p.out_w, p.k, p.pool, blk.a, blk.b,
                                            std::max(p.k, 1));
  }
  igemm::launch(p, dense_channels_last(out), stream, tile_choice(tiles));
}

// Runs f(scalar_t{}) for the tensor-core dtypes (bf16, fp16, float32); the plan never
// sends float64 there.
template <typename F>
void dispatch_tensor_core(at::ScalarType t, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t, "conv3x3_tensor_cores", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) f(scalar_t{});
  });
}

at::Tensor conv3x3_cuda(const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, int64_t padding, bool relu,
                        at::OptionalIntArrayRef requested, int64_t pool, bool pool_offsets) {
  check_conv3x3_args(input, weight, bias, padding);
  const auto pooled_size = check_conv3x3_pool_args(input, weight, padding, pool, pool_offsets);
  // On the input's device: "auto" may time the candidates here, on its current stream.
  const c10::cuda::CUDAGuard guard(input.device());
  const choice::Codes algos = choice::forward_algos(
      input, weight, bias.has_value(), padding, relu,
      choice::records_grad(input, weight, bias), requested,
      pool_of_key(input, pool), pool_offsets);
  const int64_t out_h = input.size(2) + 2 * padding - 2, out_w = input.size(3) + 2 * padding - 2;
  if (input.size(0) == 0) return empty_in_format_of(pooled_size, input);
  ConvProblem problem = conv_problem(input, weight, padding);
  problem.fused_pool = pool_in_epilogue(pool) ? static_cast<int>(pool) : 0;
  problem.fused_offsets = pool_offsets;
  const DirectionPlan plan =
      plan_direction(problem, ConvDirection::kForward, algos[0], true, device_info(), "conv3x3",
                     algo_argument(ConvDirection::kForward, false));
  // The tensor-core kernels pool in their epilogue where they can; the rest composes.
  const bool tensor_cores =
      plan.kernel == ConvKernel::kImplicitGemm || plan.kernel == ConvKernel::kUnfolded ||
      plan.kernel == ConvKernel::kWgmma || plan.kernel == ConvKernel::kWgmmaTapChunks;
  const int64_t fused_pool = tensor_cores && pool_in_epilogue(pool) ? pool : 0;
  at::Tensor out = empty_in_format_of(
      fused_pool != 0 ? pooled_size : std::vector<int64_t>{input.size(0), weight.size(0), out_h, out_w},
      input);
  const auto finish = [&](const at::Tensor& conv_out) {
    return fused_pool != 0 ? conv_out : pool_conv_output(conv_out, pool, pool_offsets);
  };
  const cudaStream_t stream = current_stream();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  switch (plan.kernel) {
    case ConvKernel::kAten: return finish(aten_conv3x3(input, weight, bias, padding, relu));
    case ConvKernel::kUnfolded: {
      const auto [x, filt] = unfolded_operands(input, weight, padding, plan);
      dispatch_tensor_core(input.scalar_type(), [&](auto t) {
        igemm_conv<decltype(t)>(x, out_h, out_w, filt, b, 0, relu, out, plan.tiles, stream,
                                at::Tensor(), fused_pool, pool_offsets);
      });
      return finish(out);
    }
    case ConvKernel::kImplicitGemm: {
      const at::Tensor x = nhwc_operand(input, plan.channels, plan.copy_activations,
                                        "conv3x3 copy: input");
      const at::Tensor filt = nhwc_operand(weight, plan.filter_channels, plan.pack_filters,
                                           "conv3x3 copy: filters");
      dispatch_tensor_core(input.scalar_type(), [&](auto t) {
        igemm_conv<decltype(t)>(x, input.size(2), input.size(3), filt, b, padding, relu, out,
                                plan.tiles, stream, at::Tensor(), fused_pool, pool_offsets);
      });
      return finish(out);
    }
    case ConvKernel::kWgmma:
    case ConvKernel::kWgmmaTapChunks: {
      // The Hopper kernel: the input as the mma.sync kernel reads it; the filters as
      // [K][3][3][Cpf], or tap-major [9][K][Cp] for the tap chunks of few channels.
      const bool chunks = plan.kernel == ConvKernel::kWgmmaTapChunks;
      const at::Tensor x =
          nhwc_operand(input, plan.channels, plan.copy_activations, "conv3x3 copy: input");
      const at::Tensor filt =
          chunks ? tap_major_filters(weight, plan.channels)
                 : nhwc_operand(weight, plan.filter_channels, plan.pack_filters, "conv3x3 copy: filters");
      dispatch_tensor_core(input.scalar_type(), [&](auto t) {
        wgmma_conv<decltype(t)>(x, filt, b, padding, relu, out, dense_channels_last(out),
                                plan.wgmma, stream, at::Tensor(), chunks);
      });
      return finish(out);
    }
    case ConvKernel::kDirect: break;
    default: TORCH_INTERNAL_ASSERT(false, "conv3x3: unexpected forward plan");
  }
  const at::Tensor& w = weight;  // read through its strides
  OVERFEAT_DISPATCH_FLOATING(input.scalar_type(), "conv3x3_cuda", [&] {
    DirectConvParams<scalar_t> p{};
    p.in = input.const_data_ptr<scalar_t>();
    p.in_s = strides4(input);
    p.in_c = input.size(1);
    p.in_h = input.size(2);
    p.in_w = input.size(3);
    p.w = w.const_data_ptr<scalar_t>();
    p.w_base = 0;
    p.w_so = w.stride(0);
    p.w_si = w.stride(1);
    p.w_sr = w.stride(2);
    p.w_ss = w.stride(3);
    p.bias = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    p.out = out.mutable_data_ptr<scalar_t>();
    p.out_s = strides4(out);
    p.n = out.size(0);
    p.out_c = out.size(1);
    p.out_h = out_h;
    p.out_w = out_w;
    p.pad = padding;
    p.relu = relu;
    launch_direct_conv(p, stream);
  });
  return finish(out);
}

template <typename scalar_t>
void grad_input_cuda(const at::Tensor& go, const at::Tensor& mask, const at::Tensor& w,
                     int64_t padding, at::Tensor& grad_input, cudaStream_t stream) {
  // grad_input[n, c, y, x] = sum_{k, r', s'} g[n, k, y + r' - (2 - pad), x + s' - (2 - pad)]
  // * weight[k, c, 2 - r', 2 - s']: output channel c reads weight column c, input
  // channel k reads row k, and the taps run backwards.
  DirectConvParams<scalar_t> p{};
  p.in = go.const_data_ptr<scalar_t>();
  p.in_s = strides4(go);
  p.in_c = go.size(1);
  p.in_h = go.size(2);
  p.in_w = go.size(3);
  p.mask = mask.defined() ? mask.const_data_ptr<scalar_t>() : nullptr;
  p.mask_s = mask.defined() ? strides4(mask) : p.in_s;
  p.w = w.const_data_ptr<scalar_t>();
  p.w_base = 2 * w.stride(2) + 2 * w.stride(3);
  p.w_so = w.stride(1);
  p.w_si = w.stride(0);
  p.w_sr = -w.stride(2);
  p.w_ss = -w.stride(3);
  p.bias = nullptr;
  p.out = grad_input.mutable_data_ptr<scalar_t>();
  p.out_s = strides4(grad_input);
  p.n = grad_input.size(0);
  p.out_c = grad_input.size(1);
  p.out_h = grad_input.size(2);
  p.out_w = grad_input.size(3);
  p.pad = 2 - padding;
  p.relu = false;
  launch_direct_conv(p, stream);
}

template <typename scalar_t>
void grad_weight_cuda(const at::Tensor& go, const at::Tensor& mask, const at::Tensor& input,
                      int64_t padding, at::Tensor& grad_weight, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t out_c = go.size(1), in_c = input.size(1);
  const int64_t num_tiles =
      input.size(0) * ceil_div(go.size(2), kTile) * ceil_div(go.size(3), kTile);
  const int64_t blocks_per_slice = ceil_div(out_c, kOutChunk) * ceil_div(in_c, kInChunk);
  TORCH_CHECK_VALUE(blocks_per_slice <= INT32_MAX, "conv3x3 (CUDA): ", out_c, "x", in_c,
                    " channels exceed the launch grid of the grad-weight kernel");
  // Enough slices to fill the device a few times; the split depends only on the shapes
  // and the device, so results are reproducible run to run.
  const int64_t sms = multiprocessor_count();
  int64_t slices = std::clamp<int64_t>(ceil_div(4 * sms, blocks_per_slice), 1,
                                       std::min(num_tiles, kMaxGridYZ));
  const int64_t tiles_per_slice = ceil_div(num_tiles, slices);
  slices = ceil_div(num_tiles, tiles_per_slice);
  at::Tensor partial =
      at::empty({slices, out_c, in_c, kTaps}, input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));

  WgradParams<scalar_t> p{};
  p.in = input.const_data_ptr<scalar_t>();
  p.in_s = strides4(input);
  p.n = input.size(0);
  p.in_c = in_c;
  p.in_h = input.size(2);
  p.in_w = input.size(3);
  p.go = go.const_data_ptr<scalar_t>();
  p.go_s = strides4(go);
  p.mask = mask.defined() ? mask.const_data_ptr<scalar_t>() : nullptr;
  p.mask_s = mask.defined() ? strides4(mask) : p.go_s;
  p.out_c = out_c;
  p.out_h = go.size(2);
  p.out_w = go.size(3);
  p.pad = padding;
  p.num_tiles = num_tiles;
  p.tiles_per_slice = tiles_per_slice;
  p.partial = partial.mutable_data_ptr<acc_t>();
  const dim3 grid(static_cast<unsigned>(blocks_per_slice), static_cast<unsigned>(slices));
  bool_switch(mask.defined(), [&](auto masked) {
    launch_kernel<wgrad_partial_kernel<scalar_t, decltype(masked)::value>>(grid, kThreads, 0,
                                                                          stream, p);
  });
  const int64_t numel = grad_weight.numel();
  launch_kernel<wgrad_reduce_kernel<scalar_t>>(
      elementwise_blocks(numel), kElementwiseThreads, 0, stream, partial.const_data_ptr<acc_t>(),
      slices, numel, grad_weight.mutable_data_ptr<scalar_t>());
}

// grad-weight on tensor cores (bf16 / fp16 / tf32): `g` is grad_output as [n][h'][w'][kp], `x`
// the input as [n][h][w][cp], `mask` (may be undefined) the ReLU output laid out as `g`;
// see conv3x3_wgrad_igemm.cuh.
template <typename scalar_t>
void wgrad_igemm(const at::Tensor& g, const at::Tensor& mask, const at::Tensor& x,
                 int64_t out_h, int64_t out_w, int64_t padding, at::Tensor& grad_weight,
                 cudaStream_t stream) {
  TORCH_INTERNAL_ASSERT(g.is_contiguous() && x.is_contiguous());
  TORCH_INTERNAL_ASSERT(!mask.defined() || (mask.is_contiguous() && mask.sizes() == g.sizes()));
  wgrad::Params<scalar_t> p{};
  p.g = g.const_data_ptr<scalar_t>();
  p.in = x.const_data_ptr<scalar_t>();
  p.pixels = x.size(0) * out_h * out_w;
  p.h = static_cast<int>(x.size(1));
  p.w = static_cast<int>(x.size(2));
  p.cp = static_cast<int>(x.size(3));
  p.out_h = static_cast<int>(out_h);
  p.out_w = static_cast<int>(out_w);
  p.pad = static_cast<int>(padding);
  p.k = static_cast<int>(grad_weight.size(0));
  p.kp = static_cast<int>(g.size(3));
  p.mask = mask.defined() ? mask.const_data_ptr<scalar_t>() : nullptr;
  const int64_t m_tiles = ceil_div(int64_t(p.k), wgrad::kBM);
  const int64_t n_tiles = 9 * ceil_div(int64_t(p.cp), wgrad::kBN);
  TORCH_CHECK_VALUE(m_tiles <= INT32_MAX && n_tiles <= 65535, "conv3x3 (CUDA): ", p.k, "x",
                    p.cp, " channels exceed the launch grid of the grad-weight kernel");
  const int64_t pixel_blocks = ceil_div(p.pixels, int64_t(wgrad::Layout<scalar_t>::kBK));
  int64_t slices = wgrad::choose_slices(pixel_blocks, m_tiles * n_tiles, multiprocessor_count());
  const int64_t per_slice = ceil_div(pixel_blocks, slices);
  slices = ceil_div(pixel_blocks, per_slice);  // no empty slice
  p.blocks_per_slice = static_cast<int>(per_slice);
  at::Tensor partial = at::empty({slices, p.k, 9, p.cp}, x.options().dtype(at::kFloat));
  p.partial = partial.mutable_data_ptr<float>();
  const dim3 grid(static_cast<unsigned>(m_tiles), static_cast<unsigned>(n_tiles),
                  static_cast<unsigned>(slices));
  bool_switch(mask.defined(), [&](auto masked) {
    launch_kernel<wgrad::wgrad_igemm_kernel<scalar_t, decltype(masked)::value>>(
        grid, wgrad::kThreads, 0, stream, p);
  });
  const int64_t numel = grad_weight.numel();
  launch_kernel<wgrad::wgrad_igemm_reduce_kernel<scalar_t>>(
      elementwise_blocks(numel), kElementwiseThreads, 0, stream, partial.const_data_ptr<float>(),
      static_cast<int>(slices), p.k, static_cast<int>(grad_weight.size(1)), p.cp,
      grad_weight.mutable_data_ptr<scalar_t>(), strides4(grad_weight));
}

template <typename scalar_t>
void grad_bias_cuda(const at::Tensor& go, const at::Tensor& mask, at::Tensor& grad_bias,
                    cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(go.size(1), INT32_MAX));
  bool_switch(mask.defined(), [&](auto masked) {
    launch_kernel<bias_grad_kernel<scalar_t, decltype(masked)::value>>(
        blocks, kThreads, 0, stream, go.const_data_ptr<scalar_t>(), strides4(go),
        mask.defined() ? mask.const_data_ptr<scalar_t>() : nullptr,
        mask.defined() ? strides4(mask) : strides4(go), shape4(go),
        grad_bias.mutable_data_ptr<scalar_t>());
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& relu_output, int64_t padding,
    std::array<bool, 3> output_mask, at::OptionalIntArrayRef requested) {
  check_conv3x3_backward_args(grad_output, input, weight, relu_output, padding);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto algos = choice::backward_algos(input, weight, output_mask[2], padding,
                                            relu_output.has_value(), requested);
  at::Tensor grad_input = input.new_empty({0});
  at::Tensor grad_weight = input.new_empty({0});
  at::Tensor grad_bias = input.new_empty({0});
  if (output_mask[0]) grad_input = empty_in_format_of(input.sizes(), input);
  if (output_mask[1]) grad_weight = at::empty(weight.sizes(), weight.options());
  if (output_mask[2]) grad_bias = at::empty({weight.size(0)}, weight.options());
  if (input.size(0) == 0) {
    grad_weight.zero_();
    grad_bias.zero_();
    return {grad_input, grad_weight, grad_bias};
  }
  const cudaStream_t stream = current_stream();
  const at::Tensor mask = relu_output.has_value() ? *relu_output : at::Tensor();
  const ConvProblem problem = conv_problem(input, weight, padding, grad_output, mask);
  const DeviceInfo dev = device_info();
  const auto plan_of = [&](bool wanted, ConvDirection d, int64_t algo) {
    return wanted ? plan_direction(problem, d, algo, true, dev, "conv3x3_backward",
                                   algo_argument(d, true))
                  : DirectionPlan{};
  };
  const DirectionPlan dgrad = plan_of(output_mask[0], ConvDirection::kGradInput, algos[0]);
  const DirectionPlan wgrad = plan_of(output_mask[1], ConvDirection::kGradWeight, algos[1]);
  const bool aten_dgrad = output_mask[0] && dgrad.kernel == ConvKernel::kAten;
  const bool aten_wgrad = output_mask[1] && wgrad.kernel == ConvKernel::kAten;
  const bool tc_dgrad = output_mask[0] && dgrad.kernel == ConvKernel::kImplicitGemm;
  const bool tc_wgrad = output_mask[1] && wgrad.kernel == ConvKernel::kWgradGemm;
  const bool wgmma_dgrad = output_mask[0] && dgrad.kernel == ConvKernel::kWgmma;
  // Our kernels apply the ReLU mask as they load grad_output (the tensor-core ones in the
  // landed shared-memory stage, the direct ones per element); ATen's backward gets
  // grad_output masked beforehand (zero where relu_output > 0 fails).
  if (aten_dgrad || aten_wgrad) {
    const at::Tensor g_masked =
        mask.defined() ? at::where(mask > 0, grad_output, at::zeros({}, grad_output.options()))
                       : grad_output;
    auto [gi, gw] =
        aten_conv3x3_backward(g_masked, input, weight, padding, aten_dgrad, aten_wgrad);
    if (aten_dgrad) grad_input.copy_(gi);
    if (aten_wgrad) grad_weight.copy_(gw);
  }
  // grad_output and the ReLU output as NHWC [n][h'][w'][kp], shared by both tensor-core
  // kernels: views where the plan found them ready, else copies.
  const DirectionPlan& tc_plan = tc_dgrad || wgmma_dgrad ? dgrad : wgrad;
  const int64_t kp = vector_channels(weight.size(0), static_cast<int>(input.element_size()));
  const bool tc = tc_dgrad || tc_wgrad || wgmma_dgrad;
  const at::Tensor g = tc ? nhwc_operand(grad_output, kp, tc_plan.copy_activations,
                                         "conv3x3 copy: grad_output")
                          : at::Tensor();
  const at::Tensor g_mask = tc && mask.defined()
                                ? nhwc_operand(mask, kp, tc_plan.copy_mask, "conv3x3 copy: relu_output")
                                : at::Tensor();
  if (tc_wgrad) {
    const at::Tensor x =
        nhwc_operand(input, wgrad.channels, wgrad.copy_input, "conv3x3 copy: input");
    dispatch_tensor_core(input.scalar_type(), [&](auto t) {
      wgrad_igemm<decltype(t)>(g, g_mask, x, grad_output.size(2), grad_output.size(3), padding,
                               grad_weight, stream);
    });
  }
  if (tc_dgrad || wgmma_dgrad) {
    // The forward kernel applied to grad_output (masked by the ReLU as it loads) with the
    // filters flipped and transposed, [C][3][3][Kpf], and padding 2 - pad.
    const at::Tensor filt = nhwc_operand(weight.flip({2, 3}).transpose(0, 1),
                                         dgrad.filter_channels, true, "conv3x3 copy: filters");
    dispatch_tensor_core(input.scalar_type(), [&](auto t) {
      if (wgmma_dgrad) {
        wgmma_conv<decltype(t)>(g, filt, at::Tensor(), 2 - padding, false, grad_input,
                                dense_channels_last(grad_input), dgrad.wgmma, stream, g_mask);
      } else {
        igemm_conv<decltype(t)>(g, grad_output.size(2), grad_output.size(3), filt, at::Tensor(),
                                2 - padding, false, grad_input, dgrad.tiles, stream, g_mask);
      }
    });
  }
  const at::Tensor& w = weight;  // read through its strides
  OVERFEAT_DISPATCH_FLOATING(input.scalar_type(), "conv3x3_backward_cuda", [&] {
    if (output_mask[0] && dgrad.kernel == ConvKernel::kDirect) {
      grad_input_cuda<scalar_t>(grad_output, mask, w, padding, grad_input, stream);
    }
    if (output_mask[1] && wgrad.kernel == ConvKernel::kDirect) {
      grad_weight_cuda<scalar_t>(grad_output, mask, input, padding, grad_weight, stream);
    }
    if (output_mask[2]) grad_bias_cuda<scalar_t>(grad_output, mask, grad_bias, stream);
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

OVERFEAT_CUDA_LIBRARY_IMPL(m) {
  m.impl("conv3x3", &conv3x3_cuda);
  m.impl("conv3x3_backward", &conv3x3_backward_cuda);
}

}  // namespace overfeat_kernels
