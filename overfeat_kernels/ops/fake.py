"""The ops' fake kernels, for tracing (torch.compile, torch.export, opcheck): the output's
shape, dtype, device and memory format, after the same argument checks as the C++ ones
(``checks.py``; shapes may be symbolic). Registered on import when the compiled ops exist."""

from __future__ import annotations

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format

from . import _ext
from . import checks as check


def _empty_as(like: Tensor, shape: tuple[int, ...]) -> Tensor:
    """What the C++ kernels allocate: a dense tensor in `like`'s memory format."""
    return torch.empty(
        shape, dtype=like.dtype, device=like.device, memory_format=suggest_memory_format(like)
    )


def _register_fakes() -> None:
    lib = "overfeat_kernels::"

    @torch.library.register_fake(lib + "conv3x3")
    def _conv3x3_fake(input, weight, bias, padding, relu, algos=None, pool=0, pool_offsets=False):
        shape = check.conv3x3(input, weight, bias, padding, relu, algos, pool, pool_offsets)
        return _empty_as(input, shape)

    @torch.library.register_fake(lib + "conv3x3_backward")
    def _conv3x3_backward_fake(
        grad_output, input, weight, relu_output, padding, output_mask, algos=None
    ):
        shape = check.conv3x3(input, weight, None, padding)
        check.grad_like(grad_output, input, shape, "conv3x3_backward", "grad_output")
        if relu_output is not None:
            check.grad_like(relu_output, input, shape, "conv3x3_backward", "relu_output")
        empty = input.new_empty(0)
        return (
            _empty_as(input, tuple(input.shape)) if output_mask[0] else empty,
            weight.new_empty(weight.shape) if output_mask[1] else empty,
            weight.new_empty(weight.shape[0]) if output_mask[2] else empty,
        )

    @torch.library.register_fake(lib + "offset_max_pool2d")
    def _pool_fake(input, kernel_size):
        return _empty_as(input, check.offset_max_pool2d(input, kernel_size))

    @torch.library.register_fake(lib + "offset_max_pool2d_backward")
    def _pool_backward_fake(grad_output, input, kernel_size):
        op = "offset_max_pool2d_backward"
        shape = check.offset_max_pool2d(input, kernel_size, op)
        check.grad_like(grad_output, input, shape, op, "grad_output")
        return _empty_as(input, tuple(input.shape))

    @torch.library.register_fake(lib + "interleave")
    def _interleave_fake(input, kernel_size):
        return _empty_as(input, check.interleave(input, kernel_size))

    @torch.library.register_fake(lib + "deinterleave")
    def _deinterleave_fake(input, kernel_size):
        return _empty_as(input, check.deinterleave(input, kernel_size))


if _ext.loaded():
    _register_fakes()
