"""Lazy aliases of the modules that moved into subpackages, so that code written against
the flat layout keeps working: ``import overfeat_kernels.weights``, ``from overfeat_kernels
import extract``, ``overfeat_kernels.localize.BoxRegressor`` all give the module's one object
in its new place, imported only when first asked for."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

PACKAGE = "overfeat_kernels"

# Old name (under the package) -> where the module lives now.
MOVED = {
    "_ext": "ops._ext",
    "_validate": "ops.checks",
    "backend": "ops.backend",
    "reference": "ops.reference",
    "simulator": "ops.simulator",
    "weights": "models.weights",
    "layers": "models.taps",
    "localize": "dense.localize",
    "boxes": "dense.boxes",
    "cli": "apps.cli",
    "selfcheck": "apps.selfcheck",
    "demo": "apps.demo",
    "extract": "apps.extract",
    "train": "apps.train",
    "imageio": "apps.imageio",
    "timing": "apps.timing",
    "_distributed": "apps.distributed",
}


def resolve(name: str) -> ModuleType:
    """The module an old name stands for, imported now, also registered under the old name."""
    module = importlib.import_module(f"{PACKAGE}.{MOVED[name]}")
    sys.modules.setdefault(f"{PACKAGE}.{name}", module)
    return module


class _Loader(importlib.abc.Loader):
    def __init__(self, name: str) -> None:
        self.name = name

    def create_module(self, spec):  # the existing module object, not a new one
        return resolve(self.name)

    def exec_module(self, module) -> None:
        pass


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``overfeat_kernels.<old name>`` for ``import`` statements."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Loader(name))


def install() -> None:
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())


def module_getattr(name: str) -> ModuleType:
    """The package's ``__getattr__``: attribute access to an old module name."""
    if name in MOVED:
        return resolve(name)
    raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}")
