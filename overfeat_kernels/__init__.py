"""overfeat_kernels: hand-written kernels for 3x3 convolution, OverFeat offset max-pooling
and interleaving, as PyTorch custom ops (CPU and CUDA) with autograd and torch.compile
support, and VGG / OverFeat built on them for dense multi-scale inference.

The package is layered; each layer imports only those below it (a test enforces it):

- ``ops``: the ops, their fake kernels, the conv backend's choice, the pure-PyTorch
  reference, the CUDA simulator;
- ``nn``: layers on the ops (``Conv3x3``, ``OffsetMaxPool2d``, ...), ``convert``;
- ``models``: VGG A-E and OverFeat, their weights and named feature taps;
- ``dense``: score maps, multi-scale classification, localization, box merging;
- ``apps``: the command line, feature extraction, training, the demo and the self-check
  (these need the ``apps`` extra: Pillow, scikit-learn, tqdm, safetensors).

    >>> import torch, overfeat_kernels as ok
    >>> x = torch.randn(1, 64, 35, 35)
    >>> y = ok.conv3x3(x, torch.randn(128, 64, 3, 3), relu=True)
    >>> ok.interleave(ok.offset_max_pool2d(y, 3), 3).shape
    torch.Size([1, 128, 33, 33])
"""

from . import _aliases

_aliases.install()

from . import dense, models, nn, ops  # noqa: E402
from .models import weights  # noqa: E402
from .ops import (  # noqa: E402
    ExtensionNotBuiltError,
    build_info,
    conv3x3,
    conv_backend,
    conv_choices,
    deinterleave,
    get_conv_backend,
    interleave,
    offset_max_pool2d,
    reference,
    set_conv_backend,
    simulate_cuda,
    simulator,
)

simulator._enable_from_environment()

__getattr__ = _aliases.module_getattr  # moved modules (extract, train, cli, ...), lazily

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
    "ops",
    "reference",
    "set_conv_backend",
    "simulate_cuda",
    "simulator",
    "weights",
]
