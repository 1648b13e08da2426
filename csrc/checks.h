// Argument checks and tensor helpers shared by the CPU and CUDA implementations.
//
// These are the ops' argument checks: a public call reaches them in one step (the Python
// wrappers check only what C++ cannot see, such as arrays of other libraries). Messages
// name the op and the argument and speak Python (shapes as tuples, dtypes as torch.float32),
// X when tracing; a test holds
// the two to the same words. TORCH_CHECK_VALUE / TORCH_CHECK_TYPE raise ValueError /
// TypeError.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/safe_numerics.h>

#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "conv_plan.h"
#include "index_math.h"
#include "op_schemas.h"

namespace overfeat_kernels {

inline Shape4 shape4(const at::Tensor& t) {
  return {t.size(0), t.size(1), t.size(2), t.size(3)};
}
inline Strides4 strides4(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Outputs take the input's memory format (the same rule as torch's fake tensors use).
inline bool is_channels_last(const at::Tensor& t) {
  return t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

// A new dense tensor of `sizes` in the memory format of `like`.
inline at::Tensor empty_in_format_of(at::IntArrayRef sizes, const at::Tensor& like) {
  return at::empty(sizes, like.options().memory_format(like.suggest_memory_format()));
}

// Sizes as Python prints a tuple of them: (3, 8, 8), (5,), ().
inline std::string py_shape(at::IntArrayRef sizes) {
  std::ostringstream s;
  s << '(';
  for (size_t i = 0; i < sizes.size(); ++i) s << (i ? ", " : "") << sizes[i];
  s << (sizes.size() == 1 ? ",)" : ")");
  return s.str();
}

// A dtype as Python names it: torch.float32, torch.complex128.
inline std::string py_dtype(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

// A layout as Python names it: torch.strided, torch.sparse_coo, ...
inline const char* py_layout(at::Layout l) {
  switch (l) {
    case at::kStrided: return "torch.strided";
    case at::kSparse: return "torch.sparse_coo";
    case at::kSparseCsr: return "torch.sparse_csr";
    case at::kSparseCsc: return "torch.sparse_csc";
    case at::kSparseBsr: return "torch.sparse_bsr";
    case at::kSparseBsc: return "torch.sparse_bsc";
    case at::kMkldnn: return "torch._mkldnn";
    case at::kJagged: return "torch.jagged";
    default: return "an unknown layout";
  }
}

inline void check_4d(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": ", name, " must be a 4-D tensor [N, C, H, W], got a ",
                    t.dim(), "-D tensor of shape ", py_shape(t.sizes()));
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, op, ": ", name,
                    " must be a dense (strided) tensor, got layout ", py_layout(t.layout()));
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 ||
                       st == at::kDouble,
                   op, ": ", name,
                   " must be float32, float16, bfloat16 or float64, got ", py_dtype(st));
}

// interleave / deinterleave move elements of 1, 2, 4 or 8 bytes (any such dtype).
inline void check_movable(const at::Tensor& t, const char* op) {
  const auto size = t.element_size();
  TORCH_CHECK_TYPE(size == 1 || size == 2 || size == 4 || size == 8, op, ": input dtype ",
                   py_dtype(t.scalar_type()),
                   " is not supported (elements of 1, 2, 4 or 8 bytes only)");
}

inline void check_same(const at::Tensor& t, const at::Tensor& ref, const char* op,
                       const char* name, const char* ref_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " dtype ",
                   py_dtype(t.scalar_type()), " does not match ", ref_name, " dtype ",
                   py_dtype(ref.scalar_type()));
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
                    ref_name, " is on ", ref.device());
}

inline void check_kernel_size(int64_t k, const char* op) {
  TORCH_CHECK_VALUE(k >= 1, op, ": kernel_size must be >= 1, got ", k);
}

// a * b, a size that the op derives from kernel_size k (k*k, N*k*k, h*k); a ValueError where
// it leaves int64 (only tensors without elements get that far, or a huge k).
inline int64_t kernel_size_product(int64_t a, int64_t b, int64_t k, const char* op) {
  int64_t out = 0;
  TORCH_CHECK_VALUE(!c10::mul_overflows(a, b, &out), op, ": kernel_size ", k,
                    " is too large: a size derived from it (", a, " * ", b,
                    ") does not fit in 64 bits");
  return out;
}

inline void check_conv3x3_args(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, int64_t padding) {
  constexpr const char* op = "conv3x3";
  check_4d(input, op, "input");
  check_floating(input, op, "input");
  check_4d(weight, op, "weight");
  check_same(weight, input, op, "weight", "input");
  TORCH_CHECK_VALUE(weight.size(2) == 3 && weight.size(3) == 3, op,
                    ": weight must be [K, C, 3, 3], got shape ", py_shape(weight.sizes()));
  TORCH_CHECK_VALUE(weight.size(0) >= 1, op, ": weight must have at least one output channel");
  TORCH_CHECK_VALUE(input.size(1) >= 1, op, ": input must have at least one channel");
  TORCH_CHECK_VALUE(weight.size(1) == input.size(1), op, ": weight expects ", weight.size(1),
                    " input channels (shape ", py_shape(weight.sizes()), ") but input has ",
                    input.size(1), " (shape ", py_shape(input.sizes()), ")");
  TORCH_CHECK_VALUE(padding == 0 || padding == 1, op, ": padding must be 0 or 1, got ",
                    padding);
  TORCH_CHECK_VALUE(input.size(2) + 2 * padding >= 3 && input.size(3) + 2 * padding >= 3, op,
                    ": input of spatial size ", input.size(2), "x", input.size(3),
                    " is too small for a 3x3 kernel with padding ", padding);
  if (bias.has_value()) {
    const auto& b = *bias;
    check_same(b, input, op, "bias", "input");
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == weight.size(0), op, ": bias must be [",
                      weight.size(0), "], got shape ", py_shape(b.sizes()));
  }
}

// conv3x3's output shape after its pooling: pool = 0 (none) or k >= 2, max-pooled k x k
// with stride k (floor), or with pool_offsets at every pixel offset (offset_max_pool2d's
// shape). Call after check_conv3x3_args.
// conv3x3's output size for a conv map of n x k x h x w pooled with `pool` x `pool` windows
// (0: none): F.max_pool2d's (floor), or with `offsets` offset_max_pool2d's (n·pool² images
// of pooled_extent). No checks: check_conv3x3_pool_args makes them.
inline std::vector<int64_t> conv3x3_pooled_size(int64_t n, int64_t k, int64_t h, int64_t w,
                                                int64_t pool, bool offsets) {
  if (pool == 0) return {n, k, h, w};
  if (!offsets) return {n, k, h / pool, w / pool};
  return {n * pool * pool, k, pooled_extent(h, pool), pooled_extent(w, pool)};
}

inline std::vector<int64_t> check_conv3x3_pool_args(const at::Tensor& input,
                                                    const at::Tensor& weight, int64_t padding,
                                                    int64_t pool, bool offsets) {
  constexpr const char* op = "conv3x3";
  const int64_t n = input.size(0), k = weight.size(0);
  const int64_t h = input.size(2) + 2 * padding - 2, w = input.size(3) + 2 * padding - 2;
  TORCH_CHECK_VALUE(pool == 0 || pool >= 2, op,
                    ": pool must be 0 (no pooling) or a window size >= 2, got ", pool);
  TORCH_CHECK_VALUE(!offsets || pool >= 2, op,
                    ": pool_offsets=True needs a pool window size >= 2, got pool=", pool);
  if (pool == 0) return conv3x3_pooled_size(n, k, h, w, pool, offsets);
  if (!offsets) {
    TORCH_CHECK_VALUE(h >= pool && w >= pool, op, ": output of spatial size ", h, "x", w,
                      " is too small for max pooling with pool=", pool);
    return conv3x3_pooled_size(n, k, h, w, pool, offsets);
  }
  const int64_t ho = pooled_extent(h, pool), wo = pooled_extent(w, pool);
  TORCH_CHECK_VALUE(ho >= 1 && wo >= 1, op, ": output of spatial size ", h, "x", w,
                    " is too small for offset pooling with pool=", pool,
                    " (needs 2*pool - 1 = ", 2 * pool - 1, ")");
  int64_t kk = 0, batch = 0;
  TORCH_CHECK_VALUE(!c10::mul_overflows(pool, pool, &kk) && !c10::mul_overflows(n, kk, &batch),
                    op, ": pool=", pool, " is too large: the pooled batch (", n, " * ", pool,
                    "**2) does not fit in 64 bits");
  return conv3x3_pooled_size(n, k, h, w, pool, offsets);
}

inline void check_conv_algos(at::IntArrayRef algos, bool backward) {
  const char* op = backward ? "conv3x3_backward" : "conv3x3";
  TORCH_CHECK_VALUE(algos.size() == (backward ? 2u : 3u), op, ": algos must have ",
                    backward ? 2 : 3, " entries, got ", algos.size());
  if (backward) {
    check_conv_algo(algos[0], op, algo_argument(ConvDirection::kGradInput, true), ConvDirection::kGradInput);
    check_conv_algo(algos[1], op, algo_argument(ConvDirection::kGradWeight, true), ConvDirection::kGradWeight);
  } else {
    check_conv_algo(algos[0], op, algo_argument(ConvDirection::kForward, false), ConvDirection::kForward);
    check_conv_algo(algos[1], op, algo_argument(ConvDirection::kGradInput, false), ConvDirection::kGradInput);
    check_conv_algo(algos[2], op, algo_argument(ConvDirection::kGradWeight, false), ConvDirection::kGradWeight);
  }
}

// grad_output (and relu_output) of conv3x3_backward must have the forward's output shape.
inline void check_conv3x3_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& weight,
                                        const std::optional<at::Tensor>& relu_output,
                                        int64_t padding) {
  check_conv3x3_args(input, weight, std::nullopt, padding);
  const std::vector<int64_t> expected{input.size(0), weight.size(0), input.size(2) + 2 * padding - 2,
                                      input.size(3) + 2 * padding - 2};
  check_4d(grad_output, "conv3x3_backward", "grad_output");
  check_same(grad_output, input, "conv3x3_backward", "grad_output", "input");
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(expected),
                    "conv3x3_backward: grad_output must have shape ", py_shape(expected),
                    ", got ", py_shape(grad_output.sizes()));
  if (relu_output.has_value()) {
    check_same(*relu_output, input, "conv3x3_backward", "relu_output", "input");
    TORCH_CHECK_VALUE(relu_output->sizes() == at::IntArrayRef(expected),
                      "conv3x3_backward: relu_output must have shape ", py_shape(expected),
                      ", got ", py_shape(relu_output->sizes()));
  }
}

inline PoolGeometry check_offset_pool_args(const at::Tensor& input, int64_t k,
                                           const char* op) {
  check_4d(input, op, "input");
  check_floating(input, op, "input");
  check_kernel_size(k, op);
  const Shape4 in = shape4(input);
  const int64_t ho = pooled_extent(in.h, k), wo = pooled_extent(in.w, k);
  TORCH_CHECK_VALUE(ho >= 1 && wo >= 1, op, ": input of spatial size ", in.h, "x", in.w,
                    " is too small for offset pooling with kernel_size ", k,
                    " (needs H, W >= 2*kernel_size - 1 = ", 2 * k - 1, ")");
  const int64_t kk = kernel_size_product(k, k, k, op);
  return {in, {kernel_size_product(in.n, kk, k, op), in.c, ho, wo}, k};
}

inline PoolGeometry check_offset_pool_backward_args(const at::Tensor& grad_output,
                                                    const at::Tensor& input, int64_t k) {
  constexpr const char* op = "offset_max_pool2d_backward";
  const PoolGeometry g = check_offset_pool_args(input, k, op);
  check_4d(grad_output, op, "grad_output");
  check_same(grad_output, input, op, "grad_output", "input");
  const std::vector<int64_t> expected{g.out.n, g.out.c, g.out.h, g.out.w};
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(expected), op,
                    ": grad_output must have shape ", py_shape(expected), ", got ",
                    py_shape(grad_output.sizes()));
  return g;
}

// Returns the shape of deinterleave's output.
inline Shape4 check_deinterleave_args(const at::Tensor& input, int64_t k) {
  check_4d(input, "deinterleave", "input");
  check_movable(input, "deinterleave");
  check_kernel_size(k, "deinterleave");
  TORCH_CHECK_VALUE(input.size(2) % k == 0 && input.size(3) % k == 0,
                    "deinterleave: input height and width must be multiples of kernel_size ",
                    k, ", got shape ", py_shape(input.sizes()));
  const Shape4 s = shape4(input);
  const int64_t kk = kernel_size_product(k, k, k, "deinterleave");
  return {kernel_size_product(s.n, kk, k, "deinterleave"), s.c, s.h / k, s.w / k};
}

// Returns the shape of interleave's output.
inline Shape4 check_interleave_args(const at::Tensor& input, int64_t k) {
  check_4d(input, "interleave", "input");
  check_movable(input, "interleave");
  check_kernel_size(k, "interleave");
  const Shape4 s = shape4(input);
  const int64_t kk = kernel_size_product(k, k, k, "interleave");
  const int64_t h = kernel_size_product(s.h, k, k, "interleave");
  const int64_t w = kernel_size_product(s.w, k, k, "interleave");
  TORCH_CHECK_VALUE(input.size(0) % kk == 0,
                    "interleave: input batch must be a multiple of kernel_size**2 = ", kk,
                    " (one map per offset), got shape ", py_shape(input.sizes()));
  return {s.n / kk, s.c, h, w};
}

}  // namespace overfeat_kernels
