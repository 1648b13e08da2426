"""OverFeat localization (§4): a box-regression head on the pooled layer-5 maps, run
densely like the classifier (sharing its trunk, offset pooling and interleave), its
training with the trunk frozen, and the step from score and box maps to detections.

Boxes are regressed in each window's frame: the four edges (x0, y0, x1, y1) of the object
relative to the window's top-left corner, divided by the window size (the model's input
size), so a box filling the window is (0, 0, 1, 1).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .boxes import Box, Detection, area, intersection
from .maps import dense_maps

__all__ = ["BoxRegressor", "detections_from_maps", "overlap_fraction", "train_regressor"]


class BoxRegressor(nn.Module):
    """Regression head: pooled layer-5 window -> hidden layers -> 4 box edges, shared by
    all classes or one set per class (``num_classes``). The paper's is 4096 -> 1024 -> 4."""

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (4096, 1024),
                 num_classes: int | None = None) -> None:  # fmt: skip
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(True)]
            width = h
        layers.append(nn.Linear(width, 4 * (num_classes or 1)))
        self.head = nn.Sequential(*layers)

    @classmethod
    def for_model(cls, model: nn.Module, hidden: tuple[int, ...] = (4096, 1024),
                  num_classes: int | None = None) -> BoxRegressor:  # fmt: skip
        """A head that reads what `model`'s classifier reads."""
        first = next(m for m in model.classifier if isinstance(m, nn.Linear))
        return cls(first.in_features, hidden, num_classes)

    def forward(self, pooled: Tensor, labels: Tensor | None = None) -> Tensor:
        """``[N, C, s, s]`` pooled windows -> ``[N, 4]`` edges (of `labels`' class when
        per-class)."""
        out = self.head(torch.flatten(pooled, 1))
        return self.select(out, labels)

    def select(self, out: Tensor, labels: Tensor | None) -> Tensor:
        """From ``[N, 4 * classes, ...]`` per-class edges, the 4 of each item's class
        (labels ``[N, ...]``); shared heads' output is returned as it is."""
        if self.num_classes is None:
            return out
        if labels is None:
            raise ValueError("BoxRegressor: a per-class head needs the labels")
        per_class = out.unflatten(1, (self.num_classes, 4))
        rest = labels.shape[1:]
        index = labels.view(labels.shape[0], 1, 1, *rest).expand(-1, 1, 4, *rest)
        return per_class.gather(1, index).squeeze(1)


def overlap_fraction(box: Box, window: Box) -> float:
    """The fraction of `box`'s area that lies inside `window`."""
    a = area(box)
    return intersection(box, window) / a if a > 0 else 0.0


def train_regressor(model: nn.Module, regressor: BoxRegressor,
                    batches: Iterable[tuple[Tensor, Tensor, Tensor]], lr: float = 1e-3,
                    min_overlap: float = 0.5) -> list[float]:  # fmt: skip
    """Trains `regressor` with `model`'s trunk frozen: L2 loss between predicted and true
    edges in the window's frame. Each batch is (windows [N, 3, s, s] preprocessed, boxes
    [N, 4] in window-frame units, labels [N]); windows holding less than `min_overlap` of
    their box are skipped, as in the paper. Returns the loss per step."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    opt = torch.optim.Adam(regressor.parameters(), lr=lr)
    regressor.train()
    losses = []
    for windows, boxes, labels in batches:
        keep = torch.tensor([overlap_fraction(tuple(b.tolist()), (0.0, 0.0, 1.0, 1.0))
                             >= min_overlap for b in boxes])  # fmt: skip
        if not keep.any():
            continue
        with torch.no_grad():
            pooled = model.features(windows[keep])
        pred = regressor(pooled, labels[keep])
        loss = F.mse_loss(pred, boxes[keep])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    regressor.eval()
    return losses


@torch.no_grad()
def detections_from_maps(model: nn.Module, regressor: BoxRegressor, image: Tensor,
                         scale: float, background: int | None = None,
                         min_confidence: float = 0.5) -> list[Detection]:  # fmt: skip
    """Raw detections of one preprocessed image ``[1, 3, H, W]`` (already resized by
    `scale`): class probabilities and boxes at every window of the fine-stride maps, the
    boxes mapped back to the unscaled image. A window yields its best class when that
    class is not `background` and its probability reaches `min_confidence`."""
    spec = model.dense_spec
    scores, edges = dense_maps(model, image, [model.classifier, regressor.head])
    probs = scores.softmax(dim=1)[0]  # [classes, h, w]
    if background is not None:
        probs[background] = -1.0
    conf, label = probs.max(dim=0)
    edges = regressor.select(edges, label[None])[0]
    stride = spec.stride / spec.pool_kernel  # the fine map's stride in pixels
    size = spec.input_size
    out = []
    for i, j in (conf >= min_confidence).nonzero().tolist():
        x0, y0 = j * stride, i * stride
        e = edges[:, i, j].tolist()
        box = tuple(v / scale for v in (x0 + e[0] * size, y0 + e[1] * size,
                                        x0 + e[2] * size, y0 + e[3] * size))  # fmt: skip
        if box[2] > box[0] and box[3] > box[1]:
            out.append(Detection(box, int(label[i, j]), float(conf[i, j])))
    return out
