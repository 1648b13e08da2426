// Every op schema of the library lives here. The backends only add implementations
// (TORCH_LIBRARY_IMPL in csrc/cpu and csrc/cuda); fake kernels and autograd are
// registered from Python (overfeat_kernels/ops.py).
#include <Python.h>
#include <torch/library.h>

#ifndef OVERFEAT_WITH_CUDA
#define OVERFEAT_WITH_CUDA 0
#endif

TORCH_LIBRARY(overfeat_kernels, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  // 3x3 convolution, stride 1, padding 0 or 1, optional fused bias and ReLU.
  m.def("conv3x3(Tensor input, Tensor weight, Tensor? bias, int padding, bool relu) -> Tensor",
        tags);
  // Gradients of conv3x3. relu_output is the forward's output when it applied ReLU (the
  // gradient is then masked by relu_output > 0), else None. Outputs not asked for in
  // output_mask (grad_input, grad_weight, grad_bias) come back as empty tensors.
  m.def(
      "conv3x3_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor? relu_output, "
      "int padding, bool[3] output_mask) -> (Tensor, Tensor, Tensor)",
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

// Importing overfeat_kernels._C registers the ops above. The module itself only tells
// whether the CUDA kernels were compiled in.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                   "overfeat_kernels compiled ops (see torch.ops.overfeat_kernels)",
                                   -1, nullptr};
  PyObject* m = PyModule_Create(&module_def);
  if (m != nullptr && PyModule_AddIntConstant(m, "with_cuda", OVERFEAT_WITH_CUDA) != 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
