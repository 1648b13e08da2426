// overfeat_kernels._C, the Python module. Importing it registers the ops (ops.cpp and the
// backend folders). It holds:
//
// - the public ops' one step into C++: conv3x3(input, weight, bias, padding, relu, pool,
//   pool_offsets),
//   offset_max_pool2d / interleave / deinterleave(input, kernel_size). Each converts its
//   arguments (a TypeError naming a wrong one), releases the GIL and calls the op through
//   the dispatcher: checks, autograd, the backend's choice and the kernel all happen in
//   C++. Arguments it cannot take as they are (arrays of other libraries, Tensor
//   subclasses, an active torch-function mode, non-strided layouts) make it return
//   NotImplemented: the Python wrapper then takes its general path through torch.ops.
// - the conv backend's controls (the mode, the tuner, the remembered choices; the Python
//   side is overfeat_kernels.backend) and the plan's table and planner for Python;
// - the simulator switch, and whether the CUDA kernels were compiled in.
#include <Python.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <string>

#include "checks.h"
#include "conv_choice.h"
#include "conv_plan.h"
#include "op_handles.h"

#ifndef OVERFEAT_WITH_CUDA
#define OVERFEAT_WITH_CUDA 0
#endif

namespace overfeat_kernels {
void set_simulate_cuda(bool on);  // ops.cpp
bool simulate_cuda_enabled();
}  // namespace overfeat_kernels

namespace {

namespace ok = overfeat_kernels;
namespace py = pybind11;

// ---- the ops' entry points -------------------------------------------------------------

enum class Arg { kOk, kSlowPath, kError };

// str(s) for a Python str (null, or not encodable as UTF-8: `fallback`); clears errors.
std::string utf8_or(PyObject* s, const char* fallback) {
  const char* text = s != nullptr && PyUnicode_Check(s) ? PyUnicode_AsUTF8(s) : nullptr;
  std::string out = text != nullptr ? text : fallback;
  Py_XDECREF(s);
  PyErr_Clear();
  return out;
}

std::string type_name(PyObject* obj) {
  return utf8_or(PyObject_GetAttrString(reinterpret_cast<PyObject*>(Py_TYPE(obj)), "__name__"),
                 "object");
}

std::string repr(PyObject* obj) { return utf8_or(PyObject_Repr(obj), "?"); }

// A tensor argument: a plain torch.Tensor / nn.Parameter of strided layout is taken as is.
Arg tensor_arg(PyObject* obj, const char* op, const char* name, const at::Tensor** out) {
  if (THPVariable_CheckExact(obj)) {
    const at::Tensor& t = THPVariable_Unpack(obj);
    if (t.layout() != at::kStrided) return Arg::kSlowPath;  // the wrapper's checks name it
    *out = &t;
    return Arg::kOk;
  }
  if (THPVariable_Check(obj) || PyObject_HasAttrString(obj, "__dlpack__")) return Arg::kSlowPath;
  PyErr_Format(PyExc_TypeError,
               "%s: %s must be a torch.Tensor (or an array supporting DLPack), got %s", op, name,
               type_name(obj).c_str());
  return Arg::kError;
}

// An int argument (not a bool). `*overflow` is -1 / +1 for an int beyond int64.
bool int_arg(PyObject* obj, const char* op, const char* name, int64_t* out, int* overflow) {
  if (!PyLong_Check(obj) || PyBool_Check(obj)) {
    PyErr_Format(PyExc_TypeError, "%s: %s must be an int, got %s %s", op, name,
                 type_name(obj).c_str(), repr(obj).c_str());
    return false;
  }
  int of = 0;
  const long long v = PyLong_AsLongLongAndOverflow(obj, &of);
  if (v == -1 && PyErr_Occurred()) return false;
  *out = v;
  *overflow = of;
  return true;
}

bool kernel_size_arg(PyObject* obj, const char* op, int64_t* k) {
  int overflow = 0;
  if (!int_arg(obj, op, "kernel_size", k, &overflow)) return false;
  if (overflow > 0) {
    PyErr_Format(PyExc_ValueError, "%s: kernel_size must be < 2**63, got %s", op, repr(obj).c_str());
    return false;
  }
  if (overflow < 0) {
    PyErr_Format(PyExc_ValueError, "%s: kernel_size must be >= 1, got %s", op, repr(obj).c_str());
    return false;
  }
  return true;
}

bool slow_path_needed() { return at::impl::torch_function_mode_enabled(); }

PyObject* not_implemented() { Py_RETURN_NOTIMPLEMENTED; }

// conv3x3(input, weight, bias, padding, relu, pool, pool_offsets)
PyObject* conv3x3_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  constexpr const char* op = "conv3x3";
  if (nargs != 7) {
    PyErr_SetString(PyExc_TypeError,
                    "_C.conv3x3 takes (input, weight, bias, padding, relu, pool, pool_offsets)");
    return nullptr;
  }
  if (slow_path_needed()) return not_implemented();
  const at::Tensor* input = nullptr;
  const at::Tensor* weight = nullptr;
  const at::Tensor* bias = nullptr;
  for (auto [obj, name, out] : {std::tuple{args[0], "input", &input},
                                std::tuple{args[1], "weight", &weight}}) {
    switch (tensor_arg(obj, op, name, out)) {
      case Arg::kOk: break;
      case Arg::kSlowPath: return not_implemented();
      case Arg::kError: return nullptr;
    }
  }
  if (args[2] != Py_None) {
    switch (tensor_arg(args[2], op, "bias", &bias)) {
      case Arg::kOk: break;
      case Arg::kSlowPath: return not_implemented();
      case Arg::kError: return nullptr;
    }
  }
  int64_t padding = 0;
  int overflow = 0;
  if (!int_arg(args[3], op, "padding", &padding, &overflow)) return nullptr;
  if (overflow != 0) {
    PyErr_Format(PyExc_ValueError, "%s: padding must be 0 or 1, got %s", op, repr(args[3]).c_str());
    return nullptr;
  }
  if (!PyBool_Check(args[4])) {
    PyErr_Format(PyExc_TypeError, "%s: relu must be a bool, got %s", op, type_name(args[4]).c_str());
    return nullptr;
  }
  const bool relu = args[4] == Py_True;
  int64_t pool = 0;
  if (!int_arg(args[5], op, "pool", &pool, &overflow)) return nullptr;
  if (overflow != 0) {
    PyErr_Format(PyExc_ValueError,
                 overflow > 0 ? "%s: pool must be < 2**63, got %s"
                              : "%s: pool must be 0 (no pooling) or a window size >= 2, got %s",
                 op, repr(args[5]).c_str());
    return nullptr;
  }
  if (!PyBool_Check(args[6])) {
    PyErr_Format(PyExc_TypeError, "%s: pool_offsets must be a bool, got %s", op,
                 type_name(args[6]).c_str());
    return nullptr;
  }
  const bool pool_offsets = args[6] == Py_True;
  at::Tensor out;
  {
    py::gil_scoped_release no_gil;
    out = ok::op::conv3x3().call(*input, *weight,
                                 bias ? std::optional<at::Tensor>(*bias) : std::nullopt, padding,
                                 relu, std::nullopt, pool, pool_offsets);
  }
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

// offset_max_pool2d / interleave / deinterleave(input, kernel_size)
template <const c10::TypedOperatorHandle<ok::op::WithKernelSize>& (*kOp)(), const char* kName>
PyObject* kernel_size_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 2) {
    PyErr_Format(PyExc_TypeError, "_C.%s takes (input, kernel_size)", kName);
    return nullptr;
  }
  if (slow_path_needed()) return not_implemented();
  const at::Tensor* input = nullptr;
  switch (tensor_arg(args[0], kName, "input", &input)) {
    case Arg::kOk: break;
    case Arg::kSlowPath: return not_implemented();
    case Arg::kError: return nullptr;
  }
  int64_t k = 0;
  if (!kernel_size_arg(args[1], kName, &k)) return nullptr;
  at::Tensor out;
  {
    py::gil_scoped_release no_gil;
    out = kOp().call(*input, k);
  }
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

// ---- the conv backend's tuner: Python, called from inside the op on a new key ------------

PyObject* g_tuner = nullptr;  // a callable; owned (never released: it lives as the module)

// A key as the tuple overfeat_kernels.backend.Call reads (new reference, or null with a
// Python error set).
PyObject* key_fields(const ok::choice::Key& key) {
  const auto device = static_cast<c10::DeviceType>(key.device_type);
  return Py_BuildValue(
      "(sisLLLLLiiiiiiiii)", c10::DeviceTypeName(device, /*lower_case=*/true).c_str(),
      static_cast<int>(key.device_index),
      std::string(c10::getDtypeNames(static_cast<at::ScalarType>(key.dtype)).first).c_str(),
      static_cast<long long>(key.n), static_cast<long long>(key.c),
      static_cast<long long>(key.h), static_cast<long long>(key.w),
      static_cast<long long>(key.k), static_cast<int>(key.channels_last),
      static_cast<int>(key.padding), static_cast<int>(key.relu), static_cast<int>(key.bias),
      static_cast<int>(key.tf32), static_cast<int>(key.deterministic),
      static_cast<int>(key.train), static_cast<int>(key.pool),
      static_cast<int>(key.pool_offsets));
}

// The Python error now set, as a C++ exception that keeps it whatever thread catches it.
[[noreturn]] void throw_python_error() {
  python_error e;
  e.persist();
  throw std::move(e);
}

std::optional<ok::choice::Codes> call_python_tuner(const ok::choice::Key& key) {
  py::gil_scoped_acquire gil;
  // The tuner may have been replaced or removed since the op read it: take it under the GIL
  // and hold a reference for the call.
  PyObject* tuner = g_tuner;
  if (tuner == nullptr) return std::nullopt;
  Py_INCREF(tuner);
  PyObject* fields = key_fields(key);
  PyObject* result = fields != nullptr ? PyObject_CallOneArg(tuner, fields) : nullptr;
  Py_XDECREF(fields);
  Py_DECREF(tuner);
  if (result == nullptr) throw_python_error();
  ok::choice::Codes codes{};
  const bool ok_shape = PyTuple_Check(result) && PyTuple_GET_SIZE(result) == 3;
  for (int i = 0; ok_shape && i < 3 && !PyErr_Occurred(); ++i) {
    codes[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(result, i));
  }
  Py_DECREF(result);
  if (PyErr_Occurred()) throw_python_error();
  TORCH_CHECK(ok_shape, "overfeat_kernels: the conv tuner must return a tuple of 3 algos");
  ok::check_conv_algos(codes, false);
  return codes;
}

PyObject* set_conv_tuner(PyObject*, PyObject* fn) {
  if (fn != Py_None && !PyCallable_Check(fn)) {
    PyErr_SetString(PyExc_TypeError, "set_conv_tuner: expected a callable or None");
    return nullptr;
  }
  Py_XINCREF(fn == Py_None ? nullptr : fn);
  PyObject* old = g_tuner;
  g_tuner = fn == Py_None ? nullptr : fn;
  ok::choice::set_tuner(g_tuner == nullptr ? nullptr : &call_python_tuner);
  Py_XDECREF(old);
  Py_RETURN_NONE;
}

PyObject* set_simulate_cuda(PyObject*, PyObject* arg) {
  const int flag = PyObject_IsTrue(arg);
  if (flag < 0) return nullptr;
  ok::set_simulate_cuda(flag != 0);
  Py_RETURN_NONE;
}

PyObject* simulate_cuda_enabled(PyObject*, PyObject*) {
  return PyBool_FromLong(ok::simulate_cuda_enabled());
}

constexpr char kOffsetPool[] = "offset_max_pool2d";
constexpr char kInterleave[] = "interleave";
constexpr char kDeinterleave[] = "deinterleave";

PyMethodDef methods[] = {
    {"conv3x3", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(conv3x3_entry)),
     METH_FASTCALL, "conv3x3(input, weight, bias, padding, relu, pool, pool_offsets): the op, or "
     "NotImplemented."},
    {"offset_max_pool2d",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
         kernel_size_entry<&ok::op::offset_max_pool2d, kOffsetPool>)),
     METH_FASTCALL, "offset_max_pool2d(input, kernel_size): the op, or NotImplemented."},
    {"interleave",
     reinterpret_cast<PyCFunction>(
         reinterpret_cast<void (*)()>(kernel_size_entry<&ok::op::interleave, kInterleave>)),
     METH_FASTCALL, "interleave(input, kernel_size): the op, or NotImplemented."},
    {"deinterleave",
     reinterpret_cast<PyCFunction>(
         reinterpret_cast<void (*)()>(kernel_size_entry<&ok::op::deinterleave, kDeinterleave>)),
     METH_FASTCALL, "deinterleave(input, kernel_size): the op, or NotImplemented."},
    {"set_conv_tuner", set_conv_tuner, METH_O,
     "The callable 'auto' asks about a new key (overfeat_kernels.backend's), or None."},
    {"set_simulate_cuda", set_simulate_cuda, METH_O,
     "Send the ops' CPU calls through the CUDA kernels in the simulator (True) or not."},
    {"simulate_cuda_enabled", simulate_cuda_enabled, METH_NOARGS,
     "Whether CPU calls go through the CUDA simulator."},
    {nullptr, nullptr, 0, nullptr}};

// ---- the rest, through pybind11 (none of it is on a call's path) ------------------------

ok::ConvDirection direction_of(const std::string& name) {
  for (int d = 0; d < ok::kNumDirections; ++d) {
    if (name == ok::kDirectionNames[d]) return static_cast<ok::ConvDirection>(d);
  }
  TORCH_CHECK_VALUE(false, "direction must be one of 'forward', 'grad_input', 'grad_weight', got '",
                    name, "'");
}

int8_t checked_mode(int mode) {
  TORCH_CHECK_VALUE(mode >= ok::choice::kUnset && mode <= ok::choice::kCudnn,
                    "conv mode code must be -1 (unset), 0 (auto), 1 (ours) or 2 (cudnn), got ",
                    mode);
  return static_cast<int8_t>(mode);
}

void add_conv_functions(py::module_ m) {
  m.def("set_conv_mode",
        [](int mode) { ok::choice::set_global_mode(checked_mode(mode)); },
        "The process-wide conv backend mode: 0 auto, 1 ours, 2 cudnn, -1 unset.");
  m.def("set_scoped_conv_mode",
        [](int mode) { return static_cast<int>(ok::choice::set_scoped_mode(checked_mode(mode))); },
        "This thread's scoped mode (-1: none); returns the previous one.");
  m.def("conv_mode", [] { return std::string(ok::choice::kModeNames[ok::choice::current_mode()]); },
        "The mode in force here: scope, process, environment, 'auto'.");
  m.def("clear_conv_choices", &ok::choice::clear, "Forget the remembered choices.");
  m.def("conv_choice_count", &ok::choice::size, "How many keys are remembered.");
  m.def("conv_choice_table", [] {
    py::list out;
    for (const auto& [key, codes] : ok::choice::entries()) {
      PyObject* fields = key_fields(key);
      if (fields == nullptr) throw py::error_already_set();
      out.append(py::make_tuple(py::reinterpret_steal<py::tuple>(fields),
                                py::make_tuple(codes[0], codes[1], codes[2])));
    }
    return out;
  }, "The remembered choices: (key fields, algos) pairs.");
  m.def("conv_tuner_calls", &ok::choice::tuner_calls,
        "Keys the tuner was asked about since the choices were last cleared.");
  m.def(
      "set_conv_choice_testing",
      [](bool time_on_cpu, bool pretend_capture) {
        ok::choice::set_time_on_cpu(time_on_cpu);
        ok::choice::set_pretend_capture(pretend_capture);
      },
      py::arg("time_on_cpu"), py::arg("pretend_capture"),
      "Test seams: 'auto' also times CPU tensors; CPU calls act as under CUDA-graph capture.");
  m.def("conv_candidates", [] {
    py::list out;
    for (const auto& c : ok::kConvCandidates) {
      py::list directions;
      for (int d = 0; d < ok::kNumDirections; ++d) {
        if (c.directions & (1u << d)) directions.append(ok::kDirectionNames[d]);
      }
      py::dict row;
      row["name"] = c.name;
      row["code"] = c.code;
      row["directions"] = py::tuple(directions);
      row["gpu_only"] = c.gpu_only;
      row["tensor_cores"] = c.tensor_cores;
      row["min_capability"] = c.min_capability;
      row["max_capability"] = c.max_capability;
      row["needs_sm90a"] = c.needs_sm90a;
      row["summary"] = c.summary;
      out.append(row);
    }
    return out;
  }, "The conv candidates' table (conv_plan.h).");
  m.def(
      "conv_candidates_for",
      [](const std::string& direction, bool gpu, bool tensor_core_dtype, int capability,
         bool sm90a) {
        const ok::ConvDirection d = direction_of(direction);
        py::list names;
        for (const auto& c : ok::kConvCandidates) {
          if (ok::candidate_applies(c, d, gpu, tensor_core_dtype, capability, sm90a)) {
            names.append(c.name);
          }
        }
        return py::tuple(names);
      },
      py::arg("direction"), py::arg("gpu"), py::arg("tensor_core_dtype"), py::arg("capability"),
      py::arg("sm90a") = ok::kBuildHasSm90a,
      "The candidates 'auto' times for one direction (sm90a: the build has the sm_90a "
      "kernels; default: this build's).");
  m.attr("build_has_sm90a") = ok::kBuildHasSm90a;
  m.def(
      "wgmma_config",
      [](int64_t n, int64_t out_h, int64_t out_w, int64_t k, int64_t slices, int64_t sms,
         int pool, bool offsets) {
        TORCH_CHECK_VALUE(pool == 0 || pool == 2 || pool == 3,
                          "wgmma_config: pool must be 0, 2 or 3, got ", pool);
        TORCH_CHECK_VALUE(!offsets || pool != 0, "wgmma_config: offsets needs a pool");
        const ok::WgmmaConfig c =
            ok::choose_wgmma_config(n, out_h, out_w, k, slices, sms, pool, offsets);
        return py::make_tuple(c.block_h, c.block_w, c.split);
      },
      py::arg("n"), py::arg("out_h"), py::arg("out_w"), py::arg("k"), py::arg("slices"),
      py::arg("sms"), py::arg("pool") = 0, py::arg("offsets") = false,
      "The Hopper kernel's (block_h, block_w, split) for a forward whose epilogue pools "
      "pool x pool windows (0: none; `offsets`: offset_max_pool2d's) (conv_plan.h, "
      "choose_wgmma_config).");
  m.def(
      "offset_pool_block",
      [](int rows, int pool, int64_t pooled_h, int64_t pooled_w) {
        TORCH_CHECK_VALUE(rows == ok::kLargeTileM || rows == ok::kSmallTileM,
                          "offset_pool_block: rows must be ", ok::kLargeTileM, " or ",
                          ok::kSmallTileM, ", got ", rows);
        TORCH_CHECK_VALUE(pool == 2 || pool == 3, "offset_pool_block: pool must be 2 or 3, got ", pool);
        TORCH_CHECK_VALUE(pooled_h >= 1 && pooled_w >= 1,
                          "offset_pool_block: the pooled map must have positions, got ", pooled_h,
                          " x ", pooled_w);
        const ok::OffsetPoolBlock b = ok::choose_offset_pool_block(rows, pool, pooled_h, pooled_w);
        return py::make_tuple(b.a, b.b);
      },
      py::arg("rows"), py::arg("pool"), py::arg("pooled_h"), py::arg("pooled_w"),
      "The implicit GEMM's offset-pooling block (positions a x b per tile of `rows` rows; "
      "conv_plan.h, choose_offset_pool_block).");
  m.def(
      "conv_plan",
      [](const py::dict& problem, const std::string& direction, int64_t algo, bool gpu,
         int capability, int64_t sms, bool sm90a) {
        ok::ConvProblem p;
        for (const auto& [key, value] : problem) {
          const auto k = key.cast<std::string>();
          if (k == "n") p.n = value.cast<int64_t>();
          else if (k == "c") p.c = value.cast<int64_t>();
          else if (k == "h") p.h = value.cast<int64_t>();
          else if (k == "w") p.w = value.cast<int64_t>();
          else if (k == "k") p.k = value.cast<int64_t>();
          else if (k == "padding") p.padding = value.cast<int64_t>();
          else if (k == "element_size") p.element_size = value.cast<int>();
          else if (k == "dtype") p.dtype = value.cast<std::string>();
          else if (k == "tensor_core_dtype") p.tensor_core_dtype = value.cast<bool>();
          else if (k == "input_nhwc") p.input_nhwc = value.cast<bool>();
          else if (k == "weight_nhwc") p.weight_nhwc = value.cast<bool>();
          else if (k == "grad_output_nhwc") p.grad_output_nhwc = value.cast<bool>();
          else if (k == "relu_output_nhwc") p.relu_output_nhwc = value.cast<bool>();
          else if (k == "masked") p.masked = value.cast<bool>();
          else if (k == "fused_pool") p.fused_pool = value.cast<int>();
          else if (k == "fused_offsets") p.fused_offsets = value.cast<bool>();
          else TORCH_CHECK_VALUE(false, "conv_plan: unknown problem field '", k, "'");
        }
        TORCH_CHECK_VALUE(p.fused_pool == 0 || p.fused_pool == 2 || p.fused_pool == 3,
                          "conv_plan: fused_pool must be 0, 2 or 3, got ", p.fused_pool);
        TORCH_CHECK_VALUE(!p.fused_offsets || p.fused_pool != 0,
                          "conv_plan: fused_offsets needs a fused_pool");
        const ok::ConvDirection d = direction_of(direction);
        ok::check_conv_algo(algo, "conv_plan", "algo", d);
        const ok::DirectionPlan plan =
            ok::plan_direction(p, d, algo, gpu, {capability, sms, sm90a}, "conv_plan", "algo");
        py::dict out;
        out["kernel"] = ok::kKernelNames[static_cast<int>(plan.kernel)];
        out["tiles"] = plan.tiles == ok::Tiles::kNone    ? "none"
                       : plan.tiles == ok::Tiles::kLarge ? "large"
                                                         : "small";
        out["channels"] = plan.channels;
        out["filter_channels"] = plan.filter_channels;
        out["copy_activations"] = plan.copy_activations;
        out["copy_mask"] = plan.copy_mask;
        out["copy_input"] = plan.copy_input;
        out["pack_filters"] = plan.pack_filters;
        out["wgmma_block"] = py::make_tuple(plan.wgmma.block_h, plan.wgmma.block_w);
        out["wgmma_split"] = plan.wgmma.split;
        out["wgmma_pool"] = plan.wgmma.pool;
        out["wgmma_offsets"] = plan.wgmma.pool_offsets;
        return out;
      },
      py::arg("problem"), py::arg("direction"), py::arg("algo"), py::arg("gpu"),
      py::arg("capability"), py::arg("sms"), py::arg("sm90a") = ok::kBuildHasSm90a,
      "The plan of one direction of a conv3x3 call (conv_plan.h's plan_direction).");
}

}  // namespace

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                   "overfeat_kernels compiled ops (see torch.ops.overfeat_kernels)",
                                   -1, methods};
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
  if (PyModule_AddIntConstant(m, "with_cuda", OVERFEAT_WITH_CUDA) != 0) {
    Py_DECREF(m);
    return nullptr;
  }
  try {
    add_conv_functions(py::reinterpret_borrow<py::module_>(m));
  } catch (py::error_already_set& e) {
    e.restore();
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
