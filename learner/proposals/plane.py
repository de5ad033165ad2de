"""The table plane of one depth image, and every pixel's height above it (numpy only, no torch).

Shared by the network input (learner/preprocess.py and its numpy twin in learner/segmenter_runtime.py,
so the exported model needs nothing but numpy) and by the depth-clustering baseline. It needs no
camera pose: the table is the dominant plane of the view, found by seeded (deterministic) RANSAC.

Frames and units: camera frame with OpenCV axes (x right, y down, z forward), metres; depth in metres
along z with 0 = missing; K in pixels. Heights are signed distances to the plane, positive on the
camera's side (above the table).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PlaneFitConfig:
    stride: int = 4  # pixel subsampling of the cloud used for fitting (the table fills most of the view)
    iters: int = 100  # RANSAC 3-point hypotheses
    eval_points: int = 1000  # each hypothesis is scored on this many random points
    inlier_dist_m: float = 0.005  # a 1 cm band lets object bottoms tilt the least-squares refit
    min_depth_m: float = 0.05
    max_depth_m: float = 3.0
    seed: int = 0


def deproject(depth: np.ndarray, K: np.ndarray, stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera-frame points (M, 3) of valid (depth > 0) pixels with their full-resolution rows and
    columns. With ``stride`` > 1 the image is split into stride x stride blocks and each block
    contributes its first valid pixel (row-major), so isolated missing pixels do not punch holes
    into the subsampled cloud."""
    d = np.asarray(depth, dtype=np.float32)
    if stride <= 1:
        vv, uu = np.nonzero(d > 0)
    else:
        h, w = d.shape
        hb, wb = -(-h // stride), -(-w // stride)
        pad = np.zeros((hb * stride, wb * stride), dtype=np.float32)
        pad[:h, :w] = d
        blocks = pad.reshape(hb, stride, wb, stride).transpose(0, 2, 1, 3).reshape(hb, wb, stride * stride)
        valid = blocks > 0
        first = np.argmax(valid, axis=2)
        bv, bu = np.nonzero(valid.any(axis=2))
        k = first[bv, bu]
        vv = bv * stride + k // stride
        uu = bu * stride + k % stride
    z = d[vv, uu].astype(np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    pts = np.stack([(uu - cx) * z / fx, (vv - cy) * z / fy, z], axis=1)
    return pts, vv, uu


def fit_table_plane(
    points: np.ndarray,
    iters: int = 200,
    inlier_dist: float = 0.01,
    eval_points: int = 3000,
    rng: np.random.Generator | int | None = 0,
) -> tuple[np.ndarray, float, np.ndarray] | None:
    """RANSAC plane n.p + d = 0 with |n| = 1 and d >= 0 (camera origin on the positive side).

    Returns (n, d, inlier mask over ``points``) or None if there are fewer than 3 points or every
    hypothesis was degenerate.
    """
    pts = np.asarray(points, dtype=np.float64)
    m = pts.shape[0]
    if m < 3:
        return None
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    ev = pts if m <= eval_points else pts[gen.choice(m, eval_points, replace=False)]
    tri = pts[gen.integers(0, m, size=(iters, 3))]  # (I, 3, 3)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(normals, axis=1)
    ok = norm > 1e-9
    if not ok.any():
        return None
    normals = normals[ok] / norm[ok, None]
    ds = -np.einsum("ij,ij->i", normals, tri[ok, 0])
    counts = (np.abs(ev @ normals.T + ds) < inlier_dist).sum(axis=0)
    best = int(np.argmax(counts))
    n, d = normals[best], ds[best]
    inl = np.abs(pts @ n + d) < inlier_dist
    # least-squares refinement on the inliers (twice: the inlier set moves a little)
    for _ in range(2):
        if inl.sum() < 3:
            break
        c = pts[inl].mean(axis=0)
        _, _, vt = np.linalg.svd(pts[inl] - c, full_matrices=False)
        n_new = vt[-1]
        d_new = -float(n_new @ c)
        inl_new = np.abs(pts @ n_new + d_new) < inlier_dist
        if inl_new.sum() < inl.sum():
            break
        n, d, inl = n_new, d_new, inl_new
    if d < 0:
        n, d = -n, -d
    return n, float(d), inl



def height_above_plane(depth: np.ndarray, K: np.ndarray, cfg: PlaneFitConfig | None = None) -> np.ndarray:
    """(H,W) float32 signed height (metres) of every pixel's point above the dominant plane.

    0 where depth is missing or no plane could be fitted (too few valid points).
    """
    cfg = cfg or PlaneFitConfig()
    d = np.asarray(depth, dtype=np.float32)
    d = np.where(np.isfinite(d) & (d >= cfg.min_depth_m) & (d <= cfg.max_depth_m), d, np.float32(0.0))
    pts, _, _ = deproject(d, np.asarray(K, np.float64), cfg.stride)
    plane = fit_table_plane(pts, cfg.iters, cfg.inlier_dist_m, cfg.eval_points, cfg.seed)
    H, W = d.shape
    if plane is None:
        return np.zeros((H, W), np.float32)
    n, dist, _ = plane
    fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    u = np.arange(W, dtype=np.float64)[None, :]
    v = np.arange(H, dtype=np.float64)[:, None]
    h = (n[0] * (u - cx) / fx + n[1] * (v - cy) / fy + n[2]) * d + dist
    return np.where(d > 0, h, 0.0).astype(np.float32)
