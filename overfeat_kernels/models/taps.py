"""Named, extractable layers of our models, and a forward pass that collects them.

VGG layers are named as in the paper: ``conv1_1`` … ``conv5_3`` (after the ReLU),
``pool1`` … ``pool5``, ``fc6``, ``fc7`` (after the ReLU) and ``fc8`` (the class scores).
OverFeat layers: ``layer1`` … ``layer5`` / ``layer6`` (the convolutional layers, after the
ReLU, before any pooling), ``pool5`` (the pooled map of the last convolutional layer: the
input of the classifier), and the fully-connected ``layer6`` … ``layer8`` (fast) /
``layer7`` … ``layer9`` (accurate), the last being the class scores.

    >>> from overfeat_kernels import models
    >>> [name for name, _ in layer_shapes(models.vgg11())][:4]
    ['conv1_1', 'pool1', 'conv2_1', 'pool2']
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..nn import Conv3x3, FusedSequential, fusable_pool
from .heads import linear_as_conv

__all__ = ["Tap", "forward_layers", "layer_shapes", "layer_taps"]


@dataclass(frozen=True)
class Tap:
    name: str
    part: str  # "features" or "classifier"
    index: int  # the layer's output is the output of module `index` of `part`


def layer_taps(model: nn.Module) -> list[Tap]:
    """The extractable layers of `model`, in network order."""
    is_overfeat = hasattr(model, "variant")
    taps: list[Tap] = []
    block, in_block, conv_count = 1, 0, 0
    pending: str | None = None  # a conv whose ReLU is still to come
    feats = list(model.features)
    for i, m in enumerate(feats):
        if isinstance(m, (Conv3x3, nn.Conv2d)):
            conv_count += 1
            in_block += 1
            name = f"layer{conv_count}" if is_overfeat else f"conv{block}_{in_block}"
            if isinstance(m, Conv3x3) and m.relu:
                taps.append(Tap(name, "features", i))
            else:
                pending = name
        elif isinstance(m, nn.ReLU) and pending:
            taps.append(Tap(pending, "features", i))
            pending = None
        elif isinstance(m, nn.MaxPool2d):
            if not is_overfeat:
                taps.append(Tap(f"pool{block}", "features", i))
            elif i == len(feats) - 1:
                taps.append(Tap("pool5", "features", i))
            block, in_block = block + 1, 0
    linears = [i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
    first_fc = conv_count + 1 if is_overfeat else 6
    for n, i in enumerate(linears):
        name = f"layer{first_fc + n}" if is_overfeat else f"fc{first_fc + n}"
        last = n == len(linears) - 1
        follows = i + 1 < len(model.classifier) and isinstance(model.classifier[i + 1], nn.ReLU)
        taps.append(Tap(name, "classifier", i + 1 if follows and not last else i))
    return taps


def forward_layers(model: nn.Module, images: Tensor, names: list[str],
                   dense: bool = False) -> dict[str, Tensor]:  # fmt: skip
    """The outputs of the named layers for `images`, computing no further than needed.

    dense=False: the model as trained (VGG's adaptive average pool before fc6; OverFeat's
    fully-connected layers need images of its input size). dense=True: the fully-connected
    layers run as convolutions over the whole map (outputs stay spatial).
    """
    taps = {t.name: t for t in layer_taps(model)}
    unknown = [n for n in names if n not in taps]
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown} for this model; known: {list(taps)}")
    wanted = {(taps[n].part, taps[n].index): n for n in names}
    last = max((0 if p == "features" else 1, i) for p, i in wanted)
    out: dict[str, Tensor] = {}
    x = images
    modules = list(model.features)
    i = 0
    while i < len(modules):
        # A conv and the max-pool after it run as one call (FusedSequential's fusion)
        # unless a layer between them is wanted.
        fused = fusable_pool(modules, i) if isinstance(model.features, FusedSequential) else None
        if fused is not None and not any(("features", j) in wanted for j in range(i, fused[1])):
            k, j, relu = fused
            x = modules[i].forward_pooled(x, k, relu)
            i = j
        else:
            x = modules[i](x)
        if ("features", i) in wanted:
            out[wanted["features", i]] = x
        if last == (0, i):
            return out
        i += 1
    spec = model.dense_spec
    if not dense:
        if hasattr(model, "avgpool"):
            x = model.avgpool(x)
        elif x.shape[-2:] != (spec.fc_kernel, spec.fc_kernel):
            raise ValueError(
                f"the fully-connected layers need a {spec.fc_kernel}x{spec.fc_kernel} map, i.e. "
                f"images of {spec.input_size}x{spec.input_size}; got {tuple(images.shape[-2:])} "
                "(use dense evaluation for other sizes)"
            )
        x = torch.flatten(x, 1)
    first = True
    for i, m in enumerate(model.classifier):
        if isinstance(m, nn.Linear) and dense:
            x = linear_as_conv(m, x, spec.fc_kernel if first else 1)
            first = False
        else:
            x = m(x)
        if ("classifier", i) in wanted:
            out[wanted["classifier", i]] = x
        if last == (1, i):
            break
    return out


def layer_shapes(model: nn.Module, size: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """(name, per-image output shape) of every layer at input size `size` (default: the
    model's), computed on the meta device: no arithmetic, no memory."""
    smallest = model.dense_spec.input_size
    size = smallest if size is None else size
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"layer_shapes: size must be an int, got {type(size).__name__}")
    if size < smallest:
        raise ValueError(
            f"layer_shapes: size {size} is smaller than the model's input size {smallest}"
        )
    meta = _on_meta(model)
    names = [t.name for t in layer_taps(meta)]
    with torch.no_grad():
        outs = forward_layers(meta, torch.empty(1, 3, size, size, device="meta"), names)
    return [(n, tuple(outs[n].shape[1:])) for n in names]


def _on_meta(model: nn.Module) -> nn.Module:
    """`model` itself if it is on the meta device, else a meta copy (build models under
    ``with torch.device("meta")`` to avoid the copy)."""
    if next(model.parameters()).device.type == "meta":
        return model
    return copy.deepcopy(model).to("meta")
