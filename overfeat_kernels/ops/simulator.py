"""Running the package's CUDA kernels without a GPU.

The CUDA sources (``csrc/cuda``) are also compiled with the host C++ compiler into
``overfeat_kernels._sim``, against a simulator of the CUDA execution model: blocks run on
the CPU's threads, the threads of a block run as cooperative fibers, and shared memory,
barriers, warp collectives, tensor-core fragments and ``cp.async`` behave as the PTX ISA
specifies. Inside :func:`simulate_cuda`, every op called on CPU tensors (forward and
backward, from layers, models, ``torch.compile`` graphs alike) runs the CUDA kernels in
the simulator instead of the CPU kernels.

It checks correctness, adversarially by default, and says nothing about speed:

- shared memory and every new CPU buffer are filled with 0xFF bytes (NaN) so that a read
  of something never written shows; buffers carry guard bands checked after each launch;
- the threads of a block can run between barriers in order, reversed or in a seeded
  shuffle: a race between barriers shows as a bitwise difference between schedules;
- a ``__syncthreads`` reached at different call sites, or a warp collective that not all
  its lanes reach, raises naming the kernel, block and thread.

Example:
    >>> import torch, overfeat_kernels as ok
    >>> x = torch.randn(1, 8, 12, 12)
    >>> with ok.simulate_cuda():
    ...     y = ok.conv3x3(x, torch.randn(4, 8, 3, 3), relu=True)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from . import _ext

__all__ = [
    "SCHEDULES",
    "assert_schedule_independent",
    "available",
    "enabled",
    "host_steps",
    "launch_counts",
    "reset_launch_counts",
    "simulate_cuda",
]

SCHEDULES = ("in_order", "reversed", "shuffle")
ENV_VAR = "OVERFEAT_KERNELS_SIMULATE_CUDA"
SCHEDULE_ENV_VAR = "OVERFEAT_KERNELS_SIM_SCHEDULE"
RACE_CHECK_ENV_VAR = "OVERFEAT_KERNELS_SIM_RACE_CHECK"  # "0": the race detector starts off

try:
    from .. import _sim  # registers torch.ops.overfeat_kernels_sim.*

    _sim_error: BaseException | None = None
    if os.environ.get(RACE_CHECK_ENV_VAR, "1").strip() == "0":
        _sim.set_race_check(False)
except ImportError as err:
    _sim = None
    _sim_error = err


def available() -> bool:
    """Whether the simulator module was built and loads."""
    return _sim is not None and _ext.loaded()


def _require() -> Any:
    _ext.require()
    if _sim is None:
        raise _ext.ExtensionNotBuiltError(
            f"overfeat_kernels: the CUDA simulator module could not be loaded ({_sim_error}); "
            f"{_ext.BUILD_HINT}"
        )
    return _sim


def enabled() -> bool:
    """Whether CPU calls of the ops currently run the CUDA kernels in the simulator."""
    return _ext.loaded() and bool(_ext._C.simulate_cuda_enabled())


@contextlib.contextmanager
def simulate_cuda(
    enabled: bool = True,
    *,
    schedule: str | None = None,
    seed: int | None = None,
    poison: bool = True,
    race_check: bool | None = None,
) -> Iterator[None]:
    """Runs the ops' CUDA kernels in the simulator for CPU tensors, within the block.

    Process-wide (all threads), restored on exit; nests.

    Args:
        enabled: False runs the CPU kernels inside the block (to switch off locally).
        schedule: order of a block's threads between barriers: ``"in_order"``,
            ``"reversed"`` or ``"shuffle"`` (seeded by ``seed``; blocks are shuffled too).
            Default: ``$OVERFEAT_KERNELS_SIM_SCHEDULE`` (e.g. ``shuffle:7``), else in order.
        seed: the shuffle's seed (default 0, or the one in the environment variable).
        poison: fill shared memory and every new CPU buffer with NaN bytes, with guard
            bands checked after each launch (slower; on by default).
        race_check: report unsynchronised shared-memory accesses between a block's
            threads (and Hopper's asynchronous units) as errors naming both source lines,
            and shared memory read by wgmma or a TMA store without the async-proxy fence
            (slower). None keeps the current setting: on, unless an enclosing block
            turned it off or ``$OVERFEAT_KERNELS_SIM_RACE_CHECK=0``.

    Raises:
        ValueError: an unknown schedule.
        ExtensionNotBuiltError: the simulator module was not built.
    """
    if schedule is None:
        schedule, env_seed = _schedule_from_environment()
        seed = env_seed if seed is None else seed
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    seed = 0 if seed is None else seed
    sim = _require()
    was_enabled = bool(_ext._C.simulate_cuda_enabled())
    was_schedule = sim.get_schedule()
    was_poisoned = _state["poison"]
    was_race_check = bool(sim.get_race_check())
    sim.set_schedule(SCHEDULES.index(schedule), int(seed) & (2**64 - 1))
    if race_check is not None:
        sim.set_race_check(bool(race_check))
    _set_poison(sim, poison and enabled)
    _ext._C.set_simulate_cuda(bool(enabled))
    try:
        yield
    finally:
        _ext._C.set_simulate_cuda(was_enabled)
        sim.set_schedule(*was_schedule)
        sim.set_race_check(was_race_check)
        _set_poison(sim, was_poisoned)


_state = {"poison": False}


def _schedule_from_environment() -> tuple[str, int]:
    """``$OVERFEAT_KERNELS_SIM_SCHEDULE`` as (name, seed): ``"shuffle:7"``, ``"reversed"``."""
    name, _, seed = os.environ.get(SCHEDULE_ENV_VAR, "").partition(":")
    try:
        return name or "in_order", int(seed or 0)
    except ValueError:
        raise ValueError(
            f"{SCHEDULE_ENV_VAR}={os.environ[SCHEDULE_ENV_VAR]!r}: expected NAME or NAME:SEED "
            f"with NAME one of {SCHEDULES}"
        ) from None


def _set_poison(sim: Any, on: bool) -> None:
    sim.set_poison_shared(on)
    sim.set_guarded_allocator(on)
    _state["poison"] = on


def launch_counts() -> dict[str, int]:
    """``{kernel name: launches}`` run by the simulator since the last reset."""
    return dict(_require().launch_counts())


def host_steps() -> dict[str, int]:
    """``{step: count}`` of the host-side steps the launchers took since the last reset:
    the operand copies a conv3x3 call made (``"conv3x3 copy: filters"``, ...)."""
    return dict(_require().host_steps())


def reset_launch_counts() -> None:
    """Zeroes :func:`launch_counts` and :func:`host_steps`."""
    _require().reset_launch_counts()


def assert_schedule_independent(
    fn: Callable[[], Any],
    schedules: Sequence[tuple[str, int]] = (
        ("in_order", 0),
        ("reversed", 0),
        ("shuffle", 1),
        ("shuffle", 2),
    ),
) -> Any:
    """Runs ``fn`` in the simulator under each schedule and checks that every tensor it
    returns is bitwise identical across them (a race between barriers breaks that).

    Returns the first run's result. Raises AssertionError naming the schedule that differs.
    """
    results = []
    for name, seed in schedules:
        with simulate_cuda(schedule=name, seed=seed):
            results.append((name, seed, fn()))
    first = _flatten(results[0][2])
    for name, seed, res in results[1:]:
        for i, (a, b) in enumerate(zip(first, _flatten(res), strict=True)):
            same = a.shape == b.shape and torch.equal(
                a.view(-1).view(torch.uint8) if a.numel() else a,
                b.view(-1).view(torch.uint8) if b.numel() else b,
            )
            if not same:
                raise AssertionError(
                    f"output {i} differs between schedules {schedules[0][0]!r} and "
                    f"{name!r} (seed {seed}): a race between barriers?"
                )
    return results[0][2]


def _flatten(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x.detach().contiguous()]
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _flatten(item)]
    return []


def _enable_from_environment() -> None:
    """``OVERFEAT_KERNELS_SIMULATE_CUDA=1`` simulates for the whole process."""
    if os.environ.get(ENV_VAR, "") not in ("", "0") and available():
        sim = _require()
        name, seed = _schedule_from_environment()
        if name not in SCHEDULES:
            raise ValueError(f"{SCHEDULE_ENV_VAR}: schedule must be one of {SCHEDULES}")
        sim.set_schedule(SCHEDULES.index(name), seed)
        _set_poison(sim, True)
        _ext._C.set_simulate_cuda(True)
