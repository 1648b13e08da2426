"""CPU benchmarks of the ops and of dense evaluation (SPEC "Measuring speed", CPU).

    python benchmarks/bench_cpu.py [--quick] [--min-run-time S] [--rounds R] [--out FILE.json]

Every number is a ratio against baselines timed in the same run, never an absolute claim:
each op against overfeat_kernels.reference (the pure-PyTorch composition) and against
x.clone() of its input (the copy-bandwidth limit of a memory-bound op), conv3x3 + bias +
ReLU against F.conv2d + relu_ (and its autograd), each op's fixed cost per call (tiny
inputs) against the PyTorch call a user would write instead, without grad mode,
under inference_mode and with grad, plus a conv3x3 forward + backward step. The
candidates of a row are timed in turn, round after round (torch.utils.benchmark,
blocked_autorange), and each keeps the median of its rounds, so that load from other
processes hits all of them alike. The JSON
records the CPU model, thread count and load average (default:
benchmarks/results/bench_cpu_<cpu>.json).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ops import OVERFEAT_SCALES, overfeat_accurate_layer5, write_results

import overfeat_kernels as ok
from overfeat_kernels import dense, models, reference
from overfeat_kernels.apps.timing import cpu_timer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Targets (ours / clone, at most) of the memory-bound ops.
TARGET_POOL_FWD = 2.0
TARGET_POOL_BWD = 3.0
TARGET_PERMUTE = 2.0
# Targets (baseline / ours, at least) of conv3x3 + bias + ReLU.
TARGET_CONV_FWD = 1.0
TARGET_CONV_BWD = 0.9

# The input maps of VGG-16's five max-pools at 224x224, batch 8.
VGG16_POOL_INPUTS = [
    (8, 64, 224, 224),
    (8, 128, 112, 112),
    (8, 256, 56, 56),
    (8, 512, 28, 28),
    (8, 512, 14, 14),
]


def cpu_model() -> str:
    """The CPU's model name as lscpu reports it (platform.processor() as a fallback)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def environment() -> dict[str, object]:
    """CPU model, thread count, versions and the load average when the run starts."""
    return {
        "device": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "overfeat_kernels": ok.__version__,
        "loadavg_start": list(os.getloadavg()),
    }


def time_interleaved(
    fns: dict[str, Callable[[], object]], min_run_time: float, rounds: int
) -> dict[str, float]:
    """Median milliseconds of each function, timed in turn for `rounds` rounds."""
    for fn in fns.values():  # warm-up: allocator, caches, lazy initialisation
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            timer = cpu_timer(fn)  # on torch's thread count, as the op runs
            samples[name].append(timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


def _map(shape: tuple[int, ...], dtype: torch.dtype, layout: str) -> torch.Tensor:
    x = torch.randn(shape).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _row(op: str, shape, k: int | None, layout: str, dtype: str, t: dict[str, float]) -> dict:
    return {"op": op, "shape": list(shape), "k": k, "layout": layout, "dtype": dtype, "ms": t}


def pool_rows(cases, min_run_time: float, rounds: int, backward: bool = True) -> list[dict]:
    """Offset pooling forward (and backward) against the reference and the input's clone."""
    rows = []
    for shape, k, layout, dname in cases:
        x = _map(shape, DTYPES[dname], layout)
        out = ok.offset_max_pool2d(x, k)
        g = torch.randn(out.shape).to(x.dtype).contiguous(memory_format=_fmt(layout))
        xr = x.detach().clone().requires_grad_()
        ref_out = reference.offset_max_pool2d(xr, k)
        fns = {
            "ours": lambda x=x, k=k: ok.offset_max_pool2d(x, k),
            "reference": lambda x=x, k=k: reference.offset_max_pool2d(x, k),
            "clone": lambda x=x: x.clone(),
        }
        if backward:
            fns["ours_bwd"] = lambda g=g, x=x, k=k: (
                torch.ops.overfeat_kernels.offset_max_pool2d_backward(g, x, k)
            )
            fns["reference_bwd"] = lambda g=g, xr=xr, o=ref_out: torch.autograd.grad(
                o, xr, g, retain_graph=True
            )
        t = time_interleaved(fns, min_run_time, rounds)
        r = _row("offset_max_pool2d", shape, k, layout, dname, t)
        r["fwd_vs_clone"] = t["ours"] / t["clone"]
        r["fwd_speedup_vs_reference"] = t["reference"] / t["ours"]
        r["fwd_target_met"] = r["fwd_vs_clone"] <= TARGET_POOL_FWD
        if backward:
            r["bwd_vs_clone"] = t["ours_bwd"] / t["clone"]
            r["bwd_speedup_vs_reference"] = t["reference_bwd"] / t["ours_bwd"]
            r["bwd_target_met"] = r["bwd_vs_clone"] <= TARGET_POOL_BWD
        rows.append(r)
        print_row(r)
    return rows


def _fmt(layout: str) -> torch.memory_format:
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def permute_rows(cases, min_run_time: float, rounds: int) -> list[dict]:
    """Interleave and deinterleave against the reference and the input's clone."""
    rows = []
    for shape, k, layout, dname in cases:
        x = _map(shape, DTYPES[dname], layout)  # per-offset maps [N*k*k, C, h, w]
        y = ok.interleave(x, k)
        fmt = _fmt(layout)
        for op, fn, ref, inp in (
            ("interleave", ok.interleave, reference.interleave, x),
            ("deinterleave", ok.deinterleave, reference.deinterleave, y),
        ):
            t = time_interleaved(
                {
                    "ours": lambda f=fn, a=inp, k=k: f(a, k),
                    # .contiguous(): the reference's reshape is a view for some layouts
                    "reference": lambda f=ref, a=inp, k=k, m=fmt: f(a, k).contiguous(
                        memory_format=m
                    ),
                    "clone": lambda a=inp: a.clone(),
                },
                min_run_time,
                rounds,
            )
            r = _row(op, tuple(inp.shape), k, layout, dname, t)
            r["fwd_vs_clone"] = t["ours"] / t["clone"]
            r["fwd_speedup_vs_reference"] = t["reference"] / t["ours"]
            r["fwd_target_met"] = r["fwd_vs_clone"] <= TARGET_PERMUTE
            rows.append(r)
            print_row(r)
    return rows


def conv_rows(cases, min_run_time: float, rounds: int) -> list[dict]:
    """conv3x3 + bias + ReLU forward and backward against F.conv2d + relu_ (and autograd)."""
    rows = []
    for (n, c, kout, h, w), layout in cases:
        r = _conv_row(n, c, kout, h, w, layout, min_run_time, rounds)
        rows.append(r)
        print_row(r)
    return rows


def _conv_row(n, c, kout, h, w, layout: str, min_run_time: float, rounds: int) -> dict:
    x = _map((n, c, h, w), torch.float32, layout)
    wt = torch.randn(kout, c, 3, 3) / (9 * c) ** 0.5
    b = torch.randn(kout)
    gy = _map((n, kout, h, w), torch.float32, layout)
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, wt, b))
    ours_out = ok.conv3x3(xg, wg, bg, 1, True)
    base_out = F.conv2d(xg, wg, bg, padding=1).relu_()
    t = time_interleaved(
        {
            "ours": lambda: ok.conv3x3(x, wt, b, 1, True),
            "baseline": lambda: F.conv2d(x, wt, b, padding=1).relu_(),
            "ours_bwd": lambda: torch.autograd.grad(ours_out, (xg, wg, bg), gy, retain_graph=True),
            "baseline_bwd": lambda: torch.autograd.grad(
                base_out, (xg, wg, bg), gy, retain_graph=True
            ),
        },
        min_run_time,
        rounds,
    )
    r = _row("conv3x3+bias+relu", (n, c, h, w), None, layout, "float32", t)
    r["filters"] = kout
    r["fwd_speedup_vs_baseline"] = t["baseline"] / t["ours"]
    r["bwd_speedup_vs_baseline"] = t["baseline_bwd"] / t["ours_bwd"]
    r["fwd_target_met"] = r["fwd_speedup_vs_baseline"] >= TARGET_CONV_FWD
    r["bwd_target_met"] = r["bwd_speedup_vs_baseline"] >= TARGET_CONV_BWD
    return r


def fused_rows(cases, min_run_time: float, rounds: int) -> list[dict]:
    """conv3x3 + bias + ReLU + 2x2 max-pool in one call (on the CPU the op composes: the
    oneDNN convolution, then ATen's pooling) against F.conv2d + relu_ + F.max_pool2d."""
    rows = []
    for (n, c, kout, h, w), layout in cases:
        x = _map((n, c, h, w), torch.float32, layout)
        wt = torch.randn(kout, c, 3, 3) / (9 * c) ** 0.5
        b = torch.randn(kout)
        t = time_interleaved(
            {
                "ours": lambda x=x, wt=wt, b=b: ok.conv3x3(x, wt, b, 1, True, pool=2),
                "baseline": lambda x=x, wt=wt, b=b: F.max_pool2d(
                    F.conv2d(x, wt, b, padding=1).relu_(), 2
                ),
            },
            min_run_time,
            rounds,
        )
        r = _row("conv3x3+relu+pool2", (n, c, h, w), 2, layout, "float32", t)
        r["filters"] = kout
        r["fwd_speedup_vs_baseline"] = t["baseline"] / t["ours"]
        rows.append(r)
        print_row(r)
    return rows


# Targets (ours / PyTorch, at most) of the per-call cost: without grad mode and under
# inference_mode, with grad mode (forward), and a conv3x3 forward + backward step.
TARGET_CALL = {"no_grad": 1.2, "inference_mode": 1.2, "grad": 1.5, "step": 1.5}
CALL_MODES = ("no_grad", "inference_mode", "grad")


def call_rows(min_run_time: float, rounds: int) -> list[dict]:
    """Each public op's and layer's fixed cost per call: tiny inputs, so that the time is
    the host's work (Python, argument checks, dispatch, autograd, the backend's choice),
    against the PyTorch call a user would write instead, in each grad mode, and a conv3x3
    forward + backward step. On one thread: a tiny convolution handed to several threads
    times their start-up, not the call."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _call_rows(min_run_time, rounds)
    finally:
        torch.set_num_threads(threads)


def _call_cases() -> dict[str, tuple]:
    """name -> (ours(x, w, b, p, m, s), PyTorch's(...), PyTorch's name): the same work on
    the same bytes (interleave and pixel_shuffle make the same depth-to-space move: m is
    [4, 4, 4, 4], s the same 256 values as [1, 16, 4, 4])."""
    conv = ok.nn.Conv3x3(4, 4, relu=True)
    conv2d, relu = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(inplace=True)
    pool, maxpool = ok.nn.OffsetMaxPool2d(2), torch.nn.MaxPool2d(2)
    inter, shuffle = ok.nn.Interleave(2), torch.nn.PixelShuffle(2)
    deinter, unshuffle = ok.nn.Deinterleave(2), torch.nn.PixelUnshuffle(2)
    def case(ours, base, name):
        return ours, base, name

    return {
        "conv3x3": case(lambda x, w, b, p, m, s: ok.conv3x3(x, w, b, 1, True),
                        lambda x, w, b, p, m, s: F.conv2d(x, w, b, padding=1).relu_(),
                        "F.conv2d + relu_"),
        "offset_max_pool2d": case(lambda x, w, b, p, m, s: ok.offset_max_pool2d(p, 2),
                                  lambda x, w, b, p, m, s: F.max_pool2d(p, 2), "F.max_pool2d"),
        "interleave": case(lambda x, w, b, p, m, s: ok.interleave(m, 2),
                           lambda x, w, b, p, m, s: F.pixel_shuffle(s, 2), "F.pixel_shuffle"),
        "deinterleave": case(lambda x, w, b, p, m, s: ok.deinterleave(p, 2),
                             lambda x, w, b, p, m, s: F.pixel_unshuffle(p, 2),
                             "F.pixel_unshuffle"),
        "nn.Conv3x3": case(lambda x, w, b, p, m, s: conv(x),
                           lambda x, w, b, p, m, s: relu(conv2d(x)), "nn.Conv2d + nn.ReLU"),
        "nn.OffsetMaxPool2d": case(lambda x, w, b, p, m, s: pool(p),
                                   lambda x, w, b, p, m, s: maxpool(p), "nn.MaxPool2d"),
        "nn.Interleave": case(lambda x, w, b, p, m, s: inter(m),
                              lambda x, w, b, p, m, s: shuffle(s), "nn.PixelShuffle"),
        "nn.Deinterleave": case(lambda x, w, b, p, m, s: deinter(p),
                                lambda x, w, b, p, m, s: unshuffle(p), "nn.PixelUnshuffle"),
    }  # fmt: skip


def _grad_context(mode: str):
    if mode == "no_grad":
        return torch.no_grad()
    if mode == "inference_mode":
        return torch.inference_mode()
    return torch.enable_grad()


def _call_rows(min_run_time: float, rounds: int) -> list[dict]:
    x, w, b = torch.randn(1, 4, 4, 4), torch.randn(4, 4, 3, 3), torch.randn(4)
    p = torch.randn(1, 4, 8, 8)
    m, s = torch.randn(4, 4, 4, 4), torch.randn(1, 16, 4, 4)
    rows = []

    def row(op: str, mode: str, ours, base, base_name: str) -> None:
        t = time_interleaved({"ours": ours, "baseline": base}, min_run_time, rounds)
        r = {"op": op, "mode": mode, "baseline": base_name,
             "us": {name: ms * 1e3 for name, ms in t.items()}}  # fmt: skip
        r["ours_vs_baseline"] = r["us"]["ours"] / r["us"]["baseline"]
        r["target"] = TARGET_CALL["grad" if mode == "grad" else mode]
        rows.append(r)
        print(f"  call {op:20} {mode:14} ours / {base_name}: {r['ours_vs_baseline']:.2f}x "
              f"(target <= {r['target']})")  # fmt: skip

    for mode in CALL_MODES:
        grad = mode == "grad"
        args = [t.clone().requires_grad_(grad) for t in (x, w, b, p, m, s)]
        # The layers' parameters require grad as in a model; outside grad mode that
        # records nothing.
        for op, (ours, base, base_name) in _call_cases().items():
            with _grad_context(mode):
                row(op, mode, lambda f=ours, a=args: f(*a), lambda f=base, a=args: f(*a),
                    base_name)  # fmt: skip
    # One training step of the layer's arithmetic: forward, then the gradients of all three.
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]

    def step(forward):
        return lambda: torch.autograd.grad(forward(*leaves).sum(), leaves)

    row("conv3x3 forward + backward", "step",
        step(lambda x, w, b: ok.conv3x3(x, w, b, 1, True)),
        step(lambda x, w, b: F.conv2d(x, w, b, padding=1).relu_()),
        "F.conv2d + relu_")  # fmt: skip
    sys.stdout.flush()
    return rows


def crops_at_fine_stride(images: torch.Tensor, size: int, stride: int, h: int, w: int):
    """The h x w crops of side `size` at `stride` pixels (top-left first), as one batch."""
    crops = [
        images[:, :, i * stride : i * stride + size, j * stride : j * stride + size]
        for i in range(h)
        for j in range(w)
    ]
    return torch.cat(crops, 0)


def dense_rows(scales, min_run_time: float, rounds: int) -> list[dict]:
    """OverFeat fast, dense evaluation at fine stride on the CPU: offset pooling + interleave
    against the dilated map and against evaluating the model on each crop of its input size
    at the fine stride, as one batch (the naive way to the same positions)."""
    torch.manual_seed(0)
    model = models.overfeat("fast").eval()
    spec = model.dense_spec
    fine = spec.stride // spec.pool_kernel
    rows = []
    for side in scales:
        images = torch.randn(1, 3, side, side)
        with torch.no_grad():
            offsets = dense.score_map(model, images, True, "offsets")
            h, w = offsets.shape[-2:]
            crops = crops_at_fine_stride(images, spec.input_size, fine, h, w)
            t = time_interleaved(
                {
                    "offsets": lambda i=images: dense.score_map(model, i, True, "offsets"),
                    "dilated": lambda i=images: dense.score_map(model, i, True, "dilated"),
                    "crops": lambda c=crops: model(c),
                },
                min_run_time,
                rounds,
            )
        r = _row("dense overfeat-fast", (1, 3, side, side), spec.pool_kernel, "nchw", "float32", t)
        r["map"] = [int(h), int(w)]
        r["speedup_vs_dilated"] = t["dilated"] / t["offsets"]
        r["speedup_vs_crops"] = t["crops"] / t["offsets"]
        rows.append(r)
        print_row(r)
    return rows


def print_row(r: dict) -> None:
    """One line of the table: the times and the ratios of a row."""
    t = r["ms"]
    shape = "x".join(map(str, r["shape"]))
    k = f"k={r['k']}" if r["k"] else ""
    head = f"{r['op']:20} {shape:18} {k:4} {r['layout']:13} {r['dtype']:8}"
    if r["op"].startswith("conv3x3+relu+pool"):
        print(
            f"{head} fwd {t['ours']:8.2f} ms vs {t['baseline']:8.2f} ms: "
            f"x{r['fwd_speedup_vs_baseline']:.2f}"
        )
    elif r["op"].startswith("conv3x3"):
        fwd, bwd = r["fwd_speedup_vs_baseline"], r["bwd_speedup_vs_baseline"]
        print(
            f"{head} fwd {t['ours']:8.2f} ms vs {t['baseline']:8.2f} ms: x{fwd:.2f}"
            f" | bwd {t['ours_bwd']:8.2f} vs {t['baseline_bwd']:8.2f} ms: x{bwd:.2f}"
        )
    elif r["op"].startswith("dense"):
        print(
            f"{head} offsets {t['offsets']:8.1f} ms, dilated {t['dilated']:8.1f} ms, crops "
            f"{t['crops']:8.1f} ms: x{r['speedup_vs_dilated']:.2f} vs dilated, "
            f"x{r['speedup_vs_crops']:.2f} vs crops"
        )
    else:
        line = (
            f"{head} fwd {r['fwd_vs_clone']:6.2f}x clone, x{r['fwd_speedup_vs_reference']:6.1f}"
            f" vs reference"
        )
        if "bwd_vs_clone" in r:
            line += (
                f" | bwd {r['bwd_vs_clone']:6.2f}x clone, "
                f"x{r['bwd_speedup_vs_reference']:6.1f} vs reference"
            )
        print(line)
    sys.stdout.flush()


def _memory_bound_line(r: dict) -> str:
    bwd = (
        f"{r['bwd_vs_clone']:.2f} | {r['bwd_speedup_vs_reference']:.1f}"
        if "bwd_vs_clone" in r
        else "— | —"
    )
    return (
        f"| {r['op']} | {'x'.join(map(str, r['shape']))} | {r['k']} | {r['layout']} "
        f"| {r['dtype']} | {r['fwd_vs_clone']:.2f} | {r['fwd_speedup_vs_reference']:.1f} "
        f"| {bwd} |"
    )


def _conv_line(r: dict) -> str:
    return (
        f"| {'x'.join(map(str, r['shape']))}, {r['filters']} filters | {r['layout']} "
        f"| {r['fwd_speedup_vs_baseline']:.2f} | {r['bwd_speedup_vs_baseline']:.2f} |"
    )


def _call_line(r: dict) -> str:
    return (
        f"| ok.{r['op']} | {r['mode']} | {r['ours_vs_baseline']:.2f} | {r['target']} "
        f"| {r['baseline']} |"
    )


def _dense_line(r: dict) -> str:
    return (
        f"| {r['shape'][2]}x{r['shape'][3]} | {r['map'][0]}x{r['map'][1]} "
        f"| {r['speedup_vs_dilated']:.2f} | {r['speedup_vs_crops']:.2f} |"
    )


def markdown_table(result: dict) -> str:
    """The README tables, one per section that has rows: one line per row, ratios only."""
    tables = [
        (
            ["op", "shape", "k", "layout", "dtype", "fwd / clone", "fwd: reference / ours",
             "bwd / clone", "bwd: reference / ours"],
            _memory_bound_line,
            result.get("pool", []) + result.get("permute", []),
        ),
        (
            ["conv3x3 + bias + ReLU", "layout", "fwd: baseline / ours", "bwd: baseline / ours"],
            _conv_line,
            result.get("conv", []),
        ),
        (
            ["one call, tiny input", "mode", "ours / PyTorch", "target", "PyTorch call"],
            _call_line,
            result.get("calls", []),
        ),
        (
            ["OverFeat fast, image", "fine map", "dilated / offsets", "crop by crop / offsets"],
            _dense_line,
            result.get("dense", []),
        ),
    ]  # fmt: skip
    return "\n\n".join(
        "\n".join([f"| {' | '.join(columns)} |", "|" + "---|" * len(columns), *map(line, rows)])
        for columns, line, rows in tables
        if rows
    )


def cases(quick: bool) -> dict[str, list]:
    """The shapes of each section (--quick: the small ones, for tests)."""
    if quick:
        return {
            "pool": [
                ((2, 32, 28, 28), 2, "nchw", "float32"),
                ((1, 64, 17, 17), 3, "channels_last", "bfloat16"),
            ],
            "permute": [
                ((8, 32, 14, 14), 2, "nchw", "float32"),
                ((9, 16, 5, 6), 3, "channels_last", "bfloat16"),
            ],
            "conv": [((1, 16, 16, 14, 14), "nchw")],
            "fused": [((1, 16, 16, 14, 14), "channels_last")],
            "dense": [263],
        }
    pool = []
    for dname in ("float32", "bfloat16"):
        for layout in ("nchw", "channels_last"):
            pool.append(((8, 512, 28, 28), 2, layout, dname))
            pool.append(((1, 1024, 35, 44), 3, layout, dname))
    for shape in VGG16_POOL_INPUTS:
        for layout in ("nchw", "channels_last"):
            if shape != (8, 512, 28, 28):
                pool.append((shape, 2, layout, "float32"))
    for h, w in OVERFEAT_SCALES[:-1]:  # the largest scale, (35, 44), is above
        for layout in ("nchw", "channels_last"):
            pool.append(((1, 1024, *overfeat_accurate_layer5(h, w)), 3, layout, "float32"))
    permute = [
        ((32, 512, 14, 14), 2, layout, dname)
        for dname in ("float32", "bfloat16")
        for layout in ("nchw", "channels_last")
    ]
    permute.append(((9, 1024, 11, 14), 3, "nchw", "float32"))  # OverFeat accurate layer 5
    conv = [((8, 128, 128, 56, 56), layout) for layout in ("nchw", "channels_last")]
    return {"pool": pool, "permute": permute, "conv": conv, "fused": conv, "dense": [263, 327]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small shapes, a few seconds")
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=None,
        help="seconds per blocked_autorange (default: 0.2, quick 0.02)",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds per row (default: 5, quick 2)"
    )
    parser.add_argument(
        "--sections",
        default="pool,permute,conv,fused,calls,dense",
        help="comma-separated: pool, permute, conv, fused, calls, dense (default: all)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    mrt = args.min_run_time or (0.02 if args.quick else 0.2)
    rounds = args.rounds or (2 if args.quick else 5)
    env = environment()
    print("bench_cpu on " + ", ".join(f"{k} {v}" for k, v in env.items()))
    result: dict[str, object] = {
        "environment": env,
        "quick": args.quick,
        "min_run_time_s": mrt,
        "rounds": rounds,
    }
    c = cases(args.quick)
    sections = set(args.sections.split(","))
    if "pool" in sections:
        result["pool"] = pool_rows(c["pool"], mrt, rounds)
    if "permute" in sections:
        result["permute"] = permute_rows(c["permute"], mrt, rounds)
    if "conv" in sections:
        result["conv"] = conv_rows(c["conv"], mrt, rounds)
    if "fused" in sections:
        result["fused"] = fused_rows(c["fused"], mrt, rounds)
    if "calls" in sections:
        result["calls"] = call_rows(mrt, rounds)
    if "dense" in sections:
        result["dense"] = dense_rows(c["dense"], mrt, rounds)
    env["loadavg_end"] = list(os.getloadavg())
    table = markdown_table(result)
    result["table"] = table
    print(table)
    write_results(result, "bench_cpu", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
