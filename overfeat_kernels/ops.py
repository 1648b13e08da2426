"""The public functional ops, their fake (meta) kernels and their autograd.

The schemas live in C++ (csrc/ops.cpp); the CPU and CUDA kernels in csrc/cpu and
csrc/cuda. Here: argument checking with clear messages, fake kernels so that
`torch.compile(fullgraph=True)` and `torch.library.opcheck` work, and autograd, whose
backward passes are ops of their own (`conv3x3_backward`, `offset_max_pool2d_backward`;
interleave and deinterleave are each other's backward).

Every functional op also accepts arrays of other libraries that speak DLPack (CuPy on the
GPU, NumPy on the CPU) and returns an array of the same library, without copies.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format

from . import _ext, backend
from . import _validate as check

__all__ = ["conv3x3", "deinterleave", "interleave", "offset_max_pool2d"]

F = TypeVar("F", bound=Callable[..., Any])


_TORCH_ARGS = (Tensor, int, float, type(None))  # bool is an int


def _library_of(x: object) -> str | None:
    """The top-level module of a non-torch array that supports DLPack, else None."""
    if isinstance(x, Tensor) or not hasattr(x, "__dlpack__"):
        return None
    return type(x).__module__.split(".")[0]


def _dlpack_interop(fn: F) -> F:
    """Lets `fn` take DLPack arrays (CuPy, NumPy, ...) and return the input's kind."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not kwargs and all(isinstance(a, _TORCH_ARGS) for a in args):
            return fn(*args)  # the usual call, checked in a fraction of a microsecond
        first = args[0] if args else kwargs.get("input")
        library = _library_of(first)
        if library is None and not any(_library_of(a) for a in (*args, *kwargs.values())):
            return fn(*args, **kwargs)
        args = tuple(torch.from_dlpack(a) if _library_of(a) else a for a in args)
        kwargs = {k: torch.from_dlpack(v) if _library_of(v) else v for k, v in kwargs.items()}
        out = fn(*args, **kwargs)
        return importlib.import_module(library).from_dlpack(out) if library else out

    return wrapper  # type: ignore[return-value]


# torch.library's autograd kernel (ours are registered from Python) costs several
# microseconds a call even when no gradient can be recorded, only to redispatch below
# autograd. Without grad mode the ops go there directly, as inference_mode would; traced
# code keeps the plain call. (A private API of torch: if it goes, the plain call remains.)
_below_autograd = getattr(torch._C, "_AutoDispatchBelowAutograd", None)


def _call(op: Callable[..., Any], *args: Any) -> Any:
    if _below_autograd is None or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return op(*args)
    with _below_autograd():
        return op(*args)


@_dlpack_interop
def conv3x3(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    padding: int = 1,
    relu: bool = False,
) -> Tensor:
    """3x3 convolution, stride 1, with an optional fused bias and ReLU.

    Equal to ``F.conv2d(input, weight, bias, padding=padding)`` followed by ``F.relu`` when
    ``relu=True``; float32 accumulation for float16 / bfloat16.

    Args:
        input: ``[N, C, H, W]``, float32 / float16 / bfloat16 / float64, NCHW or
            channels_last (the output keeps the input's memory format).
        weight: ``[K, C, 3, 3]``, same dtype and device as ``input``.
        bias: ``[K]`` or None.
        padding: 0 or 1.
        relu: apply ReLU to the result (its gradient is masked by ``output > 0``).

    Under ``torch.autocast`` the inputs are cast to the autocast dtype, as for F.conv2d.
    Which implementation runs (our kernels or ``F.conv2d``, timed per shape on a GPU by
    default) is set with :func:`overfeat_kernels.set_conv_backend`; see
    :mod:`overfeat_kernels.backend`.

    Returns:
        ``[N, K, H + 2*padding - 2, W + 2*padding - 2]``.

    Example:
        >>> x = torch.randn(2, 3, 32, 32)
        >>> w = torch.randn(64, 3, 3, 3)
        >>> conv3x3(x, w, torch.zeros(64), padding=1, relu=True).shape
        torch.Size([2, 64, 32, 32])
    """
    _ext.require()
    device_type = input.device.type if isinstance(input, Tensor) else None
    # Autocast exists for cpu / cuda only (asking about "meta" raises).
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        # Like F.conv2d under autocast: compute in the autocast dtype (bf16 / fp16).
        dtype = torch.get_autocast_dtype(device_type)
        input, weight, bias = (
            t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t
            for t in (input, weight, bias)
        )
    check.conv3x3(input, weight, bias, padding, relu)
    algos = backend.algos_for(input, weight, bias, padding, relu)
    return _call(
        torch.ops.overfeat_kernels.conv3x3.default, input, weight, bias, padding, relu, algos
    )


@_dlpack_interop
def offset_max_pool2d(input: Tensor, kernel_size: int) -> Tensor:
    """Non-overlapping k x k max-pooling applied at every pixel offset (OverFeat §3.3).

    ``out[(n*k + dy)*k + dx, c, i, j] = max_{a, b < k} input[n, c, dy + k*i + a, dx + k*j + b]``
    for every offset ``(dy, dx)`` in ``{0..k-1}^2``; ``Ho = (H - k + 1) // k`` (likewise
    ``Wo``), the same for every offset. NaN propagates and ties go to the first element in
    row-major window order, as in ``F.max_pool2d``.

    Args:
        input: ``[N, C, H, W]`` floating tensor with ``H, W >= 2*k - 1``.
        kernel_size: k >= 1 (stride is k).

    Returns:
        ``[N*k*k, C, Ho, Wo]`` in the input's memory format.

    Example:
        >>> offset_max_pool2d(torch.randn(1, 8, 17, 17), 3).shape
        torch.Size([9, 8, 5, 5])
    """
    _ext.require()
    check.offset_max_pool2d(input, kernel_size)
    return _call(torch.ops.overfeat_kernels.offset_max_pool2d.default, input, kernel_size)


@_dlpack_interop
def interleave(input: Tensor, kernel_size: int) -> Tensor:
    """Weaves the k*k per-offset maps into one map at k times the resolution.

    ``out[n, c, k*i + dy, k*j + dx] = input[(n*k + dy)*k + dx, c, i, j]``: the inverse of
    ``deinterleave``. Any dtype of 1-8 bytes.

    Args:
        input: ``[N*k*k, C, h, w]``.
        kernel_size: k >= 1.

    Returns:
        ``[N, C, h*k, w*k]`` in the input's memory format.

    Example:
        >>> interleave(torch.randn(9, 4, 5, 5), 3).shape
        torch.Size([1, 4, 15, 15])
    """
    _ext.require()
    check.interleave(input, kernel_size)
    return _call(torch.ops.overfeat_kernels.interleave.default, input, kernel_size)


@_dlpack_interop
def deinterleave(input: Tensor, kernel_size: int) -> Tensor:
    """Splits a map into its k*k offset maps: the exact inverse of ``interleave``.

    Args:
        input: ``[N, C, H, W]`` with H and W multiples of k.
        kernel_size: k >= 1.

    Returns:
        ``[N*k*k, C, H/k, W/k]`` in the input's memory format.
    """
    _ext.require()
    check.deinterleave(input, kernel_size)
    return _call(torch.ops.overfeat_kernels.deinterleave.default, input, kernel_size)


# ---------------------------------------------------------------------------------------
# Fake kernels and autograd. Registered only when the compiled ops exist.


def _empty_as(like: Tensor, shape: tuple[int, ...]) -> Tensor:
    """What the C++ kernels allocate: a dense tensor in `like`'s memory format."""
    return torch.empty(
        shape, dtype=like.dtype, device=like.device, memory_format=suggest_memory_format(like)
    )


def _register() -> None:
    lib = "overfeat_kernels::"
    ops = torch.ops.overfeat_kernels

    @torch.library.register_fake(lib + "conv3x3")
    def _conv3x3_fake(input, weight, bias, padding, relu, algos=(0, 0, 0)):
        return _empty_as(input, check.conv3x3(input, weight, bias, padding, relu))

    @torch.library.register_fake(lib + "conv3x3_backward")
    def _conv3x3_backward_fake(
        grad_output, input, weight, relu_output, padding, output_mask, algos=(0, 0)
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

    # conv3x3 ---------------------------------------------------------------------------
    def conv3x3_setup(ctx, inputs, output):
        input, weight, bias, padding, relu, *algos = inputs
        ctx.save_for_backward(input, weight, output if relu else None)
        ctx.padding = padding
        # The implementations chosen for grad-input and grad-weight (algos[1:]).
        ctx.grad_algos = list(algos[0][1:]) if algos else [0, 0]
        ctx.has_bias = bias is not None

    def conv3x3_backward(ctx, grad):
        input, weight, relu_output = ctx.saved_tensors
        mask = [
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            ctx.has_bias and ctx.needs_input_grad[2],
        ]
        gi, gw, gb = ops.conv3x3_backward.default(
            grad, input, weight, relu_output, ctx.padding, mask, ctx.grad_algos
        )
        return (
            gi if mask[0] else None,
            gw if mask[1] else None,
            gb if mask[2] else None,
            None,
            None,
            None,
        )

    torch.library.register_autograd(lib + "conv3x3", conv3x3_backward, setup_context=conv3x3_setup)

    # offset_max_pool2d -----------------------------------------------------------------
    def pool_setup(ctx, inputs, output):
        input, kernel_size = inputs
        ctx.save_for_backward(input)
        ctx.kernel_size = kernel_size

    def pool_backward(ctx, grad):
        (input,) = ctx.saved_tensors
        return ops.offset_max_pool2d_backward.default(grad, input, ctx.kernel_size), None

    torch.library.register_autograd(
        lib + "offset_max_pool2d", pool_backward, setup_context=pool_setup
    )

    # interleave / deinterleave: each is the other's backward ----------------------------
    def k_setup(ctx, inputs, output):
        ctx.kernel_size = inputs[1]

    torch.library.register_autograd(
        lib + "interleave",
        lambda ctx, grad: (ops.deinterleave.default(grad, ctx.kernel_size), None),
        setup_context=k_setup,
    )
    torch.library.register_autograd(
        lib + "deinterleave",
        lambda ctx, grad: (ops.interleave.default(grad, ctx.kernel_size), None),
        setup_context=k_setup,
    )


if _ext.loaded():
    _register()
