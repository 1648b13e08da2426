"""OverFeat fast / accurate (Sermanet et al. 2013, Tables 1 and 3) on our layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..nn import Conv3x3, FusedSequential
from .spec import DenseSpec


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
        self.features = FusedSequential(*layers)
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
