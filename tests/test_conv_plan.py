"""conv3x3's plan (csrc/conv_plan.h): the candidates' table that Python reads, the rules of
which candidates "auto" times, the pure planning function (kernel, tiles, copies per
direction), and, in the simulator, that a call runs exactly what its plan says."""

from __future__ import annotations

import pytest
import torch

import overfeat_kernels as ok
from overfeat_kernels import _ext, backend, simulator

C = _ext._C
H100 = {"capability": 90, "sms": 132}


def plan(direction="forward", algo=0, gpu=True, capability=90, sms=132, **problem):
    base = {"n": 1, "c": 64, "h": 28, "w": 28, "k": 64, "element_size": 2,
            "tensor_core_dtype": True}  # fmt: skip
    return C.conv_plan({**base, **problem}, direction, algo, gpu, capability, sms)


def test_python_reads_the_table():
    names = [row["name"] for row in backend.CANDIDATES]
    assert names == ["ours", "direct", "tc", "tc-small", "cudnn", "wgmma"]
    assert {row["name"]: row["code"] for row in backend.CANDIDATES} == backend.ALGOS
    assert backend.ALGOS == {"ours": 0, "direct": 1, "tc": 2, "tc-small": 3, "cudnn": 4, "wgmma": 5}
    small = next(row for row in backend.CANDIDATES if row["name"] == "tc-small")
    assert small["directions"] == ("forward", "grad_input") and small["tensor_cores"]


HOPPER_FORWARD = ("direct", "tc", "tc-small", "cudnn", "wgmma")  # compute capability 9.0


@pytest.mark.parametrize(
    ("direction", "device", "dtype", "tf32", "capability", "expected"),
    [
        ("forward", "cuda", torch.bfloat16, False, 90, HOPPER_FORWARD),
        ("forward", "cuda", torch.bfloat16, False, 80, ("direct", "tc", "tc-small", "cudnn")),
        ("grad_input", "cuda", torch.float16, False, 80, ("direct", "tc", "tc-small", "cudnn")),
        ("grad_weight", "cuda", torch.bfloat16, False, 90, ("direct", "tc", "cudnn")),
        ("forward", "cuda", torch.float32, True, 90, HOPPER_FORWARD),
        ("forward", "cuda", torch.float32, False, 90, ("direct", "cudnn")),
        ("forward", "cuda", torch.float64, True, 90, ("direct", "cudnn")),
        ("forward", "cuda", torch.bfloat16, False, 75, ("direct", "cudnn")),  # no mma.sync bf16
        ("forward", "cpu", torch.bfloat16, False, 0, ("ours", "cudnn")),
        ("grad_weight", "cpu", torch.float32, False, 0, ("ours", "cudnn")),
    ],
)
def test_candidates(direction, device, dtype, tf32, capability, expected):
    assert backend.candidates(direction, device, dtype, tf32, capability) == expected


def test_bad_direction():
    with pytest.raises(ValueError, match="direction must be one of"):
        backend.candidates("sideways", "cuda", torch.float16, False)


# ------------------------------------------------------------------------------- the plan


def test_first_layer_unfolds():
    # VGG's conv1_1, C = 3: 9·3 = 27 channels rounded to a 16-byte vector of bf16 (32).
    p = plan(c=3, h=224, w=224)
    assert p["kernel"] == "unfolded" and p["channels"] == 32 and p["filter_channels"] == 32
    assert p["copy_activations"] and p["pack_filters"]
    # float32 (tf32): 4 per vector, 27 -> 28, filter stride in 64-byte blocks of 16.
    p = plan(c=3, element_size=4)
    assert p["kernel"] == "unfolded" and p["channels"] == 28 and p["filter_channels"] == 32


@pytest.mark.parametrize(
    ("problem", "copies"),
    [
        ({}, (True, True)),  # NCHW input and weight
        ({"input_nhwc": True}, (False, True)),
        ({"input_nhwc": True, "weight_nhwc": True}, (False, False)),
        # 17 channels: padded to 24 (vectors) and the filters to 32 (k-blocks): copies anyway.
        ({"c": 17, "input_nhwc": True, "weight_nhwc": True}, (True, True)),
        ({"c": 24, "input_nhwc": True, "weight_nhwc": True}, (False, True)),
    ],
)  # fmt: skip
def test_forward_copies(problem, copies):
    p = plan(**problem)
    assert p["kernel"] == "implicit_gemm"
    assert (p["copy_activations"], p["pack_filters"]) == copies


@pytest.mark.parametrize(
    ("problem", "tiles"),
    [
        ({"n": 1, "h": 224, "w": 224, "k": 64}, "large"),  # 392 large CTAs >= 2 x 132
        ({"n": 1, "h": 14, "w": 14, "k": 512}, "small"),  # 8 CTAs
        ({"n": 32, "h": 28, "w": 28, "k": 512}, "large"),
    ],
)
def test_forward_tiles(problem, tiles):
    assert plan(**problem)["tiles"] == tiles
    assert plan(algo=2, **problem)["tiles"] == "large"  # forced
    assert plan(algo=3, **problem)["tiles"] == "small"


def test_direct_where_tensor_cores_do_not_apply():
    assert plan(tensor_core_dtype=False, element_size=4)["kernel"] == "direct"  # exact fp32
    assert plan(tensor_core_dtype=False, element_size=8)["kernel"] == "direct"  # float64
    assert plan(capability=75)["kernel"] == "direct"  # before sm_80
    assert plan(algo=1)["kernel"] == "direct"
    assert plan(algo=4)["kernel"] == "aten"
    assert plan(w=2**28)["kernel"] == "direct"  # beyond the GEMM's 32-bit offsets


def test_forced_tensor_cores_that_cannot_run_raise():
    message = r"algo = 2 \(tensor cores\) does not apply to torch\.float64"
    with pytest.raises(ValueError, match=message):
        plan(algo=2, tensor_core_dtype=False, element_size=8, dtype="torch.float64")
    with pytest.raises(ValueError, match=r"compute capability 8\.0"):
        plan(algo=3, capability=75)
    with pytest.raises(ValueError, match="must be 0, 1, 2 or 4"):
        plan("grad_weight", algo=3)  # no small tiles for grad-weight


def test_cpu_plans_and_rejects_gpu_algos():
    assert plan(gpu=False)["kernel"] == "cpu" and plan(gpu=False, algo=4)["kernel"] == "cpu"
    with pytest.raises(ValueError, match=r"= 2 \(tensor cores\) runs on CUDA tensors only"):
        plan(gpu=False, algo=2)


def test_backward_plans():
    dgrad = plan("grad_input", k=100, grad_output_nhwc=True)
    # grad_output's 100 channels need padding to 104: copied; the filters always are
    # (flipped and transposed); tiles for n·h·w pixels x C filters.
    assert dgrad["kernel"] == "implicit_gemm" and dgrad["channels"] == 104
    assert dgrad["copy_activations"] and dgrad["pack_filters"] and not dgrad["copy_mask"]
    dgrad = plan("grad_input", k=64, grad_output_nhwc=True, masked=True)
    assert not dgrad["copy_activations"] and dgrad["copy_mask"]
    wgrad = plan("grad_weight", input_nhwc=True, grad_output_nhwc=True)
    assert wgrad["kernel"] == "wgrad_gemm" and not wgrad["copy_input"]
    assert not wgrad["copy_activations"] and wgrad["tiles"] == "none"


def test_unknown_problem_field():
    with pytest.raises(ValueError, match="unknown problem field 'colour'"):
        plan(colour="blue")


# ----------------------------------------------- a call runs what its plan says (simulator)


def _ready(t):
    return t.is_contiguous(memory_format=torch.channels_last) and t.data_ptr() % 16 == 0


def _problem_of(x, w, padding, grad_output=None, relu_output=None):
    tc = x.dtype in (torch.float16, torch.bfloat16) or (
        x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    )
    n, c, h, wd = x.shape
    problem = {"n": n, "c": c, "h": h, "w": wd, "k": w.shape[0], "padding": padding,
               "element_size": x.element_size(), "tensor_core_dtype": tc,
               "input_nhwc": _ready(x), "weight_nhwc": _ready(w)}  # fmt: skip
    if grad_output is not None:
        problem["grad_output_nhwc"] = _ready(grad_output)
    if relu_output is not None:
        problem.update(masked=True, relu_output_nhwc=_ready(relu_output))
    return problem


KERNELS = {"implicit_gemm": "conv3x3_igemm_kernel", "unfolded": "conv3x3_igemm_kernel",
           "direct": "direct_conv3x3_kernel", "wgrad_gemm": "wgrad_igemm_kernel"}  # fmt: skip
TILE_CONFIGS = {"large": "TileConfig<2,", "small": "TileConfig<1,"}


CASES = [
    # (name, dtype, C, input channels_last, weight channels_last, tf32, N, H, W)
    ("first-layer", torch.bfloat16, 3, False, False, False, 2, 9, 11),
    ("nchw", torch.bfloat16, 16, False, False, False, 2, 9, 11),
    ("channels-last", torch.float16, 32, True, True, False, 2, 9, 11),
    ("channels-last-input", torch.bfloat16, 32, True, False, False, 2, 9, 11),
    ("odd-channels", torch.bfloat16, 17, True, True, False, 2, 9, 11),
    ("exact-fp32", torch.float32, 8, False, False, False, 2, 9, 11),
    ("tf32", torch.float32, 16, True, True, True, 2, 9, 11),
    ("large-tiles", torch.bfloat16, 8, True, False, False, 1, 184, 184),  # 265 large CTAs
]


@pytest.mark.sim
@pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built")
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_call_runs_its_plan(case):
    _, dtype, c, x_cl, w_cl, tf32, n, h, wd = case
    fmt = torch.channels_last
    k = 8 if h > 100 else 20
    x = torch.randn(n, c, h, wd, dtype=dtype)
    w = torch.randn(k, c, 3, 3, dtype=dtype)
    x = x.contiguous(memory_format=fmt) if x_cl else x
    w = w.contiguous(memory_format=fmt) if w_cl else w
    was = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        expected = plan(**_problem_of(x, w, 1), **H100)
        simulator.reset_launch_counts()
        with simulator.simulate_cuda(), ok.conv_backend("ours"):
            ok.conv3x3(x, w, None, 1, True)
        launches, steps = simulator.launch_counts(), simulator.host_steps()
    finally:
        torch.backends.cudnn.allow_tf32 = was
    kernel = KERNELS[expected["kernel"]]
    assert list(launches) and all(kernel in name for name in launches), (expected, launches)
    if expected["tiles"] != "none":
        config = TILE_CONFIGS[expected["tiles"]]
        assert all(config in name for name in launches), (expected, launches)
    copies = {
        "conv3x3 copy: input": expected["copy_activations"] and expected["kernel"] != "unfolded",
        "conv3x3 copy: filters": expected["pack_filters"] and expected["kernel"] != "unfolded",
        "conv3x3 copy: unfolded input and filters": expected["kernel"] == "unfolded",
    }
    assert {k for k, made in copies.items() if made} == set(steps), (expected, steps)


BACKWARD_CASES = [
    # (name, dtype, K, maps channels_last, relu): grad_output / relu_output copied or not
    ("nchw-relu", torch.bfloat16, 16, False, True),
    ("channels-last-relu", torch.bfloat16, 16, True, True),
    ("channels-last", torch.float16, 32, True, False),
    ("odd-filters", torch.bfloat16, 20, True, True),  # K = 20: padded to 24, copied
    ("exact-fp32", torch.float32, 8, False, True),
]


@pytest.mark.sim
@pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built")
@pytest.mark.parametrize("case", BACKWARD_CASES, ids=[c[0] for c in BACKWARD_CASES])
def test_a_backward_runs_its_plan(case):
    """grad-input and grad-weight share grad_output and the ReLU output as NHWC operands:
    the copies made and the kernels launched are what the two plans say."""
    _, dtype, k, cl, relu = case
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(2, 16, 9, 11, dtype=dtype).contiguous(memory_format=fmt)
    w = torch.randn(k, 16, 3, 3, dtype=dtype)
    out = ok.conv3x3(x, w, None, 1, relu)
    go = torch.randn_like(out)
    ro = out if relu else None
    problem = _problem_of(x, w, 1, go, ro)
    dgrad = plan("grad_input", **problem, **H100)
    wgrad = plan("grad_weight", **problem, **H100)
    simulator.reset_launch_counts()
    with simulator.simulate_cuda():
        torch.ops.overfeat_kernels.conv3x3_backward(go, x, w, ro, 1, [True, True, False], [0, 0])
    launches, steps = simulator.launch_counts(), simulator.host_steps()
    wgrad_kernel = {"wgrad_gemm": "wgrad_igemm_kernel", "direct": "wgrad_partial_kernel"}
    for kernel in (KERNELS[dgrad["kernel"]], wgrad_kernel[wgrad["kernel"]]):
        assert any(kernel in name for name in launches), (kernel, launches)
    if dgrad["tiles"] != "none":
        igemm = [name for name in launches if "conv3x3_igemm_kernel" in name]
        assert igemm and all(TILE_CONFIGS[dgrad["tiles"]] in name for name in igemm)
    tc = [p for p in (dgrad, wgrad) if p["kernel"] != "direct"]
    expected = set()
    if tc and tc[0]["copy_activations"]:
        expected.add("conv3x3 copy: grad_output")
    if tc and tc[0]["copy_mask"]:
        expected.add("conv3x3 copy: relu_output")
    if dgrad["kernel"] == "implicit_gemm":
        expected.add("conv3x3 copy: filters")  # flipped and transposed
    if wgrad["kernel"] == "wgrad_gemm" and wgrad["copy_input"]:
        expected.add("conv3x3 copy: input")
    assert expected == set(steps), (dgrad, wgrad, steps)
