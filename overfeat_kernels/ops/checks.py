"""Argument checks of the fake kernels (tracing) and of the wrappers' general path.

A public call on plain tensors is checked in C++ (csrc/checks.h); these checks serve where
that cannot run: fake and symbolic tensors while tracing, and the arguments of the general
path (arrays of other libraries, subclasses). Each names the op and the argument and says
what was expected and what came, in the same words as the C++ check; each returns the
output shape. Shapes may be symbolic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

FLOATING = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_FLOATING_NAMES = "float32, float16, bfloat16 or float64"


def tensor(x: object, op: str, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{op}: {name} must be a torch.Tensor (or an array supporting DLPack), "
            f"got {type(x).__name__}"
        )
    return x


def map4d(x: object, op: str, name: str) -> Tensor:
    x = tensor(x, op, name)
    if x.dim() != 4:
        raise ValueError(
            f"{op}: {name} must be a 4-D tensor [N, C, H, W], "
            f"got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
        )
    if x.layout != torch.strided:
        raise ValueError(f"{op}: {name} must be a dense (strided) tensor, got layout {x.layout}")
    return x


def floating(x: Tensor, op: str, name: str) -> None:
    if x.dtype not in FLOATING:
        raise TypeError(f"{op}: {name} must be {_FLOATING_NAMES}, got {x.dtype}")


def same_kind(x: Tensor, ref: Tensor, op: str, name: str, ref_name: str) -> None:
    if x.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} dtype {x.dtype} does not match {ref_name} dtype {ref.dtype}")
    if x.device != ref.device:
        raise ValueError(f"{op}: {name} is on {x.device} but {ref_name} is on {ref.device}")


def integer(value: object, op: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__} {value!r}")
    return value  # type: ignore[return-value]


_INT64_MAX = 2**63 - 1


def kernel_size(k: object, op: str) -> int:
    k = integer(k, op, "kernel_size")
    if k < 1:
        raise ValueError(f"{op}: kernel_size must be >= 1, got {k}")
    if isinstance(k, int) and k > _INT64_MAX:
        raise ValueError(f"{op}: kernel_size must be < 2**63, got {k}")
    return k


def sizes_fit(op: str, k: int, *products: tuple[int, int]) -> None:
    """Sizes derived from kernel_size (k*k, N*k*k, H*k), given as factor pairs, must fit in
    int64, the kernels' size type. Only tensors without elements, or a huge k, come this far
    with sizes that do not."""
    for a, b in products:
        size = a * b
        if isinstance(size, int) and size > _INT64_MAX:  # symbolic sizes: left to the op
            raise ValueError(
                f"{op}: kernel_size {k} is too large: a size derived from it ({a} * {b}) "
                "does not fit in 64 bits"
            )


def conv3x3(
    input: object,
    weight: object,
    bias: object,
    padding: object,
    relu: object = False,
    algos: object = None,
    pool: object = 0,
    pool_offsets: object = False,
) -> tuple[int, int, int, int]:
    op = "conv3x3"
    input = map4d(input, op, "input")
    floating(input, op, "input")
    weight = map4d(weight, op, "weight")
    same_kind(weight, input, op, "weight", "input")
    if tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"{op}: weight must be [K, C, 3, 3], got shape {tuple(weight.shape)}")
    if weight.shape[0] < 1:
        raise ValueError(f"{op}: weight must have at least one output channel")
    if input.shape[1] < 1:
        raise ValueError(f"{op}: input must have at least one channel")
    if weight.shape[1] != input.shape[1]:
        raise ValueError(
            f"{op}: weight expects {weight.shape[1]} input channels (shape "
            f"{tuple(weight.shape)}) but input has {input.shape[1]} (shape {tuple(input.shape)})"
        )
    padding = integer(padding, op, "padding")
    if padding not in (0, 1):
        raise ValueError(f"{op}: padding must be 0 or 1, got {padding}")
    if not isinstance(relu, bool):
        raise TypeError(f"{op}: relu must be a bool, got {type(relu).__name__}")
    n, _, h, w = input.shape
    if h + 2 * padding < 3 or w + 2 * padding < 3:
        raise ValueError(
            f"{op}: input of spatial size {h}x{w} is too small for a 3x3 kernel "
            f"with padding {padding}"
        )
    if bias is not None:
        bias = tensor(bias, op, "bias")
        same_kind(bias, input, op, "bias", "input")
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(
                f"{op}: bias must be [{weight.shape[0]}], got shape {tuple(bias.shape)}"
            )
    k, ho, wo = weight.shape[0], h + 2 * padding - 2, w + 2 * padding - 2
    pool = integer(pool, op, "pool")
    if isinstance(pool, int) and pool > _INT64_MAX:
        raise ValueError(f"{op}: pool must be < 2**63, got {pool}")
    if pool != 0 and pool < 2:
        raise ValueError(f"{op}: pool must be 0 (no pooling) or a window size >= 2, got {pool}")
    if not isinstance(pool_offsets, bool):
        raise TypeError(f"{op}: pool_offsets must be a bool, got {type(pool_offsets).__name__}")
    if pool_offsets and pool < 2:
        raise ValueError(f"{op}: pool_offsets=True needs a pool window size >= 2, got pool={pool}")
    if pool == 0:
        return (n, k, ho, wo)
    if not pool_offsets:
        if ho < pool or wo < pool:
            raise ValueError(
                f"{op}: output of spatial size {ho}x{wo} is too small for max pooling with "
                f"pool={pool}"
            )
        return (n, k, ho // pool, wo // pool)
    if (ho - pool + 1) // pool < 1 or (wo - pool + 1) // pool < 1:
        raise ValueError(
            f"{op}: output of spatial size {ho}x{wo} is too small for offset pooling with "
            f"pool={pool} (needs 2*pool - 1 = {2 * pool - 1})"
        )
    if isinstance(n, int) and n * pool * pool > _INT64_MAX:
        raise ValueError(
            f"{op}: pool={pool} is too large: the pooled batch ({n} * {pool}**2) does not fit "
            "in 64 bits"
        )
    return (n * pool * pool, k, (ho - pool + 1) // pool, (wo - pool + 1) // pool)


def offset_max_pool2d(
    input: object, k: object, op: str = "offset_max_pool2d"
) -> tuple[int, int, int, int]:
    input = map4d(input, op, "input")
    floating(input, op, "input")
    k = kernel_size(k, op)
    n, c, h, w = input.shape
    ho, wo = (h - k + 1) // k, (w - k + 1) // k
    if ho < 1 or wo < 1:
        raise ValueError(
            f"{op}: input of spatial size {h}x{w} is too small for offset pooling with "
            f"kernel_size {k} (needs H, W >= 2*kernel_size - 1 = {2 * k - 1})"
        )
    sizes_fit(op, k, (k, k), (n, k * k))
    return (n * k * k, c, ho, wo)


def movable(x: Tensor, op: str) -> None:
    """interleave / deinterleave move elements of 1, 2, 4 or 8 bytes (any such dtype)."""
    if x.element_size() not in (1, 2, 4, 8):
        raise TypeError(
            f"{op}: input dtype {x.dtype} is not supported (elements of 1, 2, 4 or 8 bytes only)"
        )


def interleave(input: object, k: object) -> tuple[int, int, int, int]:
    op = "interleave"
    input = map4d(input, op, "input")
    movable(input, op)
    k = kernel_size(k, op)
    b, c, h, w = input.shape
    sizes_fit(op, k, (k, k), (h, k), (w, k))
    if b % (k * k) != 0:
        raise ValueError(
            f"{op}: input batch must be a multiple of kernel_size**2 = {k * k} "
            f"(one map per offset), got shape {tuple(input.shape)}"
        )
    return (b // (k * k), c, h * k, w * k)


def deinterleave(input: object, k: object) -> tuple[int, int, int, int]:
    op = "deinterleave"
    input = map4d(input, op, "input")
    movable(input, op)
    k = kernel_size(k, op)
    n, c, h, w = input.shape
    if h % k != 0 or w % k != 0:
        raise ValueError(
            f"{op}: input height and width must be multiples of kernel_size {k}, "
            f"got shape {tuple(input.shape)}"
        )
    sizes_fit(op, k, (k, k), (n, k * k))
    return (n * k * k, c, h // k, w // k)


def grad_like(grad: object, ref: Tensor, expected: Sequence[int], op: str, name: str) -> Tensor:
    grad = map4d(grad, op, name)
    same_kind(grad, ref, op, name, "input")
    if tuple(grad.shape) != tuple(expected):
        raise ValueError(f"{op}: {name} must have shape {tuple(expected)}, got {tuple(grad.shape)}")
    return grad
