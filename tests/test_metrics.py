"""Hand-checked values for learner.metrics on tiny synthetic masks."""

from __future__ import annotations

import numpy as np
import pytest

from learner.evaluate.metrics import (
    aggregate_uois,
    boundary_slack_px,
    coco_mask_metrics,
    double_pick_stats,
    label_to_masks,
    mask_boundary,
    masks_to_label,
    uois_prf,
)

COCO_KEYS = ("AP", "AP50", "AP75", "AP30", "AR100")


def _square_label(h=20, w=20, r0=2, c0=2, size=10, value=1) -> np.ndarray:
    lab = np.zeros((h, w), np.uint16)
    lab[r0 : r0 + size, c0 : c0 + size] = value
    return lab


def _two_objects():
    """20 x 40 image, GT A = rows 5-14 x cols 5-14, GT B = rows 5-14 x cols 17-26 (2-column gap)."""
    gt = np.zeros((20, 40), np.uint16)
    gt[5:15, 5:15] = 1
    gt[5:15, 17:27] = 2
    merged = np.zeros((1, 20, 40), bool)
    merged[0, 5:15, 5:27] = True  # one prediction covering both objects and the gap (220 px)
    return gt, merged


# ----------------------------------------------------------------------------- conversions


def test_masks_to_label_higher_score_wins():
    m = np.zeros((3, 4, 4), bool)
    m[0, :2] = True
    m[1, 1:3] = True
    m[2, 3, 3] = True
    lab = masks_to_label(m, np.array([0.2, 0.9, 0.5]))
    assert lab.dtype == np.uint16
    assert (lab[0] == 1).all() and (lab[1] == 2).all() and (lab[2] == 2).all()
    assert lab[3, 3] == 3 and lab[3, :3].sum() == 0
    tie = masks_to_label(m[:2], np.array([0.5, 0.5]))
    assert (tie[1] == 1).all()  # equal scores: the lower index wins
    assert masks_to_label(np.zeros((0, 4, 5), bool), np.zeros(0)).shape == (4, 5)
    ids, masks = label_to_masks(lab)
    assert list(ids) == [1, 2, 3] and masks.shape == (3, 4, 4)


# ------------------------------------------------------------------------------------ COCO


def test_coco_perfect_predictions():
    gts = [_square_label(), _two_objects()[0]]
    preds = [(label_to_masks(g)[1], np.linspace(0.9, 0.5, len(label_to_masks(g)[0]))) for g in gts]
    res = coco_mask_metrics(gts, preds)
    for k in COCO_KEYS:
        assert res[k] == pytest.approx(1.0), k
    assert res["n_gt"] == 3 and res["n_pred"] == 3


def test_coco_nothing_predicted_and_no_gt():
    gt = _square_label()
    res = coco_mask_metrics([gt], [(np.zeros((0, 20, 20), bool), np.zeros(0))])
    assert all(res[k] == 0.0 for k in COCO_KEYS)
    empty = np.zeros((20, 20), np.uint16)
    res = coco_mask_metrics([empty], [(label_to_masks(gt)[1], np.ones(1))])
    assert all(res[k] == 0.0 for k in COCO_KEYS)  # no GT anywhere: defined as 0, not -1
    res = coco_mask_metrics([empty], [(np.zeros((0, 20, 20), bool), np.zeros(0))])
    assert all(res[k] == 0.0 for k in COCO_KEYS)


def test_coco_iou_thresholds():
    gt = _square_label()  # 100 px square at rows/cols 2-11
    # IoU 0.45: a 9 x 5 = 45 px subset -> matches at 0.30..0.45 only
    p45 = np.zeros((1, 20, 20), bool)
    p45[0, 2:11, 2:7] = True
    res = coco_mask_metrics([gt], [(p45, np.ones(1))])
    assert res["AP30"] == pytest.approx(1.0)
    assert res["AP50"] == 0.0 and res["AP75"] == 0.0 and res["AP"] == 0.0 and res["AR100"] == 0.0
    # IoU 0.62: matches at 0.50, 0.55, 0.60 of the ten .50:.95 thresholds -> AP = AR = 0.3
    p62 = np.zeros((1, 20, 20), bool)
    p62[0, 2:8, 2:12] = True  # 60 px
    p62[0, 8, 2:4] = True  # +2 px
    res = coco_mask_metrics([gt], [(p62, np.ones(1))])
    assert res["AP30"] == pytest.approx(1.0) and res["AP50"] == pytest.approx(1.0)
    assert res["AP75"] == 0.0
    assert res["AP"] == pytest.approx(0.3) and res["AR100"] == pytest.approx(0.3)


def test_coco_false_positive_on_image_without_gt():
    gt = _square_label()
    empty = np.zeros((20, 20), np.uint16)
    fp = np.zeros((1, 20, 20), bool)
    fp[0, 0:5, 0:5] = True
    # the FP (score 0.9) ranks above the only TP (0.5): precision 1/2 at recall 1 -> AP 0.5
    res = coco_mask_metrics([gt, empty], [(label_to_masks(gt)[1], np.array([0.5])), (fp, np.array([0.9]))])
    assert res["AP50"] == pytest.approx(0.5) and res["AR100"] == pytest.approx(1.0)
    # ranked below the TP it costs nothing
    res = coco_mask_metrics([gt, empty], [(label_to_masks(gt)[1], np.array([0.9])), (fp, np.array([0.5]))])
    assert res["AP50"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------ UOIS


def test_uois_perfect_and_empty():
    gt, _ = _two_objects()
    res = uois_prf(gt, gt)
    for k in ("overlap_P", "overlap_R", "overlap_F", "boundary_P", "boundary_R", "boundary_F"):
        assert res[k] == 1.0, k
    assert res["obj_detected_075_percentage"] == 1.0
    # relabelled prediction ids do not matter
    assert uois_prf(gt, np.where(gt > 0, 10 - gt, 0).astype(np.uint16))["overlap_F"] == 1.0
    none = uois_prf(gt, np.zeros_like(gt))
    assert (
        none["overlap_F"] == 0.0 and none["boundary_F"] == 0.0 and none["obj_detected_075_percentage"] == 0.0
    )
    both_empty = uois_prf(np.zeros_like(gt), np.zeros_like(gt))
    assert both_empty["overlap_F"] == 1.0


def test_uois_merged_prediction():
    gt, merged = _two_objects()
    res = uois_prf(gt, masks_to_label(merged, np.ones(1)))
    # pairwise F = 2*100 / (220 + 100) for both objects; one is matched: TP = 100
    # P = 100 / 220, R = 100 / 200
    p, r = 100 / 220, 100 / 200
    assert res["overlap_P"] == pytest.approx(p)
    assert res["overlap_R"] == pytest.approx(r)
    assert res["overlap_F"] == pytest.approx(2 * p * r / (p + r))
    assert res["obj_detected_075_percentage"] == 0.0
    assert res["obj_gt"] == 2 and res["obj_detected"] == 1


def test_uois_split_prediction_counts_unmatched_pixels():
    gt = _square_label(value=1)  # 100 px
    pred = np.zeros_like(gt)
    pred[2:12, 2:7] = 1  # left half (50 px)
    pred[2:12, 7:12] = 2  # right half (50 px)
    res = uois_prf(gt, pred)
    # one half matched: TP = 50; P = 50 / 100 predicted px, R = 50 / 100 GT px
    assert res["overlap_P"] == pytest.approx(0.5) and res["overlap_R"] == pytest.approx(0.5)


def test_boundary_slack_shift_by_one():
    gt = _square_label(h=30, w=30, r0=5, c0=5)
    pred = _square_label(h=30, w=30, r0=5, c0=6)  # shifted right by one pixel
    assert boundary_slack_px(30, 30) == 1  # ceil(0.003 * 42.4)
    res = uois_prf(gt, pred)
    assert res["overlap_F"] == pytest.approx(0.9) and res["overlap_F"] < 1.0
    assert res["boundary_P"] == 1.0 and res["boundary_R"] == 1.0 and res["boundary_F"] == 1.0
    strict = uois_prf(gt, pred, bound_th=0)  # no slack: the shifted side columns miss
    assert strict["boundary_F"] < 1.0


def test_boundary_definitions():
    assert boundary_slack_px(240, 320) == 2 and boundary_slack_px(480, 640) == 3
    b = mask_boundary(_square_label(h=6, w=6, r0=1, c0=1, size=4) > 0)
    assert b.sum() == 12  # 4x4 square: 16 px minus the 2x2 interior


def test_aggregate_uois():
    gt = _square_label()
    res = aggregate_uois([uois_prf(gt, gt), uois_prf(gt, np.zeros_like(gt))])
    assert res["n_images"] == 2
    assert res["overlap_F"] == pytest.approx(0.5) and res["boundary_P"] == pytest.approx(0.5)
    assert aggregate_uois([])["overlap_F"] == 0.0


# ----------------------------------------------------------------------------- double pick


def _pick_setup():
    gt, merged = _two_objects()
    depth = np.ones(gt.shape, np.float32)
    K = np.array([[100.0, 0, 20], [0, 100.0, 10], [0, 0, 1]])
    return gt, merged, depth, K  # gripper radius 0.025 m at 1 m and fx 100 -> 2.5 px


def test_double_pick_exact_hand_computed():
    gt, merged, depth, K = _pick_setup()
    res = double_pick_stats(gt, merged, K, depth, gripper_radius_m=0.025, n_samples=None)
    # a 2.5 px disk fits where the distance to the mask outside is >= 3 px: rows 7-12 (6 rows) and
    # cols 7-24 (18 cols) -> 108 centres; it touches both objects for centre cols 15, 16 -> 12
    assert res["fit_area"] == 108 and res["n_samples"] == 108
    assert res["n_double"] == 12
    assert res["double_pick_rate"] == pytest.approx(12 / 108)
    assert res["pickable_area_fraction"] == pytest.approx(220 / 200)
    assert res["fit_area_fraction"] == pytest.approx(108 / 200)


def test_double_pick_sampled_and_deterministic():
    gt, merged, depth, K = _pick_setup()
    a = double_pick_stats(gt, merged, K, depth, gripper_radius_m=0.025, n_samples=4000, rng=3)
    b = double_pick_stats(gt, merged, K, depth, gripper_radius_m=0.025, n_samples=4000, rng=3)
    assert a == b
    assert a["double_pick_rate"] == pytest.approx(1 / 9, abs=0.02)
    # correct per-object masks never double pick
    _, per_object = label_to_masks(gt)
    res = double_pick_stats(gt, per_object, K, depth, gripper_radius_m=0.025, n_samples=500, rng=0)
    assert res["double_pick_rate"] == 0.0 and res["n_samples"] == 500
    assert res["pickable_area_fraction"] == pytest.approx(1.0)
    # farther away the gripper looks smaller (1.25 px at 2 m): more centres fit
    far = double_pick_stats(gt, merged, K, 2 * depth, gripper_radius_m=0.025, n_samples=None)
    assert far["fit_area"] > 108


def test_double_pick_degenerate():
    gt, merged, depth, K = _pick_setup()
    res = double_pick_stats(gt, np.zeros((0, *gt.shape), bool), K, depth)
    assert res["double_pick_rate"] == 0.0 and res["n_samples"] == 0 and res["pickable_area_fraction"] == 0.0
    # no valid depth under the mask -> not pickable
    res = double_pick_stats(gt, merged, K, np.zeros_like(depth), gripper_radius_m=0.025)
    assert res["n_samples"] == 0
    # a mask thinner than the gripper has no pickable centre
    thin = np.zeros_like(merged)
    thin[0, 9:11, 5:27] = True
    assert double_pick_stats(gt, thin, K, depth, gripper_radius_m=0.025)["fit_area"] == 0
