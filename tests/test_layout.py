"""The package's layering, its old import paths and what importing it pulls in.

The layers, lowest first: ops <- nn <- models <- dense <- apps. A module may import its own
layer and those below it, never one above: the op layer knows nothing of models, models
nothing of dense evaluation or the applications. The package's __init__ imports every layer
but the applications, whose dependencies (Pillow, scikit-learn, tqdm, safetensors) the
library does not need."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import overfeat_kernels
from overfeat_kernels import _aliases

PACKAGE = Path(overfeat_kernels.__file__).parent
# _aliases names the moved modules in strings only: it imports none of them.
LAYERS = {"ops": 0, "_C": 0, "_sim": 0, "_aliases": 0, "nn": 1, "models": 2, "dense": 3, "apps": 4}
TOP = 5  # the package itself (__init__, __main__)


def layer_of(module: str) -> int:
    """The layer of a module named from the package root ("ops.functional", "nn", "")."""
    first = module.split(".")[0]
    return LAYERS.get(first, TOP)


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module under the package) for every import of the package in `path`, relative
    imports resolved; modules named from the package root."""
    package = list(path.relative_to(root).parts[:-1])  # what `.` refers to
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "overfeat_kernels":
                target = node.module.split(".")[1:]
            else:
                continue
            if node.module is None or not target:  # from . import a, b: each name a module
                found += [(node.lineno, ".".join([*target, a.name])) for a in node.names]
            else:
                found.append((node.lineno, ".".join(target)))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "overfeat_kernels":
                    found.append((node.lineno, ".".join(alias.name.split(".")[1:])))
    return found


def upward_imports(root: Path = PACKAGE) -> list[str]:
    """Every import of a higher layer, as 'file:line imports module'."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        own = ".".join(p for p in rel.parts if p != "__init__")
        mine = layer_of(own)
        for line, target in imports_of(path, root):
            theirs = layer_of(target)
            if own == "":
                allowed = theirs < LAYERS["apps"]  # the package: never the applications
            elif own == "__main__":
                allowed = True
            else:
                allowed = theirs <= mine
            if not allowed:
                bad.append(f"{rel}.py:{line} imports {target or 'the package'}")
    return bad


def test_no_layer_imports_a_higher_one():
    assert upward_imports() == []


def test_the_boundary_check_sees_an_upward_import(tmp_path):
    """A planted upward import (the op layer importing the applications) is caught."""
    import shutil

    copy = tmp_path / "overfeat_kernels"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    target = copy / "ops" / "functional.py"
    target.write_text(target.read_text() + "\n\ndef _bad():\n    from ..apps import cli\n")
    models = copy / "models" / "vgg.py"
    models.write_text("from overfeat_kernels.dense import maps\n" + models.read_text())
    bad = upward_imports(copy)
    assert sorted(b.split(":")[0] + " " + b.split()[-1] for b in bad) == [
        "models/vgg.py dense",
        "ops/functional.py apps",
    ], bad


@pytest.mark.parametrize("old", sorted(_aliases.MOVED))
def test_old_module_paths_still_import(old):
    new = importlib.import_module(f"overfeat_kernels.{_aliases.MOVED[old]}")
    assert importlib.import_module(f"overfeat_kernels.{old}") is new
    assert getattr(overfeat_kernels, old) is new


def test_documented_names():
    import overfeat_kernels as ok

    for name in ("conv3x3", "offset_max_pool2d", "interleave", "deinterleave", "conv_backend",
                 "set_conv_backend", "get_conv_backend", "conv_choices", "simulate_cuda",
                 "build_info", "ExtensionNotBuiltError"):  # fmt: skip
        assert callable(getattr(ok, name)), name
    assert ok.conv3x3 is ok.ops.conv3x3 is ok.ops.functional.conv3x3
    for name in ("Conv3x3", "OffsetMaxPool2d", "Interleave", "Deinterleave", "convert",
                 "to_stock", "prepack"):  # fmt: skip
        assert hasattr(ok.nn, name), name
    for name in ("vgg", "vgg11", "vgg16_bn", "overfeat", "VGG", "OverFeat", "DenseSpec",
                 "build_model", "MODEL_NAMES", "VGG_CONFIGS"):  # fmt: skip
        assert hasattr(ok.models, name), name
    for name in ("score_map", "classify", "dense_maps", "topk", "linear_as_conv",
                 "OVERFEAT_SCALES", "VGG_SCALES"):  # fmt: skip
        assert hasattr(ok.dense, name), name
    for name in ("load_vgg", "load_state_dict_file", "load_overfeat_release", "preprocess"):
        assert hasattr(ok.weights, name), name
    for name in ("conv3x3", "offset_max_pool2d", "interleave", "deinterleave"):
        assert callable(getattr(ok.reference, name)), name


def test_import_needs_no_application_dependencies():
    """`import overfeat_kernels` adds none of the apps extra's modules to what torch loads."""
    code = (
        "import sys, torch; before = set(sys.modules); import overfeat_kernels; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new & {'PIL', 'sklearn', 'tqdm', 'safetensors'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.strip() == "[]"


def test_console_script_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "overfeat_kernels", "--help"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "overfeat-kernels" in out and "extract" in out
    toml = (PACKAGE.parent / "pyproject.toml").read_text()
    assert 'overfeat-kernels = "overfeat_kernels.apps.cli:main"' in toml
