// The multi-stage cp.async main loop of the implicit GEMMs (conv3x3_igemm.cuh,
// conv3x3_wgrad_igemm.cuh).
#pragma once

#include "ptx_primitives.cuh"

namespace overfeat_kernels {

// Runs `k_blocks` k-blocks through a ring of kStages shared-memory stages of kStageBytes
// each, starting at `smem`. load_stage() issues the cp.async copies of the next k-block
// into the next stage (it keeps its own position); compute(stage) consumes a landed one.
// kStages - 1 k-blocks are in flight. Each step waits for its k-block (this thread's
// copies), syncs the CTA (everyone's copies have landed, and everyone is done with the
// previous k-block, whose stage the next load reuses), issues the next load and computes.
// Every thread commits a group per step, empty ones too, so that wait_group counts line
// up. Returns with no copy in flight; the caller syncs before reusing the ring.
//
// landed(stage, kb), between the wait and the barrier, may rewrite what this thread's own
// copies just put into k-block kb's stage (they are visible to it after its wait_group;
// the barrier then publishes them): how the backward applies the ReLU mask on the way in.
// A kernel without such work passes a lambda that does nothing.
template <int kStages, int kStageBytes, class LoadStage, class Compute, class Landed>
__device__ __forceinline__ void cp_async_pipeline(int k_blocks, unsigned char* smem,
                                                  LoadStage& load_stage, Compute&& compute,
                                                  Landed&& landed) {
  static_assert(kStages >= 2, "a ring of at least two stages");
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_blocks) load_stage();
    cp_async_commit_group();
  }
  int rd_stage = 0;  // byte offset of the stage the warps read
  for (int kb = 0; kb < k_blocks; ++kb) {
    cp_async_wait_group<kStages - 2>();
    landed(smem + rd_stage, kb);
    __syncthreads();
    if (kb + kStages - 1 < k_blocks) load_stage();
    cp_async_commit_group();
    compute(static_cast<const unsigned char*>(smem + rd_stage));
    rd_stage = rd_stage == (kStages - 1) * kStageBytes ? 0 : rd_stage + kStageBytes;
  }
  cp_async_wait_group<0>();  // only empty groups remain, but leave none in flight
}

}  // namespace overfeat_kernels
