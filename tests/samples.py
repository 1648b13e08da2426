"""One generator of sample inputs for every op, shared by the correctness, gradient,
opcheck and compile tests: fresh random values, odd sizes, NCHW, channels_last and
non-contiguous views, empty batches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

LAYOUTS = ("nchw", "channels_last", "strided")


@dataclass
class Sample:
    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)

    def __repr__(self) -> str:  # shows in pytest ids and failures
        return self.name


# Thread schedules of the simulator's adversarial runs: (schedule, seed).
SCHEDULES = [("in_order", 0), ("reversed", 0), ("shuffle", 1), ("shuffle", 7)]


def run_simtest(name, x=None, arg=0, **sim_options):
    """A self-test kernel of csrc/sim/selftest_kernels.cpp, in the simulator."""
    from overfeat_kernels import simulator

    x = torch.randn(256) if x is None else x
    with simulator.simulate_cuda(**sim_options):
        return torch.ops.overfeat_kernels_simtest.run(name, x, arg)


def make_map(shape, dtype, device, layout="nchw", requires_grad=False, values="normal"):
    """A random [N, C, H, W] tensor in the given layout.

    "strided" is a non-contiguous view (every other channel, a cropped window, and a
    transposed storage order) of a larger tensor.
    """
    n, c, h, w = shape
    if values == "normal":

        def draw(s):
            return torch.randn(s, dtype=torch.float64)
    elif values == "ties":  # few distinct values: many equal maxima in a window

        def draw(s):
            return torch.randint(-3, 4, s).to(torch.float64)
    else:
        raise ValueError(values)
    if layout == "nchw":
        t = draw(shape).to(dtype).to(device)
    elif layout == "channels_last":
        t = draw(shape).to(dtype).to(device).contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        big = draw((n, 2 * c, w + 3, h + 2)).to(dtype).to(device)
        t = big[:, ::2, 1 : w + 1, 2 : h + 2].transpose(2, 3)
        assert t.shape == shape and not t.is_contiguous()
    else:
        raise ValueError(layout)
    return t.requires_grad_(requires_grad)


# (N, C, K, H, W, padding, bias, relu, layout): odd sizes, channel counts that are not
# multiples of the kernels' chunk of 8 and more than one chunk, 1x1 outputs, N = 0.
CONV_CONFIGS = [
    (2, 3, 5, 7, 13, 1, True, True, "nchw"),
    (1, 4, 8, 5, 5, 0, False, False, "channels_last"),
    (3, 9, 17, 17, 18, 1, True, False, "strided"),
    (1, 12, 20, 13, 7, 1, True, True, "strided"),
    (2, 16, 9, 20, 35, 0, True, True, "channels_last"),
    (2, 1, 1, 3, 3, 0, True, True, "nchw"),
    (1, 2, 3, 1, 1, 1, False, True, "nchw"),
    (1, 5, 3, 2, 7, 1, True, False, "channels_last"),
    (0, 3, 4, 7, 7, 1, True, False, "nchw"),
]
# Small enough for float64 gradcheck.
CONV_GRAD_CONFIGS = [
    (2, 3, 4, 5, 7, 1, True, True, "nchw"),
    (1, 9, 2, 6, 5, 0, True, False, "channels_last"),
    (1, 2, 10, 4, 3, 1, False, True, "strided"),
]


def conv3x3_samples(
    device, dtype=torch.float32, requires_grad=False, configs=CONV_CONFIGS, algos=None
):
    """`algos`: the op's optional [forward, grad-input, grad-weight] implementations."""
    out = []
    for n, c, k, h, w, pad, bias, relu, layout in configs:
        x = make_map((n, c, h, w), dtype, device, layout, requires_grad)
        wt = (torch.randn(k, c, 3, 3, dtype=torch.float64) / (3 * c) ** 0.5).to(dtype).to(device)
        b = torch.randn(k, dtype=torch.float64).to(dtype).to(device) if bias else None
        wt.requires_grad_(requires_grad)
        if b is not None:
            b.requires_grad_(requires_grad)
        name = f"N{n}C{c}K{k}H{h}W{w}p{pad}{'b' if bias else ''}{'r' if relu else ''}-{layout}"
        extra = () if algos is None else (list(algos),)
        out.append(Sample(name, (x, wt, b, pad, relu, *extra)))
    return out


# (N, C, H, W, k, layout)
POOL_CONFIGS = [
    (2, 3, 5, 7, 2, "nchw"),
    (1, 4, 13, 17, 3, "channels_last"),
    (2, 5, 18, 20, 4, "strided"),
    (1, 2, 35, 13, 3, "nchw"),
    (3, 1, 7, 5, 1, "channels_last"),
    (1, 6, 20, 18, 2, "strided"),
    (1, 3, 7, 7, 4, "nchw"),
    (0, 3, 9, 9, 3, "nchw"),
]
POOL_GRAD_CONFIGS = [
    (2, 3, 7, 8, 2, "nchw"),
    (1, 2, 9, 10, 3, "channels_last"),
    (1, 2, 13, 7, 3, "strided"),
]


def offset_pool_samples(
    device, dtype=torch.float32, requires_grad=False, configs=POOL_CONFIGS, values="normal"
):
    return [
        Sample(
            f"N{n}C{c}H{h}W{w}k{k}-{layout}",
            (make_map((n, c, h, w), dtype, device, layout, requires_grad, values), k),
        )
        for n, c, h, w, k, layout in configs
    ]


def pool_backward_samples(device, dtype=torch.float32, configs=POOL_CONFIGS):
    out = []
    for s in offset_pool_samples(device, dtype, configs=configs):
        x, k = s.args
        n, c, h, w = x.shape
        shape = (n * k * k, c, (h - k + 1) // k, (w - k + 1) // k)
        out.append(Sample(s.name, (make_map(shape, dtype, device), x, k)))
    return out


# (N, C, h, w, k, layout) of the per-offset maps
INTERLEAVE_CONFIGS = [
    (1, 3, 5, 7, 2, "nchw"),
    (2, 4, 13, 5, 3, "channels_last"),
    (1, 5, 7, 18, 4, "strided"),
    (2, 2, 1, 1, 3, "nchw"),
    (1, 3, 4, 4, 1, "channels_last"),
    (0, 3, 5, 5, 2, "nchw"),
]


def interleave_samples(
    device, dtype=torch.float32, requires_grad=False, configs=INTERLEAVE_CONFIGS
):
    return [
        Sample(
            f"N{n}C{c}h{h}w{w}k{k}-{layout}",
            (make_map((n * k * k, c, h, w), dtype, device, layout, requires_grad), k),
        )
        for n, c, h, w, k, layout in configs
    ]


def deinterleave_samples(
    device, dtype=torch.float32, requires_grad=False, configs=INTERLEAVE_CONFIGS
):
    return [
        Sample(
            f"N{n}C{c}H{h * k}W{w * k}k{k}-{layout}",
            (make_map((n, c, h * k, w * k), dtype, device, layout, requires_grad), k),
        )
        for n, c, h, w, k, layout in configs
    ]


def conv3x3_backward_samples(device, dtype=torch.float32, configs=CONV_CONFIGS, algos=None):
    """`algos`: the op's optional [grad-input, grad-weight] implementations."""
    out = []
    for s in conv3x3_samples(device, dtype, configs=configs):
        x, wt, b, pad, relu = s.args
        n, _, h, w = x.shape
        oshape = (n, wt.shape[0], h + 2 * pad - 2, w + 2 * pad - 2)
        relu_out = make_map(oshape, dtype, device).relu() if relu else None
        mask = [True, True, b is not None]
        extra = () if algos is None else (list(algos),)
        args = (make_map(oshape, dtype, device), x, wt, relu_out, pad, mask, *extra)
        out.append(Sample(s.name, args))
    return out


# Both GPU generations the nvcc compile tests build for: sm_80 (where the sm_90 instructions
# trap) and sm_90a.
SM80_SM90A = ("-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a")


def nvcc() -> str | None:
    """The CUDA compiler: CUDA_HOME's, /usr/local/cuda's, or the one on PATH."""
    for root in filter(None, [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]):
        path = os.path.join(root, "bin", "nvcc")
        if os.path.exists(path):
            return path
    return shutil.which("nvcc")


def compile_cuda(tmp_path: Path, name: str, source: str, gencodes=SM80_SM90A, flags=()):
    """Compiles `source` (which includes csrc/cuda headers) to `tmp_path/name.o` with nvcc,
    through ptxas for each gencode; skips the test without nvcc. Returns (process, object)."""
    from torch.utils.cpp_extension import include_paths

    compiler = nvcc()
    if compiler is None:
        pytest.skip("nvcc not available")
    src, obj = tmp_path / f"{name}.cu", tmp_path / f"{name}.o"
    src.write_text(source)
    cuda_dir = Path(__file__).resolve().parent.parent / "csrc" / "cuda"
    proc = subprocess.run(
        [compiler, "-std=c++20", "-c", "--expt-relaxed-constexpr", *flags, *gencodes,
         "-DOVERFEAT_WITH_CUDA=1", f"-I{cuda_dir}", *[f"-I{p}" for p in include_paths()],
         f"-I{sysconfig.get_paths()['include']}", str(src), "-o", str(obj)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return proc, obj
