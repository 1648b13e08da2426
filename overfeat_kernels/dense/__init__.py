"""Dense evaluation: class score maps over whole images, coarse or at OverFeat's fine
stride, multi-scale classification (``maps``), box regression and localization from dense
maps (``localize``), and OverFeat's greedy box merge with its measures (``boxes``)."""

from .maps import (
    OVERFEAT_SCALES,
    VGG_SCALES,
    classify,
    dense_maps,
    head_as_convs,
    linear_as_conv,
    score_map,
    topk,
)

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
