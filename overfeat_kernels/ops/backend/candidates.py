"""conv3x3's candidates, as the C++ table (csrc/conv_plan.h) lists them: their names and
`algos` codes, and which of them "auto" times for a call."""

from __future__ import annotations

from typing import Any

import torch

from .._ext import _C

DIRECTIONS = ("forward", "grad_input", "grad_weight")


def _candidate_table() -> list[dict[str, Any]]:
    return list(_C.conv_candidates()) if _C is not None else []


CANDIDATES: list[dict[str, Any]] = _candidate_table()
"""The candidates' table (``csrc/conv_plan.h``): name, code, directions, whether it runs
on GPUs only, whether it needs tensor cores, the compute capability it needs."""

# Candidate name -> the op's `algos` code. "ours" is our kernels with their own heuristic.
ALGOS: dict[str, int] = {row["name"]: row["code"] for row in CANDIDATES}


def _capability(device: torch.device) -> int:
    """Compute capability x 10 of a CUDA device (90 without one: the simulator's H100)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _tensor_core_dtype(dtype: torch.dtype, tf32: bool) -> bool:
    return dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and tf32)


def candidates(
    direction: str,
    device_type: str,
    dtype: torch.dtype,
    tf32: bool,
    capability: int | None = None,
) -> tuple[str, ...]:
    """The implementations "auto" times for one direction of a call (from the C++ table).

    On CUDA: the direct kernels, the tensor-core tiles where they apply, and cuDNN; on the
    CPU (and in the simulator) our conv3x3 is ATen's convolution with the epilogue fused:
    ours and ATen's. `capability` is the GPU's compute capability x 10 (default: the
    current GPU's, else 90, the simulator's H100).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    gpu = device_type == "cuda"
    if capability is None:
        capability = _capability(torch.device("cuda")) if gpu else 90
    return tuple(
        _C.conv_candidates_for(direction, gpu, _tensor_core_dtype(dtype, tf32), capability)
    )
