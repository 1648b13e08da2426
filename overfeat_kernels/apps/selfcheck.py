"""The self-check: every op and layer on random data, its agreement with the pure-PyTorch
reference and its time against the PyTorch equivalent (and, for the memory-bound ops,
against a copy of their input), on the GPU when there is one."""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F

from .. import ops
from ..nn import Conv3x3, Interleave, OffsetMaxPool2d
from ..ops import _ext, reference, simulator
from .timing import cpu_timer, device_description, median_ms


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def _time_ms(fn, dev: torch.device, reps: int) -> float:
    """Median milliseconds: CUDA events on a GPU; on the CPU torch.utils.benchmark's
    blocked_autorange (blocks of calls long enough for the clock, median of the blocks)."""
    if dev.type != "cpu":
        return median_ms(fn, dev, reps=reps)
    fn()  # warm-up
    return cpu_timer(fn).blocked_autorange(min_run_time=0.02 * reps).median * 1e3


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.double().cpu(), ref.double().cpu()
    return ((ours - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def run(
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    batch: int = 2,
    size: int = 56,
    channels: int = 64,
    reps: int = 10,
) -> list[dict[str, object]]:
    """Runs the demo and returns its table rows (also printed)."""
    _ext.require()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dev, dtype)

    x = randn(batch, channels, size, size)
    w = randn(channels, channels, 3, 3) / (9 * channels) ** 0.5
    b = randn(channels)
    x64, w64, b64 = x.double().cpu(), w.double().cpu(), b.double().cpu()
    rows: list[dict[str, object]] = []

    # float32 convolutions on CUDA (and in the simulator) use TF32 tensor cores when
    # torch.backends.cudnn.allow_tf32 is True, as F.conv2d does: 10-bit mantissas.
    tf32 = (
        dtype == torch.float32
        and torch.backends.cudnn.allow_tf32
        and (dev.type == "cuda" or simulator.enabled())
    )
    tolerance = 2e-2 if dtype != torch.float32 else (2e-3 if tf32 else 1e-5)

    def row(name, ours_fn, torch_fn, ref_value, exact=False, copy_of=None):
        out = ours_fn()
        err = _rel_err(out, ref_value)
        ok_ = err == 0 if exact else err < tolerance
        t_ours = _time_ms(ours_fn, dev, reps)
        t_torch = _time_ms(torch_fn, dev, reps)
        r = {
            "op": name,
            "rel_error": err,
            "agrees": ok_,
            "ours_ms": t_ours,
            "pytorch_ms": t_torch,
            "speedup": t_torch / t_ours,
        }
        if copy_of is not None:  # memory-bound op: its limit is a copy of its input
            r["copy_ms"] = _time_ms(copy_of.clone, dev, reps)
            r["vs_copy"] = t_ours / r["copy_ms"]
        rows.append(r)

    # conv3x3 + bias + ReLU, forward and backward.
    row(
        "conv3x3+bias+relu",
        lambda: ops.conv3x3(x, w, b, 1, True),
        lambda: F.relu(F.conv2d(x, w, b, padding=1)),
        reference.conv3x3(x64, w64, b64, 1, True),
    )
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    gy = randn(batch, channels, size, size)

    def conv_bwd(fn):
        return lambda: torch.autograd.grad(fn(xg, wg), (xg, wg), gy)

    ours_bwd = conv_bwd(lambda a, c: ops.conv3x3(a, c, None, 1, True))
    # The reference gradient behind the ReLU mask of *our* forward output: with TF32 a few
    # outputs near zero round to the other side of it, and a flipped mask is not an error
    # of the backward kernel.
    mask = (ops.conv3x3(x, w, None, 1, True) > 0).double().cpu()
    ref_gx = torch.nn.grad.conv2d_input(x64.shape, w64, gy.double().cpu() * mask, padding=1)
    row(
        "conv3x3 backward (grad_input)",
        lambda: ours_bwd()[0],
        conv_bwd(lambda a, c: F.relu(F.conv2d(a, c, padding=1))),
        ref_gx,
    )

    # Offset pooling, interleave, deinterleave.
    for k in (2, 3):
        row(
            f"offset_max_pool2d k={k}",
            lambda k=k: ops.offset_max_pool2d(x, k),
            lambda k=k: reference.offset_max_pool2d(x, k),
            reference.offset_max_pool2d(x64, k),
            exact=True,
            copy_of=x,
        )
    p = ops.offset_max_pool2d(x, 2)
    row(
        "interleave k=2",
        lambda: ops.interleave(p, 2),
        lambda: reference.interleave(p, 2),
        reference.interleave(p.double().cpu(), 2),
        exact=True,
        copy_of=p,
    )
    y = x[:, :, : size // 2 * 2, : size // 2 * 2]
    row(
        "deinterleave k=2",
        lambda: ops.deinterleave(y, 2),
        lambda: reference.deinterleave(y, 2),
        reference.deinterleave(y.double().cpu(), 2),
        exact=True,
        copy_of=y,
    )

    # The layers composed: fine-stride evaluation of a small classifier (offsets) against
    # the dilated dense path built from stock PyTorch ops.
    head = Conv3x3(channels, 16, relu=False, padding=0).to(dev, dtype)
    fine = torch.nn.Sequential(OffsetMaxPool2d(2), head, Interleave(2))

    def dilated():
        return F.conv2d(reference.dilated_equivalent(x, 2), head.weight, head.bias, dilation=2)

    with torch.no_grad():
        dense = dilated()
        out = fine(x)
        h, w_ = out.shape[-2:]
        row(
            "layers: offsets vs dilated",
            lambda: fine(x),
            dilated,
            dense[:, :, :h, :w_].double().cpu(),
        )

    where = device_description(dev)
    if dev.type == "cpu":
        where = f"{_cpu_name()}, {where}"
    print(
        f"overfeat_kernels selfcheck on {where}, {dtype}, input "
        f"[{batch}, {channels}, {size}, {size}]"
    )
    print(
        f"{'op':34} {'rel. error':>11} {'agrees':>7} {'ours ms':>9} {'PyTorch ms':>11} "
        f"{'ratio':>7} {'ours/copy':>10}"
    )
    for r in rows:
        vs_copy = f"{r['vs_copy']:10.2f}" if "vs_copy" in r else f"{'-':>10}"
        print(
            f"{r['op']:34} {r['rel_error']:11.2e} {'yes' if r['agrees'] else 'NO':>7} "
            f"{r['ours_ms']:9.3f} {r['pytorch_ms']:11.3f} {r['speedup']:7.2f} {vs_copy}"
        )
    print(
        "ratio = PyTorch time / our time (above 1: ours is faster). ours/copy = our time / "
        "the time of x.clone() of the op's input,\nmeasured in the same run: pooling and "
        "interleave move about as many bytes as a copy, so 1 is their limit.\nFor "
        "benchmarks with more shapes: benchmarks/bench_cpu.py (CPU), benchmarks/bench_ops.py "
        "(GPU)."
    )
    return rows
