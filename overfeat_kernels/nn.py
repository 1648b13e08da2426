"""Drop-in layers built on the ops."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import ops

__all__ = ["Conv3x3", "Deinterleave", "Interleave", "OffsetMaxPool2d"]


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
        if not (
            isinstance(conv, nn.Conv2d)
            and conv.kernel_size == (3, 3)
            and conv.stride == (1, 1)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.padding in ((0, 0), (1, 1))
            and conv.padding_mode == "zeros"
        ):
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
