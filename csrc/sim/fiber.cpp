#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <new>

namespace ovk_sim {

FiberStack::FiberStack(size_t usable_bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size = (usable_bytes + page - 1) / page * page + page;
  base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) {
    base = nullptr;
    throw std::bad_alloc();
  }
  // A stack overflow hits the guard page (a clean SIGSEGV) instead of the next stack.
  mprotect(base, page, PROT_NONE);
}

FiberStack::~FiberStack() {
  if (base != nullptr) munmap(base, size);
}

#if defined(__x86_64__)

// ovk_sim_switch(void** save_sp, void* load_sp): pushes the callee-saved state on the
// current stack, stores the stack pointer, loads the other one and pops its state.
asm(R"(
.text
.globl ovk_sim_switch
.hidden ovk_sim_switch
.type ovk_sim_switch,@function
ovk_sim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  fldcw (%rsp)
  ldmxcsr 8(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size ovk_sim_switch,.-ovk_sim_switch

.globl ovk_sim_trampoline
.hidden ovk_sim_trampoline
.type ovk_sim_trampoline,@function
ovk_sim_trampoline:
  movq %r12, %rdi
  callq *%r13
  ud2
.size ovk_sim_trampoline,.-ovk_sim_trampoline
)");

extern "C" void ovk_sim_switch(void** save_sp, void* load_sp);
extern "C" void ovk_sim_trampoline();

void Fiber::prepare(const FiberStack& stack, void (*entry)(void*), void* arg) {
  // Lay out a frame that ovk_sim_switch pops: x87 CW and MXCSR, r15..r12, rbx, rbp, and
  // the return address (the trampoline, which calls entry(arg) from r13 / r12).
  auto top = reinterpret_cast<uintptr_t>(stack.top()) & ~uintptr_t(15);
  auto* s = reinterpret_cast<uint64_t*>(top);
  // After `ret` pops this, %rsp is 16-byte aligned at the trampoline's call, as the
  // ABI wants.
  *--s = reinterpret_cast<uint64_t>(&ovk_sim_trampoline);
  *--s = 0;                                      // rbp
  *--s = 0;                                      // rbx
  *--s = reinterpret_cast<uint64_t>(arg);        // r12
  *--s = reinterpret_cast<uint64_t>(entry);      // r13
  *--s = 0;                                      // r14
  *--s = 0;                                      // r15
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  *--s = static_cast<uint64_t>(mxcsr);          // at 8(%rsp) after the pops above
  *--s = static_cast<uint64_t>(fpucw);          // at (%rsp)
  sp = s;
}

void switch_fiber(Fiber& from, Fiber& to) { ovk_sim_switch(&from.sp, to.sp); }

#else

namespace {
void ucontext_entry(unsigned hi, unsigned lo) {
  auto* f = reinterpret_cast<Fiber*>((uintptr_t(hi) << 32) | uintptr_t(lo));
  f->entry(f->arg);
}
}  // namespace

void Fiber::prepare(const FiberStack& stack, void (*entry_fn)(void*), void* entry_arg) {
  entry = entry_fn;
  arg = entry_arg;
  getcontext(&uc);
  uc.uc_stack.ss_sp = static_cast<char*>(stack.base);
  uc.uc_stack.ss_size = stack.size;
  uc.uc_link = nullptr;
  // makecontext passes int arguments: the Fiber's address in two halves.
  const auto bits = reinterpret_cast<uintptr_t>(this);
  makecontext(&uc, reinterpret_cast<void (*)()>(&ucontext_entry), 2,
              static_cast<unsigned>(bits >> 32), static_cast<unsigned>(bits));
}

void switch_fiber(Fiber& from, Fiber& to) { swapcontext(&from.uc, &to.uc); }

#endif

}  // namespace ovk_sim
