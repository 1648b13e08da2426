// The conv backend's choice, inside the op: which `algos` a conv3x3 call runs when it is
// called without them (the public functions, torch.ops and torch.export callers, compiled
// graphs, CUDA graphs all call so).
//
// The mode ("auto", "ours", "cudnn") is a `conv_backend` scope of this thread, else the
// process-wide setting, else $OVERFEAT_KERNELS_CONV_BACKEND, else "auto". "ours" runs our
// kernels with their heuristic, "cudnn" PyTorch's convolution. "auto" looks the call's Key
// up in a process-wide table; on a key it has not seen it asks the tuner (the Python side,
// overfeat_kernels.backend: the disk cache, else CUDA-event timing of the candidates on the
// current stream), remembers the answer and runs it. It never times while a CUDA graph is
// being captured, inside the tuner, or without a tuner: then our heuristic runs and the key
// is timed at its next eager call. Tracing (torch.compile, torch.export) never reaches
// here: fake tensors run the Python fake kernels.
//
// Compiled into overfeat_kernels._C (conv_choice.cpp). The simulator's copies of the CUDA
// kernels are reached through the CPU kernels, which resolve the choice before forwarding;
// their own definitions of forward_algos / backward_algos (sim/conv_choice.cpp) only check
// explicit algos and otherwise run our heuristic.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <array>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

namespace overfeat_kernels::choice {

enum Mode : int8_t { kAuto = 0, kOurs = 1, kCudnn = 2 };
inline constexpr int8_t kUnset = -1;
inline constexpr const char* kModeNames[] = {"auto", "ours", "cudnn"};
inline constexpr const char* kModeEnv = "OVERFEAT_KERNELS_CONV_BACKEND";

// The process-wide mode (kUnset: none set) and this thread's scoped one; the setter of the
// scope returns the previous value, to be restored when the scope ends.
void set_global_mode(int8_t mode);
int8_t global_mode();
int8_t set_scoped_mode(int8_t mode);
// The mode in force here; a bad $OVERFEAT_KERNELS_CONV_BACKEND is a ValueError naming it.
Mode current_mode();
// Parses a mode name (-1 for an unknown one).
int8_t parse_mode(const char* name);

// Everything about a call that can change which candidate is fastest. Plain bytes: zeroed,
// compared and hashed as such (ATen's cuDNN cache keys its algorithms the same way).
struct Key {
  int8_t device_type = 0, device_index = 0, dtype = 0, padding = 0;
  uint8_t channels_last = 0, bias = 0, relu = 0, tf32 = 0, deterministic = 0, train = 0;
  // The pool window that our tensor-core forward would take into its epilogue (2 or 3; 0
  // for none, and for training keys): then "auto" times the pooled call against cuDNN's
  // conv + pool (conv_pool.h, pool_of_key).
  uint8_t pool = 0;
  uint8_t pool_offsets = 0;  // with `pool`: offset_max_pool2d's windows
  uint8_t reserved[4] = {};
  int64_t n = 0, c = 0, h = 0, w = 0, k = 0;
};
static_assert(std::has_unique_object_representations_v<Key>, "Key must have no padding bytes");

using Codes = std::array<int64_t, 3>;  // [forward, grad-input, grad-weight]

// Times (or looks up on disk) the candidates of a key and returns the winners' codes, or
// nothing when it cannot (then our heuristic runs and nothing is remembered). Set by the
// Python module (overfeat_kernels.backend registers the Python side); may throw.
using Tuner = std::optional<Codes> (*)(const Key&);
void set_tuner(Tuner tuner);

// Whether a conv3x3 call records a graph for the backward: grad mode and an input that
// requires grad. Its choice then covers all three directions.
inline bool records_grad(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias) {
  return at::GradMode::is_enabled() &&
         (input.requires_grad() || weight.requires_grad() ||
          (bias.has_value() && bias->requires_grad()));
}

// The algos a conv3x3 call runs: `requested` checked and returned when given, else the
// mode's choice under the training key when `train` (records_grad). `pool`: the call's
// pool window where pool_in_epilogue (conv_pool.h) holds, else 0, and whether its windows
// are offset_max_pool2d's; part of inference keys only (training pools after the conv).
Codes forward_algos(const at::Tensor& input, const at::Tensor& weight, bool bias,
                    int64_t padding, bool relu, bool train, at::OptionalIntArrayRef requested,
                    int64_t pool = 0, bool pool_offsets = false);
// The same for conv3x3_backward: [grad-input, grad-weight], under the training key (`bias`:
// whether grad_bias is asked for; a key known with the other bias flag is taken first).
std::array<int64_t, 2> backward_algos(const at::Tensor& input, const at::Tensor& weight,
                                      bool bias, int64_t padding, bool relu,
                                      at::OptionalIntArrayRef requested);

// Whether a tensor is an ordinary CPU / CUDA tensor with data, as the kernels see them (not
// a fake, functional or batched wrapper met while tracing).
bool is_plain(const at::Tensor& t);

// What "auto" remembers: forget (the Python side forgets its record too), count, read.
void clear();
size_t size();
std::optional<Codes> lookup(const Key& key);
std::vector<std::pair<Key, Codes>> entries();

// How many keys the tuner was asked about since the last clear(): tests see that capture
// never times.
int64_t tuner_calls();

// Test seams. time_on_cpu: "auto" times CPU tensors too (on CUDA only by default), so that
// the path runs without a GPU. pretend_capture: CPU calls behave as if a CUDA graph were
// being captured (CUDA tensors ask the real stream).
void set_time_on_cpu(bool on);
bool time_on_cpu();
void set_pretend_capture(bool on);

}  // namespace overfeat_kernels::choice
