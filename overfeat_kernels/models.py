"""VGG A–E (Simonyan & Zisserman 2014, Table 1) and OverFeat fast / accurate (Sermanet et
al. 2013, Tables 1 and 3) on our layers.

Every 3x3 convolution is our `Conv3x3` with the ReLU fused in (with batch norm, BN sits
between them, so the ReLU stays a module of its own); everything else is ordinary PyTorch.
The structure is torchvision's VGG: `features`, an `nn.Sequential` ending with the last
max-pool; `avgpool`; `classifier`, the fully-connected layers. In VGG, a fused ReLU leaves
an `nn.Identity` where torchvision has its `nn.ReLU`, so module indices and parameter names
equal torchvision's and its state dicts load with `strict=True`.

    >>> model = vgg16()
    >>> model(torch.randn(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .nn import Conv3x3

__all__ = [
    "MODEL_NAMES",
    "VGG",
    "VGG_CONFIGS",
    "DenseSpec",
    "OverFeat",
    "build_model",
    "overfeat",
    "vgg",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
]

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


@dataclass(frozen=True)
class DenseSpec:
    """What dense evaluation needs to know of a model.

    input_size: the training input side (the smallest input a score map is defined for).
    pool_kernel: the last max-pool's kernel (= stride), k of the fine-stride offsets.
    fc_kernel: the side of the last feature map, i.e. fc6 as a convolution's kernel.
    stride: the total subsampling of the feature trunk (the coarse map's stride in pixels).
    """

    input_size: int
    pool_kernel: int
    fc_kernel: int
    stride: int


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
    return nn.Sequential(*layers)


def vgg(config: str, batch_norm: bool = False, num_classes: int = 1000) -> VGG:
    """VGG network `config` ("A", "A-LRN", "B", "C", "D", "E") with random weights.

    Load trained weights with `overfeat_kernels.weights.load_vgg` (torchvision or timm
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


# ---------------------------------------------------------------------------------------
# OverFeat


@dataclass(frozen=True)
class _OverFeatArch:
    input_size: int
    convs: tuple  # (out_channels, kernel, stride, padding, pool after or 0)
    fc: tuple  # hidden sizes of the classifier
    fc_kernel: int


_OVERFEAT = {
    # Table 1: 11x11/4 conv, 2x2 pools, 3072-4096 classifier, 231x231 input.
    "fast": _OverFeatArch(231, ((96, 11, 4, 0, 2), (256, 5, 1, 0, 2), (512, 3, 1, 1, 0),
                                (1024, 3, 1, 1, 0), (1024, 3, 1, 1, 2)), (3072, 4096), 6),
    # Table 3: 7x7/2 conv, pools 3-2-3, 4096-4096 classifier, 221x221 input.
    "accurate": _OverFeatArch(221, ((96, 7, 2, 0, 3), (256, 7, 1, 0, 2), (512, 3, 1, 1, 0),
                                    (512, 3, 1, 1, 0), (1024, 3, 1, 1, 0),
                                    (1024, 3, 1, 1, 3)), (4096, 4096), 5),
}  # fmt: skip


class OverFeat(nn.Module):
    """OverFeat (fast or accurate): `features` (conv layers, ending with the last max-pool)
    and `classifier` (fully-connected layers, with dropout, as in the paper)."""

    def __init__(self, variant: str = "accurate", num_classes: int = 1000,
                 dropout: float = 0.5) -> None:  # fmt: skip
        super().__init__()
        if variant not in _OVERFEAT:
            raise ValueError(f"overfeat: variant must be 'fast' or 'accurate', got {variant!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"overfeat: num_classes must be a positive int, got {num_classes!r}")
        arch = _OVERFEAT[variant]
        self.variant = variant
        layers: list[nn.Module] = []
        channels, stride, last_pool = 3, 1, 0
        for out, kernel, conv_stride, padding, pool in arch.convs:
            if kernel == 3 and conv_stride == 1:
                layers.append(Conv3x3(channels, out, padding=padding, relu=True))
            else:
                layers += [nn.Conv2d(channels, out, kernel, conv_stride, padding), nn.ReLU(True)]
            stride *= conv_stride
            if pool:
                layers.append(nn.MaxPool2d(pool, pool))
                stride *= pool
                last_pool = pool
            channels = out
        self.features = nn.Sequential(*layers)
        hidden = arch.fc
        fc_in = channels * arch.fc_kernel**2
        self.classifier = nn.Sequential(
            nn.Linear(fc_in, hidden[0]), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(hidden[0], hidden[1]), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(hidden[1], num_classes),
        )  # fmt: skip
        self.dense_spec = DenseSpec(arch.input_size, last_pool, arch.fc_kernel, stride)
        # OverFeat's preprocessing: 0-255 pixels, then (x - 118.380948) / 61.896913.
        self.preprocessing = {"scale": 1.0, "mean": (118.380948,) * 3, "std": (61.896913,) * 3}
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, Conv3x3, nn.Linear)):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def overfeat(variant: str = "accurate", num_classes: int = 1000) -> OverFeat:
    """OverFeat "fast" (Table 1) or "accurate" (Table 3) with random weights."""
    return OverFeat(variant, num_classes)


# Names for the command line and configuration files.
MODEL_NAMES: dict[str, tuple] = {
    **{f"vgg{d}": (vgg, c, False) for d, c in (("11", "A"), ("13", "B"), ("16", "D"), ("19", "E"))},
    **{
        f"vgg{d}_bn": (vgg, c, True)
        for d, c in (("11", "A"), ("13", "B"), ("16", "D"), ("19", "E"))
    },
    **{f"vgg-{c}": (vgg, c, False) for c in VGG_CONFIGS},
    "overfeat-fast": (overfeat, "fast"),
    "overfeat-accurate": (overfeat, "accurate"),
}


def build_model(name: str, num_classes: int = 1000) -> nn.Module:
    """A model by its command-line name (see MODEL_NAMES), with random weights."""
    if name not in MODEL_NAMES:
        raise ValueError(f"--model: unknown {name!r}; choose from {', '.join(MODEL_NAMES)}")
    fn, *args = MODEL_NAMES[name]
    if fn is vgg:
        return vgg(args[0], batch_norm=args[1], num_classes=num_classes)
    return overfeat(args[0], num_classes=num_classes)
