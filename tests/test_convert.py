"""nn.convert on torchvision models: outputs unchanged, training still works."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from overfeat_kernels.nn import Conv3x3, convert


def test_convert_vgg16(capsys):
    torch.manual_seed(0)
    model = torchvision.models.vgg16().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    convert(model)
    assert "replaced 13 convolution(s)" in capsys.readouterr().out
    convs = [m for m in model.modules() if isinstance(m, Conv3x3)]
    assert len(convs) == 13 and all(c.relu for c in convs)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)


def test_convert_resnet18_outputs_and_training():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        before = model(x)
    convert(model, verbose=False)
    convs = [m for m in model.modules() if isinstance(m, Conv3x3)]
    # Every 3x3 stride-1 convolution (the stem and strided ones stay nn.Conv2d).
    assert len(convs) == 13 and not any(c.relu for c in convs)  # BN sits before each ReLU
    assert all(m.stride != (1, 1) or m.kernel_size != (3, 3)
               for m in model.modules() if type(m) is nn.Conv2d)  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    target = torch.tensor([1, 3])
    losses = []
    for _ in range(4):
        loss = nn.functional.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(c.weight.grad is not None for c in convs)


def test_convert_root_and_nothing_eligible(capsys):
    layer = convert(nn.Conv2d(3, 4, 3, padding=1))
    assert isinstance(layer, Conv3x3)
    net = nn.Sequential(nn.Conv2d(3, 4, 5), nn.Conv2d(4, 4, 3, stride=2))
    convert(net)
    assert "replaced 0 convolution(s)" in capsys.readouterr().out


def test_convert_rejects_a_non_module():
    with pytest.raises(TypeError, match=r"module must be a torch\.nn\.Module, got str"):
        convert("vgg16")
