"""The tuner: what the op asks, from C++, about a key it has not seen in "auto" mode. It
answers from the record (this process's choices, else the disk cache), else times the
candidates on inputs like the call's (CUDA events on the current stream) and remembers the
fastest of each direction."""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import statistics
import warnings
from collections.abc import Callable

import torch

from .._ext import _C
from .cache import _lookup, _remember
from .candidates import ALGOS, DIRECTIONS, _capability, candidates

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
        "padding", "pool", "pool_offsets", "relu", "tf32", "train", "w",
    )  # fmt: skip

    def __init__(self, fields: tuple) -> None:
        (dev_type, dev_index, dtype, self.n, self.c, self.h, self.w, self.k, cl, self.padding,
         relu, bias, tf32, det, train, self.pool, offsets) = fields  # fmt: skip
        self.device = torch.device(dev_type, dev_index if dev_index >= 0 else None)
        self.dtype = getattr(torch, dtype)
        self.channels_last, self.relu, self.bias = bool(cl), bool(relu), bool(bias)
        self.tf32, self.deterministic, self.train = bool(tf32), bool(det), bool(train)
        self.pool_offsets = bool(offsets)

    def key(self) -> str:
        """The key of the disk cache: the environment and everything about the call that can
        change which candidate is faster."""
        return (
            f"{environment_key(self.device)}|n{self.n}c{self.c}h{self.h}w{self.w}k{self.k}"
            f"|{str(self.dtype).removeprefix('torch.')}|{'nhwc' if self.channels_last else 'nchw'}"
            f"|pad{self.padding}|relu{int(self.relu)}|bias{int(self.bias)}|tf32{int(self.tf32)}"
            f"|det{int(self.deterministic)}|{'train' if self.train else 'infer'}"
            + (f"|pool{self.pool}" if self.pool else "")
            + ("offsets" if self.pool_offsets else "")
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
    direction: str,
    names: tuple[str, ...],
    sets: list[tuple],
    padding: int,
    relu: bool,
    pool: int = 0,
    pool_offsets: bool = False,
) -> dict[str, Callable[[], object]]:
    """One callable per candidate: that direction alone, by that implementation, each call
    on the next input set. Every call names its algos: nothing here asks the tuner again.
    With `pool` the forward is the pooled call (with `pool_offsets`, offset_max_pool2d's
    windows): our kernels pool in their epilogue, the others pool after the conv."""
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
                algos = [algo, ours[1], ours[2]]
                return ops.conv3x3.default(*s[:3], padding, relu, algos, pool, pool_offsets)
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
                fns = _direction_fns(direction, names, sets, call.padding, call.relu, call.pool,
                                     call.pool_offsets)
                measured = timer(fns)
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


if _C is not None:
    _C.set_conv_tuner(_tune)
