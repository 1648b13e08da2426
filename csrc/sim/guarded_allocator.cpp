#include "guarded_allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

namespace ovk_sim {
namespace {

constexpr size_t kGuard = 64;  // keeps the body 64-byte aligned, as the CPU allocator does
constexpr unsigned char kGuardByte = 0xA5;
constexpr unsigned char kPoisonByte = 0xFF;

std::mutex g_mutex;
std::unordered_map<void*, size_t> g_live;  // body -> size
std::string g_late_error;                  // a corruption found when freeing

bool guards_intact(const unsigned char* body, size_t n) {
  for (size_t i = 0; i < kGuard; ++i) {
    if (body[-1 - static_cast<ptrdiff_t>(i)] != kGuardByte || body[n + i] != kGuardByte) return false;
  }
  return true;
}

void release(void* body) {
  if (body == nullptr) return;
  std::lock_guard<std::mutex> lock(g_mutex);
  const auto it = g_live.find(body);
  if (it == g_live.end()) return;
  if (!guards_intact(static_cast<unsigned char*>(body), it->second) && g_late_error.empty()) {
    g_late_error = "a guard band of a freed " + std::to_string(it->second) +
                   "-byte buffer was overwritten";
  }
  g_live.erase(it);
  std::free(static_cast<unsigned char*>(body) - kGuard);
}

struct GuardedAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    const size_t padded = (n + kGuard - 1) / kGuard * kGuard;
    auto* raw = static_cast<unsigned char*>(std::aligned_alloc(kGuard, padded + 2 * kGuard));
    TORCH_CHECK(raw != nullptr, "CUDA simulator: out of memory allocating ", n, " bytes");
    unsigned char* body = raw + kGuard;
    // The right guard starts right after the n bytes, not at the padded end.
    std::memset(raw, kGuardByte, kGuard);
    std::memset(body, kPoisonByte, n);
    std::memset(body + n, kGuardByte, kGuard + (padded - n));
    {
      std::lock_guard<std::mutex> lock(g_mutex);
      g_live.emplace(body, n);
    }
    return {body, body, &release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, size_t count) const override {
    std::memcpy(dest, src, count);
  }
};

GuardedAllocator g_allocator;
c10::Allocator* g_previous = nullptr;

}  // namespace

void set_guarded_allocator(bool on) {
  if (on && c10::GetCPUAllocator() != &g_allocator) {
    g_previous = c10::GetCPUAllocator();
    c10::SetCPUAllocator(&g_allocator, /*priority=*/255);
  } else if (!on && c10::GetCPUAllocator() == &g_allocator && g_previous != nullptr) {
    c10::SetCPUAllocator(g_previous, /*priority=*/255);
  }
}

bool guarded_allocator_installed() { return c10::GetCPUAllocator() == &g_allocator; }

void check_guard_bands(const std::string& kernel) {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::string error;
  std::swap(error, g_late_error);
  for (const auto& [body, n] : g_live) {
    if (!error.empty()) break;
    if (!guards_intact(static_cast<unsigned char*>(body), n)) {
      error = "wrote outside a " + std::to_string(n) + "-byte buffer (a guard band was overwritten)";
      // Restore the guards, so that one bug is reported once.
      auto* b = static_cast<unsigned char*>(body);
      std::memset(b - kGuard, kGuardByte, kGuard);
      std::memset(b + n, kGuardByte, kGuard);
    }
  }
  TORCH_CHECK(error.empty(), "CUDA simulator: kernel ", kernel, " ", error);
}

}  // namespace ovk_sim
