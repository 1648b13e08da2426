"""The examples in the docstrings and the README run and print what they claim."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest
import torch

import overfeat_kernels
from overfeat_kernels import backend, dense, models, nn, ops


@pytest.mark.parametrize(
    "module",
    [overfeat_kernels, ops.functional, nn, models, dense.maps, backend],
    ids=lambda m: m.__name__,
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_readme_python_example():
    """Every Python block of the README runs; those on a CUDA device where there is one."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    runnable = [code for code in blocks if torch.cuda.is_available() or '"cuda"' not in code]
    assert len(runnable) >= 2
    for code in runnable:
        exec(compile(code, "README.md", "exec"), {})


def test_cli_help_and_info(capsys):
    from overfeat_kernels import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "examples:" in out
    assert cli.main(["info"]) == 0
    assert '"compiled_module": true' in capsys.readouterr().out


def test_selfcheck_runs_and_agrees(capsys):
    from overfeat_kernels import cli

    assert cli.main(["selfcheck", "--device", "cpu", "--size", "12", "--channels", "8",
                     "--reps", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "all ops agree" in out and "NO" not in out.split()
