"""Drop-in layers built on the ops."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from . import ops

__all__ = [
    "Conv3x3",
    "Deinterleave",
    "Interleave",
    "OffsetMaxPool2d",
    "convert",
    "prepack",
    "to_stock",
]


class Conv3x3(nn.Module):
    """3x3 convolution (stride 1, padding 0 or 1) with an optional fused ReLU.

    State-dict compatible with ``nn.Conv2d(in_channels, out_channels, 3, padding=padding)``:
    the parameters are ``weight`` ``[out_channels, in_channels, 3, 3]`` and ``bias``
    ``[out_channels]`` (absent with ``bias=False``), initialised as nn.Conv2d does.

    Example:
        >>> layer = Conv3x3(3, 64, relu=True)
        >>> layer(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 64, 224, 224])
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
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"Conv3x3: in_channels and out_channels must be >= 1, got "
                f"{in_channels} and {out_channels}"
            )
        if padding not in (0, 1):
            raise ValueError(f"Conv3x3: padding must be 0 or 1, got {padding}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.padding = padding
        self.relu = relu
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
        layer.weight = conv.weight
        layer.bias = conv.bias
        return layer

    def forward(self, input: Tensor) -> Tensor:
        return ops.conv3x3(input, self.weight, self.bias, self.padding, self.relu)

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
        return (
            f"{self.in_channels}, {self.out_channels}, padding={self.padding}, "
            f"bias={self.bias is not None}, relu={self.relu}"
        )


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
    is fused into it (and replaced by nn.Identity). Returns `module` (or its replacement if
    `module` itself is eligible); with verbose, prints what was replaced.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 5))
        >>> convert(net, verbose=False)[0]
        Conv3x3(3, 8, padding=1, bias=True, relu=True)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert: module must be a torch.nn.Module, got {type(module).__name__}")
    replaced: list[str] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if not eligible(child):
                visit(child, f"{prefix}{name}.")
                continue
            fuse = (isinstance(parent, nn.Sequential) and i + 1 < len(children)
                    and type(children[i + 1][1]) is nn.ReLU)  # fmt: skip
            setattr(parent, name, Conv3x3.from_conv2d(child, relu=fuse))
            if fuse:
                setattr(parent, children[i + 1][0], nn.Identity())
            replaced.append(f"{prefix}{name}" + (" (+ ReLU)" if fuse else ""))

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
    """A copy of `module` with every Conv3x3 replaced by nn.Conv2d (followed by nn.ReLU when
    fused): the same network on stock PyTorch layers (the inverse of `convert`), for
    comparisons. Parameters are copied, not shared."""
    module = copy.deepcopy(module)
    if isinstance(module, Conv3x3):
        return _stock_layer(module)

    def visit(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, Conv3x3):
                setattr(parent, name, _stock_layer(child))
            else:
                visit(child)

    visit(module)
    return module


def _stock_layer(layer: Conv3x3) -> nn.Module:
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, 3, padding=layer.padding,
                     bias=layer.bias is not None, device=layer.weight.device,
                     dtype=layer.weight.dtype)  # fmt: skip
    conv.weight, conv.bias = layer.weight, layer.bias
    return nn.Sequential(conv, nn.ReLU()) if layer.relu else conv
