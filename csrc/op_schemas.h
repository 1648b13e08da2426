// Every op schema of the library, in one place. csrc/ops.cpp defines them in the
// overfeat_kernels library; the CUDA simulator (csrc/sim/module.cpp) defines the same
// schemas in overfeat_kernels_sim, where the CUDA sources register when compiled for it.
#pragma once

#include <torch/library.h>

#include <vector>

namespace overfeat_kernels {

// Op names, shared by the CPU kernels' forwarding to the simulator (cpu/simulator_switch.h).
inline constexpr char kConv3x3[] = "conv3x3";
inline constexpr char kConv3x3Backward[] = "conv3x3_backward";
inline constexpr char kOffsetMaxPool2d[] = "offset_max_pool2d";
inline constexpr char kOffsetMaxPool2dBackward[] = "offset_max_pool2d_backward";
inline constexpr char kInterleave[] = "interleave";
inline constexpr char kDeinterleave[] = "deinterleave";

inline void define_ops(torch::Library& m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  // 3x3 convolution, stride 1, padding 0 or 1, optional fused bias and ReLU.
  // algos: the implementation of [forward, grad-input, grad-weight] (ConvAlgo, conv_plan.h);
  // None lets the conv backend's mode choose (conv_choice.h). The forward uses algos[0],
  // the autograd formula passes the other two to conv3x3_backward.
  // pool = k >= 2: the result max-pooled k x k with stride k (pool_offsets: at every pixel
  // offset, as offset_max_pool2d), in the tensor-core kernels' epilogue (conv_pool.h).
  m.def(
      "conv3x3(Tensor input, Tensor weight, Tensor? bias, int padding, bool relu, "
      "int[3]? algos=None, int pool=0, bool pool_offsets=False) -> Tensor",
      tags);
  // Gradients of conv3x3. relu_output is the forward's output when it applied ReLU (the
  // gradient is then masked by relu_output > 0), else None. Outputs not asked for in
  // output_mask (grad_input, grad_weight, grad_bias) come back as empty tensors. algos: the
  // implementation of [grad-input, grad-weight] (ConvAlgo), None: the mode chooses.
  m.def(
      "conv3x3_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor? relu_output, "
      "int padding, bool[3] output_mask, int[2]? algos=None) -> (Tensor, Tensor, Tensor)",
      tags);
  // k x k max pooling with stride k at each of the k*k pixel offsets.
  m.def("offset_max_pool2d(Tensor input, int kernel_size) -> Tensor", tags);
  m.def(
      "offset_max_pool2d_backward(Tensor grad_output, Tensor input, int kernel_size) -> Tensor",
      tags);
  // [N*k*k, C, h, w] <-> [N, C, h*k, w*k]; each is the other's inverse and backward.
  m.def("interleave(Tensor input, int kernel_size) -> Tensor", tags);
  m.def("deinterleave(Tensor input, int kernel_size) -> Tensor", tags);
}

}  // namespace overfeat_kernels
