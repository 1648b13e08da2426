"""Op benchmarks against cuDNN and the pure-PyTorch composition (SPEC "Measuring speed").

    python benchmarks/bench_ops.py [--quick] [--out FILE.json] [--sections conv,pool,tail,fused]

GPU only. CUDA events, warm-up first, median of many repetitions, inputs rotated so that
L2 does not hold them. The device's ceilings (copy bandwidth, bf16 / tf32 matrix product)
are measured in the same run. Prints a table and writes JSON (default:
benchmarks/results/bench_ops_<device>.json).

Conv rows: ours (conv3x3 with fused bias + ReLU) against cuDNN through F.conv2d
(cudnn.benchmark=True, the faster of NCHW / channels_last, same dtype and TF32 setting):
ratio against the conv alone and against eager conv + bias + ReLU; TFLOP/s. "ours" is the
tensor-core implicit GEMM for bf16 / fp16 / fp32-tf32 (csrc/cuda/conv3x3_igemm.cuh) and the
direct kernel for exact fp32; its NCHW times include the explicit conversion of the input
to padded NHWC that the implicit GEMM makes (also for C % 8 != 0, e.g. C = 3), so that
cost is counted, not hidden.
On compute capability 9.0 the rows also time the Hopper kernel ("wgmma": TMA + wgmma,
csrc/cuda/conv3x3_wgmma.cuh) and the mma.sync kernel ("tc") forced, channels_last, forward (TFLOP/s,
ratios against cuDNN and eager) and grad-input alone (against cuDNN's grad-input alone).
Conv forward times are taken twice: each call alone (events around it, which counts the
host time the GPU waits for) and queued (bursts of back-to-back calls, where that host time
overlaps the GPU's work, as in a model).
Pool / interleave rows: achieved GB/s (input read once + output written once) against the
measured copy bandwidth, and the ratio against overfeat_kernels.reference.
Fused rows: conv + bias + ReLU + max-pool, VGG-16's five layers that a pool follows and
OverFeat accurate's last conv with its offset pooling: ours with the pool in the conv's
call (``conv3x3(..., pool=k)``), ours unfused (conv3x3, then the pooling op), eager cuDNN
conv + bias + ReLU + F.max_pool2d (offset_max_pool2d for OverFeat) and torch.compile of
that (not with --quick); channels_last, the bytes each moves at the least (``fused_bytes``)
and the achieved TB/s. On compute capability 9.0 (sm_90a build) also the Hopper kernel
forced with the pool in its epilogue ("fused_wgmma"). Offset pooling in the epilogue
computes overlapping pixel blocks (1.3-1.6x the conv's arithmetic): the OverFeat row says
whether the bytes it saves pay for that.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import overfeat_kernels as ok
from overfeat_kernels import reference

# (name, C_in, C_out, H, W): the 13 conv layers of VGG-16 at 224x224.
VGG16_LAYERS = [
    ("vgg16.conv1_1", 3, 64, 224, 224), ("vgg16.conv1_2", 64, 64, 224, 224),
    ("vgg16.conv2_1", 64, 128, 112, 112), ("vgg16.conv2_2", 128, 128, 112, 112),
    ("vgg16.conv3_1", 128, 256, 56, 56), ("vgg16.conv3_2", 256, 256, 56, 56),
    ("vgg16.conv3_3", 256, 256, 56, 56), ("vgg16.conv4_1", 256, 512, 28, 28),
    ("vgg16.conv4_2", 512, 512, 28, 28), ("vgg16.conv4_3", 512, 512, 28, 28),
    ("vgg16.conv5_1", 512, 512, 14, 14), ("vgg16.conv5_2", 512, 512, 14, 14),
    ("vgg16.conv5_3", 512, 512, 14, 14),
]  # fmt: skip

# OverFeat accurate, Table 5 input sizes; layer 1: 7x7/2 conv, 3x3 pool; layer 2: 7x7 conv,
# 2x2 pool; layers 3-6: 3x3 convs (512, 512, 1024, 1024 maps) at the layer-5 resolution.
OVERFEAT_SCALES = [(245, 245), (281, 317), (317, 389), (389, 461), (425, 497), (461, 569)]


def overfeat_accurate_layer5(h: int, w: int) -> tuple[int, int]:
    def side(s):
        s = (s - 7) // 2 + 1  # layer 1 conv
        s = s // 3  # 3x3 pool
        s = s - 6  # layer 2 conv, 7x7 valid
        return s // 2  # 2x2 pool; layers 3-6 keep the size (3x3, padding 1)

    return side(h), side(w)


_L5 = overfeat_accurate_layer5(*OVERFEAT_SCALES[-1])
OVERFEAT_LAYERS = [
    ("overfeat_acc.layer3", 256, 512, *_L5), ("overfeat_acc.layer4", 512, 512, *_L5),
    ("overfeat_acc.layer5", 512, 1024, *_L5), ("overfeat_acc.layer6", 1024, 1024, *_L5),
]  # fmt: skip

DTYPE_CONFIGS = {  # name: (dtype, allow_tf32)
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
    "fp32-tf32": (torch.float32, True),
    "fp32": (torch.float32, False),
}
FORMATS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


# ---------------------------------------------------------------------------------------
# Timing


BUDGET_MS = 300.0  # timed milliseconds per measurement (--budget-ms)


def l2_bytes() -> int:
    props = torch.cuda.get_device_properties(0)
    return int(getattr(props, "L2_cache_size", 50 * 2**20))


def rotation(make: Callable[[], tuple], bytes_per_set: int) -> list[tuple]:
    """Enough input sets that cycling through them overflows L2 (at most 8)."""
    count = max(1, min(8, math.ceil(3 * l2_bytes() / max(bytes_per_set, 1))))
    return [make() for _ in range(count)]


def bench(
    fn: Callable[..., object], sets: list[tuple], min_reps: int = 20, budget_ms: float | None = None
) -> float:
    """Median ms of fn(*set) over rotating sets; CUDA events around each call."""
    for s in sets[:2]:
        fn(*s)  # warm-up: cuDNN autotuning, allocator, module load
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(*sets[0])
    end.record()
    end.synchronize()
    first = max(start.elapsed_time(end), 1e-3)
    budget_ms = BUDGET_MS if budget_ms is None else budget_ms
    reps = int(min(200, max(min_reps, budget_ms / first)))
    times = []
    for i in range(reps):
        s = sets[i % len(sets)]
        start.record()
        fn(*s)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_queued(
    fn: Callable[..., object],
    sets: list[tuple],
    budget_ms: float | None = None,
    rounds: int = 5,
    event: Callable[..., object] | None = None,
) -> float:
    """Median ms per call of fn(*set) over `rounds` bursts of back-to-back calls, one pair of
    CUDA events around each burst. Nothing waits between calls, so the host's per-call work
    (Python, dispatch, launches) overlaps the GPU's, as when a model issues its layers;
    `bench` times each call alone, which also counts the host time the GPU waits for."""
    event = event or functools.partial(torch.cuda.Event, enable_timing=True)
    for s in sets[:2]:
        fn(*s)
    torch.cuda.synchronize()
    start, end = event(), event()

    def burst(calls: int) -> float:
        start.record()
        for i in range(calls):
            fn(*sets[i % len(sets)])
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls

    first = max(burst(len(sets)), 1e-3)
    budget_ms = BUDGET_MS if budget_ms is None else budget_ms
    calls = int(min(200, max(len(sets), budget_ms / rounds / first)))
    return statistics.median(burst(calls) for _ in range(rounds))


# ---------------------------------------------------------------------------------------
# Sections


def ceilings(quick: bool) -> dict[str, float]:
    n = (1 << 28) if not quick else (1 << 26)  # bytes per buffer
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    t = bench(lambda a, b: b.copy_(a), [(src, dst)], min_reps=10)
    copy_gbs = 2 * n / t / 1e6
    out = {"copy_GBps": copy_gbs}
    m = 8192 if not quick else 4096
    for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(m, m, device="cuda", dtype=dtype)
        b = torch.randn(m, m, device="cuda", dtype=dtype)
        t = bench(torch.mm, [(a, b)], min_reps=10)
        out[f"mm_{name}_TFLOPs"] = 2 * m**3 / t / 1e9
    torch.backends.cuda.matmul.allow_tf32 = False
    return out


def conv_inputs(n, c, k, h, w, dtype, fmt) -> tuple:
    """input, weight, bias, grad_output: fresh random values, maps in memory format `fmt`."""
    return (
        torch.randn(n, c, h, w, device="cuda", dtype=dtype).contiguous(memory_format=fmt),
        torch.randn(k, c, 3, 3, device="cuda", dtype=dtype) / (9 * c) ** 0.5,
        torch.randn(k, device="cuda", dtype=dtype),
        torch.randn(n, k, h, w, device="cuda", dtype=dtype).contiguous(memory_format=fmt),
    )


def _ours_fwd(x, wt, b, g):
    return ok.conv3x3(x, wt, b, 1, True)


def _cudnn_fwd(x, wt, b, g):
    return F.conv2d(x, wt, None, padding=1)


def _auto_fwd(x, wt, b, g):
    with ok.conv_backend("auto"):
        return ok.conv3x3(x, wt, b, 1, True)


def _hopper_kernel_available() -> bool:
    """Compute capability 9.0 and a build with the sm_90a kernels: "wgmma" can be forced."""
    from overfeat_kernels.ops._ext import _C

    return torch.cuda.get_device_capability() == (9, 0) and bool(_C.build_has_sm90a)


def _forced_fwd(algo: str):
    """The forward with one candidate forced (`algos[0]`): "wgmma" (Hopper) or "tc" (mma.sync)."""
    code = ok.backend.ALGOS[algo]

    def fn(x, wt, b, g):
        return torch.ops.overfeat_kernels.conv3x3.default(x, wt, b, 1, True, [code, 0, 0])

    return fn


def _forced_dgrad(algo: str | None):
    """Grad-input alone: one of our candidates forced ("wgmma", "tc"), or cuDNN's (None)."""
    if algo is None:

        def cudnn(x, wt, b, g):
            return torch.ops.aten.convolution_backward(
                g, x, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]
            )

        return cudnn
    code = ok.backend.ALGOS[algo]

    def fn(x, wt, b, g):
        return torch.ops.overfeat_kernels.conv3x3_backward(
            g, x, wt, None, 1, [True, False, False], [code, 0]
        )

    return fn


def _eager_fwd(x, wt, b, g):
    return F.relu(F.conv2d(x, wt, b, padding=1))


def _ours_bwd(x, wt, b, g):  # grad_input + grad_weight
    return torch.ops.overfeat_kernels.conv3x3_backward(g, x, wt, None, 1, [True, True, False])


def _cudnn_bwd(x, wt, b, g):
    return torch.ops.aten.convolution_backward(
        g, x, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False]
    )


def _ours_wgrad(x, wt, b, g):  # grad_weight alone: the figure that decides its kernel
    return torch.ops.overfeat_kernels.conv3x3_backward(g, x, wt, None, 1, [False, True, False])


def _cudnn_wgrad(x, wt, b, g):
    return torch.ops.aten.convolution_backward(
        g, x, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False]
    )


def fastest(times: dict[str, float], key: str) -> tuple[float, str] | None:
    """(time, format) of the faster memory format measured for `key`, or None."""
    found = [(times[f"{key}_{f}"], f) for f in FORMATS if f"{key}_{f}" in times]
    return min(found) if found else None


def conv_rows(layers, batches, dtype_names, quick, rows: list | None = None) -> list[dict]:
    torch.backends.cudnn.benchmark = True
    fns = {"ours": _ours_fwd, "cudnn": _cudnn_fwd, "eager": _eager_fwd, "auto": _auto_fwd}
    bwd_fns = {
        "ours_bwd": _ours_bwd,
        "cudnn_bwd": _cudnn_bwd,
        "ours_wgrad": _ours_wgrad,
        "cudnn_wgrad": _cudnn_wgrad,
    }
    # On compute capability 9.0: the Hopper kernel and the mma.sync one, each forced.
    hopper = _hopper_kernel_available()
    rows = [] if rows is None else rows  # the caller's list keeps rows if interrupted
    for dname in dtype_names:
        dtype, tf32 = DTYPE_CONFIGS[dname]
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        elem = torch.finfo(dtype).bits // 8
        for name, c, k, h, w in layers:
            for n in batches:
                flops = 2 * n * k * c * 9 * h * w
                bytes_per_set = elem * (n * c * h * w + 2 * n * k * h * w + k * c * 9)
                t = {}
                for fname, fmt in FORMATS.items():
                    make = functools.partial(conv_inputs, n, c, k, h, w, dtype, fmt)
                    sets = rotation(make, bytes_per_set)
                    todo = dict(fns, **(bwd_fns if not quick or fname == "nhwc" else {}))
                    # The forced forwards in both formats (NCHW: with the conversion copy
                    # to the kernels' NHWC operand); grad-input in channels_last only.
                    if hopper and (dtype != torch.float32 or tf32):
                        todo.update(wgmma=_forced_fwd("wgmma"), tc=_forced_fwd("tc"))
                        if fname == "nhwc":
                            todo.update(
                                wgmma_dgrad=_forced_dgrad("wgmma"),
                                tc_dgrad=_forced_dgrad("tc"),
                                cudnn_dgrad=_forced_dgrad(None),
                            )
                    for key, fn in todo.items():
                        t[f"{key}_{fname}"] = bench(fn, sets)
                    for key, fn in fns.items():
                        t[f"{key}_queued_{fname}"] = bench_queued(fn, sets)
                    del sets
                row = {"layer": name, "N": n, "C": c, "K": k, "H": h, "W": w, "dtype": dname}
                row["times_ms"] = t
                row["ours_ms"], row["ours_format"] = fastest(t, "ours")
                row["cudnn_ms"], row["cudnn_format"] = fastest(t, "cudnn")
                row["eager_ms"], _ = fastest(t, "eager")
                row["auto_ms"], _ = fastest(t, "auto")
                row["auto_ratio_vs_cudnn"] = row["cudnn_ms"] / row["auto_ms"]
                row["ratio_vs_cudnn"] = row["cudnn_ms"] / row["ours_ms"]
                row["ratio_vs_eager"] = row["eager_ms"] / row["ours_ms"]
                row["queued_ms"] = {key: fastest(t, f"{key}_queued")[0] for key in fns}
                q = row["queued_ms"]
                row["queued_ratio_vs_cudnn"] = q["cudnn"] / q["ours"]
                row["queued_auto_ratio_vs_cudnn"] = q["cudnn"] / q["auto"]
                row["queued_ratio_vs_eager"] = q["eager"] / q["ours"]
                row["ours_TFLOPs"] = flops / row["ours_ms"] / 1e9
                row["cudnn_TFLOPs"] = flops / row["cudnn_ms"] / 1e9
                for key in ("wgmma", "tc"):
                    if fastest(t, key):
                        row[f"{key}_ms"], row[f"{key}_format"] = fastest(t, key)
                        row[f"{key}_TFLOPs"] = flops / row[f"{key}_ms"] / 1e9
                        row[f"{key}_ratio_vs_cudnn"] = row["cudnn_ms"] / row[f"{key}_ms"]
                        row[f"{key}_ratio_vs_eager"] = row["eager_ms"] / row[f"{key}_ms"]
                    if fastest(t, f"{key}_dgrad"):
                        row[f"{key}_dgrad_ms"], _ = fastest(t, f"{key}_dgrad")
                        row["cudnn_dgrad_ms"], _ = fastest(t, "cudnn_dgrad")
                        row[f"{key}_dgrad_ratio_vs_cudnn"] = (
                            row["cudnn_dgrad_ms"] / row[f"{key}_dgrad_ms"]
                        )
                if fastest(t, "ours_bwd"):
                    row["ours_bwd_ms"], _ = fastest(t, "ours_bwd")
                    row["cudnn_bwd_ms"], _ = fastest(t, "cudnn_bwd")
                    row["bwd_ratio_vs_cudnn"] = row["cudnn_bwd_ms"] / row["ours_bwd_ms"]
                    row["ours_wgrad_ms"], _ = fastest(t, "ours_wgrad")
                    row["cudnn_wgrad_ms"], _ = fastest(t, "cudnn_wgrad")
                    row["wgrad_ratio_vs_cudnn"] = row["cudnn_wgrad_ms"] / row["ours_wgrad_ms"]
                rows.append(row)
                print_conv_row(row)
    torch.backends.cudnn.allow_tf32 = True
    return rows


def pool_inputs(shape, dtype, fmt, k) -> tuple:
    """input, its offset pooling, a gradient for that."""
    x = torch.randn(*shape, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    p = ok.offset_max_pool2d(x, k)
    return x, p, torch.randn_like(p)


def pool_ops(k: int, h: int, w: int, fmt, in_bytes: int, out_bytes: int) -> dict:
    """op name: (ours, pure-PyTorch reference, bytes moved); each is called as f(x, p, g)."""
    hk, wk = h // k * k, w // k * k

    def ref_backward(x, p, g):
        x = x.detach().requires_grad_()
        return torch.autograd.grad(reference.offset_max_pool2d(x, k), x, g)[0]

    return {
        "offset_max_pool2d": (
            lambda x, p, g: ok.offset_max_pool2d(x, k),
            lambda x, p, g: reference.offset_max_pool2d(x, k),
            in_bytes + out_bytes,
        ),
        # reads grad_output and input, writes grad_input
        "offset_max_pool2d_backward": (
            lambda x, p, g: torch.ops.overfeat_kernels.offset_max_pool2d_backward(g, x, k),
            ref_backward,
            2 * in_bytes + out_bytes,
        ),
        "interleave": (
            lambda x, p, g: ok.interleave(p, k),
            lambda x, p, g: reference.interleave(p, k).contiguous(memory_format=fmt),
            2 * out_bytes,
        ),
        "deinterleave": (
            lambda x, p, g: ok.deinterleave(x[:, :, :hk, :wk], k),
            lambda x, p, g: reference.deinterleave(x[:, :, :hk, :wk], k).contiguous(
                memory_format=fmt
            ),
            2 * in_bytes * hk * wk // (h * w),
        ),
    }


def pool_rows(copy_gbs: float, quick: bool, rows: list | None = None) -> list[dict]:
    shapes = [
        ("overfeat.scale6", 32, 1024, 35, 44),
        ("vgg16.pool5", 32, 512, 14, 14),
        ("vgg16.pool5.b1", 1, 512, 14, 14),  # small: does the work fill the SMs?
    ]
    dtypes = [torch.bfloat16] if quick else [torch.bfloat16, torch.float32]
    rows = [] if rows is None else rows  # the caller's list keeps rows if interrupted
    for label, n, c, h, w in shapes:
        for dtype in dtypes:
            elem = torch.finfo(dtype).bits // 8
            for fname, fmt in FORMATS.items():
                for k in (2, 3):
                    ho, wo = (h - k + 1) // k, (w - k + 1) // k
                    in_bytes = n * c * h * w * elem
                    out_bytes = n * k * k * c * ho * wo * elem
                    make = functools.partial(pool_inputs, (n, c, h, w), dtype, fmt, k)
                    sets = rotation(make, 2 * (in_bytes + out_bytes))
                    for op, (ours, ref, nbytes) in pool_ops(
                        k, h, w, fmt, in_bytes, out_bytes
                    ).items():
                        t_ours, t_ref = bench(ours, sets), bench(ref, sets)
                        gbs = nbytes / t_ours / 1e6
                        row = {
                            "op": op, "shape": label, "N": n, "C": c, "H": h, "W": w, "k": k,
                            "dtype": str(dtype).removeprefix("torch."), "format": fname,
                            "ours_ms": t_ours, "reference_ms": t_ref, "GBps": gbs,
                            "fraction_of_copy": gbs / copy_gbs,
                            "ratio_vs_reference": t_ref / t_ours,
                        }  # fmt: skip
                        rows.append(row)
                        print(
                            f"  {op:28} {label:16} {row['dtype']:8} {fname} k={k}  "
                            f"{t_ours:8.3f} ms {gbs:7.0f} GB/s ({100 * gbs / copy_gbs:5.1f}% of "
                            f"copy)  x{row['ratio_vs_reference']:.2f} vs reference"
                        )
                    del sets
    return rows


# (name, C_in, C_out, H, W, pool, offsets): the conv layers that a max-pool follows.
FUSED_LAYERS = [
    ("vgg16.conv1_2+pool1", 64, 64, 224, 224, 2, False),
    ("vgg16.conv2_2+pool2", 128, 128, 112, 112, 2, False),
    ("vgg16.conv3_3+pool3", 256, 256, 56, 56, 2, False),
    ("vgg16.conv4_3+pool4", 512, 512, 28, 28, 2, False),
    ("vgg16.conv5_3+pool5", 512, 512, 14, 14, 2, False),
    ("overfeat_acc.layer6+offsets", 1024, 1024, *_L5, 3, True),
]


def fused_bytes(n, c, k, h, w, pool, offsets, elem) -> dict[str, int]:
    """Bytes moved at the least (input and filters read once, outputs written once):
    "fused" writes only the pooled map; "unfused" writes the conv's map, reads it back and
    writes the pooled one."""
    if offsets:
        pooled = n * pool * pool * k * ((h - pool + 1) // pool) * ((w - pool + 1) // pool)
    else:
        pooled = n * k * (h // pool) * (w // pool)
    common = elem * (n * c * h * w + k * c * 9 + pooled)
    return {"fused": common, "unfused": common + 2 * elem * n * k * h * w}


def fused_rows(batches: list[int], quick: bool, rows: list | None = None) -> list[dict]:
    torch.backends.cudnn.benchmark = True
    dtype, elem = torch.bfloat16, 2
    rows = [] if rows is None else rows  # the caller's list keeps rows if interrupted
    for name, c, k, h, w, pool, offsets in FUSED_LAYERS:
        pooling = (
            (lambda y, pool=pool: ok.offset_max_pool2d(y, pool))
            if offsets
            else (lambda y, pool=pool: F.max_pool2d(y, pool))
        )

        def eager(x, wt, b, g, pooling=pooling):
            return pooling(F.relu(F.conv2d(x, wt, b, padding=1)))

        fns = {
            "fused": lambda x, wt, b, g, pool=pool, offsets=offsets: ok.conv3x3(
                x, wt, b, 1, True, pool=pool, pool_offsets=offsets
            ),
            "unfused": lambda x, wt, b, g, pooling=pooling: pooling(ok.conv3x3(x, wt, b, 1, True)),
            "eager": eager,
        }
        if not quick:
            fns["compiled"] = torch.compile(eager)
        if _hopper_kernel_available():
            # The Hopper kernel forced, pooling in its epilogue ("fused" is the default plan).
            code = ok.backend.ALGOS["wgmma"]
            fns["fused_wgmma"] = lambda x, wt, b, g, pool=pool, offsets=offsets, code=code: (
                torch.ops.overfeat_kernels.conv3x3.default(
                    x, wt, b, 1, True, [code, 0, 0], pool, offsets
                )
            )
        for n in batches:
            nbytes = fused_bytes(n, c, k, h, w, pool, offsets, elem)
            make = functools.partial(conv_inputs, n, c, k, h, w, dtype, torch.channels_last)
            sets = rotation(make, nbytes["unfused"])
            with torch.no_grad():
                t = {key: bench(fn, sets) for key, fn in fns.items()}
            del sets
            flops = 2 * n * k * c * 9 * h * w
            vs = {f"ratio_vs_{key}": t[key] / t["fused"] for key in t if key != "fused"}
            row = {"layer": name, "N": n, "C": c, "K": k, "H": h, "W": w, "pool": pool,
                   "offsets": offsets, "dtype": "bf16", "format": "nhwc",
                   "times_ms": t, "bytes": nbytes,
                   "fused_TBps": nbytes["fused"] / t["fused"] / 1e9,
                   "fused_TFLOPs": flops / t["fused"] / 1e9,
                   **vs}  # fmt: skip
            rows.append(row)
            others = "  ".join(f"{key[9:]} x{v:.2f}" for key, v in vs.items())
            print(
                f"  {name:28} N={n:<3} fused {t['fused']:8.3f} ms ({row['fused_TFLOPs']:6.1f} "
                f"TF/s, {row['fused_TBps']:.2f} TB/s)  {others}"
            )
    return rows


def tail_rows(quick: bool, rows: list | None = None) -> list[dict]:
    """OverFeat accurate's fine-stride tail at the six scales (batch 1, bf16)."""
    dtype = torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(0)
    w6 = torch.randn(4096, 1024, 5, 5, device="cuda", dtype=dtype, generator=g) / 160
    w7 = torch.randn(4096, 4096, 1, 1, device="cuda", dtype=dtype, generator=g) / 64
    w8 = torch.randn(1000, 4096, 1, 1, device="cuda", dtype=dtype, generator=g) / 64

    def classifier(t, dilation=1):
        t = F.relu(F.conv2d(t, w6, dilation=dilation))
        return F.conv2d(F.relu(F.conv2d(t, w7)), w8)

    rows = [] if rows is None else rows  # the caller's list keeps rows if interrupted
    scales = OVERFEAT_SCALES[-2:] if quick else OVERFEAT_SCALES
    for hin, win in scales:
        h, w = overfeat_accurate_layer5(hin, win)
        sets = rotation(
            lambda h=h, w=w: (
                torch.randn(1, 1024, h, w, device="cuda", dtype=dtype).contiguous(
                    memory_format=torch.channels_last
                ),
            ),
            1024 * h * w * 2,
        )
        t_ours = bench(lambda x: ok.interleave(classifier(ok.offset_max_pool2d(x, 3)), 3), sets)
        t_dil = bench(lambda x: classifier(F.max_pool2d(x, 3, stride=1), dilation=3), sets)
        t_ref = bench(
            lambda x: reference.interleave(classifier(reference.offset_max_pool2d(x, 3)), 3), sets
        )
        row = {
            "scale": f"{hin}x{win}",
            "layer5": f"{h}x{w}",
            "ours_ms": t_ours,
            "dilated_ms": t_dil,
            "pytorch_ms": t_ref,
            "ratio_vs_dilated": t_dil / t_ours,
            "ratio_vs_pytorch": t_ref / t_ours,
        }
        rows.append(row)
        print(
            f"  tail {row['scale']:9} layer5 {row['layer5']:6} ours {t_ours:7.3f} ms  dilated "
            f"{t_dil:7.3f} ms  pytorch {t_ref:7.3f} ms"
        )
    return rows


def print_conv_row(r: dict) -> None:
    bwd = (
        f"  bwd {r['ours_bwd_ms']:8.3f}/{r['cudnn_bwd_ms']:8.3f} ms x{r['bwd_ratio_vs_cudnn']:.2f}"
        if "ours_bwd_ms" in r
        else ""
    )
    print(
        f"  {r['layer']:22} N={r['N']:<3} {r['dtype']:9} ours {r['ours_ms']:8.3f} ms "
        f"({r['ours_format']}, {r['ours_TFLOPs']:6.1f} TF/s)  cuDNN {r['cudnn_ms']:8.3f} ms "
        f"x{r['ratio_vs_cudnn']:.2f}  eager+bias+relu x{r['ratio_vs_eager']:.2f}  auto "
        f"x{r['auto_ratio_vs_cudnn']:.2f} vs cuDNN{bwd}"
        + "".join(
            f"  {key} {r[f'{key}_TFLOPs']:6.1f} TF/s x{r[f'{key}_ratio_vs_cudnn']:.2f}"
            for key in ("wgmma", "tc")
            if f"{key}_ms" in r
        )
    )
    if "queued_ms" in r:
        print(
            f"  {'':22} queued: ours x{r['queued_ratio_vs_cudnn']:.2f} vs cuDNN, "
            f"x{r['queued_ratio_vs_eager']:.2f} vs eager, auto x"
            f"{r['queued_auto_ratio_vs_cudnn']:.2f} vs cuDNN"
        )


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def summarize_conv(result: dict) -> None:
    """Adds the VGG-16 geomeans per dtype (over the rows measured: `rows` says how many of
    the 13 layers x batches) and auto's picks to `result`, and prints them."""
    conv = result["conv"]
    summary = {}
    for dname in DTYPE_CONFIGS:
        vgg = [r for r in conv if r["dtype"] == dname and r["layer"].startswith("vgg16")]
        if not vgg:
            continue
        s = summary[dname] = {
            "rows": len(vgg),
            "geomean_ratio_vs_cudnn": geomean([r["ratio_vs_cudnn"] for r in vgg]),
            "geomean_ratio_vs_eager": geomean([r["ratio_vs_eager"] for r in vgg]),
            "geomean_bwd_ratio_vs_cudnn": geomean(
                [r["bwd_ratio_vs_cudnn"] for r in vgg if "bwd_ratio_vs_cudnn" in r]
            ),
            "geomean_wgrad_ratio_vs_cudnn": geomean(
                [r["wgrad_ratio_vs_cudnn"] for r in vgg if "wgrad_ratio_vs_cudnn" in r]
            ),
            "geomean_auto_ratio_vs_cudnn": geomean([r["auto_ratio_vs_cudnn"] for r in vgg]),
        }
        for key in ("wgmma", "tc"):
            for base in ("cudnn", "eager"):
                if all(f"{key}_ms" in r for r in vgg):
                    s[f"geomean_{key}_ratio_vs_{base}"] = geomean(
                        [r[f"{key}_ratio_vs_{base}"] for r in vgg]
                    )
            if all(f"{key}_dgrad_ms" in r for r in vgg):
                s[f"geomean_{key}_dgrad_ratio_vs_cudnn"] = geomean(
                    [r[f"{key}_dgrad_ratio_vs_cudnn"] for r in vgg]
                )
        for key in ("ratio_vs_cudnn", "ratio_vs_eager", "auto_ratio_vs_cudnn"):
            s[f"geomean_queued_{key}"] = geomean([r[f"queued_{key}"] for r in vgg])
    result["conv_summary_vgg16"] = summary
    result["conv_choices"] = ok.conv_choices()
    wins = choice_counts(result["conv_choices"])
    result["conv_choice_counts"] = wins
    for direction, counts in wins.items():
        picked = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
        print(f"  auto's picks, {direction}: {picked}")
    for dname, s in summary.items():
        line = (
            f"  VGG-16 {dname} ({s['rows']} rows): geomean x{s['geomean_ratio_vs_cudnn']:.2f} vs "
            f"cuDNN conv, x{s['geomean_ratio_vs_eager']:.2f} vs eager conv+bias+relu, backward "
            f"x{s['geomean_bwd_ratio_vs_cudnn']:.2f} vs cuDNN; queued: x"
            f"{s['geomean_queued_ratio_vs_cudnn']:.2f} vs cuDNN, auto x"
            f"{s['geomean_queued_auto_ratio_vs_cudnn']:.2f} vs cuDNN"
        )
        if "geomean_wgmma_ratio_vs_cudnn" in s:
            line += f"; wgmma x{s['geomean_wgmma_ratio_vs_cudnn']:.2f} vs cuDNN"
        print(line)


def environment() -> dict[str, str]:
    return {
        "device": torch.cuda.get_device_name(0),
        "capability": "{}.{}".format(*torch.cuda.get_device_capability(0)),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "cudnn": str(torch.backends.cudnn.version()),
        "python": platform.python_version(),
        "overfeat_kernels": ok.__version__,
    }


def write_results(result: dict, name: str, out: Path | None) -> Path:
    """Writes the JSON, by default to results/<name>_<device>.json beside this file."""
    slug = re.sub(r"[^a-z0-9]+", "-", result["environment"]["device"].lower()).strip("-")
    out = out or Path(__file__).parent / "results" / f"{name}_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return out


def choice_counts(choices: dict[str, dict]) -> dict[str, dict[str, int]]:
    """How often "auto" picked each candidate, per direction (forward, grad_input, ...)."""
    counts: dict[str, dict[str, int]] = {}
    for entry in choices.values():
        for direction, name in entry["choice"].items():
            per = counts.setdefault(direction, {})
            per[name] = per.get(name, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a subset, under a minute")
    parser.add_argument(
        "--sections",
        default="conv,pool,tail,fused",
        help="comma-separated: conv, pool, tail, fused (default: all)",
    )
    parser.add_argument("--dtypes", default=None, help="conv dtypes, e.g. bf16,fp32-tf32")
    parser.add_argument("--batches", default=None, help="conv batch sizes, e.g. 1,8,32")
    parser.add_argument(
        "--budget-ms", type=float, default=None, help="timed milliseconds per measurement"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    if args.budget_ms is not None:
        global BUDGET_MS
        BUDGET_MS = args.budget_ms
    if not torch.cuda.is_available():
        print(
            "bench_ops: needs a CUDA GPU (SPEC: speed is measured on a GPU only)", file=sys.stderr
        )
        return 2
    # "ours" rows time our kernels; the "auto" column times the backend choice.
    ok.set_conv_backend("ours")
    env = environment()
    print("bench_ops on " + ", ".join(f"{k} {v}" for k, v in env.items()))
    result: dict[str, object] = {"environment": env, "quick": args.quick}
    ceil = ceilings(args.quick)
    result["ceilings"] = ceil
    print("  ceilings: " + ", ".join(f"{k} {v:.0f}" for k, v in ceil.items()))
    sections = set(args.sections.split(","))
    # Each section appends to its list in `result` row by row: a run cut short (Ctrl-C, or
    # `timeout --signal=INT` in a GPU lease) still writes every row it measured.
    try:
        if "conv" in sections:
            conv = result.setdefault("conv", [])
            if args.quick:
                layers = [VGG16_LAYERS[1], VGG16_LAYERS[5], VGG16_LAYERS[10], OVERFEAT_LAYERS[2]]
                conv_rows(layers, [8], ["bf16"], quick=True, rows=conv)
            else:
                dtypes = args.dtypes.split(",") if args.dtypes else list(DTYPE_CONFIGS)
                batches = [int(b) for b in args.batches.split(",")] if args.batches else [1, 8, 32]
                conv_rows(VGG16_LAYERS + OVERFEAT_LAYERS, batches, dtypes, False, rows=conv)
            summarize_conv(result)
            write_results(result, "bench_ops", args.out)  # kept if a later section fails
        if "pool" in sections:
            pool_rows(ceil["copy_GBps"], args.quick, rows=result.setdefault("pool", []))
        if "tail" in sections:
            tail_rows(args.quick, rows=result.setdefault("tail", []))
        if "fused" in sections:
            batches = [int(b) for b in args.batches.split(",")] if args.batches else [8, 32]
            fused_rows(batches, args.quick, rows=result.setdefault("fused", []))
    except KeyboardInterrupt:
        result["interrupted"] = True
        print("bench_ops: interrupted; writing the rows measured so far", file=sys.stderr)
        if result.get("conv") and "conv_summary_vgg16" not in result:
            summarize_conv(result)  # over the rows measured: see "interrupted"
        write_results(result, "bench_ops", args.out)
        return 130
    write_results(result, "bench_ops", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
