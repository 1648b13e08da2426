"""The CPU benchmark's own logic: it compares like with like (the crops it evaluates one by
one are the positions of the dense map), and a quick run writes the JSON and table it
promises."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
spec = importlib.util.spec_from_file_location("bench_cpu", BENCH / "bench_cpu.py")
bench_cpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_cpu)

from overfeat_kernels import dense, models  # noqa: E402


def test_crops_are_the_positions_of_the_fine_map():
    # One crop of the model's input size per position of the fine map, `stride` pixels
    # apart. (Scores differ at the borders: layers with padding see zeros in a crop and
    # real pixels in the whole image, so only the geometry is compared.)
    torch.manual_seed(0)
    model = models.overfeat("fast").eval()
    s = model.dense_spec
    images = torch.randn(1, 3, 263, 279)
    with torch.no_grad():
        h, w = dense.score_map(model, images, True, "offsets").shape[-2:]
    fine = s.stride // s.pool_kernel
    crops = bench_cpu.crops_at_fine_stride(images, s.input_size, fine, h, w)
    assert crops.shape == (h * w, 3, s.input_size, s.input_size) and h * w > 1
    i, j = h - 1, w - 1
    last = images[0, :, i * fine : i * fine + s.input_size, j * fine : j * fine + s.input_size]
    assert torch.equal(crops[-1], last) and torch.equal(crops[1], images[0, :, :231, 16:247])


def test_time_interleaved_returns_a_median_per_candidate():
    calls = {"a": 0, "b": 0}

    def bump(name):
        calls[name] += 1

    t = bench_cpu.time_interleaved({"a": lambda: bump("a"), "b": lambda: bump("b")}, 0.001, 3)
    assert set(t) == {"a", "b"} and all(v > 0 for v in t.values())
    assert calls["a"] > 3 and calls["b"] > 3


def test_quick_run_writes_json_and_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--quick", "--sections", "pool,permute,conv,fused,calls", "--min-run-time", "0.001"]
    assert bench_cpu.main([*args, "--rounds", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    env = result["environment"]
    assert env["device"] and env["threads"] >= 1 and len(env["loadavg_start"]) == 3
    assert len(env["loadavg_end"]) == 3
    pool = result["pool"]
    assert {r["layout"] for r in pool} == {"nchw", "channels_last"}
    for r in pool:
        assert r["fwd_vs_clone"] == r["ms"]["ours"] / r["ms"]["clone"]
        assert r["bwd_vs_clone"] == r["ms"]["ours_bwd"] / r["ms"]["clone"]
        assert r["fwd_target_met"] == (r["fwd_vs_clone"] <= bench_cpu.TARGET_POOL_FWD)
    assert {r["op"] for r in result["permute"]} == {"interleave", "deinterleave"}
    (conv,) = result["conv"]
    assert conv["fwd_speedup_vs_baseline"] == conv["ms"]["baseline"] / conv["ms"]["ours"]
    (fused,) = result["fused"]
    assert fused["op"] == "conv3x3+relu+pool2" and fused["layout"] == "channels_last"
    assert fused["fwd_speedup_vs_baseline"] == fused["ms"]["baseline"] / fused["ms"]["ours"]
    calls = result["calls"]
    ops = ("conv3x3", "offset_max_pool2d", "interleave", "deinterleave")
    layers = ("nn.Conv3x3", "nn.OffsetMaxPool2d", "nn.Interleave", "nn.Deinterleave")
    expected = {(op, mode) for op in ops + layers for mode in bench_cpu.CALL_MODES}
    expected.add(("conv3x3 forward + backward", "step"))
    assert {(r["op"], r["mode"]) for r in calls} == expected
    for r in calls:
        assert r["ours_vs_baseline"] == r["us"]["ours"] / r["us"]["baseline"]
        assert r["target"] == bench_cpu.TARGET_CALL["grad" if r["mode"] == "grad" else r["mode"]]
    table = result["table"]
    assert table.count("| offset_max_pool2d |") == len(pool)
    assert table.count("| one call, tiny input |") == 1
    assert "| conv3x3 + bias + ReLU |" in table
    assert table in capsys.readouterr().out


def test_cpu_model_is_named():
    name = bench_cpu.cpu_model()
    assert isinstance(name, str) and name
