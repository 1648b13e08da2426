"""The benchmark's own logic, on the CPU: its op tables compare like with like, and its
OverFeat geometry gives the paper's layer-5 sizes. (Timing itself needs a GPU.)"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

spec = importlib.util.spec_from_file_location(
    "bench_ops", Path(__file__).parents[1] / "benchmarks" / "bench_ops.py"
)
bench_ops = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_ops)


def test_overfeat_layer5_sizes():
    sizes = [bench_ops.overfeat_accurate_layer5(h, w) for h, w in bench_ops.OVERFEAT_SCALES]
    assert sizes[0] == (17, 17) and sizes[-1] == (35, 44)
    assert bench_ops.OVERFEAT_LAYERS[0][3:] == (35, 44)


def test_vgg16_layer_table():
    layers = bench_ops.VGG16_LAYERS
    assert len(layers) == 13
    for (_, _, k_prev, h_prev, _), (_, c, _, h, _) in itertools.pairwise(layers):
        assert c == k_prev and h in (h_prev, h_prev // 2)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_conv_functions_agree(fmt):
    x, w, b, g = (t.cpu() for t in _cpu_conv_inputs(fmt))
    torch.testing.assert_close(bench_ops._ours_fwd(x, w, b, g), bench_ops._eager_fwd(x, w, b, g))
    ours = bench_ops._ours_bwd(x, w, b, g)
    base = bench_ops._cudnn_bwd(x, w, b, g)
    for i in (0, 1):
        torch.testing.assert_close(ours[i], base[i], rtol=1e-4, atol=1e-4)
    ours_gw, base_gw = bench_ops._ours_wgrad(x, w, b, g), bench_ops._cudnn_wgrad(x, w, b, g)
    torch.testing.assert_close(ours_gw[1], base[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(base_gw[1], base[1], rtol=1e-4, atol=1e-4)


def _cpu_conv_inputs(fmt):
    return (
        torch.randn(2, 5, 9, 8).contiguous(memory_format=fmt),
        torch.randn(4, 5, 3, 3),
        torch.randn(4),
        torch.randn(2, 4, 9, 8).contiguous(memory_format=fmt),
    )


@pytest.mark.parametrize("k", [2, 3])
def test_pool_op_table_agrees(k):
    n, c, h, w = 2, 3, 14, 17
    x = torch.randn(n, c, h, w)
    p = torch.ops.overfeat_kernels.offset_max_pool2d(x, k)
    g = torch.randn_like(p)
    table = bench_ops.pool_ops(k, h, w, torch.contiguous_format, x.numel() * 4, p.numel() * 4)
    for name, (ours, ref, nbytes) in table.items():
        assert nbytes > 0
        torch.testing.assert_close(ours(x, p, g), ref(x, p, g), msg=name)


bm_spec = importlib.util.spec_from_file_location(
    "bench_models", Path(__file__).parents[1] / "benchmarks" / "bench_models.py"
)
bench_models = importlib.util.module_from_spec(bm_spec)
bm_spec.loader.exec_module(bench_models)


def test_stock_copy_computes_the_same_network():
    from overfeat_kernels import models
    from overfeat_kernels.nn import Conv3x3

    ours = models.overfeat("fast", num_classes=3).eval()
    stock = bench_models.to_stock(ours)  # overfeat_kernels.nn.to_stock
    assert not any(isinstance(m, Conv3x3) for m in stock.modules())
    x = torch.randn(1, 3, 231, 231)
    with torch.no_grad():
        torch.testing.assert_close(stock(x), ours(x))


def test_crops_match_fine_map_positions():
    # One crop at stride 12 per position of accurate's fine-stride map: a fair comparison.
    from overfeat_kernels import dense, models

    model = models.overfeat("accurate").to("meta").eval()
    x = torch.empty(1, 3, 461, 569, device="meta")
    crops = bench_models.crop_by_crop(model, x, dense.OVERFEAT_SCALES)
    positions = sum(
        dense.score_map(model, dense.maps._resize(x, s)).shape[-2:].numel()
        for s in dense.OVERFEAT_SCALES
    )
    assert crops == positions == 1575


def test_choice_counts():
    choices = {
        "a": {"choice": {"forward": "tc"}, "times_ms": {}, "source": "measured"},
        "b": {"choice": {"forward": "cudnn", "grad_input": "tc", "grad_weight": "tc"}},
        "c": {"choice": {"forward": "tc", "grad_input": "cudnn", "grad_weight": "tc"}},
    }
    assert bench_ops.choice_counts(choices) == {
        "forward": {"tc": 2, "cudnn": 1},
        "grad_input": {"tc": 1, "cudnn": 1},
        "grad_weight": {"tc": 2},
    }


class _HostEvent:
    """A stand-in for torch.cuda.Event on the CPU: record() reads the host clock."""

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


def test_bench_queued_times_bursts_of_calls_per_call(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    sets = [(i,) for i in range(3)]
    seen = []

    def fn(i):
        seen.append(i)
        time.sleep(0.002)

    ms = bench_ops.bench_queued(fn, sets, budget_ms=60, rounds=3, event=_HostEvent)
    assert 2.0 <= ms < 10.0  # per call, not per burst
    # 2 warm-up calls, one burst over the sets to size the rest, then 3 equal bursts
    bursts = len(seen) - 2 - len(sets)
    assert bursts > 0 and bursts % 3 == 0 and bursts // 3 >= len(sets)
    assert set(seen) == {0, 1, 2}  # every input set is used


def _conv_row(layer, ours, cudnn, wgmma=None):
    row = {"layer": layer, "dtype": "bf16", "ratio_vs_cudnn": cudnn / ours}
    row.update(ratio_vs_eager=2.0, auto_ratio_vs_cudnn=1.0, bwd_ratio_vs_cudnn=0.5)
    row.update(queued_ratio_vs_cudnn=1.0, queued_ratio_vs_eager=1.0, queued_auto_ratio_vs_cudnn=1.0)
    if wgmma is not None:
        row.update(wgmma_ms=wgmma, wgmma_ratio_vs_cudnn=cudnn / wgmma, wgmma_ratio_vs_eager=3.0)
        row.update(wgmma_dgrad_ms=1.0, wgmma_dgrad_ratio_vs_cudnn=0.8)
    return row


def test_summarize_conv_geomeans_over_the_vgg_rows(monkeypatch):
    monkeypatch.setattr(bench_ops.ok, "conv_choices", dict)
    rows = [_conv_row("vgg16.conv1_1", 2.0, 1.0, 0.5), _conv_row("vgg16.conv1_2", 1.0, 2.0, 1.0)]
    result = {"conv": [*rows, _conv_row("overfeat.conv5", 1.0, 9.0)]}  # not VGG-16: left out
    bench_ops.summarize_conv(result)
    s = result["conv_summary_vgg16"]["bf16"]
    assert s["rows"] == 2
    assert s["geomean_ratio_vs_cudnn"] == pytest.approx(1.0)  # sqrt(0.5 * 2)
    assert s["geomean_wgmma_ratio_vs_cudnn"] == pytest.approx(2.0)  # sqrt(2 * 2)
    assert s["geomean_wgmma_dgrad_ratio_vs_cudnn"] == pytest.approx(0.8)
    result["conv"][1].pop("wgmma_ms")  # a column missing in one row: no geomean for it
    bench_ops.summarize_conv(result)
    assert "geomean_wgmma_ratio_vs_cudnn" not in result["conv_summary_vgg16"]["bf16"]


def test_an_interrupted_run_writes_the_rows_it_measured(monkeypatch, tmp_path):
    """A GPU lease stops a step with SIGINT at its time limit: the JSON keeps every finished
    row and says it was interrupted."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench_ops, "environment", lambda: {"device": "test"})
    monkeypatch.setattr(bench_ops, "ceilings", lambda quick: {"copy_GBps": 1.0})
    monkeypatch.setattr(bench_ops.ok, "conv_choices", dict)

    def two_rows_then_interrupt(layers, batches, dtypes, quick, rows):
        rows.append(_conv_row("vgg16.conv1_1", 2.0, 1.0))
        rows.append(_conv_row("vgg16.conv1_2", 1.0, 2.0))
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_ops, "conv_rows", two_rows_then_interrupt)
    out = tmp_path / "conv.json"
    assert bench_ops.main(["--sections", "conv,pool", "--out", str(out)]) == 130
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True and len(doc["conv"]) == 2 and "pool" not in doc
    assert doc["conv_summary_vgg16"]["bf16"]["rows"] == 2


STUB_PYTHON = """#!/usr/bin/env bash
# Stands in for python3 in scripts/gpu_check.sh: a GPU of capability $STUB_CC, no build yet.
case "$*" in
  *get_device_capability*) echo "$STUB_CC" ;;
  "-m pip install"*) echo "$TORCH_CUDA_ARCH_LIST" > "$STUB_OUT/arch" ;;
  "-m overfeat_kernels info") echo "{}" ;;
  *build_has_sm90a*) [ "$STUB_SM90A" = 1 ] ;;
  *) exit 1 ;;
esac
"""


@pytest.mark.parametrize(
    ("cc", "sm90a", "arch", "rc"),
    [("9.0", "1", "9.0a", 0), ("9.0", "0", "9.0a", 1), ("8.0", "0", "8.0", 0)],
    ids=["hopper", "hopper_without_sm90a", "ampere"],
)
def test_gpu_check_builds_hopper_for_sm90a(tmp_path, cc, sm90a, arch, rc):
    """On compute capability 9.0 the lease builds for 9.0a (the Hopper kernel's code), and
    its build step fails if the module still lacks it."""
    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    env = {**os.environ, "PYTHON": str(stub), "STUB_CC": cc, "STUB_SM90A": sm90a}
    env["STUB_OUT"] = str(tmp_path)
    env.pop("TORCH_CUDA_ARCH_LIST", None)
    script = Path(__file__).parents[1] / "scripts" / "gpu_check.sh"
    done = subprocess.run(
        ["bash", str(script), str(tmp_path / "out"), "--lease", "build"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == rc, done.stdout + done.stderr
    assert (tmp_path / "arch").read_text().strip() == arch
    assert ("no sm_90a code" in done.stderr) == (rc == 1)
