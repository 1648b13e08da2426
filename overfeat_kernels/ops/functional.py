"""The public functional ops.

The ops are C++ (csrc/): their schemas, argument checks, autograd (C++
``torch::autograd::Function`` s whose backward passes are ops of their own), conv3x3's
autocast and backend choice, and the CPU and CUDA kernels. On the common path a call here is
one step into C++: the wrappers hand their arguments to ``overfeat_kernels._C``, which calls
the op. Arguments that path cannot take as they are (arrays of other libraries that speak
DLPack, Tensor subclasses, an active torch-function mode) and code being traced by
``torch.compile`` take the general path: ``torch.ops.overfeat_kernels``. The fake kernels
with which ``torch.compile`` and ``torch.library.opcheck`` trace the ops are in ``fake.py``.

Every functional op also accepts arrays of other libraries that speak DLPack (CuPy on the
GPU, NumPy on the CPU) and returns an array of the same library, without copies.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor

from . import _ext
from . import checks as check

__all__ = ["conv3x3", "deinterleave", "interleave", "offset_max_pool2d"]

_C = _ext._C
_compiling = torch.compiler.is_compiling


def _library_of(x: object) -> str | None:
    """The top-level module of a non-torch array that supports DLPack, else None."""
    if isinstance(x, Tensor) or not hasattr(x, "__dlpack__"):
        return None
    return type(x).__module__.split(".")[0]


def _general(name: str, *args: Any) -> Any:
    """The op through torch.ops: what torch.compile traces, and what takes DLPack arrays
    (converted; the result is of the first argument's kind), Tensor subclasses and
    torch-function modes. The Python checks name bad arguments first (for these inputs C++
    would see converted or wrapped tensors)."""
    _ext.require()
    library = _library_of(args[0])
    if any(_library_of(a) for a in args):
        args = tuple(torch.from_dlpack(a) if _library_of(a) else a for a in args)
    getattr(check, name)(*args)
    out = getattr(torch.ops.overfeat_kernels, name).default(*args)
    return importlib.import_module(library).from_dlpack(out) if library else out


def conv3x3(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    padding: int = 1,
    relu: bool = False,
    pool: int = 0,
    pool_offsets: bool = False,
) -> Tensor:
    """3x3 convolution, stride 1, with an optional fused bias, ReLU and max-pooling.

    Equal to ``F.conv2d(input, weight, bias, padding=padding)`` followed by ``F.relu`` when
    ``relu=True``, then by ``F.max_pool2d(·, pool)`` when ``pool = k >= 2`` (or by
    ``offset_max_pool2d(·, pool)`` with ``pool_offsets=True``); float32 accumulation for
    float16 / bfloat16.

    On a GPU, where our tensor-core kernels run (bfloat16, float16, TF32), 2x2 and 3x3
    max-pooling, plain or at every offset, happens in the convolution's epilogue: the
    unpooled map is never written (offset windows overlap, so their tiles recompute shared
    borders; the conv backend's "auto" mode times that against the composition). Elsewhere
    (the CPU, float64, exact float32, PyTorch's convolution chosen by the conv backend,
    windows of 4 and more) the pooling runs after the convolution.
    Either way the result is bit for bit the composition's, NaN and ties included. With
    gradients required the unpooled map is kept for the backward (as the composition keeps
    it), so the fusion pays off in inference.

    Args:
        input: ``[N, C, H, W]``, float32 / float16 / bfloat16 / float64, NCHW or
            channels_last (the output keeps the input's memory format).
        weight: ``[K, C, 3, 3]``, same dtype and device as ``input``.
        bias: ``[K]`` or None.
        padding: 0 or 1.
        relu: apply ReLU to the result (its gradient is masked by ``output > 0``).
        pool: 0 (no pooling) or a window size k >= 2: k x k max-pooling with stride k, no
            padding, trailing rows and columns dropped.
        pool_offsets: pool at every one of the k*k pixel offsets, as
            :func:`offset_max_pool2d` (needs ``pool >= 2``).

    Under ``torch.autocast`` the inputs are cast to the autocast dtype, as for F.conv2d.
    Which implementation runs (our kernels or ``F.conv2d``, timed per shape on a GPU by
    default) is set with :func:`overfeat_kernels.set_conv_backend`; see
    :mod:`overfeat_kernels.ops.backend`.

    Returns:
        ``[N, K, H', W']`` with ``H' = H + 2*padding - 2`` (likewise W'); pooled,
        ``[N, K, H' // k, W' // k]``, or ``[N*k*k, K, (H' - k + 1) // k, (W' - k + 1) // k]``
        with offsets.

    Example:
        >>> x = torch.randn(2, 3, 32, 32)
        >>> w = torch.randn(64, 3, 3, 3)
        >>> conv3x3(x, w, torch.zeros(64), padding=1, relu=True).shape
        torch.Size([2, 64, 32, 32])
        >>> conv3x3(x, w, torch.zeros(64), padding=1, relu=True, pool=2).shape
        torch.Size([2, 64, 16, 16])
    """
    if _C is not None and not _compiling():
        out = _C.conv3x3(input, weight, bias, padding, relu, pool, pool_offsets)
        if out is not NotImplemented:
            return out
    return _general("conv3x3", input, weight, bias, padding, relu, None, pool, pool_offsets)


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
    if _C is not None and not _compiling():
        out = _C.offset_max_pool2d(input, kernel_size)
        if out is not NotImplemented:
            return out
    return _general("offset_max_pool2d", input, kernel_size)


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
    if _C is not None and not _compiling():
        out = _C.interleave(input, kernel_size)
        if out is not NotImplemented:
            return out
    return _general("interleave", input, kernel_size)


def deinterleave(input: Tensor, kernel_size: int) -> Tensor:
    """Splits a map into its k*k offset maps: the exact inverse of ``interleave``.

    Args:
        input: ``[N, C, H, W]`` with H and W multiples of k.
        kernel_size: k >= 1.

    Returns:
        ``[N*k*k, C, H/k, W/k]`` in the input's memory format.
    """
    if _C is not None and not _compiling():
        out = _C.deinterleave(input, kernel_size)
        if out is not NotImplemented:
            return out
    return _general("deinterleave", input, kernel_size)
