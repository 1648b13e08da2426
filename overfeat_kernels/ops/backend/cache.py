"""What "auto" chose: the record in memory (what `conv_choices` shows) and the disk cache,
``conv_choices.json`` (see overfeat_kernels.ops.backend). The op keeps its own table of
codes in C++; this record is what the tuner consults on a key the op has not seen."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._ext import _C
from .candidates import ALGOS, DIRECTIONS

ENV_CACHE = "OVERFEAT_KERNELS_CACHE_DIR"
CACHE_FORMAT = "overfeat_kernels.conv_choices/2"
CACHE_FILE = "conv_choices.json"

_lock = threading.Lock()
_memory: dict[str, dict[str, Any]] = {}  # key -> {"choice", "times_ms", "source"}
_disk_loaded: set[Path] = set()


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
