"""The simulator's mbarrier model (csrc/sim/runtime.cpp, "mbarrier objects"; the PTX
wrappers in csrc/cuda/mbarrier.cuh) against the PTX ISA's rules ("Parallel synchronization
and communication instructions: mbarrier"): phase and parity arithmetic, transaction
counts, a producer / consumer ring under every thread schedule, and the errors a wrong
pipeline must raise (deadlock naming the barrier, over-arrival, tx-count below zero at the
end of a phase, use before init, a barrier overwritten by an ordinary store, a barrier
outside shared memory). Kernels in csrc/sim/selftest_kernels.cpp."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from samples import SCHEDULES, compile_cuda
from samples import run_simtest as run

from overfeat_kernels import simulator

pytestmark = [
    pytest.mark.sim,
    pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built"),
]


def _ring_reference(x: np.ndarray, rounds: int) -> np.ndarray:
    out = np.zeros(32, dtype=np.float32)
    for lane in range(32):
        acc = np.float32(0)
        for r in range(rounds):
            slot = x[(32 * r + np.arange(32)) % 256].astype(np.float32) + np.float32(r)
            acc = np.float32(acc + slot[(lane + r) % 32] * np.float32(r + 1))
        out[lane] = acc
    return out


def test_phases_parities_and_tokens_follow_the_isa():
    # test_wait.parity(p) is true when the phase of parity p has completed, i.e. the
    # current phase's parity is not p; a phase completes when its pending arrivals and
    # its tx-count are both zero; arrivals in one phase get the same (opaque) state token.
    got = run("mbarrier_phases").numpy()
    expected = [
        [0, 1, -1],  # init(1): phase 0 current
        [1, 0, 0],  # arrive in phase 0: it completes
        [1, 0, 0],  # expect_tx 16 + arrive in phase 1 (another token): 16 bytes outstanding
        [1, 0, -1],  # complete-tx 8: 8 outstanding
        [0, 1, -1],  # complete-tx 8: phase 1 completes
        [0, 1, 0],  # init(2), arrive: 1 of 2
        [1, 0, 1],  # arrive, same phase, same token: phase 0 completes
        [0, 1, 0],  # arrive with count 2 in phase 1: completes at once
    ]
    assert got.tolist() == expected


@pytest.mark.parametrize("rounds", [1, 2, 7])
def test_producer_consumer_ring_is_schedule_independent(rounds):
    x = torch.randn(256)
    results = [run("mbarrier_ring", x, rounds, schedule=s, seed=seed) for s, seed in SCHEDULES]
    for got in results[1:]:
        assert torch.equal(got, results[0])
    np.testing.assert_allclose(results[0].numpy(), _ring_reference(x.numpy(), rounds), rtol=1e-6)


def test_a_consumer_that_does_not_wait_is_caught():
    # Without waiting on its slot's "full" barrier, a consumer reads slots not yet (re)filled
    # (poison or a stale round: wrong values), or runs ahead and completes "empty" phases the
    # producer then waits for in vain (a deadlock, which a GPU would hang on).
    x = torch.randn(256)
    reference = _ring_reference(x.numpy(), 7)
    caught = []
    for schedule, seed in SCHEDULES:
        try:
            got = run("mbarrier_ring_no_wait", x, 7, schedule=schedule, seed=seed).numpy()
        except RuntimeError as err:
            if "data race on shared memory" in str(err):  # the race detector, first
                caught.append("race")
                continue
            assert "deadlock: threads" in str(err) and "32 of 32 arrivals pending" in str(err)
            caught.append("deadlock")
        else:
            caught.append("" if np.allclose(got, reference, rtol=1e-6) else "values")
    assert all(caught), caught  # every schedule catches it


# arg of the "mbarrier_bug" kernel (MBarrierBug in selftest_kernels.cpp) and the error.
BUGS = [
    (
        0,
        r"deadlock: threads 0-63 wait at .*selftest_kernels.cpp:\d+ for the phase of parity 0 "
        r"of the mbarrier initialised at .*: 1 of 2 arrivals pending, tx-count 0 bytes",
    ),
    (
        1,
        r"over-arrival on the mbarrier initialised at .*: 2 arrival\(s\) in phase 0, which has "
        r"1 of 1 pending",
    ),
    (2, r"deadlock: .* 0 of 1 arrivals pending, tx-count 32 bytes"),
    (3, r"has all its arrivals but tx-count -16: more bytes completed than expect_tx announced"),
    (4, r"mbarrier.test_wait on an mbarrier that mbarrier.init has not initialised"),
    (5, r"mbarrier.arrive: the mbarrier initialised at .* was overwritten by an ordinary store"),
    (6, r"mbarrier.init: the mbarrier object is not in this kernel's shared memory"),
    (7, r"mbarrier.init: an mbarrier object must be 8-byte aligned"),
    (
        9,
        r"deadlock: threads 0-31 wait at .* for the phase of parity 0 .* 1 of 1 arrivals "
        r"pending, tx-count 0 bytes; meanwhile threads 32-63 wait at __syncthreads "
        r".*selftest_kernels.cpp:\d+",
    ),
    (
        10,
        r"thread spins on mbarrier.test_wait for the phase of parity 0 of the mbarrier "
        r"initialised at .*, which has not completed in 65536 tries: 1 of 1 arrivals pending",
    ),
    (11, r"mbarrier.arrive: the count must be in \[1, 2\^20 - 1\], got 0"),
]


@pytest.mark.parametrize(("bug", "message"), BUGS)
@pytest.mark.parametrize(("schedule", "seed"), [("in_order", 0), ("reversed", 0)])
def test_broken_pipelines_raise_naming_the_barrier(bug, message, schedule, seed):
    with pytest.raises(RuntimeError, match=r"kernel .*mbarrier_bug_kernel.*block \(0, 0, 0\)") as e:
        run("mbarrier_bug", arg=bug, schedule=schedule, seed=seed)
    assert e.match(message)


@pytest.mark.parametrize(("schedule", "seed"), SCHEDULES)
def test_dynamic_shared_memory_holds_data_and_an_mbarrier(schedule, seed):
    # 100 KB: above the 48 KB default, after set_max_dynamic_smem (as on an H100).
    n = 25_600
    x = torch.randn(n)
    got = run("dynamic_smem", x, n, schedule=schedule, seed=seed)
    assert torch.equal(got, x.flip(0))


def test_dynamic_shared_memory_above_48_kb_needs_the_opt_in():
    with pytest.raises(RuntimeError, match=r"would refuse to launch .*dynamic shared memory"):
        run("dynamic_smem", torch.randn(25_600), -25_600)
    assert torch.equal(run("dynamic_smem", torch.ones(100), -100), torch.ones(100))


def test_init_while_threads_wait_raises():
    with pytest.raises(RuntimeError, match=r"mbarrier.init on a barrier that thread 0 is waiting"):
        run("mbarrier_bug", arg=8)  # in order: 63 threads wait, then the last re-inits


KERNEL = r"""
#include "dynamic_smem.cuh"
#include "mbarrier.cuh"
using namespace overfeat_kernels;
__global__ void reverse(const float* in, float* out, int n) {
  float* data = dynamic_shared_memory<float>();
  for (int i = threadIdx.x; i < n; i += blockDim.x) data[i] = in[i];
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = data[n - 1 - i];
}
__global__ void ring(const float* in, float* out) {
  __shared__ __align__(8) uint64_t full, empty;
  __shared__ float slot[32];
  if (threadIdx.x == 0) {
    mbarrier_init(&full, 32);
    mbarrier_init(&empty, 32);
    mbarrier_fence_init();
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    slot[threadIdx.x] = in[threadIdx.x];
    mbarrier_arrive_expect_tx(&full, 0);
    mbarrier_wait_parity(&empty, 0);
  } else {
    mbarrier_wait_parity(&full, 0);
    out[threadIdx.x - 32] = slot[threadIdx.x - 32];
    mbarrier_arrive(&empty);
    mbarrier_arrive_count(&empty, 1);
    (void)mbarrier_test_wait_parity(&empty, 1);
    mbarrier_expect_tx(&full, 16);
  }
}
"""


def test_the_ptx_wrappers_compile_for_sm_80_and_sm_90a(tmp_path):
    # The host pass, sm_80 (where the sm_90 instructions trap) and sm_90a, through ptxas,
    # which checks every instruction's spelling, state space and operand types.
    proc, _ = compile_cuda(tmp_path, "ring", KERNEL)
    assert proc.returncode == 0, proc.stderr[-3000:]
