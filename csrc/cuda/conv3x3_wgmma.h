// The Hopper conv3x3 forward (conv3x3_wgmma.cuh), as conv3x3_kernel.cu calls it. Its own
// translation unit (conv3x3_wgmma.cu): the only one with sm_90a-specific code.
#pragma once

#include <ATen/ATen.h>

#include "../conv_plan.h"
#include "cuda_headers.cuh"

namespace overfeat_kernels {

// out = conv3x3(in, filt) (+ bias, ReLU) where `in_nhwc` is the input as [n][h][w][cp]
// (cp·element size a multiple of 16, 16-byte aligned) and `filt` the filters as
// [K][3][3][cpf]; or, with `tap_chunks` (cp·element size = 16: few channels), as [9][K][cp]. `out` [n][K][h'][w'] in any strides; `out_channels_last`: it is dense
// channels_last. `cfg`: the plan's pixel block and split-K. `mask` (grad-input through a
// ReLU: the forward's output laid out as `in_nhwc`), when defined: an element of `in_nhwc`
// counts only where it is > 0. `cfg.pool` (2, 3): `out` is the conv's output max-pooled
// pool x pool, stride pool (F.max_pool2d), pooled in the epilogue.
template <typename T>
void wgmma_conv(const at::Tensor& in_nhwc, const at::Tensor& filt, const at::Tensor& bias,
                int64_t pad, bool relu, at::Tensor& out, bool out_channels_last,
                const WgmmaConfig& cfg, cudaStream_t stream, const at::Tensor& mask = at::Tensor(),
                bool tap_chunks = false);

}  // namespace overfeat_kernels
