"""overfeat_kernels: hand-written kernels for 3x3 convolution, OverFeat offset max-pooling
and interleaving, as PyTorch custom ops (CPU and CUDA) with autograd and torch.compile
support.

    >>> import torch, overfeat_kernels as ok
    >>> x = torch.randn(1, 64, 35, 35)
    >>> y = ok.conv3x3(x, torch.randn(128, 64, 3, 3), relu=True)
    >>> ok.interleave(ok.offset_max_pool2d(y, 3), 3).shape
    torch.Size([1, 128, 33, 33])
"""

from . import dense, models, nn, reference, simulator, weights
from ._ext import ExtensionNotBuiltError, build_info
from .backend import conv_backend, conv_choices, get_conv_backend, set_conv_backend
from .ops import conv3x3, deinterleave, interleave, offset_max_pool2d
from .simulator import simulate_cuda

simulator._enable_from_environment()

__version__ = "0.1.0"

__all__ = [
    "ExtensionNotBuiltError",
    "build_info",
    "conv3x3",
    "conv_backend",
    "conv_choices",
    "deinterleave",
    "dense",
    "get_conv_backend",
    "interleave",
    "models",
    "nn",
    "offset_max_pool2d",
    "reference",
    "set_conv_backend",
    "simulate_cuda",
    "simulator",
    "weights",
]
