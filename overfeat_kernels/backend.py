"""Which implementation runs ``conv3x3``: our kernels or PyTorch's own convolution (cuDNN).

Modes:

- ``"auto"`` (the default): on a CUDA tensor, the first call with a new shape times the
  candidates on that GPU, for the forward and, when gradients are needed, for grad-input
  and grad-weight each on its own; it keeps the fastest of each and remembers them in
  memory and on disk. Elsewhere (CPU tensors, the simulator, inside ``torch.compile``
  tracing or CUDA-graph capture, where nothing may be timed) it uses a remembered choice if
  there is one, else our kernels.
- ``"ours"``: our kernels only, the configuration picked by their heuristic (what the
  benchmarks and tests of our kernels use).
- ``"cudnn"``: PyTorch's own convolution with bias, then ReLU: cuDNN on CUDA, ATen's CPU
  convolution on the CPU.

The candidates on CUDA (see :func:`candidates`): ``"direct"`` (CUDA-core kernels, every
dtype), ``"tc"`` and ``"tc-small"`` (the tensor-core implicit GEMM with large or small
tiles: bfloat16, float16, and float32 when ``torch.backends.cudnn.allow_tf32`` is set;
grad-weight on tensor cores has one tile) and ``"cudnn"``.
All of them are deterministic (cuDNN under ``torch.use_deterministic_algorithms(True)``
picks deterministic algorithms itself, and that setting is part of the key). The choice
is passed into the op (its ``algos`` argument), so whatever runs, the result is
``conv3x3``'s: ``relu(F.conv2d(input, weight, bias, padding))`` in the input's memory
format, with the same autograd.

    >>> import overfeat_kernels as ok
    >>> with ok.conv_backend("cudnn"):
    ...     ok.get_conv_backend()
    'cudnn'

The disk cache is ``conv_choices.json`` in ``$OVERFEAT_KERNELS_CACHE_DIR``, else
``$XDG_CACHE_HOME/overfeat_kernels``, else ``~/.cache/overfeat_kernels``. Its keys name the
GPU, the torch / CUDA / cuDNN versions and a hash of the compiled module, so a new driver
stack or a rebuilt package times again. Writers take a lock and replace the file
atomically; a corrupt or foreign file is ignored with a warning.
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
from torch import Tensor
from torch._prims_common import suggest_memory_format

__all__ = ["conv_backend", "conv_choices", "get_conv_backend", "set_conv_backend"]

MODES = ("auto", "ours", "cudnn")
DIRECTIONS = ("forward", "grad_input", "grad_weight")
# Candidate name -> the op's `algos` code (csrc/op_schemas.h, ConvAlgo). "ours" is our
# kernels with their own heuristic.
ALGOS = {"ours": 0, "direct": 1, "tc": 2, "tc-small": 3, "cudnn": 4}
ENV_MODE = "OVERFEAT_KERNELS_CONV_BACKEND"
ENV_CACHE = "OVERFEAT_KERNELS_CACHE_DIR"
CACHE_FORMAT = "overfeat_kernels.conv_choices/2"
CACHE_FILE = "conv_choices.json"

# Device types on which "auto" times candidates (tests widen it to exercise the path on CPU).
AUTO_DEVICE_TYPES = frozenset({"cuda"})

_global_mode: str | None = None  # None: not set; the environment or "auto" decides
_scoped_mode: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "overfeat_kernels_conv_backend", default=None
)
_lock = threading.Lock()
_memory: dict[str, dict[str, Any]] = {}  # key -> {"choice", "times_ms", "source"}
_DEFAULT_ALGOS = [0, 0, 0]
_disk_loaded: set[Path] = set()


def _check_mode(mode: object, name: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return mode  # type: ignore[return-value]


def set_conv_backend(mode: str) -> None:
    """Sets the conv3x3 backend for the whole process: "auto", "ours" or "cudnn"."""
    global _global_mode
    _global_mode = _check_mode(mode, "set_conv_backend: mode")


def get_conv_backend() -> str:
    """The mode in force here: a ``conv_backend`` scope, else ``set_conv_backend``, else
    ``$OVERFEAT_KERNELS_CONV_BACKEND``, else "auto"."""
    scoped = _scoped_mode.get()
    if scoped is not None:
        return scoped
    if _global_mode is not None:
        return _global_mode
    env = os.environ.get(ENV_MODE)
    return "auto" if not env else _check_mode(env, ENV_MODE)


@contextlib.contextmanager
def conv_backend(mode: str) -> Iterator[None]:
    """Uses `mode` for conv3x3 calls inside the ``with`` block (this thread / task only)."""
    token = _scoped_mode.set(_check_mode(mode, "conv_backend: mode"))
    try:
        yield
    finally:
        _scoped_mode.reset(token)


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
    """Forgets the in-memory choices (the disk cache stays)."""
    with _lock:
        _memory.clear()
        _disk_loaded.clear()


# ---------------------------------------------------------------------------------------
# Candidates and the algos of a call


def candidates(direction: str, device_type: str, dtype: torch.dtype, tf32: bool) -> tuple[str, ...]:
    """The implementations "auto" times for one direction of a call.

    On CUDA: the direct kernels, the tensor-core tiles where they apply, and cuDNN. On
    the CPU our conv3x3 is ATen's convolution with the epilogue fused: ours and ATen's.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if device_type != "cuda":
        return ("ours", "cudnn")
    tc = dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and tf32)
    if not tc:
        return ("direct", "cudnn")
    tiles = ("tc",) if direction == "grad_weight" else ("tc", "tc-small")
    return ("direct", *tiles, "cudnn")


def _algos(choice: dict[str, str]) -> list[int]:
    return [ALGOS[choice.get(d, "ours")] for d in DIRECTIONS]


def _mode_algos(mode: str) -> list[int]:
    return [ALGOS["cudnn"]] * 3 if mode == "cudnn" else list(_DEFAULT_ALGOS)


def algos_for(
    input: Tensor, weight: Tensor, bias: Tensor | None, padding: int, relu: bool
) -> list[int]:
    """The op's ``algos`` for this call (arguments already checked): [forward, grad-input,
    grad-weight]."""
    if torch.compiler.is_compiling():
        # Traced code must not time anything: the process-wide mode, "auto" meaning ours.
        return _mode_algos(_global_mode or "ours")
    mode = get_conv_backend()
    if mode != "auto":
        return _mode_algos(mode)
    if input.device.type not in AUTO_DEVICE_TYPES:
        return list(_DEFAULT_ALGOS)
    key = call_key(input, weight, bias, padding, relu)
    found = _lookup(key)
    if found is not None:
        return _algos(found)
    if input.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return list(_DEFAULT_ALGOS)  # timed at the next eager call
    return _algos(choose(key, input, weight, bias, padding, relu))


# ---------------------------------------------------------------------------------------
# Keys


_build_hash: str | None = None


def build_hash() -> str:
    """A short hash of the compiled module's bytes: a rebuilt package times again."""
    global _build_hash
    if _build_hash is None:
        from . import _ext

        path = getattr(getattr(_ext, "_C", None), "__file__", None)
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


def call_key(input: Tensor, weight: Tensor, bias: Tensor | None, padding: int, relu: bool) -> str:
    """The environment and everything about the call that can change which is faster."""
    n, c, h, w = input.shape
    cl = input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous()
    train = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, weight, bias)
    )
    tf32 = input.dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    return (
        f"{environment_key(input.device)}|n{n}c{c}h{h}w{w}k{weight.shape[0]}"
        f"|{str(input.dtype).removeprefix('torch.')}|{'nhwc' if cl else 'nchw'}|pad{padding}"
        f"|relu{int(relu)}|bias{int(bias is not None)}|tf32{int(tf32)}"
        f"|det{int(torch.are_deterministic_algorithms_enabled())}|{'train' if train else 'infer'}"
    )


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


def _input_sets(input, weight, bias) -> list[tuple]:
    """Fresh random inputs shaped like the call's, enough sets that L2 does not hold them."""
    nbytes = (input.numel() + weight.numel()) * input.element_size()
    l2 = 50 << 20
    if input.device.type == "cuda":
        l2 = int(getattr(torch.cuda.get_device_properties(input.device), "L2_cache_size", l2))
    count = max(1, min(4, math.ceil(3 * l2 / max(nbytes, 1))))
    fmt = suggest_memory_format(input)

    def like(t, memory_format=torch.contiguous_format):
        if t is None:
            return None
        return torch.randn(t.shape, device=t.device, dtype=t.dtype).contiguous(
            memory_format=memory_format
        )

    return [(like(input, fmt), like(weight), like(bias)) for _ in range(count)]


def _direction_fns(
    direction: str, names: tuple[str, ...], sets: list[tuple], padding: int, relu: bool
) -> dict[str, Callable[[], object]]:
    """One callable per candidate: that direction alone, by that implementation, each call
    on the next input set."""
    ops = torch.ops.overfeat_kernels
    counter = itertools.count()
    if direction != "forward":
        # grad_output and the ReLU output per set, from our default forward.
        with_grads = []
        for x, w, b in sets:
            out = ops.conv3x3.default(x, w, b, padding, relu)
            with_grads.append((x, w, b, torch.randn_like(out), out if relu else None))
        sets = with_grads

    def fn(algo: int) -> Callable[[], object]:
        def call() -> object:
            s = sets[next(counter) % len(sets)]
            if direction == "forward":
                return ops.conv3x3.default(*s[:3], padding, relu, [algo, 0, 0])
            x, w, _, go, ro = s
            mask = [direction == "grad_input", direction == "grad_weight", False]
            algos = [algo, 0] if direction == "grad_input" else [0, algo]
            return ops.conv3x3_backward.default(go, x, w, ro, padding, mask, algos)

        return call

    return {name: fn(ALGOS[name]) for name in names}


def choose(
    key: str, input: Tensor, weight: Tensor, bias: Tensor | None, padding: int, relu: bool
) -> dict[str, str]:
    """Times the candidates for `key` on inputs like these, direction by direction (the
    gradients only for a training key), remembers and returns the fastest of each."""
    train = key.endswith("|train")
    tf32 = input.dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    choice: dict[str, str] = {}
    times: dict[str, dict[str, float]] = {}
    try:
        with torch.no_grad():
            sets = _input_sets(input, weight, bias)
            for direction in DIRECTIONS if train else DIRECTIONS[:1]:
                names = candidates(direction, input.device.type, input.dtype, tf32)
                measured = timer(_direction_fns(direction, names, sets, padding, relu))
                times[direction] = {name: float(measured[name]) for name in names}
                choice[direction] = min(names, key=lambda name: times[direction][name])
    except Exception as err:  # never let tuning break a convolution
        warnings.warn(
            f"overfeat_kernels: timing the conv3x3 candidates failed ({err!r}); "
            "using our kernels for this shape",
            RuntimeWarning,
            stacklevel=3,
        )
        _remember(key, {d: "ours" for d in DIRECTIONS}, {}, "fallback", persist=False)
        return {d: "ours" for d in DIRECTIONS}
    _remember(key, choice, times, "measured", persist=True)
    return choice


def _lookup(key: str) -> dict[str, str] | None:
    entry = _memory.get(key)  # the hot path: a remembered key, no file system work
    if entry is None:
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
                stacklevel=4,
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
