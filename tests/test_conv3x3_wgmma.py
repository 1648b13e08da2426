"""The Hopper conv3x3 (TMA + mbarrier + wgmma, csrc/cuda/conv3x3_wgmma.cuh) in the CUDA
simulator, forward and grad-input (with the ReLU mask applied in shared memory): bf16, fp16
and tf32 against float64 references with tolerances relative to the reference's own error
in that precision; which kernel ran; split-K; schedule independence; its tile configuration
and its place in the plan.

Every run has the simulator's adversarial checks on: poisoned shared memory and buffers,
TMA boxes landing only when a wait sees their phase, wgmma accumulators unreadable until
their wait_group, the race detector.
"""

from __future__ import annotations

import random

import pytest
import torch
from samples import make_map
from test_conv3x3_tc import DTYPES, TF32, _dtype, _inputs, _name, _tf32
from tolerance import assert_matches, to64

import overfeat_kernels as ok
from overfeat_kernels import reference, simulator
from overfeat_kernels.ops._ext import _C

pytestmark = [
    pytest.mark.sim,
    pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built"),
]

WGMMA = "conv3x3_wgmma_kernel"
REDUCE = "split_reduce_kernel"
FORCE = [5, 0, 0]  # the op's algos: the Hopper kernel for the forward

# (N, C, K, H, W, padding, layout, bias, relu). Together: every C and K in
# {3, 8, 17, 64, 96, 256}, every H and W in {1, 2, 7, 13, 14, 16, 33}, padding 0 and 1,
# NCHW / channels_last / a strided view, bias and ReLU on and off; C <= 8 (tf32: C <= 4)
# takes the tap-chunk variant (C = 1, 3, 4, 5, 8 below); several pixel blocks and filter
# tiles; small maps with many channels take split-K.
CONFIGS = [
    (2, 3, 8, 7, 13, 1, "nchw", True, True),
    (1, 8, 17, 13, 7, 0, "channels_last", False, True),
    (1, 17, 64, 16, 2, 1, "channels_last", True, False),
    (1, 64, 3, 2, 16, 1, "nchw", True, True),
    (1, 96, 96, 7, 7, 0, "channels_last", True, True),
    (1, 8, 96, 33, 1, 1, "nchw", False, False),
    (1, 3, 17, 1, 33, 1, "channels_last", True, True),
    (2, 17, 8, 13, 16, 1, "strided", True, True),
    (1, 256, 17, 14, 14, 1, "channels_last", True, True),
    (1, 64, 256, 14, 13, 1, "nchw", True, False),
    (1, 96, 17, 2, 2, 1, "channels_last", True, False),
    (1, 17, 3, 33, 7, 0, "channels_last", True, True),
    (1, 3, 64, 16, 33, 1, "nchw", True, False),
    (1, 256, 256, 7, 7, 1, "strided", False, True),
    (1, 8, 8, 1, 1, 1, "channels_last", True, True),
    (1, 1, 17, 7, 9, 0, "nchw", False, True),
    (2, 5, 64, 13, 17, 1, "channels_last", True, True),
    (1, 4, 130, 9, 20, 1, "strided", True, False),
]
# Enough tiles (more than half the SMs) that no dtype splits: the plain epilogue of the
# slices path (VGG's path past the first layer) on 1-pixel-high and 1-pixel-wide maps too.
NO_SPLIT_CONFIGS = [
    (3, 17, 136, 33, 33, 1, "nchw", True, True),
    (34, 17, 256, 1, 33, 1, "channels_last", False, True),
    (20, 64, 256, 33, 1, 1, "strided", True, False),
]
# More tap-chunk shapes (C <= 4: every dtype): K 96 and 256, H and W in {1, 2, 7, 13, 14,
# 16, 33}.
TAP_CHUNK_CONFIGS = [
    (1, 3, 256, 14, 2, 1, "nchw", True, True),
    (2, 4, 96, 33, 14, 0, "channels_last", False, True),
    (1, 1, 17, 2, 16, 1, "strided", True, False),
    (2, 4, 64, 13, 1, 1, "channels_last", True, True),
    (1, 3, 96, 16, 7, 1, "nchw", False, False),
]


def _truncate_tf32(t):
    """What wgmma reads of a float32 operand: its top 19 bits (tf32, truncated)."""
    return (t.float().contiguous().view(torch.int32) & ~0x1FFF).view(torch.float32)


def _assert_forward_matches(out, x, w, b, pad, relu, dtype):
    ref64 = reference.conv3x3(to64(x), to64(w), to64(b), pad, relu)
    if dtype != TF32:
        assert_matches(out, ref64, reference.conv3x3(x, w, b, pad, relu))
        return
    # tf32: within twice the error of the float64 reference on truncated operands, plus
    # fp32 accumulation; and close to that reference itself.
    t = lambda v: to64(_truncate_tf32(v))  # noqa: E731
    ref_t = reference.conv3x3(t(x), t(w), to64(b), pad, relu)
    nan = torch.isnan(ref64)
    assert torch.equal(torch.isnan(to64(out)), nan), "NaN positions differ"
    got, ref, rt = to64(out)[~nan], ref64[~nan], ref_t[~nan]
    if ref.numel() == 0:
        return
    scale = max(1.0, ref.abs().max().item())
    ref_err = (rt - ref).abs().max().item()
    assert (got - ref).abs().max().item() <= 2 * ref_err + 1e-5 * scale
    assert (got - rt).abs().max().item() <= 2e-5 * scale


def _run(args, algos=FORCE):
    simulator.reset_launch_counts()
    with simulator.simulate_cuda():
        out = torch.ops.overfeat_kernels.conv3x3.default(*args, algos)
    return out, simulator.launch_counts()


def _slices(c, dtype, tap_chunks=True):
    """Reduction steps of the kernel: taps x 128-byte channel slices (few channels, where
    the variant applies: one step, all nine taps' 16-byte chunks)."""
    e = 4 if dtype == TF32 else 2
    if tap_chunks and c <= 16 // e:
        return 1
    cp = -(-c * e // 16) * 16 // e
    return 9 * -(-cp * e // 128)


def _expected_split(cfg, dtype):
    n, c, k, h, w, pad = cfg[:6]
    return _C.wgmma_config(n, h + 2 * pad - 2, w + 2 * pad - 2, k, _slices(c, dtype), 132)[2]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", CONFIGS + NO_SPLIT_CONFIGS + TAP_CHUNK_CONFIGS, ids=_name)
def test_forward(cfg, dtype):
    x, w, b, pad, relu = _inputs(cfg, _dtype(dtype))
    with _tf32(dtype == TF32):
        out, launches = _run((x, w, b, pad, relu))
    assert any(WGMMA in name for name in launches), launches
    assert not any("igemm" in name or "direct" in name for name in launches), launches
    split = _expected_split(cfg, dtype)
    assert any(REDUCE in name for name in launches) == (split > 1), (split, launches)
    chunks = cfg[1] <= (4 if dtype == TF32 else 8)
    kernels = [k for k in launches if WGMMA in k]
    assert all(k.split("<", 1)[1].split(",")[1].strip() == str(chunks).lower() for k in kernels)
    assert all(k.replace(" ", "").endswith(",false,false>") for k in kernels)  # kMasked, kPool
    assert out.shape == (cfg[0], cfg[2], cfg[3] + 2 * pad - 2, cfg[4] + 2 * pad - 2)
    if cfg[6] == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    _assert_forward_matches(out, x, w, b, pad, relu, dtype)


# Grad-input: the same kernel on grad_output with the filters flipped and transposed and
# padding 2 - pad, the ReLU mask (the forward's output, or any tensor standing in for it)
# applied in shared memory between TMA's landing and wgmma. A subset of the configurations
# (here K is the GEMM's channels: grad-input always reads slices), and two with enough
# tiles that no dtype splits (K = 3; H = 2 and 33, W = 33).
GRAD_CONFIGS = [CONFIGS[i] for i in (0, 1, 2, 4, 7, 8, 9, 13, 14)] + [
    (3, 136, 3, 33, 33, 1, "nchw", False, False),
    (36, 136, 17, 2, 33, 1, "strided", False, False),
]


def _grad_input_case(cfg, dtype, masked):
    x, w, _, pad, _ = _inputs(cfg, _dtype(dtype))
    n, _, k, h, wd = cfg[:5]
    shape = (n, k, h + 2 * pad - 2, wd + 2 * pad - 2)
    grad = make_map(shape, _dtype(dtype), "cpu", cfg[6])
    mask = None
    if masked:  # in the case's layout: the op copies an NCHW or strided mask for TMA
        mask = make_map(shape, _dtype(dtype), "cpu", cfg[6])
        tiny = torch.finfo(_dtype(dtype)).smallest_normal / 4
        special = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), tiny, -tiny])
        picked = special[torch.randint(0, special.numel(), shape)].to(mask.dtype)
        mask.copy_(torch.where(torch.rand(shape) < 0.3, picked, mask))
    return x, w, pad, grad, mask


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "relu_mask"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", GRAD_CONFIGS, ids=_name)
def test_grad_input(cfg, dtype, masked):
    x, w, pad, grad, mask = _grad_input_case(cfg, dtype, masked)
    simulator.reset_launch_counts()
    with _tf32(dtype == TF32), simulator.simulate_cuda():
        gi, _, _ = torch.ops.overfeat_kernels.conv3x3_backward.default(
            grad, x, w, mask, pad, [True, False, False], [5, 0]
        )
    launches = simulator.launch_counts()
    names = [k.replace(" ", "") for k in launches if WGMMA in k]
    # The last two switches: kMasked, kPool (grad-input never pools).
    assert names and all(k.endswith(f",{str(masked).lower()},false>") for k in names), launches
    split = _grad_input_units(cfg, dtype)[1]
    assert any(REDUCE in name for name in launches) == (split > 1), (split, launches)
    assert gi.shape == x.shape
    # grad-input = conv3x3(grad · (mask > 0), weight flipped and transposed, 2 - pad).
    g = grad if mask is None else torch.where(mask > 0, grad, torch.zeros((), dtype=grad.dtype))
    wt = w.flip(2, 3).transpose(0, 1).contiguous()
    _assert_forward_matches(gi, g, wt, None, 2 - pad, False, dtype)


def _grad_input_units(cfg, dtype):
    """(work units, split) of a grad-input: the GEMM's N is C, its map the input's."""
    n, c, k, h, w = cfg[:5]
    bh, bw, split = _C.wgmma_config(n, h, w, c, _slices(k, dtype, tap_chunks=False), 132)
    return n * -(-h // bh) * -(-w // bw) * -(-c // 128) * split, split


@pytest.mark.parametrize(
    ("cfg", "dtype", "masked"),
    [
        ((1, 40, 96, 9, 12, 1, "channels_last", True, True), torch.bfloat16, True),  # split-K
        ((1, 40, 96, 9, 12, 1, "nchw", True, True), torch.float16, False),
        ((70, 136, 8, 2, 33, 1, "channels_last", True, True), TF32, True),  # 140 units
    ],
    ids=["split_k_masked", "split_k_plain", "persistent_masked"],
)
def test_grad_input_schedule_independent(cfg, dtype, masked):
    x, w, pad, grad, mask = _grad_input_case(cfg, dtype, masked)

    def calls():
        return list(
            torch.ops.overfeat_kernels.conv3x3_backward.default(
                grad, x, w, mask, pad, [True, False, False], [5, 0]
            )[:1]
        )

    with _tf32(dtype == TF32):
        simulator.assert_schedule_independent(calls)


def test_the_grid_takes_split_k_and_both_variants():
    """The configurations above exercise split-K, the tap chunks and several tiles; the
    no-split ones do not split in any dtype; the grad-input grid has both."""
    splits = [_expected_split(cfg, torch.bfloat16) for cfg in CONFIGS]
    assert sum(s > 1 for s in splits) >= 3, splits
    assert any(cfg[1] < 8 for cfg in CONFIGS)
    assert all(cfg[1] <= 4 for cfg in TAP_CHUNK_CONFIGS)
    for dtype in DTYPES:
        assert all(_expected_split(cfg, dtype) == 1 for cfg in NO_SPLIT_CONFIGS)
        grad_splits = [_grad_input_units(cfg, dtype)[1] for cfg in GRAD_CONFIGS]
        assert grad_splits[-2:] == [1, 1] and max(grad_splits) > 1, grad_splits
    assert _grad_input_units((70, 136, 8, 2, 33, 1), TF32) == (140, 1)


# Forward: split-K; one part over 90 tiles (more than the SMs / 2); the tap chunks over
# 135 work units, more than the 132 SMs (persistent CTAs take a second unit).
SCHEDULE_CASES = {
    "split_k": (1, 96, 20, 7, 9, 1, "channels_last", True, True),
    "one_part": (3, 17, 136, 33, 33, 1, "channels_last", True, True),
    "tap_chunks_persistent": (3, 3, 264, 33, 33, 1, "nchw", True, True),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(SCHEDULE_CASES))
def test_schedule_independent(dtype, case):
    cfg = SCHEDULE_CASES[case]
    assert (_expected_split(cfg, dtype) > 1) == (case == "split_k")
    if case == "tap_chunks_persistent":
        bh, bw, _ = _C.wgmma_config(3, 33, 33, 264, 1, 132)
        assert 3 * -(-33 // bh) * -(-33 // bw) * 3 == 135
    x, w, b, pad, relu = _inputs(cfg, _dtype(dtype))

    def calls():
        return [torch.ops.overfeat_kernels.conv3x3.default(x, w, b, pad, relu, FORCE)]

    with _tf32(dtype == TF32):
        simulator.assert_schedule_independent(calls)


def test_nan_propagates_and_relu_keeps_it():
    x = torch.randn(1, 8, 6, 6, dtype=torch.bfloat16)
    x[0, 3, 2, 2] = float("nan")
    w = torch.randn(16, 8, 3, 3, dtype=torch.bfloat16)
    out, launches = _run((x, w, None, 1, True))
    assert any(WGMMA in name for name in launches)
    assert torch.isnan(out[0, :, 1:4, 1:4]).all()
    assert not torch.isnan(out[0, :, 0, :]).any()


def test_default_stays_on_the_mma_sync_kernel_until_measured():
    """Our heuristic ("ours") keeps the mma.sync kernel on the simulator's H100 (the Hopper
    kernel's speed is unmeasured: conv_plan.h, kOursPrefersWgmma); "auto" times both."""
    x = torch.randn(1, 16, 8, 8, dtype=torch.bfloat16)
    w = torch.randn(24, 16, 3, 3, dtype=torch.bfloat16)
    simulator.reset_launch_counts()
    with simulator.simulate_cuda():
        ok.conv3x3(x, w, None, 1, True)
    launches = simulator.launch_counts()
    assert any("igemm" in k for k in launches) and not any(WGMMA in k for k in launches)


# The tile configuration: the 128-pixel block that covers the map with the fewest tiles
# (ties: 16 wide, then 32, 8, 64, 128), split-K when the tiles fill at most half the SMs.
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((1, 224, 224, 64, 9, 132), (8, 16, 1)),  # VGG conv1_2: 14 x 28 blocks, no split
        ((1, 112, 112, 128, 18, 132), (8, 16, 1)),  # 7 x 14 blocks
        ((1, 28, 28, 512, 36, 132), (4, 32, 4)),  # 7 blocks x 4 filter tiles = 28: split 4
        ((1, 14, 14, 512, 72, 132), (8, 16, 8)),  # 2 blocks x 4 filter tiles: split 8
        ((32, 14, 14, 512, 72, 132), (8, 16, 1)),  # batch 32: 256 tiles
        ((1, 7, 7, 17, 36, 132), (8, 16, 8)),  # one tile: split 8 (36 slices: 8 parts of 5)
        ((1, 7, 7, 17, 9, 132), (8, 16, 2)),  # 9 slices: at least 4 each
        ((1, 7, 7, 17, 7, 132), (8, 16, 1)),  # under 8 slices: no split
        ((1, 1, 33, 8, 9, 132), (2, 64, 2)),  # a 1-pixel-high map: one 2 x 64 block
        ((1, 33, 1, 8, 9, 132), (16, 8, 2)),  # a 1-pixel-wide map
        ((4, 30, 30, 64, 9, 132), (8, 16, 2)),  # 4 x 2 blocks tie 8 x 1: 16 wide; 32 tiles
        ((1, 7, 7, 17, 36, 1), (8, 16, 1)),  # one SM: no split
    ],
)
def test_tile_configuration(args, expected):
    assert _C.wgmma_config(*args) == expected


# Pooling in the epilogue: blocks of whole windows over the pixels windows take (the map cut
# to multiples of the pool); 3 x 3 windows: blocks of 126 pixels (14 windows).
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((1, 224, 224, 64, 9, 132, 2), (8, 16, 1)),  # VGG conv1_2 + pool1
        ((1, 224, 224, 64, 9, 132, 3), (6, 21, 1)),  # 222 x 222: 37 x 11 blocks (21 x 6 ties)
        ((1, 14, 14, 512, 72, 132, 2), (8, 16, 8)),  # conv5_3 + pool5 at batch 1: split 8
        ((1, 13, 13, 64, 9, 132, 2), (8, 16, 2)),  # 12 x 12: 2 blocks
        ((1, 7, 7, 17, 36, 132, 3), (6, 21, 8)),  # 6 x 6: one block
        ((1, 5, 100, 8, 9, 132, 2), (4, 32, 2)),  # 4 x 100: 4 x 32 and 2 x 64 tie at 4
        ((1, 100, 5, 8, 9, 132, 3), (42, 3, 2)),  # 99 x 3: three 42 x 3 blocks
        ((1, 1, 128, 8, 9, 132, 0), (1, 128, 2)),  # unpooled: a 1 x 128 block
        ((1, 2, 128, 8, 9, 132, 2), (2, 64, 2)),  # pool 2: no 1-high block
    ],
)
def test_tile_configuration_when_pooling(args, expected):
    bh, bw, split = _C.wgmma_config(*args)
    assert (bh, bw, split) == expected
    pool = args[-1]
    if pool:
        assert bh % pool == 0 and bw % pool == 0 and bh * bw == 128 // pool**2 * pool**2


def test_tile_configuration_rejects_other_pools():
    with pytest.raises(ValueError, match="pool must be 0, 2 or 3, got 4"):
        _C.wgmma_config(1, 8, 8, 8, 9, 132, 4)


def test_plan_of_a_pooled_forward():
    # A 3 x 128 conv map: one 1 x 128 block unpooled; pooled, blocks of whole windows.
    problem = dict(n=1, c=64, h=3, w=128, k=64, element_size=2, dtype="torch.bfloat16",
                   tensor_core_dtype=True, input_nhwc=True, weight_nhwc=True)  # fmt: skip
    for pool, block in [(0, (1, 128)), (2, (2, 64)), (3, (3, 42))]:
        plan = _C.conv_plan({**problem, "fused_pool": pool}, "forward", 5, True, 90, 132)
        assert plan["kernel"] == "wgmma" and plan["wgmma_block"] == block, (pool, plan)
        assert plan["wgmma_pool"] == pool and plan["wgmma_split"] == 2
    for bad in (1, 4, -1, True):
        with pytest.raises(ValueError, match="fused_pool must be 0, 2 or 3"):
            _C.conv_plan({**problem, "fused_pool": bad}, "forward", 5, True, 90, 132)


def test_plan_of_an_offset_pooled_forward():
    # A 30 x 30 conv map: the offsets' blocks overlap, 2k - 1 pixels wider than k·b.
    problem = dict(n=1, c=64, h=32, w=32, k=64, padding=0, element_size=2,
                   dtype="torch.bfloat16", tensor_core_dtype=True, input_nhwc=True,
                   weight_nhwc=True)  # fmt: skip
    unpooled = _C.conv_plan({**problem, "fused_pool": 0}, "forward", 5, True, 90, 132)
    for pool in (2, 3):
        a, b = _C.offset_pool_block(128, pool, (30 - pool + 1) // pool, (30 - pool + 1) // pool)
        plan = _C.conv_plan({**problem, "fused_pool": pool, "fused_offsets": True}, "forward", 5,
                            True, 90, 132)  # fmt: skip
        assert plan["wgmma_block"] == (pool * (a + 1) - 1, pool * (b + 1) - 1), plan
        assert plan["wgmma_offsets"] and plan["wgmma_pool"] == pool
        assert plan["wgmma_split"] == unpooled["wgmma_split"]
    assert not unpooled["wgmma_offsets"]
    with pytest.raises(ValueError, match="offsets needs a pool"):
        _C.wgmma_config(1, 30, 30, 64, 9, 132, 0, True)
    with pytest.raises(ValueError, match="fused_offsets needs a fused_pool"):
        _C.conv_plan({**problem, "fused_offsets": True}, "forward", 5, True, 90, 132)


def test_a_pooled_call_takes_the_unpooled_split():
    """Bit-equality with the unpooled call + F.max_pool2d needs the same split-K parts,
    though the pooled call covers fewer pixels (fewer tiles)."""
    rng = random.Random(0)
    differ = 0
    for _ in range(400):
        n, h, w = rng.randint(1, 2), rng.randint(3, 80), rng.randint(3, 80)
        k, slices = rng.randint(1, 300), rng.randint(1, 80)
        plain = _C.wgmma_config(n, h, w, k, slices, 132)
        for pool in (2, 3):
            if h < pool or w < pool:
                continue
            bh, bw, split = _C.wgmma_config(n, h, w, k, slices, 132, pool)
            assert split == plain[2], (n, h, w, k, slices, pool)
            assert bh % pool == 0 and bw % pool == 0
            # What the split rule would give the pooled tiles alone: differs in some cases.
            ph, pw = h // pool * pool, w // pool * pool
            tiles = n * -(-ph // bh) * -(-pw // bw) * -(-k // 128)
            alone = 1
            if 2 * tiles <= 132 and slices >= 8:
                parts = min(132 // tiles, slices // 4, 8)
                alone = -(-slices // -(-slices // parts))
            differ += alone != split
            if h >= 2 * pool - 1 and w >= 2 * pool - 1:  # offsets: more tiles, the same split
                assert _C.wgmma_config(n, h, w, k, slices, 132, pool, True)[2] == plain[2]
    assert differ > 0


def test_plan_places_it_on_compute_capability_9_0_only():
    problem = {
        "n": 1,
        "c": 64,
        "h": 14,
        "w": 14,
        "k": 128,
        "padding": 1,
        "element_size": 2,
        "dtype": "torch.bfloat16",
        "tensor_core_dtype": True,
    }
    assert _C.conv_plan(problem, "forward", 0, True, 90, 132)["kernel"] == "implicit_gemm"
    plan = _C.conv_plan(problem, "forward", 5, True, 90, 132)
    assert plan["kernel"] == "wgmma" and plan["wgmma_block"] == (8, 16)
    assert plan["wgmma_split"] == 2  # 2 tiles; 9 slices (taps) of at least 4 each
    few = _C.conv_plan({**problem, "c": 3}, "forward", 5, True, 90, 132)
    assert few["kernel"] == "wgmma_tap_chunks" and few["channels"] == 8
    assert few["filter_channels"] == 8 and few["copy_activations"] and few["pack_filters"]
    # A channels_last input of 8 channels is read in place: the input's bytes move once.
    in_place = _C.conv_plan({**problem, "c": 8, "input_nhwc": True}, "forward", 5, True, 90, 132)
    assert in_place["kernel"] == "wgmma_tap_chunks" and not in_place["copy_activations"]
    with pytest.raises(ValueError, match=r"algo = 5 \(wgmma\) does not apply"):
        _C.conv_plan(problem, "forward", 5, True, 80, 108)
    with pytest.raises(ValueError, match=r"algo = 5 \(wgmma\) does not apply"):
        _C.conv_plan(problem, "forward", 5, True, 100, 148)
    with pytest.raises(ValueError, match=r"algo = 5 \(wgmma\) does not apply"):
        _C.conv_plan(
            {**problem, "tensor_core_dtype": False, "element_size": 4}, "forward", 5, True, 90, 132
        )
    gi = _C.conv_plan({**problem, "masked": True}, "grad_input", 5, True, 90, 132)
    assert gi["kernel"] == "wgmma" and gi["channels"] == 128 and gi["copy_mask"]
    with pytest.raises(ValueError, match="must be 0, 1, 2 or 4"):
        _C.conv_plan(problem, "grad_weight", 5, True, 90, 132)


def test_a_build_without_sm90a_neither_plans_nor_times_it():
    """A module built without 9.0a in TORCH_CUDA_ARCH_LIST has no Hopper kernel: "auto" does
    not time it, forcing it raises, our heuristic keeps the mma.sync kernel."""
    problem = {"n": 1, "c": 64, "h": 14, "w": 14, "k": 128, "padding": 1, "element_size": 2,
               "dtype": "torch.bfloat16", "tensor_core_dtype": True}  # fmt: skip
    assert "wgmma" not in _C.conv_candidates_for("forward", True, True, 90, False)
    assert "wgmma" in _C.conv_candidates_for("forward", True, True, 90, True)
    with pytest.raises(ValueError, match=r"algo = 5 \(wgmma\) does not apply"):
        _C.conv_plan(problem, "forward", 5, True, 90, 132, False)
    assert _C.conv_plan(problem, "forward", 0, True, 90, 132, False)["kernel"] == "implicit_gemm"
    assert _C.build_has_sm90a  # this build (the simulator stands for an H100 with them)


# More work units than the simulator's 132 SMs: CTAs of the persistent grid take a second
# (and third) unit, carrying their ring's slot counter and phases, the warpgroup barriers'
# phases and the accumulators' reset into the next tile while the producer already loads it.
@pytest.mark.parametrize(
    ("what", "cfg", "dtype"),
    [
        ("slices", (4, 16, 264, 48, 48, 1, "channels_last", True, True), torch.bfloat16),
        ("tap_chunks", (2, 3, 264, 64, 64, 1, "nchw", True, True), torch.float16),
        ("tap_chunks", (2, 4, 264, 62, 66, 0, "channels_last", False, True), TF32),
        ("grad_input", (3, 264, 16, 48, 48, 1, "channels_last", True, True), torch.float16),
    ],
)
def test_persistent_ctas_take_several_units(what, cfg, dtype):
    n, c, k, h, w, pad = cfg[:6]
    gemm_n, oh, ow = (c, h, w) if what == "grad_input" else (k, h + 2 * pad - 2, w + 2 * pad - 2)
    slices = _slices(k, dtype, False) if what == "grad_input" else _slices(c, dtype)
    bh, bw, split = _C.wgmma_config(n, oh, ow, gemm_n, slices, 132)
    units = n * -(-oh // bh) * -(-ow // bw) * -(-gemm_n // 128) * split
    assert units > 132 and split == 1, units
    if what == "grad_input":
        x, wt, pad, grad, mask = _grad_input_case(cfg, dtype, True)
        simulator.reset_launch_counts()
        with _tf32(dtype == TF32), simulator.simulate_cuda():
            gi, _, _ = torch.ops.overfeat_kernels.conv3x3_backward.default(
                grad, x, wt, mask, pad, [True, False, False], [5, 0]
            )
        launches = simulator.launch_counts()
        names = [k.replace(" ", "") for k in launches if WGMMA in k]
        assert names and all(k.endswith(",true,false>") for k in names), launches
        assert not any(REDUCE in k for k in launches), launches
        g = torch.where(mask > 0, grad, torch.zeros((), dtype=grad.dtype))
        _assert_forward_matches(gi, g, wt.flip(2, 3).transpose(0, 1).contiguous(), None,
                                2 - pad, False, dtype)  # fmt: skip
        return
    x, wt, b, pad, relu = _inputs(cfg, _dtype(dtype))
    with _tf32(dtype == TF32):
        out, launches = _run((x, wt, b, pad, relu))
    chunks = what == "tap_chunks"
    kernels = [k for k in launches if WGMMA in k]
    second = [k.split("<", 1)[1].split(",")[1].strip() for k in kernels]
    assert kernels and all(a == str(chunks).lower() for a in second), launches
    _assert_forward_matches(out, x, wt, b, pad, relu, dtype)


def test_candidates_on_hopper():
    from overfeat_kernels import backend

    assert backend.ALGOS["wgmma"] == 5
    assert "wgmma" in backend.candidates("forward", "cuda", torch.bfloat16, False, capability=90)
    assert "wgmma" not in backend.candidates("forward", "cuda", torch.bfloat16, False, 80)
    assert "wgmma" not in backend.candidates("forward", "cuda", torch.bfloat16, False, 100)
    assert "wgmma" not in backend.candidates("forward", "cuda", torch.float32, False, 90)
    assert "wgmma" in backend.candidates("grad_input", "cuda", torch.bfloat16, False, 90)
    assert "wgmma" not in backend.candidates("grad_weight", "cuda", torch.bfloat16, False, 90)
