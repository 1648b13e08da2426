// A CPU allocator for simulated launches (the stand-in for compute-sanitizer's memcheck
// and initcheck on outputs): every allocation is filled with 0xFF bytes (NaN), so an
// element a kernel never writes reads as NaN, and carries guard bands on both sides
// that are checked after every launch, so a write out of bounds raises naming the kernel.
#pragma once

#include <string>

namespace ovk_sim {

// Installs (true) or removes (false) the allocator as the process's CPU allocator.
void set_guarded_allocator(bool on);
bool guarded_allocator_installed();

// Throws naming `kernel` if a guard band of a live allocation was overwritten.
void check_guard_bands(const std::string& kernel);

}  // namespace ovk_sim
