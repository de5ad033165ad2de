"""Temporal label propagation: reuse an interaction mask in the other frames of the same scene.

An interaction gives one object mask in its before-frame. The robot keeps looking at the same table
for many interactions, and most objects do not move between two captures. A mask found at capture s
is therefore also a correct mask in capture t whenever the pixels it covers show the same surface in
both captures: same camera pose, depth unchanged within noise on nearly all of the mask, colour
unchanged. Checking the two captures directly (not the chain of interactions between them) makes the
rule safe against anything that happened in between, a human re-arranging the table included.

Propagated masks are still self-supervised labels: they come from the robot's own interactions and
its own depth camera, never from simulator ground truth.

Units: depth in metres (0 = missing), colours 0-255, masks (H,W) bool in pixels of the capture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class PropagationConfig:
    """When a mask from one capture counts as valid in another capture of the same camera pose."""

    window: int = 40  # compare captures at most this many records apart
    depth_abs: float = 0.004  # metres of depth change tolerated per pixel
    depth_rel: float = 0.006  # plus this fraction of the depth
    min_unchanged: float = 0.97  # share of the mask's measured pixels that must be unchanged in depth
    max_color_change: float = 20.0  # mean absolute colour difference (0-255) allowed over the mask
    min_valid: float = 0.6  # share of mask pixels with depth in both captures
    pose_tol: float = 1e-4  # camera poses equal within this (metres / rotation-matrix entries)
    max_duplicate_iou: float = 0.3  # a propagated mask overlapping a kept one more than this is skipped
    max_masks: int = 12  # per frame, the frame's own mask included


def same_view(pose_a: np.ndarray, pose_b: np.ndarray, tol: float) -> bool:
    """True when two 4x4 world-from-camera poses are equal within `tol`."""
    return bool(np.max(np.abs(np.asarray(pose_a) - np.asarray(pose_b))) <= tol)


def depth_scale(depth_ref: np.ndarray, depth: np.ndarray) -> float:
    """Median ratio depth_ref / depth over pixels measured in both (undoes a global scale drift)."""
    a, b = depth_ref[::4, ::4], depth[::4, ::4]  # a sub-grid is plenty for one global factor
    both = (a > 0) & (b > 0)
    if both.sum() < 100:
        return 1.0
    return float(np.median(a[both] / b[both]))


def mask_unchanged(mask: np.ndarray, rgb_a: np.ndarray, depth_a: np.ndarray, rgb_b: np.ndarray, depth_b: np.ndarray,
                   cfg: PropagationConfig, scale_b: float = 1.0) -> bool:
    """True when the surface under `mask` looks the same in captures a and b (depth b rescaled by scale_b)."""
    m = mask
    da, db = depth_a[m], depth_b[m] * scale_b
    valid = (da > 0) & (db > 0)
    n = int(m.sum())
    if n == 0 or valid.sum() < cfg.min_valid * n:
        return False
    dz = np.abs(da[valid] - db[valid])
    ok = dz <= cfg.depth_abs + cfg.depth_rel * da[valid]
    if ok.mean() < cfg.min_unchanged:
        return False
    dc = np.abs(rgb_a[m].astype(np.int16) - rgb_b[m].astype(np.int16)).mean()
    return bool(dc <= cfg.max_color_change)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    return float(inter) / max(float(np.logical_or(a, b).sum()), 1.0)


def propagate_masks(rgb: Sequence[np.ndarray], depth: Sequence[np.ndarray], poses: Sequence[np.ndarray],
                    masks: Sequence[np.ndarray | None], cfg: PropagationConfig | None = None) -> list[list[int]]:
    """For every capture t, the indices s of captures whose mask is also valid in capture t.

    rgb/depth/poses/masks: per capture (in log order); masks[s] is None when capture s has no object
    mask (a negative). The result for t lists t itself first when it has a mask, then other sources
    nearest in time first; masks overlapping an already listed one by more than `max_duplicate_iou`
    (the same object found twice, or a mask spanning two objects) are left out.
    """
    cfg = cfg or PropagationConfig()
    n = len(depth)
    out: list[list[int]] = []
    for t in range(n):
        kept: list[int] = [t] if masks[t] is not None else []
        cands = sorted((s for s in range(max(0, t - cfg.window), min(n, t + cfg.window + 1))
                        if s != t and masks[s] is not None), key=lambda s: abs(s - t))
        for s in cands:
            if len(kept) >= cfg.max_masks:
                break
            if not same_view(poses[t], poses[s], cfg.pose_tol):
                continue
            scale = depth_scale(depth[s], depth[t])
            if not mask_unchanged(masks[s], rgb[s], depth[s], rgb[t], depth[t], cfg, scale):
                continue
            if any(_iou(masks[s], masks[k]) > cfg.max_duplicate_iou for k in kept):
                continue
            kept.append(s)
        out.append(kept)
    return out
