"""The demo: every op and layer on random data, its agreement with the pure-PyTorch
reference and its time against the PyTorch equivalent, on the GPU when there is one."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _ext, ops, reference
from .nn import Conv3x3, Interleave, OffsetMaxPool2d
from .timing import device_description, median_ms


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

    def row(name, ours_fn, torch_fn, ref_value, exact=False):
        out = ours_fn()
        err = _rel_err(out, ref_value)
        ok_ = err == 0 if exact else err < (1e-5 if dtype == torch.float32 else 2e-2)
        t_ours = median_ms(ours_fn, dev, reps=reps)
        t_torch = median_ms(torch_fn, dev, reps=reps)
        rows.append(
            {
                "op": name,
                "rel_error": err,
                "agrees": ok_,
                "ours_ms": t_ours,
                "pytorch_ms": t_torch,
                "speedup": t_torch / t_ours,
            }
        )

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
    x64g, w64g = x64.clone().requires_grad_(), w64.clone().requires_grad_()
    ref_gx, _ = torch.autograd.grad(
        reference.conv3x3(x64g, w64g, None, 1, True), (x64g, w64g), gy.double().cpu()
    )
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
        )
    p = ops.offset_max_pool2d(x, 2)
    row(
        "interleave k=2",
        lambda: ops.interleave(p, 2),
        lambda: reference.interleave(p, 2),
        reference.interleave(p.double().cpu(), 2),
        exact=True,
    )
    y = x[:, :, : size // 2 * 2, : size // 2 * 2]
    row(
        "deinterleave k=2",
        lambda: ops.deinterleave(y, 2),
        lambda: reference.deinterleave(y, 2),
        reference.deinterleave(y.double().cpu(), 2),
        exact=True,
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

    print(
        f"overfeat_kernels demo on {device_description(dev)}, {dtype}, input "
        f"[{batch}, {channels}, {size}, {size}]" + ("  (CPU timings)" if dev.type == "cpu" else "")
    )
    print(
        f"{'op':34} {'rel. error':>11} {'agrees':>7} {'ours ms':>9} {'PyTorch ms':>11} {'ratio':>7}"
    )
    for r in rows:
        print(
            f"{r['op']:34} {r['rel_error']:11.2e} {'yes' if r['agrees'] else 'NO':>7} "
            f"{r['ours_ms']:9.3f} {r['pytorch_ms']:11.3f} {r['speedup']:7.2f}"
        )
    print(
        "ratio = PyTorch time / our time (higher is better for us). The CUDA kernels in this "
        "release are the first, simple versions;\nthe fast ones are tracked in the issues. "
        "Speed is only claimed from GPU benchmarks (benchmarks/)."
    )
    return rows
