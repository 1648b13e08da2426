from __future__ import annotations

import os
import sys
import zlib

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from overfeat_kernels import simulator

HAS_CUDA = torch.cuda.is_available()
HAS_SIM = simulator.available()
# "sim": the CUDA kernels, run by the simulator on CPU tensors (the test sees "cpu").
DEVICES = [
    "cpu",
    pytest.param(
        "sim",
        marks=[
            pytest.mark.sim,
            pytest.mark.skipif(not HAS_SIM, reason="CUDA simulator not built"),
        ],
    ),
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")),
]
HALF_DTYPES = (torch.float16, torch.bfloat16)


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "sim":
        with simulator.simulate_cuda():
            yield "cpu"
    else:
        yield request.param


@pytest.fixture(autouse=True)
def _exact_float32():
    # float32 on CUDA (and in the simulator) honours torch.backends.cudnn.allow_tf32, which
    # is True by default: tests compare float32 with exact-arithmetic tolerances, so they
    # run with TF32 off; the TF32 tests (test_conv3x3_tc.py) switch it on themselves.
    was = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = was


@pytest.fixture(autouse=True)
def _our_conv_kernels():
    # conv3x3's default backend, "auto", may pick cuDNN on a GPU: the tests of our kernels
    # must run our kernels. tests/test_backend.py sets modes itself.
    from overfeat_kernels import backend

    was = backend._set_global_mode("ours")
    yield
    backend._set_global_mode(was)


def seed_of(nodeid: str) -> int:
    """A test's seed: a stable hash of its id (Python's hash() of a str is salted per
    process), so that a failing case replays with the same inputs."""
    return zlib.crc32(nodeid.encode())


@pytest.fixture(autouse=True)
def _seed(request):
    # A fresh, reproducible seed per test (differs between tests, not between runs).
    torch.manual_seed(seed_of(request.node.nodeid))


def pytest_report_header(config):
    import overfeat_kernels

    info = overfeat_kernels.build_info()
    return [f"overfeat_kernels build: {info}"]
