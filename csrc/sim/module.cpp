// overfeat_kernels._sim: the CUDA sources of csrc/cuda compiled with the host compiler
// and run by the simulator on CPU tensors. Defines the overfeat_kernels_sim op library
// (the same schemas as overfeat_kernels), which the CUDA sources register into, and
// the module's controls: schedules, shared-memory poisoning, launch counters.
#include <Python.h>
#include <torch/library.h>

#include "../op_schemas.h"
#include "guarded_allocator.h"
#include "runtime.h"

TORCH_LIBRARY(overfeat_kernels_sim, m) { overfeat_kernels::define_ops(m); }

namespace {

// set_schedule(kind: int, seed: int): 0 in order, 1 reversed, 2 seeded shuffle.
PyObject* set_schedule(PyObject*, PyObject* args) {
  int kind = 0;
  unsigned long long seed = 0;
  if (!PyArg_ParseTuple(args, "iK", &kind, &seed)) return nullptr;
  if (kind < 0 || kind > 2) {
    PyErr_Format(PyExc_ValueError, "schedule kind must be 0, 1 or 2, got %d", kind);
    return nullptr;
  }
  ovk_sim::options().schedule = static_cast<ovk_sim::Schedule>(kind);
  ovk_sim::options().seed = seed;
  Py_RETURN_NONE;
}

PyObject* get_schedule(PyObject*, PyObject*) {
  return Py_BuildValue("(iK)", static_cast<int>(ovk_sim::options().schedule),
                       static_cast<unsigned long long>(ovk_sim::options().seed));
}

PyObject* set_poison_shared(PyObject*, PyObject* arg) {
  const int flag = PyObject_IsTrue(arg);
  if (flag < 0) return nullptr;
  ovk_sim::options().poison_shared = flag != 0;
  Py_RETURN_NONE;
}

PyObject* set_race_check(PyObject*, PyObject* arg) {
  const int flag = PyObject_IsTrue(arg);
  if (flag < 0) return nullptr;
  ovk_sim::options().race_check = flag != 0;
  Py_RETURN_NONE;
}

PyObject* get_race_check(PyObject*, PyObject*) { return PyBool_FromLong(ovk_sim::options().race_check); }

PyObject* set_guarded_allocator(PyObject*, PyObject* arg) {
  const int flag = PyObject_IsTrue(arg);
  if (flag < 0) return nullptr;
  ovk_sim::set_guarded_allocator(flag != 0);
  Py_RETURN_NONE;
}

PyObject* counts_dict(const std::vector<std::pair<std::string, int64_t>>& counts) {
  PyObject* d = PyDict_New();
  if (d == nullptr) return nullptr;
  for (const auto& [name, count] : counts) {
    PyObject* v = PyLong_FromLongLong(count);
    if (v == nullptr || PyDict_SetItemString(d, name.c_str(), v) != 0) {
      Py_XDECREF(v);
      Py_DECREF(d);
      return nullptr;
    }
    Py_DECREF(v);
  }
  return d;
}

PyObject* launch_counts(PyObject*, PyObject*) { return counts_dict(ovk_sim::launch_counts()); }
PyObject* host_steps(PyObject*, PyObject*) { return counts_dict(ovk_sim::host_steps()); }

PyObject* reset_launch_counts(PyObject*, PyObject*) {
  ovk_sim::reset_launch_counts();
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"set_schedule", set_schedule, METH_VARARGS,
     "set_schedule(kind, seed): order of a block's threads between barriers "
     "(0 in order, 1 reversed, 2 seeded shuffle)."},
    {"get_schedule", get_schedule, METH_NOARGS, "(kind, seed) of the current schedule."},
    {"set_race_check", set_race_check, METH_O,
     "set_race_check(on): the shared-memory race detector and async-proxy checks."},
    {"get_race_check", get_race_check, METH_NOARGS, "Whether the race detector is on."},
    {"set_poison_shared", set_poison_shared, METH_O,
     "Fill shared memory with 0xFF bytes (NaN) when each block starts (default True)."},
    {"set_guarded_allocator", set_guarded_allocator, METH_O,
     "Install (True) or remove (False) the CPU allocator that fills new buffers with 0xFF "
     "(NaN) and checks guard bands around them after every simulated launch."},
    {"launch_counts", launch_counts, METH_NOARGS, "{kernel name: launches} since the last reset."},
    {"host_steps", host_steps, METH_NOARGS,
     "{host-side step of a launcher (an operand copy): count} since the last reset."},
    {"reset_launch_counts", reset_launch_counts, METH_NOARGS,
     "Zero the launch and host-step counters."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" PyObject* PyInit__sim(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_sim",
                                   "overfeat_kernels' CUDA kernels in the CPU simulator", -1,
                                   methods};
  return PyModule_Create(&module_def);
}
