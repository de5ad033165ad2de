"""The support plane of one depth image (the surface the objects stand on), and every pixel's
height above it (numpy only, no torch).

Shared by the network input (`learner.proposals.frame.make_input`, channel 7), the proposal
pipeline's table gate and off-support rule (`learner.proposals.cleaning`) and the depth-clustering
baseline.

Frames and units: camera frame with OpenCV axes (x right, y down, z forward), metres; depth in metres
along z with 0 = missing; K in pixels. A plane is (n, d) with n . p + d = 0, |n| = 1 and d >= 0, so
the camera origin is on its positive side and d is the camera's distance to the plane; heights are
signed distances to the plane, positive on the camera's side (above the table). World frame (only
with a camera pose): robot base, z up, metres; a camera pose is world-from-camera, 4x4.

The pose-free rule (`find_support_plane` without a pose, what `height_above_plane` uses):

1. the dominant plane P0: seeded RANSAC on the stride-4 cloud (`fit_table_plane`, the fit every
   model so far was trained with);
2. up to `max_planes - 1` more planes by sequential RANSAC, each on the points no earlier plane
   explains within `seq_band_m`, kept while it holds at least `min_plane_frac` of the cloud;
3. up, the gravity direction, without a pose: the plane normals vote; a plane's family is the planes
   parallel to it within `parallel_deg`, and the family with the most inliers among the normals that
   can be "up" for a camera looking down at a table (the normal points to the camera and to the
   image top: n_y <= `up_max_ny`, n_z <= `up_max_nz`) is the horizontal family; its
   inlier-weighted mean normal is up. Planes more than `parallel_deg` from up (walls, table sides)
   are never the support;
4. among the horizontal planes, the support is the one with the most "standing" points: cloud
   points between `stand_min_m` and `stand_max_m` above it whose foot (the point projected along
   the normal onto the plane) lies inside the convex hull of the plane's largest image-connected
   inlier patch (the plane's extent, in plane coordinates); objects stand on the table, the table
   does not stand on the floor (it is higher than `stand_max_m`), a bare second table has nothing
   on it. Ties (within `tie_share` of the best count) go to the nearest plane (smallest d: the
   highest one);
5. when the support is P0 its (n, d) are returned unchanged: a frame with one table and no floor in
   view (the narrow twin) gets exactly today's height channel.

With a camera pose (`support_plane_from_pose`, what the loop should use): up is the pose's world z
in the camera frame, exactly; with the table top's world height known the plane is
n = R^T e_z, d = t_z - table_z (exact, no fit); without it the horizontal plane candidates are
filtered by that up and chosen as above. A workspace box (world frame, metres) restricts both the
standing points and `workspace_mask`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
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



@dataclass(frozen=True)
class SupportRuleConfig:
    """The pose-free support-plane rule (module docstring, steps 2-4). Metres, degrees, shares."""

    max_planes: int = 5  # planes found by sequential RANSAC, the dominant one included
    seq_band_m: float = 0.02  # points within this of an earlier plane are not refitted
    min_plane_frac: float = 0.04  # a plane holding fewer of the cloud's points ends the search
    parallel_deg: float = 12.0  # planes this close in normal direction are one family
    up_max_ny: float = 0.1  # "up" points to the image top (camera y down) ...
    up_max_nz: float = -0.15  # ... and towards the camera (cameras look down at the table)
    stand_min_m: float = 0.01  # a standing point is this far above the plane ...
    stand_max_m: float = 0.3  # ... and at most this far (objects, not the table above the floor)
    hull_margin_m: float = 0.02  # a foot this far outside the inlier hull still stands on it
    tie_share: float = 0.5  # planes with >= this share of the best standing count: the nearest wins


@dataclass
class SupportPlane:
    """The support plane of one frame in the camera frame (module docstring for units and frames).

    n (3,), d: the plane n . p + d = 0 (|n| = 1, d >= 0: d is the camera's distance to it, metres).
    up (3,): the gravity-up direction used (camera frame, unit). source: "dominant" (P0 was chosen),
    "support" (another horizontal plane), "pose" (from a camera pose), "none" (no plane: heights 0).
    basis (3, 2) and hull (k, 2): in-plane axes and the convex hull (metres, in those axes) of the
    plane's largest image-connected inlier patch; None when unknown (a pose without depth).
    planes: every candidate (n, d, share of the cloud's points) found, P0 first.
    """

    n: np.ndarray
    d: float
    up: np.ndarray
    source: str
    basis: np.ndarray | None = None
    hull: np.ndarray | None = None
    planes: list[tuple[np.ndarray, float, float]] | None = None

    def height(self, depth: np.ndarray, K: np.ndarray) -> np.ndarray:
        """(H, W) float32 signed height (metres) above the plane; 0 where depth is missing."""
        if self.source == "none":
            return np.zeros(np.asarray(depth).shape, np.float32)
        return plane_height(depth, K, self.n, self.d)

    def over_extent(self, points: np.ndarray, margin_m: float = 0.02) -> np.ndarray:
        """(M,) bool: camera-frame points (M, 3) whose foot on the plane lies inside the hull grown
        by margin_m metres (all True when the extent is unknown)."""
        if self.hull is None or self.basis is None:
            return np.ones(points.shape[0], bool)
        return in_convex_hull(np.asarray(points, np.float64) @ self.basis, self.hull, margin_m)


def plane_height(depth: np.ndarray, K: np.ndarray, n: np.ndarray, d: float) -> np.ndarray:
    """(H, W) float32 signed distance (metres) of every pixel's point to the plane n . p + d = 0
    (camera frame); 0 where depth is missing."""
    d_img = np.asarray(depth, np.float32)
    H, W = d_img.shape
    fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    u = np.arange(W, dtype=np.float64)[None, :]
    v = np.arange(H, dtype=np.float64)[:, None]
    h = (n[0] * (u - cx) / fx + n[1] * (v - cy) / fy + n[2]) * d_img + d
    return np.where(d_img > 0, h, 0.0).astype(np.float32)


def plane_basis(n: np.ndarray) -> np.ndarray:
    """(3, 2) orthonormal in-plane axes of the unit normal n."""
    a = np.array([1.0, 0.0, 0.0]) if abs(n[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(n, a)
    e1 /= np.linalg.norm(e1)
    return np.stack([e1, np.cross(n, e1)], axis=1)


def convex_hull_2d(pts: np.ndarray) -> np.ndarray | None:
    """(k, 2) counter-clockwise convex hull of 2D points (float64), None for < 3 distinct points."""
    import cv2  # OpenCV, as the rest of learner.proposals

    p = np.asarray(pts, np.float32).reshape(-1, 2)
    if p.shape[0] < 3:
        return None
    hull = cv2.convexHull(p, clockwise=False).reshape(-1, 2).astype(np.float64)
    if hull.shape[0] < 3:
        return None
    x, y = hull[:, 0], hull[:, 1]
    if float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) < 0:  # make it counter-clockwise
        hull = hull[::-1].copy()
    return hull


def in_convex_hull(pts: np.ndarray, hull: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """(M,) bool: 2D points inside the counter-clockwise convex polygon hull grown by margin (each
    edge moved out by margin; the same units as the points)."""
    a = hull
    b = np.roll(hull, -1, axis=0)
    e = b - a
    out_n = np.stack([e[:, 1], -e[:, 0]], axis=1)  # outward for a counter-clockwise polygon
    out_n /= np.maximum(np.linalg.norm(out_n, axis=1, keepdims=True), 1e-12)
    dist = np.einsum("mkj,kj->mk", pts[:, None, :] - a[None], out_n)
    return np.all(dist <= margin, axis=1)


def _largest_patch(inl: np.ndarray, vv: np.ndarray, uu: np.ndarray, stride: int, shape: tuple[int, int]) -> np.ndarray:
    """The inliers (bool over the cloud) of the largest 8-connected patch on the stride grid."""
    import cv2  # OpenCV, as the rest of learner.proposals

    hb, wb = -(-shape[0] // stride), -(-shape[1] // stride)
    grid = np.zeros((hb, wb), np.uint8)
    bv, bu = vv[inl] // stride, uu[inl] // stride
    grid[bv, bu] = 1
    n, lab = cv2.connectedComponents(grid, connectivity=8)
    if n <= 2:
        return inl
    counts = np.bincount(lab[bv, bu], minlength=n)
    counts[0] = 0
    keep = np.zeros_like(inl)
    keep[np.flatnonzero(inl)] = lab[bv, bu] == int(np.argmax(counts))
    return keep


def _extent(pts: np.ndarray, inl: np.ndarray, n: np.ndarray, vv, uu, stride, shape):
    basis = plane_basis(n)
    patch = _largest_patch(inl, vv, uu, stride, shape)
    hull = convex_hull_2d(pts[patch] @ basis)
    return basis, hull


def _orient(n: np.ndarray, d: float) -> tuple[np.ndarray, float]:
    return (-n, -d) if d < 0 else (n, d)


def _choose_support(pts, vv, uu, stride, shape, planes, horizontal, rule: SupportRuleConfig) -> int:
    """Step 4 of the module docstring: the index (into planes) of the support among the horizontal
    candidate indices. A candidate whose own inliers mostly stand on another candidate (1-30 cm above
    it, feet inside its extent: the top of a box or book on the table) is an object, not a support."""
    ext = {int(i): _extent(pts, planes[i][2], planes[i][0], vv, uu, stride, shape) for i in horizontal}

    def stands_on(j: int, sel: np.ndarray) -> np.ndarray:
        n_j, d_j, _ = planes[j]
        basis, hull = ext[j]
        h = pts[sel] @ n_j + d_j
        out = (h > rule.stand_min_m) & (h < rule.stand_max_m)
        if hull is None:
            return np.zeros_like(out)
        if out.any():
            out[out] = in_convex_hull(pts[sel][out] @ basis, hull, rule.hull_margin_m)
        return out

    objects = set()
    for i in horizontal:
        own = planes[i][2]
        for j in horizontal:
            if j != i and stands_on(int(j), own).mean() > 0.5:
                objects.add(int(i))
                break
    cands = [int(i) for i in horizontal if int(i) not in objects] or [int(horizontal[0])]
    # points of a found plane that is not an object top (another table, the floor, a wall) are not objects
    on_plane = np.zeros(pts.shape[0], bool)
    for k, (n_k, d_k, _) in enumerate(planes):
        if k not in objects:
            on_plane |= np.abs(pts @ n_k + d_k) < rule.seq_band_m
    stand = np.asarray([float(stands_on(i, ~on_plane).sum()) for i in cands])
    ok = stand >= rule.tie_share * stand.max() if stand.max() > 0 else np.ones(len(cands), bool)
    ds = np.asarray([planes[i][1] for i in cands])
    return cands[int(np.flatnonzero(ok)[int(np.argmin(ds[ok]))])]


def find_support_plane(
    depth: np.ndarray,
    K: np.ndarray,
    cfg: PlaneFitConfig | None = None,
    rule: SupportRuleConfig | None = None,
    up: np.ndarray | None = None,
    camera_height_m: float | None = None,
) -> SupportPlane:
    """The support plane of one depth image by the rule of the module docstring.

    depth (H, W) metres (0 = missing), K (3, 3). up: the known gravity-up direction in the camera
    frame (from a camera pose), else estimated from the planes. camera_height_m: the camera's known
    height above the table top (metres, from a pose and the table's world z); then the horizontal
    plane whose d is nearest to it (within 5 cm) is the support."""
    cfg = cfg or PlaneFitConfig()
    rule = rule or SupportRuleConfig()
    d_img = np.asarray(depth, dtype=np.float32)
    d_img = np.where(np.isfinite(d_img) & (d_img >= cfg.min_depth_m) & (d_img <= cfg.max_depth_m), d_img,
                     np.float32(0.0))
    Kd = np.asarray(K, np.float64)
    pts, vv, uu = deproject(d_img, Kd, cfg.stride)
    none = SupportPlane(np.array([0.0, 0.0, -1.0]), 0.0, np.array([0.0, 0.0, -1.0]), "none")
    first = fit_table_plane(pts, cfg.iters, cfg.inlier_dist_m, cfg.eval_points, cfg.seed)
    if first is None:
        return none
    m = pts.shape[0]
    planes: list[tuple[np.ndarray, float, np.ndarray]] = [first]
    explained = np.abs(pts @ first[0] + first[1]) < rule.seq_band_m
    for k in range(1, rule.max_planes):
        rest = np.flatnonzero(~explained)
        if rest.size < max(3, rule.min_plane_frac * m):
            break
        fit = fit_table_plane(pts[rest], cfg.iters, cfg.inlier_dist_m, cfg.eval_points, cfg.seed + k)
        if fit is None:
            break
        n_k, dk = fit[0], fit[1]
        inl = np.abs(pts @ n_k + dk) < cfg.inlier_dist_m
        if inl.sum() < rule.min_plane_frac * m:
            break
        planes.append((n_k, dk, inl))
        explained |= np.abs(pts @ n_k + dk) < rule.seq_band_m
    normals = np.stack([p[0] for p in planes])
    sizes = np.asarray([float(p[2].sum()) for p in planes])
    cos_par = np.cos(np.deg2rad(rule.parallel_deg))
    if up is None:
        can_up = (normals[:, 1] <= rule.up_max_ny) & (normals[:, 2] <= rule.up_max_nz)
        if not can_up.any():
            can_up[0] = True
        family = (normals @ normals.T) >= cos_par  # oriented normals: parallel and same sense
        votes = np.where(can_up, family @ sizes, -1.0)
        lead = int(np.argmax(votes))
        fam = family[lead]
        up_v = (normals[fam] * sizes[fam, None]).sum(axis=0)
        up_v /= np.linalg.norm(up_v)
    else:
        up_v = np.asarray(up, np.float64) / np.linalg.norm(up)
    horizontal = np.flatnonzero(normals @ up_v >= cos_par)
    cand_list = [(n_, d_, i_) for n_, d_, i_ in planes]
    info = [(p[0], float(p[1]), float(p[2].sum()) / m) for p in planes]
    if horizontal.size == 0:
        horizontal = np.array([0])
    if camera_height_m is not None:
        gap = np.abs(np.asarray([planes[i][1] for i in horizontal]) - camera_height_m)
        if gap.min() > 0.05:
            return SupportPlane(up_v.copy(), float(camera_height_m), up_v, "pose", planes=info)
        best = int(horizontal[int(np.argmin(gap))])
    elif horizontal.size == 1:
        best = int(horizontal[0])
    else:
        best = _choose_support(pts, vv, uu, cfg.stride, d_img.shape, planes, horizontal, rule)
    n_b, d_b, inl_b = cand_list[best]
    basis, hull = _extent(pts, inl_b, n_b, vv, uu, cfg.stride, d_img.shape)
    return SupportPlane(np.asarray(n_b), float(d_b), up_v, "dominant" if best == 0 else "support",
                        basis, hull, info)


def support_plane_from_pose(
    camera_pose: np.ndarray,
    table_bounds: tuple[tuple[float, float], tuple[float, float]] | None = None,
    depth: np.ndarray | None = None,
    K: np.ndarray | None = None,
    table_z: float | None = 0.0,
) -> SupportPlane:
    """The exact support plane of a frame whose camera pose is known (the loop: `RGBDFrame.camera_pose`
    and the robot's `table_bounds`).

    camera_pose: (4, 4) world-from-camera (world z up, metres). table_z: the table top's world z
    (0 in the sim and the calibrated cell); then n = R^T e_z, d = t_z - table_z, no fit. table_z
    None: the horizontal plane of the depth (needs depth and K) whose normal is the pose's up is
    chosen by the standing-points rule. table_bounds ((x_min, x_max), (y_min, y_max)) world metres:
    the plane's extent (its hull) is that rectangle, so `SupportPlane.over_extent` is exact."""
    T = np.asarray(camera_pose, np.float64)
    R, t = T[:3, :3], T[:3, 3]
    up = R[2, :].copy()  # world +z in camera coordinates
    up /= np.linalg.norm(up)
    if table_z is None:
        if depth is None or K is None:
            raise ValueError("support_plane_from_pose without table_z needs depth and K")
        sp = find_support_plane(depth, K, up=up)
        sp.source = "pose"
        n, d = sp.n, sp.d
    else:
        n, d = up, float(t[2] - table_z)
        sp = SupportPlane(n, d, up, "pose")
    if table_bounds is not None:
        (x0, x1), (y0, y1) = table_bounds
        zt = float(t[2] - d) if table_z is None else float(table_z)
        corners_w = np.array([[x0, y0, zt], [x1, y0, zt], [x1, y1, zt], [x0, y1, zt]])
        corners_c = (corners_w - t) @ R  # camera-frame corners
        sp.basis = plane_basis(n)
        sp.hull = convex_hull_2d(corners_c @ sp.basis)
    sp.n, sp.d = np.asarray(n), float(d)
    return sp


def workspace_mask(depth: np.ndarray, K: np.ndarray, camera_pose: np.ndarray,
                   box: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]) -> np.ndarray:
    """(H, W) bool: pixels with depth whose point lies inside the world-frame box
    ((x_min, x_max), (y_min, y_max), (z_min, z_max)) in metres (camera_pose: world-from-camera)."""
    d = np.asarray(depth, np.float32)
    H, W = d.shape
    fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    u = np.arange(W, dtype=np.float64)[None, :]
    v = np.arange(H, dtype=np.float64)[:, None]
    pc = np.stack([(u - cx) * d / fx, (v - cy) * d / fy, np.broadcast_to(d, (H, W))], axis=-1)
    T = np.asarray(camera_pose, np.float64)
    pw = pc @ T[:3, :3].T + T[:3, 3]
    inside = d > 0
    for a in range(3):
        lo, hi = box[a]
        inside &= (pw[..., a] >= lo) & (pw[..., a] <= hi)
    return inside



# (camera height above the table top in metres) while `use_camera_pose` is active
_POSE_PRIOR: contextvars.ContextVar[float | None] = contextvars.ContextVar("support_pose_prior", default=None)


@contextlib.contextmanager
def use_camera_pose(camera_pose: np.ndarray | None, table_z: float = 0.0) -> Iterator[None]:
    """Within the block, `height_above_plane` (hence `make_input`'s channel 7 and every proposal
    step reading it) takes as the support the horizontal candidate plane whose distance to the
    camera matches the pose's height above the table top (t_z - table_z, within 5 cm), else that
    exact plane. Only the distance is used (not the pose's up), so TTA views (flips, rolls, zooms of
    the same frame) keep the same support. camera_pose None: no effect."""
    if camera_pose is None:
        yield
        return
    T = np.asarray(camera_pose, np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"camera_pose must be a finite 4x4 world-from-camera matrix, got shape {T.shape}")
    token = _POSE_PRIOR.set(float(T[2, 3] - table_z))
    try:
        yield
    finally:
        _POSE_PRIOR.reset(token)


def height_above_plane(depth: np.ndarray, K: np.ndarray, cfg: PlaneFitConfig | None = None) -> np.ndarray:
    """(H,W) float32 signed height (metres) of every pixel's point above the support plane
    (`find_support_plane`; inside `use_camera_pose` the pose's table height picks it).

    0 where depth is missing or no plane could be fitted (too few valid points).
    """
    cfg = cfg or PlaneFitConfig()
    d = _usable_depth(depth, cfg)
    return support_plane(d, K, cfg).height(d, np.asarray(K, np.float64))


def _usable_depth(depth: np.ndarray, cfg: PlaneFitConfig) -> np.ndarray:
    d = np.asarray(depth, dtype=np.float32)
    return np.where(np.isfinite(d) & (d >= cfg.min_depth_m) & (d <= cfg.max_depth_m), d, np.float32(0.0))


def support_plane(depth: np.ndarray, K: np.ndarray, cfg: PlaneFitConfig | None = None) -> SupportPlane:
    """The SupportPlane `height_above_plane` measures from (camera frame; within `use_camera_pose` the
    pose's table height picks it). A plane is resolution-free: fitted on a frame resized for the
    network, it gives the heights of the full-resolution frame with its own K."""
    cfg = cfg or PlaneFitConfig()
    return find_support_plane(_usable_depth(depth, cfg), K, cfg, camera_height_m=_POSE_PRIOR.get())


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool mask with every 4-connected region of its complement that does not touch the
    image border added."""
    import cv2  # OpenCV, as the rest of learner.proposals

    m = np.asarray(mask, bool)
    n, lab = cv2.connectedComponents((~m).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    outside = np.isin(lab, border) & ~m
    return ~outside


def support_region(height_m: np.ndarray, valid: np.ndarray, xyz_m: np.ndarray,
                   inlier_m: float = 0.01, below_m: float = 0.02, above_m: float = 0.295,
                   margin_m: float = 0.02, tall_m: float = 0.5, depth_jump_m: float = 0.05) -> np.ndarray | None:
    """(H, W) bool: the image region over the support plane's extent, from the network input alone.

    height_m: (H, W) height above the support plane (metres, input channel 7 unscaled; 0 where
    missing); valid: (H, W) measured depth; xyz_m: (3, H, W) camera-frame points up to a constant
    offset (the input's centred XYZ channels unscaled, metres). The support's extent is the convex
    hull, in plane coordinates, of the largest 8-connected image patch of plane pixels
    (|height| < inlier_m). A pixel is over the support when its point is between below_m under and
    above_m over the plane (objects up to ~30 cm; the input clips heights at 0.3 m) and its foot on
    the plane lies inside that hull grown by margin_m; then enclosed regions (depth holes on objects
    or the table) are added, but missing depth connected to the image border (a sensor's border band,
    the background beyond the table) is not. Last, the room standing at the table's edge is taken out
    (`room_structures`: regions depth-continuous with a point tall_m or more above the plane, and wide
    vertical planes such as a wall whose upper part the sensor lost). None when there is no plane
    (height all zero)."""
    import cv2  # OpenCV, as the rest of learner.proposals

    h = np.asarray(height_m, np.float32)
    v = np.asarray(valid, bool)
    if not np.any(h[v] != 0):
        return None
    inl = v & (np.abs(h) < inlier_m)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(inl.astype(np.uint8), connectivity=8)
    if n <= 1:
        return None
    patch = lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    q = np.asarray(xyz_m, np.float64)
    qp = q[:, patch].T  # (M, 3)
    if qp.shape[0] < 3:
        return None
    c = qp.mean(axis=0)
    sub = qp[:: max(1, qp.shape[0] // 5000)] - c
    normal = np.linalg.svd(sub, full_matrices=False)[2][-1]
    basis = plane_basis(normal / np.linalg.norm(normal))
    hull = convex_hull_2d(qp @ basis)
    if hull is None:
        return None
    cand = v & (h > -below_m) & (h < above_m)
    over = np.zeros_like(v)
    if cand.any():
        over[cand] = in_convex_hull(q[:, cand].T @ basis, hull, margin_m)
    # heights from the fitted patch plane, not clipped like the input's channel (which stops at 0.3 m)
    n_up = normal / np.linalg.norm(normal)
    h_full = np.tensordot(n_up, q, axes=1) - float(n_up @ c)
    both = v & (np.abs(h) > inlier_m) & (np.abs(h) < above_m)
    if both.any() and float(np.sum(h_full[both] * h[both])) < 0:
        h_full = -h_full  # the normal's sign: up, as the input's height
        n_up = -n_up
    return fill_holes(over) & ~room_structures(h_full.astype(np.float32), v, q, n_up, inlier_m, tall_m, depth_jump_m)


def room_structures(height_m: np.ndarray, valid: np.ndarray, xyz_m: np.ndarray, up: np.ndarray, inlier_m: float,
                    tall_m: float, depth_jump_m: float, wall_width_m: float = 0.3, wall_rms_m: float = 0.015,
                    wall_tilt_deg: float = 20.0, min_pixels: int = 60) -> np.ndarray:
    """(H, W) bool: the parts of the room that stand on or beside the support, not objects on it.

    Regions are the 8-connected pixels above the plane band (height >= inlier_m, metres) whose neighbours
    are depth-continuous (z steps under depth_jump_m). A region is a room structure when it reaches tall_m
    or more above the plane (a wall or cabinet rising at the table's edge), or when it is a wall seen only
    low down (a sensor often loses the upper wall): a plane (RMS distance of its points under wall_rms_m)
    within wall_tilt_deg of vertical and at least wall_width_m wide along the table. No tabletop object is
    that tall, nor a flat vertical sheet that wide. xyz_m: (3, H, W) camera-frame points up to a constant
    offset; up: the plane's unit normal (camera frame, pointing up); metres throughout."""
    import cv2  # OpenCV, as the rest of learner.proposals

    raised = valid & (height_m >= inlier_m)
    if not raised.any():
        return np.zeros_like(raised)
    z = np.asarray(xyz_m[2], np.float32)
    step = np.zeros_like(raised)  # a pixel with a depth step to its right or lower neighbour
    dx = np.abs(np.diff(z, axis=1)) >= depth_jump_m
    dy = np.abs(np.diff(z, axis=0)) >= depth_jump_m
    step[:, :-1] |= dx
    step[:, 1:] |= dx
    step[:-1] |= dy
    step[1:] |= dy
    n, lab, stats, _ = cv2.connectedComponentsWithStats((raised & ~step).astype(np.uint8), connectivity=8)
    found = set(np.unique(lab[raised & ~step & (height_m >= tall_m)]).tolist()) - {0}
    up = np.asarray(up, np.float64)
    xyz = np.asarray(xyz_m, np.float64)
    for k in range(1, n):
        if k in found or stats[k, cv2.CC_STAT_AREA] < min_pixels:
            continue
        pts = xyz[:, lab == k].T
        pts = pts[:: max(1, len(pts) // 2000)]
        c = pts.mean(axis=0)
        _, sv, vt = np.linalg.svd(pts - c, full_matrices=False)
        normal = vt[-1]
        if abs(float(normal @ up)) > np.sin(np.deg2rad(wall_tilt_deg)) or sv[-1] / np.sqrt(len(pts)) > wall_rms_m:
            continue
        along = np.cross(up, normal)
        spread = np.percentile((pts - c) @ (along / max(np.linalg.norm(along), 1e-9)), [2, 98])
        if spread[1] - spread[0] >= wall_width_m:
            found.add(k)
    out = np.isin(lab, sorted(found)) if found else np.zeros_like(raised)
    # step pixels take the side they touch: grown by one pixel into the raised region
    return out | (cv2.dilate(out.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & raised & step)
