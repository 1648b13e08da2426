"""The tensor-core conv3x3 (implicit GEMM, csrc/cuda/conv3x3_igemm.cuh) in the CUDA
simulator: forward and grad-input for bf16, fp16 and tf32 against float64 references,
with tolerances relative to the reference's own error in that precision; which kernel
ran; schedule independence; the tile heuristic.

Every run has the simulator's adversarial checks on (poisoned shared memory and buffers,
cp.async landing only at wait_group, barrier and warp-collective checks).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from samples import make_map
from tolerance import assert_matches, to64

import overfeat_kernels as ok
from overfeat_kernels import reference, simulator

pytestmark = [
    pytest.mark.sim,
    pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built"),
]

TF32 = "tf32"  # float32 with torch.backends.cudnn.allow_tf32 = True
DTYPES = [torch.bfloat16, torch.float16, TF32]
IGEMM = "conv3x3_igemm_kernel"
DIRECT = "direct_conv3x3_kernel"

# (N, C, K, H, W, padding, layout, bias, relu). Together: every C and K in
# {3, 8, 17, 64, 96}, every H and W in {1, 2, 7, 13, 16, 33} with padding 1 and (where
# H, W >= 3) padding 0, NCHW / channels_last / a strided view, bias and ReLU on and off,
# C and K that are not multiples of the 8-channel vector, several CTAs in M and in N.
CONFIGS = [
    (2, 3, 8, 7, 13, 1, "nchw", True, True),
    (1, 8, 17, 13, 7, 0, "channels_last", False, True),
    (1, 17, 64, 16, 2, 1, "channels_last", True, False),
    (1, 64, 3, 2, 16, 1, "nchw", True, True),
    (1, 96, 96, 7, 7, 0, "channels_last", True, True),
    (1, 8, 96, 33, 1, 1, "nchw", False, False),
    (1, 3, 17, 1, 33, 1, "channels_last", True, True),
    (2, 17, 8, 13, 16, 1, "strided", True, True),
    (1, 64, 64, 16, 13, 0, "nchw", False, True),
    (1, 96, 17, 2, 2, 1, "channels_last", True, False),
    (1, 17, 3, 33, 7, 0, "channels_last", True, True),
    (1, 8, 3, 7, 16, 0, "nchw", True, False),
    (1, 3, 8, 13, 33, 0, "strided", False, True),
    (1, 8, 8, 1, 1, 1, "channels_last", True, True),
    (1, 3, 64, 16, 33, 1, "nchw", True, False),
]


def _name(cfg):
    n, c, k, h, w, pad, layout, bias, relu = cfg
    return f"n{n}c{c}k{k}_{h}x{w}p{pad}_{layout}{'_bias' if bias else ''}{'_relu' if relu else ''}"


def _dtype(d):
    return torch.float32 if d == TF32 else d


def _round_tf32(t):
    """cvt.rna.tf32.f32 on a float32 tensor: nearest, ties away from zero (finite values)."""
    bits = t.float().contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def _inputs(cfg, dtype, requires_grad=False):
    n, c, k, h, w, pad, layout, bias, relu = cfg
    x = make_map((n, c, h, w), dtype, "cpu", layout, requires_grad)
    wt = (torch.randn(k, c, 3, 3, dtype=torch.float64) / (3 * c) ** 0.5).to(dtype)
    b = torch.randn(k, dtype=torch.float64).to(dtype) if bias else None
    if requires_grad:
        wt.requires_grad_()
    return x, wt, b, pad, relu


class _tf32:
    def __init__(self, on):
        self.on = on

    def __enter__(self):
        self.was = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = self.on

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32 = self.was


def _assert_tf32_matches(ours, ref64, ref_tf32):
    """tf32: within twice the error of the float64 reference on tf32-rounded operands,
    plus float32 accumulation; and close to that rounded reference itself."""
    nan = torch.isnan(ref64)
    assert torch.equal(torch.isnan(to64(ours)), nan), "NaN positions differ"
    got, ref, rt = to64(ours)[~nan], ref64[~nan], ref_tf32[~nan]
    if ref.numel() == 0:
        return
    scale = max(1.0, ref.abs().max().item())
    ref_err = (rt - ref).abs().max().item()
    err = (got - ref).abs().max().item()
    assert err <= 2 * ref_err + 1e-5 * scale, (err, ref_err)
    # Operands rounded as cvt.rna rounds them (not truncated): the rest is fp32 summation.
    assert (got - rt).abs().max().item() <= 2e-5 * scale


def _assert_forward_matches(out, x, w, b, pad, relu, dtype):
    """`out` (on the CPU) against float64 references of the CPU inputs."""
    ref64 = reference.conv3x3(to64(x), to64(w), to64(b), pad, relu)
    if dtype == TF32:
        r = lambda t: None if t is None else to64(_round_tf32(t))  # noqa: E731
        _assert_tf32_matches(out, ref64, reference.conv3x3(r(x), r(w), to64(b), pad, relu))
    else:
        assert_matches(out, ref64, reference.conv3x3(x, w, b, pad, relu))


def _assert_backward_matches(
    out, grads, leaves, grad, pad, relu, dtype, *, gi_tf32=True, gw_tf32=True
):
    """Gradients `grads` (on the CPU) of the CPU `leaves` (input, weight[, bias]) for
    `grad` (of `out`, our forward's output) against float64 references, masked by our own
    output's ReLU (a pixel whose value is within rounding of 0 may fall either side: use
    the mask the kernel used). For TF32: gi_tf32 / gw_tf32 say whether grad-input /
    grad-weight ran on tensor cores (operands rounded to tf32) or exactly."""
    x, w = leaves[0], leaves[1]
    b = leaves[2] if len(leaves) > 2 else None
    mask = (to64(out) > 0) if relu else None
    ref_leaves = [to64(t).requires_grad_() for t in leaves]
    g64 = to64(grad) if mask is None else to64(grad) * mask
    pre = F.conv2d(
        ref_leaves[0], ref_leaves[1], ref_leaves[2] if b is not None else None, padding=pad
    )
    ref64 = torch.autograd.grad(pre, ref_leaves, g64)
    if dtype == TF32:
        r = lambda t: to64(_round_tf32(t.detach()))  # noqa: E731
        # grad-input = conv(grad_output, flipped filters), grad-weight = the correlation of
        # grad_output with the input: both operands rounded to tf32 on tensor cores.
        if gi_tf32:
            ref_gi = torch.nn.grad.conv2d_input(x.shape, r(w), r(g64.float()), padding=pad)
            _assert_tf32_matches(grads[0], ref64[0], ref_gi)
        else:
            assert_matches(grads[0], ref64[0])
        if gw_tf32:
            ref_gw = torch.nn.grad.conv2d_weight(r(x), w.shape, r(g64.float()), padding=pad)
            _assert_tf32_matches(grads[1], ref64[1], ref_gw)
        else:
            assert_matches(grads[1], ref64[1])
        for ours, r64 in zip(grads[2:], ref64[2:], strict=True):
            assert_matches(ours, r64)  # grad-bias: the exact direct kernel
    else:
        lp = [t.detach().clone().requires_grad_() for t in leaves]
        pre_lp = F.conv2d(lp[0], lp[1], lp[2] if b is not None else None, padding=pad)
        g_lp = grad if mask is None else grad * mask.to(grad.dtype)
        ref_lp = torch.autograd.grad(pre_lp, lp, g_lp)
        for ours, r64, rlp in zip(grads, ref64, ref_lp, strict=True):
            assert ours.shape == r64.shape
            assert_matches(ours, r64, rlp, factor=4)


def _conv(x, w, b, pad, relu, algos=None):
    """conv3x3 through the public function, or with the op's `algos` forced."""
    if algos is None:
        return ok.conv3x3(x, w, b, pad, relu)
    return torch.ops.overfeat_kernels.conv3x3.default(x, w, b, pad, relu, algos)


def _run_forward(args, algos=None):
    simulator.reset_launch_counts()
    with simulator.simulate_cuda():
        out = _conv(*args, algos)
    return out, simulator.launch_counts()


# The op's algos: 2 = tensor cores with large tiles, for the forward and grad-input.
LARGE_TILES = [2, 2, 0]


@pytest.fixture(params=["auto", "large"])
def tiles(request):
    """The heuristic's tile choice (small for these shapes), or the large tiles forced."""
    return request.param


def _tile_algos(tiles):
    return LARGE_TILES if tiles == "large" else None


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", CONFIGS, ids=_name)
def test_forward(cfg, dtype, tiles):
    x, w, b, pad, relu = _inputs(cfg, _dtype(dtype))
    with _tf32(dtype == TF32):
        out, launches = _run_forward((x, w, b, pad, relu), _tile_algos(tiles))
    assert any(IGEMM in name for name in launches), launches
    assert not any(DIRECT in name for name in launches), launches
    if tiles == "large":
        assert all("TileConfig<2, 2," in name for name in launches), launches
    assert out.shape == (cfg[0], cfg[2], cfg[3] + 2 * pad - 2, cfg[4] + 2 * pad - 2)
    expect_cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if expect_cl:
        assert out.is_contiguous(memory_format=torch.channels_last)
    _assert_forward_matches(out, x, w, b, pad, relu, dtype)


# Gradients: grad-input runs on the tensor-core kernel (flipped, transposed filters,
# grad_output masked by the ReLU); grad-weight too for bf16 / fp16 (its own GEMM, below),
# the exact direct kernel for tf32; grad-bias on the direct kernel. A subset of the forward
# configurations, with ReLU on in most.
GRAD_CONFIGS = [CONFIGS[i] for i in (0, 1, 3, 4, 6, 7, 10, 13)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", GRAD_CONFIGS, ids=_name)
def test_backward(cfg, dtype, tiles):
    x, w, b, pad, relu = _inputs(cfg, _dtype(dtype), requires_grad=True)
    if b is not None:
        b.requires_grad_()
    leaves = [t for t in (x, w, b) if t is not None]
    simulator.reset_launch_counts()
    with _tf32(dtype == TF32), simulator.simulate_cuda():
        out = _conv(x, w, b, pad, relu, _tile_algos(tiles))
        grad = torch.randn(out.shape, dtype=torch.float64).to(out.dtype)
        grads = torch.autograd.grad(out, leaves, grad)
    launches = simulator.launch_counts()
    assert sum(n for k, n in launches.items() if IGEMM in k) == 2, launches  # fwd + dgrad
    if tiles == "large":
        assert all("TileConfig<1," not in k for k in launches), launches
    assert not any(DIRECT in k for k in launches), launches

    _assert_backward_matches(out, grads, leaves, grad, pad, relu, dtype)


# The ReLU mask of the backward, which the tensor-core kernels apply as grad_output lands
# in shared memory (grad-input and grad-weight): any relu_output counts,
# not only a forward's, and exactly its elements > 0 select. Negatives, ±0, NaN and -inf
# drop out; +inf and subnormal positives stay. grad_output and relu_output in the same or
# different layouts (in place, or each copied to NHWC).
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "layouts", [("nchw", "nchw"), ("channels_last", "channels_last"), ("strided", "channels_last")]
)
def test_relu_mask_applied_on_load(dtype, layouts):
    dt = _dtype(dtype)
    g_layout, r_layout = layouts
    x, w, b, pad, _ = _inputs((2, 17, 24, 9, 11, 1, "channels_last", True, True), dt)
    shape = (2, 24, 9, 11)
    grad = make_map(shape, dt, "cpu", g_layout)
    relu_out = make_map(shape, dt, "cpu", r_layout)
    tiny = torch.finfo(dt).smallest_normal / 4
    special = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), tiny, -tiny])
    picked = special[torch.randint(0, special.numel(), shape)].to(dt)
    relu_out.copy_(torch.where(torch.rand(shape) < 0.3, picked, relu_out))
    simulator.reset_launch_counts()
    with _tf32(dtype == TF32), simulator.simulate_cuda():
        grads = torch.ops.overfeat_kernels.conv3x3_backward(
            grad, x, w, relu_out, pad, [True, True, True], [2, 2]
        )
    names = [k.replace(" ", "") for k in simulator.launch_counts()]
    # The igemm kernel's last two switches are kMasked and kPool; wgrad's last is kMasked.
    assert any(IGEMM in k and k.endswith(",true,false>") for k in names), names
    assert any("wgrad_igemm_kernel" in k and k.endswith(",true>") for k in names), names
    # relu_out stands in for the forward's output: its > 0 is the mask.
    _assert_backward_matches(relu_out, list(grads), [x, w, b], grad, pad, True, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, TF32], ids=str)
def test_schedule_independent(dtype, tiles):
    cfg = (2, 17, 20, 9, 11, 1, "channels_last", True, True)
    x, w, b, pad, relu = _inputs(cfg, _dtype(dtype), requires_grad=True)

    def calls():
        out = _conv(x, w, b, pad, relu, _tile_algos(tiles))
        (gx,) = torch.autograd.grad(out, (x,), torch.ones_like(out))
        return [out, gx]

    with _tf32(dtype == TF32):
        simulator.assert_schedule_independent(calls)


def test_nan_propagates_and_relu_keeps_it():
    x = torch.randn(1, 8, 6, 6, dtype=torch.bfloat16)
    x[0, 3, 2, 2] = float("nan")
    w = torch.randn(16, 8, 3, 3, dtype=torch.bfloat16)
    with simulator.simulate_cuda():
        out = ok.conv3x3(x, w, None, 1, True)
    assert torch.isnan(out[0, :, 1:4, 1:4]).all()
    assert not torch.isnan(out[0, :, 0, :]).any()


def test_float64_and_exact_float32_stay_on_the_direct_kernel():
    for dtype, tf32 in [(torch.float64, True), (torch.float32, False)]:
        x = torch.randn(1, 8, 5, 5, dtype=dtype)
        w = torch.randn(8, 8, 3, 3, dtype=dtype)
        with _tf32(tf32):
            _, launches = _run_forward((x, w, None, 1, False))
        assert any(DIRECT in k for k in launches) and not any(IGEMM in k for k in launches)


# The tile heuristic: the large tile (128 x 128; tf32 128 x 64) when it gives at least two
# CTAs per SM, else the small 64 x 64 tile (VGG's 14 x 14 and 28 x 28 layers at batch 1).
@pytest.mark.parametrize(
    ("pixels", "filters", "element_bytes", "sms", "choice"),
    [
        (224 * 224, 64, 2, 132, 0),  # VGG conv1, batch 1: 392 CTAs
        (14 * 14, 512, 2, 132, 1),  # VGG conv5, batch 1: 8 CTAs
        (28 * 28, 512, 2, 132, 1),  # VGG conv4, batch 1: 28 CTAs
        (112 * 112, 128, 2, 132, 1),  # VGG conv2, batch 1: 98 CTAs
        (32 * 28 * 28, 512, 2, 132, 0),  # batch 32
        (128 * 264, 128, 2, 132, 0),  # exactly 2 per SM
        (128 * 264 - 128, 128, 2, 132, 1),  # one CTA short
        (128 * 132, 256, 2, 132, 0),  # 2 per SM through N
        (128 * 132, 128, 2, 132, 1),
        (128 * 132, 64, 4, 132, 1),  # tf32: 128 x 64 tiles
        (128 * 132, 65, 4, 132, 0),
        (1, 1, 2, 1, 1),
        (256, 64, 2, 1, 0),
    ],
)
def test_tile_heuristic(pixels, filters, element_bytes, sms, choice):
    tiles = torch.ops.overfeat_kernels_simtest.conv_tiles
    assert tiles(pixels, filters, element_bytes, sms) == choice


@pytest.mark.parametrize(
    ("dtype", "algos", "message"),
    [
        (torch.bfloat16, [6, 0, 0], r"algos\[0\] \(forward\) must be 0, 1, 2, 3, 4 or 5"),
        (torch.bfloat16, [0, 6, 0], r"algos\[1\] \(grad-input\) must be 0, 1, 2, 3, 4 or 5"),
        (torch.bfloat16, [0, 0, 3], r"algos\[2\] \(grad-weight\) must be 0, 1, 2 or 4"),
        (torch.bfloat16, [0, 0], "algos must have 3 entries"),
        (torch.float64, [2, 0, 0], r"algos\[0\] \(forward\) = 2 \(tensor cores\) does not apply"),
        (torch.float32, [3, 0, 0], "does not apply to torch.float32"),  # TF32 off
    ],
)
def test_forced_algos_are_checked(dtype, algos, message):
    x = torch.randn(1, 8, 5, 5, dtype=dtype)
    with pytest.raises(ValueError, match=message):
        _run_forward((x, torch.randn(8, 8, 3, 3, dtype=dtype), None, 1, False), algos)


# Exact float32 (TF32 off) and float64 grad-weight have no tensor-core kernel.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_forced_grad_weight_algo_is_checked(dtype):
    x = torch.randn(1, 8, 5, 5, dtype=dtype)
    w = torch.randn(8, 8, 3, 3, dtype=dtype)
    g = torch.randn(1, 8, 5, 5, dtype=dtype)
    with (
        _tf32(False),
        simulator.simulate_cuda(),
        pytest.raises(ValueError, match=r"algos\[1\] \(grad-weight\)"),
    ):
        torch.ops.overfeat_kernels.conv3x3_backward(g, x, w, None, 1, [False, True, False], [0, 2])


def test_tile_heuristic_picks_the_launched_kernel():
    # 184 x 184 pixels, 8 filters: 265 large CTAs >= 2 x 132: the large tiles; 13 x 13:
    # the small ones.
    for hw, cfg in [(184, "TileConfig<2, 2, 64, 3>"), (13, "TileConfig<1, 2, 32, 3>")]:
        x = make_map((1, 8, hw, hw), torch.bfloat16, "cpu", "channels_last")
        w = torch.randn(8, 8, 3, 3, dtype=torch.bfloat16)
        _, launches = _run_forward((x, w, None, 1, False))
        assert any(IGEMM in k and cfg in k for k in launches), launches


# Weights in channels_last memory (what model.to(memory_format=torch.channels_last) gives):
# with C a multiple of the k-block (32 bf16 / 16 tf32 channels) the kernel reads them in place
# as [K][3][3][C]; else (bf16 here) it copies them.
@pytest.mark.parametrize("dtype", [torch.bfloat16, TF32], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_channels_last_weight(dtype, layout):
    cfg = (2, 16, 24, 9, 10, 1, layout, True, True)
    x, w, b, pad, relu = _inputs(cfg, _dtype(dtype))
    w = w.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w.requires_grad_()
    simulator.reset_launch_counts()
    with _tf32(dtype == TF32), simulator.simulate_cuda():
        out = ok.conv3x3(x, w, b, pad, relu)
        grad = torch.randn(out.shape, dtype=torch.float64).to(out.dtype)
        gx, gw = torch.autograd.grad(out, (x, w), grad)
    assert sum(n for k, n in simulator.launch_counts().items() if IGEMM in k) == 2
    ref_w = w.detach().contiguous()
    _assert_forward_matches(out, x.detach(), ref_w, b, pad, relu, dtype)
    # The bias does not change these gradients once the ReLU mask (ours) is fixed.
    _assert_backward_matches(out, [gx, gw], [x.detach(), ref_w], grad, pad, relu, dtype)


# Grad-weight on tensor cores (bf16 / fp16 / tf32): a GEMM over the output pixels split
# into slices summed in order. Several filter and channel tiles, tails in K and C,
# padding 0 and 1, ReLU masks, several pixel slices (the first case: 32 blocks of 64
# pixels (tf32: 64 of 32), 4 slices).
WGRAD_CONFIGS = [
    (2, 17, 72, 33, 31, 1, "channels_last", True, True),
    (1, 64, 64, 20, 20, 0, "nchw", False, True),
    (3, 8, 3, 9, 40, 1, "strided", True, False),
    (1, 96, 130, 12, 12, 1, "channels_last", True, True),
    # Maps smaller than a 64-pixel block: one block step crosses several images.
    (40, 8, 16, 2, 3, 1, "channels_last", True, True),
    (70, 3, 8, 1, 1, 1, "nchw", False, False),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", WGRAD_CONFIGS, ids=_name)
def test_grad_weight_tensor_cores(cfg, dtype):
    dt = _dtype(dtype)
    x, w, b, pad, relu = _inputs(cfg, dt)
    w.requires_grad_()
    simulator.reset_launch_counts()
    with _tf32(dtype == TF32), simulator.simulate_cuda():
        out = ok.conv3x3(x, w, b, pad, relu)
        grad = torch.randn(out.shape, dtype=torch.float64).to(dt)
        (gw,) = torch.autograd.grad(out, (w,), grad)
    launches = simulator.launch_counts()
    assert any("wgrad_igemm_kernel" in k for k in launches), launches
    assert not any("wgrad_partial_kernel" in k for k in launches), launches
    mask = (to64(out) > 0) if relu else torch.ones(out.shape, dtype=torch.bool)
    x64, w64 = to64(x), to64(w).requires_grad_()
    g64 = to64(grad) * mask
    (ref64,) = torch.autograd.grad(F.conv2d(x64, w64, padding=pad), (w64,), g64)
    if dtype == TF32:
        r = lambda t: to64(_round_tf32(t))  # noqa: E731
        ref_tf32 = torch.nn.grad.conv2d_weight(r(x), w.shape, r(g64.float()), padding=pad)
        _assert_tf32_matches(gw, ref64, ref_tf32)
        return
    wl = w.detach().clone().requires_grad_()
    (ref_lp,) = torch.autograd.grad(
        F.conv2d(x.detach(), wl, padding=pad), (wl,), grad * mask.to(dt)
    )
    assert_matches(gw, ref64, ref_lp, factor=4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, TF32], ids=str)
def test_grad_weight_schedule_independent(dtype):
    x, w, b, pad, relu = _inputs(WGRAD_CONFIGS[0], _dtype(dtype))
    w.requires_grad_()

    def calls():
        with _tf32(dtype == TF32):
            out = ok.conv3x3(x, w, b, pad, relu)
            return list(torch.autograd.grad(out, (w,), torch.ones_like(out)))

    simulator.assert_schedule_independent(calls)


# The backend's candidates (overfeat_kernels.backend.candidates), each forced through the
# op's algos: every one of them computes conv3x3 and its gradients, and runs the kernel it
# names ("cudnn" runs PyTorch's convolution, here ATen's CPU one, none of our kernels).
CANDIDATE_KERNELS = {
    "forward": {
        "direct": DIRECT, "tc": "TileConfig<2,", "tc-small": "TileConfig<1,",
        "wgmma": "conv3x3_wgmma_kernel",
    },
    "grad_input": {
        "direct": DIRECT, "tc": "TileConfig<2,", "tc-small": "TileConfig<1,",
        "wgmma": "conv3x3_wgmma_kernel",
    },
    "grad_weight": {"direct": "wgrad_partial_kernel", "tc": "wgrad_igemm_kernel"},
}
# Names that mark each direction's kernels at all (to check "cudnn" ran none of them).
DIRECTION_KERNELS = {
    "forward": (DIRECT, IGEMM, "conv3x3_wgmma_kernel"),
    "grad_input": (DIRECT, IGEMM, "conv3x3_wgmma_kernel"),
    "grad_weight": ("wgrad_partial_kernel", "wgrad_igemm_kernel"),
}


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("direction", ["forward", "grad_input", "grad_weight"])
def test_every_backend_candidate_computes_conv3x3(direction, dtype):
    from overfeat_kernels import backend

    cfg = (2, 17, 24, 9, 11, 1, "channels_last", True, True)
    x, w, b, pad, relu = _inputs(cfg, _dtype(dtype))
    names = backend.candidates(direction, "cuda", _dtype(dtype), dtype == TF32)
    tc = dtype not in (torch.float32, torch.float64)
    tiles = (["tc"] if direction == "grad_weight" else ["tc", "tc-small"]) if tc else []
    hopper = ("wgmma",) if tc and direction != "grad_weight" else ()  # the simulator's H100
    assert names == ("direct", *tiles, "cudnn", *hopper)
    ops = torch.ops.overfeat_kernels
    for name in names:
        algo = backend.ALGOS[name]
        with _tf32(dtype == TF32), simulator.simulate_cuda():
            simulator.reset_launch_counts()
            out = ops.conv3x3.default(
                x, w, b, pad, relu, [algo if direction == "forward" else 0, 0, 0]
            )
            if direction != "forward":
                grad = torch.randn(out.shape, dtype=torch.float64).to(out.dtype)
                algos = [algo, 0] if direction == "grad_input" else [0, algo]
                simulator.reset_launch_counts()
                gi, gw, _ = ops.conv3x3_backward.default(
                    grad, x, w, out, pad, [True, True, False], algos
                )
            launches = simulator.launch_counts()
        marker = CANDIDATE_KERNELS[direction].get(name)
        if marker is None:  # cudnn
            assert not any(m in k for k in launches for m in DIRECTION_KERNELS[direction]), launches
        else:
            assert any(marker in k for k in launches), (name, launches)
        # Which rounding to expect: tf32 only where tensor cores computed it (the other
        # gradient of a backward call runs by default: on tensor cores).
        on_tc = name in ("tc", "tc-small")
        if name == "wgmma":  # the Hopper kernel: tf32 operands truncated (grad-input's is the
            # forward kernel on the masked grad_output, flipped filters, padding 2 - pad)
            from test_conv3x3_wgmma import _assert_forward_matches as wgmma_matches

            if direction == "forward":
                wgmma_matches(out, x, w, b, pad, relu, dtype)
            else:
                g = torch.where(out > 0, grad, torch.zeros((), dtype=grad.dtype))
                wt = w.flip(2, 3).transpose(0, 1).contiguous()
                wgmma_matches(gi, g, wt, None, 2 - pad, False, dtype)
        elif direction == "forward":
            check = torch.float32 if dtype == TF32 and not on_tc else dtype
            _assert_forward_matches(out, x, w, b, pad, relu, check)
        else:
            _assert_backward_matches(
                out, [gi, gw], [x, w], grad, pad, relu, dtype,
                gi_tf32=on_tc or direction != "grad_input",
                gw_tf32=on_tc or direction != "grad_weight",
            )


# Few input channels (C below one 16-byte vector: 7 for bf16 / fp16, 3 for tf32): the
# forward runs as a 1 x 1 implicit GEMM (kTaps = 1) over the input unfolded to 9·C channels.
# Odd maps, padding 0 and 1, 1 x 1 maps with padding, K tails and several N tiles, several
# M tiles, every layout, both tile configurations.
UNFOLDED_CONFIGS = [
    (2, 3, 64, 13, 17, 1, "channels_last", True, True),
    (1, 1, 17, 7, 9, 0, "nchw", False, True),
    (3, 2, 70, 9, 5, 1, "strided", True, False),
    (1, 3, 8, 1, 1, 1, "nchw", True, True),
    (1, 3, 130, 33, 7, 0, "channels_last", False, False),
]
UNFOLDED_BF16_ONLY = [
    (1, 5, 24, 11, 6, 1, "nchw", True, True),
    (2, 7, 9, 6, 13, 0, "channels_last", True, True),
]


@pytest.mark.parametrize("algos", [None, [2, 0, 0], [3, 0, 0]], ids=["auto", "large", "small"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", UNFOLDED_CONFIGS + UNFOLDED_BF16_ONLY, ids=_name)
def test_few_channels_unfolded_forward(cfg, dtype, algos):
    if cfg in UNFOLDED_BF16_ONLY and dtype == TF32:
        pytest.skip("C >= 4 fills a tf32 vector: the 9-tap path")
    x, w, b, pad, relu = _inputs(cfg, _dtype(dtype))
    with _tf32(dtype == TF32):
        out, launches = _run_forward((x, w, b, pad, relu), algos)
    unfolded = [k for k in launches if IGEMM in k and "3>, 1, " in k]
    assert unfolded and len(launches) == len(unfolded), launches
    if algos is not None:
        tile = "TileConfig<2," if algos[0] == 2 else "TileConfig<1,"
        assert all(tile in k for k in unfolded), launches
    assert out.shape == (cfg[0], cfg[2], cfg[3] + 2 * pad - 2, cfg[4] + 2 * pad - 2)
    if cfg[6] == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    _assert_forward_matches(out, x, w, b, pad, relu, dtype)


def test_few_channels_gradients_and_schedule():
    """The first layer's gradients (grad-input on the 9-tap kernel, grad-weight of C = 3)
    after an unfolded forward, and the unfolded forward's schedule independence."""
    cfg = (2, 3, 24, 9, 11, 1, "channels_last", True, True)
    x, w, b, pad, relu = _inputs(cfg, torch.bfloat16, requires_grad=True)
    leaves = [x, w, b.requires_grad_()]
    with simulator.simulate_cuda():
        out = ok.conv3x3(x, w, b, pad, relu)
        grad = torch.randn(out.shape, dtype=torch.float64).to(out.dtype)
        grads = torch.autograd.grad(out, leaves, grad)
    _assert_backward_matches(out, grads, leaves, grad, pad, relu, torch.bfloat16)
    simulator.assert_schedule_independent(
        lambda: [ok.conv3x3(x.detach(), w.detach(), b, pad, relu)]
    )
