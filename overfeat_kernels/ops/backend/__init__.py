"""Which implementation runs ``conv3x3``: our kernels or PyTorch's own convolution (cuDNN).

Modes:

- ``"auto"`` (the default): on a CUDA tensor, the first call with a new shape times the
  candidates on that GPU, for the forward and, when gradients are needed, for grad-input
  and grad-weight each on its own; it keeps the fastest of each and remembers them in
  memory and on disk. During CUDA-graph capture nothing is timed: a remembered choice runs
  if there is one, else our kernels, and the shape is timed at its next eager call (tracing
  never runs the kernels). CPU tensors (the simulator included) run our kernels.
- ``"ours"``: our kernels only, the configuration picked by their heuristic (what the
  benchmarks and tests of our kernels use).
- ``"cudnn"``: PyTorch's own convolution with bias, then ReLU: cuDNN on CUDA, ATen's CPU
  convolution on the CPU.

The choice is made inside the op, in C++ (``csrc/conv_choice.cpp``): a call of
``overfeat_kernels.conv3x3``, of ``torch.ops.overfeat_kernels.conv3x3``, of a compiled or
exported graph or of a captured CUDA graph runs what the mode says, at the cost of a table
lookup. This package holds the Python side: the mode's API (``mode.py``), the candidates'
table as C++ lists it (``candidates.py``), the tuner that C++ calls on a key it has not seen
(``tuner.py``: the record, else CUDA-event timing on the current stream), and the record of
what was chosen with its disk cache (``cache.py``).

The candidates on CUDA (see :func:`candidates`, read from the C++ table ``conv_plan.h``):
``"direct"`` (CUDA-core kernels, every dtype), ``"tc"`` and ``"tc-small"`` (the tensor-core
implicit GEMM with large or small tiles: bfloat16, float16, and float32 when
``torch.backends.cudnn.allow_tf32`` is set; grad-weight on tensor cores has one tile) and
``"cudnn"``. All of them are deterministic (cuDNN under
``torch.use_deterministic_algorithms(True)`` picks deterministic algorithms itself, and that
setting is part of the key). Whatever runs, the result is ``conv3x3``'s:
``relu(F.conv2d(input, weight, bias, padding))`` in the input's memory format, with the same
autograd.

    >>> import overfeat_kernels as ok
    >>> with ok.conv_backend("cudnn"):
    ...     ok.get_conv_backend()
    'cudnn'

The scope of ``conv_backend`` is the calling thread. An eager backward pass runs the
gradients' implementations fixed at the forward call, under the mode in force then. A
``torch.compile`` d training graph chooses them when its backward runs, under the
process-wide mode or the environment (the autograd engine's threads do not see a thread's
scope), for the call's training key.

The disk cache is ``conv_choices.json`` in ``$OVERFEAT_KERNELS_CACHE_DIR``, else
``$XDG_CACHE_HOME/overfeat_kernels``, else ``~/.cache/overfeat_kernels``. Its keys name the
GPU, the torch / CUDA / cuDNN versions and a hash of the compiled module, so a new driver
stack or a rebuilt package times again. It is read once per process; writers take a lock
and replace the file atomically; a corrupt or foreign file is ignored with a warning.
"""

from .._ext import _C
from . import tuner  # registers the tuner with the op
from .cache import (
    CACHE_FILE,
    CACHE_FORMAT,
    ENV_CACHE,
    cache_dir,
    clear_memory,
    conv_choices,
    read_disk,
    write_disk,
)
from .candidates import ALGOS, CANDIDATES, DIRECTIONS, candidates
from .mode import (
    ENV_MODE,
    MODES,
    _set_global_mode,
    _testing,
    conv_backend,
    get_conv_backend,
    set_conv_backend,
)
from .tuner import Call, build_hash, environment_key

# The public API; the rest imported above serves the tests, the benchmarks and the CLI.
__all__ = ["conv_backend", "conv_choices", "get_conv_backend", "set_conv_backend"]
