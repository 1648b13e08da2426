"""Boxes: overlap, OverFeat's greedy merge (§4.3) and detection precision / recall.

Boxes are ``(x0, y0, x1, y1)`` in pixels, x1 > x0 and y1 > y0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Detection", "evaluate", "iou", "match_score", "merge_boxes"]

Box = tuple[float, float, float, float]


@dataclass
class Detection:
    box: Box
    label: int
    score: float  # accumulated confidence of `label` after merging
    count: int = 1  # raw boxes merged into this one
    votes: dict[int, float] | None = None  # accumulated confidence per class (merged boxes)

    def class_votes(self) -> dict[int, float]:
        return dict(self.votes) if self.votes else {self.label: self.score}


def area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def intersection(a: Box, b: Box) -> float:
    return area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def iou(a: Box, b: Box) -> float:
    inter = intersection(a, b)
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def match_score(a: Box, b: Box) -> float:
    """OverFeat's match score (lower: better match) from the distance between the centres
    and the intersection area, both relative to the boxes' size so that one threshold
    serves every scale: centre distance / mean side, plus 1 - intersection / smaller area.
    Identical boxes score 0; disjoint, distant boxes score well above 1."""
    ca = ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2)
    cb = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    side = (math.sqrt(area(a)) + math.sqrt(area(b))) / 2
    smaller = min(area(a), area(b))
    if side <= 0 or smaller <= 0:
        return math.inf
    return math.dist(ca, cb) / side + 1.0 - intersection(a, b) / smaller


def merge_boxes(detections: Sequence[Detection], threshold: float = 0.5,
                per_class: bool = True) -> list[Detection]:  # fmt: skip
    """Greedy merge of OverFeat §4.3: repeatedly take the best-matching pair (lowest
    match_score); if its score exceeds `threshold`, stop; else replace the pair by their
    merge, whose coordinates are the average of all boxes merged into it and whose
    confidence per class is the sum of theirs.

    per_class=True merges the boxes of each class separately. per_class=False merges boxes
    whatever their class, then labels each merged box with the class of highest
    accumulated confidence: windows on one object that disagree on its class then vote.
    Returns the merged boxes, best score first."""
    groups: dict[int, list[Detection]] = {}
    for d in detections:
        groups.setdefault(d.label if per_class else 0, []).append(d)
    out: list[Detection] = []
    for group in groups.values():
        boxes = [Detection(tuple(d.box), d.label, d.score, d.count, d.class_votes())
                 for d in group]  # fmt: skip
        while len(boxes) > 1:
            best, pair = math.inf, (0, 1)
            for i in range(len(boxes)):
                for j in range(i + 1, len(boxes)):
                    s = match_score(boxes[i].box, boxes[j].box)
                    if s < best:
                        best, pair = s, (i, j)
            if best > threshold:
                break
            a, b = boxes[pair[0]], boxes[pair[1]]
            boxes = [d for k, d in enumerate(boxes) if k not in pair] + [_merge(a, b)]
        out += boxes
    return sorted(out, key=lambda d: -d.score)


def _merge(a: Detection, b: Detection) -> Detection:
    n = a.count + b.count
    box = tuple((a.count * p + b.count * q) / n for p, q in zip(a.box, b.box, strict=True))
    votes = a.class_votes()
    for label, v in b.class_votes().items():
        votes[label] = votes.get(label, 0.0) + v
    label = max(votes, key=votes.get)
    return Detection(box, label, votes[label], n, votes)


def evaluate(detections: Sequence[Detection], truth: Sequence[tuple[Box, int]],
             min_iou: float = 0.5) -> dict[str, float]:  # fmt: skip
    """Precision and recall at IoU >= min_iou: detections, best first, each claim the
    unclaimed true box of their class that they overlap most."""
    claimed = [False] * len(truth)
    tp = 0
    for d in sorted(detections, key=lambda d: -d.score):
        best, best_k = min_iou, -1
        for k, (box, label) in enumerate(truth):
            if not claimed[k] and label == d.label and (o := iou(d.box, box)) >= best:
                best, best_k = o, k
        if best_k >= 0:
            claimed[best_k] = True
            tp += 1
    return {"true_positives": tp, "detections": len(detections), "objects": len(truth),
            "precision": tp / len(detections) if detections else 1.0,
            "recall": tp / len(truth) if truth else 1.0}  # fmt: skip
