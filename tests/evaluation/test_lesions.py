"""Lesion matching (any-overlap and one-to-one IoU) and panoptic quality against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lesionsam.evaluation.lesions import Panoptic, lesion_match
from lesionsam.evaluation.metrics import case_metrics, summarise


def five_lesions() -> tuple[np.ndarray, np.ndarray]:
    """GT lesions A-D (4³ = 64 voxels each) and F (27), predictions with known IoUs, one stray blob E.

    A: predicted exactly (IoU 1). B: prediction shifted one voxel (48 in common, union 80: IoU 0.6).
    C: prediction is half of it (32 of 64: IoU 0.5, exactly the threshold). D: prediction is a 1×4×4 slab
    inside it (16 of 64: IoU 0.25). E: a 2×2×2 prediction touching no lesion. F: missed.
    """
    gt = np.zeros((12, 40, 40), bool)
    pred = np.zeros_like(gt)
    gt[2:6, 2:6, 2:6] = True  # A
    pred[2:6, 2:6, 2:6] = True
    gt[2:6, 12:16, 2:6] = True  # B
    pred[3:7, 12:16, 2:6] = True
    gt[2:6, 22:26, 2:6] = True  # C
    pred[2:4, 22:26, 2:6] = True
    gt[2:6, 32:36, 2:6] = True  # D
    pred[3:4, 32:36, 2:6] = True
    pred[8:10, 2:4, 30:32] = True  # E
    gt[2:5, 2:5, 30:33] = True  # F
    return pred, gt


def test_iou_matching_and_panoptic_quality_hand_computed() -> None:
    pred, gt = five_lesions()
    m = case_metrics(pred, gt, (1, 1, 1), lesion_matching="iou")
    # matched: A (1.0), B (0.6), C (0.5, the threshold counts, as in panoptica); D's slab and E are FPs; D, F FNs
    assert (m.gt_lesions, m.pred_lesions, m.tp, m.fp, m.fn) == (5, 5, 3, 2, 2)
    assert m.panoptic.rq == pytest.approx(3 / (3 + 0.5 * 2 + 0.5 * 2))
    assert m.panoptic.sq == pytest.approx((1.0 + 0.6 + 0.5) / 3)
    assert m.panoptic.pq == pytest.approx((1.0 + 0.6 + 0.5) / 5)
    assert m.panoptic.pq == pytest.approx(m.panoptic.sq * m.panoptic.rq)
    dice = {les.voxels: [] for les in m.lesions}
    for les in m.lesions:
        dice[les.voxels].append((les.detected, round(les.dice, 6)))
    # Dice of one matched pair = 2·IoU / (1 + IoU): A 1, B 0.75, C 2/3; D undetected
    assert sorted(dice[64]) == [(False, 0.0), (True, round(2 / 3, 6)), (True, 0.75), (True, 1.0)]
    assert dice[27] == [(False, 0.0)]
    assert sorted(fp.voxels for fp in m.false_positives) == [8, 16]


def test_overlap_rule_on_the_same_case_and_pq_independent_of_the_rule() -> None:
    pred, gt = five_lesions()
    m = case_metrics(pred, gt, (1, 1, 1))  # the default rule: any overlap
    assert (m.tp, m.fp, m.fn) == (4, 1, 1)  # D is found by its slab; only E is an FP, only F is missed
    iou = case_metrics(pred, gt, (1, 1, 1), lesion_matching="iou")
    assert m.panoptic == iou.panoptic


def test_iou_threshold_changes_what_matches() -> None:
    pred, gt = five_lesions()
    strict = case_metrics(pred, gt, (1, 1, 1), lesion_matching="iou", lesion_iou_threshold=0.55)
    assert (strict.tp, strict.fp, strict.fn) == (2, 3, 3)  # C (IoU 0.5) no longer matches
    loose = case_metrics(pred, gt, (1, 1, 1), lesion_matching="iou", lesion_iou_threshold=0.2)
    assert (loose.tp, loose.fp, loose.fn) == (4, 1, 1)
    assert loose.panoptic.pq == pytest.approx((1.0 + 0.6 + 0.5 + 0.25) / (4 + 0.5 + 0.5))


def test_one_prediction_over_two_lesions_matches_at_most_one() -> None:
    gt = np.zeros((6, 6, 14), bool)
    gt[1:4, 1:4, 1:4] = True  # 27 voxels
    gt[1:4, 1:4, 5:8] = True  # 27 voxels, one voxel gap
    pred = np.zeros_like(gt)
    pred[1:4, 1:4, 1:8] = True  # 63 voxels over both: IoU 27/63 with each
    assert case_metrics(pred, gt, (1, 1, 1)).tp == 2  # any-overlap: both found
    m = case_metrics(pred, gt, (1, 1, 1), lesion_matching="iou", lesion_iou_threshold=0.4)
    assert (m.tp, m.fp, m.fn) == (1, 0, 1)  # one-to-one: the tie goes to the first GT lesion
    assert [les.detected for les in sorted(m.lesions, key=lambda r: r.index)] == [True, False]
    assert m.panoptic.pq == pytest.approx((27 / 63) / (1 + 0.5))


def test_greedy_matching_takes_the_best_pair_first() -> None:
    # GT 1 overlaps both predictions above the threshold; prediction 2 (IoU 0.5) beats prediction 1 (IoU 0.3).
    gt = np.zeros((4, 4, 20), bool)
    gt[:, :, 0:10] = True  # 160 voxels
    gt[:, :, 14:18] = True  # 64 voxels
    pred = np.zeros_like(gt)
    pred[:, :, 0:3] = True  # 48 voxels inside GT 1: IoU 0.3
    pred[:, :, 4:12] = True  # 6 of 8 slices in GT 1: IoU 96/192 = 0.5
    m = lesion_match(pred, gt, voxel_ml=0.001, offset=np.zeros(3), case="x", matching="iou", iou_threshold=0.25)
    assert (m.tp, m.panoptic.tp, m.panoptic.fp, m.panoptic.fn) == (1, 1, 1, 1)
    assert m.panoptic.iou_sum == pytest.approx(0.5)


def test_panoptic_edge_cases_follow_panoptica() -> None:
    empty = np.zeros((8, 8, 8), bool)
    blob = empty.copy()
    blob[2:5, 2:5, 2:5] = True
    both_empty = case_metrics(empty, empty, (1, 1, 1)).panoptic
    assert math.isnan(both_empty.rq) and math.isnan(both_empty.sq) and math.isnan(both_empty.pq)
    missed = case_metrics(empty, blob, (1, 1, 1)).panoptic
    assert (missed.rq, missed.sq, missed.pq) == (0.0, 0.0, 0.0)
    false_alarm = case_metrics(blob, empty, (1, 1, 1)).panoptic
    assert (false_alarm.rq, false_alarm.sq, false_alarm.pq) == (0.0, 0.0, 0.0)
    assert Panoptic(1, 2, 3, 0.5) + Panoptic(2, 0, 1, 1.5) == Panoptic(3, 2, 4, 2.0)


def test_summary_reports_pq_and_lesion_free_cases_apart() -> None:
    pred, gt = five_lesions()
    empty = np.zeros_like(gt)
    stray = empty.copy()
    stray[0:2, 0:2, 0:2] = True
    cases = [
        case_metrics(pred, gt, (1, 1, 1), case="lesions", lesion_matching="iou"),
        case_metrics(empty, empty, (1, 1, 1), case="free_ok"),  # lesion-free, predicted empty
        case_metrics(stray, empty, (1, 1, 1), case="free_fp"),  # lesion-free, one false positive (8 voxels)
    ]
    s = summarise(cases)
    assert s["panoptic"]["pq"]["n"] == 2 and s["panoptic"]["pq"]["n_undefined"] == 1
    assert s["panoptic"]["pq"]["mean"] == pytest.approx((2.1 / 5 + 0.0) / 2)
    micro = s["panoptic"]["micro"]
    assert (micro["tp"], micro["fp"], micro["fn"]) == (3, 3, 2)
    assert micro["pq"] == pytest.approx(2.1 / (3 + 1.5 + 1))
    assert s["cases_with_lesion"]["n_cases"] == 1
    assert s["cases_with_lesion"]["dice"]["mean"] == pytest.approx(cases[0].dice)
    free = s["lesion_free_cases"]
    assert (free["n_cases"], free["predicted_empty"], free["false_positive_components"]) == (2, 1, 1)
    assert free["pred_volume_ml"]["max"] == pytest.approx(8 / 1000)
    assert s["assd_mm"]["n_undefined"] == 1
