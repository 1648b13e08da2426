"""A model's fully-connected head as convolutions: its Linear layers applied at every
position of a feature map, through views of their weights (no copies), so that dense
evaluation and feature taps run the classifier over whole maps."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["head_as_convs", "linear_as_conv"]


def linear_as_conv(layer: nn.Linear, x: Tensor, kernel: int = 1, dilation: int = 1) -> Tensor:
    """`layer` applied at every position of the map `x` as a kernel x kernel convolution,
    through a view of its weight (no copy)."""
    weight = layer.weight.view(layer.out_features, layer.in_features // kernel**2, kernel, kernel)
    return F.conv2d(x, weight, layer.bias, dilation=dilation)


def head_as_convs(
    head: nn.Sequential, x: Tensor, fc_kernel: int, first_dilation: int = 1
) -> Tensor:
    """Runs a fully-connected head on a feature map: its first Linear as an fc_kernel x
    fc_kernel convolution (dilated by first_dilation), the others 1x1, through views of
    their weights; the other modules (ReLU, Dropout) act elementwise."""
    first = True
    for m in head:
        if isinstance(m, nn.Linear):
            x = linear_as_conv(m, x, fc_kernel if first else 1, first_dilation if first else 1)
            first = False
        else:
            x = m(x)
    return x
