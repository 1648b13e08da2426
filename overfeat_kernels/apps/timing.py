"""Timing helpers shared by the demo and the benchmarks.

On a GPU: CUDA events, warm-up first, median of many repetitions. On the CPU: a
perf_counter median (labelled as CPU timing wherever it is shown).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(
    fn: Callable[[], object], device: torch.device | str, warmup: int = 3, reps: int = 10
) -> float:
    """Median wall time of fn() in milliseconds (CUDA events on a GPU)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cpu_timer(fn: Callable[[], object]):
    """A torch.utils.benchmark Timer of fn() on torch's intra-op thread count (the Timer's
    own default is one thread, whatever torch.set_num_threads says)."""
    import torch.utils.benchmark as tbench

    return tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())


def device_description(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU ({torch.get_num_threads()} threads)"
