"""Instance bank and RISE-style pseudo-sequences built from the robot's own interaction masks.

Every poke or grasp gives a noisy object mask (frame differencing). `cutout_from_interaction` turns
such a mask into an `InstanceCutout`: the object's RGB pixels plus a *height profile* (how far each
object pixel stands in front of its support surface, in metres along the camera z axis). Cut-outs go
into a bounded `InstanceBank`. `make_pseudo_sequence` then fabricates "before"/"after" frame pairs
with exactly known instance masks and associations (RISE, Sec. 3.2 and App. A):

- x1: K bank instances pasted into a background RGB-D frame, top-left corner per axis drawn from
  Beta(0.5, 0.5) over the feasible range (Eq. 2), so inserts favour the periphery;
- a placement is rejected (and redrawn, bounded tries) if it overlaps any already pasted instance by
  more than 85 % of the smaller of the two masks;
- x2: the same background with some of x1's instances removed, some moved (same cut-out, new
  placement) and some new ones added; persisting instances keep their id, so `matches` is the
  association ground truth.

Depth is composited physically: a pasted object stands on the background's support surface at the
placement (a robust plane fitted to the background depth around the footprint) and its depth is
that surface minus its height profile. A pasted pixel is shown only if it is in front of what is
already there (z-test), so real background objects occlude pasted ones and pasted instances occlude
each other in depth order. See `PasteConfig` for the tolerances.

Conventions (robot/base.py): pixels (u, v) = (column, row) with integer pixel centres; depth float32
metres along the camera z axis, 0 = missing. numpy + OpenCV only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

__all__ = [
    "CutoutConfig",
    "InstanceBank",
    "InstanceCutout",
    "PasteConfig",
    "PastedFrame",
    "Placement",
    "SupportPlane",
    "cutout_from_interaction",
    "fit_support_plane",
    "make_pseudo_sequence",
]


# ----------------------------------------------------------------------------------------------
# Support plane: 1/z is affine in (u, v) for any 3D plane seen by a pinhole camera
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SupportPlane:
    """A 3D plane in image form: 1 / z(u, v) = a u + b v + c (exact for a pinhole camera, no K needed).

    inlier_frac: fraction of the fitted points within the inlier tolerance.
    """

    a: float
    b: float
    c: float
    inlier_frac: float = 1.0

    def depth(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Plane depth (m) at pixels (u, v); 0 where the plane is behind the camera (invalid)."""
        inv = self.a * np.asarray(u, np.float64) + self.b * np.asarray(v, np.float64) + self.c
        out = np.zeros(np.broadcast(inv).shape, np.float64)
        ok = inv > 1e-6
        out[ok] = 1.0 / inv[ok]
        return out

    def depth_patch(self, x0: int, y0: int, h: int, w: int) -> np.ndarray:
        """Plane depth over the pixel block rows y0..y0+h-1, columns x0..x0+w-1."""
        v, u = np.mgrid[y0 : y0 + h, x0 : x0 + w]
        return self.depth(u, v).astype(np.float32)


def fit_support_plane(
    u: np.ndarray,
    v: np.ndarray,
    z: np.ndarray,
    tol_m: float = 0.006,
    iters: int = 64,
    max_points: int = 3000,
    seed: int = 0,
) -> SupportPlane | None:
    """Robust (RANSAC + least-squares refit) plane fit to depth samples z (m) at pixels (u, v).

    The model is 1/z = a u + b v + c; residuals are measured in depth (metres) against `tol_m`.
    Deterministic (internal generator seeded with `seed`). Returns None with fewer than 3 points.
    """
    u = np.asarray(u, np.float64).ravel()
    v = np.asarray(v, np.float64).ravel()
    z = np.asarray(z, np.float64).ravel()
    ok = np.isfinite(z) & (z > 0)
    u, v, z = u[ok], v[ok], z[ok]
    n = z.size
    if n < 3:
        return None
    rng = np.random.default_rng(seed)
    if n > max_points:
        sel = np.sort(rng.choice(n, max_points, replace=False))
        u, v, z = u[sel], v[sel], z[sel]
        n = max_points
    A = np.stack([u, v, np.ones_like(u)], axis=1)
    w = 1.0 / z

    def inliers(coef: np.ndarray) -> np.ndarray:
        inv = A @ coef
        zp = np.where(inv > 1e-6, 1.0 / np.maximum(inv, 1e-6), np.inf)
        return np.abs(z - zp) < tol_m

    # Candidate 0: the fronto-parallel plane through the median depth (good when points are few).
    best = np.array([0.0, 0.0, 1.0 / np.median(z)])
    best_inl = inliers(best)
    if n >= 6 and iters > 0:
        # All minimal samples at once: (iters, 3) point triples -> (iters, 3) coefficient vectors.
        tri = rng.integers(0, n, size=(iters, 3))  # repeated indices are singular and dropped
        Ms = A[tri]
        ok_det = np.abs(np.linalg.det(Ms)) > 1e-9
        if ok_det.any():
            coefs = np.linalg.solve(Ms[ok_det], w[tri[ok_det]][..., None])[..., 0]
            inv = coefs @ A.T  # (m, n)
            zp = np.where(inv > 1e-6, 1.0 / np.maximum(inv, 1e-6), np.inf)
            counts = (np.abs(z[None] - zp) < tol_m).sum(axis=1)
            j = int(np.argmax(counts))
            if counts[j] > best_inl.sum():
                best = coefs[j]
                best_inl = inliers(best)
    for _ in range(3):  # least-squares refinement on the consensus set
        if best_inl.sum() < 3:
            break
        coef, *_ = np.linalg.lstsq(A[best_inl], w[best_inl], rcond=None)
        inl = inliers(coef)
        if inl.sum() < best_inl.sum():
            break
        best, best_inl = coef, inl
    return SupportPlane(float(best[0]), float(best[1]), float(best[2]), float(best_inl.mean()))


# ----------------------------------------------------------------------------------------------
# Cut-outs
# ----------------------------------------------------------------------------------------------


@dataclass
class InstanceCutout:
    """One object cut out of a real frame.

    rgb: (h, w, 3) uint8 crop (the tight bounding box of the mask; pixels outside the mask are the
        original surroundings and only serve interpolation at the edge).
    height: (h, w) float32 metres, >= 0: how far each object pixel stands in front of (toward the
        camera from) its local support surface, along the camera z axis. 0 outside the mask.
    mask: (h, w) bool object pixels.
    source: index of the interaction/frame it came from (-1 = unknown).
    quality: score in [0, 1] (see `cutout_from_interaction`).
    support_depth: median depth (m) of the support surface under the object where it was cut,
        used to rescale it for perspective when pasted at another depth (0 = unknown, no rescale).
    info: free-form provenance (bbox in the source frame, support method, ...).
    """

    rgb: np.ndarray
    height: np.ndarray
    mask: np.ndarray
    source: int = -1
    quality: float = 1.0
    support_depth: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rgb = np.ascontiguousarray(self.rgb, dtype=np.uint8)
        self.height = np.ascontiguousarray(self.height, dtype=np.float32)
        self.mask = np.ascontiguousarray(self.mask, dtype=bool)
        h, w = self.mask.shape
        if self.rgb.shape != (h, w, 3) or self.height.shape != (h, w):
            raise ValueError(
                f"cut-out shapes disagree: rgb {self.rgb.shape}, height {self.height.shape}, mask {self.mask.shape}"
            )
        if not self.mask.any():
            raise ValueError("cut-out mask is empty")

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.mask.shape[0]), int(self.mask.shape[1]))


@dataclass
class CutoutConfig:
    """Acceptance thresholds for `cutout_from_interaction` (defaults for ~640x480 tabletop views).

    min_area_px / max_area_frac: reject masks smaller than 150 px or larger than 10 % of the image
        (a differencing mask that large is usually a lighting change or several objects).
    border_margin_px: reject masks reaching within 2 px of the image border (object cut off).
    min_main_component_frac: the largest connected component must hold >= 85 % of the mask
        (after a 3x3 opening); only that component is kept, and holes are filled.
    min_solidity: area / convex-hull area >= 0.6 (compact, not a smear or a thin arc of pixels).
    max_missing_depth_frac: at most 30 % of the object pixels may lack depth in the before frame.
    ring_gap_px / ring_width_px: the support ring for the fallback plane fit lies 3..11 px outside
        the mask; it needs >= min_support_px valid depths and a plane inlier fraction of at least
        min_ring_inlier_frac (clutter around the object lowers it).
    min_after_valid_frac / min_after_inlier_frac: the after frame is used as the support (the
        object left, exposing the table) only if >= 70 % of the mask has depth there and >= 85 % of
        it lies on one plane; otherwise (e.g. a poke that moved the object only a little) the ring
        is used.
    plane_tol_m: plane inlier tolerance (6 mm: D435 noise at ~0.7 m is 2-4 mm).
    min_object_height_m: the 90th-percentile height must reach 8 mm, else it is not an object
        standing on the table (e.g. a shadow or a flat sticker).
    max_height_m: heights are clipped to 0.4 m.
    """

    min_area_px: int = 150
    max_area_frac: float = 0.10
    border_margin_px: int = 2
    min_main_component_frac: float = 0.85
    min_solidity: float = 0.6
    max_missing_depth_frac: float = 0.30
    ring_gap_px: int = 3
    ring_width_px: int = 8
    min_support_px: int = 40
    min_ring_inlier_frac: float = 0.5
    min_after_valid_frac: float = 0.7
    min_after_inlier_frac: float = 0.85
    plane_tol_m: float = 0.006
    min_object_height_m: float = 0.008
    height_percentile: float = 90.0
    max_height_m: float = 0.40


def _clean_mask(mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Open with a 3x3 kernel, keep the largest component, fill holes. Returns (mask, kept frac)."""
    m = mask.astype(np.uint8)
    opened = cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    if opened.sum() == 0:
        opened = m
    n, lab, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, dtype=bool), 0.0
    areas = stats[1:, cv2.CC_STAT_AREA]
    best = 1 + int(np.argmax(areas))
    main = lab == best
    frac = float(areas.max()) / float(max(1, mask.sum()))
    main = ndimage.binary_fill_holes(main)
    return main, frac


def _solidity(mask: np.ndarray) -> float:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return 0.0
    pts = np.concatenate(contours, axis=0)
    hull = cv2.convexHull(pts)
    # Contour/hull polygons pass through pixel centres, so compare against a rasterised hull.
    hull_img = np.zeros(mask.shape, np.uint8)
    cv2.fillConvexPoly(hull_img, hull, 1)
    hull_area = int(hull_img.sum())
    return float(mask.sum()) / float(max(hull_area, 1))


def _fill_nearest(values: np.ndarray, valid: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Fill `region & ~valid` with the nearest valid value (Euclidean)."""
    out = values.copy()
    todo = region & ~valid
    if not todo.any() or not valid.any():
        return out
    _, (iy, ix) = ndimage.distance_transform_edt(~valid, return_indices=True)
    out[todo] = values[iy[todo], ix[todo]]
    return out


def cutout_from_interaction(
    rgb_before: np.ndarray,
    depth_before: np.ndarray,
    mask: np.ndarray,
    depth_after: np.ndarray | None = None,
    source: int = -1,
    config: CutoutConfig | None = None,
    report: dict[str, Any] | None = None,
) -> InstanceCutout | None:
    """Cut the object under `mask` out of the before frame, with its height above the support.

    rgb_before (H,W,3) uint8, depth_before (H,W) float32 m (0 = missing), mask (H,W) bool: the
    object's pixels in the before frame (noisy, from frame differencing). depth_after: the frame
    after the interaction; when the object left the mask region (a grasp), the depth there is the
    bare support surface and is fitted with a plane. Otherwise (no after frame, too much missing
    depth, or the region is not planar, e.g. a poke moved the object only a little) the support
    plane is fitted robustly to the before depth in a ring just outside the mask.

    Returns None if the cut-out is rejected (see `CutoutConfig`); `report["reason"]` says why.
    quality = solidity * (1 - missing depth fraction) * support plane inlier fraction.
    """
    cfg = config or CutoutConfig()
    rep = report if report is not None else {}

    def reject(reason: str) -> None:
        rep["reason"] = reason
        return None

    rgb_before = np.asarray(rgb_before)
    depth_before = np.asarray(depth_before, np.float32)
    mask = np.asarray(mask, bool)
    H, W = mask.shape
    if rgb_before.shape != (H, W, 3) or depth_before.shape != (H, W):
        raise ValueError(f"shape mismatch: rgb {rgb_before.shape}, depth {depth_before.shape}, mask {mask.shape}")
    if depth_after is not None:
        depth_after = np.asarray(depth_after, np.float32)
        if depth_after.shape != (H, W):
            raise ValueError(f"depth_after shape {depth_after.shape} != {(H, W)}")

    if mask.sum() < cfg.min_area_px:
        return reject("too_small")
    m, main_frac = _clean_mask(mask)
    if main_frac < cfg.min_main_component_frac:
        return reject("fragmented")
    area = int(m.sum())
    rep["area"] = area
    if area < cfg.min_area_px:
        return reject("too_small")
    if area > cfg.max_area_frac * H * W:
        return reject("too_large")
    ys, xs = np.nonzero(m)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    b = cfg.border_margin_px
    if x0 < b or y0 < b or x1 > W - 1 - b or y1 > H - 1 - b:
        return reject("touches_border")
    solidity = _solidity(m)
    rep["solidity"] = solidity
    if solidity < cfg.min_solidity:
        return reject("not_compact")
    valid_before = np.isfinite(depth_before) & (depth_before > 0)
    missing_frac = 1.0 - float((valid_before & m).sum()) / area
    rep["missing_depth_frac"] = missing_frac
    if missing_frac > cfg.max_missing_depth_frac:
        return reject("missing_depth")

    # --- support surface ----------------------------------------------------------------------
    plane: SupportPlane | None = None
    method = ""
    if depth_after is not None:
        va = m & np.isfinite(depth_after) & (depth_after > 0)
        if va.sum() >= max(cfg.min_support_px, cfg.min_after_valid_frac * area):
            vy, vx = np.nonzero(va)
            p = fit_support_plane(vx, vy, depth_after[vy, vx], tol_m=cfg.plane_tol_m)
            if p is not None and p.inlier_frac >= cfg.min_after_inlier_frac:
                plane, method = p, "after"
    if plane is None:
        dist = cv2.distanceTransform((~m).astype(np.uint8), cv2.DIST_L2, 3)
        ring = (dist > cfg.ring_gap_px) & (dist <= cfg.ring_gap_px + cfg.ring_width_px) & valid_before
        if ring.sum() < cfg.min_support_px:
            return reject("no_support")
        ry, rx = np.nonzero(ring)
        p = fit_support_plane(rx, ry, depth_before[ry, rx], tol_m=cfg.plane_tol_m)
        if p is None or p.inlier_frac < cfg.min_ring_inlier_frac:
            return reject("no_support")
        plane, method = p, "ring"
    rep["support"] = method

    # --- height profile over the crop -----------------------------------------------------------
    h, w = y1 - y0 + 1, x1 - x0 + 1
    crop_m = m[y0 : y1 + 1, x0 : x1 + 1]
    support = plane.depth_patch(x0, y0, h, w)
    obj = depth_before[y0 : y1 + 1, x0 : x1 + 1]
    valid = crop_m & valid_before[y0 : y1 + 1, x0 : x1 + 1] & (support > 0)
    if valid.sum() < 3:
        return reject("missing_depth")
    height = np.zeros((h, w), np.float32)
    height[valid] = np.clip(support[valid] - obj[valid], 0.0, cfg.max_height_m)
    height = _fill_nearest(height, valid, crop_m)
    height[~crop_m] = 0.0
    h_hi = float(np.percentile(height[crop_m], cfg.height_percentile))
    rep["height_p"] = h_hi
    if h_hi < cfg.min_object_height_m:
        return reject("flat")

    quality = float(np.clip(solidity, 0.0, 1.0) * (1.0 - missing_frac) * plane.inlier_frac)
    support_depth = float(np.median(support[crop_m & (support > 0)])) if (support > 0).any() else 0.0
    rep["reason"] = "ok"
    return InstanceCutout(
        rgb=rgb_before[y0 : y1 + 1, x0 : x1 + 1].copy(),
        height=height,
        mask=crop_m.copy(),
        source=int(source),
        quality=quality,
        support_depth=support_depth,
        info={"bbox": (x0, y0, x1, y1), "support": method, "support_inlier_frac": plane.inlier_frac},
    )


# ----------------------------------------------------------------------------------------------
# Instance bank
# ----------------------------------------------------------------------------------------------


class InstanceBank:
    """Bounded memory of cut-outs: the oldest is dropped when `capacity` is reached (the bank tracks the
    newest interactions); `sample` draws uniformly with the caller's generator."""

    def __init__(self, capacity: int = 512):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = int(capacity)
        self._items: deque[InstanceCutout] = deque(maxlen=self.capacity)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, cutout: InstanceCutout | None) -> bool:
        """Offer a cut-out (None: a rejected one, ignored); returns True if it is now in the bank."""
        if cutout is None:
            return False
        self._items.append(cutout)
        return True

    def sample(self, k: int, rng: np.random.Generator) -> list[InstanceCutout]:
        """min(k, len) distinct cut-outs drawn uniformly with `rng`."""
        n = len(self._items)
        if n == 0 or k <= 0:
            return []
        idx = rng.choice(n, size=min(k, n), replace=False)
        return [self._items[int(i)] for i in idx]


# ----------------------------------------------------------------------------------------------
# Pasting
# ----------------------------------------------------------------------------------------------


@dataclass
class PasteConfig:
    """Less common pasting knobs (defaults documented inline).

    beta_ab: Beta(a, b) per axis for the placement (RISE: 0.5, 0.5 -> U-shaped, periphery first).
    max_tries: placement draws per instance (region test + overlap test) before it is skipped.
    rotation_deg: in-plane rotation uniform in [-r, r] (approximates a yaw about the view axis).
    color_jitter: per-instance brightness gain uniform in [1 - j, 1 + j].
    perspective: rescale a cut-out by (its source support depth / the background's median support
        depth) so it keeps a plausible metric size; one reference depth per frame (the size must be
        known before the position is drawn).
    support_margin: the background support plane is fitted in the footprint's bounding box grown
        by this fraction of its size on each side.
    bg_occlusion_tol_m: a background pixel hides a pasted pixel only if it is more than 1 cm in
        front of it; the pasted object stands on a fitted plane, so its base pixels (height ~ 0) sit
        within sensor noise of the table and would otherwise flicker in and out.
    min_clearance_m: a pasted pixel that wins against the background is placed at least 1 mm in
        front of it (depth = min(object depth, background - 1 mm)), so composited depth at visible
        pasted pixels is always strictly in front of the background.
    feather_sigma: the RGB alpha is the full mask blurred with a Gaussian of this sigma (px),
        restricted to the visible pixels: mask-edge pixels are a blend of object and whatever lies
        below instead of a hard cut-and-paste seam, which a network otherwise learns as a shortcut
        (Dwibedi et al., "Cut, Paste and Learn", 2017). Occlusion edges stay hard, as real ones are.
        0 disables feathering.
    edge_dropout_p / edge_jump_m: a real depth sensor loses pixels at depth discontinuities; pasted
        objects would otherwise be the only ones with a complete depth rim (a shortcut, since the
        network sees the valid-depth flag). Pixels at or next to a pasted instance whose depth
        differs from a 4-neighbour by more than 1 cm are set missing with probability 0.5 (the
        sim's DepthNoise defaults). 0 disables it.
    """

    beta_ab: tuple[float, float] = (0.5, 0.5)
    max_tries: int = 20
    rotation_deg: float = 10.0
    color_jitter: float = 0.1
    perspective: bool = True
    support_margin: float = 0.5
    support_tol_m: float = 0.006
    bg_occlusion_tol_m: float = 0.01
    min_clearance_m: float = 0.001
    feather_sigma: float = 1.0
    edge_dropout_p: float = 0.5
    edge_jump_m: float = 0.01


@dataclass
class Placement:
    """How one cut-out was placed.

    cutout: index into the frame's `cutouts` list. (x, y): top-left pixel of the transformed patch.
    (cx, cy): patch centre (pixels). scale: physical scale factor (also applied to the height
    profile); pixel_scale: image scale = scale * perspective factor. flip: mirrored left-right
    before rotating. rotation_deg: counter-clockwise in-plane rotation. gain: brightness gain.
    depth: median support depth (m) under the footprint (filled in when composited).
    """

    cutout: int
    x: int
    y: int
    cx: float
    cy: float
    scale: float
    pixel_scale: float
    flip: bool
    rotation_deg: float
    gain: float
    depth: float = 0.0


@dataclass
class PastedFrame:
    """A background frame with instances pasted in.

    rgb (H,W,3) uint8, depth (H,W) float32 m (0 = missing), labels (H,W) uint16: instance id of the
    VISIBLE pasted pixel, 0 = not pasted (background, including real unlabelled objects).
    ids (N,) int: label value of each pasted instance; full_masks / visible_masks (N,H,W) bool:
    amodal footprint and visible part; placements / cutouts: per instance. meta: extra info
    (e.g. the add/remove/move events of a pseudo-sequence's second frame).
    """

    rgb: np.ndarray
    depth: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    full_masks: np.ndarray
    visible_masks: np.ndarray
    placements: list[Placement]
    cutouts: list[InstanceCutout]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, instance_id: int) -> int:
        hits = np.nonzero(self.ids == instance_id)[0]
        if hits.size == 0:
            raise KeyError(instance_id)
        return int(hits[0])

    def visible_areas(self) -> np.ndarray:
        return self.visible_masks.sum(axis=(1, 2)) if self.visible_masks.ndim == 3 else np.zeros(0, np.int64)


@dataclass
class _Placed:
    placement: Placement
    cutout: InstanceCutout
    rgb: np.ndarray
    height: np.ndarray
    mask: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def _transform_patch(
    cut: InstanceCutout, pixel_scale: float, flip: bool, angle_deg: float, gain: float, height_scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Flip, then scale + rotate a cut-out about its centre; crop to the tight mask box."""
    rgb, hgt, m = cut.rgb, cut.height, cut.mask.astype(np.float32)
    if flip:
        rgb, hgt, m = rgb[:, ::-1], hgt[:, ::-1], m[:, ::-1]
    h, w = m.shape
    M = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(angle_deg), float(pixel_scale))
    corners = np.array([[-0.5, -0.5, 1], [w - 0.5, -0.5, 1], [-0.5, h - 0.5, 1], [w - 0.5, h - 0.5, 1]])
    tc = corners @ M.T
    # Shift by a whole number of pixels so the transformed patch starts at the canvas edge (-0.5)
    # or just inside it; an identity transform then maps pixels onto pixels exactly.
    off = np.floor(tc.min(axis=0) + 0.5 + 1e-6)
    M[:, 2] -= off
    ow, oh = (int(x) for x in np.ceil(tc.max(axis=0) - off + 0.5 - 1e-6))
    flags = cv2.INTER_LINEAR
    rgb_w = cv2.warpAffine(np.ascontiguousarray(rgb), M, (ow, oh), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    m_w = cv2.warpAffine(np.ascontiguousarray(m), M, (ow, oh), flags=flags, borderMode=cv2.BORDER_CONSTANT)
    hm_w = cv2.warpAffine(
        np.ascontiguousarray(hgt * m), M, (ow, oh), flags=flags, borderMode=cv2.BORDER_CONSTANT
    )
    mask = m_w > 0.5
    if not mask.any():
        return None
    height = np.where(mask, hm_w / np.maximum(m_w, 1e-6), 0.0).astype(np.float32) * np.float32(height_scale)
    ys, xs = np.nonzero(mask)
    sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    rgb_out = rgb_w[sl].astype(np.float32)
    if gain != 1.0:
        rgb_out = rgb_out * gain
    rgb_out = np.clip(rgb_out, 0, 255)
    return rgb_out, np.ascontiguousarray(height[sl]), np.ascontiguousarray(mask[sl])


def _bbox_overlap(a: _Placed, b: _Placed) -> int:
    pa, pb = a.placement, b.placement
    ha, wa = a.mask.shape
    hb, wb = b.mask.shape
    x0, y0 = max(pa.x, pb.x), max(pa.y, pb.y)
    x1, y1 = min(pa.x + wa, pb.x + wb), min(pa.y + ha, pb.y + hb)
    if x1 <= x0 or y1 <= y0:
        return 0
    ma = a.mask[y0 - pa.y : y1 - pa.y, x0 - pa.x : x1 - pa.x]
    mb = b.mask[y0 - pb.y : y1 - pb.y, x0 - pb.x : x1 - pb.x]
    return int(np.count_nonzero(ma & mb))


def _overlap_ok(new: _Placed, others: Sequence[_Placed], max_overlap: float) -> bool:
    """RISE: reject if the new mask overlaps any other by more than max_overlap of the smaller area."""
    for o in others:
        inter = _bbox_overlap(new, o)
        if inter > max_overlap * min(new.area, o.area):
            return False
    return True


class _Frame:
    """Per-background data reused by all placements in one frame."""

    def __init__(self, bg_rgb: np.ndarray, bg_depth: np.ndarray, region_mask: np.ndarray | None):
        bg_rgb = np.asarray(bg_rgb)
        bg_depth = np.asarray(bg_depth, np.float32)
        if bg_rgb.ndim != 3 or bg_rgb.shape[2] != 3 or bg_rgb.dtype != np.uint8:
            raise ValueError(f"bg_rgb must be (H,W,3) uint8, got {bg_rgb.shape} {bg_rgb.dtype}")
        if bg_depth.shape != bg_rgb.shape[:2]:
            raise ValueError(f"bg_depth {bg_depth.shape} does not match bg_rgb {bg_rgb.shape}")
        self.rgb, self.depth = bg_rgb, bg_depth
        self.H, self.W = bg_depth.shape
        self.valid = np.isfinite(bg_depth) & (bg_depth > 0)
        if region_mask is not None:
            region_mask = np.asarray(region_mask, bool)
            if region_mask.shape != bg_depth.shape:
                raise ValueError(f"region_mask {region_mask.shape} does not match {bg_depth.shape}")
            if not region_mask.any():
                raise ValueError("region_mask is empty")
            ys, xs = np.nonzero(region_mask)
            self.region_box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        else:
            self.region_box = (0, 0, self.W - 1, self.H - 1)
        self.region = region_mask
        ref = self.valid if region_mask is None else (self.valid & region_mask)
        if not ref.any():
            ref = self.valid
        self.ref_depth = float(np.median(bg_depth[ref])) if ref.any() else 0.0
        self._plane_cache: dict[tuple[int, int, int, int], SupportPlane | None] = {}

    def support(self, x: int, y: int, h: int, w: int, cfg: PasteConfig) -> np.ndarray | None:
        """Support-surface depth (h,w) under the block at (x, y); None if it cannot be estimated."""
        mx, my = int(round(cfg.support_margin * w)), int(round(cfg.support_margin * h))
        x0, y0 = max(0, x - mx), max(0, y - my)
        x1, y1 = min(self.W, x + w + mx), min(self.H, y + h + my)
        key = (x0, y0, x1, y1)
        if key not in self._plane_cache:
            vv = self.valid[y0:y1, x0:x1]
            plane = None
            if vv.sum() >= 20:
                vy, vx = np.nonzero(vv)
                plane = fit_support_plane(
                    vx + x0,
                    vy + y0,
                    self.depth[y0:y1, x0:x1][vy, vx],
                    tol_m=cfg.support_tol_m,
                    iters=48,
                    max_points=1000,
                )
                if plane is not None and plane.inlier_frac < 0.3:
                    plane = None
                if plane is None:
                    med = float(np.median(self.depth[y0:y1, x0:x1][vv]))
                    plane = SupportPlane(0.0, 0.0, 1.0 / med, 0.0)
            elif self.ref_depth > 0:
                plane = SupportPlane(0.0, 0.0, 1.0 / self.ref_depth, 0.0)
            self._plane_cache[key] = plane
        plane = self._plane_cache[key]
        if plane is None:
            return None
        s = plane.depth_patch(x, y, h, w)
        return s if (s > 0).all() else None


def _draw_axis(rng: np.random.Generator, lo: int, hi: int, placement: str, ab: tuple[float, float]) -> int:
    if hi <= lo:
        return lo
    t = rng.beta(ab[0], ab[1]) if placement == "beta" else rng.random()
    return lo + int(round(t * (hi - lo)))


def _place(
    frame: _Frame,
    cut: InstanceCutout,
    cut_index: int,
    others: Sequence[_Placed],
    rng: np.random.Generator,
    placement: str,
    max_overlap: float,
    cfg: PasteConfig,
    scale: float,
    flip: bool,
    rotation_deg: float,
    gain: float,
) -> _Placed | None:
    """Draw a position for an (already parameterised) cut-out; None if no admissible one is found."""
    persp = 1.0
    if cfg.perspective and cut.support_depth > 0 and frame.ref_depth > 0:
        persp = cut.support_depth / frame.ref_depth
    patch = _transform_patch(cut, scale * persp, flip, rotation_deg, gain, scale)
    if patch is None:
        return None
    p_rgb, p_h, p_m = patch
    ph, pw = p_m.shape
    if ph > frame.H or pw > frame.W:
        return None
    # Feasible top-left range: patch inside the frame, centre within the region's bounding box.
    rx0, ry0, rx1, ry1 = frame.region_box
    xlo, xhi = max(0, rx0 - pw // 2), min(frame.W - pw, rx1 - pw // 2)
    ylo, yhi = max(0, ry0 - ph // 2), min(frame.H - ph, ry1 - ph // 2)
    xhi, yhi = max(xhi, xlo), max(yhi, ylo)
    xlo, ylo = min(xlo, frame.W - pw), min(ylo, frame.H - ph)
    for _ in range(cfg.max_tries):
        x = _draw_axis(rng, xlo, xhi, placement, cfg.beta_ab)
        y = _draw_axis(rng, ylo, yhi, placement, cfg.beta_ab)
        cx, cy = x + (pw - 1) / 2.0, y + (ph - 1) / 2.0
        if frame.region is not None and not frame.region[int(round(cy)), int(round(cx))]:
            continue
        pl = Placement(cut_index, x, y, cx, cy, scale, scale * persp, flip, rotation_deg, gain)
        cand = _Placed(pl, cut, p_rgb, p_h, p_m)
        if _overlap_ok(cand, others, max_overlap):
            return cand
    return None


def _random_params(
    rng: np.random.Generator, scale_range: tuple[float, float], flip: bool, cfg: PasteConfig
) -> tuple[float, bool, float, float]:
    scale = float(rng.uniform(scale_range[0], scale_range[1]))
    do_flip = bool(flip and rng.random() < 0.5)
    rot = float(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)) if cfg.rotation_deg > 0 else 0.0
    gain = float(rng.uniform(1 - cfg.color_jitter, 1 + cfg.color_jitter)) if cfg.color_jitter > 0 else 1.0
    return scale, do_flip, rot, gain


def _composite(
    frame: _Frame, placed: Sequence[_Placed], ids: Sequence[int], cfg: PasteConfig, rng: np.random.Generator
) -> PastedFrame:
    H, W = frame.H, frame.W
    zbuf = np.where(frame.valid, frame.depth, np.inf).astype(np.float32)
    labels = np.zeros((H, W), np.uint16)
    rgb = frame.rgb.astype(np.float32)
    full = np.zeros((len(placed), H, W), bool)
    kept: list[_Placed] = []
    kept_ids: list[int] = []
    for p, iid in zip(placed, ids, strict=True):
        pl = p.placement
        ph, pw = p.mask.shape
        support = frame.support(pl.x, pl.y, ph, pw, cfg)
        if support is None:
            continue
        pl.depth = float(np.median(support[p.mask]))
        sl = (slice(pl.y, pl.y + ph), slice(pl.x, pl.x + pw))
        d_obj = support - p.height
        cur = zbuf[sl]
        lab = labels[sl]
        on_bg = lab == 0
        win = p.mask & np.where(on_bg, d_obj < cur + cfg.bg_occlusion_tol_m, d_obj < cur)
        new_d = np.where(on_bg & np.isfinite(cur), np.minimum(d_obj, cur - cfg.min_clearance_m), d_obj)
        if cfg.feather_sigma > 0:
            alpha = cv2.GaussianBlur(
                np.pad(p.mask.astype(np.float32), 3), (0, 0), cfg.feather_sigma, borderType=cv2.BORDER_CONSTANT
            )[3:-3, 3:-3]
        else:
            alpha = p.mask.astype(np.float32)
        alpha = np.where(win, alpha, 0.0)[..., None]
        rgb[sl] = rgb[sl] * (1.0 - alpha) + p.rgb * alpha
        cur[win] = new_d[win]
        lab[win] = iid
        full[len(kept)][sl] = p.mask
        kept.append(p)
        kept_ids.append(int(iid))
    n = len(kept)
    full = full[:n]
    ids_arr = np.asarray(kept_ids, np.int64)
    visible = labels[None] == ids_arr.reshape(-1, 1, 1).astype(np.uint16)
    depth = np.where(np.isfinite(zbuf), zbuf, 0.0).astype(np.float32)
    if cfg.edge_dropout_p > 0 and n > 0:
        jump = np.zeros((H, W), bool)
        dx = np.abs(np.diff(depth, axis=1)) > cfg.edge_jump_m
        dy = np.abs(np.diff(depth, axis=0)) > cfg.edge_jump_m
        jump[:, 1:] |= dx
        jump[:, :-1] |= dx
        jump[1:, :] |= dy
        jump[:-1, :] |= dy
        near = cv2.dilate((labels > 0).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        cand = jump & near & (depth > 0)
        drop = np.zeros((H, W), bool)
        drop[cand] = rng.random(int(cand.sum())) < cfg.edge_dropout_p
        depth[drop] = 0.0
    # Re-index placements into this frame's cut-out list.
    cutouts = [p.cutout for p in kept]
    placements = []
    for i, p in enumerate(kept):
        placements.append(replace(p.placement, cutout=i))
    return PastedFrame(
        rgb=np.clip(np.rint(rgb), 0, 255).astype(np.uint8),
        depth=depth,
        labels=labels,
        ids=ids_arr,
        full_masks=full,
        visible_masks=visible.reshape(n, H, W),
        placements=placements,
        cutouts=cutouts,
    )


def _paste(
    frame: _Frame,
    cutouts: Sequence[InstanceCutout],
    rng: np.random.Generator,
    placement: str,
    max_overlap: float,
    scale_range: tuple[float, float],
    flip: bool,
    cfg: PasteConfig,
    first_id: int,
) -> PastedFrame:
    if placement not in ("beta", "uniform"):
        raise ValueError(f"placement must be 'beta' or 'uniform', got {placement!r}")
    placed: list[_Placed] = []
    for i, cut in enumerate(cutouts):
        scale, do_flip, rot, gain = _random_params(rng, scale_range, flip, cfg)
        p = _place(frame, cut, i, placed, rng, placement, max_overlap, cfg, scale, do_flip, rot, gain)
        if p is not None:
            placed.append(p)
    return _composite(frame, placed, list(range(first_id, first_id + len(placed))), cfg, rng)


def make_pseudo_sequence(
    bg_rgb: np.ndarray,
    bg_depth: np.ndarray,
    bank: InstanceBank,
    rng: np.random.Generator,
    k_range: tuple[int, int] = (2, 6),
    p_add: float = 0.3,
    p_remove: float = 0.25,
    p_move: float = 0.3,
    max_add: int = 2,
    ensure_change: bool = True,
    min_visible_px: int = 16,
    placement: str = "beta",
    max_overlap: float = 0.85,
    region_mask: np.ndarray | None = None,
    scale_range: tuple[float, float] = (0.9, 1.1),
    flip: bool = True,
    config: PasteConfig | None = None,
) -> tuple[PastedFrame, PastedFrame, list[tuple[int, int]]]:
    """A "before"/"after" pair from one background frame (RISE pseudo-sequence, Fig. 1).

    x1: K ~ U{k_range[0]..k_range[1]} (inclusive) bank cut-outs pasted with ids 1..K.
    x2: the same background; each x1 instance is independently removed (p_remove), else moved
    (p_move: same cut-out, scale and flip; new position, rotation changed by up to
    +-rotation_deg) or kept in place; then up to `max_add` new cut-outs are added, each with
    probability p_add, with fresh ids. With `ensure_change`, if nothing changed one of the
    possible changes is forced. Moved/added instances obey the same Beta placement and overlap
    rule against everything present in x2; a move that finds no admissible position becomes a
    removal. x2.meta holds the event lists ("kept", "moved", "removed", "added", by id).

    matches: [(id_in_x1, id_in_x2)] for instances present in both frames with at least
    `min_visible_px` visible pixels in each (ids are kept, so pairs are (i, i)).
    """
    cfg = config or PasteConfig()
    lo, hi = int(k_range[0]), int(k_range[1])
    if lo < 0 or hi < lo:
        raise ValueError(f"bad k_range {k_range}")
    k = int(rng.integers(lo, hi + 1))
    cuts = bank.sample(k, rng)
    frame = _Frame(bg_rgb, bg_depth, region_mask)
    x1 = _paste(frame, cuts, rng, placement, max_overlap, scale_range, flip, cfg, first_id=1)

    # Decide the events.
    n1 = len(x1)
    fate = []
    for _ in range(n1):
        r = rng.random()
        fate.append("remove" if r < p_remove else ("move" if r < p_remove + p_move else "keep"))
    n_add = int(sum(rng.random() < p_add for _ in range(max_add))) if len(bank) > 0 else 0
    if ensure_change and n_add == 0 and all(f == "keep" for f in fate):
        options = (["add"] if len(bank) > 0 else []) + (["remove", "move"] if n1 > 0 else [])
        if options:
            choice = options[int(rng.integers(len(options)))]
            if choice == "add":
                n_add = 1
            else:
                fate[int(rng.integers(n1))] = choice

    placed: list[_Placed] = []
    ids: list[int] = []
    events: dict[str, list[int]] = {"kept": [], "moved": [], "removed": [], "added": []}
    # Kept instances first (their positions are fixed), then moves, then additions.
    for i in range(n1):
        if fate[i] == "keep":
            pl = x1.placements[i]
            cut = x1.cutouts[i]
            patch = _transform_patch(cut, pl.pixel_scale, pl.flip, pl.rotation_deg, pl.gain, pl.scale)
            assert patch is not None
            placed.append(_Placed(replace(pl), cut, *patch))
            ids.append(int(x1.ids[i]))
            events["kept"].append(int(x1.ids[i]))
    for i in range(n1):
        iid = int(x1.ids[i])
        if fate[i] == "remove":
            events["removed"].append(iid)
        elif fate[i] == "move":
            pl = x1.placements[i]
            rot = pl.rotation_deg
            if cfg.rotation_deg > 0:
                rot += float(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
            p = _place(
                frame, x1.cutouts[i], i, placed, rng, placement, max_overlap, cfg, pl.scale, pl.flip, rot, pl.gain
            )
            if p is None:
                events["removed"].append(iid)
            else:
                placed.append(p)
                ids.append(iid)
                events["moved"].append(iid)
    next_id = int(x1.ids.max()) + 1 if n1 else 1
    for cut in bank.sample(n_add, rng):
        scale, do_flip, rot, gain = _random_params(rng, scale_range, flip, cfg)
        p = _place(frame, cut, -1, placed, rng, placement, max_overlap, cfg, scale, do_flip, rot, gain)
        if p is not None:
            placed.append(p)
            ids.append(next_id)
            events["added"].append(next_id)
            next_id += 1
    x2 = _composite(frame, placed, ids, cfg, rng)
    x2.meta["events"] = events
    x1.meta.setdefault("events", {"added": [int(i) for i in x1.ids]})

    vis1 = dict(zip(x1.ids.tolist(), x1.visible_areas().tolist(), strict=True))
    vis2 = dict(zip(x2.ids.tolist(), x2.visible_areas().tolist(), strict=True))
    matches = [
        (iid, iid)
        for iid in x1.ids.tolist()
        if iid in vis2 and vis1[iid] >= min_visible_px and vis2[iid] >= min_visible_px
    ]
    return x1, x2, matches
