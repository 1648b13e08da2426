"""Weight import: torchvision and timm VGG, files (weights_only / safetensors), the
OverFeat release layout, clear mismatch errors, preprocessing."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from overfeat_kernels import models, weights


@pytest.fixture(scope="module")
def tv_vgg11():
    torch.manual_seed(0)
    return torchvision.models.vgg11().eval()


def _same_output(a, b):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=1e-4, atol=1e-5)


def to_timm(state):
    """torchvision VGG keys to timm's (fc1 / fc2 as convolutions, head.fc)."""
    out = {}
    for k, v in state.items():
        if k.startswith("classifier.0."):
            k, v = "pre_logits.fc1." + k[13:], v.reshape(4096, 512, 7, 7) if v.dim() == 2 else v
        elif k.startswith("classifier.3."):
            k, v = "pre_logits.fc2." + k[13:], v.reshape(4096, 4096, 1, 1) if v.dim() == 2 else v
        elif k.startswith("classifier.6."):
            k = "head.fc." + k[13:]
        out[k] = v
    return out


def test_torchvision_and_timm_formats(tv_vgg11):
    ours = weights.load_vgg(models.vgg11(), tv_vgg11.state_dict())
    _same_output(ours, tv_vgg11)
    from_timm = weights.load_vgg(models.vgg11(), to_timm(tv_vgg11.state_dict()))
    _same_output(from_timm, tv_vgg11)


def test_files(tmp_path, tv_vgg11):
    pth, st = tmp_path / "vgg11.pth", tmp_path / "vgg11.safetensors"
    torch.save(tv_vgg11.state_dict(), pth)
    save_file({k: v.contiguous() for k, v in tv_vgg11.state_dict().items()}, str(st))
    for path in (pth, st):
        _same_output(weights.load_vgg(models.vgg11(), path), tv_vgg11)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": tv_vgg11.state_dict(), "epoch": 3}, ckpt)
    _same_output(weights.load_vgg(models.vgg11(), ckpt), tv_vgg11)
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        weights.load_vgg(models.vgg11(), tmp_path / "nope.pth")


@pytest.mark.parametrize(
    ("name", "data", "kind"),
    [
        ("garbage.pth", b"not a checkpoint", "torch.save"),
        ("empty.pth", b"", "torch.save"),
        ("cut.pth", None, "torch.save"),  # a real file cut in half
        ("garbage.safetensors", b"\x00" * 16, ".safetensors"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, tv_vgg11, name, data, kind):
    path = tmp_path / name
    if data is None:
        torch.save(tv_vgg11.state_dict(), path)
        data = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(data)
    with pytest.raises(ValueError, match=rf"{name}: cannot be read as a {kind} file of weights"):
        weights.load_vgg(models.vgg11(), path)


def test_mismatch_names_missing_and_unexpected_keys(tv_vgg11):
    state = dict(tv_vgg11.state_dict())
    del state["features.3.bias"]
    state["features.99.weight"] = torch.zeros(1)
    with pytest.raises(KeyError) as info:
        weights.load_vgg(models.vgg11(), state)
    assert "features.3.bias" in str(info.value) and "features.99.weight" in str(info.value)
    with pytest.raises(KeyError, match="missing keys"):
        weights.load_vgg(models.vgg13(), tv_vgg11.state_dict())
    state = dict(tv_vgg11.state_dict())
    state["classifier.6.weight"] = torch.zeros(10, 4096)
    with pytest.raises(ValueError, match=r"classifier\.6\.weight: expected"):
        weights.load_vgg(models.vgg11(), state)


def test_overfeat_release_round_trip(tmp_path):
    torch.manual_seed(1)
    src = models.overfeat("accurate")
    path = tmp_path / "net_weight_1"
    weights.save_overfeat_release(src, path)
    assert path.stat().st_size == 4 * 144_656_488
    dst = weights.load_overfeat_release(models.overfeat("accurate"), path)
    for (name, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="is it the other variant's file"):
        weights.load_overfeat_release(models.overfeat("fast"), path)


def test_preprocess():
    pixels = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    of = weights.preprocess(models.overfeat("fast"), pixels)
    torch.testing.assert_close(of, torch.full_like(of, (255 - 118.380948) / 61.896913))
    vg = weights.preprocess(models.vgg11(), pixels)
    expect = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(vg[0, :, 0, 0], expect)
