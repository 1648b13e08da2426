"""Dense evaluation: class score maps over whole images, coarse or at OverFeat's fine
stride, and multi-scale classification (OverFeat §3.3–3.5; VGG §3.2).

The fully-connected layers run as convolutions (fc6 as an s x s convolution, the rest
1x1) through *views* of the model's own parameters: nothing is copied per call, and
training the model updates what dense evaluation uses.

    >>> from overfeat_kernels import models
    >>> model = models.overfeat("accurate").eval()
    >>> score_map(model, torch.randn(1, 3, 245, 245)).shape      # fine stride: 12 pixels
    torch.Size([1, 1000, 3, 3])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..models.heads import head_as_convs, linear_as_conv
from ..nn import fusable_tail

__all__ = [
    "OVERFEAT_SCALES",
    "VGG_SCALES",
    "classify",
    "dense_maps",
    "head_as_convs",
    "linear_as_conv",
    "score_map",
    "topk",
]

# OverFeat Table 5: the six input sizes (height x width) of multi-scale evaluation.
OVERFEAT_SCALES = ((245, 245), (281, 317), (317, 389), (389, 461), (425, 497), (461, 569))
# VGG §3.2: the smallest image side Q of multi-scale evaluation.
VGG_SCALES = (256, 384, 512)


def _spec(model: nn.Module):
    spec = getattr(model, "dense_spec", None)
    if spec is None:
        raise TypeError(
            "dense evaluation needs a model from overfeat_kernels.models (it has no "
            f"dense_spec): got {type(model).__name__}"
        )
    return spec


def _check_images(images: object, min_size: int, fn: str) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{fn}: images must be a [N, 3, H, W] tensor, got {shape}")
    if not images.is_floating_point():
        raise TypeError(f"{fn}: images must be a float tensor (preprocessed), got {images.dtype}")
    h, w = images.shape[-2:]
    if h < min_size or w < min_size:
        raise ValueError(
            f"{fn}: images of {h}x{w} are smaller than the model's input size "
            f"{min_size}x{min_size}; resize them to at least that"
        )
    return images


def _check_model_input(model: nn.Module, images: Tensor, fn: str) -> None:
    """Images on the device and, outside autocast, in the dtype of the model's parameters
    (the stock layers would otherwise fail deep inside with torch's message)."""
    param = next(model.parameters(), None)
    if param is None:
        return
    if images.device != param.device:
        raise ValueError(
            f"{fn}: images are on {images.device} but the model is on {param.device}; "
            "move one to the other"
        )
    autocast = images.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(
        images.device.type
    )
    if images.dtype != param.dtype and not autocast:  # (autocast casts both)
        raise TypeError(
            f"{fn}: images are {images.dtype} but the model's parameters are {param.dtype}; "
            f"convert one to the other (images.to({param.dtype}) or model.to({images.dtype}))"
        )


def dense_maps(
    model: nn.Module,
    images: Tensor,
    heads: list[nn.Sequential] | None = None,
    fine_stride: bool = True,
    method: str = "offsets",
) -> list[Tensor]:
    """One map per head (default: the model's classifier) over `images`, sharing one pass
    of the feature trunk and one (offset) pooling, as OverFeat's classification and
    localization heads share layer 5. Arguments as for score_map."""
    spec = _spec(model)
    _check_images(images, spec.input_size, "score_map")
    _check_model_input(model, images, "score_map")
    if method not in ("offsets", "dilated"):
        raise ValueError(f"score_map: method must be 'offsets' or 'dilated', got {method!r}")
    heads = [model.classifier] if heads is None else heads
    trunk = model.features[:-1]  # all but the last max-pool
    s = spec.fc_kernel
    if not fine_stride:
        pooled = model.features(images)  # the last pool fused into the last conv where it can
        return [head_as_convs(h, pooled, s) for h in heads]
    k = spec.pool_kernel
    if method == "dilated":
        pooled = F.max_pool2d(trunk(images), k, stride=1)
        return [head_as_convs(h, pooled, s, first_dilation=k) for h in heads]
    # The offset pooling fused into the last conv (conv3x3's pool_offsets) where the trunk
    # ends with a Conv3x3 (and nothing but nn.Identity / nn.ReLU after it).
    modules = list(trunk)
    last = fusable_tail(modules)
    if last is None:
        pre, conv = trunk(images), None  # the last feature map before the last max-pool
    else:
        pre, conv = trunk[:last](images), modules[last]
    grow = 2 * conv.padding - 2 if conv is not None else 0  # the last conv's, when fused
    shape = tuple(d + grow for d in pre.shape[-2:])
    side = min(shape)
    if (side - k + 1) // k < s:
        need = k * s + k - 1
        more = (need - side) * spec.stride // k
        raise ValueError(
            f"score_map: fine stride with method='offsets' needs a last feature map of at "
            f"least {need}x{need} before the last pool, got {shape}: use images "
            f"about {more} pixels larger, or method='dilated'"
        )
    if conv is None:
        pooled = ops.offset_max_pool2d(pre, k)
    else:
        relu = conv.relu or any(type(m) is nn.ReLU for m in modules[last + 1 :])
        pooled = conv.forward_pooled(pre, k, relu, offsets=True)
    return [ops.interleave(head_as_convs(h, pooled, s), k) for h in heads]


def score_map(
    model: nn.Module, images: Tensor, fine_stride: bool = True, method: str = "offsets"
) -> Tensor:
    """Class score map ``[N, classes, h, w]`` of `images` (preprocessed, at least the
    model's input size).

    Args:
        model: a VGG or OverFeat model from ``overfeat_kernels.models``.
        images: ``[N, 3, H, W]`` float tensor, preprocessed as the model expects.
        fine_stride: False gives the coarse map (stride 32 for VGG and OverFeat fast, 36
            for accurate). True gives the map at k times finer stride (16, 16, 12), k being
            the last max-pool's kernel.
        method: for ``fine_stride=True``. ``"offsets"``: OverFeat §3.3 / Fig. 3, offset
            pooling at the last pool, the classifier on the k*k pooled maps as one batch,
            then interleave. ``"dilated"``: a stride-1 pool and a first classifier layer
            dilated by k; its map contains the offsets map as its top-left block, and may
            be larger (offset pooling drops the trailing pixels not every offset can use).

    Example:
        >>> from overfeat_kernels import models
        >>> score_map(models.vgg16().eval(), torch.randn(1, 3, 256, 256)).shape
        torch.Size([1, 1000, 2, 2])
    """
    return dense_maps(model, images, None, fine_stride, method)[0]


def _check_scales(scales: object) -> tuple:
    def is_size(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    ok = isinstance(scales, (tuple, list)) and len(scales) > 0
    for scale in scales if ok else ():
        pair = isinstance(scale, (tuple, list)) and len(scale) == 2 and all(map(is_size, scale))
        ok = ok and (is_size(scale) or pair)
    if not ok:
        raise ValueError(
            "classify: scales must be a non-empty list of ints >= 1 (smallest side) or "
            f"(height, width) pairs of them, got {scales!r}"
        )
    return tuple(scales)


def _resize(images: Tensor, scale: int | tuple[int, int]) -> Tensor:
    if isinstance(scale, int):  # smallest side = scale, aspect kept
        h, w = images.shape[-2:]
        size = (scale, max(scale, round(w * scale / h))) if h <= w else (
            max(scale, round(h * scale / w)), scale)  # fmt: skip
    else:
        size = tuple(scale)
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def classify(
    model: nn.Module,
    images: Tensor,
    scales: tuple | list | None = None,
    flip: bool = True,
    reduce: str | None = None,
    fine_stride: bool | None = None,
) -> Tensor:
    """Multi-scale (and flipped) dense classification; returns class scores ``[N, classes]``.

    Defaults follow each paper. OverFeat: the six Table 5 sizes, fine stride, per scale and
    flip the spatial max of each class's score, then the average (``reduce="max"``). VGG:
    smallest side Q in {256, 384, 512}, the coarse map, the spatial mean of the softmax,
    averaged over scales and flips (``reduce="mean_softmax"``). Images of one scale go
    through as one batch.

    Args:
        images: ``[N, 3, H, W]`` preprocessed float tensor (any size; resized per scale).
        scales: ints (smallest side, aspect kept) or (height, width) pairs.
        flip: also evaluate the horizontally flipped images.
        reduce: "max" (OverFeat) or "mean_softmax" (VGG).
        fine_stride: score maps at fine stride (default: True for OverFeat, False for VGG).
            Where the offsets map would be empty (the smallest scales of OverFeat fast), the
            dilated path is used: same values, a superset of positions.
    """
    spec = _spec(model)
    is_overfeat = hasattr(model, "variant")
    scales = _check_scales(
        scales if scales is not None else (OVERFEAT_SCALES if is_overfeat else VGG_SCALES)
    )
    reduce = reduce or ("max" if is_overfeat else "mean_softmax")
    fine_stride = is_overfeat if fine_stride is None else fine_stride
    if reduce not in ("max", "mean_softmax"):
        raise ValueError(f"classify: reduce must be 'max' or 'mean_softmax', got {reduce!r}")
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError("classify: images must be a [N, 3, H, W] tensor")
    total = None
    views = 2 if flip else 1  # the images, and their mirror images if flip
    for scale in scales:
        x = _resize(images, scale)
        _check_images(x, spec.input_size, f"classify (scale {scale})")
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        try:
            maps = score_map(model, batch, fine_stride=fine_stride)
        except ValueError:
            if not fine_stride:
                raise
            maps = score_map(model, batch, fine_stride=True, method="dilated")
        if reduce == "max":
            per_image = maps.amax(dim=(-2, -1))
        else:
            per_image = maps.float().softmax(dim=1).mean(dim=(-2, -1))
        # (views named: with an empty batch a -1 would be ambiguous)
        per_image = per_image.float().view(views, images.shape[0], per_image.shape[1]).sum(0)
        total = per_image if total is None else total + per_image
    return total / (views * len(scales))


def topk(scores: Tensor, k: int = 5) -> tuple[Tensor, Tensor]:
    """The k best (scores, class indices) per image, best first."""
    if not isinstance(scores, Tensor) or scores.dim() < 1:
        raise ValueError(f"topk: scores must be a [..., classes] tensor, got {scores!r:.80}")
    classes = scores.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"topk: k must be an int, got {type(k).__name__} {k!r}")
    if not 0 <= k <= classes:
        raise ValueError(f"topk: k must be from 0 to the number of classes {classes}, got {k}")
    return scores.topk(k, dim=-1)
