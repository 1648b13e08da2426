// The self-test kernels take the mistake they plant (or their case number) as a template
// argument, which a test names at run time: with_constant<kValues...>(value, f) calls
// f(std::integral_constant<T, v>{}) for the v among kValues equal to `value`, and says
// whether there was one. One line per kernel instead of a switch case per value.
#pragma once

#include <type_traits>

namespace overfeat_kernels {

template <auto kFirst, decltype(kFirst)... kRest, class F>
bool with_constant(decltype(kFirst) value, const F& f) {
  using T = decltype(kFirst);
  const auto try_one = [&](auto c) {
    if (value != decltype(c)::value) return false;
    f(c);
    return true;
  };
  return (try_one(std::integral_constant<T, kFirst>{}) || ... ||
          try_one(std::integral_constant<T, kRest>{}));
}

}  // namespace overfeat_kernels
