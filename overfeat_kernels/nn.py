"""Drop-in layers built on the ops."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

from . import ops

__all__ = [
    "Conv3x3",
    "Deinterleave",
    "FusedSequential",
    "Interleave",
    "OffsetMaxPool2d",
    "convert",
    "prepack",
    "to_stock",
]


class Conv3x3(nn.Module):
    """3x3 convolution (stride 1, padding 0 or 1) with an optional fused ReLU and max-pool.

    State-dict compatible with ``nn.Conv2d(in_channels, out_channels, 3, padding=padding)``:
    the parameters are ``weight`` ``[out_channels, in_channels, 3, 3]`` and ``bias``
    ``[out_channels]`` (absent with ``bias=False``), initialised as nn.Conv2d does.
    ``pool=k`` (k >= 2) max-pools the result k x k with stride k in the same call
    (``pool_offsets=True``: at every pixel offset, as :class:`OffsetMaxPool2d`); see
    :func:`overfeat_kernels.conv3x3` for where that happens in the kernel.

    Example:
        >>> layer = Conv3x3(3, 64, relu=True)
        >>> layer(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 64, 224, 224])
        >>> Conv3x3(3, 64, relu=True, pool=2)(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 64, 112, 112])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        padding: int = 1,
        relu: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        pool: int = 0,
        pool_offsets: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"Conv3x3: in_channels and out_channels must be >= 1, got "
                f"{in_channels} and {out_channels}"
            )
        if padding not in (0, 1):
            raise ValueError(f"Conv3x3: padding must be 0 or 1, got {padding}")
        _check_pool(pool, pool_offsets)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.padding = padding
        self.relu = relu
        self.pool = pool
        self.pool_offsets = pool_offsets
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv2d's initialisation."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels * 9)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, relu: bool = False) -> Conv3x3:
        """A Conv3x3 sharing `conv`'s parameters (no copy); `conv` must be eligible."""
        if not eligible(conv):
            raise ValueError(
                "Conv3x3.from_conv2d: needs an nn.Conv2d with kernel 3x3, stride 1, dilation 1, "
                f"groups 1, zero padding 0 or 1; got {conv}"
            )
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_channels, layer.out_channels = conv.in_channels, conv.out_channels
        layer.padding, layer.relu = conv.padding[0], relu
        layer.pool, layer.pool_offsets = 0, False
        layer.weight = conv.weight
        layer.bias = conv.bias
        return layer

    def forward(self, input: Tensor) -> Tensor:
        return ops.conv3x3(input, self.weight, self.bias, self.padding, self.relu,
                           self.pool, self.pool_offsets)  # fmt: skip

    def forward_pooled(self, input: Tensor, pool: int, relu: bool, offsets: bool = False) -> Tensor:
        """This layer's convolution with ReLU as `relu` says and k x k max-pooling (``pool``,
        at every pixel offset with ``offsets``) in the same call, whatever the layer's own
        ``relu`` / ``pool``: how FusedSequential and the models run a conv and the pool
        after it."""
        return ops.conv3x3(input, self.weight, self.bias, self.padding, relu, pool, offsets)

    def prepack(self) -> Conv3x3:
        """Keeps the weight in the layout the tensor-core kernels read in place, so that a
        forward pass on a GPU copies no filters.

        That layout is ``[K][3][3][C]``: the weight in channels_last memory format. Without
        it (the default NCHW weight) each tensor-core forward repacks the filters, for
        VGG's conv5 at batch 1 some 4.7 MB read and written around a 0.2 MB activation.
        ``model.to(memory_format=torch.channels_last)`` does the same for every layer. The
        parameter stays the same object with the same values (optimizers, state dicts and
        gradients are unaffected). Meant for GPUs: on the CPU an NCHW input with a
        channels_last weight costs ATen's convolution layout conversions. Returns self.
        """
        if not self.weight.is_contiguous(memory_format=torch.channels_last):
            with torch.no_grad():
                self.weight.data = self.weight.data.contiguous(memory_format=torch.channels_last)
        return self

    def extra_repr(self) -> str:
        pool = f", pool={self.pool}" if self.pool else ""
        pool += ", pool_offsets=True" if self.pool_offsets else ""
        return (
            f"{self.in_channels}, {self.out_channels}, padding={self.padding}, "
            f"bias={self.bias is not None}, relu={self.relu}{pool}"
        )

    def __setstate__(self, state: dict) -> None:  # layers pickled before pooling existed
        super().__setstate__(state)
        self.__dict__.setdefault("pool", 0)
        self.__dict__.setdefault("pool_offsets", False)


def _check_pool(pool: object, pool_offsets: object) -> None:
    if isinstance(pool, bool) or not isinstance(pool, int):
        raise TypeError(f"Conv3x3: pool must be an int, got {type(pool).__name__} {pool!r}")
    if pool != 0 and pool < 2:
        raise ValueError(f"Conv3x3: pool must be 0 (no pooling) or an int >= 2, got {pool!r}")
    if pool >= 2**63:
        raise ValueError(f"Conv3x3: pool must be < 2**63, got {pool}")
    if not isinstance(pool_offsets, bool):
        raise TypeError(f"Conv3x3: pool_offsets must be a bool, got {pool_offsets!r}")
    if pool_offsets and not pool:
        raise ValueError("Conv3x3: pool_offsets=True needs pool >= 2")


def _pool_size(module: nn.Module) -> int:
    """k for an nn.MaxPool2d that F.max_pool2d(x, k) computes (window k x k, stride k, no
    padding, dilation 1, floor mode, values only); else 0."""
    if type(module) is not nn.MaxPool2d or module.ceil_mode or module.return_indices:
        return 0
    pair = nn.modules.utils._pair
    k, stride = pair(module.kernel_size), pair(module.stride)
    if k[0] != k[1] or stride != k or pair(module.padding) != (0, 0):
        return 0
    if pair(module.dilation) != (1, 1) or k[0] < 2:
        return 0
    return k[0]


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooked(module: nn.Module, global_hooks: bool = True) -> bool:
    """Whether hooks would see `module` run: its own (forward or backward) or, with
    `global_hooks`, those registered for every module."""
    if any(getattr(module, name, None) for name in _HOOKS):
        return True
    registry = nn.modules.module
    return global_hooks and any(getattr(registry, f"_global{name}", None) for name in _HOOKS)


def fusable_pool(modules: list[nn.Module], i: int) -> tuple[int, int, bool] | None:
    """Whether ``modules[i]`` and a max-pool after it can run as one conv3x3 call:
    ``(k, j, relu)`` when modules[i] is a Conv3x3 (not a subclass) without pooling,
    modules[j] an ``nn.MaxPool2d(k, k)`` and everything between them nn.Identity or nn.ReLU
    (relu: whether the call applies ReLU); None otherwise, or when hooks would see any of
    them run."""
    conv = modules[i]
    if type(conv) is not Conv3x3 or conv.pool or _hooked(conv):
        return None
    relu = conv.relu
    for j in range(i + 1, len(modules)):
        m = modules[j]
        if _hooked(m):
            return None
        if type(m) is nn.Identity:
            continue
        if type(m) is nn.ReLU:
            if not relu and torch.is_grad_enabled():
                # nn.ReLU passes the gradient of a NaN activation, the conv's fused ReLU
                # does not: recording a graph, the two stay apart.
                return None
            relu = True
            continue
        k = _pool_size(m)
        return (k, j, relu) if k else None
    return None


def fusable_tail(modules: list[nn.Module]) -> int | None:
    """The index of a Conv3x3 without pooling after which `modules` holds only nn.Identity
    and nn.ReLU modules (no hooks on any of them): where a pool that follows could run
    inside the conv's call; else None."""
    relu_module = False
    for i in range(len(modules) - 1, -1, -1):
        m = modules[i]
        if _hooked(m):
            return None
        if type(m) is Conv3x3:
            # A ReLU module after a conv without one stays apart while recording a graph
            # (fusable_pool says why).
            if m.pool or (relu_module and not m.relu and torch.is_grad_enabled()):
                return None
            return i
        if type(m) is nn.ReLU:
            relu_module = True
        elif type(m) is not nn.Identity:
            return None
    return None


class FusedSequential(nn.Sequential):
    """An nn.Sequential that runs each Conv3x3 and the max-pool that follows it (through
    nn.Identity / nn.ReLU modules) as one conv3x3 call with ``pool=k``: the pooled map
    comes out of the convolution's epilogue and the unpooled one is never written.

    The modules stay as they are, so state-dict keys and indices are unchanged. Not fused:
    modules that hooks would see run (their own forward or backward hooks, or global module
    hooks), subclasses of Conv3x3 (their ``forward`` is theirs), and, while a graph is
    recorded, a separate nn.ReLU after a conv without ``relu`` (nn.ReLU passes a NaN
    activation's gradient, the fused ReLU does not). The models' ``features`` are
    FusedSequentials.

    Example:
        >>> seq = FusedSequential(Conv3x3(3, 8, relu=True), nn.Identity(), nn.MaxPool2d(2, 2))
        >>> seq(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 8, 16, 16])
    """

    def forward(self, input: Tensor) -> Tensor:
        modules = list(self._modules.values())
        x, i = input, 0
        while i < len(modules):
            fused = fusable_pool(modules, i)
            if fused is None:
                x = modules[i](x)
                i += 1
                continue
            k, j, relu = fused
            x = modules[i].forward_pooled(x, k, relu)
            i = j + 1
        return x


class _WithKernelSize(nn.Module):
    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(
                f"{type(self).__name__}: kernel_size must be an int >= 1, got {kernel_size!r}"
            )
        self.kernel_size = kernel_size

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class OffsetMaxPool2d(_WithKernelSize):
    """k x k max-pooling at every pixel offset: ``[N, C, H, W] -> [N*k*k, C, Ho, Wo]``."""

    def forward(self, input: Tensor) -> Tensor:
        return ops.offset_max_pool2d(input, self.kernel_size)


class Interleave(_WithKernelSize):
    """Weaves k*k offset maps into one: ``[N*k*k, C, h, w] -> [N, C, h*k, w*k]``."""

    def forward(self, input: Tensor) -> Tensor:
        return ops.interleave(input, self.kernel_size)


class Deinterleave(_WithKernelSize):
    """The inverse of Interleave: ``[N, C, H, W] -> [N*k*k, C, H/k, W/k]``."""

    def forward(self, input: Tensor) -> Tensor:
        return ops.deinterleave(input, self.kernel_size)


def eligible(module: nn.Module) -> bool:
    """Whether `module` is an nn.Conv2d that Conv3x3 computes exactly: kernel 3x3, stride 1,
    dilation 1, groups 1, zero padding 0 or 1."""
    return (
        type(module) is nn.Conv2d
        and module.kernel_size == (3, 3)
        and module.stride == (1, 1)
        and module.dilation == (1, 1)
        and module.groups == 1
        and module.padding in ((0, 0), (1, 1))
        and module.padding_mode == "zeros"
    )


def convert(module: nn.Module, verbose: bool = True) -> nn.Module:
    """Swaps, in place, every eligible nn.Conv2d of `module` for our Conv3x3.

    Eligible: kernel 3x3, stride 1, padding 0 or 1, dilation 1, groups 1. The weights are
    shared, not copied. An nn.ReLU that directly follows the convolution in an nn.Sequential
    is fused into it (and replaced by nn.Identity), and so is an ``nn.MaxPool2d(k, k)``
    (window k, stride k, no padding, floor mode) that directly follows the convolution or
    that ReLU (``pool=k``; replaced by nn.Identity). Modules with hooks of their own are not
    fused. Returns `module` (or its replacement if `module` itself is eligible); with
    verbose, prints what was replaced.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 5))
        >>> convert(net, verbose=False)[0]
        Conv3x3(3, 8, padding=1, bias=True, relu=True)
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        >>> convert(net, verbose=False)
        Sequential(
          (0): Conv3x3(3, 8, padding=1, bias=True, relu=True, pool=2)
          (1): Identity()
          (2): Identity()
        )
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert: module must be a torch.nn.Module, got {type(module).__name__}")
    replaced: list[str] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        # Every slot in order (named_children skips a module met twice, which would make
        # a later module look adjacent to a conv).
        children = [(name, m) for name, m in parent._modules.items() if m is not None]
        for i, (name, child) in enumerate(children):
            if not eligible(child):
                visit(child, f"{prefix}{name}.")
                continue
            seq = isinstance(parent, nn.Sequential) and not _hooked(child, global_hooks=False)
            nxt = i + 1
            fuse = (seq and nxt < len(children) and type(children[nxt][1]) is nn.ReLU
                    and not _hooked(children[nxt][1], global_hooks=False))  # fmt: skip
            layer = Conv3x3.from_conv2d(child, relu=fuse)
            setattr(parent, name, layer)
            if fuse:
                setattr(parent, children[nxt][0], nn.Identity())
                nxt += 1
            k = _pool_size(children[nxt][1]) if seq and nxt < len(children) else 0
            if k and not _hooked(children[nxt][1], global_hooks=False):
                layer.pool = k
                setattr(parent, children[nxt][0], nn.Identity())
            fused = ["ReLU"] * fuse + [f"max-pool {k}"] * bool(layer.pool)
            replaced.append(f"{prefix}{name}" + (f" (+ {', '.join(fused)})" if fused else ""))

    if eligible(module):
        module, replaced = Conv3x3.from_conv2d(module), ["<root>"]
    else:
        visit(module, "")
    if verbose:
        print(
            f"overfeat_kernels.nn.convert: replaced {len(replaced)} convolution(s)"
            + (": " + ", ".join(replaced) if replaced else "")
        )
    return module


def prepack(module: nn.Module) -> nn.Module:
    """Calls :meth:`Conv3x3.prepack` on every Conv3x3 of `module` (for inference on a GPU
    with NCHW activations; channels_last models have it already). Returns `module`."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"prepack: module must be a torch.nn.Module, got {type(module).__name__}")
    for layer in module.modules():
        if isinstance(layer, Conv3x3):
            layer.prepack()
    return module


def to_stock(module: nn.Module) -> nn.Module:
    """A copy of `module` with every Conv3x3 replaced by nn.Conv2d (followed by nn.ReLU and
    nn.MaxPool2d when fused; offset pooling stays our OffsetMaxPool2d, which has no stock
    counterpart) and every FusedSequential by nn.Sequential: the same network on stock
    PyTorch layers (the inverse of `convert`), for comparisons. Parameters are copied, not
    shared."""
    module = copy.deepcopy(module)
    if isinstance(module, Conv3x3):
        return _stock_layer(module)

    def stock(child: nn.Module) -> nn.Module:
        if isinstance(child, Conv3x3):
            return _stock_layer(child)
        visit(child)
        if type(child) is FusedSequential:
            plain = nn.Sequential(OrderedDict(child._modules))
            plain.train(child.training)
            return plain
        return child

    def visit(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            setattr(parent, name, stock(child))

    return stock(module)


def _stock_layer(layer: Conv3x3) -> nn.Module:
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, 3, padding=layer.padding,
                     bias=layer.bias is not None, device=layer.weight.device,
                     dtype=layer.weight.dtype)  # fmt: skip
    conv.weight, conv.bias = layer.weight, layer.bias
    after: list[nn.Module] = [nn.ReLU()] if layer.relu else []
    if layer.pool:
        pool = OffsetMaxPool2d if layer.pool_offsets else nn.MaxPool2d
        after.append(pool(layer.pool))
    return nn.Sequential(conv, *after) if after else conv
