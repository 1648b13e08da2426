"""VGG A–E (Simonyan & Zisserman 2014, Table 1) and OverFeat fast / accurate (Sermanet et
al. 2013, Tables 1 and 3) on our layers.

Every 3x3 convolution is our `Conv3x3` with the ReLU fused in (with batch norm, BN sits
between them, so the ReLU stays a module of its own); everything else is ordinary PyTorch.
The structure is torchvision's VGG: `features`, an `nn.Sequential` ending with the last
max-pool; `avgpool`; `classifier`, the fully-connected layers. In VGG, a fused ReLU leaves
an `nn.Identity` where torchvision has its `nn.ReLU`, so module indices and parameter names
equal torchvision's and its state dicts load with `strict=True`.

The package: ``vgg`` and ``overfeat`` (the networks), ``spec`` (what dense evaluation needs
to know of them), ``heads`` (the classifier as convolutions), ``weights`` (trained weights and
preprocessing), ``taps`` (named layers and forwarding to them).

    >>> import torch
    >>> model = vgg16()
    >>> model(torch.randn(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

from torch import nn

from .heads import head_as_convs, linear_as_conv
from .overfeat import OverFeat, overfeat
from .spec import DenseSpec
from .vgg import (
    VGG,
    VGG_CONFIGS,
    vgg,
    vgg11,
    vgg11_bn,
    vgg13,
    vgg13_bn,
    vgg16,
    vgg16_bn,
    vgg19,
    vgg19_bn,
)

__all__ = [
    "MODEL_NAMES",
    "VGG",
    "VGG_CONFIGS",
    "DenseSpec",
    "OverFeat",
    "build_model",
    "head_as_convs",
    "linear_as_conv",
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
