"""Classical depth-only baseline: table-plane RANSAC + Euclidean clustering of the points above it.

This is the point-cloud clustering baseline of SD Mask R-CNN (Danielczuk et al., ICRA 2019) and of
the UOIS-Net comparisons, written for a single calibrated RGB-D frame:

1. Deproject valid depth pixels (0 = missing) with K into the camera frame (OpenCV axes, metres),
   on a ``stride``-subsampled grid for speed (each stride x stride block contributes its first
   valid pixel, so scattered missing pixels do not thin out the cloud).
2. Fit the dominant plane (the table) with seeded RANSAC (3-point hypotheses scored on a random
   subset, inlier distance ``inlier_dist_m``), then refine it by least squares on its inliers.
   The plane normal is oriented towards the camera.
3. Points between ``min_height_m`` and ``max_height_m`` above the plane are object candidates.
4. Euclidean clustering of the subsampled candidates: a cKDTree radius graph (``cluster_radius_m``)
   and its connected components.
5. Every full-resolution candidate pixel takes the cluster of its nearest clustered sample point
   (within ``cluster_radius_m``); clusters with fewer than ``min_cluster_px`` pixels are dropped.
6. Each mask grows (``grow_iters`` 3x3 dilations) into unclaimed valid pixels that are between
   ``grow_min_height_m`` and ``min_height_m`` above the plane: the bottom rim of an object that the
   1 cm candidate threshold cuts off (with an ideal sensor; on noisy depth it adds at most a few
   pixels of table around the object's foot).

Output: ``masks (N, H, W) bool`` sorted by decreasing score and ``scores (N,)`` with
score = n_px / (n_px + min_cluster_px) (monotone in cluster size, in [0.5, 1)).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from learner.proposals.plane import deproject, fit_table_plane

__all__ = [
    "DepthClusteringConfig",
    "DepthClusteringSegmenter",
    "fit_table_plane",
    "deproject",
    "segment_depth",
]


@dataclass
class DepthClusteringConfig:
    stride: int = 2  # pixel subsampling for plane fitting and clustering
    min_depth_m: float = 0.05
    max_depth_m: float = 3.0
    ransac_iters: int = 200
    ransac_eval_points: int = 3000  # hypotheses are scored on this many random points
    inlier_dist_m: float = 0.01
    min_height_m: float = 0.01  # object points lie at least this far above the table (camera side)
    max_height_m: float = 0.5
    cluster_radius_m: float = 0.012
    min_cluster_px: int = 100  # full-resolution pixels
    # image-space growth of each mask into adjacent pixels that are only slightly above the table
    # (between grow_min_height_m and min_height_m): recovers the bottom rim of objects
    grow_iters: int = 3
    grow_min_height_m: float = 0.004
    seed: int = 0


def segment_depth(
    depth: np.ndarray, K: np.ndarray, cfg: DepthClusteringConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Run the baseline on one depth image; returns (masks (N, H, W) bool, scores (N,) float32)."""
    cfg = cfg or DepthClusteringConfig()
    depth = np.asarray(depth, dtype=np.float32)
    K = np.asarray(K, dtype=np.float64)
    h, w = depth.shape
    empty = (np.zeros((0, h, w), dtype=bool), np.zeros(0, dtype=np.float32))
    d = np.where((depth >= cfg.min_depth_m) & (depth <= cfg.max_depth_m), depth, 0.0).astype(np.float32)

    pts, _, _ = deproject(d, K, cfg.stride)
    plane = fit_table_plane(pts, cfg.ransac_iters, cfg.inlier_dist_m, cfg.ransac_eval_points, cfg.seed)
    if plane is None:
        return empty
    n, dplane, _ = plane

    def is_candidate(p: np.ndarray, lo: float = cfg.min_height_m) -> np.ndarray:
        height = p @ n + dplane
        return (height > lo) & (height < cfg.max_height_m)

    sel = is_candidate(pts)
    cand = pts[sel]
    if cand.shape[0] == 0:
        return empty

    tree = cKDTree(cand)
    pairs = tree.query_pairs(cfg.cluster_radius_m, output_type="ndarray")
    m = cand.shape[0]
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(m, m))
    _, comp = connected_components(graph, directed=False)

    # drop clusters that cannot reach min_cluster_px even at full resolution before propagating
    sizes = np.bincount(comp)
    big = sizes * cfg.stride * cfg.stride >= max(1, cfg.min_cluster_px // 2)
    keep_pts = big[comp]
    if not keep_pts.any():
        return empty
    tree_kept = cKDTree(cand[keep_pts])
    comp_kept = comp[keep_pts]

    # propagate to every full-resolution candidate pixel
    full_pts, fv, fu = deproject(d, K, 1)
    low = np.zeros((h, w), dtype=bool)  # pixels a mask may grow into
    if cfg.grow_iters > 0:
        lsel = is_candidate(full_pts, cfg.grow_min_height_m)
        low[fv[lsel], fu[lsel]] = True
    fsel = is_candidate(full_pts)
    full_pts, fv, fu = full_pts[fsel], fv[fsel], fu[fsel]
    dist, nn = tree_kept.query(full_pts, k=1, distance_upper_bound=cfg.cluster_radius_m)
    hit = np.isfinite(dist)
    labels = comp_kept[nn[hit]]
    fv, fu = fv[hit], fu[hit]
    if labels.size == 0:
        return empty

    counts = np.bincount(labels)
    comp_ids = np.nonzero(counts >= cfg.min_cluster_px)[0]
    if comp_ids.size == 0:
        return empty
    comp_ids = comp_ids[np.argsort(-counts[comp_ids], kind="stable")]
    remap = np.full(counts.size, -1, dtype=np.int64)
    remap[comp_ids] = np.arange(comp_ids.size)
    inst = remap[labels]
    ok = inst >= 0
    masks = np.zeros((comp_ids.size, h, w), dtype=bool)
    masks[inst[ok], fv[ok], fu[ok]] = True
    if cfg.grow_iters > 0:
        _grow(masks, low & ~masks.any(axis=0), cfg.grow_iters)
    n_px = counts[comp_ids].astype(np.float64)
    scores = (n_px / (n_px + cfg.min_cluster_px)).astype(np.float32)
    return masks, scores


_K3 = np.ones((3, 3), np.uint8)


def _grow(masks: np.ndarray, free: np.ndarray, iters: int) -> None:
    """In place: grow each mask by 3x3 dilations into ``free`` pixels, first mask first."""
    ys, xs = np.nonzero(free)
    if ys.size == 0:
        return
    # work on the bounding box of the free pixels (plus margin) for speed
    y0, y1 = max(0, ys.min() - 1), min(free.shape[0], ys.max() + 2)
    x0, x1 = max(0, xs.min() - 1), min(free.shape[1], xs.max() + 2)
    free = free[y0:y1, x0:x1].copy()
    for _ in range(iters):
        for m in masks:
            sub = m[y0:y1, x0:x1]
            add = (cv2.dilate(sub.view(np.uint8), _K3) > 0) & free
            sub |= add
            free &= ~add


class DepthClusteringSegmenter:
    """``predict(rgb, depth, K) -> (masks (N, H, W) bool, scores (N,))``; rgb is ignored."""

    name = "depth_clustering"

    def __init__(self, config: DepthClusteringConfig | None = None, **overrides: object) -> None:
        cfg = config or DepthClusteringConfig()
        if overrides:
            cfg = replace(cfg, **overrides)
        self.config = cfg

    def predict(
        self, rgb: np.ndarray | None, depth: np.ndarray, K: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return segment_depth(depth, K, self.config)

    __call__ = predict
