"""The CUDA simulator itself: barriers, shared memory, warp collectives, atomics, launch
limits, and the adversarial checks (poison, guard bands, schedules, divergence), on
kernels written for the purpose (csrc/sim/selftest_kernels.cpp) and on the library's."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from samples import SCHEDULES, make_map
from samples import run_simtest as run

import overfeat_kernels as ok
from overfeat_kernels import simulator

pytestmark = [
    pytest.mark.sim,
    pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built"),
]


@pytest.mark.parametrize("schedule,seed", SCHEDULES)
def test_barrier_makes_shared_memory_exchange_correct(schedule, seed):
    x = torch.randn(256)
    assert torch.equal(run("barrier", x, schedule=schedule, seed=seed), torch.roll(x, -1))


def test_race_between_barriers_is_caught_by_schedules():
    # The schedules' own evidence, with the race detector (tests/test_sim_races.py) off.
    x = torch.randn(256)
    expect = torch.roll(x, 1)
    # Run in order, the racy kernel happens to be right: the bug hides...
    assert torch.equal(run("race", x, race_check=False), expect)
    # ...another schedule reads shared memory before it is written: poison (NaN)...
    assert torch.isnan(run("race", x, schedule="reversed", race_check=False)).sum() == 255
    # ...and the schedule comparison flags it.
    with (
        simulator.simulate_cuda(race_check=False),
        pytest.raises(AssertionError, match="differs between schedules"),
    ):
        simulator.assert_schedule_independent(
            lambda: torch.ops.overfeat_kernels_simtest.run("race", x, 0)
        )


def test_shared_memory_is_poisoned_at_block_start():
    x = torch.randn(256)
    assert torch.isnan(run("race", x, schedule="reversed", race_check=False)).any()
    # Without the poison, the stale contents of an earlier block hide the race.
    run("barrier", x, schedule="reversed", poison=False)
    assert not torch.isnan(
        run("race", x, schedule="reversed", poison=False, race_check=False)
    ).any()


def test_divergent_barrier_raises_naming_kernel_and_sites():
    with pytest.raises(RuntimeError) as err:
        run("divergent_barrier")
    msg = str(err.value)
    assert "divergent_barrier_kernel" in msg and "different call sites" in msg
    assert "threads 0-99 at selftest_kernels.cpp" in msg
    assert "threads 100-255 at selftest_kernels.cpp" in msg


def test_exited_threads_count_as_arrived_at_barriers():
    x = torch.randn(256)
    assert torch.equal(run("early_exit", x), x[:128].flip(0))


def _warp_reference(x):
    """numpy model of CUDA's shuffles and votes for 2 warps (warp_kernel's outputs)."""
    out = np.zeros((64, 8), dtype=np.float32)
    for t in range(64):
        w, lane = divmod(t, 32)
        v = x[w * 32 : w * 32 + 32]
        out[t, 0] = v[(lane + 3) % 32]
        out[t, 1] = v[lane - 1] if lane >= 1 else v[lane]
        out[t, 2] = v[lane + 2] if lane + 2 < 32 else v[lane]
        out[t, 3] = v[lane ^ 5]
        out[t, 4] = sum(1 << i for i in range(16) if v[i] > 0)
        out[t, 5] = float((v > 2).any())
        out[t, 6] = float((v > -10).all())
        out[t, 7] = v[(lane & ~7) + (lane + 1) % 8]
    return out


@pytest.mark.parametrize("schedule,seed", SCHEDULES)
def test_warp_shuffles_and_votes(schedule, seed):
    x = torch.randn(64) * 2
    got = run("warp", x, schedule=schedule, seed=seed)
    assert np.array_equal(got.numpy(), _warp_reference(x.numpy()))


def test_warp_collective_without_all_lanes_raises():
    with pytest.raises(RuntimeError, match=r"__shfl_sync .* warp 1 is missing lanes 16-31"):
        run("partial_warp", torch.randn(256), 48)
    assert run("partial_warp", torch.randn(256), 64).shape == (2048,)


def test_lanes_at_different_collectives_raise():
    with pytest.raises(RuntimeError, match="lanes of warp 0 diverge"):
        run("divergent_shuffle", torch.randn(256))


def test_atomics_across_blocks_running_on_several_threads():
    blocks = 64
    state = run("atomics", torch.randn(4), blocks)
    assert state[0].item() == blocks * 256
    assert state[1:2].view(torch.float32).item() == blocks * 256 * 0.5
    assert state[2].item() == blocks * 256 - 1


@pytest.mark.parametrize(
    "case,message",
    [
        (1, "1025 threads per block exceed the limit of 1024"),
        (2, "grid dimension y = 65536 exceeds 65535"),
        (3, "empty grid"),
        (4, "65536 bytes of dynamic shared memory .* cudaFuncSetAttribute"),
        (6, "53248 bytes of static __shared__ memory exceed 49152"),
        (7, "block dimension z = 65 exceeds 64"),
    ],
)
def test_launches_the_gpu_would_refuse_raise(case, message):
    with pytest.raises(RuntimeError, match="the GPU would refuse to launch .*" + message):
        run("launch", torch.randn(4), case)


def test_allowed_launches_run():
    assert run("launch", torch.randn(4), 0).item() == 1.0  # 1024 threads
    assert run("launch", torch.randn(4), 5).item() == 1.0  # 64 KB after the opt-in


def test_write_out_of_bounds_is_caught_by_guard_bands():
    with pytest.raises(RuntimeError, match="out_of_bounds_kernel wrote outside a 28-byte buffer"):
        run("out_of_bounds", torch.randn(4), 7)


def test_unwritten_output_element_reads_as_nan():
    out = run("unwritten", torch.randn(4), 9)
    assert torch.equal(out[:8], torch.ones(8)) and torch.isnan(out[8])


def test_barrier_costs_microseconds():
    run("barriers", torch.randn(4), 10)
    rounds = 2000
    # CPU time, not wall time: other processes on the machine do not count.
    start = time.process_time()
    run("barriers", torch.randn(4), rounds)
    per_barrier = (time.process_time() - start) / rounds
    # 256 threads, two context switches each: a few microseconds with the hand-written
    # switch; glibc's swapcontext would take ~170 us.
    assert per_barrier < 50e-6, f"{per_barrier * 1e6:.1f} us per 256-thread barrier"


def _library_calls(layout):
    x = make_map((2, 24, 13, 11), torch.float32, "cpu", layout, requires_grad=True)
    w = torch.randn(16, 24, 3, 3, requires_grad=True)
    b = torch.randn(16, requires_grad=True)

    def calls():
        y = ok.conv3x3(x, w, b, 1, True)
        p = ok.offset_max_pool2d(y, 2)
        z = ok.interleave(p, 2)
        grads = torch.autograd.grad((z * z).sum(), (x, w, b))
        return [y, p, z, ok.deinterleave(z, 2), *grads]

    return calls


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_library_kernels_are_schedule_independent(layout):
    simulator.assert_schedule_independent(_library_calls(layout))


def test_every_op_runs_its_cuda_kernels():
    calls = _library_calls("channels_last")
    simulator.reset_launch_counts()
    with simulator.simulate_cuda():
        calls()
    names = " ".join(simulator.launch_counts())
    for kernel in [
        "direct_conv3x3_kernel<float, false>",  # forward
        "direct_conv3x3_kernel<float, true>",  # grad-input, ReLU-masked
        "wgrad_partial_kernel<float, true>",
        "wgrad_reduce_kernel<float>",
        "bias_grad_kernel<float, true>",
        "offset_pool_forward_tiled_kernel<float, (overfeat_kernels::MapLayout)1, false, false>",
        "offset_pool_backward_tiled_kernel<float, (overfeat_kernels::MapLayout)1, false>",
        "permute_nhwc_rows_kernel<true>",  # interleave, 16-byte vectors
        "permute_nhwc_rows_kernel<false>",  # deinterleave
    ]:
        assert kernel in names, (kernel, names)


def test_context_nests_and_restores():
    assert not simulator.enabled()
    with simulator.simulate_cuda(schedule="reversed"):
        assert simulator.enabled()
        with simulator.simulate_cuda(enabled=False):
            assert not simulator.enabled()
        assert simulator.enabled()
    assert not simulator.enabled()
    with (
        pytest.raises(ValueError, match="schedule must be one of"),
        simulator.simulate_cuda(schedule="random"),
    ):
        pass


def test_environment_variable_simulates_the_whole_process():
    code = (
        "import torch, overfeat_kernels as ok\n"
        "assert ok.simulator.enabled()\n"
        "ok.offset_max_pool2d(torch.randn(1, 2, 9, 9), 3)\n"
        "print(sorted(ok.simulator.launch_counts()))\n"
    )
    env = dict(os.environ, OVERFEAT_KERNELS_SIMULATE_CUDA="1")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    expected = "offset_pool_forward_tiled_kernel<float, (overfeat_kernels::MapLayout)0"
    assert expected in out.stdout, out.stdout + out.stderr
