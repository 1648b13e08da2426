"""What dense evaluation needs to know of a model (its `dense_spec` attribute)."""

from __future__ import annotations

from dataclasses import dataclass


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
