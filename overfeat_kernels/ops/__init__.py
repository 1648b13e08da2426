"""The op layer: the public ops and everything between a call and the compiled kernels.

- ``functional``: ``conv3x3``, ``offset_max_pool2d``, ``interleave``, ``deinterleave``, thin
  wrappers whose common path is one step into C++ (``overfeat_kernels._C``);
- ``fake``: the fake kernels that ``torch.compile`` and ``opcheck`` trace, and ``checks``,
  their argument checks (the same words as the C++ ones);
- ``backend``: which implementation runs conv3x3 (the mode, the tuner, the choice cache);
- ``reference``: pure-PyTorch versions of every op, the oracle of the tests;
- ``simulator``: running the CUDA kernels on the CPU (``simulate_cuda``);
- ``_ext``: loading the compiled module, and what was built.

Nothing here imports the model, dense-evaluation or application layers above it.
"""

from . import fake
from ._ext import ExtensionNotBuiltError, build_info
from .backend import conv_backend, conv_choices, get_conv_backend, set_conv_backend
from .functional import conv3x3, deinterleave, interleave, offset_max_pool2d
from .simulator import simulate_cuda

__all__ = [
    "ExtensionNotBuiltError",
    "build_info",
    "conv3x3",
    "conv_backend",
    "conv_choices",
    "deinterleave",
    "get_conv_backend",
    "interleave",
    "offset_max_pool2d",
    "set_conv_backend",
    "simulate_cuda",
]
