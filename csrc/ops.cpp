// The overfeat_kernels op library: its schemas (op_schemas.h, the one place they are
// written) and the switch that sends CPU calls through the CUDA simulator. The backends
// only add implementations (TORCH_LIBRARY_IMPL in csrc/cpu and csrc/cuda); fake kernels
// and autograd are registered from Python (overfeat_kernels/ops.py).
#include <Python.h>
#include <torch/library.h>

#include <atomic>

#include "op_schemas.h"

#ifndef OVERFEAT_WITH_CUDA
#define OVERFEAT_WITH_CUDA 0
#endif

namespace overfeat_kernels {

namespace {
std::atomic<bool> g_simulate_cuda{false};
}

bool simulate_cuda_enabled() { return g_simulate_cuda.load(std::memory_order_relaxed); }

}  // namespace overfeat_kernels

TORCH_LIBRARY(overfeat_kernels, m) { overfeat_kernels::define_ops(m); }

namespace {

// _C.set_simulate_cuda(flag): process-wide; overfeat_kernels.simulate_cuda() loads the
// simulator module first, so that the forwarded ops exist.
PyObject* set_simulate_cuda(PyObject*, PyObject* arg) {
  const int flag = PyObject_IsTrue(arg);
  if (flag < 0) return nullptr;
  overfeat_kernels::g_simulate_cuda.store(flag != 0);
  Py_RETURN_NONE;
}

PyObject* simulate_cuda_enabled_py(PyObject*, PyObject*) {
  return PyBool_FromLong(overfeat_kernels::simulate_cuda_enabled());
}

PyMethodDef methods[] = {
    {"set_simulate_cuda", set_simulate_cuda, METH_O,
     "Send the ops' CPU calls through the CUDA kernels in the simulator (True) or not."},
    {"simulate_cuda_enabled", simulate_cuda_enabled_py, METH_NOARGS,
     "Whether CPU calls go through the CUDA simulator."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// Importing overfeat_kernels._C registers the ops above. The module itself tells whether
// the CUDA kernels were compiled in, and holds the simulator switch.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                   "overfeat_kernels compiled ops (see torch.ops.overfeat_kernels)",
                                   -1, methods};
  PyObject* m = PyModule_Create(&module_def);
  if (m != nullptr && PyModule_AddIntConstant(m, "with_cuda", OVERFEAT_WITH_CUDA) != 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
