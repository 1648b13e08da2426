"""The conv backend's mode: "auto", "ours" or "cudnn", for the process, a scope, or the
environment. The op reads it in C++ (csrc/conv_choice.cpp); this module sets it."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

from .._ext import _C

MODES = ("auto", "ours", "cudnn")
ENV_MODE = "OVERFEAT_KERNELS_CONV_BACKEND"

# Without the compiled module (nothing can run then) the mode is kept here.
_py_global: str | None = None
_py_scoped: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "overfeat_kernels_conv_backend", default=None
)


def _check_mode(mode: object, name: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return mode  # type: ignore[return-value]


def _code(mode: str | None) -> int:
    return -1 if mode is None else MODES.index(mode)


def set_conv_backend(mode: str) -> None:
    """Sets the conv3x3 backend for the whole process: "auto", "ours" or "cudnn"."""
    _set_global_mode(_check_mode(mode, "set_conv_backend: mode"))


def _set_global_mode(mode: str | None) -> str | None:
    """Sets (or, with None, unsets) the process-wide mode; returns the previous one."""
    global _py_global
    previous, _py_global = _py_global, mode
    if _C is not None:
        _C.set_conv_mode(_code(mode))
    return previous


def get_conv_backend() -> str:
    """The mode in force here: a ``conv_backend`` scope, else ``set_conv_backend``, else
    ``$OVERFEAT_KERNELS_CONV_BACKEND``, else "auto"."""
    if _C is not None:
        return _C.conv_mode()
    scoped = _py_scoped.get()
    if scoped is not None:
        return scoped
    if _py_global is not None:
        return _py_global
    env = os.environ.get(ENV_MODE)
    return "auto" if not env else _check_mode(env, ENV_MODE)


@contextlib.contextmanager
def conv_backend(mode: str) -> Iterator[None]:
    """Uses `mode` for conv3x3 calls inside the ``with`` block, on this thread.

    The op reads the scope from a thread-local variable, which follows this context's scope
    on entry and on exit: asyncio tasks (or generators) whose scopes interleave on one thread
    see the most recently entered or left one, and none is left behind when all have ended.
    """
    mode = _check_mode(mode, "conv_backend: mode")
    token = _py_scoped.set(mode)
    if _C is not None:
        _C.set_scoped_conv_mode(_code(mode))
    try:
        yield
    finally:
        _py_scoped.reset(token)
        if _C is not None:
            _C.set_scoped_conv_mode(_code(_py_scoped.get()))


_test_seams = {"time_on_cpu": False, "pretend_capture": False}


@contextlib.contextmanager
def _testing(time_on_cpu: bool = False, pretend_capture: bool = False) -> Iterator[None]:
    """Test seams of the choice in C++: "auto" times CPU tensors too (so that the path runs
    without a GPU); CPU calls behave as under CUDA-graph capture. Nests."""
    previous = dict(_test_seams)
    _test_seams.update(time_on_cpu=time_on_cpu, pretend_capture=pretend_capture)
    _C.set_conv_choice_testing(**_test_seams)
    try:
        yield
    finally:
        _test_seams.update(previous)
        _C.set_conv_choice_testing(**_test_seams)
