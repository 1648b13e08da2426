"""Training: a step lowers the loss with the same gradients as a stock-PyTorch copy;
resuming a checkpoint reproduces the uninterrupted run; transfer; DDP; autocast."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import overfeat_kernels as ok
from overfeat_kernels import cli, models, train
from overfeat_kernels.nn import to_stock


def test_gradients_match_stock_copy_and_step_lowers_loss():
    torch.manual_seed(0)
    model = models.vgg11(num_classes=5)
    model.eval()  # no dropout: both copies see the same function
    stock = to_stock(model)
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 4])
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(stock(x), y).backward()
    ours = dict(model.named_parameters())
    for name, p in stock.named_parameters():
        key = name.replace(".0.weight", ".weight").replace(".0.bias", ".bias")
        q = ours.get(name, ours.get(key))
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-6, msg=name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.6)
    losses = []
    for _ in range(4):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for c, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        (root / f"class{c}").mkdir()
        for i in range(4):
            img = rng.integers(0, 60, (40, 44, 3)).astype(np.uint8) + np.uint8(colour) // 2
            Image.fromarray(img).save(root / f"class{c}" / f"{i}.png")
    return root


def config(folder, out, **kw):
    base = {"model": "vgg11", "data": folder, "out": out, "epochs": 2, "batch_size": 4,
            "lr": 0.01, "size": 32, "workers": 0, "device": "cpu", "progress": False}  # fmt: skip
    return train.TrainConfig(**{**base, **kw})


def test_resume_reproduces_uninterrupted_run(folder, tmp_path):
    full = train.train(config(folder, tmp_path / "full"))
    train.train(config(folder, tmp_path / "part", epochs=1))
    resumed = train.train(config(folder, tmp_path / "part", epochs=2, resume=True))
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    a = torch.load(full.checkpoint, weights_only=False)
    b = torch.load(resumed.checkpoint, weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name


def test_transfer_new_head_and_frozen_trunk(folder, tmp_path):
    src = train.train(config(folder, tmp_path / "src", epochs=1))
    before = torch.load(src.checkpoint, weights_only=False)["model"]
    cfg = config(folder, tmp_path / "tl", epochs=1, init_from=str(src.checkpoint),
                 num_classes=5, adaptation=16, freeze_until="pool5", optimizer="adam",
                 lr=1e-3)  # fmt: skip
    result = train.train(cfg)
    after = torch.load(result.checkpoint, weights_only=False)["model"]
    assert after["classifier.9.weight"].shape == (5, 16)  # new adaptation layer + head
    for name, value in before.items():
        if name.startswith("features."):
            assert torch.equal(value, after[name]), name  # frozen
    assert not torch.equal(before["classifier.0.weight"], after["classifier.0.weight"])


def test_freeze_until_and_replace_head():
    model = models.overfeat("fast", num_classes=10)
    frozen = train.freeze_until(model, "layer6")
    assert "classifier.0.weight" in frozen and "classifier.3.weight" not in frozen
    train.replace_head(model, 3)
    assert model.classifier[-1].out_features == 3
    with pytest.raises(ValueError, match="unknown layer"):
        train.freeze_until(model, "conv9")


def test_cli_train_and_errors(folder, tmp_path, capsys):
    args = ["train", "--model", "vgg11", "--data", str(folder), "--out", str(tmp_path / "c"),
            "--epochs", "1", "--batch-size", "6", "--size", "32", "--workers", "0",
            "--device", "cpu", "--lr", "0.01", "--no-progress", "--bf16"]  # fmt: skip
    assert cli.main(args) == 0
    assert "trained 1 epochs" in capsys.readouterr().out
    assert cli.main([*args[:-1], "--resume", "--epochs", "2"]) == 0
    assert cli.main(["train", "--model", "vgg11", "--data", str(tmp_path / "none"),
                        "--out", str(tmp_path / "d")]) == 2  # fmt: skip
    assert "data folder not found" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert cli.main([*args[:-1], "--out", str(tmp_path / "e"), "--init-from", str(bad)]) == 2
    assert "bad.pt: cannot be read as a torch.save file of weights" in capsys.readouterr().err


def test_ddp_two_processes_on_cpu(folder, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "overfeat_kernels", "train", "--model", "vgg11", "--data", str(folder),
           "--out", str(out), "--epochs", "1", "--batch-size", "3", "--size", "32",
           "--workers", "0", "--device", "cpu", "--lr", "0.01", "--no-progress"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 0 and len(ckpt["history"]) == 1


def test_conv3x3_follows_autocast():
    x = torch.randn(2, 4, 9, 9)
    w = torch.randn(6, 4, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ok.conv3x3(x, w, None, 1, True)
    assert out.dtype == torch.bfloat16
    ref = ok.reference.conv3x3(x.double(), w.double(), None, 1, True)
    assert (out.double() - ref).abs().max() < 0.05 * ref.abs().max()
    model = models.overfeat("fast", num_classes=3).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(1, 3, 231, 231)).shape == (1, 3)
