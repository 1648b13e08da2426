// The simulator's side of conv_choice.h. Its ops are reached through the CPU kernels of
// overfeat_kernels._C, which resolve the conv backend's mode and pass explicit algos; an op
// of overfeat_kernels_sim called directly without them runs our heuristic.
#include "../conv_choice.h"

#include "../checks.h"

namespace overfeat_kernels::choice {

Codes forward_algos(const at::Tensor&, const at::Tensor&, bool, int64_t, bool, bool,
                    at::OptionalIntArrayRef requested, int64_t, bool) {
  if (!requested.has_value()) return {kAlgoDefault, kAlgoDefault, kAlgoDefault};
  check_conv_algos(*requested, false);
  return {(*requested)[0], (*requested)[1], (*requested)[2]};
}

std::array<int64_t, 2> backward_algos(const at::Tensor&, const at::Tensor&, bool, int64_t,
                                      bool, at::OptionalIntArrayRef requested) {
  if (!requested.has_value()) return {kAlgoDefault, kAlgoDefault};
  check_conv_algos(*requested, true);
  return {(*requested)[0], (*requested)[1]};
}

}  // namespace overfeat_kernels::choice
