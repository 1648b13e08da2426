// conv3x3's pooling (pool = k >= 2), shared by the CPU, CUDA and simulated kernels.
//
// The op is defined as the composition: the conv (+ bias, ReLU), then F.max_pool2d(out, k)
// (stride k, no padding, floor), or offset_max_pool2d(out, k) with pool_offsets. The
// tensor-core forward kernels pool 2 x 2 and 3 x 3 windows, plain or offset, in their
// epilogue and never write the unpooled map (conv3x3_igemm.cuh, "pooling"); every other
// path (CPU, float64, exact float32, the direct kernel, PyTorch's convolution, larger
// windows) runs the composition below. Max commutes with the rounding to the output
// dtype, so both give the same bits.
#pragma once

#include <ATen/ATen.h>

#include "op_handles.h"

namespace overfeat_kernels {

// Whether the tensor-core forwards pool in their epilogue: windows of 2 x 2 and 3 x 3,
// plain or offset (whose windows overlap: the kernels compute overlapping pixel blocks,
// conv_tiles.cuh, make_offset_pixel_blocks).
inline bool pool_in_epilogue(int64_t pool) { return pool == 2 || pool == 3; }

// The pool that a call's "auto" key carries (conv_choice.h): the window where our
// tensor-core kernels would pool in their epilogue (bfloat16, float16, float32 with TF32
// allowed), so that the timing compares the pooled calls (with pool_offsets, the key's
// too); else 0 (the conv alone is timed).
inline int64_t pool_of_key(const at::Tensor& input, int64_t pool) {
  const auto t = input.scalar_type();
  const bool tensor_cores = t == at::kBFloat16 || t == at::kHalf ||
                            (t == at::kFloat && at::globalContext().allowTF32CuDNN());
  return tensor_cores && pool_in_epilogue(pool) ? pool : 0;
}

// `out` (the conv's output) pooled as the op's definition says, in its memory format.
inline at::Tensor pool_conv_output(const at::Tensor& out, int64_t pool, bool offsets) {
  if (pool == 0) return out;
  if (offsets) return op::offset_max_pool2d().call(out, pool);
  return at::max_pool2d(out, {pool, pool}, {pool, pool}).contiguous(out.suggest_memory_format());
}

}  // namespace overfeat_kernels
