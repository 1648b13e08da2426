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
lookup. This module holds the Python side: the mode's API, the tuner that C++ calls on a key
it has not seen (the disk cache, else CUDA-event timing on the current stream), and the
disk cache.

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

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import itertools
import json
import math
import os
import statistics
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from . import _ext

__all__ = ["conv_backend", "conv_choices", "get_conv_backend", "set_conv_backend"]

MODES = ("auto", "ours", "cudnn")
DIRECTIONS = ("forward", "grad_input", "grad_weight")
ENV_MODE = "OVERFEAT_KERNELS_CONV_BACKEND"
ENV_CACHE = "OVERFEAT_KERNELS_CACHE_DIR"
CACHE_FORMAT = "overfeat_kernels.conv_choices/2"
CACHE_FILE = "conv_choices.json"

_C = _ext._C


def _candidate_table() -> list[dict[str, Any]]:
    return list(_C.conv_candidates()) if _C is not None else []


CANDIDATES: list[dict[str, Any]] = _candidate_table()
"""The candidates' table (``csrc/conv_plan.h``): name, code, directions, whether it runs
on GPUs only, whether it needs tensor cores, the compute capability it needs."""

# Candidate name -> the op's `algos` code. "ours" is our kernels with their own heuristic.
ALGOS: dict[str, int] = {row["name"]: row["code"] for row in CANDIDATES}

# Without the compiled module (nothing can run then) the mode is kept here.
_py_global: str | None = None
_py_scoped: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "overfeat_kernels_conv_backend", default=None
)
_lock = threading.Lock()
_memory: dict[str, dict[str, Any]] = {}  # key -> {"choice", "times_ms", "source"}
_disk_loaded: set[Path] = set()


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


def conv_choices() -> dict[str, dict[str, Any]]:
    """What "auto" chose, per key: ``{"choice", "times_ms", "source"}``. ``choice`` maps each
    direction ("forward", and for training keys "grad_input" and "grad_weight") to a
    candidate name, ``times_ms`` each direction to ``{candidate: median ms}``; source is
    "measured" (this process), "disk" (remembered from an earlier one) or "fallback"
    (timing failed: our kernels, not remembered on disk)."""
    _load_disk()
    with _lock:
        return {k: _copy_entry(v) for k, v in _memory.items()}


def _copy_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return dict(
        entry,
        choice=dict(entry["choice"]),
        times_ms={d: dict(t) for d, t in entry["times_ms"].items()},
    )


def clear_memory() -> None:
    """Forgets the choices held in memory, in Python and in the op (the disk cache stays)."""
    with _lock:
        _memory.clear()
        _disk_loaded.clear()
    if _C is not None:
        _C.clear_conv_choices()


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


# ---------------------------------------------------------------------------------------
# Candidates


def _capability(device: torch.device) -> int:
    """Compute capability x 10 of a CUDA device (90 without one: the simulator's H100)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _tensor_core_dtype(dtype: torch.dtype, tf32: bool) -> bool:
    return dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and tf32)


def candidates(
    direction: str,
    device_type: str,
    dtype: torch.dtype,
    tf32: bool,
    capability: int | None = None,
) -> tuple[str, ...]:
    """The implementations "auto" times for one direction of a call (from the C++ table).

    On CUDA: the direct kernels, the tensor-core tiles where they apply, and cuDNN; on the
    CPU (and in the simulator) our conv3x3 is ATen's convolution with the epilogue fused:
    ours and ATen's. `capability` is the GPU's compute capability x 10 (default: the
    current GPU's, else 90, the simulator's H100).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    gpu = device_type == "cuda"
    if capability is None:
        capability = _capability(torch.device("cuda")) if gpu else 90
    return tuple(
        _C.conv_candidates_for(direction, gpu, _tensor_core_dtype(dtype, tf32), capability)
    )


# ---------------------------------------------------------------------------------------
# Keys


_build_hash: str | None = None


def build_hash() -> str:
    """A short hash of the compiled module's bytes: a rebuilt package times again."""
    global _build_hash
    if _build_hash is None:
        path = getattr(_C, "__file__", None)
        digest = hashlib.sha256()
        if path and os.path.exists(path):
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        _build_hash = digest.hexdigest()[:16]
    return _build_hash


_environment_keys: dict[torch.device, str] = {}


def environment_key(device: torch.device) -> str:
    """The device and software stack a measurement holds for."""
    key = _environment_keys.get(device)
    if key is None:
        key = _environment_keys[device] = _environment_key(device)
    return key


def _environment_key(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        cap = "{}.{}".format(*torch.cuda.get_device_capability(device))
    else:
        name, cap = device.type, "-"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return (
        f"{name}|sm{cap}|torch{torch.__version__}|cuda{torch.version.cuda}|cudnn{cudnn}"
        f"|build{build_hash()}"
    )


class Call:
    """One call's key as the op sends it to the tuner (csrc/conv_choice.h, Key)."""

    __slots__ = (
        "bias", "c", "channels_last", "deterministic", "device", "dtype", "h", "k", "n",
        "padding", "relu", "tf32", "train", "w",
    )  # fmt: skip

    def __init__(self, fields: tuple) -> None:
        (dev_type, dev_index, dtype, self.n, self.c, self.h, self.w, self.k, cl, self.padding,
         relu, bias, tf32, det, train) = fields  # fmt: skip
        self.device = torch.device(dev_type, dev_index if dev_index >= 0 else None)
        self.dtype = getattr(torch, dtype)
        self.channels_last, self.relu, self.bias = bool(cl), bool(relu), bool(bias)
        self.tf32, self.deterministic, self.train = bool(tf32), bool(det), bool(train)

    def key(self) -> str:
        """The key of the disk cache: the environment and everything about the call that can
        change which candidate is faster."""
        return (
            f"{environment_key(self.device)}|n{self.n}c{self.c}h{self.h}w{self.w}k{self.k}"
            f"|{str(self.dtype).removeprefix('torch.')}|{'nhwc' if self.channels_last else 'nchw'}"
            f"|pad{self.padding}|relu{int(self.relu)}|bias{int(self.bias)}|tf32{int(self.tf32)}"
            f"|det{int(self.deterministic)}|{'train' if self.train else 'infer'}"
        )


def _codes(choice: dict[str, str]) -> tuple[int, int, int]:
    return tuple(ALGOS[choice.get(d, "ours")] for d in DIRECTIONS)  # type: ignore[return-value]


def _tune(fields: tuple) -> tuple[int, int, int]:
    """What the op asks on a key it has not seen in "auto" mode: the remembered choice (this
    process, else the disk), else the candidates timed now."""
    call = Call(fields)
    key = call.key()
    found = _lookup(key)
    if found is not None:
        return _codes(found)
    return _codes(choose(key, call))


# ---------------------------------------------------------------------------------------
# Choosing


Timer = Callable[[dict[str, Callable[[], object]]], dict[str, float]]


def _median_cuda_ms(
    fns: dict[str, Callable[[], object]], budget_ms: float = 40.0
) -> dict[str, float]:
    """Median CUDA-event milliseconds of each callable, on the current stream."""
    times = {}
    for name, fn in fns.items():
        for _ in range(2):
            fn()  # warm-up: cuDNN algorithm search, module load, allocator
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        reps = int(min(25, max(5, budget_ms / max(start.elapsed_time(end), 1e-3))))
        samples = []
        for _ in range(reps):
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        times[name] = statistics.median(samples)
    return times


timer: Timer = _median_cuda_ms  # replaced in tests


def _input_sets(call: Call) -> list[tuple]:
    """Fresh random inputs shaped like the call's, enough sets that L2 does not hold them."""
    x_shape, w_shape = (call.n, call.c, call.h, call.w), (call.k, call.c, 3, 3)
    itemsize = torch.empty((), dtype=call.dtype).element_size()
    nbytes = (math.prod(x_shape) + math.prod(w_shape)) * itemsize
    l2 = 50 << 20
    if call.device.type == "cuda":
        l2 = int(getattr(torch.cuda.get_device_properties(call.device), "L2_cache_size", l2))
    count = max(1, min(4, math.ceil(3 * l2 / max(nbytes, 1))))
    fmt = torch.channels_last if call.channels_last else torch.contiguous_format

    def rand(shape, memory_format=torch.contiguous_format):
        t = torch.randn(shape, device=call.device, dtype=call.dtype)
        return t.contiguous(memory_format=memory_format)

    return [
        (rand(x_shape, fmt), rand(w_shape), rand((call.k,)) if call.bias else None)
        for _ in range(count)
    ]


def _direction_fns(
    direction: str, names: tuple[str, ...], sets: list[tuple], padding: int, relu: bool
) -> dict[str, Callable[[], object]]:
    """One callable per candidate: that direction alone, by that implementation, each call
    on the next input set. Every call names its algos: nothing here asks the tuner again."""
    ops = torch.ops.overfeat_kernels
    counter = itertools.count()
    ours = [ALGOS["ours"]] * 3
    if direction != "forward":
        # grad_output and the ReLU output per set, from our default forward.
        with_grads = []
        for x, w, b in sets:
            out = ops.conv3x3.default(x, w, b, padding, relu, ours)
            with_grads.append((x, w, b, torch.randn_like(out), out if relu else None))
        sets = with_grads

    def fn(algo: int) -> Callable[[], object]:
        def call() -> object:
            s = sets[next(counter) % len(sets)]
            if direction == "forward":
                return ops.conv3x3.default(*s[:3], padding, relu, [algo, ours[1], ours[2]])
            x, w, _, go, ro = s
            mask = [direction == "grad_input", direction == "grad_weight", False]
            algos = [algo, ours[2]] if direction == "grad_input" else [ours[1], algo]
            return ops.conv3x3_backward.default(go, x, w, ro, padding, mask, algos)

        return call

    return {name: fn(ALGOS[name]) for name in names}


def choose(key: str, call: Call) -> dict[str, str]:
    """Times the candidates for `key` on inputs like the call's, direction by direction (the
    gradients only for a training key), remembers and returns the fastest of each."""
    choice: dict[str, str] = {}
    times: dict[str, dict[str, float]] = {}
    try:
        with torch.no_grad():
            sets = _input_sets(call)
            for direction in DIRECTIONS if call.train else DIRECTIONS[:1]:
                names = candidates(direction, call.device.type, call.dtype, call.tf32,
                                   _capability(call.device))
                measured = timer(_direction_fns(direction, names, sets, call.padding, call.relu))
                times[direction] = {name: float(measured[name]) for name in names}
                choice[direction] = min(names, key=lambda name: times[direction][name])
    except Exception as err:  # never let tuning break a convolution
        warnings.warn(
            f"overfeat_kernels: timing the conv3x3 candidates failed ({err!r}); "
            "using our kernels for this shape",
            RuntimeWarning,
            stacklevel=2,
        )
        _remember(key, dict.fromkeys(DIRECTIONS, "ours"), {}, "fallback", persist=False)
        return dict.fromkeys(DIRECTIONS, "ours")
    _remember(key, choice, times, "measured", persist=True)
    return choice


def _lookup(key: str) -> dict[str, str] | None:
    _load_disk()
    with _lock:
        entry = _memory.get(key)
    return None if entry is None else entry["choice"]


def _remember(
    key: str,
    choice: dict[str, str],
    times: dict[str, dict[str, float]],
    source: str,
    persist: bool,
) -> None:
    entry = {"choice": dict(choice), "times_ms": {d: dict(t) for d, t in times.items()}}
    with _lock:
        _memory[key] = dict(entry, source=source)
    if persist:
        try:
            write_disk({key: entry})
        except OSError as err:
            warnings.warn(
                f"overfeat_kernels: could not write the conv3x3 choice cache ({err})",
                RuntimeWarning,
                stacklevel=2,
            )


# ---------------------------------------------------------------------------------------
# Disk cache


def cache_dir() -> Path:
    """Where the choices are kept (see the module docstring)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "overfeat_kernels"


def _valid_times(times: object) -> bool:
    return isinstance(times, dict) and all(
        k in ALGOS and isinstance(v, (int, float)) and math.isfinite(v) for k, v in times.items()
    )


def _valid_entry(entry: object) -> bool:
    if not isinstance(entry, dict):
        return False
    choice, times = entry.get("choice"), entry.get("times_ms")
    return (
        isinstance(choice, dict)
        and "forward" in choice
        and all(d in DIRECTIONS and c in ALGOS for d, c in choice.items())
        and isinstance(times, dict)
        and all(d in DIRECTIONS and _valid_times(t) for d, t in times.items())
    )


def _older_format(fmt: object) -> bool:
    """Whether `fmt` names an earlier version of this cache's format."""
    prefix, _, version = CACHE_FORMAT.rpartition("/")
    if not isinstance(fmt, str) or not fmt.startswith(prefix + "/"):
        return False
    old = fmt[len(prefix) + 1 :]
    return old.isdigit() and int(old) < int(version)


def read_disk(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The valid entries of the cache file; {} (with a warning) for a corrupt or foreign
    file, {} without one for a missing file."""
    path = path or cache_dir() / CACHE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        warnings.warn(f"overfeat_kernels: ignoring unreadable {path} ({err})", RuntimeWarning,
                      stacklevel=2)  # fmt: skip
        return {}
    if isinstance(data, dict) and _older_format(data.get("format")):
        return {}  # written by an earlier version of this package: replaced on the next write
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        warnings.warn(f"overfeat_kernels: ignoring {path}: not a {CACHE_FORMAT} file",
                      RuntimeWarning, stacklevel=2)  # fmt: skip
        return {}
    entries = data.get("entries")
    if not isinstance(entries, dict):
        warnings.warn(f"overfeat_kernels: ignoring {path}: no entries", RuntimeWarning,
                      stacklevel=2)  # fmt: skip
        return {}
    good = {k: v for k, v in entries.items() if isinstance(k, str) and _valid_entry(v)}
    if len(good) != len(entries):
        warnings.warn(
            f"overfeat_kernels: ignoring {len(entries) - len(good)} malformed entries in {path}",
            RuntimeWarning,
            stacklevel=2,
        )
    return good


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic replace alone (a concurrent entry may be lost)
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def write_disk(entries: dict[str, dict[str, Any]], directory: Path | None = None) -> Path:
    """Merges `entries` into the cache file: under a lock, written to a temporary file in
    the same directory and renamed over the old one, so readers never see half a file."""
    directory = directory or cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CACHE_FILE
    with _file_lock(directory / (CACHE_FILE + ".lock")), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a corrupt old file was reported when it was read
        merged = read_disk(path)
        merged.update(entries)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=CACHE_FILE, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"format": CACHE_FORMAT, "entries": merged}, f, indent=1,
                          sort_keys=True)  # fmt: skip
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return path


def _load_disk() -> None:
    path = cache_dir() / CACHE_FILE
    if path in _disk_loaded:
        return
    entries = read_disk(path)
    with _lock:
        _disk_loaded.add(path)
        for key, entry in entries.items():
            _memory.setdefault(key, dict(entry, source="disk"))


if _C is not None:
    _C.set_conv_tuner(_tune)
