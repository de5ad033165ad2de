"""Instance-segmentation metrics for unseen-object segmentation (numpy / scipy / opencv / pycocotools).

Conventions: a *label image* is an (H, W) integer array with 0 = background/table and one positive id
per instance; *instance masks* are an (N, H, W) bool stack with (N,) confidence scores.

Metrics
-------
- `coco_mask_metrics`: COCO mask AP (IoU 0.50:0.95), AP50, AP75, AR100 and AP30 (AP at IoU 0.3, the
  metric of Pathak et al.), all from one pycocotools COCOeval run whose IoU thresholds are
  0.30:0.05:0.95 (adding thresholds below 0.5 does not change the standard ones: COCOeval matches
  every threshold independently). Degenerate cases return 0.0 instead of pycocotools' -1: no ground
  truth object in any image (AP undefined) or no prediction at all.
- `uois_prf`: Overlap and Boundary precision / recall / F-measure of UOIS-Net (Xie et al., T-RO 2021,
  Sec. VIII-C): Hungarian matching on the pairwise mask F-measure, then
  P = sum_i |s_i & g(s_i)| / sum_i |s_i|, R = sum_i |s_i & g(s_i)| / sum_j |g_j| (sums over all
  predicted / all ground-truth objects, so unmatched objects count against P / R). Boundary P/R use
  the same matching on 1-pixel-wide object boundaries with a slack: P counts predicted boundary pixels
  within the dilated matched GT boundary, R counts GT boundary pixels within the dilated predicted
  boundary. The slack is a disk of radius ceil(0.003 * image diagonal) pixels, the default of the
  DAVIS boundary measure that UOIS-Net's evaluation builds on: 2 px at 320x240, 3 px at 640x480.
  Values are in [0, 1] (the paper prints them x100). `obj_detected_075_percentage` is the share of GT
  objects whose matched pair has overlap F >= 0.75.
- `double_pick_stats`: simulated double-pick rate and pickable-area fraction of Latent-MaskRCNN
  (Liu et al., Sec. V-D), see the function docstring for the exact definitions.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "BOUNDARY_TH",
    "UOIS_KEYS",
    "label_to_masks",
    "masks_to_label",
    "coco_mask_metrics",
    "boundary_slack_px",
    "mask_boundary",
    "uois_prf",
    "aggregate_uois",
    "double_pick_stats",
]

COCO_IOU_THRS = np.round(np.arange(0.30, 0.951, 0.05), 2)  # 0.30, 0.35, ..., 0.95
BOUNDARY_TH = 0.003  # boundary slack as a fraction of the image diagonal (DAVIS / UOIS default)
UOIS_KEYS = (
    "overlap_P",
    "overlap_R",
    "overlap_F",
    "boundary_P",
    "boundary_R",
    "boundary_F",
    "obj_detected_075_percentage",
)


# ------------------------------------------------------------------------------------ conversions


def label_to_masks(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) label image -> (ids (N,), masks (N, H, W) bool), ids sorted, 0 excluded."""
    label = np.asarray(label)
    ids = np.unique(label)
    ids = ids[ids != 0]
    masks = label[None, :, :] == ids[:, None, None] if ids.size else np.zeros((0, *label.shape), bool)
    return ids, masks


def _as_masks(masks: Any, shape: tuple[int, int] | None = None) -> np.ndarray:
    m = np.asarray(masks)
    if m.size == 0:
        if shape is None:
            if m.ndim == 3:
                shape = m.shape[1:]
            else:
                raise ValueError("empty mask stack needs a known (H, W)")
        return np.zeros((0, *shape), dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {m.shape}")
    if shape is not None and m.shape[1:] != tuple(shape):
        raise ValueError(f"mask size {m.shape[1:]} != image size {tuple(shape)}")
    return m.astype(bool, copy=False)


def masks_to_label(
    masks: np.ndarray, scores: np.ndarray | None = None, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Flatten possibly overlapping masks into a uint16 label image; where masks overlap the higher
    score wins (ties: the lower index). Mask i gets id i + 1; a mask fully covered by higher-scoring
    masks disappears. ``shape`` is needed only when ``masks`` is empty without an (0, H, W) shape."""
    m = _as_masks(masks, shape)
    n, h, w = m.shape
    if n > 65535:
        raise ValueError("at most 65535 instances fit in a uint16 label image")
    s = np.zeros(n) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape[0] != n:
        raise ValueError(f"{n} masks but {s.shape[0]} scores")
    label = np.zeros((h, w), dtype=np.uint16)
    # paint from the weakest to the strongest mask; among equal scores paint higher indices first
    order = np.lexsort((-np.arange(n), s))
    for i in order:
        label[m[i]] = i + 1
    return label


# ------------------------------------------------------------------------------------------- COCO


def _encode(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def coco_mask_metrics(
    gt_labels: Sequence[np.ndarray],
    preds: Sequence[tuple[np.ndarray, np.ndarray]],
    max_dets: int = 100,
) -> dict[str, float]:
    """COCO-style mask AP/AR over a set of images (one category, "object").

    gt_labels: per image an (H, W) label image (0 = background). preds: per image ``(masks (N, H, W)
    bool, scores (N,))``. Returns AP (IoU .50:.95), AP50, AP75, AP30 and AR100 (recall at up to
    ``max_dets`` detections per image, averaged over IoU .50:.95), plus counts n_images, n_gt, n_pred.
    Images without GT objects are kept: their predictions are false positives. If no image has a GT
    object, or there is no prediction at all, every metric is 0.0 (never NaN / -1).
    """
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(gt_labels) != len(preds):
        raise ValueError(f"{len(gt_labels)} GT images but {len(preds)} predictions")
    images, gts, dets = [], [], []
    for k, (label, pred) in enumerate(zip(gt_labels, preds, strict=True)):
        label = np.asarray(label)
        if label.ndim != 2:
            raise ValueError(f"GT label {k} must be (H, W), got {label.shape}")
        h, w = label.shape
        image_id = k + 1
        images.append({"id": image_id, "width": int(w), "height": int(h)})
        _, gmasks = label_to_masks(label)
        for gm in gmasks:
            rle = _encode(gm)
            gts.append(
                {
                    "id": len(gts) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(x) for x in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
        masks, scores = pred
        masks = _as_masks(masks, (h, w))
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != masks.shape[0]:
            raise ValueError(f"image {k}: {masks.shape[0]} masks but {scores.shape[0]} scores")
        for pm, sc in zip(masks, scores, strict=True):
            if not pm.any():
                continue  # an empty mask cannot match anything; pycocotools would still count it
            dets.append(
                {"image_id": image_id, "category_id": 1, "segmentation": _encode(pm), "score": float(sc)}
            )

    out = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AP30": 0.0, "AR100": 0.0}
    out.update(n_images=len(images), n_gt=len(gts), n_pred=len(dets))
    if not gts or not dets:
        return out

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1, "name": "object"}]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.iouThrs = COCO_IOU_THRS.copy()
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.evaluate()
        ev.accumulate()

    thrs = ev.params.iouThrs
    a = ev.params.areaRngLbl.index("all")
    precision = ev.eval["precision"][:, :, :, a, -1]  # (T, R, K)
    recall = ev.eval["recall"][:, :, a, -1]  # (T, K)

    def mean_valid(x: np.ndarray) -> float:
        v = x[x > -1]
        return float(v.mean()) if v.size else 0.0

    std = thrs >= 0.5 - 1e-9
    out["AP"] = mean_valid(precision[std])
    out["AR100"] = mean_valid(recall[std])
    for key, t in (("AP50", 0.5), ("AP75", 0.75), ("AP30", 0.3)):
        out[key] = mean_valid(precision[np.isclose(thrs, t)])
    return out


# ------------------------------------------------------------------------------------------- UOIS


def boundary_slack_px(height: int, width: int, bound_th: float = BOUNDARY_TH) -> int:
    """Slack (dilation disk radius) in pixels: ``bound_th`` if >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        return int(round(bound_th))
    return int(math.ceil(bound_th * math.hypot(height, width)))


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy <= r * r).astype(np.uint8)


_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """1-pixel-wide inner boundary: mask pixels with a 4-neighbour outside the mask (the image
    border counts as outside)."""
    m = np.asarray(mask).astype(np.uint8)
    eroded = cv2.erode(m, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (m > 0) & (eroded == 0)


def _dilate(b: np.ndarray, slack: int) -> np.ndarray:
    if slack <= 0:
        return b
    return cv2.dilate(b.astype(np.uint8), _disk(slack), borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0


def _prf(tp_p: float, n_p: float, tp_r: float, n_r: float) -> tuple[float, float, float]:
    p = float(tp_p) / float(n_p) if n_p > 0 else 0.0
    r = float(tp_r) / float(n_r) if n_r > 0 else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


def uois_prf(gt_label: np.ndarray, pred_label: np.ndarray, bound_th: float = BOUNDARY_TH) -> dict[str, float]:
    """Overlap and Boundary P/R/F of one image (UOIS-Net Sec. VIII-C); both inputs are label images.

    Edge cases: no GT and no predicted object -> every P/R/F and the 0.75 share are 1.0 (nothing to
    find, nothing wrong); otherwise an empty side gives 0.0 (P, R or F with a zero denominator is 0).
    Returned keys: overlap_P/R/F, boundary_P/R/F, obj_detected_075_percentage, obj_gt, obj_detected
    (number of predicted objects), obj_detected_075, slack_px.
    """
    gt = np.asarray(gt_label)
    pr = np.asarray(pred_label)
    if gt.ndim != 2 or gt.shape != pr.shape:
        raise ValueError(
            f"gt and pred label images must have the same (H, W) shape, got {gt.shape} {pr.shape}"
        )
    h, w = gt.shape
    slack = boundary_slack_px(h, w, bound_th)
    gt_ids = np.unique(gt)
    gt_ids = gt_ids[gt_ids != 0]
    pr_ids = np.unique(pr)
    pr_ids = pr_ids[pr_ids != 0]
    n_gt, n_pr = len(gt_ids), len(pr_ids)
    out: dict[str, float] = {"obj_gt": n_gt, "obj_detected": n_pr, "obj_detected_075": 0, "slack_px": slack}
    if n_gt == 0 and n_pr == 0:
        out.update({k: 1.0 for k in UOIS_KEYS})
        return out
    if n_gt == 0 or n_pr == 0:
        out.update({k: 0.0 for k in UOIS_KEYS})
        return out

    # pairwise intersections via one bincount over pixels where both are foreground
    gi = np.searchsorted(gt_ids, gt)  # index into gt_ids (garbage where gt == 0)
    pi = np.searchsorted(pr_ids, pr)
    both = (gt != 0) & (pr != 0)
    inter = (
        np.bincount(pi[both] * n_gt + gi[both], minlength=n_pr * n_gt).reshape(n_pr, n_gt).astype(np.float64)
    )
    pr_area = np.bincount(pi[pr != 0], minlength=n_pr).astype(np.float64)
    gt_area = np.bincount(gi[gt != 0], minlength=n_gt).astype(np.float64)
    fmeas = 2.0 * inter / (pr_area[:, None] + gt_area[None, :])

    rows, cols = linear_sum_assignment(fmeas, maximize=True)
    keep = inter[rows, cols] > 0
    rows, cols = rows[keep], cols[keep]

    tp = inter[rows, cols].sum()
    out["overlap_P"], out["overlap_R"], out["overlap_F"] = _prf(tp, pr_area.sum(), tp, gt_area.sum())
    n075 = int(np.count_nonzero(fmeas[rows, cols] >= 0.75))
    out["obj_detected_075"] = n075
    out["obj_detected_075_percentage"] = n075 / n_gt

    pr_b = [mask_boundary(pr == i) for i in pr_ids]
    gt_b = [mask_boundary(gt == j) for j in gt_ids]
    tp_p = tp_r = 0.0
    for r, c in zip(rows, cols, strict=True):
        tp_p += np.count_nonzero(pr_b[r] & _dilate(gt_b[c], slack))
        tp_r += np.count_nonzero(gt_b[c] & _dilate(pr_b[r], slack))
    n_pb = float(sum(np.count_nonzero(b) for b in pr_b))
    n_gb = float(sum(np.count_nonzero(b) for b in gt_b))
    out["boundary_P"], out["boundary_R"], out["boundary_F"] = _prf(tp_p, n_pb, tp_r, n_gb)
    return out


def aggregate_uois(results: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of every numeric key over images (as UOIS-Net reports), plus ``n_images``."""
    out: dict[str, float] = {"n_images": len(results)}
    if not results:
        return out | {k: 0.0 for k in UOIS_KEYS}
    keys = [k for k, v in results[0].items() if isinstance(v, int | float | np.number)]
    for k in keys:
        out[k] = float(np.mean([r[k] for r in results]))
    return out


# ------------------------------------------------------------------------------------ double pick


def _disk_offsets(r: float) -> tuple[np.ndarray, np.ndarray]:
    ri = int(math.floor(r))
    dv, du = np.mgrid[-ri : ri + 1, -ri : ri + 1]
    inside = du * du + dv * dv <= r * r
    return dv[inside], du[inside]


def double_pick_stats(
    gt_label: np.ndarray,
    pred_masks: np.ndarray,
    K: np.ndarray,
    depth: np.ndarray,
    gripper_radius_m: float = 0.02,
    n_samples: int | None = 1000,
    rng: np.random.Generator | int | None = None,
) -> dict[str, float]:
    """Simulated double-pick rate and pickable-area fraction (Latent-MaskRCNN, Sec. V-D).

    The gripper is a disk of ``gripper_radius_m`` metres; at a centre pixel with depth z its radius
    is r = fx * gripper_radius_m / z pixels and it covers the pixels with du^2 + dv^2 <= r^2.
    (Missing depth at a centre is replaced by the median valid depth of that predicted mask; masks
    without any valid depth are not pickable.) A centre is *pickable* in mask i if the whole disk
    lies inside mask i (and inside the image): the exact Euclidean distance from the centre to the
    nearest pixel outside the mask is > r. Centres are sampled uniformly over all (mask, pickable
    centre) pairs - i.e. uniform image-space sampling conditioned on landing within one predicted
    mask, as in the paper; ``n_samples=None`` evaluates every pickable centre exactly. A sample is a
    double pick if its disk touches more than one ground-truth object (label 0 ignored).

    Returns
      double_pick_rate = n_double / n_samples (0.0 when there is no pickable centre),
      pickable_area_fraction = |union of predicted masks| / |GT object pixels|  (the paper's
          definition: predicted-mask area over ground-truth mask area; can exceed 1),
      fit_area_fraction = |pickable centres| / |GT object pixels|  (the area where the gripper disk
          actually fits, same normaliser),
      n_samples, n_double, pred_area, gt_area, fit_area.
    Deterministic given ``rng`` (a Generator or a seed; None means seed 0).
    """
    gt = np.asarray(gt_label)
    h, w = gt.shape
    masks = _as_masks(pred_masks, (h, w))
    depth = np.asarray(depth, dtype=np.float64)
    if depth.shape != (h, w):
        raise ValueError(f"depth shape {depth.shape} != label shape {(h, w)}")
    fx = float(np.asarray(K)[0, 0])
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)

    gt_area = int(np.count_nonzero(gt))
    pred_area = int(np.count_nonzero(masks.any(axis=0))) if masks.shape[0] else 0

    cv_list, cu_list, cr_list = [], [], []
    for m in masks:
        if not m.any():
            continue
        valid = m & (depth > 0)
        if not valid.any():
            continue
        z = np.where(depth > 0, depth, np.median(depth[valid]))
        padded = np.pad(m.astype(np.uint8), 1)
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        r_px = fx * gripper_radius_m / np.maximum(z, 1e-6)
        vv, uu = np.nonzero(m & (dist > r_px))
        cv_list.append(vv)
        cu_list.append(uu)
        cr_list.append(r_px[vv, uu])
    cv_all = np.concatenate(cv_list) if cv_list else np.zeros(0, int)
    cu_all = np.concatenate(cu_list) if cu_list else np.zeros(0, int)
    cr_all = np.concatenate(cr_list) if cr_list else np.zeros(0)
    fit_area = int(cv_all.size)

    if fit_area == 0:
        idx = np.zeros(0, dtype=int)
    elif n_samples is None:
        idx = np.arange(fit_area)
    else:
        idx = gen.integers(0, fit_area, size=int(n_samples))

    n_double = 0
    offsets: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    for k in idx:
        v, u, r = int(cv_all[k]), int(cu_all[k]), float(cr_all[k])
        # cache disk stencils; the radius is floored to 0.01 px so the stencil never exceeds the disk
        rq = math.floor(r * 100.0) / 100.0
        if rq not in offsets:
            offsets[rq] = _disk_offsets(rq)
        dv, du = offsets[rq]
        vals = gt[v + dv, u + du]  # disk lies inside the mask, hence inside the image
        vals = vals[vals != 0]
        if vals.size and np.any(vals != vals[0]):
            n_double += 1

    n = int(idx.size)
    return {
        "double_pick_rate": n_double / n if n else 0.0,
        "pickable_area_fraction": pred_area / gt_area if gt_area else 0.0,
        "fit_area_fraction": fit_area / gt_area if gt_area else 0.0,
        "n_samples": n,
        "n_double": n_double,
        "pred_area": pred_area,
        "gt_area": gt_area,
        "fit_area": fit_area,
    }
