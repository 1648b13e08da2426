"""`overfeat-kernels extract` end to end on a generated folder with every bad kind of
input; batch-size invariance; a killed run resumed; 2-process torchrun on the CPU."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from image_factory import EXPECTED, make_images

from overfeat_kernels import cli

LAYERS = "conv3_1,pool5,fc7"
BASE = ["extract", "--model", "vgg11", "--random-init", "--seed", "3", "--layers", LAYERS,
        "--size", "32", "--device", "cpu", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


def run(args, out, images, **env):
    """The CLI in a subprocess (some tests kill it): returns the exit status."""
    cmd = [sys.executable, "-m", "overfeat_kernels", *BASE, *args, "--out", str(out), str(images)]
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    return proc


def load(out):
    with open(out / "index.csv", newline="") as f:
        index = list(csv.DictReader(f))
    return index, {n: np.load(out / f"{n}.npy") for n in LAYERS.split(",")}


@pytest.fixture(scope="module")
def reference_run(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    status = cli.main([*BASE, "--batch-size", "4", "--shard-size", "5", "--workers", "2",
                       "--out", str(out), str(images)])  # fmt: skip
    return status, out


def test_end_to_end(reference_run, images, capsys):
    status, out = reference_run
    assert status == 3  # finished, some inputs skipped
    index, feats = load(out)
    got = {str(Path(r["path"]).relative_to(images)): r["status"] for r in index}
    assert got == EXPECTED
    ok_rows = [r for r in index if r["status"] == "ok"]
    assert [int(r["row"]) for r in ok_rows] == list(range(len(ok_rows)))
    assert all(r["reason"] for r in index if r["status"] == "skipped")
    assert feats["conv3_1"].shape == (8, 256, 8, 8) and feats["fc7"].shape == (8, 4096)
    assert np.load(out / "fc7.npy", mmap_mode="r").shape == (8, 4096)  # memory-mappable
    assert all(np.isfinite(a).all() and a.std() > 0 for a in feats.values())
    assert not (out / ".partial").exists()
    assert json.loads((out / "manifest.json").read_text())["model"] == "vgg11"


def test_batch_size_invariance(reference_run, images, tmp_path):
    out = tmp_path / "b1"
    assert cli.main([*BASE, "--batch-size", "1", "--workers", "0", "--out", str(out),
                     str(images)]) == 3  # fmt: skip
    _, a = load(reference_run[1])
    _, b = load(out)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_killed_run_resumes_to_the_same_files(reference_run, images, tmp_path):
    out = tmp_path / "resumed"
    args = ["--batch-size", "4", "--shard-size", "5", "--workers", "0"]
    killed = run(args, out, images, OVERFEAT_KERNELS_TEST_EXIT_AFTER_SHARDS="1")
    assert killed.returncode == 137
    assert (out / ".partial" / "shard_000000").is_dir()
    assert not (out / "index.csv").exists() and not (out / "fc7.npy").exists()
    resumed = run(args, out, images)
    assert resumed.returncode == 3, resumed.stderr
    # 12 inputs in shards of 5: shard 0 survived the kill and is not recomputed.
    assert "over the 7 computed now" in resumed.stdout
    ref_index, ref = load(reference_run[1])
    index, feats = load(out)
    assert index == ref_index
    for name in ref:
        assert np.array_equal(feats[name], ref[name]), name


def test_other_arguments_refused(reference_run, images, capsys):
    out = reference_run[1]
    other = [a if a != LAYERS else "fc6" for a in BASE]
    assert cli.main([*other, "--out", str(out), str(images)]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "layers" in err
    # The same arguments again (batch size and workers may differ): complete, nothing redone.
    same = [*BASE, "--shard-size", "5", "--batch-size", "2", "--workers", "0"]
    assert cli.main([*same, "--out", str(out), str(images)]) == 3
    assert "nothing left to compute" in capsys.readouterr().out


def test_torchrun_two_processes_match(reference_run, images, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "overfeat_kernels", *BASE, "--batch-size", "4", "--shard-size", "5",
           "--workers", "0", "--out", str(out), str(images)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode in (1, 3), proc.stderr[-2000:]  # torchrun reports a child's 3 as 1
    ref_index, ref = load(reference_run[1])
    index, feats = load(out)
    assert index == ref_index
    for name in ref:
        np.testing.assert_allclose(feats[name], ref[name], rtol=1e-4, atol=1e-5)


def test_safetensors_and_dense(tmp_path, capsys):
    from PIL import Image
    from safetensors.numpy import load_file

    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (224, 240, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (100, 300, 3), dtype=np.uint8)).save(folder / "b.png")
    out = tmp_path / "st"
    args = ["extract", "--model", "vgg11", "--random-init", "--layers", "pool5,fc8", "--dense",
            "--format", "safetensors", "--device", "cpu", "--workers", "0", "--no-progress",
            "--out", str(out), str(folder)]  # fmt: skip
    assert cli.main(args) == 3  # b.png is below the model's 224 with --dense
    t = load_file(str(out / "features.safetensors"))
    assert t["pool5"].shape == (1, 512) and t["fc8"].shape == (1, 1000)  # pooled over space
    assert cli.main([*args[:-3], "--min-size", "64", "--out", str(tmp_path / "z"),
                     str(folder)]) == 2  # fmt: skip
    assert "--min-size 64" in capsys.readouterr().err


def test_errors(images, tmp_path, capsys):
    assert cli.main([*BASE[:7], "conv9_9", "--out", str(tmp_path / "x"), str(images)]) == 2
    assert "conv9_9" in capsys.readouterr().err
    assert cli.main([*BASE, "--out", str(tmp_path / "y"), str(tmp_path / "missing")]) == 2
    assert "input not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --weights and --random-init together: argparse error
        cli.main([*BASE, "--weights", "w.pth", "--out", str(tmp_path), str(images)])


def test_layers_and_help(capsys):
    assert cli.main(["layers", "vgg16"]) == 0
    out = capsys.readouterr().out
    assert "conv5_3    512x14x14" in out and "fc7        4096" in out
    assert cli.main(["layers", "vgg11", "--size", "10"]) == 2
    assert "size 10 is smaller than the model's input size 224" in capsys.readouterr().err
    assert cli.main(["layers", "overfeat-accurate"]) == 0
    assert "layer9" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["extract", "--help"])
    help_text = capsys.readouterr().out
    for option in ("--pool", "--dense", "--shard-size", "--workers", "torchrun", "example"):
        assert option in help_text
