"""VGG A–E (Simonyan & Zisserman 2014, Table 1) on our layers, with torchvision's structure
and parameter names (see the package docstring)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nn import Conv3x3, FusedSequential
from .spec import DenseSpec

# Numbers are output channels of a 3x3 conv, "1:n" a 1x1 conv, "M" a 2x2 max-pool, "LRN"
# local response normalisation (A-LRN, after the first layer as in Krizhevsky et al.).
VGG_CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, "1:256", "M", 512, 512, "1:512", "M",
          512, 512, "1:512", "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}  # fmt: skip



class VGG(nn.Module):
    """VGG with torchvision's structure and parameter names."""

    def __init__(self, features: nn.Sequential, num_classes: int = 1000,
                 dropout: float = 0.5, config: str = "") -> None:  # fmt: skip
        super().__init__()
        self.config = config
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )  # fmt: skip
        self.dense_spec = DenseSpec(input_size=224, pool_kernel=2, fc_kernel=7, stride=32)
        self.preprocessing = {"scale": 1 / 255, "mean": (0.485, 0.456, 0.406),
                              "std": (0.229, 0.224, 0.225)}  # fmt: skip
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, (nn.Conv2d, Conv3x3)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _vgg_features(config: list[int | str], batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        elif v == "LRN":
            layers.append(nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0))
        elif isinstance(v, str) and v.startswith("1:"):
            out = int(v[2:])
            layers.append(nn.Conv2d(channels, out, 1))
            layers += [nn.BatchNorm2d(out)] if batch_norm else []
            layers.append(nn.ReLU(True))
            channels = out
        else:
            if batch_norm:
                layers += [Conv3x3(channels, v), nn.BatchNorm2d(v), nn.ReLU(True)]
            else:  # ReLU fused; Identity keeps torchvision's module indices
                layers += [Conv3x3(channels, v, relu=True), nn.Identity()]
            channels = v
    return FusedSequential(*layers)


def vgg(config: str, batch_norm: bool = False, num_classes: int = 1000) -> VGG:
    """VGG network `config` ("A", "A-LRN", "B", "C", "D", "E") with random weights.

    Load trained weights with `overfeat_kernels.models.weights.load_vgg` (torchvision or timm
    format) or `model.load_state_dict(torchvision_state_dict)`.
    """
    if config not in VGG_CONFIGS:
        raise ValueError(f"vgg: config must be one of {sorted(VGG_CONFIGS)}, got {config!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"vgg: num_classes must be a positive int, got {num_classes!r}")
    name = config + ("-BN" if batch_norm else "")
    return VGG(_vgg_features(VGG_CONFIGS[config], batch_norm), num_classes, config=name)


def vgg11(num_classes: int = 1000) -> VGG:
    return vgg("A", num_classes=num_classes)


def vgg13(num_classes: int = 1000) -> VGG:
    return vgg("B", num_classes=num_classes)


def vgg16(num_classes: int = 1000) -> VGG:
    return vgg("D", num_classes=num_classes)


def vgg19(num_classes: int = 1000) -> VGG:
    return vgg("E", num_classes=num_classes)


def vgg11_bn(num_classes: int = 1000) -> VGG:
    return vgg("A", batch_norm=True, num_classes=num_classes)


def vgg13_bn(num_classes: int = 1000) -> VGG:
    return vgg("B", batch_norm=True, num_classes=num_classes)


def vgg16_bn(num_classes: int = 1000) -> VGG:
    return vgg("D", batch_norm=True, num_classes=num_classes)


def vgg19_bn(num_classes: int = 1000) -> VGG:
    return vgg("E", batch_norm=True, num_classes=num_classes)
