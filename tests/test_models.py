"""The models: paper architectures (parameter counts), torchvision equivalence, our
kernels in place of every 3x3 convolution, gradients through every model."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from overfeat_kernels import models
from overfeat_kernels.nn import Conv3x3

# Millions of parameters: VGG Table 2 (133 / 133 / 133 / 134 / 138 / 144), OverFeat text.
PARAMS_M = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("config", list(PARAMS_M))
def test_vgg_parameter_counts_and_layers(config):
    model = models.vgg(config)
    assert round(n_params(model) / 1e6) == PARAMS_M[config]
    assert isinstance(model.features, nn.Sequential)
    assert isinstance(model.features[-1], nn.MaxPool2d)
    convs3 = [m for m in model.modules() if isinstance(m, Conv3x3)]
    assert all(c.relu for c in convs3)
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules())
    expect3 = sum(isinstance(v, int) for v in models.VGG_CONFIGS[config])
    assert len(convs3) == expect3


@pytest.mark.parametrize("variant,millions", [("fast", 145.9), ("accurate", 144.7)])
def test_overfeat_parameter_counts(variant, millions):
    model = models.overfeat(variant)
    assert round(n_params(model) / 1e6, 1) == millions
    assert isinstance(model.features[-1], nn.MaxPool2d)
    spec = model.dense_spec
    x = torch.randn(1, 3, spec.input_size, spec.input_size)
    assert model.features(x).shape[-2:] == (spec.fc_kernel, spec.fc_kernel)


def test_vgg16_equals_torchvision_vgg16():
    torch.manual_seed(0)
    tv = torchvision.models.vgg16().eval()
    ours = models.vgg16().eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["vgg11_bn", "vgg19"])
def test_torchvision_state_dicts_load_strictly(name):
    tv = getattr(torchvision.models, name)()
    ours = getattr(models, name)()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    tv.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("config", list(PARAMS_M))
def test_gradients_flow_vgg(config, batch_norm):
    model = models.vgg(config, batch_norm=batch_norm, num_classes=7).train()
    out = model(torch.randn(2, 3, 32, 32))  # the adaptive average pool accepts any size
    nn.functional.cross_entropy(out, torch.tensor([1, 5])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("variant", ["fast", "accurate"])
def test_gradients_flow_overfeat(variant):
    model = models.overfeat(variant, num_classes=5).train()
    for m in model.modules():  # paper init is N(0, 0.01): too small for 8 layers of signal
        if isinstance(m, (nn.Linear, nn.Conv2d, Conv3x3)):
            nn.init.kaiming_normal_(m.weight)
    size = model.dense_spec.input_size
    out = model(torch.randn(2, 3, size, size))
    nn.functional.cross_entropy(out, torch.tensor([0, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_arguments():
    with pytest.raises(ValueError, match="config must be one of"):
        models.vgg("F")
    with pytest.raises(ValueError, match="variant must be"):
        models.overfeat("medium")
    with pytest.raises(ValueError, match="num_classes"):
        models.vgg("A", num_classes=0)
