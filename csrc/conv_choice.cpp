// The conv backend's choice (see conv_choice.h): the mode, the remembered choices, and the
// resolution of a call's algos.
#include "conv_choice.h"

#include <c10/core/DispatchKeySet.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "checks.h"
#include "conv_plan.h"

#ifndef OVERFEAT_WITH_CUDA
#define OVERFEAT_WITH_CUDA 0
#endif
#if OVERFEAT_WITH_CUDA
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace overfeat_kernels::choice {
namespace {

std::atomic<int8_t> g_global{kUnset};
thread_local int8_t t_scoped = kUnset;
thread_local bool t_tuning = false;  // inside the tuner: every call runs our heuristic
std::atomic<Tuner> g_tuner{nullptr};
std::atomic<bool> g_time_on_cpu{false};
std::atomic<bool> g_pretend_capture{false};
std::atomic<int64_t> g_tuner_calls{0};

struct KeyHash {
  size_t operator()(const Key& k) const noexcept {
    // FNV-1a over the key's bytes.
    const auto* p = reinterpret_cast<const unsigned char*>(&k);
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof(Key); ++i) h = (h ^ p[i]) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};
struct KeyEq {
  bool operator()(const Key& a, const Key& b) const noexcept {
    return std::memcmp(&a, &b, sizeof(Key)) == 0;
  }
};

std::shared_mutex g_mutex;
std::unordered_map<Key, Codes, KeyHash, KeyEq>& table() {
  static auto* t = new std::unordered_map<Key, Codes, KeyHash, KeyEq>();  // never destroyed
  return *t;
}

void remember(const Key& key, const Codes& codes) {
  std::unique_lock lock(g_mutex);
  table()[key] = codes;
}

bool capturing(const at::Tensor& input) {
#if OVERFEAT_WITH_CUDA
  if (input.is_cuda()) {
    const c10::cuda::CUDAGuard guard(input.device());
    return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
  }
#endif
  return g_pretend_capture.load(std::memory_order_relaxed);
}

Key make_key(const at::Tensor& input, const at::Tensor& weight, bool bias, int64_t padding,
             bool relu, bool train, int64_t pool = 0, bool pool_offsets = false) {
  Key key;
  key.device_type = static_cast<int8_t>(input.device().type());
  key.device_index = input.device().index();
  key.dtype = static_cast<int8_t>(input.scalar_type());
  key.padding = static_cast<int8_t>(padding);
  key.channels_last = input.is_contiguous(at::MemoryFormat::ChannelsLast) && !input.is_contiguous();
  key.bias = bias;
  key.relu = relu;
  key.tf32 = input.scalar_type() == at::kFloat && at::globalContext().allowTF32CuDNN();
  key.deterministic = at::globalContext().deterministicAlgorithms();
  key.train = train;
  key.pool = train ? 0 : static_cast<uint8_t>(pool);
  key.pool_offsets = key.pool != 0 && pool_offsets;
  key.n = input.size(0);
  key.c = input.size(1);
  key.h = input.size(2);
  key.w = input.size(3);
  key.k = weight.size(0);
  return key;
}

struct TuningScope {
  TuningScope() { t_tuning = true; }
  ~TuningScope() { t_tuning = false; }
};

// The mode's codes for a call whose `algos` were omitted. `bias_unknown`: a backward op,
// which cannot tell whether its forward had a bias; a training key with either flag that
// is already known is taken before `bias` is timed.
Codes choose(const at::Tensor& input, const at::Tensor& weight, bool bias, int64_t padding,
             bool relu, bool train, bool bias_unknown = false, int64_t pool = 0,
             bool pool_offsets = false) {
  constexpr Codes kOursCodes{kAlgoDefault, kAlgoDefault, kAlgoDefault};
  switch (current_mode()) {
    case kCudnn: return {kAlgoAten, kAlgoAten, kAlgoAten};
    case kOurs: return kOursCodes;
    case kAuto: break;
  }
  const bool timed_here =
      input.is_cuda() || (input.is_cpu() && g_time_on_cpu.load(std::memory_order_relaxed));
  if (!timed_here || input.numel() == 0) return kOursCodes;
  const Key key = make_key(input, weight, bias, padding, relu, train, pool, pool_offsets);
  if (auto hit = lookup(key)) return *hit;
  if (bias_unknown) {
    if (auto hit = lookup(make_key(input, weight, !bias, padding, relu, train))) return *hit;
  }
  const Tuner tuner = g_tuner.load();
  if (t_tuning || tuner == nullptr || capturing(input)) return kOursCodes;  // not remembered
  std::optional<Codes> codes;
  {
    TuningScope scope;
    g_tuner_calls.fetch_add(1, std::memory_order_relaxed);
    codes = tuner(key);
  }
  if (!codes.has_value()) return kOursCodes;
  remember(key, *codes);
  return *codes;
}

}  // namespace

void set_global_mode(int8_t mode) { g_global.store(mode); }
int8_t global_mode() { return g_global.load(); }
int8_t set_scoped_mode(int8_t mode) { return std::exchange(t_scoped, mode); }

int8_t parse_mode(const char* name) {
  for (int8_t i = 0; i < 3; ++i) {
    if (std::strcmp(name, kModeNames[i]) == 0) return i;
  }
  return kUnset;
}

Mode current_mode() {
  if (t_scoped != kUnset) return static_cast<Mode>(t_scoped);
  const int8_t global = g_global.load(std::memory_order_relaxed);
  if (global != kUnset) return static_cast<Mode>(global);
  const char* env = std::getenv(kModeEnv);
  if (env == nullptr || *env == '\0') return kAuto;
  const int8_t mode = parse_mode(env);
  TORCH_CHECK_VALUE(mode != kUnset, kModeEnv, " must be one of 'auto', 'ours', 'cudnn', got '",
                    env, "'");
  return static_cast<Mode>(mode);
}

void set_tuner(Tuner tuner) { g_tuner.store(tuner); }

bool is_plain(const at::Tensor& t) {
  static const c10::DispatchKeySet wrappers{
      c10::DispatchKey::Python,           c10::DispatchKey::PythonTLSSnapshot,
      c10::DispatchKey::Functionalize,    c10::DispatchKey::FuncTorchBatched,
      c10::DispatchKey::FuncTorchGradWrapper, c10::DispatchKey::BatchedNestedTensor};
  return (t.is_cpu() || t.is_cuda()) && !t.key_set().has_any(wrappers);
}

Codes forward_algos(const at::Tensor& input, const at::Tensor& weight, bool bias,
                    int64_t padding, bool relu, bool train, at::OptionalIntArrayRef requested,
                    int64_t pool, bool pool_offsets) {
  TORCH_INTERNAL_ASSERT(pool == 0 || pool == 2 || pool == 3);
  if (requested.has_value()) {
    check_conv_algos(*requested, false);
    return {(*requested)[0], (*requested)[1], (*requested)[2]};
  }
  return choose(input, weight, bias, padding, relu, train, /*bias_unknown=*/false, pool,
                pool_offsets);
}

std::array<int64_t, 2> backward_algos(const at::Tensor& input, const at::Tensor& weight,
                                      bool bias, int64_t padding, bool relu,
                                      at::OptionalIntArrayRef requested) {
  if (requested.has_value()) {
    check_conv_algos(*requested, true);
    return {(*requested)[0], (*requested)[1]};
  }
  const Codes codes = choose(input, weight, bias, padding, relu, /*train=*/true,
                             /*bias_unknown=*/true);
  return {codes[1], codes[2]};
}

void clear() {
  std::unique_lock lock(g_mutex);
  table().clear();
  g_tuner_calls.store(0);
}

size_t size() {
  std::shared_lock lock(g_mutex);
  return table().size();
}

std::optional<Codes> lookup(const Key& key) {
  std::shared_lock lock(g_mutex);
  const auto it = table().find(key);
  if (it == table().end()) return std::nullopt;
  return it->second;
}

std::vector<std::pair<Key, Codes>> entries() {
  std::shared_lock lock(g_mutex);
  return {table().begin(), table().end()};
}

int64_t tuner_calls() { return g_tuner_calls.load(); }

void set_time_on_cpu(bool on) { g_time_on_cpu.store(on); }
bool time_on_cpu() { return g_time_on_cpu.load(); }
void set_pretend_capture(bool on) { g_pretend_capture.store(on); }

}  // namespace overfeat_kernels::choice
