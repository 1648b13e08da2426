// Cooperative fibers for the simulator: each simulated CUDA thread of a block runs on its
// own stack, and the block's scheduler switches between them on one OS thread.
//
// x86-64 uses a hand-written switch (callee-saved registers, MXCSR and the x87 control
// word, then the stack pointer): a few nanoseconds, so a 256-thread barrier costs about
// a microsecond. Other architectures fall back to ucontext (correct, ~50x slower).
// A fiber must never move to another OS thread: g++ caches thread-local addresses.
#pragma once

#include <cstddef>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace ovk_sim {

struct FiberStack {
  void* base = nullptr;  // mmap'd region, guard page first
  size_t size = 0;
  FiberStack() = default;
  explicit FiberStack(size_t usable_bytes);
  FiberStack(const FiberStack&) = delete;
  FiberStack& operator=(const FiberStack&) = delete;
  FiberStack(FiberStack&& o) noexcept : base(o.base), size(o.size) { o.base = nullptr; }
  ~FiberStack();
  char* top() const { return static_cast<char*>(base) + size; }
};

// A saved execution context. `entry(arg)` runs when the fiber is first switched to; it
// must never return (it switches away for the last time instead).
struct Fiber {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
  void (*entry)(void*) = nullptr;
  void* arg = nullptr;
#endif
  void prepare(const FiberStack& stack, void (*entry)(void*), void* arg);
};

// Saves the current context in `from` and resumes `to`.
void switch_fiber(Fiber& from, Fiber& to);

}  // namespace ovk_sim
