"""OverFeat's greedy box merge (§4.3) and detection scoring, on hand-made cases."""

from __future__ import annotations

import pytest
from overfeat_kernels.boxes import Detection, evaluate, iou, match_score, merge_boxes


def test_iou_and_match_score():
    a = (0.0, 0.0, 10.0, 10.0)
    assert iou(a, a) == 1.0 and match_score(a, a) == 0.0
    assert iou(a, (5.0, 0.0, 15.0, 10.0)) == pytest.approx(50 / 150)
    near, far = (1.0, 1.0, 11.0, 11.0), (40.0, 40.0, 50.0, 50.0)
    assert match_score(a, near) < 0.5 < match_score(a, far)


def test_two_overlapping_boxes_merge_by_averaging_and_accumulating():
    dets = [Detection((0, 0, 10, 10), 3, 0.9), Detection((2, 2, 12, 12), 3, 0.7)]
    assert match_score(dets[0].box, dets[1].box) == pytest.approx(0.2 * 2**0.5 + 0.36)
    (m,) = merge_boxes(dets, threshold=0.7)
    assert m.box == pytest.approx((1, 1, 11, 11)) and m.score == pytest.approx(1.6)
    assert m.count == 2 and m.label == 3


def test_distant_boxes_stay_apart():
    dets = [Detection((0, 0, 10, 10), 1, 0.9), Detection((50, 50, 60, 60), 1, 0.8)]
    assert len(merge_boxes(dets, threshold=0.6)) == 2


def test_threshold_stops_the_merge():
    # Shifted by 4: score 0.4 + 0.4 = 0.8 (centre distance / side + 1 - overlap fraction).
    dets = [Detection((0, 0, 10, 10), 1, 0.5), Detection((4, 0, 14, 10), 1, 0.5)]
    assert match_score(dets[0].box, dets[1].box) == pytest.approx(0.8)
    assert len(merge_boxes(dets, threshold=0.79)) == 2
    assert len(merge_boxes(dets, threshold=0.81)) == 1


def test_greedy_merges_best_pair_first_and_averages_all_members():
    dets = [Detection((0, 0, 10, 10), 2, 1.0), Detection((1, 0, 11, 10), 2, 1.0),
            Detection((3, 0, 13, 10), 2, 1.0)]  # fmt: skip
    (m,) = merge_boxes(dets, threshold=0.7)
    assert m.count == 3 and m.box == pytest.approx((4 / 3, 0, 34 / 3, 10))  # plain mean


def test_per_class_and_class_votes():
    dets = [Detection((0, 0, 10, 10), 7, 0.6), Detection((1, 1, 11, 11), 8, 0.9),
            Detection((0, 1, 10, 11), 8, 0.8)]  # fmt: skip
    assert {d.label for d in merge_boxes(dets, 0.6, per_class=True)} == {7, 8}
    (m,) = merge_boxes(dets, 0.6, per_class=False)
    assert m.label == 8 and m.score == pytest.approx(1.7) and m.votes[7] == pytest.approx(0.6)


def test_evaluate_precision_recall():
    truth = [((0, 0, 10, 10), 1), ((20, 0, 30, 10), 2)]
    dets = [Detection((0, 0, 10, 9), 1, 3.0), Detection((20, 0, 30, 10), 5, 2.0),
            Detection((1, 0, 10, 10), 1, 1.0)]  # fmt: skip
    m = evaluate(dets, truth)
    assert m["true_positives"] == 1 and m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == 0.5
