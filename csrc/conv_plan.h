// conv3x3's plan: the one place that says which implementation computes each direction
// of a call (forward, grad-input, grad-weight), with which tiles and which copies.
//
// Two parts, both pure functions of plain values (no tensors, no device queries), shared
// by the CPU code of overfeat_kernels._C, the CUDA kernels in both builds (GPU and
// simulator) and, through _C.conv_plan / _C.conv_candidates, by Python and its tests:
//
// - kConvCandidates: the candidates' table. Each name ("ours", "direct", "tc", ...), its
//   `algos` code, the directions and dtypes it serves and the GPUs it needs. "auto" times
//   candidates_for(...) of it; overfeat_kernels.backend.ALGOS is read from it. Adding a
//   candidate is one row here and one case in plan_direction.
// - plan_direction(problem, direction, algo, device): for an `algos` code (0 = our
//   heuristic), the kernel, the tile configuration and the operand copies. The CUDA
//   implementation runs what it says; a forced code that cannot run raises here, with a
//   message naming the argument.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "index_math.h"

namespace overfeat_kernels {

// conv3x3's `algos` codes: which implementation computes a direction. kAlgoDefault runs
// our kernels as the heuristic below picks them; the others force one. An op called with
// `algos` omitted (None) lets the conv backend's mode decide (conv_choice.h), which
// resolves to these codes.
enum ConvAlgo : int64_t {
  kAlgoDefault = 0,
  kAlgoDirect = 1,            // CUDA: the direct CUDA-core kernels
  kAlgoTensorCores = 2,       // CUDA: implicit GEMM on tensor cores (mma.sync), large tiles
  kAlgoTensorCoresSmall = 3,  // CUDA: the same, small tiles (forward and grad-input only)
  kAlgoAten = 4,              // PyTorch's own convolution (cuDNN on CUDA, oneDNN on the CPU)
  kAlgoWgmma = 5,             // CUDA sm_90a: the Hopper kernel (TMA + wgmma), forward and grad-input
};
inline constexpr int64_t kNumConvAlgos = 6;

enum class ConvDirection : int { kForward = 0, kGradInput = 1, kGradWeight = 2 };
inline constexpr int kNumDirections = 3;
inline constexpr const char* kDirectionNames[kNumDirections] = {"forward", "grad_input",
                                                                "grad_weight"};
inline constexpr uint8_t kAllDirections = 0b111;

struct ConvCandidate {
  const char* name;
  int64_t code;            // ConvAlgo
  uint8_t directions;      // bit d: serves ConvDirection d
  bool gpu_only;           // runs on CUDA tensors (and in the simulator) only
  bool tensor_cores;       // needs a tensor-core dtype (tensor_core_dtype)
  int min_capability;      // compute capability x 10 it needs (0: any)
  int max_capability;      // and the highest it runs on (0: any): sm_90a code runs on 9.0 only
  bool needs_sm90a;        // its kernels exist only in a build for sm_90a (kBuildHasSm90a)
  const char* summary;
};

// "ours" is our kernels with their heuristic: on the CPU it is our only implementation, on
// CUDA the heuristic picks among the rows after it, which "auto" times one by one.
inline constexpr ConvCandidate kConvCandidates[] = {
    {"ours", kAlgoDefault, kAllDirections, false, false, 0, 0, false,
     "our kernels, configuration picked by the heuristic"},
    {"direct", kAlgoDirect, kAllDirections, true, false, 0, 0, false,
     "direct CUDA-core kernels (every dtype, exact float32)"},
    {"tc", kAlgoTensorCores, kAllDirections, true, true, 80, 0, false,
     "tensor-core implicit GEMM (mma.sync), large tiles"},
    {"tc-small", kAlgoTensorCoresSmall, 0b011, true, true, 80, 0, false,
     "tensor-core implicit GEMM (mma.sync), small tiles: more CTAs for small maps"},
    {"cudnn", kAlgoAten, kAllDirections, false, false, 0, 0, false,
     "PyTorch's convolution (cuDNN on CUDA, oneDNN on the CPU), bias and ReLU after it"},
    {"wgmma", kAlgoWgmma, 0b011, true, true, 90, 90, true,
     "Hopper implicit GEMM (TMA + wgmma, warp-specialised, persistent; sm_90a)"},
};
inline constexpr int kNumConvCandidates = sizeof(kConvCandidates) / sizeof(kConvCandidates[0]);

inline const ConvCandidate* candidate_by_code(int64_t code) {
  for (const auto& c : kConvCandidates) {
    if (c.code == code) return &c;
  }
  return nullptr;
}

// Whether a dtype runs on tensor cores: bf16 / fp16 always, float32 when TF32 is allowed
// (torch.backends.cudnn.allow_tf32, the switch F.conv2d reads); float64 never. The
// element size and this flag are all the plan needs of a dtype.
inline bool tensor_core_dtype(int element_size, bool is_float32, bool allow_tf32) {
  return element_size == 2 || (is_float32 && allow_tf32);
}

// Whether this module's CUDA kernels include the sm_90a ones (setup.py defines
// OVERFEAT_HAS_SM90A when TORCH_CUDA_ARCH_LIST has 9.0a). The simulator always has them, and
// so does a build without CUDA, whose only CUDA device is the simulator.
#if defined(OVERFEAT_SIM) || defined(OVERFEAT_HAS_SM90A) || !defined(OVERFEAT_WITH_CUDA)
inline constexpr bool kBuildHasSm90a = true;
#else
inline constexpr bool kBuildHasSm90a = false;
#endif

// Whether candidate `c` is timed by "auto" for `direction` on this device and dtype. On
// CUDA: the concrete kernels that apply and cuDNN; on the CPU: ours and ATen's. `sm90a`:
// the build has the sm_90a kernels.
inline bool candidate_applies(const ConvCandidate& c, ConvDirection direction, bool gpu,
                              bool tensor_core_dtype_, int capability,
                              bool sm90a = kBuildHasSm90a) {
  if (!(c.directions & (1u << static_cast<int>(direction)))) return false;
  if (!gpu) return !c.gpu_only;
  if (c.code == kAlgoDefault) return false;  // on CUDA the heuristic's pieces are timed
  if (c.tensor_cores && (!tensor_core_dtype_ || capability < c.min_capability)) return false;
  if (c.max_capability != 0 && capability > c.max_capability) return false;
  if (c.needs_sm90a && !sm90a) return false;
  return capability >= c.min_capability;
}

// ---- the problem and the device --------------------------------------------------------

// One conv3x3 call as the plan sees it: input [n, c, h, w], k filters, and whether each
// operand the implicit GEMM reads as NHWC is already in that layout (dense channels_last,
// 16-byte aligned data), which decides the copies.
struct ConvProblem {
  int64_t n = 0, c = 0, h = 0, w = 0, k = 0;
  int64_t padding = 1;
  int element_size = 4;
  std::string dtype = "torch.float32";  // for messages
  bool tensor_core_dtype = false;
  bool input_nhwc = false;        // the input
  bool weight_nhwc = false;       // the weight ([K][3][3][C] in memory)
  bool grad_output_nhwc = false;  // grad_output (and the ReLU output it is masked with)
  bool relu_output_nhwc = false;
  bool masked = false;            // the gradient passes a ReLU (relu_output given)
  int fused_pool = 0;  // forward: the window (2, 3) a kernel's epilogue max-pools (conv_pool.h)
  bool fused_offsets = false;  // with fused_pool: offset_max_pool2d's windows
  int64_t out_h() const { return h + 2 * padding - 2; }
  int64_t out_w() const { return w + 2 * padding - 2; }
};

// What the plan needs of the device: compute capability x 10 (90 = sm_90) and SMs. The
// simulator stands for an H100 (90, 132 SMs); a CPU tensor outside it has capability 0.
struct DeviceInfo {
  int capability = 0;
  int64_t sms = 1;
  // The build holds the sm_90a kernels (kBuildHasSm90a).
  bool sm90a = kBuildHasSm90a;
};

// ---- tile shapes (the kernels' TileConfig static_asserts against these) -----------------

inline constexpr int kIgemmVecBytes = 16;  // the channel granule: one 16-byte vector
inline constexpr int kIgemmRowBytes = 64;  // one k-block of one row
// Output tile of a CTA, pixels x filters: large 128 x 128 (tf32 128 x 64), small 64 x 64.
inline constexpr int kLargeTileM = 128, kLargeTileN16 = 128, kLargeTileN32 = 64;
inline constexpr int kSmallTileM = 64, kSmallTileN = 64;
// Sizes the implicit GEMM keeps in 32-bit registers; anything larger takes the direct
// kernels.
inline constexpr int64_t kIgemmSizeLimit = INT32_MAX / 16;

inline int64_t plan_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Elements per 16-byte vector, and c channels rounded up to whole vectors (Cp).
inline int64_t vector_elems(int element_size) { return kIgemmVecBytes / element_size; }
inline int64_t vector_channels(int64_t c, int element_size) {
  return plan_ceil_div(c, vector_elems(element_size)) * vector_elems(element_size);
}
// The channel stride of the filter copy: Cp rounded up to whole k-blocks (64 bytes).
inline int64_t filter_channels(int64_t cp, int element_size) {
  const int64_t block = kIgemmRowBytes / element_size;
  return plan_ceil_div(cp, block) * block;
}

// Whether a map of `channels` x h x w feeding `out_c` filters fits the implicit GEMM's
// 32-bit arithmetic (channels, sides, and the byte offset of a tap within three rows).
inline bool fits_igemm(int64_t channels, int64_t h, int64_t w, int64_t out_c,
                       int element_size) {
  const int64_t cp = channels + 8;
  return channels < kIgemmSizeLimit && h < kIgemmSizeLimit && w < kIgemmSizeLimit &&
         out_c < kIgemmSizeLimit && 9 * cp < kIgemmSizeLimit &&
         3 * (w + 3) * cp * element_size < kIgemmSizeLimit;
}

enum class Tiles : int { kNone = 0, kLarge = 1, kSmall = 2 };

// Which tile configuration the implicit GEMM gets for `pixels` x `filters`: the large tile
// keeps an SM busy only with two resident CTAs; when it would give fewer than 2 CTAs per
// SM, the 64 x 64 tile gives 2-4 times as many (small maps at batch 1: VGG's 14 x 14 and
// 28 x 28 layers).
inline Tiles choose_tiles(int64_t pixels, int64_t filters, int element_size, int64_t sms) {
  const int64_t bn = element_size == 2 ? kLargeTileN16 : kLargeTileN32;
  const int64_t large_ctas = plan_ceil_div(pixels, kLargeTileM) * plan_ceil_div(filters, bn);
  return large_ctas < 2 * sms ? Tiles::kSmall : Tiles::kLarge;
}

// Offset pooling (offset_max_pool2d) in the tensor-core kernels' epilogue (the implicit
// GEMM's and the Hopper kernel's): a tile's rows are a 2-D block of (pool·a + pool − 1) x
// (pool·b + pool − 1) conv pixels, row-major, in which the pool² offsets' windows give
// a x b pooled positions each. Windows overlap, so
// neighbouring blocks share pool − 1 rows and columns, computed by both tiles: the price of
// keeping every window inside one tile (about (block pixels) / (pool² · a · b) times the
// conv's arithmetic: 1.28 for pool 2, 1.58 for pool 3 with 128-row tiles).
struct OffsetPoolBlock {
  int a = 0, b = 0;  // pooled positions per block: rows, columns
};

// The block for `rows`-row tiles (kLargeTileM or kSmallTileM) over pooled maps of
// pooled_h x pooled_w positions that covers them with the fewest blocks; ties go to the
// one found first (fewer rows a). Pure: tested from Python.
inline OffsetPoolBlock choose_offset_pool_block(int rows, int pool, int64_t pooled_h,
                                                int64_t pooled_w) {
  OffsetPoolBlock best;
  int64_t fewest = -1;
  for (int a = 1; pool * (a + 1) - 1 <= rows; ++a) {
    for (int b = 1; (pool * (a + 1) - 1) * (pool * (b + 1) - 1) <= rows; ++b) {
      const int64_t blocks = plan_ceil_div(pooled_h, a) * plan_ceil_div(pooled_w, b);
      if (fewest < 0 || blocks < fewest) {
        fewest = blocks;
        best = {a, b};
      }
    }
  }
  return best;
}

// ---- the Hopper kernel's configuration (conv3x3_wgmma.cuh static_asserts these) -----------

inline constexpr int kWgmmaTileM = 128, kWgmmaTileN = 128;  // pixels x filters per CTA tile
inline constexpr int kWgmmaSliceBytes = 128;  // channels of one tap per reduction step
inline constexpr int kWgmmaMaxSplit = 8;
// Whether our heuristic ("ours") prefers the Hopper kernel on compute capability 9.0. Off
// until a GPU run has measured it against the mma.sync kernel: it is proven correct in the
// simulator, its speed is unmeasured. The "auto" backend (the default mode) times both.
inline constexpr bool kOursPrefersWgmma = false;

struct WgmmaConfig {
  int block_h = 0, block_w = 0;  // the tile's pixels: a block_h x block_w block of one image
  int split = 1;                 // split-K parts per tile (1: none)
  int pool = 0;                  // the epilogue max-pools pool x pool windows (0: none)
  // With pool: offset_max_pool2d's windows, in blocks of a x b positions (OffsetPoolBlock):
  // block_h = pool·(a + 1) − 1, block_w = pool·(b + 1) − 1.
  bool pool_offsets = false;
};

// The pixel blocks the Hopper kernel may take, in order of preference (the squarer first:
// the nine taps' shifted boxes overlap most), by pool: 128 pixels; for pool 2 those whose
// sides are even; for pool 3, 126 pixels (14 windows) with sides multiples of 3.
struct WgmmaBlock {
  int h, w;
};
inline constexpr WgmmaBlock kWgmmaBlocks[] = {{8, 16}, {4, 32}, {16, 8}, {2, 64}, {1, 128}};
inline constexpr WgmmaBlock kWgmmaBlocksPool3[] = {{6, 21}, {3, 42}, {21, 6}, {42, 3}};

// The block of `blocks` (in order; sides multiples of `pool` when pooling) that covers an
// out_h x out_w map with the fewest blocks; ties go to the earlier, squarer block. `count`,
// when given: how many it takes.
template <size_t kN>
inline WgmmaBlock fewest_wgmma_blocks(const WgmmaBlock (&blocks)[kN], int64_t out_h,
                                      int64_t out_w, int pool, int64_t* count = nullptr) {
  WgmmaBlock best{0, 0};
  int64_t fewest = -1;
  for (const WgmmaBlock& b : blocks) {
    if (pool != 0 && (b.h % pool != 0 || b.w % pool != 0)) continue;
    const int64_t c = plan_ceil_div(out_h, b.h) * plan_ceil_div(out_w, b.w);
    if (fewest < 0 || c < fewest) {
      fewest = c;
      best = b;
    }
  }
  if (count != nullptr) *count = fewest;
  return best;
}

// The Hopper kernel's tiles for n images of out_h x out_w pixels, k filters and `slices`
// reduction steps (taps x channel slices) on `sms` SMs; `pool` (2, 3): the epilogue pools
// (`offsets`: offset_max_pool2d's windows). Pure: tested from Python.
// - The pixel block (one TMA box per tap) whose blocks cover the map with the fewest tiles
//   (fewest_wgmma_blocks); pooling, over the pixels that whole windows take (out_h / pool ·
//   pool rows, and columns alike), from kWgmmaBlocks (pool 2) or kWgmmaBlocksPool3; offset
//   pooling, the overlapping blocks of choose_offset_pool_block for 128 rows.
// - Split-K when the tiles would occupy at most half of the SMs (VGG's 14 x 14 and 28 x 28
//   maps at batch 1): as many parts as fill the SMs, at most kWgmmaMaxSplit and at least 4
//   slices each (the pipeline's depth), no part empty. The parts' fp32 tiles are added in
//   order by a second kernel, so results do not depend on the schedule. A pooled call takes
//   the unpooled call's split: the same parts add up to the same sums, so pooling in the
//   epilogue gives F.max_pool2d of the unpooled call bit for bit.
inline WgmmaConfig choose_wgmma_config(int64_t n, int64_t out_h, int64_t out_w, int64_t k,
                                       int64_t slices, int64_t sms, int pool = 0,
                                       bool offsets = false) {
  WgmmaConfig c;
  c.pool = pool;
  c.pool_offsets = pool != 0 && offsets;
  int64_t blocks = 0;
  const WgmmaBlock conv_block = fewest_wgmma_blocks(kWgmmaBlocks, out_h, out_w, 0, &blocks);
  const int64_t tiles = n * blocks * plan_ceil_div(k, kWgmmaTileN);
  if (tiles > 0 && 2 * tiles <= sms && slices >= 8) {
    const int64_t split = std::min<int64_t>({sms / tiles, slices / 4, kWgmmaMaxSplit});
    const int64_t per = plan_ceil_div(slices, split);
    c.split = static_cast<int>(plan_ceil_div(slices, per));
  }
  if (pool == 0) {
    c.block_h = conv_block.h;
    c.block_w = conv_block.w;
    return c;
  }
  if (c.pool_offsets) {
    const OffsetPoolBlock b = choose_offset_pool_block(
        kWgmmaTileM, pool, pooled_extent(out_h, pool), pooled_extent(out_w, pool));
    c.block_h = pool * (b.a + 1) - 1;
    c.block_w = pool * (b.b + 1) - 1;
    return c;
  }
  const int64_t ph = out_h / pool * pool, pw = out_w / pool * pool;
  const WgmmaBlock b = pool == 3 ? fewest_wgmma_blocks(kWgmmaBlocksPool3, ph, pw, pool)
                                 : fewest_wgmma_blocks(kWgmmaBlocks, ph, pw, pool);
  c.block_h = b.h;
  c.block_w = b.w;
  return c;
}

// ---- the plan of one direction ----------------------------------------------------------

enum class ConvKernel : int {
  kCpu = 0,             // the CPU implementation (ATen's convolution, our epilogue)
  kDirect = 1,          // direct CUDA-core kernels
  kImplicitGemm = 2,    // tensor-core implicit GEMM over 9 taps of an NHWC map
  kUnfolded = 3,        // the same kernel as a 1 x 1 GEMM over the input unfolded to 9·C
  kWgradGemm = 4,       // grad-weight on tensor cores
  kAten = 5,            // PyTorch's convolution (cuDNN on CUDA)
  kWgmma = 6,           // the Hopper implicit GEMM (conv3x3_wgmma.cuh) over 9 taps
  kWgmmaTapChunks = 7,  // the same, few channels: all 9 taps' 16-byte chunks in one step
};
inline constexpr const char* kKernelNames[] = {"cpu",      "direct",     "implicit_gemm",
                                                "unfolded", "wgrad_gemm", "aten",
                                                "wgmma",    "wgmma_tap_chunks"};

struct DirectionPlan {
  ConvKernel kernel = ConvKernel::kCpu;
  Tiles tiles = Tiles::kNone;
  int64_t channels = 0;         // Cp: the GEMM's input channels, padded to whole vectors
  int64_t filter_channels = 0;  // Cpf: the filter copy's channel stride
  // Copies made before the kernel runs: the GEMM's activation operand to padded NHWC
  // (input, grad_output, or the unfolded input), and the filters repacked
  // ([K][3][3][Cpf], flipped and transposed for grad-input, [K][1][1][Cuf] unfolded).
  bool copy_activations = false;
  bool copy_mask = false;  // grad-input / grad-weight through a ReLU: its output as NHWC
  bool pack_filters = false;
  bool copy_input = false;  // grad-weight: the input as padded NHWC
  WgmmaConfig wgmma;        // kWgmma / kWgmmaUnfolded: pixel block and split-K
};

inline const char* conv_algo_name(int64_t algo) {
  switch (algo) {
    case kAlgoDefault: return "default";
    case kAlgoDirect: return "direct";
    case kAlgoTensorCores: return "tensor cores";
    case kAlgoTensorCoresSmall: return "tensor cores, small tiles";
    case kAlgoAten: return "aten";
    case kAlgoWgmma: return "wgmma";
    default: return "unknown";
  }
}

// "algos[0] (forward)" and the like, for messages.
inline std::string algo_argument(ConvDirection d, bool backward_op) {
  const int index = static_cast<int>(d) - (backward_op ? 1 : 0);
  static constexpr const char* kWhat[] = {"forward", "grad-input", "grad-weight"};
  return "algos[" + std::to_string(index) + "] (" + kWhat[static_cast<int>(d)] + ")";
}

// The plan of one direction for `algo` (already checked to be a valid code for it).
// `gpu`: the call runs on CUDA tensors or in the simulator (else the CPU implementation).
// `op` and `argument` name the forced code in errors.
inline DirectionPlan plan_direction(const ConvProblem& p, ConvDirection d, int64_t algo,
                                    bool gpu, const DeviceInfo& dev, const char* op,
                                    const std::string& argument) {
  DirectionPlan plan;
  if (!gpu) {
    TORCH_CHECK_VALUE(algo == kAlgoDefault || algo == kAlgoAten, op, ": ", argument, " = ",
                      algo, " (", conv_algo_name(algo),
                      ") runs on CUDA tensors only; on the CPU use 0 (default) or 4 (aten)");
    return plan;  // kCpu: ATen's convolution either way
  }
  if (algo == kAlgoAten) {
    plan.kernel = ConvKernel::kAten;
    return plan;
  }
  const int e = p.element_size;
  const int64_t oh = p.out_h(), ow = p.out_w();
  // The operand the GEMM streams as NHWC and the filters it multiplies: the input and the
  // filters (forward); grad_output and the flipped, transposed filters (grad-input);
  // both maps (grad-weight).
  bool fits = false;
  if (d == ConvDirection::kForward) {
    fits = fits_igemm(p.c, p.h, p.w, p.k, e);
  } else if (d == ConvDirection::kGradInput) {
    fits = fits_igemm(p.k, oh, ow, p.c, e);
  } else {
    fits = fits_igemm(p.c, p.h, p.w, p.k, e) && fits_igemm(p.k, oh, ow, p.c, e) &&
           oh * ow < INT32_MAX;
  }
  const bool possible = p.tensor_core_dtype && dev.capability >= 80 && fits;
  const bool forced_tc = algo == kAlgoTensorCores || algo == kAlgoTensorCoresSmall;
  TORCH_CHECK_VALUE(!forced_tc || possible, op, ": ", argument, " = ", algo, " (",
                    conv_algo_name(algo), ") does not apply to ", p.dtype,
                    " tensors of these sizes on this device (tensor cores take bfloat16 and "
                    "float16, and float32 when torch.backends.cudnn.allow_tf32 is set, on "
                    "compute capability 8.0 or newer, with sizes that fit 32-bit offsets)");
  // The Hopper kernel: the forward and grad-input on compute capability 9.0 (its sm_90a
  // code runs there only) of a build that has it. TMA's coordinates are 32-bit: the images
  // must fit. Our heuristic takes it only with kOursPrefersWgmma; "auto" times it as a
  // candidate either way. Both kernels pool in their epilogue (p.fused_pool).
  const bool wgmma_possible = d != ConvDirection::kGradWeight && possible &&
                              dev.capability == 90 && dev.sm90a && p.n < INT32_MAX;
  TORCH_CHECK_VALUE(algo != kAlgoWgmma || wgmma_possible, op, ": ", argument, " = ", algo, " (",
                    conv_algo_name(algo), ") does not apply to ", p.dtype,
                    " tensors of these sizes on this device (the Hopper kernel computes the "
                    "forward and grad-input of bfloat16 and float16, and float32 when "
                    "torch.backends.cudnn.allow_tf32 is set, on compute capability 9.0 with a "
                    "build for sm_90a)");
  const bool wgmma = algo == kAlgoWgmma || (kOursPrefersWgmma && algo == kAlgoDefault && wgmma_possible);
  if (wgmma && d == ConvDirection::kGradInput) {
    // grad_output (masked by the ReLU as it lands) with the flipped, transposed filters.
    plan.kernel = ConvKernel::kWgmma;
    plan.channels = vector_channels(p.k, e);
    plan.filter_channels = filter_channels(plan.channels, e);
    plan.copy_activations = !(p.grad_output_nhwc && p.k == plan.channels);
    plan.copy_mask = p.masked && !(p.relu_output_nhwc && p.k == plan.channels);
    plan.pack_filters = true;
    plan.wgmma = choose_wgmma_config(p.n, p.h, p.w, p.c,
                                     9 * plan_ceil_div(plan.channels * e, kWgmmaSliceBytes), dev.sms);
    return plan;
  }
  if (wgmma) {
    // Few channels (one 16-byte vector: VGG's first layer): the nine taps' chunks of the
    // input, read in place or padded once to the vector, and tap-major filters [9][K][Cp].
    const bool chunks = p.c <= vector_elems(e);
    plan.kernel = chunks ? ConvKernel::kWgmmaTapChunks : ConvKernel::kWgmma;
    plan.channels = vector_channels(p.c, e);
    plan.filter_channels = chunks ? plan.channels : filter_channels(plan.channels, e);
    plan.copy_activations = !(p.input_nhwc && p.c == plan.channels);
    plan.pack_filters = chunks || !(p.weight_nhwc && p.c == plan.filter_channels);
    const int64_t slices = chunks ? 1 : 9 * plan_ceil_div(plan.channels * e, kWgmmaSliceBytes);
    plan.wgmma = choose_wgmma_config(p.n, oh, ow, p.k, slices, dev.sms, p.fused_pool,
                                     p.fused_offsets);
    return plan;
  }
  if (!(forced_tc || (algo == kAlgoDefault && possible))) {
    plan.kernel = ConvKernel::kDirect;
    return plan;
  }
  const auto tiles_for = [&](int64_t pixels, int64_t filters) {
    if (algo == kAlgoTensorCores) return Tiles::kLarge;
    if (algo == kAlgoTensorCoresSmall) return Tiles::kSmall;
    return choose_tiles(pixels, filters, e, dev.sms);
  };
  if (d == ConvDirection::kForward) {
    if (p.c < vector_elems(e)) {
      // Few input channels (VGG's first layer, C = 3): a 1 x 1 GEMM over the input
      // unfolded to [n][h'][w'][9·C rounded up to a vector]: 1-2 k-blocks per pixel
      // instead of 9 mostly-zero ones.
      plan.kernel = ConvKernel::kUnfolded;
      plan.channels = vector_channels(9 * p.c, e);
      plan.filter_channels = filter_channels(plan.channels, e);
      plan.copy_activations = true;
      plan.pack_filters = true;
    } else {
      plan.kernel = ConvKernel::kImplicitGemm;
      plan.channels = vector_channels(p.c, e);
      plan.filter_channels = filter_channels(plan.channels, e);
      plan.copy_activations = !(p.input_nhwc && p.c == plan.channels);
      plan.pack_filters = !(p.weight_nhwc && p.c == plan.filter_channels);
    }
    plan.tiles = tiles_for(p.n * oh * ow, p.k);
  } else if (d == ConvDirection::kGradInput) {
    plan.kernel = ConvKernel::kImplicitGemm;
    plan.channels = vector_channels(p.k, e);
    plan.filter_channels = filter_channels(plan.channels, e);
    plan.copy_activations = !(p.grad_output_nhwc && p.k == plan.channels);
    plan.copy_mask = p.masked && !(p.relu_output_nhwc && p.k == plan.channels);
    plan.pack_filters = true;  // flipped and transposed: always a copy
    plan.tiles = tiles_for(p.n * p.h * p.w, p.c);
  } else {
    plan.kernel = ConvKernel::kWgradGemm;
    plan.channels = vector_channels(p.c, e);
    plan.copy_input = !(p.input_nhwc && p.c == plan.channels);
    plan.copy_activations = !(p.grad_output_nhwc && p.k == vector_channels(p.k, e));
    plan.copy_mask = p.masked && !(p.relu_output_nhwc && p.k == vector_channels(p.k, e));
  }
  return plan;
}

// Checks one entry of `algos` (`which` names it) for its direction: the codes of the
// candidates that serve it (kConvCandidates).
inline void check_conv_algo(int64_t algo, const char* op, const std::string& which,
                            ConvDirection d) {
  const auto serves = [d](const ConvCandidate& c) {
    return (c.directions & (1u << static_cast<int>(d))) != 0;
  };
  const ConvCandidate* c = algo >= 0 && algo < kNumConvAlgos ? candidate_by_code(algo) : nullptr;
  if (c != nullptr && serves(*c)) return;
  std::string codes, names;
  int listed = 0, count = 0;
  for (const auto& cand : kConvCandidates) count += serves(cand) ? 1 : 0;
  for (const auto& cand : kConvCandidates) {
    if (!serves(cand)) continue;
    ++listed;
    const char* sep = listed == 1 ? "" : listed == count ? " or " : ", ";
    codes += sep + std::to_string(cand.code);
    names += std::string(listed == 1 ? "" : ", ") + cand.name;
  }
  TORCH_CHECK_VALUE(false, op, ": ", which, " must be ", codes, " (", names, "), got ", algo);
}

}  // namespace overfeat_kernels
