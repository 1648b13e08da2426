"""One process of a torchrun job (or the only process): its device, rank and world size."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist


@contextlib.contextmanager
def process(device: str | None) -> Iterator[tuple[torch.device, int, int]]:
    """Yields (device, rank, world size). Under torchrun each rank takes the GPU of its
    LOCAL_RANK and joins the process group (nccl on GPUs, gloo on the CPU), left on exit."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        yield dev, rank, world
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
