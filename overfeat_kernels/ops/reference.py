"""Pure-PyTorch versions of every op: the oracle for the tests and the baseline for the
benchmarks. Built only from stock operators (F.conv2d, F.max_pool2d, views and
permutations), independent of the compiled kernels, and differentiable through autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["conv3x3", "deinterleave", "dilated_equivalent", "interleave", "offset_max_pool2d"]


def conv3x3(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    padding: int = 1,
    relu: bool = False,
) -> Tensor:
    """F.conv2d followed by F.relu when asked."""
    out = F.conv2d(input, weight, bias, padding=padding)
    return F.relu(out) if relu else out


def offset_max_pool2d(input: Tensor, kernel_size: int) -> Tensor:
    """F.max_pool2d with stride k on each of the k*k shifted crops, stacked offset-major."""
    k = kernel_size
    n, c, h, w = input.shape
    ho, wo = (h - k + 1) // k, (w - k + 1) // k
    maps = [
        F.max_pool2d(input[:, :, dy : dy + k * ho, dx : dx + k * wo], k)
        for dy in range(k)
        for dx in range(k)
    ]
    # [k*k, N, C, Ho, Wo] -> [N, k*k, C, Ho, Wo] -> [N*k*k, C, Ho, Wo]
    return torch.stack(maps, 1).reshape(n * k * k, c, ho, wo)


def interleave(input: Tensor, kernel_size: int) -> Tensor:
    """[N*k*k, C, h, w] -> [N, C, h*k, w*k] by a view and a permutation."""
    k = kernel_size
    b, c, h, w = input.shape
    x = input.reshape(b // (k * k), k, k, c, h, w)  # n, dy, dx, c, i, j
    return x.permute(0, 3, 4, 1, 5, 2).reshape(b // (k * k), c, h * k, w * k)


def deinterleave(input: Tensor, kernel_size: int) -> Tensor:
    """[N, C, H, W] -> [N*k*k, C, H/k, W/k], the inverse of interleave."""
    k = kernel_size
    n, c, h, w = input.shape
    x = input.reshape(n, c, h // k, k, w // k, k)  # n, c, i, dy, j, dx
    return x.permute(0, 3, 5, 1, 2, 4).reshape(n * k * k, c, h // k, w // k)


def dilated_equivalent(input: Tensor, kernel_size: int) -> Tensor:
    """The dense counterpart of offset pooling (SPEC, "The identity"): stride-1 pooling.

    interleave(f(offset_max_pool2d(x, k)), k) equals, where both are defined, f_k applied to
    this map, where f_k is f with its first layer dilated by k.
    """
    return F.max_pool2d(input, kernel_size, stride=1)
