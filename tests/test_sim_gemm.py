"""A GEMM built from the simulator's Hopper primitives, the way the Hopper conv is built:
TMA loads (128B-swizzled tiles, 9.7.9.25) into a 4-stage ring of full / empty mbarriers
(9.7.13.15), a producer warpgroup and two consumer warpgroups (setmaxnreg, elect.sync),
wgmma m64n128k16 from shared-memory descriptors (9.7.15), and an epilogue that stores
through shared memory with the async-proxy fence and a TMA store. Checked against float64
under every schedule, and with each planted pipeline bug (GemmBug in
csrc/sim/selftest_hopper.cpp) caught."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
import torch
from samples import SCHEDULES, compile_cuda

from overfeat_kernels import simulator

pytestmark = [
    pytest.mark.sim,
    pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built"),
]


def gemm(m=200, n=136, k=200, bug=0, seed=0, **sim):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    b = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    d = torch.full((m, n), -7.0)
    with simulator.simulate_cuda(**sim):
        torch.ops.overfeat_kernels_simtest.hopper("gemm", [a, b, d], [bug])
    return d, (a.double() @ b.double().T).numpy()


def _close(d, want, k):
    # Exact products, float64 sums per wgmma, float32 accumulation across the K steps.
    return np.allclose(d.double().numpy(), want, rtol=0, atol=4e-6 * k * np.abs(want).max())


@pytest.mark.parametrize("schedule,seed", SCHEDULES)
def test_gemm_matches_float64_under_every_schedule(schedule, seed):
    d, want = gemm(schedule=schedule, seed=seed)
    assert torch.isfinite(d).all()
    assert _close(d, want, 200)


def test_gemm_is_bitwise_schedule_independent():
    # A producer running ahead of or behind the consumers must not change a bit.
    first, _ = gemm(m=130, n=260, k=136, seed=5)
    for schedule, _ in SCHEDULES[1:]:
        d, _ = gemm(m=130, n=260, k=136, seed=5, schedule=schedule)
        assert torch.equal(d, first), schedule


@pytest.mark.parametrize("m,n,k", [(128, 128, 64), (64, 8, 8), (257, 4, 72)])
def test_gemm_edges_and_tails(m, n, k):
    d, want = gemm(m, n, k, seed=m)
    assert _close(d, want, k)


PLANTED = {
    # A 64B descriptor over 128B-swizzled tiles: the right bytes, in the wrong places.
    1: None,
    # The epilogue's ordinary stores reach the TMA store without the async-proxy fence.
    2: r"a TMA store reads .* wrote with an ordinary store at .*hopper_gemm.cuh:\d+ .* "
       r"a fence.proxy.async is missing",
    # expect_tx of the A tile only: phases end before B lands.
    3: None,
    # wait_group<1> leaves the group just issued in flight while its stage is refilled.
    4: r"overwritten before the wgmma.wait_group|data race on shared memory",
    # A refill without waiting for the consumers to release the stage.
    5: r"data race on shared memory \(TMA load after read\)|overwritten before the "
    r"wgmma.wait_group|deadlock",
}  # fmt: skip


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_pipeline_bugs_are_caught(bug):
    """Each bug fails: with an error naming the rule it breaks, or with a wrong result."""
    message = PLANTED[bug]
    caught = []
    for schedule, seed in SCHEDULES:
        try:
            d, want = gemm(
                k=520, bug=bug, schedule=schedule, seed=seed
            )  # 9 K slices: stages reused
        except RuntimeError as err:
            if message is not None:
                assert re.search(message, str(err)), str(err)
            caught.append("error")
        else:
            caught.append("" if _close(d, want, 520) else "wrong")
    assert all(caught), caught
    if message is not None:
        assert "error" in caught


def _cuobjdump() -> str | None:
    import shutil
    from pathlib import Path

    import triton  # ships NVIDIA's cuobjdump

    found = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(found) if found.exists() else shutil.which("cuobjdump")


def test_the_gemm_compiles_for_sm_90a_to_hgmma_and_tma(tmp_path):
    # The same kernel through nvcc: ptxas accepts every instruction, does not serialise the
    # wgmma loop (warning C7510), spills nothing, and the SASS holds HGMMA, the TMA loads
    # and store, and the mbarrier operations.
    source = (
        '#include "hopper_gemm.cuh"\n'
        "template __global__ void overfeat_kernels::hopper_gemm::gemm_kernel<"
        "overfeat_kernels::hopper_gemm::GemmBug::kNone>("
        "const __grid_constant__ overfeat_kernels::hopper_gemm::GemmMaps);\n"
    )
    proc, obj = compile_cuda(
        tmp_path, "gemm", source, ("-gencode=arch=compute_90a,code=sm_90a",),
        ("-Xptxas=-v,-warn-spills",),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "serialized" not in proc.stderr and "spill" not in proc.stderr.replace(
        "0 bytes spill stores, 0 bytes spill loads", ""
    ), proc.stderr
    # C7508: without launch bounds ptxas cannot honour setmaxnreg (it is then ignored).
    assert "C7508" not in proc.stderr and "'setmaxnreg' ignored" not in proc.stderr, proc.stderr
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not available")
    sass = subprocess.run(
        [tool, "-sass", str(obj)], capture_output=True, text=True, timeout=120
    ).stdout
    for opcode in ("HGMMA.64x128x16.F32.BF16", "UTMALDG.2D", "UTMASTG.2D", "SYNCS", "USETMAXREG"):
        assert opcode in sass, opcode
