"""Loads the compiled module. Importing the package never fails because it is missing:
the first op call says how to build it."""

from __future__ import annotations

import torch

BUILD_HINT = (
    "build it from the repository root with `pip install --no-build-isolation -e .` "
    "(needs torch, ninja and a C++ compiler; add a CUDA toolkit for the GPU kernels; "
    "see README.md, 'Install')"
)


class ExtensionNotBuiltError(ImportError):
    """The compiled ops (overfeat_kernels._C) are not available."""


try:
    from .. import _C  # registers torch.ops.overfeat_kernels.*

    _load_error: BaseException | None = None
except ImportError as err:  # not built, or built against another torch
    _C = None
    _load_error = err


def loaded() -> bool:
    """Whether the compiled ops are registered."""
    return _C is not None


def require() -> None:
    """Raises ExtensionNotBuiltError, saying how to build, when the ops are missing."""
    if _C is None:
        raise ExtensionNotBuiltError(
            f"overfeat_kernels: the compiled ops could not be loaded ({_load_error}); {BUILD_HINT}"
        )


def with_cuda() -> bool:
    """Whether the CUDA kernels were compiled in (a GPU is not needed for that)."""
    return _C is not None and bool(_C.with_cuda)


def build_info() -> dict[str, object]:
    """What was built and what this process can run, for bug reports and `info`."""
    return {
        "compiled_module": loaded(),
        "load_error": None if _load_error is None else str(_load_error),
        "cuda_kernels_compiled": with_cuda(),
        "cuda_simulator_built": _simulator_built(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


def _simulator_built() -> bool:
    try:
        from .. import _sim  # noqa: F401
    except ImportError:
        return False
    return True
