"""The simulator's shared-memory race detector (csrc/sim/race_detector.cpp; the kernels'
sources are compiled with the compiler's access instrumentation, setup.py): races between
a block's threads are errors naming both threads and both source lines, whatever the
schedule; what orders accesses (__syncthreads, warp collectives for their lanes, mbarrier
phases, atomics) is not reported. Kernels: race_cases_kernel and the mbarrier ring in
csrc/sim/selftest_kernels.cpp."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from samples import SCHEDULES
from samples import run_simtest as run

from overfeat_kernels import simulator

pytestmark = [
    pytest.mark.sim,
    pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built"),
]

LINE = r"selftest_kernels\.cpp:\d+ \(.*race_cases_kernel"


@pytest.mark.parametrize("schedule,seed", SCHEDULES)
def test_a_missing_barrier_is_reported_with_both_lines(schedule, seed):
    # race_kernel: s[t] = in[t]; out[t] = s[t - 1], no barrier between.
    with pytest.raises(RuntimeError) as err:
        run("race", schedule=schedule, seed=seed)
    msg = str(err.value)
    assert "data race on shared memory" in msg
    assert msg.count("selftest_kernels.cpp:") == 2, msg  # the write and the read
    assert "no __syncthreads, warp collective or mbarrier phase orders the two" in msg


@pytest.mark.parametrize("schedule,seed", SCHEDULES)
def test_write_after_read_and_write_after_write(schedule, seed):
    with pytest.raises(
        RuntimeError, match=r"data race on shared memory \((write after read|read after write)\)"
    ):
        run("race_cases", arg=0, schedule=schedule, seed=seed)
    with pytest.raises(
        RuntimeError,
        match=rf"data race on shared memory \(write after write\): thread \d+ \(warp \d+\) "
        rf"writes 4 byte\(s\) at byte \d+ of the kernel's static __shared__ array #\d+ at {LINE}",
    ):
        run("race_cases", arg=1, schedule=schedule, seed=seed)


def test_a_race_in_a_frame_with_cleanups_is_reported_not_fatal():
    # The hooks are non-throwing calls to the compiler: the detector ends the thread
    # instead of unwinding through them (which would terminate the process).
    with pytest.raises(RuntimeError, match=r"data race on shared memory \(write after read"):
        run("race_cases", arg=6)


@pytest.mark.parametrize("schedule,seed", SCHEDULES)
def test_syncwarp_orders_its_lanes_only(schedule, seed):
    x = torch.randn(256)
    got = run("race_cases", x, arg=2, schedule=schedule, seed=seed)
    want = x.view(8, 32).roll(-1, dims=1).flatten()
    assert torch.equal(got, want)
    # Warp 1's slots are read by warp 0: before or after warp 1 writes them, unordered.
    with pytest.raises(
        RuntimeError, match=r"data race on shared memory \((read after write|write after read)\)"
    ):
        run("race_cases", x, arg=3, schedule=schedule, seed=seed)


@pytest.mark.parametrize("schedule,seed", SCHEDULES)
def test_ordering_is_transitive_and_atomics_are_not_races(schedule, seed):
    x = torch.randn(256)
    got = run("race_cases", x, arg=4, schedule=schedule, seed=seed)
    src = ((torch.arange(256) + 32) % 256) // 32 * 32
    assert torch.equal(got, x[src] + 1)
    assert torch.equal(
        run("race_cases", x, arg=5, schedule=schedule, seed=seed), torch.full((256,), 256.0)
    )


@pytest.mark.parametrize("schedule,seed", SCHEDULES)
def test_mbarrier_phases_order_a_pipeline(schedule, seed):
    # The producer / consumer ring of test_sim_mbarrier.py: every slot is handed over by
    # "full" and "empty" phases, so the detector stays quiet under every schedule...
    run("mbarrier_ring", arg=7, schedule=schedule, seed=seed)
    # ...and a consumer that skips its wait on "full" is a race (or a deadlock).
    with pytest.raises(RuntimeError, match=r"data race on shared memory|deadlock"):
        run("mbarrier_ring_no_wait", arg=7, schedule=schedule, seed=seed)


def test_the_detector_can_be_switched_off():
    x = torch.randn(256)
    got = run("race", x, race_check=False)  # in order, the racy kernel happens to work
    assert torch.equal(got, torch.roll(x, 1))
    with simulator.simulate_cuda(race_check=False):
        got = torch.ops.overfeat_kernels_simtest.run("race", x, 0)  # nested: stays off
    assert torch.equal(got, torch.roll(x, 1))
    with pytest.raises(RuntimeError, match="data race"):
        run("race", x)


def test_library_kernels_run_clean_under_the_detector():
    # The tensor-core conv (cp.async ring reused for the output tile), the pool and the
    # interleave, with the detector on (it is on in every simulator test).
    import overfeat_kernels as ok

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 9, 11, generator=gen).to(torch.bfloat16)
    w = torch.randn(24, 16, 3, 3, generator=gen).to(torch.bfloat16)
    simulator.reset_launch_counts()
    with simulator.simulate_cuda(schedule="shuffle", seed=3):
        y = ok.conv3x3(x, w, None, padding=1)
        m = torch.randn(1, 3, 12, 12, generator=gen)
        p = ok.offset_max_pool2d(m, 3)
    assert any("igemm" in name for name in simulator.launch_counts()), simulator.launch_counts()
    ref = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
    np.testing.assert_allclose(y.double().numpy(), ref.numpy(), rtol=2e-2, atol=5e-2)
    assert torch.equal(p, ok.offset_max_pool2d(m, 3))  # the CPU kernel
