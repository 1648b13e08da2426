"""The build: which kernels are compiled in, and a safe import without the module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import overfeat_kernels as ok
from overfeat_kernels import _ext

OP_NAMES = [
    "conv3x3",
    "conv3x3_backward",
    "offset_max_pool2d",
    "offset_max_pool2d_backward",
    "interleave",
    "deinterleave",
]


@pytest.mark.parametrize("name", OP_NAMES)
def test_kernels_registered(name):
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    assert has(f"overfeat_kernels::{name}", "CPU")
    # The CUDA kernels are there exactly when the build compiled them (no GPU needed).
    assert has(f"overfeat_kernels::{name}", "CUDA") == _ext.with_cuda()


def test_cuda_kernels_compiled_when_required():
    # CI builds with the CUDA toolkit and sets this: the CUDA sources must be compiled in.
    if os.environ.get("OVERFEAT_KERNELS_REQUIRE_CUDA_BUILD") != "1":
        pytest.skip("OVERFEAT_KERNELS_REQUIRE_CUDA_BUILD not set")
    assert _ext.with_cuda(), ok.build_info()


def test_simulator_built_when_required():
    # CI sets this: the simulator cases must run, not be skipped.
    if os.environ.get("OVERFEAT_KERNELS_REQUIRE_SIMULATOR") != "1":
        pytest.skip("OVERFEAT_KERNELS_REQUIRE_SIMULATOR not set")
    assert ok.simulator.available(), ok.build_info()


@pytest.mark.parametrize("module", ["_C", "_sim"])
def test_modules_built_with_openmp_like_torch(module):
    # at::parallel_for is a header template: a module compiled without OpenMP runs every
    # chunk on the calling thread, whatever torch.set_num_threads says. The parallel region
    # compiles to a call into the OpenMP runtime (GOMP_parallel with GCC, __kmpc_fork_call
    # with clang's libomp).
    if not (torch._C.has_openmp and sys.platform.startswith("linux")):
        pytest.skip("torch without OpenMP, or not Linux: the build adds no -fopenmp")
    import importlib

    try:
        mod = importlib.import_module(f"overfeat_kernels.{module}")
    except ImportError:
        pytest.skip(f"overfeat_kernels.{module} not built")
    binary = Path(mod.__file__).read_bytes()
    assert b"GOMP_parallel" in binary or b"__kmpc_fork_call" in binary, mod.__file__


def test_every_cuda_source_has_a_simulator_twin():
    root = Path(__file__).resolve().parents[1] / "csrc"
    for cu in sorted((root / "cuda").glob("*.cu")):
        twin = root / "sim" / f"{cu.stem}.cpp"
        assert twin.exists(), f"{cu.name} is not compiled into the simulator"
        assert f'#include "../cuda/{cu.name}"' in twin.read_text()


@pytest.mark.parametrize("name", OP_NAMES)
def test_simulator_registers_every_op(name):
    if not ok.simulator.available():
        pytest.skip("CUDA simulator not built")
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    assert has(f"overfeat_kernels_sim::{name}", "CPU")


def test_import_without_compiled_module_is_safe():
    # Block the compiled module: the package imports, and an op call says how to build.
    code = (
        "import sys; sys.modules['overfeat_kernels._C'] = None\n"
        "import torch, overfeat_kernels as ok\n"
        "assert not ok.build_info()['compiled_module']\n"
        "try:\n"
        "    ok.conv3x3(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 3, 3))\n"
        "except ok.ExtensionNotBuiltError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install --no-build-isolation -e ." in out.stdout, out.stdout + out.stderr
